//! The local pass: this node opens the partitions placement gives it, and only those, and
//! closes those placed elsewhere and the topics the controller deleted (see the parent module).

use crate::cluster::state::ClusterState;
use crate::cluster::ClusterNode;
use crate::raft::board::GroupView;
use crate::raft::group::Stopped;
use engine::seam::PartitionId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long this node waits before it tries again what failed or went unanswered: opening
/// or closing a replica, a membership question, and `ReplicaStopped` (or `ReplicaRecovered`)
/// sent again while the mark does not show in its applied state (the forward, or the
/// leader's entry, was lost).
pub const ASK_AGAIN: Duration = Duration::from_secs(5);

/// What the local pass remembers of topics between passes.
#[derive(Default)]
pub(super) struct Seen {
    /// Topics the controller's state listed at some pass since this node started.
    pub(super) known: BTreeSet<String>,
    /// Local topics the controller's state has never listed since this node started, with
    /// the number of passes in a row that found them so.
    pub(super) absent: BTreeMap<String, u32>,
    /// Partitions whose opening or closing here failed, by group, with when it last failed:
    /// tried again after [`ASK_AGAIN`], and warned of once (passes run every few
    /// milliseconds while commands apply, and a failing disk fails every try).
    pub(super) failed: HashMap<u64, Instant>,
    /// Groups held here but no longer placed here whose replica knows no leader, with since
    /// when this node has seen it so.
    pub(super) leaderless: HashMap<u64, Instant>,
    /// When this node last asked other members whether such a group still counts it.
    pub(super) asked: HashMap<u64, Instant>,
    /// The groups looked at in this pass (what is not is forgotten at its end).
    pub(super) tracked: BTreeSet<u64>,
    /// Topics whose dropping here began (and failed): their replicas here are closed.
    pub(super) dropping: BTreeSet<String>,
    /// Groups held here but no longer placed here whose closing failed, with the step it
    /// was: the replica may be closed already (its log closed, its board entry gone) while
    /// the partition stays held, and with no view left to decide on, the same step is
    /// tried again.
    pub(super) closing: HashMap<u64, Unplaced>,
    /// Groups held here whose closing or dropping failed, placed here again, and not opened
    /// again yet ([`closed_but_held`]): kept until an opening succeeds (one placed elsewhere
    /// again meanwhile is no longer a candidate, and opening it later if it comes back is
    /// harmless), at most one entry per partition this node holds.
    pub(super) reopen: BTreeSet<u64>,
    /// Membership questions asked in this pass ([`QUESTIONS_PER_PASS`]).
    pub(super) questions: usize,
}

impl Seen {
    /// A new local pass: no group looked at, no question asked yet.
    pub(super) fn begin_pass(&mut self) {
        self.tracked.clear();
        self.questions = 0;
    }
}

/// The most groups a local pass asks about ([`ClusterNode::group_counts_me`]): each question
/// may take up to [`crate::cluster::relay::RELAY_DEADLINE`] when the members asked do not answer, and
/// the pass (on the thread that also runs the controller leader's duties) must not wait that
/// long for every leaderless replica held here at once. The others are asked at the next
/// passes, each group at most every [`ASK_AGAIN`].
pub const QUESTIONS_PER_PASS: usize = 2;

/// Passes in a row that must find a local topic missing from the controller's state (and
/// never listed there since the start) before it is dropped: a topic created a moment ago
/// on this node is in the local catalog before a pass that read the state earlier sees it.
pub(super) const ABSENT_PASSES: u32 = 2;

