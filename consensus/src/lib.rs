//! Replication of proglog partitions with raft-rs.
//!
//! This crate is where each partition's Raft group will live: the Ready loop, the storage
//! adapter over `engine::Log` (which already offers what Raft needs: truncate-suffix, the term
//! of any entry, byte-capped range reads, an atomically replaced metadata file, snapshot
//! streams), and the peer transport. Until it lands, a proglog node serves as a single leader.
