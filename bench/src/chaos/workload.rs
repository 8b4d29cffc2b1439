//! The workload: producers and consumers on one glommio executor in the client namespace,
//! recording every operation.
//!
//! - unary producers (`p0`, ...): one Produce at a time, to a random partition, at their
//!   share of `--rate`;
//! - stream producers (`s0`, ...): ProduceStream sessions of a few hundred values, up to
//!   [`STREAM_WINDOW`] unanswered; a session that fails or stalls leaves its unanswered
//!   values unknown;
//! - per partition a tailing consumer (`t<p>`, ConsumeStream) and a polling consumer
//!   (`c<p>`, unary Consume), each always asking for the offset after the last one it read,
//!   reconnecting to a random node after any error.
//!
//! Every value is unique (`<producer>-<sequence>`, padded with dots). A producer goes to a
//! random node, or to the leader a NOT_LEADER named. The run stops producing at
//! [`Phase::Drain`], and consumers stop once they reach the drain targets (every
//! partition's end after healing) or at [`Phase::Stop`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use net::client::{CallOptions, Channel};
use net::{Code, Status};
use proto::log::v1::{
    paths, ConsumeRequest, ConsumeResponse, ProduceRequest, ProduceResponse, Record,
};

use super::client::{
    classify, client_config, cluster_reason, padded, value_key, Target, OP_TIMEOUT,
};
use super::history::{Api, Consumer, Op, Outcome, Read};
use super::net::CLIENT_NS;
use super::sys::enter_ns;
use crate::Rng;

/// Unanswered values on one ProduceStream.
pub const STREAM_WINDOW: usize = 8;
/// Values per ProduceStream session before it is closed and another opened.
const STREAM_SESSION: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Run = 0,
    Drain = 1,
    Stop = 2,
}

/// What the run and the workload share.
#[derive(Default)]
pub struct Control {
    phase: AtomicU8,
    /// Per partition: the offset consumers must reach before they stop (set at drain).
    targets: Mutex<Option<Vec<u64>>>,
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub unknown: AtomicU64,
    pub reads: AtomicU64,
    /// Producer tasks still running: the drain targets are taken once it is zero.
    pub producers: AtomicU64,
    /// Consumer tasks still running.
    pub consumers: AtomicU64,
}

impl Control {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Run,
            1 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.fetch_max(p as u8, Ordering::SeqCst);
    }

    pub fn consumers_left(&self) -> u64 {
        self.consumers.load(Ordering::SeqCst)
    }

    pub fn set_targets(&self, t: Vec<u64>) {
        *self.targets.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    /// Whether a consumer of `p` that will next ask for `next` is done.
    fn consumer_done(&self, p: u32, next: u64) -> bool {
        match self.phase() {
            Phase::Run => false,
            Phase::Stop => true,
            Phase::Drain => self
                .targets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|t| t.get(p as usize).copied())
                .is_some_and(|end| next >= end),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub targets: Vec<Target>,
    pub topic: String,
    pub partitions: u32,
    pub producers: usize,
    pub stream_producers: usize,
    pub rate: f64,
    pub value_bytes: usize,
    pub seed: u64,
    pub epoch: Instant,
}

/// What the workload recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ops: Vec<Op>,
    pub reads: Vec<Read>,
    pub consumers: Vec<Consumer>,
}

struct Ctx {
    cfg: Config,
    control: Arc<Control>,
    rec: RefCell<Recorded>,
    next_id: std::cell::Cell<u64>,
}

