//! Raft for proglog partitions: one raft-rs group per partition, all the groups of a shard
//! driven by one Ready loop, the partition's log as Raft's log.
//!
//! - [`entry`]: one Raft entry is one engine batch (format v2); what proposals carry.
//! - [`store`]: the narrow log-store interface Raft needs of a log, implemented by
//!   `engine::Log` ([`engine_store`]) and in memory ([`mem_store`], written vs synced).
//! - [`storage`]: raft-rs `Storage` over a store: term runs, tail cache, deferred reads for
//!   lagging followers, commit recovered from batch headers, metadata file.
//! - [`group`]: the per-shard [`GroupSet`] and its rounds: one sync per round per log,
//!   messages coalesced per destination node, heartbeats merged.
//! - [`wire`]: our own prost types for raft-rs's messages, frames, conversions.
//! - [`peer_check`]: what raft-rs would panic on, refused before a peer's message is
//!   stepped.
//!
//! - [`replica`]: the engine's replication layer: one task per shard runs its `GroupSet`
//!   (commands, ticks, pipelined rounds); every partition of the server is a Raft group.
//! - [`transport`]: Raft frames over the peer channel: bounded queues per destination,
//!   reconnects with backoff, frames split among the owning shards on arrival.
//! - [`snapshot_transfer`]: snapshots as the leader's segment files, streamed in chunks on
//!   a connection of their own, downloaded beside the follower's log and swapped in.
//! - [`seam`]: the Raft implementation of the partition seam, and the engine configuration
//!   that goes with it.
//! - [`forward`]: any node serves any client: appends forwarded to the partition's leader
//!   over the peer channel, and the counters of forwarding and follower reads.
//!
//! `docs/replication.md` argues the design.

// raft-rs's message types (rust-protobuf) are filled field by field, as raft-rs does itself.
#![allow(clippy::field_reassign_with_default)]

pub mod board;
pub mod engine_store;
pub mod entry;
pub mod error;
pub mod forward;
pub mod group;
pub mod logger;
pub mod mem_store;
pub mod peer_check;
pub mod replica;
pub mod seam;
pub mod snapshot_transfer;
pub mod storage;
pub mod store;
pub mod transport;
pub mod wire;

pub use error::{Error, Result};
pub use group::{
    Committed, GroupConfig, GroupSet, GroupStatus, InstallReport, Outcome, Persisting, SetStats,
    SnapshotJob, SnapshotProgress, StateEvent, Stopped, Transport,
};
pub use mem_store::{FullAt, MemStaged, MemStore};
pub use replica::RaftReplication;
pub use storage::{FetchJob, RaftLog, RaftMeta, SnapshotData};
pub use store::LogStore;
