//! A leader whose disk fills up while its followers' do not. A leader sends its entries to
//! the followers before it writes them itself, so when its own write fails for want of
//! space a follower may hold the entry, and the next leader commits it: the appends pending
//! on the full leader must learn that their outcome is unknown, never "disk full" (which
//! clients take as "the write did not happen"), or a client told so later reads its record
//! (an aborted read). Only a group whose one voter is the full node has certainly lost them,
//! and only those whose entries never reached its log: one handed to the log may be on disk
//! although the write failed, recovered and committed once space returns
//! (`raft_traps.rs::a_lone_voter_whose_disk_fills_mid_write_says_disk_full_only_of_what_never_reached_its_log`).
//!
//! Three `GroupSet`s on one glommio executor, each group's log an `engine::Log`, messages
//! passed in process round by round (deterministic: the leader's entries always reach the
//! followers before its write fails); the full disk is a small tmpfs mounted on the leader's
//! directory. Needs root (to mount it); not root, or no tmpfs: the test says so and passes.
//!
//! Every batch the leader writes is one whole page, at a page boundary, so that the write
//! that fills the volume fails with ENOSPC: a write that extends a tmpfs file over a page it
//! already holds and one it cannot get comes back short instead (which the log also takes
//! for a full disk when no room is left: `engine/tests/short_write.rs`).

use crate::common::Tmpfs;
use crate::manual;

use consensus::raft::replica::engine_error;
use consensus::raft::{forward, Outcome};
use engine::seam::{EncodedBatch, Error as SeamError, PartitionId, Writability};
use engine::NewRecord;
use futures_channel::oneshot;
use manual::{Cluster, G};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The full node: it campaigns first, so it leads.
const FULL: u64 = 1;
const PAGE: usize = 4096;
/// Enough rounds to fill the volume many times over.
const MAX_PROPOSALS: usize = 2000;
/// Elections take at most this many ticks.
const ELECTION_TICKS: usize = 200;

/// Nodes `1..=n` under `root`: the full node's group stops when its disk fills up.
async fn open(root: &Path, n: u64) -> Cluster {
    // Segments start at a page boundary: page-sized batches stay aligned across rolls.
    let config = manual::config(256 * 1024);
    Cluster::open(root, n, config, true).await
}

impl Cluster {
    /// Node `FULL` campaigns first and leads.
    async fn elect_full(&mut self) {
        self.lead_with(FULL).await;
    }

    /// Proposes values on the leader `FULL`, one per round, until its group stops; returns
    /// them with their receivers. The first one ends its log at a page boundary, each later
    /// one is a page.
    async fn fill(&mut self) -> Vec<(Vec<u8>, oneshot::Receiver<Outcome>)> {
        let log = &self.logs[&FULL];
        let batches = log
            .read_entries(log.first_index(), log.next_index(), usize::MAX)
            .await
            .expect("entries");
        let end: usize = batches.iter().map(|b| b.header.batch_len()).sum();
        let mut proposed = Vec::new();
        for i in 0..MAX_PROPOSALS {
            let len = if i == 0 { 2 * PAGE - end % PAGE } else { PAGE };
            let value = value(i, len);
            let set = self.sets.get_mut(&FULL).expect("node");
            let rx = set
                .propose(G, &[NewRecord::new(value.clone())], 0)
                .expect("propose");
            proposed.push((value, rx));
            self.round().await;
            if self.sets[&FULL].failure(G).is_some() {
                return proposed;
            }
        }
        panic!("node {FULL}'s disk never filled up");
    }

    /// The records `node` shows readers (committed ones).
    async fn committed(&self, node: u64) -> BTreeSet<Vec<u8>> {
        let visible = self.sets[&node].status(G).expect("status").visible_offset;
        if visible == 0 {
            return BTreeSet::new();
        }
        let rs = self.logs[&node]
            .read_range(0, visible as usize, usize::MAX)
            .await
            .expect("read");
        rs.iter().map(|r| r.value.to_vec()).collect()
    }
}

/// Value `i`, of a length that makes its batch `batch_len` bytes.
fn value(i: usize, batch_len: usize) -> Vec<u8> {
    let overhead = engine::batch::encoded_len(&[NewRecord::new(Vec::new())]);
    let mut v = format!("v{i:05}-").into_bytes();
    v.resize(batch_len - overhead, b'.');
    v
}

fn name(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..6]).into_owned()
}

/// What a client learns of an answer, through the seam as the server maps it.
fn seam_error(e: consensus::raft::Error) -> SeamError {
    SeamError::from(engine_error(e, 0, &PartitionId::new("t", 0)))
}

fn is_disk_full(e: &SeamError) -> bool {
    matches!(
        e,
        SeamError::NotWritable {
            writability: Writability::DiskFull { .. },
            ..
        }
    )
}

