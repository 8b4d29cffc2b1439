//! The Raft core over the production log store: three `GroupSet`s on one glommio executor,
//! each group's log an `engine::Log` (format v2 batches in O_DIRECT segments), messages passed
//! in process. A leader cut off with entries nobody else has, a new leader elected, the old
//! one's conflicting suffix cut from its segment files when it returns; then every log closed
//! and reopened, the commit index recovered from the batch headers, and writing continued.
//! Records are read back with the log's ordinary reads: dense offsets, identical everywhere,
//! and never past the visible end the group sets (the old leader's uncommitted suffix is
//! readable by Raft index only).

use crate::manual;

use consensus::raft::Outcome;
use engine::NewRecord;
use futures_channel::oneshot;
use manual::{Cluster, G};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The three nodes under `root`, any of them may be cut off; none of their groups may stop.
async fn open(root: &Path) -> Cluster {
    Cluster::open(root, 3, manual::config(64 * 1024), false).await
}

/// Elections take at most this many ticks.
const ELECTION_TICKS: usize = 100;

impl Cluster {
    fn propose(&mut self, node: u64, value: String) -> oneshot::Receiver<Outcome> {
        self.sets
            .get_mut(&node)
            .expect("node")
            .propose(G, &[NewRecord::new(value.into_bytes())], 0)
            .expect("propose")
    }

    /// Every node's records, read as a client would.
    async fn records(&self) -> BTreeMap<u64, Vec<(u64, Vec<u8>)>> {
        let mut out = BTreeMap::new();
        for (&id, log) in &self.logs {
            let visible = self.sets[&id].status(G).expect("status").visible_offset;
            // The log's own visible end is the group's: an ordinary read stops there.
            assert_eq!(log.visible_end(), visible, "node {id}");
            let rs = if visible == 0 {
                Vec::new()
            } else {
                log.read_range(0, visible as usize, usize::MAX)
                    .await
                    .expect("read")
            };
            out.insert(
                id,
                rs.iter().map(|r| (r.offset, r.value.to_vec())).collect(),
            );
        }
        out
    }
}

async fn scenario(root: PathBuf) {
    let mut c = open(&root).await;
    let l = c.elect(ELECTION_TICKS).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        acked.push((format!("a{i}"), c.propose(l, format!("a{i}"))));
        c.round().await;
    }
    c.ticks(2).await;
    // The leader is cut off; what it takes now is written to its log only.
    c.isolated.insert(l);
    let mut orphans = Vec::new();
    for i in 0..5 {
        orphans.push(c.propose(l, format!("orphan{i}")));
        c.round().await;
    }
    // The orphans are in the old leader's log but not committed: readers of records do not
    // see them (the group owns the log's visible end), Raft's reads by index do.
    let old = &c.logs[&l];
    let visible = c.sets[&l].status(G).expect("status").visible_offset;
    assert_eq!(old.visibility(), engine::Visibility::Owner);
    assert_eq!(old.visible_end(), visible);
    assert_eq!(
        visible, 30,
        "the first 30 records are committed, the orphans not"
    );
    assert_eq!(old.next_offset(), visible + 5);
    assert!(matches!(
        old.read_range(visible, 10, usize::MAX).await,
        Err(engine::Error::OffsetOutOfRange { next, .. }) if next == visible
    ));
    let limits = engine::seam::ReadLimits {
        max_records: 100,
        max_bytes: 1 << 20,
        past_end: engine::seam::PastEnd::Empty,
    };
    let chunk = old.read_chunk(visible, limits).await.expect("chunk");
    assert!(chunk.is_empty() && chunk.visible_end == visible);
    let chunk = old.read_chunk(0, limits).await.expect("chunk");
    assert_eq!(chunk.records().count(), 30);
    let tail = old
        .read_entries(old.next_index() - 5, old.next_index(), usize::MAX)
        .await
        .expect("entries past the visible end");
    assert_eq!(tail.len(), 5);
    assert!(tail.iter().all(|b| b.header.base_offset >= visible));
    let l2 = c.elect(ELECTION_TICKS).await;
    assert_ne!(l2, l);
    for i in 0..30 {
        acked.push((format!("b{i}"), c.propose(l2, format!("b{i}"))));
        c.round().await;
    }
    c.isolated.clear();
    c.ticks(10).await;
    for mut rx in orphans {
        assert!(
            !matches!(rx.try_recv(), Ok(Some(Ok(_)))),
            "an orphan was acknowledged"
        );
    }
    let mut want = Vec::new();
    for (value, mut rx) in acked {
        let c = rx
            .try_recv()
            .expect("answered")
            .expect("outcome")
            .expect("committed");
        want.push((c.base_offset, value.into_bytes()));
    }
    want.sort();
    let records = c.records().await;
    for (id, rs) in &records {
        assert_eq!(
            rs, &want,
            "node {id}: records after the old leader's suffix was cut"
        );
    }
    // The old leader's orphans were cut from its segment files, not merely hidden.
    let old = &c.logs[&l];
    let all = old
        .read_range(0, old.next_offset() as usize, usize::MAX)
        .await
        .expect("read all");
    assert!(all.iter().all(|r| !r.value.starts_with(b"orphan")));
    assert_eq!(old.next_index(), c.logs[&l2].next_index());
    let commit = c.sets[&l2].status(G).expect("status").commit;
    c.close().await;

    // Everything reopened: the commit index comes back from the batch headers (at most the
    // real one), applied starts there, and the cluster carries on.
    let mut c = open(&root).await;
    for (id, s) in &c.sets {
        let st = s.status(G).expect("status");
        assert!(
            st.commit <= commit && st.commit > 0,
            "node {id}: commit {}",
            st.commit
        );
        assert_eq!(st.applied, st.commit);
    }
    let l = c.elect(ELECTION_TICKS).await;
    let mut rx = c.propose(l, "after".into());
    c.ticks(3).await;
    let done = rx
        .try_recv()
        .expect("answered")
        .expect("outcome")
        .expect("committed");
    assert_eq!(done.base_offset, want.len() as u64);
    want.push((done.base_offset, b"after".to_vec()));
    let records = c.records().await;
    for (id, rs) in &records {
        assert_eq!(rs, &want, "node {id}: records after reopening");
    }
    // The term runs the logs rebuild at open agree with what Raft knows.
    for (id, log) in &c.logs {
        let runs = log.term_runs().await.expect("runs");
        assert!(
            runs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "node {id}"
        );
    }
    c.close().await;
}

#[test]
fn three_groups_on_engine_logs_cut_conflicts_and_recover_their_commit() {
    manual::run(scenario);
}
