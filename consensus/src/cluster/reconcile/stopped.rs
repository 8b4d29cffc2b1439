//! Replicas of this node that stopped for good, the controller's own among them: reported to
//! the controller past `--stopped-replica-grace`, the mark withdrawn once they recover, and the
//! controller's replica started afresh when its log was lost.

use super::local::{stopped_for_good, ASK_AGAIN};
use crate::cluster::state::{ClusterState, Command};
use crate::cluster::ClusterNode;
use crate::raft::group::Stopped;
use engine::seam::PartitionId;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A replica of this node seen stopped for good: since when, and when this node last asked
/// the controller to move it.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoppedHere {
    pub(super) since: Instant,
    pub(super) asked: Option<Instant>,
}

/// This node's replicas whose group stopped for good (`Stopped::Failed`: its log latched
/// after an I/O error, or its raft.meta could not be written; it stays stopped until the
/// server restarts, and a restart within the grace period reopens it): past
/// `--stopped-replica-grace` this node sends the controller `ReplicaStopped`, again every
/// [`ASK_AGAIN`] until its applied state shows the mark. A full disk (`Stopped::DiskFull`)
/// resumes by itself and is not reported.
pub(super) fn report_stopped(
    node: &ClusterNode,
    s: &ClusterState,
    here: &mut HashMap<u64, StoppedHere>,
    now: Instant,
) {
    let me = node.id();
    let mut still = BTreeSet::new();
    for (id, group) in ClusterNode::partitions(s) {
        let Some(p) = s.partition(&id) else {
            continue;
        };
        if !p.nodes().contains(&me) || p.stopped.contains(&me) {
            continue;
        }
        if !stopped_for_good(node, group) {
            continue;
        }
        still.insert(group);
        let seen = here.entry(group).or_insert(StoppedHere {
            since: now,
            asked: None,
        });
        let grace = node.stopped_replica_grace;
        if now.duration_since(seen.since) < grace
            || seen
                .asked
                .is_some_and(|a| now.duration_since(a) < ASK_AGAIN)
        {
            continue;
        }
        if seen.asked.is_none() {
            log::warn!(
                "{}/{}: this replica stopped (its log failed) {grace:?} ago: asking the \
                 controller to move it to another node",
                id.topic,
                id.partition
            );
        }
        seen.asked = Some(now);
        let c = Command::ReplicaStopped {
            topic: id.topic.to_string(),
            partition: id.partition,
            node: me,
        };
        let sent = &node.stats.stopped_replicas_reported;
        tell_controller(node, &id, sent, &c, "reporting the stopped replica");
    }
    here.retain(|g, _| still.contains(g));
}

/// A replica of this node that the controller has marked stopped but that runs here (the
/// server restarted and reopened it) has the mark withdrawn: this node sends
/// `ReplicaRecovered`, again every [`ASK_AGAIN`] while the mark shows in its applied state
/// (the forward, or the leader's entry, was lost). Without it the controller would still move
/// the healthy replica once a node is free. `asked` holds when each group was last sent.
pub(super) fn report_recovered(
    node: &ClusterNode,
    s: &ClusterState,
    asked: &mut HashMap<u64, Instant>,
    now: Instant,
) {
    let me = node.id();
    let mut still = BTreeSet::new();
    for (id, group) in ClusterNode::partitions(s) {
        let Some(p) = s.partition(&id) else {
            continue;
        };
        if !p.stopped.contains(&me) || !p.nodes().contains(&me) {
            continue;
        }
        let running = node
            .peers
            .board
            .get(group)
            .is_some_and(|v| v.stopped.is_none());
        if !running {
            continue;
        }
        still.insert(group);
        if asked
            .get(&group)
            .is_some_and(|&a| now.duration_since(a) < ASK_AGAIN)
        {
            continue;
        }
        if !asked.contains_key(&group) {
            log::info!(
                "{}/{}: this replica, marked stopped, runs again: asking the controller to \
                 keep it here",
                id.topic,
                id.partition
            );
        }
        asked.insert(group, now);
        let c = Command::ReplicaRecovered {
            topic: id.topic.to_string(),
            partition: id.partition,
            node: me,
        };
        let sent = &node.stats.stopped_replicas_recovered;
        tell_controller(node, &id, sent, &c, "withdrawing the stopped mark");
    }
    asked.retain(|g, _| still.contains(g));
}

