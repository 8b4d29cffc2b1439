//! A replica whose group stopped on a storage failure (its log latched) stays stopped until
//! the server restarts, and must say so: raft-rs's state froze at the failure, so a former
//! leader would still report itself leader (in `cluster describe`, GetServers' `is_leader`,
//! and to the forwarding of appends) while the others elect another.
//!
//! Three `GroupSet`s driven by hand (see `manual`); node 1 leads, then its log's directory
//! is taken away under the open log, so the next segment it rolls to cannot be created: a
//! real I/O error, made without privileges.

mod manual;

use consensus::raft::Stopped;
use engine::NewRecord;
use manual::{Cluster, G};
use raft::StateRole;

const FAILING: u64 = 1;

async fn leader_fails(root: std::path::PathBuf) {
    let mut c = Cluster::open(&root, 3, manual::config(64 * 1024), true).await;
    c.sets
        .get_mut(&FAILING)
        .expect("node")
        .campaign(G)
        .expect("campaign");
    for _ in 0..20 {
        c.round().await;
    }
    assert_eq!(c.leader(), Some(FAILING));

    std::fs::remove_dir_all(root.join(format!("node{FAILING}"))).expect("remove the directory");
    let mut stopped = false;
    for i in 0..200 {
        let set = c.sets.get_mut(&FAILING).expect("node");
        let value = vec![b'a' + (i % 26) as u8; 4000];
        let _pending = set.propose(G, &[NewRecord::new(value)], 0);
        c.round().await;
        if let Some(e) = c.sets[&FAILING].failure(G) {
            assert!(!e.is_disk_full(), "{e}");
            stopped = true;
            break;
        }
    }
    assert!(stopped, "node {FAILING}'s log never failed");

    let check = |c: &Cluster, when: &str| {
        let s = c.sets[&FAILING].status(G).expect("status");
        println!("node {FAILING} {when}: {s:?}");
        assert_ne!(
            s.role,
            StateRole::Leader,
            "{when}: a stopped replica leads nothing"
        );
        assert_eq!(s.leader, raft::INVALID_ID, "{when}: it knows no leader");
        assert_eq!(s.stopped, Some(Stopped::Failed), "{when}");
        let (_, _, matched) = c.sets[&FAILING].membership(G).expect("membership");
        assert!(
            matched.is_empty(),
            "{when}: no follower progress: {matched:?}"
        );
    };
    check(&c, "at once");

    // The others elect a leader; the stopped replica still knows none (it hears nothing).
    let l2 = c.elect(200).await;
    assert_ne!(l2, FAILING);
    c.ticks(5).await;
    check(&c, "after the election");
    for n in [2, 3] {
        assert_eq!(c.sets[&n].status(G).expect("status").leader, l2);
        assert_eq!(c.sets[&n].status(G).expect("status").stopped, None);
    }
    c.close().await;
}

#[test]
fn a_stopped_former_leader_reports_no_leadership() {
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(tmp.path(), move || leader_fails(root)).expect("executor");
}
