//! The server's settings: command-line flags, `PROGLOG_*` environment variables and a
//! `--config-file`, merged in that order of precedence (flag > env > file > default), as the
//! book's agent does with viper.
//!
//! Every setting is declared once, in the `settings!` table below: its doc comment is the
//! flag's help, and its field name gives the flag (`data_dir` -> `--data-dir`), the variable
//! (`PROGLOG_DATA_DIR`) and the config-file key (`data-dir: ./data`). YAML is the default file
//! format; a file whose name ends in `.toml` is read as TOML. Every origin's text goes through
//! the same parser ([`value`]), and a bad value is reported with its key, the value, where it
//! came from and why. Unknown file keys are refused, naming the key.
//!
//! # Adding a setting
//!
//! 1. Add an entry to the `settings {}` block of the table, where it belongs in `--help`:
//!
//!    ```text
//!    /// Interval between gossip rounds
//!    gossip_interval: DurationArg => Duration, "DURATION", default("200ms");
//!    ```
//!
//!    - `name: Value`: the field (flag `--gossip-interval`, `PROGLOG_GOSSIP_INTERVAL`, file key
//!      `gossip-interval`) and the type its text is parsed into: any [`SettingValue`](value::SettingValue)
//!      (`u16`, `usize`, `bool`, `String`, `PathBuf`, `SocketAddr`, [`ByteSize`],
//!      [`DurationArg`], [`AddrList`], ...). A new kind of value implements `SettingValue`
//!      in `value.rs`.
//!    - `=> Landed` (optional): the type the field has in [`Settings`], when it is not
//!      `Value`; a [`Land`](value::Land) impl in `value.rs` converts (e.g. `ByteSize => usize`,
//!      `DurationArg => Option<Duration>` where 0 is off, `PathBuf => Option<PathBuf>` where
//!      empty is no file).
//!    - `"DURATION"`: the flag's value name in `--help`.
//!    - `default(...)`, one of: a value or its text (`default("200ms")`,
//!      `default(DurationArg(GOSSIP_INTERVAL))`), shown as `[default: 200ms]`; a computed one
//!      with its text for `--help`, `default(|env| ..., "bind-addr's host")`, whose closure
//!      gets the environment lookup and may read any setting above it by name; or
//!      `default(unset)` for an `Option`, `bool` or `Vec` that is simply absent.
//!    - Optional checks, run on the landed value in table order:
//!      `check(|v| at_least(*v, 1024))` (its `Err(reason)` is reported with the key, value
//!      and origin), and `refused("feature")` for a setting accepted but not implemented yet.
//! 2. Read it where it is used: `settings.gossip_interval`. It is on the start-up line already.
//! 3. A rule that ties several settings together goes in [`Settings::validate`]; a value
//!    built from several settings, or one whose making can fail for reasons beyond its text
//!    (resolving a host name), is a `derived {}` entry: `name: Type = expr;`, where `expr`
//!    reads the settings by name and may use `?` with a [`ConfigError`]. Whether a setting was
//!    given at all is its landing as an `Option` with `default(unset)`.
//! 4. Test it in this file's tests: a value from one origin at least, and a refused value.

mod declare;
mod file;
mod value;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use engine::{Durability, EngineConfig, LogConfig};
use net::peer::PeerTlsFiles;
use net::tls::ServerTlsFiles;

use crate::limits::{MIN_MESSAGE_BYTES, RECORD_OVERHEAD_BYTES};
use crate::observe::logging::LogFormat;
use crate::server::acl::AclFiles;
use declare::settings;
use value::SettingValue;
pub use value::{AddrList, AdminAddr, ByteSize, Cpuset, DurationArg, HostPort};

/// Below the usual 30 s grace period of process supervisors, so that the final flush and
/// sync still happen before a SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a member may be unreachable before the cluster replaces it.
pub const DEFAULT_DEAD_NODE_TIMEOUT: Duration = Duration::from_secs(600);
/// Long enough for a quick restart (which reopens the replica) to win over a move.
pub const DEFAULT_STOPPED_REPLICA_GRACE: Duration = Duration::from_secs(30);
/// Loopback only: metrics name topics and clients. Not 8401 (the book's gossip bind-addr),
/// and 9400 is clear of Prometheus's own 9090-9100 exporters' usual ports.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9400";
pub const DEFAULT_SLOW_CALL_THRESHOLD: Duration = Duration::from_secs(1);

/// The book's gossip bind-addr: what bind-addr means when not given (and gossip is off).
pub const DEFAULT_BIND_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8401));

/// Gossip membership settings; present when the node gossips.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// Where the UDP socket binds (resolved).
    pub bind: SocketAddr,
    /// The gossip address others use (resolved; never a wildcard).
    pub advertise: SocketAddr,
    /// `host:port` of members to join, resolved again at every attempt.
    pub join: Vec<String>,
    pub peer_tls: Option<PeerTlsFiles>,
}