/// How long this node's controller replica may run without following a leader, or outside
/// the controller's configuration, before the node asks to be counted again
/// ([`controller_replica`]).
pub const CONTROLLER_ADRIFT: Duration = Duration::from_secs(30);

/// What the pass remembers of this node's own controller replica.
#[derive(Default)]
pub(super) struct ControllerHere {
    /// Since when it has been seen stopped for good.
    pub(super) stopped_since: Option<Instant>,
    /// Since when it has run without following a leader or outside the configuration.
    pub(super) adrift_since: Option<Instant>,
    /// When the controller was last told about it.
    pub(super) asked: Option<Instant>,
    /// It was started afresh in this run and has not been counted since.
    pub(super) fresh: bool,
    /// Starting it afresh failed after it was closed: its board entry is gone, and what
    /// remains to do is known only here.
    pub(super) resetting: bool,
}

/// What becomes of this node's controller replica while it is not on the board (closed, or
/// not published yet), its partition held here (`held`: none, its topic unknown) and a start
/// afresh of it begun and failed in this run (`resetting`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClosedController {
    /// Nothing yet (not opened yet at start, or its view not published yet).
    Wait,
    /// Opened afresh: it was closed and its partition let go, and the opening failed.
    Open,
    /// Started afresh again: the closing failed after the replica closed, before the
    /// partition was let go (the engine leaves it held, its directory maybe in place).
    Reset,
}

pub(super) fn closed_controller(held: Option<bool>, resetting: bool) -> ClosedController {
    match held {
        Some(false) => ClosedController::Open,
        Some(true) if resetting => ClosedController::Reset,
        _ => ClosedController::Wait,
    }
}

