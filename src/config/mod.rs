//! The server's settings: command-line flags, `PROGLOG_*` environment variables, and a
//! `--config-file`, merged in that order of precedence (flag > env > file > default), as the
//! book's agent does with viper.
//!
//! Every key of the config file equals a flag name (`data-dir: ./data`). YAML is the default
//! format; a file whose name ends in `.toml` is read as TOML.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use engine::{Durability, EngineConfig, LogConfig};
use net::tls::ServerTlsFiles;
use serde::Deserialize;

use crate::observe::logging::LogFormat;
use crate::server::acl::AclFiles;

/// Protobuf overhead of one record inside a `ConsumeResponse` (tags, lengths, and the
/// offset/term/type/timestamp varints at their largest), rounded up.
pub const RECORD_OVERHEAD_BYTES: usize = 64;

/// Settings errors: all are reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {reason}")]
    ParseFile { path: PathBuf, reason: String },
    #[error("invalid value {value:?} for {key} (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: &'static str,
        reason: String,
    },
    #[error("{key} is set, but it needs {feature}, which this build does not implement yet; remove it to start a single unsecured node")]
    NotImplemented {
        key: &'static str,
        feature: &'static str,
    },
    #[error("{0}")]
    Inconsistent(String),
}

/// Server flags. All optional here so that an unset flag can fall back to the environment,
/// then to the config file, then to the default named in its help.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// YAML (or .toml) file whose keys are these flag names [env: PROGLOG_CONFIG_FILE]
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Directory holding the topics and the catalog [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's id, reported by GetServers [default: the host name]
    #[arg(long)]
    pub node_name: Option<String>,
    /// Gossip address; the RPC listener takes its IP [default: 127.0.0.1:8401]
    #[arg(long, value_name = "ADDR")]
    pub bind_addr: Option<SocketAddr>,
    /// gRPC port on bind-addr's IP [default: 8400]
    #[arg(long, value_name = "PORT")]
    pub rpc_port: Option<u16>,
    /// Cluster members to join (needs membership; not implemented yet)
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub start_join_addrs: Option<Vec<String>>,
    /// Bootstrap a new Raft cluster (needs replication; not implemented yet)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bootstrap: Option<bool>,
    /// Casbin ACL model (the book's model.conf); with acl-policy-file turns authorization on
    #[arg(long, value_name = "PATH")]
    pub acl_model_file: Option<PathBuf>,
    /// Casbin ACL policy (`p, subject, object, action` lines); reloaded on SIGHUP and change
    #[arg(long, value_name = "PATH")]
    pub acl_policy_file: Option<PathBuf>,
    /// Server certificate chain, PEM; with server-tls-key-file the port speaks only TLS
    #[arg(long, value_name = "PATH")]
    pub server_tls_cert_file: Option<PathBuf>,
    /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PATH")]
    pub server_tls_key_file: Option<PathBuf>,
    /// CA for client certificates, PEM: turns on mutual TLS (clients must present one)
    #[arg(long, value_name = "PATH")]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Peer certificate (needs TLS between nodes; not implemented yet)
    #[arg(long, value_name = "PATH")]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Peer key (needs TLS between nodes; not implemented yet)
    #[arg(long, value_name = "PATH")]
    pub peer_tls_key_file: Option<PathBuf>,
    /// CA for peer certificates (needs TLS between nodes; not implemented yet)
    #[arg(long, value_name = "PATH")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Engine shards, one executor each; 0 = one per CPU [default: 0]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Default durability of new topics: always | interval:<ms> | never [default: always]
    #[arg(long, value_name = "POLICY")]
    pub durability: Option<Durability>,
    /// Default segment size of new topics, e.g. 256MiB [default: 256MiB]
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<ByteSize>,
    /// Largest record value accepted [default: 1MiB]
    #[arg(long, value_name = "BYTES")]
    pub max_record_bytes: Option<ByteSize>,
    /// Largest gRPC message received or sent [default: 4MiB]
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<ByteSize>,
    /// gRPC listen address; overrides bind-addr's IP + rpc-port [default: 127.0.0.1:8400]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log filter, env_logger syntax (e.g. info, proglog=debug) [default: $RUST_LOG or info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// How long calls in flight may run once shutdown begins, e.g. 20s, 500ms [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<DurationArg>,
    /// Admin HTTP address for /metrics, /healthz and /readyz, or `off` [default: 127.0.0.1:9400]
    #[arg(long, value_name = "ADDR|off")]
    pub admin_addr: Option<AdminAddr>,
    /// Log line format: human or json (one object per line) [default: human]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Calls slower than this are logged at warn with their timing breakdown; 0 = never
    /// [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub slow_call_threshold: Option<DurationArg>,
}

