//! The cluster under test: the network, the nodes, the delay relay, and the things done to
//! all of them at once (start, restart, notice a crash, stop).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::client::Target;
use super::net::Network;
use super::node::{Mode, Node, Spec};
use super::relay::Relay;

/// How long a starting node may take to answer /readyz.
pub const READY_LIMIT: Duration = Duration::from_secs(60);

/// A node that exited without being told to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Crash {
    pub node: String,
    pub at_ms: f64,
    pub status: String,
    pub log_tail: String,
}

pub struct Cluster {
    pub spec: Spec,
    pub mode: Mode,
    pub net: Network,
    pub nodes: Vec<Node>,
    pub relay: Option<Relay>,
    pub epoch: Instant,
    pub crashes: Vec<Crash>,
    /// Whether the binary has `proglog cluster remove`.
    pub has_cluster_remove: bool,
}

impl Cluster {
    /// Creates the network and the nodes' directories (and volumes), starts every node and
    /// waits until each is ready. Node 1 first, with `--bootstrap` when there is more than
    /// one node: a binary that refuses it does not replicate, and the run is refused with
    /// [`NotReplicated`] (every node would keep a log of its own: no cross-node check would
    /// mean anything).
    pub fn start(
        spec: Spec,
        run_dir: &Path,
        nft: bool,
        volume_mib: Option<u64>,
        epoch: Instant,
    ) -> Result<Cluster> {
        let net = Network::create(spec.nodes, nft).context("creating the test network")?;
        let mut nodes = Vec::new();
        for (i, host) in net.nodes.iter().enumerate() {
            nodes.push(Node::new(i as u32 + 1, host.clone(), run_dir, volume_mib)?);
        }
        let has_cluster_remove = std::process::Command::new(&spec.bin)
            .args(["cluster", "--help"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim_start().starts_with("remove"))
            })
            .unwrap_or(false);
        let mut c = Cluster {
            spec,
            mode: Mode::Single,
            net,
            nodes,
            relay: None,
            epoch,
            crashes: Vec::new(),
            has_cluster_remove,
        };
        if c.nodes.len() > 1 {
            let others = c.others(0);
            let spec = c.spec.clone();
            if !c.nodes[0].probe_bootstrap(&spec, &others)? {
                return Err(NotReplicated {
                    nodes: c.nodes.len(),
                    log: Some(c.nodes[0].log_path()),
                }
                .into());
            }
            c.mode = Mode::Replicated;
            for i in 1..c.nodes.len() {
                c.start_node(i)?;
            }
        } else {
            c.start_node(0)?;
        }
        for n in &mut c.nodes {
            n.wait_ready(READY_LIMIT)?;
        }
        Ok(c)
    }

    pub fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Every other node's host name.
    pub fn others(&self, i: usize) -> Vec<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.host.name.clone())
            .collect()
    }

    pub fn targets(&self) -> Vec<Target> {
        self.nodes
            .iter()
            .map(|n| Target {
                name: n.host.name.clone(),
                addr: n.rpc_addr(),
            })
            .collect()
    }

    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let others = self.others(i);
        let (spec, mode) = (self.spec.clone(), self.mode);
        self.nodes[i].start(&spec, mode, &others)
    }

    /// Starts node `i` and waits until it is ready.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if !self.nodes[i].running() {
            self.start_node(i)?;
        }
        self.nodes[i].wait_ready(READY_LIMIT)
    }

    /// Nodes that exited by themselves since the last look: recorded as crashes, and
    /// started again so the run goes on. `down` are nodes a fault took down on purpose.
    pub fn notice_crashes(&mut self, down: &[usize]) -> Result<()> {
        for i in 0..self.nodes.len() {
            if down.contains(&i) {
                continue;
            }
            if let Some(status) = self.nodes[i].exited() {
                let crash = Crash {
                    node: self.nodes[i].host.name.clone(),
                    at_ms: self.now_ms(),
                    status,
                    log_tail: self.nodes[i].log_tail(2000),
                };
                eprintln!(
                    "[{:6.1}s] CRASH: {} exited by itself ({}); restarting it. Log tail:\n{}",
                    crash.at_ms / 1000.0,
                    crash.node,
                    crash.status,
                    crash.log_tail
                );
                self.crashes.push(crash);
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// The relay, started at first use.
    pub fn relay(&mut self, seed: u64) -> Result<&Relay> {
        if self.relay.is_none() {
            self.relay = Some(Relay::start(seed)?);
        }
        self.relay.as_ref().context("relay")
    }

    /// SIGTERM every node (SIGKILL after the grace), unmount the volumes.
    pub fn stop(&mut self, keep_data: bool) {
        for n in &mut self.nodes {
            n.stop(Duration::from_secs(5));
        }
        self.relay = None;
        for n in &mut self.nodes {
            if let Some(v) = n.volume.take() {
                v.destroy(keep_data);
            }
            if !keep_data {
                let _ = std::fs::remove_dir_all(n.dir.join("data"));
            }
        }
    }
}

/// A campaign of several nodes against a binary that does not replicate: node 1 refused
/// `--bootstrap`. Refused rather than run: with every node serving a log of its own, a
/// value acknowledged by one node is simply absent from the others, and no cross-node
/// check (lost writes across nodes, inconsistent offsets between nodes, replica
/// divergence) would say anything about the service.
#[derive(Debug)]
pub struct NotReplicated {
    pub nodes: usize,
    /// Node 1's log, which holds the refusal (none when the binary refused before the
    /// network was built).
    pub log: Option<std::path::PathBuf>,
}

impl std::fmt::Display for NotReplicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "multi-node mode refused: --nodes {} needs nodes that replicate, and proglog \
             refused --bootstrap (\"{}\"{}): this build has no replication, every node would \
             keep a log of its own, and no cross-node check would mean anything. Run the \
             single-node campaign (--nodes 1) until a node accepts --bootstrap.",
            self.nodes,
            super::node::BOOTSTRAP_REFUSED,
            self.log
                .as_ref()
                .map(|l| format!(", see {}", l.display()))
                .unwrap_or_default()
        )
    }
}

impl std::error::Error for NotReplicated {}
