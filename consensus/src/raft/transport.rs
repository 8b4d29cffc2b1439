//! The Raft transport over the peer channel (`net::peer`: the `0x01` mark on the RPC port,
//! mutual TLS with peer certificates when configured, length-prefixed typed frames).
//!
//! Sending ([`Links`], one per shard, the set's [`Transport`]): a Ready round hands over one
//! encoded `RaftFrame` per destination node (the set coalesces every group's messages and
//! merges heartbeats). Each destination has a bounded queue ([`QUEUE_FRAMES`]) and one task
//! that connects, writes the queued frames (kind [`RAFT_FRAME`]; small ones together, in one
//! write: [`COALESCE_BYTES`]) and, when the connection
//! fails or cannot be made, drops what is queued, reports the node unreachable (the driver
//! tells every leader, which probes it again rather than stream to it) and reconnects with
//! exponential backoff (50 ms to 2 s). A full queue drops the frame and reports the node
//! unreachable as well: Raft sends again, nothing waits. Each shard has its own connection to
//! each node it sends to (the groups of one shard talk to one node over one connection).
//!
//! Receiving ([`RaftPeerHandler`], the peer channel's handler for Raft connections): frames
//! are read up to [`MAX_FRAME_BYTES`] through a small buffer ([`READ_BUFFER_BYTES`]), each
//! payload into memory of its own that the decoded entries keep slices of; an oversized, truncated or empty frame, a frame of
//! another kind, one that does not decode, or one addressed to another node closes the
//! connection and is counted ([`TransportStats`]); a message raft-rs would panic on is refused
//! before it is stepped ([`peer_check`](super::peer_check)); nothing a peer sends panics. A decoded frame
//! is split by group among the shards owning the groups ([`GroupDirectory`]) and delivered to
//! each as a typed shard message (`EngineHandle::deliver`); frames for groups this node does
//! not hold are counted and dropped. A connection's first frame says which cluster the sender
//! belongs to (once it knows); a frame naming another cluster than this node's closes the
//! connection, counted ([`Peers::other_cluster`]). Without peer TLS, connections are accepted only from the
//! IP addresses of known members (the address book): that is no security boundary (anyone on
//! such an address can send frames), which is what peer TLS is for.
//!
//! Snapshots travel on connections of their own (`snapshot_transfer`, frame kinds
//! `0x30`-`0x35`): a connection whose first frame is a snapshot request is handed to it.

use super::group::Transport;
use super::wire;
use engine::EngineHandle;
use event_listener::Event;
use net::peer::{self, PeerConn, PeerHandler, PeerTls};
use proto::proglog::raft::v1::RaftFrame;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Why a Raft connection is closed after a frame.
#[derive(Debug)]
enum Refusal {
    /// The frame is not one a member sends.
    Malformed(String),
    /// The sender belongs to another cluster ([`Peers::other_cluster`]).
    Foreign(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) | Refusal::Foreign(why) => f.write_str(why),
        }
    }
}

/// The peer channel's frame kind of a Raft frame (an encoded `RaftFrame`).
pub const RAFT_FRAME: u8 = peer::kind::RAFT_FIRST;

/// The largest Raft frame read (kind + payload): a round's messages to one node, bounded by
/// raft-rs's `max_size_per_msg` per group message.
pub const MAX_FRAME_BYTES: usize = 32 << 20;

/// Frames smaller than this are copied into one buffer with the other small frames queued
/// behind them and written together; larger ones are written in place.
const COALESCE_BYTES: usize = 64 << 10;

/// A receiving connection's read buffer: frame headers and small frames come out of it, so a
/// frame costs no receive call of its own; a large payload is read past it.
const READ_BUFFER_BYTES: usize = 16 << 10;

/// Frames queued per destination before new ones are dropped.
pub const QUEUE_FRAMES: usize = 256;

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a node's peer channel is, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub server_name: String,
}

/// Counters of a node's Raft transport (all shards).
#[derive(Debug, Default)]
pub struct TransportStats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Frames dropped: queue full, no address, or a connection that failed with them queued.
    pub frames_dropped: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Connections closed for a frame over the maximum.
    pub oversized: AtomicU64,
    /// Connections closed for a malformed frame (truncated, empty, wrong kind, undecodable,
    /// addressed to another node).
    pub malformed: AtomicU64,
    /// Connections refused: no peer TLS and not from a known member's address.
    pub refused: AtomicU64,
    /// Connections closed for coming from a node of another cluster (its first frame said so).
    pub foreign: AtomicU64,
    /// Messages for groups this node does not hold, or whose shard was overloaded.
    pub undeliverable: AtomicU64,
}

