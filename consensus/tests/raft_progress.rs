//! A new leader has not heard from its followers yet: raft-rs starts each follower's progress
//! at matched index 0 until it answers. That 0 is not a lag: `membership` leaves such a
//! replica out of the matched indexes (`cluster describe` then shows its lag as unknown and
//! `proglog_raft_follower_lag_max` leaves it out) until the follower answers.
//!
//! Three `GroupSet`s driven by hand (see `manual`): node 1 leads and every node holds every
//! entry; node 1 is cut off, another leader is elected, and it reports node 1's progress only
//! once node 1 is back and answers.

use crate::manual;

use engine::NewRecord;
use manual::{Cluster, G};

const OLD: u64 = 1;

async fn new_leader(root: std::path::PathBuf) {
    let mut c = Cluster::open(&root, 3, manual::config(64 * 1024), false).await;
    c.lead_with(OLD).await;
    for i in 0..20u8 {
        let set = c.sets.get_mut(&OLD).expect("node");
        let _pending = set.propose(G, &[NewRecord::new(vec![b'a' + i; 100])], 0);
        c.round().await;
    }
    c.ticks(3).await;
    let commit = c.sets[&OLD].status(G).expect("status").commit;
    assert!(commit > 20, "commit {commit}");
    for n in 1..=3 {
        let s = c.sets[&n].status(G).expect("status");
        assert_eq!(s.last_index, commit, "node {n} holds every entry: {s:?}");
    }
    let (_, _, matched, _) = c.sets[&OLD].membership(G).expect("membership");
    assert_eq!(matched, vec![(1, commit), (2, commit), (3, commit)]);

    // Node 1, holding everything, is cut off; the others elect a leader, which has not
    // heard from it.
    c.isolated.insert(OLD);
    let leader = c.elect(200).await;
    assert_ne!(leader, OLD);
    c.ticks(5).await;
    let s = c.sets[&leader].status(G).expect("status");
    let (_, _, matched, _) = c.sets[&leader].membership(G).expect("membership");
    println!("new leader {leader} (commit {}): {matched:?}", s.commit);
    assert!(
        matched.iter().all(|&(n, _)| n != OLD),
        "node {OLD}'s progress is unknown to the new leader, not matched index 0: {matched:?}"
    );
    for n in [2, 3] {
        assert!(
            matched.contains(&(n, s.last_index)),
            "node {n} answered: {matched:?}"
        );
    }

    // Back, node 1 answers and its progress is known again.
    c.isolated.remove(&OLD);
    c.ticks(5).await;
    let s = c.sets[&leader].status(G).expect("status");
    let (_, _, matched, _) = c.sets[&leader].membership(G).expect("membership");
    assert!(
        matched.contains(&(OLD, s.last_index)),
        "node {OLD} answered the new leader: {matched:?} (last index {})",
        s.last_index
    );
    c.close().await;
}

#[test]
fn a_new_leader_reports_no_progress_it_has_not_heard() {
    manual::run(new_leader);
}
