//! All of the black-box tests but the multi-node ones, one module per file of tests/, in one
//! test binary (`proglog_it`); the multi-node ones are the `cluster` binary
//! (tests/multi_node.rs). A new file of tests/ is a test only once it is a module of one of
//! them (docs/testing.md).

mod common;
mod k8s;

mod cli;
mod connections;
mod disk_full;
mod durability;
mod lifecycle;
mod membership;
mod membership_netns;
mod memory;
mod observe;
mod raft_peer;
mod rpc;
mod statefulset;
mod streams;
mod tls;