settings! {
    settings {
        /// Directory holding the topics and the catalog
        data_dir: PathBuf, "DIR", default("./data");
        /// This node's human label in GetServers and cluster members
        node_name: String, "NODE_NAME", default(|_| host_name(), "the host name");
        /// Gossip address (UDP), a host name or IP with a port; the RPC listener takes its IP.
        /// Given, it turns gossip on [default: 127.0.0.1:8401, no gossip]
        bind_addr: HostPort => Option<SocketAddr>, "HOST:PORT", default(unset);
        /// Gossip address other nodes should use, HOST[:PORT] (port: bind-addr's); needed
        /// when bind-addr is a wildcard such as 0.0.0.0 [default: bind-addr]
        advertise_addr: String => Option<String>, "HOST[:PORT]", default(unset);
        /// gRPC port on bind-addr's IP
        rpc_port: u16, "PORT", default(8400u16);
        /// Members to join: their bind-addr, HOST:PORT (names resolved again at every
        /// attempt); turns gossip on
        start_join_addrs: AddrList => Vec<String>, "HOST:PORT,...", default(unset),
            check(|v| join_addrs(v));
        /// Start a new cluster with this node as its first member (the controller's only
        /// voter) when the data directory holds no cluster yet; a no-op on a node that
        /// belongs to one. Turns gossip on
        bootstrap: bool, "BOOL", default(false);
        /// A member not up this long (suspect, down, or gone from the member list) is removed
        /// from the cluster and its replicas re-created on other nodes; a clean leave is acted
        /// on at once
        dead_node_timeout: DurationArg => Duration, "DURATION",
            default(DurationArg(DEFAULT_DEAD_NODE_TIMEOUT)), check(|d| positive(*d));
        /// A replica stopped this long because its log failed (an I/O error; it stays stopped
        /// until the server restarts) is moved to a live node that lacks one; the node stays
        /// in the cluster
        stopped_replica_grace: DurationArg => Duration, "DURATION",
            default(DurationArg(DEFAULT_STOPPED_REPLICA_GRACE));
        /// A replica moved off this node (placed elsewhere) that hears from no leader this
        /// long is closed: its directory is removed once a member of its group says the
        /// group no longer counts this node, kept otherwise
        moved_replica_timeout: DurationArg => Duration, "DURATION",
            default(DurationArg(consensus::cluster::reconcile::DEFAULT_MOVED_REPLICA_TIMEOUT));
        /// On SIGTERM or SIGINT, once its leaderships are handed over, leave the cluster: the
        /// controller removes this node at once and re-creates its replicas on other nodes
        /// (the book's behaviour). false: stop without leaving; others see the node down, and
        /// a restart within dead-node-timeout keeps its replicas (rolling restarts)
        leave_on_shutdown: bool, "BOOL", default(true);
        /// Casbin ACL model (the book's model.conf); with acl-policy-file turns authorization on
        acl_model_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// Casbin ACL policy (`p, subject, object, action` lines); reloaded on SIGHUP and change
        acl_policy_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// Server certificate chain, PEM; with server-tls-key-file the port speaks only TLS
        server_tls_cert_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1)
        server_tls_key_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// CA for client certificates, PEM: turns on mutual TLS (clients must present one)
        server_tls_ca_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// Peer certificate, PEM (server and client auth: `proglog cert peer`); with the key and
        /// CA files only holders of a certificate from the peer CA may gossip with this node
        peer_tls_cert_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// Peer key, PEM
        peer_tls_key_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// CA that signs every peer certificate, PEM
        peer_tls_ca_file: PathBuf => Option<PathBuf>, "PATH", default(unset);
        /// Engine shards, one executor each; 0 = one per CPU of cpuset
        shards: usize, "N", default(0usize);
        /// CPUs the shards are pinned to, shard i on the i-th, as a list such as 0-3,6 (shards
        /// beyond its CPUs float over them), or none (not pinned); each must be in the
        /// process's affinity mask [default: the CPUs of the process's affinity mask]
        cpuset: Cpuset => Option<Cpuset>, "CPUS|none", default(unset),
            check(|v| cpuset_allowed(v.as_ref(), &engine::cpus::allowed()));
        /// Partition replicas one shard may hold: a topic creation that would place more on a
        /// node (its shards times this) is refused with RESOURCE_EXHAUSTED (the controller's
        /// leader's value applies to every node)
        max_partitions_per_shard: u32, "N",
            default(engine::limits::DEFAULT_MAX_PARTITIONS_PER_SHARD),
            check(|n| at_least(*n as usize, 1));
        /// Default durability of new topics: always | interval:<ms> | never
        durability: Durability, "POLICY", default(Durability::Always);
        /// Default segment size of new topics, e.g. 256MiB (64KiB to 2GiB; a record must fit in
        /// one segment, so a smaller one also caps the record size)
        segment_bytes: ByteSize => u64, "BYTES",
            default(ByteSize(LogConfig::default().segment_bytes));
        /// Largest record value accepted
        max_record_bytes: ByteSize => usize, "BYTES",
            default(ByteSize(LogConfig::default().max_record_bytes as u64));
        /// Largest gRPC message received or sent
        max_message_bytes: ByteSize => usize, "BYTES",
            default(ByteSize(net::limits::MAX_MESSAGE_BYTES as u64)),
            check(|n| at_least(*n, MIN_MESSAGE_BYTES));
        /// gRPC listen address; overrides bind-addr's IP + rpc-port
        listen: SocketAddr, "ADDR",
            default(
                |_| SocketAddr::new(bind_addr.unwrap_or(DEFAULT_BIND_ADDR).ip(), rpc_port),
                "127.0.0.1:8400"
            );
        /// Log filter, env_logger syntax (e.g. info, proglog=debug)
        log_level: String, "FILTER",
            default(|env| env("RUST_LOG").unwrap_or_else(|| "info".to_owned()), "$RUST_LOG or info"),
            check(|v| log_filter(v));
        /// How long calls in flight may run once shutdown begins, e.g. 20s, 500ms
        drain_timeout: DurationArg => Duration, "DURATION",
            default(DurationArg(DEFAULT_DRAIN_TIMEOUT));
        /// Admin HTTP address for /metrics, /healthz and /readyz, or `off`
        admin_addr: AdminAddr => Option<SocketAddr>, "ADDR|off", default(DEFAULT_ADMIN_ADDR);
        /// Connections one shard serves at once, handshakes included; at the limit the one
        /// quiet the longest (idle, or its calls all waiting for their request) is closed to
        /// make room. A shard also holds at most twice this many calls
        /// (those waiting longest for their request refused first)
        max_connections_per_shard: usize, "N",
            default(net::limits::MAX_CONNECTIONS_PER_SHARD), check(|n| at_least(*n, 1));
        /// Calls in flight on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
        max_concurrent_streams: u32, "N",
            default(net::limits::MAX_CONCURRENT_STREAMS), check(|n| at_least(*n as usize, 1));
        /// Connections running no call for this long get a GOAWAY and close; 0 = never
        connection_idle_timeout: DurationArg => Option<Duration>, "DURATION",
            default(DurationArg(net::limits::CONNECTION_IDLE_TIMEOUT));
        /// Bound on a new connection's first byte, TLS handshake and HTTP/2 handshake, each
        handshake_timeout: DurationArg => Duration, "DURATION",
            default(DurationArg(net::limits::HANDSHAKE_TIMEOUT)), check(|d| positive(*d));
        /// Calls a client may reset per second on one connection, on average (rapid-reset
        /// defence: over it the connection gets GOAWAY ENHANCE_YOUR_CALM); 0 = no limit
        max_resets_per_second: u32, "N", default(net::limits::MAX_RESETS_PER_SECOND);
        /// Memory for buffers that grow with load (queued requests and replies, read-ahead,
        /// HTTP/2 send buffers, write-behind buffers); a stream whose client does not read
        /// stops being fed once its connection's share is used
        memory_budget: ByteSize => usize, "BYTES",
            default(ByteSize(net::limits::MEMORY_BUDGET_BYTES as u64));
        /// One connection's share of memory-budget
        connection_memory: ByteSize => usize, "BYTES",
            default(ByteSize(net::limits::CONNECTION_MEMORY_BYTES as u64));
        /// Bytes per second each snapshot this node sends to a replica that fell behind its
        /// retained log may take, e.g. 50MiB (a replication throttle, so that catching a
        /// replica up leaves disk and network to the partitions' own traffic); 0 = no limit
        snapshot_rate_limit: ByteSize => u64, "BYTES", default(ByteSize(0));
        /// Log line format: human or json (one object per line)
        log_format: LogFormat, "FORMAT", default(LogFormat::Human);
        /// Calls slower than this are logged at warn with their timing breakdown; 0 = never
        slow_call_threshold: DurationArg => Option<Duration>, "DURATION",
            default(DurationArg(DEFAULT_SLOW_CALL_THRESHOLD));
    }
    derived {
        /// TLS on the gRPC port; `None` serves plaintext.
        tls: Option<ServerTlsFiles> = tls_files(
            server_tls_cert_file.clone(),
            server_tls_key_file.clone(),
            server_tls_ca_file.clone(),
        )?;
        /// Authorization; `None` lets every caller do everything.
        acl: Option<AclFiles> = acl_files(acl_model_file.clone(), acl_policy_file.clone())?;
        /// Gossip membership; `None` when the node was started without cluster flags.
        gossip: Option<GossipSettings> = gossip_settings(
            bind_addr,
            advertise_addr.as_deref(),
            &start_join_addrs,
            bootstrap,
            peer_tls_files(
                peer_tls_cert_file.clone(),
                peer_tls_key_file.clone(),
                peer_tls_ca_file.clone(),
            )?,
        )?;
    }
}

