//! What a partition's owner does, on the owner's core, for each operation: order, stamp,
//! write and sync an encoded batch, then set the visible mark; hand out stored batches;
//! park readers until the mark passes their offset; describe.
//!
//! The single-node rule for the visible mark lives here: after each append, the owner raises
//! it to what the topic's durability policy makes visible (`Log::policy_end`: the durable end
//! under `always`, the written end otherwise, which the append waited for). It does so
//! before the append is acknowledged, so a producer that got its offset can read its record
//! at once.

use super::ShardCtx;
use crate::error::Result;
use crate::log::{Appended, LogStats};
use crate::metrics::AppendTiming;
use crate::seam::{Chunk, EncodedBatch, PartitionId, ReadLimits, Writability};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

/// How a partition stands, as its owner sees it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionReport {
    pub(crate) stats: LogStats,
    pub(crate) visible_end: u64,
    pub(crate) writable: Writability,
    pub(crate) waiters: usize,
    pub(crate) shard: usize,
    /// The replication layer's view of the partition, when it has one.
    pub(crate) replica: Option<super::ReplicaStatus>,
}

/// Appends an encoded batch; `sent` is when the caller sent it (the hop is timed as `queue`).
pub(crate) async fn append(
    ctx: &ShardCtx,
    id: &PartitionId,
    batch: &EncodedBatch,
    sent: Instant,
) -> Result<(Appended, AppendTiming)> {
    let queue = sent.elapsed();
    let log = ctx.log(id)?;
    if let Some(r) = ctx.replicator() {
        // The replication layer orders, commits and makes visible; the topic's limits and
        // the log's writability are checked here first, as the log itself would.
        log.check_append(batch)?;
        let (appended, timing) = r.append(id, batch).await?;
        return Ok((appended, AppendTiming { queue, ..timing }));
    }
    let (appended, timing) = log.append_encoded(batch).await?;
    log.set_visible(log.policy_end());
    Ok((appended, AppendTiming { queue, ..timing }))
}

/// Stored batches from `from` (see `Log::read_chunk`); with `strict`, `from` at the visible
/// end is out of range rather than an empty chunk.
pub(crate) async fn read(
    ctx: &ShardCtx,
    id: &PartitionId,
    from: u64,
    limits: ReadLimits,
    strict: bool,
) -> Result<Chunk> {
    let log = ctx.log(id)?;
    if strict {
        log.readable_from(from)?;
    }
    log.read_chunk(from, limits).await
}

/// Resolves when the visible end passes `offset` or the log closes, with the visible end
/// then. Counted as a waiter of the partition while it waits (the count drops when the future
/// is dropped, cancelled or not).
pub(crate) async fn wait_for(ctx: &ShardCtx, id: &PartitionId, offset: u64) -> Result<u64> {
    let (log, waiters) = ctx.owned(id)?;
    let _waiting = Waiting::new(waiters);
    log.wait_for(offset).await;
    Ok(log.visible_end())
}

/// A read point: with a replication layer, once everything committed when asked is visible
/// here (see `Replicator::read_barrier`); alone, the visible end is that already.
pub(crate) async fn read_barrier(ctx: &ShardCtx, id: &PartitionId) -> Result<u64> {
    let log = ctx.log(id)?;
    match ctx.replicator() {
        Some(r) => r.read_barrier(id).await,
        None => Ok(log.visible_end()),
    }
}

pub(crate) fn describe(ctx: &ShardCtx, id: &PartitionId) -> Result<PartitionReport> {
    let (log, waiters) = ctx.owned(id)?;
    let replica = ctx.replicator().and_then(|r| r.status(id));
    // A lost log refuses nothing itself: its replication group, stopped, refuses appends;
    // a group without a leader takes none either, however writable the log.
    let writable = match (&replica, log.writability()) {
        (Some(r), _) if r.lost => Writability::Lost,
        (Some(r), Writability::Writable) if r.leader.is_none() => Writability::NoLeader,
        (_, w) => w,
    };
    Ok(PartitionReport {
        stats: log.stats(),
        visible_end: log.visible_end(),
        writable,
        waiters: waiters.get(),
        shard: ctx.index,
        replica,
    })
}

/// Closes a partition's log and takes it out of this shard (and of the replication layer):
/// no longer held here. Its directory stays as it is. Not open is fine.
pub(crate) async fn close(ctx: &ShardCtx, id: &PartitionId) -> Result<()> {
    let _turn = ctx.one_at_a_time(id).await;
    if let Some(log) = ctx.forget_log(id).await {
        log.close().await?;
    }
    Ok(())
}

/// Gives a partition's log new retention limits and applies them at once (through the
/// replication layer, which compacts its own log first, when there is one). Not open here
/// is fine: it opens with the catalog's settings, which hold the new limits already. A pass
/// that fails (a latched log, a stopped group) is logged, not returned: the limits are the
/// partition's all the same, and the periodic pass tries again.
pub(crate) async fn set_retention(
    ctx: &ShardCtx,
    id: &PartitionId,
    bytes: u64,
    ms: u64,
) -> Result<()> {
    let log = {
        // After an open in progress, which may have read the catalog before the change.
        let _turn = ctx.one_at_a_time(id).await;
        match ctx.log(id) {
            Ok(log) => log,
            Err(_) => return Ok(()),
        }
    };
    log.set_retention(bytes, ms);
    let now = std::time::SystemTime::now();
    let pass = match ctx.replicator() {
        Some(r) => r.apply_retention(id, now).await,
        None => log.apply_retention(now).await.map(|_| ()),
    };
    if let Err(e) = pass {
        log::warn!("{id}: applying its new retention limits: {e} (the periodic pass tries again)");
    }
    Ok(())
}

/// Closes a partition of a topic being deleted and removes its data.
pub(crate) async fn remove(ctx: &ShardCtx, id: &PartitionId) -> Result<()> {
    let _turn = ctx.one_at_a_time(id).await;
    if let Some(log) = ctx.forget_log(id).await {
        log.remove().await?;
    }
    Ok(())
}

/// One parked reader, counted while it lives.
struct Waiting(Rc<Cell<usize>>);

impl Waiting {
    fn new(count: Rc<Cell<usize>>) -> Waiting {
        count.set(count.get() + 1);
        Waiting(count)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
