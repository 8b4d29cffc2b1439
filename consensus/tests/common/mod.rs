//! Three (or more) engines in one process, each a Raft node with its own data directory and a
//! peer-channel listener on 127.0.0.1 (the server's own router: Raft frames, forwarded
//! appends and reads, snapshot transfers), with a static voter set: what the consensus-level
//! tests over real sockets share (the transport, forwarding and follower reads, snapshots).
//! Kept small: start, stop, kill and restart nodes, produce through whichever node leads, a
//! node's seam as its server builds it, read a node's records, a node's Raft status, a
//! hostile connection.
//!
//! A node can be stopped ([`Cluster::stop`]: its engine stops, its listener stays and counts
//! what it can no longer deliver) or killed ([`Node::kill`]: its listener also drops every
//! connection and refuses new ones, as a process killed with -9 would).

#![allow(dead_code)]

use consensus::raft::replica::Hooks;
use consensus::raft::seam::{engine_config, RaftFactory};
use consensus::raft::transport::{PeerAddr, PeerRouter, Peers, RaftPeerHandler};
use consensus::raft::{GroupConfig, RaftReplication};
use engine::seam::{EncodedBatch, Error as SeamError, Factory, NodeRef, PartitionId};
use engine::shard::ReplicaStatus;
use engine::{Engine, EngineConfig, EngineHandle, NewRecord};
use event_listener::Event;
use futures_lite::AsyncReadExt;
use net::peer::PeerHandler;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Holds the multi-node tests of the test binary (all of tests/) to one at a time (each runs
/// three engines; the machine may have 2 cores). Take it first thing in the test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long any wait for a condition may take (generous: a loaded 2-core machine).
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Node {
    pub id: u64,
    pub engine: Option<Engine>,
    pub handle: EngineHandle,
    pub peers: Peers,
    pub addr: SocketAddr,
    /// Set to close the node's listener and every connection it serves.
    closed: Arc<(AtomicBool, Event)>,
}

impl Node {
    /// The Raft seam of this node, as its server builds it (appends for partitions led
    /// elsewhere are forwarded).
    pub fn factory(&self) -> RaftFactory {
        RaftFactory::new(self.handle.clone(), node_ref(self.id))
            .with_peers(self.id, self.peers.clone())
    }

    /// Stops the engine and drops every peer connection, at once.
    pub fn kill(&mut self) {
        self.close();
        if let Some(e) = self.engine.take() {
            e.shutdown();
        }
    }

    /// Closes the listener and every connection it serves.
    fn close(&self) {
        self.closed.0.store(true, Ordering::Release);
        self.closed.1.notify(usize::MAX);
    }

    pub fn is_alive(&self) -> bool {
        self.engine.is_some()
    }
}

/// Builds the cluster layer's hooks of node `id` over its transport state (each start of the
/// node builds new ones, as a new process does).
pub type HooksFactory = Arc<dyn Fn(u64, &Peers) -> Hooks + Send + Sync>;

/// A cluster of nodes `1..=n`, every group with all of them as voters.
pub struct Cluster {
    pub root: PathBuf,
    pub nodes: Vec<Node>,
    pub voters: Vec<u64>,
    /// How often each shard applies retention.
    pub retention_check: Duration,
    /// The cluster layer's hooks (none: no controller).
    pub hooks: Option<HooksFactory>,
}

pub fn node_ref(id: u64) -> NodeRef {
    NodeRef {
        id: id.to_string(),
        addr: format!("node-{id}"),
    }
}

/// Waits until `closed` is set.
async fn until_closed(closed: &(AtomicBool, Event)) {
    loop {
        let l = closed.1.listen();
        if closed.0.load(Ordering::Acquire) {
            return;
        }
        l.await;
    }
}

/// A peer-channel listener for `router` on its own executor thread, until `closed` is set
/// (then it stops accepting, so connecting is refused as to a dead process, and drops every
/// connection); returns its address.
fn listen(router: PeerRouter, closed: Arc<(AtomicBool, Event)>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async move {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send addr");
            loop {
                let accepted = futures_lite::future::or(async { Some(l.accept().await) }, async {
                    until_closed(&closed).await;
                    None
                })
                .await;
                let Some(accepted) = accepted else {
                    return;
                };
                let Ok(stream) = accepted else {
                    continue;
                };
                let r = router.clone();
                let closed = Arc::clone(&closed);
                glommio::spawn_local(futures_lite::future::or(
                    until_closed_unit(closed),
                    async move {
                        let peer = stream.peer_addr().ok();
                        let mut io = stream;
                        let mut mark = [0u8; 1];
                        if io.read_exact(&mut mark).await.is_err() || mark[0] != 0x01 {
                            return;
                        }
                        r.serve(net::peer::PeerConn {
                            stream: Box::new(io.compat()),
                            peer,
                            tls: None,
                        })
                        .await;
                    },
                ))
                .detach();
            }
        });
    });
    rx.recv().expect("listener address")
}

