//! Three engines in one process, each a Raft node with its own data directory and a
//! peer-channel listener on 127.0.0.1 (the server's own router: Raft frames and forwarded
//! appends), replicating partitions with a static three-voter group. Shared by the
//! consensus-level tests of the transport, forwarding and follower reads.
//!
//! A node can be killed ([`Node::kill`]): its engine stops and its listener drops every
//! connection and refuses new ones, as a process killed with -9 would.

#![allow(dead_code)]

use consensus::raft::seam::{engine_config, RaftFactory};
use consensus::raft::transport::{PeerAddr, PeerRouter, Peers, RaftPeerHandler};
use consensus::raft::{GroupConfig, RaftReplication};
use engine::seam::{Factory, NodeRef};
use engine::{Engine, EngineConfig, EngineHandle};
use futures_lite::AsyncReadExt;
use net::peer::PeerHandler;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

pub const DEADLINE: Duration = Duration::from_secs(60);

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by each multi-node test for its whole run: clusters of one test binary run one at a
/// time (the machine has few cores; test binaries already run one after another).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct Node {
    pub id: u64,
    pub engine: Option<Engine>,
    pub handle: EngineHandle,
    pub peers: Peers,
    pub addr: SocketAddr,
    /// Set when the node is killed: its listener drops its connections.
    pub killed: Arc<AtomicBool>,
}

impl Node {
    /// The Raft seam of this node, as its server builds it.
    pub fn factory(&self) -> RaftFactory {
        RaftFactory::new(self.handle.clone(), node_ref(self.id))
            .with_peers(self.id, self.peers.clone())
    }

    /// Stops the engine and drops every peer connection, at once.
    pub fn kill(&mut self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Some(e) = self.engine.take() {
            e.shutdown();
        }
    }

    pub fn is_alive(&self) -> bool {
        self.engine.is_some()
    }
}

pub fn node_ref(id: u64) -> NodeRef {
    NodeRef {
        id: id.to_string(),
        addr: format!("node-{id}"),
    }
}

/// A peer-channel listener for `router` on its own executor thread; returns its address.
/// Once `killed` is set, its connections end and new ones are closed unread.
fn listen(router: PeerRouter, killed: Arc<AtomicBool>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async move {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send addr");
            loop {
                // Killed: the listener closes, so connecting is refused, as to a dead process.
                let dead = async {
                    while !killed.load(Ordering::SeqCst) {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    None
                };
                let accepted = futures_lite::future::or(async { Some(l.accept().await) }, dead);
                let stream = match accepted.await {
                    None => return,
                    Some(Ok(s)) => s,
                    Some(Err(_)) => continue,
                };
                let (r, killed) = (router.clone(), Arc::clone(&killed));
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    let mut io = stream;
                    let mut mark = [0u8; 1];
                    if io.read_exact(&mut mark).await.is_err() || mark[0] != 0x01 {
                        return;
                    }
                    let serve = r.serve(net::peer::PeerConn {
                        stream: Box::new(io.compat()),
                        peer,
                        tls: None,
                    });
                    let dead = async {
                        while !killed.load(Ordering::SeqCst) {
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    futures_lite::future::or(serve, dead).await;
                })
                .detach();
            }
        });
    });
    rx.recv().expect("listener address")
}

/// `n` nodes (Raft ids 1..=n), every group of them a group of all `n` voters, each node's
/// address book filled with the others.
pub fn start_nodes(root: &std::path::Path, n: u64) -> Vec<Node> {
    let config = GroupConfig::default();
    let mut nodes = Vec::new();
    for id in 1..=n {
        let peers = Peers::default();
        let replication = RaftReplication {
            hooks: Default::default(),
            node_id: id,
            voters: (1..=n).collect(),
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
        let killed = Arc::new(AtomicBool::new(false));
        let addr = listen(
            PeerRouter {
                raft: RaftPeerHandler {
                    node_id: id,
                    engine: handle.clone(),
                    peers: peers.clone(),
                },
                keys: None,
                join: None,
            },
            Arc::clone(&killed),
        );
        nodes.push(Node {
            id,
            engine: Some(engine),
            handle,
            peers,
            addr,
            killed,
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

/// Runs `f` with node `n`'s seam on an executor of its own (a client's core).
pub fn with_seam<T, F, Fut>(n: &Node, client: &std::path::Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(engine::seam::Seam) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let factory = n.factory();
    engine::run_local(client, move || async move { f(factory.build()).await })
        .expect("client executor")
}

/// The node that leads partition `topic/partition`, once one does.
pub fn leader_of(nodes: &[Node], topic: &str, partition: u32) -> u64 {
    let until = Instant::now() + DEADLINE;
    loop {
        for n in nodes.iter().filter(|n| n.is_alive()) {
            let local = n.handle.seam_factory(node_ref(n.id)).local();
            let id = engine::seam::PartitionId::new(topic, partition);
            let s = futures_lite::future::block_on(local.replica_status(&id));
            if let Ok(Some(s)) = s {
                if s.is_leader {
                    return n.id;
                }
            }
        }
        assert!(
            Instant::now() < until,
            "no leader of {topic}/{partition} in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stat(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Sends `bytes` on a fresh connection to `addr` and waits for the server to close it,
/// failing if it answers anything.
pub fn hostile(addr: SocketAddr, bytes: &[u8]) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(bytes).expect("write");
    // Nothing more comes: a frame cut short ends here.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 16];
    // The server closes: end of stream (or a reset).
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the server answered {n} bytes to a bad frame"),
    }
}

/// A peer-channel frame (after the `0x01` mark): u32 LE length of kind + payload, kind,
/// payload.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x01];
    v.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

pub fn shutdown_all(nodes: &mut [Node]) {
    for n in nodes {
        n.kill();
    }
}
