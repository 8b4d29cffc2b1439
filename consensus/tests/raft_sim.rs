//! Deterministic simulation of the real Raft code (`GroupSet`, the storage adapter, the entry
//! and frame encodings) on in-memory logs (`MemStore`, written vs synced) and a simulated
//! network: 3 and 5 nodes, two groups each, messages dropped, delayed, reordered and
//! duplicated, partitions, and crash-restarts that lose unsynced writes. Odd seeds run
//! snapshots the server's way (`Transport::streams_snapshots`: a `SnapshotJob` downloaded
//! some steps later from the leader's log if it is reachable, installed from the staged
//! batches, the leader told it started, then finished or failed, a crash of the follower
//! mid-download counted failed), even seeds fetch them within the round.
//!
//! Every run is decided by its seed: each test prints it, `PROGLOG_RAFT_SEED=<n>` replays one,
//! `PROGLOG_RAFT_SEEDS=<k>` runs k seeds per configuration (4 by default), and
//! `PROGLOG_RAFT_STEPS=<n>` changes the steps per run.
//!
//! Checked while it runs: a node acknowledges appends only for entries it has synced, and
//! committed prefixes never differ between nodes. Checked after every run (faults stopped,
//! the cluster left to converge): no acknowledged record lost (each at its acknowledged
//! offset on every node), no offset with two values on two replicas, replicas' logs identical
//! up to the commit index, offsets dense.

use bytes::Bytes;
use consensus::raft::wire;
use consensus::raft::{
    Error, FetchJob, GroupConfig, GroupSet, LogStore, MemStaged, MemStore, Outcome, SnapshotJob,
    SnapshotProgress, Transport,
};
use engine::NewRecord;
use futures_channel::oneshot;
use futures_lite::future::block_on;
use raft::eraftpb::MessageType;
use raft::StateRole;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::rc::Rc;