impl TransportStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Which shard holds each group of this node (kept by the shards as they open and close
/// groups; read by the receiving side for every frame).
#[derive(Debug, Default)]
pub struct GroupDirectory {
    groups: RwLock<HashMap<u64, usize>>,
}

impl GroupDirectory {
    pub fn insert(&self, group: u64, shard: usize) {
        if let Ok(mut g) = self.groups.write() {
            g.insert(group, shard);
        }
    }

    pub fn remove(&self, group: u64) {
        if let Ok(mut g) = self.groups.write() {
            g.remove(&group);
        }
    }

    pub fn shard_of(&self, group: u64) -> Option<usize> {
        self.groups.read().ok()?.get(&group).copied()
    }
}

/// What every shard's transport of one node shares.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Raft node id -> where it listens.
    pub book: Arc<RwLock<HashMap<u64, PeerAddr>>>,
    pub tls: Option<PeerTls>,
    pub stats: Arc<TransportStats>,
    pub directory: Arc<GroupDirectory>,
    /// Every group's state as the shards last published it.
    pub board: Arc<super::board::Board>,
    /// This node's Raft id once known (0 until a joining node is given one).
    pub self_id: Arc<AtomicU64>,
    /// Produce forwarding's and follower reads' counters (`super::forward`).
    pub forward: Arc<super::forward::ForwardStats>,
    /// Snapshot transfers' counters and limits.
    pub snapshots: Arc<super::snapshot_transfer::SnapshotShared>,
    /// This node's cluster id once known (cluster.meta, or the join's answer): said to
    /// every peer this node connects to, and compared with what peers say.
    pub cluster_id: Arc<std::sync::OnceLock<String>>,
}

impl Peers {
    /// This node's cluster id, empty until known.
    pub fn cluster_id(&self) -> &str {
        self.cluster_id.get().map_or("", String::as_str)
    }

    /// Why a peer that says it belongs to cluster `theirs` is of another cluster than this
    /// node, if it is: Raft ids, group ids and topics' incarnations repeat from one cluster
    /// to the next (a node wiped and started as a new cluster's node 1 at its old address
    /// gets its old cluster's traffic), so the two must exchange no Raft message, append or
    /// read. An empty id (a node that does not know its cluster yet, or predates the field)
    /// is not checked.
    pub fn other_cluster(&self, theirs: &str) -> Option<String> {
        let ours = self.cluster_id();
        (!theirs.is_empty() && !ours.is_empty() && theirs != ours)
            .then(|| format!("the peer belongs to cluster {theirs}, this node to cluster {ours}"))
    }

    /// Where node `node` listens, if the address book knows it.
    pub fn addr_of(&self, node: u64) -> Option<PeerAddr> {
        self.book.read().ok()?.get(&node).cloned()
    }

    pub(crate) fn knows_ip(&self, ip: std::net::IpAddr) -> bool {
        // Connections between members on one host's loopback come from 127.0.0.1 whatever
        // 127.0.0.x the sender listens on: any loopback member vouches for loopback.
        self.book
            .read()
            .map(|b| {
                b.values()
                    .any(|p| p.addr.ip() == ip || (ip.is_loopback() && p.addr.ip().is_loopback()))
            })
            .unwrap_or(false)
    }
}

/// One destination's queue.
struct Link {
    queue: RefCell<VecDeque<Vec<u8>>>,
    wake: Event,
}

/// A shard's sending side: the set's [`Transport`].
pub struct Links {
    peers: Peers,
    links: RefCell<HashMap<u64, Rc<Link>>>,
    unreachable: Rc<RefCell<BTreeSet<u64>>>,
    stopped: Rc<Cell<bool>>,
}

impl Links {
    pub fn new(peers: Peers) -> Links {
        Links {
            peers,
            links: RefCell::new(HashMap::new()),
            unreachable: Rc::new(RefCell::new(BTreeSet::new())),
            stopped: Rc::new(Cell::new(false)),
        }
    }