async fn leader_fills_up(root: PathBuf) {
    let mut c = open(&root, 3).await;
    c.elect_full().await;
    let proposed = c.fill().await;
    assert!(c.sets[&FULL].failure(G).expect("stopped").is_disk_full());

    // The followers elect a new leader, which commits what they hold.
    let l2 = c.elect(ELECTION_TICKS).await;
    assert_ne!(l2, FULL);
    c.ticks(5).await;
    let committed = c.committed(l2).await;

    let mut acked = 0;
    let mut failed = Vec::new();
    for (value, mut rx) in proposed {
        match rx.try_recv() {
            Ok(Some(Ok(_))) => {
                acked += 1;
                assert!(committed.contains(&value), "{} acknowledged", name(&value));
            }
            Ok(Some(Err(e))) => failed.push((value, seam_error(e))),
            other => panic!("{}: no answer: {other:?}", name(&value)),
        }
    }
    assert!(acked > 0, "the disk filled before any append");
    assert!(!failed.is_empty());
    // No aborted read: nothing a client was told did not happen is in the log.
    for (value, e) in &failed {
        assert!(
            !(is_disk_full(e) && committed.contains(value)),
            "{} was answered {e:?} (RESOURCE_EXHAUSTED: not written) yet the new leader \
             committed it",
            name(value)
        );
    }
    // Every append that failed after it was proposed is outcome unknown, saying why, and
    // stays so when forwarded.
    for (value, e) in &failed {
        let SeamError::OutcomeUnknown(m) = e else {
            panic!("{}: {e:?}, not outcome unknown", name(value));
        };
        assert!(m.contains("disk is full"), "{m}");
        assert!(matches!(
            forward::from_wire(forward::to_wire(e)),
            SeamError::OutcomeUnknown(_)
        ));
    }
    // The race happened: the new leader committed one that failed on the full leader.
    assert!(
        failed.iter().any(|(v, _)| committed.contains(v)),
        "no failed append reached the followers: the test did not exercise the race"
    );

    // An append refused before it is proposed is RESOURCE_EXHAUSTED, as ever: nothing of it
    // is stored (the group refuses it, as the owner's check of the log's writability does).
    let full = &c.logs[&FULL];
    let more = || [NewRecord::new(value(MAX_PROPOSALS, PAGE))];
    let batch = EncodedBatch::encode(&more()).expect("encode");
    let refused = full.check_append(&batch).expect_err("the full log refuses");
    assert!(is_disk_full(&SeamError::from(refused)));
    let set = c.sets.get_mut(&FULL).expect("node");
    let refused = set
        .propose(G, &more(), 0)
        .expect_err("the stopped group refuses");
    let refused = seam_error(refused);
    assert!(is_disk_full(&refused), "{refused:?}");
    c.close().await;
}

/// A group whose only voter is the full node: nobody else holds its unwritten entries, but
/// the appends pending when its disk filled up were handed to its log in the round whose
/// write failed (one per round here), and a write that fails may have landed in part or
/// whole: their outcome is unknown, saying why. An append refused once the group stopped is
/// RESOURCE_EXHAUSTED.
async fn sole_voter_fills_up(root: PathBuf) {
    let mut c = open(&root, 1).await;
    c.elect_full().await;
    let proposed = c.fill().await;
    assert!(c.sets[&FULL].failure(G).expect("stopped").is_disk_full());
    let mut failed = 0;
    for (value, mut rx) in proposed {
        if let Ok(Some(Err(e))) = rx.try_recv() {
            let e = seam_error(e);
            let SeamError::OutcomeUnknown(m) = &e else {
                panic!("{}: {e:?}, not outcome unknown", name(&value));
            };
            assert!(m.contains("disk filled up"), "{m}");
            failed += 1;
        }
    }
    assert!(failed > 0);
    let set = c.sets.get_mut(&FULL).expect("node");
    let refused = set
        .propose(G, &[NewRecord::new(value(MAX_PROPOSALS, PAGE))], 0)
        .expect_err("the stopped group refuses");
    let refused = seam_error(refused);
    assert!(is_disk_full(&refused), "{refused:?}");
    c.close().await;
}

fn on_full_disk(scenario: fn(PathBuf) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>) {
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    let Some(_full) = Tmpfs::mount(&root.join(format!("node{FULL}")), 1 << 20) else {
        return;
    };
    engine::run_local(tmp.path(), move || scenario(root)).expect("executor");
}

#[test]
fn appends_pending_on_a_leader_whose_disk_filled_up_are_outcome_unknown() {
    on_full_disk(|root| Box::pin(leader_fills_up(root)));
}

#[test]
fn appends_pending_on_a_sole_voter_whose_disk_filled_up_in_their_write_are_outcome_unknown() {
    on_full_disk(|root| Box::pin(sole_voter_fills_up(root)));
}