const GROUPS: [u64; 2] = [1, 2];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|s| {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// How hostile a run is.
#[derive(Clone, Copy)]
struct Faults {
    drop: f64,
    duplicate: f64,
    delay_max: u64,
    partition: f64,
    crash: f64,
    /// Chance per step that a node compacts a log.
    compact: f64,
}

const HOSTILE: Faults = Faults {
    drop: 0.05,
    duplicate: 0.03,
    delay_max: 6,
    partition: 0.004,
    crash: 0.003,
    compact: 0.01,
};

/// How a downloaded snapshot's install went (what the follower tells the leader).
type InstallAnswer = oneshot::Receiver<Result<u64, String>>;

struct InFlight {
    at: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
}

/// A node: its set and its stores (which survive its crashes, minus unsynced writes).
struct Node {
    set: Option<GroupSet<MemStore>>,
    stores: BTreeMap<u64, Rc<MemStore>>,
    down_until: u64,
}

#[derive(Default, Debug, Clone, Copy)]
struct Figures {
    steps: u64,
    frames_sent: u64,
    dropped: u64,
    duplicated: u64,
    delayed: u64,
    partitions: u64,
    crashes: u64,
    lost_unsynced: u64,
    proposals: u64,
    acked: u64,
    unknown: u64,
    refused: u64,
    ack_checks: u64,
    prefix_checks: u64,
    /// A node's visible end checked against its group (applied entries, synced records).
    visible_checks: u64,
    /// Acknowledged records found at their offsets after the run (on every node retaining it).
    acked_verified: u64,
    /// Acknowledged records below every node's retained start (compacted on all of them).
    acked_retained_away: u64,
    /// Acknowledged records found in a node's log just before it compacted (record-checks).
    acked_checked_before_compaction: u64,
    leader_changes: u64,
    /// From the nodes' `GroupSet`s (summed over runs of each node).
    rounds: u64,
    syncs: u64,
    frames: u64,
    messages: u64,
    heartbeats_merged: u64,
    deferred_reads: u64,
    meta_writes: u64,
    compactions: u64,
    snapshots_sent: u64,
    snapshots_installed: u64,
    snapshot_fetch_failures: u64,
    /// Peer messages refused before raft-rs saw them: what correct nodes send, however the
    /// network delays, reorders or duplicates it, is never refused.
    peer_messages_refused: u64,
}

impl Figures {
    fn absorb(&mut self, s: consensus::raft::SetStats) {
        self.rounds += s.rounds;
        self.syncs += s.syncs;
        self.frames += s.frames;
        self.messages += s.messages;
        self.heartbeats_merged += s.heartbeats_merged;
        self.deferred_reads += s.fetches;
        self.meta_writes += s.meta_writes;
        self.compactions += s.compactions;
        self.snapshots_sent += s.snapshots_sent;
        self.snapshots_installed += s.snapshots_installed;
        self.snapshot_fetch_failures += s.snapshot_fetch_failures;
        self.peer_messages_refused += s.peer_messages_refused;
    }
}

struct Sim {
    rng: StdRng,
    seed: u64,
    now: u64,
    nodes: BTreeMap<u64, Node>,
    net: Vec<InFlight>,
    /// Links cut until a step: (a, b) with a < b.
    cuts: BTreeMap<(u64, u64), u64>,
    faults: Faults,
    config: GroupConfig,
    pending: Vec<(u64, Bytes, oneshot::Receiver<Outcome>)>,
    /// Acknowledged records: (group, offset) -> value.
    acked: BTreeMap<(u64, u64), Bytes>,
    /// Values seen at committed offsets on any node: (group, offset) -> value.
    committed_values: BTreeMap<(u64, u64), Bytes>,
    /// Committed entries seen on any node, at any time: (group, index) -> entry.
    committed_entries: BTreeMap<(u64, u64), Stored>,
    next_value: u64,
    last_leader: BTreeMap<u64, u64>,
    /// Deferred reads running beside the nodes' loops: (node, step it completes at, job).
    jobs: Vec<(u64, u64, FetchJob<MemStore>)>,
    /// Snapshots stream beside the loops (the server's transport) rather than within a
    /// round: decided by the seed.
    streaming: bool,
    /// Snapshot downloads under way: (node, step it completes at, job).
    snapshot_jobs: Vec<(u64, u64, SnapshotJob)>,
    /// Downloaded snapshots awaiting their install: (follower, group, leader, its answer).
    installs: Vec<(u64, u64, u64, u64, InstallAnswer)>,
    fig: Figures,
}

/// The frames one node's round sends, and the logs it can fetch a snapshot's batches from
/// (those of the nodes up and reachable from it).
struct Outbox {
    frames: Vec<(u64, Vec<u8>)>,
    reachable: BTreeMap<(u64, u64), Rc<MemStore>>,
    streaming: bool,
}

impl Transport for Outbox {
    fn send(&mut self, to: u64, frame: Vec<u8>) {
        self.frames.push((to, frame));
    }

    fn streams_snapshots(&self) -> bool {
        self.streaming
    }

    async fn fetch_snapshot(
        &mut self,
        from: u64,
        group: u64,
        first: u64,
        last: u64,
    ) -> Result<Vec<engine::log::EntryBatch>, String> {
        let store = self
            .reachable
            .get(&(from, group))
            .ok_or_else(|| format!("node {from} is down or cut off"))?;
        store
            .read(first, last + 1, usize::MAX)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Sim {
    fn new(seed: u64, n: u64, faults: Faults) -> Sim {
        let config = GroupConfig {
            // A small tail cache, so that followers catching up take the deferred-read path.
            cache_bytes: 256,
            ..GroupConfig::default()
        };
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            seed,
            now: 0,
            nodes: BTreeMap::new(),
            net: Vec::new(),
            cuts: BTreeMap::new(),
            faults,
            config,
            pending: Vec::new(),
            acked: BTreeMap::new(),
            committed_values: BTreeMap::new(),
            committed_entries: BTreeMap::new(),
            next_value: 0,
            last_leader: BTreeMap::new(),
            jobs: Vec::new(),
            streaming: seed % 2 == 1,
            snapshot_jobs: Vec::new(),
            installs: Vec::new(),
            fig: Figures::default(),
        };
        let voters: Vec<u64> = (1..=n).collect();
        for id in 1..=n {
            let stores = GROUPS
                .iter()
                .map(|&g| (g, Rc::new(MemStore::new())))
                .collect();
            sim.nodes.insert(
                id,
                Node {
                    set: None,
                    stores,
                    down_until: 0,
                },
            );
            sim.start(id, &voters);
        }
        sim
    }

    fn start(&mut self, id: u64, voters: &[u64]) {
        let seed = self.rng.random();
        let mut set = GroupSet::new(id, self.config.clone(), seed);
        let node = self.nodes.get_mut(&id).expect("node");
        for (&g, store) in &node.stores {
            block_on(set.add_group(g, Rc::clone(store), voters))
                .unwrap_or_else(|e| panic!("seed {}: node {id} group {g}: {e}", self.seed));
        }
        node.set = Some(set);
    }

    fn cut(&self, a: u64, b: u64) -> bool {
        let key = (a.min(b), a.max(b));
        self.cuts.get(&key).is_some_and(|&until| until > self.now)
    }

    fn send(&mut self, from: u64, frames: Vec<(u64, Vec<u8>)>) {
        for (to, bytes) in frames {
            self.fig.frames_sent += 1;
            self.check_acks_are_synced(from, &bytes);
            if self.rng.random_bool(self.faults.drop) {
                self.fig.dropped += 1;
                continue;
            }
            let copies = if self.rng.random_bool(self.faults.duplicate) {
                self.fig.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self.rng.random_range(0..=self.faults.delay_max);
                if delay > 1 {
                    self.fig.delayed += 1;
                }
                self.net.push(InFlight {
                    at: self.now + delay,
                    from,
                    to,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// A node acknowledges (MsgAppendResponse) only entries it has synced: its stores hold no
    /// unsynced batch when it sends one.
    fn check_acks_are_synced(&mut self, from: u64, bytes: &[u8]) {
        let frame = wire::decode_frame(bytes).expect("own frames decode");
        let msgs = wire::unframe(frame).expect("own frames split");
        for (g, m) in msgs {
            if m.msg_type == MessageType::MsgAppendResponse && !m.reject {
                let store = &self.nodes[&from].stores[&g];
                assert_eq!(
                    store.unsynced(),
                    0,
                    "seed {}: node {from} group {g} acknowledged index {} with unsynced writes",
                    self.seed,
                    m.index
                );
                self.fig.ack_checks += 1;
            }
        }
    }

    /// Completes the deferred reads that are due (in random order).
    fn run_jobs(&mut self) {
        let mut i = 0;
        let mut due = Vec::new();
        while i < self.jobs.len() {
            if self.jobs[i].1 <= self.now {
                due.push(self.jobs.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for (_, _, job) in due {
            block_on(job.run());
        }
    }

    /// Snapshot downloads that are due: the follower fetches the batches from the leader's
    /// log (if it is up and reachable), checks them and hands them to its set; the leader
    /// hears that the download started, then how the install went (or that it failed).
    fn run_snapshot_jobs(&mut self) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.snapshot_jobs.len() {
            if self.snapshot_jobs[i].1 <= self.now {
                due.push(self.snapshot_jobs.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for (id, _, job) in due {
            let (leader, group, index) = (job.from, job.group, job.index);
            let reachable =
                !self.cut(id, leader) && self.nodes.get(&leader).is_some_and(|n| n.set.is_some());
            let result = if reachable {
                if let Some(set) = self.nodes.get_mut(&leader).and_then(|n| n.set.as_mut()) {
                    set.snapshot_report(group, id, index, SnapshotProgress::Started);
                }
                let d = job.data;
                let store = Rc::clone(&self.nodes[&leader].stores[&group]);
                let read = if d.first_index > d.last_index {
                    Ok(Vec::new())
                } else {
                    block_on(store.read(d.first_index, d.last_index + 1, usize::MAX))
                        .map_err(|e| e.to_string())
                };
                read.and_then(|b| d.check(&b).map_err(|e| e.to_string()))
                    .map(|batches| MemStaged {
                        first_offset: d.first_offset,
                        first_index: d.first_index,
                        batches,
                    })
            } else {
                Err(format!("node {leader} is down or cut off"))
            };
            let (tx, rx) = oneshot::channel();
            match self.nodes.get_mut(&id).and_then(|n| n.set.as_mut()) {
                Some(set) => set.snapshot_downloaded(job, result, tx),
                None => continue,
            }
            if reachable {
                self.installs.push((id, group, leader, index, rx));
            }
        }
        // Installs that are over, and their reports.
        let mut still = Vec::new();
        for (id, group, leader, index, mut rx) in std::mem::take(&mut self.installs) {
            let progress = match rx.try_recv() {
                Ok(None) => {
                    still.push((id, group, leader, index, rx));
                    continue;
                }
                Ok(Some(Ok(_))) => SnapshotProgress::Finished,
                Ok(Some(Err(_))) | Err(_) => SnapshotProgress::Failed,
            };
            if let Some(set) = self.nodes.get_mut(&leader).and_then(|n| n.set.as_mut()) {
                set.snapshot_report(group, id, index, progress);
            }
        }
        self.installs = still;
    }

    fn deliver(&mut self) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= self.now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Reordering: delivery order among due frames is random.
        for k in (1..due.len()).rev() {
            let j = self.rng.random_range(0..=k);
            due.swap(k, j);
        }
        for f in due {
            if self.cut(f.from, f.to) || self.nodes[&f.to].down_until > self.now {
                self.fig.dropped += 1;
                continue;
            }
            if let Some(set) = self.nodes.get_mut(&f.to).and_then(|n| n.set.as_mut()) {
                set.step_frame(&f.bytes)
                    .unwrap_or_else(|e| panic!("seed {}: frame refused: {e}", self.seed));
            }
        }
    }

    fn rounds(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let mut reachable = BTreeMap::new();
            for (&other, n) in &self.nodes {
                if n.set.is_some() && !self.cut(id, other) {
                    for (&g, store) in &n.stores {
                        reachable.insert((other, g), Rc::clone(store));
                    }
                }
            }
            let mut out = Outbox {
                frames: Vec::new(),
                reachable,
                streaming: self.streaming,
            };
            let Some(set) = self.nodes.get_mut(&id).and_then(|n| n.set.as_mut()) else {
                continue;
            };
            if !set.has_ready() {
                continue;
            }
            block_on(set.round(&mut out));
            for job in set.take_fetch_jobs() {
                let at = self.now + self.rng.random_range(0..4);
                self.jobs.push((id, at, job));
            }
            for job in set.take_snapshot_jobs() {
                let at = self.now + self.rng.random_range(1..12);
                self.snapshot_jobs.push((id, at, job));
            }
            let failed = GROUPS.iter().any(|&g| set.failure(g).is_some());
            self.send(id, out.frames);
            if failed {
                // Only injected sync failures fail a group here: the node crashes mid-round.
                self.crash(id);
            }
        }
    }

    fn tick(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(set) = n.set.as_mut() {
                set.tick();
            }
        }
    }

    fn leader(&self, g: u64) -> Option<u64> {
        self.nodes.iter().find_map(|(&id, n)| {
            let s = n.set.as_ref()?.status(g)?;
            (s.role == StateRole::Leader).then_some(id)
        })
    }

    fn propose(&mut self) {
        let g = GROUPS[self.rng.random_range(0..GROUPS.len())];
        // Mostly the leader, sometimes anyone (who must refuse).
        let target = match self.leader(g) {
            Some(l) if self.rng.random_bool(0.9) => l,
            _ => self.rng.random_range(1..=self.nodes.len() as u64),
        };
        let value = Bytes::from(format!("g{g}-v{}", self.next_value));
        self.next_value += 1;
        let Some(set) = self.nodes.get_mut(&target).and_then(|n| n.set.as_mut()) else {
            return;
        };
        self.fig.proposals += 1;
        match set.propose(g, &[NewRecord::new(value.clone())], self.now as i64) {
            Ok(rx) => self.pending.push((g, value, rx)),
            Err(Error::NotLeader { .. } | Error::NoLeader { .. }) => self.fig.refused += 1,
            Err(e) => panic!("seed {}: propose: {e}", self.seed),
        }
    }

    fn collect_outcomes(&mut self) {
        let mut still = Vec::new();
        for (g, value, mut rx) in std::mem::take(&mut self.pending) {
            match rx.try_recv() {
                Ok(None) => still.push((g, value, rx)),
                Ok(Some(Ok(c))) => {
                    assert_eq!(c.records, 1);
                    if let Some(old) = self.acked.insert((g, c.base_offset), value.clone()) {
                        panic!(
                            "seed {}: offset {} of group {g} acknowledged twice ({old:?}, {value:?})",
                            self.seed, c.base_offset
                        );
                    }
                    self.fig.acked += 1;
                }
                Ok(Some(Err(_))) | Err(_) => self.fig.unknown += 1,
            }
        }
        self.pending = still;
    }

    fn maybe_fault(&mut self) {
        let n = self.nodes.len() as u64;
        if self.rng.random_bool(self.faults.partition) {
            self.fig.partitions += 1;
            let victim = self.rng.random_range(1..=n);
            let until = self.now + self.rng.random_range(20..400);
            for other in 1..=n {
                if other != victim && self.rng.random_bool(0.8) {
                    self.cuts
                        .insert((victim.min(other), victim.max(other)), until);
                }
            }
        }
        if self.rng.random_bool(self.faults.crash) {
            let victim = self.rng.random_range(1..=n);
            if self.nodes[&victim].down_until <= self.now {
                if self.rng.random_bool(0.5) {
                    self.crash(victim);
                } else {
                    // Crash during its next round that syncs this log.
                    let g = GROUPS[self.rng.random_range(0..GROUPS.len())];
                    self.nodes[&victim].stores[&g].fail_next_sync();
                }
            }
        }
        // Restart nodes whose downtime ended.
        let due: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.set.is_none() && node.down_until <= self.now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.start(id, &[]);
        }
    }

    /// Compacts a node's log somewhat below its applied index; sometimes forced past what a
    /// lagging follower needs (a retention limit), which then needs a snapshot.
    fn compact(&mut self) {
        let id = self.rng.random_range(1..=self.nodes.len() as u64);
        let g = GROUPS[self.rng.random_range(0..GROUPS.len())];
        let force = self.rng.random_bool(0.5);
        let margin = self.rng.random_range(0..40);
        let Some(status) = self.nodes[&id].set.as_ref().and_then(|s| s.status(g)) else {
            return;
        };
        // Before anything is dropped: every acknowledged record this node has applied is in
        // its log, at its offset.
        let first = self.nodes[&id].stores[&g].first_offset();
        let at: BTreeMap<u64, Bytes> = self
            .entries(id, g)
            .iter()
            .filter_map(|(_, _, d, base)| Some((*base, record_value(d)?)))
            .collect();
        for ((ag, offset), value) in self.acked.range((g, first)..(g, status.visible_offset)) {
            debug_assert_eq!(*ag, g);
            assert_eq!(
                at.get(offset),
                Some(value),
                "seed {}: node {id} lost acknowledged record {value:?} at offset {offset} of group {g}",
                self.seed
            );
            self.fig.acked_checked_before_compaction += 1;
        }
        let applied = status.applied;
        let Some(set) = self.nodes.get_mut(&id).and_then(|n| n.set.as_mut()) else {
            return;
        };
        block_on(set.compact(g, applied.saturating_sub(margin), force))
            .unwrap_or_else(|e| panic!("seed {}: compact: {e}", self.seed));
    }

    fn crash(&mut self, id: u64) {
        self.fig.crashes += 1;
        let down = self.rng.random_range(5..200);
        let keeps: Vec<usize> = GROUPS.iter().map(|_| self.rng.random_range(0..2)).collect();
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(set) = node.set.take() {
            self.fig.absorb(set.stats());
        }
        node.down_until = self.now + down;
        self.jobs.retain(|(n, _, _)| *n != id);
        for (i, g) in GROUPS.iter().enumerate() {
            let old = &node.stores[g];
            let lost = old.unsynced().saturating_sub(keeps[i]);
            self.fig.lost_unsynced += lost as u64;
            let crashed = Rc::new(old.crash(keeps[i]));
            node.stores.insert(*g, crashed);
        }
        // A download cut by the crash: its connection closes, the leader hears a failure.
        let mut cut = Vec::new();
        self.snapshot_jobs.retain(|(n, _, j)| {
            if *n == id {
                cut.push((j.from, j.group, j.index));
            }
            *n != id
        });
        for (leader, group, index) in cut {
            if let Some(set) = self.nodes.get_mut(&leader).and_then(|n| n.set.as_mut()) {
                set.snapshot_report(group, id, index, SnapshotProgress::Failed);
            }
        }
    }

    fn step(&mut self) {
        self.now += 1;
        self.fig.steps += 1;
        self.maybe_fault();
        self.run_jobs();
        self.run_snapshot_jobs();
        self.deliver();
        if self.now.is_multiple_of(2) {
            self.tick();
        }
        if self.rng.random_bool(0.3) {
            self.propose();
        }
        if self.rng.random_bool(self.faults.compact) {
            self.compact();
        }
        self.rounds();
        self.collect_outcomes();
        for g in GROUPS {
            let l = self.leader(g);
            if let Some(l) = l {
                if self.last_leader.insert(g, l) != Some(l) {
                    self.fig.leader_changes += 1;
                }
            }
        }
        // Cheap checks every step, the scan of every batch now and then.
        self.check_visible_ends(self.now.is_multiple_of(50));
        if self.now.is_multiple_of(50) {
            self.check_committed_prefixes();
        }
    }

    /// What readers of records may see on each node: the log's visible end is the group's
    /// (the offset after its applied entries), no entry past the applied index lies below
    /// it (checked when `scan`), and it never passes what this node has synced.
    fn check_visible_ends(&mut self, scan: bool) {
        for (&id, node) in &self.nodes {
            let Some(set) = node.set.as_ref() else {
                continue;
            };
            for g in GROUPS {
                let (Some(status), Some(store)) = (set.status(g), node.stores.get(&g)) else {
                    continue;
                };
                let visible = store.visible_end();
                assert_eq!(
                    visible, status.visible_offset,
                    "seed {}: node {id} group {g}: the log's visible end is not the group's",
                    self.seed
                );
                assert!(
                    visible <= store.synced_offset(),
                    "seed {}: node {id} group {g}: visible end {visible} past the synced records (to {})",
                    self.seed,
                    store.synced_offset()
                );
                for b in store.batches().iter().filter(|_| scan) {
                    if b.header.record_count > 0 && b.header.base_offset < visible {
                        assert!(
                            b.header.raft_index <= status.applied,
                            "seed {}: node {id} group {g}: entry {} (offset {}) is visible, applied {}",
                            self.seed,
                            b.header.raft_index,
                            b.header.base_offset,
                            status.applied
                        );
                    }
                }
                self.fig.visible_checks += 1;
            }
        }
    }

    /// Entries of a node's log for group `g`.
    fn entries(&self, id: u64, g: u64) -> Vec<Stored> {
        self.nodes[&id].stores[&g]
            .batches()
            .iter()
            .map(|b| {
                let e = consensus::raft::entry::decode(&b.header, &b.bytes).expect("decodes");
                (e.index, e.term, e.data.clone(), b.header.base_offset)
            })
            .collect()
    }

    /// Committed entries agree everywhere and at all times (whatever each node retains), and
    /// every committed record's offset has one value.
    fn check_committed_prefixes(&mut self) {
        self.fig.prefix_checks += 1;
        for g in GROUPS {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                let Some(commit) = self.nodes[&id]
                    .set
                    .as_ref()
                    .and_then(|s| s.status(g))
                    .map(|s| s.commit)
                else {
                    continue;
                };
                let entries: Vec<_> = self
                    .entries(id, g)
                    .into_iter()
                    .filter(|e| e.0 <= commit)
                    .collect();
                for (_, _, data, base) in &entries {
                    if let Some(v) = record_value(data) {
                        let prev = self.committed_values.entry((g, *base)).or_insert(v.clone());
                        assert_eq!(
                            *prev, v,
                            "seed {}: group {g} offset {base} holds two values",
                            self.seed
                        );
                    }
                }
                for e in entries {
                    let seen = self.committed_entries.entry((g, e.0)).or_insert(e.clone());
                    assert_eq!(
                        *seen, e,
                        "seed {}: group {g}: node {id} holds another committed entry {}",
                        self.seed, e.0
                    );
                }
            }
        }
    }

    /// Stops the faults and lets the cluster converge.
    fn settle(&mut self) {
        self.cuts.clear();
        self.faults = Faults {
            drop: 0.0,
            duplicate: 0.0,
            delay_max: 1,
            partition: 0.0,
            crash: 0.0,
            compact: 0.0,
        };
        for _ in 0..3000 {
            self.now += 1;
            self.maybe_fault();
            self.run_jobs();
            self.run_snapshot_jobs();
            self.deliver();
            if self.now.is_multiple_of(2) {
                self.tick();
            }
            self.rounds();
            self.collect_outcomes();
            if self.converged() {
                break;
            }
        }
        assert!(
            self.converged(),
            "seed {}: the cluster did not converge after faults stopped",
            self.seed
        );
    }

    fn converged(&self) -> bool {
        GROUPS.iter().all(|&g| {
            let st: Vec<_> = self
                .nodes
                .values()
                .filter_map(|n| n.set.as_ref()?.status(g))
                .collect();
            st.len() == self.nodes.len()
                && st.iter().filter(|s| s.role == StateRole::Leader).count() == 1
                && st.iter().all(|s| {
                    s.commit == st[0].commit && s.last_index == s.commit && s.applied == s.commit
                })
        })
    }

    fn final_checks(&mut self) {
        self.check_committed_prefixes();
        for g in GROUPS {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            // Every entry any node holds is committed now, and the same everywhere. A node
            // whose log was compacted through the last entry (a compaction without margin, or
            // a snapshot of such a log installed) holds none, and starts after it.
            let last = ids
                .iter()
                .filter_map(|&id| self.entries(id, g).last().map(|e| e.0))
                .max();
            for &id in &ids {
                let entries = self.entries(id, g);
                let held = entries.last().map(|e| e.0);
                let start = self.nodes[&id].stores[&g].first_index();
                assert!(
                    held == last || (held.is_none() && start > last.unwrap_or(0)),
                    "seed {}: node {id} group {g}: last entry {held:?} (log starts at {start}), \
                     another node's {last:?}",
                    self.seed
                );
                for e in &entries {
                    assert_eq!(
                        self.committed_entries.get(&(g, e.0)),
                        Some(e),
                        "seed {}: group {g}: node {id}'s entry {} after convergence",
                        self.seed,
                        e.0
                    );
                }
                // Dense offsets: every data batch starts where the records before it end.
                // (A log compacted through its last entry starts where its records ended.)
                let mut next = entries
                    .first()
                    .map_or_else(|| self.nodes[&id].stores[&g].first_offset(), |e| e.3);
                for (index, _, data, base) in &entries {
                    assert_eq!(
                        *base, next,
                        "seed {}: node {id} group {g}: entry {index} at offset {base}, expected {next}",
                        self.seed
                    );
                    if record_value(data).is_some() {
                        next += 1;
                    }
                }
                let status = self.nodes[&id].set.as_ref().and_then(|s| s.status(g));
                assert_eq!(status.map(|s| s.visible_offset), Some(next));
            }
            // No acknowledged record lost: each at its offset, with its value, on every node
            // that retains that offset, and on at least one (compaction keeps a margin).
            let held: Vec<(u64, BTreeMap<u64, Bytes>)> = ids
                .iter()
                .map(|&id| {
                    let first = self.nodes[&id].stores[&g].first_offset();
                    let at = self
                        .entries(id, g)
                        .iter()
                        .filter_map(|(_, _, d, base)| Some((*base, record_value(d)?)))
                        .collect();
                    (first, at)
                })
                .collect();
            for ((ag, offset), value) in &self.acked {
                if *ag != g {
                    continue;
                }
                let mut on = 0;
                for (first, at) in &held {
                    if offset >= first {
                        assert_eq!(
                            at.get(offset),
                            Some(value),
                            "seed {}: acknowledged record {value:?} of group {g} at offset {offset} lost",
                            self.seed
                        );
                        on += 1;
                    }
                }
                if on == 0 {
                    self.fig.acked_retained_away += 1;
                } else {
                    self.fig.acked_verified += 1;
                }
            }
        }
    }
}

/// An entry as a node stores it: (Raft index, term, entry data, base offset).
type Stored = (u64, u64, Bytes, u64);

/// The single record's value of a data entry's data (the sim proposes one record each).
fn record_value(data: &Bytes) -> Option<Bytes> {
    // tag 0, timestamp, count, then value_len, type, value.
    if data.first() != Some(&0) || data.len() < 21 {
        return None;
    }
    Some(data.slice(21..))
}

fn run(seed: u64, nodes: u64, steps: u64) -> Figures {
    let mut sim = Sim::new(seed, nodes, HOSTILE);
    for _ in 0..steps {
        sim.step();
    }
    sim.settle();
    sim.final_checks();
    sim.fig.steps = sim.now;
    let stats: Vec<_> = sim
        .nodes
        .values()
        .filter_map(|n| n.set.as_ref().map(|s| s.stats()))
        .collect();
    for s in stats {
        sim.fig.absorb(s);
    }
    assert_eq!(
        sim.fig.peer_messages_refused, 0,
        "seed {}: messages of correct nodes were refused as malformed",
        sim.seed
    );
    sim.fig
}

fn seeds(base: u64) -> Vec<u64> {
    if let Some(s) = env_u64("PROGLOG_RAFT_SEED") {
        return vec![s];
    }
    let count = env_u64("PROGLOG_RAFT_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first: u64 = rand::random::<u64>() >> 1;
    (0..count.max(1))
        .map(|i| first.wrapping_add(i.wrapping_mul(base)))
        .collect()
}

/// Seeds per configuration by default (each a fresh random one, printed).
const DEFAULT_SEEDS: u64 = 4;

fn run_many(nodes: u64) {
    let steps = env_u64("PROGLOG_RAFT_STEPS").unwrap_or(3000);
    for seed in seeds(nodes) {
        let mode = if seed % 2 == 1 {
            "snapshots streamed beside the loop"
        } else {
            "snapshots fetched within the round"
        };
        eprintln!("{nodes} nodes, seed {seed}, {mode} (replay with PROGLOG_RAFT_SEED={seed})");
        let f = run(seed, nodes, steps);
        eprintln!("  {f:?}");
        assert!(f.acked > 0, "seed {seed}: nothing was acknowledged");
    }
}

#[test]
fn three_nodes_under_faults() {
    run_many(3);
}

#[test]
fn five_nodes_under_faults() {
    run_many(5);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let seed = env_u64("PROGLOG_RAFT_SEED").unwrap_or(7);
    let a = run(seed, 3, 600);
    let b = run(seed, 3, 600);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
