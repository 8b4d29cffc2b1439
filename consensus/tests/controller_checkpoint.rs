//! The controller's checkpoints on the real `GroupSet` over in-memory logs (which drop
//! exactly the entries compacted, unlike the engine's whole segments) and a lossless
//! in-process network the test drives step by step. Each node applies the controller group's
//! `StateEvent`s to a `ClusterState` as `ClusterNode` does (a replay built aside and swapped
//! in at its end), proposes checkpoints where `GroupSet::checkpoint_at` allows, and compacts
//! below its last checkpoint through retention's path, as the shard's loop does:
//!
//! - many commands, checkpoints among them (records, as the loop proposes them, and stale
//!   ones as commands, which change nothing), the log compacted on every node (first index
//!   past 1), every state the same;
//! - a replica restarted replays from its checkpoint and holds the same state;
//! - a replica added after the compaction, and one that was down while the leader compacted
//!   past it, get a snapshot and rebuild the same state from it, also after a restart;
//! - a log written before checkpoints (whole, none in it) replays from its first entry;
//! - all of the above with a part size of 4 KiB, so that the state outgrows one command:
//!   checkpoints in parts, the logs compacted below the first part of the last one, every
//!   replica (restarted, added after the compaction) rebuilding the same state.
//!
//! `PROGLOG_CHECKPOINT_SEED=<n>` replays a run (the seed is printed).

use consensus::cluster::state::{Applied, CheckpointBody, ClusterState, Command, NodeEntry};
use consensus::raft::{GroupConfig, GroupSet, LogStore, MemStore, StateEvent};
use engine::LogConfig;
use futures_lite::future::block_on;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::mem_cluster;
use mem_cluster::{add_learner, MemNet, Rounds};

/// The controller's group.
const G: u64 = 0;
/// Commands between two checkpoints (the server's default is 1000).
const EVERY: u64 = 10;

/// A node's controller state machine, fed what its group applied and replayed.
#[derive(Default)]
struct Machine {
    state: ClusterState,
    rebuilding: Option<ClusterState>,
    /// Replays seen: (first index, last index).
    replays: Vec<(u64, u64)>,
    /// The commands of each checkpoint taken (the state replaced), in order.
    taken: Vec<u32>,
}

impl Machine {
    fn feed(&mut self, e: StateEvent) {
        match e {
            StateEvent::Replay {
                first_index,
                last_index,
            } => {
                self.replays.push((first_index, last_index));
                self.rebuilding = Some(ClusterState::replaying_from(first_index));
            }
            StateEvent::Command { index, command } => {
                let c = Command::decode(&command).expect("every command decodes");
                let s = self.rebuilding.as_mut().unwrap_or(&mut self.state);
                let outcome = s.apply(index, &c);
                assert!(
                    !matches!(
                        outcome,
                        Applied::Diverged | Applied::BrokenCheckpoint { .. }
                    ),
                    "{index}: {outcome:?}"
                );
                if outcome == Applied::Checkpoint {
                    let parts = match c.checkpoint_body() {
                        Some(Ok(CheckpointBody::Part { parts, .. })) => parts,
                        _ => 1,
                    };
                    self.taken.push(parts);
                }
            }
            StateEvent::Replayed => {
                // A replay may end still waiting for its checkpoint: a log compacted just
                // below it whose last batch was written before it was known committed. The
                // checkpoint then comes from raft-rs, as the commit index is learnt.
                self.state = self.rebuilding.take().expect("a replay under way");
            }
        }
    }
}

struct Cluster {
    mem: MemNet,
    machines: BTreeMap<u64, Machine>,
    /// The largest command of a checkpoint (`ClusterNode::checkpoint_part_bytes`); `None`:
    /// always one command, whatever its size.
    part_bytes: Option<usize>,
    /// The commands of each checkpoint proposed where the leader allowed one.
    proposed: Vec<usize>,
}

