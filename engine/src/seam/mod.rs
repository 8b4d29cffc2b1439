//! The partition seam: the one narrow interface through which the server reaches partitions,
//! whoever keeps them.
//!
//! Two traits: [`Partitions`] (append a batch, read a range, wait for an offset to become
//! visible, describe) and [`Topics`] (create, alter, delete, list, look up). Two implementations
//! here: [`local`], the engine-backed single node (routing to the owning shard and its
//! [`Log`](crate::Log)), and [`memory`], a plain in-memory model with nothing of the storage
//! code, which the conformance suite ([`conformance`]) checks against the same expectations.
//! The Raft implementation (`consensus::raft::seam`, over this engine with its replication
//! hook, `shard::replication`) passes the same suite: an append resolves once committed, reads
//! stop at the commit index, and the cluster outcomes have errors of their own
//! ([`Error::NotLeader`], [`Error::NoLeader`], [`Error::OutcomeUnknown`]).
//!
//! Division of work (why the types look as they do): the caller's core does every per-record
//! step. It builds an [`EncodedBatch`] (records laid out as stored, with the CRC32C of that
//! payload) before calling [`Partitions::append`], and it checks and decodes the stored
//! batches a [`Chunk`] hands back. The partition's owner only orders, stamps a 64-byte header
//! (offset, term, Raft index, time; its CRC combined from the payload's, no pass over the
//! payload), writes and syncs; on reads it finds whole stored batches and hands them over as
//! shared bytes (data batches only; a chunk's decoding skips any control batch, a Raft entry
//! without records, that it meets).
//!
//! Visibility is a watermark the owner sets: the end of what readers may see. The single-node
//! owner sets it to what the topic's durability policy makes visible (the durable end under
//! `always`, the written end otherwise) after each append; a Raft owner sets it to the commit
//! index.
//! Reads never go past it, and [`Partitions::wait_for`] resolves when it passes an offset.
//!
//! Futures are `!Send`: the seam runs on glommio executors, one instance per shard (built on
//! that shard by a `Send + Sync` [`Factory`]); an instance built elsewhere (a plain thread,
//! a test) works too, by a slower path.

mod chunk;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod encoded;
mod error;
pub mod local;
pub mod memory;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

pub use crate::batch::{NewRecord, Record};
pub use crate::catalog::TopicInfo;
pub use crate::config::{Durability, LogConfig as TopicConfig};
pub use crate::metrics::AppendTiming;
pub use chunk::{Chunk, Records, Run};
pub use encoded::{
    encoded_record_len, entry_prefix, BatchBuilder, EncodedBatch, ENTRY_PREFIX_BYTES,
};
pub use error::{Error, Result};

/// Bytes of a stored batch's header: what a batch takes in a segment beyond its payload.
pub const BATCH_HEADER_LEN: usize = crate::batch::HEADER_LEN;

/// A boxed future that stays on its executor.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionId {
    pub topic: Arc<str>,
    pub partition: u32,
}

impl PartitionId {
    pub fn new(topic: &str, partition: u32) -> PartitionId {
        PartitionId {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            crate::error::shorten(&self.topic),
            self.partition
        )
    }
}

/// Offsets an acknowledged append got, and where its time went (for slow-call logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    pub timing: AppendTiming,
}

/// What a read does at and past the visible end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastEnd {
    /// Reading at the visible end gives an empty chunk; after it, `OffsetOutOfRange`
    /// (one-shot reads: the book's Consume, ConsumeBatch).
    OutOfRange,
    /// Anything at or after the visible end reads as empty: a tailing reader waits there.
    Empty,
}

/// Bounds of one read. The owner hands back about `max_bytes` of stored batches (at least
/// one batch); [`Chunk::records`] then yields at most `max_records` records and
/// `max_bytes` of values, except that the first record comes whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub past_end: PastEnd,
}

/// A node of the cluster, as far as a partition's state names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub id: String,
    /// Where clients reach its gRPC API.
    pub addr: String,
}

/// How far a replica has the partition (empty on a single node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    pub node: NodeRef,
    /// The offset after the last record the replica holds.
    pub log_end: u64,
}

/// Whether a partition takes appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writability {
    Writable,
    /// Its disk is full (a write failed for want of space): appends are refused until space
    /// returns, when the partition recovers by itself; reads go on.
    DiskFull {
        /// Free space when last checked.
        free_bytes: u64,
    },
    /// A write or sync failed earlier; the partition refuses writes until it is reopened.
    Latched {
        cause: String,
    },
    /// This replica's log is marked lost (records it held were deleted or cut while the
    /// server was down): its group stays stopped and takes no writes here (appends get
    /// `DataLoss`, or go to the partition's other replicas) until an operator acts.
    Lost,
    /// In a cluster: its replication group has no leader this replica knows (an election is
    /// under way, or too few of its voters are reachable to elect one): appends get
    /// `NoLeader` until one is elected.
    NoLeader,
}

/// Where a partition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub lowest_offset: u64,
    /// The end of what readers may see (the high watermark).
    pub visible_end: u64,
    /// The offset the next append gets (at or past `visible_end`).
    pub log_end: u64,
    pub size_bytes: u64,
    pub segments: usize,
    /// The shard (core) that owns the partition on this node.
    pub shard: usize,
    /// Who takes appends (on a single node: this node).
    pub leader: Option<NodeRef>,
    pub replicas: Vec<ReplicaState>,
    pub writable: Writability,
    /// Readers waiting for the visible end to pass an offset.
    pub waiters: usize,
    /// Appends and records appended, and fdatasyncs, since the partition was opened.
    pub appends: u64,
    pub records_appended: u64,
    pub fdatasyncs: u64,
}

