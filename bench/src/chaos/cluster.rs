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
    /// The topic's partitions (what a whole cluster leads).
    pub partitions: u32,
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
        let partitions = spec.partitions;
        let mut c = Cluster {
            spec,
            mode: Mode::Single,
            net,
            nodes,
            relay: None,
            epoch,
            crashes: Vec::new(),
            partitions,
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
        if c.mode == Mode::Replicated {
            c.wait_whole(None, READY_LIMIT)?;
        }
        Ok(c)
    }

    /// Voters every group has once the cluster is whole: the default replication factor
    /// (min(3, nodes)), which is also the controller's number of voters.
    pub fn voters(&self) -> usize {
        self.nodes.len().min(3)
    }

    /// Why the cluster is not whole yet, or None: the controller has a leader that knows
    /// every node (none removed-and-not-replaced, all live) with [`Cluster::voters`] voters
    /// and every other node a learner, and, with `topic`, each of its `partitions` is led by
    /// a node that says so itself, with that many voters and no learner.
    pub fn not_whole(&self, topic: Option<(&str, u32)>) -> Result<Option<String>> {
        let views = super::client::cluster_views(self.targets())?;
        let n = self.nodes.len();
        let voters = self.voters();
        let count = |p: &proto::log::v1::PartitionReplication| {
            (
                p.replicas.iter().filter(|r| r.voter).count(),
                p.replicas.iter().filter(|r| r.learner).count(),
            )
        };
        let leads = |topic: &str, part: u32| {
            views.iter().flatten().find_map(|d| {
                d.partitions
                    .iter()
                    .find(|p| {
                        p.topic == topic
                            && p.partition == part
                            && p.local
                            && p.leader == d.node_id
                            && p.leader != 0
                    })
                    .map(|p| (d, p))
            })
        };
        let Some((d, ctl)) = leads("__cluster", 0) else {
            return Ok(Some("no controller leader".into()));
        };
        let members: Vec<_> = d.nodes.iter().filter(|x| !x.removed).collect();
        if members.len() != n || members.iter().any(|x| !x.live) {
            let names: Vec<String> = members
                .iter()
                .map(|x| format!("{}{}", x.name, if x.live { "" } else { "(down)" }))
                .collect();
            return Ok(Some(format!("members {names:?}, want {n} live")));
        }
        // The controller keeps three voters at most; every other node is its learner.
        if count(ctl) != (voters, n - voters) {
            return Ok(Some(format!("controller voters/learners {:?}", count(ctl))));
        }
        if let Some((topic, partitions)) = topic {
            for part in 0..partitions {
                match leads(topic, part) {
                    None => return Ok(Some(format!("{topic}/{part} has no leader"))),
                    Some((_, p)) if count(p) != (voters, 0) => {
                        return Ok(Some(format!(
                            "{topic}/{part} voters/learners {:?}",
                            count(p)
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(None)
    }

    /// Waits until the cluster is whole ([`Cluster::not_whole`]), or fails after `limit`
    /// saying what is missing.
    pub fn wait_whole(&self, topic: Option<(&str, u32)>, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let why = self.not_whole(topic)?;
            let Some(why) = why else { return Ok(()) };
            if Instant::now() > deadline {
                anyhow::bail!("the cluster is not whole within {limit:?}: {why}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
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

    /// Panics the nodes' logs show, as crashes: a thread of a node that panicked (a shard,
    /// say) may leave the process running, and only its log says so.
    pub fn collect_panics(&mut self) {
        for n in &self.nodes {
            let text = std::fs::read(n.log_path()).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked at") {
                    let tail = lines[i..(i + 3).min(lines.len())].join("\n");
                    self.crashes.push(Crash {
                        node: n.host.name.clone(),
                        at_ms: self.now_ms(),
                        status: "a thread panicked (see its log)".into(),
                        log_tail: tail,
                    });
                }
            }
        }
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