    /// Nodes found unreachable since the last call, for the driver to report to raft-rs.
    pub fn take_unreachable(&self) -> Vec<u64> {
        std::mem::take(&mut *self.unreachable.borrow_mut())
            .into_iter()
            .collect()
    }

    /// Stops every sending task (their connections close).
    pub fn stop(&self) {
        self.stopped.set(true);
        for l in self.links.borrow().values() {
            l.wake.notify(usize::MAX);
        }
    }

    fn link(&self, to: u64) -> Rc<Link> {
        if let Some(l) = self.links.borrow().get(&to) {
            return Rc::clone(l);
        }
        let link = Rc::new(Link {
            queue: RefCell::new(VecDeque::new()),
            wake: Event::new(),
        });
        self.links.borrow_mut().insert(to, Rc::clone(&link));
        glommio::spawn_local(send_loop(
            to,
            Rc::clone(&link),
            self.peers.clone(),
            Rc::clone(&self.unreachable),
            Rc::clone(&self.stopped),
        ))
        .detach();
        link
    }
}

impl Transport for Links {
    fn send(&mut self, to_node: u64, frame: Vec<u8>) {
        let link = self.link(to_node);
        let mut q = link.queue.borrow_mut();
        if q.len() >= QUEUE_FRAMES {
            add(&self.peers.stats.frames_dropped, 1);
            self.unreachable.borrow_mut().insert(to_node);
            return;
        }
        q.push_back(frame);
        drop(q);
        link.wake.notify(1);
    }

    fn streams_snapshots(&self) -> bool {
        true
    }

    async fn fetch_snapshot(
        &mut self,
        from_node: u64,
        _group: u64,
        _first_index: u64,
        _last_index: u64,
    ) -> std::result::Result<Vec<engine::log::EntryBatch>, String> {
        // Never called: snapshots stream beside the loop (`streams_snapshots`).
        Err(format!(
            "snapshot from node {from_node}: fetched by the snapshot transfer, not in a round"
        ))
    }
}

/// Drops what is queued for an unreachable node (stale by the time it would arrive).
fn drop_queued(link: &Link, stats: &TransportStats) {
    let n = link.queue.borrow_mut().drain(..).count();
    add(&stats.frames_dropped, n as u64);
}

/// A connection to `to` failed, or could not be made: what is queued is dropped and the node
/// reported unreachable. With `wait` (no connection, or one that did not last) the next
/// attempt waits `backoff`, which doubles up to [`BACKOFF_MAX`]; without, it starts again.
async fn lost(
    to: u64,
    link: &Link,
    stats: &TransportStats,
    unreachable: &RefCell<BTreeSet<u64>>,
    backoff: &mut Duration,
    wait: bool,
) {
    drop_queued(link, stats);
    unreachable.borrow_mut().insert(to);
    if wait {
        glommio::timer::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
    } else {
        *backoff = BACKOFF_FIRST;
    }
}

