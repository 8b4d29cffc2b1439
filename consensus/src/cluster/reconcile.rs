//! The reconcile loops, on a thread of their own (`proglog-cluster`), about once a second and
//! whenever the controller applies a command. Each pass compares what is with what should be
//! and makes at most one change per group, so a pass that fails (leadership moved, a change
//! pending) is simply made again by the next one: nothing is one-shot.
//!
//! - **Local**: this node opens the partitions placement gives it (a topic created on another
//!   node exists here once the controller applies it) and drops those placed elsewhere, once
//!   everything in its own controller log is applied and known committed (never on a view
//!   older than a placement it already holds).
//! - **Groups this node leads** (the controller's and every partition's): a placed node not in
//!   the configuration joins as a learner; a caught-up learner is promoted (the controller
//!   keeps at most three voters, the rest learners); a member no longer placed is removed (a
//!   leader first hands its leadership to a caught-up voter); a caught-up preferred leader
//!   (the partition's first replica) gets leadership back.
//! - **The controller's leader**: the `default` topic's replication factor rises to
//!   min(3, live nodes) as nodes join.

use super::state::{ClusterState, Command, CONTROLLER_VOTERS};
use super::ClusterNode;
use crate::membership::MemberState;
use crate::raft::board::GroupView;
use event_listener::Listener as _;
use proto::log::v1::DEFAULT_TOPIC as DEFAULT_TOPIC_NAME;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::StateRole;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between passes when nothing is applied.
pub const PASS_INTERVAL: Duration = Duration::from_millis(1000);

/// Starts the loops; they end when the node stops.
pub fn spawn(node: Arc<ClusterNode>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("proglog-cluster".into())
        .spawn(move || run(node))
}

