//! Produce forwarding and reads elsewhere: any node serves any client. An append on a node
//! that does not lead the partition is sent to the leader over the peer channel, proposed
//! there, and answered with its offsets (or the leader's error) on the same connection.
//!
//! Sending ([`Forwarder`], one per executor, inside the Raft seam): one connection per
//! leader node, opened on first use (`net::peer::connect`: the `0x01` mark, mutual TLS with
//! the peer certificates when configured), carrying [`FORWARD_REQUEST`] frames out and
//! [`FORWARD_RESPONSE`] frames back, matched by request id. At most [`MAX_IN_FLIGHT`]
//! requests and [`MAX_IN_FLIGHT_BYTES`] of payload wait per leader: past that an append is
//! refused at once (UNAVAILABLE, saying so), never queued without bound. Each request has a
//! deadline ([`FORWARD_TIMEOUT`]). What a client learns when things go wrong:
//! - the request was never written (no address, no connection, queue full, deadline while
//!   queued): UNAVAILABLE, safe to retry;
//! - written, and then the connection broke or the deadline passed: `OutcomeUnknown` (the
//!   leader may have committed it);
//! - the leader answered `NotLeader` (it lost leadership before proposing; nothing was
//!   proposed): sent again to the leader it names, a few times within the deadline;
//! - no leader known (an election, a leadership transfer): the append waits up to
//!   [`LEADER_WAIT`] for one, then is refused `NoLeader` (UNAVAILABLE, nothing proposed).
//!
//! Receiving ([`serve_from`], the peer channel's handler for connections whose first frame
//! is a forward request): frames up to [`MAX_FRAME_BYTES`], decoded with our prost types; the
//! batch is rebuilt with `EncodedBatch::from_payload` (lengths walked, count and CRC32C
//! checked). An oversized, malformed or unexpected frame closes the connection and is counted
//! ([`ForwardStats`]); nothing a peer sends panics. Appends are made through the engine-backed
//! seam of the receiving executor, which never forwards again (no loops): a node that is not
//! the leader answers `NotLeader`. At most [`SERVE_MAX_IN_FLIGHT`] appends per connection
//! run at once; past that the handler stops reading and TCP flow control stops the sender.
//! Without peer TLS only known members' addresses are served (no security boundary, as for
//! Raft frames).
//!
//! Reads for a node with no replica: the same connection carries [`READ_REQUEST`] frames
//! (a read from an offset, a linearizable read point, a tail's wait held at most
//! [`WAIT_POLL`], a description) to a node that holds one, answered with [`READ_RESPONSE`]
//! (stored batches, which the asker checks batch by batch with their CRCs, or a visible end).
//! Waits are counted apart ([`MAX_WAITS`]) so that tails never hold appends back. A replica's
//! own reads go through [`read_here`]: past its visible end it first learns the leader's
//! commit index (ReadIndex), so a committed offset reads on every replica.
//!
//! Order: requests on one connection are written in the order they were made and proposed
//! in the order they are read; a `ProduceStream` has one append outstanding at a time, so a
//! producer's records keep their order through a forward.

use super::transport::{close_gracefully, Peers, MAX_FRAME_BYTES};
use engine::seam::local::{LocalFactory, LocalPartitions};
use engine::seam::{
    self, AppendTiming, Appended, Chunk, EncodedBatch, NodeRef, PartitionId, Partitions, PastEnd,
    ReadLimits, Writability,
};
use engine::EngineHandle;
use event_listener::Event;
use futures_channel::oneshot;
use net::peer::{self, PeerConn};
use prost::Message;
use proto::proglog::raft::v1::{
    forward_response, read_response, ForwardAppended, ForwardError, ForwardErrorKind,
    ForwardRequest, ForwardResponse, PartitionSummary, ReadChunk, ReadMode, ReadRequest,
    ReadResponse,
};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The peer channel's frame kind of a forwarded append (an encoded `ForwardRequest`).
pub const FORWARD_REQUEST: u8 = 0x28;
/// The peer channel's frame kind of a forwarded append's answer (a `ForwardResponse`).
pub const FORWARD_RESPONSE: u8 = 0x29;
/// A read of a partition the sending node holds no replica of (a `ReadRequest`), on the same
/// connection as forwarded appends.
pub const READ_REQUEST: u8 = 0x2A;
/// Its answer (a `ReadResponse`).
pub const READ_RESPONSE: u8 = 0x2B;

/// Requests waiting for their answer per leader node, per executor.
pub const MAX_IN_FLIGHT: usize = 256;
/// Payload bytes of those requests.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Appends of one incoming forward connection running at once.
pub const SERVE_MAX_IN_FLIGHT: usize = 256;
/// How long a forwarded append may take, from the call to the leader's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an append waits for its partition to have a leader before it is refused with
/// `NoLeader`.
pub const LEADER_WAIT: Duration = Duration::from_secs(2);
/// Times an append follows a `NotLeader` answer to the leader it names.
const MAX_REDIRECTS: usize = 3;
/// Partitions whose leader elsewhere an executor remembers.
const MAX_REMEMBERED: usize = 1 << 16;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Counters of a node's forwarding and follower reads (all executors).
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Appends sent to a leader.
    pub forwarded: AtomicU64,
    /// Of those, answered with offsets.
    pub forwarded_ok: AtomicU64,
    /// Refused at once: the leader's queue on this node was full.
    pub err_queue_full: AtomicU64,
    /// The leader could not be reached (no address, connect failed): never sent.
    pub err_unreachable: AtomicU64,
    /// Written, then the connection broke or the deadline passed: outcome unknown.
    pub err_outcome_unknown: AtomicU64,
    /// The deadline passed before the request could be written.
    pub err_timeout: AtomicU64,
    /// The leader answered an error (other than `NotLeader`, which is followed).
    pub err_remote: AtomicU64,
    /// `NotLeader` answers followed to the leader named.
    pub redirects: AtomicU64,
    /// Appends whose leader could not be reached, held until another leader was known or
    /// the link could connect again (then sent there), within the wait for a leader.
    pub reroutes: AtomicU64,
    /// Appends refused for want of a leader (none known).
    pub no_leader: AtomicU64,
    /// Receiving side: forwarded appends served (answered, whatever the answer).
    pub served: AtomicU64,
    /// Receiving side: connections closed for a frame over the maximum.
    pub oversized: AtomicU64,
    /// Receiving side: connections closed for a malformed frame.
    pub malformed: AtomicU64,
    /// Receiving side: connections refused (no peer TLS, not a known member's address).
    pub refused: AtomicU64,
    /// Receiving side: connections closed for a request of a node of another cluster.
    pub foreign: AtomicU64,
    /// Reads that asked the leader's commit index (ReadIndex) before serving.
    pub read_index_waits: AtomicU64,
    /// ReadIndex attempts retried (no leader yet, or one that has not committed in its term).
    pub read_index_retries: AtomicU64,
    /// Reads that got no read index before their deadline (UNAVAILABLE).
    pub read_index_failures: AtomicU64,
}

impl ForwardStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

type Answer = seam::Result<Appended>;

/// What an answer carries: an append's offsets, or a read's outcome.
pub(crate) enum Reply {
    Appended(Appended),
    Read(read_response::Outcome),
}

pub(crate) type Outcome = seam::Result<Reply>;

/// A request between the call and its answer.
struct Pending {
    written: Cell<bool>,
    bytes: usize,
    /// A tail's wait (counted apart: it may take seconds, and must not hold appends back).
    wait: bool,
    tx: RefCell<Option<oneshot::Sender<Outcome>>>,
}

