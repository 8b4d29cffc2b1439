//! The membership core on a simulated network: seeded, replayable, in virtual time.
//!
//! Every node runs the real [`Core`] (foca, envelopes, keys, the left broadcast, the list);
//! the harness is the network (loss, delay, reordering, partitions) and the clock. A run is
//! decided by its seed: each test prints it, and `PROGLOG_SIM_SEED=<n>` replays one.
//! Bounds on detection and convergence are in virtual time, so they are properties of the
//! protocol and its settings, never of the machine's speed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use consensus::membership::{
    Core, Effects, GossipKey, GossipStats, MemberState, MembershipConfig, NodeId, NodeIdentity,
    Shared, Timer,
};
use rand010::rngs::SmallRng;
use rand010::{RngExt, SeedableRng};

enum Event {
    Packet {
        to: usize,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        run: u64,
        timer: Timer,
    },
    Join {
        node: usize,
        run: u64,
    },
}

struct SimNode {
    addr: SocketAddr,
    node_id: NodeId,
    generation: u64,
    /// Bumped on crash and restart: events of an earlier run are dropped.
    run: u64,
    core: Option<Core>,
    shared: Arc<Shared>,
    joins: Vec<SocketAddr>,
    key: Option<GossipKey>,
}

struct Net {
    loss: f64,
    delay_min: Duration,
    delay_max: Duration,
    /// Partition group of each node: datagrams cross only within a group.
    group: Vec<u8>,
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Event>,
    nodes: Vec<SimNode>,
    net: Net,
    config: MembershipConfig,
}

fn seed_for(test: &str) -> u64 {
    let seed = match std::env::var("PROGLOG_SIM_SEED") {
        Ok(s) => s.parse().expect("PROGLOG_SIM_SEED must be a u64"),
        Err(_) => rand010::random(),
    };
    eprintln!("{test}: seed {seed} (replay with PROGLOG_SIM_SEED={seed})");
    seed
}

