//! The cluster layer: the controller (Raft group 0, the partition `__cluster`/0 on shard 0 of
//! every node), formation, placement and the reconcile loops.
//!
//! Every node applies the controller log ([`state`]): the registry tells its transport where
//! the other nodes are (`Peers`), and its placement tells the node which partitions to hold
//! (with which first voters) and which to drop. The controller's leader runs a reconcile loop
//! about once a second ([`reconcile`]): it compares the gossip view with the registry and the
//! controller group's configuration, and raises the `default` topic's replication factor as
//! nodes join; each node's loop enacts placement on the groups it leads (a new replica joins
//! as a learner, is promoted once caught up; a replica placed elsewhere is removed), one
//! configuration change per group at a time. A node joins through [`join`].

pub mod identity;
pub mod join;
pub mod reconcile;
pub mod relay;
pub mod state;

use crate::membership::MemberState;
use crate::raft::error::Error as RaftError;
use crate::raft::logger::GroupName;
use crate::raft::replica::{group_id, ClusterHooks, ControlMsg, Hooks, CONTROLLER_TOPIC};
use crate::raft::transport::{PeerAddr, Peers};
use engine::seam::{self, PartitionId};
use engine::{EngineHandle, LogConfig};
use event_listener::Event;
use futures_channel::oneshot;
use raft::StateRole;
use state::{Applied, CheckpointBody, ClusterState, Command, NodeEntry};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How long an administrative change waits for the controller to commit and the local node
/// to enact it.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a DeleteTopic waits for every live node to learn of it before it answers.
const DELETE_SPREAD: Duration = Duration::from_secs(5);

/// A node's Ready round from learning a commit to applying it, with room to spare.
const APPLY_SETTLE: Duration = Duration::from_millis(100);

/// The largest controller command proposed (a topic of the most partitions, each with its
/// replicas, fits with room to spare; the controller's log never sees a batch near its limit:
/// a batch must fit in one of its 2 MiB segments, and raft-rs's `max_size_per_msg` is 1 MiB).
/// A checkpoint larger than this goes in parts of at most this size
/// ([`ClusterNode::checkpoint_part_bytes`]).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Controller commands applied between two checkpoints the controller's leader proposes
/// (`ClusterNode::checkpoint_every`; 0: none).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;

/// The most bytes of entries (what raft-rs counts: each part's command and its record's
/// framing) a checkpoint may take, given the leader's `max_uncommitted_size`
/// (`GroupConfig`, 64 MiB by default): half of it. All the parts of a checkpoint are
/// uncommitted together on the leader, and raft-rs refuses a proposal past that limit; the
/// other half is the margin for what is uncommitted already and for the commands proposed
/// while the parts replicate, which would be refused too if the checkpoint took it all.
pub fn checkpoint_budget(max_uncommitted_size: u64) -> u64 {
    max_uncommitted_size / 2
}

/// What the cluster layer answers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this node is not the controller's leader (leader: node {leader_id:?} at {leader_addr:?})"
    )]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("the controller has no leader")]
    NoLeader,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Too few nodes are up now for what was asked (a topic's replicas to elect a leader):
    /// asking again once members are back succeeds.
    #[error("{0}")]
    Unavailable(String),
    /// A bound of the cluster's resources (the partitions a node may hold) would be exceeded.
    #[error("{0}")]
    Exhausted(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("controller: {0}")]
    Raft(#[from] RaftError),
    #[error("the node is stopping")]
    Stopped,
    /// This node could not open its replicas of a topic it created.
    #[error(transparent)]
    Local(engine::Error),
}

/// The Raft id of the node named `name`. Names repeat: a node whose data directory was
/// wiped rejoins under its old name as a new member, and its old entry stays until it is
/// removed. Of the entries not removed, the only one is meant; with several, the caller
/// must say which (by id; `live` says which of them run), since removing the running one
/// by mistake costs a replica of every partition it holds. Only removed entries: the
/// newest (removing it again is a no-op).
fn node_named(s: &ClusterState, name: &str, live: &[u64]) -> Result<u64, Error> {
    let named: Vec<(u64, &NodeEntry)> = s
        .nodes
        .iter()
        .filter(|(_, n)| n.name == name)
        .map(|(id, n)| (*id, n))
        .collect();
    let active: Vec<u64> = named
        .iter()
        .filter(|(_, n)| !n.removed)
        .map(|(id, _)| *id)
        .collect();
    match active.as_slice() {
        [one] => Ok(*one),
        [] => named
            .iter()
            .map(|(id, _)| *id)
            .max()
            .ok_or_else(|| Error::NotFound(format!("no node {name:?} in the cluster"))),
        several => {
            let listed: Vec<String> = several
                .iter()
                .map(|id| {
                    let state = if live.contains(id) {
                        "live"
                    } else {
                        "not live"
                    };
                    format!("{id} ({state})")
                })
                .collect();
            Err(Error::Refused(format!(
                "{name:?} names nodes {}: give the Raft id of the one to remove \
                 (proglog cluster describe lists them)",
                listed.join(" and ")
            )))
        }
    }
}

/// The controller's partition as the seam's errors name it.
const CONTROLLER_PARTITION: &str = "__cluster/0 (the cluster's controller)";

impl From<Error> for seam::Error {
    fn from(e: Error) -> seam::Error {
        match e {
            Error::NotLeader {
                leader_id,
                leader_addr,
            } => seam::Error::NotLeader {
                leader_id: leader_id.map(|i| i.to_string()),
                leader_addr,
            },
            Error::NoLeader => seam::Error::NoLeader(CONTROLLER_PARTITION.into()),
            Error::Refused(m) => seam::Error::InvalidArgument(m),
            Error::Unavailable(m) => seam::Error::Unavailable(m),
            Error::NotFound(m) => seam::Error::NotFound(m),
            Error::AlreadyExists(m) => seam::Error::AlreadyExists(m),
            Error::Exhausted(m) => seam::Error::Exhausted(m),
            Error::Raft(RaftError::NotLeader { leader, .. }) => seam::Error::NotLeader {
                leader_id: (leader != raft::INVALID_ID).then(|| leader.to_string()),
                leader_addr: None,
            },
            Error::Raft(RaftError::NoLeader { .. }) => {
                seam::Error::NoLeader(CONTROLLER_PARTITION.into())
            }
            // Proposed, then this node stopped following it (leadership lost, the group
            // stopped): the next leader may commit it or not. Sent again, a CreateTopic that
            // took answers ALREADY_EXISTS, a DeleteTopic NOT_FOUND.
            Error::Raft(RaftError::OutcomeUnknown { why, .. }) => seam::Error::OutcomeUnknown(
                format!("controller command: {why}; it may or may not be committed"),
            ),
            Error::Raft(RaftError::Storage { source, .. }) | Error::Local(source) => source.into(),
            e => seam::Error::Internal(e.to_string()),
        }
    }
}

/// Counters of the cluster layer (this node).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Configuration changes this node proposed that committed.
    pub conf_changes: std::sync::atomic::AtomicU64,
    /// Configuration changes refused or lost (pending, conflicting, leadership moved).
    pub conf_changes_failed: std::sync::atomic::AtomicU64,
    /// Controller commands this node proposed that were applied.
    pub commands: std::sync::atomic::AtomicU64,
    /// Partitions whose replicas this node (as controller leader) moved off removed nodes or
    /// topped up to their replication factor.
    pub replicas_replaced: std::sync::atomic::AtomicU64,
    /// Nodes this node (as controller leader) removed: left, or dead past the timeout.
    pub nodes_removed: std::sync::atomic::AtomicU64,
    /// Partitions whose stopped replica (its log failed) this node, as controller leader,
    /// moved to another node.
    pub stopped_replicas_moved: std::sync::atomic::AtomicU64,
    /// Times this node asked the controller to move a replica of its own that stopped.
    pub stopped_replicas_reported: std::sync::atomic::AtomicU64,
    /// Times this node told the controller that a replica of its own marked stopped runs
    /// again (after a restart), withdrawing the mark.
    pub stopped_replicas_recovered: std::sync::atomic::AtomicU64,
    /// Replicas of this node that stopped for good and were moved to another node, whose
    /// logs this node closed and removed.
    pub stopped_replicas_reset: std::sync::atomic::AtomicU64,
    /// Running replicas of this node no longer placed here whose groups no longer count this
    /// node, closed and their logs removed.
    pub unplaced_replicas_removed: std::sync::atomic::AtomicU64,
    /// Times this node started its controller replica afresh (it had stopped for good, and
    /// the controller's group no longer counted it).
    pub controller_replica_resets: std::sync::atomic::AtomicU64,
    /// Controller commands this node sent to another member over the peer channel, its own
    /// controller replica being stopped or not running ([`relay`]).
    pub commands_relayed: std::sync::atomic::AtomicU64,
    /// Receiving side: relayed commands taken (proposed, passed on, or answered with the
    /// controller's refusal).
    pub commands_relay_served: std::sync::atomic::AtomicU64,
    /// Receiving side: relayed commands refused (no peer TLS where it runs, not a known
    /// member, oversized, malformed, about another node, from an unregistered node).
    pub commands_relay_refused: std::sync::atomic::AtomicU64,
    /// Receiving side: questions whether a group still counts their sender, answered
    /// ([`relay::serve_membership`]).
    pub membership_questions_answered: std::sync::atomic::AtomicU64,
    /// Receiving side: such questions refused (same rules as relayed commands).
    pub membership_questions_refused: std::sync::atomic::AtomicU64,
}

/// What a node removed from the cluster says of itself (`/readyz`, gRPC health, the calls it
/// refuses, its log).
pub fn removed_message(id: u64) -> String {
    format!(
        "this node (node {id}) was removed from the cluster (`proglog cluster remove`, or not \
         up for --dead-node-timeout); restart it to register again"
    )
}

