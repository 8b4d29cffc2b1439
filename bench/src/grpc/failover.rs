//! `proglog-bench failover`: how long a partition is unwritable after its leader dies.
//!
//! Producers (unary Produce, one record each, `--producers` of them) follow the partition's
//! leader the way a cluster-aware client does: they send to the node they believe leads, follow
//! the address a `NOT_LEADER` error names, pause briefly and try another node on `NO_LEADER`
//! or when a node answers UNAVAILABLE without a cluster reason (a follower that could not
//! forward the produce to the leader), and treat a node they cannot reach (connection refused
//! or lost, no answer within `--call-timeout`) as down for a moment. Nothing else is retried:
//! `OUTCOME_UNKNOWN` (the record may have been committed) and any other error are counted,
//! and the producer goes on with a new record. A produce that outlives `--call-timeout` is
//! abandoned and sent to the next node (a follower may hold it, see the option).
//!
//! Each trial waits until the cluster is whole (every node serving, the partition's leader
//! reporting every replica a caught-up voter) and its leader has not changed for `--settle`,
//! checks that produces are being acknowledged, then runs `--kill-cmd` with the leader's address
//! in `$PROGLOG_NODE_ADDR` (e.g. `kill -9` of its pid). The trial's time runs from just before
//! the command starts to the first acknowledgement of a produce sent after the command
//! returned, so an answer the old leader gave in its last milliseconds never counts. Then the
//! killed node is restarted with `--restart-cmd` (same environment) once its port is closed,
//! and the next trial waits for the cluster to be whole again.
//!
//! Everything runs on one glommio executor: the producer tasks and the trial loop.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use glommio::timer::{sleep, timeout};
use glommio::{LocalExecutorBuilder, Placement};
use net::client::{CallOptions, Channel, ClientConfig};
use net::{Code, Status};
use prost::Message;
use proto::google::rpc;
use proto::health::v1::health_check_response::ServingStatus;
use proto::health::v1::{paths as hpaths, HealthCheckRequest, HealthCheckResponse};
use proto::log::v1::{
    errors, paths, DescribeClusterRequest, DescribeClusterResponse, ProduceRequest,
    ProduceResponse, Record,
};

use super::opts::{parse_duration, SizeRange};

/// How long a node that could not be reached is skipped by the producers.
const DOWN_FOR: Duration = Duration::from_millis(200);
/// Connecting (TCP and the HTTP/2 handshake) to a node: a dead node's listening socket can
/// linger and accept without answering.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause after NO_LEADER (or NOT_LEADER naming no usable node) before the next attempt.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(10);
/// How often the trial loop polls the cluster while it waits.
const POLL: Duration = Duration::from_millis(100);
/// How often the surviving nodes are asked whether they lead, after a kill.
const ELECTION_POLL: Duration = Duration::from_millis(10);

/// `proglog-bench failover` options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proglog-bench failover",
    about = "Kill the leader of a partition under load, time until a produce is acknowledged again",
    long_about = None,
    after_help = "\
The commands run with `sh -c` and these variables: PROGLOG_NODE_ADDR (the node's RPC address, \
as --addr and DescribeCluster name it), PROGLOG_NODE_ID (its Raft id) and PROGLOG_NODE_NAME. \
--restart-cmd must start the node in the background and return.