/// This node's own controller replica (`__cluster`/0), which the placement does not list.
///
/// - **Stopped for good** (its log failed, or was marked lost) for `--stopped-replica-grace`:
///   the node sends `replica_stopped` for it (relayed: its replica cannot forward), every
///   [`ASK_AGAIN`], and the controller's leader takes it out of the group. Once a member
///   whose controller replica applied at least as far no longer counts this node
///   ([`ClusterNode::controller_counts_me`]), nothing it held is needed: the replica is
///   started afresh (empty, no configuration), as a joining node's.
/// - **Running but adrift** (outside the configuration its replica applied, or following no
///   leader, for [`CONTROLLER_ADRIFT`]; at once after a fresh start), or marked stopped in
///   the state it applies: the node sends `replica_recovered`, every [`ASK_AGAIN`], so that
///   the leader adds it back (as a learner, caught up, promoted if voters are short). A
///   replica marked stopped and left out while the node restarted with its log intact comes
///   back this way too, from its own log.
pub(super) fn controller_replica(
    node: &ClusterNode,
    s: &ClusterState,
    here: &mut ControllerHere,
    now: Instant,
) {
    let me = node.id();
    let id = PartitionId::new(engine::CONTROLLER_TOPIC, 0);
    let due = |here: &ControllerHere| {
        here.asked
            .is_none_or(|a| now.duration_since(a) >= ASK_AGAIN)
    };
    let Some(v) = node.controller() else {
        let Some(engine) = node.engine() else { return };
        let held = engine
            .held_partitions(engine::CONTROLLER_TOPIC)
            .ok()
            .map(|h| h.contains(&0));
        match closed_controller(held, here.resetting) {
            ClosedController::Wait => {}
            _ if !due(here) => {}
            // Closed and not opened again (the fresh start's opening failed): open it.
            ClosedController::Open => {
                here.asked = Some(now);
                let opened = futures_lite::future::block_on(
                    engine.open_partition(engine::CONTROLLER_TOPIC, 0),
                );
                match opened {
                    Ok(()) => {
                        log::info!("the controller's replica here: opened afresh");
                        // The start afresh is complete: as after one that went through.
                        here.resetting = false;
                        here.fresh = true;
                    }
                    Err(e) => log::warn!(
                        "the controller's replica here: opening it afresh: {e} (tried again \
                         every {ASK_AGAIN:?})"
                    ),
                }
            }
            // Closed, still held: the closing failed after the replica closed.
            ClosedController::Reset => {
                here.asked = Some(now);
                start_controller_afresh(node, here);
            }
        }
        return;
    };
    match v.stopped {
        Some(Stopped::Failed) => {
            here.adrift_since = None;
            let since = *here.stopped_since.get_or_insert(now);
            let grace = node.stopped_replica_grace;
            if now.duration_since(since) < grace || !due(here) {
                return;
            }
            // Holding no state (the log found lost at start), the node reports only once its
            // registration of this run is done: one applied after the mark would withdraw
            // it, and the leader add the stopped replica back before it was started afresh.
            if s.cluster_id.is_empty()
                && !node.registered.load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            if here.asked.is_none() {
                log::warn!(
                    "the controller's replica here stopped (its log failed) {grace:?} ago: \
                     asking the controller to leave it out of its group, to start it afresh"
                );
            }
            here.asked = Some(now);
            let c = Command::ReplicaStopped {
                topic: id.topic.to_string(),
                partition: 0,
                node: me,
            };
            let sent = &node.stats.stopped_replicas_reported;
            tell_controller(node, &id, sent, &c, "reporting the stopped replica");
            if node.controller_counts_me(v.applied) != Some(false) {
                return;
            }
            start_controller_afresh(node, here);
        }
        // Resumes by itself once space returns.
        Some(Stopped::DiskFull) => here.stopped_since = None,
        // A node removed from the cluster is left out on purpose (re-admitted when it
        // registers again, at its next start): it asks nothing. Holding no state (its log
        // found lost at start, or started afresh), it cannot tell: it asks, and members
        // refuse a node that is not registered.
        None if !s.cluster_id.is_empty() && s.nodes.get(&me).is_none_or(|n| n.removed) => {
            here.stopped_since = None;
            here.adrift_since = None;
        }
        None => {
            here.stopped_since = None;
            let member = v.voters.contains(&me) || v.learners.contains(&me);
            let adrift = !member || v.leader == raft::INVALID_ID;
            let marked = s.controller_stopped.contains(&me);
            if member && here.fresh {
                here.fresh = false;
                log::info!("the controller's replica here is counted again");
            }
            if !adrift {
                here.adrift_since = None;
            }
            if !adrift && !marked {
                return;
            }
            let since = *here.adrift_since.get_or_insert(now);
            let waited = here.fresh || marked || now.duration_since(since) >= CONTROLLER_ADRIFT;
            if !waited || !due(here) {
                return;
            }
            here.asked = Some(now);
            let c = Command::ReplicaRecovered {
                topic: id.topic.to_string(),
                partition: 0,
                node: me,
            };
            let sent = &node.stats.stopped_replicas_recovered;
            tell_controller(
                node,
                &id,
                sent,
                &c,
                "asking to be counted in the controller's group",
            );
        }
    }
}

/// Starts this node's controller replica afresh ([`ClusterNode::reset_controller_replica`]),
/// left out of the controller's group: on failure, remembered in `here` so that a replica
/// closed by the failed try is started afresh again (its board entry gone with it).
pub(super) fn start_controller_afresh(node: &ClusterNode, here: &mut ControllerHere) {
    match node.reset_controller_replica() {
        Ok(()) => {
            log::warn!(
                "the controller's replica here, stopped and left out of the controller's \
                 group, started afresh (its data removed); asking to be added back"
            );
            node.stats
                .controller_replica_resets
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *here = ControllerHere {
                fresh: true,
                ..ControllerHere::default()
            };
        }
        Err(e) => {
            here.resetting = true;
            log::warn!(
                "the controller's replica here: starting it afresh: {e} (tried again every \
                 {ASK_AGAIN:?})"
            );
        }
    }
}

/// Sends `c`, about this node's replica `id`, to the controller, counted in `sent`. A refusal
/// is logged (`doing` says what for); the caller sends it again later.
pub(super) fn tell_controller(
    node: &ClusterNode,
    id: &PartitionId,
    sent: &std::sync::atomic::AtomicU64,
    c: &Command,
    doing: &str,
) {
    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = node.ask_controller(c) {
        log::info!("{}/{}: {doing}: not now ({e})", id.topic, id.partition);
    }
}
