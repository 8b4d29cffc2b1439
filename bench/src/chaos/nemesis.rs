//! The nemeses: what each fault does, how it heals, and the order they come in.
//!
//! One fault at a time: a quiet gap, then a fault for its window, then its heal. The kinds
//! come in rounds: each round is every selected kind once, shuffled by the seed, so every
//! kind is injected once the run lasts a round. Victims, partition shapes, loss rates and
//! delays are drawn from the same seeded generator; "the leader" is whatever node
//! GetServers names at that moment.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::cluster::Cluster;
use super::history::Fault;
use super::net::Host;
use super::sys;
use crate::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Kill,
    Pause,
    Partition,
    Loss,
    Delay,
    Membership,
    Disk,
    Power,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Kill,
        Kind::Pause,
        Kind::Partition,
        Kind::Loss,
        Kind::Delay,
        Kind::Membership,
        Kind::Disk,
        Kind::Power,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Loss => "loss",
            Kind::Delay => "delay",
            Kind::Membership => "membership",
            Kind::Disk => "disk",
            Kind::Power => "power",
        }
    }

    /// Nodes it needs.
    fn min_nodes(self) -> u32 {
        match self {
            Kind::Membership => 3,
            _ => 1,
        }
    }

    /// `--nemesis` values; `all` is every kind the node count allows.
    pub fn parse_list(list: &[String], nodes: u32) -> Result<Vec<Kind>, String> {
        let mut out = Vec::new();
        for s in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if s == "all" {
                out.extend(Kind::ALL.iter().filter(|k| nodes >= k.min_nodes()));
                continue;
            }
            let k = Kind::ALL
                .into_iter()
                .find(|k| k.name() == s)
                .ok_or_else(|| format!("unknown nemesis {s:?}"))?;
            if nodes < k.min_nodes() {
                return Err(format!(
                    "nemesis {s} needs at least {} nodes (--nodes {nodes})",
                    k.min_nodes()
                ));
            }
            out.push(k);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn needs_nft(self) -> bool {
        matches!(self, Kind::Partition | Kind::Loss)
    }
}

/// The order of faults: rounds of every kind once, shuffled.
pub struct Schedule {
    kinds: Vec<Kind>,
    round: Vec<Kind>,
}

impl Schedule {
    pub fn new(kinds: Vec<Kind>) -> Schedule {
        Schedule {
            kinds,
            round: Vec::new(),
        }
    }

    pub fn next(&mut self, rng: &mut Rng) -> Option<Kind> {
        if self.round.is_empty() {
            self.round = self.kinds.clone();
            // Fisher-Yates, popped from the end.
            for i in (1..self.round.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                self.round.swap(i, j);
            }
        }
        self.round.pop()
    }
}

/// What must be undone.
#[derive(Debug)]
enum Undo {
    /// Start the node again.
    Restart(usize),
    /// SIGCONT.
    Resume(usize),
    /// Flush the nftables rules.
    Rules,
    /// Delete the routes through the relay, delay back to zero.
    Routes,
    /// Wipe the node and start it as a new member.
    Readd(usize),
    /// Remove the ballast; the node takes writes again by itself.
    FreeDisk(usize),
}

/// A fault in force.
pub struct Active {
    pub fault: Fault,
    undo: Undo,
    /// A full disk not felt yet: the node's logs write into space they allocated ahead, so
    /// the fault is held (up to the plan's `disk_hold`) until the node refuses writes.
    pub unfelt: Option<Unfelt>,
}

/// A disk fault whose node still takes writes.
pub struct Unfelt {
    pub node: usize,
    pub since: std::time::Instant,
}

impl Active {
    /// Whether the node of a disk fault refuses writes now; if so the fault is felt from now
    /// on (and said in its record). `false` while it is not, and for other faults.
    pub fn felt_now(&mut self, c: &Cluster) -> bool {
        let Some(u) = &self.unfelt else {
            return false;
        };
        let felt = matches!(
            c.nodes[u.node].writes(),
            Some(super::node::Writes::DiskFull | super::node::Writes::Latched)
        );
        if felt {
            let after = u.since.elapsed().as_secs_f64();
            self.fault.detail.push_str(&format!(
                "; its node refused writes {after:.1} s after the fill"
            ));
            self.unfelt = None;
        }
        felt
    }

    /// Nodes this fault keeps down on purpose.
    pub fn down(&self) -> Vec<usize> {
        match self.undo {
            Undo::Restart(i) | Undo::Readd(i) => vec![i],
            _ => Vec::new(),
        }
    }
}

/// A uniform draw in `[lo, hi]`.
fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

