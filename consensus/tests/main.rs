//! All of this crate's integration tests, one module per file of tests/, in one test binary:
//! every test binary compiles again the generic code it uses from the crates below it, and one
//! binary per file cost minutes of every clean build (docs/testing.md). A new file of tests/
//! is a test only once it is a module here.

mod common;
mod manual;
mod mem_cluster;

mod controller_checkpoint;
mod controller_outcome;
mod controller_snapshot;
mod membership_sim;
mod membership_udp;
mod raft_disk_full;
mod raft_disk_full_reopen;
mod raft_engine;
mod raft_forward;
mod raft_progress;
mod raft_seam;
mod raft_sim;
mod raft_snapshot;
mod raft_stopped;
mod raft_transport;
mod raft_traps;
mod snapshot_stream;
mod store_model;
