//! The reconcile loops, on a thread of their own (`proglog-cluster`), about once a second and
//! whenever the controller applies a command. Each pass compares what is with what should be
//! and makes at most one change per group, so a pass that fails (leadership moved, a change
//! pending) is simply made again by the next one: nothing is one-shot.
//!
//! - **Local**: this node opens the partitions placement gives it, and only those (a topic
//!   created on another node exists here once the controller applies it; a replica placed
//!   here later is opened when it is), and closes those placed elsewhere (their topic dropped
//!   when none of its partitions is placed here) and topics the controller deleted (also while
//!   this node was down), once everything in its own controller log is applied and known
//!   committed (never on a view older than a placement it already holds).
//! - **Groups this node leads** (the controller's and every partition's): a placed node not in
//!   the configuration joins as a learner; a caught-up learner is promoted (the controller
//!   keeps at most three voters, the rest learners); a member no longer placed is removed (a
//!   leader first hands its leadership to a caught-up voter); a caught-up preferred leader
//!   (the partition's first replica) that gossip lists up gets leadership back. A node the
//!   controller removed while it runs changes nothing and hands over what it leads.
//! - **Replicas of this node that stopped for good** (their log failed: stopped until the
//!   server restarts): past `--stopped-replica-grace` this node tells the controller
//!   (`ReplicaStopped`, forwarded to the controller's leader), which moves the replica.
//! - **The controller's leader**: the `default` topic's replication factor rises to
//!   min(3, live nodes) as nodes join; replicas of removed nodes, and replicas marked
//!   stopped, are re-created on live nodes that lack one.

use super::state::{ClusterState, Command, PartitionEntry, Replica, CONTROLLER_VOTERS};
use super::ClusterNode;
use crate::membership::{MemberList, MemberState};
use crate::raft::board::GroupView;
use crate::raft::group::Stopped;
use crate::raft::logger::GroupName;
use engine::seam::PartitionId;
use event_listener::Listener as _;
use proto::log::v1::DEFAULT_TOPIC as DEFAULT_TOPIC_NAME;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::StateRole;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between passes when nothing is applied.
pub const PASS_INTERVAL: Duration = Duration::from_millis(1000);

/// A node sends `ReplicaStopped` again this long after it last did, while the mark does not
/// show in its applied state (the forward, or the leader's entry, was lost).
pub const ASK_AGAIN: Duration = Duration::from_secs(5);

/// Starts the loops; they end when the node stops.
pub fn spawn(node: Arc<ClusterNode>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("proglog-cluster".into())
        .spawn(move || run(node))
}