/// Settings errors: all are reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {reason}")]
    ReadFile {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("parsing config file {path}: {reason}")]
    ParseFile { path: PathBuf, reason: String },
    #[error("invalid value {value:?} for {key} (from {origin}): {reason}")]
    Invalid {
        key: String,
        value: String,
        origin: String,
        reason: String,
    },
    #[error("{key} is set, but it needs {feature}, which this build does not implement yet; remove it to start a single unsecured node")]
    #[allow(dead_code)] // for a setting accepted before its feature exists
    NotImplemented { key: String, feature: &'static str },
    #[error("{0}")]
    Inconsistent(String),
}

/// A `check` for a lower bound.
fn at_least(n: usize, min: usize) -> Result<(), String> {
    if n < min {
        return Err(format!("below the minimum of {min}"));
    }
    Ok(())
}

/// The log levels a filter names.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A `check` for a log filter in env_logger's syntax (`LEVEL`, `MODULE=LEVEL`, comma
/// separated, an optional `/REGEX` after). env_logger reads any other word as a module to log
/// at every level, so `warning` or `verbose` would turn every other line off, fatal errors
/// included: a bare word must be a level, or a module path (`a::b`); a module's level must
/// be a level.
fn log_filter(filter: &str) -> Result<(), String> {
    let directives = filter.split('/').next().unwrap_or_default();
    let is_level = |w: &str| LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(w));
    let levels = LOG_LEVELS.join(", ");
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        match d.split_once('=') {
            Some((module, level)) if module.trim().is_empty() || !is_level(level.trim()) => {
                return Err(format!(
                    "{d:?} is not MODULE=LEVEL with a level among {levels}"
                ));
            }
            Some(_) => {}
            None if is_level(d) || d.contains("::") => {}
            None => {
                return Err(format!(
                    "{d:?} is not a level ({levels}); to set one module's level write \
                     MODULE=LEVEL, e.g. proglog=debug"
                ));
            }
        }
    }
    Ok(())
}

/// A `check` for a duration that must not be zero.
fn positive(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(())
}

/// The server's TLS files: a certificate and its key, and with a client CA mutual TLS.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<ServerTlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert_file), Some(key_file), client_ca_file) => Ok(Some(ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file,
        })),
        (None, None, Some(_)) => Err(ConfigError::Inconsistent(
            "server-tls-ca-file needs server-tls-cert-file and server-tls-key-file: \
             mutual TLS is TLS with client certificates"
                .into(),
        )),
        _ => Err(ConfigError::Inconsistent(
            "server-tls-cert-file and server-tls-key-file go together: set both or neither".into(),
        )),
    }
}

fn acl_files(
    model: Option<PathBuf>,
    policy: Option<PathBuf>,
) -> Result<Option<AclFiles>, ConfigError> {
    match (model, policy) {
        (None, None) => Ok(None),
        (Some(model_file), Some(policy_file)) => Ok(Some(AclFiles {
            model_file,
            policy_file,
        })),
        _ => Err(ConfigError::Inconsistent(
            "acl-model-file and acl-policy-file go together: set both or neither".into(),
        )),
    }
}

/// A `check`: a cpuset lies inside the process's affinity mask `allowed`.
fn cpuset_allowed(v: Option<&Cpuset>, allowed: &[usize]) -> Result<(), String> {
    match v {
        Some(Cpuset::Cpus(cpus)) => engine::cpus::check(cpus, allowed),
        Some(Cpuset::Unpinned) | None => Ok(()),
    }
}

/// A `check`: every join address is HOST:PORT (resolved only when joining).
fn join_addrs(v: &[String]) -> Result<(), String> {
    for a in v {
        HostPort::parse(a)?;
    }
    Ok(())
}

/// The peer TLS files: all three or none.
fn peer_tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<PeerTlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert_file), Some(key_file), Some(ca_file)) => Ok(Some(PeerTlsFiles {
            cert_file,
            key_file,
            ca_file,
        })),
        _ => Err(ConfigError::Inconsistent(
            "peer-tls-cert-file, peer-tls-key-file and peer-tls-ca-file go together: set all \
             three or none"
                .into(),
        )),
    }
}