impl Ctx {
    fn now_ms(&self) -> f64 {
        self.cfg.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Records an operation as invoked; returns its index.
    fn invoke(&self, client: &str, api: Api, node: usize, p: u32, value: String) -> usize {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let now = self.now_ms();
        let mut rec = self.rec.borrow_mut();
        rec.ops.push(Op {
            id,
            client: client.to_owned(),
            api,
            node: self.cfg.targets[node].name.clone(),
            partition: p,
            value,
            invoke_ms: now,
            complete_ms: now,
            outcome: Outcome::Unknown,
            offset: None,
            error: None,
        });
        rec.ops.len() - 1
    }

    fn complete(&self, i: usize, outcome: Outcome, offset: Option<u64>, error: Option<String>) {
        let now = self.now_ms();
        let mut rec = self.rec.borrow_mut();
        let op = &mut rec.ops[i];
        op.complete_ms = now;
        op.outcome = outcome;
        op.offset = offset;
        op.error = error;
        match outcome {
            Outcome::Ok => &self.control.ok,
            Outcome::Fail => &self.control.fail,
            Outcome::Unknown => &self.control.unknown,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self, consumer: &str, api: Api, session: u64, node: usize, p: u32, r: &Record) {
        self.control.reads.fetch_add(1, Ordering::Relaxed);
        let at = self.now_ms();
        self.rec.borrow_mut().reads.push(Read {
            consumer: consumer.to_owned(),
            api,
            session,
            node: self.cfg.targets[node].name.clone(),
            partition: p,
            offset: r.offset,
            value: value_key(&r.value),
            at_ms: at,
        });
    }

    /// The node a NOT_LEADER named, by address or host name.
    fn target_of(&self, addr: &str) -> Option<usize> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        self.cfg.targets.iter().position(|t| {
            t.addr.to_string() == addr || t.name == host || t.addr.ip().to_string() == host
        })
    }

    fn producing(&self) -> bool {
        self.control.phase() == Phase::Run
    }
}

/// Channels of one task, one per node, opened on first use and dropped after an error that
/// may have broken them.
#[derive(Default)]
struct Channels(HashMap<usize, Channel>);

impl Channels {
    async fn get(&mut self, ctx: &Ctx, t: usize) -> Result<Channel, String> {
        if let Some(c) = self.0.get(&t) {
            return Ok(c.clone());
        }
        let c = Channel::connect(ctx.cfg.targets[t].addr, client_config())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        self.0.insert(t, c.clone());
        Ok(c)
    }

