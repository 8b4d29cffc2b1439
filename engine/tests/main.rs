//! All of this crate's integration tests, one module per file of tests/, in one test binary:
//! every test binary compiles again the generic code it uses from the crates below it, and one
//! binary per file cost minutes of every clean build (docs/testing.md). A new file of tests/
//! is a test only once it is a module here.

mod common;

mod bad_input;
mod book;
mod budget_release;
mod crash;
mod emptied;
mod full_volume;
mod latch;
mod metrics;
mod model;
mod order;
mod power_loss;
mod raft_index;
mod removal;
mod retention_change;
mod roll_race;
mod segments_meta;
mod short_write;
mod snapshot_install;
mod tail_cache;
mod torn;
mod visibility;
mod zero_tail;
