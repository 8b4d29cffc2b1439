//! Replicas of this node whose group has gone without a leader for a while: each is logged
//! (WARN, then again every [`WARN_AGAIN`] while it lasts) with the reason as this node sees
//! it, so that an operator looking at refused appends learns which voters are missing, and
//! that a group whose missing voter was removed from the cluster (a two-replica partition
//! whose other node was wiped and removed) cannot elect a leader again by itself.

use super::super::state::ClusterState;
use super::super::ClusterNode;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a group goes without a leader before it is logged: elections take a second or
/// two, a restarting node's groups a few more.
pub(super) const WARN_AFTER: Duration = Duration::from_secs(30);

/// How often a group still without a leader is logged again.
pub(super) const WARN_AGAIN: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub(super) struct LeaderlessHere {
    since: Instant,
    warned: Option<Instant>,
}

/// One pass over the partitions placed here whose group runs here (a stopped group is
/// reported as stopped, not here), unless this node was removed.
pub(super) fn report_leaderless(
    node: &ClusterNode,
    s: &ClusterState,
    here: &mut HashMap<u64, LeaderlessHere>,
    now: Instant,
) {
    let me = node.id();
    if s.nodes.get(&me).is_none_or(|n| n.removed) {
        // A removed node's groups go without a leader by design.
        here.clear();
        return;
    }
    let up = node.up_nodes(s);
    let mut still = BTreeSet::new();
    for (id, group) in ClusterNode::partitions(s) {
        if !s.partition(&id).is_some_and(|p| p.nodes().contains(&me)) {
            // Placed elsewhere (closing here).
            continue;
        }
        let Some(v) = node.peers.board.get(group) else {
            continue;
        };
        if v.stopped.is_some() {
            continue;
        }
        if v.leader != raft::INVALID_ID {
            if let Some(seen) = here.remove(&group).filter(|h| h.warned.is_some()) {
                log::info!(
                    "{}/{}: led by node {} again, after {} s without a leader",
                    id.topic,
                    id.partition,
                    v.leader,
                    now.duration_since(seen.since).as_secs()
                );
            }
            continue;
        }
        still.insert(group);
        let seen = here.entry(group).or_insert(LeaderlessHere {
            since: now,
            warned: None,
        });
        let waited = now.duration_since(seen.since);
        if waited < WARN_AFTER
            || seen
                .warned
                .is_some_and(|w| now.duration_since(w) < WARN_AGAIN)
        {
            continue;
        }
        seen.warned = Some(now);
        let removed = |n: u64| s.nodes.get(&n).is_none_or(|e| e.removed);
        log::warn!(
            "{}/{}: {}",
            id.topic,
            id.partition,
            why_leaderless(waited, &v.voters, &up, removed)
        );
    }
    here.retain(|g, _| still.contains(g));
}

/// Why a group with `voters` has had no leader for `waited`, as seen from a node to which
/// gossip lists `up` (the registry's nodes that are up), and whether that lasts.
pub(super) fn why_leaderless(
    waited: Duration,
    voters: &[u64],
    up: &[u64],
    removed: impl Fn(u64) -> bool,
) -> String {
    let need = voters.len() / 2 + 1;
    let present: Vec<u64> = voters.iter().copied().filter(|n| up.contains(n)).collect();
    let gone: Vec<u64> = voters.iter().copied().filter(|&n| removed(n)).collect();
    let missing: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|n| !up.contains(n) && !gone.contains(n))
        .collect();
    let up_now = match present.len() {
        0 => "none is up".to_owned(),
        1 => format!("only {present:?} is up"),
        _ => format!("{present:?} are up"),
    };
    let mut out = format!(
        "no leader for {} s, so it takes no appends (reads of what its replicas applied go \
         on): electing one needs {need} of its {} voters {voters:?}, and {up_now}",
        waited.as_secs(),
        voters.len(),
    );
    if present.len() >= need {
        out.push_str(
            "; enough are up, so elections keep failing: check the network between them \
             and their Raft logs",
        );
        return out;
    }
    if !gone.is_empty() {
        out.push_str(&format!(
            "; node(s) {gone:?} were removed from the cluster and never vote again"
        ));
        if present.len() + missing.len() < need {
            out.push_str(
                ": too few voters remain to elect a leader or change the group's voters, so \
                 this partition takes no appends again (a partition with two replicas needs \
                 both)",
            );
            return out;
        }
    }
    if !missing.is_empty() {
        out.push_str(&format!(
            "; it elects a leader once enough of nodes {missing:?} (down or suspect) return"
        ));
    }
    out
}
