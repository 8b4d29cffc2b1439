//! A group stopped for want of space opens again once its node can write what a running
//! group writes, not merely once its data log takes writes. The data log writes into blocks
//! it allocated ahead of its data (`engine::limits::PREALLOC_WINDOW_BYTES`), so on a full
//! disk it may still take writes while a replacement of the group's `raft.meta` (write,
//! fsync, rename: a new block each time) cannot be written. The shard's Ready loop
//! (`replica.rs::reopen_recovered`) first rewrites the metadata as it is and keeps the group
//! stopped when that fails; a group opened regardless would stop again at its next term
//! change (its new term not written), be opened again at the next tick, and so on, several
//! times a second for as long as the disk stays full.
//!
//! Three engines in one process over real sockets (`common`), node 1's data directory a
//! small tmpfs. Node 1's log of the partition has zeroed blocks ahead of its data; a file
//! beside it then fills the volume. Leadership moves to another node (from node 1, or from
//! the other one): the term changes, node 1's group cannot write its new term and stops (disk
//! full) while its log still takes writes. Observed on node 1's board (`Board::reopened`, one count per group
//! opened again): no reopening while the disk stays full (the leader meanwhile commits
//! appends and sends heartbeats, each of which a reopened group would stop on); a page freed,
//! the group opens again exactly once, catches up and takes the later appends.
//!
//! Needs root (to mount the tmpfs); not root, or no tmpfs: the test says so and passes.

use crate::common;

use common::{read_all, status, wait_until, with_seam, Cluster, Tmpfs};
use consensus::raft::replica::{group_id, ControlMsg};
use consensus::raft::Stopped;
use engine::seam::{EncodedBatch, PartitionId};
use engine::{LogConfig, NewRecord, WriteState};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The node whose disk fills up.
const FULL: u64 = 1;
const TOPIC: &str = "t";
/// Node 1's volume: its partition's log (one segment with its zeroed window, an index) and
/// the filler that takes the rest.
const VOLUME_BYTES: u64 = 16 << 20;
/// Small segments: the zeroed window ahead of the data is one segment, well within the
/// volume.
const SEGMENT_BYTES: u64 = 1 << 20;
/// How long node 1's group is watched while the disk is full: dozens of ticks (50 ms) and
/// heartbeats (every 2 ticks), each a chance for a reopened group to flap.
const WATCH: Duration = Duration::from_secs(3);

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        max_batch_bytes: 64 * 1024,
        max_record_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// Writes zeroes to `path` until the volume is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let mut total = 0u64;
    // Large pieces, then pages: the last page the volume has goes to the filler too.
    for piece in [1 << 20, 4096] {
        let buf = vec![0u8; piece];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    total
}

/// Whether a new small file in `dir` can be written: what replacing `raft.meta` needs.
fn small_file_writable(dir: &Path) -> bool {
    let path = dir.join("probe.tmp");
    let r = std::fs::write(&path, b"probe");
    let _ = std::fs::remove_file(&path);
    match r {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => false,
        Err(e) => panic!("writing {}: {e}", path.display()),
    }
}

/// Appends `value` through node `n` (the leader), once.
fn append_on(c: &Cluster, n: u64, value: &[u8]) -> u64 {
    let batch = EncodedBatch::encode(&[NewRecord::new(value.to_vec())]).expect("encode");
    let client = c.root.join("client");
    with_seam(c.node(n), &client, move |seam| async move {
        let id = PartitionId::new(TOPIC, 0);
        seam.partitions.append(&id, batch).await
    })
    .unwrap_or_else(|e| panic!("append on node {n}: {e}"))
    .base_offset
}

fn write_state(c: &Cluster, n: u64) -> WriteState {
    futures_lite::future::block_on(c.node(n).handle.stats(TOPIC, 0))
        .expect("stats")
        .write_state
}

