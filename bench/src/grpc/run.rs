//! Runs the load: the plan of connections and lanes, the executors, and every workload.
//!
//! Each executor is a glommio `LocalExecutor` on its own thread (pinned with `--pin-cpus`).
//! A connection and all its lanes live on one executor, so a lane's bookkeeping (pending
//! requests, its window, its histogram) is plain `Rc`/`RefCell` state with no locks; only
//! the progress counters are shared atomics. Executors meet at a barrier after connecting,
//! so connection set-up is never part of the measurement.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use net::client::{CallOptions, Channel, ClientConfig, Streaming};
use net::Status;
use proto::log::v1::{
    paths, ConsumeRequest, ConsumeResponse, ProduceBatchRequest, ProduceBatchResponse,
    ProduceRequest, ProduceResponse, Record,
};

use super::opts::{ConsumeOrder, Fault, Kind, Opts};
use super::payload::{self, Pattern, Stamp};
use super::stats::{Live, PartStats, Window};
use crate::Rng;

/// Lane ids the set-up phase stamps its records with (load lanes count up from 0).
pub const PREFILL_LANE: u32 = u32::MAX - 1;
pub const PROBE_LANE: u32 = u32::MAX;

/// How long the end of a run waits for requests still in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// Pause before a lane reopens a stream that failed, so a refusing server is not spun on.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One acknowledged record, kept for `--verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ack {
    pub offset: u64,
    pub lane: u32,
    pub seq: u64,
    pub len: u32,
}

/// One workload of the run.
#[derive(Debug, Clone)]
pub struct Part {
    pub kind: Kind,
    pub connections: usize,
    pub streams: usize,
    /// End-to-end consumers (each on its own connection).
    pub consumers: usize,
}

/// Who uses a connection.
#[derive(Debug, Clone, Copy)]
enum Role {
    Load,
    Consumer,
}

#[derive(Debug, Clone)]
struct ConnPlan {
    part: usize,
    role: Role,
    /// Lane ids of the streams on this connection.
    lanes: Vec<u32>,
}

/// Everything the executors share, read-only once the run starts.
pub struct Shared {
    pub opts: Opts,
    pub addr: SocketAddr,
    pub config: ClientConfig,
    pub run_id: u32,
    pub pattern: Pattern,
    pub parts: Vec<Part>,
    pub live: Vec<Live>,
    /// Total lanes per part, to split `--rate`.
    lanes_per_part: Vec<usize>,
    /// Prefilled offsets `[base, end)` for the consume workloads.
    pub prefill: Option<(u64, u64)>,
    /// Where tailing streams start (one past the probe record).
    pub tail_from: Option<u64>,
    fault_done: AtomicBool,
    /// Set once every executor has connected: the window of the run.
    window: OnceLock<Window>,
    failed: Mutex<Option<String>>,
    barrier: Barrier,
    pub finished: AtomicUsize,
}

/// What one executor hands back.
pub struct ExecOut {
    pub parts: Vec<PartStats>,
    pub acks: Vec<Ack>,
    /// Records whose checksum or body failed while consumers read them.
    pub bad_records: u64,
}

/// Per-executor state.
struct Ctx {
    shared: Arc<Shared>,
    window: Window,
    stats: RefCell<Vec<PartStats>>,
    acks: RefCell<Vec<Ack>>,
    bad_records: Cell<u64>,
}

impl Ctx {
    fn verify(&self) -> bool {
        self.shared.opts.verify
    }

    fn error(&self, part: usize, st: &Status, n: u64) {
        let mut stats = self.stats.borrow_mut();
        let s = &mut stats[part];
        *s.errors.entry(st.code.name()).or_default() += n;
        if s.first_error.is_none() {
            s.first_error = Some(format!("{}: {}", st.code.name(), st.message));
        }
        self.shared.live[part].error();
    }

    /// A completed request of `records` records and `bytes` value bytes.
    fn done(&self, part: usize, started: Instant, records: u64, bytes: u64) {
        let now = Instant::now();
        self.shared.live[part].add(records, bytes);
        if self.window.counts(now) {
            let mut stats = self.stats.borrow_mut();
            let s = &mut stats[part];
            s.requests += 1;
            s.records += records;
            s.bytes += bytes;
            s.latency
                .saturating_record(now.saturating_duration_since(started).as_nanos() as u64);
        }
    }

    fn ack(&self, a: Ack) {
        if self.verify() {
            self.acks.borrow_mut().push(a);
        }
    }

    /// Whether this record should be the one sent broken (`--inject-fault`).
    fn take_fault(&self, f: Fault) -> bool {
        self.shared.opts.inject_fault == Some(f)
            && !self.shared.fault_done.swap(true, Ordering::SeqCst)
    }

    fn check_record(&self, value: &[u8]) {
        if !self.verify() {
            return;
        }
        match payload::check(value, Some(&self.shared.pattern)) {
            Ok(_) | Err(payload::Bad::Foreign) => {}
            Err(_) => self.bad_records.set(self.bad_records.get() + 1),
        }
    }
}

/// A request-window slot; dropping it frees the slot.
struct Slot(Rc<Semaphore>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.signal(1);
    }
}