fn run(node: Arc<ClusterNode>) {
    let mut seen = Seen::default();
    let mut countdown = Countdown::default();
    let mut stopped_here: HashMap<u64, StoppedHere> = HashMap::new();
    let mut recovered_here: HashMap<u64, Instant> = HashMap::new();
    let mut unplaced: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut controller_here = ControllerHere::default();
    while !node.stopping() {
        let listener = node.changed.listen();
        let s = node.state();
        if node.id() != 0 && !s.cluster_id.is_empty() {
            node.refresh_addresses(&s);
            local(&node, &s, &mut seen);
            groups(&node, &s);
            report_stopped(&node, &s, &mut stopped_here, Instant::now());
            report_recovered(&node, &s, &mut recovered_here, Instant::now());
            controller_replica(&node, &s, &mut controller_here, Instant::now());
            if node.is_controller_leader() {
                controller(&node, &s, &mut countdown, &mut unplaced);
            } else {
                // A later term as leader counts from its own observations: what this node
                // saw while another led may be stale (the member came back and went again).
                countdown.clear();
                unplaced.clear();
            }
        } else if super::recovers_without_state(
            node.id(),
            &s.cluster_id,
            node.controller().as_ref(),
            controller_here.fresh || controller_here.resetting,
        ) {
            // No state (the controller's log was found lost at start, or started afresh):
            // only the controller's replica can be looked after, and it brings the state.
            controller_replica(&node, &s, &mut controller_here, Instant::now());
        }
        // Waiters on the state check their deadlines at least this often.
        node.tick.notify(usize::MAX);
        let _ = listener.wait_timeout(PASS_INTERVAL);
        // Several commands applied at once make one pass.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the local pass remembers of topics between passes.
#[derive(Default)]
struct Seen {
    /// Topics the controller's state listed at some pass since this node started.
    known: BTreeSet<String>,
    /// Local topics the controller's state has never listed since this node started, with
    /// the number of passes in a row that found them so.
    absent: BTreeMap<String, u32>,
    /// Partitions whose opening or closing here failed, by group, with when it last failed:
    /// tried again after [`ASK_AGAIN`], and warned of once (passes run every few
    /// milliseconds while commands apply, and a failing disk fails every try).
    failed: HashMap<u64, Instant>,
    /// Groups held here but no longer placed here whose replica knows no leader, with since
    /// when this node has seen it so.
    leaderless: HashMap<u64, Instant>,
    /// When this node last asked other members whether such a group still counts it.
    asked: HashMap<u64, Instant>,
    /// The groups looked at in this pass (what is not is forgotten at its end).
    tracked: BTreeSet<u64>,
    /// Topics whose dropping here began (and failed): their replicas here are closed.
    dropping: BTreeSet<String>,
    /// Groups held here but no longer placed here whose closing failed, with the step it
    /// was: the replica may be closed already (its log closed, its board entry gone) while
    /// the partition stays held, and with no view left to decide on, the same step is
    /// tried again.
    closing: HashMap<u64, Unplaced>,
    /// Groups held here whose closing or dropping failed, placed here again, and not opened
    /// again yet ([`closed_but_held`]): kept until an opening succeeds (one placed elsewhere
    /// again meanwhile is no longer a candidate, and opening it later if it comes back is
    /// harmless), at most one entry per partition this node holds.
    reopen: BTreeSet<u64>,
    /// Membership questions asked in this pass ([`QUESTIONS_PER_PASS`]).
    questions: usize,
}

impl Seen {
    /// A new local pass: no group looked at, no question asked yet.
    fn begin_pass(&mut self) {
        self.tracked.clear();
        self.questions = 0;
    }
}

/// The most groups a local pass asks about ([`ClusterNode::group_counts_me`]): each question
/// may take up to [`super::relay::RELAY_DEADLINE`] when the members asked do not answer, and
/// the pass (on the thread that also runs the controller leader's duties) must not wait that
/// long for every leaderless replica held here at once. The others are asked at the next
/// passes, each group at most every [`ASK_AGAIN`].
pub const QUESTIONS_PER_PASS: usize = 2;

/// Passes in a row that must find a local topic missing from the controller's state (and
/// never listed there since the start) before it is dropped: a topic created a moment ago
/// on this node is in the local catalog before a pass that read the state earlier sees it.
const ABSENT_PASSES: u32 = 2;

/// Opens the partitions of topic `name` placed here (`mine`) and recorded held in the
/// catalog (`held`) whose replica is not open: one whose opening failed when the topic was
/// created here (a full disk, no file descriptor left) after the catalog recorded it, or
/// one left closed at start because the state did not list it yet (`opens_at_start`). A
/// replica never opened by its group gets the first configuration the state gives (this
/// node among the first voters, or none: it learns it from the leader). Tried again every
/// [`ASK_AGAIN`] while it fails, warned of once.
fn open_held(
    node: &ClusterNode,
    engine: &engine::EngineHandle,
    name: &str,
    mine: &[u32],
    held: &[u32],
    seen: &mut Seen,
    now: Instant,
) {
    // `held` is ascending (`EngineHandle::held_partitions`).
    for &p in mine.iter().filter(|p| held.binary_search(p).is_ok()) {
        let id = PartitionId::new(name, p);
        let group = crate::raft::replica::group_id(&id);
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
fn sync_retention(engine: &engine::EngineHandle, name: &str, config: &engine::LogConfig) {
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
fn local(node: &ClusterNode, s: &ClusterState, seen: &mut Seen) {
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
        sync_retention(engine, &name, &t.config);
        open_held(node, engine, &name, &mine, &held, seen, now);
        let reopened = closed_but_held(&name, &mine, &held, seen);
        let opened = mine.iter().copied().filter(|p| !held.contains(p));
        for p in opened.chain(reopened.iter().copied()) {
            let id = PartitionId::new(name.as_str(), p);
            let group = crate::raft::replica::group_id(&id);
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
        if !seen.known.contains(&t.name) {
            // Deleted while this node was down (the state holds no record of deleted
            // topics), or created here after this pass read the state.
            let passes = seen.absent.entry(t.name.clone()).or_default();
            *passes += 1;
            if *passes < ABSENT_PASSES {
                continue;
            }
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
fn closed_but_held(name: &str, mine: &[u32], held: &[u32], seen: &Seen) -> Vec<u32> {
    mine.iter()
        .copied()
        .filter(|p| held.contains(p))
        .filter(|&p| {
            let group = crate::raft::replica::group_id(&PartitionId::new(name, p));
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
fn prune_dropping(
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
fn still_counted(
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
fn unplaced_decision(
    node: &ClusterNode,
    s: &ClusterState,
    id: &PartitionId,
    seen: &mut Seen,
    now: Instant,
) -> Unplaced {
    let group = crate::raft::replica::group_id(id);
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

/// True when a partition whose opening or closing failed at `failed` may be tried again.
fn retry_due(failed: &HashMap<u64, Instant>, group: u64, now: Instant) -> bool {
    failed
        .get(&group)
        .is_none_or(|&at| now.duration_since(at) >= ASK_AGAIN)
}

/// Records a failure of `group`'s opening or closing at `now`, and returns the level to log
/// it at: a warning the first time, debug for the retries.
fn first_failure(failed: &mut HashMap<u64, Instant>, group: u64, now: Instant) -> log::Level {
    match failed.insert(group, now) {
        None => log::Level::Warn,
        Some(_) => log::Level::Debug,
    }
}

/// How long a replica held here but no longer placed here may know no leader before it is
/// closed although its group may still count it (see [`unplaced_step`]), unless
/// `--moved-replica-timeout` says otherwise ([`ClusterNode::moved_replica_timeout`]).
pub const DEFAULT_MOVED_REPLICA_TIMEOUT: Duration = Duration::from_secs(30);

/// What becomes of a partition this node holds that the controller no longer places here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unplaced {
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
fn unplaced_step(
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
fn closing_step(
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
fn close_unplaced(
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
        for p in held.into_iter().filter(|p| !mine.contains(p)) {
            let id = PartitionId::new(name.as_str(), p);
            let group = crate::raft::replica::group_id(&id);
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
fn stopped_for_good(node: &ClusterNode, group: u64) -> bool {
    node.peers
        .board
        .get(group)
        .is_some_and(|v| v.stopped == Some(Stopped::Failed))
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
#[derive(Debug, PartialEq)]
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
    up: &[u64],
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
            // Hand leadership to a caught-up voter that stays, then that leader removes us:
            // one gossip lists up if there is one (while a transfer is pending raft-rs drops
            // the group's proposals: to a node cut off, for an election timeout).
            let stays = |o: &&u64| **o != me && wanted.contains(o) && caught_up(v, **o);
            let to = v
                .voters
                .iter()
                .find(|o| stays(o) && up.contains(o))
                .or_else(|| v.voters.iter().find(stays))
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
    let up = node.up_nodes(s);
    // The controller: every active node, three voters at most; not a node whose controller
    // replica stopped for good (it starts that replica afresh once left out, and asks back).
    if let Some(v) = node.controller().filter(|v| v.role == StateRole::Leader) {
        let wanted: Vec<u64> = s
            .active_nodes()
            .into_iter()
            .filter(|n| *n == me || !s.controller_stopped.contains(n))
            .collect();
        act(
            node,
            0,
            &v,
            next_step(me, &v, &wanted, CONTROLLER_VOTERS, &live, &up),
        );
    }
    // Partition leaders here act on placement only while this node's state is the
    // controller's current one; otherwise they hand their leadership over, as a removed
    // node's do (see `partition_step`).
    let stale = controller_stale(me, node.controller().as_ref());
    let removed_here = stale || s.nodes.get(&me).is_some_and(|n| n.removed);
    for (id, group) in ClusterNode::partitions(s) {
        let Some(v) = node.peers.board.get(group) else {
            continue;
        };
        if v.role != StateRole::Leader {
            continue;
        }
        let Some(p) = s.partition(&id) else {
            continue;
        };
        let step = partition_step(me, removed_here, &v, &p.nodes(), &live, &up);
        act(node, group, &v, step);
    }
}

/// Whether the controller's state this node applies may be stale for good: its controller
/// replica `v` is not open, stopped (its log failed or was found lost: it applies nothing
/// until started afresh), or no longer in the controller's configuration (left out, or
/// removed with its node: the controller's log reaches it no more). A placement read from
/// such a state may have been replaced since: a partition leader here that enacted it would
/// take out the replicas placed instead, and add back those moved away.
fn controller_stale(me: u64, v: Option<&GroupView>) -> bool {
    v.is_none_or(|v| v.stopped.is_some() || (!v.voters.contains(&me) && !v.learners.contains(&me)))
}

/// What a partition group this node leads should change next. `wanted` is its placement as
/// this node knows it, `live` the nodes gossip lists up or suspect, `up` those it lists up.
///
/// A node the controller removed while it ran keeps leading the groups it led: their other
/// voters hear it and never campaign. It does not learn the placement that replaces it (the
/// controller's log reaches it no more), so it would never remove itself, and the group would
/// keep a removed leader and never get the replicas placed instead. Such a node only hands
/// its leadership to a caught-up voter gossip lists up; that leader, which knows the new
/// placement, then changes the group. Leadership goes back to a preferred replica only if
/// gossip lists it up: a suspect one may be cut off (and the controller about to remove it).
fn partition_step(
    me: u64,
    removed_here: bool,
    v: &GroupView,
    wanted: &[u64],
    live: &[u64],
    up: &[u64],
) -> Option<Step> {
    if removed_here {
        return v
            .voters
            .iter()
            .find(|&&o| o != me && up.contains(&o) && caught_up(v, o))
            .map(|&o| Step::Transfer(o));
    }
    if let Some(step) = next_step(me, v, wanted, usize::MAX, live, up) {
        return Some(step);
    }
    let &pref = wanted.first()?;
    (pref != me && v.voters.contains(&pref) && caught_up(v, pref) && up.contains(&pref))
        .then_some(Step::Transfer(pref))
}

fn act(node: &ClusterNode, group: u64, v: &GroupView, step: Option<Step>) {
    match step {
        None => {}
        Some(Step::Transfer(to)) => {
            log::info!("{}: leadership handed to node {to}", GroupName(group));
            node.transfer_leader(group, v.shard, to);
        }
        Some(Step::Change(cc, why)) => {
            match futures_lite::future::block_on(node.conf_change(group, v.shard, cc)) {
                Ok(index) => {
                    log::info!(
                        "{}: {why} (configuration change at index {index})",
                        GroupName(group)
                    )
                }
                Err(e) => log::info!("{}: {why}: not now ({e})", GroupName(group)),
            }
        }
    }
}

/// Members gossip says left (at once) or have not been up for the dead-node timeout: removed
/// from the cluster, one per pass.
fn remove_dead(node: &ClusterNode, s: &ClusterState, countdown: &mut Countdown) -> bool {
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
    since: HashMap<String, NotUp>,
}

/// One member's countdown.
#[derive(Debug, Clone, Copy)]
struct NotUp {
    /// Not up since then.
    start: Instant,
    /// Its state and since when (membership clock) when last listed.
    listed: Option<(MemberState, Duration)>,
}

impl Countdown {
    /// Updates every registered member's countdown from `list` at `now`, and returns the
    /// first node (by Raft id) to remove and why: one that left, or one not up for `timeout`.
    /// `me` is never removed.
    fn due(
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

    fn clear(&mut self) {
        self.since.clear();
    }
}

/// A replica of this node seen stopped for good: since when, and when this node last asked
/// the controller to move it.
#[derive(Debug, Clone, Copy)]
struct StoppedHere {
    since: Instant,
    asked: Option<Instant>,
}

/// This node's replicas whose group stopped for good (`Stopped::Failed`: its log latched
/// after an I/O error, or its raft.meta could not be written; it stays stopped until the
/// server restarts, and a restart within the grace period reopens it): past
/// `--stopped-replica-grace` this node sends the controller `ReplicaStopped`, again every
/// [`ASK_AGAIN`] until its applied state shows the mark. A full disk (`Stopped::DiskFull`)
/// resumes by itself and is not reported.
fn report_stopped(
    node: &ClusterNode,
    s: &ClusterState,
    here: &mut HashMap<u64, StoppedHere>,
    now: Instant,
) {
    let me = node.id();
    let mut still = BTreeSet::new();
    for (id, group) in ClusterNode::partitions(s) {
        let Some(p) = s.partition(&id) else {
            continue;
        };
        if !p.nodes().contains(&me) || p.stopped.contains(&me) {
            continue;
        }
        if !stopped_for_good(node, group) {
            continue;
        }
        still.insert(group);
        let seen = here.entry(group).or_insert(StoppedHere {
            since: now,
            asked: None,
        });
        let grace = node.stopped_replica_grace;
        if now.duration_since(seen.since) < grace
            || seen
                .asked
                .is_some_and(|a| now.duration_since(a) < ASK_AGAIN)
        {
            continue;
        }
        if seen.asked.is_none() {
            log::warn!(
                "{}/{}: this replica stopped (its log failed) {grace:?} ago: asking the \
                 controller to move it to another node",
                id.topic,
                id.partition
            );
        }
        seen.asked = Some(now);
        let c = Command::ReplicaStopped {
            topic: id.topic.to_string(),
            partition: id.partition,
            node: me,
        };
        let sent = &node.stats.stopped_replicas_reported;
        tell_controller(node, &id, sent, &c, "reporting the stopped replica");
    }
    here.retain(|g, _| still.contains(g));
}

/// A replica of this node that the controller has marked stopped but that runs here (the
/// server restarted and reopened it) has the mark withdrawn: this node sends
/// `ReplicaRecovered`, again every [`ASK_AGAIN`] while the mark shows in its applied state
/// (the forward, or the leader's entry, was lost). Without it the controller would still move
/// the healthy replica once a node is free. `asked` holds when each group was last sent.
fn report_recovered(
    node: &ClusterNode,
    s: &ClusterState,
    asked: &mut HashMap<u64, Instant>,
    now: Instant,
) {
    let me = node.id();
    let mut still = BTreeSet::new();
    for (id, group) in ClusterNode::partitions(s) {
        let Some(p) = s.partition(&id) else {
            continue;
        };
        if !p.stopped.contains(&me) || !p.nodes().contains(&me) {
            continue;
        }
        let running = node
            .peers
            .board
            .get(group)
            .is_some_and(|v| v.stopped.is_none());
        if !running {
            continue;
        }
        still.insert(group);
        if asked
            .get(&group)
            .is_some_and(|&a| now.duration_since(a) < ASK_AGAIN)
        {
            continue;
        }
        if !asked.contains_key(&group) {
            log::info!(
                "{}/{}: this replica, marked stopped, runs again: asking the controller to \
                 keep it here",
                id.topic,
                id.partition
            );
        }
        asked.insert(group, now);
        let c = Command::ReplicaRecovered {
            topic: id.topic.to_string(),
            partition: id.partition,
            node: me,
        };
        let sent = &node.stats.stopped_replicas_recovered;
        tell_controller(node, &id, sent, &c, "withdrawing the stopped mark");
    }
    asked.retain(|g, _| still.contains(g));
}

/// How long this node's controller replica may run without following a leader, or outside
/// the controller's configuration, before the node asks to be counted again
/// ([`controller_replica`]).
pub const CONTROLLER_ADRIFT: Duration = Duration::from_secs(30);

/// What the pass remembers of this node's own controller replica.
#[derive(Default)]
struct ControllerHere {
    /// Since when it has been seen stopped for good.
    stopped_since: Option<Instant>,
    /// Since when it has run without following a leader or outside the configuration.
    adrift_since: Option<Instant>,
    /// When the controller was last told about it.
    asked: Option<Instant>,
    /// It was started afresh in this run and has not been counted since.
    fresh: bool,
    /// Starting it afresh failed after it was closed: its board entry is gone, and what
    /// remains to do is known only here.
    resetting: bool,
}

/// What becomes of this node's controller replica while it is not on the board (closed, or
/// not published yet), its partition held here (`held`: none, its topic unknown) and a start
/// afresh of it begun and failed in this run (`resetting`).
#[derive(Debug, PartialEq, Eq)]
enum ClosedController {
    /// Nothing yet (not opened yet at start, or its view not published yet).
    Wait,
    /// Opened afresh: it was closed and its partition let go, and the opening failed.
    Open,
    /// Started afresh again: the closing failed after the replica closed, before the
    /// partition was let go (the engine leaves it held, its directory maybe in place).
    Reset,
}

fn closed_controller(held: Option<bool>, resetting: bool) -> ClosedController {
    match held {
        Some(false) => ClosedController::Open,
        Some(true) if resetting => ClosedController::Reset,
        _ => ClosedController::Wait,
    }
}

/// This node's own controller replica (`__cluster`/0), which the placement does not list.
///
/// - **Stopped for good** (its log failed, or was marked lost) for `--stopped-replica-grace`:
///   the node sends `replica_stopped` for it (relayed: its replica cannot forward), every
///   [`ASK_AGAIN`], and the controller's leader takes it out of the group. Once a member
///   whose controller replica applied at least as far no longer counts this node
///   ([`ClusterNode::controller_counts_me`]), nothing it held is needed: the replica is
///   started afresh (empty, no configuration), as a joining node's.
/// - **Running but adrift** (outside the configuration its replica applied, or following no
///   leader, for [`CONTROLLER_ADRIFT`]; at once after a fresh start), or marked stopped in
///   the state it applies: the node sends `replica_recovered`, every [`ASK_AGAIN`], so that
///   the leader adds it back (as a learner, caught up, promoted if voters are short). A
///   replica marked stopped and left out while the node restarted with its log intact comes
///   back this way too, from its own log.
fn controller_replica(
    node: &ClusterNode,
    s: &ClusterState,
    here: &mut ControllerHere,
    now: Instant,
) {
    let me = node.id();
    let id = PartitionId::new(engine::CONTROLLER_TOPIC, 0);
    let due = |here: &ControllerHere| {
        here.asked
            .is_none_or(|a| now.duration_since(a) >= ASK_AGAIN)
    };
    let Some(v) = node.controller() else {
        let Some(engine) = node.engine() else { return };
        let held = engine
            .held_partitions(engine::CONTROLLER_TOPIC)
            .ok()
            .map(|h| h.contains(&0));
        match closed_controller(held, here.resetting) {
            ClosedController::Wait => {}
            _ if !due(here) => {}
            // Closed and not opened again (the fresh start's opening failed): open it.
            ClosedController::Open => {
                here.asked = Some(now);
                let opened = futures_lite::future::block_on(
                    engine.open_partition(engine::CONTROLLER_TOPIC, 0),
                );
                match opened {
                    Ok(()) => {
                        log::info!("the controller's replica here: opened afresh");
                        // The start afresh is complete: as after one that went through.
                        here.resetting = false;
                        here.fresh = true;
                    }
                    Err(e) => log::warn!(
                        "the controller's replica here: opening it afresh: {e} (tried again \
                         every {ASK_AGAIN:?})"
                    ),
                }
            }
            // Closed, still held: the closing failed after the replica closed.
            ClosedController::Reset => {
                here.asked = Some(now);
                start_controller_afresh(node, here);
            }
        }
        return;
    };
    match v.stopped {
        Some(Stopped::Failed) => {
            here.adrift_since = None;
            let since = *here.stopped_since.get_or_insert(now);
            let grace = node.stopped_replica_grace;
            if now.duration_since(since) < grace || !due(here) {
                return;
            }
            // Holding no state (the log found lost at start), the node reports only once its
            // registration of this run is done: one applied after the mark would withdraw
            // it, and the leader add the stopped replica back before it was started afresh.
            if s.cluster_id.is_empty()
                && !node.registered.load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            if here.asked.is_none() {
                log::warn!(
                    "the controller's replica here stopped (its log failed) {grace:?} ago: \
                     asking the controller to leave it out of its group, to start it afresh"
                );
            }
            here.asked = Some(now);
            let c = Command::ReplicaStopped {
                topic: id.topic.to_string(),
                partition: 0,
                node: me,
            };
            let sent = &node.stats.stopped_replicas_reported;
            tell_controller(node, &id, sent, &c, "reporting the stopped replica");
            if node.controller_counts_me(v.applied) != Some(false) {
                return;
            }
            start_controller_afresh(node, here);
        }
        // Resumes by itself once space returns.
        Some(Stopped::DiskFull) => here.stopped_since = None,
        // A node removed from the cluster is left out on purpose (re-admitted when it
        // registers again, at its next start): it asks nothing. Holding no state (its log
        // found lost at start, or started afresh), it cannot tell: it asks, and members
        // refuse a node that is not registered.
        None if !s.cluster_id.is_empty() && s.nodes.get(&me).is_none_or(|n| n.removed) => {
            here.stopped_since = None;
            here.adrift_since = None;
        }
        None => {
            here.stopped_since = None;
            let member = v.voters.contains(&me) || v.learners.contains(&me);
            let adrift = !member || v.leader == raft::INVALID_ID;
            let marked = s.controller_stopped.contains(&me);
            if member && here.fresh {
                here.fresh = false;
                log::info!("the controller's replica here is counted again");
            }
            if !adrift {
                here.adrift_since = None;
            }
            if !adrift && !marked {
                return;
            }
            let since = *here.adrift_since.get_or_insert(now);
            let waited = here.fresh || marked || now.duration_since(since) >= CONTROLLER_ADRIFT;
            if !waited || !due(here) {
                return;
            }
            here.asked = Some(now);
            let c = Command::ReplicaRecovered {
                topic: id.topic.to_string(),
                partition: 0,
                node: me,
            };
            let sent = &node.stats.stopped_replicas_recovered;
            tell_controller(
                node,
                &id,
                sent,
                &c,
                "asking to be counted in the controller's group",
            );
        }
    }
}

/// Starts this node's controller replica afresh ([`ClusterNode::reset_controller_replica`]),
/// left out of the controller's group: on failure, remembered in `here` so that a replica
/// closed by the failed try is started afresh again (its board entry gone with it).
fn start_controller_afresh(node: &ClusterNode, here: &mut ControllerHere) {
    match node.reset_controller_replica() {
        Ok(()) => {
            log::warn!(
                "the controller's replica here, stopped and left out of the controller's \
                 group, started afresh (its data removed); asking to be added back"
            );
            node.stats
                .controller_replica_resets
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *here = ControllerHere {
                fresh: true,
                ..ControllerHere::default()
            };
        }
        Err(e) => {
            here.resetting = true;
            log::warn!(
                "the controller's replica here: starting it afresh: {e} (tried again every \
                 {ASK_AGAIN:?})"
            );
        }
    }
}

/// Sends `c`, about this node's replica `id`, to the controller, counted in `sent`. A refusal
/// is logged (`doing` says what for); the caller sends it again later.
fn tell_controller(
    node: &ClusterNode,
    id: &PartitionId,
    sent: &std::sync::atomic::AtomicU64,
    c: &Command,
    doing: &str,
) {
    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = node.ask_controller(c) {
        log::info!("{}/{}: {doing}: not now ({e})", id.topic, id.partition);
    }
}

/// The live node to take a new replica of `entry`, whose replicas kept are on `have`: one
/// without a replica of it nor a stopped mark on it; of those, one with no replica marked
/// stopped anywhere (a node whose disk failed one log may fail the next), then the one with
/// the fewest replicas, then the lowest id.
fn new_replica_node(
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
fn replace_removed(
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
            replicas.extend(added);
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
                log::warn!(
                    "{name}/{p}: replicas now on nodes {nodes:?} (replicas of removed nodes \
                     re-created, replication factor {} restored as far as live nodes allow)",
                    t.replication_factor
                );
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
/// leadership to) spread evenly over the nodes gossip lists `up`: a replica set reordered so
/// that a partition preferring a node with more such partitions than another of its
/// replicas' nodes (by two or more) prefers that one instead; `None` when none is. Replicas
/// re-created on other nodes, or added when a node returns, go last in their sets, so
/// without this the nodes that stayed keep every leadership. Only partitions whose
/// preferred node is up are reordered: one that is down or suspect (restarting) gets its
/// leaderships back when it returns. The replica set itself does not change.
pub(crate) fn spread_preferred_leaders(s: &ClusterState, up: &[u64]) -> Option<Command> {
    let mut preferred: BTreeMap<u64, usize> = up.iter().map(|&n| (n, 0)).collect();
    for t in s.topics.values() {
        for p in &t.partitions {
            if let Some(c) = p.replicas.first().and_then(|r| preferred.get_mut(&r.node)) {
                *c += 1;
            }
        }
    }
    // The move that narrows the gap most (the first such, in topic and partition order).
    let mut best: Option<(usize, &str, usize, usize)> = None;
    for (name, t) in &s.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let Some(&from) = p.replicas.first().and_then(|r| preferred.get(&r.node)) else {
                continue;
            };
            let better = p
                .replicas
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, r)| !p.stopped.contains(&r.node))
                .filter_map(|(j, r)| preferred.get(&r.node).map(|&c| (c, j)))
                .min();
            if let Some((to, j)) = better.filter(|&(to, _)| from > to + 1) {
                if best.is_none_or(|(gap, ..)| from - to > gap) {
                    best = Some((from - to, name.as_str(), i, j));
                }
            }
        }
    }
    let (_, name, i, j) = best?;
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
fn controller(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::NodeEntry;
    use crate::membership::{Member, NodeId};

    const TIMEOUT: Duration = Duration::from_secs(600);

    fn member_id(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    /// Nodes 1 (this one, the controller's leader), 2 and 3, registered.
    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let entry = |i: u8| NodeEntry {
            member: member_id(i).to_string(),
            name: format!("n{i}"),
            rpc_addr: "127.0.0.1:1".into(),
            gossip_addr: "127.0.0.1:2".into(),
            shards: 1,
            removed: false,
        };
        s.apply(
            1,
            &Command::Bootstrap {
                cluster_id: "c".into(),
                node: entry(1),
            },
        );
        s.apply(2, &Command::Register { node: entry(2) });
        s.apply(3, &Command::Register { node: entry(3) });
        s
    }

    /// A member list taken at `as_of` on the membership clock: each member in its state
    /// since `since`. Members not given are not listed.
    fn list(as_of: u64, members: &[(u8, MemberState, u64)]) -> MemberList {
        let mut members: Vec<Member> = members
            .iter()
            .map(|&(i, state, since)| Member {
                node_id: member_id(i),
                name: format!("n{i}"),
                gossip_addr: "127.0.0.1:2".parse().unwrap(),
                rpc_addr: "127.0.0.1:1".parse().unwrap(),
                generation: 1,
                renewal: 0,
                state,
                since: Duration::from_secs(since),
                is_self: i == 1,
            })
            .collect();
        members.sort_by_key(|m| m.node_id);
        MemberList {
            version: 1,
            as_of: Duration::from_secs(as_of),
            members,
        }
    }

    use MemberState::{Down, Left, Suspect, Up};

    /// Far enough from the clock's origin to go back in time by a list's durations.
    fn start() -> Instant {
        Instant::now() + Duration::from_secs(100_000)
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_suspect_member_is_removed_after_the_timeout() {
        let s = state();
        let mut c = Countdown::default();
        let t0 = start();
        let l = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &l, t0, TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &l, at(t0, 599), TIMEOUT), None);
        let (id, why) = c.due(&s, 1, &l, at(t0, 600), TIMEOUT).unwrap();
        assert_eq!(id, 2);
        assert!(why.contains("suspect"), "{why}");
    }

    #[test]
    fn suspicion_then_down_counts_from_the_suspicion() {
        let s = state();
        let mut c = Countdown::default();
        let t0 = start();
        let suspect = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &suspect, t0, TIMEOUT), None);
        // Down 6 s later: the list says down for 0 s, but the member has not been up since t0.
        let down = list(106, &[(1, Up, 0), (2, Down, 106), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &down, at(t0, 6), TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &down, at(t0, 600), TIMEOUT).unwrap().0, 2);
    }

    #[test]
    fn a_member_seen_up_again_starts_over() {
        let s = state();
        let mut c = Countdown::default();
        let t0 = start();
        let suspect = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
        let up = list(400, &[(1, Up, 0), (2, Up, 400), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &suspect, t0, TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &up, at(t0, 300), TIMEOUT), None);
        let again = list(401, &[(1, Up, 0), (2, Suspect, 401), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &again, at(t0, 301), TIMEOUT), None);
        // 600 s after the first suspicion, 299 s after the second: not yet.
        assert_eq!(c.due(&s, 1, &again, at(t0, 600), TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &again, at(t0, 901), TIMEOUT).unwrap().0, 2);
    }

    #[test]
    fn flapping_between_two_passes_starts_over_too() {
        let s = state();
        let mut c = Countdown::default();
        let t0 = start();
        let suspect = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &suspect, t0, TIMEOUT), None);
        // No pass saw it up, but it is suspect since a later time: up in between.
        let again = list(400, &[(1, Up, 0), (2, Suspect, 399), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &again, at(t0, 300), TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &again, at(t0, 600), TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &again, at(t0, 898), TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &again, at(t0, 899), TIMEOUT).unwrap().0, 2);
    }

    #[test]
    fn a_member_the_list_no_longer_holds_is_removed_after_the_timeout() {
        let s = state();
        let mut c = Countdown::default();
        let t0 = start();
        // Node 3 is registered but not listed (its down entry expired, or never seen here).
        let l = list(100, &[(1, Up, 0), (2, Up, 0)]);
        assert_eq!(c.due(&s, 1, &l, t0, TIMEOUT), None);
        assert_eq!(c.due(&s, 1, &l, at(t0, 599), TIMEOUT), None);
        let (id, why) = c.due(&s, 1, &l, at(t0, 600), TIMEOUT).unwrap();
        assert_eq!(id, 3);
        assert!(why.contains("no longer in the member list"), "{why}");
    }

    #[test]
    fn the_countdown_survives_the_member_dropping_out_of_the_list() {
        let s = state();
        let mut c = Countdown::default();
        let t0 = start();
        // Down for 3000 s already when first seen (a timeout above the list's retention).
        let timeout = Duration::from_secs(7200);
        let down = list(3000, &[(1, Up, 0), (2, Up, 0), (3, Down, 0)]);
        assert_eq!(c.due(&s, 1, &down, t0, timeout), None);
        // An hour after going down it is dropped from the list: still counting from then.
        let gone = list(3600, &[(1, Up, 0), (2, Up, 0)]);
        assert_eq!(c.due(&s, 1, &gone, at(t0, 600), timeout), None);
        assert_eq!(c.due(&s, 1, &gone, at(t0, 4199), timeout), None);
        assert_eq!(c.due(&s, 1, &gone, at(t0, 4200), timeout).unwrap().0, 3);
        // Listed up again (it came back), it is forgotten.
        let back = list(9000, &[(1, Up, 0), (2, Up, 0), (3, Up, 9000)]);
        assert_eq!(c.due(&s, 1, &back, at(t0, 4300), timeout), None);
        assert!(c.since.is_empty());
    }

    #[test]
    fn a_new_leader_counts_from_its_own_first_sight() {
        let s = state();
        let t0 = start();
        let gone = list(100, &[(1, Up, 0), (2, Up, 0)]);
        // The old leader had counted 500 s; the new one (a fresh countdown) starts now.
        let mut old = Countdown::default();
        assert_eq!(old.due(&s, 1, &gone, t0, TIMEOUT), None);
        let mut new = Countdown::default();
        assert_eq!(new.due(&s, 2, &gone, at(t0, 500), TIMEOUT), None);
        assert_eq!(new.due(&s, 2, &gone, at(t0, 1099), TIMEOUT), None);
        assert_eq!(new.due(&s, 2, &gone, at(t0, 1100), TIMEOUT).unwrap().0, 3);
        // A node that stops leading forgets its countdown.
        old.clear();
        assert_eq!(old.due(&s, 1, &gone, at(t0, 600), TIMEOUT), None);
    }

    /// Replicas re-created after a node's removal and added back when it returns go last in
    /// their sets: the nodes that stayed would keep every leadership. The controller
    /// reorders sets, one partition a step, until no node is preferred by two partitions
    /// more than another replica's node; a node that is not up keeps what it is preferred
    /// for; the sets themselves never change.
    #[test]
    fn preferred_leaders_spread_over_the_nodes_that_are_up() {
        let mut s = state();
        let r = |node| Replica { node, shard: 0 };
        // Six partitions on nodes 1-3, all preferring node 1 or 2 (node 3 came back).
        let partitions: Vec<PartitionEntry> = [[1, 2, 3], [2, 1, 3], [1, 2, 3]]
            .iter()
            .cycle()
            .take(6)
            .map(|nodes| PartitionEntry {
                initial: nodes.to_vec(),
                replicas: nodes.iter().map(|&n| r(n)).collect(),
                stopped: Vec::new(),
                departed: Vec::new(),
            })
            .collect();
        s.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                config: engine::LogConfig::default(),
                replication_factor: 3,
                partitions,
            },
        );
        let sets = |s: &ClusterState| -> Vec<Vec<u64>> {
            let mut v: Vec<Vec<u64>> = s.topics["t"].partitions.iter().map(|p| p.nodes()).collect();
            v.iter_mut().for_each(|n| n.sort_unstable());
            v
        };
        let before = sets(&s);
        let mut index = 5;
        let mut settle = |s: &mut ClusterState, up: &[u64]| {
            let mut steps = 0;
            while let Some(c) = spread_preferred_leaders(s, up) {
                s.apply(index, &c);
                index += 1;
                steps += 1;
                assert!(steps < 10, "no fixed point");
            }
            let mut count = BTreeMap::new();
            for p in &s.topics["t"].partitions {
                *count.entry(p.replicas[0].node).or_insert(0) += 1;
            }
            count
        };
        // Node 3 not up (restarting): nothing goes to it, and 1 and 2 even out (4 and 2).
        assert_eq!(settle(&mut s, &[1, 2]), BTreeMap::from([(1, 3), (2, 3)]));
        // Node 3 up: it gets its share.
        let spread = BTreeMap::from([(1, 2), (2, 2), (3, 2)]);
        assert_eq!(settle(&mut s, &[1, 2, 3]), spread);
        assert_eq!(sets(&s), before);
        // A node down keeps what it is preferred for: nothing moves away from node 3.
        assert_eq!(spread_preferred_leaders(&s, &[1, 2]), None);
    }

    /// [`state`] with topic `t` created at index 4: one partition on nodes 1 and 2, factor 2.
    fn with_topic_t() -> ClusterState {
        let mut s = state();
        let partitions = s.place("t", 1, 2, &[1, 2]).unwrap();
        s.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                config: engine::LogConfig::default(),
                replication_factor: 2,
                partitions,
            },
        );
        s
    }

    /// Node `me` of [`state`], which holds topic `t` (one partition on nodes 1 and 2, factor
    /// 2), its replica on node 2 marked stopped when `marked`; gossip-less, so the only live
    /// node is `me`.
    fn stopped_setup(me: u8, marked: bool) -> (Arc<ClusterNode>, ClusterState) {
        let mut s = with_topic_t();
        if marked {
            s.apply(
                5,
                &Command::ReplicaStopped {
                    topic: "t".into(),
                    partition: 0,
                    node: 2,
                },
            );
        }
        let node = ClusterNode::new(
            crate::raft::transport::Peers::default(),
            TIMEOUT,
            Duration::from_secs(30),
        );
        node.set_id(u64::from(me));
        node.set_me(s.nodes[&u64::from(me)].clone());
        (node, s)
    }

    /// A follower's view of a group of voters 1 and 2, stopped as `stopped` says.
    fn view(stopped: Option<Stopped>) -> GroupView {
        GroupView {
            shard: 0,
            role: StateRole::Follower,
            term: 1,
            leader: 0,
            commit: 0,
            applied: 0,
            last_index: 0,
            voters: vec![1, 2],
            learners: Vec::new(),
            matched: Vec::new(),
            committed: Vec::new(),
            stopped,
            lost: false,
        }
    }

    /// `--moved-replica-timeout` in these tests: its default.
    const T: Duration = DEFAULT_MOVED_REPLICA_TIMEOUT;

    #[test]
    fn a_controller_replica_stopped_or_left_out_makes_the_state_stale() {
        // A voter or a learner of the controller, running: current.
        assert!(!controller_stale(
            2,
            Some(&GroupView::follower(9, vec![1, 2, 3], vec![]))
        ));
        assert!(!controller_stale(
            4,
            Some(&GroupView::follower(9, vec![1, 2, 3], vec![4]))
        ));
        // Left out (awaiting a fresh start), or removed with its node: stale.
        assert!(controller_stale(
            2,
            Some(&GroupView::follower(9, vec![1, 3], vec![]))
        ));
        // Stopped: stale; not open (closed while started afresh): stale.
        let stopped = GroupView {
            stopped: Some(Stopped::Failed),
            ..GroupView::follower(9, vec![1, 2, 3], vec![])
        };
        assert!(controller_stale(2, Some(&stopped)));
        assert!(controller_stale(2, None));
    }

    #[test]
    fn an_unplaced_replica_closes_once_its_group_no_longer_talks_to_it() {
        let led = |leader: u64, voters: Vec<u64>| GroupView {
            leader,
            voters,
            ..view(None)
        };
        let long = Some(T);
        let short = Some(T - Duration::from_secs(1));
        // Not open (or not published yet): nothing to close.
        assert_eq!(unplaced_step(2, None, long, T), Unplaced::Keep);
        // Stopped for good: closed and removed; a full disk resumes by itself: kept.
        let failed = view(Some(Stopped::Failed));
        assert_eq!(unplaced_step(2, Some(&failed), None, T), Unplaced::Remove);
        let full = view(Some(Stopped::DiskFull));
        assert_eq!(unplaced_step(2, Some(&full), long, T), Unplaced::Keep);
        // A group still counting it, with a leader: kept, however long.
        assert_eq!(
            unplaced_step(2, Some(&led(1, vec![1, 2])), None, T),
            Unplaced::Keep
        );
        // One that does not count it (never configured, or its removal applied): closed,
        // its data removed, with or without a leader.
        assert_eq!(
            unplaced_step(2, Some(&led(1, vec![1, 3])), None, T),
            Unplaced::Drop
        );
        assert_eq!(
            unplaced_step(2, Some(&led(0, Vec::new())), None, T),
            Unplaced::Drop
        );
        assert_eq!(
            unplaced_step(2, Some(&led(0, vec![1, 3])), long, T),
            Unplaced::Drop
        );
        // Counted, but no leader heard from: closed only past the grace.
        assert_eq!(
            unplaced_step(2, Some(&led(0, vec![1, 2])), short, T),
            Unplaced::Keep
        );
        assert_eq!(
            unplaced_step(2, Some(&led(0, vec![1, 2])), long, T),
            Unplaced::Close
        );
        let learner = GroupView {
            learners: vec![2],
            ..led(1, vec![1, 3])
        };
        assert_eq!(unplaced_step(2, Some(&learner), long, T), Unplaced::Keep);
    }

    #[test]
    fn a_pass_asks_about_a_bounded_number_of_groups() {
        let (node, s) = stopped_setup(2, false);
        let ids: Vec<PartitionId> = (0..5)
            .map(|i| PartitionId::new(format!("t{i}").as_str(), 0))
            .collect();
        for id in &ids {
            // Held here, placed elsewhere, still counting node 2, no leader heard from.
            node.peers
                .board
                .set(crate::raft::replica::group_id(id), view(None));
        }
        let mut seen = Seen::default();
        let t0 = Instant::now();
        seen.begin_pass();
        for id in &ids {
            let _ = unplaced_decision(&node, &s, id, &mut seen, t0);
        }
        // Past the grace: every one may be asked about, each question up to RELAY_DEADLINE
        // when its members do not answer; one pass asks about a few only.
        let later = t0 + DEFAULT_MOVED_REPLICA_TIMEOUT;
        seen.begin_pass();
        for id in &ids {
            let _ = unplaced_decision(&node, &s, id, &mut seen, later);
        }
        assert_eq!(seen.asked.len(), QUESTIONS_PER_PASS, "one pass");
        // The next passes ask about the others.
        let mut at = later;
        for _ in 0..ids.len() {
            at += Duration::from_secs(1);
            seen.begin_pass();
            for id in &ids {
                let _ = unplaced_decision(&node, &s, id, &mut seen, at);
            }
        }
        assert_eq!(seen.asked.len(), ids.len(), "every group asked in time");
    }

    #[test]
    fn a_closing_that_failed_after_the_replica_closed_is_tried_again_as_decided() {
        let failed = view(Some(Stopped::Failed));
        // First try: decided on the view.
        assert_eq!(
            closing_step(2, Some(&failed), None, T, None),
            Unplaced::Remove
        );
        // It failed after the close took the replica off the board: the same step again,
        // not "not open, nothing to close".
        for tried in [Unplaced::Remove, Unplaced::Drop, Unplaced::Close] {
            assert_eq!(closing_step(2, None, None, T, Some(tried)), tried);
        }
        assert_eq!(closing_step(2, None, None, T, None), Unplaced::Keep);
        // On the board again (opened again): decided on the view anew.
        let running = GroupView {
            leader: 1,
            ..view(None)
        };
        assert_eq!(
            closing_step(2, Some(&running), None, T, Some(Unplaced::Drop)),
            Unplaced::Keep
        );
    }

    #[test]
    fn a_topic_whose_dropping_failed_is_asked_about_again_once_placed_here_again() {
        let mut s = with_topic_t();
        // Node 3 held `t`, placed elsewhere, and failed to drop it.
        let mut dropping: BTreeSet<String> = ["t".to_owned(), "gone".to_owned()].into();
        prune_dropping(&mut dropping, |n| n == "t", &s, 3);
        assert_eq!(
            dropping,
            ["t".to_owned()].into(),
            "a topic no longer held is forgotten"
        );
        // `t` is placed on node 3 again (its replica reopened, re-added to its group): the
        // failure is forgotten, so that a later move away asks again whether the group still
        // counts the replica here before the topic is dropped, instead of dropping at once a
        // voter the group may still need.
        let mut back = s.topics["t"].partitions[0].replicas.clone();
        back.retain(|r| r.node != 2);
        back.push(s.replica_on("t", 0, 3));
        s.apply(
            5,
            &Command::SetReplicas {
                topic: "t".into(),
                partition: 0,
                replication_factor: 2,
                replicas: back,
            },
        );
        prune_dropping(&mut dropping, |n| n == "t", &s, 3);
        assert!(dropping.is_empty(), "{dropping:?}");
        // Still placed elsewhere: kept (dropped again at the next pass).
        let mut dropping: BTreeSet<String> = ["t".to_owned()].into();
        prune_dropping(&mut dropping, |n| n == "t", &s, 2);
        assert_eq!(dropping, ["t".to_owned()].into());
    }

    #[test]
    fn a_partition_placed_here_again_while_its_closing_had_failed_is_opened_again() {
        let group = |p| crate::raft::replica::group_id(&PartitionId::new("t", p));
        let mut seen = Seen::default();
        // t/1's closing failed (its replica may be closed); t/0 and t/2 run as ever.
        seen.closing.insert(group(1), Unplaced::Close);
        // Placed here again and still held: opened again. Not placed here: left to closing.
        assert_eq!(closed_but_held("t", &[0, 1], &[0, 1, 2], &seen), vec![1]);
        assert!(closed_but_held("t", &[0], &[0, 1, 2], &seen).is_empty());
        // Not held (its closing completed meanwhile): opened as any replica placed here.
        assert!(closed_but_held("t", &[1], &[0], &seen).is_empty());
        // Remembered until an opening succeeds: the failed closing is forgotten at the
        // pass's end, the partition not opened yet.
        seen.closing.clear();
        seen.reopen.insert(group(1));
        assert_eq!(closed_but_held("t", &[0, 1], &[0, 1, 2], &seen), vec![1]);
        seen.reopen.clear();
        // A topic whose dropping failed: each of its partitions held and placed here again.
        seen.dropping.insert("t".to_owned());
        assert_eq!(closed_but_held("t", &[0, 2], &[0, 1, 2], &seen), vec![0, 2]);
        assert!(closed_but_held("u", &[0], &[0], &seen).is_empty());
    }

    #[test]
    fn a_start_afresh_whose_closing_failed_is_tried_again() {
        // Closed and let go, the opening failed: opened afresh.
        assert_eq!(closed_controller(Some(false), true), ClosedController::Open);
        assert_eq!(
            closed_controller(Some(false), false),
            ClosedController::Open
        );
        // Closed, but the closing failed before the catalog let it go (the rename of its
        // directory, or the catalog's write): started afresh again, not left closed for the
        // rest of the run.
        assert_eq!(closed_controller(Some(true), true), ClosedController::Reset);
        // Held and no start afresh begun: not opened yet, or not published yet.
        assert_eq!(closed_controller(Some(true), false), ClosedController::Wait);
        assert_eq!(closed_controller(None, true), ClosedController::Wait);
    }

    fn moved(node: &ClusterNode) -> u64 {
        node.stats
            .stopped_replicas_moved
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_stopped_replica_moves_to_a_free_live_node_only() {
        // Node 3 is live and holds no replica: it takes the stopped one's place (the
        // proposal itself fails here: no engine).
        let (node, s) = stopped_setup(3, true);
        let mut unplaced = BTreeSet::new();
        assert!(replace_removed(&node, &s, &mut unplaced));
        assert_eq!(moved(&node), 1);
        // Not marked: nothing to do.
        let (node, s) = stopped_setup(3, false);
        assert!(!replace_removed(&node, &s, &mut BTreeSet::new()));
        assert_eq!(moved(&node), 0);
        // The only live node already holds a replica: nothing moves, remembered (logged) once.
        let (node, s) = stopped_setup(1, true);
        let mut unplaced = BTreeSet::new();
        assert!(!replace_removed(&node, &s, &mut unplaced));
        assert!(!replace_removed(&node, &s, &mut unplaced));
        assert_eq!(moved(&node), 0);
        assert!(unplaced.contains(&("t".to_string(), 0)));
        // The stopped node itself is never chosen again.
        let (node, s) = stopped_setup(2, true);
        assert!(!replace_removed(&node, &s, &mut BTreeSet::new()));
        assert_eq!(moved(&node), 0);
    }

    #[test]
    fn a_new_replica_goes_to_a_node_without_failed_logs_then_to_the_least_loaded() {
        // Nodes 1-3 and 4-5: t/0 on 1 and 2 (2 stopped there), u/0 on 3, 4 and 5 with 4's
        // replica stopped, v/0 on 5.
        let mut s = state();
        for (i, n) in [(4u64, 4u8), (5, 5)] {
            s.apply(
                i,
                &Command::Register {
                    node: NodeEntry {
                        member: member_id(n).to_string(),
                        name: format!("n{n}"),
                        rpc_addr: "127.0.0.1:1".into(),
                        gossip_addr: "127.0.0.1:2".into(),
                        shards: 1,
                        removed: false,
                    },
                },
            );
        }
        let mut index = 10;
        for (topic, nodes) in [("t", vec![1, 2]), ("u", vec![3, 4, 5]), ("v", vec![5])] {
            let rf = nodes.len() as u32;
            let partitions = s.place(topic, 1, rf, &nodes).unwrap();
            s.apply(
                index,
                &Command::CreateTopic {
                    name: topic.into(),
                    config: engine::LogConfig::default(),
                    replication_factor: rf,
                    partitions,
                },
            );
            index += 1;
        }
        for (topic, node) in [("t", 2), ("u", 4)] {
            let c = Command::ReplicaStopped {
                topic: topic.into(),
                partition: 0,
                node,
            };
            s.apply(index, &c);
            index += 1;
        }
        let t0 = s.topics["t"].partitions[0].clone();
        let live = [1, 2, 3, 4, 5];
        // 4 has a failed log (u/0), 3 and 5 have none: 3 holds one replica, 5 two.
        assert_eq!(new_replica_node(&s, &t0, &[1], &live), Some(3));
        assert_eq!(new_replica_node(&s, &t0, &[1, 3], &live), Some(5));
        // Only the troubled node is left: it is still taken rather than none.
        assert_eq!(new_replica_node(&s, &t0, &[1, 3, 5], &live), Some(4));
        // Never the node whose replica of this partition failed, nor a node not live.
        assert_eq!(new_replica_node(&s, &t0, &[1, 3, 4, 5], &live), None);
        assert_eq!(new_replica_node(&s, &t0, &[1], &[1, 2]), None);
    }

    #[test]
    fn a_node_reports_its_failed_replica_after_the_grace_period_and_again_until_marked() {
        let (node, s) = stopped_setup(2, false);
        let group = ClusterNode::partitions(&s)[0].1;
        let reported = || {
            node.stats
                .stopped_replicas_reported
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut here = HashMap::new();
        let t0 = start();
        // A full disk resumes by itself: never reported.
        node.peers.board.set(group, view(Some(Stopped::DiskFull)));
        report_stopped(&node, &s, &mut here, t0);
        report_stopped(&node, &s, &mut here, at(t0, 100));
        assert_eq!(reported(), 0);
        assert!(here.is_empty());
        node.peers.board.set(group, view(Some(Stopped::Failed)));
        report_stopped(&node, &s, &mut here, t0);
        report_stopped(&node, &s, &mut here, at(t0, 29));
        assert_eq!(reported(), 0, "within the grace period");
        report_stopped(&node, &s, &mut here, at(t0, 30));
        assert_eq!(reported(), 1);
        report_stopped(&node, &s, &mut here, at(t0, 34));
        assert_eq!(reported(), 1, "not again within ASK_AGAIN");
        report_stopped(&node, &s, &mut here, at(t0, 35));
        assert_eq!(reported(), 2);
        // Marked in the applied state: no more reports.
        let (_, marked) = stopped_setup(2, true);
        report_stopped(&node, &marked, &mut here, at(t0, 100));
        assert_eq!(reported(), 2);
        // Running again (a restart): forgotten, a later failure starts a new grace period.
        node.peers.board.set(group, view(None));
        report_stopped(&node, &s, &mut here, at(t0, 200));
        assert!(here.is_empty());
    }

    #[test]
    fn a_controller_replica_lost_at_start_is_reported_only_after_this_runs_registration() {
        // Node 2 restarted with its controller log found lost: no state at all.
        let node = ClusterNode::new(
            crate::raft::transport::Peers::default(),
            TIMEOUT,
            Duration::from_secs(30),
        );
        node.set_id(2);
        let s = ClusterState::default();
        let (reported, recovered) = (
            || {
                node.stats
                    .stopped_replicas_reported
                    .load(std::sync::atomic::Ordering::Relaxed)
            },
            || {
                node.stats
                    .stopped_replicas_recovered
                    .load(std::sync::atomic::Ordering::Relaxed)
            },
        );
        let lost = GroupView {
            voters: vec![],
            learners: vec![],
            ..view(Some(Stopped::Failed))
        };
        node.peers.board.set(0, lost);
        let mut here = ControllerHere::default();
        let t0 = start();
        controller_replica(&node, &s, &mut here, t0);
        controller_replica(&node, &s, &mut here, at(t0, 29));
        assert_eq!(reported(), 0, "within the grace period");
        // Past it, but this run's registration is not done: a registration applied after
        // the mark would withdraw it before the replica was started afresh.
        controller_replica(&node, &s, &mut here, at(t0, 40));
        assert_eq!(reported(), 0);
        node.registered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        controller_replica(&node, &s, &mut here, at(t0, 41));
        assert_eq!(reported(), 1);
        controller_replica(&node, &s, &mut here, at(t0, 45));
        assert_eq!(reported(), 1, "not again within ASK_AGAIN");
        controller_replica(&node, &s, &mut here, at(t0, 46));
        assert_eq!(reported(), 2);
        // No member could say the group no longer counts it (none reachable here): never
        // started afresh, never asked to be counted.
        assert_eq!(recovered(), 0);
        assert!(!here.fresh);

        // Started afresh (empty, no configuration) and still without state: it asks to be
        // counted again at once, although it cannot tell whether it was removed (members
        // refuse an unregistered node).
        let afresh = GroupView {
            voters: vec![],
            learners: vec![],
            ..view(None)
        };
        node.peers.board.set(0, afresh);
        here = ControllerHere {
            fresh: true,
            ..ControllerHere::default()
        };
        controller_replica(&node, &s, &mut here, at(t0, 50));
        assert_eq!(recovered(), 1);
        controller_replica(&node, &s, &mut here, at(t0, 55));
        assert_eq!(recovered(), 2);
        // With a state that says this node was removed: it asks nothing.
        let (_, removed) = {
            let (n, mut st) = stopped_setup(2, false);
            if let Some(e) = st.nodes.get_mut(&2) {
                e.removed = true;
            }
            (n, st)
        };
        controller_replica(&node, &removed, &mut here, at(t0, 100));
        assert_eq!(recovered(), 2);
    }

    #[test]
    fn a_marked_replica_that_runs_again_asks_for_its_mark_back_until_it_is_gone() {
        let (node, marked) = stopped_setup(2, true);
        let group = ClusterNode::partitions(&marked)[0].1;
        let sent = || {
            node.stats
                .stopped_replicas_recovered
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut asked = HashMap::new();
        let t0 = start();
        // Not open yet (the restart has not reopened it), or still failed: nothing.
        report_recovered(&node, &marked, &mut asked, t0);
        node.peers.board.set(group, view(Some(Stopped::Failed)));
        report_recovered(&node, &marked, &mut asked, t0);
        assert_eq!(sent(), 0);
        // Running: sent at once, again after ASK_AGAIN while the mark shows.
        node.peers.board.set(group, view(None));
        report_recovered(&node, &marked, &mut asked, t0);
        assert_eq!(sent(), 1);
        report_recovered(&node, &marked, &mut asked, at(t0, 4));
        assert_eq!(sent(), 1, "not again within ASK_AGAIN");
        report_recovered(&node, &marked, &mut asked, at(t0, 5));
        assert_eq!(sent(), 2);
        // The mark is gone from the applied state: nothing more, and forgotten.
        let (_, unmarked) = stopped_setup(2, false);
        report_recovered(&node, &unmarked, &mut asked, at(t0, 100));
        assert_eq!(sent(), 2);
        assert!(asked.is_empty());
        // Another node's mark is not this node's to withdraw.
        let (other, marked) = stopped_setup(1, true);
        other.peers.board.set(group, view(None));
        report_recovered(&other, &marked, &mut HashMap::new(), t0);
        assert_eq!(
            other
                .stats
                .stopped_replicas_recovered
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn left_is_at_once_and_this_node_and_removed_nodes_never() {
        let mut s = state();
        let mut c = Countdown::default();
        let t0 = start();
        let l = list(100, &[(1, Up, 0), (2, Left, 100), (3, Up, 0)]);
        assert_eq!(
            c.due(&s, 1, &l, t0, TIMEOUT),
            Some((2, "left the cluster".to_string()))
        );
        s.apply(4, &Command::RemoveNode { id: 2 });
        assert_eq!(c.due(&s, 1, &l, t0, TIMEOUT), None);
        assert!(c.since.is_empty(), "a removed node's countdown is dropped");
        // This node, even unlisted in its own list, is never removed by itself.
        let without_me = list(100, &[(2, Up, 0), (3, Up, 0)]);
        assert_eq!(c.due(&s, 1, &without_me, at(t0, 10_000), TIMEOUT), None);
    }

    /// A group of voters 1, 2 and 3, all caught up, led by `leader`.
    fn led_by(leader: u64) -> GroupView {
        GroupView {
            shard: 0,
            role: StateRole::Leader,
            term: 7,
            leader,
            commit: 100,
            applied: 100,
            last_index: 100,
            voters: vec![1, 2, 3],
            learners: vec![],
            matched: vec![(1, 100), (2, 100), (3, 100)],
            committed: vec![(1, 100), (2, 100), (3, 100)],
            stopped: None,
            lost: false,
        }
    }

    #[test]
    fn a_removed_leader_hands_its_groups_to_a_voter_gossip_lists_up() {
        // Node 1 was removed while it led: its own (stale) placement still lists it first.
        let v = led_by(1);
        let stale = [1, 2, 3];
        assert_eq!(
            partition_step(1, true, &v, &stale, &[2, 3], &[3]),
            Some(Step::Transfer(3)),
            "to the voter that is up, not the suspect one"
        );
        // Not while no other voter is both up and caught up: it keeps leading.
        let mut behind = led_by(1);
        behind.matched = vec![(1, 100), (2, 100), (3, 90)];
        assert_eq!(
            partition_step(1, true, &behind, &stale, &[2, 3], &[3]),
            None
        );
        // The same node, not removed, has nothing to change.
        assert_eq!(
            partition_step(1, false, &v, &stale, &[1, 2, 3], &[1, 2, 3]),
            None
        );
    }

    #[test]
    fn a_leader_no_longer_placed_hands_over_to_a_voter_gossip_lists_up_first() {
        // Node 1 leads, and is placed elsewhere now; nodes 2 and 3 stay, both caught up.
        let v = led_by(1);
        let placed = [2, 3];
        assert_eq!(
            next_step(1, &v, &placed, usize::MAX, &[1, 2, 3], &[1, 3]),
            Some(Step::Transfer(3)),
            "not to node 2, which gossip lists suspect"
        );
        // None up: still to a caught-up voter that stays.
        assert_eq!(
            next_step(1, &v, &placed, usize::MAX, &[1, 2, 3], &[]),
            Some(Step::Transfer(2))
        );
    }

    #[test]
    fn leadership_goes_back_to_a_preferred_replica_only_when_it_is_up() {
        let v = led_by(2);
        let placed = [1, 2, 3];
        // Node 1, the preferred replica, is suspect: it may be cut off, or about to be removed.
        assert_eq!(
            partition_step(2, false, &v, &placed, &[1, 2, 3], &[2, 3]),
            None
        );
        assert_eq!(
            partition_step(2, false, &v, &placed, &[1, 2, 3], &[1, 2, 3]),
            Some(Step::Transfer(1))
        );
    }
}
