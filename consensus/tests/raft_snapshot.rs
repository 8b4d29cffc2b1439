//! Snapshot transfer over real sockets (three engines in one process, `common`): a follower
//! stopped while the others produce enough to roll segments and retention compacts the
//! leader's log past it is caught up, once restarted, by a snapshot streamed as segment files
//! on a connection of its own; every record is then byte-identical on the three nodes, and
//! no election happened while it streamed (the term never moved). A temporary directory left
//! by a crash is removed, a follower stopped in the middle of a transfer recovers, and a
//! hostile peer's malformed snapshot frames are counted and its connections closed.

use crate::common;

use common::{hostile, status, try_read_from, wait_until, Cluster, Node};
use consensus::raft::snapshot_transfer::{SnapshotStats, SNAP_REQUEST};
use engine::LogConfig;
use std::time::Duration;

const TOPIC: &str = "s";
const VALUE_BYTES: usize = 4096;
const PER_BATCH: u64 = 7;

fn topic_config(retention_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        retention_bytes,
        max_record_bytes: 8 * 1024,
        max_batch_bytes: 32 * 1024,
        ..LogConfig::default()
    }
}

/// Record `i`'s value: its number, then bytes that depend on it.
fn value(i: u64) -> Vec<u8> {
    let mut v = format!("record {i:08} ").into_bytes();
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// Produces records `[from, to)` in batches; returns the offset after them.
fn produce(c: &Cluster, from: u64, to: u64) -> u64 {
    let mut i = from;
    while i < to {
        let n = PER_BATCH.min(to - i);
        let values: Vec<Vec<u8>> = (i..i + n).map(value).collect();
        assert_eq!(c.produce_batch(TOPIC, &values), i, "offsets are dense");
        i += n;
    }
    to
}

fn snap(n: &Node, f: impl Fn(&SnapshotStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    SnapshotStats::get(f(&n.peers.snapshots.stats))
}

fn lowest(n: &Node) -> u64 {
    futures_lite::future::block_on(n.handle.stats(TOPIC, 0))
        .map(|s| s.lowest_offset)
        .unwrap_or(0)
}

fn leader(c: &Cluster) -> u64 {
    let mut found = 0;
    wait_until("a leader", || {
        found = c
            .nodes
            .iter()
            .filter(|n| n.engine.is_some())
            .find(|n| status(n, TOPIC).is_some_and(|s| s.is_leader))
            .map(|n| n.id)
            .unwrap_or(0);
        found != 0
    });
    found
}

/// Stops node 3, produces `[from, to)` and waits until retention cut the leader's log past
/// everything node 3 holds (`held` offsets).
fn leave_node_3_behind(c: &mut Cluster, from: u64, to: u64, held: u64) -> u64 {
    c.stop(3);
    let end = produce(c, from, to);
    let l = leader(c);
    assert_ne!(l, 3);
    wait_until("retention on the leader past node 3", || {
        lowest(c.node(l)) > held
    });
    end
}

/// Every running node shows `[lo, end)` identical to what was produced, `lo` being the
/// highest retained start among them.
///
/// Retention may still be cutting while this looks: once node 3 caught up, the leader drops
/// what it held back for it (its log start jumps to the others'), and a node whose last
/// retention ran a while ago catches up. A node whose log moved past `lo` since `lo` was
/// taken can never show `[lo, end)` again: the check starts over from the new highest
/// start, so every node is still compared on one common range.
fn check_identical(c: &Cluster, end: u64) {
    let until = std::time::Instant::now() + common::DEADLINE;
    'again: loop {
        let lo = c.nodes.iter().map(lowest).max().unwrap_or(0);
        assert!(lo < end);
        let want: Vec<Vec<u8>> = (lo..end).map(value).collect();
        for n in &c.nodes {
            let got = match try_read_from(n, TOPIC, lo, end) {
                Ok(got) => got,
                Err(start) => {
                    assert!(
                        std::time::Instant::now() < until,
                        "retention kept moving the nodes' logs past [{lo}, {end})"
                    );
                    eprintln!(
                        "node {}: retention moved its log's start past {lo} to {start} \
                         meanwhile; checking again from the highest start",
                        n.id
                    );
                    continue 'again;
                }
            };
            assert_eq!(got.len(), want.len(), "node {} holds [{lo}, {end})", n.id);
            assert!(
                got == want,
                "node {}: records differ in [{lo}, {end})",
                n.id
            );
        }
        return;
    }
}

/// Node `n` shows its retained records up to `end` (from wherever retention has its log
/// start when it reads).
fn shows_up_to(n: &Node, end: u64) {
    let until = std::time::Instant::now() + common::DEADLINE;
    while try_read_from(n, TOPIC, lowest(n), end).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "node {}: retention kept moving its log's start",
            n.id
        );
    }
}