/// The victim: with several nodes, a leader half the time (of one of the topic's partitions
/// or of the controller, as the leaders themselves say in DescribeCluster; GetServers'
/// leader when no node answers that), else any node.
fn victim(c: &Cluster, rng: &mut Rng) -> (usize, String) {
    let n = c.nodes.len();
    if n > 1 && rng.below(2) == 0 {
        let leaders = leaders(c);
        if !leaders.is_empty() {
            let (i, what) = leaders[rng.below(leaders.len() as u64) as usize].clone();
            return (i, format!(" (leader of {what})"));
        }
        if let Ok(Some(name)) = super::client::leader(c.targets()) {
            if let Some(i) = c.nodes.iter().position(|x| x.host.name == name) {
                return (i, " (leader)".into());
            }
        }
    }
    (rng.below(n as u64) as usize, String::new())
}

/// Every group's leader as it says itself: (node index, the group), the controller first.
fn leaders(c: &Cluster) -> Vec<(usize, String)> {
    let Ok(views) = super::client::cluster_views(c.targets()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, d) in views.iter().enumerate() {
        let Some(d) = d else { continue };
        for p in &d.partitions {
            let ours = p.topic == "__cluster" || p.topic == super::TOPIC;
            if ours && p.local && p.leader == d.node_id && p.leader != 0 {
                let what = if p.topic == "__cluster" {
                    "the controller".to_string()
                } else {
                    format!("{}/{}", p.topic, p.partition)
                };
                out.push((i, what));
            }
        }
    }
    out.sort_by_key(|(_, w)| w != "the controller");
    out
}

fn names(hosts: &[Host]) -> String {
    let v: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    format!("[{}]", v.join(" "))
}

/// Injects one fault of `kind`.
pub fn inject(c: &mut Cluster, kind: Kind, id: u32, rng: &mut Rng, seed: u64) -> Result<Active> {
    let start_ms = c.now_ms();
    let (detail, nodes, undo) = match kind {
        Kind::Kill => {
            let (i, tag) = victim(c, rng);
            c.nodes[i].kill9();
            let n = c.nodes[i].host.name.clone();
            (format!("kill -9 {n}{tag}"), vec![n], Undo::Restart(i))
        }
        Kind::Power => {
            let (i, tag) = victim(c, rng);
            c.nodes[i].kill9();
            let node = &c.nodes[i];
            let lost = engine::power_loss::simulate_power_loss(&node.hook_dir(), &node.data_dir())
                .with_context(|| format!("power loss on {}", node.host.name))?;
            let n = node.host.name.clone();
            (
                format!(
                    "power loss on {n}{tag}: kill -9, {} bytes written after the last \
                     fdatasync dropped from {} files (and {} zero bytes allocated ahead)",
                    lost.bytes_dropped, lost.files, lost.zeros_dropped
                ),
                vec![n],
                Undo::Restart(i),
            )
        }
        Kind::Pause => {
            let (i, tag) = victim(c, rng);
            c.nodes[i].pause();
            let n = c.nodes[i].host.name.clone();
            (format!("SIGSTOP {n}{tag}"), vec![n], Undo::Resume(i))
        }
        Kind::Partition => {
            let (a, b, shape) = partition_shape(c, rng);
            c.net.cut(&a, &b)?;
            let nodes = a.iter().chain(&b).map(|h| h.name.clone()).collect();
            (
                format!("partition {shape}: {} | {}", names(&a), names(&b)),
                nodes,
                Undo::Rules,
            )
        }
        Kind::Loss => {
            let (i, tag) = victim(c, rng);
            let me = c.nodes[i].host.clone();
            let others: Vec<Host> = c.net.all().into_iter().filter(|h| *h != me).collect();
            let pct = between(rng, 10, 50) as u32;
            c.net.lose(&me, &others, pct)?;
            (
                format!(
                    "{pct}% packet loss on {}{tag} to and from {}",
                    me.name,
                    names(&others)
                ),
                vec![me.name.clone()],
                Undo::Rules,
            )
        }
        Kind::Delay => {
            let (i, tag) = victim(c, rng);
            let me = c.nodes[i].host.clone();
            let others: Vec<Host> = c.net.all().into_iter().filter(|h| *h != me).collect();
            let delay = Duration::from_millis(between(rng, 50, 300));
            let jitter = Duration::from_millis(between(rng, 0, 50));
            c.relay(seed ^ u64::from(id))?.set_delay(delay, jitter);
            c.net.route_through_relay(&me, &others)?;
            (
                format!(
                    "{} ms (+0-{} ms) delay on {}{tag} to and from {}",
                    delay.as_millis(),
                    jitter.as_millis(),
                    me.name,
                    names(&others)
                ),
                vec![me.name.clone()],
                Undo::Routes,
            )
        }
        Kind::Membership => {
            let (i, tag) = victim(c, rng);
            let n = c.nodes[i].host.name.clone();
            // Half the time `proglog cluster remove` (then SIGTERM), else kill -9 and wait
            // until the controller removes it by itself (--dead-node-timeout); the heal wipes
            // it and starts it as a new member.
            let how = if rng.below(2) == 0 {
                // Asked of the controller's leader, which may be the victim itself.
                let live: Vec<_> = c
                    .targets()
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| c.nodes[*j].running())
                    .map(|(_, t)| t)
                    .collect();
                let id = super::client::remove_node(live, n.clone(), Duration::from_secs(30))
                    .with_context(|| format!("proglog cluster remove {n}"))?;
                c.nodes[i].stop(Duration::from_secs(5));
                format!("cluster remove (raft id {id}), then SIGTERM")
            } else {
                c.nodes[i].kill9();
                format!(
                    "kill -9, removed by the controller after --dead-node-timeout {} s",
                    c.spec.dead_node_timeout.as_secs()
                )
            };
            (
                format!("remove {n}{tag} ({how}), then add it back wiped, as a new member"),
                vec![n],
                Undo::Readd(i),
            )
        }
        Kind::Disk => {
            let (i, tag) = victim(c, rng);
            let n = c.nodes[i].host.name.clone();
            let v = c.nodes[i]
                .volume
                .as_ref()
                .context("the disk nemesis needs the nodes' volumes")?;
            let bytes = v.fill()?;
            (
                format!("disk of {n}{tag} filled ({} MiB of ballast)", bytes >> 20),
                vec![n],
                Undo::FreeDisk(i),
            )
        }
    };
    let unfelt = match undo {
        Undo::FreeDisk(node) => Some(Unfelt {
            node,
            since: std::time::Instant::now(),
        }),
        _ => None,
    };
    Ok(Active {
        unfelt,
        fault: Fault {
            id,
            kind: kind.name().into(),
            detail,
            nodes,
            start_ms,
            end_ms: start_ms,
        },
        undo,
    })
}

