//! Multi-node clusters of real `proglog` binaries for the black-box tests (tests/cluster.rs,
//! tests/cluster_client.rs): nodes on their own 127.0.0.x addresses formed with the book's
//! flags, kill -9 and restart, the leader of a partition as the nodes themselves say, and a
//! topic created at the controller's leader. Every wait is for a condition, with a generous
//! deadline; the nodes' logs are printed when a test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use net::blocking::BlockingChannel;
use net::client::{CallOptions, ClientConfig};
use net::Status;
use proto::health::v1::health_check_response::ServingStatus;
use proto::health::v1::{paths as hpaths, HealthCheckRequest, HealthCheckResponse};
use proto::log::v1::*;

use super::{free_port, BIN};

pub const DEADLINE: Duration = Duration::from_secs(90);

/// The deadline of the harness's own calls.
pub fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(5))
}

/// One node: its own 127.0.0.x address, data directory and log.
pub struct Node {
    pub child: Option<Child>,
    pub ip: String,
    pub rpc: SocketAddr,
    pub gossip: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub args: Vec<String>,
}

impl Node {
    pub fn start(dir: &Path, name: &str, ip: &str, extra: &[String]) -> Node {
        Node::start_on(dir, name, ip, free_port(), extra)
    }

    /// A node whose RPC port is chosen by the caller (e.g. one a client already dials).
    pub fn start_on(dir: &Path, name: &str, ip: &str, rpc_port: u16, extra: &[String]) -> Node {
        Node::start_on_ports(dir, name, ip, rpc_port, free_port(), extra)
    }

