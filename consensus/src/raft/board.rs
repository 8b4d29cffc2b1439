//! Every Raft group of this node as the shards' Ready loops last published it (after each
//! round): read from any thread by the cluster layer, for the leader's address in a
//! NOT_LEADER answer, GetServers, `cluster describe` and the reconcile loop, without asking
//! the shards.

use super::group::{ProposalMetrics, SetStats, Stopped};
use super::logger::GroupName;
use engine::seam::PartitionId;
use raft::StateRole;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One group's state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub shard: usize,
    /// A stopped group's is `Follower` (see `stopped`).
    pub role: StateRole,
    pub term: u64,
    /// The leader's Raft id, `raft::INVALID_ID` (0) when none is known (always on a stopped
    /// group).
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// On the leader: each replica's matched index, for the replicas whose progress it
    /// knows (not one it has not heard from since it became leader); empty elsewhere.
    pub matched: Vec<(u64, u64)>,
    /// On the leader: the commit index each replica last reported (raft-rs's
    /// `Progress::committed_index`, from its answers); empty elsewhere.
    pub committed: Vec<(u64, u64)>,
    /// Set while the group is stopped on this node: its log's disk is full, or it failed
    /// (until the server restarts).
    pub stopped: Option<Stopped>,
    /// Stopped because its log is marked lost: it stays stopped across restarts.
    pub lost: bool,
}

#[cfg(test)]
impl GroupView {
    /// A running follower's view in term 3 under leader 1, having applied (and committed,
    /// and holding) through `applied`, with configuration `voters` and `learners`.
    pub(crate) fn follower(applied: u64, voters: Vec<u64>, learners: Vec<u64>) -> GroupView {
        GroupView {
            shard: 0,
            role: StateRole::Follower,
            term: 3,
            leader: 1,
            commit: applied,
            applied,
            last_index: applied,
            voters,
            learners,
            matched: vec![],
            committed: vec![],
            stopped: None,
            lost: false,
        }
    }
}

/// The node's groups, by group id, and what changed in them.
#[derive(Debug, Default)]
pub struct Board {
    groups: RwLock<HashMap<u64, GroupView>>,
    /// Times a group hosted here saw a new leader (any node).
    pub leader_changes: AtomicU64,
    /// Times this node became a group's leader (elections won, transfers received).
    pub became_leader: AtomicU64,
    /// Times a group stopped for want of space was opened again here (its log took writes
    /// again): once per full disk, unless the group stopped again at once.
    pub reopened: AtomicU64,
    /// Proposals of every shard's groups, and their commit latency.
    pub proposals: Arc<ProposalMetrics>,
    /// Each shard's Ready-loop counters, as of its last round.
    loops: Mutex<BTreeMap<usize, SetStats>>,
    /// The group each partition open here belongs to (its topic's incarnation is part of
    /// the id: `replica::group_id`), from its opening to its closing.
    partitions: RwLock<HashMap<PartitionId, u64>>,
}

impl Board {
    /// Notes shard `shard`'s Ready-loop counters.
    pub fn set_loop_stats(&self, shard: usize, stats: SetStats) {
        if let Ok(mut l) = self.loops.lock() {
            l.insert(shard, stats);
        }
    }

    /// Every shard's Ready-loop counters, summed.
    pub fn loop_stats(&self) -> SetStats {
        let mut sum = SetStats::default();
        if let Ok(l) = self.loops.lock() {
            for s in l.values() {
                sum.add(s);
            }
        }
        sum
    }

    /// Records a group's state after a round; a new leader is logged and counted.
    pub fn set(&self, group: u64, view: GroupView) {
        if let Ok(mut g) = self.groups.write() {
            let before = g.get(&group);
            let (leader_before, role_before) =
                before.map_or((0, StateRole::Follower), |b| (b.leader, b.role));
            if view.leader != leader_before && view.leader != 0 {
                self.leader_changes.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "{}: leader is node {} (term {}, this node {:?})",
                    GroupName(group),
                    view.leader,
                    view.term,
                    view.role
                );
            }
            if view.role == StateRole::Leader && role_before != StateRole::Leader {
                self.became_leader.fetch_add(1, Ordering::Relaxed);
            }
            g.insert(group, view);
        }
    }

    pub fn remove(&self, group: u64) {
        if let Ok(mut g) = self.groups.write() {
            g.remove(&group);
        }
        if let Ok(mut p) = self.partitions.write() {
            p.retain(|_, g| *g != group);
        }
    }

    /// Notes that partition `id` opened here as group `group`.
    pub fn name(&self, id: &PartitionId, group: u64) {
        if let Ok(mut p) = self.partitions.write() {
            p.insert(id.clone(), group);
        }
    }

    /// The group partition `id` opened here as, while it is open.
    pub fn group_of(&self, id: &PartitionId) -> Option<u64> {
        self.partitions.read().ok()?.get(id).copied()
    }

    /// The leader this node's replica of `id` knows (its group's view), if it holds one
    /// and knows one.
    pub fn leader_of(&self, id: &PartitionId) -> Option<u64> {
        let group = self.group_of(id)?;
        let groups = self.groups.read().ok()?;
        groups
            .get(&group)
            .map(|v| v.leader)
            .filter(|&l| l != raft::INVALID_ID)
    }

    /// Partition `id`'s group here, and whether it is stopped, when its group is on the board
    /// (two read locks, no view copied: asked on every append).
    pub fn replica_of(&self, id: &PartitionId) -> Option<(u64, bool)> {
        let group = self.group_of(id)?;
        let groups = self.groups.read().ok()?;
        groups.get(&group).map(|v| (group, v.stopped.is_some()))
    }

    pub fn get(&self, group: u64) -> Option<GroupView> {
        self.groups.read().ok()?.get(&group).cloned()
    }

    /// Whether `group` is held here, without copying its view.
    pub fn holds(&self, group: u64) -> bool {
        self.groups.read().is_ok_and(|g| g.contains_key(&group))
    }

    /// Every group, in no order.
    pub fn all(&self) -> Vec<(u64, GroupView)> {
        self.groups
            .read()
            .map(|g| g.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }
}