/// Sides of a partition: isolate a node or the leader, majority | minority, or a bridge
/// node that stays on both sides. One node: the node is cut off from the client.
fn partition_shape(c: &Cluster, rng: &mut Rng) -> (Vec<Host>, Vec<Host>, &'static str) {
    let nodes: Vec<Host> = c.nodes.iter().map(|n| n.host.clone()).collect();
    if nodes.len() == 1 {
        return (nodes, vec![c.net.client.clone()], "node from client");
    }
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let pick = |ix: &[usize]| ix.iter().map(|&i| nodes[i].clone()).collect::<Vec<_>>();
    match rng.below(4) {
        0 => (pick(&order[..1]), pick(&order[1..]), "isolate a node"),
        1 => {
            let (i, _) = victim(c, rng);
            let rest: Vec<usize> = (0..nodes.len()).filter(|&j| j != i).collect();
            (pick(&[i]), pick(&rest), "isolate the leader")
        }
        2 => {
            let half = nodes.len() / 2;
            (
                pick(&order[..half]),
                pick(&order[half..]),
                "minority | majority",
            )
        }
        _ => {
            // order[0] is the bridge: it sees both sides, which do not see each other.
            let rest = &order[1..];
            let half = rest.len() / 2;
            (
                pick(&rest[..half]),
                pick(&rest[half..]),
                "bridge (one node sees both sides)",
            )
        }
    }
}

/// The controller's registry as its leader says (followers may lag), else as the first node
/// that answers says; None when no node answers.
fn registry(c: &Cluster) -> Result<Option<Vec<proto::log::v1::ClusterNode>>> {
    let views = super::client::cluster_views(c.targets())?;
    let leader = views.iter().flatten().find(|d| {
        d.partitions
            .first()
            .is_some_and(|p| p.leader == d.node_id && p.leader != 0)
    });
    Ok(leader
        .or_else(|| views.iter().flatten().next())
        .map(|d| d.nodes.clone()))
}

/// Whether the controller's registry still holds `name`, not removed.
fn still_member(c: &Cluster, name: &str) -> Result<bool> {
    Ok(registry(c)?.is_none_or(|nodes| nodes.iter().any(|x| x.name == name && !x.removed)))
}

