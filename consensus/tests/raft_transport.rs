//! The Raft transport over real sockets: three engines in one process, each a node with its
//! own data directory and a peer-channel listener on 127.0.0.1, replicate a partition with a
//! three-voter group (election, commit, followers' reads of committed records); a hostile
//! client's oversized and malformed frames close its connection and are counted, and the
//! cluster keeps committing; a stopped node is reported unreachable and the others go on.

use consensus::raft::seam::{engine_config, RaftFactory};
use consensus::raft::transport::{PeerAddr, Peers, RaftPeerHandler, TransportStats};
use consensus::raft::{GroupConfig, RaftReplication};
use engine::seam::{EncodedBatch, Error as SeamError, Factory, NodeRef, PartitionId};
use engine::{Engine, EngineConfig, EngineHandle, LogConfig, NewRecord};
use futures_lite::AsyncReadExt;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

const NODES: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    id: u64,
    engine: Option<Engine>,
    handle: EngineHandle,
    peers: Peers,
    addr: SocketAddr,
}

fn node_ref(id: u64) -> NodeRef {
    NodeRef {
        id: id.to_string(),
        addr: format!("node-{id}"),
    }
}

/// A peer-channel listener for `handler` on its own executor thread; returns its address.
fn listen(handler: RaftPeerHandler) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async move {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send addr");
            loop {
                let Ok(stream) = l.accept().await else {
                    continue;
                };
                let h = handler.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    let mut io = stream;
                    let mut mark = [0u8; 1];
                    if io.read_exact(&mut mark).await.is_err() || mark[0] != 0x01 {
                        return;
                    }
                    h.serve_conn(net::peer::PeerConn {
                        stream: Box::new(io.compat()),
                        peer,
                        tls: None,
                    })
                    .await;
                })
                .detach();
            }
        });
    });
    rx.recv().expect("listener address")
}

fn start_nodes(root: &std::path::Path) -> Vec<Node> {
    let config = GroupConfig::default();
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let peers = Peers::default();
        let replication = RaftReplication {
            hooks: Default::default(),
            node_id: id,
            voters: (1..=NODES).collect(),
            config: config.clone(),
            tick: Duration::from_millis(50),
            peers: peers.clone(),
        };
        let ec = EngineConfig {
            shards: 1,
            pin: false,
            ..EngineConfig::new(root.join(format!("n{id}")))
        };
        let engine = Engine::start(engine_config(ec, replication)).expect("start");
        let handle = engine.handle();
        let addr = listen(RaftPeerHandler {
            node_id: id,
            engine: handle.clone(),
            peers: peers.clone(),
        });
        nodes.push(Node {
            id,
            engine: Some(engine),
            handle,
            peers,
            addr,
        });
    }
    for n in &nodes {
        let mut book = n.peers.book.write().expect("book");
        for m in &nodes {
            if m.id != n.id {
                book.insert(
                    m.id,
                    PeerAddr {
                        addr: m.addr,
                        server_name: "127.0.0.1".into(),
                    },
                );
            }
        }
    }
    nodes
}

/// Appends `value` through whichever node leads, retrying until the deadline.
fn produce(nodes: &[Node], client: &std::path::Path, value: &str) -> u64 {
    let until = Instant::now() + DEADLINE;
    let id = PartitionId::new("t", 0);
    loop {
        for n in nodes.iter().filter(|n| n.engine.is_some()) {
            let factory = RaftFactory::new(n.handle.clone(), node_ref(n.id));
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
                    | SeamError::NoLeader
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

/// Sends `bytes` on a fresh peer connection to `addr` and waits for the server to close it.
fn hostile(addr: SocketAddr, bytes: &[u8]) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut buf = [0u8; 16];
    // The server closes: end of stream (or a reset).
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the server answered {n} bytes to a bad frame"),
    }
}

#[test]
fn three_nodes_replicate_over_the_peer_channel() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_nodes(tmp.path());
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
    let mut wrong_kind = vec![0x01];
    wrong_kind.extend_from_slice(&1u32.to_le_bytes());
    wrong_kind.push(0x3F);
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