async fn slot(sem: &Rc<Semaphore>) -> Option<Slot> {
    sem.acquire(1).await.ok()?;
    Some(Slot(sem.clone()))
}

/// When each lane sends: at once (closed loop) or on a fixed schedule (open loop).
struct Ticker {
    interval: Option<Duration>,
    next: Instant,
    end: Instant,
}

impl Ticker {
    fn new(shared: &Shared, part: usize, window: &Window, lane_index: usize) -> Ticker {
        let interval = shared.opts.rate.map(|r| {
            let lanes = shared.lanes_per_part[part].max(1) as f64;
            Duration::from_secs_f64(lanes / r)
        });
        // Lanes start staggered within one interval so their requests do not arrive in bursts.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(lane_index as f64 / shared.lanes_per_part[part].max(1) as f64)
        });
        Ticker {
            interval,
            next: window.start + offset,
            end: window.end,
        }
    }

    /// The next request's intended send time; `None` once the run is over. In open loop this
    /// sleeps until that time (unless the lane is behind schedule).
    async fn tick(&mut self) -> Option<Instant> {
        match self.interval {
            None => {
                let now = Instant::now();
                (now < self.end).then_some(now)
            }
            Some(i) => {
                let t = self.next;
                if t >= self.end {
                    return None;
                }
                self.next += i;
                let now = Instant::now();
                if t > now {
                    glommio::timer::sleep(t - now).await;
                }
                Some(t)
            }
        }
    }

    /// The latency origin of a request whose slot was granted now.
    fn origin(&self, intended: Instant) -> Instant {
        if self.interval.is_some() {
            intended
        } else {
            Instant::now()
        }
    }
}

fn topic(shared: &Shared) -> String {
    shared.opts.topic.clone().unwrap_or_default()
}

/// A stamped record value for `lane`'s `seq`.
fn value(ctx: &Ctx, rng: &mut Rng, lane: u32, seq: u64, sent: Instant) -> (Bytes, usize) {
    let len = value_len(ctx, rng);
    let stamp = stamp_of(ctx, lane, seq, sent);
    let v = if ctx.take_fault(Fault::Corrupt) {
        payload::build_corrupt(&ctx.shared.pattern, stamp, len)
    } else {
        payload::build(&ctx.shared.pattern, stamp, len)
    };
    (v, len)
}

/// A value's length: `--record-size`, or a uniform pick from its range.
fn value_len(ctx: &Ctx, rng: &mut Rng) -> usize {
    let sz = ctx.shared.opts.record_size;
    if sz.is_fixed() {
        sz.min
    } else {
        sz.min + rng.below((sz.max - sz.min + 1) as u64) as usize
    }
}

/// The stamp of value `seq` of `lane`, sent at `sent`.
fn stamp_of(ctx: &Ctx, lane: u32, seq: u64, sent: Instant) -> Stamp {
    Stamp {
        run_id: ctx.shared.run_id,
        lane,
        seq,
        sent_ns: ctx.window.ns(sent),
    }
}

/// `n` values ([`value`]) for sequence numbers `first..`, cut from one buffer, with their
/// lengths.
fn values(
    ctx: &Ctx,
    rng: &mut Rng,
    lane: u32,
    first: u64,
    n: usize,
    sent: Instant,
) -> (Vec<Bytes>, Vec<u32>) {
    let lens: Vec<usize> = (0..n).map(|_| value_len(ctx, rng)).collect();
    let mut buf = BytesMut::with_capacity(lens.iter().sum());
    for (i, &len) in lens.iter().enumerate() {
        let stamp = stamp_of(ctx, lane, first + i as u64, sent);
        let corrupt = ctx.take_fault(Fault::Corrupt);
        payload::put(&mut buf, &ctx.shared.pattern, stamp, len, corrupt);
    }
    let all = buf.freeze();
    let mut at = 0;
    let values = lens
        .iter()
        .map(|&len| {
            at += len;
            all.slice(at - len..at)
        })
        .collect();
    (values, lens.into_iter().map(|l| l as u32).collect())
}

fn produce_request(shared: &Shared, value: Bytes) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record {
            value,
            ..Default::default()
        }),
        topic: topic(shared),
        partition: shared.opts.partition,
    }
}

fn remaining(end: Instant) -> Duration {
    end.saturating_duration_since(Instant::now())
}

/// `fut`, or `None` once `d` has passed.
async fn within<T>(d: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    glommio::timer::timeout(d, async { Ok(fut.await) })
        .await
        .ok()
}

// --- produce-stream (and the producers of end-to-end) ---------------------------------------

struct Pending {
    origin: Instant,
    seq: u64,
    len: usize,
    _slot: Option<Slot>,
}