impl std::ops::Deref for Cluster {
    type Target = MemNet;
    fn deref(&self) -> &MemNet {
        &self.mem
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut MemNet {
        &mut self.mem
    }
}

impl Rounds for Cluster {
    fn mem(&self) -> &MemNet {
        &self.mem
    }
    fn mem_mut(&mut self) -> &mut MemNet {
        &mut self.mem
    }
    fn group(&self) -> u64 {
        G
    }
    /// A round in which every node's state machine takes what its group applied, and its
    /// log is compacted below its last checkpoint, as the shard's loop does.
    fn round(&mut self) {
        let machines = &mut self.machines;
        self.mem.round_with(|id, set| {
            let m = machines.get_mut(&id).expect("machine");
            feed(m, set);
            compact(m, set);
        });
    }
}

/// Hands node's state machine `m` what its group applied.
fn feed(m: &mut Machine, set: &mut GroupSet<MemStore>) {
    for (group, e) in set.take_commands() {
        assert_eq!(group, G);
        m.feed(e);
    }
}

/// Compacts a node's log below its machine's last checkpoint.
fn compact(m: &Machine, set: &mut GroupSet<MemStore>) {
    let checkpoint = m.state.last_checkpoint;
    let first = set.first_index(G).expect("group");
    if checkpoint > first {
        block_on(set.compact_for_retention(G, checkpoint - 1, None)).expect("compact");
    }
}

impl Cluster {
    fn new(n: u64, part_bytes: Option<usize>) -> Cluster {
        let voters: Vec<u64> = (1..=n).collect();
        let mut c = Cluster {
            mem: MemNet::default(),
            machines: BTreeMap::new(),
            part_bytes,
            proposed: Vec::new(),
        };
        for id in 1..=n {
            c.stores.insert(id, Rc::new(MemStore::new()));
            c.start(id, &voters);
        }
        c
    }

    /// Opens node `id`'s controller group over its store, with a new state machine.
    fn start(&mut self, id: u64, voters: &[u64]) {
        let mut set = GroupSet::new(id, GroupConfig::default(), id * 1000);
        block_on(set.add_group_with(G, Rc::clone(&self.stores[&id]), voters, true))
            .expect("open group");
        let mut m = Machine::default();
        feed(&mut m, &mut set);
        self.sets.insert(id, set);
        self.machines.insert(id, m);
    }

    /// Restarts node `id` from what its log synced.
    fn restart(&mut self, id: u64) {
        let crashed = Rc::new(self.stores[&id].crash(0));
        self.stores.insert(id, crashed);
        self.start(id, &[]);
    }

    fn propose(&mut self, c: &Command) {
        self.propose_encoded(&c.encode());
    }

    fn propose_encoded(&mut self, command: &[u8]) {
        let l = self.leader().expect("a leader");
        // Not waited for: the states show what was applied.
        drop(self.set(l).propose_command(G, command).expect("propose"));
    }

    /// A checkpoint of `state` through `at`: the commands to propose in a row.
    fn checkpoint_commands(&self, state: &ClusterState, at: u64) -> Vec<Vec<u8>> {
        match self.part_bytes {
            None => vec![Command::checkpoint(state, at).encode()],
            Some(limit) => Command::checkpoint_parts(state, at, limit).expect("parts"),
        }
    }

    /// Proposes a checkpoint where the leader allows one, as the shard's loop does; true if
    /// proposed.
    fn checkpoint(&mut self) -> bool {
        let l = self.leader().expect("a leader");
        let mut at = self.sets[&l].checkpoint_at(G);
        for _ in 0..10 {
            if at.is_some() {
                break;
            }
            self.round();
            at = self.sets[&l].checkpoint_at(G);
        }
        let Some(at) = at else {
            return false;
        };
        let state = &self.machines[&l].state;
        assert!(state.applied <= at);
        let parts = self.checkpoint_commands(state, at);
        if parts.is_empty() {
            return false;
        }
        // As records, as the loop proposes them (the stale ones below go as commands: a
        // checkpoint is read the same either way), all in a row.
        for p in &parts {
            if let Some(limit) = self.part_bytes {
                assert!(p.len() <= limit, "a part of {} bytes", p.len());
            }
            self.set(l)
                .forward_command_as_record(G, p, 0)
                .expect("propose");
        }
        self.proposed.push(parts.len());
        true
    }