/// Restarts the nodes (but `except`) the controller removed on its own while they ran: faults
/// in a row (a partition, loss, a pause) can keep a live node from being seen up for the
/// dead-node timeout. A removed node that runs on stays out until it restarts
/// (docs/replication.md), so the harness restarts it, as an operator would, and says so in
/// the fault's record. Returns what it did.
fn readmit_removed(c: &mut Cluster, except: Option<usize>) -> Result<Option<String>> {
    let Some(nodes) = registry(c)? else {
        return Ok(None);
    };
    let out = |name: &str| {
        nodes.iter().any(|x| x.name == name && x.removed)
            && !nodes.iter().any(|x| x.name == name && !x.removed)
    };
    let mut said = Vec::new();
    for i in 0..c.nodes.len() {
        let n = &c.nodes[i];
        if Some(i) == except || !n.running() || n.paused || !out(&n.host.name) {
            continue;
        }
        let name = n.host.name.clone();
        eprintln!(
            "[{:6.1}s] {name} was removed by the controller while it ran (not seen up for \
             --dead-node-timeout); restarting it, as an operator would",
            c.now_ms() / 1000.0
        );
        c.nodes[i].stop(Duration::from_secs(5));
        c.restart(i)?;
        said.push(name);
    }
    Ok((!said.is_empty()).then(|| {
        format!(
            "; {} removed by the controller while running: restarted",
            said.join(", ")
        )
    }))
}

/// Undoes a fault and waits until its nodes serve again.
pub fn heal(c: &mut Cluster, a: &mut Active) -> Result<()> {
    match a.undo {
        Undo::Restart(i) => c.restart(i)?,
        Undo::Resume(i) => c.nodes[i].resume(),
        Undo::Rules => c.net.heal_rules()?,
        Undo::Routes => {
            c.net.heal_routes()?;
            if let Some(r) = &c.relay {
                r.set_delay(Duration::ZERO, Duration::ZERO);
            }
        }
        Undo::Readd(i) => {
            // Not a member any more before its data goes (a node killed waits out the
            // dead-node timeout here).
            let name = c.nodes[i].host.name.clone();
            let limit = c.spec.dead_node_timeout * 4 + Duration::from_secs(30);
            let deadline = std::time::Instant::now() + limit;
            while still_member(c, &name)? {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{name} is still a member {limit:?} after it stopped"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            if let Some(said) = readmit_removed(c, Some(i))? {
                a.fault.detail.push_str(&said);
            }
            c.nodes[i].wipe()?;
            c.restart(i)?;
            // The new member is placed, caught up and promoted before the next fault.
            if let Err(e) = c.wait_whole(Some((super::TOPIC, c.partitions)), limit) {
                eprintln!(
                    "[{:6.1}s] WARNING: after re-adding {name}: {e:#}",
                    c.now_ms() / 1000.0
                );
                a.fault.detail.push_str(&format!("; not whole again: {e}"));
            }
        }
        Undo::FreeDisk(i) => {
            if a.unfelt.take().is_some() {
                a.fault.detail.push_str(
                    "; NOT felt: its node took writes throughout (into space its logs had \
                     allocated ahead)",
                );
            }
            let v = c.nodes[i].volume.as_ref().context("volume")?;
            v.free()?;
            // A full disk is an operating condition: once space returns the node's
            // partitions take writes again by themselves, without a restart. One that
            // latched instead (a failed sync) or stays full is said in the fault's record,
            // and the node is restarted so that the run goes on.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut state = c.nodes[i].writes();
            while state != Some(super::node::Writes::Taken) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(200));
                state = c.nodes[i].writes();
            }
            if state != Some(super::node::Writes::Taken) {
                let n = c.nodes[i].host.name.clone();
                eprintln!(
                    "[{:6.1}s] WARNING: {n} does not take writes 30 s after its disk was \
                     freed ({state:?}); restarting it",
                    c.now_ms() / 1000.0
                );
                a.fault
                    .detail
                    .push_str(&format!("; NOT recovered by itself ({state:?}): restarted"));
                c.nodes[i].stop(Duration::from_secs(5));
                c.restart(i)?;
            }
        }
    }
    if !matches!(a.undo, Undo::Readd(_)) {
        if let Some(said) = readmit_removed(c, None)? {
            a.fault.detail.push_str(&said);
        }
    }
    a.fault.end_ms = c.now_ms();
    Ok(())
}

/// After the last fault: a node the controller removed while it ran is restarted (see
/// [`readmit_removed`]).
pub fn final_readmit(c: &mut Cluster) -> Result<()> {
    readmit_removed(c, None).map(drop)
}

/// Checks a plan's nemeses against what the machine has.
pub fn preflight(kinds: &[Kind]) -> Result<()> {
    if kinds.iter().any(|k| k.needs_nft()) && !sys::has("nft") {
        bail!(
            "nemeses partition and loss need nft: install Debian's nftables \
             (apt-get install nftables; bash scripts/test does it)"
        );
    }
    if kinds.contains(&Kind::Disk) {
        for tool in ["mkfs.ext4", "losetup", "mount"] {
            if !sys::has(tool) {
                bail!("the disk nemesis needs {tool} (Debian: e2fsprogs, mount)");
            }
        }
    }
    if kinds.contains(&Kind::Delay) && !std::path::Path::new("/dev/net/tun").exists() {
        bail!("the delay nemesis needs /dev/net/tun");
    }
    Ok(())
}