/// Opens the partitions of topic `name` placed here (`mine`) and recorded held in the
/// catalog (`held`) whose replica is not open: one whose opening failed when the topic was
/// created here (a full disk, no file descriptor left) after the catalog recorded it, or
/// one left closed at start because the state did not list it yet (`opens_at_start`). A
/// replica never opened by its group gets the first configuration the state gives (this
/// node among the first voters, or none: it learns it from the leader). Tried again every
/// [`ASK_AGAIN`] while it fails, warned of once.
pub(super) fn open_held(
    node: &ClusterNode,
    engine: &engine::EngineHandle,
    name: &str,
    mine: &[u32],
    held: &[u32],
    seen: &mut Seen,
    now: Instant,
) {
    // The caller checked that it is the controller's.
    let incarnation = local_incarnation(engine, name).unwrap_or(0);
    // `held` is ascending (`EngineHandle::held_partitions`).
    for &p in mine.iter().filter(|p| held.binary_search(p).is_ok()) {
        let id = PartitionId::new(name, p);
        let group = crate::raft::replica::group_id(&id, incarnation);
        // On the board once its shard's loop has run a round with it (a moment after its
        // open: opening it again meanwhile finds it open).
        if node.peers.board.holds(group) {
            node.set_open_failure(group, None);
            continue;
        }
        if seen.closing.contains_key(&group)
            || seen.reopen.contains(&group)
            || !retry_due(&seen.failed, group, now)
        {
            continue;
        }
        match futures_lite::future::block_on(engine.open_partition(name, p)) {
            Ok(()) => {
                node.set_open_failure(group, None);
                if seen.failed.remove(&group).is_some() {
                    log::info!("{id}: its replica here, held but not open, opened");
                }
            }
            Err(e) => {
                node.set_open_failure(group, Some(e.to_string()));
                let level = first_failure(&mut seen.failed, group, now);
                log::log!(
                    level,
                    "{id}: opening its replica here, held but not open: {e} (tried again \
                     every {ASK_AGAIN:?})"
                );
            }
        }
    }
}

/// Gives this node's replicas of topic `name` the retention limits of the controller's
/// state (`config`) when its catalog holds others: a change committed while this node was
/// down or had not applied it yet. Each replica applies them at once.
pub(super) fn sync_retention(
    engine: &engine::EngineHandle,
    name: &str,
    config: &engine::LogConfig,
) {
    let wanted = (config.retention_bytes, config.retention_ms);
    let Ok(here) = engine.topic(name) else { return };
    if (here.config.retention_bytes, here.config.retention_ms) == wanted {
        return;
    }
    match futures_lite::future::block_on(engine.set_retention(name, wanted.0, wanted.1)) {
        Ok(_) => log::info!(
            "topic {name:?}: retention limits now {} bytes, {} ms (0: none), as the controller \
             says",
            wanted.0,
            wanted.1
        ),
        Err(e) => log::warn!("topic {name:?}: taking the retention limits {wanted:?}: {e}"),
    }
}

