//! proglog's storage engine: segmented commit logs on a shard-per-core glommio runtime.
//!
//! What it owns:
//! - [`Log`]: one partition's log, an ordered list of segments with dense offsets. Data files
//!   are written with O_DIRECT (glommio `DmaFile`) from an aligned write-behind buffer; each
//!   segment has a memory-mapped sparse index. Appends take batches and resolve when the log's
//!   [`Durability`] policy is satisfied (`always` shares one fdatasync among concurrent
//!   appends). Reads binary-search the segments, then the index.
//! - Recovery: opening a log validates the active segment batch by batch (CRC32C, offset
//!   continuity), cuts a torn or corrupt tail and rebuilds the index from the data. Corruption
//!   found later is an [`Error::Corrupt`] naming the file and byte, never data. A failed write
//!   or fsync latches the log read-only until it is reopened.
//! - [`Engine`]: one executor per shard; every partition is owned by one shard (by hash), and
//!   an [`EngineHandle`] routes operations to the owner from any thread, as typed messages
//!   through the owner's bounded queue, by the calling shard's own copy of the catalog.
//! - [`seam`]: the partition seam the server is written against (append an encoded batch,
//!   read stored batches, wait for the visible end, describe; topic administration), its
//!   engine-backed implementation ([`seam::local`]), an in-memory one ([`seam::memory`]) and,
//!   with the `conformance` feature, the suite every implementation passes.
//! - [`power_loss`]: TEST-ONLY journal of what each fdatasync covered, for a fault harness
//!   that plays power cuts (off unless the harness asks for it, see its doc).
//! - [`topics`]: topic administration over the catalog of topics; small atomically replaced
//!   metadata files ([`meta`]); the engine's limits and defaults in one place ([`limits`]).
//!
//! On-disk formats are drawn byte by byte in `docs/format.md`.
//!
//! ```no_run
//! use engine::{Engine, EngineConfig, LogConfig, NewRecord};
//! let engine = Engine::start(EngineConfig::new("./data"))?;
//! let h = engine.handle();
//! futures_lite::future::block_on(async {
//!     h.create_topic("events", 4, LogConfig::default()).await?;
//!     let a = h.append("events", 0, vec![NewRecord::new(&b"hello"[..])]).await?;
//!     let r = h.read("events", 0, a.base_offset).await?;
//!     assert_eq!(&r.value[..], b"hello");
//!     Ok::<_, engine::Error>(())
//! })?;
//! engine.shutdown();
//! # Ok::<_, engine::Error>(())
//! ```

pub mod batch;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod cpus;
pub mod error;
pub mod index;
pub mod limits;
pub mod log;
pub mod memory;
pub mod meta;
pub mod metrics;
pub mod power_loss;
pub mod seam;
pub mod segment;
pub mod shard;
pub mod tail_cache;
pub mod topics;

#[cfg(test)]
mod mutation;
#[cfg(any(test, feature = "mutation"))]
pub mod mutator;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use batch::{NewRecord, Record};

/// The topic that holds a cluster's controller log (Raft group 0): one partition, always on
/// shard 0, never served to clients.
pub const CONTROLLER_TOPIC: &str = "__cluster";
pub use budget::FileBudget;
pub use catalog::TopicInfo;
pub use config::{Durability, EngineConfig, LogConfig, CONTROLLER_SEGMENT_BYTES};
pub use error::{Error, Result};
pub use log::{
    Appended, Log, LogStats, RawBatches, Removed, SnapshotReader, Visibility, WriteState,
    LOST_META, SEGMENTS_META,
};
pub use memory::{MemoryAccount, MemoryHook};
pub use metrics::AppendTiming;
pub use shard::{Engine, EngineHandle, PartitionInfo, ShardCtx, ShardReport};

/// Runs `f` on a fresh single glommio executor thread with the DMA probe fix applied for
/// `dir`'s device, and returns its output. For tests, tools and benchmarks that drive a [`Log`]
/// directly.
pub fn run_local<T, F, Fut>(dir: &std::path::Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let dir = dir.to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    shard::write_probe_file(&dir)?;
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            shard::dma_probe(&dir).await?;
            Ok::<T, Error>(f().await)
        })
        .map_err(|e| {
            Error::io(
                "starting executor",
                "",
                std::io::Error::other(e.to_string()),
            )
        })?;
    handle
        .join()
        .map_err(|e| Error::io("joining executor", "", std::io::Error::other(e.to_string())))?
}
