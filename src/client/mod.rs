//! The command-line client: produce, consume, topic administration, cluster members,
//! servers, health.
//!
//! Runs the async gRPC client on a single glommio executor in this process. Human-readable
//! output by default; `--json` prints one JSON object per line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use net::client::{CallOptions, Channel, ClientConfig};
use net::tls::ClientTlsOptions;
use proglog_client::errors::{self, ClusterError};
use proglog_client::{Cluster, Options, ReadFrom, NO_LEADER_PAUSE};

mod admin;
mod cluster;
mod consume;
mod produce;

pub use admin::TopicsCommand;
pub use cluster::ClusterCommand;
pub use consume::ConsumeArgs;
pub use produce::ProduceArgs;

/// Where and how to talk to the server; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server addresses, comma-separated (HOST:PORT, host names allowed): one node of a
    /// cluster is enough; the others and each partition's leader are learned from it
    #[arg(
        long,
        env = "PROGLOG_ADDR",
        default_value = "127.0.0.1:8400",
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ','
    )]
    pub addr: Vec<String>,
    /// Print one JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
    /// Deadline of each call in seconds, at most a year; 0 for none (streams that follow the
    /// log have none; a produce stream has its records answered within it)
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// CA that signed the server's certificate (PEM): turns TLS on
    #[arg(long, env = "PROGLOG_TLS_CA_FILE", value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; its Common Name is the ACL subject
    #[arg(
        long,
        env = "PROGLOG_TLS_CERT_FILE",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Key of the client certificate (PEM)
    #[arg(
        long,
        env = "PROGLOG_TLS_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Name the server certificate must carry [default: the host of --addr, a name or an IP address]
    #[arg(long, env = "PROGLOG_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// The longest `--timeout`: a deadline further away is no deadline a person means, and one
/// past what a clock can add overflows it.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// `--timeout`: seconds, 0 (none) up to [`MAX_TIMEOUT_SECS`].
fn parse_timeout(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "{s} seconds: a timeout is 0 (none) to {MAX_TIMEOUT_SECS} (a year)"
        ));
    }
    Ok(secs)
}

impl Conn {
    pub fn opts(&self) -> CallOptions {
        if self.timeout > 0.0 && self.timeout.is_finite() {
            CallOptions::timeout(Duration::from_secs_f64(self.timeout))
        } else {
            CallOptions::default()
        }
    }

    /// The call's deadline, or for `--timeout 0` how long to look for a server.
    pub fn deadline(&self) -> Instant {
        Instant::now()
            + self
                .opts()
                .timeout
                .unwrap_or(Duration::from_secs(CONNECT_WITHOUT_DEADLINE_SECS))
    }