async fn produce_stream_lane(ctx: Rc<Ctx>, part: usize, ch: Rc<Dialer>, lane: u32, index: usize) {
    let shared = ctx.shared.clone();
    let window = shared.opts.window;
    let sem = Rc::new(Semaphore::new(window as u64));
    let mut ticker = Ticker::new(&shared, part, &ctx.window, index);
    let mut rng = Rng::new(u64::from(shared.run_id) << 32 | u64::from(lane));
    let mut seq = 0u64;
    let mut finished = false;
    while !finished {
        let (mut tx, mut rx) = match ch
            .channel()
            .await
            .streaming(paths::PRODUCE_STREAM, CallOptions::default())
            .await
        {
            Ok(s) => s,
            Err(st) => {
                ctx.error(part, &st, 1);
                if remaining(ctx.window.end) < RETRY_PAUSE {
                    break;
                }
                glommio::timer::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let pending: Rc<RefCell<VecDeque<Pending>>> = Rc::default();
        let dead = Rc::new(Cell::new(false));
        let receiver = {
            let (ctx, pending, dead) = (ctx.clone(), pending.clone(), dead.clone());
            glommio::spawn_local(async move {
                loop {
                    match rx.message_as::<ProduceResponse>().await {
                        Ok(Some(resp)) => {
                            let p = pending.borrow_mut().pop_front();
                            let Some(p) = p else {
                                let st =
                                    Status::internal("ProduceStream: more responses than requests");
                                ctx.error(part, &st, 1);
                                break;
                            };
                            ctx.ack(Ack {
                                offset: resp.offset,
                                lane,
                                seq: p.seq,
                                len: p.len as u32,
                            });
                            ctx.done(part, p.origin, 1, p.len as u64);
                        }
                        Ok(None) => break,
                        Err(st) => {
                            let n = pending.borrow().len().max(1) as u64;
                            ctx.error(part, &st, n);
                            break;
                        }
                    }
                }
                let left = pending.borrow().len();
                // Frees the window so a sender waiting for a slot sees the stream is gone.
                dead.set(true);
                pending.borrow_mut().clear();
                left
            })
        };
        // Sender: keeps `window` requests in flight.
        let mut stream_failed = false;
        loop {
            let Some(intended) = ticker.tick().await else {
                finished = true;
                break;
            };
            let Some(s) = slot(&sem).await else { break };
            if dead.get() {
                stream_failed = true;
                break;
            }
            if Instant::now() >= ctx.window.end {
                finished = true;
                break;
            }
            let origin = ticker.origin(intended);
            let (v, len) = value(&ctx, &mut rng, lane, seq, intended);
            let dup = ctx.take_fault(Fault::Duplicate);
            let msg = net::encode(&produce_request(&shared, v));
            pending.borrow_mut().push_back(Pending {
                origin,
                seq,
                len,
                _slot: Some(s),
            });
            if dup {
                pending.borrow_mut().push_back(Pending {
                    origin,
                    seq,
                    len,
                    _slot: None,
                });
                if tx.send(msg.clone()).await.is_err() {
                    stream_failed = true;
                    break;
                }
            }
            seq += 1;
            if tx.send(msg).await.is_err() {
                // The receiver reads the call's status and counts it.
                stream_failed = true;
                break;
            }
        }
        let _ = tx.finish();
        match within(DRAIN, receiver).await {
            Some(left) => {
                if left > 0 && !stream_failed {
                    stream_failed = true;
                }
            }
            None => {
                let n = pending.borrow().len() as u64;
                ctx.stats.borrow_mut()[part].unfinished += n;
                finished = true;
            }
        }
        if stream_failed && !finished {
            if remaining(ctx.window.end) < RETRY_PAUSE {
                break;
            }
            glommio::timer::sleep(RETRY_PAUSE).await;
        }
    }
}

// --- unary produce, produce-batch, unary consume ---------------------------------------------

/// Runs `call` for every tick with up to `--window` calls in flight, then waits for them.
/// One connection of the run, dialled again when it has closed (the server restarted, a
/// load balancer dropped it): unary lanes take the current channel for every call, and
/// stream lanes for every stream they open again after a failure, so a run
/// outlives a restart of its server, counting errors only while it is away. Redials are at
/// least [`REDIAL_EVERY`] apart.
pub(crate) struct Dialer {
    addr: SocketAddr,
    config: ClientConfig,
    ch: RefCell<Channel>,
    dialing: Cell<bool>,
    next_try: Cell<Instant>,
}

/// The least time between two dials of one connection.
const REDIAL_EVERY: Duration = Duration::from_millis(200);

impl Dialer {
    fn new(addr: SocketAddr, config: ClientConfig, ch: Channel) -> Rc<Dialer> {
        Rc::new(Dialer {
            addr,
            config,
            ch: RefCell::new(ch),
            dialing: Cell::new(false),
            next_try: Cell::new(Instant::now()),
        })
    }

    /// The channel to call on: the current one, or, when it has closed and no other call is
    /// dialling, a new one (the closed one if the dial fails: the call then fails at once,
    /// and is counted as an error).
    async fn channel(&self) -> Channel {
        let current = self.ch.borrow().clone();
        if !current.is_closed() || self.dialing.get() || Instant::now() < self.next_try.get() {
            return current;
        }
        self.dialing.set(true);
        let dialled = Channel::connect(self.addr, self.config.clone()).await;
        self.dialing.set(false);
        self.next_try.set(Instant::now() + REDIAL_EVERY);
        match dialled {
            Ok(ch) => {
                log::info!("connection to {} closed: dialled again", self.addr);
                *self.ch.borrow_mut() = ch.clone();
                ch
            }
            Err(_) => current,
        }
    }
}

async fn unary_lane<F, Fut>(ctx: Rc<Ctx>, part: usize, index: usize, mut call: F)
where
    F: FnMut(Instant) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let window = ctx.shared.opts.window;
    let sem = Rc::new(Semaphore::new(window as u64));
    let mut ticker = Ticker::new(&ctx.shared, part, &ctx.window, index);
    while let Some(intended) = ticker.tick().await {
        let Some(s) = slot(&sem).await else { break };
        if Instant::now() >= ctx.window.end {
            break;
        }
        let fut = call(ticker.origin(intended));
        glommio::spawn_local(async move {
            fut.await;
            drop(s);
        })
        .detach();
    }
    if within(DRAIN, sem.acquire(window as u64)).await.is_none() {
        let n = window as u64 - sem.available();
        ctx.stats.borrow_mut()[part].unfinished += n;
    }
}

async fn produce_lane(ctx: Rc<Ctx>, part: usize, ch: Rc<Dialer>, lane: u32, index: usize) {
    let timeout = ctx.shared.opts.timeout;
    let seq = Rc::new(Cell::new(0u64));
    let rng = Rc::new(RefCell::new(Rng::new(
        u64::from(ctx.shared.run_id) << 32 | u64::from(lane),
    )));
    let c2 = ctx.clone();
    unary_lane(ctx, part, index, move |origin| {
        let (ctx, ch, seq, rng) = (c2.clone(), ch.clone(), seq.clone(), rng.clone());
        let s = seq.get();
        seq.set(s + 1);
        let (v, len) = value(&ctx, &mut rng.borrow_mut(), lane, s, origin);
        let copies = if ctx.take_fault(Fault::Duplicate) {
            2
        } else {
            1
        };
        async move {
            for _ in 0..copies {
                let req = produce_request(&ctx.shared, v.clone());
                let r = ch
                    .channel()
                    .await
                    .unary_prost::<_, ProduceResponse>(
                        paths::PRODUCE,
                        &req,
                        CallOptions::timeout(timeout),
                    )
                    .await;
                match r {
                    Ok(resp) => {
                        ctx.ack(Ack {
                            offset: resp.offset,
                            lane,
                            seq: s,
                            len: len as u32,
                        });
                        ctx.done(part, origin, 1, len as u64);
                    }
                    Err(st) => ctx.error(part, &st, 1),
                }
            }
        }
    })
    .await;
}

async fn produce_batch_lane(ctx: Rc<Ctx>, part: usize, ch: Rc<Dialer>, lane: u32, index: usize) {
    let timeout = ctx.shared.opts.timeout;
    let batch = ctx.shared.opts.batch;
    let seq = Rc::new(Cell::new(0u64));
    let rng = Rc::new(RefCell::new(Rng::new(
        u64::from(ctx.shared.run_id) << 32 | u64::from(lane),
    )));
    let c2 = ctx.clone();
    unary_lane(ctx, part, index, move |origin| {
        let (ctx, ch) = (c2.clone(), ch.clone());
        let first = seq.get();
        seq.set(first + batch as u64);
        let (values, lens) = values(&ctx, &mut rng.borrow_mut(), lane, first, batch, origin);
        let records = values
            .into_iter()
            .map(|value| Record {
                value,
                ..Default::default()
            })
            .collect();
        let req = ProduceBatchRequest {
            topic: topic(&ctx.shared),
            partition: ctx.shared.opts.partition,
            records,
        };
        async move {
            let r = ch
                .channel()
                .await
                .unary_prost::<_, ProduceBatchResponse>(
                    paths::PRODUCE_BATCH,
                    &req,
                    CallOptions::timeout(timeout),
                )
                .await;
            match r {
                Ok(resp)
                    if resp.count as usize == lens.len()
                        && resp.last_offset.checked_sub(resp.base_offset)
                            == Some(lens.len() as u64 - 1) =>
                {
                    for (i, len) in lens.iter().enumerate() {
                        ctx.ack(Ack {
                            offset: resp.base_offset + i as u64,
                            lane,
                            seq: first + i as u64,
                            len: *len,
                        });
                    }
                    let bytes: u64 = lens.iter().map(|l| u64::from(*l)).sum();
                    ctx.done(part, origin, lens.len() as u64, bytes);
                }
                Ok(resp) => {
                    let st = Status::internal(format!(
                        "ProduceBatch of {} records answered count {} offsets {}..={}",
                        lens.len(),
                        resp.count,
                        resp.base_offset,
                        resp.last_offset
                    ));
                    ctx.error(part, &st, 1);
                }
                Err(st) => ctx.error(part, &st, 1),
            }
        }
    })
    .await;
}

async fn consume_lane(ctx: Rc<Ctx>, part: usize, ch: Rc<Dialer>, lane: u32, index: usize) {
    let Some((base, end)) = ctx.shared.prefill else {
        return;
    };
    let n = end - base;
    let timeout = ctx.shared.opts.timeout;
    let lanes = ctx.shared.lanes_per_part[part].max(1) as u64;
    // Sequential lanes start spread over the range so they do not all read the same records.
    let cursor = Rc::new(Cell::new(n * index as u64 / lanes));
    let random = ctx.shared.opts.consume_order == ConsumeOrder::Random;
    let rng = Rc::new(RefCell::new(Rng::new(
        u64::from(ctx.shared.run_id) << 32 | u64::from(lane),
    )));
    let c2 = ctx.clone();
    unary_lane(ctx, part, index, move |origin| {
        let (ctx, ch) = (c2.clone(), ch.clone());
        let offset = if random {
            base + rng.borrow_mut().below(n)
        } else {
            let c = cursor.get();
            cursor.set((c + 1) % n);
            base + c
        };
        let req = ConsumeRequest {
            offset,
            topic: topic(&ctx.shared),
            partition: ctx.shared.opts.partition,
        };
        async move {
            let r = ch
                .channel()
                .await
                .unary_prost::<_, ConsumeResponse>(
                    paths::CONSUME,
                    &req,
                    CallOptions::timeout(timeout),
                )
                .await;
            match r {
                Ok(resp) => {
                    let rec = resp.record.unwrap_or_default();
                    if rec.offset != offset {
                        let st = Status::internal(format!(
                            "Consume({offset}) returned the record of offset {}",
                            rec.offset
                        ));
                        ctx.error(part, &st, 1);
                        return;
                    }
                    ctx.check_record(&rec.value);
                    ctx.done(part, origin, 1, rec.value.len() as u64);
                }
                Err(st) => ctx.error(part, &st, 1),
            }
        }
    })
    .await;
}

// --- streaming consumers -----------------------------------------------------------------------

async fn open_consume_stream(ctx: &Ctx, ch: &Channel, offset: u64) -> Result<Streaming, Status> {
    let req = ConsumeRequest {
        offset,
        topic: topic(&ctx.shared),
        partition: ctx.shared.opts.partition,
    };
    ch.server_streaming(
        paths::CONSUME_STREAM,
        net::encode(&req),
        CallOptions::default(),
    )
    .await
}

/// consume-stream: reads the prefilled range from its start, then reopens; the latency
/// histogram holds the gaps between consecutive messages.
async fn consume_stream_lane(ctx: Rc<Ctx>, part: usize, ch: Rc<Dialer>) {
    let Some((base, end)) = ctx.shared.prefill else {
        return;
    };
    let stop = ctx.window.end;
    while Instant::now() < stop {
        let opened = Instant::now();
        let mut rx = match open_consume_stream(&ctx, &ch.channel().await, base).await {
            Ok(rx) => rx,
            Err(st) => {
                ctx.error(part, &st, 1);
                glommio::timer::sleep(RETRY_PAUSE.min(remaining(stop))).await;
                continue;
            }
        };
        let mut last = Instant::now();
        let more = read_stream(&ctx, part, &mut rx, stop, |resp| {
            let rec = resp.record.unwrap_or_default();
            ctx.check_record(&rec.value);
            ctx.done(part, last, 1, rec.value.len() as u64);
            last = Instant::now();
            rec.offset + 1 >= end
        })
        .await;
        if !more {
            return;
        }
        // Dropping `rx` resets the stream: the server stops sending. A short range is read
        // in a moment, and resets faster than the server allows (the rapid-reset defence,
        // `--max-resets-per-second`, 200 by default) close the connection: at most one
        // reopen per STREAM_REOPEN_EVERY on this lane.
        drop(rx);
        let next = opened + STREAM_REOPEN_EVERY;
        glommio::timer::sleep(
            next.saturating_duration_since(Instant::now())
                .min(remaining(stop)),
        )
        .await;
    }
}

/// The least time between two ConsumeStreams a consume-stream lane opens: 25 a second per
/// lane, so that the lanes of one connection stay under the server's default reset limit
/// (a pass over the default prefill takes far longer).
const STREAM_REOPEN_EVERY: std::time::Duration = std::time::Duration::from_millis(40);

/// A tailing ConsumeStream from the end of the log until the run ends. With `e2e`, every
/// record of this run gives a produce-to-receive latency from its stamp.
async fn tail_lane(ctx: Rc<Ctx>, part: usize, ch: Rc<Dialer>, e2e: bool) {
    let Some(from) = ctx.shared.tail_from else {
        return;
    };
    let stop = ctx.window.end;
    let mut next = from;
    while Instant::now() < stop {
        let mut rx = match open_consume_stream(&ctx, &ch.channel().await, next).await {
            Ok(rx) => rx,
            Err(st) => {
                ctx.error(part, &st, 1);
                glommio::timer::sleep(RETRY_PAUSE.min(remaining(stop))).await;
                continue;
            }
        };
        let more = read_stream(&ctx, part, &mut rx, stop, |resp| {
            let now = Instant::now();
            let rec = resp.record.unwrap_or_default();
            next = rec.offset + 1;
            ctx.check_record(&rec.value);
            if !e2e {
                ctx.shared.live[part].add(1, rec.value.len() as u64);
            }
            if !ctx.window.counts(now) {
                return false;
            }
            let mut stats = ctx.stats.borrow_mut();
            let s = &mut stats[part];
            if e2e {
                if let Some(st) = payload::peek(&rec.value) {
                    if st.run_id == ctx.shared.run_id && st.lane < PREFILL_LANE {
                        let sent = ctx.window.at_ns(st.sent_ns);
                        s.e2e.saturating_record(
                            now.saturating_duration_since(sent).as_nanos() as u64
                        );
                        s.e2e_records += 1;
                    }
                }
            } else {
                s.records += 1;
                s.bytes += rec.value.len() as u64;
            }
            false
        })
        .await;
        if !more {
            return;
        }
    }
}

/// Reads `rx` until `each` says the stream is done (true), the stream ends or fails, or the
/// run ends at `stop`, under one deadline for the whole stream rather than a timer per
/// message (at a million messages a second, a timer each took a third of a lane's CPU). A
/// failure is counted and followed by a pause. False once the run is over.
async fn read_stream(
    ctx: &Ctx,
    part: usize,
    rx: &mut Streaming,
    stop: Instant,
    mut each: impl FnMut(ConsumeResponse) -> bool,
) -> bool {
    let read = async {
        loop {
            match rx.message_as::<ConsumeResponse>().await {
                Ok(Some(resp)) => {
                    if each(resp) {
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(st) => {
                    ctx.error(part, &st, 1);
                    return false;
                }
            }
        }
    };
    match within(remaining(stop), read).await {
        None => false,
        Some(true) => true,
        Some(false) => {
            glommio::timer::sleep(RETRY_PAUSE.min(remaining(stop))).await;
            true
        }
    }
}

// --- plan and executors ----------------------------------------------------------------------

fn plan(opts: &Opts) -> (Vec<Part>, Vec<ConnPlan>, Vec<usize>) {
    let mut parts = Vec::new();
    let mut conns = Vec::new();
    let mut lanes_per_part = Vec::new();
    let mut next_lane = 0u32;
    for (i, w) in opts.workload.iter().enumerate() {
        let connections = if w.kind == Kind::None {
            0
        } else {
            opts.connections_of(w)
        };
        let consumers = if w.kind == Kind::EndToEnd {
            opts.consumers
        } else {
            0
        };
        parts.push(Part {
            kind: w.kind,
            connections,
            streams: opts.streams,
            consumers,
        });
        for _ in 0..connections {
            let lanes: Vec<u32> = (0..opts.streams)
                .map(|_| {
                    next_lane += 1;
                    next_lane - 1
                })
                .collect();
            conns.push(ConnPlan {
                part: i,
                role: Role::Load,
                lanes,
            });
        }
        for _ in 0..consumers {
            conns.push(ConnPlan {
                part: i,
                role: Role::Consumer,
                lanes: vec![],
            });
        }
        lanes_per_part.push(connections * opts.streams);
    }
    (parts, conns, lanes_per_part)
}

async fn run_conn(ctx: Rc<Ctx>, plan: ConnPlan, ch: Channel, first_index: usize) {
    let kind = ctx.shared.parts[plan.part].kind;
    let part = plan.part;
    let d = Dialer::new(ctx.shared.addr, ctx.shared.config.clone(), ch);
    let mut tasks = Vec::new();
    if let Role::Consumer = plan.role {
        tasks.push(glommio::spawn_local(tail_lane(ctx.clone(), part, d, true)));
    } else {
        for (k, lane) in plan.lanes.iter().copied().enumerate() {
            let (ctx, d) = (ctx.clone(), d.clone());
            let index = first_index + k;
            let t = match kind {
                Kind::ProduceStream | Kind::EndToEnd => {
                    glommio::spawn_local(produce_stream_lane(ctx, part, d, lane, index))
                }
                Kind::Produce => glommio::spawn_local(produce_lane(ctx, part, d, lane, index)),
                Kind::ProduceBatch => {
                    glommio::spawn_local(produce_batch_lane(ctx, part, d, lane, index))
                }
                Kind::Consume => glommio::spawn_local(consume_lane(ctx, part, d, lane, index)),
                Kind::ConsumeStream => glommio::spawn_local(consume_stream_lane(ctx, part, d)),
                Kind::Tail => glommio::spawn_local(tail_lane(ctx, part, d, false)),
                Kind::None => continue,
            };
            tasks.push(t);
        }
    }
    for t in tasks {
        t.await;
    }
}

async fn executor_main(shared: Arc<Shared>, conns: Vec<(ConnPlan, usize)>) -> ExecOut {
    {
        let mut channels = Vec::new();
        let mut failure = None;
        for (c, _) in &conns {
            match Channel::connect(shared.addr, shared.config.clone()).await {
                Ok(ch) => channels.push(ch),
                Err(e) => {
                    failure = Some(format!(
                        "{} connection to {}: {e}",
                        shared.parts[c.part].kind, shared.addr
                    ));
                    break;
                }
            }
        }
        if let Some(f) = failure {
            let mut g = shared.failed.lock().unwrap_or_else(|p| p.into_inner());
            g.get_or_insert(f);
        }
        // Connected (or failed): wait for the others and for the main thread to set the window.
        shared.barrier.wait();
        shared.barrier.wait();
        let n = shared.parts.len();
        let out = |ctx: Option<Rc<Ctx>>| match ctx.and_then(|c| Rc::try_unwrap(c).ok()) {
            Some(c) => ExecOut {
                parts: c.stats.into_inner(),
                acks: c.acks.into_inner(),
                bad_records: c.bad_records.get(),
            },
            None => ExecOut {
                parts: (0..n).map(|_| PartStats::default()).collect(),
                acks: vec![],
                bad_records: 0,
            },
        };
        let window = match shared.window.get() {
            Some(w) if channels.len() == conns.len() => *w,
            _ => return out(None),
        };
        let failed = shared.failed.lock().map(|g| g.is_some()).unwrap_or(true);
        if failed {
            return out(None);
        }
        let ctx = Rc::new(Ctx {
            shared: shared.clone(),
            window,
            stats: RefCell::new((0..n).map(|_| PartStats::default()).collect()),
            acks: RefCell::new(Vec::new()),
            bad_records: Cell::new(0),
        });
        let mut tasks = Vec::new();
        for ((plan, first_index), ch) in conns.into_iter().zip(channels) {
            tasks.push(glommio::spawn_local(run_conn(
                ctx.clone(),
                plan,
                ch,
                first_index,
            )));
        }
        for t in tasks {
            t.await;
        }
        out(Some(ctx))
    }
}

/// The executor threads of a run, started and connected, waiting for [`Load::start`].
pub struct Load {
    pub shared: Arc<Shared>,
    handles: Vec<glommio::ExecutorJoinHandle<ExecOut>>,
}

/// Set-up results that the load needs.
pub struct Setup {
    pub prefill: Option<(u64, u64)>,
    pub tail_from: Option<u64>,
    pub acks: Vec<Ack>,
}

fn placement(opts: &Opts, i: usize) -> Placement {
    match &opts.pin_cpus {
        Some(cpus) => Placement::Fixed(cpus[i]),
        None => Placement::Unbound,
    }
}

/// Starts the executors; each connects its share of connections, then waits.
pub fn launch(
    opts: &Opts,
    addr: SocketAddr,
    config: ClientConfig,
    run_id: u32,
    setup: Setup,
) -> Result<Load> {
    let (parts, conns, lanes_per_part) = plan(opts);
    let cores = opts.cores;
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        addr,
        config,
        run_id,
        pattern: Pattern::new(run_id, opts.record_size.max),
        live: parts.iter().map(|_| Live::default()).collect(),
        parts,
        lanes_per_part,
        prefill: setup.prefill,
        tail_from: setup.tail_from,
        fault_done: AtomicBool::new(false),
        window: OnceLock::new(),
        failed: Mutex::new(None),
        barrier: Barrier::new(cores + 1),
        finished: AtomicUsize::new(0),
    });
    // Connections go round-robin over the executors; a lane's index within its workload
    // staggers open-loop schedules.
    let mut per_exec: Vec<Vec<(ConnPlan, usize)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut index_in_part = vec![0usize; shared.parts.len()];
    for (i, c) in conns.into_iter().enumerate() {
        let first = index_in_part[c.part];
        index_in_part[c.part] += c.lanes.len();
        per_exec[i % cores].push((c, first));
    }
    let mut handles = Vec::new();
    for (i, conns) in per_exec.into_iter().enumerate() {
        let sh = shared.clone();
        let h = LocalExecutorBuilder::new(placement(opts, i))
            .name(&format!("bench-{i}"))
            .spawn(move || async move {
                let out = executor_main(sh.clone(), conns).await;
                sh.finished.fetch_add(1, Ordering::SeqCst);
                out
            })
            .map_err(|e| anyhow!("starting executor {i}: {e}"))?;
        handles.push(h);
    }
    Ok(Load { shared, handles })
}

impl Load {
    /// Waits for every executor to connect, then sets the run's window and releases them.
    pub fn start(&self, epoch: Instant) -> Result<Window> {
        self.shared.barrier.wait();
        let start = Instant::now() + Duration::from_millis(5);
        let o = &self.shared.opts;
        let w = Window {
            epoch,
            start,
            measure: start + o.warmup,
            end: start + o.warmup + o.duration,
        };
        let _ = self.shared.window.set(w);
        self.shared.barrier.wait();
        let failed = self
            .shared
            .failed
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        match failed {
            Some(f) => Err(anyhow!(f)),
            None => Ok(w),
        }
    }

    pub fn done(&self) -> bool {
        self.shared.finished.load(Ordering::SeqCst) == self.handles.len()
    }

    pub fn join(self) -> Result<(Vec<PartStats>, Vec<Ack>, u64)> {
        let mut parts: Vec<PartStats> = self
            .shared
            .parts
            .iter()
            .map(|_| PartStats::default())
            .collect();
        let mut acks = Vec::new();
        let mut bad = 0;
        for h in self.handles {
            let out = h.join().map_err(|e| anyhow!("executor failed: {e}"))?;
            for (p, s) in parts.iter_mut().zip(out.parts) {
                p.merge(s);
            }
            acks.extend(out.acks);
            bad += out.bad_records;
        }
        Ok((parts, acks, bad))
    }
}

// --- set-up: topic, prefill, probe -----------------------------------------------------------

/// Runs `f` on a fresh single executor thread and returns its result.
pub fn on_executor<T, F, Fut>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .spawn(f)
        .map_err(|e| anyhow!("starting the {name} executor: {e}"))?
        .join()
        .map_err(|e| anyhow!("{name} executor: {e}"))?
}

