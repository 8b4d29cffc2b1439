//! The Raft core over the production log store: three `GroupSet`s on one glommio executor,
//! each group's log an `engine::Log` (format v2 batches in O_DIRECT segments), messages passed
//! in process. A leader cut off with entries nobody else has, a new leader elected, the old
//! one's conflicting suffix cut from its segment files when it returns; then every log closed
//! and reopened, the commit index recovered from the batch headers, and writing continued.
//! Records are read back with the log's ordinary reads: dense offsets, identical everywhere,
//! and never past the visible end the group sets (the old leader's uncommitted suffix is
//! readable by Raft index only).

use consensus::raft::{GroupConfig, GroupSet, Outcome, Transport};
use engine::{FileBudget, Log, LogConfig, NewRecord};
use futures_channel::oneshot;
use raft::StateRole;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

const G: u64 = 7;

struct Queue(Vec<(u64, Vec<u8>)>);

impl Transport for Queue {
    fn send(&mut self, to: u64, frame: Vec<u8>) {
        self.0.push((to, frame));
    }

    async fn fetch_snapshot(
        &mut self,
        _from: u64,
        _group: u64,
        _first: u64,
        _last: u64,
    ) -> Result<Vec<engine::log::EntryBatch>, String> {
        Err("no log is compacted in these tests".into())
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

struct Cluster {
    logs: BTreeMap<u64, Rc<Log>>,
    sets: BTreeMap<u64, GroupSet<Log>>,
    isolated: BTreeSet<u64>,
}

impl Cluster {
    async fn open(root: &Path) -> Cluster {
        let mut c = Cluster {
            logs: BTreeMap::new(),
            sets: BTreeMap::new(),
            isolated: BTreeSet::new(),
        };
        for id in 1..=3 {
            let log = Log::open(
                root.join(format!("node{id}")),
                config(),
                FileBudget::new(16),
            )
            .await
            .expect("open log");
            let gc = GroupConfig {
                cache_bytes: 4096,
                ..GroupConfig::default()
            };
            let mut set = GroupSet::new(id, gc, id);
            set.add_group(G, Rc::clone(&log), &[1, 2, 3])
                .await
                .expect("group");
            c.logs.insert(id, log);
            c.sets.insert(id, set);
        }
        c
    }

    async fn close(self) {
        for log in self.logs.values() {
            log.close().await.expect("close");
        }
    }

    async fn round(&mut self) {
        let mut sent = Vec::new();
        for (&id, set) in self.sets.iter_mut() {
            let mut q = Queue(Vec::new());
            set.round(&mut q).await;
            for job in set.take_fetch_jobs() {
                job.run().await;
            }
            assert!(set.failure(G).is_none(), "node {id}: {:?}", set.failure(G));
            sent.extend(q.0.into_iter().map(|(to, f)| (id, to, f)));
        }
        for (from, to, f) in sent {
            if !self.isolated.contains(&from) && !self.isolated.contains(&to) {
                self.sets
                    .get_mut(&to)
                    .expect("node")
                    .step_frame(&f)
                    .expect("frame");
            }
        }
    }

    async fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            for s in self.sets.values_mut() {
                s.tick();
            }
            for _ in 0..3 {
                self.round().await;
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.sets.iter().find_map(|(&id, s)| {
            (!self.isolated.contains(&id) && s.status(G)?.role == StateRole::Leader).then_some(id)
        })
    }

    async fn elect(&mut self) -> u64 {
        for _ in 0..100 {
            if let Some(l) = self.leader() {
                return l;
            }
            self.ticks(1).await;
        }
        panic!("no leader");
    }

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
    let mut c = Cluster::open(&root).await;
    let l = c.elect().await;
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
    let l2 = c.elect().await;
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
    let mut c = Cluster::open(&root).await;
    for (id, s) in &c.sets {
        let st = s.status(G).expect("status");
        assert!(
            st.commit <= commit && st.commit > 0,
            "node {id}: commit {}",
            st.commit
        );
        assert_eq!(st.applied, st.commit);
    }
    let l = c.elect().await;
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(tmp.path(), move || scenario(root)).expect("executor");
}
