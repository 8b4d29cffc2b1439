//! Groups this node leads (the controller's and every partition's): learners added and
//! promoted, members no longer placed removed, leadership handed back to preferred leaders.

use crate::cluster::state::{ClusterState, CONTROLLER_VOTERS};
use crate::cluster::ClusterNode;
use crate::raft::board::GroupView;
use crate::raft::logger::GroupName;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::StateRole;

pub(super) fn single(change_type: ConfChangeType, node: u64) -> ConfChangeV2 {
    let c = ConfChangeSingle {
        change_type,
        node_id: node,
        ..Default::default()
    };
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![c].into());
    cc
}

pub(super) fn caught_up(v: &GroupView, node: u64) -> bool {
    v.matched.iter().any(|&(n, m)| n == node && m >= v.commit)
}

/// What a group this node leads should change next, if anything.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Change(ConfChangeV2, String),
    Transfer(u64),
}

pub(super) fn next_step(
    me: u64,
    v: &GroupView,
    wanted: &[u64],
    max_voters: usize,
    live: &[u64],
    up: &[u64],
) -> Option<Step> {
    let member = |n: &u64| v.voters.contains(n) || v.learners.contains(n);
    if let Some(&n) = wanted.iter().find(|n| !member(n)) {
        return Some(Step::Change(
            single(ConfChangeType::AddLearnerNode, n),
            format!("node {n} joins as a learner"),
        ));
    }
    let wanted_voters = wanted.len().min(max_voters);
    let current_voters = v.voters.iter().filter(|n| wanted.contains(n)).count();
    if current_voters < wanted_voters {
        if let Some(&n) = v
            .learners
            .iter()
            .find(|&&n| wanted.contains(&n) && caught_up(v, n) && live.contains(&n))
        {
            return Some(Step::Change(
                single(ConfChangeType::AddNode, n),
                format!("learner {n} caught up: promoted to voter"),
            ));
        }
    }
    let extra = v
        .voters
        .iter()
        .chain(v.learners.iter())
        .find(|n| !wanted.contains(n))
        .copied();
    if let Some(n) = extra {
        if n == me {
            // Hand leadership to a caught-up voter that stays, then that leader removes us:
            // one gossip lists up if there is one (while a transfer is pending raft-rs drops
            // the group's proposals: to a node cut off, for an election timeout).
            let stays = |o: &&u64| **o != me && wanted.contains(o) && caught_up(v, **o);
            let to = v
                .voters
                .iter()
                .find(|o| stays(o) && up.contains(o))
                .or_else(|| v.voters.iter().find(stays))
                .copied()?;
            return Some(Step::Transfer(to));
        }
        return Some(Step::Change(
            single(ConfChangeType::RemoveNode, n),
            format!("node {n} is no longer placed here: removed"),
        ));
    }
    None
}

/// Enacts placement on every group this node leads.
pub(super) fn groups(node: &ClusterNode, s: &ClusterState) {
    let me = node.id();
    let live = node.live_nodes(s);
    let up = node.up_nodes(s);
    // The controller: every active node, three voters at most; not a node whose controller
    // replica stopped for good (it starts that replica afresh once left out, and asks back).
    if let Some(v) = node.controller().filter(|v| v.role == StateRole::Leader) {
        let wanted: Vec<u64> = s
            .active_nodes()
            .into_iter()
            .filter(|n| *n == me || !s.controller_stopped.contains(n))
            .collect();
        act(
            node,
            0,
            &v,
            next_step(me, &v, &wanted, CONTROLLER_VOTERS, &live, &up),
        );
    }
    // Partition leaders here act on placement only while this node's state is the
    // controller's current one; otherwise they hand their leadership over, as a removed
    // node's do (see `partition_step`).
    let stale = controller_stale(me, node.controller().as_ref());
    let removed_here = stale || s.nodes.get(&me).is_some_and(|n| n.removed);
    for (id, group) in ClusterNode::partitions(s) {
        let Some(v) = node.peers.board.get(group) else {
            continue;
        };
        if v.role != StateRole::Leader {
            continue;
        }
        let Some(p) = s.partition(&id) else {
            continue;
        };
        let step = partition_step(me, removed_here, &v, &p.nodes(), &live, &up);
        act(node, group, &v, step);
    }
}

/// Whether the controller's state this node applies may be stale for good: its controller
/// replica `v` is not open, stopped (its log failed or was found lost: it applies nothing
/// until started afresh), or no longer in the controller's configuration (left out, or
/// removed with its node: the controller's log reaches it no more). A placement read from
/// such a state may have been replaced since: a partition leader here that enacted it would
/// take out the replicas placed instead, and add back those moved away.
pub(super) fn controller_stale(me: u64, v: Option<&GroupView>) -> bool {
    v.is_none_or(|v| v.stopped.is_some() || (!v.voters.contains(&me) && !v.learners.contains(&me)))
}

/// What a partition group this node leads should change next. `wanted` is its placement as
/// this node knows it, `live` the nodes gossip lists up or suspect, `up` those it lists up.
///
/// A node the controller removed while it ran keeps leading the groups it led: their other
/// voters hear it and never campaign. It does not learn the placement that replaces it (the
/// controller's log reaches it no more), so it would never remove itself, and the group would
/// keep a removed leader and never get the replicas placed instead. Such a node only hands
/// its leadership to a caught-up voter gossip lists up; that leader, which knows the new
/// placement, then changes the group. Leadership goes back to a preferred replica only if
/// gossip lists it up: a suspect one may be cut off (and the controller about to remove it).
pub(super) fn partition_step(
    me: u64,
    removed_here: bool,
    v: &GroupView,
    wanted: &[u64],
    live: &[u64],
    up: &[u64],
) -> Option<Step> {
    if removed_here {
        return v
            .voters
            .iter()
            .find(|&&o| o != me && up.contains(&o) && caught_up(v, o))
            .map(|&o| Step::Transfer(o));
    }
    if let Some(step) = next_step(me, v, wanted, usize::MAX, live, up) {
        return Some(step);
    }
    let &pref = wanted.first()?;
    (pref != me && v.voters.contains(&pref) && caught_up(v, pref) && up.contains(&pref))
        .then_some(Step::Transfer(pref))
}

pub(super) fn act(node: &ClusterNode, group: u64, v: &GroupView, step: Option<Step>) {
    match step {
        None => {}
        Some(Step::Transfer(to)) => {
            log::info!("{}: leadership handed to node {to}", GroupName(group));
            node.transfer_leader(group, v.shard, to);
        }
        Some(Step::Change(cc, why)) => {
            match futures_lite::future::block_on(node.conf_change(group, v.shard, cc)) {
                Ok(index) => {
                    log::info!(
                        "{}: {why} (configuration change at index {index})",
                        GroupName(group)
                    )
                }
                Err(e) => log::info!("{}: {why}: not now ({e})", GroupName(group)),
            }
        }
    }
}