fn status_err(what: &str, st: Status) -> anyhow::Error {
    anyhow!("{what}: {} {}", st.code.name(), st.message)
}

/// Prefills records for consume workloads and finds the end of
/// the log for tailing streams.
pub fn setup(
    opts: &Opts,
    addr: SocketAddr,
    config: ClientConfig,
    run_id: u32,
    epoch: Instant,
) -> Result<Setup> {
    let opts = opts.clone();
    on_executor("bench-setup", move || async move {
        // net's error already names the address and the OS error.
        let ch = Channel::connect(addr, config)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let topic_name = opts.topic.clone().unwrap_or_default();
        let timeout = CallOptions::timeout(opts.timeout);
        // --create-topic: created before routing (route.rs).
        let pattern = Pattern::new(run_id, opts.record_size.max);
        let kinds: Vec<Kind> = opts.workload.iter().map(|w| w.kind).collect();
        let mut acks = Vec::new();
        let prefill = if kinds.iter().any(|k| k.reads_prefill()) {
            let (base, end) = prefill(&ch, &opts, &pattern, run_id, epoch, &mut acks).await?;
            Some((base, end))
        } else {
            None
        };
        let tail_from = if kinds.contains(&Kind::EndToEnd) || kinds.contains(&Kind::Tail) {
            let stamp = Stamp {
                run_id,
                lane: PROBE_LANE,
                seq: 0,
                sent_ns: 0,
            };
            let len = opts.record_size.min.max(payload::HEADER_LEN);
            let req = ProduceRequest {
                record: Some(Record {
                    value: payload::build(&pattern, stamp, len),
                    ..Default::default()
                }),
                topic: topic_name.clone(),
                partition: opts.partition,
            };
            let resp: ProduceResponse = ch
                .unary_prost(paths::PRODUCE, &req, timeout)
                .await
                .map_err(|st| status_err("Produce (probing the end of the log)", st))?;
            acks.push(Ack {
                offset: resp.offset,
                lane: PROBE_LANE,
                seq: 0,
                len: len as u32,
            });
            Some(resp.offset + 1)
        } else {
            None
        };
        Ok(Setup {
            prefill,
            tail_from,
            acks,
        })
    })
}

