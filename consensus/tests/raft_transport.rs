//! The Raft transport over real sockets: three engines in one process, each a node with its
//! own data directory and a peer-channel listener on 127.0.0.1, replicate a partition with a
//! three-voter group (election, commit, followers' reads of committed records); a hostile
//! client's oversized and malformed frames close its connection and are counted, and the
//! cluster keeps committing; a stopped node is reported unreachable and the others go on.

mod common;

use common::{hostile, start_nodes, Node, DEADLINE};
use consensus::raft::seam::RaftFactory;
use consensus::raft::transport::TransportStats;
use engine::seam::{EncodedBatch, Error as SeamError, Factory, PartitionId};
use engine::{LogConfig, NewRecord};
use std::time::{Duration, Instant};

const NODES: u64 = 3;

/// Appends `value` through whichever node leads, retrying until the deadline.
fn produce(nodes: &[Node], client: &std::path::Path, value: &str) -> u64 {
    let until = Instant::now() + DEADLINE;
    let id = PartitionId::new("t", 0);
    loop {
        for n in nodes.iter().filter(|n| n.engine.is_some()) {
            // Without its peers: a follower refuses rather than forwards (this test is about
            // the transport; forwarding has tests of its own).
            let factory = RaftFactory::new(n.handle.clone(), common::node_ref(n.id));
            let batch =
                EncodedBatch::encode(&[NewRecord::new(value.as_bytes().to_vec())]).expect("enc");
            let id = id.clone();
            let r = engine::run_local(client, move || async move {
                factory.build().partitions.append(&id, batch).await
            })
            .expect("client executor");
            match r {
                Ok(a) => return a.base_offset,
                Err(
                    SeamError::NotLeader { .. }
                    | SeamError::NoLeader(_)
                    | SeamError::OutcomeUnknown(_)
                    | SeamError::Overloaded { .. },
                ) => {}
                Err(e) => panic!("append on node {}: {e}", n.id),
            }
        }
        assert!(Instant::now() < until, "no node took the append in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until node `n` shows `want` records of t/0 and returns them.
fn read_all(n: &Node, want: usize) -> Vec<Vec<u8>> {
    let until = Instant::now() + DEADLINE;
    loop {
        let got = futures_lite::future::block_on(n.handle.read_range("t", 0, 0, 10_000, 1 << 20));
        if let Ok(rs) = got {
            if rs.len() >= want {
                return rs.into_iter().map(|r| r.value.to_vec()).collect();
            }
        }
        assert!(
            Instant::now() < until,
            "node {} did not show {want} records in time",
            n.id
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stat(s: &TransportStats, f: impl Fn(&TransportStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    TransportStats::get(f(s))
}

#[test]
fn three_nodes_replicate_over_the_peer_channel() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_nodes(tmp.path(), NODES);
    let client = tmp.path().join("client");
    for n in &nodes {
        futures_lite::future::block_on(n.handle.create_topic("t", 1, LogConfig::default()))
            .expect("create");
    }
    let mut want = Vec::new();
    for i in 0..20 {
        let v = format!("v{i}");
        let off = produce(&nodes, &client, &v);
        assert_eq!(off, i as u64, "offsets are dense");
        want.push(v.into_bytes());
    }
    for n in &nodes {
        assert_eq!(read_all(n, want.len()), want, "node {}", n.id);
    }
    let sent: u64 = nodes
        .iter()
        .map(|n| stat(&n.peers.stats, |s| &s.frames_sent))
        .sum();
    assert!(sent > 0, "frames went over the sockets");

    // Hostile frames on node 1's peer channel: each closes its connection and is counted.
    let target = &nodes[0];
    let mut oversized = vec![0x01];
    oversized.extend_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    oversized.push(0x20);
    hostile(target.addr, &oversized);
    let mut garbage = vec![0x01];
    garbage.extend_from_slice(&5u32.to_le_bytes());
    garbage.extend_from_slice(&[0x20, 0xFF, 0xFF, 0xFF, 0xFF]);
    hostile(target.addr, &garbage);
    // A good (empty) Raft frame, then one of a kind no Raft connection carries.
    let good = proto::proglog::raft::v1::RaftFrame {
        from: 2,
        to: 1,
        ..Default::default()
    };
    let mut wrong_kind = common::frame(0x20, &prost::Message::encode_to_vec(&good));
    wrong_kind.extend_from_slice(&common::frame(0x3F, &[])[1..]);
    hostile(target.addr, &wrong_kind);
    let s = &target.peers.stats;
    assert_eq!(stat(s, |s| &s.oversized), 1);
    assert_eq!(stat(s, |s| &s.malformed), 2);

    // The cluster keeps committing.
    for i in 20..25 {
        let v = format!("v{i}");
        assert_eq!(produce(&nodes, &client, &v), i as u64);
        want.push(v.into_bytes());
    }
    for n in &nodes {
        assert_eq!(read_all(n, want.len()), want, "node {}", n.id);
    }

    // One node stops: the others still form a majority, and report it unreachable.
    if let Some(e) = nodes[2].engine.take() {
        e.shutdown();
    }
    for i in 25..30 {
        let v = format!("v{i}");
        assert_eq!(produce(&nodes, &client, &v), i as u64);
        want.push(v.into_bytes());
    }
    for n in &nodes[..2] {
        assert_eq!(read_all(n, want.len()), want, "node {}", n.id);
    }
    // Its listener still reads what the leader sends it, and counts it undeliverable.
    assert!(stat(&nodes[2].peers.stats, |s| &s.undeliverable) > 0);
    for n in &mut nodes {
        if let Some(e) = n.engine.take() {
            e.shutdown();
        }
    }
}
