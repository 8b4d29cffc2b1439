//! `proglog`: the commit-log server, and a command-line client for it.
//!
//! With no subcommand (or `serve`) it runs a server; every other subcommand is a client.

mod cert;
mod client;
mod config;
mod limits;
mod observe;
mod out;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::ClientCommand;
use config::{ServeArgs, Settings};

const AFTER_HELP: &str = "\
Server settings come from flags, then PROGLOG_<FLAG> environment variables \
(e.g. PROGLOG_DATA_DIR, PROGLOG_RPC_PORT), then --config-file (YAML, or TOML for a .toml \
file, with the flag names as keys, e.g. `data-dir: /var/lib/proglog`), then the defaults. \
With none at all, a single node keeps its data in ./data and serves gRPC on 127.0.0.1:8400, \
with a `default` topic for clients that name none, and serves Prometheus metrics, liveness \
and readiness on http://127.0.0.1:9400 (/metrics, /healthz, /readyz; --admin-addr off \
turns that port off).

SIGTERM or SIGINT stops the server gracefully: clients are sent GOAWAY, calls in flight \
finish (for at most --drain-timeout), and every log is flushed and synced before exit. \
SIGHUP reloads the TLS certificates and the ACL policy (they are also reloaded when their \
files change); a file that does not load is logged and the previous settings stay.

Secure start: `proglog cert ca`, `proglog cert server localhost 127.0.0.1`, \
`proglog cert client root`, then serve with --server-tls-cert-file server.pem \
--server-tls-key-file server-key.pem --server-tls-ca-file ca.pem and clients with \
--tls-ca-file ca.pem --tls-cert-file root-client.pem --tls-key-file root-client-key.pem.";

#[derive(Debug, Parser)]
#[command(
    name = "proglog",
    version,
    about = "A distributed commit-log service: server and client",
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process: the size of the server's flag set does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (what `proglog` with no subcommand does)
    Serve(ServeArgs),
    /// Create a CA, server and client certificates (PEM) for TLS and mutual TLS
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// `e` and its causes, `: `-separated as `{:#}` prints them, each cause left out when the
/// text so far already ends with it: errors that name their source in their own message
/// (an I/O error's "locking ...: Resource temporarily unavailable (os error 11)") would
/// otherwise print it twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.is_empty() {
            text = c;
        } else if !text.ends_with(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = match Settings::resolve(&args) {
        Ok(s) => s,
        // A config file that cannot be read is not the command line's fault.
        Err(e @ config::ConfigError::ReadFile { .. }) => return Err(e.into()),
        // A setting refused is a usage error, with clap's exit status for the flags it
        // checks itself (2), whichever layer found it.
        Err(e) => {
            eprintln!("proglog: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    observe::logging::init(&settings.log_level, settings.log_format)?;
    for (typo, meant) in config::misspelled_env(std::env::vars()) {
        log::warn!("{typo} is not a setting's variable and is ignored: did you mean {meant}?");
    }
    match server::run(settings) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            // Reported through the log, like everything else the server says, once.
            log::error!("{}", error_chain(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Cert { command }) => cert::run(command),
        Some(Command::Client(cmd)) => {
            // Client diagnostics stay quiet unless asked for.
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .format(client_log_line)
                .init();
            client::run(cmd)
        }
    };
    match result {
        Ok(code) => code,
        // Our reader went away (`| head`): nothing left to say to anyone.
        Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proglog: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// A client's diagnostic as a command line says it: `proglog: warning: ...`, naming the
/// module only for the detail levels a user asks for with RUST_LOG.
fn client_log_line(buf: &mut env_logger::fmt::Formatter, r: &log::Record) -> std::io::Result<()> {
    use std::io::Write;
    match r.level() {
        log::Level::Error => writeln!(buf, "proglog: error: {}", r.args()),
        log::Level::Warn => writeln!(buf, "proglog: warning: {}", r.args()),
        l => writeln!(
            buf,
            "proglog: {} {}: {}",
            l.as_str().to_lowercase(),
            r.target(),
            r.args()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_the_message_already_ends_with_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(libc::EAGAIN);
        let said = format!("locking /d/LOCK: {io}");
        #[derive(Debug)]
        struct Named(String, std::io::Error);
        impl std::fmt::Display for Named {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Named {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        let e = anyhow::Error::new(Named(said.clone(), io)).context("starting the engine");
        assert_eq!(error_chain(&e), format!("starting the engine: {said}"));
        // A cause the text does not end with is kept, as `{:#}` keeps it.
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
        assert_eq!(error_chain(&e), format!("{e:#}"));
    }
}