fn start(root: &std::path::Path) -> Cluster {
    start_with(root, 256 * 1024)
}

fn start_with(root: &std::path::Path, retention_bytes: u64) -> Cluster {
    let c = Cluster::start(root, 3, Duration::from_millis(100));
    for n in &c.nodes {
        futures_lite::future::block_on(n.handle.create_topic(
            TOPIC,
            1,
            topic_config(retention_bytes),
        ))
        .expect("create");
    }
    c
}

#[test]
fn a_follower_behind_retention_is_caught_up_by_a_streamed_snapshot() {
    let _one = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = start(tmp.path());
    let held = produce(&c, 0, 30);
    common::read_all(c.node(3), TOPIC, held);
    // About 2.5 MiB while node 3 is down: dozens of 64 KiB segments, retention keeping 256 KiB.
    let end = leave_node_3_behind(&mut c, held, 600, held);
    let l = leader(&c);
    let term = status(c.node(l), TOPIC).expect("status").term;
    c.restart(3);
    wait_until("node 3 installs a snapshot", || {
        snap(c.node(3), |s| &s.installed) >= 1
    });
    shows_up_to(c.node(3), end);
    assert!(lowest(c.node(3)) > held, "node 3's old log was replaced");
    check_identical(&c, end);
    let (n3, nl) = (c.node(3), c.node(l));
    assert!(snap(n3, |s| &s.received) >= 1);
    // More than one segment file.
    assert!(snap(n3, |s| &s.bytes_received) > 64 * 1024);
    wait_until("the leader hears the install", || {
        snap(nl, |s| &s.sent) >= 1
    });
    assert!(snap(nl, |s| &s.bytes_sent) >= snap(n3, |s| &s.bytes_received));
    assert_eq!(snap(n3, |s| &s.receive_failures), 0);
    // Heartbeats and appends went on their own connection: nobody campaigned meanwhile.
    for n in &c.nodes {
        let s = status(n, TOPIC).expect("status");
        assert_eq!(s.term, term, "node {} moved to another term", n.id);
    }
    // Node 3 takes new entries after the snapshot like the others.
    let end = produce(&c, end, end + 14);
    check_identical(&c, end);
    c.shutdown();
}

#[test]
fn heartbeats_keep_flowing_while_a_large_snapshot_streams() {
    let _one = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Retention keeps 2 MiB: the snapshot is about that large.
    let mut c = start_with(tmp.path(), 2 << 20);
    let held = produce(&c, 0, 30);
    common::read_all(c.node(3), TOPIC, held);
    let end = leave_node_3_behind(&mut c, held, 1100, held);
    let l = leader(&c);
    let term = status(c.node(l), TOPIC).expect("status").term;
    // 1 MiB/s: the transfer takes a couple of seconds, whatever the machine.
    const RATE: u64 = 1 << 20;
    for id in [1, 2] {
        c.node(id).peers.snapshots.set_rate_limit(RATE);
    }
    c.restart(3);
    wait_until("node 3 starts downloading", || {
        snap(c.node(3), |s| &s.bytes_received) > 0
    });
    let downloading = std::time::Instant::now();
    let frames = |c: &Cluster| {
        consensus::raft::transport::TransportStats::get(&c.node(3).peers.stats.frames_received)
    };
    let before = frames(&c);
    let mut during = 0;
    wait_until("node 3 installs the snapshot", || {
        if snap(c.node(3), |s| &s.installed) == 0 {
            during = frames(&c);
            // Node 3 knows its leader all along: no election timeout fired.
            let s = status(c.node(3), TOPIC).expect("status");
            assert_eq!(
                (s.leader, s.term),
                (Some(l), term),
                "node 3 lost its leader"
            );
            false
        } else {
            true
        }
    });
    let took = downloading.elapsed();
    let received = snap(c.node(3), |s| &s.bytes_received);
    assert!(received > 1 << 20, "a large snapshot");
    // The throttle held: the sender waits after each chunk until its bytes are due at the
    // rate, so the transfer cannot end sooner than its size at the rate; this side saw it
    // start at most two chunks (and a poll) late.
    let floor = (received.saturating_sub(2 * consensus::raft::snapshot_transfer::CHUNK_BYTES as u64)
        as f64
        / RATE as f64)
        - 0.1;
    println!("{received} bytes at {RATE} B/s in {took:?} (at least {floor:.2} s)");
    assert!(
        took.as_secs_f64() >= floor,
        "{received} bytes in {took:?} at {RATE} bytes/s"
    );
    assert!(
        during >= before + 3,
        "Raft frames kept arriving while the snapshot streamed ({before} then {during})"
    );
    check_identical(&c, end);
    for n in &c.nodes {
        assert_eq!(
            status(n, TOPIC).expect("status").term,
            term,
            "node {}",
            n.id
        );
    }
    c.shutdown();
}