/// One destination's sender: connect, write queued frames, reconnect with backoff.
async fn send_loop(
    to: u64,
    link: Rc<Link>,
    peers: Peers,
    unreachable: Rc<RefCell<BTreeSet<u64>>>,
    stopped: Rc<Cell<bool>>,
) {
    let stats = Arc::clone(&peers.stats);
    let mut backoff = BACKOFF_FIRST;
    let mut out = Vec::new();
    'connect: while !stopped.get() {
        // Wait for something to send before connecting.
        loop {
            if stopped.get() {
                return;
            }
            let listener = link.wake.listen();
            if !link.queue.borrow().is_empty() || stopped.get() {
                break;
            }
            listener.await;
        }
        let Some(at) = peers.addr_of(to) else {
            drop_queued(&link, &stats);
            unreachable.borrow_mut().insert(to);
            continue;
        };
        let mut stream = match peer::connect(
            at.addr,
            peers.tls.as_ref(),
            &at.server_name,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                add(&stats.connect_failures, 1);
                log::debug!("Raft transport: node {to}: {e}");
                lost(to, &link, &stats, &unreachable, &mut backoff, true).await;
                continue;
            }
        };
        add(&stats.connects, 1);
        // The first frame says which cluster this node belongs to (once it knows).
        if !peers.cluster_id().is_empty() {
            let hello = RaftFrame {
                from: peers.self_id.load(Ordering::Relaxed),
                to,
                cluster_id: peers.cluster_id().to_owned(),
                ..RaftFrame::default()
            };
            let hello = prost::Message::encode_to_vec(&hello);
            if let Err(e) = peer::write_frame(&mut stream, RAFT_FRAME, &hello).await {
                log::info!("Raft transport: connection to node {to} failed: {e}");
                lost(to, &link, &stats, &unreachable, &mut backoff, true).await;
                continue 'connect;
            }
        }
        // The backoff starts again only after a connection that lasted: one the peer closes
        // at once (a node of another cluster, refusing it) is not made again at once.
        let connected_at = Instant::now();
        loop {
            let next = link.queue.borrow_mut().pop_front();
            // The node moved (a pod restarted under a new IP: the address book follows the
            // registry and gossip): this connection leads to where it was, and one whose
            // peer vanished with its network may take every write for minutes without an
            // error. Connect again, to where it is now.
            if next.is_some() && peers.addr_of(to).map(|a| a.addr) != Some(at.addr) {
                log::info!(
                    "Raft transport: node {to} is no longer at {}: connecting again",
                    at.addr
                );
                if let Some(frame) = next {
                    link.queue.borrow_mut().push_front(frame);
                }
                backoff = BACKOFF_FIRST;
                continue 'connect;
            }
            let Some(frame) = next else {
                if stopped.get() {
                    return;
                }
                let listener = link.wake.listen();
                if link.queue.borrow().is_empty() && !stopped.get() {
                    listener.await;
                }
                continue;
            };
            // Small frames go out together, in one write with their headers (one send call
            // and one flush for what the queue holds, not two sends per frame); a large one
            // is written from where it is rather than copied.
            let (mut frames, mut bytes) = (1u64, frame.len() as u64);
            let written = if frame.len() < COALESCE_BYTES {
                out.clear();
                let mut put = peer::put_frame(&mut out, RAFT_FRAME, &frame);
                while put.is_ok() {
                    let more = {
                        let mut q = link.queue.borrow_mut();
                        match q.front() {
                            Some(f) if out.len() + f.len() < COALESCE_BYTES => q.pop_front(),
                            _ => None,
                        }
                    };
                    let Some(f) = more else { break };
                    put = peer::put_frame(&mut out, RAFT_FRAME, &f);
                    (frames, bytes) = (frames + 1, bytes + f.len() as u64);
                }
                match put {
                    Ok(()) => peer::write_all_flush(&mut stream, &out).await,
                    Err(e) => Err(e),
                }
            } else {
                peer::write_frame(&mut stream, RAFT_FRAME, &frame).await
            };
            if out.capacity() > 2 * COALESCE_BYTES {
                out = Vec::new();
            }
            if let Err(e) = written {
                log::info!("Raft transport: connection to node {to} failed: {e}");
                add(&stats.frames_dropped, frames);
                let short = connected_at.elapsed() < BACKOFF_MAX;
                lost(to, &link, &stats, &unreachable, &mut backoff, short).await;
                continue 'connect;
            }
            add(&stats.frames_sent, frames);
            add(&stats.bytes_sent, bytes);
            if connected_at.elapsed() >= BACKOFF_MAX {
                backoff = BACKOFF_FIRST;
            }
        }
    }
}

/// The receiving side of Raft connections on the peer channel.
#[derive(Clone)]
pub struct RaftPeerHandler {
    pub node_id: u64,
    pub engine: EngineHandle,
    pub peers: Peers,
}

impl RaftPeerHandler {
    /// Serves one connection until it ends or misbehaves: Raft frames, or a snapshot
    /// transfer when the first frame is a snapshot request.
    pub async fn serve_conn(&self, mut conn: PeerConn) {
        match peer::read_header(&mut conn.stream).await {
            Ok(Some((len, super::snapshot_transfer::SNAP_REQUEST))) => {
                super::snapshot_transfer::serve(self, conn, len).await
            }
            Ok(Some(head)) => self.serve_from(conn, Some(head)).await,
            Ok(None) => {}
            Err(e) => {
                if !matches!(e, peer::FrameError::Io(_)) {
                    add(&self.peers.stats.malformed, 1);
                }
                net::conn_log!(
                    log::Level::Warn,
                    "raft-frame",
                    "Raft transport: closing connection from {:?}: {e}",
                    conn.peer
                );
            }
        }
    }

