//! All of this crate's integration tests, one module per file of tests/, in one test binary:
//! every test binary compiles again the generic code it uses from the crates below it, and one
//! binary per file cost minutes of every clean build (docs/testing.md). A new file of tests/
//! is a test only once it is a module here.

mod common;

mod connections;
mod grpc;