#[test]
fn a_crash_during_a_transfer_or_install_recovers() {
    let _one = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = start(tmp.path());
    let held = produce(&c, 0, 30);
    common::read_all(c.node(3), TOPIC, held);
    let end = leave_node_3_behind(&mut c, held, 400, held);
    // A crash in the middle of an earlier download left a half-written temporary directory.
    let part = tmp.path().join("n3/topics").join(TOPIC).join("0");
    let staging = engine::log::staging_path(&part);
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::write(staging.join("00000000000000000000.log"), vec![0x5A; 10_000]).expect("write");
    c.restart(3);
    wait_until("node 3 installs a snapshot", || {
        snap(c.node(3), |s| &s.installed) >= 1
    });
    check_identical(&c, end);
    assert!(!staging.exists(), "no temporary directory is left");

    // Node 3 stopped again while (or right after) it downloads the next snapshot.
    let held = lowest(c.node(3)).max(end);
    let end = leave_node_3_behind(&mut c, end, end + 400, held);
    c.restart(3);
    wait_until("node 3 starts downloading", || {
        snap(c.node(3), |s| &s.bytes_received) > 0 || snap(c.node(3), |s| &s.installed) > 0
    });
    let cut_short = snap(c.node(3), |s| &s.installed) == 0;
    c.restart(3);
    eprintln!("node 3 stopped in the middle of a transfer: {cut_short}");
    wait_until("node 3 catches up after the crash", || {
        read_ok(c.node(3), end)
    });
    check_identical(&c, end);
    c.shutdown();
    assert!(!staging.exists(), "no temporary directory is left");
}

fn read_ok(n: &Node, end: u64) -> bool {
    futures_lite::future::block_on(n.handle.stats(TOPIC, 0)).is_ok_and(|s| s.next_offset >= end)
        && status(n, TOPIC).is_some_and(|s| s.applied_index > 0)
        && futures_lite::future::block_on(n.handle.read_range(TOPIC, 0, end - 1, 1, 1 << 20))
            .is_ok_and(|r| !r.is_empty())
}

#[test]
fn malformed_snapshot_frames_are_counted_and_close_the_connection() {
    let _one = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = start(tmp.path());
    let end = produce(&c, 0, 7);
    let target = c.node(1);
    let frame = |len: u32, body: &[u8]| {
        let mut f = vec![0x01];
        f.extend_from_slice(&len.to_le_bytes());
        f.push(SNAP_REQUEST);
        f.extend_from_slice(body);
        f
    };
    // A request of the wrong size.
    hostile(target.addr, &frame(5, &[1, 2, 3, 4]));
    // An oversized one (closed before its payload is read).
    hostile(target.addr, &frame(0x7FFF_FFFF, &[]));
    // The right size, for another node.
    let mut body = vec![0u8; 60];
    body[8..16].copy_from_slice(&99u64.to_le_bytes());
    hostile(target.addr, &frame(61, &body));
    assert_eq!(snap(target, |s| &s.malformed), 3);
    assert_eq!(snap(target, |s| &s.sent), 0);
    // The cluster serves on.
    let end = produce(&c, end, end + 7);
    check_identical(&c, end);
    c.shutdown();
}
