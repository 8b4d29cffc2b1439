//! Replication of proglog partitions with raft-rs, and cluster membership by gossip.
//!
//! [`membership`] (SWIM gossip with foca) tells every node which nodes exist, where they are,
//! and whether they are up, suspect, down or gone for good; a node started with cluster flags
//! runs it on one shard. [`raft`] replicates partitions: one raft-rs group per partition, every group of a
//! shard driven by one Ready loop ([`raft::GroupSet`]), the partition's own log (format v2
//! batches, one per entry) as Raft's log through a narrow store interface, and our own prost
//! types for Raft's messages. It is not wired to the server yet (nor is the peer transport,
//! which will share the peer channel, first byte 0x01 on the RPC port, with membership's key
//! exchange): until it is, a proglog node serves as a single leader.

pub mod cluster;
pub mod membership;
pub mod raft;

#[cfg(test)]
mod mutation;
