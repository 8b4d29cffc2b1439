//! The Raft implementation of the partition seam (`engine::seam::Partitions` and `Topics`):
//! what the server talks to when every partition is a Raft group.
//!
//! Routing is the engine's (a typed shard message to the partition's owner, or in place);
//! on the owner, the engine hands each append to the shard's Raft replication layer
//! ([`super::replica`]), which proposes it, and answers once the entry is committed and
//! applied: the partition's visible mark is the group's applied offset, so readers (the
//! engine's reads and waits, unchanged) never see an uncommitted entry. Topic administration
//! is the engine's catalog on a node that is a cluster of one.
//!
//! Any node serves any client, here, below the handlers: an append for a partition this node
//! does not lead is forwarded to the leader ([`super::forward`]), so Produce, ProduceBatch and
//! ProduceStream get it alike; a read past this replica's visible end first learns the
//! leader's commit index (ReadIndex, [`Partitions::read_barrier`]) and waits until this
//! replica has applied that far, so a committed offset reads on every node and an offset
//! past the commit index is out of range on every node.
//!
//! Build the engine with [`RaftReplication`](super::RaftReplication) as its replication hook
//! ([`engine_config`]), then this factory over its handle.

use super::forward::{self, Forwarder, RemoteRead};
use super::replica::{RaftReplication, CONTROLLER_TOPIC};
use super::transport::Peers;
use crate::cluster::ClusterNode;
use engine::seam::local::{LocalFactory, LocalPartitions};
use engine::seam::{
    Appended, Chunk, EncodedBatch, Error, Factory, LocalBoxFuture, NodeRef, PartitionId,
    PartitionState, Partitions, PastEnd, ReadLimits, Result, Seam, TopicChange, TopicConfig,
    TopicDeleted, TopicInfo, Topics,
};
use engine::shard::ReplicationHook;
use engine::{EngineConfig, EngineHandle};
use proto::proglog::raft::v1::read_response;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `config` with every partition replicated by Raft (a cluster of one unless told more).
pub fn engine_config(mut config: EngineConfig, replication: RaftReplication) -> EngineConfig {
    config.replication = Some(ReplicationHook(Arc::new(replication)));
    config
}

/// Builds [`RaftPartitions`] on whichever executor (or thread) asks.
#[derive(Clone)]
pub struct RaftFactory {
    local: LocalFactory,
    cluster: Option<Arc<ClusterNode>>,
    node_id: u64,
    peers: Peers,
}

impl RaftFactory {
    /// `engine` must run with the Raft replication hook ([`engine_config`]); `node` is this
    /// node as clients reach it. A cluster of one (Raft node 1) until [`with_peers`]
    /// (Self::with_peers).
    pub fn new(engine: EngineHandle, node: NodeRef) -> RaftFactory {
        RaftFactory {
            local: LocalFactory::new(engine, node),
            cluster: None,
            node_id: 1,
            peers: Peers::default(),
        }
    }

    /// Topic administration through the controller of `cluster`, and NOT_LEADER answers
    /// that carry the leader's address.
    pub fn with_cluster(mut self, cluster: Arc<ClusterNode>) -> RaftFactory {
        self.cluster = Some(cluster);
        self
    }

    /// This node's Raft id (until the transport's `self_id` says another) and the other
    /// nodes (the replication's own [`Peers`]): appends for partitions led elsewhere are
    /// forwarded to their leaders.
    pub fn with_peers(mut self, node_id: u64, peers: Peers) -> RaftFactory {
        self.node_id = node_id;
        self.peers = peers;
        self
    }
}

impl Factory for RaftFactory {
    fn build(&self) -> Seam {
        let p = Rc::new(RaftPartitions {
            local: self.local.local(),
            cluster: self.cluster.clone(),
            forward: match &self.cluster {
                Some(c) => {
                    let c = Arc::clone(c);
                    Forwarder::new(self.node_id, self.peers.clone())
                        .with_incarnations(Arc::new(move |topic| c.incarnation_of(topic)))
                }
                None => Forwarder::new(self.node_id, self.peers.clone()),
            },
        });
        Seam {
            partitions: p.clone(),
            topics: p,
        }
    }
}

