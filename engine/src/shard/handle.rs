//! [`EngineHandle`]: a cheap, `Send + Sync` handle to the engine, usable from any thread or
//! shard. It routes each operation to the partition's owner: in place on the owning shard,
//! otherwise as a typed message ([`ShardMsg`]) through the owner's bounded queue.
//!
//! The seam's engine-backed implementation ([`crate::seam::local`]) is built on the routing
//! here; the record-level methods (`append`, `read`, `read_range`, ...) serve tools and tests
//! and go the same way, encoding and decoding on the caller's side as the seam does.

use super::msg::{gone, Reply, RunOnShard, ShardMsg};
use super::owner::{self, PartitionReport};
use super::{ShardCtx, ShardReport, Shared, CURRENT};
use crate::batch::{NewRecord, Record};
use crate::error::{Error, Result};
use crate::log::{Appended, LogStats};
use crate::metrics::{AppendTiming, ShardMetricsSnapshot};
use crate::seam::{self, Chunk, EncodedBatch, PartitionId, PastEnd, ReadLimits};
use crossbeam::channel::TrySendError;
use futures_channel::oneshot;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cheap, `Send + Sync` handle to the engine, usable from any thread or shard.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) shared: Arc<Shared>,
}

/// How long a control message (topic administration, start-up) waits before trying a full
/// queue again. Data messages never wait: a full queue is `Overloaded` at once.
const CONTROL_RETRY: Duration = Duration::from_millis(1);