#[test]
fn a_group_stopped_by_a_full_disk_is_not_reopened_while_its_metadata_takes_no_write() {
    // One multi-node test of the binary at a time (`common::serial`).
    let _one = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(format!("n{FULL}"));
    let Some(_volume) = Tmpfs::mount(&dir, VOLUME_BYTES) else {
        return;
    };
    let mut c = Cluster::start(tmp.path(), 3, Duration::from_secs(30));
    for n in &c.nodes {
        futures_lite::future::block_on(n.handle.create_topic(TOPIC, 1, config())).expect("create");
    }
    let group = group_id(&PartitionId::new(TOPIC, 0), 0);
    let mut want = Vec::new();
    for i in 0..10 {
        let v = format!("before-{i}").into_bytes();
        assert_eq!(c.produce(TOPIC, &v), i as u64);
        want.push(v);
    }
    for n in &c.nodes {
        assert_eq!(read_all(n, TOPIC, want.len() as u64), want, "node {}", n.id);
    }
    let stats = futures_lite::future::block_on(c.node(FULL).handle.stats(TOPIC, 0)).expect("stats");
    assert!(
        stats.zeroed_bytes > 0,
        "node {FULL}'s log allocated no blocks ahead of its data: {stats:?}"
    );

    // The volume fills up: the log keeps its allocated blocks, a new small file gets none.
    let filled = fill(&dir.join("filler"));
    assert!(!small_file_writable(&dir), "the volume is full");
    println!("node {FULL}'s volume filled with {filled} bytes");

    // The term changes: leadership moves to node 2 (node 3 if node 2 leads), and node 1's
    // group cannot write the new term it hears of.
    let board = std::sync::Arc::clone(&c.node(FULL).peers.board);
    let reopened = || board.reopened.load(Ordering::Relaxed);
    let leader = common::leader_of(&c.nodes, TOPIC, 0);
    let to = if leader == 2 { 3 } else { 2 };
    println!("node {leader} leads: leadership moves to node {to}");
    let shard = c.node(leader).handle.shard_of(TOPIC, 0);
    c.node(leader)
        .handle
        .deliver(shard, Box::new(ControlMsg::TransferLeader { group, to }))
        .expect("deliver the transfer");
    wait_until(&format!("node {to} leads"), || {
        status(c.node(to), TOPIC).is_some_and(|s| s.is_leader)
    });
    wait_until(
        &format!("node {FULL}'s group stopped for a full disk"),
        || {
            board
                .get(group)
                .is_some_and(|v| v.stopped == Some(Stopped::DiskFull))
        },
    );
    // What `reopen_recovered` looks at: a group stopped for want of space over a log that
    // takes writes.
    assert_eq!(
        write_state(&c, FULL),
        WriteState::Writable,
        "node {FULL}'s log still takes writes"
    );

    // While the disk stays full the group stays stopped: the leader commits appends with the
    // third node and sends heartbeats, each of which a reopened group would stop on.
    let until = Instant::now() + WATCH;
    let mut i = 0;
    while Instant::now() < until {
        let v = format!("full-{i}").into_bytes();
        assert_eq!(append_on(&c, to, &v), want.len() as u64);
        want.push(v);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let while_full = reopened();
    assert_eq!(
        while_full,
        0,
        "node {FULL}'s group was opened again {while_full} times in {WATCH:?} while its \
         raft.meta could not be written (it stops again at once: it flaps); now {:?}",
        board.get(group)
    );
    assert_eq!(
        board.get(group).and_then(|v| v.stopped),
        Some(Stopped::DiskFull),
        "node {FULL}'s group is still stopped"
    );
    assert!(!small_file_writable(&dir), "the volume is still full");

    // A little space returns (one segment's worth, 1 MiB of the 16): the group opens again,
    // once, catches up and takes the later appends.
    let filler = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("filler"))
        .expect("open the filler");
    filler
        .set_len(filled.saturating_sub(SEGMENT_BYTES))
        .expect("shorten the filler");
    drop(filler);
    wait_until(&format!("node {FULL}'s group opened again"), || {
        reopened() > 0
            && board
                .get(group)
                .is_some_and(|v| v.stopped.is_none() && v.leader == to)
    });
    for i in 0..10 {
        let v = format!("after-{i}").into_bytes();
        assert_eq!(c.produce(TOPIC, &v), want.len() as u64);
        want.push(v);
    }
    for n in &c.nodes {
        assert_eq!(read_all(n, TOPIC, want.len() as u64), want, "node {}", n.id);
    }
    assert_eq!(
        reopened(),
        1,
        "node {FULL}'s group opened again exactly once"
    );
    let view = board.get(group).expect("node 1's group");
    assert_eq!(view.stopped, None, "{view:?}");
    assert_eq!(write_state(&c, FULL), WriteState::Writable);
    c.shutdown();
}