/// Opens the partitions placed here, closes those placed elsewhere (of topics some partition
/// of which stays placed here), drops the topics none of whose partitions is placed here,
/// and those the controller deleted (also while this node was down).
pub(super) fn local(node: &ClusterNode, s: &ClusterState, seen: &mut Seen) {
    let Some(engine) = node.engine() else { return };
    let me = node.id();
    for name in s.topics.keys() {
        seen.known.insert(name.clone());
    }
    let now = Instant::now();
    for (name, mine) in node.placed_here(s) {
        let Some(t) = s.topics.get(&name) else {
            continue;
        };
        let held = match engine.held_partitions(&name) {
            Ok(held) => held,
            Err(engine::Error::UnknownTopic(_)) => {
                // The topic's creation here (or a first replica of it placed here): only the
                // partitions placed here are opened.
                let n = t.partitions.len() as u32;
                let config = t.config.clone();
                let made = engine.create_topic_holding(&name, n, config, &mine);
                match futures_lite::future::block_on(made) {
                    Ok(_) => log::info!(
                        "opened topic {name:?} (partitions {mine:?} of {n}) as placed by the \
                         controller"
                    ),
                    Err(engine::Error::TopicExists(_)) => {}
                    Err(e) => log::warn!("opening topic {name:?} placed here: {e}"),
                }
                continue;
            }
            Err(_) => continue,
        };
        let incarnation = t.config.incarnation;
        if local_incarnation(engine, &name) != Some(incarnation) {
            // A copy of another topic of that name (deleted since, or, while this state
            // lags, created since): none of its replicas is this topic's. An earlier one is
            // dropped below; a later one waits for the state.
            continue;
        }
        sync_retention(engine, &name, &t.config);
        open_held(node, engine, &name, &mine, &held, seen, now);
        let reopened = closed_but_held(&name, incarnation, &mine, &held, seen);
        let opened = mine.iter().copied().filter(|p| !held.contains(p));
        for p in opened.chain(reopened.iter().copied()) {
            let id = PartitionId::new(name.as_str(), p);
            let group = crate::raft::replica::group_id(&id, incarnation);
            if reopened.contains(&p) {
                // Remembered until it opens: what put it here is forgotten at the pass's end.
                seen.reopen.insert(group);
            }
            if !retry_due(&seen.failed, group, now) {
                continue;
            }
            let opened = node.open_added_partition(&id);
            node.set_open_failure(group, opened.as_ref().err().map(|e| e.to_string()));
            match opened {
                Ok(()) if reopened.contains(&p) => {
                    seen.failed.remove(&group);
                    seen.closing.remove(&group);
                    seen.reopen.remove(&group);
                    log::info!(
                        "{name}/{p}: placed here again while its closing had failed: opened \
                         again"
                    );
                }
                Ok(()) => {
                    seen.failed.remove(&group);
                    log::info!("{name}/{p}: a replica placed here: opened");
                }
                Err(e) => {
                    let level = first_failure(&mut seen.failed, group, now);
                    log::log!(
                        level,
                        "{name}/{p}: opening the replica placed here: {e} (tried again every \
                         {ASK_AGAIN:?})"
                    );
                }
            }
        }
    }
    // A node the registry does not list as active (removed while it was away, until it is
    // re-admitted) drops nothing: placement will likely give it its partitions back, and its
    // logs then catch up from where they are instead of from nothing.
    if s.nodes.get(&me).is_none_or(|n| n.removed) {
        // What was seen leaderless before counts no more once passes resume.
        seen.leaderless.clear();
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
        seen.leaderless.clear();
        return;
    }
    let Ok(local) = engine.list_topics() else {
        return;
    };
    seen.begin_pass();
    close_unplaced(node, s, engine, seen, now);
    seen.absent
        .retain(|name, _| local.iter().any(|t| &t.name == name) && !s.topics.contains_key(name));
    for t in &local {
        if t.name == engine::CONTROLLER_TOPIC {
            continue;
        }
        if t.config.incarnation != 0 && t.config.incarnation >= s.next_incarnation {
            // Created after this pass read the state (on this node, the controller's
            // leader: its creation opens it at once): not judged on that state.
            continue;
        }
        if !seen.known.contains(&t.name) {
            // Deleted while this node was down (the state holds no record of deleted
            // topics), or created here after this pass read the state.
            let passes = seen.absent.entry(t.name.clone()).or_default();
            *passes += 1;
            if *passes < ABSENT_PASSES {
                continue;
            }
        }
        // A copy of a topic of that name deleted since (the state's was created after it):
        // dropped as a deleted one, whatever the new topic places here (its replicas here
        // are opened afresh by the next pass).
        let earlier = s
            .topics
            .get(&t.name)
            .is_some_and(|e| t.config.incarnation < e.config.incarnation);
        if earlier {
            match futures_lite::future::block_on(engine.delete_topic(&t.name)) {
                Ok(()) => log::info!(
                    "dropped topic {:?} (incarnation {}): the controller's topic of that name \
                     was created after it was deleted (incarnation {})",
                    t.name,
                    t.config.incarnation,
                    s.topics.get(&t.name).map_or(0, |e| e.config.incarnation)
                ),
                Err(e) => {
                    if seen.dropping.insert(t.name.clone()) {
                        log::warn!("dropping topic {:?}, deleted since: {e}", t.name);
                    }
                }
            }
            continue;
        }
        let hosted = s
            .topics
            .get(&t.name)
            .is_some_and(|e| e.partitions.iter().any(|p| p.nodes().contains(&me)));
        if !hosted && s.topics.contains_key(&t.name) && !seen.dropping.contains(&t.name) {
            // Placed elsewhere, not deleted: dropped only once no replica of it here may
            // still count in its group (as `close_unplaced` closes one partition).
            if let Some(p) = still_counted(node, s, engine, &t.name, seen, now) {
                log::debug!(
                    "topic {:?}: no replica of it placed here, but {}/{p} may still count in \
                     its group: dropped later",
                    t.name,
                    t.name
                );
                continue;
            }
        }
        if !hosted {
            match futures_lite::future::block_on(engine.delete_topic(&t.name)) {
                Ok(()) => log::info!(
                    "dropped topic {:?}: no replica of it is placed here",
                    t.name
                ),
                Err(e) => {
                    log::warn!("dropping topic {:?}: {e}", t.name);
                    seen.dropping.insert(t.name.clone());
                }
            }
        }
    }
    prune_dropping(
        &mut seen.dropping,
        |name| local.iter().any(|t| t.name == name),
        s,
        me,
    );
    let tracked = std::mem::take(&mut seen.tracked);
    seen.leaderless.retain(|g, _| tracked.contains(g));
    seen.asked.retain(|g, _| tracked.contains(g));
    seen.closing.retain(|g, _| tracked.contains(g));
}