/// This node in its cluster: the controller's state as applied here, and the way to change
/// it.
pub struct ClusterNode {
    pub stats: ClusterStats,
    /// This node's registry entry as it registers itself (known once membership runs).
    me: OnceLock<NodeEntry>,
    /// This node creates the controller group with itself as its only voter (it
    /// bootstraps the cluster); a joining node creates it empty and learns it.
    pub bootstrapper: AtomicBool,
    /// This node bootstrapped its cluster after no member at its `--start-join-addrs`
    /// answered (`probed` in cluster.meta, so a restart keeps it):
    /// [`ClusterNode::refused_by_another_cluster`].
    pub probed: AtomicBool,
    /// This run's registration with the controller is done (the rejoin at start, or none
    /// needed). A node whose controller replica was found lost at start, holding no state,
    /// reports that replica stopped only after it: a registration proposed later would
    /// withdraw the mark before the replica was started afresh.
    pub registered: AtomicBool,
    /// This run saw its node in the registry, not removed (registered, or as it was).
    seen_active: AtomicBool,
    /// The controller removed this node after this run saw it active: it serves no client
    /// until it restarts (and registers again). See [`ClusterNode::removed_while_running`].
    removed_running: AtomicBool,
    /// Why this node serves no client: it bootstrapped a cluster of its own beside the one
    /// its join addresses belong to ([`ClusterNode::refused_by_another_cluster`]).
    foreign: Mutex<Option<String>>,
    /// The controller index a member had applied when it answered this run's registration
    /// (0: no answer yet), and whether this node's state has applied as far since
    /// ([`crate::raft::seam::fresh`]).
    member_applied: AtomicU64,
    fresh: AtomicBool,
    pub peers: Peers,
    /// Peer TLS is on: names of peers are checked against their certificates.
    pub peer_tls: bool,
    state: RwLock<ClusterState>,
    /// A replay of the controller log under way (at open, or after a snapshot installed):
    /// its state is built here and replaces `state` at its end, so that nobody reads a
    /// state half rebuilt.
    replay: Mutex<Option<ClusterState>>,
    /// Commands between two checkpoints ([`DEFAULT_CHECKPOINT_EVERY`]; 0: none).
    pub checkpoint_every: AtomicU64,
    /// The largest command of a checkpoint ([`MAX_COMMAND_BYTES`]): a larger one is proposed
    /// in parts of at most this size.
    pub checkpoint_part_bytes: AtomicUsize,
    /// A checkpoint was refused as larger than [`checkpoint_budget`] and said so (the warning
    /// is logged once, until a checkpoint fits again).
    checkpoint_too_large: AtomicBool,
    /// The last checkpoint this node's Ready loop asked for (proposed, or refused as too
    /// large), as (`last_checkpoint`, `since_checkpoint`) of the state it was taken from:
    /// while no checkpoint was taken since, the next is due only `checkpoint_every` commands
    /// later ([`checkpoint_due`](Self::checkpoint_due)).
    checkpoint_tried: Mutex<Option<(u64, u64)>>,
    /// Notified whenever a command is applied.
    pub changed: Event,
    /// Notified after each reconcile pass (so that waiters see their deadlines).
    pub tick: Event,
    engine: OnceLock<EngineHandle>,
    members: OnceLock<crate::membership::MembershipWatch>,
    /// `--dead-node-timeout`.
    pub dead_node_timeout: Duration,
    /// `--stopped-replica-grace`: how long a replica of this node stays stopped (its log
    /// failed) before this node asks the controller to move it elsewhere.
    pub stopped_replica_grace: Duration,
    /// `--moved-replica-timeout`, in milliseconds: how long a replica held here but placed
    /// elsewhere may hear from no leader before it is closed although its group may still
    /// count it (`reconcile::DEFAULT_MOVED_REPLICA_TIMEOUT` unless set).
    moved_replica_timeout_ms: AtomicU64,
    /// `--max-partitions-per-shard`: a topic creation that would place more replicas on a
    /// node than its shards times this is refused (the controller's leader's value applies).
    max_partitions_per_shard: AtomicU32,
    stopping: AtomicBool,
    /// Partitions the reconcile loop is opening here as replicas added after their topic's
    /// creation: their groups open with no configuration (a leader adds them), never with
    /// the first one, whatever `initial` says (see `NodeHooks::voters`).
    adding: Mutex<HashSet<PartitionId>>,
    /// Replicas placed here whose opening failed at the last try (a full disk, no file
    /// descriptor left), by group, with the error: shown by DescribeCluster until an opening
    /// succeeds. At most one entry per partition placed here.
    open_failures: Mutex<HashMap<u64, String>>,
}

impl ClusterNode {
    pub fn new(
        peers: Peers,
        dead_node_timeout: Duration,
        stopped_replica_grace: Duration,
    ) -> Arc<ClusterNode> {
        Arc::new(ClusterNode {
            stats: ClusterStats::default(),
            me: OnceLock::new(),
            bootstrapper: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            seen_active: AtomicBool::new(false),
            removed_running: AtomicBool::new(false),
            foreign: Mutex::new(None),
            peer_tls: peers.tls.is_some(),
            peers,
            state: RwLock::new(ClusterState::default()),
            replay: Mutex::new(None),
            member_applied: AtomicU64::new(0),
            fresh: AtomicBool::new(false),
            checkpoint_every: AtomicU64::new(DEFAULT_CHECKPOINT_EVERY),
            checkpoint_part_bytes: AtomicUsize::new(MAX_COMMAND_BYTES),
            checkpoint_too_large: AtomicBool::new(false),
            checkpoint_tried: Mutex::new(None),
            changed: Event::new(),
            tick: Event::new(),
            engine: OnceLock::new(),
            members: OnceLock::new(),
            dead_node_timeout,
            stopped_replica_grace,
            moved_replica_timeout_ms: AtomicU64::new(
                reconcile::DEFAULT_MOVED_REPLICA_TIMEOUT.as_millis() as u64,
            ),
            max_partitions_per_shard: AtomicU32::new(
                engine::limits::DEFAULT_MAX_PARTITIONS_PER_SHARD,
            ),
            stopping: AtomicBool::new(false),
            adding: Mutex::new(HashSet::new()),
            open_failures: Mutex::new(HashMap::new()),
        })
    }

    /// Records why the opening of this node's replica in `group` failed (`None`: it opened,
    /// or is no longer placed here).
    pub(crate) fn set_open_failure(&self, group: u64, why: Option<String>) {
        if let Ok(mut f) = self.open_failures.lock() {
            match why {
                Some(why) => {
                    f.insert(group, why);
                }
                None => {
                    f.remove(&group);
                }
            }
        }
    }

    /// Why this node's replica in `group`, placed here, is not open: its last opening's
    /// error, while no opening has succeeded since.
    pub fn open_failure(&self, group: u64) -> Option<String> {
        self.open_failures.lock().ok()?.get(&group).cloned()
    }

    /// `--moved-replica-timeout`: how long a replica held here but placed elsewhere may hear
    /// from no leader before it is closed although its group may still count it.
    pub fn moved_replica_timeout(&self) -> Duration {
        Duration::from_millis(self.moved_replica_timeout_ms.load(Ordering::Relaxed))
    }

    /// Sets [`moved_replica_timeout`](Self::moved_replica_timeout).
    pub fn set_moved_replica_timeout(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.moved_replica_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets `--max-partitions-per-shard` (at least 1).
    pub fn set_max_partitions_per_shard(&self, n: u32) {
        self.max_partitions_per_shard
            .store(n.max(1), Ordering::Relaxed);
    }

    /// Opens partition `id` here as a replica placed on this node after its topic was
    /// created (the topic's other partitions held here already): its group starts with no
    /// configuration, as any replica a leader adds, or, if data of an earlier replica of it
    /// was kept here, from that data.
    pub(crate) fn open_added_partition(&self, id: &PartitionId) -> Result<(), engine::Error> {
        let engine = self.engine.get().ok_or(engine::Error::ShutDown)?;
        if let Ok(mut a) = self.adding.lock() {
            a.insert(id.clone());
        }
        let r = futures_lite::future::block_on(engine.open_partition(&id.topic, id.partition));
        if let Ok(mut a) = self.adding.lock() {
            a.remove(id);
        }
        r
    }

    /// The partitions of `s` placed on this node, by topic.
    pub fn placed_here(&self, s: &ClusterState) -> BTreeMap<String, Vec<u32>> {
        let me = self.id();
        s.topics
            .iter()
            .map(|(name, t)| {
                let mine: Vec<u32> = t
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.nodes().contains(&me))
                    .map(|(i, _)| i as u32)
                    .collect();
                (name.clone(), mine)
            })
            .filter(|(_, mine)| !mine.is_empty())
            .collect()
    }

    /// The shards' hooks.
    pub fn hooks(self: &Arc<Self>) -> Hooks {
        Hooks(Some(Arc::new(NodeHooks(Arc::clone(self)))))
    }

    pub fn set_me(&self, me: NodeEntry) {
        let _ = self.me.set(me);
    }

    pub fn me(&self) -> Option<&NodeEntry> {
        self.me.get()
    }

    pub fn set_engine(&self, engine: EngineHandle) {
        let _ = self.engine.set(engine);
    }

    pub fn set_members(&self, members: crate::membership::MembershipWatch) {
        let _ = self.members.set(members);
    }

    pub fn members(&self) -> Option<&crate::membership::MembershipWatch> {
        self.members.get()
    }

