//! A replica whose group stopped on a storage failure (its log latched) stays stopped until
//! the server restarts, and must say so (below: a replica whose log is lost stays stopped
//! across restarts, and never votes): raft-rs's state froze at the failure, so a former
//! leader would still report itself leader (in `cluster describe`, GetServers' `is_leader`,
//! and to the forwarding of appends) while the others elect another.
//!
//! Three `GroupSet`s driven by hand (see `manual`); node 1 leads, then its log's directory
//! is taken away under the open log, so the next segment it rolls to cannot be created: a
//! real I/O error, made without privileges.

use crate::manual;

use consensus::raft::{Error, GroupConfig, GroupSet, Stopped};
use engine::{FileBudget, Log, NewRecord};
use manual::{Cluster, G};
use raft::StateRole;
use std::rc::Rc;

const FAILING: u64 = 1;

async fn leader_fails(root: std::path::PathBuf) {
    let mut c = Cluster::open(&root, 3, manual::config(64 * 1024), true).await;
    c.lead_with(FAILING).await;

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
        let (_, _, matched, _) = c.sets[&FAILING].membership(G).expect("membership");
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
    manual::run(leader_fails);
}

/// Node 3 restarted over its directory emptied (deleted, then made again by the log's open,
/// as the engine does at start), with the directory marked lost (what the engine does when a
/// partition's directory is missing at start) or not.
async fn restart_emptied(c: &mut Cluster, root: &std::path::Path, mark: bool) {
    restart_emptied_with(c, root, mark, &[1, 2, 3]).await;
}

/// [`restart_emptied`], the group opened with first configuration `voters` (none: a log
/// started afresh for a replica no longer placed on the node).
async fn restart_emptied_with(c: &mut Cluster, root: &std::path::Path, mark: bool, voters: &[u64]) {
    let old = c.logs.remove(&EMPTIED).expect("log");
    let _ = old.close().await;
    c.sets.remove(&EMPTIED);
    let dir = root.join(format!("node{EMPTIED}"));
    std::fs::remove_dir_all(&dir).expect("remove the directory");
    reopen_with(c, root, mark, voters).await;
}

/// Node 3 opened again over its directory as it is (a restart), marked lost first if `mark`.
async fn reopen(c: &mut Cluster, root: &std::path::Path, mark: bool) {
    reopen_with(c, root, mark, &[1, 2, 3]).await;
}

async fn reopen_with(c: &mut Cluster, root: &std::path::Path, mark: bool, voters: &[u64]) {
    if let Some(old) = c.logs.remove(&EMPTIED) {
        let _ = old.close().await;
    }
    c.sets.remove(&EMPTIED);
    let dir = root.join(format!("node{EMPTIED}"));
    let log = Log::open(&dir, manual::config(64 * 1024), FileBudget::new(16))
        .await
        .expect("open");
    if mark {
        log.mark_lost("its directory was missing at start (test)")
            .expect("mark");
    }
    let gc = GroupConfig {
        cache_bytes: 4096,
        ..GroupConfig::default()
    };
    let mut set = GroupSet::new(EMPTIED, gc, 99);
    set.add_group(G, Rc::clone(&log), voters)
        .await
        .expect("a lost log opens (stopped)");
    c.logs.insert(EMPTIED, log);
    c.sets.insert(EMPTIED, set);
}

const EMPTIED: u64 = 3;
const LAGGING: u64 = 2;

/// Entries committed on nodes 1 and 3 while node 2 was cut off; node 1 leads.
async fn committed_without_node_2(root: &std::path::Path) -> (Cluster, u64) {
    committed_without_node_2_of(root, 5, 100).await
}

/// [`committed_without_node_2`]: `n` entries of one record of `size` bytes.
async fn committed_without_node_2_of(root: &std::path::Path, n: u8, size: usize) -> (Cluster, u64) {
    let mut c = Cluster::open(root, 3, manual::config(64 * 1024), true).await;
    c.lead_with(1).await;
    c.isolated.insert(LAGGING);
    for i in 0..n {
        let set = c.sets.get_mut(&1).expect("node");
        let _pending = set.propose(G, &[NewRecord::new(vec![b'a' + i % 26; size])], 0);
        c.round().await;
    }
    for _ in 0..5 {
        c.round().await;
    }
    let commit = c.sets[&1].status(G).expect("status").commit;
    let lagging = c.sets[&LAGGING].status(G).expect("status").last_index;
    assert!(
        commit > lagging,
        "commit {commit}, node 2 holds up to {lagging}"
    );
    (c, commit)
}

/// A replica whose directory vanished (its acknowledged entries with it) must not help elect
/// a leader that lacks them: node 2, which missed entries committed on nodes 1 and 3, could
/// otherwise win with the vote of node 3, emptied, once node 1 is cut off, and those
/// entries would be lost.
async fn emptied_replica_never_votes(root: std::path::PathBuf) {
    let (mut c, commit) = committed_without_node_2(&root).await;
    restart_emptied(&mut c, &root, true).await;
    never_votes(c, &root, commit, "").await;
}

