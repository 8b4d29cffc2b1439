//! Raft as the engine's replication layer: the [`engine::shard::Replicator`] of each shard,
//! which owns a [`GroupSet`] over the shard's partition logs and runs its Ready loop on the
//! shard's executor.
//!
//! The loop is one task per shard. It waits for work (a command from the shard's owner
//! operations: open, close, propose, compact; a finished deferred read; the tick timer), takes
//! every command queued, then runs rounds while any group has a Ready. Appends that arrive
//! while a round writes or syncs queue up and go together into the next round: one write and
//! one sync (per the topic's durability policy, see `LogStore::persist`) for all of them, the
//! engine's group commit in Raft's terms. A one-voter group commits as soon as its own write
//! is persisted: its entries are applied, made visible and acknowledged in the round after
//! the one that wrote them, which is also the round that writes the next appends.
//!
//! Snapshots received become downloads beside the loop (`snapshot_transfer::download`, one
//! task each, ended with the loop); the loop steps a snapshot once its files are verified, and
//! the next Ready swaps them in. A transfer this node serves asks the loop for the group's
//! files (read beside it) and reports how it went.
//!
//! The set is the loop's alone (it holds it across the awaits of a round); everything else
//! reaches it through the command queue, and reads its state through the status the loop
//! publishes after each round.
//!
//! Group ids: a partition's group id is a stable 64-bit hash of its topic and partition
//! (group 0 is reserved for the cluster's controller); two partitions of one shard whose ids
//! collide are refused, never confused.

use super::error::Error;
use super::forward::add;
use super::group::{
    GroupConfig, GroupSet, GroupStatus, InstallReport, Outcome, Persisting, SnapshotJob, StateEvent,
};
use super::logger::{name_group, GroupName};
use super::snapshot_transfer::{self, FilesRequest, ProgressReport};
use super::transport::{Links, Peers};
use engine::batch::now_ms;
use engine::log::Appended;
use engine::metrics::AppendTiming;
use engine::seam::{self, EncodedBatch, LocalBoxFuture, PartitionId};
use engine::shard::{ReplicaStatus, ReplicationFactory, Replicator};
use engine::Log;
use event_listener::Event;
use futures_channel::oneshot;
use proto::proglog::raft::v1::RaftFrame;
use raft::StateRole;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often a shard's groups tick: heartbeats every `heartbeat_tick` ticks, elections after
/// `election_tick` to twice that without a leader.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);

/// Rounds whose logs may be persisting at once (raft-rs's async-ready pipeline depth).
const MAX_ROUNDS_IN_FLIGHT: usize = 4;

/// Where a round's persisting task leaves the outcome of each log it persisted.
type Synced = Rc<RefCell<Option<Vec<(u64, engine::Result<()>)>>>>;

/// How long a read waits for its read index (ReadIndex, retried) and for this replica to
/// apply up to it.
pub const READ_INDEX_DEADLINE: Duration = Duration::from_secs(5);
/// One ReadIndex attempt: raft-rs answers a dropped one never.
const READ_INDEX_ATTEMPT: Duration = Duration::from_millis(500);
const READ_INDEX_RETRY: Duration = Duration::from_millis(50);

/// Commands taken between two rounds before the loop yields to the shard's other tasks.
const COMMANDS_PER_ROUND: usize = 4096;

/// What the cluster layer (the controller) tells the shards, and hears from them.
pub trait ClusterHooks: Send + Sync {
    /// The first configuration of partition `id`'s group when created on this node: `None`
    /// for this node alone (no cluster places it), an empty list for a replica added to an
    /// existing group, or of a partition the state applied here does not list (it learns its
    /// configuration from the leader's log).
    fn voters(&self, id: &PartitionId) -> Option<Vec<u64>>;
    /// Whether the cluster's state applied here lists partition `id` (the controller's own
    /// always): a replica never opened by its group, of a partition it does not list yet
    /// (the topic's creation is in this node's controller log past the commit index the log
    /// showed at start), is opened only once it does, with the first configuration it then
    /// gives.
    fn knows(&self, _id: &PartitionId) -> bool {
        true
    }
    /// A command of the controller's log (group 0), applied on this node, in index order.
    fn applied(&self, index: u64, command: &[u8]);
    /// The controller's state starts over from its log's committed entries
    /// `first_index..=last_index`, whose commands follow, then [`replay_end`](Self::replay_end).
    fn replay_start(&self, _first_index: u64, _last_index: u64) {}
    fn replay_end(&self) {}
    /// The index of the last valid checkpoint applied here (0: none): the controller's log
    /// may be compacted below it.
    fn checkpoint_index(&self) -> u64 {
        0
    }
    /// A checkpoint (encoded) of the state applied through log index `at`, which is the
    /// controller's applied index with nothing after it in the log: the commands to propose
    /// in a row (one, or the parts of a checkpoint too large for one command).
    /// `max_uncommitted_size` is what raft-rs accepts uncommitted on this leader
    /// ([`GroupConfig::max_uncommitted_size`]): the parts are uncommitted together, so a
    /// checkpoint whose entries would not fit well within it is not to be proposed (its last
    /// parts would be refused, the checkpoint a no-op, and its first parts kept in the log).
    fn checkpoint(&self, _at: u64, _max_uncommitted_size: u64) -> Option<Vec<Vec<u8>>> {
        None
    }
}

/// The cluster layer's hooks, if any.
#[derive(Clone, Default)]
pub struct Hooks(pub Option<Arc<dyn ClusterHooks>>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hooks(cluster)"
        } else {
            "Hooks(none)"
        })
    }
}

