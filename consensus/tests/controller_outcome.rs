//! What a controller command (CreateTopic, DeleteTopic, RemoveNode) answers when the
//! controller's leader cannot see it through: refused before it was proposed (this node
//! does not lead) is NOT_LEADER naming the leader, nothing was appended and the client sends
//! it there; proposed, then leadership lost before it committed, is OUTCOME_UNKNOWN (the next
//! leader may commit it or not), as for an append, never INTERNAL.
//!
//! Three `GroupSet`s driven by hand (see `manual`): the leader proposes a command, is cut
//! off before any follower hears of it, and steps down (check_quorum) while the others elect.

use crate::manual;

use consensus::cluster::Error as ClusterError;
use consensus::raft::Error as RaftError;
use engine::seam::Error as SeamError;
use manual::{Cluster, G};

/// The seam's error for a controller proposal's Raft error, as `ClusterNode` maps it.
fn answer(e: RaftError) -> SeamError {
    SeamError::from(ClusterError::from(e))
}

async fn leader_lost_mid_proposal(root: std::path::PathBuf) {
    let mut c = Cluster::open(&root, 3, manual::config(256 * 1024), false).await;
    c.lead_with(1).await;

    // Not the leader: refused before it is proposed.
    let refused = c
        .sets
        .get_mut(&2)
        .expect("node")
        .propose_command(G, b"create topic t")
        .expect_err("a follower refuses");
    match answer(refused) {
        SeamError::NotLeader { leader_id, .. } => assert_eq!(leader_id.as_deref(), Some("1")),
        other => panic!("a command refused by a follower: {other:?}"),
    }

    // Proposed on the leader, which is cut off before any follower hears of it.
    c.isolated.insert(1);
    let mut rx = c
        .sets
        .get_mut(&1)
        .expect("node")
        .propose_command(G, b"create topic t")
        .expect("the leader proposes");
    let mut outcome = None;
    for _ in 0..100 {
        c.ticks(1).await;
        if let Ok(Some(o)) = rx.try_recv() {
            outcome = Some(o);
            break;
        }
    }
    let e = match outcome {
        Some(Err(e)) => e,
        other => panic!("the cut-off leader's command: {other:?}"),
    };
    println!("leadership lost mid-proposal: {e}");
    let seam = answer(e);
    println!("answered: {seam:?}");
    assert!(
        matches!(seam, SeamError::OutcomeUnknown(_)),
        "proposed, then leadership lost: {seam:?}"
    );
    // The others went on without it.
    assert_ne!(c.elect(200).await, 1);
    c.isolated.clear();
    c.close().await;
}

#[test]
fn a_controller_command_whose_leader_lost_leadership_is_outcome_unknown() {
    manual::run(leader_lost_mid_proposal);
}
