//! The black-box tests, one module per file of tests/, in one test binary (`proglog_it`),
//! but for those that run alone: the multi-node ones are the `cluster` binary
//! (tests/multi_node.rs), run one at a time in scripts/test's cluster phase, and the ones
//! that run clusters in network namespaces (tests/statefulset.rs, tests/membership_netns.rs)
//! are binaries of their own, so that no other test runs beside them. A new file of tests/
//! is a test only once it is a module here or a `[[test]]` of Cargo.toml (docs/testing.md).

mod common;

mod cli;
mod connections;
mod disk_full;
mod durability;
mod layout;
mod lifecycle;
mod membership;
mod memory;
mod observe;
mod raft_peer;
mod rpc;
mod streams;
mod tls;