/// Node 3, stopped at open (its log found lost), neither votes for node 2, which lacks
/// entries committed up to `commit`, nor opens otherwise at the next start; its lost mark
/// says `why`.
async fn never_votes(c: Cluster, root: &std::path::Path, commit: u64, why: &str) {
    never_votes_holding(c, root, commit, why, 0).await;
}

/// [`never_votes`], node 3's log holding Raft indexes up to `held` (0: none, and not
/// bootstrapped either).
async fn never_votes_holding(
    mut c: Cluster,
    root: &std::path::Path,
    commit: u64,
    why: &str,
    held: u64,
) {
    let check = |c: &Cluster, when: &str| {
        let e = c.sets[&EMPTIED].failure(G).expect("node 3 stopped");
        assert!(matches!(e, Error::LostLog { .. }), "{when}: {e}");
        assert!(e.to_string().contains(why), "{when}: {e}");
        let s = c.sets[&EMPTIED].status(G).expect("status");
        assert_eq!(s.stopped, Some(Stopped::Failed), "{when}");
        assert_eq!(
            s.last_index, held,
            "{when}: not bootstrapped, nothing appended"
        );
    };
    check(&c, "opened");
    c.isolated.remove(&LAGGING);
    c.isolated.insert(1);
    c.ticks(100).await;
    let s2 = c.sets[&LAGGING].status(G).expect("status");
    println!("node 2 after 100 ticks: {s2:?}");
    assert_ne!(
        s2.role,
        StateRole::Leader,
        "node 2 won an election without the committed entries up to {commit}"
    );
    check(&c, "after 100 ticks");
    // And so at every later start.
    reopen(&mut c, root, false).await;
    check(&c, "restarted");
    c.close().await;
}

/// Node 3 stopped, and files of its directory deleted while it keeps the directory and a
/// file the test names: every file but `keep` when `keep` is `partition.meta` (a partition's
/// mark, what the engine checks at start), or its segment files (`.log`, `.index`) alone
/// with the engine's record of them (`segments.meta`, which would find them gone first:
/// this deletion is left to the group's own check).
async fn delete_files(c: &mut Cluster, root: &std::path::Path, segments_only: bool) {
    let old = c.logs.remove(&EMPTIED).expect("log");
    let _ = old.close().await;
    c.sets.remove(&EMPTIED);
    let dir = root.join(format!("node{EMPTIED}"));
    for f in std::fs::read_dir(&dir).expect("list") {
        let path = f.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let segment =
            name.ends_with(".log") || name.ends_with(".index") || name == engine::SEGMENTS_META;
        if segment || !segments_only {
            std::fs::remove_file(&path).expect("remove");
        }
    }
    if !segments_only {
        // What the engine's own check looks for, kept: this deletion gets past it.
        std::fs::write(dir.join("partition.meta"), b"kept").expect("write");
    }
}

/// Every file of node 3's directory deleted but its mark: the group's metadata is gone with
/// the vote it recorded, and the log is empty, as a log made a moment ago would be. Opened
/// with the first configuration (as a first voter is at every start), it would vote as a
/// new voter with no vote record.
async fn deleted_but_the_mark_never_votes(root: std::path::PathBuf) {
    let (mut c, commit) = committed_without_node_2(&root).await;
    delete_files(&mut c, &root, false).await;
    reopen(&mut c, &root, false).await;
    never_votes(c, &root, commit, "raft.meta").await;
}

#[test]
fn a_replica_whose_files_but_its_mark_were_deleted_never_votes() {
    manual::run(deleted_but_the_mark_never_votes);
}

/// Node 3's segment files deleted, its metadata kept: it remembers its vote and its
/// configuration, and holds none of the entries it acknowledged.
async fn deleted_segments_never_vote(root: std::path::PathBuf) {
    let (mut c, commit) = committed_without_node_2(&root).await;
    delete_files(&mut c, &root, true).await;
    reopen(&mut c, &root, false).await;
    never_votes(
        c,
        &root,
        commit,
        "before the configuration change at index 3",
    )
    .await;
}

#[test]
fn a_replica_whose_segment_files_were_deleted_never_votes() {
    manual::run(deleted_segments_never_vote);
}

/// What is done to node 3's segment files while it is down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Damage {
    NewestDeleted,
    OldestDeleted,
    /// The segment before the active one cut short by 100 bytes (its last batch torn).
    SealedCut,
}