/// The Raft seam of one executor.
pub struct RaftPartitions {
    local: Rc<LocalPartitions>,
    cluster: Option<Arc<ClusterNode>>,
    /// This executor's connections to leaders.
    forward: Forwarder,
}

/// The answer to an append or read of a topic whose deletion this node has applied.
fn deleted(id: &PartitionId) -> Error {
    Error::NotFound(format!("topic {:?} was deleted", &*id.topic))
}

/// Why a replica open here takes no append for its topic ([`RaftPartitions::fence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    Deleted,
    Stale,
}

/// The controller's log is no client's business: every call naming it gets this answer.
fn check_not_controller(id: &PartitionId) -> Result<()> {
    check_not_controller_topic(&id.topic)
}

fn check_not_controller_topic(topic: &str) -> Result<()> {
    if topic == CONTROLLER_TOPIC {
        return Err(engine::seam::Error::InvalidArgument(format!(
            "topic {CONTROLLER_TOPIC:?} is the cluster's own (its controller's log): it cannot \
             be read, written, described, altered or deleted"
        )));
    }
    Ok(())
}

/// Whether this node has joined its cluster and caught up with the controller's log, or why
/// not. Until then it knows neither every topic nor where partitions lead: it is not ready
/// (`/readyz`, gRPC health), and a topic it does not hold yet is no proof that the topic does
/// not exist (see [`RaftPartitions::unknown_here`]). "Caught up" is what a follower can know:
/// the controller has a leader it heard from, everything committed that it heard of is
/// applied, and the registry it applied holds this node. (Not: at the address it advertises
/// now. A node restarted under a new address registers it again once it serves, and a lone
/// node, or one without gossip, may never; the others reach it through gossip's address
/// meanwhile.)
pub fn caught_up(c: &ClusterNode) -> std::result::Result<(), String> {
    let id = c.id();
    if id == 0 {
        return Err("not joined to a cluster yet".into());
    }
    let Some(view) = c.controller() else {
        return Err("the controller group is not open here yet".into());
    };
    if view.leader == raft::INVALID_ID {
        return Err("the controller has no leader known to this node".into());
    }
    if view.applied < view.commit {
        return Err(format!(
            "catching up with the controller's log (applied {} of {})",
            view.applied, view.commit
        ));
    }
    if !c.state().nodes.contains_key(&id) {
        return Err(format!(
            "the controller's registry does not hold this node (node {id}) yet"
        ));
    }
    Ok(())
}

/// Whether this node's controller state is current enough to serve appends and reads of
/// the replicas it holds, or why not. A restarted node's state is its log's, which may
/// predate a topic's deletion (and re-creation) while it was down: its replica of the old
/// topic, alone in its group (replication factor 1), elected itself and acknowledged
/// appends that the deletion then dropped, at offsets the new topic gave out again. So
/// after [`caught_up`], the state must also have applied what a member had applied when it
/// answered this run's registration (`ClusterNode::note_member_applied`; every node with
/// gossip registers at start), unless this node leads the controller (its state is the
/// cluster's). Latched once met: from then on the state follows the controller's log
/// live, as any member's does.
pub fn fresh(c: &ClusterNode) -> std::result::Result<(), String> {
    let (member_applied, latch) = c.freshness();
    if latch.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    caught_up(c)?;
    let applied = c.applied_index();
    if !c.is_controller_leader() {
        if member_applied == 0 {
            return Err("waiting for a member to answer this node's registration".into());
        }
        if applied < member_applied {
            return Err(format!(
                "catching up with the controller's state as of this node's registration \
                 (applied {applied} of {member_applied})"
            ));
        }
    }
    latch.store(true, std::sync::atomic::Ordering::Relaxed);
    c.note_fresh();
    Ok(())
}