async fn until_closed_unit(closed: Arc<(AtomicBool, Event)>) {
    until_closed(&closed).await
}

impl Cluster {
    /// Starts nodes `1..=n` under `root`, each with one shard.
    pub fn start(root: &Path, n: u64, retention_check: Duration) -> Cluster {
        Self::start_with(root, n, retention_check, None)
    }

    /// [`start`](Self::start), each node with the hooks `hooks` builds.
    pub fn start_with(
        root: &Path,
        n: u64,
        retention_check: Duration,
        hooks: Option<HooksFactory>,
    ) -> Cluster {
        // RUST_LOG=info shows the nodes' logs.
        let _ = env_logger::builder().is_test(true).try_init();
        let mut c = Cluster {
            root: root.to_owned(),
            nodes: Vec::new(),
            voters: (1..=n).collect(),
            retention_check,
            hooks,
        };
        for id in 1..=n {
            let node = c.start_node(id);
            c.nodes.push(node);
        }
        c.fill_books();
        c
    }

    fn start_node(&self, id: u64) -> Node {
        let peers = Peers::default();
        let replication = RaftReplication {
            node_id: id,
            voters: self.voters.clone(),
            config: GroupConfig::default(),
            tick: Duration::from_millis(50),
            peers: peers.clone(),
            hooks: self
                .hooks
                .as_ref()
                .map(|f| f(id, &peers))
                .unwrap_or_default(),
        };
        let ec = EngineConfig {
            shards: 1,
            pin: false,
            retention_check: self.retention_check,
            ..EngineConfig::new(self.root.join(format!("n{id}")))
        };
        let engine = Engine::start(engine_config(ec, replication)).expect("start");
        let handle = engine.handle();
        let closed = Arc::new((AtomicBool::new(false), Event::new()));
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
            Arc::clone(&closed),
        );
        Node {
            id,
            engine: Some(engine),
            handle,
            peers,
            addr,
            closed,
        }
    }

    /// Every node's address book lists every other node.
    fn fill_books(&self) {
        for n in &self.nodes {
            let mut book = n.peers.book.write().expect("book");
            book.clear();
            for m in &self.nodes {
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
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Shuts node `id` down (its listener stays, and counts what it can no longer deliver).
    pub fn stop(&mut self, id: u64) {
        if let Some(e) = self.nodes[(id - 1) as usize].engine.take() {
            e.shutdown();
        }
    }

    /// Starts node `id` again on its data directory, with a new listener that every address
    /// book learns.
    pub fn restart(&mut self, id: u64) {
        // As a process that exits: its listener and connections close.
        self.nodes[(id - 1) as usize].kill();
        let node = self.start_node(id);
        self.nodes[(id - 1) as usize] = node;
        self.fill_books();
    }

    pub fn shutdown(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id);
        }
    }

    /// Appends `value` to `topic`/0 through whichever running node leads, retrying until the
    /// deadline; returns its offset.
    pub fn produce(&self, topic: &str, value: &[u8]) -> u64 {
        self.produce_batch(topic, &[value.to_vec()])
    }

    /// Appends `values` as one batch (see [`produce`](Self::produce)); returns the first
    /// one's offset.
    pub fn produce_batch(&self, topic: &str, values: &[Vec<u8>]) -> u64 {
        let until = Instant::now() + DEADLINE;
        let id = PartitionId::new(topic, 0);
        let client = self.root.join("client");
        loop {
            for n in self.nodes.iter().filter(|n| n.engine.is_some()) {
                // Without its peers: a follower refuses (it cannot reach the leader to
                // forward, and says so before sending anything) rather than forwards; these
                // tests are about replication, forwarding has tests of its own.
                let factory = RaftFactory::new(n.handle.clone(), node_ref(n.id))
                    .with_peers(n.id, Peers::default());
                let records: Vec<NewRecord> =
                    values.iter().map(|v| NewRecord::new(v.clone())).collect();
                let batch = EncodedBatch::encode(&records).expect("enc");
                let id = id.clone();
                let r = engine::run_local(&client, move || async move {
                    factory.build().partitions.append(&id, batch).await
                })
                .expect("client executor");
                match r {
                    Ok(a) => return a.base_offset,
                    Err(
                        SeamError::NotLeader { .. }
                        | SeamError::NoLeader(_)
                        | SeamError::Unavailable(_)
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
}

/// `n` nodes (Raft ids 1..=n), every group of them a group of all `n` voters, each node's
/// address book filled with the others.
pub fn start_nodes(root: &Path, n: u64) -> Vec<Node> {
    let retention_check = EngineConfig::new(root.join("n1")).retention_check;
    Cluster::start(root, n, retention_check).nodes
}

/// Runs `f` with node `n`'s seam on an executor of its own (a client's core).
pub fn with_seam<T, F, Fut>(n: &Node, client: &Path, f: F) -> T
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
            let id = PartitionId::new(topic, partition);
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

/// One look at node `n`'s records of `topic`/0 in `[from, end)`.
enum Shown {
    /// All of them.
    All(Vec<Vec<u8>>),
    /// Not (yet) all: what the last read answered.
    NotYet(String),
    /// Retention removed some: the log starts at `.0`, past the range's next offset.
    Gone(u64),
}

fn show(n: &Node, topic: &str, from: u64, end: u64) -> Shown {
    let mut out = Vec::new();
    let mut at = from;
    while at < end {
        let got =
            futures_lite::future::block_on(n.handle.read_range(topic, 0, at, 10_000, 4 << 20));
        match got {
            Ok(rs) if !rs.is_empty() => {
                for r in rs {
                    at = r.offset + 1;
                    out.push(r.value.to_vec());
                }
            }
            Ok(_) => return Shown::NotYet(format!("nothing at {at}")),
            Err(e) => {
                let lowest = futures_lite::future::block_on(n.handle.stats(topic, 0))
                    .map(|s| s.lowest_offset)
                    .unwrap_or(0);
                if lowest > at {
                    return Shown::Gone(lowest);
                }
                return Shown::NotYet(format!("at {at}: {e}"));
            }
        }
    }
    Shown::All(out)
}

/// Panics at the deadline, saying what node `n` last showed of `[from, end)`.
fn shown_in_time(n: &Node, topic: &str, from: u64, end: u64, until: Instant, last: &str) {
    if Instant::now() < until {
        return;
    }
    let stats = futures_lite::future::block_on(n.handle.stats(topic, 0));
    panic!(
        "node {} did not show offsets [{from}, {end}) of {topic} in time (last read {last}; \
         its log: {stats:?}; Raft: {:?})",
        n.id,
        status(n, topic)
    );
}

/// Node `n`'s records of `topic`/0 from `from`, once it shows at least up to offset `end`
/// (waiting until the deadline).
pub fn read_from(n: &Node, topic: &str, from: u64, end: u64) -> Vec<Vec<u8>> {
    let until = Instant::now() + DEADLINE;
    loop {
        let last = match show(n, topic, from, end) {
            Shown::All(out) => return out,
            Shown::NotYet(last) => last,
            Shown::Gone(lowest) => format!("the log starts at {lowest}"),
        };
        shown_in_time(n, topic, from, end, until, &last);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`read_from`], except that it returns `Err(lowest)` at once when retention removed
/// offsets of the range (the node's log starts at `lowest`, past them), rather than waiting
/// for records that are gone: for callers that pick `from` among retained starts that
/// retention may still move.
pub fn try_read_from(n: &Node, topic: &str, from: u64, end: u64) -> Result<Vec<Vec<u8>>, u64> {
    let until = Instant::now() + DEADLINE;
    loop {
        match show(n, topic, from, end) {
            Shown::All(out) => return Ok(out),
            Shown::Gone(lowest) => return Err(lowest),
            Shown::NotYet(last) => shown_in_time(n, topic, from, end, until, &last),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Node `n`'s records of `topic`/0 from offset 0, once it shows `want` of them.
pub fn read_all(n: &Node, topic: &str, want: u64) -> Vec<Vec<u8>> {
    read_from(n, topic, 0, want)
}

/// Node `n`'s Raft status of `topic`/0.
pub fn status(n: &Node, topic: &str) -> Option<ReplicaStatus> {
    let id = PartitionId::new(topic, 0);
    let shard = n.handle.shard_of(topic, 0);
    futures_lite::future::block_on(n.handle.on_shard(shard, move |ctx| async move {
        Ok(ctx.replicator().and_then(|r| r.status(&id)))
    }))
    .ok()
    .flatten()
}

/// Waits until `cond` holds, or fails with `what` at the deadline.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not in time");
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

/// A small volume to fill up (`engine::testkit`).
pub use engine::testkit::Tmpfs;