/// The partitions of topic `name` placed here (`mine`) and held here (`held`) whose replica
/// a closing or a dropping that failed may have closed (`seen.closing`, `seen.dropping`), or
/// whose opening again is still to succeed (`seen.reopen`): the partition stays held, so
/// nothing else opens it again until a restart. Opening one that is open is a no-op (the
/// engine finds it open).
pub(super) fn closed_but_held(
    name: &str,
    incarnation: u64,
    mine: &[u32],
    held: &[u32],
    seen: &Seen,
) -> Vec<u32> {
    mine.iter()
        .copied()
        .filter(|p| held.contains(p))
        .filter(|&p| {
            let group = crate::raft::replica::group_id(&PartitionId::new(name, p), incarnation);
            seen.dropping.contains(name)
                || seen.closing.contains_key(&group)
                || seen.reopen.contains(&group)
        })
        .collect()
}

/// Forgets, in `dropping` (topics whose dropping here failed, dropped again at once without
/// asking whether a replica here still counts), the topics no longer held here (`is_local`)
/// and those placed here again in `s`: their replicas reopen and rejoin their groups, so a
/// later move away must ask again ([`still_counted`]) before the topic goes.
pub(super) fn prune_dropping(
    dropping: &mut BTreeSet<String>,
    is_local: impl Fn(&str) -> bool,
    s: &ClusterState,
    me: u64,
) {
    dropping.retain(|name| {
        let hosted = s
            .topics
            .get(name)
            .is_some_and(|e| e.partitions.iter().any(|p| p.nodes().contains(&me)));
        is_local(name) && !hosted
    });
}

/// A partition of `topic` held here whose replica its group may still count (see
/// [`unplaced_decision`]: neither stopped for good nor left out of its group), if any.
pub(super) fn still_counted(
    node: &ClusterNode,
    s: &ClusterState,
    engine: &engine::EngineHandle,
    topic: &str,
    seen: &mut Seen,
    now: Instant,
) -> Option<u32> {
    let held = engine.held_partitions(topic).ok()?;
    // Every one looked at (each counts its leaderless time), the first still counted named.
    let counted: Vec<u32> = held
        .into_iter()
        .filter(|&p| {
            let step = unplaced_decision(node, s, &PartitionId::new(topic, p), seen, now);
            !matches!(step, Unplaced::Remove | Unplaced::Drop)
        })
        .collect();
    counted.first().copied()
}

/// [`unplaced_step`] for partition `id`, held here and no longer placed here, as this node
/// sees its group now, counting how long it has known no leader in `seen`. A replica whose
/// configuration here still counts this node but that has heard from no leader for
/// [`DEFAULT_MOVED_REPLICA_TIMEOUT`] is asked about: when a member of its current placement whose
/// replica applied at least as far says the group no longer counts this node
/// ([`ClusterNode::group_counts_me`], at most every [`ASK_AGAIN`], and about at most
/// [`QUESTIONS_PER_PASS`] groups a pass), it is left out for good
/// and its data goes ([`Unplaced::Drop`]); otherwise it is closed and kept.
pub(super) fn unplaced_decision(
    node: &ClusterNode,
    s: &ClusterState,
    id: &PartitionId,
    seen: &mut Seen,
    now: Instant,
) -> Unplaced {
    let incarnation = s.topics.get(&*id.topic).map_or(0, |t| t.config.incarnation);
    let group = crate::raft::replica::group_id(id, incarnation);
    seen.tracked.insert(group);
    let v = node.peers.board.get(group);
    let leaderless = match v.as_ref().filter(|v| v.leader == raft::INVALID_ID) {
        Some(_) => Some(now.duration_since(*seen.leaderless.entry(group).or_insert(now))),
        None => {
            seen.leaderless.remove(&group);
            None
        }
    };
    let tried = seen.closing.get(&group).copied();
    let timeout = node.moved_replica_timeout();
    let step = closing_step(node.id(), v.as_ref(), leaderless, timeout, tried);
    let (Unplaced::Close, Some(v)) = (&step, v.as_ref()) else {
        return step;
    };
    if seen
        .asked
        .get(&group)
        .is_some_and(|a| now.duration_since(*a) < ASK_AGAIN)
    {
        return Unplaced::Keep;
    }
    if seen.questions >= QUESTIONS_PER_PASS {
        // Asked about at a later pass.
        return Unplaced::Keep;
    }
    seen.questions += 1;
    seen.asked.insert(group, now);
    let targets = s.partition(id).map(|p| p.nodes()).unwrap_or_default();
    match node.group_counts_me(group, v.applied, &targets) {
        Some(false) => Unplaced::Drop,
        _ => step,
    }
}