/// Whether this node is ready for clients (`/readyz`, gRPC health), or why not: caught up
/// ([`caught_up`]) and [`fresh`], and what the controller placed here is open (the reconcile loop opens
/// it just after the placement applies): a ready node serves the replicas it is meant to
/// hold.
pub fn ready(c: &ClusterNode) -> std::result::Result<(), String> {
    if let Some(why) = c.foreign() {
        return Err(why);
    }
    // Both: `fresh` is latched once met, while readiness follows the controller.
    caught_up(c)?;
    fresh(c)?;
    let s = c.state();
    if s.nodes.get(&c.id()).is_some_and(|n| n.removed) {
        // Placement no longer counts it.
        return Err(crate::cluster::removed_message(c.id()));
    }
    if let Some(engine) = c.engine() {
        for (name, placed) in c.placed_here(&s) {
            let held = engine.held_partitions(&name).unwrap_or_default();
            if let Some(p) = placed.iter().find(|p| !held.contains(p)) {
                return Err(format!("opening partition {name:?}/{p}, placed here"));
            }
        }
    }
    Ok(())
}

/// How a NO_LEADER answer names what it is about: the partition, or the topic when the
/// request named no partition.
fn partition_name(topic: &str, partition: Option<u32>) -> String {
    match partition {
        Some(p) => format!("{topic:?}/{p}"),
        None => format!("{topic:?}"),
    }
}

/// How long a partition the controller placed on other nodes may be unknown there (its
/// topic just created, their replicas opening) before a request for it is NOT_FOUND.
const OPENING_GRACE: Duration = Duration::from_secs(5);

/// The visible end a replica answered a barrier or a wait with.
fn visible_end_of(node: u64, id: &PartitionId, o: read_response::Outcome) -> Result<u64> {
    match o {
        read_response::Outcome::VisibleEnd(v) => Ok(v),
        _ => Err(Error::Internal(format!(
            "node {node} answered a wait on {id} without its visible end"
        ))),
    }
}

impl RaftPartitions {
    /// What a topic or partition this node does not hold means, in a cluster: NotFound only
    /// when the node is caught up with the controller and the controller does not know it
    /// either. A node still joining or catching up answers NO_LEADER (retryable: it refuses
    /// without appending), never NOT_FOUND for a topic it merely has not heard of yet (as a
    /// Kafka broker answers a retriable UNKNOWN_TOPIC_OR_PARTITION while its metadata is
    /// stale). A partition the controller placed elsewhere (or here, not open yet) that its
    /// replicas did not serve either (the forwarding above gave up: not open there within
    /// [`OPENING_GRACE`]) answers NOT_LEADER naming another of its replicas, its preferred
    /// leader first, never this node: that replica serves or redirects to the leader it
    /// knows.
    fn unknown_here(
        &self,
        e: engine::seam::Error,
        topic: &str,
        partition: Option<u32>,
    ) -> engine::seam::Error {
        let (engine::seam::Error::NotFound(_), Some(c)) = (&e, &self.cluster) else {
            return e;
        };
        if caught_up(c).is_err() {
            return engine::seam::Error::NoLeader(partition_name(topic, partition));
        }
        let s = c.state();
        let Some(t) = s.topics.get(topic) else {
            return e;
        };
        let Some(p) = t.partitions.get(partition.unwrap_or(0) as usize) else {
            return e;
        };
        let me = c.id();
        match p.nodes().into_iter().find(|&n| n != me) {
            Some(n) => engine::seam::Error::NotLeader {
                leader_id: Some(n.to_string()),
                leader_addr: c.rpc_addr_of(n),
            },
            None => engine::seam::Error::NoLeader(partition_name(topic, partition)),
        }
    }

