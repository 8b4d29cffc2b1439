//! One Ready loop per shard: a [`GroupSet`] owns every Raft group (one `RawNode` per
//! partition) of its shard and drives them all in rounds.
//!
//! One round ([`GroupSet::round`]):
//! 1. deferred log reads of lagging followers that are done are handed to raft-rs
//!    (`on_entries_fetched`); the reads themselves run beside the loop as [`FetchJob`]s, which
//!    the loop's driver takes after each round ([`GroupSet::take_fetch_jobs`]) and spawns;
//! 2. every group with a Ready: its messages are queued (the leader's appends leave before any
//!    disk write, so followers write while the leader does), committed entries are applied
//!    (the visible watermark moves, proposals' waiters are answered), hard state is noted;
//! 3. all queued messages are sent, one frame per destination node, heartbeats of all groups
//!    merged in it;
//! 4. every group's entries are written (buffered), term/vote/configuration written to the
//!    metadata file only when changed, then `advance_append_async`;
//! 5. each touched log is synced **once** (the engine's group commit);
//! 6. `on_persist_ready` for each group, then the messages that had to wait for durability
//!    (votes, append responses: a follower acknowledges only what it has synced) are sent.
//!
//! Ticks come from one timer per shard ([`GroupSet::tick`]); incoming frames are stepped with
//! [`GroupSet::step_frame`] between rounds. Nothing here does I/O but through [`LogStore`] and
//! [`Transport`], so the same code runs on glommio and in the seeded simulation.
//!
//! raft-rs draws election timeouts from the thread's random generator; the set draws them
//! from its own (seeded) generator instead, so a simulation replays exactly.

use super::entry;
use super::error::{Error, Result};
use super::logger::{self, GroupName};
use super::storage::{FetchJob, FreshCrcs, RaftLog, SnapshotData, FRESH_CRCS_MAX};
use super::store::LogStore;
use super::wire;
use bytes::Bytes;
use engine::metrics::{Histogram, LATENCY_BOUNDS_NS};
use engine::seam::EncodedBatch;
use engine::NewRecord;
use futures_channel::oneshot;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Settings of every group of a set. Ticks are the shard timer's periods.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub heartbeat_tick: usize,
    /// Election timeouts are drawn from `[election_tick, 2 * election_tick)`.
    pub election_tick: usize,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Bytes of proposed but uncommitted entries a leader accepts (then proposals fail).
    pub max_uncommitted_size: u64,
    pub max_committed_size_per_ready: u64,
    /// Bytes of applied entries kept in each group's tail cache.
    pub cache_bytes: u64,
    /// Ticks a ReadIndex request waits for its answer before it fails (retry).
    pub read_timeout_ticks: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            heartbeat_tick: 2,
            election_tick: 10,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 << 20,
            max_committed_size_per_ready: 16 << 20,
            cache_bytes: 4 << 20,
            read_timeout_ticks: 20,
        }
    }
}

/// Where a round's frames go (one frame, an encoded `RaftFrame`, per destination node), and
/// where a snapshot's batches come from.
#[allow(async_fn_in_trait)]
pub trait Transport {
    fn send(&mut self, to_node: u64, frame: Vec<u8>);

    /// True when snapshots travel beside the loop (the peer channel's snapshot transfer):
    /// a received snapshot becomes a [`SnapshotJob`] for the driver, which downloads its
    /// files and hands them back ([`GroupSet::snapshot_downloaded`]); a sent one is reported
    /// by the receiver ([`GroupSet::snapshot_report`]). Otherwise (the default, the
    /// simulation) `fetch_snapshot` fetches the batches within the round and a sent snapshot
    /// counts as finished once handed over.
    fn streams_snapshots(&self) -> bool {
        false
    }

    /// Fetches the batches of Raft indexes `[first_index, last_index]` of `group` from
    /// `from_node` (the sender of a snapshot). An error drops the snapshot; the leader
    /// sends another.
    async fn fetch_snapshot(
        &mut self,
        from_node: u64,
        group: u64,
        first_index: u64,
        last_index: u64,
    ) -> std::result::Result<Vec<engine::log::EntryBatch>, String>;
}

/// A snapshot message received whose data the driver must download beside the loop (see
/// [`Transport::streams_snapshots`]), then hand back with
/// [`GroupSet::snapshot_downloaded`].
pub struct SnapshotJob {
    pub group: u64,
    /// The sender (the group's leader), which serves the files.
    pub from: u64,
    /// The snapshot's point and term.
    pub index: u64,
    pub term: u64,
    pub data: SnapshotData,
    /// The message, stepped into raft-rs once the data is here.
    pub message: Message,
}

/// A snapshot sent to a follower and not reported on yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Awaiting {
    /// The snapshot's point: reports of another snapshot (an earlier transfer's, late) are
    /// not about this one.
    index: u64,
    /// Ticks left for news; `None` once the follower started downloading (its transfer
    /// reports the end).
    ticks_left: Option<usize>,
}

/// How a snapshot sent to a follower is doing, as its transfer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotProgress {
    /// The follower is downloading it: no timeout while it streams.
    Started,
    /// Installed by the follower.
    Finished,
    /// Not installed (failed, refused, or the connection was lost).
    Failed,
}

/// The answer a downloaded snapshot gets once its Ready installed it (or not): what the
/// follower tells the leader.
pub type InstallReport = oneshot::Sender<std::result::Result<u64, String>>;

/// Ticks a leader waits for news of a snapshot it sent (the follower starting to download
/// it) before it counts it failed and probes the follower again.
const SNAPSHOT_REPORT_TICKS: usize = 300;

/// A snapshot's data, staged for its Ready: batches in memory, or files beside the log.
enum Staged<X> {
    Batches(Vec<u8>),
    Files(X),
}

/// What a committed proposal became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    /// Offset of the first record (for data; the next offset for other entries).
    pub base_offset: u64,
    pub records: u32,
}

/// The answer to a proposal: committed, or why not.
pub type Outcome = Result<Committed>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProposalKind {
    Data,
    Controller,
    ConfChange,
}

struct Proposal {
    index: u64,
    term: u64,
    kind: ProposalKind,
    tx: oneshot::Sender<Outcome>,
    /// When it was proposed, for the commit latency.
    at: Instant,
}

impl Proposal {
    /// Answers the proposer, counted in `m`.
    fn settle(self, outcome: Outcome, m: &ProposalMetrics) {
        let k = self.kind as usize;
        if outcome.is_ok() {
            m.committed[k].fetch_add(1, Ordering::Relaxed);
            if self.kind == ProposalKind::Data {
                m.data_commit_latency.observe_duration(self.at.elapsed());
            }
        } else {
            m.failed[k].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.tx.send(outcome);
    }
}

/// Proposals made by a node's groups and what became of them, shared by its shards' sets
/// (exported as metrics). Indexed by [`ProposalKind`]: data, controller, configuration.
#[derive(Debug)]
pub struct ProposalMetrics {
    /// Refused before they reached Raft's log (not the leader, a transfer under way, too
    /// many uncommitted bytes, a configuration change pending, the group stopped or unknown,
    /// no records).
    pub refused: [AtomicU64; 3],
    /// Committed, and answered so.
    pub committed: [AtomicU64; 3],
    /// In Raft's log, then answered with an error: replaced by another leader's entry,
    /// leadership lost (outcome unknown), the group stopped or closed.
    pub failed: [AtomicU64; 3],
    /// From a data proposal (a client's append) on its leader to its entry committed and
    /// applied there, when the proposer is answered.
    pub data_commit_latency: Histogram,
}

impl Default for ProposalMetrics {
    fn default() -> Self {
        ProposalMetrics {
            refused: Default::default(),
            committed: Default::default(),
            failed: Default::default(),
            data_commit_latency: Histogram::new(LATENCY_BOUNDS_NS),
        }
    }
}

impl ProposalMetrics {
    /// The kinds' names, in index order, as metrics label them.
    pub const KINDS: [&'static str; 3] = ["data", "controller", "conf_change"];
}

struct ReadWaiter {
    id: u64,
    ticks_left: usize,
    tx: oneshot::Sender<Result<u64>>,
}

/// Why a group stopped (see `Group::fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its log's disk is full: the group opens again once the log takes writes.
    DiskFull,
    /// A storage or apply failure (the log latched, or `raft.meta` could not be written):
    /// stopped until the server restarts.
    Failed,
}

/// A group's state as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStatus {
    /// A stopped group is a follower (raft-rs has no "stopped" role): it leads nothing.
    pub role: StateRole,
    pub term: u64,
    /// `raft::INVALID_ID` when none is known, and always on a stopped group: it hears no
    /// message, so whom it last knew as leader (maybe itself) says nothing about now.
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// The offset after the last committed record: what readers may see.
    pub visible_offset: u64,
    /// Set once the group stopped: it takes no proposal, steps no message, elects nobody.
    pub stopped: Option<Stopped>,
    /// Stopped because its log is marked lost ([`Error::LostLog`]): a restart does not start
    /// it again; the replica is moved (or, the partition's only one, its loss accepted).
    pub lost: bool,
}