/// Partitions: appends, reads, waits and descriptions.
pub trait Partitions {
    /// Appends `batch` as one unit with consecutive offsets; resolves once the batch is
    /// acknowledged (single node: durable per the topic's policy; Raft: committed), and by
    /// then the owner has made it visible.
    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: EncodedBatch,
    ) -> LocalBoxFuture<'a, Result<Appended>>;

    /// Whole stored batches from the one holding `from`, never past the visible end.
    fn read<'a>(
        &'a self,
        id: &'a PartitionId,
        from: u64,
        limits: ReadLimits,
    ) -> LocalBoxFuture<'a, Result<Chunk>>;

    /// The read that gave `damaged`, whose batches failed their checks (`damage`, from
    /// [`Chunk::records`]), served again where the partition has a healthy copy: another
    /// replica, when the damage is in this node's own. A partition without one (a single
    /// node) has the damage for its answer, which is the default.
    fn read_past_damage<'a>(
        &'a self,
        _id: &'a PartitionId,
        _damaged: &'a Chunk,
        damage: Error,
    ) -> LocalBoxFuture<'a, Result<Chunk>> {
        Box::pin(async move { Err(damage) })
    }

    /// Resolves when the visible end passes `offset`, with the new visible end; fails with
    /// `Unavailable` when the partition closes. Dropping the future cancels the wait where
    /// it is parked (no waiter is left behind).
    fn wait_for<'a>(&'a self, id: &'a PartitionId, offset: u64) -> LocalBoxFuture<'a, Result<u64>>;

    fn describe<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<PartitionState>>;

    /// A linearizable read point: resolves once everything acknowledged anywhere before the
    /// call is visible here, with the visible end then (reads from it on see every such
    /// record). Alone, a node's visible end is that already; a Raft replica asks its
    /// leader's commit index (ReadIndex) and waits until it has applied that far, failing
    /// `Unavailable` when no leader answers in time.
    fn read_barrier<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<u64>> {
        Box::pin(async move { Ok(self.describe(id).await?.visible_end) })
    }
}

/// What a topic's deletion could not wait for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicDeleted {
    /// Nodes (Raft ids) holding replicas of the topic that had not learned of the deletion
    /// when it answered (down, or cut off from the controller's leader): until they do (at
    /// once when they are back), each may still take appends to a partition whose replicas
    /// it reaches, and those records go with the topic. Empty on a single node.
    pub not_yet_on: Vec<u64>,
}

/// A change of a topic's settings: each `None` leaves its setting as it is. Only the
/// retention limits change on a live topic (Kafka's most changed settings); the others shape
/// how its files are laid out or acknowledged, and are set at creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicChange {
    /// Bytes each partition keeps at most, beyond its active segment (0: no limit).
    pub retention_bytes: Option<u64>,
    /// Milliseconds a sealed segment is kept after its last write (0: forever).
    pub retention_ms: Option<u64>,
}

impl TopicChange {
    /// Whether it changes nothing at all (names no setting).
    pub fn is_empty(&self) -> bool {
        self.retention_bytes.is_none() && self.retention_ms.is_none()
    }

    /// `config` with the change made.
    pub fn applied_to(&self, config: &TopicConfig) -> TopicConfig {
        let mut c = config.clone();
        if let Some(b) = self.retention_bytes {
            c.retention_bytes = b;
        }
        if let Some(ms) = self.retention_ms {
            c.retention_ms = ms;
        }
        c
    }
}

/// Topic administration. With Raft this goes through the controller group; on a single node,
/// through the engine's catalog.
pub trait Topics {
    /// Creates a topic; every partition can be used once this resolves.
    fn create_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>>;

    /// Creates a topic with `replication_factor` copies of each partition (0: the
    /// implementation's default). A node outside any cluster keeps one copy and refuses more.
    fn create_topic_replicated<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
        replication_factor: u32,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        if replication_factor > 1 {
            return Box::pin(async move {
                Err(Error::InvalidArgument(format!(
                    "replication factor {replication_factor}: this node keeps one copy of each partition"
                )))
            });
        }
        self.create_topic(name, partitions, config)
    }

    /// Deletes a topic and its data; once this resolves, the name is unknown on every node
    /// but those it names ([`TopicDeleted::not_yet_on`]).
    fn delete_topic<'a>(&'a self, name: &'a str) -> LocalBoxFuture<'a, Result<TopicDeleted>>;

    /// Changes a topic's settings (see [`TopicChange`]); resolves with the topic as it is
    /// then, once the partitions held here have the new limits and applied them (with Raft:
    /// once the controller committed the change; every replica applies it as it learns of
    /// it).
    fn alter_topic<'a>(
        &'a self,
        name: &'a str,
        change: TopicChange,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>>;

    fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    fn topic(&self, name: &str) -> Result<TopicInfo>;
}

/// The seam objects of one executor.
#[derive(Clone)]
pub struct Seam {
    pub partitions: Rc<dyn Partitions>,
    pub topics: Rc<dyn Topics>,
}

/// Builds the seam objects of the executor it is called on.
pub trait Factory: Send + Sync {
    fn build(&self) -> Seam;
}
