//! The reconcile loops, on a thread of their own (`proglog-cluster`), about once a second and
//! whenever the controller applies a command. Each pass compares what is with what should be
//! and makes at most one change per group, so a pass that fails (leadership moved, a change
//! pending) is simply made again by the next one: nothing is one-shot.
//!
//! - **Local**: this node opens the partitions placement gives it, and only those (a topic
//!   created on another node exists here once the controller applies it; a replica placed
//!   here later is opened when it is), and closes those placed elsewhere (their topic dropped
//!   when none of its partitions is placed here) and topics the controller deleted (also while
//!   this node was down), once everything in its own controller log is applied and known
//!   committed (never on a view older than a placement it already holds).
//! - **Groups this node leads** (the controller's and every partition's): a placed node not in
//!   the configuration joins as a learner; a caught-up learner is promoted (the controller
//!   keeps at most three voters, the rest learners); a member no longer placed is removed (a
//!   leader first hands its leadership to a caught-up voter); a caught-up preferred leader
//!   (the partition's first replica) that gossip lists up gets leadership back. A node the
//!   controller removed while it runs changes nothing and hands over what it leads.
//! - **Replicas of this node that stopped for good** (their log failed: stopped until the
//!   server restarts): past `--stopped-replica-grace` this node tells the controller
//!   (`ReplicaStopped`, forwarded to the controller's leader), which moves the replica.
//! - **Replicas of this node whose group has no leader** for 30 s are logged with the voters
//!   that are missing (a group whose missing voter was removed cannot elect one again).
//! - **The controller's leader**: the `default` topic's replication factor rises to
//!   min(3, live nodes) as nodes join; replicas of removed nodes, and replicas marked
//!   stopped, are re-created on live nodes that lack one.

use super::ClusterNode;
use event_listener::Listener as _;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod controller;
mod leader;
mod leaderless;
mod local;
mod stopped;
#[cfg(test)]
mod tests;

use controller::{controller, Countdown};
use leader::groups;
use leaderless::{report_leaderless, LeaderlessHere};
use local::{local, Seen};
use stopped::{controller_replica, report_recovered, report_stopped, ControllerHere, StoppedHere};

pub use local::{ASK_AGAIN, DEFAULT_MOVED_REPLICA_TIMEOUT, QUESTIONS_PER_PASS};
pub use stopped::CONTROLLER_ADRIFT;

/// Time between passes when nothing is applied.
pub const PASS_INTERVAL: Duration = Duration::from_millis(1000);

/// Starts the loops; they end when the node stops.
pub fn spawn(node: Arc<ClusterNode>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("proglog-cluster".into())
        .spawn(move || run(node))
}

fn run(node: Arc<ClusterNode>) {
    let mut seen = Seen::default();
    let mut countdown = Countdown::default();
    let mut stopped_here: HashMap<u64, StoppedHere> = HashMap::new();
    let mut recovered_here: HashMap<u64, Instant> = HashMap::new();
    let mut leaderless_here: HashMap<u64, LeaderlessHere> = HashMap::new();
    let mut unplaced: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut controller_here = ControllerHere::default();
    while !node.stopping() {
        let listener = node.changed.listen();
        let s = node.state();
        if node.id() != 0 && !s.cluster_id.is_empty() {
            node.refresh_addresses(&s);
            local(&node, &s, &mut seen);
            groups(&node, &s);
            report_stopped(&node, &s, &mut stopped_here, Instant::now());
            report_recovered(&node, &s, &mut recovered_here, Instant::now());
            report_leaderless(&node, &s, &mut leaderless_here, Instant::now());
            controller_replica(&node, &s, &mut controller_here, Instant::now());
            if node.is_controller_leader() {
                controller(&node, &s, &mut countdown, &mut unplaced);
            } else {
                // A later term as leader counts from its own observations: what this node
                // saw while another led may be stale (the member came back and went again).
                countdown.clear();
                unplaced.clear();
            }
        } else if super::recovers_without_state(
            node.id(),
            &s.cluster_id,
            node.controller().as_ref(),
            controller_here.fresh || controller_here.resetting,
        ) {
            // No state (the controller's log was found lost at start, or started afresh):
            // only the controller's replica can be looked after, and it brings the state.
            controller_replica(&node, &s, &mut controller_here, Instant::now());
        }
        // Waiters on the state check their deadlines at least this often.
        node.tick.notify(usize::MAX);
        let _ = listener.wait_timeout(PASS_INTERVAL);
        // Several commands applied at once make one pass.
        std::thread::sleep(Duration::from_millis(50));
    }
}