/// The admin HTTP address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl FromStr for AdminAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<AdminAddr, String> {
        match s.trim() {
            "" | "off" | "none" => Ok(AdminAddr(None)),
            a => a
                .parse()
                .map(|a| AdminAddr(Some(a)))
                .map_err(|e| format!("{a:?} is not an address (e.g. 127.0.0.1:9400) or off: {e}")),
        }
    }
}

/// A duration written with a unit (`250us`, `500ms`, `20s`, `2m`, `1h`) or as plain seconds (`20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<DurationArg, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. 20s, 500ms, 2m)"))?;
        let us: u64 = match unit.trim() {
            "" | "s" => 1_000_000,
            "ms" => 1000,
            "us" | "µs" => 1,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?}; use us, ms, s, m or h"
                ))
            }
        };
        n.checked_mul(us)
            .map(|us| DurationArg(Duration::from_micros(us)))
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DurationArg, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(DurationArg(Duration::from_secs(n))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A byte count written as a number or with a unit: `1048576`, `1MiB`, `64KiB`, `2GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{s:?} is not a byte count"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            other => return Err(format!("unknown unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Either a list or one comma-separated string, as YAML users write both.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum AddrList {
    List(Vec<String>),
    One(String),
}

impl AddrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            AddrList::List(v) => v,
            AddrList::One(s) => split_list(&s),
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The config file: the same keys as the flags. Unknown keys are an error so that a typo does
/// not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    node_name: Option<String>,
    bind_addr: Option<String>,
    rpc_port: Option<u16>,
    start_join_addrs: Option<AddrList>,
    bootstrap: Option<bool>,
    acl_model_file: Option<PathBuf>,
    acl_policy_file: Option<PathBuf>,
    server_tls_cert_file: Option<PathBuf>,
    server_tls_key_file: Option<PathBuf>,
    server_tls_ca_file: Option<PathBuf>,
    peer_tls_cert_file: Option<PathBuf>,
    peer_tls_key_file: Option<PathBuf>,
    peer_tls_ca_file: Option<PathBuf>,
    shards: Option<usize>,
    durability: Option<String>,
    segment_bytes: Option<ByteSize>,
    max_record_bytes: Option<ByteSize>,
    max_message_bytes: Option<ByteSize>,
    listen: Option<String>,
    log_level: Option<String>,
    drain_timeout: Option<DurationArg>,
    admin_addr: Option<String>,
    log_format: Option<String>,
    slow_call_threshold: Option<DurationArg>,
}

/// The effective settings of a server, every default filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub node_name: String,
    pub bind_addr: SocketAddr,
    pub rpc_port: u16,
    pub listen: SocketAddr,
    pub shards: usize,
    pub durability: Durability,
    pub segment_bytes: u64,
    pub max_record_bytes: usize,
    pub max_message_bytes: usize,
    pub log_level: String,
    /// TLS on the gRPC port; `None` serves plaintext.
    pub tls: Option<ServerTlsFiles>,
    /// Authorization; `None` lets every caller do everything.
    pub acl: Option<AclFiles>,
    pub drain_timeout: Duration,
    /// Where /metrics, /healthz and /readyz are served; `None` turns the admin port off.
    pub admin_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// `None`: no call is logged as slow.
    pub slow_call_threshold: Option<Duration>,
}

pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:8401";
pub const DEFAULT_RPC_PORT: u16 = 8400;
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 4 << 20;
/// Below the usual 30 s grace period of process supervisors, so that the final flush and
/// sync still happen before a SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Loopback only: metrics name topics and clients. Not 8401 (the book's gossip bind-addr),
/// and 9400 is clear of Prometheus's own 9090-9100 exporters' usual ports.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9400";
pub const DEFAULT_SLOW_CALL_THRESHOLD: Duration = Duration::from_secs(1);

/// Where a value came from, for error messages.
struct Sources<'a> {
    file: &'a FileConfig,
    env: &'a dyn Fn(&str) -> Option<String>,
}

fn env_name(key: &str) -> String {
    format!("PROGLOG_{}", key.replace('-', "_").to_ascii_uppercase())
}

impl Sources<'_> {
    /// flag > env > file, parsing the environment's string with `FromStr`.
    fn pick<T: FromStr>(
        &self,
        key: &'static str,
        flag: Option<T>,
        file: Option<T>,
    ) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        if flag.is_some() {
            return Ok(flag);
        }
        if let Some(v) = (self.env)(&env_name(key)) {
            return v
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError::Invalid {
                    key,
                    value: v.clone(),
                    origin: "environment",
                    reason: e.to_string(),
                });
        }
        Ok(file)
    }

    /// Like `pick` for values the file holds as strings (addresses, policies).
    fn pick_str<T: FromStr>(
        &self,
        key: &'static str,
        flag: Option<T>,
        file: Option<&String>,
    ) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let file = match file {
            None => None,
            Some(s) => Some(s.parse().map_err(|e: T::Err| ConfigError::Invalid {
                key,
                value: s.clone(),
                origin: "config file",
                reason: e.to_string(),
            })?),
        };
        self.pick(key, flag, file)
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
        path: path.to_owned(),
        source: e,
    })?;
    let parse_err = |reason: String| ConfigError::ParseFile {
        path: path.to_owned(),
        reason,
    };
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| parse_err(e.to_string()))
    } else {
        yaml_serde::from_str(&text).map_err(|e| parse_err(e.to_string()))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "proglog".to_owned())
}

impl Settings {
    /// Merges flags, the process environment and the config file.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, ConfigError> {
        Settings::resolve_with(args, &|k| std::env::var(k).ok())
    }

    /// [`resolve`](Self::resolve) with an explicit environment, for tests.
    pub fn resolve_with(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let config_file = match &args.config_file {
            Some(p) => Some(p.clone()),
            None => env(&env_name("config-file")).map(PathBuf::from),
        };
        let file = match &config_file {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let src = Sources { file: &file, env };
        let a = args.clone();

        // Accepted for compatibility with the book's agent, refused until implemented:
        // silently ignoring cluster or peer-TLS settings would run a node that is not what
        // the operator believes it is.
        let joins = match a.start_join_addrs {
            Some(v) => Some(v),
            None => match env(&env_name("start-join-addrs")) {
                Some(s) => Some(split_list(&s)),
                None => src.file.start_join_addrs.clone().map(AddrList::into_vec),
            },
        };
        if joins.is_some_and(|v| !v.is_empty()) {
            return Err(ConfigError::NotImplemented {
                key: "start-join-addrs",
                feature: "cluster membership (discovery, book chapter 8)",
            });
        }
        if src.pick("bootstrap", a.bootstrap, file.bootstrap)? == Some(true) {
            return Err(ConfigError::NotImplemented {
                key: "bootstrap",
                feature: "Raft replication (book chapter 8)",
            });
        }
        let unimplemented: [(&'static str, Option<PathBuf>, Option<PathBuf>, &'static str); 3] = [
            (
                "peer-tls-cert-file",
                a.peer_tls_cert_file,
                file.peer_tls_cert_file.clone(),
                "TLS between cluster nodes (book chapters 5 and 8)",
            ),
            (
                "peer-tls-key-file",
                a.peer_tls_key_file,
                file.peer_tls_key_file.clone(),
                "TLS between cluster nodes (book chapters 5 and 8)",
            ),
            (
                "peer-tls-ca-file",
                a.peer_tls_ca_file,
                file.peer_tls_ca_file.clone(),
                "TLS between cluster nodes (book chapters 5 and 8)",
            ),
        ];
        for (key, flag, from_file, feature) in unimplemented {
            let v: Option<PathBuf> = src.pick(key, flag, from_file)?;
            if v.is_some_and(|p| !p.as_os_str().is_empty()) {
                return Err(ConfigError::NotImplemented { key, feature });
            }
        }
        // An empty path counts as unset, so that an environment can clear a file's value.
        let path = |key: &'static str, flag: Option<PathBuf>, from_file: &Option<PathBuf>| {
            src.pick(key, flag, from_file.clone())
                .map(|v| v.filter(|p: &PathBuf| !p.as_os_str().is_empty()))
        };
        let cert = path(
            "server-tls-cert-file",
            a.server_tls_cert_file,
            &file.server_tls_cert_file,
        )?;
        let key = path(
            "server-tls-key-file",
            a.server_tls_key_file,
            &file.server_tls_key_file,
        )?;
        let ca = path(
            "server-tls-ca-file",
            a.server_tls_ca_file,
            &file.server_tls_ca_file,
        )?;
        let tls =
            match (cert, key, ca) {
                (None, None, None) => None,
                (Some(cert_file), Some(key_file), client_ca_file) => Some(ServerTlsFiles {
                    cert_file,
                    key_file,
                    client_ca_file,
                }),
                (None, None, Some(_)) => {
                    return Err(ConfigError::Inconsistent(
                        "server-tls-ca-file needs server-tls-cert-file and server-tls-key-file: \
                     mutual TLS is TLS with client certificates"
                            .into(),
                    ))
                }
                _ => return Err(ConfigError::Inconsistent(
                    "server-tls-cert-file and server-tls-key-file go together: set both or neither"
                        .into(),
                )),
            };
        let model = path("acl-model-file", a.acl_model_file, &file.acl_model_file)?;
        let policy = path("acl-policy-file", a.acl_policy_file, &file.acl_policy_file)?;
        let acl = match (model, policy) {
            (None, None) => None,
            (Some(model_file), Some(policy_file)) => Some(AclFiles {
                model_file,
                policy_file,
            }),
            _ => {
                return Err(ConfigError::Inconsistent(
                    "acl-model-file and acl-policy-file go together: set both or neither".into(),
                ))
            }
        };
        let drain_timeout = src
            .pick("drain-timeout", a.drain_timeout, file.drain_timeout)?
            .map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0);

        let admin_addr =
            match src.pick_str("admin-addr", a.admin_addr, file.admin_addr.as_ref())? {
                Some(a) => a.0,
                None => Some(DEFAULT_ADMIN_ADDR.parse().map_err(
                    |e: std::net::AddrParseError| {
                        ConfigError::Inconsistent(format!("built-in admin-addr: {e}"))
                    },
                )?),
            };
        let log_format = src
            .pick_str("log-format", a.log_format, file.log_format.as_ref())?
            .unwrap_or_default();
        let slow_call_threshold = match src.pick(
            "slow-call-threshold",
            a.slow_call_threshold,
            file.slow_call_threshold,
        )? {
            None => Some(DEFAULT_SLOW_CALL_THRESHOLD),
            Some(d) if d.0.is_zero() => None,
            Some(d) => Some(d.0),
        };

        let data_dir = src
            .pick("data-dir", a.data_dir, file.data_dir.clone())?
            .unwrap_or_else(|| PathBuf::from("./data"));
        let node_name = src
            .pick("node-name", a.node_name, file.node_name.clone())?
            .unwrap_or_else(host_name);
        let bind_addr: SocketAddr =
            match src.pick_str("bind-addr", a.bind_addr, file.bind_addr.as_ref())? {
                Some(v) => v,
                None => DEFAULT_BIND_ADDR
                    .parse()
                    .map_err(|e: std::net::AddrParseError| {
                        ConfigError::Inconsistent(format!("built-in bind-addr: {e}"))
                    })?,
            };
        let rpc_port = src
            .pick("rpc-port", a.rpc_port, file.rpc_port)?
            .unwrap_or(DEFAULT_RPC_PORT);
        let listen = src
            .pick_str("listen", a.listen, file.listen.as_ref())?
            .unwrap_or_else(|| SocketAddr::new(bind_addr.ip(), rpc_port));
        let shards = src.pick("shards", a.shards, file.shards)?.unwrap_or(0);
        let durability = src
            .pick_str("durability", a.durability, file.durability.as_ref())?
            .unwrap_or(Durability::Always);
        let defaults = LogConfig::default();
        let segment_bytes = src
            .pick("segment-bytes", a.segment_bytes, file.segment_bytes)?
            .map_or(defaults.segment_bytes, |b| b.0);
        let max_record_bytes = src
            .pick(
                "max-record-bytes",
                a.max_record_bytes,
                file.max_record_bytes,
            )?
            .map_or(defaults.max_record_bytes as u64, |b| b.0);
        let max_message_bytes = src
            .pick(
                "max-message-bytes",
                a.max_message_bytes,
                file.max_message_bytes,
            )?
            .map_or(DEFAULT_MAX_MESSAGE_BYTES, |b| b.0);
        let log_level = src
            .pick("log-level", a.log_level, file.log_level.clone())?
            .or_else(|| env("RUST_LOG"))
            .unwrap_or_else(|| "info".to_owned());

        let to_usize = |key: &'static str, v: u64| {
            usize::try_from(v).map_err(|_| ConfigError::Invalid {
                key,
                value: v.to_string(),
                origin: "settings",
                reason: "too large for this platform".into(),
            })
        };
        let s = Settings {
            config_file,
            data_dir,
            node_name,
            bind_addr,
            rpc_port,
            listen,
            shards,
            durability,
            segment_bytes,
            max_record_bytes: to_usize("max-record-bytes", max_record_bytes)?,
            max_message_bytes: to_usize("max-message-bytes", max_message_bytes)?,
            log_level,
            admin_addr,
            log_format,
            slow_call_threshold,
            tls,
            acl,
            drain_timeout,
        };
        s.validate()?;
        Ok(s)
    }

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
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::Inconsistent(format!(
                "max-message-bytes {} is below the minimum of 1024",
                self.max_message_bytes
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
        // A batch must hold at least one record of the largest size, and the write-behind
        // buffer at least one batch; a small segment caps the batch instead of failing.
        let fits_segment = usize::try_from(c.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(engine::batch::HEADER_LEN);
        c.max_batch_bytes = c.max_batch_bytes.min(fits_segment).max(c.max_record_bytes);
        c.write_behind_bytes = c.write_behind_bytes.max(c.max_batch_bytes + 64 * 1024);
        c
    }

    pub fn engine_config(&self) -> EngineConfig {
        let mut c = EngineConfig::new(&self.data_dir);
        c.shards = self.shards;
        c.default_log = self.log_config();
        c
    }

    /// The address other nodes and clients should use: the listen address, unless it is a
    /// wildcard, in which case the bind address's IP stands in for it.
    pub fn advertised_rpc_addr(&self) -> SocketAddr {
        let ip: IpAddr =
            if self.listen.ip().is_unspecified() && !self.bind_addr.ip().is_unspecified() {
                self.bind_addr.ip()
            } else {
                self.listen.ip()
            };
        SocketAddr::new(ip, self.listen.port())
    }
}

impl std::fmt::Display for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self
            .config_file
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        let shards = if self.shards == 0 {
            format!(
                "0 (one per CPU: {})",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )
        } else {
            self.shards.to_string()
        };
        let tls = match &self.tls {
            None => "off".to_owned(),
            Some(t) => match &t.client_ca_file {
                None => format!("on (cert {})", t.cert_file.display()),
                Some(ca) => format!(
                    "mutual (cert {}, client CA {})",
                    t.cert_file.display(),
                    ca.display()
                ),
            },
        };
        let admin = self
            .admin_addr
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        let slow = self
            .slow_call_threshold
            .map_or_else(|| "off".to_owned(), |d| format!("{d:?}"));
        let acl = match &self.acl {
            None => "off".to_owned(),
            Some(a) => format!(
                "on (model {}, policy {})",
                a.model_file.display(),
                a.policy_file.display()
            ),
        };
        write!(
            f,
            "config-file={file} data-dir={} node-name={} bind-addr={} rpc-port={} listen={} \
             shards={shards} durability={} segment-bytes={} max-record-bytes={} \
             max-message-bytes={} log-level={} log-format={} drain-timeout={:?} tls={tls} \
             acl={acl} admin-addr={admin} slow-call-threshold={slow}",
            self.data_dir.display(),
            self.node_name,
            self.bind_addr,
            self.rpc_port,
            self.listen,
            self.durability,
            self.segment_bytes,
            self.max_record_bytes,
            self.max_message_bytes,
            self.log_level,
            self.log_format,
            self.drain_timeout
        )
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
    fn unimplemented_features_are_refused() {
        let args = ServeArgs {
            peer_tls_cert_file: Some("cert.pem".into()),
            ..Default::default()
        };
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(e.contains("peer-tls-cert-file") && e.contains("TLS"), "{e}");
        let e = resolve(ServeArgs::default(), &[("PROGLOG_BOOTSTRAP", "true")]).unwrap_err();
        assert!(e.to_string().contains("Raft"), "{e}");
        let e = resolve(
            ServeArgs::default(),
            &[("PROGLOG_START_JOIN_ADDRS", "a:1,b:2")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("membership"), "{e}");
        // Explicitly false or empty is fine.
        resolve(
            ServeArgs::default(),
            &[
                ("PROGLOG_BOOTSTRAP", "false"),
                ("PROGLOG_START_JOIN_ADDRS", ""),
            ],
        )
        .unwrap();
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
}