    pub fn engine(&self) -> Option<&EngineHandle> {
        self.engine.get()
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.changed.notify(usize::MAX);
        self.tick.notify(usize::MAX);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A member answered this run's registration having applied the controller's log up
    /// to `applied`.
    pub fn note_member_applied(&self, applied: u64) {
        self.member_applied
            .fetch_max(applied.max(1), Ordering::Relaxed);
    }

    /// See [`crate::raft::seam::fresh`]: the index to reach (0: none known yet), and the
    /// latch once reached.
    pub(crate) fn freshness(&self) -> (u64, &AtomicBool) {
        (self.member_applied.load(Ordering::Relaxed), &self.fresh)
    }

    /// This run's state just became fresh: the node counts as active from here when the
    /// registry holds it so (a removal from now on is one made while it runs, even with no
    /// command applied in between).
    pub(crate) fn note_fresh(&self) {
        let me = self.id();
        let active = self
            .state
            .read()
            .is_ok_and(|s| s.nodes.get(&me).is_some_and(|n| !n.removed));
        if active {
            self.seen_active.store(true, Ordering::Relaxed);
        }
    }

    /// This node's Raft id (0 until known).
    pub fn id(&self) -> u64 {
        self.peers.self_id.load(Ordering::Relaxed)
    }

    pub fn set_id(&self, id: u64) {
        self.peers.self_id.store(id, Ordering::Relaxed);
    }

    /// This node's cluster id, known from cluster.meta or a join's answer: said to every
    /// peer, whose traffic is refused if it is of another cluster
    /// ([`Peers::other_cluster`]). Set once; a node never changes cluster while it runs.
    pub fn set_cluster_id(&self, cluster_id: &str) {
        let _ = self.peers.cluster_id.set(cluster_id.to_owned());
    }

    /// The controller log index the state applied here reflects (no copy of the state).
    pub fn applied_index(&self) -> u64 {
        self.state.read().map(|s| s.applied).unwrap_or(0)
    }

    /// The controller's state as applied here.
    pub fn state(&self) -> ClusterState {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The nodes `topic`/`partition` is placed on (preferred leader first), without copying
    /// the state; `None` when the controller knows no such partition.
    pub fn replicas_of(&self, topic: &str, partition: u32) -> Option<Vec<u64>> {
        let s = self.state.read().ok()?;
        let t = s.topics.get(topic)?;
        Some(t.partitions.get(partition as usize)?.nodes())
    }

    /// The replication factor the registry gives `topic`, without copying the state.
    pub fn replication_factor_of(&self, topic: &str) -> Option<u32> {
        let s = self.state.read().ok()?;
        s.topics.get(topic).map(|t| t.replication_factor)
    }

    /// How the controller's state lists `topic`, without copying the state: `None` while
    /// this node holds no state yet, `Some(None)` when it does not list it, else its
    /// incarnation.
    pub fn listing(&self, topic: &str) -> Option<Option<u64>> {
        let s = self.state.read().ok()?;
        (!s.cluster_id.is_empty()).then(|| s.topics.get(topic).map(|t| t.config.incarnation))
    }

    /// The incarnation of `topic` in the controller's state (`LogConfig::incarnation`), 0
    /// when the state does not list it; without copying the state.
    pub fn incarnation_of(&self, topic: &str) -> u64 {
        self.state
            .read()
            .ok()
            .and_then(|s| s.topics.get(topic).map(|t| t.config.incarnation))
            .unwrap_or(0)
    }

    /// Applies registry knowledge learnt outside the log (a join answer), so that the
    /// transport can talk to the controller's members before this node's log catches up.
    pub fn learn_addresses(&self, nodes: &[(u64, String)]) {
        for (id, addr) in nodes {
            self.add_peer(*id, addr);
        }
    }

    /// Where gossip says a registered member's RPC address is now (a node restarted under a
    /// new IP, as a pod is): the transport follows gossip before the registry is updated,
    /// so that a cluster restarted entirely under new addresses can elect leaders again.
    pub fn refresh_addresses(&self, s: &ClusterState) {
        let Some(w) = self.members.get() else { return };
        let list = w.members();
        for (id, n) in &s.nodes {
            if let Some(addr) = gossip_rpc_addr(&list, &n.member) {
                self.add_peer(*id, &addr);
            }
        }
    }

    fn add_peer(&self, id: u64, rpc_addr: &str) {
        if id == self.id() {
            return;
        }
        let Ok(addr) = rpc_addr.parse::<SocketAddr>() else {
            log::warn!("node {id}: RPC address {rpc_addr:?} is no socket address");
            return;
        };
        let entry = PeerAddr {
            addr,
            server_name: addr.ip().to_string(),
        };
        if let Ok(mut b) = self.peers.book.write() {
            if b.get(&id) != Some(&entry) {
                log::info!("Raft transport: node {id} is at {addr}");
                b.insert(id, entry);
            }
        }
    }

    fn apply(&self, index: u64, bytes: &[u8]) {
        let c = match Command::decode(bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("controller: command at index {index} does not decode ({e}); skipped");
                return;
            }
        };
        if let Ok(mut replay) = self.replay.lock() {
            if let Some(s) = replay.as_mut() {
                let outcome = s.apply(index, &c);
                log_applied(index, &c, &outcome, true);
                return;
            }
        }
        let outcome = {
            let Ok(mut s) = self.state.write() else {
                return;
            };
            s.apply(index, &c)
        };
        log_applied(index, &c, &outcome, false);
        self.after_change();
    }

    /// The registry's addresses to the transport, and the news to waiters.
    fn after_change(&self) {
        // Gossip's view wins over an address the registry has not caught up with yet (a
        // node restarted under a new IP re-registers only after it runs). Decided before
        // the book is written: writing the registry's address and then gossip's flipped
        // the book to the dead address and back at every command applied, and a Raft
        // message sent in between dropped the live connection and dialled the dead address
        // (after a full restart under new IPs the controller's leader lost its quorum so).
        let live = self.members.get().map(|w| w.members());
        let nodes: Vec<(u64, String)> = match self.state.read() {
            Ok(s) => s
                .nodes
                .iter()
                .map(|(id, n)| {
                    let addr = live
                        .as_ref()
                        .and_then(|l| gossip_rpc_addr(l, &n.member))
                        .unwrap_or_else(|| n.rpc_addr.clone());
                    (*id, addr)
                })
                .collect(),
            Err(_) => return,
        };
        for (id, addr) in nodes {
            self.add_peer(id, &addr);
        }
        self.note_removal();
        self.changed.notify(usize::MAX);
    }

    /// Notes whether the controller removed this node while it runs, logging it once when it
    /// learns it. Only a removal applied once this run's state is fresh
    /// ([`crate::raft::seam::fresh`]: it has applied what a member had applied when it
    /// answered this run's registration) counts: one read from the log at start, or applied
    /// while the state catches up (the node was removed while it was down), is news from
    /// before this run, and the node registers again at start.
    fn note_removal(&self) {
        let me = self.id();
        // Before the state is read (`fresh` reads it too).
        let fresh = crate::raft::seam::fresh(self).is_ok();
        let removed = match self.state.read() {
            Ok(s) => s.nodes.get(&me).map(|n| n.removed),
            Err(_) => return,
        };
        match removed {
            Some(false) => {
                if fresh {
                    self.seen_active.store(true, Ordering::Relaxed);
                }
                self.removed_running.store(false, Ordering::Relaxed);
            }
            Some(true)
                if self.seen_active.load(Ordering::Relaxed)
                    && !self.removed_running.swap(true, Ordering::Relaxed) =>
            {
                if self.stopping() {
                    // What a clean leave asks for (SIGTERM, --leave-on-shutdown).
                    log::info!("left the cluster: the controller removed this node (node {me})");
                } else {
                    log::warn!(
                        "{}; until then it refuses produces and reads (UNAVAILABLE)",
                        removed_message(me)
                    );
                }
            }
            _ => {}
        }
    }

    /// True once the controller removed this node (`proglog cluster remove`, or down longer
    /// than `--dead-node-timeout`) while it runs: its replicas are placed elsewhere and it no
    /// longer follows the groups it held, so it refuses appends and reads until it restarts
    /// and registers again.
    pub fn removed_while_running(&self) -> bool {
        self.removed_running.load(Ordering::Relaxed)
    }

    /// A member refused the registration of this node, started with join addresses, for
    /// belonging to another cluster (`why`, its answer). Where this node bootstrapped its
    /// cluster only because no member at its join addresses answered (`probed`, kept in
    /// cluster.meta) and no other node ever joined that cluster (removed ones count: a
    /// cluster that held another node is a real one, whatever became of it), it is a second
    /// cluster started by mistake beside the one its join addresses belong to (a data
    /// directory wiped, started with `--bootstrap` while every member it names was down):
    /// from then on, and again after each restart once refused, it is not ready and refuses
    /// produces and reads (UNAVAILABLE, naming the way out), so that no client has a record
    /// acknowledged by it and lost to the real cluster. A node whose cluster has held other
    /// nodes only logs the refusal (it was asked by a stray); so does a node bootstrapped
    /// without asking (plain `--bootstrap`, or an older single node upgraded with its
    /// topics), which may hold clients' data.
    ///
    /// Returns whether this node is so fenced.
    pub fn refused_by_another_cluster(&self, why: &str) -> bool {
        if !self.probed.load(Ordering::Relaxed) || !self.never_joined_by_another() {
            return false;
        }
        self.fence(&self.state().cluster_id, why);
        true
    }

    /// Stops this node serving clients: its cluster `cluster_id` is a second one started by
    /// mistake (`why`: the refusal that showed it, in this run or, as cluster.meta keeps it,
    /// an earlier one).
    pub fn fence(&self, cluster_id: &str, why: &str) {
        let msg = format!(
            "this node bootstrapped cluster {cluster_id} and is its only node, while the \
             members at its --start-join-addrs belong to another cluster ({why}): a second \
             cluster, started by mistake (a data directory wiped and started with --bootstrap \
             while those members were down). It serves no client: stop it, empty its data \
             directory, and start it with --start-join-addrs and without --bootstrap to join \
             them as a new member",
        );
        log::error!("{msg}");
        if let Ok(mut f) = self.foreign.lock() {
            *f = Some(msg);
        }
    }

    /// Whether this node's cluster (as its state shows it) never held another node, removed
    /// ones included.
    fn never_joined_by_another(&self) -> bool {
        let me = self.id();
        self.state
            .read()
            .is_ok_and(|s| !s.cluster_id.is_empty() && s.nodes.keys().all(|id| *id == me))
    }

    /// Whether this node's cluster (as its state shows it) holds no other node that was not
    /// removed: nobody of its own to register with.
    pub fn alone_in_cluster(&self) -> bool {
        let me = self.id();
        self.state.read().is_ok_and(|s| {
            !s.cluster_id.is_empty() && !s.nodes.iter().any(|(id, n)| *id != me && !n.removed)
        })
    }

    /// Why this node serves no client, if it is a second cluster started by mistake
    /// ([`ClusterNode::refused_by_another_cluster`]).
    pub fn foreign(&self) -> Option<String> {
        self.foreign.lock().ok().and_then(|f| f.clone())
    }

    /// The controller log's committed entries from `first_index` to `last_index` are replayed
    /// next: a state starts from them, aside.
    fn replay_start(&self, first_index: u64, last_index: u64) {
        log::info!(
            "controller: rebuilding the state from the log's entries {first_index}..={last_index}"
        );
        if let Ok(mut r) = self.replay.lock() {
            *r = Some(ClusterState::replaying_from(first_index));
        }
    }

    /// The replay is over: its state replaces the one held. It may still wait for its
    /// checkpoint: a log compacted just below it, whose last batch was written before the
    /// checkpoint was known committed, recovers a commit index below it; the checkpoint is
    /// then applied as raft-rs learns the commit index, and nothing before it.
    fn replay_end(&self) {
        let Some(rebuilt) = self.replay.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        if rebuilt.applied == 0 && !rebuilt.awaiting_checkpoint && rebuilt.cluster_id.is_empty() {
            // Nothing applied: an empty log (a replica started afresh, or a new node's). The
            // state held stays (empty on a new node): a replica started afresh keeps what it
            // knew of the cluster (its members, to ask to be added back) until its new log
            // brings the state again (commands at indexes applied already are skipped).
            log::info!("controller: the log holds no command yet; the state held stays");
            self.after_change();
            return;
        }
        if rebuilt.awaiting_checkpoint {
            log::info!(
                "controller: the log retained holds no committed checkpoint yet; the state \
                 starts from the first one applied"
            );
        } else {
            log::info!(
                "controller: state rebuilt through index {} (checkpoint at {})",
                rebuilt.applied,
                rebuilt.last_checkpoint
            );
        }
        if let Ok(mut s) = self.state.write() {
            *s = rebuilt;
        }
        self.after_change();
    }

    /// Whether the controller's leader should ask for a checkpoint of `s` (its reconcile
    /// pass): once `checkpoint_every` commands were applied since the last one, and, after a
    /// checkpoint asked for that did not complete (its parts cut by another entry, refused
    /// by raft-rs, too large to propose, or landed elsewhere), only once `checkpoint_every`
    /// more commands were applied since that try. A checkpoint that fails again and again
    /// thus costs one try (one serialization of the state, at most
    /// [`checkpoint_budget`] bytes written) per `checkpoint_every` commands, not one per
    /// pass. A checkpoint proposed and still on its way counts as such a try too, so it is
    /// not asked for again meanwhile.
    pub fn checkpoint_due(&self, s: &ClusterState) -> bool {
        let every = self.checkpoint_every.load(Ordering::Relaxed);
        if every == 0 || s.awaiting_checkpoint || s.since_checkpoint < every {
            return false;
        }
        match self.checkpoint_tried.lock().map(|t| *t) {
            // No checkpoint taken since the last try: `every` more commands first.
            Ok(Some((last, since))) if last == s.last_checkpoint => {
                s.since_checkpoint >= since.saturating_add(every)
            }
            _ => true,
        }
    }

    /// Asks the controller's Ready loop (this node leads it) to propose a checkpoint (at
    /// once, whatever [`checkpoint_due`](Self::checkpoint_due) says).
    pub fn request_checkpoint(&self) {
        if let Some(engine) = self.engine.get() {
            let _ = engine.deliver(0, Box::new(ControlMsg::Checkpoint));
        }
    }

    /// A checkpoint of the state applied through log index `at` (nothing after it applied),
    /// encoded as the commands to propose in a row (one, or parts of at most
    /// `checkpoint_part_bytes` each); `None` while a replay is under way, or while the state
    /// waits for a checkpoint, and for a state whose checkpoint would take more entry bytes
    /// than [`checkpoint_budget`] of the leader's `max_uncommitted_size` (raft-rs would refuse
    /// its last parts: the checkpoint a no-op, its first parts written for nothing).
    fn checkpoint(&self, at: u64, max_uncommitted_size: u64) -> Option<Vec<Vec<u8>>> {
        if self.replay.lock().ok()?.is_some() {
            return None;
        }
        let s = self.state.read().ok()?;
        if s.awaiting_checkpoint || s.applied > at {
            return None;
        }
        // A try, whatever comes of it: the next is due `checkpoint_every` commands later
        // unless this one is taken.
        if let Ok(mut t) = self.checkpoint_tried.lock() {
            *t = Some((s.last_checkpoint, s.since_checkpoint));
        }
        let part_bytes = self.checkpoint_part_bytes.load(Ordering::Relaxed);
        let parts = match Command::checkpoint_parts(&s, at, part_bytes) {
            Ok(parts) => parts,
            Err(e) => {
                log::warn!("controller: no checkpoint proposed ({e}): the log is not compacted");
                return None;
            }
        };
        let bytes: u64 = parts
            .iter()
            .map(|p| (p.len() + crate::raft::entry::CONTROLLER_RECORD_OVERHEAD) as u64)
            .sum();
        let limit = checkpoint_budget(max_uncommitted_size);
        if bytes > limit {
            if !self.checkpoint_too_large.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "controller: no checkpoint proposed: the state ({} nodes, {} topics) takes \
                     {bytes} bytes in {} parts, more than {limit} (half of raft-rs's \
                     max_uncommitted_size, {max_uncommitted_size}, which the parts would share \
                     uncommitted); the controller log is not compacted while the state is this \
                     large",
                    s.nodes.len(),
                    s.topics.len(),
                    parts.len()
                );
            }
            return None;
        }
        if self.checkpoint_too_large.swap(false, Ordering::Relaxed) {
            log::info!("controller: the state's checkpoint ({bytes} bytes) fits again");
        }
        Some(parts)
    }

    /// The controller group's state on this node.
    pub fn controller(&self) -> Option<crate::raft::board::GroupView> {
        self.peers.board.get(0)
    }

    pub fn is_controller_leader(&self) -> bool {
        self.controller()
            .is_some_and(|v| v.role == StateRole::Leader)
    }

    /// The RPC address of node `id`: where the transport reaches it (the registry's address,
    /// or gossip's when the node moved and has not registered again yet: after a full
    /// restart under new addresses, the registry names only dead ones until every node
    /// re-registers, which needs the controller's leader, which redirects name), else the
    /// registry's.
    pub fn rpc_addr_of(&self, id: u64) -> Option<String> {
        if id == self.id() {
            if let Some(me) = self.me() {
                return Some(me.rpc_addr.clone());
            }
        }
        if let Some(p) = self.peers.addr_of(id) {
            return Some(p.addr.to_string());
        }
        self.state
            .read()
            .ok()?
            .nodes
            .get(&id)
            .map(|n| n.rpc_addr.clone())
    }

    /// NOT_LEADER naming the controller's leader, or NO_LEADER.
    fn not_leader(&self) -> Error {
        match self.controller().map(|v| v.leader) {
            Some(l) if l != raft::INVALID_ID => Error::NotLeader {
                leader_id: Some(l),
                leader_addr: self.rpc_addr_of(l),
            },
            _ => Error::NoLeader,
        }
    }

    /// Proposes `c` on the controller (this node must lead it) and waits until it is
    /// applied here. Returns its index.
    pub async fn propose(&self, c: &Command) -> Result<u64, Error> {
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        if !self.is_controller_leader() {
            return Err(self.not_leader());
        }
        let command = c.encode();
        if command.len() > MAX_COMMAND_BYTES {
            return Err(Error::Refused(format!(
                "a controller command of {} bytes (at most {MAX_COMMAND_BYTES})",
                command.len()
            )));
        }
        let (reply, rx) = oneshot::channel();
        engine
            .deliver(0, Box::new(ControlMsg::Command { command, reply }))
            .map_err(|e| Error::Refused(e.to_string()))?;
        let index = match rx.await {
            Ok(Ok(i)) => i,
            // Not proposed (this node no longer leads), or replaced by another leader's entry
            // before it committed: nothing of it is in the log; the client goes to the leader.
            Ok(Err(RaftError::NotLeader { .. } | RaftError::NoLeader { .. })) => {
                return Err(self.not_leader())
            }
            // Proposed, outcome unknown (`From<Error> for seam::Error`: OUTCOME_UNKNOWN).
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Error::Stopped),
        };
        self.wait_until(|s| s.applied >= index, "the command to apply")
            .await?;
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        Ok(index)
    }

    /// Sends `c` to the controller's leader from any node, without waiting for it: proposed
    /// here when this node leads the controller, else forwarded by raft-rs to the leader
    /// this node's controller replica follows (a `MsgPropose` on the Raft transport). When
    /// that replica is stopped or not running, a command this node sends about itself goes
    /// to another member over the peer channel instead ([`relay`]). The caller watches the
    /// applied state and sends it again if it does not show.
    pub fn ask_controller(&self, c: &Command) -> Result<(), Error> {
        if self.is_controller_leader() {
            return futures_lite::future::block_on(self.propose(c)).map(|_| ());
        }
        let command = c.encode();
        if command.len() > MAX_COMMAND_BYTES {
            return Err(Error::Refused(format!(
                "a controller command of {} bytes (at most {MAX_COMMAND_BYTES})",
                command.len()
            )));
        }
        // A replica that follows no leader (stopped, not running, or, running, left out of
        // the controller's group or cut off) cannot forward a proposal.
        let following = self
            .controller()
            .is_some_and(|v| v.stopped.is_none() && v.leader != raft::INVALID_ID);
        if !following && relay::relayable(c, self.id()) {
            return self.relay(command);
        }
        self.pass_on(command)
    }

    /// Hands the encoded `command` to this node's controller replica, whose raft-rs forwards
    /// it to the leader it follows; refused when that replica is stopped, not running, or
    /// knows no leader. Never goes over the peer channel.
    pub(crate) fn pass_on(&self, command: Vec<u8>) -> Result<(), Error> {
        match self.controller() {
            None => {
                return Err(Error::Refused(
                    "this node's controller replica is not running".into(),
                ))
            }
            Some(v) if v.stopped.is_some() => {
                return Err(Error::Refused(
                    "this node's controller replica is stopped".into(),
                ))
            }
            Some(v) if v.leader == raft::INVALID_ID => return Err(Error::NoLeader),
            Some(_) => {}
        }
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        engine
            .deliver(0, Box::new(ControlMsg::ForwardCommand { command }))
            .map_err(|e| Error::Refused(e.to_string()))
    }

    /// The members a relayed command goes to, in the order tried: the controller's voters
    /// as this node's replica last knew them, then the other live registered nodes; never
    /// this node, only nodes whose address the transport knows.
    fn relay_targets(&self) -> Vec<(u64, PeerAddr)> {
        let me = self.id();
        let s = self.state();
        let live = if s.nodes.is_empty() {
            // No registry applied here (a controller replica found lost at start): the
            // addresses the registration's answer gave, of the members gossip lists live.
            let book = self
                .peers
                .book
                .read()
                .map(|b| b.clone())
                .unwrap_or_default();
            let gossip: Vec<SocketAddr> = match self.members.get() {
                Some(w) => w
                    .members()
                    .members
                    .iter()
                    .filter(|m| !m.is_self && m.state.is_live())
                    .map(|m| m.rpc_addr)
                    .collect(),
                None => Vec::new(),
            };
            book_live(&book, &gossip)
        } else {
            self.live_nodes(&s)
        };
        let voters = self.controller().map(|v| v.voters).unwrap_or_default();
        let mut order: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|n| live.contains(n))
            .collect();
        order.extend(live.iter().copied().filter(|n| !voters.contains(n)));
        order
            .into_iter()
            .filter(|&n| n != me)
            .filter_map(|n| Some((n, self.peers.addr_of(n)?)))
            .collect()
    }

    /// Sends the encoded `command` to another member over the peer channel ([`relay`]),
    /// trying the members of [`Self::relay_targets`] in turn until one takes it, within
    /// [`relay::RELAY_DEADLINE`]; counted in `commands_relayed`.
    fn relay(&self, command: Vec<u8>) -> Result<(), Error> {
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        let targets = self.relay_targets();
        if targets.is_empty() {
            return Err(Error::Refused(
                "this node's controller replica does not run, and no other live member's \
                 address is known to relay the command to"
                    .into(),
            ));
        }
        self.stats.commands_relayed.fetch_add(1, Ordering::Relaxed);
        let (me, tls) = (self.id(), self.peers.tls.clone());
        let sent = engine.on_shard(0, move |_| async move {
            let deadline = Instant::now() + relay::RELAY_DEADLINE;
            let mut why = Vec::new();
            for (n, at) in targets {
                if Instant::now() >= deadline {
                    why.push("out of time".to_owned());
                    break;
                }
                match relay::request(at.addr, tls.as_ref(), &at.server_name, me, &command).await {
                    Ok(relay::Answer::Proposed) => {
                        log::info!("controller command relayed to node {n}, which proposed it");
                        return Ok(Ok(()));
                    }
                    Ok(relay::Answer::PassedOn) => {
                        log::info!(
                            "controller command relayed to node {n}, which passed it on to \
                             the controller's leader"
                        );
                        return Ok(Ok(()));
                    }
                    Ok(relay::Answer::Refused(r)) => why.push(format!("node {n}: {r}")),
                    Err(e) => why.push(format!("node {n}: {e}")),
                }
            }
            Ok(Err(why.join("; ")))
        });
        match futures_lite::future::block_on(sent) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(Error::Refused(format!(
                "this node's controller replica does not run, and no member took the command: \
                 {why}"
            ))),
            Err(e) => Err(Error::Refused(e.to_string())),
        }
    }

    /// Whether the controller's configuration still counts this node, whose controller
    /// replica applied through `applied`, asked of the members of [`Self::relay_targets`] in
    /// turn ([`Self::group_counts_me`]).
    pub fn controller_counts_me(&self, applied: u64) -> Option<bool> {
        let targets: Vec<u64> = self.relay_targets().into_iter().map(|(n, _)| n).collect();
        self.group_counts_me(0, applied, &targets)
    }

    /// Whether `group`'s configuration still counts this node, whose replica of it applied
    /// through `applied`, asked of `targets` in turn over the peer channel
    /// ([`relay::membership_of`]): `Some(false)` as soon as one whose replica applied at
    /// least as far does not count it, `Some(true)` if one counts it and none says otherwise,
    /// `None` if none could tell (within [`relay::RELAY_DEADLINE`] in all).
    pub fn group_counts_me(&self, group: u64, applied: u64, targets: &[u64]) -> Option<bool> {
        let engine = self.engine.get()?;
        let me = self.id();
        let targets: Vec<(u64, PeerAddr)> = targets
            .iter()
            .filter(|&&n| n != me)
            .filter_map(|&n| Some((n, self.peers.addr_of(n)?)))
            .collect();
        let tls = self.peers.tls.clone();
        let asked = engine.on_shard(0, move |_| async move {
            let deadline = Instant::now() + relay::RELAY_DEADLINE;
            let mut counted = None;
            for (n, at) in targets {
                if Instant::now() >= deadline {
                    break;
                }
                let question = (me, group, applied);
                let r = relay::request_membership(at.addr, tls.as_ref(), &at.server_name, question)
                    .await;
                match r {
                    Ok(relay::Membership::NotCounted { applied: there }) => {
                        log::info!(
                            "{}: node {n}'s replica, through index {there}, no \
                             longer counts this node",
                            GroupName(group)
                        );
                        return Ok(Some(false));
                    }
                    Ok(relay::Membership::Counted { .. }) => counted = Some(true),
                    Ok(relay::Membership::Unknown { .. }) => {}
                    Err(e) => log::debug!("{}: asking node {n} about it: {e}", GroupName(group)),
                }
            }
            Ok(counted)
        });
        futures_lite::future::block_on(asked).ok().flatten()
    }

    /// Starts this node's controller replica afresh: closes it, removes its data, and opens
    /// an empty one with no configuration (it votes for nobody until the controller's leader
    /// adds it and catches it up, as for a node joining). Only for a replica the
    /// controller's group no longer counts ([`Self::controller_counts_me`]): what it held is
    /// needed by no one. The state held in memory stays until the new replica's log replaces
    /// or extends it (commands at indexes already applied are skipped).
    pub fn reset_controller_replica(&self) -> Result<(), engine::Error> {
        let engine = self.engine.get().ok_or(engine::Error::ShutDown)?;
        // Never a first voter again: a replica opened by the node that bootstrapped the
        // cluster in this run would start as its controller's only voter.
        self.bootstrapper.store(false, Ordering::Relaxed);
        futures_lite::future::block_on(engine.close_partition(CONTROLLER_TOPIC, 0, true))?;
        futures_lite::future::block_on(engine.open_partition(CONTROLLER_TOPIC, 0))
    }

    /// Waits (on any executor or thread) until `done` holds for the applied state.
    pub async fn wait_until(
        &self,
        done: impl Fn(&ClusterState) -> bool,
        what: &str,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            let listener = futures_lite::future::or(self.changed.listen(), self.tick.listen());
            if self.state.read().map(|s| done(&s)).unwrap_or(false) {
                return Ok(());
            }
            if self.stopping() {
                return Err(Error::Stopped);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!("waiting for {what}")));
            }
            // The reconcile thread notifies at least every tick, so the deadline is seen.
            listener.await;
        }
    }

    /// Live members of the gossip view, by membership id (only this node when it does not
    /// gossip).
    pub fn live_members(&self) -> Vec<String> {
        self.members_where(MemberState::is_live)
    }

    /// Members of the gossip view in a state `keep` accepts, by membership id (only this
    /// node when it does not gossip).
    fn members_where(&self, keep: impl Fn(MemberState) -> bool) -> Vec<String> {
        match self.members.get() {
            Some(w) => w
                .members()
                .members
                .iter()
                .filter(|m| keep(m.state))
                .map(|m| m.node_id.to_string())
                .collect(),
            None => self
                .me
                .get()
                .map(|m| m.member.clone())
                .into_iter()
                .collect(),
        }
    }

    /// Registered, not removed, and live (up or suspect) in the gossip view.
    pub fn live_nodes(&self, s: &ClusterState) -> Vec<u64> {
        Self::registered_among(s, &self.live_members())
    }

    /// Registered, not removed, and up (not suspect) in the gossip view.
    pub fn up_nodes(&self, s: &ClusterState) -> Vec<u64> {
        Self::registered_among(s, &self.members_where(|m| m == MemberState::Up))
    }

    fn registered_among(s: &ClusterState, members: &[String]) -> Vec<u64> {
        s.nodes
            .iter()
            .filter(|(_, n)| !n.removed && members.contains(&n.member))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Creates a topic through the controller: `rf` replicas (default min(3, nodes), down
    /// members counted) of each partition on distinct nodes. Returns once this node has its replicas open (or
    /// holds none).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: LogConfig,
        rf: Option<u32>,
    ) -> Result<(), Error> {
        // The bare reason: the status code says "invalid argument" already.
        engine::catalog::check_topic_name(name).map_err(|e| {
            Error::Refused(match e {
                engine::Error::InvalidArgument(m) => m,
                e => e.to_string(),
            })
        })?;
        if name == CONTROLLER_TOPIC {
            return Err(Error::Refused(format!("topic {name:?} is reserved")));
        }
        let max = engine::limits::MAX_PARTITIONS;
        if partitions == 0 || partitions > max {
            return Err(Error::Refused(format!(
                "a topic needs between 1 and {max} partitions, not {partitions}"
            )));
        }
        config
            .validate()
            .map_err(|e| Error::Refused(e.to_string()))?;
        if !self.is_controller_leader() {
            return Err(self.not_leader());
        }
        let s = self.state();
        if s.topics.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "topic {name:?} already exists"
            )));
        }
        // The default counts every member (down ones too): a topic created while a member
        // restarts (a rolling restart that does not leave) keeps its factor for good, so it
        // must not be lowered for a node that is back in seconds. Replicas go to the live
        // nodes first, to down ones only for what those lack (`place_on`).
        let live = self.live_nodes(&s);
        let down: Vec<u64> = s
            .active_nodes()
            .into_iter()
            .filter(|n| !live.contains(n))
            .collect();
        let rf = rf
            .filter(|&r| r > 0)
            .unwrap_or_else(|| (live.len() + down.len()).clamp(1, 3) as u32);
        let (nodes, majority) = (live.len() + down.len(), rf as usize / 2 + 1);
        if rf as usize <= nodes && live.len() < majority {
            // Members are down (restarting, or for good until --dead-node-timeout removes
            // them): retried, the creation succeeds once enough are back.
            return Err(Error::Unavailable(format!(
                "topic {name:?}: {rf} replicas need {majority} live nodes to elect a leader; \
                 {} of the cluster's {nodes} nodes are live now (retry once members are back, \
                 or give a smaller --replication-factor)",
                live.len()
            )));
        }
        let placed = s
            .place_on(name, partitions, rf, &live, &down)
            .map_err(Error::Refused)?;
        let on_down: BTreeSet<u64> = placed
            .iter()
            .flat_map(|p| p.nodes())
            .filter(|n| down.contains(n))
            .collect();
        if !on_down.is_empty() {
            log::warn!(
                "topic {name:?}: replicas placed on nodes {on_down:?}, registered but not live \
                 now: each opens its replica when it is back (or the replica moves once the \
                 node is removed); until then those partitions have fewer live replicas"
            );
        }
        let per_shard = self.max_partitions_per_shard.load(Ordering::Relaxed);
        if let Some(why) = s.over_capacity(&placed, per_shard) {
            return Err(Error::Exhausted(format!(
                "topic {name:?} ({partitions} partitions x {rf} replicas) is not created: {why}"
            )));
        }
        let here: Vec<u32> = placed
            .iter()
            .enumerate()
            .filter(|(_, p)| p.nodes().contains(&self.id()))
            .map(|(i, _)| i as u32)
            .collect();
        // A name created before (and deleted since) had a smaller one.
        let mut config = config;
        config.incarnation = s.next_incarnation.max(1);
        let c = Command::CreateTopic {
            name: name.to_owned(),
            config: config.clone(),
            replication_factor: rf,
            partitions: placed,
        };
        self.propose(&c).await?;
        // As applied (the incarnation is numbered then).
        let config = self
            .state()
            .topics
            .get(name)
            .map_or(config, |t| t.config.clone());
        if !here.is_empty() {
            // Opened here at once (the reconcile loop would too), so that a failure (a full
            // disk) is the caller's answer, and the topic is taken back: a topic whose
            // creation failed is not there. Only the partitions placed here.
            let engine = self.engine.get().ok_or(Error::Stopped)?;
            match engine
                .create_topic_holding(name, partitions, config, &here)
                .await
            {
                Ok(_) | Err(engine::Error::TopicExists(_)) => {}
                Err(e) => {
                    log::warn!(
                        "topic {name:?}: its replicas here could not be opened ({e}); deleting it"
                    );
                    if let Err(d) = self
                        .propose(&Command::DeleteTopic {
                            name: name.to_owned(),
                        })
                        .await
                    {
                        log::error!(
                            "topic {name:?}: could not be deleted after a failed creation: {d}"
                        );
                    } else {
                        // Dropped here at once, as by DeleteTopic (the reconcile loop would
                        // only later): the partitions that did open hold files and
                        // descriptors, and the caller's next look must not find the topic.
                        match engine.delete_topic(name).await {
                            Ok(()) | Err(engine::Error::UnknownTopic(_)) => {}
                            Err(d) => log::warn!(
                                "topic {name:?}: its replicas here are dropped later, by the \
                                 reconcile loop: {d}"
                            ),
                        }
                    }
                    // No descriptor left for the new partitions' files: nothing of the topic
                    // is left (deleted above), and the same creation succeeds once files are
                    // closed or the bound raised.
                    if e.is_out_of_descriptors() {
                        return Err(Error::Exhausted(format!(
                            "topic {name:?} is not created: {e} (this process has no file \
                             descriptor left, RLIMIT_NOFILE: each partition held here keeps \
                             about 2 open and each connection 1; raise the limit, `ulimit -n` \
                             or LimitNOFILE= in a systemd unit, or hold fewer partitions)"
                        )));
                    }
                    return Err(Error::Local(e));
                }
            }
        }
        self.wait_local(name).await
    }

    /// Waits until this node's engine holds every partition of the topic that placement
    /// gives it.
    pub async fn wait_local(&self, name: &str) -> Result<(), Error> {
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        self.wait_until(
            |s| {
                let wanted = self.placed_here(s).remove(name).unwrap_or_default();
                // Held by a copy of this topic, not of an earlier one of that name.
                let incarnation = s.topics.get(name).map(|t| t.config.incarnation);
                wanted.is_empty()
                    || (engine.topic(name).ok().map(|t| t.config.incarnation) == incarnation
                        && engine
                            .held_partitions(name)
                            .is_ok_and(|h| wanted.iter().all(|p| h.contains(p))))
            },
            "the topic's replicas to open here",
        )
        .await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Vec<u64>, Error> {
        if !self.is_controller_leader() {
            return Err(self.not_leader());
        }
        // The nodes placed to hold its replicas, waited for down or not.
        let holders: Vec<u64> = {
            let s = self.state();
            let Some(t) = s.topics.get(name) else {
                return Err(Error::NotFound(format!("topic {name:?} does not exist")));
            };
            let mut h: Vec<u64> = t
                .partitions
                .iter()
                .flat_map(|p| p.replicas.iter().map(|r| r.node))
                .filter(|n| s.nodes.get(n).is_some_and(|e| !e.removed))
                .collect();
            h.sort_unstable();
            h.dedup();
            h
        };
        let index = self
            .propose(&Command::DeleteTopic {
                name: name.to_owned(),
            })
            .await?;
        // Dropped here at once (the reconcile loop does it on the other nodes).
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        match engine.delete_topic(name).await {
            Ok(()) | Err(engine::Error::UnknownTopic(_)) => {}
            Err(e) => return Err(Error::Local(e)),
        }
        let lagging = self
            .wait_applied_everywhere(index, DELETE_SPREAD, &holders)
            .await;
        Ok(lagging
            .into_iter()
            .filter(|n| holders.contains(n))
            .collect())
    }

    /// Changes a topic's retention limits: committed in the controller's log, given at once
    /// to this node's replicas (each node's reconcile pass gives them to its own, which
    /// apply them at once), and answered once every live node has learned of it (as for a
    /// deletion), so that a describe on any node shows them. Returns the topic's settings.
    pub async fn alter_topic(
        &self,
        name: &str,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> Result<LogConfig, Error> {
        if !self.is_controller_leader() {
            return Err(self.not_leader());
        }
        if !self.state().topics.contains_key(name) {
            return Err(Error::NotFound(format!("topic {name:?} does not exist")));
        }
        let index = self
            .propose(&Command::AlterTopic {
                name: name.to_owned(),
                retention_bytes,
                retention_ms,
            })
            .await?;
        let Some(config) = self.state().topics.get(name).map(|t| t.config.clone()) else {
            return Err(Error::NotFound(format!(
                "topic {name:?} was deleted meanwhile"
            )));
        };
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        match engine
            .set_retention(name, config.retention_bytes, config.retention_ms)
            .await
        {
            Ok(_) | Err(engine::Error::UnknownTopic(_)) => {}
            Err(e) => return Err(Error::Local(e)),
        }
        self.wait_applied_everywhere(index, DELETE_SPREAD, &[])
            .await;
        Ok(config)
    }

    /// Waits (up to `within`) until every live node has learned that controller entry
    /// `index` is committed, then for it to apply it. A node that has applied a DeleteTopic
    /// refuses appends to the topic (the Raft seam's fence) before its reconcile pass drops
    /// the replicas, so a produce sent after the answer is never acknowledged for a topic
    /// on its way out. Each node's commit index is the one it reported to this leader
    /// (raft-rs tracks it from every answer); a node learns the commit with the leader's
    /// next message, and applies it in the Ready round that makes the entry durable there,
    /// at most one round after it answered: [`APPLY_SETTLE`] covers that round. The nodes of
    /// `also` are waited for whether gossip shows them live or not: a node down or cut off
    /// that holds replicas of a deleted topic may, until it learns of the deletion, still
    /// take an append to the topic (for a partition whose replicas it still reaches), which
    /// goes with the topic once it does. Returns the nodes that had not learned of it.
    async fn wait_applied_everywhere(
        &self,
        index: u64,
        within: Duration,
        also: &[u64],
    ) -> Vec<u64> {
        let until = Instant::now() + within;
        let me = self.id();
        // What the last look while leading found (none yet: every node of `also`).
        let mut last: Vec<u64> = also.iter().copied().filter(|&n| n != me).collect();
        loop {
            if !self.is_controller_leader() {
                // Only a leader's board knows the others' commit indexes.
                log::info!(
                    "controller entry {index}: this node no longer leads the controller; \
                     answering with what it saw while it did (nodes {last:?} behind)"
                );
                return last;
            }
            let live = {
                let Ok(s) = self.state.read() else {
                    return last;
                };
                let mut live = self.live_nodes(&s);
                live.extend_from_slice(also);
                live.sort_unstable();
                live.dedup();
                live
            };
            let view = self.peers.board.get(0);
            let lagging: Vec<u64> = live
                .into_iter()
                .filter(|&n| n != me)
                .filter(|&n| {
                    !view
                        .as_ref()
                        .is_some_and(|v| v.committed.iter().any(|&(x, c)| x == n && c >= index))
                })
                .collect();
            if lagging.is_empty() {
                glommio::timer::sleep(APPLY_SETTLE).await;
                return lagging;
            }
            last.clone_from(&lagging);
            if Instant::now() >= until || self.stopping() {
                log::warn!(
                    "controller entry {index}: nodes {lagging:?} had not learned of it after \
                     {within:?}; answering without them"
                );
                return lagging;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes node `which` (a Raft id or a node name) from the cluster; the reconcile loop
    /// re-creates its replicas on other live nodes. Returns its Raft id, and whether it was
    /// removed before (a second removal changes nothing).
    pub async fn remove_node(&self, which: &str) -> Result<(u64, bool), Error> {
        if !self.is_controller_leader() {
            return Err(self.not_leader());
        }
        let s = self.state();
        let id = match which.parse::<u64>() {
            Ok(id) if s.nodes.contains_key(&id) => id,
            _ => node_named(&s, which, &self.live_nodes(&s))?,
        };
        if s.nodes.get(&id).is_some_and(|n| n.removed) {
            return Ok((id, true));
        }
        if s.active_nodes() == [id] {
            return Err(Error::Refused(format!(
                "node {id} is the cluster's last node"
            )));
        }
        self.propose(&Command::RemoveNode { id }).await?;
        Ok((id, false))
    }

    /// Proposes a configuration change of `group` (led here, on `shard`).
    pub async fn conf_change(
        &self,
        group: u64,
        shard: usize,
        cc: raft::eraftpb::ConfChangeV2,
    ) -> Result<u64, Error> {
        let engine = self.engine.get().ok_or(Error::Stopped)?;
        let (reply, rx) = oneshot::channel();
        engine
            .deliver(shard, Box::new(ControlMsg::ConfChange { group, cc, reply }))
            .map_err(|e| Error::Refused(e.to_string()))?;
        let r = match rx.await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Stopped),
        };
        let counter = if r.is_ok() {
            &self.stats.conf_changes
        } else {
            &self.stats.conf_changes_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Asks this node's leader of `group` (on `shard`) to hand leadership to `to`.
    pub fn transfer_leader(&self, group: u64, shard: usize, to: u64) {
        if let Some(engine) = self.engine.get() {
            let _ = engine.deliver(shard, Box::new(ControlMsg::TransferLeader { group, to }));
        }
    }

    /// Hands the leadership of every group led here that has other voters to a caught-up
    /// one, and waits (at most `within`) until this node leads none: a clean stop does not
    /// leave its groups without a leader for an election timeout.
    pub fn hand_off_leadership(&self, within: Duration) {
        let me = self.id();
        let until = Instant::now() + within;
        loop {
            let led: Vec<_> = self
                .peers
                .board
                .all()
                .into_iter()
                .filter(|(_, v)| v.role == StateRole::Leader && v.voters.len() > 1)
                .collect();
            if led.is_empty() || Instant::now() >= until {
                if !led.is_empty() {
                    log::warn!("stopping while leading {} groups", led.len());
                }
                return;
            }
            for (group, v) in led {
                let to =
                    v.voters.iter().copied().find(|&n| {
                        n != me && v.matched.iter().any(|&(x, m)| x == n && m >= v.commit)
                    });
                if let Some(to) = to {
                    self.transfer_leader(group, v.shard, to);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The group id and partition of every partition placement names.
    pub fn partitions(s: &ClusterState) -> Vec<(PartitionId, u64)> {
        let mut out = Vec::new();
        for (name, t) in &s.topics {
            for p in 0..t.partitions.len() as u32 {
                let id = PartitionId::new(name.as_str(), p);
                let g = group_id(&id, t.config.incarnation);
                out.push((id, g));
            }
        }
        out
    }
}

fn describe_command(c: &Command) -> String {
    match c {
        Command::Bootstrap { cluster_id, node } => {
            format!("bootstrap cluster {cluster_id}, node 1 = {}", node.name)
        }
        Command::Register { node } => format!(
            "register {} ({}) at {}",
            node.name, node.member, node.rpc_addr
        ),
        Command::CreateTopic {
            name,
            replication_factor,
            partitions,
            ..
        } => format!(
            "create topic {name:?}: {} partitions, replication factor {replication_factor}",
            partitions.len()
        ),
        Command::DeleteTopic { name } => format!("delete topic {name:?}"),
        Command::AlterTopic {
            name,
            retention_bytes,
            retention_ms,
        } => format!(
            "alter topic {name:?}: retention bytes {}, retention ms {}",
            retention_bytes.map_or("kept".into(), |b| b.to_string()),
            retention_ms.map_or("kept".into(), |ms| ms.to_string()),
        ),
        Command::SetReplicas {
            topic,
            partition,
            replicas,
            ..
        } => format!(
            "replicas of {topic}/{partition}: nodes {:?}",
            replicas.iter().map(|r| r.node).collect::<Vec<_>>()
        ),
        Command::RemoveNode { id } => format!("remove node {id}"),
        Command::ReplicaStopped {
            topic,
            partition,
            node,
        } if state::is_controller(topic, *partition) => format!(
            "the controller's replica on node {node} stopped: left out of the controller's \
             group until it runs again"
        ),
        Command::ReplicaRecovered {
            topic,
            partition,
            node,
        } if state::is_controller(topic, *partition) => {
            format!("the controller's replica on node {node} runs: counted in its group")
        }
        Command::ReplicaStopped {
            topic,
            partition,
            node,
        } => format!("replica of {topic}/{partition} on node {node} stopped: to be moved"),
        Command::ReplicaRecovered {
            topic,
            partition,
            node,
        } => format!("replica of {topic}/{partition} on node {node} runs again: stays"),
        Command::Checkpoint { at, .. } => match c.checkpoint_body() {
            Some(Ok(CheckpointBody::Whole(state))) => format!(
                "checkpoint of the state through index {at} ({} nodes, {} topics)",
                state.nodes.len(),
                state.topics.len()
            ),
            Some(Ok(CheckpointBody::Part { part, parts, chunk })) => format!(
                "checkpoint of the state through index {at}, part {part} of {parts} ({} bytes)",
                chunk.len()
            ),
            _ => format!("checkpoint of the state through index {at}, malformed"),
        },
    }
}

/// The RPC address gossip lists for `member` (a membership id) while it is live.
fn gossip_rpc_addr(list: &crate::membership::MemberList, member: &str) -> Option<String> {
    list.members
        .iter()
        .find(|m| m.state.is_live() && m.node_id.to_string() == member)
        .map(|m| m.rpc_addr.to_string())
}

fn log_applied(index: u64, c: &Command, outcome: &Applied, replay: bool) {
    let what = describe_command(c);
    let again = if replay { " (replay)" } else { "" };
    match outcome {
        Applied::Done | Applied::Checkpoint if replay => {
            log::debug!("controller: applied {index}{again}: {what}")
        }
        Applied::Done | Applied::Checkpoint => log::info!("controller: applied {index}: {what}"),
        Applied::Again | Applied::AwaitingCheckpoint => {
            log::debug!("controller: {index} skipped ({outcome:?}){again}: {what}")
        }
        Applied::StaleCheckpoint { at } => log::info!(
            "controller: {index}: a checkpoint taken through {at} landed later (or a part of it \
             out of its place): ignored{again}"
        ),
        Applied::CheckpointPart { .. } => {
            log::debug!("controller: applied {index}{again}: {what}, kept until its last part")
        }
        Applied::BrokenCheckpoint { at, why } => log::error!(
            "controller: {index}: the parts of a checkpoint taken through {at} make no state \
             ({why}): ignored{again}"
        ),
        Applied::Diverged => log::error!(
            "controller: {index}: the checkpoint differs from the state held here; its \
             content is taken{again}"
        ),
    }
}

/// Whether a controller replica whose view is `v`, on a node whose applied state names
/// cluster `cluster_id`, was started afresh ([`ClusterNode::reset_controller_replica`], or
/// reopened empty at start after a reset cut short): running, its configuration names no
/// voter and no learner (a bootstrapping first node's names itself from its first entry, and
/// a log kept across a restart holds the configuration it had), and no state applied. Such
/// a replica waits for the controller's leader to add it back, as a joining node's: the
/// cluster exists, and its first node has nothing to bootstrap.
pub fn started_afresh(v: Option<&crate::raft::board::GroupView>, cluster_id: &str) -> bool {
    v.is_some_and(|v| v.stopped.is_none() && v.voters.is_empty() && v.learners.is_empty())
        && cluster_id.is_empty()
}

/// Whether a controller replica whose view is `v`, on a node whose applied state names
/// cluster `cluster_id`, stopped for good with no state applied: its log marked lost at start
/// (its acknowledged entries gone, so nothing to replay), or failed before anything was. It
/// must neither vote nor bootstrap (it opens stopped for that); the cluster exists, so the
/// first node has nothing to bootstrap either, and the node recovers it as one that stopped
/// while running: reported, left out, started afresh, added back
/// ([`reconcile`]'s `controller_replica`).
pub fn lost_without_state(v: Option<&crate::raft::board::GroupView>, cluster_id: &str) -> bool {
    v.is_some_and(|v| v.stopped == Some(crate::raft::group::Stopped::Failed))
        && cluster_id.is_empty()
}

/// Whether node `id`'s reconcile loop, its applied state naming cluster `cluster_id`, runs
/// the step for its own controller replica (view `v`) although it holds no state: the node
/// knows its id (`cluster.meta`), and its replica was found lost
/// ([`lost_without_state`]), or runs started afresh ([`started_afresh`]), or is being
/// started afresh (`recovering`: closed by a start afresh that failed, no view left). Every
/// other step needs the state; this one needs only the members (the registration's answer
/// and gossip), and is what brings the state back.
pub fn recovers_without_state(
    id: u64,
    cluster_id: &str,
    v: Option<&crate::raft::board::GroupView>,
    recovering: bool,
) -> bool {
    id != 0
        && cluster_id.is_empty()
        && (recovering || lost_without_state(v, cluster_id) || started_afresh(v, cluster_id))
}

/// The nodes of the transport's address `book` whose address is among the `live` RPC
/// addresses gossip lists, by id: who a node holding no registry can relay to.
fn book_live(book: &HashMap<u64, PeerAddr>, live: &[SocketAddr]) -> Vec<u64> {
    let mut ids: Vec<u64> = book
        .iter()
        .filter(|(_, p)| live.contains(&p.addr))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether node `me`'s replica of partition `p`, opened as its topic is created here, starts
/// with the partition's first configuration: it is one of the first voters, still placed
/// here, and never placed elsewhere since (`PartitionEntry::departed`).
fn first_configuration(p: &state::PartitionEntry, me: u64) -> bool {
    p.initial.contains(&me) && p.nodes().contains(&me) && !p.departed.contains(&me)
}

/// The hooks the shards call.
struct NodeHooks(Arc<ClusterNode>);

impl ClusterHooks for NodeHooks {
    fn voters(&self, id: &PartitionId) -> Option<Vec<u64>> {
        let node = &self.0;
        let me = node.id();
        if &*id.topic == CONTROLLER_TOPIC {
            return Some(if node.bootstrapper.load(Ordering::Relaxed) {
                vec![me]
            } else {
                Vec::new()
            });
        }
        // Not listed in the state applied here (a creation this node's controller has not
        // applied yet, a deletion it has): never this node alone, which would elect itself
        // leader of a group whose other replicas hold other entries. It learns its
        // configuration from a leader, if there is one.
        let Ok(s) = node.state.read() else {
            return Some(Vec::new());
        };
        let Some(p) = s
            .topics
            .get(&*id.topic)
            .and_then(|t| t.partitions.get(id.partition as usize))
        else {
            return Some(Vec::new());
        };
        // Only a replica placed here starts with the first configuration (the topic's
        // creation). One opened as a replica added later (`open_added_partition`: among them
        // one placed here again after it moved away and its data was removed) knows no
        // configuration until a leader adds it: with the first one and no vote record it
        // could vote as a member it no longer is. So does one placed here again after it
        // departed, in a topic dropped here meanwhile (its topic created here anew).
        let adding = node.adding.lock().map(|a| a.contains(id)).unwrap_or(true);
        if first_configuration(p, me) && !adding {
            Some(p.initial.clone())
        } else {
            Some(Vec::new())
        }
    }

    fn knows(&self, id: &PartitionId) -> bool {
        &*id.topic == CONTROLLER_TOPIC
            || self.0.state.read().is_ok_and(|s| {
                s.topics
                    .get(&*id.topic)
                    .is_some_and(|t| (id.partition as usize) < t.partitions.len())
            })
    }

    fn applied(&self, index: u64, command: &[u8]) {
        self.0.apply(index, command);
    }

    fn replay_start(&self, first_index: u64, last_index: u64) {
        self.0.replay_start(first_index, last_index);
    }

    fn replay_end(&self) {
        self.0.replay_end();
    }

    fn checkpoint_index(&self) -> u64 {
        self.0.state.read().map(|s| s.last_checkpoint).unwrap_or(0)
    }

    fn checkpoint(&self, at: u64, max_uncommitted_size: u64) -> Option<Vec<Vec<u8>>> {
        self.0.checkpoint(at, max_uncommitted_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::entry::CONTROLLER_RECORD_OVERHEAD;

    #[test]
    fn the_first_node_bootstraps_unless_its_controller_replica_was_started_afresh() {
        let view = |voters: Vec<u64>, learners: Vec<u64>| crate::raft::board::GroupView {
            leader: raft::INVALID_ID,
            ..crate::raft::board::GroupView::follower(0, voters, learners)
        };
        // Started afresh (no configuration, no state): the cluster exists, nothing to
        // bootstrap; its start does not wait for a leader it cannot have yet.
        assert!(started_afresh(Some(&view(vec![], vec![])), ""));
        // A new cluster's first node (itself the only voter), or a crash before its
        // bootstrap command committed: bootstraps.
        assert!(!started_afresh(Some(&view(vec![1], vec![])), ""));
        // A restart with its log: the state replayed, or the configuration it had.
        assert!(!started_afresh(Some(&view(vec![], vec![])), "c"));
        assert!(!started_afresh(Some(&view(vec![2, 3], vec![1])), ""));
        // Not open yet, or stopped: as before.
        assert!(!started_afresh(None, ""));
        let stopped = crate::raft::board::GroupView {
            stopped: Some(crate::raft::group::Stopped::Failed),
            ..view(vec![], vec![])
        };
        assert!(!started_afresh(Some(&stopped), ""));
    }

    #[test]
    fn a_controller_replica_lost_at_start_is_recovered_without_state_and_never_bootstraps() {
        let view = |stopped: Option<crate::raft::group::Stopped>, voters: Vec<u64>| {
            crate::raft::board::GroupView {
                leader: raft::INVALID_ID,
                stopped,
                ..crate::raft::board::GroupView::follower(0, voters, vec![])
            }
        };
        let failed = Some(crate::raft::group::Stopped::Failed);
        let full = Some(crate::raft::group::Stopped::DiskFull);
        // Its log marked lost at start: stopped, nothing replayed. The first node does not
        // bootstrap it, and the loop looks after it although it holds no state.
        assert!(lost_without_state(Some(&view(failed, vec![])), ""));
        assert!(recovers_without_state(
            2,
            "",
            Some(&view(failed, vec![])),
            false
        ));
        // A state applied: the whole loop runs, as for a replica that stopped while running.
        assert!(!lost_without_state(Some(&view(failed, vec![1, 2, 3])), "c"));
        assert!(!recovers_without_state(
            2,
            "c",
            Some(&view(failed, vec![])),
            false
        ));
        // A full disk resumes by itself; a replica not open yet is waited for.
        assert!(!lost_without_state(Some(&view(full, vec![])), ""));
        assert!(!recovers_without_state(
            2,
            "",
            Some(&view(full, vec![])),
            false
        ));
        assert!(!recovers_without_state(2, "", None, false));
        // Started afresh (no configuration, no state), or closed by a start afresh that
        // failed: still looked after, until the state comes back.
        assert!(recovers_without_state(
            2,
            "",
            Some(&view(None, vec![])),
            false
        ));
        assert!(recovers_without_state(2, "", None, true));
        // A first node bootstrapping (itself the only voter), and a node whose id is not
        // known yet (joining): not this step's.
        assert!(!recovers_without_state(
            1,
            "",
            Some(&view(None, vec![1])),
            false
        ));
        assert!(!recovers_without_state(
            0,
            "",
            Some(&view(failed, vec![])),
            false
        ));
    }

    #[test]
    fn with_no_registry_relays_go_to_the_nodes_gossip_lists_live() {
        let addr = |i: u8| -> SocketAddr { format!("127.0.0.{i}:9000").parse().unwrap() };
        let book: std::collections::HashMap<u64, PeerAddr> = [1u8, 2, 4]
            .into_iter()
            .map(|i| {
                let p = PeerAddr {
                    addr: addr(i),
                    server_name: format!("127.0.0.{i}"),
                };
                (u64::from(i), p)
            })
            .collect();
        // Node 4 is down in gossip; 5 is live but not in the book (no Raft id known).
        assert_eq!(book_live(&book, &[addr(2), addr(1), addr(5)]), [1, 2]);
        assert!(book_live(&book, &[]).is_empty());
    }

    #[test]
    fn a_replica_that_departed_never_starts_with_the_first_configuration() {
        let on = |nodes: &[u64]| -> Vec<state::Replica> {
            nodes
                .iter()
                .map(|&node| state::Replica { node, shard: 0 })
                .collect()
        };
        let p = |replicas: &[u64], departed: Vec<u64>| state::PartitionEntry {
            initial: vec![1, 2, 3],
            replicas: on(replicas),
            stopped: Vec::new(),
            departed,
        };
        // At the topic's creation: the first voters, placed here.
        assert!(first_configuration(&p(&[1, 2, 3], vec![]), 3));
        // Not a first voter, or no longer placed here.
        assert!(!first_configuration(&p(&[1, 2, 3, 4], vec![]), 4));
        assert!(!first_configuration(&p(&[1, 2, 4], vec![3]), 3));
        // Placed back after it departed (its topic dropped here meanwhile): no
        // configuration, added as a learner by the group's leader.
        assert!(!first_configuration(&p(&[1, 2, 3], vec![3, 4]), 3));
        assert!(first_configuration(&p(&[1, 2, 3], vec![3, 4]), 2));
    }

    fn entry(i: u64) -> NodeEntry {
        NodeEntry {
            member: format!("member-{i}"),
            name: format!("n{i}"),
            rpc_addr: format!("10.0.0.{}:8400", i % 250),
            gossip_addr: format!("10.0.0.{}:8401", i % 250),
            shards: 1,
            removed: false,
        }
    }

    /// `cluster remove NAME` after a wiped node rejoined under its old name: two entries
    /// not removed are refused (the running one was removed before), one is taken, and
    /// removed ones count only when no other is left.
    #[test]
    fn a_name_two_active_nodes_share_is_refused() {
        let mut s = ClusterState::default();
        let named = |i: u64, name: &str, removed: bool| NodeEntry {
            name: name.into(),
            removed,
            ..entry(i)
        };
        s.nodes.insert(1, named(1, "n1", false));
        s.nodes.insert(3, named(3, "n3", false));
        s.nodes.insert(4, named(4, "n3", false));
        match node_named(&s, "n3", &[1, 4]) {
            Err(Error::Refused(m)) => {
                assert!(m.contains("nodes 3 (not live) and 4 (live)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(node_named(&s, "n1", &[1, 4]).ok(), Some(1));
        s.nodes.insert(3, named(3, "n3", true));
        assert_eq!(node_named(&s, "n3", &[1, 4]).ok(), Some(4));
        s.nodes.insert(4, named(4, "n3", true));
        assert_eq!(node_named(&s, "n3", &[1]).ok(), Some(4));
        assert!(matches!(
            node_named(&s, "n9", &[1]),
            Err(Error::NotFound(_))
        ));
    }

    /// A node whose controller state holds `commands` commands (a bootstrap, then
    /// registrations), applied through the hook's path, at indexes 1..=commands.
    fn node_with(commands: u64) -> Arc<ClusterNode> {
        let n = ClusterNode::new(
            Peers::default(),
            Duration::from_secs(600),
            Duration::from_secs(600),
        );
        n.set_id(1);
        n.apply(
            1,
            &Command::Bootstrap {
                cluster_id: "c".into(),
                node: entry(1),
            }
            .encode(),
        );
        for i in 2..=commands {
            n.apply(i, &Command::Register { node: entry(i) }.encode());
        }
        n
    }

    /// Entry bytes (what raft-rs counts) of a checkpoint's commands.
    fn entry_bytes(parts: &[Vec<u8>]) -> u64 {
        parts
            .iter()
            .map(|p| (p.len() + CONTROLLER_RECORD_OVERHEAD) as u64)
            .sum()
    }

    #[test]
    fn a_checkpoint_whose_parts_exceed_the_budget_is_not_proposed() {
        let n = node_with(40);
        n.checkpoint_part_bytes.store(512, Ordering::Relaxed);
        let at = n.state().applied;
        let parts = Command::checkpoint_parts(&n.state(), at, 512).expect("parts");
        assert!(parts.len() > 2, "{} parts", parts.len());
        let bytes = entry_bytes(&parts);
        // The budget is half of raft-rs's limit: a limit of twice the bytes takes it, byte
        // for byte the commands checkpoint_parts gives.
        assert_eq!(checkpoint_budget(2 * bytes), bytes);
        assert_eq!(n.checkpoint(at, 2 * bytes), Some(parts.clone()));
        assert!(!n.checkpoint_too_large.load(Ordering::Relaxed));
        // A budget one byte short: no checkpoint at all, not its first parts; said once.
        assert_eq!(n.checkpoint(at, 2 * bytes - 2), None);
        assert!(n.checkpoint_too_large.load(Ordering::Relaxed));
        assert_eq!(n.checkpoint(at, 2 * bytes - 2), None);
        // Under the limit the parts alone would fit in (raft-rs takes them while their sum is
        // at most its limit), but not with the margin.
        assert_eq!(n.checkpoint(at, bytes), None);
        // It fits again once the limit allows it.
        assert_eq!(n.checkpoint(at, 2 * bytes), Some(parts));
        assert!(!n.checkpoint_too_large.load(Ordering::Relaxed));
    }

    fn register(n: &ClusterNode, index: u64) {
        n.apply(index, &Command::Register { node: entry(index) }.encode());
    }

    #[test]
    fn after_a_checkpoint_cut_short_the_next_waits_for_checkpoint_every_more_commands() {
        let limit = crate::raft::group::GroupConfig::default().max_uncommitted_size;
        let n = node_with(4);
        n.checkpoint_every.store(5, Ordering::Relaxed);
        n.checkpoint_part_bytes.store(256, Ordering::Relaxed);
        assert!(!n.checkpoint_due(&n.state()));
        register(&n, 5);
        assert!(n.checkpoint_due(&n.state()));
        // Asked for, given in parts: not due again while they are on their way.
        let parts = n.checkpoint(5, limit).expect("a checkpoint");
        assert!(parts.len() >= 2, "{} parts", parts.len());
        assert!(!n.checkpoint_due(&n.state()));
        // Its first part lands, then a command where its second had to: cut, a no-op.
        n.apply(6, &parts[0]);
        register(&n, 7);
        let s = n.state();
        assert_eq!((s.last_checkpoint, s.since_checkpoint), (0, 6));
        // Not asked again until 5 more commands since the try (5 then): at 10.
        for index in 8..=10 {
            assert!(!n.checkpoint_due(&n.state()), "{:?}", n.state());
            register(&n, index);
        }
        assert_eq!(n.state().since_checkpoint, 9);
        assert!(!n.checkpoint_due(&n.state()));
        register(&n, 11);
        assert!(n.checkpoint_due(&n.state()));
        // This one lands whole: taken, and the next is due 5 commands after it, as ever.
        let parts = n.checkpoint(11, limit).expect("a checkpoint");
        for (index, part) in (12..).zip(&parts) {
            n.apply(index, part);
        }
        let s = n.state();
        assert_eq!((s.last_checkpoint, s.since_checkpoint), (12, 0));
        let mut index = 12 + parts.len() as u64;
        for _ in 0..4 {
            register(&n, index);
            index += 1;
            assert!(!n.checkpoint_due(&n.state()));
        }
        register(&n, index);
        assert!(n.checkpoint_due(&n.state()));
    }

    #[test]
    fn a_checkpoint_refused_as_too_large_is_tried_again_only_checkpoint_every_commands_later() {
        let n = node_with(5);
        n.checkpoint_every.store(5, Ordering::Relaxed);
        assert!(n.checkpoint_due(&n.state()));
        assert_eq!(n.checkpoint(5, 64), None);
        for index in 6..=9 {
            register(&n, index);
            assert!(!n.checkpoint_due(&n.state()));
        }
        register(&n, 10);
        assert!(n.checkpoint_due(&n.state()));
        // Off: never due.
        n.checkpoint_every.store(0, Ordering::Relaxed);
        assert!(!n.checkpoint_due(&n.state()));
    }

    #[test]
    fn a_checkpoint_of_one_command_is_proposed_within_the_default_limit() {
        let n = node_with(3);
        let limit = crate::raft::group::GroupConfig::default().max_uncommitted_size;
        let at = n.state().applied;
        let c = n.checkpoint(at, limit).expect("a checkpoint");
        assert_eq!(c, vec![Command::checkpoint(&n.state(), at).encode()]);
        // None for a state applied past `at`.
        assert_eq!(n.checkpoint(at - 1, limit), None);
    }
}