impl Sim {
    /// `n` nodes; node 0 starts alone, every other joins through node 0's address.
    fn new(seed: u64, n: usize, key: Option<GossipKey>) -> Sim {
        let mut sim = Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes: Vec::new(),
            net: Net {
                loss: 0.05,
                delay_min: Duration::from_micros(200),
                delay_max: Duration::from_millis(40),
                group: vec![0; n],
            },
            config: MembershipConfig::default(),
        };
        for i in 0..n {
            let addr: SocketAddr = format!("10.77.0.{}:8401", i + 1).parse().unwrap();
            let joins = if i == 0 {
                vec![]
            } else {
                vec![sim.nodes[0].addr]
            };
            sim.nodes.push(SimNode {
                addr,
                node_id: NodeId::random(),
                generation: 0,
                run: 0,
                core: None,
                shared: Arc::new(Shared::default()),
                joins,
                key: key.clone(),
            });
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let seed = self.rng.random::<u64>();
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.run += 1;
        let identity = NodeIdentity {
            node_id: node.node_id,
            generation: node.generation,
            renewal: 0,
            started_ms: self.now.as_millis() as u64,
            name: format!("node-{i}"),
            gossip_addr: node.addr,
            rpc_addr: SocketAddr::new(node.addr.ip(), 8400),
        };
        let mut core = Core::new(
            identity,
            self.config.clone(),
            node.key.clone(),
            !node.joins.is_empty(),
            seed,
            node.shared.clone(),
        );
        let mut fx = Effects::default();
        core.start(self.now, &mut fx);
        self.nodes[i].core = Some(core);
        self.apply(i, fx);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].run += 1;
    }

    fn push(&mut self, at: Duration, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn apply(&mut self, i: usize, fx: Effects) {
        let run = self.nodes[i].run;
        let from = self.nodes[i].addr;
        for (after, timer) in fx.timers {
            self.push(
                self.now + after,
                Event::Timer {
                    node: i,
                    run,
                    timer,
                },
            );
        }
        if fx.join {
            self.push(self.now, Event::Join { node: i, run });
        }
        for (to, data) in fx.sends {
            self.send(i, from, to, data);
        }
    }

    fn send(&mut self, from_node: usize, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let Some(to_node) = self.nodes.iter().position(|n| n.addr == to) else {
            return;
        };
        if self.net.group[from_node] != self.net.group[to_node]
            || self.rng.random::<f64>() < self.net.loss
        {
            return;
        }
        let span = (self.net.delay_max - self.net.delay_min).as_micros() as u64;
        let delay = self.net.delay_min + Duration::from_micros(self.rng.random_range(0..=span));
        self.push(
            self.now + delay,
            Event::Packet {
                to: to_node,
                from,
                data,
            },
        );
    }

    /// Injects a datagram from outside the cluster.
    fn inject(&mut self, to: usize, data: Vec<u8>) {
        let from: SocketAddr = "10.77.9.9:4000".parse().unwrap();
        self.push(self.now, Event::Packet { to, from, data });
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, seq))) = self.queue.pop() else {
            return false;
        };
        self.now = at;
        let Some(event) = self.events.remove(&seq) else {
            return true;
        };
        let mut fx = Effects::default();
        let i = match event {
            Event::Packet { to, from, data } => {
                let Some(core) = self.nodes[to].core.as_mut() else {
                    return true;
                };
                core.handle_packet(from, &data, at, &mut fx);
                to
            }
            Event::Timer { node, run, timer } => {
                if run != self.nodes[node].run {
                    return true;
                }
                let Some(core) = self.nodes[node].core.as_mut() else {
                    return true;
                };
                core.handle_timer(timer, at, &mut fx);
                node
            }
            Event::Join { node, run } => {
                if run != self.nodes[node].run {
                    return true;
                }
                let joins = self.nodes[node].joins.clone();
                let Some(core) = self.nodes[node].core.as_mut() else {
                    return true;
                };
                core.join(&joins, at, &mut fx);
                node
            }
        };
        self.apply(i, fx);
        true
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until, |_| false);
    }

    /// Steps until `cond` holds (returns the virtual time it took) or `limit` passes.
    fn run_until(&mut self, limit: Duration, cond: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        loop {
            if cond(self) {
                return Some(self.now - start);
            }
            match self.queue.peek() {
                Some(Reverse((at, _))) if *at <= limit => {
                    self.step();
                }
                _ => {
                    self.now = limit;
                    return None;
                }
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.is_some())
            .collect()
    }

    /// What `observer` lists about `subject`: state and generation.
    fn sees(&self, observer: usize, subject: usize) -> Option<(MemberState, u64)> {
        let list = self.nodes[observer].shared.current();
        list.get(self.nodes[subject].node_id)
            .map(|m| (m.state, m.generation))
    }

    /// Every live node lists every node of `subjects` in `state` at its current generation.
    fn all_see(&self, subjects: &[usize], state: MemberState) -> bool {
        self.live().into_iter().all(|o| {
            subjects
                .iter()
                .filter(|&&s| s != o)
                .all(|&s| self.sees(o, s) == Some((state, self.nodes[s].generation)))
        })
    }

    fn converged(&self) -> bool {
        let live = self.live();
        self.all_see(&live, MemberState::Up)
    }

    fn stat(&self, f: impl Fn(&GossipStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        self.nodes
            .iter()
            .map(|n| GossipStats::get(f(&n.shared.stats)))
            .sum()
    }

    fn deadline(&self, d: Duration) -> Duration {
        self.now + d
    }
}

/// Virtual time within which a dead member must be listed down everywhere: every live
/// member probes one member per period, so a dead one is probed within a few periods; then
/// the probe and indirect probes time out, the suspicion runs out, and the news spreads.
fn detection_bound(c: &MembershipConfig, n: usize) -> Duration {
    c.probe_period * n as u32 + c.probe_rtt * 2 + c.suspect_to_down_after + Duration::from_secs(3)
}

fn converge(sim: &mut Sim) -> Duration {
    let limit = sim.deadline(Duration::from_secs(60));
    let t = sim
        .run_until(limit, Sim::converged)
        .unwrap_or_else(|| panic!("seed {}: no convergence in 60 s of virtual time", sim.seed));
    eprintln!("converged in {t:?} (virtual)");
    t
}

#[test]
fn members_converge_under_loss_and_delay() {
    let seed = seed_for("members_converge_under_loss_and_delay");
    for n in [3, 5, 8] {
        let mut sim = Sim::new(seed ^ n as u64, n, None);
        converge(&mut sim);
        // And stay converged: 5% loss must not make anyone suspect for long.
        sim.run_for(Duration::from_secs(30));
        let limit = sim.deadline(Duration::from_secs(10));
        assert!(
            sim.run_until(limit, Sim::converged).is_some(),
            "seed {seed}: view not stable"
        );
        let list = sim.nodes[0].shared.current();
        assert_eq!(list.members.len(), n);
        assert_eq!(list.members.iter().filter(|m| m.is_self).count(), 1);
    }
}

#[test]
fn dead_member_is_detected_within_the_configured_time() {
    let seed = seed_for("dead_member_is_detected_within_the_configured_time");
    let mut worst = Duration::ZERO;
    for trial in 0..5u64 {
        let mut sim = Sim::new(seed.wrapping_add(trial), 5, None);
        converge(&mut sim);
        sim.run_for(Duration::from_secs(5));
        let victim = 1 + (trial as usize % 4);
        let suspicions_before = sim.stat(|s| &s.suspicions);
        sim.crash(victim);
        let bound = detection_bound(&sim.config, 5);
        let limit = sim.deadline(bound);
        let took = sim
            .run_until(limit, |s| s.all_see(&[victim], MemberState::Down))
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed} trial {trial}: node {victim} not down everywhere within {bound:?}"
                )
            });
        worst = worst.max(took);
        assert!(
            sim.stat(|s| &s.suspicions) > suspicions_before,
            "a death goes through suspicion"
        );
        // The others are unaffected (a lost datagram may make one suspect for a moment).
        let others: Vec<usize> = sim.live();
        let limit = sim.deadline(Duration::from_secs(10));
        assert!(
            sim.run_until(limit, |s| s.all_see(&others, MemberState::Up))
                .is_some(),
            "seed {seed} trial {trial}: the living did not stay up"
        );
    }
    eprintln!("worst detection: {worst:?} (virtual)");
}

