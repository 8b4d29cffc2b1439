//! Command-line options of `proglog-bench`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

const ABOUT: &str = "Load generator for any log.v1 gRPC server (proglog, or the book's Go server)";

const LONG_ABOUT: &str = "\
Load generator for any log.v1 gRPC server (proglog, or the book's Go server).

By default it uses only the book's four data RPCs (Produce, ProduceStream, Consume, \
ConsumeStream), so it works against any log.v1 server. proglog's extensions are used only \
when asked for: the produce-batch workload (ProduceBatch) and --topic/--partition/--create-topic.

The load runs on glommio executors, one per core given with --cores; connections are spread \
over them round-robin and every stream of a connection runs on that connection's executor. \
Latencies go into HdrHistograms (3 significant digits). Throughput and latency count only \
completions inside the measurement window (after --warmup, before the end of --duration).

Closed loop (default): every lane keeps --window requests in flight and sends the next one \
when a response arrives; latency is measured from the actual send. Open loop (--rate): \
requests are scheduled at fixed intervals and latency is measured from each request's \
INTENDED send time, so a server that stalls cannot hide the stall by slowing the sender \
down (coordinated omission).

Exit status: 0 on success; 1 when the run failed (could not connect, more than \
--max-errors RPC errors, or --verify found a lost, duplicated or corrupted record); \
2 for bad arguments.";

const AFTER_HELP: &str = "\
WORKLOADS (--workload, comma-separated; each runs concurrently on its own connections; \
append :N to give one workload N connections, e.g. produce-stream:4,consume-stream:1):
  produce         unary Produce; --window calls in flight per lane
  produce-stream  ProduceStream, one record per message, --window messages in flight per stream
  produce-batch   unary ProduceBatch (extension) of --batch records; --window calls in flight
  consume         unary Consume over prefilled records (--consume-order sequential|random)
  consume-stream  ConsumeStream catch-up: read the prefilled range from its start, reopen, repeat
  end-to-end      ProduceStream producers stamp each record with its (intended) send time;
                  --consumers tailing ConsumeStreams measure produce-to-receive latency
  tail            --connections x --streams tailing ConsumeStreams that just wait (with no
                  producer they are idle: use with --server-pid to see what idle streams cost)
  none            no load (e.g. only --measure-loopback)

FAILOVER: `proglog-bench failover --addr A,B,C --kill-cmd CMD --restart-cmd CMD` kills a
partition's leader under load and times until a produce is acknowledged again (see
`proglog-bench failover --help`).

LANES: a workload runs --connections x --streams lanes. A lane of a streaming workload is one
stream; a lane of a unary workload is a pipeline of up to --window concurrent calls on its
connection. --rate is split evenly over the lanes.

VERIFICATION (--verify): every record carries a header (run id, lane, sequence number,
send time, CRC-32C of the whole value) and a body derived from the sequence. After the load,
every acknowledged offset is read back with ConsumeStream and checked: a missing offset is a
loss, the same (lane, sequence) at two offsets is a duplicate, a bad checksum or another
record at an acknowledged offset is a mismatch. Any of them fails the run (exit 1).

EXAMPLES:
  # 10 s of pipelined single-record produce, 100 B records, 4 connections x 256 in flight
  proglog-bench --workload produce-stream --connections 4 --window 256 --record-size 100

  # batched produce (proglog extension), 1 KiB records x 64 per request, JSON output
  proglog-bench -w produce-batch --record-size 1KiB --batch 64 --window 8 --connections 2 --json

  # open loop at 50,000 records/s: latency from the intended send time
  proglog-bench -w produce-stream --rate 50000 --duration 30s

  # catch-up reads of 200,000 prefilled records, unary and streaming side by side
  proglog-bench -w consume:2,consume-stream:1 --prefill 200000

  # produce-to-receive latency at 20,000 records/s with 2 tailing consumers
  proglog-bench -w end-to-end --rate 20000 --consumers 2

  # check every acknowledged record (fails with exit 1 on loss/duplicate/corruption)
  proglog-bench -w produce-stream,produce --verify --record-size 64..4096

  # 100 idle tailing streams for 10 s; report the server's CPU use
  proglog-bench -w tail --connections 4 --streams 25 --duration 10s --warmup 0s --server-pid $(pidof proglog)

  # loopback TCP bandwidth only, to quote server figures as ratios
  proglog-bench -w none --measure-loopback

  # TLS / mutual TLS
  proglog-bench --tls-ca ca.pem --tls-cert client.pem --tls-key client-key.pem --tls-server-name localhost

Sizes accept B, KiB, MiB, KB, MB (1KiB = 1024); durations accept ms, s, m (plain numbers are
seconds).";