struct Group<S: LogStore> {
    id: u64,
    node: RawNode<RaftLog<S>>,
    log: RaftLog<S>,
    proposals: VecDeque<Proposal>,
    reads: Vec<ReadWaiter>,
    /// Index of the last applied configuration change (re-applied changes are skipped).
    conf_index: u64,
    /// Configuration changes written to the log and not applied yet (above `conf_index`):
    /// the commit index stamped on the entries written meanwhile stays below the first
    /// ([`Group::stamp`]).
    unapplied_conf: BTreeSet<u64>,
    visible_offset: u64,
    failed: Option<Error>,
    was_leader: bool,
    /// The highest Raft index handed to the log to write (0: none since the group opened).
    /// An entry up to it may be on disk even when its write or sync failed (a write can
    /// land whole before a later step of the same call fails, e.g. a segment roll that
    /// writes out and syncs the old segment, then cannot create the new one), and the log
    /// recovers it when it opens again; an entry above it never reached the log.
    handed: u64,
    /// Controller commands applied since the driver last took them, with the replays.
    commands: Vec<StateEvent>,
    /// The group's state machine lives in memory (the controller's): it is rebuilt from the
    /// log's committed entries at open and after a snapshot is installed.
    replay: bool,
    /// A snapshot message whose batches are not here yet (the newest wins).
    held_snapshot: Option<Message>,
    /// Data of the snapshot stepped into raft-rs, checked, until its Ready installs it.
    staged: Option<(SnapshotData, Staged<S::Staged>)>,
    /// A snapshot's files are downloading (a [`SnapshotJob`] is out).
    downloading: bool,
    /// Who learns how the staged snapshot's install went.
    install_report: Option<InstallReport>,
    /// Payload CRCs of the data entries proposed here and not stored yet.
    fresh_crcs: FreshCrcs,
    /// The set's proposal counters.
    metrics: Arc<ProposalMetrics>,
}

/// What a group whose state machine lives in memory hands it, in log order
/// ([`GroupSet::take_commands`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateEvent {
    /// The state starts over from the log's committed entries `first_index..=last_index`,
    /// which follow (their commands, then [`StateEvent::Replayed`]): at open, and after a
    /// snapshot replaced the log. A log that starts past index 1 was compacted below a
    /// checkpoint, which is among them.
    Replay { first_index: u64, last_index: u64 },
    /// A controller command, committed at `index`.
    Command { index: u64, command: Vec<u8> },
    /// The replay announced last is over.
    Replayed,
}

/// A group's voters, learners and (on its leader) each replica's matched index.
pub type GroupMembers = (Vec<u64>, Vec<u64>, Vec<(u64, u64)>, Vec<(u64, u64)>);

/// Counters of a set, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetStats {
    pub rounds: u64,
    pub readies: u64,
    pub syncs: u64,
    pub frames: u64,
    pub messages: u64,
    pub heartbeats_merged: u64,
    pub entries_written: u64,
    pub entries_applied: u64,
    pub meta_writes: u64,
    pub fetches: u64,
    pub step_errors: u64,
    /// Peer messages refused before raft-rs saw them ([`peer_check`](super::peer_check)).
    pub peer_messages_refused: u64,
    /// Vote requests dropped by a group that knows no configuration.
    pub votes_refused: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub snapshot_fetch_failures: u64,
    /// Snapshots sent whose follower gave no news in time (counted failed).
    pub snapshot_reports_timed_out: u64,
    /// Reports on another snapshot than the one awaited from that follower (dropped).
    pub snapshot_reports_stale: u64,
    /// Snapshot messages dropped because one was downloading for the group already.
    pub snapshots_ignored: u64,
    pub compactions: u64,
}

impl SetStats {
    /// Adds `o`'s counters to these.
    pub fn add(&mut self, o: &SetStats) {
        let SetStats {
            rounds,
            readies,
            syncs,
            frames,
            messages,
            heartbeats_merged,
            entries_written,
            entries_applied,
            meta_writes,
            fetches,
            step_errors,
            peer_messages_refused,
            votes_refused,
            snapshots_sent,
            snapshots_installed,
            snapshot_fetch_failures,
            snapshot_reports_timed_out,
            snapshot_reports_stale,
            snapshots_ignored,
            compactions,
        } = *o;
        self.rounds += rounds;
        self.readies += readies;
        self.syncs += syncs;
        self.frames += frames;
        self.messages += messages;
        self.heartbeats_merged += heartbeats_merged;
        self.entries_written += entries_written;
        self.entries_applied += entries_applied;
        self.meta_writes += meta_writes;
        self.fetches += fetches;
        self.step_errors += step_errors;
        self.peer_messages_refused += peer_messages_refused;
        self.votes_refused += votes_refused;
        self.snapshots_sent += snapshots_sent;
        self.snapshots_installed += snapshots_installed;
        self.snapshot_fetch_failures += snapshot_fetch_failures;
        self.snapshot_reports_timed_out += snapshot_reports_timed_out;
        self.snapshot_reports_stale += snapshot_reports_stale;
        self.snapshots_ignored += snapshots_ignored;
        self.compactions += compactions;
    }
}

/// A round between its writes and its acknowledgements: what its logs must persist, and
/// the Readies to finish once they have.
pub struct Persisting {
    persisted: Vec<(u64, u64, Vec<Message>, Option<u64>)>,
    to_sync: BTreeSet<u64>,
}

/// Every Raft group of one shard, and its Ready loop.
pub struct GroupSet<S: LogStore> {
    node_id: u64,
    config: GroupConfig,
    groups: BTreeMap<u64, Group<S>>,
    rng: StdRng,
    /// Messages of this round by destination node.
    outbox: BTreeMap<u64, Vec<(u64, Message)>>,
    /// Snapshots sent this round, reported to raft-rs once every Ready is advanced.
    snapshots_sent: Vec<(u64, u64)>,
    /// Deferred reads for the driver to run beside the loop.
    fetch_jobs: Vec<FetchJob<S>>,
    /// Snapshots to download beside the loop.
    snapshot_jobs: Vec<SnapshotJob>,
    /// Snapshots sent and streaming `(group, follower)`: ticks left for news (`None` once the
    /// follower started downloading: its transfer reports the end).
    awaiting: BTreeMap<(u64, u64), Awaiting>,
    next_read_id: u64,
    stats: SetStats,
    metrics: Arc<ProposalMetrics>,
}

