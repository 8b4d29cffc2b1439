//! Replication of proglog partitions with raft-rs, and cluster membership by gossip.
//!
//! [`membership`] (SWIM gossip with foca) tells every node which nodes exist, where they are,
//! and whether they are up, suspect, down or gone for good; a node started with cluster flags
//! runs it on one shard. The Raft side will live here too: each partition's Raft group, the
//! Ready loop, the storage adapter over `engine::Log` (which already offers what Raft needs:
//! truncate-suffix, the term of any entry, byte-capped range reads, an atomically replaced
//! metadata file, snapshot streams), and the peer transport, which shares the peer channel
//! (first byte 0x01 on the RPC port) with membership's key exchange. Until it lands, a
//! proglog node serves as a single leader.

pub mod membership;