/// Gossip runs only when asked for (bind-addr given, or members to join): a node started
/// without cluster flags stays exactly a single node, and tests that start many of them never
/// contend for 8401/udp.
fn gossip_settings(
    bind: Option<SocketAddr>,
    advertise_addr: Option<&str>,
    join: &[String],
    bootstrap: bool,
    peer_tls: Option<PeerTlsFiles>,
) -> Result<Option<GossipSettings>, ConfigError> {
    if bind.is_none() && join.is_empty() && !bootstrap {
        if peer_tls.is_some() || advertise_addr.is_some() {
            return Err(ConfigError::Inconsistent(
                "peer-tls-* and advertise-addr are cluster settings: give --bind-addr or \
                 --start-join-addrs too"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let bind = bind.unwrap_or(DEFAULT_BIND_ADDR);
    Ok(Some(GossipSettings {
        bind,
        advertise: advertise(bind, advertise_addr)?,
        join: join.to_vec(),
        peer_tls,
    }))
}

/// The gossip address to advertise: `--advertise-addr` (HOST or HOST:PORT, resolved now),
/// else bind-addr; never a wildcard.
fn advertise(bind: SocketAddr, given: Option<&str>) -> Result<SocketAddr, ConfigError> {
    let addr = match given.map(str::trim).filter(|s| !s.is_empty()) {
        None => bind,
        Some(g) => {
            let with_port =
                HostPort::parse(g).unwrap_or_else(|_| HostPort(format!("{g}:{}", bind.port())));
            let mut a = with_port.resolve().map_err(|reason| ConfigError::Invalid {
                key: "advertise-addr".into(),
                value: g.to_owned(),
                origin: "settings".into(),
                reason,
            })?;
            if a.port() == 0 {
                a.set_port(bind.port());
            }
            a
        }
    };
    if addr.ip().is_unspecified() {
        return Err(ConfigError::Inconsistent(format!(
            "the gossip address {addr} is a wildcard, which other nodes cannot dial: set \
             --advertise-addr to this node's reachable address or host name"
        )));
    }
    Ok(addr)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "proglog".to_owned())
}

/// `PROGLOG_*` variables in `vars` that are no setting's but one's spelled otherwise
/// (`PROGLOG_DATADIR` for `PROGLOG_DATA_DIR`): the server would ignore them, as it ignores
/// every variable that is not a setting's (clients', scripts'), without a word. Each with
/// what it was likely meant to be.
pub fn misspelled_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let squash = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let known: Vec<(String, String)> = Settings::FIELDS
        .iter()
        .chain(&["config_file"])
        .map(|f| (declare::env_var(f), squash(f)))
        .collect();
    vars.filter_map(|(name, _)| {
        let rest = name.strip_prefix("PROGLOG_")?;
        if known.iter().any(|(var, _)| *var == name) {
            return None;
        }
        let (meant, _) = known.iter().find(|(_, sq)| *sq == squash(rest))?;
        Some((name.clone(), meant.clone()))
    })
    .collect()
}

impl Settings {
    /// Merges flags, the process environment and the config file.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, ConfigError> {
        Settings::resolve_with(args, &|k| std::env::var(k).ok())
    }

    /// Rules that tie settings together; each setting's own checks are in the table.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_addr == Some(self.listen) {
            return Err(ConfigError::Inconsistent(format!(
                "admin-addr and the gRPC address are both {}",
                self.listen
            )));
        }
        if self.listen.port() == 0 {
            // Every shard binds its own SO_REUSEPORT listener: port 0 would give each a
            // different port.
            return Err(ConfigError::Inconsistent(
                "the gRPC port must be explicit, not 0".into(),
            ));
        }
        // A connection must be able to hold a largest request and its reply, each copied once.
        let least_share = 4 * self.max_message_bytes;
        if self.connection_memory < least_share {
            return Err(ConfigError::Inconsistent(format!(
                "connection-memory {} must hold at least four largest messages (4 x max-message-bytes = {least_share})",
                self.connection_memory
            )));
        }
        if self.memory_budget < self.connection_memory {
            return Err(ConfigError::Inconsistent(format!(
                "memory-budget {} is below one connection's share (connection-memory {})",
                self.memory_budget, self.connection_memory
            )));
        }
        // A record we accept must fit in the message that returns it on Consume.
        if self.max_record_bytes + RECORD_OVERHEAD_BYTES > self.max_message_bytes {
            return Err(ConfigError::Inconsistent(format!(
                "max-record-bytes {} plus {RECORD_OVERHEAD_BYTES} bytes of framing must fit in max-message-bytes {}",
                self.max_record_bytes, self.max_message_bytes
            )));
        }
        self.log_config()
            .validate()
            .map_err(|e| ConfigError::Inconsistent(format!("log settings: {e}")))
    }
    /// Settings of topics created without explicit ones (including `default`).
    pub fn log_config(&self) -> LogConfig {
        let mut c = LogConfig {
            durability: self.durability,
            segment_bytes: self.segment_bytes,
            max_record_bytes: self.max_record_bytes,
            ..LogConfig::default()
        };
        // A batch never spans two segments: a small segment caps the batch and record sizes
        // (a larger record is refused at produce, naming the limit) instead of failing; the
        // write-behind buffer holds at least one batch.
        c.fit_to_segment();
        c.write_behind_bytes = c.write_behind_bytes.max(c.max_batch_bytes + 64 * 1024);
        c
    }

    pub fn engine_config(&self) -> EngineConfig {
        let mut c = EngineConfig::new(&self.data_dir);
        c.shards = self.shards;
        match &self.cpuset {
            None => {}
            Some(Cpuset::Cpus(cpus)) => c.cpuset = Some(cpus.clone()),
            Some(Cpuset::Unpinned) => c.pin = false,
        }
        c.default_log = self.log_config();
        c
    }

    /// The address other nodes and clients should use: the listen address, unless it is a
    /// wildcard, in which case the advertised gossip address's IP (or else bind-addr's)
    /// stands in for it.
    pub fn advertised_rpc_addr(&self) -> SocketAddr {
        let stand_in = match &self.gossip {
            Some(g) => g.advertise.ip(),
            None => self.bind_addr.unwrap_or(DEFAULT_BIND_ADDR).ip(),
        };
        let ip: IpAddr = if self.listen.ip().is_unspecified() && !stand_in.is_unspecified() {
            stand_in
        } else {
            self.listen.ip()
        };
        SocketAddr::new(ip, self.listen.port())
    }
}

