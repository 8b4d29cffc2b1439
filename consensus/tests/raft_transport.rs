//! The Raft transport over real sockets: three engines in one process, each a node with its
//! own data directory and a peer-channel listener on 127.0.0.1, replicate a partition with a
//! three-voter group (election, commit, followers' reads of committed records); a hostile
//! client's oversized and malformed frames close its connection and are counted, and the
//! cluster keeps committing; a stopped node is reported unreachable and the others go on.

use crate::common;

use common::{hostile, read_all, Cluster};
use consensus::raft::transport::TransportStats;
use engine::LogConfig;
use std::time::Duration;

fn stat(s: &TransportStats, f: impl Fn(&TransportStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    TransportStats::get(f(s))
}

#[test]
fn three_nodes_replicate_over_the_peer_channel() {
    // One multi-node test of the binary at a time (`common::serial`).
    let _one = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(tmp.path(), 3, Duration::from_secs(30));
    // Members of one cluster: each connection's first frame says so, and is accepted.
    for n in &c.nodes {
        n.peers.cluster_id.set("c1".into()).expect("not set yet");
    }
    for n in &c.nodes {
        futures_lite::future::block_on(n.handle.create_topic("t", 1, LogConfig::default()))
            .expect("create");
    }
    let mut want = Vec::new();
    for i in 0..20 {
        let v = format!("v{i}");
        let off = c.produce("t", v.as_bytes());
        assert_eq!(off, i as u64, "offsets are dense");
        want.push(v.into_bytes());
    }
    for n in &c.nodes {
        assert_eq!(read_all(n, "t", want.len() as u64), want, "node {}", n.id);
    }
    let sent: u64 = c
        .nodes
        .iter()
        .map(|n| stat(&n.peers.stats, |s| &s.frames_sent))
        .sum();
    assert!(sent > 0, "frames went over the sockets");

    // Hostile frames on node 1's peer channel: each closes its connection and is counted.
    let target = &c.nodes[0];
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
    // A node of another cluster (its ids and groups may equal this one's): its first frame
    // says so, the connection is closed and counted, and the message behind it (a heartbeat
    // of a term far ahead, which would make node 1 follow another leader) is not stepped.
    let group = consensus::raft::replica::group_id(&engine::seam::PartitionId::new("t", 0), 0);
    let hello = proto::proglog::raft::v1::RaftFrame {
        from: 2,
        to: 1,
        cluster_id: "c2".into(),
        ..Default::default()
    };
    const FAR: u64 = 1 << 40;
    let heartbeat = proto::proglog::raft::v1::RaftFrame {
        from: 2,
        to: 1,
        heartbeats: vec![proto::proglog::raft::v1::Heartbeat {
            group,
            term: FAR,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut foreign = common::frame(0x20, &prost::Message::encode_to_vec(&hello));
    foreign
        .extend_from_slice(&common::frame(0x20, &prost::Message::encode_to_vec(&heartbeat))[1..]);
    hostile(target.addr, &foreign);
    assert_eq!(stat(s, |s| &s.foreign), 1);
    assert_eq!(stat(s, |s| &s.malformed), 2);

    // The cluster keeps committing.
    for i in 20..25 {
        let v = format!("v{i}");
        assert_eq!(c.produce("t", v.as_bytes()), i as u64);
        want.push(v.into_bytes());
    }
    for n in &c.nodes {
        assert_eq!(read_all(n, "t", want.len() as u64), want, "node {}", n.id);
    }
    let term = target.peers.board.get(group).map(|v| v.term);
    assert!(term.is_some_and(|t| t < FAR), "node 1's term {term:?}");

    // One node stops: the others still form a majority, and report it unreachable.
    c.stop(3);
    for i in 25..30 {
        let v = format!("v{i}");
        assert_eq!(c.produce("t", v.as_bytes()), i as u64);
        want.push(v.into_bytes());
    }
    for n in &c.nodes[..2] {
        assert_eq!(read_all(n, "t", want.len() as u64), want, "node {}", n.id);
    }
    // Its listener still reads what the leader sends it, and counts it undeliverable.
    assert!(stat(&c.nodes[2].peers.stats, |s| &s.undeliverable) > 0);
    c.shutdown();
}
