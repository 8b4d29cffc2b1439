//! Raft nodes in one process over `MemStore`s, their frames delivered by hand: what the
//! in-memory tests of raft-rs's traps (`raft_traps.rs`) and of the controller's checkpoints
//! (`controller_checkpoint.rs`) share. A round runs every node's Ready round and deferred
//! reads, then a hook of the test's own, then delivers every frame between nodes that are not
//! isolated.

#![allow(dead_code)]
// raft-rs's message types (rust-protobuf) are filled field by field.
#![allow(clippy::field_reassign_with_default)]

use consensus::raft::{GroupSet, LogStore, MemStore, Transport};
use futures_lite::future::block_on;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::StateRole;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A round's outgoing frames, and the stores a snapshot may be fetched from (those
/// reachable from the node).
pub struct Queue(pub Vec<(u64, Vec<u8>)>, pub BTreeMap<u64, Rc<MemStore>>);

impl Transport for Queue {
    fn send(&mut self, to: u64, frame: Vec<u8>) {
        self.0.push((to, frame));
    }

    async fn fetch_snapshot(
        &mut self,
        from: u64,
        _group: u64,
        first: u64,
        last: u64,
    ) -> Result<Vec<engine::log::EntryBatch>, String> {
        let store = self.1.get(&from).ok_or("unreachable")?;
        store
            .read(first, last + 1, usize::MAX)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The nodes, their stores and the frames between them.
#[derive(Default)]
pub struct MemNet {
    pub sets: BTreeMap<u64, GroupSet<MemStore>>,
    pub stores: BTreeMap<u64, Rc<MemStore>>,
    /// Frames in flight: (from, to, bytes).
    pub net: Vec<(u64, u64, Vec<u8>)>,
    /// Nodes whose incoming and outgoing frames are dropped.
    pub isolated: BTreeSet<u64>,
}

impl MemNet {
    pub fn set(&mut self, id: u64) -> &mut GroupSet<MemStore> {
        self.sets.get_mut(&id).expect("node")
    }

    /// One round on every node, each followed by `after(id, set)`, then delivery of
    /// everything sent.
    pub fn round_with(&mut self, mut after: impl FnMut(u64, &mut GroupSet<MemStore>)) {
        let ids: Vec<u64> = self.sets.keys().copied().collect();
        for id in ids {
            let reachable = self
                .stores
                .iter()
                .filter(|(&n, _)| !self.isolated.contains(&n) && !self.isolated.contains(&id))
                .map(|(&n, s)| (n, Rc::clone(s)))
                .collect();
            let mut q = Queue(Vec::new(), reachable);
            block_on(self.set(id).round(&mut q));
            for job in self.set(id).take_fetch_jobs() {
                block_on(job.run());
            }
            after(id, self.set(id));
            for (to, bytes) in q.0 {
                self.net.push((id, to, bytes));
            }
        }
        for (from, to, bytes) in std::mem::take(&mut self.net) {
            if self.isolated.contains(&from) || self.isolated.contains(&to) {
                continue;
            }
            if let Some(set) = self.sets.get_mut(&to) {
                set.step_frame(&bytes).expect("frame");
            }
        }
    }
}

/// What a test's cluster adds to [`MemNet`]: its round (with its own hook), and the group
/// its tests drive; rounds, ticks, the leader and elections follow.
pub trait Rounds {
    fn mem(&self) -> &MemNet;
    fn mem_mut(&mut self) -> &mut MemNet;
    /// The group the tests drive.
    fn group(&self) -> u64;
    fn round(&mut self);

    fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.round();
        }
    }

    fn tick(&mut self) {
        for s in self.mem_mut().sets.values_mut() {
            s.tick();
        }
        self.rounds(3);
    }

    /// The group's leader among the nodes not isolated.
    fn leader(&self) -> Option<u64> {
        let (g, mem) = (self.group(), self.mem());
        mem.sets.iter().find_map(|(&id, s)| {
            (s.status(g)?.role == StateRole::Leader && !mem.isolated.contains(&id)).then_some(id)
        })
    }

    /// Elects `id` by campaigning, then lets its first entry commit.
    fn elect(&mut self, id: u64) -> u64 {
        let g = self.group();
        self.mem_mut().set(id).campaign(g).expect("campaign");
        self.rounds(10);
        assert_eq!(self.leader(), Some(id));
        id
    }
}

/// A configuration change that adds `id` as a learner.
pub fn add_learner(id: u64) -> ConfChangeV2 {
    let mut s = ConfChangeSingle::default();
    s.change_type = ConfChangeType::AddLearnerNode;
    s.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![s].into());
    cc
}