EXAMPLE:
  proglog-bench failover --addr 127.0.0.1:8400,127.0.0.2:8400,127.0.0.3:8400 --trials 20 \\
    --kill-cmd 'kill -9 $(cat pids/$PROGLOG_NODE_ADDR)' --restart-cmd 'sh start-$PROGLOG_NODE_ADDR.sh'"
)]
pub struct FailoverOpts {
    /// Every node's RPC address (HOST:PORT,...)
    #[arg(
        long,
        short = 'a',
        value_delimiter = ',',
        required = true,
        value_name = "HOST:PORT,..."
    )]
    pub addr: Vec<String>,

    /// Kills to time
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub trials: usize,

    /// Shell command that kills the node named by $PROGLOG_NODE_ADDR (e.g. kill -9 of its pid)
    #[arg(long, value_name = "CMD")]
    pub kill_cmd: String,

    /// Shell command that starts the node named by $PROGLOG_NODE_ADDR again, in the background
    #[arg(long, value_name = "CMD")]
    pub restart_cmd: String,

    /// Topic of the partition (default: the server's default topic)
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub topic: String,

    /// Partition
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub partition: u32,

    /// Concurrent producers (each keeps one unary Produce in flight)
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub producers: usize,

    /// Record value size
    #[arg(long, default_value = "100", value_name = "SIZE")]
    pub record_size: SizeRange,

    /// Deadline of each produce; a node that does not answer in time is treated as
    /// unreachable for a moment. A follower holds a forwarded produce while it has no leader
    /// (up to 2 s) or while its connection to a dead leader is retried: a deadline longer than
    /// that measures the forwarding path, a shorter one a client that moves on
    #[arg(long, default_value = "500ms", value_parser = parse_duration, value_name = "DURATION")]
    pub call_timeout: Duration,

    /// Before each kill: the partition's leader must have stayed the same this long with the
    /// cluster whole
    #[arg(long, default_value = "3s", value_parser = parse_duration, value_name = "DURATION")]
    pub settle: Duration,

    /// Replicas may trail the leader's commit index by this many entries and still count as
    /// caught up
    #[arg(long, default_value_t = 1000, value_name = "ENTRIES")]
    pub max_lag: u64,

    /// Give up on a trial (and the run) after this long without an acknowledged produce, or
    /// without a whole cluster
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub trial_timeout: Duration,

    /// Print the results as one JSON document on stdout (progress still goes to stderr)
    #[arg(long)]
    pub json: bool,
}

/// One timed kill.
#[derive(Debug, Clone)]
pub struct Trial {
    pub killed_addr: String,
    pub killed_id: u64,
    /// From just before the kill command to the first acknowledgement after it.
    pub secs: f64,
    /// The node that acknowledged it.
    pub new_leader: String,
    /// How long `--kill-cmd` itself took (included in `secs`).
    pub kill_cmd_secs: f64,
    /// When a surviving node first said (DescribeCluster) that it leads the partition.
    pub elected_secs: Option<f64>,
    /// When a node first answered NO_LEADER after the kill: a follower had given up on the
    /// dead leader and started an election (it forgets the leader when it campaigns).
    pub no_leader_secs: Option<f64>,
    /// When a node first named a new leader (NOT_LEADER naming a live node), or the first
    /// acknowledgement if that came first.
    pub new_leader_secs: Option<f64>,
    /// Errors the producers saw between the kill and that acknowledgement, by kind.
    pub errors: HashMap<&'static str, u64>,
}

/// What the producers share with the trial loop (all on one executor).
struct Shared {
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    opts: FailoverOpts,
    /// The node the producers send to; `None`: try the next one that is not down.
    leader: Cell<Option<SocketAddr>>,
    down_until: RefCell<HashMap<SocketAddr, Instant>>,
    /// Produces sent at or after this instant count for the running trial.
    count_from: Cell<Option<Instant>>,
    /// First acknowledgement of the running trial: when, and from which node.
    first_ack: Cell<Option<(Instant, SocketAddr)>>,
    /// The node the running trial killed.
    killed: Cell<Option<SocketAddr>>,
    /// First NO_LEADER and first NOT_LEADER naming another node than the killed one, in the
    /// running trial.
    no_leader_at: Cell<Option<Instant>>,
    named_at: Cell<Option<Instant>>,
    acks: Cell<u64>,
    errors: RefCell<HashMap<&'static str, u64>>,
    other_errors: RefCell<Vec<String>>,
    stop: Cell<bool>,
}

impl Shared {
    fn down(&self, a: SocketAddr) -> bool {
        self.down_until
            .borrow()
            .get(&a)
            .is_some_and(|t| Instant::now() < *t)
    }

    fn mark_down(&self, a: SocketAddr) {
        self.down_until
            .borrow_mut()
            .insert(a, Instant::now() + DOWN_FOR);
        if self.leader.get() == Some(a) {
            self.leader.set(None);
        }
    }

    fn count(&self, kind: &'static str) {
        *self.errors.borrow_mut().entry(kind).or_default() += 1;
    }
}