impl<S: LogStore> GroupSet<S> {
    /// A set for node `node_id`; `seed` drives its election timeouts.
    pub fn new(node_id: u64, config: GroupConfig, seed: u64) -> Self {
        GroupSet {
            node_id,
            config,
            groups: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            outbox: BTreeMap::new(),
            snapshots_sent: Vec::new(),
            fetch_jobs: Vec::new(),
            snapshot_jobs: Vec::new(),
            awaiting: BTreeMap::new(),
            next_read_id: 1,
            stats: SetStats::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts this set's proposals in `m` (shared by a node's shards) from now on; groups
    /// opened before keep counting where they did.
    pub fn share_metrics(&mut self, m: Arc<ProposalMetrics>) {
        self.metrics = m;
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn stats(&self) -> SetStats {
        self.stats
    }

    /// Opens group `id` over `store`. `voters` is the first configuration of a group created
    /// now (ignored when the store already holds one).
    pub async fn add_group(&mut self, id: u64, store: Rc<S>, voters: &[u64]) -> Result<()> {
        self.add_group_with(id, store, voters, false).await
    }

    /// [`add_group`](Self::add_group); with `replay`, the group's state machine lives in
    /// memory (the controller's) and is rebuilt from the log: every committed entry the log
    /// retains is handed to it again ([`StateEvent::Replay`]), read from the log at open,
    /// while raft-rs starts at the recovered commit index as for any group (it never asks
    /// for entries below the snapshot point). The same happens after a snapshot install.
    pub async fn add_group_with(
        &mut self,
        id: u64,
        store: Rc<S>,
        voters: &[u64],
        replay: bool,
    ) -> Result<()> {
        // A log marked lost opens stopped, before it could vote or acknowledge: it is not
        // bootstrapped either (a first configuration would let it vote as a new voter).
        let storage = |source| Error::Storage { group: id, source };
        let mut lost = store.lost().map_err(storage)?;
        if lost.is_none() {
            // Files deleted under a log that keeps its directory and mark: found here, it
            // is marked lost like a missing directory, before the group could vote.
            if let Some(why) = super::storage::found_short(id, &*store)? {
                log::error!("{}: {why}", GroupName(id));
                store.mark_lost(&why).map_err(storage)?;
                lost = Some(why);
            }
        }
        let bootstrap = (!voters.is_empty() && lost.is_none()).then(|| {
            let mut cs = ConfState::default();
            cs.voters = voters.to_vec();
            cs
        });
        let log = RaftLog::open(id, Rc::clone(&store), bootstrap, self.config.cache_bytes).await?;
        // Its metadata written by the open: from now on, a log without it lost it.
        store.forget_unopened().map_err(storage)?;
        let applied = log.recovered_applied();
        let commands = if replay && lost.is_none() {
            replayed(&log, applied).await?
        } else {
            Vec::new()
        };
        let c = &self.config;
        let cfg = raft::Config {
            id: self.node_id,
            election_tick: c.election_tick,
            heartbeat_tick: c.heartbeat_tick,
            applied,
            max_size_per_msg: c.max_size_per_msg,
            max_inflight_msgs: c.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: c.election_tick,
            max_election_tick: 2 * c.election_tick,
            max_uncommitted_size: c.max_uncommitted_size,
            max_committed_size_per_ready: c.max_committed_size_per_ready,
            ..raft::Config::default()
        };
        let node = RawNode::new(&cfg, log.clone(), &logger::logger(self.node_id, id))?;
        let visible_offset = log.applied_offset();
        let conf_index = log.meta().conf_index;
        let unapplied_conf = unapplied_conf_changes(&log, applied, conf_index);
        let g = Group {
            id,
            node,
            log,
            proposals: VecDeque::new(),
            reads: Vec::new(),
            conf_index,
            unapplied_conf,
            visible_offset,
            failed: lost.map(|why| Error::LostLog { group: id, why }),
            was_leader: false,
            handed: 0,
            commands,
            replay,
            held_snapshot: None,
            staged: None,
            downloading: false,
            install_report: None,
            fresh_crcs: FreshCrcs::new(),
            metrics: Arc::clone(&self.metrics),
        };
        self.groups.insert(id, g);
        self.randomize_timeouts();
        Ok(())
    }

    /// Takes group `id` out of the set (its partition is going away); its pending proposals
    /// and reads learn that their outcome is unknown. Its log is left as it is.
    pub fn remove_group(&mut self, id: u64) -> bool {
        let Some(g) = self.groups.remove(&id) else {
            return false;
        };
        self.retire(id, g);
        true
    }

    /// Opens group `id` again from `store`, recovered as at a start, in place of the one held
    /// (a group stopped by a full disk, whose log takes writes again). If the open fails, the
    /// group held stays as it was (stopped, reported, tried again later) and the error is
    /// returned: a group taken out first and not opened again would be gone from this node
    /// until a restart, its partition neither served nor reported stopped.
    pub async fn reopen_group(&mut self, id: u64, store: Rc<S>, replay: bool) -> Result<()> {
        let Some(old) = self.groups.remove(&id) else {
            return Err(Error::UnknownGroup(id));
        };
        match self.add_group_with(id, store, &[], replay).await {
            Ok(()) => {
                self.retire(id, old);
                Ok(())
            }
            Err(e) => {
                self.groups.insert(id, old);
                Err(e)
            }
        }
    }

    /// What taking group `id` (`g`) out of the set settles: its snapshot transfers no
    /// longer awaited, its pending proposals and reads answered.
    fn retire(&mut self, id: u64, mut g: Group<S>) {
        self.awaiting.retain(|&(group, _), _| group != id);
        for p in g.proposals.drain(..) {
            let outcome = Err(Error::OutcomeUnknown {
                group: id,
                why: "the group was closed with the proposal in flight",
            });
            p.settle(outcome, &g.metrics);
        }
        for r in g.reads.drain(..) {
            let _ = r.tx.send(Err(Error::ReadNotReady { group: id }));
        }
    }

    pub fn group_ids(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    pub fn status(&self, id: u64) -> Option<GroupStatus> {
        let g = self.groups.get(&id)?;
        let r = &g.node.raft;
        let stopped = g.failed.as_ref().map(|e| {
            if e.is_disk_full() {
                Stopped::DiskFull
            } else {
                Stopped::Failed
            }
        });
        // raft-rs's state froze when the group stopped: a former leader still says it
        // leads. It does not; nor does it know who does.
        let (role, leader) = match stopped {
            Some(_) => (StateRole::Follower, raft::INVALID_ID),
            None => (r.state, r.leader_id),
        };
        Some(GroupStatus {
            role,
            term: r.term,
            leader,
            commit: r.raft_log.committed,
            applied: r.raft_log.applied,
            last_index: r.raft_log.last_index(),
            visible_offset: g.visible_offset,
            stopped,
            lost: matches!(g.failed, Some(Error::LostLog { .. })),
        })
    }

    /// Controller commands applied since the last call, and replays, by group, in log
    /// order.
    pub fn take_commands(&mut self) -> Vec<(u64, StateEvent)> {
        let mut out = Vec::new();
        for g in self.groups.values_mut() {
            for e in g.commands.drain(..) {
                out.push((g.id, e));
            }
        }
        out
    }

    /// Bytes of proposed but uncommitted entries a leader of this set accepts
    /// ([`GroupConfig::max_uncommitted_size`]; raft-rs counts each entry's data).
    pub fn max_uncommitted_size(&self) -> u64 {
        self.config.max_uncommitted_size
    }

    /// Where a checkpoint of group `id`'s in-memory state may be taken: its applied index,
    /// when this node leads the group and nothing follows that index in its log, so that an
    /// entry proposed now lands right after it (unless another leader's replaces it).
    pub fn checkpoint_at(&self, id: u64) -> Option<u64> {
        let g = self.groups.get(&id)?;
        let r = &g.node.raft;
        let applied = r.raft_log.applied;
        (g.failed.is_none()
            && r.state == StateRole::Leader
            && r.raft_log.last_index() == applied
            && r.raft_log.committed == applied)
            .then_some(applied)
    }

    /// Raft's first index of group `id` (the snapshot point + 1).
    pub fn first_index(&self, id: u64) -> Option<u64> {
        self.groups
            .get(&id)
            .map(|g| g.log.meta().snapshot_index + 1)
    }

    /// A group's configuration and, on its leader, how far each replica has replicated and
    /// the commit index it last reported: (voters, learners, [(node, matched index)],
    /// [(node, commit index)]).
    ///
    /// A replica whose progress the leader does not know is left out of the matched
    /// indexes: raft-rs resets every follower's progress to probing with matched index 0
    /// when a node becomes leader, and it stays so until that follower answers (never, while
    /// it is down or paused). Reporting that 0 made the follower look as far behind as the
    /// whole log after every leader change.
    pub fn membership(&self, id: u64) -> Option<GroupMembers> {
        let g = self.groups.get(&id)?;
        let r = &g.node.raft;
        let conf = r.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let (matched, committed) = if r.state == StateRole::Leader && g.failed.is_none() {
            let known = |n: u64, p: &raft::Progress| {
                n == r.id || p.matched > 0 || p.state != raft::ProgressState::Probe
            };
            let mut m: Vec<(u64, u64)> = r
                .prs()
                .iter()
                .filter(|&(&n, p)| known(n, p))
                .map(|(&n, p)| (n, p.matched))
                .collect();
            m.sort_unstable();
            let mut c: Vec<(u64, u64)> = r
                .prs()
                .iter()
                .map(|(&n, p)| (n, p.committed_index))
                .collect();
            c.sort_unstable();
            (m, c)
        } else {
            (Vec::new(), Vec::new())
        };
        Some((voters, learners, matched, committed))
    }

    /// Asks group `id`'s leader (this node) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, id: u64, to: u64) -> Result<()> {
        let g = self.group_mut(id)?;
        g.check_leader()?;
        g.node.transfer_leader(to);
        Ok(())
    }

    /// The error that stopped a group, if one did.
    pub fn failure(&self, id: u64) -> Option<Error> {
        self.groups.get(&id).and_then(|g| g.failed.clone())
    }

    pub fn log(&self, id: u64) -> Option<&RaftLog<S>> {
        self.groups.get(&id).map(|g| &g.log)
    }

    fn group_mut(&mut self, id: u64) -> Result<&mut Group<S>> {
        let g = self.groups.get_mut(&id).ok_or(Error::UnknownGroup(id))?;
        match &g.failed {
            Some(e) => Err(e.clone()),
            None => Ok(g),
        }
    }

    /// Proposes `records` as one entry of group `id`; the receiver answers once it is
    /// committed (never before), or why it cannot be.
    pub fn propose(
        &mut self,
        id: u64,
        records: &[NewRecord],
        timestamp_ms: i64,
    ) -> Result<oneshot::Receiver<Outcome>> {
        if records.is_empty() {
            return Err(Error::InvalidProposal("a proposal needs records".into()));
        }
        let data = entry::data_proposal(records, timestamp_ms);
        self.propose_data(id, data, ProposalKind::Data)
    }

    /// Proposes a controller command.
    pub fn propose_command(
        &mut self,
        id: u64,
        command: &[u8],
    ) -> Result<oneshot::Receiver<Outcome>> {
        self.propose_data(
            id,
            entry::controller_proposal(command),
            ProposalKind::Controller,
        )
    }

    /// Proposes controller command `command` on group `id` where this node does not lead
    /// it: raft-rs forwards the proposal to the leader it knows (a `MsgPropose`), which
    /// appends it like its own. Nothing tracks it here: the caller watches the applied
    /// state and asks again if the command does not show (the forward, or the leader's
    /// entry, may be lost). On the leader it is a plain, untracked proposal.
    pub fn forward_command(&mut self, id: u64, command: &[u8]) -> Result<()> {
        let g = self.group_mut(id)?;
        if g.node.raft.leader_id == raft::INVALID_ID {
            return Err(Error::NoLeader { group: id });
        }
        g.node
            .propose(Vec::new(), Vec::from(entry::controller_proposal(command)))?;
        Ok(())
    }

    /// [`forward_command`](Self::forward_command), the command stored as a data entry of one
    /// record ([`entry::controller_record_proposal`]): it takes one offset, so the controller's
    /// segment can roll after it. Group `id` must rebuild its state from its log
    /// (`add_group_with` and `replay`), or the record would be read as a client's.
    pub fn forward_command_as_record(
        &mut self,
        id: u64,
        command: &[u8],
        timestamp_ms: i64,
    ) -> Result<()> {
        let g = self.group_mut(id)?;
        if !g.replay {
            return Err(Error::InvalidProposal(format!(
                "group {id} does not read records as commands"
            )));
        }
        if g.node.raft.leader_id == raft::INVALID_ID {
            return Err(Error::NoLeader { group: id });
        }
        let data = entry::controller_record_proposal(command, timestamp_ms);
        g.node.propose(Vec::new(), Vec::from(data))?;
        Ok(())
    }

    fn propose_data(
        &mut self,
        id: u64,
        data: Bytes,
        kind: ProposalKind,
    ) -> Result<oneshot::Receiver<Outcome>> {
        let (tx, rx) = oneshot::channel();
        self.propose_data_to(id, data, kind, tx)
            .map_err(|(e, _)| e)?;
        Ok(rx)
    }

    /// Proposes the records of an encoded batch (the seam's `EncodedBatch`: records laid out
    /// as stored) as one entry of group `id`; `tx` gets the outcome, once committed or as soon
    /// as it is known it cannot be (a refusal is sent to `tx` as well). A batch built behind
    /// its entry prefix (`EncodedBatch::entry_data`) is proposed as it is, without a copy;
    /// another gets its entry laid out here, stamped `timestamp_ms`.
    ///
    /// The batch's payload CRC spares the round that stores the entry a pass over it.
    pub fn propose_encoded(
        &mut self,
        id: u64,
        batch: &EncodedBatch,
        timestamp_ms: i64,
        tx: oneshot::Sender<Outcome>,
    ) {
        let records = batch.record_count();
        if records == 0 {
            self.metrics.refused[ProposalKind::Data as usize].fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Err(Error::InvalidProposal(
                "a proposal needs records".into(),
            )));
            return;
        }
        let data = match batch.entry_data() {
            Some(data) => data.clone(),
            None => Bytes::from(entry::data_proposal_encoded(
                batch.payload(),
                records,
                timestamp_ms,
            )),
        };
        if let Err((e, tx)) = self.propose_data_to(id, data, ProposalKind::Data, tx) {
            let _ = tx.send(Err(e));
            return;
        }
        if let Some(g) = self.groups.get_mut(&id) {
            let crc = batch.payload_crc();
            if let Some(p) = g.proposals.back() {
                let (index, term) = (p.index, p.term);
                // Index order: a newer leadership's proposal replaces any left over above it.
                while g.fresh_crcs.back().is_some_and(|&(i, _, _)| i >= index) {
                    g.fresh_crcs.pop_back();
                }
                if g.fresh_crcs.len() >= FRESH_CRCS_MAX {
                    g.fresh_crcs.pop_front();
                }
                g.fresh_crcs.push_back((index, term, crc));
            }
        }
    }

    /// Proposes `data`; on a refusal hands `tx` back with the error.
    #[allow(clippy::result_large_err)]
    fn propose_data_to(
        &mut self,
        id: u64,
        data: Bytes,
        kind: ProposalKind,
        tx: oneshot::Sender<Outcome>,
    ) -> std::result::Result<(), (Error, oneshot::Sender<Outcome>)> {
        let r = self.try_propose_data_to(id, data, kind, tx);
        if r.is_err() {
            self.metrics.refused[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    #[allow(clippy::result_large_err)]
    fn try_propose_data_to(
        &mut self,
        id: u64,
        data: Bytes,
        kind: ProposalKind,
        tx: oneshot::Sender<Outcome>,
    ) -> std::result::Result<(), (Error, oneshot::Sender<Outcome>)> {
        let g = match self.group_mut(id) {
            Ok(g) => g,
            Err(e) => return Err((e, tx)),
        };
        if let Err(e) = g.check_leader() {
            return Err((e, tx));
        }
        if g.node.raft.lead_transferee.is_some() {
            // raft-rs drops proposals while it hands leadership over: retry at the new leader.
            return Err((Error::NoLeader { group: id }, tx));
        }
        let before = g.node.raft.raft_log.last_index();
        if let Err(e) = propose_bytes(&mut g.node, data) {
            let e = match e {
                // Checked just above that it leads: raft-rs dropped it for its size.
                raft::Error::ProposalDropped => Error::Busy { group: id },
                e => e.into(),
            };
            return Err((e, tx));
        }
        g.track_to(before, kind, tx)
    }

    /// Proposes a configuration change (one at a time). Refused at once while another is
    /// pending; answered `ConfChangeRefused` if raft-rs turned it into an empty entry.
    pub fn propose_conf_change(
        &mut self,
        id: u64,
        cc: ConfChangeV2,
    ) -> Result<oneshot::Receiver<Outcome>> {
        let r = self.try_propose_conf_change(id, cc);
        if r.is_err() {
            let k = ProposalKind::ConfChange as usize;
            self.metrics.refused[k].fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn try_propose_conf_change(
        &mut self,
        id: u64,
        cc: ConfChangeV2,
    ) -> Result<oneshot::Receiver<Outcome>> {
        let g = self.group_mut(id)?;
        g.check_leader()?;
        let r = &g.node.raft;
        if r.pending_conf_index > r.raft_log.applied {
            return Err(Error::ConfChangePending {
                group: id,
                pending: r.pending_conf_index,
            });
        }
        let before = r.raft_log.last_index();
        g.node.propose_conf_change(Vec::new(), cc)?;
        let (tx, rx) = oneshot::channel();
        g.track_to(before, ProposalKind::ConfChange, tx)
            .map_err(|(e, _)| e)?;
        Ok(rx)
    }

    /// Asks for a linearizable read point of group `id`: the receiver answers the commit
    /// index to wait for. Fails at once when it cannot be served yet (no leader, or a leader
    /// that has not committed in its term, whose ReadIndex raft-rs would drop silently), and
    /// after `read_timeout_ticks` when the answer does not come: the caller retries.
    pub fn read_index(&mut self, id: u64) -> Result<oneshot::Receiver<Result<u64>>> {
        if let Some(g) = self.groups.get(&id) {
            if g.failed.as_ref().is_some_and(Error::is_disk_full) && g.only_voter() {
                // The group's only voter, stopped for want of space: nothing commits in
                // its group but through it, so what it applied is the read point (a read at
                // its end is out of range, as before its disk filled, not the disk's error).
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Ok(g.node.raft.raft_log.applied));
                return Ok(rx);
            }
        }
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        let ticks = self.config.read_timeout_ticks;
        let g = self.group_mut(id)?;
        let r = &g.node.raft;
        if r.leader_id == raft::INVALID_ID
            || (r.state == StateRole::Leader && !r.commit_to_current_term())
        {
            return Err(Error::ReadNotReady { group: id });
        }
        g.node.read_index(read_id.to_le_bytes().to_vec());
        let (tx, rx) = oneshot::channel();
        g.reads.push(ReadWaiter {
            id: read_id,
            ticks_left: ticks,
            tx,
        });
        Ok(rx)
    }

    /// Steps one incoming frame. Messages for unknown groups and messages raft-rs refuses
    /// are counted and dropped; a frame that does not decode is an error (the transport
    /// closes that connection).
    pub fn step_frame(&mut self, bytes: &[u8]) -> Result<()> {
        self.step_decoded(wire::decode_frame(bytes)?)
    }

    /// [`step_frame`](Self::step_frame) for a frame decoded already (by the transport, which
    /// splits a node's frame among the shards owning its groups).
    pub fn step_decoded(&mut self, frame: proto::proglog::raft::v1::RaftFrame) -> Result<()> {
        if frame.to != self.node_id {
            return Err(Error::Malformed {
                what: "frame",
                why: format!("for node {}, this is node {}", frame.to, self.node_id),
            });
        }
        for (group, m) in wire::unframe(frame)? {
            let Some(g) = self.groups.get_mut(&group) else {
                self.stats.step_errors += 1;
                continue;
            };
            if let Some(why) = super::peer_check::refusal(&g.node.raft, &m) {
                // raft-rs would panic on it (or take a local message from the network).
                self.stats.peer_messages_refused += 1;
                log::warn!(
                    "{}: refused a message from node {}: {why}",
                    GroupName(group),
                    m.from
                );
                continue;
            }
            if is_vote_request(&m) && g.knows_no_configuration() {
                // A node that knows no configuration (an empty disk that was not
                // bootstrapped) may have voted in this term before it lost its disk: it must
                // not vote as if it remembered. raft-rs itself votes whatever its
                // configuration.
                self.stats.votes_refused += 1;
                continue;
            }
            if m.msg_type == raft::eraftpb::MessageType::MsgSnapshot {
                // Stepped once its batches are here (next round).
                g.held_snapshot = Some(m);
                continue;
            }
            if g.failed.is_none() {
                if let Some(e) = lost_entries(g.id, &g.node.raft, &m) {
                    if g.knows_no_configuration() {
                        // A log started afresh after its replica was moved away, which the
                        // leader still counts with what the old log held until it removes
                        // it: it holds nothing it acknowledged and votes for nobody, so the
                        // heartbeat is dropped (raft-rs would panic on it).
                        self.stats.step_errors += 1;
                        continue;
                    }
                    // Kept across restarts: reopened, the log would look like a replica
                    // that can vote until the next heartbeat.
                    if let Err(m) = g.log.store().mark_lost(&e.to_string()) {
                        log::error!("{}: marking its log lost: {m}", GroupName(g.id));
                    }
                    g.fail(e);
                }
            }
            if g.failed.is_some() || g.node.step(m).is_err() {
                self.stats.step_errors += 1;
            }
        }
        self.randomize_timeouts();
        Ok(())
    }

    /// Tells every group that `node` could not be reached (a frame to it was dropped or its
    /// connection failed): leaders probe it again instead of streaming to it.
    pub fn report_unreachable(&mut self, node: u64) {
        for g in self.groups.values_mut() {
            if g.failed.is_none() && g.node.raft.state == StateRole::Leader {
                g.node.report_unreachable(node);
            }
        }
    }

    /// One tick of the shard's timer, for every group.
    pub fn tick(&mut self) {
        for g in self.groups.values_mut() {
            if g.failed.is_some() {
                continue;
            }
            g.node.tick();
            g.reads.retain_mut(|r| {
                r.ticks_left = r.ticks_left.saturating_sub(1);
                r.ticks_left > 0 && !r.tx.is_canceled()
            });
            // Dropped waiters read `Canceled`: the caller retries.
        }
        let mut expired = Vec::new();
        for (&(group, to), a) in self.awaiting.iter_mut() {
            if let Some(t) = &mut a.ticks_left {
                *t = t.saturating_sub(1);
                if *t == 0 {
                    expired.push((group, to, a.index));
                }
            }
        }
        for (group, to, index) in expired {
            log::warn!(
                "{}: no news of the snapshot sent to node {to}; probing it again",
                GroupName(group)
            );
            self.stats.snapshot_reports_timed_out += 1;
            self.snapshot_report(group, to, index, SnapshotProgress::Failed);
        }
        self.randomize_timeouts();
    }

    /// What the transfer of the snapshot at `index` sent to `to` says (see
    /// [`SnapshotProgress`]).
    ///
    /// A report may be about an earlier snapshot than the one awaited: a transfer given up on
    /// (no news for [`SNAPSHOT_REPORT_TICKS`]) that ends after a newer snapshot was sent.
    /// Once the newer one's transfer has started, that report says nothing of it and is
    /// dropped (counted): ending the wait would have the leader probe a follower that is
    /// downloading, and send it yet another snapshot. Before it started, the end of the
    /// earlier transfer ends this wait too: a follower downloading one snapshot of a group
    /// drops the next one's message, so no other news would come until the timeout.
    pub fn snapshot_report(&mut self, group: u64, to: u64, index: u64, progress: SnapshotProgress) {
        if let Some(a) = self.awaiting.get(&(group, to)) {
            let newer_started = a.ticks_left.is_none();
            if a.index != index && (newer_started || progress == SnapshotProgress::Started) {
                log::info!(
                    "{}: a report on the snapshot at {index} for node {to} came \
                     while the one at {} is awaited; dropped",
                    GroupName(group),
                    a.index
                );
                self.stats.snapshot_reports_stale += 1;
                return;
            }
        }
        let status = match progress {
            SnapshotProgress::Started => {
                if let Some(a) = self.awaiting.get_mut(&(group, to)) {
                    a.ticks_left = None;
                }
                return;
            }
            SnapshotProgress::Finished => raft::SnapshotStatus::Finish,
            SnapshotProgress::Failed => raft::SnapshotStatus::Failure,
        };
        self.awaiting.remove(&(group, to));
        let sending = self.awaiting.keys().any(|&(g, _)| g == group);
        if let Some(g) = self.groups.get_mut(&group) {
            g.log.set_sending_snapshot(sending);
            if g.failed.is_none() {
                g.node.report_snapshot(to, status);
            }
        }
    }

    /// Snapshots received whose files the driver must download beside the loop.
    pub fn take_snapshot_jobs(&mut self) -> Vec<SnapshotJob> {
        std::mem::take(&mut self.snapshot_jobs)
    }

    /// A [`SnapshotJob`]'s download is over: with its files staged, the message is stepped
    /// into raft-rs and the next Ready installs them (`report` then learns how that went);
    /// on failure the snapshot is dropped (the leader hears it from the transfer).
    pub fn snapshot_downloaded(
        &mut self,
        job: SnapshotJob,
        result: std::result::Result<S::Staged, String>,
        report: InstallReport,
    ) {
        let Some(g) = self.groups.get_mut(&job.group) else {
            let _ = report.send(Err("the group is gone".into()));
            return;
        };
        g.downloading = false;
        let staged = match result {
            Ok(s) => s,
            Err(why) => {
                log::warn!(
                    "{}: snapshot at {} from node {} not downloaded: {why}",
                    GroupName(job.group),
                    job.index,
                    job.from
                );
                self.stats.snapshot_fetch_failures += 1;
                let _ = report.send(Err(why));
                return;
            }
        };
        if g.failed.is_some() {
            let _ = report.send(Err("the group is stopped".into()));
            return;
        }
        g.staged = Some((job.data, Staged::Files(staged)));
        g.install_report = Some(report);
        if g.node.step(job.message).is_err() {
            self.stats.step_errors += 1;
        }
    }

    /// Campaigns group `id` now (tests, and a node told to take leadership).
    pub fn campaign(&mut self, id: u64) -> Result<()> {
        self.group_mut(id)?.node.campaign()?;
        Ok(())
    }

    /// Replaces raft-rs's thread-random election timeout, wherever it was just reset, by one
    /// from the set's generator.
    fn randomize_timeouts(&mut self) {
        let lo = self.config.election_tick;
        for g in self.groups.values_mut() {
            if g.node.raft.election_elapsed == 0 {
                let t = self.rng.random_range(lo..2 * lo);
                g.node.raft.set_randomized_election_timeout(t);
            }
        }
    }

    /// The deferred reads made by the last rounds, for the driver to run beside the loop
    /// (each resolves on its own; the round after it ends hands its entries to raft-rs).
    pub fn take_fetch_jobs(&mut self) -> Vec<FetchJob<S>> {
        std::mem::take(&mut self.fetch_jobs)
    }

    /// True when some group has work for a round.
    pub fn has_ready(&self) -> bool {
        self.groups.values().any(|g| {
            g.failed.is_none()
                && (g.node.has_ready() || g.log.has_fetch_work() || g.held_snapshot.is_some())
        })
    }

    /// One round of the Ready loop (see the module doc): [`round_start`](Self::round_start),
    /// each touched log persisted, [`round_finish`](Self::round_finish).
    pub async fn round<T: Transport>(&mut self, net: &mut T) {
        let p = self.round_start(net).await;
        let mut synced = Vec::new();
        for (id, store) in self.to_persist(&p) {
            synced.push((id, store.persist().await));
        }
        self.round_finish(p, synced, net);
    }

    /// The logs a started round must persist (step 5), for a driver that persists them
    /// beside the loop: the next round may start (steps 1 to 4: its messages out, its
    /// entries buffered) while they sync, which is raft-rs's async-ready pipeline (Readies
    /// advanced with `advance_append_async` before the earlier ones are persisted), and what
    /// lets a shard's next write overlap its previous sync. Rounds finish in the order they
    /// started.
    pub fn to_persist(&self, p: &Persisting) -> Vec<(u64, Rc<S>)> {
        p.to_sync
            .iter()
            .filter_map(|id| {
                let g = self.groups.get(id)?;
                g.failed.is_none().then(|| (*id, Rc::clone(g.log.store())))
            })
            .collect()
    }

    /// Steps 1 to 4 of a round; the caller persists [`to_persist`](Self::to_persist) and
    /// then calls [`round_finish`](Self::round_finish) with the outcomes.
    pub async fn round_start<T: Transport>(&mut self, net: &mut T) -> Persisting {
        self.stats.rounds += 1;
        let ids: Vec<u64> = self.groups.keys().copied().collect();
        // 1. Deferred reads that are done: raft-rs sends what it waited for.
        for &id in &ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.failed.is_some() {
                continue;
            }
            match g.log.take_answered() {
                Ok(contexts) => {
                    for c in contexts {
                        g.node.on_entries_fetched(c);
                    }
                }
                Err(e) => g.fail(e),
            }
        }
        // 1b. Snapshots received: their batches fetched and checked before raft-rs sees them.
        for &id in &ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            let Some(m) = g.held_snapshot.take() else {
                continue;
            };
            if g.failed.is_some() {
                continue;
            }
            if net.streams_snapshots() {
                match snapshot_job(id, m) {
                    Ok(_) if g.downloading => self.stats.snapshots_ignored += 1,
                    Ok(job) => {
                        g.downloading = true;
                        self.snapshot_jobs.push(job);
                    }
                    Err(e) => {
                        log::warn!("{}: snapshot dropped: {e}", GroupName(id));
                        self.stats.snapshot_fetch_failures += 1;
                    }
                }
                continue;
            }
            match fetch_snapshot(net, id, &m).await {
                Ok((data, bytes)) => {
                    g.staged = Some((data, Staged::Batches(bytes)));
                    if g.node.step(m).is_err() {
                        self.stats.step_errors += 1;
                    }
                }
                Err(e) => {
                    log::warn!(
                        "{}: snapshot from node {} dropped: {e}",
                        GroupName(id),
                        m.from
                    );
                    self.stats.snapshot_fetch_failures += 1;
                }
            }
        }
        // 2. Readies: messages out, a snapshot installed, committed entries applied.
        let mut work = Vec::new();
        for &id in &ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.failed.is_some() || !g.node.has_ready() {
                continue;
            }
            self.stats.readies += 1;
            let mut rd = g.node.ready();
            queue(&mut self.outbox, id, rd.take_messages());
            let mut installed = None;
            if !rd.snapshot().is_empty() {
                let report = g.install_report.take();
                let installed_at = match g.install(rd.snapshot()).await {
                    Ok(s) if g.replay => replayed(&g.log, s).await.map(|events| {
                        // The log was replaced: the state machine starts over from it.
                        g.commands.extend(events);
                        s
                    }),
                    r => r,
                };
                match installed_at {
                    Ok(s) => {
                        self.stats.snapshots_installed += 1;
                        installed = Some(s);
                        if let Some(r) = report {
                            let _ = r.send(Ok(s));
                        }
                    }
                    Err(e) => {
                        if let Some(r) = report {
                            let _ = r.send(Err(e.to_string()));
                        }
                        g.fail(e);
                        continue;
                    }
                }
            }
            // A staged snapshot raft-rs did not take (older than what this node has) is
            // dropped with its files; its reporter learns it was not installed.
            g.staged = None;
            g.install_report = None;
            let committed = rd.take_committed_entries();
            self.stats.entries_applied += committed.len() as u64;
            if let Err(e) = g.apply(committed) {
                g.fail(e);
                continue;
            }
            for rs in rd.read_states() {
                g.answer_read(&rs.request_ctx, rs.index);
            }
            work.push((id, rd, installed));
        }
        // 3. The leader's appends leave before any disk write.
        self.flush(net);
        // 4. Writes, without syncing.
        let mut persisted = Vec::new();
        let mut to_sync = BTreeSet::new();
        for (id, mut rd, installed) in work {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            let entries = rd.take_entries();
            let commit = g.stamp(&entries);
            self.stats.entries_written += entries.len() as u64;
            if let Some(e) = entries.last() {
                g.handed = g.handed.max(e.index);
            }
            if let Err(e) = g
                .log
                .append_known(&entries, commit, &mut g.fresh_crcs)
                .await
            {
                g.fail(e);
                continue;
            }
            if let Some(hs) = rd.hs() {
                let before = g.log.meta();
                if let Err(e) = g.log.set_hard_state(hs) {
                    g.fail(e);
                    continue;
                }
                if before.term != hs.term || before.vote != hs.vote {
                    self.stats.meta_writes += 1;
                }
            }
            if rd.must_sync() || !entries.is_empty() {
                to_sync.insert(id);
            }
            if installed.is_some() {
                to_sync.insert(id);
            }
            let number = rd.number();
            let msgs = rd.take_persisted_messages();
            g.node.advance_append_async(rd);
            persisted.push((id, number, msgs, installed));
        }
        Persisting { persisted, to_sync }
    }

    /// Steps 5 (the outcomes of persisting each touched log, once each) and 6 of a round
    /// started by [`round_start`](Self::round_start).
    pub fn round_finish<T: Transport>(
        &mut self,
        p: Persisting,
        synced: Vec<(u64, engine::Result<()>)>,
        net: &mut T,
    ) {
        let Persisting { persisted, .. } = p;
        // 5. One sync per touched log.
        for (id, r) in synced {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            self.stats.syncs += 1;
            if let Err(e) = r {
                g.fail(Error::Storage {
                    group: id,
                    source: e,
                });
            }
        }
        // 6. Durable: acknowledge.
        for (id, number, msgs, installed) in persisted {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.failed.is_some() {
                continue;
            }
            g.node.on_persist_ready(number);
            if let Some(s) = installed {
                g.node.advance_apply_to(s);
            }
            queue(&mut self.outbox, id, msgs);
        }
        // Every Ready is advanced: raft-rs may be told how snapshots went. Handed to the
        // transport counts as finished; one that never arrives makes the follower reject the
        // next append, and the leader sends another.
        for (group, to) in std::mem::take(&mut self.snapshots_sent) {
            if let Some(g) = self.groups.get_mut(&group) {
                g.node.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
        }
        for g in self.groups.values_mut() {
            g.after_round();
            if g.failed.is_none() {
                if let Some(job) = g.log.take_fetch_job() {
                    self.stats.fetches += 1;
                    self.fetch_jobs.push(job);
                }
            }
        }
        self.flush(net);
        self.randomize_timeouts();
    }

    /// Compacts group `id`'s Raft log up to `to` at most: never past the applied index, and
    /// on a leader, unless `force` (a retention limit overriding Raft's needs), never past
    /// the lowest index a follower still needs, so that no follower needs a snapshot because
    /// of it. Returns the index compacted to, if it moved.
    pub async fn compact(&mut self, id: u64, to: u64, force: bool) -> Result<Option<u64>> {
        let node_id = self.node_id;
        let g = self.group_mut(id)?;
        let r = &g.node.raft;
        let mut to = to.min(r.raft_log.applied);
        if r.state == StateRole::Leader && !force {
            let lowest_match = r
                .prs()
                .iter()
                .filter(|(&peer, _)| peer != node_id)
                .map(|(_, pr)| pr.matched)
                .min();
            if let Some(m) = lowest_match {
                to = to.min(m);
            }
        }
        let moved = g.log.compact(to).await?;
        if moved {
            self.stats.compactions += 1;
        }
        Ok(moved.then_some(to))
    }

    /// Retention's compaction of group `id`: up to `to` (at most the applied index); on a
    /// leader, not past what a live follower still needs (its match index; live: heard from
    /// since the last quorum check, or being replicated to), unless keeping that would hold
    /// the log past `hard_to` (the retention limits doubled), which the log is then compacted
    /// to at least. A follower that is down holds nothing: it gets a snapshot when it
    /// returns. Returns the index compacted to, if it moved.
    pub async fn compact_for_retention(
        &mut self,
        id: u64,
        to: u64,
        hard_to: Option<u64>,
    ) -> Result<Option<u64>> {
        let node_id = self.node_id;
        let g = self.group_mut(id)?;
        let r = &g.node.raft;
        let mut target = to.min(r.raft_log.applied);
        if r.state == StateRole::Leader {
            let floor = r
                .prs()
                .iter()
                .filter(|(&peer, pr)| {
                    peer != node_id
                        && (pr.recent_active || pr.state == raft::ProgressState::Replicate)
                })
                .map(|(_, pr)| pr.matched)
                .min();
            if let Some(f) = floor {
                target = target.min(hard_to.map_or(f, |h| f.max(h)));
            }
        }
        self.compact(id, target, true).await
    }

    /// Sends the queued messages, one frame per destination node.
    fn flush<T: Transport>(&mut self, net: &mut T) {
        for (to, msgs) in std::mem::take(&mut self.outbox) {
            for (group, m) in &msgs {
                if m.msg_type == raft::eraftpb::MessageType::MsgSnapshot {
                    self.stats.snapshots_sent += 1;
                    if net.streams_snapshots() {
                        // Reported by the follower's transfer (or counted failed after a
                        // while without news); no other snapshot of the group meanwhile.
                        let awaiting = Awaiting {
                            index: m.get_snapshot().get_metadata().index,
                            ticks_left: Some(SNAPSHOT_REPORT_TICKS),
                        };
                        self.awaiting.insert((*group, m.to), awaiting);
                        if let Some(g) = self.groups.get(group) {
                            g.log.set_sending_snapshot(true);
                        }
                    } else {
                        self.snapshots_sent.push((*group, m.to));
                    }
                }
            }
            let frame = wire::frame(self.node_id, to, &msgs);
            self.stats.frames += 1;
            self.stats.messages += frame.messages.len() as u64;
            self.stats.heartbeats_merged += frame.heartbeats.len() as u64;
            net.send(to, wire::encode_frame(&frame));
        }
    }
}

/// A heartbeat from a current leader that names a commit index past the end of this
/// replica's log: the leader counts entries as held here (it sends min(matched, commit)) that
/// the log no longer has. raft-rs would panic on it ("to_commit ... is out of range"), taking
/// the whole shard down; the group is stopped instead. Only a heartbeat can carry it: an
/// append that does not match the log is rejected before its commit index is used.
fn lost_entries<S: raft::Storage>(group: u64, r: &raft::Raft<S>, m: &Message) -> Option<Error> {
    if m.msg_type != raft::eraftpb::MessageType::MsgHeartbeat || m.term < r.term {
        return None;
    }
    let held = r.raft_log.last_index();
    (m.commit > held).then_some(Error::LostEntries {
        group,
        leader: m.from,
        held,
        acknowledged: m.commit,
    })
}

fn is_conf_change(e: &Entry) -> bool {
    matches!(
        e.entry_type,
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2
    )
}

/// The configuration changes above `conf_index` among the entries `log` holds after
/// `applied` (its unapplied tail, in its cache after the open): written, and not applied
/// before the restart.
fn unapplied_conf_changes<S: LogStore>(
    log: &RaftLog<S>,
    applied: u64,
    conf_index: u64,
) -> BTreeSet<u64> {
    use raft::Storage;
    let last = log.last_index();
    if last <= applied {
        return BTreeSet::new();
    }
    let tail = log.entries(
        applied + 1,
        last + 1,
        None,
        raft::GetEntriesContext::empty(false),
    );
    tail.map(|es| {
        es.iter()
            .filter(|e| is_conf_change(e) && e.index > conf_index)
            .map(|e| e.index)
            .collect()
    })
    .unwrap_or_default()
}

fn is_vote_request(m: &Message) -> bool {
    matches!(
        m.msg_type,
        raft::eraftpb::MessageType::MsgRequestVote | raft::eraftpb::MessageType::MsgRequestPreVote
    )
}

/// The download a snapshot message of `group` calls for, once its descriptor checks.
fn snapshot_job(group: u64, m: Message) -> Result<SnapshotJob> {
    let snap = m.get_snapshot();
    let data = SnapshotData::decode(&snap.data)?;
    let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
    if data.last_index != index {
        return Err(Error::Malformed {
            what: "snapshot",
            why: format!(
                "data for index {} in a snapshot at {index}",
                data.last_index
            ),
        });
    }
    Ok(SnapshotJob {
        group,
        from: m.from,
        index,
        term,
        data,
        message: m,
    })
}

/// Fetches and checks the batches of the snapshot message `m` of `group`.
async fn fetch_snapshot<T: Transport>(
    net: &mut T,
    group: u64,
    m: &Message,
) -> Result<(SnapshotData, Vec<u8>)> {
    let snap = m.get_snapshot();
    let data = SnapshotData::decode(&snap.data)?;
    if data.last_index != snap.get_metadata().index {
        return Err(Error::Malformed {
            what: "snapshot",
            why: format!(
                "data for index {} in a snapshot at {}",
                data.last_index,
                snap.get_metadata().index
            ),
        });
    }
    let batches = if data.first_index > data.last_index {
        Vec::new()
    } else {
        net.fetch_snapshot(m.from, group, data.first_index, data.last_index)
            .await
            .map_err(|why| Error::Malformed {
                what: "snapshot fetch",
                why,
            })?
    };
    let bytes = data.check(&batches)?;
    Ok((data, bytes))
}

/// The replay of every committed entry `log` retains up to `upto`, read from its store:
/// [`StateEvent::Replay`], the commands, [`StateEvent::Replayed`]. Below Raft's first index
/// the store may still hold entries (the engine drops whole segments only): they are
/// committed, and handed too; a state that starts past index 1 waits for its checkpoint.
async fn replayed<S: LogStore>(log: &RaftLog<S>, upto: u64) -> Result<Vec<StateEvent>> {
    let group = log.group();
    let store = log.store();
    let first = store.first_index();
    let mut out = vec![StateEvent::Replay {
        first_index: first,
        last_index: upto,
    }];
    let mut next = first;
    while next <= upto {
        let batches = store
            .read(next, upto + 1, 1 << 20)
            .await
            .map_err(|source| Error::Storage { group, source })?;
        if batches.is_empty() {
            break;
        }
        for b in batches {
            let index = b.header.raft_index;
            if index != next {
                return Err(Error::Malformed {
                    what: "replayed entry",
                    why: format!("index {index} where {next} was expected"),
                });
            }
            let e = entry::decode(&b.header, &b.bytes)?;
            let command = entry::controller_command(&e).or_else(|| entry::controller_record(&e));
            if let Some(c) = command {
                out.push(StateEvent::Command {
                    index,
                    command: c.to_vec(),
                });
            }
            next = index + 1;
        }
    }
    if next <= upto {
        return Err(Error::Malformed {
            what: "replayed log",
            why: format!("entries {next}..={upto} are missing"),
        });
    }
    out.push(StateEvent::Replayed);
    Ok(out)
}

/// Queues a group's raft messages (which carry their destination) under their node.
fn queue(outbox: &mut BTreeMap<u64, Vec<(u64, Message)>>, group: u64, msgs: Vec<Message>) {
    for m in msgs {
        outbox.entry(m.to).or_default().push((group, m));
    }
}

impl<S: LogStore> Group<S> {
    /// Installs the snapshot of a Ready from the batches staged for it. Returns its index.
    async fn install(&mut self, snap: &raft::eraftpb::Snapshot) -> Result<u64> {
        let index = snap.get_metadata().index;
        let (data, staged) = self
            .staged
            .take()
            .filter(|(d, _)| d.last_index == index)
            .ok_or_else(|| Error::Raft(format!("snapshot at {index} without its batches")))?;
        match staged {
            Staged::Batches(bytes) => self.log.install(snap, &data, &bytes).await?,
            Staged::Files(files) => self.log.install_staged(snap, &data, files).await?,
        }
        self.visible_offset = data.next_offset;
        self.conf_index = index;
        self.unapplied_conf.clear();
        Ok(index)
    }

    /// The commit index to stamp on `entries`, which are about to be written: raft-rs's,
    /// but below the first configuration change written and not applied yet (those among
    /// `entries` included; entries from the first one's index on replace what was there).
    ///
    /// A restart takes the last batch's stamp as applied (`RaftLog::open`), and raft-rs
    /// never hands an entry at or below it out again: a change written (with a commit index
    /// past it) in the round before the one that would have applied it, then a crash, would
    /// leave the replica with its configuration before the change for good. Stamped so, the
    /// change is handed out, and applied, after the restart.
    fn stamp(&mut self, entries: &[Entry]) -> u64 {
        if let Some(first) = entries.first() {
            self.unapplied_conf.split_off(&first.index);
        }
        for e in entries {
            if is_conf_change(e) && e.index > self.conf_index {
                self.unapplied_conf.insert(e.index);
            }
        }
        let committed = self.node.raft.raft_log.committed;
        match self.unapplied_conf.first() {
            Some(&i) => committed.min(i - 1),
            None => committed,
        }
    }

    fn knows_no_configuration(&self) -> bool {
        let cs = self.log.meta().conf_state;
        cs.voters.is_empty() && cs.learners.is_empty() && cs.voters_outgoing.is_empty()
    }

    fn check_leader(&self) -> Result<()> {
        let r = &self.node.raft;
        match (r.state, r.leader_id) {
            (StateRole::Leader, _) => Ok(()),
            (_, raft::INVALID_ID) => Err(Error::NoLeader { group: self.id }),
            (_, leader) => Err(Error::NotLeader {
                group: self.id,
                leader,
            }),
        }
    }

    /// Tracks the proposal just made (its entry is the one after `before`) for `tx`, or
    /// reports it dropped (handing `tx` back).
    #[allow(clippy::result_large_err)]
    fn track_to(
        &mut self,
        before: u64,
        kind: ProposalKind,
        tx: oneshot::Sender<Outcome>,
    ) -> std::result::Result<(), (Error, oneshot::Sender<Outcome>)> {
        let r = &self.node.raft;
        let index = r.raft_log.last_index();
        if index != before + 1 {
            // Dropped. A leader drops proposals while it transfers its leadership (the
            // reconcile loop moves leaders back to their preferred node): naming itself as
            // the leader would send the client back here in a loop, so it says that no
            // leader can take the write right now (retryable; nothing was appended).
            let e = if r.leader_id == r.id || r.leader_id == raft::INVALID_ID {
                Error::NoLeader { group: self.id }
            } else {
                Error::NotLeader {
                    group: self.id,
                    leader: r.leader_id,
                }
            };
            return Err((e, tx));
        }
        self.proposals.push_back(Proposal {
            index,
            term: r.term,
            kind,
            tx,
            at: Instant::now(),
        });
        self.was_leader = true;
        Ok(())
    }

    /// Applies committed entries: the visible watermark, proposals' answers, configuration
    /// changes.
    fn apply(&mut self, committed: Vec<Entry>) -> Result<()> {
        let Some(last) = committed.last().map(|e| e.index) else {
            return Ok(());
        };
        for e in &committed {
            let base = self
                .log
                .base_offset(e.index)
                .ok_or_else(|| Error::Malformed {
                    what: "committed entry",
                    why: format!("index {} is not in the cache", e.index),
                })?;
            let records = entry::record_count(e)?;
            self.visible_offset = base + u64::from(records);
            if matches!(
                e.entry_type,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            ) && e.index > self.conf_index
            {
                let cc = wire::decode_conf_change(e)?;
                let cs = self.node.apply_conf_change(&cc)?;
                self.log.set_conf_state(cs, e.index)?;
                self.conf_index = e.index;
                self.unapplied_conf = self.unapplied_conf.split_off(&(e.index + 1));
            }
            let command = entry::controller_command(e)
                .or_else(|| self.replay.then(|| entry::controller_record(e)).flatten());
            if let Some(c) = command {
                self.commands.push(StateEvent::Command {
                    index: e.index,
                    command: c.to_vec(),
                });
            }
            self.answer(e, base, records);
        }
        self.node.advance_apply_to(last);
        self.log.applied_to(last, self.visible_offset);
        Ok(())
    }

    /// Answers the proposal whose entry `e` is, if this node made it.
    fn answer(&mut self, e: &Entry, base_offset: u64, records: u32) {
        while let Some(p) = self.proposals.front() {
            if p.index > e.index {
                return;
            }
            let Some(p) = self.proposals.pop_front() else {
                return;
            };
            let outcome = if p.index < e.index {
                // Its entry was replaced before it committed.
                Err(Error::OutcomeUnknown {
                    group: self.id,
                    why: "the proposal's entry was replaced before it committed",
                })
            } else if p.term != e.term {
                // Another leader's entry took its place: it was not committed.
                Err(Error::NotLeader {
                    group: self.id,
                    leader: self.node.raft.leader_id,
                })
            } else if p.kind == ProposalKind::ConfChange && e.entry_type == EntryType::EntryNormal {
                Err(Error::ConfChangeRefused {
                    group: self.id,
                    index: e.index,
                })
            } else {
                Ok(Committed {
                    index: e.index,
                    term: e.term,
                    base_offset,
                    records,
                })
            };
            p.settle(outcome, &self.metrics);
        }
    }

    fn answer_read(&mut self, ctx: &[u8], index: u64) {
        let Ok(id) = <[u8; 8]>::try_from(ctx).map(u64::from_le_bytes) else {
            return;
        };
        if let Some(i) = self.reads.iter().position(|r| r.id == id) {
            let r = self.reads.swap_remove(i);
            let _ = r.tx.send(Ok(index));
        }
    }

    /// After a round: a node that lost leadership cannot know what becomes of its pending
    /// proposals.
    fn after_round(&mut self) {
        let leader = self.node.raft.state == StateRole::Leader;
        if self.was_leader && !leader {
            for p in self.proposals.drain(..) {
                let outcome = Err(Error::OutcomeUnknown {
                    group: self.id,
                    why: "leadership was lost after the proposal",
                });
                p.settle(outcome, &self.metrics);
            }
            for r in self.reads.drain(..) {
                let _ = r.tx.send(Err(Error::ReadNotReady { group: self.id }));
            }
        }
        self.was_leader = leader;
    }

    /// Stops the group after a storage or apply failure; waiters learn the outcome is
    /// unknown.
    ///
    /// A full disk is an operating condition, not a fault: the group's driver opens the group
    /// again from its log once the log takes writes again. But the pending proposals are in
    /// Raft's log already, and a leader sends entries to its followers before writing them
    /// itself (`round_start`): the entry this node failed to write may be held by a
    /// follower, and the next leader may commit it. And an entry handed to this node's log
    /// may be on its disk although the call failed ([`Group::handed`]): the log recovers it
    /// when space returns, and a lone voter then commits it. So `DiskFull`
    /// (RESOURCE_EXHAUSTED to a client: "the write did not happen") is the answer only when
    /// this node is the group's only voter, whose unwritten entries nobody else holds, and
    /// only for proposals whose entries never reached its log; every other outcome is
    /// unknown. Appends refused before they are proposed (the log's writability is checked
    /// at admission) never reach this and stay `DiskFull`.
    fn fail(&mut self, e: Error) {
        let disk_full = e.is_disk_full();
        if disk_full {
            log::warn!("{} stopped until space returns: {e}", GroupName(self.id));
        } else {
            log::error!("{} stopped: {e}", GroupName(self.id));
        }
        let only_voter = self.only_voter();
        for p in self.proposals.drain(..) {
            let why = if !disk_full {
                Some("the group stopped on a storage or apply failure after the proposal")
            } else if !only_voter {
                Some(
                    "this node's disk is full and it could not write the proposal, which it \
                     had sent to the followers: one may hold it, and the next leader commit it",
                )
            } else if p.index <= self.handed {
                Some(
                    "this node's disk filled up while it wrote the proposal: it may be on \
                     disk, and committed once space returns",
                )
            } else {
                None
            };
            let outcome = match why {
                None => e.clone(),
                Some(why) => Error::OutcomeUnknown {
                    group: self.id,
                    why,
                },
            };
            p.settle(Err(outcome), &self.metrics);
        }
        // No read index comes any more: the reader retries (on another node).
        for r in self.reads.drain(..) {
            let _ = r.tx.send(Err(Error::ReadNotReady { group: self.id }));
        }
        self.failed = Some(e);
    }

    /// True when this node is the group's only voter (in both halves of a joint
    /// configuration): only its log can be a leader's, so an entry it did not write is
    /// committed nowhere (a learner that received it is cut back when it follows again).
    fn only_voter(&self) -> bool {
        let voters = self.node.raft.prs().conf().voters().ids();
        let me = self.node.raft.id;
        voters.contains(me) && voters.len() == 1
    }
}

/// `RawNode::propose` with the entry's data as shared bytes: raft-rs's own takes a `Vec`,
/// which for a payload that arrived as shared bytes is a copy of every byte of it.
fn propose_bytes<T: raft::Storage>(node: &mut RawNode<T>, data: Bytes) -> raft::Result<()> {
    let mut e = Entry::default();
    e.data = data;
    let mut m = Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
    m.from = node.raft.id;
    m.set_entries(vec![e].into());
    node.step(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;

    #[test]
    fn a_group_whose_reopening_fails_stays_held_and_stopped() {
        use crate::raft::mem_store::MemStore;
        use crate::raft::store::LogStore;
        futures_lite::future::block_on(async {
            let mut set: GroupSet<MemStore> = GroupSet::new(1, GroupConfig::default(), 1);
            let store = Rc::new(MemStore::new());
            set.add_group(7, Rc::clone(&store), &[1])
                .await
                .expect("open");
            let failed = Error::Storage {
                group: 7,
                source: engine::Error::DiskFull {
                    partition: "t/0".into(),
                    path: "/nowhere".into(),
                    free_bytes: 0,
                },
            };
            set.groups.get_mut(&7).expect("held").fail(failed);
            assert!(set.failure(7).is_some_and(|e| e.is_disk_full()));

            // Its Raft metadata unreadable: the open fails, and the stopped group stays.
            let broken = Rc::new(MemStore::new());
            broken.write_meta(b"not Raft metadata").expect("meta");
            let e = set
                .reopen_group(7, broken, false)
                .await
                .expect_err("metadata that does not parse");
            assert!(!matches!(e, Error::UnknownGroup(_)), "{e}");
            assert_eq!(set.group_ids(), vec![7]);
            assert!(set.status(7).is_some());
            assert!(set.failure(7).is_some_and(|e| e.is_disk_full()));

            // Its own log opens: the group runs again, recovered.
            set.reopen_group(7, store, false).await.expect("reopen");
            assert_eq!(set.group_ids(), vec![7]);
            assert!(set.failure(7).is_none());
            assert_eq!(
                set.reopen_group(8, Rc::new(MemStore::new()), false)
                    .await
                    .map_err(|e| matches!(e, Error::UnknownGroup(8))),
                Err(true)
            );
        });
    }

    #[test]
    fn a_late_report_on_an_earlier_snapshot_ends_no_started_transfer() {
        let mut set: GroupSet<crate::raft::mem_store::MemStore> =
            GroupSet::new(1, GroupConfig::default(), 1);
        let awaited = |set: &GroupSet<_>| set.awaiting.get(&(7, 3)).copied();
        let waiting = |index, ticks_left| Awaiting { index, ticks_left };
        // The snapshot at 40 was given up on (timed out); the one at 50 was sent since, and
        // its transfer started.
        set.awaiting
            .insert((7, 3), waiting(50, Some(SNAPSHOT_REPORT_TICKS)));
        set.snapshot_report(7, 3, 50, SnapshotProgress::Started);
        assert_eq!(awaited(&set), Some(waiting(50, None)));
        // The transfer of the one at 40 reports late: it says nothing of the one at 50.
        for progress in [
            SnapshotProgress::Started,
            SnapshotProgress::Finished,
            SnapshotProgress::Failed,
        ] {
            set.snapshot_report(7, 3, 40, progress);
        }
        assert_eq!(awaited(&set), Some(waiting(50, None)));
        assert_eq!(set.stats().snapshot_reports_stale, 3);
        set.snapshot_report(7, 3, 50, SnapshotProgress::Finished);
        assert_eq!(awaited(&set), None);

        // The one at 50 not started yet: the follower, downloading the one at 40, dropped
        // it. A late `Started` of the one at 40 leaves the timer armed; its end ends the wait.
        set.awaiting
            .insert((7, 3), waiting(50, Some(SNAPSHOT_REPORT_TICKS)));
        set.snapshot_report(7, 3, 40, SnapshotProgress::Started);
        assert_eq!(
            awaited(&set),
            Some(waiting(50, Some(SNAPSHOT_REPORT_TICKS)))
        );
        set.snapshot_report(7, 3, 40, SnapshotProgress::Finished);
        assert_eq!(awaited(&set), None);
        assert_eq!(set.stats().snapshot_reports_stale, 4);
    }

    // Node 2 of voters {1, 2}, at term 3 following node 1, its log ending at index 5.
    use crate::raft::peer_check::tests::follower;

    fn heartbeat(term: u64, commit: u64) -> Message {
        Message {
            msg_type: MessageType::MsgHeartbeat,
            from: 1,
            to: 2,
            term,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn a_heartbeat_naming_entries_this_log_lacks_is_lost_data_not_a_panic() {
        let r = follower();
        assert!(lost_entries(7, &r, &heartbeat(3, 5)).is_none());
        assert!(lost_entries(7, &r, &heartbeat(4, 2)).is_none());
        // From an older term raft-rs ignores it: nothing to say.
        assert!(lost_entries(7, &r, &heartbeat(2, 39)).is_none());
        // Other messages carry no such claim.
        let mut append = heartbeat(3, 39);
        append.msg_type = MessageType::MsgAppend;
        assert!(lost_entries(7, &r, &append).is_none());
        let e = lost_entries(7, &r, &heartbeat(3, 39)).expect("lost entries");
        assert!(
            matches!(
                e,
                Error::LostEntries {
                    group: 7,
                    leader: 1,
                    held: 5,
                    acknowledged: 39
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("whose log ends at index 5"), "{e}");
        // And raft-rs does panic on it: the reason for the check.
        let mut r = follower();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = r.step(heartbeat(3, 39));
        }));
        assert!(stepped.is_err(), "raft-rs took a commit past its log");
    }
}
