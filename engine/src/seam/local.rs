//! The engine-backed, single-node seam: routing to the owning shard (in place, or a typed
//! message to its core) and the owner's [`Log`](crate::Log) there.
//!
//! Built on a shard, an instance routes by that shard's own copy of the catalog and runs
//! operations on partitions the shard owns without a hop; built on any other thread, it
//! routes by the shared catalog and always sends messages (the slower path for tools and
//! tests). Engine errors become seam errors in one place (`From<crate::Error>` in
//! `seam/error.rs`); the owner sets each partition's visible mark (see `shard/owner.rs`).

use super::{
    Appended, Chunk, EncodedBatch, Error, Factory, LocalBoxFuture, NodeRef, PartitionId,
    PartitionState, Partitions, ReadLimits, Result, Seam, TopicChange, TopicConfig, TopicDeleted,
    TopicInfo, Topics,
};
use crate::shard::{EngineHandle, ReplicaStatus, ShardCtx};
use std::rc::Rc;

/// Builds [`LocalPartitions`] on whichever executor (or thread) asks.
#[derive(Clone)]
pub struct LocalFactory {
    engine: EngineHandle,
    node: NodeRef,
}

impl LocalFactory {
    /// `node` is this node, which leads every partition it has.
    pub fn new(engine: EngineHandle, node: NodeRef) -> LocalFactory {
        LocalFactory { engine, node }
    }

    /// The seam for the calling executor, as the concrete type.
    pub fn local(&self) -> Rc<LocalPartitions> {
        Rc::new(LocalPartitions {
            here: self.engine.here(),
            engine: self.engine.clone(),
            node: self.node.clone(),
        })
    }
}

impl Factory for LocalFactory {
    fn build(&self) -> Seam {
        let local = self.local();
        Seam {
            partitions: local.clone(),
            topics: local,
        }
    }
}

/// The engine-backed seam of one executor.
pub struct LocalPartitions {
    engine: EngineHandle,
    /// The shard this instance was built on, if it was built on one of the engine's shards.
    here: Option<Rc<ShardCtx>>,
    node: NodeRef,
}

impl LocalPartitions {
    /// The shard this instance serves, if any.
    pub fn shard(&self) -> Option<usize> {
        self.here.as_ref().map(|c| c.index)
    }

    /// The replication layer's view of `id` on its owner (`None` without one).
    pub async fn replica_status(&self, id: &PartitionId) -> Result<Option<ReplicaStatus>> {
        let r = self.engine.describe_routed(self.here.as_ref(), id).await?;
        Ok(r.replica)
    }
}

impl Partitions for LocalPartitions {
    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: EncodedBatch,
    ) -> LocalBoxFuture<'a, Result<Appended>> {
        Box::pin(async move {
            let (a, timing) = self
                .engine
                .append_routed(self.here.as_ref(), id, batch)
                .await?;
            Ok(Appended {
                base_offset: a.base_offset,
                last_offset: a.last_offset,
                timing,
            })
        })
    }

    fn read<'a>(
        &'a self,
        id: &'a PartitionId,
        from: u64,
        limits: ReadLimits,
    ) -> LocalBoxFuture<'a, Result<Chunk>> {
        Box::pin(async move {
            Ok(self
                .engine
                .read_routed(self.here.as_ref(), id, from, limits, false)
                .await?)
        })
    }

    fn wait_for<'a>(&'a self, id: &'a PartitionId, offset: u64) -> LocalBoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let end = self
                .engine
                .wait_routed(self.here.as_ref(), id, offset)
                .await?;
            if end <= offset {
                // The wait also ends when the log closes (shutdown, deletion).
                return Err(Error::Unavailable(format!(
                    "partition {}/{} closed",
                    id.topic, id.partition
                )));
            }
            Ok(end)
        })
    }

    fn read_barrier<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<u64>> {
        Box::pin(async move { Ok(self.engine.barrier_routed(self.here.as_ref(), id).await?) })
    }

    fn describe<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<PartitionState>> {
        Box::pin(async move {
            let r = self.engine.describe_routed(self.here.as_ref(), id).await?;
            Ok(PartitionState {
                lowest_offset: r.stats.lowest_offset,
                visible_end: r.visible_end,
                log_end: r.stats.next_offset,
                size_bytes: r.stats.size_bytes,
                segments: r.stats.segments,
                shard: r.shard,
                // Under a replication layer, this node leads only when its group says so.
                leader: match &r.replica {
                    Some(rs) if !rs.is_leader => None,
                    _ => Some(self.node.clone()),
                },
                replicas: Vec::new(),
                writable: r.writable,
                waiters: r.waiters,
                appends: r.stats.appends,
                records_appended: r.stats.records_appended,
                fdatasyncs: r.stats.fdatasyncs,
            })
        })
    }
}

impl Topics for LocalPartitions {
    fn create_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        Box::pin(async move { Ok(self.engine.create_topic(name, partitions, config).await?) })
    }

    fn delete_topic<'a>(&'a self, name: &'a str) -> LocalBoxFuture<'a, Result<TopicDeleted>> {
        Box::pin(async move {
            self.engine.delete_topic(name).await?;
            Ok(TopicDeleted::default())
        })
    }

    fn alter_topic<'a>(
        &'a self,
        name: &'a str,
        change: TopicChange,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        Box::pin(async move {
            let config = change.applied_to(&self.engine.topic(name)?.config);
            Ok(self
                .engine
                .set_retention(name, config.retention_bytes, config.retention_ms)
                .await?)
        })
    }

    fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(match &self.here {
            Some(ctx) => ctx.with_catalog(|c| c.list()),
            None => self.engine.list_topics()?,
        })
    }

    fn topic(&self, name: &str) -> Result<TopicInfo> {
        Ok(match &self.here {
            Some(ctx) => ctx.with_catalog(|c| c.info(name))?,
            None => self.engine.topic(name)?,
        })
    }
}
