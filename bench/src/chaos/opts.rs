//! Command-line options of `proglog-chaos`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::checker::Class;
use super::nemesis::Kind;

const LONG_ABOUT: &str = "\
A Jepsen-style fault campaign against real proglog nodes.

Starts --nodes proglog processes, each in a network namespace of its own (pgc-n1, ...; \
addresses 10.79.0.0/16 on a bridge inside the namespace pgc-br, so the root namespace never \
routes them), and a client namespace (pgc-client) from which producers and consumers use the \
public gRPC API. While they run, faults chosen at random from the seed are injected and \
healed, one at a time. After the last fault healed, every partition is read in full from \
every node, and the checker looks for lost writes, duplicates, inconsistent offsets, aborted \
reads, non-monotonic reads and sends, poll skips, replica divergence and unseen values.

Single-node mode (--nodes 1, the default) checks one node against its own history: lost \
writes, duplicates, inconsistent offsets, aborted reads, non-monotonic reads and sends, poll \
skips and unseen acknowledged values, under kill -9, pause, power loss, a full disk, and \
partition, loss and delay between the client and the node. Multi-node mode (--nodes 3 or 5) \
forms a real Raft cluster (node 1 with --bootstrap, the others with --start-join-addrs), \
waits until the controller and every partition are led with all their voters, and adds \
what only a cluster shows: leader-targeted faults, partitions between nodes, membership \
changes, and replica divergence below the commit index (every node's log compared). A \
build that refuses --bootstrap (no replication) is refused with exit status 2.

One run at a time per machine: a run holds an exclusive flock on \
/run/lock/proglog-chaos.lock from start to end (a second run, or --cleanup, waits for it).

Everything created is removed at the end, also on SIGINT, SIGTERM and panics, and leftovers \
of an earlier run (anything named pgc-*) are removed at the start. Needs root, nft \
(Debian's nftables, for partition and loss) and mkfs.ext4 + losetup (for disk).

Exit status: 0 when no anomaly was found (with --expect-anomalies: when the expected ones \
were); 1 when anomalies were found (or expected ones were not); 2 when the run itself failed.";

const AFTER_HELP: &str = "\
NEMESES (--nemesis, comma-separated; `all` = every one the node count allows):
  kill        kill -9 a node (the leader or another), restart it after the window
  pause       SIGSTOP a node for the window, then SIGCONT (a long GC-like pause)
  partition   nftables drops: isolate a node or the leader, majority vs minority, a bridge
              node that sees both sides (one node: the client is cut off from it)
  loss        nftables `numgen random mod 100` drops of a share of a node's packets
  delay       a node's packets go through the harness's own relay (a TUN device in pgc-relay)
              that holds each one for the delay (this kernel has no netem)
  membership  remove a node (the leader or another): `proglog cluster remove` then SIGTERM, or
              kill -9 and wait until the controller removes it (--dead-node-timeout); then
              wipe it and add it back as a new member (needs 3 nodes or more)
  disk        each node's data directory is a loop-mounted ext4 volume; a ballast file
              fills it until the node refuses writes (up to --disk-hold: its logs write into
              space allocated ahead first), then for the window, then it is freed: the node must
              take writes again by itself. The fault record says when it was felt, or NOT
  power       kill -9 and drop every byte written after the node's last completed fdatasync
              (the engine's TEST-ONLY power-loss journal), then restart

EXAMPLES:
  # the CI campaign (scripts/chaos-test): three nodes, every fault, the durable policy
  proglog-chaos --nodes 3 --time 75 --nemesis all --fault-max 4 --quiet-max 2 \\
    --disk-hold 10 --dead-node-timeout 10
  # the same faults under `never`: power loss must show lost writes
  proglog-chaos --nodes 1 --durability never --nemesis power --expect-anomalies lost-write
  # a long single-node campaign
  proglog-chaos --nodes 1 --time 1800 --nemesis all --dir /var/tmp/chaos-long
  # a long three-node campaign
  proglog-chaos --nodes 3 --time 1860 --nemesis all --dir /var/tmp/chaos-long
  # check a recorded history again
  proglog-chaos --check-history chaos-run/history.jsonl";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "proglog-chaos",
    version,
    about = "Jepsen-style fault campaign against real proglog nodes",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Opts {
    /// Seed of every random choice (faults, victims, durations, workload); printed. Default:
    /// from the clock.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Seconds of faults and load before the final heal and check.
    #[arg(long, default_value_t = 60)]
    pub time: u64,

    /// Nodes: 1 (single-node mode), 3 or 5 (multi-node mode: refused unless the nodes
    /// replicate).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub nodes: u32,

    /// Single-node mode: the same as --nodes 1.
    #[arg(long)]
    pub single_node: bool,

    /// Faults to inject, comma-separated (see NEMESES), or `all`.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub nemesis: Vec<String>,

    /// The run's directory: history, results.json, timeline.png, node logs. Default:
    /// chaos-<seed> in the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// The proglog binary. Default: $PROGLOG_BIN, else `proglog` beside this binary.
    #[arg(long)]
    pub bin: Option<PathBuf>,

    /// Durability policy of the topic: always | never | interval:<ms>.
    #[arg(long, default_value = "always")]
    pub durability: String,

    /// Partitions of the topic.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,

    /// Unary Produce producers.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,

    /// ProduceStream producers.
    #[arg(long, default_value_t = 1)]
    pub stream_producers: usize,

    /// Produce operations per second over all producers.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,

    /// Bytes per value (a unique id, padded).
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,

    /// Segment size of the nodes: small, so that segments roll during the run (at least
    /// the largest batch, 1 MiB, and its header).
    #[arg(long, default_value = "2MiB")]
    pub segment_bytes: String,

    /// Shortest and longest fault, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub fault_min: f64,
    #[arg(long, default_value_t = 6.0)]
    pub fault_max: f64,

    /// Several nodes: the nodes' --dead-node-timeout in seconds. A member unreachable this
    /// long is removed by the controller, which the membership nemesis waits out half the
    /// time; every other fault must be far shorter (--fault-max at most half of it).
    #[arg(long, default_value_t = 30)]
    pub dead_node_timeout: u64,

    /// Longest a full disk (the disk nemesis) is held for its node to refuse writes, in
    /// seconds: its logs first write into the space they allocated ahead (up to a segment).
    #[arg(long, default_value_t = 90.0)]
    pub disk_hold: f64,

    /// Longest quiet time between two faults, in seconds (the shortest is 1 s).
    #[arg(long, default_value_t = 3.0)]
    pub quiet_max: f64,

    /// Exit 0 only if anomalies are found: all of these classes when given
    /// (lost-write, duplicate, inconsistent-offset, aborted-read, non-monotonic, poll-skip,
    /// replica-divergence, unseen), else any. To show today that the checker and the faults
    /// work, e.g. the power-loss nemesis under --durability never.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub expect_anomalies: Option<Vec<String>>,

    /// Keep the nodes' data directories (and loop images) after the run.
    #[arg(long)]
    pub keep_data: bool,

    /// Only remove what a run (or a killed one) left: `pgc-*` namespaces with their
    /// nftables tables and relay, host files, loop volumes. For scripts, after any run.
    #[arg(long)]
    pub cleanup: bool,

    /// Only run the checker on a recorded history.jsonl and print its report.
    #[arg(long)]
    pub check_history: Option<PathBuf>,
}

/// Options checked and resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dead_node_timeout: Duration,
    pub seed: u64,
    pub time: Duration,
    pub nodes: u32,
    pub nemeses: Vec<Kind>,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub durability: String,
    pub partitions: u32,
    pub producers: usize,
    pub stream_producers: usize,
    pub rate: f64,
    pub value_bytes: usize,
    pub segment_bytes: String,
    pub fault: (Duration, Duration),
    pub quiet_max: Duration,
    pub disk_hold: Duration,
    /// `Some(classes)` with --expect-anomalies (empty: any class).
    pub expect: Option<Vec<Class>>,
    pub keep_data: bool,
}

impl Opts {
    pub fn plan(&self) -> Result<Plan, String> {
        let seed = self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            crate::Rng::new(t ^ u64::from(std::process::id())).next_u64() >> 1
        });
        let nodes = if self.single_node { 1 } else { self.nodes };
        if !matches!(nodes, 1 | 3 | 5) {
            return Err(format!("--nodes {nodes}: use 1, 3 or 5"));
        }
        let nemeses = Kind::parse_list(&self.nemesis, nodes)?;
        let bin = match &self.bin {
            Some(b) => b.clone(),
            None => match std::env::var_os("PROGLOG_BIN") {
                Some(b) => PathBuf::from(b),
                None => std::env::current_exe()
                    .map_err(|e| format!("where is this binary: {e}"))?
                    .with_file_name("proglog"),
            },
        };
        if !bin.is_file() {
            return Err(format!(
                "no proglog binary at {} (build it, or give --bin)",
                bin.display()
            ));
        }
        let bin = bin
            .canonicalize()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if !(self.fault_min > 0.0 && self.fault_min <= self.fault_max) {
            return Err("--fault-min must be positive and at most --fault-max".into());
        }
        let dead = self.dead_node_timeout as f64;
        if self.dead_node_timeout < 4 {
            return Err("--dead-node-timeout must be at least 4 seconds".into());
        }
        if self.nodes > 1 && self.fault_max > dead / 2.0 {
            return Err(format!(
                "--fault-max must be at most {} s with several nodes: a node kept away \
                 {dead} s is removed from the cluster (--dead-node-timeout), which only \
                 the membership nemesis does on purpose",
                dead / 2.0
            ));
        }
        if !(0.0..=3600.0).contains(&self.disk_hold) {
            return Err("--disk-hold must be in [0, 3600] seconds".into());
        }
        if self.quiet_max < 1.0 {
            return Err("--quiet-max must be at least 1 second".into());
        }
        if self.partitions == 0 || self.partitions > 16 {
            return Err("--partitions must be in 1..=16".into());
        }
        if self.producers + self.stream_producers == 0 {
            return Err("at least one producer".into());
        }
        if !(0.01..=10_000.0).contains(&self.rate) {
            return Err("--rate must be in [0.01, 10000]".into());
        }
        if !(24..=65536).contains(&self.value_bytes) {
            return Err("--value-bytes must be in 24..=65536".into());
        }
        if !matches!(self.durability.as_str(), "always" | "never")
            && !self.durability.starts_with("interval")
        {
            return Err(format!(
                "--durability {}: always, never or interval:<ms>",
                self.durability
            ));
        }
        let expect = match &self.expect_anomalies {
            None => None,
            Some(list) => Some(
                list.iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| Class::parse(s).ok_or_else(|| format!("unknown anomaly class {s}")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("chaos-{seed}")));
        Ok(Plan {
            seed,
            time: Duration::from_secs(self.time),
            nodes,
            nemeses,
            dir,
            bin,
            durability: self.durability.clone(),
            partitions: self.partitions,
            producers: self.producers,
            stream_producers: self.stream_producers,
            rate: self.rate,
            value_bytes: self.value_bytes,
            segment_bytes: self.segment_bytes.clone(),
            fault: (
                Duration::from_secs_f64(self.fault_min),
                Duration::from_secs_f64(self.fault_max),
            ),
            quiet_max: Duration::from_secs_f64(self.quiet_max),
            disk_hold: Duration::from_secs_f64(self.disk_hold),
            dead_node_timeout: Duration::from_secs(self.dead_node_timeout),
            expect,
            keep_data: self.keep_data,
        })
    }
}
