//! `proglog-chaos`: a Jepsen-style fault campaign against real proglog nodes in network
//! namespaces. See `--help` and docs/testing.md.

use std::process::ExitCode;

use bench::chaos::{self, opts::Opts};
use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    chaos::main(Opts::parse())
}