impl EngineHandle {
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.config.data_dir
    }

    pub fn config(&self) -> &crate::config::EngineConfig {
        &self.shared.config
    }

    /// Requests queued for each shard.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.shared.shards.iter().map(|s| s.tx.len()).collect()
    }

    /// Each shard's metrics as of now, read without involving the shards.
    pub fn shard_metrics(&self) -> Vec<ShardMetricsSnapshot> {
        self.shared.metrics.iter().map(|m| m.snapshot()).collect()
    }

    /// What shard `shard` owns and how each of its partitions stands, asked of the shard
    /// itself (it fails with `Overloaded` when the shard's queue is full).
    pub async fn shard_report(&self, shard: usize) -> Result<ShardReport> {
        let here = self.here();
        if let Some(ctx) = here.as_ref().filter(|c| c.index == shard) {
            return Ok(ctx.report());
        }
        let (reply, rx) = oneshot::channel();
        self.send(shard, ShardMsg::Report { reply })?;
        rx.await.map_err(gone)?
    }

    /// The shard that owns `topic`/`partition`.
    pub fn shard_of(&self, topic: &str, partition: u32) -> usize {
        super::owner(topic, partition, self.shards())
    }

    /// The shard the calling thread runs, when it is one of this engine's.
    pub fn current_shard(&self) -> Option<usize> {
        self.here().map(|c| c.index)
    }

    /// The catalog of topics (the topic operations are in `topics.rs`).
    pub(crate) fn topics(&self) -> &crate::catalog::Topics {
        &self.shared.topics
    }

    /// The shard context of the calling thread, when it is one of this engine's shards.
    pub(crate) fn here(&self) -> Option<Rc<ShardCtx>> {
        CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(id, _)| *id == self.shared.id)
                .map(|(_, ctx)| Rc::clone(ctx))
        })
    }

    fn check_running(&self) -> Result<()> {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return Err(Error::ShutDown);
        }
        Ok(())
    }

    /// Checks that `topic` has `partition` and returns its owner: by the calling shard's own
    /// catalog copy when there is one (no lock), else by the shared catalog.
    pub(crate) fn route(
        &self,
        here: Option<&ShardCtx>,
        topic: &str,
        partition: u32,
    ) -> Result<usize> {
        self.check_running()?;
        match here {
            Some(ctx) => ctx.with_catalog(|c| c.check_partition(topic, partition))?,
            None => self.shared.topics.check_partition(topic, partition)?,
        }
        Ok(self.shard_of(topic, partition))
    }

    /// Queues a data message for `shard`; a full queue is `Overloaded`, never a wait.
    fn send(&self, shard: usize, msg: ShardMsg) -> Result<()> {
        let target = self
            .shared
            .shards
            .get(shard)
            .ok_or_else(|| Error::InvalidArgument(format!("no shard {shard}")))?;
        match target.tx.try_send(msg) {
            Ok(()) => {
                target.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Error::Overloaded {
                shard,
                depth: target.tx.len(),
            }),
            Err(TrySendError::Disconnected(_)) => Err(Error::ShutDown),
        }
    }

    /// Queues a control message for `shard`, waiting while its queue is full: topic
    /// administration must reach every shard, and there is at most one such message per
    /// shard for each administrative call in flight.
    pub(crate) async fn send_control(&self, shard: usize, mut msg: ShardMsg) -> Result<()> {
        let target = self
            .shared
            .shards
            .get(shard)
            .ok_or_else(|| Error::InvalidArgument(format!("no shard {shard}")))?;
        loop {
            match target.tx.try_send(msg) {
                Ok(()) => {
                    target.waker.wake();
                    return Ok(());
                }
                Err(TrySendError::Full(m)) => {
                    msg = m;
                    target.waker.wake();
                    if self.here().is_some() {
                        glommio::timer::sleep(CONTROL_RETRY).await;
                    } else {
                        std::thread::sleep(CONTROL_RETRY);
                    }
                }
                Err(TrySendError::Disconnected(_)) => return Err(Error::ShutDown),
            }
        }
    }

    /// Sends `msg(reply)` to `shard` and awaits the reply.
    async fn ask<T>(&self, shard: usize, msg: impl FnOnce(Reply<T>) -> ShardMsg) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(shard, msg(reply))?;
        rx.await.map_err(gone)?
    }

    /// Appends an encoded batch on the partition's owner.
    pub(crate) async fn append_routed(
        &self,
        here: Option<&Rc<ShardCtx>>,
        id: &PartitionId,
        batch: EncodedBatch,
    ) -> Result<(Appended, AppendTiming)> {
        let sent = Instant::now();
        let shard = self.route(here.map(|c| &**c), &id.topic, id.partition)?;
        match here.filter(|c| c.index == shard) {
            Some(ctx) => {
                // A task of its own even in place: an append, once started, completes even
                // if the caller goes away (a roll must not stop halfway).
                let (reply, rx) = oneshot::channel();
                let (ctx, id) = (Rc::clone(ctx), id.clone());
                glommio::spawn_local(async move {
                    let _ = reply.send(owner::append(&ctx, &id, &batch, sent).await);
                })
                .detach();
                rx.await.map_err(gone)?
            }
            None => {
                let id = id.clone();
                self.ask(shard, |reply| ShardMsg::Append {
                    id,
                    batch,
                    sent,
                    reply,
                })
                .await
            }
        }
    }

    /// Stored batches from `from` on the partition's owner (see `Log::read_chunk`).
    pub(crate) async fn read_routed(
        &self,
        here: Option<&Rc<ShardCtx>>,
        id: &PartitionId,
        from: u64,
        limits: ReadLimits,
        strict: bool,
    ) -> Result<Chunk> {
        let shard = self.route(here.map(|c| &**c), &id.topic, id.partition)?;
        match here.filter(|c| c.index == shard) {
            Some(ctx) => owner::read(ctx, id, from, limits, strict).await,
            None => {
                let id = id.clone();
                self.ask(shard, |reply| ShardMsg::Read {
                    id,
                    from,
                    limits,
                    strict,
                    reply,
                })
                .await
            }
        }
    }

    /// Resolves when the partition's visible end passes `offset` (or its log closes), with
    /// the visible end then. Dropping the future cancels the wait on the owner.
    pub(crate) async fn wait_routed(
        &self,
        here: Option<&Rc<ShardCtx>>,
        id: &PartitionId,
        offset: u64,
    ) -> Result<u64> {
        let shard = self.route(here.map(|c| &**c), &id.topic, id.partition)?;
        match here.filter(|c| c.index == shard) {
            Some(ctx) => owner::wait_for(ctx, id, offset).await,
            None => {
                // Dropped with this future: the owner's wait then ends too.
                let (_cancel, cancel_rx) = oneshot::channel::<()>();
                let id = id.clone();
                self.ask(shard, |reply| ShardMsg::WaitFor {
                    id,
                    offset,
                    cancel: cancel_rx,
                    reply,
                })
                .await
            }
        }
    }

    /// A read point of the partition, from its owner (see `owner::read_barrier`).
    pub(crate) async fn barrier_routed(
        &self,
        here: Option<&Rc<ShardCtx>>,
        id: &PartitionId,
    ) -> Result<u64> {
        let shard = self.route(here.map(|c| &**c), &id.topic, id.partition)?;
        match here.filter(|c| c.index == shard) {
            Some(ctx) => owner::read_barrier(ctx, id).await,
            None => {
                let id = id.clone();
                self.ask(shard, |reply| ShardMsg::ReadBarrier { id, reply })
                    .await
            }
        }
    }

    /// How the partition stands, from its owner.
    pub(crate) async fn describe_routed(
        &self,
        here: Option<&Rc<ShardCtx>>,
        id: &PartitionId,
    ) -> Result<PartitionReport> {
        let shard = self.route(here.map(|c| &**c), &id.topic, id.partition)?;
        match here.filter(|c| c.index == shard) {
            Some(ctx) => owner::describe(ctx, id),
            None => {
                let id = id.clone();
                self.ask(shard, |reply| ShardMsg::Describe { id, reply })
                    .await
            }
        }
    }

    /// Runs `f` on the shard with index `shard` and returns its result. For the control
    /// plane (starting a shard's gRPC server or membership); data goes through the typed
    /// operations.
    pub async fn on_shard<R, F, Fut>(&self, shard: usize, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<ShardCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R>> + 'static,
    {
        self.check_running()?;
        let (tx, rx) = oneshot::channel::<Result<R>>();
        let run: RunOnShard = Box::new(move |ctx: &Rc<ShardCtx>| {
            let ctx = Rc::clone(ctx);
            glommio::spawn_local(async move {
                let _ = tx.send(f(ctx).await);
            })
            .detach();
        });
        match self.here().filter(|c| c.index == shard) {
            Some(ctx) => run(&ctx),
            None => self.send_control(shard, ShardMsg::Run(run)).await?,
        }
        rx.await.map_err(gone)?
    }

    /// Hands `payload` (what another node sent) to shard `shard`'s replication layer: in
    /// place on that shard, else as a `ShardMsg::Peer`; a full queue is `Overloaded` (the
    /// caller drops it: Raft sends again).
    pub fn deliver(&self, shard: usize, payload: Box<dyn std::any::Any + Send>) -> Result<()> {
        self.check_running()?;
        match self.here().filter(|c| c.index == shard) {
            Some(ctx) => {
                if let Some(r) = ctx.replicator() {
                    r.receive(payload);
                }
                Ok(())
            }
            None => self.send(shard, ShardMsg::Peer { payload }),
        }
    }

    /// The engine-backed seam, for the executor it is built on (see [`seam::local`]).
    pub fn seam_factory(&self, node: seam::NodeRef) -> seam::local::LocalFactory {
        seam::local::LocalFactory::new(self.clone(), node)
    }

    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<Appended> {
        self.append_timed(topic, partition, records)
            .await
            .map(|(a, _)| a)
    }

    /// [`append`](Self::append), also reporting where the time went: the hop to the owning
    /// shard, buffering, and waiting for durability.
    pub async fn append_timed(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<(Appended, AppendTiming)> {
        let here = self.here();
        let id = PartitionId::new(topic, partition);
        self.route(here.as_deref(), topic, partition)?;
        let batch = EncodedBatch::encode(&records).map_err(|e| match e {
            seam::Error::TooLarge {
                size, limit, unit, ..
            } => Error::BatchTooLarge { size, limit, unit },
            other => Error::InvalidArgument(match other {
                seam::Error::InvalidArgument(m) => m,
                e => e.to_string(),
            }),
        })?;
        self.append_routed(here.as_ref(), &id, batch).await
    }

    pub async fn read(&self, topic: &str, partition: u32, offset: u64) -> Result<Record> {
        let here = self.here();
        let id = PartitionId::new(topic, partition);
        let limits = ReadLimits {
            max_records: 1,
            max_bytes: 1,
            past_end: PastEnd::OutOfRange,
        };
        let chunk = self
            .read_routed(here.as_ref(), &id, offset, limits, true)
            .await?;
        // The owner found the batch holding `offset`, so it has a record there, or its
        // bytes are damaged.
        chunk.checked_records().next().unwrap_or_else(|| {
            Err(Error::corrupt(
                chunk.origin.to_path_buf(),
                0,
                format!("the batch read for offset {offset} has no record there"),
            ))
        })
    }

    /// Records from `from` (at most `max_records`, and `max_bytes` of values except that the
    /// first comes whatever its size), checked and decoded on the calling thread.
    pub async fn read_range(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let here = self.here();
        let id = PartitionId::new(topic, partition);
        let limits = ReadLimits {
            max_records,
            max_bytes,
            past_end: PastEnd::OutOfRange,
        };
        let chunk = self
            .read_routed(here.as_ref(), &id, from, limits, true)
            .await?;
        chunk.checked_records().collect()
    }

    /// Resolves once the partition holds `offset` and readers may see it; returns the
    /// visible end then (at or below `offset` when the log closed). Dropping the future
    /// cancels the wait on the owning shard.
    pub async fn wait_for(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        let here = self.here();
        self.wait_routed(here.as_ref(), &PartitionId::new(topic, partition), offset)
            .await
    }

    pub async fn stats(&self, topic: &str, partition: u32) -> Result<LogStats> {
        let here = self.here();
        self.describe_routed(here.as_ref(), &PartitionId::new(topic, partition))
            .await
            .map(|r| r.stats)
    }
}
