//! The multi-node tests: clusters of real binaries on 127.0.0.x, one test binary
//! (`cluster`). Their multi-node tests are `#[ignore]`d in the plain `cargo test` run and run
//! one at a time in scripts/test's cluster phase (`cargo test --test cluster -- --ignored
//! --test-threads=1`); no other test of the workspace is `#[ignore]`d.

mod common;

mod cluster;
mod cluster_client;
mod forward_cluster;