fn run(node: Arc<ClusterNode>) {
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut unreachable: HashMap<String, Instant> = HashMap::new();
    while !node.stopping() {
        let listener = node.changed.listen();
        let s = node.state();
        if node.id() != 0 && !s.cluster_id.is_empty() {
            node.refresh_addresses(&s);
            local(&node, &s, &mut known);
            groups(&node, &s);
            if node.is_controller_leader() {
                controller(&node, &s, &mut unreachable);
            }
        }
        // Waiters on the state check their deadlines at least this often.
        node.tick.notify(usize::MAX);
        let _ = listener.wait_timeout(PASS_INTERVAL);
        // Several commands applied at once make one pass.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens the partitions placed here, drops those placed elsewhere.
fn local(node: &ClusterNode, s: &ClusterState, known: &mut BTreeSet<String>) {
    let Some(engine) = node.engine() else { return };
    let me = node.id();
    for (name, t) in &s.topics {
        known.insert(name.clone());
        let hosted = t.partitions.iter().any(|p| p.nodes().contains(&me));
        if hosted && engine.topic(name).is_err() {
            let n = t.partitions.len() as u32;
            match futures_lite::future::block_on(engine.create_topic(name, n, t.config.clone())) {
                Ok(_) => {
                    log::info!("opened topic {name:?} ({n} partitions) as placed by the controller")
                }
                Err(engine::Error::TopicExists(_)) => {}
                Err(e) => log::warn!("opening topic {name:?} placed here: {e}"),
            }
        }
    }
    // A node the registry does not list as active (removed while it was away, until it is
    // re-admitted) drops nothing: placement will likely give it its partitions back, and its
    // logs then catch up from where they are instead of from nothing.
    if s.nodes.get(&me).is_none_or(|n| n.removed) {
        return;
    }
    // Nor does a node whose applied state may lag its own controller log. After a restart
    // the entries past the commit index its log carries wait for the leader to confirm them,
    // and the one that placed a replica here may be among them: dropping on the older
    // placement deleted the log of a voter the group still counts on (and the leader's next
    // heartbeat, naming a commit past that empty log, made raft-rs panic). Caught up (a
    // leader heard from, all it made known committed applied) is not enough when a new
    // leader has not yet learnt how far this node's log goes: everything in the local log
    // must be applied too.
    let settled = crate::raft::seam::caught_up(node).is_ok()
        && node.controller().is_some_and(|v| v.applied >= v.last_index);
    if !settled {
        return;
    }
    let Ok(local) = engine.list_topics() else {
        return;
    };
    for t in local {
        if t.name == engine::CONTROLLER_TOPIC || !known.contains(&t.name) {
            continue;
        }
        let hosted = s
            .topics
            .get(&t.name)
            .is_some_and(|e| e.partitions.iter().any(|p| p.nodes().contains(&me)));
        if !hosted {
            match futures_lite::future::block_on(engine.delete_topic(&t.name)) {
                Ok(()) => log::info!(
                    "dropped topic {:?}: no replica of it is placed here",
                    t.name
                ),
                Err(e) => log::warn!("dropping topic {:?}: {e}", t.name),
            }
        }
    }
}

fn single(change_type: ConfChangeType, node: u64) -> ConfChangeV2 {
    let c = ConfChangeSingle {
        change_type,
        node_id: node,
        ..Default::default()
    };
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![c].into());
    cc
}

fn caught_up(v: &GroupView, node: u64) -> bool {
    v.matched.iter().any(|&(n, m)| n == node && m >= v.commit)
}

/// What a group this node leads should change next, if anything.
enum Step {
    Change(ConfChangeV2, String),
    Transfer(u64),
}

fn next_step(
    me: u64,
    v: &GroupView,
    wanted: &[u64],
    max_voters: usize,
    live: &[u64],
) -> Option<Step> {
    let member = |n: &u64| v.voters.contains(n) || v.learners.contains(n);
    if let Some(&n) = wanted.iter().find(|n| !member(n)) {
        return Some(Step::Change(
            single(ConfChangeType::AddLearnerNode, n),
            format!("node {n} joins as a learner"),
        ));
    }
    let wanted_voters = wanted.len().min(max_voters);
    let current_voters = v.voters.iter().filter(|n| wanted.contains(n)).count();
    if current_voters < wanted_voters {
        if let Some(&n) = v
            .learners
            .iter()
            .find(|&&n| wanted.contains(&n) && caught_up(v, n) && live.contains(&n))
        {
            return Some(Step::Change(
                single(ConfChangeType::AddNode, n),
                format!("learner {n} caught up: promoted to voter"),
            ));
        }
    }
    let extra = v
        .voters
        .iter()
        .chain(v.learners.iter())
        .find(|n| !wanted.contains(n))
        .copied();
    if let Some(n) = extra {
        if n == me {
            // Hand leadership to a caught-up voter that stays, then that leader removes us.
            let to = v
                .voters
                .iter()
                .find(|&&o| o != me && wanted.contains(&o) && caught_up(v, o))
                .copied()?;
            return Some(Step::Transfer(to));
        }
        return Some(Step::Change(
            single(ConfChangeType::RemoveNode, n),
            format!("node {n} is no longer placed here: removed"),
        ));
    }
    None
}

/// Enacts placement on every group this node leads.
fn groups(node: &ClusterNode, s: &ClusterState) {
    let me = node.id();
    let live = node.live_nodes(s);
    // The controller: every active node, three voters at most.
    if let Some(v) = node.controller().filter(|v| v.role == StateRole::Leader) {
        let wanted = s.active_nodes();
        act(
            node,
            0,
            &v,
            next_step(me, &v, &wanted, CONTROLLER_VOTERS, &live),
        );
    }
    for (id, group) in ClusterNode::partitions(s) {
        let Some(v) = node.peers.board.get(group) else {
            continue;
        };
        if v.role != StateRole::Leader {
            continue;
        }
        let Some(p) = s
            .topics
            .get(&*id.topic)
            .and_then(|t| t.partitions.get(id.partition as usize))
        else {
            continue;
        };
        let wanted = p.nodes();
        let mut step = next_step(me, &v, &wanted, usize::MAX, &live);
        if step.is_none() {
            // Leadership back to the preferred replica once it has caught up.
            if let Some(&pref) = wanted.first() {
                if pref != me
                    && v.voters.contains(&pref)
                    && caught_up(&v, pref)
                    && live.contains(&pref)
                {
                    step = Some(Step::Transfer(pref));
                }
            }
        }
        act(node, group, &v, step);
    }
}

fn act(node: &ClusterNode, group: u64, v: &GroupView, step: Option<Step>) {
    match step {
        None => {}
        Some(Step::Transfer(to)) => {
            log::info!("group {group}: leadership handed to node {to}");
            node.transfer_leader(group, v.shard, to);
        }
        Some(Step::Change(cc, why)) => {
            match futures_lite::future::block_on(node.conf_change(group, v.shard, cc)) {
                Ok(index) => {
                    log::info!("group {group}: {why} (configuration change at index {index})")
                }
                Err(e) => log::info!("group {group}: {why}: not now ({e})"),
            }
        }
    }
}

/// Members gossip says left (at once) or have been unreachable longer than the dead-node
/// timeout: removed from the cluster, one per pass.
///
/// The list's own clock stops between changes, so each member's unreachable time is measured
/// here: from when this loop first saw it suspect or down (less what the list says it had
/// been so already), reset when it is seen up again.
fn remove_dead(
    node: &ClusterNode,
    s: &ClusterState,
    unreachable: &mut HashMap<String, Instant>,
) -> bool {
    let Some(watch) = node.members() else {
        return false;
    };
    let list = watch.members();
    let me = node.id();
    let now = Instant::now();
    unreachable.retain(|member, _| {
        list.members
            .iter()
            .any(|m| m.node_id.to_string() == *member && !m.state.is_live())
    });
    for (id, n) in &s.nodes {
        if n.removed || *id == me {
            continue;
        }
        let Some(m) = list
            .members
            .iter()
            .find(|m| m.node_id.to_string() == n.member)
        else {
            continue;
        };
        let since = if m.state.is_live() {
            None
        } else {
            Some(
                *unreachable
                    .entry(n.member.clone())
                    .or_insert_with(|| now.checked_sub(m.in_state_for(&list)).unwrap_or(now)),
            )
        };
        let gone = match (m.state, since) {
            (MemberState::Left, _) => Some("left the cluster".to_string()),
            (MemberState::Suspect | MemberState::Down, Some(t))
                if now.duration_since(t) >= node.dead_node_timeout =>
            {
                Some(format!(
                    "unreachable for {:?} (dead-node-timeout {:?})",
                    now.duration_since(t),
                    node.dead_node_timeout
                ))
            }
            _ => None,
        };
        if let Some(why) = gone {
            if s.active_nodes().len() <= 1 {
                return false;
            }
            log::warn!("node {id} ({}) {why}: removing it from the cluster", n.name);
            node.stats
                .nodes_removed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) =
                futures_lite::future::block_on(node.propose(&Command::RemoveNode { id: *id }))
            {
                log::info!("removing node {id}: not now ({e})");
            }
            return true;
        }
    }
    false
}