/// The topic of the controller's log: one partition, group 0, always on shard 0.
pub const CONTROLLER_TOPIC: &str = engine::CONTROLLER_TOPIC;

/// A request from the cluster layer to a shard's Ready loop (delivered as a peer payload).
pub enum ControlMsg {
    /// Propose a controller command (shard 0, group 0); answered with its index once applied
    /// here.
    Command {
        command: Vec<u8>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Propose a configuration change of `group` (this node leads it).
    ConfChange {
        group: u64,
        cc: raft::eraftpb::ConfChangeV2,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Hand `group`'s leadership to `to`.
    TransferLeader { group: u64, to: u64 },
    /// Send a controller command (encoded) to the controller's leader, whichever node it is,
    /// without waiting for it (see `GroupSet::forward_command`).
    ForwardCommand { command: Vec<u8> },
    /// Propose a checkpoint of the controller's state (this node leads the controller), if
    /// nothing follows its applied index: the checkpoint then lands right after the state
    /// it holds. Not answered: the state shows whether one was applied.
    Checkpoint,
}

/// How often a controller replica tries to compact its log below its last checkpoint
/// (a leader keeps what live followers still need, so it may take several tries).
const CONTROLLER_COMPACT_EVERY: Duration = Duration::from_secs(1);

/// Builds the Raft replication layer of each shard of one node.
#[derive(Debug, Clone)]
pub struct RaftReplication {
    /// This node's Raft id; 0: not known yet (a node joining a cluster), the loops wait for
    /// `peers.self_id`.
    pub node_id: u64,
    /// The first configuration of a group created here (empty: this node alone).
    pub voters: Vec<u64>,
    pub config: GroupConfig,
    pub tick: Duration,
    /// The other nodes and the transport's shared state.
    pub peers: Peers,
    pub hooks: Hooks,
}

impl RaftReplication {
    /// The replication of a node that is a cluster of one (Raft id 1, default settings).
    pub fn single_node() -> RaftReplication {
        RaftReplication {
            node_id: 1,
            voters: Vec::new(),
            config: GroupConfig::default(),
            tick: DEFAULT_TICK,
            peers: Peers::default(),
            hooks: Hooks::default(),
        }
    }
}

impl ReplicationFactory for RaftReplication {
    fn build(&self, shard: usize, _shards: usize) -> Rc<dyn Replicator> {
        ShardRaft::start(self, shard)
    }
}

/// The stable group id of a partition of its topic's `incarnation` (`LogConfig::incarnation`;
/// never 0, the controller's). A topic deleted and created again under the same name gets
/// another incarnation, so its partitions are other groups: no message, vote or entry of the
/// deleted topic's groups reaches them. Incarnation 0 (topics created before incarnations)
/// gives the ids of that time.
pub fn group_id(id: &PartitionId, incarnation: u64) -> u64 {
    if &*id.topic == CONTROLLER_TOPIC {
        return 0;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for &b in id.topic.as_bytes() {
        eat(b);
    }
    eat(0);
    for b in id.partition.to_le_bytes() {
        eat(b);
    }
    if incarnation != 0 {
        for b in incarnation.to_le_bytes() {
            eat(b);
        }
    }
    h.max(1)
}

enum Cmd {
    Open {
        group: u64,
        partition: PartitionId,
        log: Rc<Log>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Close {
        group: u64,
        reply: oneshot::Sender<()>,
    },
    Propose {
        group: u64,
        batch: EncodedBatch,
        reply: oneshot::Sender<Outcome>,
    },
    Compact {
        group: u64,
        to: u64,
        /// Compact to at least here, whatever followers need (retention's hard bound).
        hard_to: Option<u64>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// What another node sent this shard's groups.
    Frame(RaftFrame),
    Control(ControlMsg),
    /// A linearizable read point of the group: its leader's commit index (ReadIndex).
    ReadIndex {
        group: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// A snapshot transfer served by this node wants a group's files.
    SnapshotFiles(FilesRequest),
    /// How a snapshot this node sent is doing.
    SnapshotReport(ProgressReport),
    /// A snapshot's files are downloaded (or not).
    SnapshotDownloaded(Box<Downloaded>),
}

/// A snapshot download's outcome, for the loop.
struct Downloaded {
    job: SnapshotJob,
    result: Result<engine::log::Staging, String>,
    report: InstallReport,
}

/// What the loop and the shard's operations share.
struct Inner {
    node_id: Cell<u64>,
    hooks: Hooks,
    voters: Vec<u64>,
    shard: usize,
    peers: Peers,
    cmds: RefCell<VecDeque<Cmd>>,
    /// Woken when a command is queued, a deferred read finishes, or the loop must stop.
    wake: Event,
    /// Deferred reads finished since the last round.
    fetched: Cell<bool>,
    stopping: Cell<bool>,
    stopped: Cell<bool>,
    done: Event,
    /// Groups by partition, as opened here.
    groups: RefCell<HashMap<PartitionId, (u64, Rc<Log>)>>,
    /// Each group's state after the last round.
    status: RefCell<HashMap<u64, GroupStatus>>,
    /// Notified when the status is published (readers wait for an applied index on it).
    published: Event,
}

impl Inner {
    fn push(&self, cmd: Cmd) -> bool {
        if self.stopped.get() || self.stopping.get() {
            return false;
        }
        self.cmds.borrow_mut().push_back(cmd);
        self.wake.notify(1);
        true
    }
}

/// The Raft replication layer of one shard.
pub struct ShardRaft {
    inner: Rc<Inner>,
}

impl ShardRaft {
    fn start(r: &RaftReplication, shard: usize) -> Rc<dyn Replicator> {
        let inner = Rc::new(Inner {
            node_id: Cell::new(r.node_id),
            hooks: r.hooks.clone(),
            voters: r.voters.clone(),
            shard,
            peers: r.peers.clone(),
            cmds: RefCell::new(VecDeque::new()),
            wake: Event::new(),
            fetched: Cell::new(false),
            stopping: Cell::new(false),
            stopped: Cell::new(false),
            done: Event::new(),
            groups: RefCell::new(HashMap::new()),
            status: RefCell::new(HashMap::new()),
            published: Event::new(),
        });
        let (config, tick) = (r.config.clone(), r.tick);
        let started = Rc::clone(&inner);
        glommio::spawn_local(async move {
            // A joining node learns its Raft id from the controller; its groups wait.
            let mut node_id = started.node_id.get();
            while node_id == 0 {
                if started.stopping.get() {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
                node_id = started
                    .peers
                    .self_id
                    .load(std::sync::atomic::Ordering::Relaxed);
            }
            started.node_id.set(node_id);
            let seed = node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ shard as u64;
            let mut set = GroupSet::new(node_id, config, seed);
            set.share_metrics(Arc::clone(&started.peers.board.proposals));
            run(started, set, tick).await;
        })
        .detach();
        Rc::new(ShardRaft { inner })
    }

    fn group_of(&self, id: &PartitionId) -> engine::Result<u64> {
        self.inner
            .groups
            .borrow()
            .get(id)
            .map(|(g, _)| *g)
            .ok_or_else(|| engine::Error::UnknownTopic(id.topic.to_string()))
    }

    fn log_of(&self, id: &PartitionId) -> Option<Rc<Log>> {
        self.inner
            .groups
            .borrow()
            .get(id)
            .map(|(_, l)| Rc::clone(l))
    }
}

/// The shard's Ready loop (see the module doc).
async fn run(inner: Rc<Inner>, mut set: GroupSet<Log>, tick: Duration) {
    let mut net = Links::new(inner.peers.clone());
    let mut next_tick = Instant::now() + tick;
    let mut lp = Loop {
        opening: Vec::new(),
        logs: HashMap::new(),
        campaign_later: Vec::new(),
        next_compaction: Instant::now(),
        reopen_after: HashMap::new(),
    };
    // Rounds whose logs are persisting, oldest first.
    let mut in_flight: VecDeque<(Persisting, Synced)> = VecDeque::new();
    loop {
        // Wait for work.
        loop {
            let front_done = in_flight.front().is_some_and(|(_, s)| s.borrow().is_some());
            if inner.stopping.get()
                || front_done
                || !inner.cmds.borrow().is_empty()
                || inner.fetched.get()
                || (in_flight.len() < MAX_ROUNDS_IN_FLIGHT && set.has_ready())
                || Instant::now() >= next_tick
            {
                break;
            }
            let listener = inner.wake.listen();
            let front_done = in_flight.front().is_some_and(|(_, s)| s.borrow().is_some());
            if front_done
                || !inner.cmds.borrow().is_empty()
                || inner.fetched.get()
                || inner.stopping.get()
            {
                continue;
            }
            let left = next_tick.saturating_duration_since(Instant::now());
            futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
        }
        if inner.stopping.get() {
            // Every round started finishes: its syncs are under way.
            while let Some((p, synced)) = in_flight.pop_front() {
                loop {
                    let listener = inner.wake.listen();
                    if synced.borrow().is_some() {
                        break;
                    }
                    listener.await;
                }
                let r = synced.borrow_mut().take().unwrap_or_default();
                set.round_finish(p, r, &mut net);
            }
            break;
        }
        inner.fetched.set(false);
        let mut taken = 0;
        loop {
            let cmd = inner.cmds.borrow_mut().pop_front();
            let Some(cmd) = cmd else { break };
            handle(&inner, &mut set, &mut lp, cmd).await;
            taken += 1;
            if taken == COMMANDS_PER_ROUND {
                break;
            }
        }
        if Instant::now() >= next_tick {
            set.tick();
            next_tick = Instant::now() + tick;
            reopen_recovered(&inner, &mut set, &mut lp).await;
        }
        // Rounds whose logs persisted finish (acknowledge), in the order they started.
        while in_flight.front().is_some_and(|(_, s)| s.borrow().is_some()) {
            if let Some((p, synced)) = in_flight.pop_front() {
                let r = synced.borrow_mut().take().unwrap_or_default();
                set.round_finish(p, r, &mut net);
            }
        }
        // Pipelined rounds: a round's logs persist beside the loop while later rounds
        // write; appends arriving during a sync go out in the next round at once, as the
        // engine's group commit overlaps one write with the previous sync.
        if in_flight.len() < MAX_ROUNDS_IN_FLIGHT && set.has_ready() {
            let p = set.round_start(&mut net).await;
            let stores = set.to_persist(&p);
            let synced: Synced = Rc::new(RefCell::new(None));
            let slot = Rc::clone(&synced);
            let wake = Rc::clone(&inner);
            glommio::spawn_local(async move {
                let mut out = Vec::with_capacity(stores.len());
                for (id, store) in stores {
                    out.push((id, store.persist().await));
                }
                *slot.borrow_mut() = Some(out);
                wake.wake.notify(1);
            })
            .detach();
            in_flight.push_back((p, synced));
        }
        // Follow-ups of the rounds (deferred reads), and the groups' state.
        for job in set.take_fetch_jobs() {
            let inner = Rc::clone(&inner);
            glommio::spawn_local(async move {
                job.run().await;
                inner.fetched.set(true);
                inner.wake.notify(1);
            })
            .detach();
        }
        for job in set.take_snapshot_jobs() {
            spawn_download(&inner, &lp, job);
        }
        for node in net.take_unreachable() {
            set.report_unreachable(node);
        }
        for (group, event) in set.take_commands() {
            if let (0, Some(h)) = (group, &inner.hooks.0) {
                match event {
                    StateEvent::Replay {
                        first_index,
                        last_index,
                    } => h.replay_start(first_index, last_index),
                    StateEvent::Command { index, command } => h.applied(index, &command),
                    StateEvent::Replayed => h.replay_end(),
                }
            }
        }
        compact_controller(&inner, &mut set, &mut lp).await;
        lp.campaign_later.retain(|&g| match set.status(g) {
            Some(s) if s.role == StateRole::Leader => false,
            Some(s) if s.applied >= s.commit => {
                campaign_if_alone(&inner, &mut set, g);
                false
            }
            Some(_) => true,
            None => false,
        });
        publish(&inner, &set);
        lp.answer_opened(&set);
        glommio::yield_if_needed().await;
    }
    net.stop();
    for o in lp.opening.drain(..) {
        let _ = o.reply.send(Err(Error::UnknownGroup(0)));
    }
    // Stopping: every waiter learns the partition closed.
    for cmd in inner.cmds.borrow_mut().drain(..) {
        refuse(cmd, Error::UnknownGroup(0));
    }
    for id in set.group_ids() {
        set.remove_group(id);
    }
    inner.stopped.set(true);
    inner.done.notify(usize::MAX);
}

/// An open waiting for its group to apply up to `target`.
struct Opening {
    group: u64,
    target: u64,
    reply: oneshot::Sender<Result<(), Error>>,
}

/// The loop's own state besides the set.
struct Loop {
    /// Groups opened and recovering: answered once they have applied up to `.0`'s index.
    opening: Vec<Opening>,
    /// Each group's log, to open a group again after its log recovered from a full disk.
    logs: HashMap<u64, Rc<Log>>,
    /// Groups of one voter (this node) that could not campaign when opened: raft-rs refuses
    /// while a configuration change up to its commit index is not applied yet.
    campaign_later: Vec<u64>,
    /// When the controller's log may next be compacted below its last checkpoint.
    next_compaction: Instant,
    /// Groups whose reopening after a full disk failed, and when to try again.
    reopen_after: HashMap<u64, Instant>,
}

/// How long a group whose reopening failed waits before the next try.
const REOPEN_RETRY: Duration = Duration::from_secs(10);

impl Loop {
    /// Answers the opens whose groups have applied what their logs held (or failed).
    fn answer_opened(&mut self, set: &GroupSet<Log>) {
        let mut i = 0;
        while i < self.opening.len() {
            let (group, target) = (self.opening[i].group, self.opening[i].target);
            let outcome = match (set.failure(group), set.status(group)) {
                (Some(e), _) => Some(Err(e)),
                (None, None) => Some(Err(Error::UnknownGroup(group))),
                (None, Some(s)) if s.applied >= target => Some(Ok(())),
                (None, Some(s)) if s.role != StateRole::Leader => {
                    // Not leading (a group with other voters): what it holds becomes
                    // visible as it learns the commit index.
                    Some(Ok(()))
                }
                _ => None,
            };
            match outcome {
                Some(o) => {
                    let _ = self.opening.swap_remove(i).reply.send(o);
                }
                None => i += 1,
            }
        }
    }
}

/// Opens again, from their logs, the groups that stopped for want of space once their logs
/// take writes again: the log kept what it had buffered, and Raft's state is recovered from
/// it as after a restart.
async fn reopen_recovered(inner: &Inner, set: &mut GroupSet<Log>, lp: &mut Loop) {
    for group in set.group_ids() {
        let Some(e) = set.failure(group) else {
            continue;
        };
        let Some(log) = lp.logs.get(&group).cloned() else {
            continue;
        };
        if !e.is_disk_full() || !log.is_writable() {
            continue;
        }
        if lp
            .reopen_after
            .get(&group)
            .is_some_and(|&t| Instant::now() < t)
        {
            continue;
        }
        // Raft's metadata must take a write too: the data log writes into space allocated
        // ahead, a metadata replacement needs new space each time, and a group reopened
        // while it cannot would stop again at its next term change, over and over. The
        // metadata written back as it is (one small replacement per check while full).
        if let Err(e) = rewrite_meta(&log) {
            log::debug!(
                "{} stays stopped: its metadata takes no write: {e}",
                GroupName(group)
            );
            continue;
        }
        // The controller's state machine is rebuilt from the log as at a start: a group
        // opened without it would not rebuild it after a later snapshot install either.
        match set.reopen_group(group, log, group == 0).await {
            Ok(()) => {
                lp.reopen_after.remove(&group);
                inner
                    .peers
                    .board
                    .reopened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::info!(
                    "{} opened again: its log takes writes again",
                    GroupName(group)
                );
                campaign_if_alone(inner, set, group);
            }
            Err(e) => {
                lp.reopen_after.insert(group, Instant::now() + REOPEN_RETRY);
                log::error!(
                    "{} could not be opened again (it stays stopped; tried \
                     again in {} s): {e}",
                    GroupName(group),
                    REOPEN_RETRY.as_secs()
                )
            }
        }
    }
}

/// Replaces Raft's metadata file of `log` with what it holds (nothing when there is none).
fn rewrite_meta(log: &Log) -> engine::Result<()> {
    use super::store::LogStore;
    match LogStore::read_meta(log)? {
        Some(bytes) => LogStore::write_meta(log, &bytes),
        None => Ok(()),
    }
}

/// A group whose only voter is this node need not wait out an election timeout to lead: it
/// wins its own vote at once.
fn campaign_if_alone(inner: &Inner, set: &mut GroupSet<Log>, group: u64) {
    let alone = set.log(group).is_some_and(|l| {
        let cs = l.meta().conf_state;
        cs.voters == [inner.node_id.get()] && cs.learners.is_empty()
    });
    if alone {
        if let Err(e) = set.campaign(group) {
            log::warn!("{}: campaign failed: {e}", GroupName(group));
        }
    }
}

/// Compacts the controller's log (group 0) below the last checkpoint this node applied,
/// through retention's path: never past the applied index, nor, on the leader, past what a
/// live follower still needs (a follower that is down gets a snapshot when it returns).
/// The checkpoint itself stays: a replay starts from it.
async fn compact_controller(inner: &Inner, set: &mut GroupSet<Log>, lp: &mut Loop) {
    let Some(h) = &inner.hooks.0 else { return };
    // Looked at once a second at most: this runs after every round of the shard.
    let now = Instant::now();
    if now < lp.next_compaction {
        return;
    }
    lp.next_compaction = now + CONTROLLER_COMPACT_EVERY;
    let Some(first) = set.first_index(0) else {
        return;
    };
    let checkpoint = h.checkpoint_index();
    if checkpoint <= first || set.failure(0).is_some() {
        return;
    }
    match set.compact_for_retention(0, checkpoint - 1, None).await {
        Ok(Some(i)) => {
            log::info!("controller: log compacted to index {i} (checkpoint at {checkpoint})")
        }
        Ok(None) => {}
        Err(e) => log::warn!("controller: log not compacted below its checkpoint: {e}"),
    }
}

/// Downloads a snapshot's files beside the loop; the loop steps it once they are here, and
/// the transfer tells the sender how the install went.
fn spawn_download(inner: &Rc<Inner>, lp: &Loop, job: SnapshotJob) {
    let Some(log) = lp.logs.get(&job.group).cloned() else {
        return;
    };
    let inner = Rc::clone(inner);
    glommio::spawn_local(async move {
        // The download ends with the loop (its files and connection dropped with it).
        let stopped = async {
            loop {
                let l = inner.done.listen();
                if inner.stopped.get() || inner.stopping.get() {
                    return None;
                }
                l.await;
            }
        };
        let download = async {
            Some(
                snapshot_transfer::download(
                    &inner.peers,
                    inner.node_id.get(),
                    &job,
                    log.dir(),
                    log.config(),
                )
                .await,
            )
        };
        let Some((result, done)) = futures_lite::future::or(download, stopped).await else {
            return;
        };
        let (report, outcome) = oneshot::channel();
        if !inner.push(Cmd::SnapshotDownloaded(Box::new(Downloaded {
            job,
            result,
            report,
        }))) {
            return;
        }
        let outcome = outcome
            .await
            .unwrap_or_else(|_| Err("the snapshot was not installed (older than this log)".into()));
        done.finish(outcome).await;
    })
    .detach();
}

/// Publishes every group's state for readers outside the loop.
fn publish(inner: &Inner, set: &GroupSet<Log>) {
    inner.peers.board.set_loop_stats(inner.shard, set.stats());
    let mut status = inner.status.borrow_mut();
    for id in set.group_ids() {
        if let Some(s) = set.status(id) {
            status.insert(id, s);
            let (voters, learners, matched, committed) = set.membership(id).unwrap_or_default();
            inner.peers.board.set(
                id,
                super::board::GroupView {
                    shard: inner.shard,
                    role: s.role,
                    term: s.term,
                    leader: s.leader,
                    commit: s.commit,
                    applied: s.applied,
                    last_index: s.last_index,
                    voters,
                    learners,
                    matched,
                    committed,
                    stopped: s.stopped,
                    lost: s.lost,
                },
            );
        }
    }
    inner.published.notify(usize::MAX);
}

fn refuse(cmd: Cmd, e: Error) {
    match cmd {
        Cmd::Open { reply, .. } | Cmd::Compact { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Cmd::Close { reply, .. } => {
            let _ = reply.send(());
        }
        Cmd::Frame(_)
        | Cmd::Control(ControlMsg::TransferLeader { .. })
        | Cmd::Control(ControlMsg::ForwardCommand { .. })
        | Cmd::Control(ControlMsg::Checkpoint) => {}
        Cmd::Control(ControlMsg::Command { reply, .. })
        | Cmd::Control(ControlMsg::ConfChange { reply, .. }) => {
            let _ = reply.send(Err(e));
        }
        Cmd::SnapshotReport(_) => {}
        Cmd::SnapshotFiles(r) => {
            let _ = r.reply.send(Err(e.to_string()));
        }
        Cmd::SnapshotDownloaded(d) => {
            let _ = d.report.send(Err(e.to_string()));
        }
        Cmd::Propose { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Cmd::ReadIndex { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

async fn handle(inner: &Inner, set: &mut GroupSet<Log>, lp: &mut Loop, cmd: Cmd) {
    match cmd {
        Cmd::Open {
            group,
            partition,
            log,
            reply,
        } => open(inner, set, lp, group, &partition, log, reply).await,
        Cmd::Close { group, reply } => {
            set.remove_group(group);
            lp.logs.remove(&group);
            lp.reopen_after.remove(&group);
            inner.peers.directory.remove(group);
            inner.peers.board.remove(group);
            inner.status.borrow_mut().remove(&group);
            let _ = reply.send(());
        }
        Cmd::Propose {
            group,
            batch,
            reply,
        } => {
            set.propose_encoded(group, &batch, now_ms(), reply);
        }
        Cmd::Compact {
            group,
            to,
            hard_to,
            reply,
        } => {
            let r = set.compact_for_retention(group, to, hard_to).await;
            if let Ok(Some(i)) = r {
                log::info!(
                    "{}: retention compacted node {}'s log to index {i}",
                    GroupName(group),
                    set.node_id()
                );
            }
            let _ = reply.send(r.map(|_| ()));
        }
        Cmd::Control(ControlMsg::Command { command, reply }) => answer_index(
            set.propose_command(0, &command),
            reply,
            0,
            "the Raft loop stopped with the command in flight",
        ),
        Cmd::Control(ControlMsg::ConfChange { group, cc, reply }) => answer_index(
            set.propose_conf_change(group, cc),
            reply,
            group,
            "the Raft loop stopped with the change in flight",
        ),
        Cmd::Control(ControlMsg::TransferLeader { group, to }) => {
            if let Err(e) = set.transfer_leader(group, to) {
                log::info!(
                    "{}: leadership not transferred to node {to}: {e}",
                    GroupName(group)
                );
            }
        }
        Cmd::Control(ControlMsg::ForwardCommand { command }) => {
            if let Err(e) = set.forward_command(0, &command) {
                log::info!("controller command not sent to the controller's leader: {e}");
            }
        }
        Cmd::Control(ControlMsg::Checkpoint) => propose_checkpoint(inner, set),
        Cmd::ReadIndex { group, reply } => match set.read_index(group) {
            Ok(rx) => {
                glommio::spawn_local(async move {
                    // A waiter dropped (its ticks ran out, or leadership moved) is retried.
                    let r = rx.await.unwrap_or(Err(Error::ReadNotReady { group }));
                    let _ = reply.send(r);
                })
                .detach();
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Cmd::SnapshotFiles(r) => {
            // Read beside the loop: finding the snapshot's last batch may read the device.
            let Some(log) = lp.logs.get(&r.group).cloned() else {
                let _ = r
                    .reply
                    .send(Err(format!("group {} is not open here", r.group)));
                return;
            };
            glommio::spawn_local(async move {
                let files = log
                    .snapshot_files(r.first_index, r.last_index)
                    .await
                    .map_err(|e| e.to_string());
                let _ = r.reply.send(files);
            })
            .detach();
        }
        Cmd::SnapshotReport(r) => set.snapshot_report(r.group, r.to, r.index, r.progress),
        Cmd::SnapshotDownloaded(d) => set.snapshot_downloaded(d.job, d.result, d.report),
        Cmd::Frame(frame) => {
            // A frame that decoded but does not fit this node was refused by the transport;
            // what is left are messages raft-rs itself rejects (counted by the set).
            if let Err(e) = set.step_decoded(frame) {
                log::warn!("Raft frame refused: {e}");
            }
        }
    }
}

/// Opens `log` as Raft group `group` of this shard: answered once what the log holds is
/// committed and applied (visible), as a single-node log shows what it recovered as soon as
/// it is open; a log found lost opens stopped and is answered at once.
async fn open(
    inner: &Inner,
    set: &mut GroupSet<Log>,
    lp: &mut Loop,
    group: u64,
    partition: &PartitionId,
    log: Rc<Log>,
    reply: oneshot::Sender<Result<(), Error>>,
) {
    if set.group_ids().contains(&group) {
        let _ = reply.send(Err(Error::Raft(format!(
            "group {group} is open already (two partitions with one group id)"
        ))));
        return;
    }
    let voters = match &inner.hooks.0 {
        Some(h) => match h.voters(partition) {
            Some(v) => v,
            None => vec![inner.node_id.get()],
        },
        None if inner.voters.is_empty() => vec![inner.node_id.get()],
        None => inner.voters.clone(),
    };
    // The controller's state lives in memory: rebuilt from its log at every start (from its
    // last checkpoint, once the log is compacted).
    let replay = group == 0;
    if let Err(e) = set
        .add_group_with(group, Rc::clone(&log), &voters, replay)
        .await
    {
        let _ = reply.send(Err(e));
        return;
    }
    lp.logs.insert(group, log);
    inner.peers.directory.insert(group, inner.shard);
    inner.peers.board.name(partition, group);
    if let Some(e @ Error::LostLog { .. }) = set.failure(group) {
        // Open, and stopped: the node serves its other partitions, and this replica is
        // reported stopped and moved like one that failed while running.
        log::error!("partition {partition}: {e}");
        if let Some(s) = set.status(group) {
            inner.status.borrow_mut().insert(group, s);
        }
        let _ = reply.send(Ok(()));
        return;
    }
    campaign_if_alone(inner, set, group);
    if replay {
        lp.campaign_later.push(group);
    }
    match set.status(group) {
        Some(s) => {
            inner.status.borrow_mut().insert(group, s);
            lp.opening.push(Opening {
                group,
                target: s.last_index,
                reply,
            });
        }
        None => {
            let _ = reply.send(Err(Error::UnknownGroup(group)));
        }
    }
}

/// Answers `reply` with the Raft index of a proposal once it is committed (or its error),
/// beside the loop; a proposal whose outcome the loop dropped is `OutcomeUnknown` (`why`).
fn answer_index(
    proposed: Result<oneshot::Receiver<Outcome>, Error>,
    reply: oneshot::Sender<Result<u64, Error>>,
    group: u64,
    why: &'static str,
) {
    match proposed {
        Ok(rx) => {
            glommio::spawn_local(async move {
                let r = match rx.await {
                    Ok(Ok(c)) => Ok(c.index),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::OutcomeUnknown { group, why }),
                };
                let _ = reply.send(r);
            })
            .detach();
        }
        Err(e) => {
            let _ = reply.send(Err(e));
        }
    }
}

/// Proposes a checkpoint of the controller's state when this node leads the controller and
/// its log ends at its applied index: every command of the log is in the state, and the
/// checkpoint's entry comes right after it (a checkpoint elsewhere is a no-op). The
/// checkpoint is a data entry of one record
/// ([`crate::raft::entry::controller_record_proposal`]): a node built before it reads it as a
/// record nobody reads, which leaves its state as it is, as the checkpoint would.
///
/// A checkpoint in parts is proposed part after part in this one call, so that nothing this
/// leader appends comes between them: they land at `at + 1..=at + n` unless another leader's
/// entries replace them, which leaves the checkpoint incomplete, a no-op everywhere. The hook
/// gives no checkpoint whose parts would not fit within raft-rs's `max_uncommitted_size`
/// (with a margin), so a part is refused only when this node stops leading (or hands its
/// leadership over); a part refused stops the others.
fn propose_checkpoint(inner: &Inner, set: &mut GroupSet<Log>) {
    let (Some(h), Some(at)) = (&inner.hooks.0, set.checkpoint_at(0)) else {
        return;
    };
    let Some(parts) = h.checkpoint(at, set.max_uncommitted_size()) else {
        return;
    };
    let ts = now_ms();
    let mut bytes = 0;
    for (k, command) in parts.iter().enumerate() {
        // As a record: it takes one offset, so the segment holding it can roll, and the ones
        // before it can be deleted once the log is compacted below it.
        if let Err(e) = set.forward_command_as_record(0, command, ts) {
            log::info!(
                "controller: checkpoint not proposed (part {} of {}): {e}",
                k + 1,
                parts.len()
            );
            return;
        }
        bytes += command.len();
    }
    log::info!(
        "controller: checkpoint of the state through index {at} proposed ({bytes} bytes, {} \
         part(s))",
        parts.len()
    );
}

/// A Raft error of partition `id` as the engine reports it (the seam's terms for the
/// cluster outcomes).
pub fn engine_error(e: Error, shard: usize, id: &PartitionId) -> engine::Error {
    use engine::Error as E;
    match e {
        Error::NotLeader { leader, .. } => E::Replication(seam::Error::NotLeader {
            leader_id: (leader != raft::INVALID_ID).then(|| leader.to_string()),
            leader_addr: None,
        }),
        Error::NoLeader { .. } => E::Replication(seam::Error::NoLeader(id.to_string())),
        Error::OutcomeUnknown { why, .. } => E::Replication(seam::Error::OutcomeUnknown(format!(
            "{why}: the append may or may not be committed"
        ))),
        Error::Busy { .. } => E::Overloaded { shard, depth: 0 },
        Error::InvalidProposal(m) => E::InvalidArgument(m),
        Error::Storage { source, .. } => source,
        Error::UnknownGroup(_) => E::ShutDown,
        Error::LostLog { .. } | Error::LostEntries { .. } => {
            E::Replication(seam::Error::DataLoss(e.to_string()))
        }
        e => E::Replication(seam::Error::Internal(e.to_string())),
    }
}

impl Replicator for ShardRaft {
    /// Not a replica its group never opened of a partition the cluster's state applied here
    /// does not list: opened now, it would take this node alone for its group
    /// (`ClusterHooks::voters`) or know no configuration for good; the reconcile pass opens
    /// it once the state lists it, with the configuration the state gives.
    fn opens_at_start(&self, id: &PartitionId, dir: &std::path::Path) -> bool {
        match &self.inner.hooks.0 {
            Some(h) if !h.knows(id) => !dir.join(engine::log::UNOPENED_META).exists(),
            _ => true,
        }
    }

    fn open<'a>(
        &'a self,
        id: &'a PartitionId,
        log: Rc<Log>,
    ) -> LocalBoxFuture<'a, engine::Result<()>> {
        Box::pin(async move {
            let group = group_id(id, log.config().incarnation);
            name_group(group, id);
            if log.read_meta(super::engine_store::RAFT_META)?.is_none()
                && log.next_index() > log.first_index()
            {
                return Err(engine::Error::Foreign {
                    path: log.dir().to_path_buf(),
                    reason: "the partition holds batches but no Raft metadata (raft.meta): it \
                             was written by the single-node engine without replication, which \
                             this server does not open"
                        .into(),
                });
            }
            let (reply, rx) = oneshot::channel();
            let kept = Rc::clone(&log);
            if !self.inner.push(Cmd::Open {
                group,
                partition: id.clone(),
                log,
                reply,
            }) {
                return Err(engine::Error::ShutDown);
            }
            match rx.await {
                Ok(Ok(())) => {
                    self.inner
                        .groups
                        .borrow_mut()
                        .insert(id.clone(), (group, kept));
                    Ok(())
                }
                Ok(Err(e)) => Err(engine_error(e, self.inner.shard, id)),
                Err(_) => Err(engine::Error::ShutDown),
            }
        })
    }

    fn close<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            let Some((group, _)) = self.inner.groups.borrow_mut().remove(id) else {
                return;
            };
            let (reply, rx) = oneshot::channel();
            if self.inner.push(Cmd::Close { group, reply }) {
                let _ = rx.await;
            }
        })
    }

    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: &'a EncodedBatch,
    ) -> LocalBoxFuture<'a, engine::Result<(Appended, AppendTiming)>> {
        Box::pin(async move {
            let started = Instant::now();
            let group = self.group_of(id)?;
            let (reply, rx) = oneshot::channel();
            let cmd = Cmd::Propose {
                group,
                batch: batch.clone(),
                reply,
            };
            if !self.inner.push(cmd) {
                return Err(engine::Error::ShutDown);
            }
            let proposed = Instant::now();
            let committed = match rx.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(engine_error(e, self.inner.shard, id)),
                // The loop stopped with the proposal in it.
                Err(_) => {
                    return Err(engine::Error::Replication(seam::Error::OutcomeUnknown(
                        format!("partition {id} closed with the append in flight"),
                    )))
                }
            };
            let appended = Appended {
                base_offset: committed.base_offset,
                last_offset: committed.base_offset + u64::from(committed.records.max(1)) - 1,
            };
            let timing = AppendTiming {
                queue: Duration::ZERO,
                append: proposed - started,
                fsync: proposed.elapsed(),
            };
            Ok((appended, timing))
        })
    }

    fn apply_retention<'a>(
        &'a self,
        id: &'a PartitionId,
        now: SystemTime,
    ) -> LocalBoxFuture<'a, engine::Result<()>> {
        Box::pin(async move {
            let group = self.group_of(id)?;
            let Some(log) = self.log_of(id) else {
                return Ok(());
            };
            let Some(first_kept) = log.retention_cut(now) else {
                return Ok(());
            };
            // Past twice the topic's limits, retention stops waiting for a lagging follower,
            // which then gets a snapshot.
            let (bytes, ms) = log.retention_limits();
            let hard = log.retention_cut_with(now, bytes.saturating_mul(2), ms.saturating_mul(2));
            let (reply, rx) = oneshot::channel();
            if !self.inner.push(Cmd::Compact {
                group,
                to: first_kept.saturating_sub(1),
                hard_to: hard.map(|h| h.saturating_sub(1)),
                reply,
            }) {
                return Err(engine::Error::ShutDown);
            }
            match rx.await {
                Ok(r) => r.map_err(|e| engine_error(e, self.inner.shard, id)),
                Err(_) => Err(engine::Error::ShutDown),
            }
        })
    }

    fn status(&self, id: &PartitionId) -> Option<ReplicaStatus> {
        let group = self.inner.groups.borrow().get(id)?.0;
        let s = *self.inner.status.borrow().get(&group)?;
        Some(ReplicaStatus {
            term: s.term,
            leader: (s.leader != raft::INVALID_ID).then_some(s.leader),
            is_leader: s.role == StateRole::Leader,
            commit_index: s.commit,
            applied_index: s.applied,
            lost: s.lost,
        })
    }

    fn read_barrier<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, engine::Result<u64>> {
        Box::pin(async move {
            let group = self.group_of(id)?;
            let stats = &self.inner.peers.forward;
            add(&stats.read_index_waits, 1);
            let started = Instant::now();
            let deadline = started + READ_INDEX_DEADLINE;
            let unavailable = |why: &str| {
                add(&stats.read_index_failures, 1);
                engine::Error::Replication(seam::Error::Unavailable(format!(
                    "partition {id}: no leader confirmed its commit index within {:.1} s \
                     ({why}); retry",
                    started.elapsed().as_secs_f64()
                )))
            };
            // raft-rs drops a ReadIndex while there is no leader, or while the leader has
            // not committed in its term: ask again until the deadline.
            let index = loop {
                let (reply, rx) = oneshot::channel();
                if !self.inner.push(Cmd::ReadIndex { group, reply }) {
                    return Err(engine::Error::ShutDown);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let attempt =
                    glommio::timer::timeout(left.min(READ_INDEX_ATTEMPT), async { Ok(rx.await) })
                        .await;
                match attempt {
                    Ok(Ok(Ok(index))) => break index,
                    Ok(Ok(Err(Error::ReadNotReady { .. } | Error::NoLeader { .. })))
                    | Ok(Err(_))
                    | Err(_) => {}
                    Ok(Ok(Err(e))) => return Err(engine_error(e, self.inner.shard, id)),
                }
                if Instant::now() >= deadline {
                    return Err(unavailable("no leader, or one not yet able to serve reads"));
                }
                add(&stats.read_index_retries, 1);
                glommio::timer::sleep(READ_INDEX_RETRY).await;
            };
            // Served once this replica has applied up to the read index.
            loop {
                let listener = self.inner.published.listen();
                match self.inner.status.borrow().get(&group) {
                    Some(s) if s.applied >= index => return Ok(s.visible_offset),
                    Some(_) => {}
                    None => return Err(engine::Error::ShutDown),
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(unavailable("this replica has not applied that far yet"));
                }
                futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
            }
        })
    }

    fn receive(&self, payload: Box<dyn std::any::Any + Send>) {
        let payload = match payload.downcast::<RaftFrame>() {
            Ok(frame) => {
                self.inner.push(Cmd::Frame(*frame));
                return;
            }
            Err(p) => p,
        };
        let payload = match payload.downcast::<ControlMsg>() {
            Ok(msg) => {
                if !self.inner.push(Cmd::Control(*msg)) {
                    log::info!("shard {}: a control request after stop", self.inner.shard);
                }
                return;
            }
            Err(p) => p,
        };
        let payload = match payload.downcast::<FilesRequest>() {
            Ok(r) => {
                self.inner.push(Cmd::SnapshotFiles(*r));
                return;
            }
            Err(p) => p,
        };
        match payload.downcast::<ProgressReport>() {
            Ok(r) => {
                self.inner.push(Cmd::SnapshotReport(*r));
            }
            Err(_) => log::error!(
                "shard {}: a peer payload of an unknown type",
                self.inner.shard
            ),
        }
    }

    fn stop(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(async move {
            if self.inner.stopped.get() {
                return;
            }
            let listener = self.inner.done.listen();
            self.inner.stopping.set(true);
            self.inner.wake.notify(usize::MAX);
            if !self.inner.stopped.get() {
                listener.await;
            }
        })
    }
}
