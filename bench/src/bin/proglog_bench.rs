//! `proglog-bench`: a load generator for any log.v1 gRPC server. See `--help` and
//! docs/benchmarks.md.

use std::process::ExitCode;

use bench::grpc::failover::{self, FailoverOpts};
use bench::grpc::{self, opts::Opts};
use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if std::env::args().nth(1).as_deref() == Some("failover") {
        return failover();
    }
    let opts = Opts::parse();
    // Bad combinations of options are usage errors, like the ones clap reports: exit 2.
    if let Err(e) = opts.validate() {
        eprintln!("proglog-bench: {e}\n\nFor more information, try '--help'.");
        return ExitCode::from(2);
    }
    let json = opts.json;
    match grpc::main(opts) {
        Ok(out) => {
            let written = if json {
                bench::out::emit(
                    "proglog-bench",
                    &format!(
                        "{}\n",
                        serde_json::to_string_pretty(&out.report.json()).unwrap_or_default()
                    ),
                )
            } else {
                bench::out::emit("proglog-bench", &out.report.human())
            };
            if !written {
                return ExitCode::FAILURE;
            }
            if out.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                for f in &out.failed {
                    eprintln!("proglog-bench: run failed: {f}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("proglog-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `proglog-bench failover ...`: the leader-kill scenario, with options of its own.
fn failover() -> ExitCode {
    let args = std::env::args()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, a)| a);
    let opts = FailoverOpts::parse_from(args);
    let json = opts.json;
    match failover::run(opts) {
        Ok(r) => {
            let written = if json {
                bench::out::emit(
                    "proglog-bench",
                    &format!(
                        "{}\n",
                        serde_json::to_string_pretty(&r.json()).unwrap_or_default()
                    ),
                )
            } else {
                bench::out::emit("proglog-bench", &r.human())
            };
            if !written {
                return ExitCode::FAILURE;
            }
            if r.error.is_none() {
                ExitCode::SUCCESS
            } else {
                if json {
                    eprintln!("proglog-bench failover: {}", r.error.unwrap_or_default());
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("proglog-bench failover: {e:#}");
            ExitCode::FAILURE
        }
    }
}