    /// Refuses a client's append or read on a node the controller removed while it runs
    /// (`ClusterNode::removed_while_running`): at once, UNAVAILABLE saying so, without the
    /// NO_LEADER reason (a client that retries on it would retry for ever; the node no longer
    /// follows the groups of the partitions it held, and would wait for a leader, then for a
    /// read index, that never comes). Likewise on a node that is a second cluster started by
    /// mistake (`ClusterNode::foreign`).
    fn check_not_removed(&self) -> Result<()> {
        match &self.cluster {
            Some(c) if c.removed_while_running() => Err(Error::Unavailable(format!(
                "{}; send the request to another node",
                crate::cluster::removed_message(c.id())
            ))),
            Some(c) => match c.foreign() {
                Some(why) => Err(Error::Unavailable(format!(
                    "{why}; send the request to another node"
                ))),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Refuses a client's append or read of `id` until this node's controller state is
    /// [`fresh`]: NO_LEADER, retryable (nothing was appended).
    fn check_fresh(&self, id: &PartitionId) -> Result<()> {
        match &self.cluster {
            Some(c) => fresh(c).map_err(|why| {
                log::debug!("partition {id}: refused while {why}");
                Error::NoLeader(partition_name(&id.topic, Some(id.partition)))
            }),
            None => Ok(()),
        }
    }

    /// The nodes the controller placed `id` on, this one aside, preferred leader first.
    fn replicas_elsewhere(&self, id: &PartitionId) -> Vec<u64> {
        let me = self.forward.node_id();
        self.cluster
            .as_ref()
            .and_then(|c| c.replicas_of(&id.topic, id.partition))
            .unwrap_or_default()
            .into_iter()
            .filter(|&n| n != me)
            .collect()
    }

    /// True when the controller placed `id` on other nodes only: this node has no log of it
    /// (or one about to close: a replica moved away), and its appends and reads go to the
    /// nodes placed.
    fn placed_elsewhere(&self, id: &PartitionId) -> bool {
        let me = self.forward.node_id();
        self.cluster
            .as_ref()
            .and_then(|c| c.replicas_of(&id.topic, id.partition))
            .is_some_and(|nodes| !nodes.is_empty() && !nodes.contains(&me))
    }

    /// Whether this node's open replica of `id` may not take appends for the topic its
    /// controller state lists:
    /// - [`Fence::Deleted`]: the state no longer lists the topic (deleted; the reconcile pass
    ///   has not dropped the replica yet). Refused from the moment the deletion applies here
    ///   (a group is open here only for a topic the state listed, and the state drops a
    ///   topic only when deleted), so none is acknowledged after a DeleteTopic answered (it
    ///   waits for every live node to apply it).
    /// - [`Fence::Stale`]: the replica belongs to an earlier topic of that name than the state
    ///   lists (deleted and created again: its group is another one, `replica::group_id`).
    ///   The reconcile pass drops it in a moment and opens the new topic's; meanwhile it takes
    ///   no append for the new topic and answers no read of it.
    ///
    /// `replica` is this node's open replica of `id` (its group and whether it is stopped,
    /// `Board::replica_of`), read before the state: a group it holds was opened after the
    /// state listed its topic, so a state read after it that lacks the topic saw the deletion
    /// (read the other way round, a topic created between the two reads would look deleted).
    fn fence(&self, id: &PartitionId, replica: Option<(u64, bool)>) -> Option<Fence> {
        let c = self.cluster.as_ref()?;
        let (group, _) = replica?;
        match c.listing(&id.topic)? {
            None => Some(Fence::Deleted),
            Some(incarnation)
                if incarnation != 0 && group != super::replica::group_id(id, incarnation) =>
            {
                Some(Fence::Stale)
            }
            Some(_) => None,
        }
    }

    /// Whether a read of `id` is served by another replica: this node holds none of the
    /// topic's listed incarnation. A topic whose deletion this node has applied is NOT_FOUND,
    /// as for an append, rather than served from the replica the next reconcile pass drops.
    fn read_elsewhere_unless_deleted(&self, id: &PartitionId) -> Result<bool> {
        let replica = self.forward.board().replica_of(id);
        match self.fence(id, replica) {
            Some(Fence::Deleted) => Err(deleted(id)),
            Some(Fence::Stale) => Ok(true),
            None => Ok(self.placed_elsewhere(id)),
        }
    }

    /// A read of stored batches from `from`, which this node's replica answered with
    /// `damage` (DATA_LOSS: damaged bytes, or records it lost), served by the partition's
    /// other replicas; `damage` itself where it has none (a single node). The offset is below
    /// this replica's visible end, so committed: a replica asked that has not applied it
    /// yet learns the commit index and waits for it rather than answering an empty chunk
    /// (the remote read is made with `PastEnd::OutOfRange`; a tailing reader would ask again
    /// at once). The damage is logged (at most once a minute per core); the replica stays in
    /// its group: its log is sound for Raft up to its end, and a follower it must send the
    /// damaged entries to stops it then (docs/replication.md, "damage in a sealed segment").
    async fn around_damage(
        &self,
        id: &PartitionId,
        from: u64,
        limits: ReadLimits,
        damage: Error,
    ) -> Result<Chunk> {
        if self.replicas_elsewhere(id).is_empty() {
            return Err(damage);
        }
        if forward::damage_log_due() {
            log::error!(
                "partition {id}: this node's replica cannot serve offset {from} ({damage}); \
                 the read goes to the other replicas (logged at most once a minute per core; \
                 what to do: docs/replication.md, \"damage in a sealed segment\")"
            );
        }
        let why = format!("this node's replica of {id} cannot serve offset {from}: {damage}");
        let asked = ReadLimits {
            past_end: PastEnd::OutOfRange,
            ..limits
        };
        let (node, o) = self
            .read_elsewhere(
                id,
                RemoteRead::Read {
                    from,
                    limits: asked,
                },
                why.clone(),
            )
            .await
            .map_err(|e| match e {
                // Named with the damage here, which is why others were asked.
                Error::Unavailable(m) | Error::NotFound(m) => {
                    Error::Unavailable(format!("{why}; no other replica served it: {m}"))
                }
                e => e,
            })?;
        remote_chunk(node, id, o, from, limits)
    }

    /// [`RaftPartitions::read_elsewhere`] of stored batches from `from`.
    async fn chunk_elsewhere(
        &self,
        id: &PartitionId,
        from: u64,
        limits: ReadLimits,
        why: String,
    ) -> Result<Chunk> {
        let what = RemoteRead::Read { from, limits };
        let (node, o) = self.read_elsewhere(id, what, why).await?;
        remote_chunk(node, id, o, from, limits)
    }

    /// A read of a partition this node holds no replica of, asked of the nodes that hold
    /// one, in turn, until one answers. `NotFound` (`why`) when the controller knows no such
    /// partition.
    async fn read_elsewhere(
        &self,
        id: &PartitionId,
        what: RemoteRead,
        why: String,
    ) -> Result<(u64, read_response::Outcome)> {
        let until = Instant::now() + OPENING_GRACE;
        loop {
            let mut last = Error::NotFound(why.clone());
            let nodes = self.replicas_elsewhere(id);
            for &node in &nodes {
                match self.forward.read_remote(node, id, what).await {
                    Err(e @ (Error::Unavailable(_) | Error::NotFound(_))) => last = e,
                    Err(e) => return Err(e),
                    Ok(o) => return Ok((node, o)),
                }
            }
            // Placed there, but not open there yet (a topic just created): wait a little.
            if nodes.is_empty() || !matches!(last, Error::NotFound(_)) || Instant::now() > until {
                return Err(self.unknown_here(last, &id.topic, Some(id.partition)));
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An append for a partition this node holds no replica of: sent to the nodes the
    /// controller placed it on (its preferred leader first), which take it or name the
    /// leader. `NotFound` (`why`) when the controller knows no such partition either.
    async fn append_elsewhere(
        &self,
        id: &PartitionId,
        batch: EncodedBatch,
        why: String,
    ) -> Result<Appended> {
        let until = Instant::now() + OPENING_GRACE;
        loop {
            let mut last = Error::NotFound(why.clone());
            let nodes = self.replicas_elsewhere(id);
            for &node in &nodes {
                match forward::append_via(&self.local, &self.forward, id, batch.clone(), Some(node))
                    .await
                {
                    // Not sent, or that node has no replica either (yet): the next one.
                    Err(e @ (Error::Unavailable(_) | Error::NotFound(_))) => last = e,
                    r => return r,
                }
            }
            // Placed there, but not open there yet (a topic just created): wait a little.
            if nodes.is_empty() || !matches!(last, Error::NotFound(_)) || Instant::now() > until {
                return Err(self.unknown_here(last, &id.topic, Some(id.partition)));
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A NOT_LEADER answer with the leader's RPC address from the registry. A partition this
    /// node holds no replica of (the controller placed it elsewhere) is not "not found": the
    /// answer names its preferred leader, the best this node knows.
    fn with_leader_addr(&self, id: &PartitionId, e: engine::seam::Error) -> engine::seam::Error {
        if let (engine::seam::Error::NotFound(_), Some(c)) = (&e, &self.cluster) {
            let s = c.state();
            let placed = s.partition(id).map(|p| p.nodes());
            if let Some(nodes) = placed.filter(|n| !n.contains(&c.id())) {
                if let Some(&first) = nodes.first() {
                    return engine::seam::Error::NotLeader {
                        leader_id: Some(first.to_string()),
                        leader_addr: c.rpc_addr_of(first),
                    };
                }
            }
        }
        match (e, &self.cluster) {
            (
                engine::seam::Error::NotLeader {
                    leader_id: Some(id),
                    leader_addr: None,
                },
                Some(c),
            ) => {
                let leader_addr = id.parse::<u64>().ok().and_then(|n| c.rpc_addr_of(n));
                engine::seam::Error::NotLeader {
                    leader_id: Some(id),
                    leader_addr,
                }
            }
            (e, _) => e,
        }
    }
}

/// The chunk node `node` answered a read of `id` from `from` with.
fn remote_chunk(
    node: u64,
    id: &PartitionId,
    o: read_response::Outcome,
    from: u64,
    limits: ReadLimits,
) -> Result<Chunk> {
    match o {
        read_response::Outcome::Chunk(c) => Ok(Chunk::from_remote(
            c.runs,
            from,
            c.visible_end,
            limits,
            &format!("node {node}'s replica of {id}"),
        )),
        _ => Err(Error::Internal(format!(
            "node {node} answered a read of {id} without records"
        ))),
    }
}

impl Partitions for RaftPartitions {
    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: EncodedBatch,
    ) -> LocalBoxFuture<'a, Result<Appended>> {
        Box::pin(async move {
            check_not_controller(id)?;
            self.check_not_removed()?;
            self.check_fresh(id)?;
            // Three read locks per append (the board's two, the state's), no view copied.
            let replica = self.forward.board().replica_of(id);
            let fence = self.fence(id, replica);
            if fence == Some(Fence::Deleted) {
                return Err(deleted(id));
            }
            if fence == Some(Fence::Stale) {
                // Its other replicas take it (or name the leader); with none, the new
                // topic's replica here opens within a reconcile pass.
                let why = format!(
                    "partition {id}: this node's replica belongs to a topic of that name \
                     deleted since"
                );
                if self.replicas_elsewhere(id).is_empty() {
                    return Err(Error::NoLeader(format!(
                        "{why}; the new topic's replica here opens in a moment: retry"
                    )));
                }
                return self
                    .append_elsewhere(id, batch, why)
                    .await
                    .map_err(|e| self.with_leader_addr(id, e));
            }
            if self.placed_elsewhere(id) {
                let why = format!("partition {id} has no replica on this node");
                return self
                    .append_elsewhere(id, batch, why)
                    .await
                    .map_err(|e| self.with_leader_addr(id, e));
            }
            let stopped = replica.is_some_and(|(_, stopped)| stopped);
            if stopped && !self.replicas_elsewhere(id).is_empty() {
                // This node's replica stopped (its log failed, or its disk is full), not the
                // partition: its other replicas elected a leader (or are electing one), which
                // takes the append as from a node holding no replica. This replica knows no
                // leader to name. (Refused here for a full disk, a producer that found this
                // node once kept being refused while the others took appends.)
                let why = format!("partition {id}: this node's replica is stopped");
                return self
                    .append_elsewhere(id, batch, why)
                    .await
                    .map_err(|e| self.with_leader_addr(id, e));
            }
            // Proposed by the owner's group when this node leads, else by the leader's.
            match forward::append(&self.local, &self.forward, id, batch.clone()).await {
                Err(Error::NotFound(why)) => self.append_elsewhere(id, batch, why).await,
                r => r,
            }
            .map_err(|e| self.with_leader_addr(id, e))
            .map_err(|e| self.unknown_here(e, &id.topic, Some(id.partition)))
        })
    }

    fn read<'a>(
        &'a self,
        id: &'a PartitionId,
        from: u64,
        limits: ReadLimits,
    ) -> LocalBoxFuture<'a, Result<Chunk>> {
        Box::pin(async move {
            check_not_controller(id)?;
            self.check_not_removed()?;
            self.check_fresh(id)?;
            // Past what this replica has applied, the offset may be committed already (a
            // follower learns the commit index a heartbeat late): `read_here` asks.
            let here = if self.read_elsewhere_unless_deleted(id)? {
                Err(Error::NotFound(format!(
                    "partition {id} has no replica of this topic on this node"
                )))
            } else {
                forward::read_here(&self.local, id, from, limits).await
            };
            match here {
                Err(Error::NotFound(why)) => self.chunk_elsewhere(id, from, limits, why).await,
                // What this replica lost or holds damaged (a batch header that does not
                // parse, a gap between segments, a log marked lost) another one may hold.
                Err(e @ Error::DataLoss(_)) => self.around_damage(id, from, limits, e).await,
                r => r,
            }
        })
    }

    /// Damage in this node's own log ([`Chunk::is_from_files`]) is served around: the read
    /// goes to the partition's other replicas ([`RaftPartitions::around_damage`]). Damage in
    /// a chunk another node sent is the answer (that node checked it before it went,
    /// `forward::checked_here`, so it is damage on the way or on every replica asked).
    fn read_past_damage<'a>(
        &'a self,
        id: &'a PartitionId,
        damaged: &'a Chunk,
        damage: Error,
    ) -> LocalBoxFuture<'a, Result<Chunk>> {
        Box::pin(async move {
            if !damaged.is_from_files() {
                return Err(damage);
            }
            self.around_damage(id, damaged.from, damaged.limits, damage)
                .await
        })
    }

    fn read_barrier<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            check_not_controller(id)?;
            self.check_not_removed()?;
            self.check_fresh(id)?;
            let here = if self.read_elsewhere_unless_deleted(id)? {
                Err(Error::NotFound(format!(
                    "partition {id} has no replica of this topic on this node"
                )))
            } else {
                self.local.read_barrier(id).await
            };
            match here {
                Err(Error::NotFound(why)) => {
                    let (node, o) = self.read_elsewhere(id, RemoteRead::Barrier, why).await?;
                    visible_end_of(node, id, o)
                }
                r => r,
            }
        })
    }

