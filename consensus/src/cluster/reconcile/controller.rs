//! The controller leader's duties: dead nodes removed after `--dead-node-timeout`, their
//! replicas and those marked stopped re-created elsewhere, the `default` topic's factor raised
//! as nodes join, preferred leaders spread.

use crate::cluster::state::{ClusterState, Command, PartitionEntry, Replica};
use crate::cluster::ClusterNode;
use crate::membership::{MemberList, MemberState};
use proto::log::v1::DEFAULT_TOPIC as DEFAULT_TOPIC_NAME;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Members gossip says left (at once) or have not been up for the dead-node timeout: removed
/// from the cluster, one per pass.
pub(super) fn remove_dead(node: &ClusterNode, s: &ClusterState, countdown: &mut Countdown) -> bool {
    let Some(watch) = node.members() else {
        return false;
    };
    let list = watch.members();
    let Some((id, why)) =
        countdown.due(s, node.id(), &list, Instant::now(), node.dead_node_timeout)
    else {
        return false;
    };
    if s.active_nodes().len() <= 1 {
        return false;
    }
    let name = s.nodes.get(&id).map_or("", |n| n.name.as_str());
    log::warn!("node {id} ({name}) {why}: removing it from the cluster");
    node.stats
        .nodes_removed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = futures_lite::future::block_on(node.propose(&Command::RemoveNode { id })) {
        log::info!("removing node {id}: not now ({e})");
    }
    true
}

/// The controller leader's dead-node countdown: for each registered member that gossip does
/// not list up (suspect, down, or no longer listed at all: down and left members are dropped
/// from the list after an hour), since when this node has seen it so.
///
/// The list's own clock stops between changes, so the time is measured here: from when this
/// node first saw the member suspect or down (less how long its list says the member had been
/// so already) or missing from its list, whichever was first. Seen up again, the member's
/// countdown ends; suspect again, it starts over (also when the member went up and back
/// between two passes: its list entry then shows the same state entered later). It survives
/// the member dropping out of the list. Only the leader keeps one, and a node that stops
/// leading forgets it.
#[derive(Debug, Default)]
pub(crate) struct Countdown {
    pub(super) since: HashMap<String, NotUp>,
}

/// One member's countdown.
#[derive(Debug, Clone, Copy)]
pub(super) struct NotUp {
    /// Not up since then.
    pub(super) start: Instant,
    /// Its state and since when (membership clock) when last listed.
    pub(super) listed: Option<(MemberState, Duration)>,
}

impl Countdown {
    /// Updates every registered member's countdown from `list` at `now`, and returns the
    /// first node (by Raft id) to remove and why: one that left, or one not up for `timeout`.
    /// `me` is never removed.
    pub(super) fn due(
        &mut self,
        s: &ClusterState,
        me: u64,
        list: &MemberList,
        now: Instant,
        timeout: Duration,
    ) -> Option<(u64, String)> {
        let listed: HashMap<String, &crate::membership::Member> = list
            .members
            .iter()
            .map(|m| (m.node_id.to_string(), m))
            .collect();
        // Members seen up again, and those no longer registered or already removed.
        self.since.retain(|member, _| {
            s.nodes.values().any(|n| !n.removed && n.member == *member)
                && listed
                    .get(member)
                    .is_none_or(|m| m.state != MemberState::Up)
        });
        let mut due = None;
        for (id, n) in &s.nodes {
            if n.removed || *id == me {
                continue;
            }
            let m = listed.get(&n.member);
            let state = m.map(|m| m.state);
            if state == Some(MemberState::Up) {
                continue;
            }
            let listed = m.map(|m| (m.state, m.since));
            let fresh = NotUp {
                start: m
                    .and_then(|m| now.checked_sub(m.in_state_for(list)))
                    .unwrap_or(now),
                listed,
            };
            let entry = self.since.entry(n.member.clone()).or_insert(fresh);
            match (entry.listed, listed) {
                // The same state entered again: it was up (or elsewhere) in between.
                (Some((was, at)), Some((is, now_at))) if was == is && at != now_at => {
                    *entry = fresh
                }
                (_, Some(_)) => entry.listed = listed,
                (_, None) => {}
            }
            let since = entry.start;
            if due.is_some() {
                // Every countdown is kept up to date; one removal per pass.
                continue;
            }
            let not_up = now.duration_since(since);
            due = match state {
                Some(MemberState::Left) => Some((*id, "left the cluster".to_string())),
                _ if not_up >= timeout => Some((
                    *id,
                    format!(
                        "not up for {not_up:?} ({}; dead-node-timeout {timeout:?})",
                        state.map_or("no longer in the member list", |s| s.as_str())
                    ),
                )),
                _ => None,
            };
        }
        due
    }