/// Node 3's newest or oldest segment files deleted, or a sealed one cut short, everything
/// else kept. Without its newest, its log still reaches past the configuration change
/// `raft.meta` records and reads as a shorter, valid log; without its oldest (which holds the
/// group's first configuration), as a log that retention cut; with a sealed one cut, as a
/// whole log until a read reaches the cut. Nothing the group can check shows any of them; the
/// engine's record of its segments (`segments.meta`) does.
async fn damaged_segments_never_vote(root: &std::path::Path, damage: Damage) {
    let (mut c, commit) = committed_without_node_2_of(root, 40, 4000).await;
    let old = c.logs.remove(&EMPTIED).expect("log");
    let _ = old.close().await;
    c.sets.remove(&EMPTIED);
    let dir = root.join(format!("node{EMPTIED}"));
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() >= 3, "{} segments", logs.len());
    let doomed = match damage {
        Damage::NewestDeleted => &logs[logs.len() - 1],
        Damage::OldestDeleted => &logs[0],
        Damage::SealedCut => &logs[logs.len() - 2],
    };
    if damage == Damage::SealedCut {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(doomed)
            .expect("open .log");
        let len = f.metadata().expect("stat").len();
        f.set_len(len - 100).expect("cut");
    } else {
        std::fs::remove_file(doomed).expect("rm .log");
        std::fs::remove_file(doomed.with_extension("index")).expect("rm .index");
    }
    reopen(&mut c, root, false).await;
    let held = c.logs[&EMPTIED].next_index() - 1;
    let why = if damage == Damage::NewestDeleted {
        assert!(
            (4..commit).contains(&held),
            "node 3 holds up to {held}, past the first configuration (3) and short of {commit}"
        );
        "its newest segment"
    } else {
        assert!(held >= commit, "node 3 holds up to {held}, commit {commit}");
        match damage {
            Damage::OldestDeleted => "its oldest segment",
            _ => "100 bytes were cut",
        }
    };
    never_votes_holding(c, root, commit, why, held).await;
}

async fn deleted_newest_segment_never_votes(root: std::path::PathBuf) {
    damaged_segments_never_vote(&root, Damage::NewestDeleted).await;
}

async fn deleted_oldest_segment_never_votes(root: std::path::PathBuf) {
    damaged_segments_never_vote(&root, Damage::OldestDeleted).await;
}

async fn cut_sealed_segment_never_votes(root: std::path::PathBuf) {
    damaged_segments_never_vote(&root, Damage::SealedCut).await;
}

#[test]
fn a_replica_whose_oldest_segment_was_deleted_never_votes() {
    manual::run(deleted_oldest_segment_never_votes);
}

#[test]
fn a_replica_whose_newest_segment_was_deleted_never_votes() {
    manual::run(deleted_newest_segment_never_votes);
}

#[test]
fn a_replica_whose_sealed_segment_was_cut_short_never_votes() {
    manual::run(cut_sealed_segment_never_votes);
}

#[test]
fn a_replica_whose_directory_vanished_never_votes() {
    manual::run(emptied_replica_never_votes);
}

/// A replica emptied without the engine noticing (a device that lied about its syncs) is
/// stopped by the leader's first heartbeat, and marked so: it stays stopped at the next start
/// instead of opening as a voter again.
async fn lost_entries_are_remembered(root: std::path::PathBuf) {
    let (mut c, _) = committed_without_node_2(&root).await;
    restart_emptied(&mut c, &root, false).await;
    assert!(c.sets[&EMPTIED].failure(G).is_none(), "not known lost yet");
    c.ticks(10).await;
    let e = c.sets[&EMPTIED].failure(G).expect("stopped by a heartbeat");
    assert!(matches!(e, Error::LostEntries { .. }), "{e}");
    let why = c.logs[&EMPTIED].lost().expect("read").expect("marked lost");
    assert!(why.contains("entries it acknowledged are gone"), "{why}");
    reopen(&mut c, &root, false).await;
    let e = c.sets[&EMPTIED].failure(G).expect("stopped at open");
    assert!(matches!(e, Error::LostLog { .. }), "{e}");
    c.close().await;
}

#[test]
fn a_replica_stopped_for_lost_entries_stays_stopped_after_a_restart() {
    manual::run(lost_entries_are_remembered);
}

/// A log started afresh (no configuration) for a replica the leader still counts with what
/// the old log held: the leader's heartbeats name entries it lacks. They are dropped: the
/// replica neither stops nor takes the node down (raft-rs panics on such a heartbeat), and
/// it votes for nobody.
async fn fresh_log_still_counted(root: std::path::PathBuf) {
    let (mut c, _) = committed_without_node_2(&root).await;
    restart_emptied_with(&mut c, &root, false, &[]).await;
    c.isolated.remove(&LAGGING);
    c.ticks(20).await;
    assert!(
        c.sets[&EMPTIED].failure(G).is_none(),
        "the fresh log stopped"
    );
    assert!(
        c.logs[&EMPTIED].lost().expect("read").is_none(),
        "marked lost"
    );
    let s = c.sets[&EMPTIED].status(G).expect("status");
    assert_eq!(s.last_index, 0, "{s:?}");
    assert_eq!(c.leader(), Some(1), "node 1 still leads");
    // Opened once, it wrote its metadata: restarted before any leader added it, it is not
    // taken for a log that lost it.
    reopen_with(&mut c, &root, false, &[]).await;
    assert!(
        c.sets[&EMPTIED].failure(G).is_none(),
        "the fresh log, restarted, stopped"
    );
    c.close().await;
}

#[test]
fn a_log_started_afresh_that_the_leader_still_counts_drops_its_heartbeats() {
    manual::run(fresh_log_still_counted);
}