/// Writes `--prefill` records with ProduceStream (a book RPC), 256 in flight; returns the
/// range of offsets written.
async fn prefill(
    ch: &Channel,
    opts: &Opts,
    pattern: &Pattern,
    run_id: u32,
    epoch: Instant,
    acks: &mut Vec<Ack>,
) -> Result<(u64, u64)> {
    const WINDOW: u64 = 256;
    let (mut tx, mut rx) = ch
        .streaming(paths::PRODUCE_STREAM, CallOptions::default())
        .await
        .map_err(|st| status_err("ProduceStream (prefill)", st))?;
    let n = opts.prefill;
    let sz = opts.record_size;
    let mut rng = Rng::new(u64::from(run_id));
    let mut lens = VecDeque::new();
    let mut sent = 0u64;
    let mut first = None;
    let mut last = 0;
    let mut got = 0u64;
    let topic_name = opts.topic.clone().unwrap_or_default();
    while got < n {
        while sent < n && sent - got < WINDOW {
            let len = if sz.is_fixed() {
                sz.min
            } else {
                sz.min + rng.below((sz.max - sz.min + 1) as u64) as usize
            };
            let stamp = Stamp {
                run_id,
                lane: PREFILL_LANE,
                seq: sent,
                sent_ns: epoch.elapsed().as_nanos() as u64,
            };
            let req = ProduceRequest {
                record: Some(Record {
                    value: payload::build(pattern, stamp, len),
                    ..Default::default()
                }),
                topic: topic_name.clone(),
                partition: opts.partition,
            };
            lens.push_back(len);
            sent += 1;
            if let Err(st) = tx.send_message(&req).await {
                // The response stream carries the reason.
                log::debug!("prefill send failed: {st}");
                break;
            }
        }
        let resp = rx
            .message_as::<ProduceResponse>()
            .await
            .map_err(|st| status_err("ProduceStream (prefill)", st))?
            .ok_or_else(|| anyhow!("ProduceStream (prefill): the server ended the stream early"))?;
        let len = lens.pop_front().unwrap_or(0);
        first.get_or_insert(resp.offset);
        last = resp.offset;
        if opts.verify {
            acks.push(Ack {
                offset: resp.offset,
                lane: PREFILL_LANE,
                seq: got,
                len: len as u32,
            });
        }
        got += 1;
    }
    let _ = tx.finish();
    // Reads the final OK so the call ends cleanly.
    let _ = within(Duration::from_secs(5), rx.message()).await;
    let base = first.unwrap_or(0);
    Ok((base, last + 1))
}