/// How long a replica held here but no longer placed here may know no leader before it is
/// closed although its group may still count it (see [`unplaced_step`]), unless
/// `--moved-replica-timeout` says otherwise ([`ClusterNode::moved_replica_timeout`]).
pub const DEFAULT_MOVED_REPLICA_TIMEOUT: Duration = Duration::from_secs(30);

/// What becomes of a partition this node holds that the controller no longer places here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unplaced {
    /// Closed, its directory removed: its replica stopped for good (its log latched, or
    /// marked lost), and the controller moved it; what it held is needed nowhere.
    Remove,
    /// Closed, its directory removed: its group's configuration as applied here does not
    /// count this node (it never did, or its removal committed and was applied here), so
    /// the group needs nothing it holds; placed here again, it starts empty and is caught up
    /// as a learner, as any replica placed after its topic's creation.
    Drop,
    /// Closed, its directory kept (opened again if the partition is placed here again): the
    /// group may still count it, which this node cannot tell (it heard from no leader).
    Close,
    /// Left open for now.
    Keep,
}

/// What to do with a partition held here, no longer placed here, whose group this node
/// sees as `v` (none: not open, or not published yet), whose replica has known no leader
/// for `leaderless` (none: it knows one), closed after `timeout` without one
/// (`--moved-replica-timeout`). A running replica is closed only once its group
/// no longer talks to it: its configuration here does not count this node (it never had
/// one, or its removal was applied here: then its data goes too, [`Unplaced::Drop`]), or it
/// has heard from no leader for `timeout` (a leader that removed it stops sending to it, and it may never learn of its removal: its data is kept). Closed earlier,
/// a replica the group still counts as a voter (the replica placed instead still catching
/// up) would take a vote from it: with two replicas, its quorum.
///
/// A configuration applied here is a committed one, so one that does not count this node
/// means the group's voters no longer wait for it; and a replica the group counts as a
/// voter was promoted from learner once caught up, after its log held the entry adding it,
/// so its configuration here counts it at least as a learner until its removal applies.
pub(super) fn unplaced_step(
    me: u64,
    v: Option<&GroupView>,
    leaderless: Option<Duration>,
    timeout: Duration,
) -> Unplaced {
    let Some(v) = v else {
        return Unplaced::Keep;
    };
    match v.stopped {
        Some(Stopped::Failed) => return Unplaced::Remove,
        // Resumes by itself once space returns; its group may still count it.
        Some(Stopped::DiskFull) => return Unplaced::Keep,
        None => {}
    }
    if !v.voters.contains(&me) && !v.learners.contains(&me) {
        return Unplaced::Drop;
    }
    if v.leader == raft::INVALID_ID && leaderless.is_some_and(|d| d >= timeout) {
        return Unplaced::Close;
    }
    Unplaced::Keep
}

/// The step for a partition held here, no longer placed here, as [`unplaced_step`] says, or,
/// when its replica is no longer on the board and an earlier closing of it failed as
/// `tried`, that step again: the failure came after the replica was closed (its view went
/// with it), and the partition stays held until a closing completes.
pub(super) fn closing_step(
    me: u64,
    v: Option<&GroupView>,
    leaderless: Option<Duration>,
    timeout: Duration,
    tried: Option<Unplaced>,
) -> Unplaced {
    match (v, tried) {
        (None, Some(step)) => step,
        _ => unplaced_step(me, v, leaderless, timeout),
    }
}