/// One leader node's connection and what waits on it.
struct Link {
    node: u64,
    /// Request ids not yet written, oldest first (with their frames and kinds).
    queue: RefCell<VecDeque<(u64, u8, Vec<u8>)>>,
    /// Every request not answered yet, queued or written.
    pending: RefCell<HashMap<u64, Rc<Pending>>>,
    bytes: Cell<usize>,
    /// Of the pending requests, tails' waits.
    waits: Cell<usize>,
    wake: Event,
    next_id: Cell<u64>,
    /// After a failed connect, until a connect succeeds: when the next attempt may be made
    /// (the end of the backoff). An append made before then is refused at once instead of
    /// waiting in the queue for an attempt that will most likely fail too.
    down_until: Cell<Option<Instant>>,
}

impl Link {
    /// Whether the last attempt to connect failed and the backoff has not ended.
    fn in_backoff(&self) -> bool {
        self.down_until.get().is_some_and(|t| Instant::now() < t)
    }

    /// Forgets request `id`; returns it if it was pending.
    fn forget(&self, id: u64) -> Option<Rc<Pending>> {
        let p = self.pending.borrow_mut().remove(&id)?;
        self.bytes.set(self.bytes.get().saturating_sub(p.bytes));
        if p.wait {
            self.waits.set(self.waits.get().saturating_sub(1));
        }
        Some(p)
    }

    /// Answers request `id` (once) and forgets it.
    fn answer(&self, id: u64, a: Outcome) {
        if let Some(p) = self.forget(id) {
            if let Some(tx) = p.tx.borrow_mut().take() {
                let _ = tx.send(a);
            }
        }
    }

    /// Requests that are not tails' waits.
    fn calls(&self) -> usize {
        self.pending.borrow().len() - self.waits.get()
    }

    /// Answers every written request with `e` (the connection they went on is gone).
    fn fail_written(&self, e: impl Fn() -> seam::Error) {
        let written: Vec<u64> = self
            .pending
            .borrow()
            .iter()
            .filter(|(_, p)| p.written.get())
            .map(|(id, _)| *id)
            .collect();
        for id in written {
            self.answer(id, Err(e()));
        }
    }

    /// Answers every queued request with `e` (they were never sent).
    fn fail_queued(&self, e: impl Fn() -> seam::Error) {
        let queued: Vec<u64> = self
            .queue
            .borrow_mut()
            .drain(..)
            .map(|(id, _, _)| id)
            .collect();
        for id in queued {
            self.answer(id, Err(e()));
        }
    }
}

/// Forgets a request whose caller went away (deadline, or the call was dropped).
struct Guard<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.link.forget(self.id).is_some() {
            self.link
                .queue
                .borrow_mut()
                .retain(|(id, _, _)| *id != self.id);
        }
    }
}

/// The sending side of one executor: a connection per leader node.
pub struct Forwarder {
    node_id: u64,
    peers: Peers,
    links: RefCell<HashMap<u64, Rc<Link>>>,
    /// The leader of each partition led elsewhere, as last learnt (absent: this node, until
    /// an append here says otherwise).
    leaders: RefCell<HashMap<PartitionId, u64>>,
    stopped: Rc<Cell<bool>>,
    /// A topic's incarnation as this node's controller state gives it (0: unknown), sent
    /// with each request so that a replica of another topic of that name never answers.
    incarnation_of: Option<IncarnationOf>,
}

/// A topic's incarnation as this node's controller state gives it (0: unknown).
pub type IncarnationOf = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stopped.set(true);
        for l in self.links.borrow().values() {
            l.wake.notify(usize::MAX);
        }
    }
}

impl Forwarder {
    pub fn new(node_id: u64, peers: Peers) -> Forwarder {
        Forwarder {
            node_id,
            peers,
            links: RefCell::new(HashMap::new()),
            leaders: RefCell::new(HashMap::new()),
            stopped: Rc::new(Cell::new(false)),
            incarnation_of: None,
        }
    }

    /// Sends with each request the incarnation `f` gives the request's topic (the
    /// controller state's), for the receiver to check.
    pub fn with_incarnations(mut self, f: IncarnationOf) -> Forwarder {
        self.incarnation_of = Some(f);
        self
    }

    fn incarnation(&self, topic: &str) -> u64 {
        self.incarnation_of.as_ref().map_or(0, |f| f(topic))
    }

    /// The leader of `id` last learnt, when another node.
    fn leader_of(&self, id: &PartitionId) -> Option<u64> {
        self.leaders.borrow().get(id).copied()
    }

    /// Notes who leads `id` (`None`: ask again next time).
    fn remember(&self, id: &PartitionId, leader: Option<u64>) {
        let mut m = self.leaders.borrow_mut();
        match leader {
            Some(l) if l != self.node_id() => {
                if m.len() >= MAX_REMEMBERED && !m.contains_key(id) {
                    // Partitions come and go (deleted topics): bounded, forgetting all.
                    m.clear();
                }
                m.insert(id.clone(), l);
            }
            _ => {
                m.remove(id);
            }
        }
    }

    /// This node's Raft id: the transport's once the controller assigned one.
    pub fn node_id(&self) -> u64 {
        match self.peers.self_id.load(Ordering::Relaxed) {
            0 => self.node_id,
            id => id,
        }
    }

    pub fn stats(&self) -> &ForwardStats {
        &self.peers.forward
    }

    /// Every group of this node as its shard last published it.
    pub(crate) fn board(&self) -> &super::board::Board {
        &self.peers.board
    }

    /// Whether the last attempt to connect to `node` failed (`Some(true)`: and its backoff
    /// has not ended, so an append now would be refused at once); `None`: it was reached, or
    /// never tried.
    fn unreachable(&self, node: u64) -> Option<bool> {
        let links = self.links.borrow();
        let link = links.get(&node)?;
        link.down_until.get().map(|_| link.in_backoff())
    }

    fn link(&self, node: u64) -> Rc<Link> {
        if let Some(l) = self.links.borrow().get(&node) {
            return Rc::clone(l);
        }
        let link = Rc::new(Link {
            node,
            queue: RefCell::new(VecDeque::new()),
            pending: RefCell::new(HashMap::new()),
            bytes: Cell::new(0),
            waits: Cell::new(0),
            wake: Event::new(),
            next_id: Cell::new(1),
            down_until: Cell::new(None),
        });
        self.links.borrow_mut().insert(node, Rc::clone(&link));
        glommio::spawn_local(run_link(
            Rc::clone(&link),
            self.peers.clone(),
            Rc::clone(&self.stopped),
        ))
        .detach();
        link
    }