    /// Every node's state is the leader's; returns it.
    fn same_state(&self) -> ClusterState {
        let l = self.leader().expect("a leader");
        let want = &self.machines[&l].state;
        for (id, m) in &self.machines {
            assert_eq!(
                &m.state, want,
                "node {id}'s state differs from leader {l}'s"
            );
        }
        want.clone()
    }
}

fn node(name: &str) -> NodeEntry {
    NodeEntry {
        member: format!("member-{name}"),
        name: name.into(),
        rpc_addr: "127.0.0.1:1".into(),
        gossip_addr: "127.0.0.1:2".into(),
        shards: 2,
        removed: false,
    }
}

fn seed() -> u64 {
    let seed = std::env::var("PROGLOG_CHECKPOINT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("PROGLOG_CHECKPOINT_SEED={seed}");
    seed
}

/// `n` commands of a random kind (register, topics created and deleted, nodes removed),
/// proposed one or a few per round; a checkpoint proposed whenever the leader's state has
/// `EVERY` commands since the last, and now and then one proposed with commands in flight
/// behind it (stale where it lands: a no-op).
fn drive(c: &mut Cluster, rng: &mut StdRng, n: usize, stale: &mut usize) {
    let mut made = 0;
    while made < n {
        let l = c.leader().expect("a leader");
        let s = c.machines[&l].state.clone();
        let burst = rng.random_range(1..=3);
        for _ in 0..burst {
            let cmd = match rng.random_range(0..4) {
                0 => Command::Register {
                    node: node(&format!("n{made}")),
                },
                // The first topic by name, but those `scenario` made to stay (`z`...).
                1 if s.topics.keys().any(|t| !t.starts_with('z')) => Command::DeleteTopic {
                    name: s
                        .topics
                        .keys()
                        .find(|t| !t.starts_with('z'))
                        .cloned()
                        .unwrap_or_default(),
                },
                2 if s.active_nodes().len() > 3 => Command::RemoveNode {
                    id: s.active_nodes()[rng.random_range(0..s.active_nodes().len())],
                },
                // Removals of one burst (chosen on the same state) may leave none.
                _ if s.active_nodes().is_empty() => Command::Register {
                    node: node(&format!("n{made}")),
                },
                _ => {
                    let nodes = s.active_nodes();
                    let rf = rng.random_range(1..=nodes.len().min(3)) as u32;
                    let name = format!("t{made}");
                    Command::CreateTopic {
                        partitions: s.place(&name, 2, rf, &nodes).expect("placed"),
                        name,
                        config: LogConfig::default(),
                        replication_factor: rf,
                    }
                }
            };
            c.propose(&cmd);
            made += 1;
        }
        if rng.random_bool(0.1) {
            // Taken now, with the burst still in flight behind it.
            let at = c.sets[&l].status(G).expect("status").applied;
            for p in c.checkpoint_commands(&c.machines[&l].state, at) {
                c.propose_encoded(&p);
            }
            *stale += 1;
        }
        c.rounds(2);
        if c.machines[&l].state.since_checkpoint >= EVERY {
            c.checkpoint();
            c.rounds(2);
        }
    }
    c.rounds(5);
}

#[test]
fn the_controller_log_is_compacted_below_checkpoints_and_every_replica_rebuilds_the_same_state() {
    let c = scenario(None);
    assert!(c.proposed.iter().all(|&n| n == 1), "{:?}", c.proposed);
}

/// Parts of 4 KiB: the state outgrows one command after a few dozen commands.
const PART_BYTES: usize = 4096;

#[test]
fn a_state_larger_than_a_command_is_checkpointed_in_parts_and_the_log_still_compacted() {
    let c = scenario(Some(PART_BYTES));
    let s = c.same_state();
    let whole = Command::checkpoint(&s, s.applied).encode().len();
    println!(
        "checkpoints proposed in {:?} parts; the last state takes {whole} bytes",
        c.proposed
    );
    assert!(whole > 2 * PART_BYTES, "a state of {whole} bytes");
    assert!(c.proposed.iter().any(|&n| n >= 3), "{:?}", c.proposed);
    // Every node took its last checkpoint from parts (those that replayed, from the parts
    // their logs start with: compacted below the first part, never inside a checkpoint).
    for (id, m) in &c.machines {
        assert!(
            m.taken.last().is_some_and(|&n| n >= 2),
            "node {id} took checkpoints of {:?} parts",
            m.taken
        );
    }
}

/// Commands, checkpoints (of at most `part_bytes` each), restarts, a node added and a node
/// that fell behind the compaction, on 3 nodes; every state the same at each step.
fn scenario(part_bytes: Option<usize>) -> Cluster {
    let mut rng = StdRng::seed_from_u64(seed());
    let mut c = Cluster::new(3, part_bytes);
    c.elect(1);
    c.propose(&Command::Bootstrap {
        cluster_id: "c".into(),
        node: node("a"),
    });
    c.rounds(3);
    if part_bytes.is_some() {
        // Topics of many partitions, which `drive` never deletes: the state outgrows a few
        // parts whatever the commands drawn.
        for i in 0..3 {
            let name = format!("z{i}");
            let s = c.machines[&1].state.clone();
            c.propose(&Command::CreateTopic {
                partitions: s.place(&name, 40, 1, &[1]).expect("placed"),
                name,
                config: LogConfig::default(),
                replication_factor: 1,
            });
        }
        c.rounds(3);
    }
    let mut stale = 0;
    drive(&mut c, &mut rng, 25, &mut stale);

    // A log written before checkpoints (or before the first one): whole, replayed from 1.
    let before = c.same_state();
    if before.last_checkpoint == 0 {
        c.restart(3);
        let replays = &c.machines[&3].replays;
        assert!(replays.len() == 1 && replays[0].0 == 1, "{replays:?}");
        for _ in 0..5 {
            c.tick();
        }
        assert_eq!(c.machines[&3].state, before);
    }

    drive(&mut c, &mut rng, 120, &mut stale);
    let s = c.same_state();
    println!(
        "{} commands applied, last checkpoint at {}, {stale} proposed stale",
        s.applied, s.last_checkpoint
    );
    assert!(s.last_checkpoint > 100, "{s:?}");
    assert!(s.since_checkpoint <= EVERY + 3, "{s:?}");
    for id in 1..=3 {
        let first = c.sets[&id].first_index(G).expect("group");
        assert!(first > 1, "node {id} did not compact");
        // Compacted just below a checkpoint (a leader may keep a little more for a live
        // follower): the log keeps what a replay needs, and not much more.
        assert!(first <= s.last_checkpoint, "node {id}: first index {first}");
        assert_eq!(c.stores[&id].first_index(), first);
        let parts = c.proposed.iter().max().copied().unwrap_or(1);
        assert!(
            c.stores[&id].batches().len() < 3 * (EVERY as usize + parts) + 20,
            "node {id} holds {} entries",
            c.stores[&id].batches().len()
        );
    }

    // A follower restarted replays from its log's first entry, past 1: its checkpoint brings
    // the state.
    let l = c.leader().expect("a leader");
    let f = (1..=3).find(|&i| i != l).expect("a follower");
    c.restart(f);
    let (first, _) = c.machines[&f].replays[0];
    assert!(first > 1);
    for _ in 0..5 {
        c.tick();
    }
    assert_eq!(c.machines[&f].state, c.machines[&l].state);

    // A node added after the compaction: the leader no longer holds its first entries, so
    // it gets a snapshot (the retained log) and rebuilds the state from it.
    c.stores.insert(4, Rc::new(MemStore::new()));
    c.start(4, &[]);
    let l = c.leader().expect("a leader");
    drop(
        c.set(l)
            .propose_conf_change(G, add_learner(4))
            .expect("add"),
    );
    for _ in 0..10 {
        c.tick();
    }
    assert_eq!(c.sets[&4].stats().snapshots_installed, 1);
    let replays = &c.machines[&4].replays;
    assert_eq!(replays.len(), 2, "{replays:?}");
    assert!(replays[1].0 > 1, "{replays:?}");
    drive(&mut c, &mut rng, 15, &mut stale);
    let s = c.same_state();
    assert_eq!(s.active_nodes(), c.machines[&4].state.active_nodes());

    // The new node restarts from what it installed (its snapshot point is past its
    // checkpoint: the replay starts at the log's first entry, not after the snapshot).
    c.restart(4);
    for _ in 0..5 {
        c.tick();
    }
    assert_eq!(c.machines[&4].state, s);

    // A follower down while the leader compacts past it (a follower that is down holds
    // nothing back): behind the leader's first index, it gets a snapshot and rebuilds the
    // state from it, replacing the one it held.
    let l = c.leader().expect("a leader");
    let w = (1..=3).find(|&i| i != l).expect("a follower");
    c.isolated.insert(w);
    for _ in 0..30 {
        // What the transport tells the leader of a node it cannot reach.
        c.set(l).report_unreachable(w);
        c.tick();
    }
    drive(&mut c, &mut rng, 40, &mut stale);
    let first = c.sets[&l].first_index(G).expect("group");
    let held = c.stores[&w].next_index();
    assert!(
        first > held,
        "the leader kept {first}.. for node {w}, which holds ..{held}"
    );
    c.isolated.clear();
    for _ in 0..10 {
        c.tick();
    }
    assert_eq!(c.sets[&w].stats().snapshots_installed, 1);
    drive(&mut c, &mut rng, 5, &mut stale);
    c.same_state();
    c.restart(w);
    for _ in 0..5 {
        c.tick();
    }
    c.same_state();
    c
}