/// What a failed produce means for a leader-following client.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    NotLeader(Option<String>),
    NoLeader,
    /// Connection refused or lost.
    Unreachable,
    /// No answer within the call's deadline: the node may be dead, or holding the produce
    /// (a follower forwarding it to a leader that is gone).
    Deadline,
    /// The node answered UNAVAILABLE without a cluster reason: it could not forward the
    /// produce to the leader (no connection to it, or its queue to it is full).
    ForwardFailed,
    OutcomeUnknown,
    Other,
}

fn classify(st: &Status) -> Failure {
    // The client's own verdicts on the connection (net::Status::from_h2, the local deadline).
    if st.code == Code::DeadlineExceeded {
        return Failure::Deadline;
    }
    let local = st.message.starts_with("connection error") || st.message.starts_with("h2:");
    if local {
        return Failure::Unreachable;
    }
    if st.code != Code::Unavailable {
        return Failure::Other;
    }
    if st.details.is_empty() {
        return Failure::ForwardFailed;
    }
    let info = rpc::Status::decode(st.details.as_ref())
        .ok()
        .and_then(|d| rpc::find_error_info(&d))
        .filter(|i| i.domain == errors::DOMAIN);
    match info.as_ref().map(|i| i.reason.as_str()) {
        Some(errors::NOT_LEADER) => Failure::NotLeader(
            info.and_then(|i| i.metadata.get(errors::LEADER_ADDR).cloned())
                .filter(|a| !a.is_empty()),
        ),
        Some(errors::NO_LEADER) => Failure::NoLeader,
        Some(errors::OUTCOME_UNKNOWN) => Failure::OutcomeUnknown,
        _ => Failure::Other,
    }
}

/// The node a producer sends to next: the leader it knows, else the next node not down.
fn target(sh: &Shared, rotate: &mut usize) -> Option<SocketAddr> {
    if let Some(l) = sh.leader.get() {
        if !sh.down(l) {
            return Some(l);
        }
    }
    for _ in 0..sh.addrs.len() {
        *rotate = (*rotate + 1) % sh.addrs.len();
        let a = sh.addrs[*rotate];
        if !sh.down(a) {
            return Some(a);
        }
    }
    None
}

async fn connect(sh: &Shared, a: SocketAddr) -> Option<Channel> {
    let mut config = sh.config.clone();
    config.connect_timeout = CONNECT_TIMEOUT;
    // The h2 handshake has no deadline of its own: a listening socket of a dead process
    // accepts and never answers.
    timeout(CONNECT_TIMEOUT, async {
        Ok(Channel::connect(a, config).await.ok())
    })
    .await
    .ok()
    .flatten()
}