    /// Sends `batch` for `id` to node `leader` and waits for its answer until `deadline`.
    pub async fn forward(
        &self,
        leader: u64,
        id: &PartitionId,
        batch: &EncodedBatch,
        deadline: Instant,
    ) -> Answer {
        let started = Instant::now();
        let stats = &self.peers.forward;
        let link = self.link(leader);
        let bytes = batch.payload_len();
        if link.in_backoff() {
            add(&stats.err_unreachable, 1);
            return Err(seam::Error::Unavailable(format!(
                "this node does not lead partition {id}, and its leader (node {leader}) could \
                 not be reached at the last attempt; the append was not sent: retry"
            )));
        }
        if link.calls() >= MAX_IN_FLIGHT || link.bytes.get() + bytes > MAX_IN_FLIGHT_BYTES {
            add(&stats.err_queue_full, 1);
            return Err(seam::Error::Unavailable(format!(
                "this node does not lead partition {id}, and its queue of appends for the \
                 leader (node {leader}) is full ({} requests, {} bytes waiting; at most \
                 {MAX_IN_FLIGHT} and {MAX_IN_FLIGHT_BYTES}): retry, or produce to the leader",
                link.calls(),
                link.bytes.get()
            )));
        }
        let request_id = link.next_id.get();
        let frame = ForwardRequest {
            request_id,
            topic: id.topic.to_string(),
            partition: id.partition,
            record_count: batch.record_count(),
            payload_crc: batch.payload_crc(),
            payload: batch.payload().clone(),
            incarnation: self.incarnation(&id.topic),
            cluster_id: self.peers.cluster_id().to_owned(),
        }
        .encode_to_vec();
        if frame.len() + 1 > MAX_FRAME_BYTES {
            return Err(seam::Error::TooLarge {
                what: "batch",
                size: bytes,
                limit: MAX_FRAME_BYTES - 1024,
                unit: "bytes",
            });
        }
        add(&stats.forwarded, 1);
        let r = match call(&link, FORWARD_REQUEST, frame, bytes, false, deadline).await {
            Ok(Ok(Reply::Appended(a))) => Ok(a),
            Ok(Ok(Reply::Read(_))) => Err(seam::Error::Internal(format!(
                "node {leader} answered an append with a read"
            ))),
            Ok(Err(e)) => Err(e),
            Err(Unanswered { written: true }) => {
                add(&stats.err_outcome_unknown, 1);
                Err(seam::Error::OutcomeUnknown(format!(
                    "the append to partition {id} was forwarded to its leader (node \
                     {leader}), which did not answer within {:?}: it may or may not be \
                     committed",
                    started.elapsed()
                )))
            }
            Err(Unanswered { written: false }) => {
                add(&stats.err_timeout, 1);
                Err(seam::Error::Unavailable(format!(
                    "the append to partition {id} could not be sent to its leader (node \
                     {leader}) within {:?}; it was not sent: retry",
                    started.elapsed()
                )))
            }
        };
        match &r {
            Ok(_) => add(&stats.forwarded_ok, 1),
            Err(seam::Error::OutcomeUnknown(_)) | Err(seam::Error::NotLeader { .. }) => {}
            Err(seam::Error::Unavailable(_)) => {}
            Err(_) => add(&stats.err_remote, 1),
        }
        r.map(|a| Appended {
            timing: AppendTiming {
                queue: Duration::ZERO,
                append: Duration::ZERO,
                fsync: started.elapsed(),
            },
            ..a
        })
    }
}

/// A request that got no answer before its deadline; `written` if it went out.
struct Unanswered {
    written: bool,
}

/// Queues `frame` (kind `kind`, request id the link's next) on `link` and waits for its
/// answer until `deadline`.
async fn call(
    link: &Link,
    kind: u8,
    frame: Vec<u8>,
    bytes: usize,
    wait: bool,
    deadline: Instant,
) -> Result<Outcome, Unanswered> {
    let request_id = link.next_id.get();
    link.next_id.set(request_id + 1);
    let (tx, rx) = oneshot::channel();
    let pending = Rc::new(Pending {
        written: Cell::new(false),
        bytes,
        wait,
        tx: RefCell::new(Some(tx)),
    });
    link.pending
        .borrow_mut()
        .insert(request_id, Rc::clone(&pending));
    link.bytes.set(link.bytes.get() + bytes);
    if wait {
        link.waits.set(link.waits.get() + 1);
    }
    link.queue.borrow_mut().push_back((request_id, kind, frame));
    link.wake.notify(usize::MAX);
    let _guard = Guard {
        link,
        id: request_id,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    match glommio::timer::timeout(left, async { Ok(rx.await) }).await {
        Ok(Ok(a)) => Ok(a),
        // The link stopped with it (the executor's seam went away).
        Ok(Err(_)) => Ok(Err(seam::Error::Unavailable(format!(
            "forwarding to node {} stopped",
            link.node
        )))),
        Err(_) => Err(Unanswered {
            written: pending.written.get(),
        }),
    }
}

/// What a read asks of a node that holds a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteRead {
    Read {
        from: u64,
        limits: ReadLimits,
    },
    Barrier,
    /// Until the visible end passes `offset` (or a few seconds).
    Wait {
        offset: u64,
    },
    Describe,
}

/// How long a node answering a tail's wait holds it before answering with the visible end
/// as it is (the asker asks again).
pub const WAIT_POLL: Duration = Duration::from_secs(5);
/// Tails' waits outstanding per node, per executor.
pub const MAX_WAITS: usize = 4096;