    /// A node whose gossip port is chosen by the caller too (one others join already).
    pub fn start_on_ports(
        dir: &Path,
        name: &str,
        ip: &str,
        rpc_port: u16,
        gossip_port: u16,
        extra: &[String],
    ) -> Node {
        let gossip = format!("{ip}:{gossip_port}");
        let mut n = Node {
            child: None,
            ip: ip.to_owned(),
            rpc: format!("{ip}:{rpc_port}").parse().unwrap(),
            gossip: gossip.clone(),
            data_dir: dir.join(name),
            log_path: dir.join(format!("{name}.log")),
            args: vec![
                "--node-name".into(),
                name.into(),
                "--bind-addr".into(),
                gossip,
                "--rpc-port".into(),
                rpc_port.to_string(),
                "--shards".into(),
                "1".into(),
                "--admin-addr".into(),
                "off".into(),
                "--log-level".into(),
                "info".into(),
            ],
        };
        n.args.extend(extra.iter().cloned());
        n.spawn();
        n
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn proglog");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // io_uring tears a dead process's rings down asynchronously: its listening socket
            // can outlive it briefly, and a restart would find the port taken.
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until
                && std::net::TcpStream::connect_timeout(&self.rpc, Duration::from_millis(200))
                    .is_ok()
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Stops the server with SIGTERM (a clean stop) and waits for it to exit: its exit
    /// status, or `None` if it was not running or had not exited after a minute (then it is
    /// killed).
    pub fn sigterm(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child, which is not reaped yet (its pid is still ours).
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    pub fn channel(&self) -> Option<BlockingChannel> {
        BlockingChannel::connect(self.rpc, ClientConfig::default()).ok()
    }

    pub fn serving(&self) -> bool {
        self.channel().as_ref().is_some_and(serving_on)
    }

    pub fn describe(&self) -> Option<DescribeClusterResponse> {
        self.channel()?
            .unary_prost(paths::DESCRIBE_CLUSTER, &DescribeClusterRequest {}, opts())
            .ok()
    }

    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("({}: {e})", self.log_path.display()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether the server behind `ch` answers gRPC health SERVING.
pub fn serving_on(ch: &BlockingChannel) -> bool {
    let r: Result<HealthCheckResponse, Status> =
        ch.unary_prost(hpaths::CHECK, &HealthCheckRequest::default(), opts());
    r.is_ok_and(|r| r.status == ServingStatus::Serving as i32)
}

/// The nodes of a test; their logs are printed when the test fails.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub started: Instant,
    pub name: &'static str,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Nodes a test started itself (in `tmp`), their logs printed should it fail.
    pub fn of(name: &'static str, tmp: tempfile::TempDir, nodes: Vec<Node>) -> Cluster {
        Cluster {
            nodes,
            started: Instant::now(),
            name,
            _tmp: tmp,
        }
    }

    /// The directory holding the nodes' data directories and logs.
    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }

    /// No node refused a peer's Raft message as one raft-rs would panic on
    /// (`consensus/src/raft/peer_check.rs`): what correct nodes send, the controller's
    /// forwarded commands included, always passes.
    pub fn assert_no_peer_message_refused(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let log = n.log();
            let refused: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("refused a message from node"))
                .take(3)
                .collect();
            assert!(
                refused.is_empty(),
                "node {i} refused peer messages: {refused:?}"
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("===== log of {} ({})\n{}", n.rpc, n.ip, n.log());
            }
        }
        for n in &mut self.nodes {
            n.kill9();
        }
        eprintln!(
            "{}: {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

pub fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three nodes: the first with --bootstrap, the others joining it; waits until the
/// controller has three voters and every node serves.
pub fn form(name: &'static str, first_ip: u8, extra: &[String]) -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut boot = extra.to_vec();
    boot.push("--bootstrap".into());
    nodes.push(Node::start(
        tmp.path(),
        "n1",
        &format!("127.0.0.{first_ip}"),
        &boot,
    ));
    let join = nodes[0].gossip.clone();
    for i in 1..3u8 {
        let mut args = extra.to_vec();
        args.extend(["--start-join-addrs".to_owned(), join.clone()]);
        let ip = format!("127.0.0.{}", first_ip + i);
        nodes.push(Node::start(tmp.path(), &format!("n{}", i + 1), &ip, &args));
    }
    let c = Cluster {
        nodes,
        started: Instant::now(),
        name,
        _tmp: tmp,
    };
    for n in &c.nodes {
        wait("every node serving", || n.serving());
    }
    wait("three controller voters on a leader", || {
        controller_voters(&c) == 3
    });
    c
}

/// Voters of the controller group as its leader reports them.
pub fn controller_voters(c: &Cluster) -> usize {
    c.nodes
        .iter()
        .filter_map(Node::describe)
        .find_map(|d| {
            let p = d.partitions.first()?;
            (p.leader == d.node_id && p.leader != 0)
                .then(|| p.replicas.iter().filter(|r| r.voter).count())
        })
        .unwrap_or(0)
}

/// The node (index) that leads `topic`/`partition` with `voters` voters, as it says itself.
pub fn leader_of(c: &Cluster, topic: &str, partition: u32, voters: usize) -> Option<usize> {
    c.nodes.iter().enumerate().find_map(|(i, n)| {
        let d = n.describe()?;
        let p = d
            .partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)?;
        (p.local
            && p.leader == d.node_id
            && p.replicas.iter().filter(|r| r.voter).count() == voters)
            .then_some(i)
    })
}

/// [`leader_of`], once the leader is the partition's preferred replica (its first placed
/// one), to which the controller hands leadership back as soon as it is caught up: a
/// leader found before that may move a moment later.
pub fn preferred_leader_of(
    c: &Cluster,
    topic: &str,
    partition: u32,
    voters: usize,
) -> Option<usize> {
    let i = leader_of(c, topic, partition, voters)?;
    let d = c.nodes[i].describe()?;
    let p = d
        .partitions
        .iter()
        .find(|p| p.topic == topic && p.partition == partition)?;
    (p.replicas.first()?.node == d.node_id).then_some(i)
}

pub fn controller_leader(c: &Cluster) -> usize {
    wait_for("a controller leader", || leader_of(c, "__cluster", 0, 3))
}

/// [`wait`] until `find` finds something, and that.
pub fn wait_for<T>(what: &str, mut find: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait(what, || {
        found = find();
        found.is_some()
    });
    found.unwrap_or_else(|| unreachable!("wait returns once found"))
}

pub fn create_topic(c: &Cluster, name: &str, partitions: u32, rf: u32) {
    let leader = controller_leader(c);
    let ch = c.nodes[leader].channel().expect("connect");
    let r: Result<CreateTopicResponse, Status> = ch.unary_prost(
        paths::CREATE_TOPIC,
        &CreateTopicRequest {
            name: name.into(),
            config: Some(TopicConfig {
                partitions,
                replication_factor: rf,
                ..Default::default()
            }),
        },
        CallOptions::timeout(Duration::from_secs(30)),
    );
    r.expect("create topic");
}