async fn producer(sh: Rc<Shared>, id: usize) {
    let value = Bytes::from(vec![b'f'; sh.opts.record_size.min]);
    let mut rotate = id;
    let mut conn: Option<(SocketAddr, Channel)> = None;
    while !sh.stop.get() {
        let Some(a) = target(&sh, &mut rotate) else {
            sleep(NO_LEADER_PAUSE).await;
            continue;
        };
        if conn.as_ref().map(|c| c.0) != Some(a) {
            conn = None;
            match connect(&sh, a).await {
                Some(ch) => conn = Some((a, ch)),
                None => {
                    sh.count("unreachable");
                    sh.mark_down(a);
                    continue;
                }
            }
        }
        let Some((_, ch)) = conn.as_ref() else {
            continue;
        };
        let req = ProduceRequest {
            record: Some(Record {
                value: value.clone(),
                ..Default::default()
            }),
            topic: sh.opts.topic.clone(),
            partition: sh.opts.partition,
        };
        let sent = Instant::now();
        let r: Result<ProduceResponse, Status> = ch
            .unary_prost(
                paths::PRODUCE,
                &req,
                CallOptions::timeout(sh.opts.call_timeout),
            )
            .await;
        match r {
            Ok(_) => {
                sh.acks.set(sh.acks.get() + 1);
                if sh.leader.get().is_none() {
                    sh.leader.set(Some(a));
                }
                let counts = sh.count_from.get().is_some_and(|t| sent >= t);
                if counts && sh.first_ack.get().is_none() {
                    sh.first_ack.set(Some((Instant::now(), a)));
                }
                if counts && sh.named_at.get().is_none() {
                    sh.named_at.set(Some(Instant::now()));
                }
            }
            Err(st) => match classify(&st) {
                Failure::NotLeader(named) => {
                    sh.count("not_leader");
                    let named = named.and_then(|n| n.to_socket_addrs().ok()?.next());
                    let after_kill = sh.count_from.get().is_some_and(|t| sent >= t);
                    if after_kill
                        && named.is_some_and(|n| Some(n) != sh.killed.get())
                        && sh.named_at.get().is_none()
                    {
                        sh.named_at.set(Some(Instant::now()));
                    }
                    match named {
                        Some(n) if n != a && !sh.down(n) => sh.leader.set(Some(n)),
                        _ => {
                            if sh.leader.get() == Some(a) {
                                sh.leader.set(None);
                            }
                            sleep(NO_LEADER_PAUSE).await;
                        }
                    }
                }
                Failure::NoLeader => {
                    sh.count("no_leader");
                    let after_kill = sh.count_from.get().is_some_and(|t| sent >= t);
                    if after_kill && sh.no_leader_at.get().is_none() {
                        sh.no_leader_at.set(Some(Instant::now()));
                    }
                    if sh.leader.get() == Some(a) {
                        sh.leader.set(None);
                    }
                    sleep(NO_LEADER_PAUSE).await;
                }
                Failure::Unreachable => {
                    sh.count("unreachable");
                    conn = None;
                    sh.mark_down(a);
                }
                Failure::Deadline => {
                    // Not marked down: a live follower holds produces it cannot forward yet.
                    // The next attempt goes to another node.
                    sh.count("deadline");
                    if sh.leader.get() == Some(a) {
                        sh.leader.set(None);
                    }
                }
                Failure::ForwardFailed => {
                    sh.count("forward_failed");
                    if sh.leader.get() == Some(a) {
                        sh.leader.set(None);
                    }
                    sleep(NO_LEADER_PAUSE).await;
                }
                Failure::OutcomeUnknown => {
                    sh.count("outcome_unknown");
                    sleep(NO_LEADER_PAUSE).await;
                }
                Failure::Other => {
                    sh.count("other");
                    {
                        let mut o = sh.other_errors.borrow_mut();
                        if o.len() < 20 {
                            o.push(format!("{a}: {}: {}", st.code.name(), st.message));
                        }
                    }
                    sleep(NO_LEADER_PAUSE).await;
                }
            },
        }
    }
}

fn call() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(2))
}

async fn describe(a: SocketAddr, config: &ClientConfig) -> Option<DescribeClusterResponse> {
    let ch = timeout(Duration::from_secs(2), async {
        Ok(Channel::connect(a, config.clone()).await.ok())
    })
    .await
    .ok()??;
    ch.unary_prost(paths::DESCRIBE_CLUSTER, &DescribeClusterRequest {}, call())
        .await
        .ok()
}

async fn serving(a: SocketAddr, config: &ClientConfig) -> bool {
    let ch = timeout(Duration::from_secs(2), async {
        Ok(Channel::connect(a, config.clone()).await.ok())
    })
    .await
    .ok()
    .flatten();
    let Some(ch) = ch else {
        return false;
    };
    let r: Result<HealthCheckResponse, Status> = ch
        .unary_prost(hpaths::CHECK, &HealthCheckRequest::default(), call())
        .await;
    r.is_ok_and(|r| r.status == ServingStatus::Serving as i32)
}