    /// The cluster-aware client over `--addr` (nothing is connected yet).
    pub fn cluster(&self, read_from: ReadFrom) -> anyhow::Result<Cluster> {
        let tls = ClientTlsOptions {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
            server_name: self.tls_server_name.clone(),
        }
        .load()?;
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(5),
            tls,
            ..ClientConfig::default()
        };
        let options = Options {
            config,
            read_from,
            server_name_from_host: self.tls_server_name.is_none(),
            ..Options::default()
        };
        Ok(Cluster::new(self.addr.clone(), options)?)
    }

    /// A call any node answers (servers, health, topic and cluster descriptions): sent to the
    /// first of `--addr` that connects; when that node has not answered within
    /// [`HEDGE_AFTER`] (paused, overloaded) or could not (UNAVAILABLE, DEADLINE_EXCEEDED), the
    /// next address is asked too, and so on. The first answer wins; the calls still running
    /// are cancelled. A node that hangs so costs a second, not the whole `--timeout`.
    pub async fn ask_any<Q, R>(&self, path: &'static str, req: &Q) -> anyhow::Result<R>
    where
        Q: prost::Message + Clone + 'static,
        R: prost::Message + Default + 'static,
    {
        let cluster = self.cluster(ReadFrom::Leader)?;
        let deadline = self.deadline();
        let opts = self.opts();
        let (first, ch) = cluster.any(deadline).await?;
        let mut rest: Vec<String> = self.addr.iter().filter(|a| **a != first).cloned().collect();
        rest.reverse();
        let (tx, mut rx) = futures_channel::mpsc::unbounded::<Result<R, net::Status>>();
        let call = |ch: Option<Channel>, addr: String| {
            let (tx, cluster, req, opts) = (tx.clone(), cluster.clone(), req.clone(), opts.clone());
            glommio::spawn_local(async move {
                let answer = match ch {
                    Some(ch) => Ok(ch),
                    None => cluster.channel(&addr, deadline).await,
                };
                let answer = match answer {
                    Ok(ch) => ch.unary_prost::<Q, R>(path, &req, opts).await,
                    Err(e) => Err(e),
                };
                let _ = tx.unbounded_send(answer);
            })
        };
        let mut running = vec![call(Some(ch), first)];
        let mut waiting = 1;
        loop {
            let hedge = !rest.is_empty();
            let next = futures_lite::future::or(
                async { Some(futures_lite::StreamExt::next(&mut rx).await) },
                async {
                    if hedge {
                        glommio::timer::sleep(HEDGE_AFTER).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                    None
                },
            )
            .await;
            match next {
                Some(Some(Ok(r))) => return Ok(r),
                Some(Some(Err(st))) => {
                    waiting -= 1;
                    let again = matches!(
                        st.code,
                        net::Code::Unavailable | net::Code::DeadlineExceeded
                    );
                    if !again {
                        return Err(st.into());
                    }
                    if let Some(addr) = rest.pop() {
                        running.push(call(None, addr));
                        waiting += 1;
                    }
                    if waiting == 0 {
                        return Err(st.into());
                    }
                }
                // `tx` lives in this frame: the channel does not end.
                Some(None) => return Err(anyhow::anyhow!("no server answered")),
                None => {
                    if let Some(addr) = rest.pop() {
                        running.push(call(None, addr));
                        waiting += 1;
                    }
                }
            }
        }
    }

    /// An admin write, which the controller's leader carries out (create or delete a topic,
    /// remove a node): sent to the first of `--addr` that answers, then to the leader that
    /// node names (`NOT_LEADER`), or again after a pause while the controller has none
    /// (`NO_LEADER`), until the deadline. Both answers mean the command was not proposed,
    /// so sending it again cannot apply it twice; any other answer is final.
    pub async fn controller_call<Q, R>(&self, path: &str, req: &Q) -> anyhow::Result<R>
    where
        Q: prost::Message,
        R: prost::Message + Default,
    {
        let cluster = self.cluster(ReadFrom::Leader)?;
        let deadline = self.deadline();
        let (mut addr, mut ch) = cluster.any(deadline).await?;
        let mut redirected = false;
        loop {
            let opts = match self.opts().timeout {
                Some(_) => CallOptions::timeout(deadline.saturating_duration_since(Instant::now())),
                None => CallOptions::default(),
            };
            let st = match ch.unary_prost::<Q, R>(path, req, opts).await {
                Ok(resp) => return Ok(resp),
                Err(st) => st,
            };
            let leader = match errors::cluster_error(&st) {
                Some(ClusterError::NotLeader { leader_addr, .. }) => {
                    leader_addr.filter(|l| !l.is_empty() && *l != addr)
                }
                Some(ClusterError::NoLeader) => None,
                _ => return Err(st.into()),
            };
            if Instant::now() + NO_LEADER_PAUSE >= deadline {
                return Err(st.into());
            }
            redirected = pause(&st, &addr, redirected).await;
            (addr, ch) = match leader {
                Some(l) => {
                    let ch = cluster.channel(&l, deadline).await?;
                    (l, ch)
                }
                None => cluster.any(deadline).await?,
            };
        }
    }
}

/// Waits before sending again, unless the node named another leader (the first time in a
/// row: twice means leadership is moving). Returns whether this was such a redirect.
async fn pause(st: &net::Status, addr: &str, redirected: bool) -> bool {
    let named = matches!(
        errors::cluster_error(st),
        Some(ClusterError::NotLeader { leader_addr: Some(ref l), .. }) if l != addr
    );
    if !named || redirected {
        glommio::timer::sleep(NO_LEADER_PAUSE).await;
    }
    named
}

/// How long a call any node answers waits for its node before the next address is asked too.
const HEDGE_AFTER: Duration = Duration::from_secs(1);

/// With `--timeout 0`, how long a command looks for a server that answers.
const CONNECT_WITHOUT_DEADLINE_SECS: u64 = 10;

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Append records: the VALUES given, or one per line of standard input
    Produce(ProduceArgs),
    /// Read records from an offset; --follow keeps waiting for new ones like tail -f
    Consume(ConsumeArgs),
    /// Create, list, describe, alter or delete topics
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// The cluster: members (gossip), describe (registry, replication), remove NODE
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List the servers of the cluster (GetServers)
    Servers {
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask the gRPC health service whether the server is SERVING (exit status 0 if so)
    Health {
        #[command(flatten)]
        conn: Conn,
        /// Service to ask about; empty means the whole server
        #[arg(long, default_value = "")]
        service: String,
    },
}

/// Runs a client command to completion on a local executor.
pub fn run(command: ClientCommand) -> anyhow::Result<ExitCode> {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("proglog-client")
        .make()
        .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?;
    ex.run(async move {
        match command {
            ClientCommand::Produce(a) => produce::run(a).await,
            ClientCommand::Consume(a) => consume::run(a).await,
            ClientCommand::Topics { command } => admin::run(command).await,
            ClientCommand::Cluster { command } => cluster::run(command).await,
            ClientCommand::Servers { conn } => servers(conn).await,
            ClientCommand::Health { conn, service } => health(conn, service).await,
        }
    })
}

async fn servers(conn: Conn) -> anyhow::Result<ExitCode> {
    use proto::log::v1::{paths, GetServersRequest, GetServersResponse};
    let resp: GetServersResponse = conn
        .ask_any(paths::GET_SERVERS, &GetServersRequest {})
        .await?;
    if conn.json {
        for s in resp.servers {
            crate::out::outln!(
                "{}",
                serde_json::json!({"id": s.id, "rpc_addr": s.rpc_addr, "is_leader": s.is_leader})
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The leader is the default topic's partition 0's, which book clients' pickers use.
    let mut rows = vec![vec!["ID".to_owned(), "RPC_ADDR".into(), "ROLE".into()]];
    for s in resp.servers {
        let role = if s.is_leader { "leader" } else { "follower" };
        rows.push(vec![s.id, s.rpc_addr, role.into()]);
    }
    crate::out::table(&rows)?;
    Ok(ExitCode::SUCCESS)
}

async fn health(conn: Conn, service: String) -> anyhow::Result<ExitCode> {
    use proto::health::v1::health_check_response::ServingStatus;
    use proto::health::v1::{paths, HealthCheckRequest, HealthCheckResponse};
    let resp: HealthCheckResponse = conn
        .ask_any(paths::CHECK, &HealthCheckRequest { service })
        .await?;
    let status = ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown);
    if conn.json {
        crate::out::outln!("{}", serde_json::json!({"status": status.as_str_name()}))?;
    } else {
        crate::out::outln!("{}", status.as_str_name())?;
    }
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A record value for JSON: text when it is UTF-8, base64 otherwise.
pub fn json_value(v: &[u8]) -> (&'static str, serde_json::Value) {
    match std::str::from_utf8(v) {
        Ok(s) => ("value", serde_json::Value::String(s.to_owned())),
        Err(_) => {
            use base64::Engine;
            (
                "value_base64",
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_zero_to_a_year() {
        assert_eq!(parse_timeout("2.5"), Ok(2.5));
        assert_eq!(parse_timeout("0"), Ok(0.0));
        for bad in ["-1", "1e20", "nan", "inf", "ten"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        // The largest allowed still makes a deadline.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            conn: Conn,
        }
        let c = <Cli as clap::Parser>::parse_from(["x", "--timeout", "31536000"]).conn;
        assert!(c.deadline() > Instant::now());
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--timeout", "1e20"]).is_err());
    }
}