/// `proglog-bench` options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proglog-bench",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Opts {
    /// Server addresses, comma-separated (HOST:PORT[,HOST:PORT...], host names allowed):
    /// one node of a cluster is enough; the load goes to the leader of --topic/--partition,
    /// learned from them
    #[arg(
        long,
        short = 'a',
        default_value = "127.0.0.1:8400",
        value_name = "HOST:PORT[,...]"
    )]
    pub addr: String,

    /// Workloads to run concurrently, comma-separated, each optionally with its own
    /// connection count (KIND[:CONNECTIONS]); see WORKLOADS below
    #[arg(
        long,
        short = 'w',
        value_delimiter = ',',
        default_value = "produce-stream",
        value_name = "KIND[:N],..."
    )]
    pub workload: Vec<WorkloadSpec>,

    /// TCP connections per workload (unless given per workload with KIND:N)
    #[arg(long, short = 'c', default_value_t = 1, value_name = "N")]
    pub connections: usize,

    /// Streams (lanes) per connection
    #[arg(long, short = 's', default_value_t = 1, value_name = "N")]
    pub streams: usize,

    /// Requests in flight per lane (ProduceStream messages awaiting their response, or
    /// concurrent unary calls)
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub window: usize,

    /// Record value size: a size (100, 1KiB) or a uniform range MIN..MAX (64..4096)
    #[arg(long, default_value = "100", value_name = "SIZE|MIN..MAX")]
    pub record_size: SizeRange,

    /// Records per ProduceBatch request (produce-batch only)
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch: usize,

    /// Length of the measurement window, after the warm-up
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,

    /// Load before the measurement window starts (not counted)
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub warmup: Duration,

    /// Open loop: target requests per second for each workload, split over its lanes
    /// (a produce-batch request carries --batch records). Default: closed loop
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,

    /// Number of glommio executors (threads) that run the load, one per core
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cores: usize,

    /// Pin the executors to these CPUs (comma-separated, one per executor); default unpinned
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    pub pin_cpus: Option<Vec<usize>>,

    /// Tailing ConsumeStream consumers of the end-to-end workload
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub consumers: usize,

    /// Records written (with ProduceStream) before consume workloads start; they read them
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub prefill: u64,

    /// Order of the offsets unary consume reads
    #[arg(long, value_enum, default_value_t = ConsumeOrder::Sequential)]
    pub consume_order: ConsumeOrder,

    /// Topic (proglog extension; default: the server's default topic, as book clients)
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,

    /// Partition (proglog extension)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub partition: u32,

    /// Create --topic first with the Admin service (ALREADY_EXISTS is fine)
    #[arg(long, requires = "topic")]
    pub create_topic: bool,

    /// Read back and check every acknowledged record after the load; fails the run on any
    /// loss, duplicate or mismatch
    #[arg(long)]
    pub verify: bool,

    /// Testing the verifier: skip (read-back drops one acknowledged record), corrupt (one
    /// record is sent with a bad checksum) or duplicate (one record is sent twice)
    #[arg(long, value_enum, hide = true)]
    pub inject_fault: Option<Fault>,

    /// Deadline of each unary call
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// RPC errors tolerated before the run counts as failed (exit 1)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_errors: u64,

    /// Also measure loopback TCP bandwidth (a plain TCP blast between two threads over
    /// 127.0.0.1) before the load, and report throughput as a ratio to it
    #[arg(long)]
    pub measure_loopback: bool,

    /// Length of the loopback measurement
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub loopback_duration: Duration,

    /// Also report this process's CPU use over the measurement window (/proc/PID/stat),
    /// e.g. the server's when it runs on the same machine
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Print the results as one JSON document on stdout (progress still goes to stderr)
    #[arg(long)]
    pub json: bool,

    /// No per-second progress lines
    #[arg(long, short = 'q')]
    pub quiet: bool,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS client options. TLS is on when a CA is given.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM CA that signed the server's certificate; turns TLS on (also --tls-ca-file, as the
    /// proglog CLI spells it)
    #[arg(long, visible_alias = "tls-ca-file", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key)
    #[arg(
        long,
        visible_alias = "tls-cert-file",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert
    #[arg(
        long,
        visible_alias = "tls-key-file",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Name to check the server's certificate against (default: the address's host)
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    pub fn any(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumeOrder {
    Sequential,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    Skip,
    Corrupt,
    Duplicate,
}

/// What a workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Produce,
    ProduceStream,
    ProduceBatch,
    Consume,
    ConsumeStream,
    EndToEnd,
    Tail,
    None,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Produce,
        Kind::ProduceStream,
        Kind::ProduceBatch,
        Kind::Consume,
        Kind::ConsumeStream,
        Kind::EndToEnd,
        Kind::Tail,
        Kind::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::ProduceStream => "produce-stream",
            Kind::ProduceBatch => "produce-batch",
            Kind::Consume => "consume",
            Kind::ConsumeStream => "consume-stream",
            Kind::EndToEnd => "end-to-end",
            Kind::Tail => "tail",
            Kind::None => "none",
        }
    }

    pub fn produces(self) -> bool {
        matches!(
            self,
            Kind::Produce | Kind::ProduceStream | Kind::ProduceBatch | Kind::EndToEnd
        )
    }

    pub fn reads_prefill(self) -> bool {
        matches!(self, Kind::Consume | Kind::ConsumeStream)
    }

    /// Whether `--window` applies.
    pub fn windowed(self) -> bool {
        matches!(
            self,
            Kind::Produce
                | Kind::ProduceStream
                | Kind::ProduceBatch
                | Kind::Consume
                | Kind::EndToEnd
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of `--workload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub kind: Kind,
    pub connections: Option<usize>,
}

impl FromStr for WorkloadSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<WorkloadSpec, String> {
        let (name, conns) = match s.split_once(':') {
            Some((n, c)) => {
                let c: usize = c.trim().parse().map_err(|_| {
                    format!("workload {s:?}: connection count {c:?} is not a number")
                })?;
                if c == 0 {
                    return Err(format!("workload {s:?}: needs at least 1 connection"));
                }
                (n.trim(), Some(c))
            }
            None => (s.trim(), None),
        };
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown workload {name:?}; one of: {}", names.join(", "))
            })?;
        Ok(WorkloadSpec {
            kind,
            connections: conns,
        })
    }
}

/// A record size or a uniform range of sizes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl SizeRange {
    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }
    pub fn mean(&self) -> f64 {
        (self.min + self.max) as f64 / 2.0
    }
}

impl fmt::Display for SizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_fixed() {
            write!(f, "{} B", self.min)
        } else {
            write!(f, "{}..{} B", self.min, self.max)
        }
    }
}

/// `100`, `1KiB`, `4kb`, `2MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100, 1KiB, 2MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "kb" => 1000,
        "m" | "mib" => 1024 * 1024,
        "mb" => 1_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (B, KiB, MiB, KB, MB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: size too large"))
}

impl FromStr for SizeRange {
    type Err = String;

    fn from_str(s: &str) -> Result<SizeRange, String> {
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (parse_size(a)?, parse_size(b)?),
            None => {
                let v = parse_size(s)?;
                (v, v)
            }
        };
        if min == 0 {
            return Err(format!("record size {s:?}: must be at least 1 byte"));
        }
        if min > max {
            return Err(format!("record size range {s:?}: MIN is larger than MAX"));
        }
        Ok(SizeRange { min, max })
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" | "min" => v * 60.0,
        other => return Err(format!("{s:?}: unknown duration unit {other:?} (ms, s, m)")),
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("{s:?}: duration out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Header bytes every stamped record value starts with (see `payload`).
pub const MIN_STAMPED: usize = crate::grpc::payload::HEADER_LEN;

impl Opts {
    /// Cross-option checks clap cannot express; the message names the option to fix.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: usize| {
            if v == 0 {
                Err(format!("--{name} must be at least 1"))
            } else {
                Ok(())
            }
        };
        pos("connections", self.connections)?;
        pos("streams", self.streams)?;
        pos("window", self.window)?;
        pos("batch", self.batch)?;
        pos("cores", self.cores)?;
        if self.workload.is_empty() {
            return Err("--workload: give at least one workload (or none)".into());
        }
        if let Some(r) = self.rate {
            if !(0.001..=1e9).contains(&r) {
                return Err(format!(
                    "--rate {r}: must be 0.001 to 1e9 requests per second"
                ));
            }
        }
        if let Some(cpus) = &self.pin_cpus {
            if cpus.len() != self.cores {
                return Err(format!(
                    "--pin-cpus lists {} CPUs but --cores is {}: give one CPU per executor",
                    cpus.len(),
                    self.cores
                ));
            }
        }
        let kinds: Vec<Kind> = self.workload.iter().map(|w| w.kind).collect();
        let e2e = kinds.contains(&Kind::EndToEnd);
        if (self.verify || e2e) && self.record_size.min < MIN_STAMPED {
            return Err(format!(
                "--record-size {}: --verify and end-to-end need records of at least {MIN_STAMPED} B \
                 (they carry a sequence number, a send time and a checksum)",
                self.record_size
            ));
        }
        if e2e && self.consumers == 0 {
            return Err("--consumers must be at least 1 for end-to-end".into());
        }
        if kinds.iter().any(|k| k.reads_prefill()) && self.prefill == 0 {
            return Err("--prefill must be at least 1 for consume workloads".into());
        }
        if self.inject_fault.is_some() && !self.verify {
            return Err("--inject-fault needs --verify".into());
        }
        if self.duration.is_zero() && kinds.iter().any(|k| *k != Kind::None) {
            return Err("--duration must be longer than 0".into());
        }
        Ok(())
    }

    /// The addresses of `--addr`.
    pub fn addrs(&self) -> Vec<String> {
        self.addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Connections of one workload.
    pub fn connections_of(&self, w: &WorkloadSpec) -> usize {
        w.connections.unwrap_or(self.connections)
    }

    /// Whether any workload needs the server-side extensions (topics or batches).
    pub fn uses_extensions(&self) -> bool {
        self.topic.is_some()
            || self.partition != 0
            || self.workload.iter().any(|w| w.kind == Kind::ProduceBatch)
    }
}
