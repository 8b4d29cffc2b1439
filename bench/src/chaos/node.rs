//! The proglog nodes: real processes started with `ip netns exec` in their namespaces, each
//! with its own address, host name and data directory (on a loop volume when the disk
//! nemesis runs), and what the nemeses do to them.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::disk::Volume;
use super::net::{Host, ADMIN_PORT, CLIENT_NS, GOSSIP_PORT, RPC_PORT};
use super::sys::{self, from_ns};

/// What the server says when it refuses `--bootstrap` (a build without replication).
pub const BOOTSTRAP_REFUSED: &str = "needs Raft replication";

/// How the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One node, no cluster flags.
    Single,
    /// Node 1 accepted `--bootstrap`: a replicated cluster. A binary that refuses it has no
    /// replication, and a campaign of several nodes is refused (see `cluster::NotReplicated`).
    Replicated,
}

/// Settings shared by every node.
#[derive(Debug, Clone)]
pub struct Spec {
    pub bin: PathBuf,
    pub durability: String,
    pub segment_bytes: String,
    pub nodes: u32,
    /// The topic's partitions.
    pub partitions: u32,
    /// `--dead-node-timeout` of every node (several nodes).
    pub dead_node_timeout: Duration,
    /// Turns on the engine's TEST-ONLY power-loss journal.
    pub power_loss: bool,
}

pub struct Node {
    pub index: u32,
    pub host: Host,
    /// The node's directory in the run's directory (log, hook journal, data or volume).
    pub dir: PathBuf,
    pub volume: Option<Volume>,
    child: Option<Child>,
    pub paused: bool,
    pub starts: u32,
    /// Cleared once node 1's data is wiped: a new member joins, it never bootstraps.
    pub may_bootstrap: bool,
}

impl Node {
    pub fn new(index: u32, host: Host, run_dir: &Path, volume_mib: Option<u64>) -> Result<Node> {
        let dir = run_dir.join(&host.name);
        std::fs::create_dir_all(&dir)?;
        let volume = match volume_mib {
            Some(mib) => Some(Volume::create(run_dir, &host.name, mib)?),
            None => None,
        };
        Ok(Node {
            index,
            host,
            dir,
            volume,
            child: None,
            paused: false,
            starts: 0,
            may_bootstrap: true,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.volume {
            Some(v) => v.mount.join("data"),
            None => self.dir.join("data"),
        }
    }

    pub fn hook_dir(&self) -> PathBuf {
        self.dir.join("power-loss")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), RPC_PORT)
    }

    fn ip(&self) -> std::net::IpAddr {
        self.host
            .ip
            .parse()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the node. `mode` decides the cluster flags; `others` are the other nodes'
    /// host names (a restarting node joins all of them; a first start joins node 1).
    pub fn start(&mut self, spec: &Spec, mode: Mode, others: &[String]) -> Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "{} is already running",
            self.host.name
        );
        let data = self.data_dir();
        std::fs::create_dir_all(&data)?;
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.host.ns.clone(),
            spec.bin.to_string_lossy().into_owned(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            "--node-name".into(),
            self.host.name.clone(),
            "--shards".into(),
            "1".into(),
            "--durability".into(),
            spec.durability.clone(),
            "--segment-bytes".into(),
            spec.segment_bytes.clone(),
            "--admin-addr".into(),
            format!("{}:{ADMIN_PORT}", self.host.ip),
            "--drain-timeout".into(),
            "2s".into(),
            "--log-level".into(),
            "info".into(),
        ];
        match mode {
            Mode::Single => {
                args.push("--listen".into());
                args.push(format!("{}:{RPC_PORT}", self.host.ip));
            }
            Mode::Replicated => {
                args.push("--bind-addr".into());
                args.push(format!("{}:{GOSSIP_PORT}", self.host.name));
                args.push("--rpc-port".into());
                args.push(RPC_PORT.to_string());
                args.push("--dead-node-timeout".into());
                args.push(format!("{}s", spec.dead_node_timeout.as_secs()));
                let join: Vec<String> = if self.starts == 0 && self.may_bootstrap {
                    // First start: join node 1, which others wait for (a group of their own
                    // would never merge with it).
                    if self.index == 1 {
                        Vec::new()
                    } else {
                        vec![format!("node-1:{GOSSIP_PORT}")]
                    }
                } else {
                    others
                        .iter()
                        .map(|n| format!("{n}:{GOSSIP_PORT}"))
                        .collect()
                };
                if !join.is_empty() {
                    args.push("--start-join-addrs".into());
                    args.push(join.join(","));
                }
                if self.index == 1 && self.may_bootstrap && mode == Mode::Replicated {
                    args.push("--bootstrap".into());
                }
            }
        }
        self.spawn(&args, spec)
    }

    /// Starts node 1 with `--bootstrap` and tells whether the binary accepted it.
    pub fn probe_bootstrap(&mut self, spec: &Spec, others: &[String]) -> Result<bool> {
        self.start(spec, Mode::Replicated, others)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    sys::forget_pid(child.id());
                    self.child = None;
                    let log = self.log_tail(4000);
                    if log.contains(BOOTSTRAP_REFUSED) {
                        return Ok(false);
                    }
                    bail!("{} exited ({status}) at start:\n{log}", self.host.name);
                }
            }
            if self.ready() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} neither refused --bootstrap nor became ready:\n{}",
            self.host.name,
            self.log_tail(4000)
        )
    }

    fn spawn(&mut self, args: &[String], spec: &Spec) -> Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(log, "=== proglog-chaos: start #{} ===", self.starts + 1)?;
        let mut cmd = Command::new("ip");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("RUST_LOG")
            .process_group(0);
        if spec.power_loss {
            let hook = self.hook_dir();
            std::fs::create_dir_all(&hook)?;
            std::fs::write(hook.join(engine::power_loss::MARKER), "proglog-chaos\n")?;
            cmd.env(engine::power_loss::ENV, &hook);
        }
        // SAFETY: prctl(2) between fork and exec only sets a flag of the child: it dies with
        // the harness's main thread (which starts every node) if the harness is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.host.name))?;
        sys::register_pid(child.id());
        self.child = Some(child);
        self.paused = false;
        self.starts += 1;
        Ok(())
    }

    /// GET /readyz answered 200.
    pub fn ready(&self) -> bool {
        let addr = SocketAddr::new(self.ip(), ADMIN_PORT);
        from_ns(CLIENT_NS, move || Ok(http_status(addr, "/readyz")))
            .ok()
            .flatten()
            == Some(200)
    }

    /// Waits until ready, or fails with the log's tail.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    sys::forget_pid(child.id());
                    self.child = None;
                    bail!(
                        "{} exited ({status}):\n{}",
                        self.host.name,
                        self.log_tail(3000)
                    );
                }
            } else {
                bail!("{} is not running", self.host.name);
            }
            if self.ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {limit:?}:\n{}",
                    self.host.name,
                    self.log_tail(3000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
            sys::forget_pid(c.id());
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        sys::signal(c.id(), libc::SIGCONT);
        sys::signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        sys::forget_pid(c.id());
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            sys::signal(pid, libc::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            sys::signal(pid, libc::SIGCONT);
        }
        self.paused = false;
    }

    /// Whether the process exited by itself; reaps it.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                sys::forget_pid(c.id());
                self.child = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// Deletes the node's data: the next start is a new member.
    pub fn wipe(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "wipe of a running node");
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("{}", data.display()))?;
        }
        let hook = self.hook_dir().join(engine::power_loss::JOURNAL);
        let _ = std::fs::remove_file(hook);
        self.may_bootstrap = false;
        self.starts = 0;
        Ok(())
    }

    pub fn log_tail(&self, bytes: usize) -> String {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        let from = text.len().saturating_sub(bytes);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }
}