    fn wait_for<'a>(&'a self, id: &'a PartitionId, offset: u64) -> LocalBoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            check_not_controller(id)?;
            self.check_not_removed()?;
            self.check_fresh(id)?;
            let here = if self.read_elsewhere_unless_deleted(id)? {
                Err(Error::NotFound(format!(
                    "partition {id} has no replica of this topic on this node"
                )))
            } else {
                self.local.wait_for(id, offset).await
            };
            match here {
                Err(Error::NotFound(why)) => loop {
                    // Held by a replica for a few seconds at a time.
                    let what = RemoteRead::Wait { offset };
                    let (node, o) = self.read_elsewhere(id, what, why.clone()).await?;
                    let end = visible_end_of(node, id, o)?;
                    if end > offset {
                        return Ok(end);
                    }
                },
                r => r,
            }
        })
    }

    fn describe<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<PartitionState>> {
        Box::pin(async move {
            check_not_controller(id)?;
            let here = if self.read_elsewhere_unless_deleted(id)? {
                Err(Error::NotFound(format!(
                    "partition {id} has no replica of this topic on this node"
                )))
            } else {
                self.local.describe(id).await
            };
            let why = match here {
                Err(Error::NotFound(why)) => why,
                r => return r,
            };
            // As a replica elsewhere reports it; what only the owner knows (its shard, its
            // counters) is left at zero.
            let (node, o) = self.read_elsewhere(id, RemoteRead::Describe, why).await?;
            let read_response::Outcome::Summary(s) = o else {
                return Err(Error::Internal(format!(
                    "node {node} answered a description of {id} without one"
                )));
            };
            Ok(PartitionState {
                lowest_offset: s.lowest_offset,
                visible_end: s.visible_end,
                log_end: s.log_end,
                size_bytes: s.size_bytes,
                segments: s.segments as usize,
                shard: 0,
                leader: None,
                replicas: Vec::new(),
                writable: match s.writability {
                    1 => engine::seam::Writability::DiskFull {
                        free_bytes: s.free_bytes,
                    },
                    2 => engine::seam::Writability::Latched { cause: s.cause },
                    3 => engine::seam::Writability::Lost,
                    4 => engine::seam::Writability::NoLeader,
                    _ => engine::seam::Writability::Writable,
                },
                waiters: 0,
                appends: 0,
                records_appended: 0,
                fdatasyncs: 0,
            })
        })
    }
}