    fn drop_node(&mut self, t: usize) {
        self.0.remove(&t);
    }
}

/// Starts the workload on its own thread in the client namespace.
pub fn start(cfg: Config, control: Arc<Control>) -> JoinHandle<Result<Recorded>> {
    std::thread::spawn(move || {
        enter_ns(CLIENT_NS)?;
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .name("chaos-workload")
            .make()
            .map_err(|e| anyhow!("workload executor: {e}"))?;
        ex.run(async move {
            let mut consumers = Vec::new();
            for p in 0..cfg.partitions {
                consumers.push(Consumer {
                    name: format!("t{p}"),
                    api: Api::ConsumeStream,
                    partition: p,
                });
                consumers.push(Consumer {
                    name: format!("c{p}"),
                    api: Api::Consume,
                    partition: p,
                });
            }
            let ctx = Rc::new(Ctx {
                cfg,
                control,
                rec: RefCell::new(Recorded {
                    consumers: consumers.clone(),
                    ..Default::default()
                }),
                next_id: std::cell::Cell::new(0),
            });
            let mut tasks = Vec::new();
            let total = ctx.cfg.producers + ctx.cfg.stream_producers;
            let interval = Duration::from_secs_f64(total as f64 / ctx.cfg.rate);
            ctx.control.producers.store(total as u64, Ordering::SeqCst);
            for i in 0..ctx.cfg.producers {
                tasks.push(glommio::spawn_local(unary_producer(
                    ctx.clone(),
                    i,
                    interval,
                )));
            }
            for i in 0..ctx.cfg.stream_producers {
                tasks.push(glommio::spawn_local(stream_producer(
                    ctx.clone(),
                    i,
                    interval,
                )));
            }
            ctx.control
                .consumers
                .store(consumers.len() as u64, Ordering::SeqCst);
            for c in consumers {
                tasks.push(match c.api {
                    Api::ConsumeStream => glommio::spawn_local(tail(ctx.clone(), c)),
                    _ => glommio::spawn_local(poll(ctx.clone(), c)),
                });
            }
            for t in tasks {
                t.await;
            }
            let rec = std::mem::take(&mut *ctx.rec.borrow_mut());
            Ok(rec)
        })
    })
}

fn task_rng(ctx: &Ctx, name: &str) -> Rng {
    let mut h = ctx.cfg.seed;
    for b in name.bytes() {
        h = h.wrapping_mul(0x100_0000_01b3) ^ u64::from(b);
    }
    Rng::new(h)
}

/// Waits for the next send time of a paced producer (no bursts to catch up).
async fn pace(next: &mut Instant, interval: Duration) {
    let now = Instant::now();
    if *next > now {
        glommio::timer::sleep(*next - now).await;
    }
    *next = (*next + interval).max(Instant::now());
}

async fn unary_producer(ctx: Rc<Ctx>, i: usize, interval: Duration) {
    let name = format!("p{i}");
    let mut rng = task_rng(&ctx, &name);
    let mut chans = Channels::default();
    let n = ctx.cfg.targets.len() as u64;
    let mut prefer: Vec<Option<usize>> = vec![None; ctx.cfg.partitions as usize];
    let mut next = Instant::now();
    let mut seq = 0u64;
    while ctx.producing() {
        pace(&mut next, interval).await;
        let p = rng.below(u64::from(ctx.cfg.partitions)) as u32;
        let t = prefer[p as usize].unwrap_or_else(|| rng.below(n) as usize);
        let id = format!("{name}-{seq:08}");
        seq += 1;
        let op = ctx.invoke(&name, Api::Produce, t, p, id.clone());
        let ch = match chans.get(&ctx, t).await {
            Ok(ch) => ch,
            Err(e) => {
                // Nothing was sent.
                ctx.complete(op, Outcome::Fail, None, Some(e));
                prefer[p as usize] = None;
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let req = ProduceRequest {
            record: Some(Record {
                value: padded(&id, ctx.cfg.value_bytes),
                ..Default::default()
            }),
            topic: ctx.cfg.topic.clone(),
            partition: p,
        };
        let r: Result<ProduceResponse, Status> = ch
            .unary_prost(paths::PRODUCE, &req, CallOptions::timeout(OP_TIMEOUT))
            .await;
        match r {
            Ok(resp) => ctx.complete(op, Outcome::Ok, Some(resp.offset), None),
            Err(st) => {
                let (outcome, err) = classify(&st);
                ctx.complete(op, outcome, None, Some(err));
                prefer[p as usize] = follow_leader(&ctx, &st);
                if outcome == Outcome::Unknown {
                    chans.drop_node(t);
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    ctx.control.producers.fetch_sub(1, Ordering::SeqCst);
}

/// Where a NOT_LEADER says the leader is.
fn follow_leader(ctx: &Ctx, st: &Status) -> Option<usize> {
    cluster_reason(st)
        .and_then(|(_, leader)| leader)
        .and_then(|addr| ctx.target_of(&addr))
}

async fn stream_producer(ctx: Rc<Ctx>, i: usize, interval: Duration) {
    let name = format!("s{i}");
    let mut rng = task_rng(&ctx, &name);
    let n = ctx.cfg.targets.len() as u64;
    let mut prefer: Option<usize> = None;
    let mut next = Instant::now();
    let mut seq = 0u64;
    while ctx.producing() {
        let p = rng.below(u64::from(ctx.cfg.partitions)) as u32;
        let t = prefer.take().unwrap_or_else(|| rng.below(n) as usize);
        match stream_session(&ctx, &name, t, p, &mut seq, &mut next, interval).await {
            Ok(()) => {}
            Err(st) => {
                prefer = st.as_ref().and_then(|st| follow_leader(&ctx, st));
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ctx.control.producers.fetch_sub(1, Ordering::SeqCst);
}

/// One ProduceStream: sends paced values with at most [`STREAM_WINDOW`] unanswered, matches
/// answers to them in order. Ends after [`STREAM_SESSION`] values or when producing stops;
/// on an error or a stall every unanswered value is unknown (an answer that proves they
/// were not written would have to name them one by one).
async fn stream_session(
    ctx: &Rc<Ctx>,
    name: &str,
    t: usize,
    p: u32,
    seq: &mut u64,
    next: &mut Instant,
    interval: Duration,
) -> Result<(), Option<Status>> {
    let ch = Channel::connect(ctx.cfg.targets[t].addr, client_config())
        .await
        .map_err(|_| None)?;
    let (mut tx, mut rx) = ch
        .streaming(paths::PRODUCE_STREAM, CallOptions::default())
        .await
        .map_err(Some)?;
    let pending: Rc<RefCell<VecDeque<(usize, Instant)>>> = Rc::default();
    let done = Rc::new(std::cell::Cell::new(false));
    let receiver = {
        let (ctx, pending, done) = (ctx.clone(), pending.clone(), done.clone());
        glommio::spawn_local(async move {
            let stalled = async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    let oldest = pending.borrow().front().map(|(_, at)| *at);
                    if oldest.is_some_and(|at| at.elapsed() > OP_TIMEOUT) {
                        return Err(Status::new(
                            Code::DeadlineExceeded,
                            "no answer on the stream within the operation timeout",
                        ));
                    }
                }
            };
            let answers = async {
                loop {
                    match rx.message_as::<ProduceResponse>().await {
                        Ok(Some(resp)) => {
                            let Some((op, _)) = pending.borrow_mut().pop_front() else {
                                return Err(Status::internal("an answer to nothing sent"));
                            };
                            ctx.complete(op, Outcome::Ok, Some(resp.offset), None);
                        }
                        Ok(None) => return Ok(()),
                        Err(st) => return Err(st),
                    }
                }
            };
            let r = future::or(answers, stalled).await;
            if let Err(st) = &r {
                let (_, err) = classify(st);
                for (op, _) in pending.borrow_mut().drain(..) {
                    ctx.complete(op, Outcome::Unknown, None, Some(err.clone()));
                }
            }
            done.set(true);
            r
        })
    };
    let mut sent = 0u64;
    while ctx.producing() && sent < STREAM_SESSION && !done.get() {
        pace(next, interval).await;
        while pending.borrow().len() >= STREAM_WINDOW && !done.get() {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        if done.get() {
            break;
        }
        let id = format!("{name}-{:08}", *seq);
        *seq += 1;
        let op = ctx.invoke(name, Api::ProduceStream, t, p, id.clone());
        pending.borrow_mut().push_back((op, Instant::now()));
        let req = ProduceRequest {
            record: Some(Record {
                value: padded(&id, ctx.cfg.value_bytes),
                ..Default::default()
            }),
            topic: ctx.cfg.topic.clone(),
            partition: p,
        };
        if tx.send_message(&req).await.is_err() {
            // The receiver learns why from the stream's status.
            break;
        }
        sent += 1;
    }
    let _ = tx.finish();
    let r = receiver.await;
    // Nothing is left unanswered after a clean end; if something were, it is unknown.
    let err = match &r {
        Ok(()) => "the stream ended OK with values unanswered".to_string(),
        Err(st) => classify(st).1,
    };
    for (op, _) in pending.borrow_mut().drain(..) {
        ctx.complete(op, Outcome::Unknown, None, Some(err.clone()));
    }
    r.map_err(Some)
}

/// A tailing consumer: ConsumeStream from the offset after the last one it read.
async fn tail(ctx: Rc<Ctx>, c: Consumer) {
    let mut rng = task_rng(&ctx, &c.name);
    let n = ctx.cfg.targets.len() as u64;
    let mut next = 0u64;
    let mut session = 0u64;
    while !ctx.control.consumer_done(c.partition, next) {
        let t = rng.below(n) as usize;
        session += 1;
        let r = async {
            let ch = Channel::connect(ctx.cfg.targets[t].addr, client_config())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let req = ConsumeRequest {
                offset: next,
                topic: ctx.cfg.topic.clone(),
                partition: c.partition,
            };
            let mut stream = ch
                .server_streaming(
                    paths::CONSUME_STREAM,
                    prost::Message::encode_to_vec(&req).into(),
                    CallOptions::default(),
                )
                .await?;
            loop {
                // Either a record, or the consumer is done; in that case the stream is
                // dropped, so a half-read message is never resumed.
                let at = next;
                let done = async {
                    while !ctx.control.consumer_done(c.partition, at) {
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(None)
                };
                let Some(resp) = future::or(stream.message_as::<ConsumeResponse>(), done).await?
                else {
                    return Ok::<(), Status>(());
                };
                if let Some(r) = resp.record {
                    ctx.read(&c.name, Api::ConsumeStream, session, t, c.partition, &r);
                    next = r.offset + 1;
                }
            }
        }
        .await;
        if r.is_err() {
            glommio::timer::sleep(Duration::from_millis(200)).await;
        }
    }
    ctx.control.consumers.fetch_sub(1, Ordering::SeqCst);
}

/// A polling consumer: unary Consume of the offset after the last one it read.
async fn poll(ctx: Rc<Ctx>, c: Consumer) {
    let mut rng = task_rng(&ctx, &c.name);
    let n = ctx.cfg.targets.len() as u64;
    let mut next = 0u64;
    let mut session = 0u64;
    let mut chans = Channels::default();
    let mut t = rng.below(n) as usize;
    while !ctx.control.consumer_done(c.partition, next) {
        let ch = match chans.get(&ctx, t).await {
            Ok(ch) => ch,
            Err(_) => {
                t = rng.below(n) as usize;
                session += 1;
                glommio::timer::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let req = ConsumeRequest {
            offset: next,
            topic: ctx.cfg.topic.clone(),
            partition: c.partition,
        };
        let r: Result<ConsumeResponse, Status> = ch
            .unary_prost(paths::CONSUME, &req, CallOptions::timeout(OP_TIMEOUT))
            .await;
        match r {
            Ok(resp) => {
                if let Some(rec) = resp.record {
                    ctx.read(&c.name, Api::Consume, session, t, c.partition, &rec);
                    next = rec.offset + 1;
                }
            }
            Err(st) if st.code == Code::OutOfRange => {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                chans.drop_node(t);
                t = rng.below(n) as usize;
                session += 1;
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    ctx.control.consumers.fetch_sub(1, Ordering::SeqCst);
}
