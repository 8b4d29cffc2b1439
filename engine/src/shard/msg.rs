//! What crosses between shards: one typed message per operation, each with its own reply.
//!
//! The data path is `Append`, `Read`, `WaitFor`, `ReadBarrier` and `Describe`, served on the owner by
//! [`owner`](super::owner). Topic administration opens and removes partitions and replaces each
//! shard's copy of the catalog; `Report` feeds metrics scrapes. `Run` starts a shard's
//! long-running services (the gRPC server, membership) on its executor at start-up; the data
//! path never uses it. `Peer` carries what another node sent a shard's replication layer.

use super::owner::{self, PartitionReport};
use super::{ShardCtx, ShardReport};
use crate::catalog::Catalog;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::log::Appended;
use crate::metrics::AppendTiming;
use crate::seam::{Chunk, EncodedBatch, PartitionId, ReadLimits};
use futures_channel::oneshot;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Where the owner sends an operation's outcome.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A closure to run on a shard (control plane only, see the module doc).
pub(crate) type RunOnShard = Box<dyn FnOnce(&Rc<ShardCtx>) + Send>;

pub(crate) enum ShardMsg {
    /// Append a batch encoded by the sender; `sent` times the hop.
    Append {
        id: PartitionId,
        batch: EncodedBatch,
        sent: Instant,
        reply: Reply<(Appended, AppendTiming)>,
    },
    /// Read stored batches from `from`; `strict` makes `from` at the visible end an error
    /// (the engine's own `read_range`) rather than an empty chunk.
    Read {
        id: PartitionId,
        from: u64,
        limits: ReadLimits,
        strict: bool,
        reply: Reply<Chunk>,
    },
    /// Resolve when the visible end passes `offset`; the wait ends early when `cancel`'s
    /// sender is dropped (the reader went away), so no waiter is left behind.
    WaitFor {
        id: PartitionId,
        offset: u64,
        cancel: oneshot::Receiver<()>,
        reply: Reply<u64>,
    },
    Describe {
        id: PartitionId,
        reply: Reply<PartitionReport>,
    },
    /// Resolve once everything committed when it was sent is visible (a read point).
    ReadBarrier {
        id: PartitionId,
        reply: Reply<u64>,
    },
    /// Open a partition of a topic being created.
    Open {
        id: PartitionId,
        config: LogConfig,
        reply: Reply<()>,
    },
    /// The topic's retention limits changed: the partition's log takes them and a retention
    /// pass applies them at once.
    SetRetention {
        id: PartitionId,
        bytes: u64,
        ms: u64,
        reply: Reply<()>,
    },
    /// Close a partition of a topic being deleted and remove its data.
    Remove {
        id: PartitionId,
        reply: Reply<()>,
    },
    /// Close a partition's log, its data staying (`owner::close`).
    Close {
        id: PartitionId,
        reply: Reply<()>,
    },
    /// Replace the shard's copy of the catalog.
    CatalogChanged {
        catalog: Arc<Catalog>,
        done: oneshot::Sender<()>,
    },
    Report {
        reply: Reply<ShardReport>,
    },
    /// Messages from another node for this shard's replication layer (Raft frames).
    Peer {
        payload: Box<dyn std::any::Any + Send>,
    },
    Run(RunOnShard),
    Stop,
}

impl ShardMsg {
    /// Serves the message on shard `ctx`. Operations run as tasks of their own, so the shard's
    /// receiver goes on at once; an operation, once started, completes even if its sender
    /// goes away (a roll or truncation must not stop halfway).
    pub(crate) fn handle(self, ctx: &Rc<ShardCtx>) {
        let ctx = Rc::clone(ctx);
        match self {
            ShardMsg::Append {
                id,
                batch,
                sent,
                reply,
            } => spawn(async move {
                let _ = reply.send(owner::append(&ctx, &id, &batch, sent).await);
            }),
            ShardMsg::Read {
                id,
                from,
                limits,
                strict,
                reply,
            } => spawn(async move {
                let _ = reply.send(owner::read(&ctx, &id, from, limits, strict).await);
            }),
            ShardMsg::WaitFor {
                id,
                offset,
                cancel,
                reply,
            } => spawn(async move {
                let wait = async { Some(owner::wait_for(&ctx, &id, offset).await) };
                let cancelled = async {
                    let _ = cancel.await;
                    None
                };
                if let Some(r) = futures_lite::future::or(wait, cancelled).await {
                    let _ = reply.send(r);
                }
            }),
            ShardMsg::Describe { id, reply } => {
                let _ = reply.send(owner::describe(&ctx, &id));
            }
            ShardMsg::ReadBarrier { id, reply } => spawn(async move {
                let _ = reply.send(owner::read_barrier(&ctx, &id).await);
            }),
            ShardMsg::Open { id, config, reply } => spawn(async move {
                let _ = reply.send(ctx.open_log(&id, config).await.map(|_| ()));
            }),
            ShardMsg::SetRetention {
                id,
                bytes,
                ms,
                reply,
            } => spawn(async move {
                let _ = reply.send(owner::set_retention(&ctx, &id, bytes, ms).await);
            }),
            ShardMsg::Remove { id, reply } => spawn(async move {
                let _ = reply.send(owner::remove(&ctx, &id).await);
            }),
            ShardMsg::Close { id, reply } => spawn(async move {
                let _ = reply.send(owner::close(&ctx, &id).await);
            }),
            ShardMsg::CatalogChanged { catalog, done } => {
                ctx.set_catalog(catalog);
                let _ = done.send(());
            }
            ShardMsg::Report { reply } => {
                let _ = reply.send(Ok(ctx.report()));
            }
            ShardMsg::Peer { payload } => {
                if let Some(r) = ctx.replicator() {
                    r.receive(payload);
                }
            }
            ShardMsg::Run(f) => f(&ctx),
            ShardMsg::Stop => ctx.stop.set(true),
        }
    }
}

fn spawn(f: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local(f).detach();
}

/// The error of a reply that never came: the shard stopped.
pub(crate) fn gone(_: oneshot::Canceled) -> Error {
    Error::ShutDown
}
