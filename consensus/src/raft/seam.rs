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
//! Build the engine with [`RaftReplication`](super::RaftReplication) as its replication hook
//! ([`engine_config`]), then this factory over its handle.

use super::replica::RaftReplication;
use engine::seam::local::{LocalFactory, LocalPartitions};
use engine::seam::{
    Appended, Chunk, EncodedBatch, Factory, LocalBoxFuture, NodeRef, PartitionId, PartitionState,
    Partitions, ReadLimits, Result, Seam, TopicConfig, TopicInfo, Topics,
};
use engine::shard::ReplicationHook;
use engine::{EngineConfig, EngineHandle};
use std::rc::Rc;
use std::sync::Arc;

/// `config` with every partition replicated by Raft (a cluster of one unless told more).
pub fn engine_config(mut config: EngineConfig, replication: RaftReplication) -> EngineConfig {
    config.replication = Some(ReplicationHook(Arc::new(replication)));
    config
}

/// Builds [`RaftPartitions`] on whichever executor (or thread) asks.
#[derive(Clone)]
pub struct RaftFactory {
    local: LocalFactory,
}

impl RaftFactory {
    /// `engine` must run with the Raft replication hook ([`engine_config`]); `node` is this
    /// node as clients reach it.
    pub fn new(engine: EngineHandle, node: NodeRef) -> RaftFactory {
        RaftFactory {
            local: LocalFactory::new(engine, node),
        }
    }
}

impl Factory for RaftFactory {
    fn build(&self) -> Seam {
        let p = Rc::new(RaftPartitions {
            local: self.local.local(),
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
}

impl Partitions for RaftPartitions {
    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: EncodedBatch,
    ) -> LocalBoxFuture<'a, Result<Appended>> {
        // The owner's engine proposes it to the partition's group and answers once applied.
        self.local.append(id, batch)
    }

    fn read<'a>(
        &'a self,
        id: &'a PartitionId,
        from: u64,
        limits: ReadLimits,
    ) -> LocalBoxFuture<'a, Result<Chunk>> {
        self.local.read(id, from, limits)
    }

    fn wait_for<'a>(&'a self, id: &'a PartitionId, offset: u64) -> LocalBoxFuture<'a, Result<u64>> {
        self.local.wait_for(id, offset)
    }

    fn describe<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<PartitionState>> {
        self.local.describe(id)
    }
}

impl Topics for RaftPartitions {
    fn create_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        self.local.create_topic(name, partitions, config)
    }

    fn delete_topic<'a>(&'a self, name: &'a str) -> LocalBoxFuture<'a, Result<()>> {
        self.local.delete_topic(name)
    }

    fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.local.list_topics()
    }

    fn topic(&self, name: &str) -> Result<TopicInfo> {
        self.local.topic(name)
    }
}