/// The partition's leader, when the cluster is whole: every node serving and live, and the
/// leader (as it says itself) reporting every replica a voter within `max_lag` of its commit.
async fn whole_leader(sh: &Shared) -> Option<(SocketAddr, u64, String)> {
    for a in &sh.addrs {
        if !serving(*a, &sh.config).await {
            return None;
        }
    }
    for a in &sh.addrs {
        let Some(d) = describe(*a, &sh.config).await else {
            continue;
        };
        let Some(p) = d
            .partitions
            .iter()
            .find(|p| p.topic == sh.opts.topic && p.partition == sh.opts.partition)
        else {
            continue;
        };
        if !(p.local && p.leader != 0 && p.leader == d.node_id) {
            continue;
        }
        let live = d.nodes.iter().filter(|n| !n.removed).all(|n| n.live);
        let caught_up = p.replicas.len() == p.replication_factor as usize
            && p.replicas
                .iter()
                .all(|r| r.voter && r.progress_known && r.lag <= sh.opts.max_lag);
        if !(live && caught_up) {
            return None;
        }
        let node = d.nodes.iter().find(|n| n.id == d.node_id)?;
        return Some((*a, d.node_id, node.name.clone()));
    }
    None
}

/// Whether the node at `a` says it leads the partition.
async fn leads(a: SocketAddr, sh: &Shared) -> bool {
    let Some(d) = describe(a, &sh.config).await else {
        return false;
    };
    d.partitions.iter().any(|p| {
        p.topic == sh.opts.topic
            && p.partition == sh.opts.partition
            && p.local
            && p.leader != 0
            && p.leader == d.node_id
    })
}

fn shell(cmd: &str, addr: SocketAddr, id: u64, name: &str) -> Result<()> {
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("PROGLOG_NODE_ADDR", addr.to_string())
        .env("PROGLOG_NODE_ID", id.to_string())
        .env("PROGLOG_NODE_NAME", name)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} for {addr} failed: {st}");
    }
    Ok(())
}

fn port_open(a: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
}