#[test]
fn restarted_member_rejoins_under_a_new_generation() {
    let seed = seed_for("restarted_member_rejoins_under_a_new_generation");
    let mut sim = Sim::new(seed, 5, None);
    converge(&mut sim);
    // Restart after being declared down.
    sim.crash(2);
    let limit = sim.deadline(Duration::from_secs(30));
    sim.run_until(limit, |s| s.all_see(&[2], MemberState::Down))
        .expect("down");
    sim.start(2);
    assert_eq!(sim.nodes[2].generation, 2);
    converge(&mut sim);
    // Restart faster than detection: the new run replaces the old one directly.
    sim.crash(3);
    sim.run_for(Duration::from_millis(300));
    sim.start(3);
    converge(&mut sim);
    assert_eq!(sim.sees(0, 3), Some((MemberState::Up, 2)));
    // Node 0, the one everybody joined through, restarts too; it has no join address, so
    // the others must find it (they announce to down members).
    sim.crash(0);
    sim.run_for(Duration::from_secs(2));
    sim.start(0);
    converge(&mut sim);
}

/// What the driver does on SIGTERM, for node `i`: announce, gossip twice, leave, stop.
fn leave_cleanly(sim: &mut Sim, i: usize) {
    let mut fx = Effects::default();
    let now = sim.now;
    sim.nodes[i]
        .core
        .as_mut()
        .unwrap()
        .start_leave(now, &mut fx);
    sim.apply(i, fx);
    for _ in 0..2 {
        sim.run_for(sim.config.gossip_interval);
        let mut fx = Effects::default();
        let now = sim.now;
        sim.nodes[i].core.as_mut().unwrap().gossip(now, &mut fx);
        sim.apply(i, fx);
    }
    let mut fx = Effects::default();
    let now = sim.now;
    sim.nodes[i]
        .core
        .as_mut()
        .unwrap()
        .finish_leave(now, &mut fx);
    sim.apply(i, fx);
    sim.run_for(Duration::from_millis(100));
    sim.crash(i);
}