    /// [`serve_conn`](Self::serve_conn) for a connection whose first frame header (length,
    /// kind) the peer channel's router has read already.
    pub async fn serve_from(&self, mut conn: PeerConn, mut first: Option<(usize, u8)>) {
        let stats = &self.peers.stats;
        if conn.tls.is_none() && !conn.peer.is_some_and(|a| self.peers.knows_ip(a.ip())) {
            add(&stats.refused, 1);
            net::conn_log!(
                log::Level::Warn,
                "raft-refused",
                "Raft transport: connection from {:?} refused: no peer TLS, and not a known \
                 member's address",
                conn.peer
            );
            close_gracefully(&mut conn).await;
            return;
        }
        let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, &mut conn.stream);
        let mut buf = bytes::BytesMut::new();
        loop {
            let head = match first.take() {
                Some(h) => Ok(Some(h)),
                None => peer::read_header(&mut rd).await,
            };
            let read = match head {
                Ok(Some((len, _))) if len > MAX_FRAME_BYTES => Err(peer::FrameError::TooLarge {
                    len,
                    max: MAX_FRAME_BYTES,
                }),
                Ok(Some((len, kind))) => peer::read_payload_shared(&mut rd, len, &mut buf)
                    .await
                    .map(|p| Some((kind, p))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let (kind, payload) = match read {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    match e {
                        peer::FrameError::TooLarge { .. } => add(&stats.oversized, 1),
                        peer::FrameError::Io(_) => {}
                        _ => add(&stats.malformed, 1),
                    }
                    net::conn_log!(
                        log::Level::Warn,
                        "raft-frame",
                        "Raft transport: closing connection from {:?}: {e}",
                        conn.peer
                    );
                    return;
                }
            };
            add(&stats.frames_received, 1);
            add(&stats.bytes_received, payload.len() as u64 + 1);
            if let Err(why) = self.dispatch(kind, payload) {
                match why {
                    Refusal::Foreign(_) => add(&stats.foreign, 1),
                    Refusal::Malformed(_) => add(&stats.malformed, 1),
                }
                // Rate-limited: a node wiped and started again at its old address gets the
                // frames of its old Raft id from every peer until that id is removed.
                net::conn_log!(
                    log::Level::Warn,
                    "raft-dispatch",
                    "Raft transport: closing connection from {:?}: {why}",
                    conn.peer
                );
                return;
            }
        }
    }

    /// Splits a frame among the shards owning its groups.
    fn dispatch(&self, kind: u8, payload: bytes::Bytes) -> Result<(), Refusal> {
        let malformed = Refusal::Malformed;
        if kind != RAFT_FRAME {
            return Err(malformed(format!(
                "frame of kind {kind:#04x} on a Raft connection"
            )));
        }
        // From the frame's own memory: entries keep slices of it, not copies.
        let frame = wire::decode_frame_shared(payload).map_err(|e| malformed(e.to_string()))?;
        if let Some(why) = self.peers.other_cluster(&frame.cluster_id) {
            return Err(Refusal::Foreign(why));
        }
        let me = match self.node_id {
            0 => self.peers.self_id.load(Ordering::Relaxed),
            id => id,
        };
        if frame.to != me {
            return Err(malformed(format!(
                "frame for node {}, this is node {me}",
                frame.to
            )));
        }
        let dir = &self.peers.directory;
        let mut by_shard: BTreeMap<usize, RaftFrame> = BTreeMap::new();
        let mut lost = 0u64;
        let (from, to) = (frame.from, frame.to);
        let empty = || RaftFrame {
            from,
            to,
            ..RaftFrame::default()
        };
        for m in frame.messages {
            match dir.shard_of(m.group) {
                Some(s) => by_shard.entry(s).or_insert_with(empty).messages.push(m),
                None => lost += 1,
            }
        }
        for h in frame.heartbeats {
            match dir.shard_of(h.group) {
                Some(s) => by_shard.entry(s).or_insert_with(empty).heartbeats.push(h),
                None => lost += 1,
            }
        }
        for (shard, f) in by_shard {
            if self.engine.deliver(shard, Box::new(f)).is_err() {
                lost += 1;
            }
        }
        add(&self.peers.stats.undeliverable, lost);
        Ok(())
    }
}

impl PeerHandler for RaftPeerHandler {
    fn serve(&self, conn: PeerConn) -> net::server::LocalBoxFuture<()> {
        let this = self.clone();
        Box::pin(async move { this.serve_conn(conn).await })
    }
}