/// Closes the partitions this node holds that the controller no longer places here, of the
/// topics some partition of which stays placed here (a topic with none is dropped whole),
/// as [`unplaced_step`] says: a replica that stopped for good is closed and its directory
/// removed; a running one is closed once its group no longer talks to it, its directory
/// removed when its configuration here no longer counts this node and kept otherwise.
/// Called only on a settled state (see `local`), so "no longer placed" is not an old
/// view. A closing that fails is tried again after [`ASK_AGAIN`], and warned of once: with
/// the step it was when the failure came after the replica closed (its view gone), since
/// the engine leaves such a partition held (and, when the rename of its directory failed,
/// the directory in place) until a closing completes.
pub(super) fn close_unplaced(
    node: &ClusterNode,
    s: &ClusterState,
    engine: &engine::EngineHandle,
    seen: &mut Seen,
    now: Instant,
) {
    for (name, mine) in node.placed_here(s) {
        let Ok(held) = engine.held_partitions(&name) else {
            continue;
        };
        let incarnation = s.topics.get(&name).map_or(0, |t| t.config.incarnation);
        if local_incarnation(engine, &name) != Some(incarnation) {
            // Another topic of that name: `local` drops it whole (or waits).
            continue;
        }
        for p in held.into_iter().filter(|p| !mine.contains(p)) {
            let id = PartitionId::new(name.as_str(), p);
            let group = crate::raft::replica::group_id(&id, incarnation);
            if !retry_due(&seen.failed, group, now) {
                seen.tracked.insert(group);
                continue;
            }
            let step = unplaced_decision(node, s, &id, seen, now);
            if step == Unplaced::Keep {
                continue;
            }
            let remove = matches!(step, Unplaced::Remove | Unplaced::Drop);
            let dir = engine::catalog::partition_dir(engine.data_dir(), &name, p);
            let closed = futures_lite::future::block_on(engine.close_partition(&name, p, remove));
            match &closed {
                Ok(()) => seen.closing.remove(&group),
                Err(_) => seen.closing.insert(group, step),
            };
            match closed {
                Ok(()) if step == Unplaced::Remove => {
                    seen.failed.remove(&group);
                    log::info!(
                        "{name}/{p}: this replica, stopped and moved to another node, is \
                         closed and its data removed"
                    );
                    node.stats
                        .stopped_replicas_reset
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(()) if remove => {
                    seen.failed.remove(&group);
                    log::info!(
                        "{name}/{p}: no longer placed here and no longer a member of its \
                         group: closed and its data removed"
                    );
                    node.stats
                        .unplaced_replicas_removed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(()) => {
                    seen.failed.remove(&group);
                    log::info!(
                        "{name}/{p}: no longer placed here: closed (its data stays in {}, \
                         opened again if it is placed here again)",
                        dir.display()
                    );
                }
                Err(e) => {
                    let level = first_failure(&mut seen.failed, group, now);
                    log::log!(
                        level,
                        "{name}/{p}: closing the replica no longer placed here: {e} (tried \
                         again every {ASK_AGAIN:?})"
                    );
                }
            }
        }
    }
}

/// True when this node's replica in `group` stopped for good (its log failed or was marked
/// lost: until the server restarts), not for want of space.
pub(super) fn stopped_for_good(node: &ClusterNode, group: u64) -> bool {
    node.peers
        .board
        .get(group)
        .is_some_and(|v| v.stopped == Some(Stopped::Failed))
}

/// True when a partition whose opening or closing failed at `failed` may be tried again.
pub(super) fn retry_due(failed: &HashMap<u64, Instant>, group: u64, now: Instant) -> bool {
    failed
        .get(&group)
        .is_none_or(|&at| now.duration_since(at) >= ASK_AGAIN)
}

/// Records a failure of `group`'s opening or closing at `now`, and returns the level to log
/// it at: a warning the first time, debug for the retries.
pub(super) fn first_failure(
    failed: &mut HashMap<u64, Instant>,
    group: u64,
    now: Instant,
) -> log::Level {
    match failed.insert(group, now) {
        None => log::Level::Warn,
        Some(_) => log::Level::Debug,
    }
}

/// The incarnation of topic `name` in this node's catalog (`None`: not held here).
fn local_incarnation(engine: &engine::EngineHandle, name: &str) -> Option<u64> {
    engine.topic(name).ok().map(|t| t.config.incarnation)
}