    pub(super) fn clear(&mut self) {
        self.since.clear();
    }
}

/// The live node to take a new replica of `entry`, whose replicas kept are on `have`: one
/// without a replica of it nor a stopped mark on it; of those, one with no replica marked
/// stopped anywhere (a node whose disk failed one log may fail the next), then the one with
/// the fewest replicas, then the lowest id.
pub(super) fn new_replica_node(
    s: &ClusterState,
    entry: &PartitionEntry,
    have: &[u64],
    live: &[u64],
) -> Option<u64> {
    let load = s.load();
    let troubled = s.nodes_with_stopped_replicas();
    live.iter()
        .copied()
        .filter(|n| !have.contains(n) && !entry.stopped.contains(n))
        .min_by_key(|n| (troubled.contains(n), load.get(n).copied().unwrap_or(0), *n))
}

/// Replicas on removed nodes, and replicas marked stopped, are re-created on live nodes
/// that lack one, and a partition with fewer replicas than its factor (none was free when
/// one was removed) gets one on a live node (one partition per pass). A stopped replica
/// stays placed while no node can take its place (logged once per leadership).
pub(super) fn replace_removed(
    node: &ClusterNode,
    s: &ClusterState,
    unplaced: &mut BTreeSet<(String, u32)>,
) -> bool {
    let active = s.active_nodes();
    let live = node.live_nodes(s);
    for (name, t) in &s.topics {
        for (p, entry) in t.partitions.iter().enumerate() {
            let key = (name.clone(), p as u32);
            let failed = |r: &Replica| active.contains(&r.node) && entry.stopped.contains(&r.node);
            let kept = |r: &Replica| active.contains(&r.node) && !failed(r);
            let on_active = entry.replicas.iter().filter(|r| kept(r)).count();
            let short = (on_active as u32) < t.replication_factor
                && live.iter().any(|n| !entry.nodes().contains(n));
            if on_active == entry.replicas.len() && !short {
                unplaced.remove(&key);
                continue;
            }
            if on_active == 0 {
                if unplaced.insert(key) {
                    log::error!(
                        "{name}/{p}: every replica is on removed nodes or stopped; nothing to \
                         copy from"
                    );
                }
                continue;
            }
            let mut added: Vec<Replica> = Vec::new();
            let want = (t.replication_factor as usize).max(1);
            while on_active + added.len() < want {
                let have: Vec<u64> = entry
                    .replicas
                    .iter()
                    .filter(|r| kept(r))
                    .chain(added.iter())
                    .map(|r| r.node)
                    .collect();
                match new_replica_node(s, entry, &have, &live) {
                    Some(n) => added.push(s.replica_on(name, p as u32, n)),
                    None => break,
                }
            }
            // Stopped replicas no new one replaces stay, in their place.
            let mut keep_failed = want.saturating_sub(on_active + added.len());
            let mut replicas: Vec<Replica> = Vec::new();
            for r in &entry.replicas {
                if kept(r) {
                    replicas.push(*r);
                } else if failed(r) && keep_failed > 0 {
                    keep_failed -= 1;
                    replicas.push(*r);
                }
            }
            replicas.extend(added.iter().copied());
            let moved: Vec<u64> = entry
                .replicas
                .iter()
                .filter(|r| failed(r) && !replicas.contains(r))
                .map(|r| r.node)
                .collect();
            let still: Vec<u64> = entry
                .replicas
                .iter()
                .filter(|r| failed(r) && replicas.contains(r))
                .map(|r| r.node)
                .collect();
            if !still.is_empty() && unplaced.insert(key) {
                log::warn!(
                    "{name}/{p}: the stopped replica on nodes {still:?} stays placed: no live \
                     node without a replica can take it (or nothing is left to copy from)"
                );
            }
            if replicas == entry.replicas {
                continue;
            }
            let nodes: Vec<u64> = replicas.iter().map(|r| r.node).collect();
            if moved.is_empty() {
                let new: Vec<u64> = added.iter().map(|r| r.node).collect();
                let rf = t.replication_factor;
                if nodes.len() as u32 >= rf {
                    log::info!(
                        "{name}/{p}: replicas now on nodes {nodes:?}: new ones on {new:?} \
                         (replication factor {rf})"
                    );
                } else if new.is_empty() {
                    // A removed node's replica dropped, none to put in its place.
                    log::warn!(
                        "{name}/{p}: replicas now on nodes {nodes:?}: {} of replication factor \
                         {rf}, no other live node to hold one (more as nodes join)",
                        nodes.len()
                    );
                } else {
                    log::warn!(
                        "{name}/{p}: replicas now on nodes {nodes:?}: new ones on {new:?}, {} of \
                         replication factor {rf} (no other live node to hold one)",
                        nodes.len()
                    );
                }
            } else {
                log::warn!(
                    "{name}/{p}: the stopped replica on nodes {moved:?} (its log failed) moves: \
                     replicas now on nodes {nodes:?}"
                );
                node.stats
                    .stopped_replicas_moved
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let c = Command::SetReplicas {
                topic: name.clone(),
                partition: p as u32,
                replication_factor: t.replication_factor,
                replicas,
            };
            node.stats
                .replicas_replaced
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = futures_lite::future::block_on(node.propose(&c)) {
                log::info!("{name}/{p}: re-placing replicas: not now ({e})");
            }
            return true;
        }
    }
    false
}

/// One step towards preferred leaders (a partition's first replica, which its leader hands
/// leadership to) spread evenly over the nodes gossip lists `up`, within each topic first and
/// then over all topics: a replica set reordered so that a partition preferring a node with
/// more of its topic's partitions than another of its replicas' nodes (by two or more)
/// prefers that one instead; failing such a move, one that narrows a gap of two or more in
/// the nodes' totals without widening its topic's (the node it moves to leads fewer of the
/// topic than the one it leaves); `None` when neither is left. Balancing totals alone piled
/// every partition of the first topics onto a node that returned with none, so a hot topic's
/// writes all landed on one node after each membership change. Replicas re-created on other
/// nodes, or added when a node returns, go last in their sets, so without this the nodes
/// that stayed keep every leadership. Only partitions whose preferred node is up are
/// reordered: one that is down or suspect (restarting) gets its leaderships back when it
/// returns. The replica set itself does not change.
///
/// Each step lowers the sum over topics of the squared per-topic counts, or leaves it and
/// lowers the squared totals, so the steps end.
pub(crate) fn spread_preferred_leaders(s: &ClusterState, up: &[u64]) -> Option<Command> {
    let zero = || -> BTreeMap<u64, usize> { up.iter().map(|&n| (n, 0)).collect() };
    let mut total = zero();
    let mut per_topic: BTreeMap<&str, BTreeMap<u64, usize>> = BTreeMap::new();
    for (name, t) in &s.topics {
        let mut count = zero();
        for p in &t.partitions {
            let Some(first) = p.replicas.first() else {
                continue;
            };
            if let Some(c) = count.get_mut(&first.node) {
                *c += 1;
            }
            if let Some(c) = total.get_mut(&first.node) {
                *c += 1;
            }
        }
        per_topic.insert(name.as_str(), count);
    }
    // The widest gap within a topic (ties: the widest in the totals, then topic and
    // partition order), else the widest in the totals.
    let mut in_topic: Option<((usize, isize), &str, usize, usize)> = None;
    let mut overall: Option<(usize, &str, usize, usize)> = None;
    for (name, t) in &s.topics {
        let Some(count) = per_topic.get(name.as_str()) else {
            continue;
        };
        for (i, p) in t.partitions.iter().enumerate() {
            let Some((from, &tf, &gf)) = p
                .replicas
                .first()
                .and_then(|r| Some((r.node, count.get(&r.node)?, total.get(&r.node)?)))
            else {
                continue;
            };
            for (j, r) in p.replicas.iter().enumerate().skip(1) {
                if r.node == from || p.stopped.contains(&r.node) {
                    continue;
                }
                let (Some(&tt), Some(&gt)) = (count.get(&r.node), total.get(&r.node)) else {
                    continue;
                };
                if tf > tt + 1 {
                    let key = (tf - tt, gf as isize - gt as isize);
                    if in_topic.is_none_or(|(k, ..)| key > k) {
                        in_topic = Some((key, name.as_str(), i, j));
                    }
                } else if tt < tf && gf > gt + 1 && overall.is_none_or(|(g, ..)| gf - gt > g) {
                    overall = Some((gf - gt, name.as_str(), i, j));
                }
            }
        }
    }
    let (name, i, j) = match (in_topic, overall) {
        (Some((_, name, i, j)), _) | (None, Some((_, name, i, j))) => (name, i, j),
        (None, None) => return None,
    };
    let t = s.topics.get(name)?;
    let p = t.partitions.get(i)?;
    let mut replicas = p.replicas.clone();
    replicas.swap(0, j);
    Some(Command::SetReplicas {
        topic: name.to_owned(),
        partition: i as u32,
        replication_factor: t.replication_factor,
        replicas,
    })
}

/// The controller leader's own duties.
pub(super) fn controller(
    node: &ClusterNode,
    s: &ClusterState,
    countdown: &mut Countdown,
    unplaced: &mut BTreeSet<(String, u32)>,
) {
    if remove_dead(node, s, countdown) || replace_removed(node, s, unplaced) {
        return;
    }
    if node.checkpoint_due(s) {
        // Proposed by the Ready loop once nothing follows its applied index (not answered:
        // the next pass asks again until one is tried; after a try that did not complete,
        // not before `checkpoint_every` more commands).
        node.request_checkpoint();
    }
    let live = node.live_nodes(s);
    let target = live.len().clamp(1, 3) as u32;
    let Some(t) = s.topics.get(DEFAULT_TOPIC_NAME) else {
        return;
    };
    if t.replication_factor >= target {
        if let Some(c) = spread_preferred_leaders(s, &node.up_nodes(s)) {
            match futures_lite::future::block_on(node.propose(&c)) {
                Ok(_) => {
                    if let Command::SetReplicas {
                        topic,
                        partition,
                        replicas,
                        ..
                    } = &c
                    {
                        let to = replicas.first().map_or(0, |r| r.node);
                        log::info!("{topic}/{partition}: node {to} now preferred leader, to spread leaderships");
                    }
                }
                Err(e) => log::info!("spreading preferred leaders: not now ({e})"),
            }
        }
        return;
    }
    let rf = t.replication_factor + 1;
    for (p, entry) in t.partitions.iter().enumerate() {
        let have = entry.nodes();
        if have.len() >= rf as usize {
            continue;
        }
        let Some(&add) = live.iter().find(|n| !have.contains(n)) else {
            return;
        };
        let mut replicas = entry.replicas.clone();
        replicas.push(s.replica_on(DEFAULT_TOPIC_NAME, p as u32, add));
        let c = Command::SetReplicas {
            topic: DEFAULT_TOPIC_NAME.into(),
            partition: p as u32,
            replication_factor: rf,
            replicas,
        };
        if let Err(e) = futures_lite::future::block_on(node.propose(&c)) {
            log::info!("raising the default topic's replication factor: not now ({e})");
        }
        return;
    }
    // Every partition has rf replicas: record the factor.
    let c = Command::SetReplicas {
        topic: DEFAULT_TOPIC_NAME.into(),
        partition: 0,
        replication_factor: rf,
        replicas: t
            .partitions
            .first()
            .map(|p| p.replicas.clone())
            .unwrap_or_default(),
    };
    let _ = futures_lite::future::block_on(node.propose(&c));
}