#[test]
fn clean_leave_is_left_not_down() {
    let seed = seed_for("clean_leave_is_left_not_down");
    let mut sim = Sim::new(seed, 5, None);
    converge(&mut sim);
    let i = 4;
    leave_cleanly(&mut sim, i);
    let limit = sim.deadline(Duration::from_secs(20));
    sim.run_until(limit, |s| s.all_see(&[i], MemberState::Left))
        .unwrap_or_else(|| panic!("seed {seed}: not left everywhere"));
    // And it stays left: the down update foca also spreads must not overwrite it.
    sim.run_for(Duration::from_secs(30));
    assert!(sim.all_see(&[i], MemberState::Left), "seed {seed}");
}

/// A member cut off while a node leaves (so it misses every copy of the announcement that
/// foca's bounded transmissions carry) still lists the node left once it is back: those that
/// know re-announce the departure for a while.
#[test]
fn a_member_cut_off_during_a_leave_learns_it_afterwards() {
    let seed = seed_for("a_member_cut_off_during_a_leave_learns_it_afterwards");
    let mut sim = Sim::new(seed, 5, None);
    converge(&mut sim);
    sim.net.group = vec![0, 0, 0, 1, 0];
    let i = 4;
    leave_cleanly(&mut sim, i);
    // Long enough for every member's transmissions of the announcement to be spent.
    sim.run_for(Duration::from_secs(3));
    assert!(
        sim.sees(3, i).map(|v| v.0) != Some(MemberState::Left),
        "seed {seed}: node 3 heard of the leave while cut off"
    );
    sim.net.group = vec![0; 5];
    let limit = sim.deadline(Duration::from_secs(20));
    sim.run_until(limit, |s| s.all_see(&[i], MemberState::Left))
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: node 3 lists node 4 {:?}, not left",
                sim.sees(3, i)
            )
        });
}

#[test]
fn partition_heals_into_one_view() {
    let seed = seed_for("partition_heals_into_one_view");
    let mut worst = Duration::ZERO;
    for trial in 0..4u64 {
        let mut sim = Sim::new(seed.wrapping_add(trial), 5, None);
        converge(&mut sim);
        // Two sides, or a majority and two nodes each alone (an isolated node sees everyone
        // down and falls back to its join address).
        sim.net.group = if trial % 2 == 0 {
            vec![0, 0, 1, 1, 1]
        } else {
            vec![0, 0, 0, 1, 2]
        };
        let limit = sim.deadline(Duration::from_secs(40));
        sim.run_until(limit, |s| {
            s.sees(0, 3).map(|v| v.0) == Some(MemberState::Down)
                && s.sees(3, 0).map(|v| v.0) == Some(MemberState::Down)
        })
        .unwrap_or_else(|| panic!("seed {seed}: the sides never saw each other down"));
        sim.run_for(Duration::from_secs(10));
        sim.net.group = vec![0; 5];
        let healed = converge(&mut sim);
        worst = worst.max(healed);
        // Rejoining after a false down is a renewal, not a restart: generations unchanged.
        for i in 0..5 {
            assert_eq!(sim.nodes[i].generation, 1);
        }
    }
    eprintln!("worst heal: {worst:?} (virtual)");
    assert!(
        worst <= Duration::from_secs(30),
        "seed {seed}: heal took {worst:?}"
    );
}