/// Closes a refused connection with a FIN rather than a reset (unread bytes in the receive
/// buffer make a plain close a reset): shuts down our side, then reads what the peer still
/// sends, for at most a second.
pub(crate) async fn close_gracefully(conn: &mut PeerConn) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = conn.stream.shutdown().await;
    let mut buf = [0u8; 512];
    let _ = glommio::timer::timeout(Duration::from_secs(1), async {
        loop {
            match conn.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The peer channel's handler on a server: reads the first frame's header and hands the
/// connection to the service its kind names: Raft frames to [`RaftPeerHandler`], a gossip key
/// request to membership's key service (when the node gossips), forwarded appends to
/// [`super::forward`], join requests and relayed controller commands to the cluster layer,
/// anything else an ERROR frame.
#[derive(Clone)]
pub struct PeerRouter {
    pub raft: RaftPeerHandler,
    pub keys: Option<crate::membership::peer::KeyService>,
    /// Join requests (the controller's registry), and controller commands relayed from
    /// members whose own controller replica does not run (`crate::cluster::relay`, served
    /// by the same cluster node); `None` on a node outside any cluster.
    pub join: Option<Arc<crate::cluster::join::JoinService>>,
}

/// How long a new peer connection may take to send its first frame header.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

impl PeerHandler for PeerRouter {
    fn serve(&self, mut conn: PeerConn) -> net::server::LocalBoxFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            // Nothing to offer a plaintext stranger: no key exchange (the node does not
            // gossip) and no Raft (not a known member). Closed at once, unread.
            if conn.tls.is_none()
                && this.keys.is_none()
                && !conn.peer.is_some_and(|a| this.raft.peers.knows_ip(a.ip()))
            {
                net::conn_log!(
                    log::Level::Info,
                    "peer-stranger",
                    "peer connection from {:?} (first byte 0x01): not a known member, and this \
                     node does not gossip; closing it",
                    conn.peer
                );
                close_gracefully(&mut conn).await;
                return;
            }
            let head = glommio::timer::timeout(FIRST_FRAME_TIMEOUT, async {
                Ok(peer::read_header(&mut conn.stream).await)
            })
            .await;
            let (len, kind) = match head {
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    net::conn_log!(
                        log::Level::Info,
                        "peer-first-frame",
                        "peer connection from {}: {e}; closing it",
                        net::show_peer(&conn.peer)
                    );
                    return;
                }
                Err(_) => {
                    net::conn_log!(
                        log::Level::Info,
                        "peer-no-frame",
                        "peer connection from {:?}: no frame in time; closing it",
                        conn.peer
                    );
                    return;
                }
            };
            if let (crate::cluster::join::JOIN_REQUEST, Some(join)) = (kind, &this.join) {
                join.serve(conn, len).await;
                return;
            }
            if let (crate::cluster::relay::CONTROL_COMMAND, Some(join)) = (kind, &this.join) {
                crate::cluster::relay::serve(&join.0, conn, len).await;
                return;
            }
            if let (crate::cluster::relay::CONTROL_MEMBERSHIP, Some(join)) = (kind, &this.join) {
                crate::cluster::relay::serve_membership(&join.0, conn, len).await;
                return;
            }
            match (kind, &this.keys) {
                (RAFT_FRAME, _) => this.raft.serve_from(conn, Some((len, kind))).await,
                (super::forward::FORWARD_REQUEST | super::forward::READ_REQUEST, _) => {
                    let r = &this.raft;
                    super::forward::serve_from(&r.engine, &r.peers, conn, Some((len, kind))).await
                }
                (super::snapshot_transfer::SNAP_REQUEST, _) => {
                    super::snapshot_transfer::serve(&this.raft, conn, len).await
                }
                (_, Some(keys)) => keys.serve_request(conn, len, kind).await,
                (_, None) => {
                    net::conn_log!(
                        log::Level::Info,
                        "peer-no-gossip",
                        "peer connection from {:?}: a request of kind {kind:#04x}, and this \
                         node does not gossip",
                        conn.peer
                    );
                    let why: &[u8] = b"this node does not gossip: no service for this request";
                    let _ = peer::write_frame(&mut conn.stream, peer::kind::ERROR, why).await;
                }
            }
        })
    }
}