/// The start-up line: every setting that has a value, as it would be written, then whether
/// TLS and authorization are on.
impl std::fmt::Display for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self
            .config_file
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        write!(f, "config-file={file}")?;
        // rpc-port only makes listen's default: with listen given it is used nowhere, and
        // shown it would name a port the server does not listen on.
        let listen_given = self
            .effective
            .iter()
            .any(|e| e.key == "listen" && !matches!(e.origin, declare::Origin::Default));
        for e in self.effective.iter().filter(|e| !e.shown.is_empty()) {
            if listen_given && e.key == "rpc-port" {
                continue;
            }
            write!(f, " {}={}", e.key, e.shown)?;
        }
        let tls = match &self.tls {
            None => "off",
            Some(t) if t.client_ca_file.is_some() => "mutual",
            Some(_) => "on",
        };
        let acl = if self.acl.is_some() { "on" } else { "off" };
        let gossip = match &self.gossip {
            None => "off".to_owned(),
            Some(g) => format!(
                "on(bind {} advertise {} peer-tls {})",
                g.bind,
                g.advertise,
                if g.peer_tls.is_some() { "on" } else { "off" }
            ),
        };
        write!(f, " tls={tls} acl={acl} gossip={gossip}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: ServeArgs, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve_with(&args, &move |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_make_a_single_local_node() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8400".parse().unwrap());
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.durability, Durability::Always);
        assert_eq!(s.max_message_bytes, 4 << 20);
    }

    /// The start-up line shows rpc-port only when it made the listen address.
    #[test]
    fn the_start_up_line_omits_rpc_port_when_listen_is_given() {
        let s = resolve(ServeArgs::default(), &[]).unwrap().to_string();
        assert!(
            s.contains(" rpc-port=8400 ") && s.contains(" listen=127.0.0.1:8400 "),
            "{s}"
        );
        let args = ServeArgs {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        let s = resolve(args, &[]).unwrap().to_string();
        assert!(
            !s.contains("rpc-port=") && s.contains(" listen=127.0.0.1:9100 "),
            "{s}"
        );
    }

    /// A word env_logger would read as a module (turning every other line off) is refused,
    /// from a flag or from RUST_LOG; levels, MODULE=LEVEL and module paths pass.
    #[test]
    fn a_log_filter_names_levels() {
        for good in [
            "info",
            "WARN",
            "info,proglog::rpc=debug",
            "h2=trace,off",
            "net::server",
        ] {
            let args = ServeArgs {
                log_level: Some(good.into()),
                ..Default::default()
            };
            assert!(resolve(args, &[]).is_ok(), "{good}");
        }
        for bad in ["warning", "verbose", "proglog=loud", "=debug"] {
            let args = ServeArgs {
                log_level: Some(bad.into()),
                ..Default::default()
            };
            let e = resolve(args, &[]).unwrap_err().to_string();
            assert!(
                e.contains("log-level") && e.contains("trace, debug"),
                "{bad}: {e}"
            );
        }
        let e = resolve(ServeArgs::default(), &[("RUST_LOG", "warning")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"warning\" is not a level"), "{e}");
    }

    /// A setting's variable spelled without its underscores, or in another case, is named
    /// with the one meant; others (a client's, a script's) are left alone.
    #[test]
    fn misspelled_variables_are_named() {
        let vars = [
            "PROGLOG_DATADIR",
            "PROGLOG_RPCPORT",
            "PROGLOG_DATA_DIR",
            "PROGLOG_BIN",
            "PROGLOG_ADDR",
            "PROGLOG_CONFIGFILE",
            "HOME",
        ]
        .map(|n| (n.to_owned(), String::new()));
        let found = misspelled_env(vars.into_iter());
        let expect = [
            ("PROGLOG_DATADIR", "PROGLOG_DATA_DIR"),
            ("PROGLOG_RPCPORT", "PROGLOG_RPC_PORT"),
            ("PROGLOG_CONFIGFILE", "PROGLOG_CONFIG_FILE"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
        assert_eq!(found, expect);
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "data-dir: /from/file\nrpc-port: 9000\nnode-name: file\nsegment-bytes: 8MiB\n",
        )
        .unwrap();
        let args = ServeArgs {
            config_file: Some(path),
            node_name: Some("flag".into()),
            ..Default::default()
        };
        let s = resolve(
            args,
            &[
                ("PROGLOG_DATA_DIR", "/from/env"),
                ("PROGLOG_NODE_NAME", "env"),
            ],
        )
        .unwrap();
        assert_eq!(s.node_name, "flag");
        assert_eq!(s.data_dir, PathBuf::from("/from/env"));
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.segment_bytes, 8 << 20);
    }

    #[test]
    fn toml_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9100\"\ndurability = \"interval:50\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config_file: Some(path),
            ..Default::default()
        };
        let s = resolve(args, &[]).unwrap();
        assert_eq!(s.listen.port(), 9100);
        assert_eq!(s.durability, Durability::Interval { interval_ms: 50 });
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "data_dir: x\n").unwrap();
        let args = ServeArgs {
            config_file: Some(path),
            ..Default::default()
        };
        assert!(matches!(
            resolve(args, &[]),
            Err(ConfigError::ParseFile { .. })
        ));
    }

    #[test]
    fn bootstrap_turns_gossip_on() {
        let s = resolve(ServeArgs::default(), &[("PROGLOG_BOOTSTRAP", "true")]).unwrap();
        assert!(s.bootstrap);
        assert!(s.gossip.is_some());
        let s = resolve(ServeArgs::default(), &[("PROGLOG_BOOTSTRAP", "false")]).unwrap();
        assert!(!s.bootstrap && s.gossip.is_none());
        assert_eq!(s.dead_node_timeout, DEFAULT_DEAD_NODE_TIMEOUT);
        let s = resolve(ServeArgs::default(), &[("PROGLOG_DEAD_NODE_TIMEOUT", "5s")]).unwrap();
        assert_eq!(s.dead_node_timeout, Duration::from_secs(5));
        assert_eq!(s.stopped_replica_grace, DEFAULT_STOPPED_REPLICA_GRACE);
        let s = resolve(
            ServeArgs::default(),
            &[("PROGLOG_STOPPED_REPLICA_GRACE", "2s")],
        )
        .unwrap();
        assert_eq!(s.stopped_replica_grace, Duration::from_secs(2));
        assert_eq!(
            s.moved_replica_timeout,
            consensus::cluster::reconcile::DEFAULT_MOVED_REPLICA_TIMEOUT
        );
        let s = resolve(
            ServeArgs::default(),
            &[("PROGLOG_MOVED_REPLICA_TIMEOUT", "3s")],
        )
        .unwrap();
        assert_eq!(s.moved_replica_timeout, Duration::from_secs(3));
        assert!(s.leave_on_shutdown);
        let s = resolve(
            ServeArgs::default(),
            &[("PROGLOG_LEAVE_ON_SHUTDOWN", "false")],
        )
        .unwrap();
        assert!(!s.leave_on_shutdown);
        assert!(resolve(
            ServeArgs::default(),
            &[("PROGLOG_LEAVE_ON_SHUTDOWN", "later")]
        )
        .is_err());
        assert!(resolve(
            ServeArgs::default(),
            &[("PROGLOG_STOPPED_REPLICA_GRACE", "soon")]
        )
        .is_err());
    }

    #[test]
    fn gossip_only_with_cluster_flags() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert!(s.gossip.is_none());
        assert_eq!(s.listen, "127.0.0.1:8400".parse().unwrap());
        // An empty join list is no cluster either.
        let s = resolve(ServeArgs::default(), &[("PROGLOG_START_JOIN_ADDRS", "")]).unwrap();
        assert!(s.gossip.is_none());
        let s = resolve(
            ServeArgs::default(),
            &[("PROGLOG_START_JOIN_ADDRS", "localhost:8401, 127.0.0.2:8401")],
        )
        .unwrap();
        let g = s.gossip.unwrap();
        assert_eq!(g.join, vec!["localhost:8401", "127.0.0.2:8401"]);
        assert_eq!(g.advertise, DEFAULT_BIND_ADDR);
        // Host names resolve; the RPC listener takes bind-addr's IP.
        let s = resolve(
            ServeArgs::default(),
            &[("PROGLOG_BIND_ADDR", "localhost:9401")],
        )
        .unwrap();
        let bind = s.bind_addr.unwrap();
        assert!(bind.ip().is_loopback());
        assert_eq!(s.listen, SocketAddr::new(bind.ip(), 8400));
        assert!(s.gossip.unwrap().join.is_empty());
        assert!(resolve(
            ServeArgs::default(),
            &[("PROGLOG_START_JOIN_ADDRS", "no-port")]
        )
        .is_err());
        assert!(resolve(ServeArgs::default(), &[("PROGLOG_BIND_ADDR", "no-port")]).is_err());
    }

    #[test]
    fn a_wildcard_is_never_advertised() {
        let wild = [("PROGLOG_BIND_ADDR", "0.0.0.0:8401")];
        let e = resolve(ServeArgs::default(), &wild)
            .unwrap_err()
            .to_string();
        assert!(e.contains("advertise-addr"), "{e}");
        let s = resolve(
            ServeArgs::default(),
            &[wild[0], ("PROGLOG_ADVERTISE_ADDR", "127.0.0.9")],
        )
        .unwrap();
        assert_eq!(s.advertised_rpc_addr(), "127.0.0.9:8400".parse().unwrap());
        assert_eq!(
            s.gossip.unwrap().advertise,
            "127.0.0.9:8401".parse().unwrap()
        );
        let s = resolve(
            ServeArgs::default(),
            &[wild[0], ("PROGLOG_ADVERTISE_ADDR", "localhost:7000")],
        )
        .unwrap();
        assert_eq!(s.gossip.unwrap().advertise.port(), 7000);
    }

    #[test]
    fn peer_tls_files_come_in_threes_and_need_a_cluster() {
        let all = [
            ("PROGLOG_PEER_TLS_CERT_FILE", "p.pem"),
            ("PROGLOG_PEER_TLS_KEY_FILE", "p-key.pem"),
            ("PROGLOG_PEER_TLS_CA_FILE", "ca.pem"),
            ("PROGLOG_START_JOIN_ADDRS", "127.0.0.1:8401"),
        ];
        let s = resolve(ServeArgs::default(), &all).unwrap();
        assert_eq!(
            s.gossip.unwrap().peer_tls.unwrap().ca_file,
            PathBuf::from("ca.pem")
        );
        assert!(matches!(
            resolve(ServeArgs::default(), &all[1..]),
            Err(ConfigError::Inconsistent(_))
        ));
        assert!(matches!(
            resolve(ServeArgs::default(), &all[..3]),
            Err(ConfigError::Inconsistent(_))
        ));
    }

    #[test]
    fn tls_and_acl_files_come_in_pairs() {
        let s = resolve(
            ServeArgs {
                server_tls_cert_file: Some("c.pem".into()),
                server_tls_key_file: Some("k.pem".into()),
                ..Default::default()
            },
            &[
                ("PROGLOG_SERVER_TLS_CA_FILE", "ca.pem"),
                ("PROGLOG_ACL_MODEL_FILE", "model.conf"),
                ("PROGLOG_ACL_POLICY_FILE", "policy.csv"),
            ],
        )
        .unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(s.acl.unwrap().policy_file, PathBuf::from("policy.csv"));
        for env in [
            &[("PROGLOG_SERVER_TLS_CERT_FILE", "c.pem")][..],
            &[("PROGLOG_SERVER_TLS_CA_FILE", "ca.pem")][..],
            &[("PROGLOG_ACL_MODEL_FILE", "m.conf")][..],
        ] {
            assert!(
                matches!(
                    resolve(ServeArgs::default(), env),
                    Err(ConfigError::Inconsistent(_))
                ),
                "{env:?}"
            );
        }
        assert!(resolve(ServeArgs::default(), &[]).unwrap().tls.is_none());
    }

    #[test]
    fn drain_timeout_from_every_source() {
        assert_eq!(
            resolve(ServeArgs::default(), &[]).unwrap().drain_timeout,
            DEFAULT_DRAIN_TIMEOUT
        );
        let s = resolve(ServeArgs::default(), &[("PROGLOG_DRAIN_TIMEOUT", "1500ms")]).unwrap();
        assert_eq!(s.drain_timeout, Duration::from_millis(1500));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "drain-timeout: 3\n").unwrap();
        let args = ServeArgs {
            config_file: Some(path),
            ..Default::default()
        };
        assert_eq!(
            resolve(args.clone(), &[]).unwrap().drain_timeout,
            Duration::from_secs(3)
        );
        let args = ServeArgs {
            drain_timeout: Some("2m".parse().unwrap()),
            ..args
        };
        assert_eq!(
            resolve(args, &[]).unwrap().drain_timeout,
            Duration::from_secs(120)
        );
        assert!("5x".parse::<DurationArg>().is_err());
        assert_eq!(
            "250us".parse::<DurationArg>(),
            Ok(DurationArg(Duration::from_micros(250)))
        );
    }

    #[test]
    fn observability_settings() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(s.admin_addr, Some(DEFAULT_ADMIN_ADDR.parse().unwrap()));
        assert_eq!(s.log_format, LogFormat::Human);
        assert_eq!(s.slow_call_threshold, Some(DEFAULT_SLOW_CALL_THRESHOLD));
        let s = resolve(
            ServeArgs::default(),
            &[
                ("PROGLOG_ADMIN_ADDR", "off"),
                ("PROGLOG_LOG_FORMAT", "json"),
                ("PROGLOG_SLOW_CALL_THRESHOLD", "0"),
            ],
        )
        .unwrap();
        assert_eq!(s.admin_addr, None);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.slow_call_threshold, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "admin-addr: 127.0.0.1:9999\nslow-call-threshold: 250ms\nlog-format: json\n",
        )
        .unwrap();
        let args = ServeArgs {
            config_file: Some(path),
            ..Default::default()
        };
        let s = resolve(args, &[]).unwrap();
        assert_eq!(s.admin_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(s.slow_call_threshold, Some(Duration::from_millis(250)));
        let line = s.to_string();
        assert!(line.contains("admin-addr=127.0.0.1:9999"), "{line}");
        assert!(line.contains("log-format=json"), "{line}");
        let same = resolve(
            ServeArgs::default(),
            &[("PROGLOG_ADMIN_ADDR", "127.0.0.1:8400")],
        );
        assert!(matches!(same, Err(ConfigError::Inconsistent(_))));
        assert!("nowhere".parse::<AdminAddr>().is_err());
    }

    #[test]
    fn connection_settings() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(
            s.max_connections_per_shard,
            net::limits::MAX_CONNECTIONS_PER_SHARD
        );
        assert_eq!(
            s.connection_idle_timeout,
            Some(net::limits::CONNECTION_IDLE_TIMEOUT)
        );
        let s = resolve(
            ServeArgs::default(),
            &[
                ("PROGLOG_MAX_CONNECTIONS_PER_SHARD", "64"),
                ("PROGLOG_MAX_CONCURRENT_STREAMS", "100"),
                ("PROGLOG_CONNECTION_IDLE_TIMEOUT", "0"),
                ("PROGLOG_HANDSHAKE_TIMEOUT", "2s"),
                ("PROGLOG_MAX_RESETS_PER_SECOND", "0"),
            ],
        )
        .unwrap();
        assert_eq!(s.max_connections_per_shard, 64);
        assert_eq!(s.max_concurrent_streams, 100);
        assert_eq!(s.connection_idle_timeout, None);
        assert_eq!(s.handshake_timeout, Duration::from_secs(2));
        assert_eq!(s.max_resets_per_second, 0);
        for (key, value) in [
            ("PROGLOG_MAX_CONNECTIONS_PER_SHARD", "0"),
            ("PROGLOG_MAX_CONCURRENT_STREAMS", "0"),
            ("PROGLOG_HANDSHAKE_TIMEOUT", "0"),
            ("PROGLOG_MAX_RESETS_PER_SECOND", "-1"),
        ] {
            let (k, v, _) = invalid(resolve(ServeArgs::default(), &[(key, value)]));
            assert_eq!(
                (format!("PROGLOG_{}", k.to_uppercase().replace('-', "_")), v),
                (key.to_owned(), value.to_owned())
            );
        }
    }

    #[test]
    fn snapshot_rate_limit() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(s.snapshot_rate_limit, 0, "no limit by default");
        let s = resolve(
            ServeArgs::default(),
            &[("PROGLOG_SNAPSHOT_RATE_LIMIT", "50MiB")],
        )
        .unwrap();
        assert_eq!(s.snapshot_rate_limit, 50 << 20);
        let (k, v, _) = invalid(resolve(
            ServeArgs::default(),
            &[("PROGLOG_SNAPSHOT_RATE_LIMIT", "fast")],
        ));
        assert_eq!((k.as_str(), v.as_str()), ("snapshot-rate-limit", "fast"));
    }

    #[test]
    fn memory_settings() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(s.memory_budget, 256 << 20);
        assert_eq!(s.connection_memory, 32 << 20);
        let s = resolve(
            ServeArgs::default(),
            &[
                ("PROGLOG_MEMORY_BUDGET", "1GiB"),
                ("PROGLOG_CONNECTION_MEMORY", "64MiB"),
            ],
        )
        .unwrap();
        assert_eq!((s.memory_budget, s.connection_memory), (1 << 30, 64 << 20));
        for env in [
            &[("PROGLOG_CONNECTION_MEMORY", "4MiB")][..],
            &[("PROGLOG_MEMORY_BUDGET", "16MiB")][..],
        ] {
            let e = resolve(ServeArgs::default(), env).unwrap_err();
            assert!(matches!(e, ConfigError::Inconsistent(_)), "{env:?}: {e}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("4MiB".parse::<ByteSize>(), Ok(ByteSize(4 << 20)));
        assert_eq!("1_000".parse::<ByteSize>(), Ok(ByteSize(1000)));
        assert_eq!("64 KiB".parse::<ByteSize>(), Ok(ByteSize(64 << 10)));
        assert!("4XB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn record_must_fit_in_a_message() {
        let args = ServeArgs {
            max_record_bytes: Some(ByteSize(4 << 20)),
            ..Default::default()
        };
        assert!(matches!(
            resolve(args, &[]),
            Err(ConfigError::Inconsistent(_))
        ));
    }

    /// Writes `text` as a YAML config file and returns args naming it (the dir must outlive
    /// the resolve).
    fn with_file(dir: &tempfile::TempDir, text: &str) -> ServeArgs {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        ServeArgs {
            config_file: Some(path),
            ..Default::default()
        }
    }

    /// For settings of different types: the default, then file, env and flag each beating
    /// what is below it.
    #[test]
    fn each_origin_beats_the_ones_below_it() {
        fn check<T: PartialEq + std::fmt::Debug>(
            file_line: &str,
            env: (&str, &str),
            flag: impl Fn(&mut ServeArgs),
            get: impl Fn(&Settings) -> T,
            [default, from_file, from_env, from_flag]: [T; 4],
        ) {
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(get(&resolve(ServeArgs::default(), &[]).unwrap()), default);
            let args = with_file(&dir, file_line);
            assert_eq!(get(&resolve(args.clone(), &[]).unwrap()), from_file);
            assert_eq!(get(&resolve(args.clone(), &[env]).unwrap()), from_env);
            let mut args = args;
            flag(&mut args);
            assert_eq!(get(&resolve(args, &[env]).unwrap()), from_flag);
        }
        check(
            "rpc-port: 9001\n",
            ("PROGLOG_RPC_PORT", "9002"),
            |a| a.rpc_port = Some(9003),
            |s| (s.rpc_port, s.listen.port()),
            [(8400, 8400), (9001, 9001), (9002, 9002), (9003, 9003)],
        );
        check(
            "data-dir: /file\n",
            ("PROGLOG_DATA_DIR", "/env"),
            |a| a.data_dir = Some("/flag".into()),
            |s| s.data_dir.clone(),
            ["./data", "/file", "/env", "/flag"].map(PathBuf::from),
        );
        check(
            "max-record-bytes: 64KiB\n",
            ("PROGLOG_MAX_RECORD_BYTES", "65537"),
            |a| a.max_record_bytes = Some(ByteSize(2 << 20)),
            |s| s.max_record_bytes,
            [1 << 20, 64 << 10, 65537, 2 << 20],
        );
        check(
            "slow-call-threshold: 0\n",
            ("PROGLOG_SLOW_CALL_THRESHOLD", "250ms"),
            |a| a.slow_call_threshold = Some(DurationArg(Duration::ZERO)),
            |s| s.slow_call_threshold,
            [
                Some(DEFAULT_SLOW_CALL_THRESHOLD),
                None,
                Some(Duration::from_millis(250)),
                None,
            ],
        );
        check(
            "durability: never\n",
            ("PROGLOG_DURABILITY", "interval:20"),
            |a| a.durability = Some(Durability::Always),
            |s| s.durability,
            [
                Durability::Always,
                Durability::Never,
                Durability::Interval { interval_ms: 20 },
                Durability::Always,
            ],
        );
        check(
            "log-format: json\n",
            ("PROGLOG_LOG_FORMAT", "human"),
            |a| a.log_format = Some(LogFormat::Json),
            |s| s.log_format,
            [
                LogFormat::Human,
                LogFormat::Json,
                LogFormat::Human,
                LogFormat::Json,
            ],
        );
        // An empty environment value clears an optional file the config file names.
        let dir = tempfile::tempdir().unwrap();
        let args = with_file(&dir, "acl-model-file: m\nacl-policy-file: p\n");
        assert!(resolve(args.clone(), &[]).unwrap().acl.is_some());
        let cleared = resolve(
            args,
            &[
                ("PROGLOG_ACL_MODEL_FILE", ""),
                ("PROGLOG_ACL_POLICY_FILE", ""),
            ],
        );
        assert!(cleared.unwrap().acl.is_none());
    }

    /// `(key, value, origin)` of an `Invalid` error, or a panic naming what came instead.
    fn invalid(r: Result<Settings, ConfigError>) -> (String, String, String) {
        match r {
            Err(ConfigError::Invalid {
                key, value, origin, ..
            }) => (key, value, origin),
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_value_names_key_value_and_origin() {
        let env = invalid(resolve(
            ServeArgs::default(),
            &[("PROGLOG_RPC_PORT", "80x")],
        ));
        assert_eq!(
            env,
            (
                "rpc-port".into(),
                "80x".into(),
                "environment variable PROGLOG_RPC_PORT".into()
            )
        );

        let dir = tempfile::tempdir().unwrap();
        let args = with_file(&dir, "segment-bytes: 4XB\n");
        let (key, value, origin) = invalid(resolve(args.clone(), &[]));
        assert_eq!((key.as_str(), value.as_str()), ("segment-bytes", "4XB"));
        assert!(
            origin.starts_with("config file ") && origin.ends_with("c.yaml"),
            "{origin}"
        );
        // Still refused when the environment overrides it: the file itself is wrong.
        let (key, ..) = invalid(resolve(args, &[("PROGLOG_SEGMENT_BYTES", "8MiB")]));
        assert_eq!(key, "segment-bytes");

        // Flags are parsed by clap; what a flag can still get wrong is the setting's own
        // check, and that names the flag.
        let args = ServeArgs {
            max_message_bytes: Some(ByteSize(512)),
            ..Default::default()
        };
        let flag = resolve(args, &[]).unwrap_err();
        assert!(matches!(flag, ConfigError::Invalid { .. }));
        assert_eq!(
            flag.to_string(),
            "invalid value \"512\" for max-message-bytes (from flag --max-message-bytes): \
             below the minimum of 1024"
        );

        // A list where one value is expected.
        let args = with_file(&dir, "listen: [a, b]\n");
        assert_eq!(invalid(resolve(args, &[])).0, "listen");
    }

    #[test]
    fn cpuset_is_a_cpu_list_or_none_inside_the_affinity_mask() {
        // Unset: the engine pins to the process's affinity mask, as it always has.
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(s.cpuset, None);
        let c = s.engine_config();
        assert!(c.pin && c.cpuset.is_none());

        let allowed = engine::cpus::allowed();
        let last = *allowed.last().unwrap();
        let args = ServeArgs {
            cpuset: Some(Cpuset::parse(&last.to_string()).unwrap()),
            ..Default::default()
        };
        let s = resolve(args, &[]).unwrap();
        assert_eq!(s.cpuset, Some(Cpuset::Cpus(vec![last])));
        assert_eq!(s.engine_config().cpuset, Some(vec![last]));
        assert!(s.to_string().contains(&format!(" cpuset={last}")), "{s}");

        let s = resolve(ServeArgs::default(), &[("PROGLOG_CPUSET", "none")]).unwrap();
        assert_eq!(s.cpuset, Some(Cpuset::Unpinned));
        assert!(!s.engine_config().pin);
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(with_file(&dir, "cpuset: NONE\n"), &[]).unwrap();
        assert_eq!(s.cpuset, Some(Cpuset::Unpinned));

        assert_eq!(
            Cpuset::parse("0-3,6").unwrap(),
            Cpuset::Cpus(vec![0, 1, 2, 3, 6])
        );
        assert_eq!(Cpuset::Cpus(vec![0, 1, 2, 3, 6]).show(), "0-3,6");
        for bad in ["", "0-", "x", "1,,2", "3-1", "4096", "nothing"] {
            let e = resolve(ServeArgs::default(), &[("PROGLOG_CPUSET", bad)]).unwrap_err();
            let e = e.to_string();
            assert!(
                e.contains("for cpuset") && e.contains("PROGLOG_CPUSET"),
                "{bad:?}: {e}"
            );
        }

        // A CPU the process may not run on is refused, naming the flag.
        let outside = last + 1;
        let args = ServeArgs {
            cpuset: Some(Cpuset::Cpus(vec![outside])),
            ..Default::default()
        };
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(
            e.contains("flag --cpuset")
                && e.contains(&format!("CPU {outside} is not one this process may run on")),
            "{e}"
        );
        assert!(cpuset_allowed(Some(&Cpuset::Cpus(vec![0, 5])), &[0, 1]).is_err());
        assert!(cpuset_allowed(Some(&Cpuset::Cpus(vec![4, 5])), &[4, 5]).is_ok());
        assert!(cpuset_allowed(Some(&Cpuset::Unpinned), &[0]).is_ok());
    }

    #[test]
    fn an_unknown_file_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (text, says) in [
            ("data-dir: x\nretention: 7d\n", "unknown key `retention`"),
            (
                "rpc_port: 1\n",
                "unknown key `rpc_port` (did you mean `rpc-port`?)",
            ),
        ] {
            let e = resolve(with_file(&dir, text), &[]).unwrap_err();
            assert!(matches!(e, ConfigError::ParseFile { .. }), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let args = ServeArgs {
            config_file: Some(path),
            ..Default::default()
        };
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(
            e.contains("unknown key `colour`") && e.contains("data-dir"),
            "{e}"
        );
        // config-file names the file; it is not a key inside one.
        let e = resolve(with_file(&dir, "config-file: other.yaml\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("`config-file`"), "{e}");
    }

    #[test]
    fn flags_parse_through_clap_as_declared() {
        use clap::{Args, FromArgMatches};
        let cmd = ServeArgs::augment_args(clap::Command::new("proglog"));
        cmd.clone().debug_assert();
        let m = cmd
            .clone()
            .try_get_matches_from([
                "proglog",
                "--rpc-port",
                "9000",
                "--bootstrap",
                "--start-join-addrs",
                "a:1,b:2",
                "--start-join-addrs",
                "c:3",
                "--segment-bytes",
                "8MiB",
            ])
            .unwrap();
        let a = ServeArgs::from_arg_matches(&m).unwrap();
        assert_eq!(a.rpc_port, Some(9000));
        assert_eq!(a.bootstrap, Some(true));
        assert_eq!(
            a.start_join_addrs,
            Some(AddrList(vec!["a:1".into(), "b:2".into(), "c:3".into()]))
        );
        assert_eq!(a.segment_bytes, Some(ByteSize(8 << 20)));
        assert_eq!(a.data_dir, None);
        let s = Settings::resolve_with(&a, &|_| None).unwrap();
        assert!(s.bootstrap);

        let e = cmd
            .try_get_matches_from(["proglog", "--rpc-port", "70000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("70000 is not in 0..=65535"), "{e}");
    }

    #[test]
    fn every_default_is_valid_and_in_the_help() {
        let s = resolve(ServeArgs::default(), &[]).unwrap();
        let line = s.to_string();
        for (field, shown) in [
            ("segment_bytes", "256MiB"),
            ("max_record_bytes", "1MiB"),
            ("max_message_bytes", "4MiB"),
            ("drain_timeout", "20s"),
            ("admin_addr", DEFAULT_ADMIN_ADDR),
            ("durability", "always"),
        ] {
            let key = declare::key(field);
            assert!(line.contains(&format!(" {key}={shown}")), "{line}");
        }
        use clap::Args;
        let help = ServeArgs::augment_args(clap::Command::new("proglog").term_width(1000))
            .render_help()
            .to_string();
        assert!(help.contains("[default: 256MiB]"), "{help}");
        assert!(help.contains("[default: the host name]"), "{help}");
        for field in Settings::FIELDS {
            assert!(
                help.contains(&format!("--{}", declare::key(field))),
                "{field}"
            );
        }
    }
}