/// A partition that heals while suspicions are still running out: one side may declare the
/// other down after the heal (its suspicion never reached the suspected member, which could
/// not refute it), and a member declared down rejoins under a renewed identity. Its own
/// suspicions of others must still run out (down, or refuted), not stay for ever: a member
/// listed suspect for good would be removed from the cluster after --dead-node-timeout while
/// it runs (found by `proglog-chaos`, seed 1211761726955022630).
#[test]
fn suspicions_pending_when_a_partition_heals_still_resolve() {
    let seed = seed_for("suspicions_pending_when_a_partition_heals_still_resolve");
    for trial in 0..32u64 {
        let mut sim = Sim::new(seed.wrapping_add(trial), 3, None);
        converge(&mut sim);
        sim.net.group = vec![0, 1, 1];
        let limit = sim.deadline(Duration::from_secs(20));
        let suspected = |s: &Sim| {
            s.sees(0, 1).map(|v| v.0) == Some(MemberState::Suspect)
                || s.sees(1, 0).map(|v| v.0) == Some(MemberState::Suspect)
                || s.sees(2, 0).map(|v| v.0) == Some(MemberState::Suspect)
        };
        sim.run_until(limit, suspected)
            .unwrap_or_else(|| panic!("seed {seed} trial {trial}: nobody suspected"));
        // Heal somewhere inside the suspicion window (4 s by default).
        let extra = Duration::from_millis(sim.rng.random_range(0..4500));
        sim.run_for(extra);
        sim.net.group = vec![0; 3];
        let limit = sim.deadline(Duration::from_secs(60));
        if sim.run_until(limit, Sim::converged).is_none() {
            let views: Vec<String> = (0..3)
                .flat_map(|o| (0..3).filter(move |&x| x != o).map(move |x| (o, x)))
                .map(|(o, x)| format!("{o} sees {x}: {:?}", sim.sees(o, x)))
                .collect();
            panic!(
                "seed {seed} trial {trial} (healed {extra:?} after the first suspicion): no \
                 single view 60 s after the heal: {views:?}"
            );
        }
    }
}

#[test]
fn garbage_and_foreign_packets_change_nothing() {
    let seed = seed_for("garbage_and_foreign_packets_change_nothing");
    let key = GossipKey::generate().unwrap();
    let mut sim = Sim::new(seed, 4, Some(key));
    // No loss: then any change of a list could only come from the injected packets.
    sim.net.loss = 0.0;
    converge(&mut sim);
    sim.run_for(Duration::from_secs(2));
    let version_before: Vec<u64> = sim
        .nodes
        .iter()
        .map(|n| n.shared.current().version)
        .collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    for k in 0..2000 {
        let len = rng.random_range(0..1500);
        let mut data: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
        if k % 2 == 0 && len >= 8 {
            data[0..2].copy_from_slice(b"PM");
            data[2] = 1;
            data[3] = 1 + (k % 3) as u8;
        }
        sim.inject(k % 4, data);
    }
    // A node of another cluster (another key) trying to join through node 0.
    let foreign_key = GossipKey::generate().unwrap();
    let mut fx = Effects::default();
    let stranger = NodeIdentity {
        node_id: NodeId::random(),
        generation: 1,
        renewal: 0,
        started_ms: 0,
        name: "stranger".into(),
        gossip_addr: "10.77.9.9:4000".parse().unwrap(),
        rpc_addr: "10.77.9.9:4001".parse().unwrap(),
    };
    let mut foreign = Core::new(
        stranger,
        MembershipConfig::default(),
        Some(foreign_key),
        true,
        1,
        Arc::new(Shared::default()),
    );
    foreign.join(&[sim.nodes[0].addr], sim.now, &mut fx);
    for (_, data) in fx.sends {
        sim.inject(0, data);
    }
    // Unauthenticated SWIM too (what a node without peer TLS would send).
    let mut fx = Effects::default();
    let mut open = Core::new(
        NodeIdentity {
            name: "open".into(),
            ..NodeIdentity::placeholder("10.77.9.9:4000".parse().unwrap())
        },
        MembershipConfig::default(),
        None,
        true,
        2,
        Arc::new(Shared::default()),
    );
    open.join(&[sim.nodes[0].addr], sim.now, &mut fx);
    for (_, data) in fx.sends {
        sim.inject(0, data);
    }
    sim.run_for(Duration::from_secs(5));
    assert!(sim.converged(), "seed {seed}");
    for (i, n) in sim.nodes.iter().enumerate() {
        let list = n.shared.current();
        assert_eq!(
            list.members.len(),
            4,
            "seed {seed}: node {i} lists a stranger"
        );
        assert_eq!(
            list.version, version_before[i],
            "seed {seed}: node {i} changed"
        );
    }
    assert!(sim.stat(|s| &s.dropped_malformed) > 500);
    assert!(sim.stat(|s| &s.dropped_unauthenticated) >= 2);
}