async fn trial(sh: &Shared, n: usize) -> Result<Trial> {
    let opts = &sh.opts;
    // Whole, with a leader that stays put for --settle (a returning node may take its
    // leadership back).
    let deadline = Instant::now() + opts.trial_timeout;
    let (leader, id, name) = loop {
        if Instant::now() > deadline {
            bail!(
                "trial {n}: the cluster was not whole with a settled leader within {:?}",
                opts.trial_timeout
            );
        }
        let Some(first) = whole_leader(sh).await else {
            sleep(POLL).await;
            continue;
        };
        let since = Instant::now();
        let mut same = true;
        while same && since.elapsed() < opts.settle {
            sleep(POLL * 3).await;
            same = whole_leader(sh).await.is_some_and(|l| l.0 == first.0);
        }
        if same {
            break first;
        }
    };
    // Under load: produces are being acknowledged by the leader right now.
    sh.leader.set(Some(leader));
    let before = sh.acks.get();
    let until = Instant::now() + opts.trial_timeout;
    while sh.acks.get() < before + 10 {
        if Instant::now() > until {
            bail!("trial {n}: no produce acknowledged before the kill");
        }
        sleep(Duration::from_millis(20)).await;
    }
    sh.errors.borrow_mut().clear();
    sh.first_ack.set(None);
    sh.no_leader_at.set(None);
    sh.named_at.set(None);
    sh.killed.set(Some(leader));
    let t0 = Instant::now();
    // Blocks the executor for the command's few milliseconds: part of the measured time.
    shell(&opts.kill_cmd, leader, id, &name)?;
    let killed = Instant::now();
    sh.count_from.set(Some(killed));
    // Beside the producers, the surviving nodes are asked (DescribeCluster, every
    // ELECTION_POLL) until one says it leads the partition: the cluster's own failover time,
    // apart from what a client needs to find the new leader.
    let mut elected: Option<Instant> = None;
    let mut acked: Option<(Instant, SocketAddr)> = None;
    loop {
        if acked.is_none() {
            acked = sh.first_ack.get();
        }
        if elected.is_none() {
            for a in sh.addrs.iter().filter(|a| **a != leader) {
                if leads(*a, sh).await {
                    elected = Some(Instant::now());
                    break;
                }
            }
        }
        let done = match (acked, elected) {
            (Some(_), Some(_)) => true,
            // The describe may trail the acknowledgement a little; not forever.
            (Some((t, _)), None) => t.elapsed() > Duration::from_secs(2),
            _ => false,
        };
        if done {
            break;
        }
        if t0.elapsed() > opts.trial_timeout {
            bail!(
                "trial {n}: no produce acknowledged within {:?} of killing {leader}",
                opts.trial_timeout
            );
        }
        sleep(ELECTION_POLL).await;
    }
    let Some((t1, by)) = acked else {
        bail!("trial {n}: no acknowledgement recorded");
    };
    sh.count_from.set(None);
    let t = Trial {
        killed_addr: leader.to_string(),
        killed_id: id,
        secs: t1.duration_since(t0).as_secs_f64(),
        new_leader: by.to_string(),
        kill_cmd_secs: killed.duration_since(t0).as_secs_f64(),
        elected_secs: elected.map(|t| t.duration_since(t0).as_secs_f64()),
        no_leader_secs: sh
            .no_leader_at
            .get()
            .map(|t| t.duration_since(t0).as_secs_f64()),
        new_leader_secs: sh
            .named_at
            .get()
            .map(|t| t.duration_since(t0).as_secs_f64()),
        errors: sh.errors.borrow().clone(),
    };
    // The dead process's listening socket can outlive it briefly (io_uring tears its rings
    // down asynchronously); restart once the port is free.
    let until = Instant::now() + opts.trial_timeout;
    while port_open(leader) {
        if Instant::now() > until {
            bail!("trial {n}: {leader} still accepts connections after the kill");
        }
        sleep(POLL).await;
    }
    shell(&opts.restart_cmd, leader, id, &name)?;
    Ok(t)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The results of a run.
pub struct FailoverReport {
    pub trials: Vec<Trial>,
    pub error: Option<String>,
    pub other_errors: Vec<String>,
    pub opts: FailoverOpts,
}

impl FailoverReport {
    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.trials.iter().map(|t| t.secs).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn human(&self) -> String {
        let mut out = format!(
            "failover: {}/{} on {}; {} producers of {} records (unary Produce), call timeout {:?}\n",
            self.opts.topic,
            self.opts.partition,
            self.opts.addr.join(","),
            self.opts.producers,
            self.opts.record_size,
            self.opts.call_timeout
        );
        out.push_str(
            "seconds after the kill: a surviving node says it leads (DescribeCluster, polled \
             every 10 ms), first acknowledged produce\n",
        );
        out.push_str(
            "trial  killed (raft id)     elected  first ack  by               errors until then\n",
        );
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        for (i, t) in self.trials.iter().enumerate() {
            let mut errs: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            errs.sort();
            out.push_str(&format!(
                "{:>5}  {:<15} ({:>2})  {:>7}  {:>9}  {:<15}  {}\n",
                i + 1,
                t.killed_addr,
                t.killed_id,
                secs(t.elected_secs),
                format!("{:.3}", t.secs),
                t.new_leader,
                errs.join(", ")
            ));
        }
        let s = self.sorted();
        if !s.is_empty() {
            let mean = s.iter().sum::<f64>() / s.len() as f64;
            out.push_str(&format!(
                "trials {}  p50 {:.3} s  mean {:.3} s  min {:.3} s  max {:.3} s\n",
                s.len(),
                percentile(&s, 0.5),
                mean,
                s[0],
                s[s.len() - 1]
            ));
        }
        let mut el: Vec<f64> = self.trials.iter().filter_map(|t| t.elected_secs).collect();
        el.sort_by(f64::total_cmp);
        if !el.is_empty() {
            out.push_str(&format!(
                "elected (a surviving node leads): trials {}  p50 {:.3} s  min {:.3} s  max {:.3} s\n",
                el.len(),
                percentile(&el, 0.5),
                el[0],
                el[el.len() - 1]
            ));
        }
        for e in &self.other_errors {
            out.push_str(&format!("other error: {e}\n"));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("run stopped: {e}\n"));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let s = self.sorted();
        serde_json::json!({
            "topic": self.opts.topic,
            "partition": self.opts.partition,
            "producers": self.opts.producers,
            "trials": self.trials.iter().map(|t| serde_json::json!({
                "killed_addr": t.killed_addr,
                "killed_id": t.killed_id,
                "secs": t.secs,
                "new_leader": t.new_leader,
                "kill_cmd_secs": t.kill_cmd_secs,
                "elected_secs": t.elected_secs,
                "no_leader_secs": t.no_leader_secs,
                "new_leader_secs": t.new_leader_secs,
                "errors": t.errors,
            })).collect::<Vec<_>>(),
            "p50_secs": (!s.is_empty()).then(|| percentile(&s, 0.5)),
            "max_secs": s.last(),
            "min_secs": s.first(),
            "other_errors": self.other_errors,
            "error": self.error,
        })
    }
}

/// Runs the trials; an error that stops the run early is in the report, with the trials done.
pub fn run(opts: FailoverOpts) -> Result<FailoverReport> {
    let mut addrs = Vec::new();
    for a in &opts.addr {
        addrs.push(
            a.to_socket_addrs()
                .with_context(|| format!("--addr {a:?}"))?
                .next()
                .ok_or_else(|| anyhow!("--addr {a:?} resolves to no address"))?,
        );
    }
    if addrs.len() < 2 {
        bail!("--addr: give every node of the cluster (at least two)");
    }
    if opts.producers == 0 {
        bail!("--producers must be at least 1");
    }
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .name("failover")
        .make()
        .map_err(|e| anyhow!("starting the executor: {e}"))?;
    ex.run(async move {
        let sh = Rc::new(Shared {
            addrs,
            config: ClientConfig::default(),
            opts: opts.clone(),
            leader: Cell::new(None),
            down_until: RefCell::new(HashMap::new()),
            count_from: Cell::new(None),
            first_ack: Cell::new(None),
            killed: Cell::new(None),
            no_leader_at: Cell::new(None),
            named_at: Cell::new(None),
            acks: Cell::new(0),
            errors: RefCell::new(HashMap::new()),
            other_errors: RefCell::new(Vec::new()),
            stop: Cell::new(false),
        });
        let tasks: Vec<_> = (0..opts.producers)
            .map(|i| glommio::spawn_local(producer(sh.clone(), i)))
            .collect();
        let mut trials = Vec::new();
        let mut error = None;
        for n in 1..=opts.trials {
            match trial(&sh, n).await {
                Ok(t) => {
                    eprintln!(
                        "trial {n}: killed {} ({}), first ack {:.3} s later from {}",
                        t.killed_addr, t.killed_id, t.secs, t.new_leader
                    );
                    trials.push(t);
                }
                Err(e) => {
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        sh.stop.set(true);
        for t in tasks {
            t.await;
        }
        let other_errors = sh.other_errors.borrow().clone();
        Ok(FailoverReport {
            trials,
            error,
            other_errors,
            opts,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 1.0), 20.0);
        assert_eq!(percentile(&[3.0], 0.5), 3.0);
    }

    #[test]
    fn classifies_connection_failures_and_cluster_errors() {
        assert_eq!(
            classify(&Status::unavailable("connection error: reset")),
            Failure::Unreachable
        );
        assert_eq!(
            classify(&Status::unavailable("no connection to the leader")),
            Failure::ForwardFailed
        );
        assert_eq!(
            classify(&Status::new(Code::DeadlineExceeded, "late")),
            Failure::Deadline
        );
        assert_eq!(
            classify(&Status::new(Code::InvalidArgument, "bad")),
            Failure::Other
        );
        let cluster = |reason: &str, meta: Vec<(&'static str, String)>| {
            let details = rpc::Status {
                code: Code::Unavailable.as_i32(),
                message: reason.into(),
                details: vec![rpc::any_error_info(reason, errors::DOMAIN, meta)],
            };
            Status::unavailable(reason).with_details(Bytes::from(details.encode_to_vec()))
        };
        assert_eq!(
            classify(&cluster(
                errors::NOT_LEADER,
                vec![(errors::LEADER_ADDR, "127.0.0.2:8400".into())]
            )),
            Failure::NotLeader(Some("127.0.0.2:8400".into()))
        );
        assert_eq!(
            classify(&cluster(errors::NOT_LEADER, vec![])),
            Failure::NotLeader(None)
        );
        assert_eq!(
            classify(&cluster(errors::NO_LEADER, vec![])),
            Failure::NoLeader
        );
        assert_eq!(
            classify(&cluster(errors::OUTCOME_UNKNOWN, vec![])),
            Failure::OutcomeUnknown
        );
    }
}