/// The status code of an HTTP GET, or None if the server did not answer within 2 s.
/// What the node's partitions report about writes, from GET /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// No partition is full or latched.
    Taken,
    /// Some partition refuses writes for want of space.
    DiskFull,
    /// Some partition is read-only after an I/O error (until the node restarts).
    Latched,
}

impl Node {
    /// The node's write state from its metrics (`None`: no answer).
    pub fn writes(&self) -> Option<Writes> {
        let addr = SocketAddr::new(self.ip(), ADMIN_PORT);
        let body = from_ns(CLIENT_NS, move || Ok(http_body(addr, "/metrics"))).ok()??;
        let set = |family: &str| {
            body.lines()
                .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
                .any(|l| {
                    l.split_whitespace()
                        .last()
                        .and_then(|v| v.parse::<f64>().ok())
                        == Some(1.0)
                })
        };
        Some(if set("proglog_partition_latched") {
            Writes::Latched
        } else if set("proglog_partition_disk_full") {
            Writes::DiskFull
        } else {
            Writes::Taken
        })
    }
}

/// The status and body (if the answer has one) of the answer to GET `path` (two-second
/// timeouts).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, Option<String>)> {
    let timeout = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Some((status, body))
}

/// The body of a 200 answer to GET `path`.
fn http_body(addr: SocketAddr, path: &str) -> Option<String> {
    http_get(addr, path).and_then(|(status, body)| if status == 200 { body } else { None })
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// Whether the proglog binary replicates, asked before anything is created or cleaned up:
/// it is started with `--bootstrap` on a scratch data directory inside a network namespace
/// of its own (`unshare --net`: nothing it binds is reachable, nothing of a run is touched).
/// A build without replication refuses at once, naming [`BOOTSTRAP_REFUSED`]; one still
/// running after a few seconds accepted the flag, and is killed.
pub fn replicates(bin: &Path) -> Result<bool> {
    let scratch = std::env::temp_dir().join(format!("pgc-probe-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let out_path = scratch.join("out");
    let out = std::fs::File::create(&out_path)?;
    let mut child = Command::new("unshare")
        .arg("--net")
        .arg(bin)
        .args([
            "--bootstrap",
            "--bind-addr",
            "127.0.0.1:18401",
            "--data-dir",
        ])
        .arg(scratch.join("data"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .env_remove("RUST_LOG")
        .spawn()
        .context("starting proglog --bootstrap in a namespace of its own (unshare)")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    match status {
        None => Ok(true),
        Some(_) if text.contains(BOOTSTRAP_REFUSED) => Ok(false),
        Some(s) => bail!("proglog --bootstrap exited ({s}) without saying why:\n{text}"),
    }
}