impl Forwarder {
    /// Asks node `node`, which holds a replica of `id`, for `what`: a chunk for a read, the
    /// visible end for a barrier or a wait. Reads change nothing: every failure is
    /// UNAVAILABLE (retry).
    pub async fn read_remote(
        &self,
        node: u64,
        id: &PartitionId,
        what: RemoteRead,
    ) -> seam::Result<read_response::Outcome> {
        let link = self.link(node);
        let unavailable = |why: String| {
            seam::Error::Unavailable(format!(
                "partition {id} has no replica on this node, and node {node}, which holds one, \
                 {why}: retry"
            ))
        };
        let wait = matches!(what, RemoteRead::Wait { .. });
        if (wait && link.waits.get() >= MAX_WAITS) || (!wait && link.calls() >= MAX_IN_FLIGHT) {
            add(&self.peers.forward.err_queue_full, 1);
            return Err(unavailable(
                "has too many requests from this node waiting".into(),
            ));
        }
        let mut req = ReadRequest {
            request_id: link.next_id.get(),
            topic: id.topic.to_string(),
            partition: id.partition,
            incarnation: self.incarnation(&id.topic),
            cluster_id: self.peers.cluster_id().to_owned(),
            ..ReadRequest::default()
        };
        let mut timeout = FORWARD_TIMEOUT;
        match what {
            RemoteRead::Read { from, limits } => {
                req.mode = ReadMode::Read as i32;
                req.from = from;
                req.max_records = limits.max_records as u64;
                req.max_bytes = limits.max_bytes as u64;
                req.past_end_empty = limits.past_end == PastEnd::Empty;
            }
            RemoteRead::Barrier => req.mode = ReadMode::Barrier as i32,
            RemoteRead::Describe => req.mode = ReadMode::Describe as i32,
            RemoteRead::Wait { offset } => {
                req.mode = ReadMode::Wait as i32;
                req.from = offset;
                timeout += WAIT_POLL;
            }
        }
        let frame = req.encode_to_vec();
        let deadline = Instant::now() + timeout;
        match call(&link, READ_REQUEST, frame, 0, wait, deadline).await {
            Ok(Ok(Reply::Read(r))) => Ok(r),
            Ok(Ok(Reply::Appended(_))) => Err(seam::Error::Internal(format!(
                "node {node} answered a read with offsets"
            ))),
            Ok(Err(seam::Error::OutcomeUnknown(_))) => Err(unavailable(
                "could not be asked (the connection broke)".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unavailable(format!("did not answer within {timeout:?}"))),
        }
    }
}

/// One leader node's sender: connect, write queued requests, read answers; reconnect with
/// backoff.
async fn run_link(link: Rc<Link>, peers: Peers, stopped: Rc<Cell<bool>>) {
    let stats = &peers.forward;
    let node = link.node;
    let mut backoff = BACKOFF_FIRST;
    loop {
        // Wait for something to send before connecting.
        loop {
            if stopped.get() {
                link.fail_queued(|| seam::Error::Unavailable("forwarding stopped".into()));
                link.fail_written(|| {
                    seam::Error::OutcomeUnknown(format!(
                        "forwarding to node {node} stopped with the request in flight"
                    ))
                });
                return;
            }
            let listener = link.wake.listen();
            if !link.queue.borrow().is_empty() || stopped.get() {
                break;
            }
            listener.await;
        }
        let Some(at) = peers.addr_of(node) else {
            add(&stats.err_unreachable, link.queue.borrow().len() as u64);
            link.fail_queued(|| {
                seam::Error::Unavailable(format!(
                    "the partition's leader is node {node}, whose address this node does not \
                     know (yet): retry"
                ))
            });
            continue;
        };
        let stream = match peer::connect(
            at.addr,
            peers.tls.as_ref(),
            &at.server_name,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                log::info!("forwarding: cannot reach node {node}: {e}");
                add(&stats.err_unreachable, link.queue.borrow().len() as u64);
                let why = e.to_string();
                link.fail_queued(|| {
                    seam::Error::Unavailable(format!(
                        "the partition's leader (node {node} at {}) cannot be reached: {why}; \
                         the request was not sent to it: retry",
                        at.addr
                    ))
                });
                link.down_until.set(Some(Instant::now() + backoff));
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        link.down_until.set(None);
        backoff = BACKOFF_FIRST;
        let (rd, wr) = tokio::io::split(stream);
        let why = futures_lite::future::or(write_requests(&link, wr, &stopped), async {
            read_answers(&link, rd, stats).await
        })
        .await;
        log::info!("forwarding: connection to node {node} closed: {why}");
        link.fail_written(|| {
            seam::Error::OutcomeUnknown(format!(
                "the connection to the partition's leader (node {node}) closed ({why}) with the \
                 append in flight: it may or may not be committed"
            ))
        });
    }
}

async fn write_requests(
    link: &Link,
    mut wr: tokio::io::WriteHalf<Box<dyn peer::PeerIo>>,
    stopped: &Cell<bool>,
) -> String {
    loop {
        let next = link.queue.borrow_mut().pop_front();
        let Some((id, kind, frame)) = next else {
            if stopped.get() {
                return "stopping".into();
            }
            let listener = link.wake.listen();
            if link.queue.borrow().is_empty() && !stopped.get() {
                listener.await;
            }
            continue;
        };
        let Some(p) = link.pending.borrow().get(&id).cloned() else {
            continue;
        };
        p.written.set(true);
        if let Err(e) = peer::write_frame(&mut wr, kind, &frame).await {
            return format!("write failed: {e}");
        }
    }
}

async fn read_answers(
    link: &Link,
    mut rd: tokio::io::ReadHalf<Box<dyn peer::PeerIo>>,
    stats: &ForwardStats,
) -> String {
    loop {
        let frame = match peer::read_frame(&mut rd, MAX_FRAME_BYTES).await {
            Ok(Some(f)) => f,
            Ok(None) => return "closed by the leader".into(),
            Err(e) => return e.to_string(),
        };
        if frame.kind == peer::kind::ERROR {
            return format!(
                "the node refused: {}",
                String::from_utf8_lossy(&frame.payload)
            );
        }
        let (request_id, answer) = match decode_answer(frame.kind, frame.payload) {
            Ok(a) => a,
            Err(why) => {
                add(&stats.malformed, 1);
                return why;
            }
        };
        link.answer(request_id, answer);
    }
}

/// One answer frame from the node a request went to (`FORWARD_RESPONSE` or
/// `READ_RESPONSE`): the request it answers and the outcome, or why the frame is malformed
/// (which closes the connection).
pub(crate) fn decode_answer(kind: u8, payload: Vec<u8>) -> Result<(u64, Outcome), String> {
    match kind {
        FORWARD_RESPONSE => {
            let resp = ForwardResponse::decode(payload.as_slice())
                .map_err(|e| format!("an answer that does not decode: {e}"))?;
            let answer = match resp.outcome {
                Some(forward_response::Outcome::Appended(a)) if a.last_offset >= a.base_offset => {
                    Ok(Reply::Appended(Appended {
                        base_offset: a.base_offset,
                        last_offset: a.last_offset,
                        timing: AppendTiming::default(),
                    }))
                }
                Some(forward_response::Outcome::Error(e)) => Err(from_wire(e)),
                _ => return Err("an answer without an outcome".into()),
            };
            Ok((resp.request_id, answer))
        }
        READ_RESPONSE => {
            let resp = ReadResponse::decode(bytes::Bytes::from(payload))
                .map_err(|e| format!("a read answer that does not decode: {e}"))?;
            let answer = match resp.outcome {
                Some(read_response::Outcome::Error(e)) => Err(from_wire(e)),
                Some(o) => Ok(Reply::Read(o)),
                None => return Err("a read answer without an outcome".into()),
            };
            Ok((resp.request_id, answer))
        }
        kind => Err(format!("an answer of kind {kind:#04x}")),
    }
}

/// Appends `batch` to `id` through whichever node leads it: in place when this node does,
/// else forwarded. `local` is the engine-backed seam of the calling executor.
///
/// The leader of each partition is remembered per executor (this node until told
/// otherwise), so the common case costs no extra hop: a leader's appends go straight to its
/// group, a follower's straight to the leader. A `NotLeader` from either side (nothing was
/// proposed) asks the owner's replica who leads now; a forward that failed otherwise forgets
/// the leader, so the next append asks again.
pub async fn append(
    local: &LocalPartitions,
    fwd: &Forwarder,
    id: &PartitionId,
    batch: EncodedBatch,
) -> Answer {
    append_via(local, fwd, id, batch, None).await
}

/// [`append`], sent first to node `first` when given (a node that holds no replica of `id`
/// sends it to one that does, which names the leader if it is not).
pub async fn append_via(
    local: &LocalPartitions,
    fwd: &Forwarder,
    id: &PartitionId,
    batch: EncodedBatch,
    first: Option<u64>,
) -> Answer {
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    let stats = fwd.stats();
    let me = fwd.node_id();
    let mut redirects = 0;
    // How long an append waits for a leader: through a leadership transfer here, or for
    // the successor of a leader that cannot be reached.
    let transfer_until = deadline.min(Instant::now() + LEADER_WAIT);
    // The leader this node's replica knows first: it follows its group's elections, while
    // the remembered one is only corrected by a forward that fails (a leader paused, not
    // dead, had every first append through a node after the election forwarded to it and
    // end at the deadline with an unknown outcome, however long after, even on the new
    // leader itself). The remembered one serves a node without a replica.
    let mut leader = first
        .or_else(|| fwd.board().leader_of(id))
        .or_else(|| fwd.leader_of(id))
        .unwrap_or(me);
    loop {
        if leader == me {
            match local.append(id, batch.clone()).await {
                Err(seam::Error::NotLeader { .. } | seam::Error::NoLeader(_))
                    if redirects < MAX_REDIRECTS =>
                {
                    redirects += 1;
                    match await_leader(local, id, me, deadline).await? {
                        Some(l) if l == me => {
                            // Still leading here, but not taking proposals (a leadership
                            // transfer under way): ask again in a moment, for as long as
                            // an append waits for a leader.
                            if Instant::now() >= transfer_until {
                                return no_leader(stats, id);
                            }
                            redirects -= 1;
                            glommio::timer::sleep(Duration::from_millis(50)).await;
                        }
                        Some(l) => {
                            fwd.remember(id, Some(l));
                            leader = l;
                        }
                        None => {
                            fwd.remember(id, None);
                            return no_leader(stats, id);
                        }
                    }
                }
                r => return r,
            }
            continue;
        }
        match fwd.forward(leader, id, &batch, deadline).await {
            Err(seam::Error::NotLeader { leader_id, .. })
                if redirects < MAX_REDIRECTS && Instant::now() < deadline =>
            {
                // That node lost leadership before proposing it: follow the leader it
                // names, or the one our own replica learns.
                redirects += 1;
                add(&stats.redirects, 1);
                let named = leader_id.and_then(|s| s.parse::<u64>().ok());
                leader = match named {
                    Some(l) if l != leader => l,
                    _ => {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                        match await_leader(local, id, me, deadline).await? {
                            Some(l) => l,
                            None => {
                                fwd.remember(id, None);
                                return no_leader(stats, id);
                            }
                        }
                    }
                };
                fwd.remember(id, Some(leader));
            }
            Err(e @ seam::Error::Unavailable(_))
                if fwd.unreachable(leader).is_some() && Instant::now() < transfer_until =>
            {
                // Nothing was sent: the leader's node cannot be reached (killed, cut off).
                // Its followers elect another within an election timeout, which this node's
                // replica learns from the new leader's first message: hold the append until
                // then and send it there, rather than refuse it and have every client retry
                // blindly. Without another leader, send it to the same node again once its
                // link may connect again.
                add(&stats.reroutes, 1);
                match await_reroute(local, fwd, id, me, leader, transfer_until).await? {
                    Some(l) => {
                        fwd.remember(id, Some(l));
                        leader = l;
                    }
                    None => {
                        fwd.remember(id, None);
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                if matches!(
                    e,
                    seam::Error::Unavailable(_)
                        | seam::Error::OutcomeUnknown(_)
                        | seam::Error::NoLeader(_)
                        | seam::Error::NotLeader { .. }
                ) {
                    fwd.remember(id, None);
                }
                return Err(e);
            }
            Ok(a) => return Ok(a),
        }
    }
}

/// Who leads `id`, as this node's replica sees it, waiting up to [`LEADER_WAIT`] (within
/// `deadline`) while it knows no leader: an election, or a leadership transfer, usually ends
/// within that, and an append that waits for it is not refused. `None`: still no leader.
async fn await_leader(
    local: &LocalPartitions,
    id: &PartitionId,
    me: u64,
    deadline: Instant,
) -> seam::Result<Option<u64>> {
    let until = deadline.min(Instant::now() + LEADER_WAIT);
    loop {
        let known = leader_here(local, id, me, None).await?;
        if known.is_some() || Instant::now() >= until {
            return Ok(known);
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// Where to send an append whose leader `old` could not be reached: the leader this node's
/// replica names once it is another node (or this one), or `old` again once its link's
/// backoff has ended; `None` at `until`.
async fn await_reroute(
    local: &LocalPartitions,
    fwd: &Forwarder,
    id: &PartitionId,
    me: u64,
    old: u64,
    until: Instant,
) -> seam::Result<Option<u64>> {
    loop {
        let known = leader_here(local, id, me, Some(old)).await?;
        if known.is_some() {
            return Ok(known);
        }
        if fwd.unreachable(old) != Some(true) {
            return Ok(Some(old));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader of `id` this node's replica knows of now, other than `except`: this node when
/// it leads (or when there is no replication layer: it takes every append).
async fn leader_here(
    local: &LocalPartitions,
    id: &PartitionId,
    me: u64,
    except: Option<u64>,
) -> seam::Result<Option<u64>> {
    Ok(match local.replica_status(id).await? {
        Some(s) if s.is_leader => Some(me),
        Some(s) => s.leader.filter(|&l| l != me && Some(l) != except),
        None => Some(me),
    })
}

fn no_leader(stats: &ForwardStats, id: &PartitionId) -> Answer {
    add(&stats.no_leader, 1);
    Err(seam::Error::NoLeader(id.to_string()))
}

/// The seam's error as a forward answer carries it.
pub fn to_wire(e: &seam::Error) -> ForwardError {
    use seam::Error as E;
    let mut w = ForwardError {
        message: e.to_string(),
        ..ForwardError::default()
    };
    let kind = match e {
        E::NotFound(_) | E::OffsetOutOfRange { .. } => ForwardErrorKind::ForwardErrorNotFound,
        E::InvalidArgument(_) | E::AlreadyExists(_) => {
            ForwardErrorKind::ForwardErrorInvalidArgument
        }
        E::TooLarge {
            what,
            size,
            limit,
            unit,
        } => {
            w.what = (*what).into();
            w.size = *size as u64;
            w.limit = *limit as u64;
            w.unit = (*unit).into();
            ForwardErrorKind::ForwardErrorTooLarge
        }
        E::Overloaded { shard, depth } => {
            w.shard = *shard as u64;
            w.depth = *depth as u64;
            ForwardErrorKind::ForwardErrorOverloaded
        }
        E::NotWritable {
            partition,
            writability,
            ..
        } => {
            w.partition = partition.clone();
            match writability {
                Writability::DiskFull { free_bytes } => {
                    w.free_bytes = *free_bytes;
                    ForwardErrorKind::ForwardErrorDiskFull
                }
                _ => ForwardErrorKind::ForwardErrorLatched,
            }
        }
        E::NotLeader {
            leader_id,
            leader_addr,
        } => {
            w.leader_id = leader_id.clone().unwrap_or_default();
            w.leader_addr = leader_addr.clone().unwrap_or_default();
            ForwardErrorKind::ForwardErrorNotLeader
        }
        E::NoLeader(p) => {
            w.partition = p.clone();
            ForwardErrorKind::ForwardErrorNoLeader
        }
        E::OutcomeUnknown(m) => {
            w.message = m.clone();
            ForwardErrorKind::ForwardErrorOutcomeUnknown
        }
        E::Unavailable(_) => ForwardErrorKind::ForwardErrorUnavailable,
        E::Internal(_) => ForwardErrorKind::ForwardErrorInternal,
        E::DataLoss(_) => ForwardErrorKind::ForwardErrorDataLoss,
        E::Exhausted(_) => ForwardErrorKind::ForwardErrorExhausted,
    };
    w.kind = kind as i32;
    w
}

/// A forward answer's error as the seam's (a kind this node does not know is `Internal`).
pub fn from_wire(w: ForwardError) -> seam::Error {
    use seam::Error as E;
    let opt = |s: String| (!s.is_empty()).then_some(s);
    let kind =
        ForwardErrorKind::try_from(w.kind).unwrap_or(ForwardErrorKind::ForwardErrorUnspecified);
    let from_leader = |m: &str| format!("the partition's leader answered: {m}");
    match kind {
        ForwardErrorKind::ForwardErrorNotFound => E::NotFound(w.message),
        ForwardErrorKind::ForwardErrorInvalidArgument => {
            E::InvalidArgument(from_leader(&w.message))
        }
        ForwardErrorKind::ForwardErrorTooLarge => E::TooLarge {
            what: if w.what == "record" {
                "record"
            } else {
                "batch"
            },
            size: w.size as usize,
            limit: w.limit as usize,
            unit: if w.unit == "records" {
                "records"
            } else {
                "bytes"
            },
        },
        ForwardErrorKind::ForwardErrorOverloaded => E::Overloaded {
            shard: w.shard as usize,
            depth: w.depth as usize,
        },
        ForwardErrorKind::ForwardErrorDiskFull => E::NotWritable {
            partition: w.partition,
            writability: Writability::DiskFull {
                free_bytes: w.free_bytes,
            },
            reason: from_leader(&w.message),
        },
        ForwardErrorKind::ForwardErrorLatched => E::NotWritable {
            partition: w.partition,
            writability: Writability::Latched {
                cause: w.message.clone(),
            },
            reason: from_leader(&w.message),
        },
        ForwardErrorKind::ForwardErrorNotLeader => E::NotLeader {
            leader_id: opt(w.leader_id),
            leader_addr: opt(w.leader_addr),
        },
        ForwardErrorKind::ForwardErrorNoLeader => E::NoLeader(w.partition),
        ForwardErrorKind::ForwardErrorOutcomeUnknown => E::OutcomeUnknown(w.message),
        ForwardErrorKind::ForwardErrorUnavailable => E::Unavailable(from_leader(&w.message)),
        ForwardErrorKind::ForwardErrorDataLoss => E::DataLoss(from_leader(&w.message)),
        ForwardErrorKind::ForwardErrorExhausted => E::Exhausted(from_leader(&w.message)),
        ForwardErrorKind::ForwardErrorInternal | ForwardErrorKind::ForwardErrorUnspecified => {
            E::Internal(from_leader(&w.message))
        }
    }
}

/// Serves a connection whose first frame header (length, kind) the peer channel's router
/// has read: forwarded appends, answered in the order they complete.
pub async fn serve_from(
    engine: &EngineHandle,
    peers: &Peers,
    mut conn: PeerConn,
    first: Option<(usize, u8)>,
) {
    let stats = &peers.forward;
    if conn.tls.is_none() && !conn.peer.is_some_and(|a| peers.knows_ip(a.ip())) {
        add(&stats.refused, 1);
        net::conn_log!(
            log::Level::Warn,
            "forward-refused",
            "forwarding: connection from {:?} refused: no peer TLS, and not a known member's \
             address",
            conn.peer
        );
        close_gracefully(&mut conn).await;
        return;
    }
    let local = LocalFactory::new(
        engine.clone(),
        NodeRef {
            id: String::new(),
            addr: String::new(),
        },
    )
    .local();
    let peer_addr = conn.peer;
    let (rd, wr) = tokio::io::split(conn.stream);
    let out = Rc::new(Outbox {
        answers: RefCell::new(VecDeque::new()),
        wake: Event::new(),
        in_flight: Cell::new(0),
        waits: Cell::new(0),
    });
    let why = futures_lite::future::or(
        read_requests(&local, rd, first, &out, peers),
        write_answers(wr, &out),
    )
    .await;
    log::info!(
        "forwarding: connection from {} closed: {why}",
        net::show_peer(&peer_addr)
    );
}

/// Answers of one served connection waiting to be written.
struct Outbox {
    /// Encoded answers and their frame kinds.
    answers: RefCell<VecDeque<(u8, Vec<u8>)>>,
    wake: Event,
    /// Appends and reads started and not answered yet.
    in_flight: Cell<usize>,
    /// Tails' waits held (not counted in `in_flight`: they take seconds).
    waits: Cell<usize>,
}

impl Outbox {
    fn push(&self, kind: u8, bytes: Vec<u8>) {
        self.answers.borrow_mut().push_back((kind, bytes));
        self.wake.notify(usize::MAX);
    }
}

async fn read_requests(
    local: &Rc<LocalPartitions>,
    mut rd: tokio::io::ReadHalf<Box<dyn peer::PeerIo>>,
    mut first: Option<(usize, u8)>,
    out: &Rc<Outbox>,
    peers: &Peers,
) -> String {
    let stats = &peers.forward;
    // A node of another cluster (its Raft ids, groups and topics' incarnations may equal
    // this one's): nothing it asks is served.
    let foreign = |theirs: &str| {
        let why = peers.other_cluster(theirs)?;
        add(&stats.foreign, 1);
        net::conn_log!(
            log::Level::Warn,
            "forward-foreign",
            "forwarding: closing a connection: {why}"
        );
        Some(why)
    };
    loop {
        // Bounded: past the limit, stop reading (TCP stops the sender).
        loop {
            let listener = out.wake.listen();
            if out.in_flight.get() < SERVE_MAX_IN_FLIGHT {
                break;
            }
            listener.await;
        }
        let head = match first.take() {
            Some(h) => Ok(Some(h)),
            None => peer::read_header(&mut rd).await,
        };
        let read = match head {
            Ok(Some((len, _))) if len > MAX_FRAME_BYTES => Err(peer::FrameError::TooLarge {
                len,
                max: MAX_FRAME_BYTES,
            }),
            Ok(Some((len, kind))) => peer::read_payload(&mut rd, len)
                .await
                .map(|p| Some((kind, p))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let (kind, payload) = match read {
            Ok(Some(f)) => f,
            Ok(None) => return "closed by the peer".into(),
            Err(e) => {
                match e {
                    peer::FrameError::TooLarge { .. } => add(&stats.oversized, 1),
                    peer::FrameError::Io(_) => {}
                    _ => add(&stats.malformed, 1),
                }
                return e.to_string();
            }
        };
        if kind == READ_REQUEST {
            match decode_read(payload) {
                Ok(r) => {
                    if let Some(why) = foreign(&r.0.cluster_id) {
                        return why;
                    }
                    serve_read(local, out, r)
                }
                Err(why) => {
                    add(&stats.malformed, 1);
                    log::warn!("forwarding: closing a connection: {why}");
                    return why;
                }
            }
            continue;
        }
        let request = match decode_request(kind, payload) {
            Ok(r) => r,
            Err(why) => {
                add(&stats.malformed, 1);
                log::warn!("forwarding: closing a connection: {why}");
                return why;
            }
        };
        let (request_id, id, batch, incarnation, cluster_id) = request;
        if let Some(why) = foreign(&cluster_id) {
            return why;
        }
        out.in_flight.set(out.in_flight.get() + 1);
        let (local, out2) = (Rc::clone(local), Rc::clone(out));
        glommio::spawn_local(async move {
            let appended = match other_topic(&local, &id, incarnation) {
                Some(e) => Err(e),
                None => local.append(&id, batch).await,
            };
            let outcome = match appended {
                Ok(a) => forward_response::Outcome::Appended(ForwardAppended {
                    base_offset: a.base_offset,
                    last_offset: a.last_offset,
                }),
                Err(e) => forward_response::Outcome::Error(to_wire(&e)),
            };
            let bytes = ForwardResponse {
                request_id,
                outcome: Some(outcome),
            }
            .encode_to_vec();
            out2.in_flight.set(out2.in_flight.get() - 1);
            out2.push(FORWARD_RESPONSE, bytes);
        })
        .detach();
        add(&stats.served, 1);
    }
}

/// The largest read a peer may ask for: what one gRPC response could carry.
const MAX_READ_BYTES: u64 = 16 << 20;
const MAX_READ_RECORDS: u64 = 100_000;

/// A read request decoded and checked.
fn decode_read(payload: Vec<u8>) -> Result<(ReadRequest, PartitionId), String> {
    let r = ReadRequest::decode(bytes::Bytes::from(payload))
        .map_err(|e| format!("a read request that does not decode: {e}"))?;
    if r.topic.is_empty() {
        return Err("a read request without a topic".into());
    }
    if ReadMode::try_from(r.mode).is_err() {
        return Err(format!("a read request of unknown mode {}", r.mode));
    }
    let id = PartitionId::new(&r.topic, r.partition);
    Ok((r, id))
}

/// Serves one read of this node's replica for another node, beside the connection's loop.
fn serve_read(local: &Rc<LocalPartitions>, out: &Rc<Outbox>, (r, id): (ReadRequest, PartitionId)) {
    let mode = ReadMode::try_from(r.mode).unwrap_or(ReadMode::Read);
    let request_id = r.request_id;
    let answer = move |outcome| {
        ReadResponse {
            request_id,
            outcome: Some(outcome),
        }
        .encode_to_vec()
    };
    if mode == ReadMode::Wait {
        if out.waits.get() >= MAX_WAITS {
            let e = seam::Error::Unavailable("too many waits from this node".into());
            out.push(
                READ_RESPONSE,
                answer(read_response::Outcome::Error(to_wire(&e))),
            );
            return;
        }
        out.waits.set(out.waits.get() + 1);
    } else {
        out.in_flight.set(out.in_flight.get() + 1);
    }
    let (local, out) = (Rc::clone(local), Rc::clone(out));
    glommio::spawn_local(async move {
        let other = other_topic(&local, &id, r.incarnation);
        let outcome = match (other, mode) {
            (Some(e), _) => Err(e),
            (None, ReadMode::Read) => {
                let limits = ReadLimits {
                    max_records: r.max_records.clamp(1, MAX_READ_RECORDS) as usize,
                    max_bytes: r.max_bytes.clamp(1, MAX_READ_BYTES) as usize,
                    past_end: if r.past_end_empty {
                        PastEnd::Empty
                    } else {
                        PastEnd::OutOfRange
                    },
                };
                checked_here(&id, read_here(&local, &id, r.from, limits).await).map(|c| {
                    read_response::Outcome::Chunk(ReadChunk {
                        visible_end: c.visible_end,
                        runs: c.runs.into_iter().map(|run| run.bytes).collect(),
                    })
                })
            }
            (None, ReadMode::Barrier) => local
                .read_barrier(&id)
                .await
                .map(read_response::Outcome::VisibleEnd),
            (None, ReadMode::Describe) => local.describe(&id).await.map(|d| {
                let (writability, free_bytes, cause) = match d.writable {
                    Writability::Writable => (0, 0, String::new()),
                    Writability::DiskFull { free_bytes } => (1, free_bytes, String::new()),
                    Writability::Latched { cause } => (2, 0, cause),
                    Writability::Lost => (3, 0, String::new()),
                    Writability::NoLeader => (4, 0, String::new()),
                };
                read_response::Outcome::Summary(PartitionSummary {
                    lowest_offset: d.lowest_offset,
                    visible_end: d.visible_end,
                    log_end: d.log_end,
                    size_bytes: d.size_bytes,
                    segments: d.segments as u64,
                    writability,
                    free_bytes,
                    cause,
                })
            }),
            (None, ReadMode::Wait) => {
                let waited = glommio::timer::timeout(WAIT_POLL, async {
                    Ok(local.wait_for(&id, r.from).await)
                })
                .await;
                match waited {
                    Ok(r) => r.map(read_response::Outcome::VisibleEnd),
                    // Nothing new yet: the asker asks again.
                    Err(_) => local
                        .describe(&id)
                        .await
                        .map(|d| read_response::Outcome::VisibleEnd(d.visible_end)),
                }
            }
        };
        let mut bytes =
            answer(outcome.unwrap_or_else(|e| read_response::Outcome::Error(to_wire(&e))));
        if bytes.len() + 1 > MAX_FRAME_BYTES {
            let e = seam::Error::Internal(format!(
                "a read of {id} from {} came to {} bytes, over the peer frame maximum",
                r.from,
                bytes.len()
            ));
            bytes = answer(read_response::Outcome::Error(to_wire(&e)));
        }
        if mode == ReadMode::Wait {
            out.waits.set(out.waits.get() - 1);
        } else {
            out.in_flight.set(out.in_flight.get() - 1);
        }
        out.push(READ_RESPONSE, bytes);
    })
    .detach();
}

/// How often an executor logs a replica here that could not serve a read for damage.
const DAMAGE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Whether a read that found damage here logs it: once per [`DAMAGE_LOG_EVERY`] per executor,
/// however many reads (local, or asked by other nodes) find it.
pub(super) fn damage_log_due() -> bool {
    thread_local! {
        static LOGGED: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LOGGED.with(|l| {
        let due = l
            .get()
            .is_none_or(|at| now.duration_since(at) >= DAMAGE_LOG_EVERY);
        if due {
            l.set(Some(now));
        }
        due
    })
}

/// A chunk this node read for another, checked before it goes: damage in this replica's files
/// is `Unavailable` naming it, on which the asker asks the partition's next replica (the
/// damaged bytes never leave), as is damage the read itself found (`DataLoss`: a header that
/// does not parse, a gap between segments, a log marked lost).
fn checked_here(id: &PartitionId, read: seam::Result<Chunk>) -> seam::Result<Chunk> {
    match read.and_then(|c| c.verify().map(|()| c)) {
        Err(e @ seam::Error::DataLoss(_)) => {
            if damage_log_due() {
                log::error!(
                    "partition {id}: this node's replica is damaged ({e}); reads other nodes \
                     ask of it go to its other replicas (logged at most once a minute)"
                );
            }
            Err(seam::Error::Unavailable(format!(
                "this node's replica of {id} cannot serve the read: {e}; ask another replica"
            )))
        }
        r => r,
    }
}

/// A read of this node's replica of `id`, as the Raft seam serves it: a one-shot read that
/// reaches the replica's visible end first learns the leader's commit index (ReadIndex),
/// waits until it is applied here, and reads again, so that a committed offset reads on every
/// replica and an offset past the commit index is out of range on every replica.
pub async fn read_here(
    local: &LocalPartitions,
    id: &PartitionId,
    from: u64,
    limits: ReadLimits,
) -> seam::Result<Chunk> {
    let first = local.read(id, from, limits).await;
    let past_end = match &first {
        Err(seam::Error::OffsetOutOfRange { offset, next, .. }) => offset >= next,
        Ok(c) => c.is_empty() && limits.past_end == PastEnd::OutOfRange,
        Err(_) => false,
    };
    if !past_end {
        return first;
    }
    let visible = match local.read_barrier(id).await {
        Ok(v) => v,
        // This replica stopped for want of space: it cannot learn its group's commit index,
        // which a replica elsewhere can (the group's only voter answers from what it applied
        // instead, and gets here only with others). `NotFound` sends the read there.
        Err(seam::Error::NotWritable {
            reason,
            writability: seam::Writability::DiskFull { .. },
            ..
        }) => {
            return Err(seam::Error::NotFound(format!(
                "this node's replica of {id} cannot tell where its end is: {reason}"
            )))
        }
        Err(e) => return Err(e),
    };
    if visible <= from {
        return first;
    }
    local.read(id, from, limits).await
}

/// A request frame decoded and checked: its id, partition and batch.
fn decode_request(kind: u8, payload: Vec<u8>) -> Result<DecodedAppend, String> {
    if kind != FORWARD_REQUEST {
        return Err(format!(
            "a frame of kind {kind:#04x} on a forward connection"
        ));
    }
    let r = ForwardRequest::decode(bytes::Bytes::from(payload))
        .map_err(|e| format!("a forward request that does not decode: {e}"))?;
    if r.topic.is_empty() {
        return Err("a forward request without a topic".into());
    }
    let batch = EncodedBatch::from_payload(r.payload, r.record_count, r.payload_crc)
        .map_err(|e| format!("a forward request of topic {:?}: {e}", r.topic))?;
    Ok((
        r.request_id,
        PartitionId::new(&r.topic, r.partition),
        batch,
        r.incarnation,
        r.cluster_id,
    ))
}

/// A forward request decoded and checked: its id, partition, batch, the topic's
/// incarnation as the sender knows it, and the sender's cluster id.
type DecodedAppend = (u64, PartitionId, EncodedBatch, u64, String);

/// NOT_FOUND when this node's replica of `id` belongs to another topic of that name than
/// the asker's (`incarnation`; 0: not checked): one of the two has not yet learnt that the
/// topic was deleted and created again. The asker tries another replica.
fn other_topic(local: &LocalPartitions, id: &PartitionId, incarnation: u64) -> Option<seam::Error> {
    if incarnation == 0 {
        return None;
    }
    use engine::seam::Topics as _;
    let here = local.topic(&id.topic).ok()?.config.incarnation;
    (here != incarnation).then(|| {
        seam::Error::NotFound(format!(
            "partition {id}: the replica on this node belongs to another topic of that name \
             (incarnation {here}, asked for {incarnation}; deleted and created again since)"
        ))
    })
}

async fn write_answers(
    mut wr: tokio::io::WriteHalf<Box<dyn peer::PeerIo>>,
    out: &Outbox,
) -> String {
    loop {
        let next = out.answers.borrow_mut().pop_front();
        let Some((kind, bytes)) = next else {
            let listener = out.wake.listen();
            if out.answers.borrow().is_empty() {
                listener.await;
            }
            continue;
        };
        if let Err(e) = peer::write_frame(&mut wr, kind, &bytes).await {
            return format!("write failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_the_wire_as_they_were() {
        let cases = vec![
            seam::Error::NotFound("topic x not found".into()),
            seam::Error::TooLarge {
                what: "record",
                size: 10,
                limit: 5,
                unit: "bytes",
            },
            seam::Error::Overloaded { shard: 1, depth: 9 },
            seam::Error::NotLeader {
                leader_id: Some("3".into()),
                leader_addr: None,
            },
            seam::Error::NoLeader("t/0".into()),
            seam::Error::OutcomeUnknown("lost".into()),
            seam::Error::NotWritable {
                partition: "t/0".into(),
                writability: Writability::DiskFull { free_bytes: 7 },
                reason: "full".into(),
            },
        ];
        for e in cases {
            let back =
                from_wire(ForwardError::decode(to_wire(&e).encode_to_vec().as_slice()).unwrap());
            match (&e, &back) {
                (
                    seam::Error::NotWritable { writability: a, .. },
                    seam::Error::NotWritable { writability: b, .. },
                ) => assert_eq!(a, b),
                _ => assert_eq!(
                    std::mem::discriminant(&e),
                    std::mem::discriminant(&back),
                    "{e:?} -> {back:?}"
                ),
            }
            if !matches!(e, seam::Error::NotWritable { .. }) {
                assert_eq!(e.to_string(), back.to_string());
            }
        }
        // Damaged data stays damaged data, said to come from the leader.
        let e = seam::Error::DataLoss("corrupt data in f at byte 4096: checksum mismatch".into());
        match from_wire(ForwardError::decode(to_wire(&e).encode_to_vec().as_slice()).unwrap()) {
            seam::Error::DataLoss(m) => assert_eq!(
                m,
                "the partition's leader answered: corrupt data in f at byte 4096: checksum \
                 mismatch"
            ),
            other => panic!("{other:?}"),
        }
        // So does a bound of the leader's resources.
        let e = seam::Error::Exhausted("no file descriptor left".into());
        match from_wire(ForwardError::decode(to_wire(&e).encode_to_vec().as_slice()).unwrap()) {
            seam::Error::Exhausted(m) => assert_eq!(
                m,
                "the partition's leader answered: no file descriptor left"
            ),
            other => panic!("{other:?}"),
        }
        // A kind from a newer node is an internal error, never a panic.
        let w = ForwardError {
            kind: 999,
            message: "?".into(),
            ..ForwardError::default()
        };
        assert!(matches!(from_wire(w), seam::Error::Internal(_)));
    }

    /// The example drawn byte by byte in docs/format.md.
    #[test]
    fn a_request_frame_is_laid_out_as_documented() {
        let batch = EncodedBatch::encode(&[engine::NewRecord::new(b"abc".to_vec())]).unwrap();
        let req = ForwardRequest {
            request_id: 1,
            topic: "t".into(),
            partition: 0,
            record_count: 1,
            payload_crc: batch.payload_crc(),
            payload: batch.payload().clone(),
            incarnation: 0,
            cluster_id: String::new(),
        }
        .encode_to_vec();
        let mut frame = Vec::new();
        futures_lite::future::block_on(peer::write_frame(&mut frame, FORWARD_REQUEST, &req))
            .unwrap();
        let crc = batch.payload_crc().to_le_bytes();
        let mut want = vec![
            0x1A, 0, 0, 0, 0x28, 0x08, 0x01, 0x12, 0x01, b't', 0x20, 0x01, 0x2D,
        ];
        want.extend_from_slice(&crc);
        want.extend_from_slice(&[0x32, 0x0B, 3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c']);
        assert_eq!(frame, want);
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(decode_request(FORWARD_RESPONSE, Vec::new()).is_err());
        assert!(decode_request(FORWARD_REQUEST, vec![0xFF; 7]).is_err());
        let batch = EncodedBatch::encode(&[engine::NewRecord::new(b"abc".to_vec())]).unwrap();
        let good = ForwardRequest {
            request_id: 1,
            topic: "t".into(),
            partition: 0,
            record_count: 1,
            payload_crc: batch.payload_crc(),
            payload: batch.payload().clone(),
            incarnation: 0,
            cluster_id: String::new(),
        };
        assert!(decode_request(FORWARD_REQUEST, good.encode_to_vec()).is_ok());
        let wrong_count = ForwardRequest {
            record_count: 2,
            ..good.clone()
        };
        assert!(decode_request(FORWARD_REQUEST, wrong_count.encode_to_vec()).is_err());
        let wrong_crc = ForwardRequest {
            payload_crc: batch.payload_crc() ^ 1,
            ..good.clone()
        };
        assert!(decode_request(FORWARD_REQUEST, wrong_crc.encode_to_vec()).is_err());
        let mut cut = batch.payload().to_vec();
        cut.pop();
        let overrun = ForwardRequest {
            payload: cut.into(),
            ..good
        };
        assert!(decode_request(FORWARD_REQUEST, overrun.encode_to_vec()).is_err());
    }

    /// Forward and read requests from a peer, and the answers a leader sends back, mutated
    /// (see `crate::mutation`).
    #[test]
    fn mutated_frames_never_panic() {
        use crate::mutation::{iterations, Mutator};
        use rand::Rng;
        let mut m = Mutator::new();
        let corpus: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                let records: Vec<engine::NewRecord> = (0..=i)
                    .map(|j| engine::NewRecord::new(vec![j as u8; j * 3]))
                    .collect();
                let batch = EncodedBatch::encode(&records).unwrap();
                ForwardRequest {
                    request_id: m.rng.random(),
                    topic: "orders".into(),
                    partition: m.rng.random_range(0..4),
                    record_count: batch.record_count(),
                    payload_crc: batch.payload_crc(),
                    payload: batch.payload().clone(),
                    incarnation: i as u64,
                    cluster_id: if i % 2 == 0 {
                        String::new()
                    } else {
                        "c1".into()
                    },
                }
                .encode_to_vec()
            })
            .collect();
        m.run("forward request", &corpus, iterations(200_000), |b| {
            let Ok((id, partition, batch, incarnation, cluster_id)) =
                decode_request(FORWARD_REQUEST, b.to_vec())
            else {
                return;
            };
            let again = ForwardRequest {
                request_id: id,
                topic: partition.topic.to_string(),
                partition: partition.partition,
                record_count: batch.record_count(),
                payload_crc: batch.payload_crc(),
                payload: batch.payload().clone(),
                incarnation,
                cluster_id: cluster_id.clone(),
            };
            let again =
                decode_request(FORWARD_REQUEST, again.encode_to_vec()).expect("decodes again");
            assert_eq!(again, (id, partition, batch, incarnation, cluster_id));
        });
        let corpus: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                ReadRequest {
                    request_id: m.rng.random(),
                    topic: "orders".into(),
                    partition: 1,
                    mode: i,
                    from: m.rng.random(),
                    max_records: m.rng.random(),
                    max_bytes: m.rng.random(),
                    past_end_empty: i % 2 == 0,
                    incarnation: u64::from(i as u32),
                    cluster_id: if i % 2 == 0 {
                        String::new()
                    } else {
                        "c1".into()
                    },
                }
                .encode_to_vec()
            })
            .collect();
        m.run("read request", &corpus, iterations(200_000), |b| {
            if let Ok((r, _)) = decode_read(b.to_vec()) {
                assert_eq!(decode_read(r.encode_to_vec()).map(|x| x.0), Ok(r));
            }
        });
        let corpus: Vec<Vec<u8>> = [
            forward_response::Outcome::Appended(ForwardAppended {
                base_offset: 3,
                last_offset: 9,
            }),
            forward_response::Outcome::Error(to_wire(&seam::Error::TooLarge {
                what: "record",
                size: 1 << 40,
                limit: 10,
                unit: "bytes",
            })),
            forward_response::Outcome::Error(to_wire(&seam::Error::NotWritable {
                partition: "orders/1".into(),
                writability: Writability::DiskFull { free_bytes: 7 },
                reason: "full".into(),
            })),
        ]
        .into_iter()
        .map(|o| {
            ForwardResponse {
                request_id: 5,
                outcome: Some(o),
            }
            .encode_to_vec()
        })
        .chain([ReadResponse {
            request_id: 6,
            outcome: Some(read_response::Outcome::Summary(PartitionSummary::default())),
        }
        .encode_to_vec()])
        .collect();
        m.run("forward answer", &corpus, iterations(200_000), |b| {
            if let Ok(r) = ForwardResponse::decode(b) {
                assert_eq!(
                    ForwardResponse::decode(r.encode_to_vec().as_slice()),
                    Ok(r.clone())
                );
                if let Some(forward_response::Outcome::Error(e)) = r.outcome {
                    let _ = from_wire(e).to_string();
                }
            }
            if let Ok(r) = ReadResponse::decode(b) {
                if let Some(read_response::Outcome::Error(e)) = r.outcome {
                    let _ = from_wire(e).to_string();
                }
            }
        });
    }
}
