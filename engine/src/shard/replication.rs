//! The hook through which a replication layer (Raft, in the `consensus` crate) owns the
//! partitions of a shard: it takes each log as the shard opens it, orders and commits every
//! append, and moves the log's visible mark; the shard keeps routing, reads, waits and
//! descriptions.
//!
//! The engine knows nothing of Raft: it defines the hook and calls it. A `Send + Sync`
//! [`ReplicationFactory`] in the [`EngineConfig`](crate::EngineConfig) builds one
//! [`Replicator`] per shard, on that shard's executor, before the shard opens its partitions.
//! With no factory, a shard's owner appends to its logs itself (the single-node path that
//! tools and tests use).

use crate::error::Result;
use crate::log::{Appended, Log};
use crate::metrics::AppendTiming;
use crate::seam::{EncodedBatch, LocalBoxFuture, PartitionId};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

/// Builds the replicator of each shard.
pub trait ReplicationFactory: Send + Sync {
    /// Called on shard `shard`'s executor (one of `shards`) when it starts.
    fn build(&self, shard: usize, shards: usize) -> Rc<dyn Replicator>;
}

/// The factory as the engine's configuration holds it.
#[derive(Clone)]
pub struct ReplicationHook(pub Arc<dyn ReplicationFactory>);

impl std::fmt::Debug for ReplicationHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicationHook")
    }
}

/// What a partition looks like to its replication layer (for descriptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub term: u64,
    /// The leader's id in the replication layer, when one is known.
    pub leader: Option<u64>,
    /// Whether this node leads the partition.
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    /// This replica's log is marked lost: it stays stopped and takes no writes.
    pub lost: bool,
}

/// The replication layer of one shard. Futures stay on the shard's executor.
pub trait Replicator {
    /// Takes over the freshly opened log of `id`, including its visible mark, before any
    /// reader or writer reaches it.
    fn open<'a>(&'a self, id: &'a PartitionId, log: Rc<Log>) -> LocalBoxFuture<'a, Result<()>>;

    /// Whether the engine opens `id` (held in the catalog, its directory `dir`) when the
    /// shard starts; `false` leaves it closed until someone opens it (the replication layer,
    /// once it knows how: a replica never opened by its group, of a partition the cluster's
    /// state this node has applied does not list yet).
    fn opens_at_start(&self, _id: &PartitionId, _dir: &std::path::Path) -> bool {
        true
    }

    /// Lets go of `id` (its topic is being deleted, or the shard stops) before its log is
    /// closed or removed.
    fn close<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, ()>;

    /// Appends `batch` (checked against the topic's limits already); resolves once it is
    /// committed and visible, with its offsets.
    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: &'a EncodedBatch,
    ) -> LocalBoxFuture<'a, Result<(Appended, AppendTiming)>>;

    /// Applies the topic's retention to `id`'s log (through the replication layer, which
    /// must not lose entries it still needs).
    fn apply_retention<'a>(
        &'a self,
        id: &'a PartitionId,
        now: SystemTime,
    ) -> LocalBoxFuture<'a, Result<()>>;

    fn status(&self, id: &PartitionId) -> Option<ReplicaStatus>;

    /// Resolves once everything committed (by any node) when it was called is visible here,
    /// with the visible end then: a linearizable read point (Raft's ReadIndex, retried until
    /// a deadline, then the wait until this replica has applied that far). Fails
    /// `Unavailable` when no leader answers in time.
    fn read_barrier<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<u64>>;

    /// Takes what another node sent this shard's groups (the replication layer's own type,
    /// delivered by `EngineHandle::deliver`).
    fn receive(&self, payload: Box<dyn std::any::Any + Send>);

    /// Stops the replication loop; every partition is closed after this.
    fn stop(&self) -> LocalBoxFuture<'_, ()>;
}