impl Topics for RaftPartitions {
    fn create_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        self.create_topic_replicated(name, partitions, config, 0)
    }

    fn create_topic_replicated<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
        replication_factor: u32,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        Box::pin(async move {
            let Some(c) = &self.cluster else {
                return self
                    .local
                    .create_topic_replicated(name, partitions, config, replication_factor)
                    .await;
            };
            c.create_topic(
                name,
                partitions,
                config.clone(),
                (replication_factor > 0).then_some(replication_factor),
            )
            .await?;
            match self.local.topic(name) {
                Ok(t) => Ok(t),
                // No replica placed here.
                Err(_) => Ok(TopicInfo {
                    name: name.to_owned(),
                    partitions,
                    config,
                }),
            }
        })
    }

    fn delete_topic<'a>(&'a self, name: &'a str) -> LocalBoxFuture<'a, Result<TopicDeleted>> {
        Box::pin(async move {
            check_not_controller_topic(name)?;
            if name == proto::log::v1::DEFAULT_TOPIC {
                // Deleted, every client that names no topic (the book's) would get NOT_FOUND
                // from then on: nothing creates it again.
                return Err(engine::seam::Error::InvalidArgument(format!(
                    "topic {name:?} serves the clients that name no topic (the book's); it \
                     is not deleted (retention settings bound what it keeps)"
                )));
            }
            match &self.cluster {
                Some(c) => Ok(TopicDeleted {
                    not_yet_on: c.delete_topic(name).await?,
                }),
                None => self.local.delete_topic(name).await,
            }
        })
    }

    fn alter_topic<'a>(
        &'a self,
        name: &'a str,
        change: TopicChange,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        Box::pin(async move {
            check_not_controller_topic(name)?;
            let Some(c) = &self.cluster else {
                return self.local.alter_topic(name, change).await;
            };
            let config = c
                .alter_topic(name, change.retention_bytes, change.retention_ms)
                .await?;
            let partitions = c
                .state()
                .topics
                .get(name)
                .map_or(0, |t| t.partitions.len() as u32);
            Ok(TopicInfo {
                name: name.to_owned(),
                partitions,
                config,
            })
        })
    }

    /// The topics held here and those the cluster's registry lists (as `topic` finds them: a
    /// topic with no replica on this node, or created a moment ago and not opened here yet,
    /// is the cluster's all the same).
    fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let mut topics = self.local.list_topics()?;
        topics.retain(|t| t.name != CONTROLLER_TOPIC);
        if let Some(c) = &self.cluster {
            let s = c.state();
            for (name, t) in &s.topics {
                if name != CONTROLLER_TOPIC && !topics.iter().any(|h| &h.name == name) {
                    topics.push(TopicInfo {
                        name: name.clone(),
                        partitions: t.partitions.len() as u32,
                        config: t.config.clone(),
                    });
                }
            }
        }
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    fn topic(&self, name: &str) -> Result<TopicInfo> {
        check_not_controller_topic(name)?;
        let here = match (self.local.topic(name), &self.cluster) {
            // A copy of an earlier topic of that name (deleted and created again; dropped by
            // the next reconcile pass) is not this topic: the state says what it is.
            (Ok(t), Some(c)) if t.config.incarnation != c.incarnation_of(name) => {
                Err(Error::NotFound(format!("topic {name:?} is not held here")))
            }
            (r, _) => r,
        };
        match (here, &self.cluster) {
            // A topic with no replica here is the cluster's all the same (appends to it are
            // forwarded to its replicas).
            (Err(Error::NotFound(why)), Some(c)) => {
                let s = c.state();
                match s.topics.get(name) {
                    Some(t) => Ok(TopicInfo {
                        name: name.to_owned(),
                        partitions: t.partitions.len() as u32,
                        config: t.config.clone(),
                    }),
                    None => Err(self.unknown_here(Error::NotFound(why), name, None)),
                }
            }
            (r, _) => r,
        }
    }
}
