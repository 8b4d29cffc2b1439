//! A cluster driven by hand: `n` `GroupSet`s (three, or one for a sole voter) on one glommio
//! executor, one group `G` in each, every group's log a real `engine::Log` in its own
//! directory. Nothing runs on its own: the test ticks the nodes and runs their rounds, and
//! the frames a round sends are delivered by the test, in process, after every node's
//! round, so the races the tests set up (a leader cut off, a leader's entries reaching its
//! followers before its own write fails) happen the same way every time.
//!
//! What differs between the tests that share it is a parameter: the log's configuration,
//! how many nodes, whether a group may stop (its log failed), how long an election may take.
//! A test adds its own helpers in an `impl Cluster` of its own.

// Each test file uses some of these helpers.
#![allow(dead_code)]

use consensus::raft::{GroupConfig, GroupSet, Transport};
use engine::{FileBudget, Log, LogConfig};
use raft::StateRole;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

/// The one group of every node.
pub const G: u64 = 7;

/// The frames a node's round sends: (to, frame). No log is compacted, so nothing is fetched.
pub struct Queue(pub Vec<(u64, Vec<u8>)>);

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

/// The log configuration of these tests, with segments of `segment_bytes`.
pub fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

pub struct Cluster {
    pub logs: BTreeMap<u64, Rc<Log>>,
    pub sets: BTreeMap<u64, GroupSet<Log>>,
    /// Nodes cut off: frames from or to them are dropped, and none of them is the leader.
    pub isolated: BTreeSet<u64>,
    /// Whether a group may stop (its log failed, e.g. its disk is full). If not, a stopped
    /// group fails the test at its next round, as does a frame a node refuses or a log that
    /// does not close cleanly. If so, frames to a stopped group are dropped, a stopped group
    /// is not the leader (it reports none), and a log's close is not checked.
    may_stop: bool,
}

impl Cluster {
    /// Nodes `1..=n` under `root` (node `i` in `root/node{i}`), every group of them all.
    pub async fn open(root: &Path, n: u64, config: LogConfig, may_stop: bool) -> Cluster {
        let mut c = Cluster {
            logs: BTreeMap::new(),
            sets: BTreeMap::new(),
            isolated: BTreeSet::new(),
            may_stop,
        };
        let voters: Vec<u64> = (1..=n).collect();
        for id in 1..=n {
            let log = Log::open(
                root.join(format!("node{id}")),
                config.clone(),
                FileBudget::new(16),
            )
            .await
            .expect("open log");
            let gc = GroupConfig {
                cache_bytes: 4096,
                ..GroupConfig::default()
            };
            let mut set = GroupSet::new(id, gc, id);
            set.add_group(G, Rc::clone(&log), &voters)
                .await
                .expect("group");
            c.logs.insert(id, log);
            c.sets.insert(id, set);
        }
        c
    }

    pub async fn close(self) {
        for log in self.logs.values() {
            let closed = log.close().await;
            if !self.may_stop {
                closed.expect("close");
            }
        }
    }

    /// One round on every node, then every frame delivered (but those from or to an
    /// isolated node).
    pub async fn round(&mut self) {
        let mut sent = Vec::new();
        for (&id, set) in self.sets.iter_mut() {
            let mut q = Queue(Vec::new());
            set.round(&mut q).await;
            for job in set.take_fetch_jobs() {
                job.run().await;
            }
            if !self.may_stop {
                assert!(set.failure(G).is_none(), "node {id}: {:?}", set.failure(G));
            }
            sent.extend(q.0.into_iter().map(|(to, f)| (id, to, f)));
        }
        for (from, to, f) in sent {
            if !self.isolated.contains(&from) && !self.isolated.contains(&to) {
                let stepped = self.sets.get_mut(&to).expect("node").step_frame(&f);
                if !self.may_stop {
                    stepped.expect("frame");
                }
            }
        }
    }

    /// `n` ticks on every node, each followed by three rounds.
    pub async fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            for s in self.sets.values_mut() {
                s.tick();
            }
            for _ in 0..3 {
                self.round().await;
            }
        }
    }

    /// Node `id` campaigns first and leads (20 rounds).
    pub async fn lead_with(&mut self, id: u64) {
        self.sets
            .get_mut(&id)
            .expect("node")
            .campaign(G)
            .expect("campaign");
        for _ in 0..20 {
            self.round().await;
        }
        assert_eq!(self.leader(), Some(id), "node {id} leads");
    }

    /// The leader among the nodes not isolated whose group still runs.
    pub fn leader(&self) -> Option<u64> {
        self.sets.iter().find_map(|(&id, s)| {
            let running = !self.isolated.contains(&id) && s.failure(G).is_none();
            (running && s.status(G)?.role == StateRole::Leader).then_some(id)
        })
    }

    /// The leader, after as many as `max_ticks` ticks.
    pub async fn elect(&mut self, max_ticks: usize) -> u64 {
        for _ in 0..max_ticks {
            if let Some(l) = self.leader() {
                return l;
            }
            self.ticks(1).await;
        }
        panic!("no leader");
    }
}

/// Runs `scenario` (given a temporary directory) on a glommio executor, with test logging.
pub fn run<F, Fut>(scenario: F)
where
    F: FnOnce(std::path::PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(tmp.path(), move || scenario(root)).expect("executor");
}