/// Replicas on removed nodes are re-created on live nodes, and a partition with fewer
/// replicas than its factor (none was free when one was removed) gets one on a live node
/// (one partition per pass).
fn replace_removed(node: &ClusterNode, s: &ClusterState) -> bool {
    let active = s.active_nodes();
    let live = node.live_nodes(s);
    for (name, t) in &s.topics {
        for (p, entry) in t.partitions.iter().enumerate() {
            let on_active = entry
                .replicas
                .iter()
                .filter(|r| active.contains(&r.node))
                .count();
            let short = (on_active as u32) < t.replication_factor
                && live.iter().any(|n| !entry.nodes().contains(n));
            if on_active == entry.replicas.len() && !short {
                continue;
            }
            let mut replicas: Vec<_> = entry
                .replicas
                .iter()
                .filter(|r| active.contains(&r.node))
                .copied()
                .collect();
            let want = (t.replication_factor as usize).max(1);
            while replicas.len() < want {
                let have: Vec<u64> = replicas.iter().map(|r| r.node).collect();
                match live.iter().find(|n| !have.contains(n)) {
                    Some(&n) => replicas.push(s.replica_on(name, p as u32, n)),
                    None => break,
                }
            }
            if replicas == entry.replicas {
                continue;
            }
            if on_active == 0 {
                log::error!("{name}/{p}: every replica was on removed nodes; nothing to copy from");
                continue;
            }
            log::warn!(
                "{name}/{p}: replicas now on nodes {:?} (replicas of removed nodes re-created, \
                 replication factor {} restored as far as live nodes allow)",
                replicas.iter().map(|r| r.node).collect::<Vec<_>>(),
                t.replication_factor
            );
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

/// The controller leader's own duties.
fn controller(node: &ClusterNode, s: &ClusterState, unreachable: &mut HashMap<String, Instant>) {
    if remove_dead(node, s, unreachable) || replace_removed(node, s) {
        return;
    }
    let live = node.live_nodes(s);
    let target = live.len().clamp(1, 3) as u32;
    let Some(t) = s.topics.get(DEFAULT_TOPIC_NAME) else {
        return;
    };
    if t.replication_factor >= target {
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
