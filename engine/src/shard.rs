//! The shard-per-core runtime: one glommio executor per shard, each owning the partitions that
//! hash to it, and a `Send + Clone` handle that routes any operation to the owning shard.
//!
//! Routing: a caller on the owning shard runs the operation in place. Any other caller (another
//! shard, or a plain thread) sends a job through that shard's bounded crossbeam channel and
//! wakes its receiver task; the job runs as a local task on the owner, and the result comes
//! back through a oneshot channel. glommio wakers may be woken from foreign threads, which is
//! what makes both directions work without polling.

use crate::batch::{NewRecord, Record};
use crate::budget::FileBudget;
use crate::catalog::{partition_dir, Topics};
use crate::config::{EngineConfig, LogConfig};
use crate::error::{Error, Result};
use crate::limits;
use crate::log::{Appended, Log, LogStats};
use crate::metrics::{self, AppendTiming, ShardMetrics, ShardMetricsSnapshot, ShardSlot};
use atomic_waker::AtomicWaker;
use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};
use futures_channel::oneshot;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

type Job = Box<dyn FnOnce(&Rc<ShardCtx>) + Send>;

static NEXT_ENGINE_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: RefCell<Option<(usize, Rc<ShardCtx>)>> = const { RefCell::new(None) };
}

struct ShardTx {
    tx: Sender<Job>,
    waker: Arc<AtomicWaker>,
}

struct Shared {
    id: usize,
    config: EngineConfig,
    shards: Vec<ShardTx>,
    topics: Topics,
    stopping: AtomicBool,
    /// One per shard, written only by that shard's thread; read by scrapes.
    metrics: Vec<ShardSlot>,
}

/// State of one shard, living on its executor thread.
pub struct ShardCtx {
    pub index: usize,
    data_dir: PathBuf,
    budget: Rc<FileBudget>,
    logs: RefCell<HashMap<(String, u32), Rc<Log>>>,
    stop: std::cell::Cell<bool>,
}

impl ShardCtx {
    fn log(&self, topic: &str, partition: u32) -> Result<Rc<Log>> {
        self.logs
            .borrow()
            .get(&(topic.to_owned(), partition))
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    /// Opens the log of `topic`/`partition` (or returns it if it is open).
    pub(crate) async fn open_log(
        &self,
        topic: &str,
        partition: u32,
        config: LogConfig,
    ) -> Result<Rc<Log>> {
        if let Ok(l) = self.log(topic, partition) {
            return Ok(l);
        }
        let dir = partition_dir(&self.data_dir, topic, partition);
        let log = Log::open(&dir, config, Rc::clone(&self.budget)).await?;
        self.logs
            .borrow_mut()
            .insert((topic.to_owned(), partition), Rc::clone(&log));
        Ok(log)
    }

    /// Takes the log of `topic`/`partition` out of this shard (its topic is being deleted).
    pub(crate) fn forget_log(&self, topic: &str, partition: u32) -> Option<Rc<Log>> {
        self.logs
            .borrow_mut()
            .remove(&(topic.to_owned(), partition))
    }

    /// Open files of this shard's segments.
    pub fn open_segments(&self) -> usize {
        self.budget.open_segments()
    }
}

/// A running engine. Dropping it shuts it down like `shutdown`.
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    _lock: std::fs::File,
}

/// A cheap, `Send + Sync` handle to the engine, usable from any thread or shard.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

/// What a shard reports to a metrics scrape.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub shard: usize,
    /// Every partition the shard owns, sorted by topic and partition.
    pub partitions: Vec<(String, u32, LogStats)>,
    /// Sealed segments whose files are open (each holds two descriptors); every log's
    /// active segment is open besides.
    pub open_sealed_segments: usize,
}

/// Where one partition stands.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub partition: u32,
    pub shard: usize,
    pub stats: LogStats,
}

const PROBE_FILE: &str = "dma-probe";
/// One block: the probe read must find data, and a DMA read is a whole block.
const PROBE_BYTES: usize = crate::segment::BLOCK as usize;

impl Engine {
    /// Starts the shards, recovers every partition in the catalog, and returns once all are
    /// ready to serve.
    pub fn start(config: EngineConfig) -> Result<Engine> {
        config
            .default_log
            .validate()
            .map_err(Error::InvalidArgument)?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(dir.join("topics"))
            .map_err(|e| Error::io("creating data directory", &dir, e))?;
        let lock = lock_data_dir(&dir)?;
        write_probe_file(&dir)?;
        let topics = Topics::load(&dir)?;
        let n = config.shard_count();
        let mut rxs = Vec::with_capacity(n);
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = channel::bounded(config.queue_depth.max(1));
            let waker = Arc::new(AtomicWaker::new());
            shards.push(ShardTx {
                tx,
                waker: Arc::clone(&waker),
            });
            rxs.push((rx, waker));
        }
        let shared = Arc::new(Shared {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            config,
            shards,
            topics,
            stopping: AtomicBool::new(false),
            metrics: (0..n)
                .map(|_| Arc::new(crossbeam::utils::CachePadded::new(ShardMetrics::default())))
                .collect(),
        });
        let cpus = allowed_cpus();
        let (ready_tx, ready_rx) = channel::unbounded::<(usize, Result<()>)>();
        let mut threads = Vec::with_capacity(n);
        for (i, (rx, waker)) in rxs.into_iter().enumerate() {
            let placement = match cpus.get(i) {
                Some(&cpu) if shared.config.pin => Placement::Fixed(cpu),
                _ => Placement::Unbound,
            };
            let shared2 = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let t = LocalExecutorBuilder::new(placement)
                .name(&format!("proglog-shard-{i}"))
                .spawn(move || shard_main(i, shared2, rx, waker, ready))
                .map_err(|e| {
                    Error::io(
                        "starting shard executor",
                        &dir,
                        std::io::Error::other(e.to_string()),
                    )
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let handle = EngineHandle { shared };
        let engine = Engine {
            handle,
            threads,
            _lock: lock,
        };
        let mut first_err = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((i, Err(e))) => {
                    log::error!("shard {i} failed to start: {e}");
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::ShutDown);
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            let mut engine = engine;
            engine.shutdown_inner();
            return Err(e);
        }
        Ok(engine)
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Closes every log (flushing and syncing what is buffered) and stops the shards.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        let shared = &self.handle.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        for s in &shared.shards {
            let job: Job = Box::new(|ctx: &Rc<ShardCtx>| ctx.stop.set(true));
            // A full queue still drains; block until the stop job fits.
            let _ = s.tx.send(job);
            s.waker.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening lock file", &path, e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::io(
            "locking data directory (is another proglog using it?)",
            &path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

/// glommio decides once per thread and device whether the device supports polled I/O, by
/// reading from the first file opened with DMA; on an empty file that read wrongly succeeds and
/// every later DMA read fails with EOPNOTSUPP. A non-empty file opened first avoids that.
pub(crate) fn write_probe_file(dir: &Path) -> Result<()> {
    let path = dir.join(PROBE_FILE);
    let ok = std::fs::metadata(&path)
        .map(|m| m.len() >= PROBE_BYTES as u64)
        .unwrap_or(false);
    if !ok {
        std::fs::write(&path, vec![0x50u8; PROBE_BYTES])
            .map_err(|e| Error::io("writing", &path, e))?;
    }
    Ok(())
}

pub(crate) async fn dma_probe(dir: &Path) -> Result<()> {
    let path = dir.join(PROBE_FILE);
    let f = glommio::io::DmaFile::open(&path)
        .await
        .map_err(|e| Error::glommio("opening probe file", &path, e))?;
    f.read_at(0, PROBE_BYTES)
        .await
        .map_err(|e| Error::glommio("reading probe file", &path, e))?;
    let _ = f.close().await;
    Ok(())
}

async fn shard_main(
    index: usize,
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    waker: Arc<AtomicWaker>,
    ready: Sender<(usize, Result<()>)>,
) {
    let dir = shared.config.data_dir.clone();
    let ctx = Rc::new(ShardCtx {
        index,
        data_dir: dir.clone(),
        budget: FileBudget::new(shared.config.max_open_segments_per_shard),
        logs: RefCell::new(HashMap::new()),
        stop: std::cell::Cell::new(false),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some((shared.id, Rc::clone(&ctx))));
    metrics::set_local(shared.metrics.get(index).cloned());
    let started = async {
        dma_probe(&dir).await?;
        let all = shared.topics.all_partitions()?;
        let owned = all
            .into_iter()
            .filter(|(name, p, _)| owner(name, *p, shared.shards.len()) == index);
        for (name, p, config) in owned {
            ctx.open_log(&name, p, config).await?;
        }
        Ok(())
    }
    .await;
    let failed = started.is_err();
    let _ = ready.send((index, started));
    if failed {
        return;
    }
    spawn_retention(&ctx, shared.config.retention_check);
    let mut handled = 0u32;
    while !ctx.stop.get() {
        match rx.try_recv() {
            Ok(job) => {
                job(&ctx);
                handled += 1;
                if handled.is_multiple_of(limits::JOBS_PER_YIELD) {
                    glommio::yield_if_needed().await;
                }
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                futures_lite::future::poll_fn(|cx| {
                    waker.register(cx.waker());
                    if !rx.is_empty() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
        }
    }
    let logs: Vec<Rc<Log>> = ctx.logs.borrow_mut().drain().map(|(_, l)| l).collect();
    for log in logs {
        if let Err(e) = log.close().await {
            log::error!("closing {}: {e}", log.dir().display());
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = None);
    metrics::set_local(None);
}

fn spawn_retention(ctx: &Rc<ShardCtx>, every: std::time::Duration) {
    let weak = Rc::downgrade(ctx);
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(every).await;
            let Some(ctx) = weak.upgrade() else { return };
            if ctx.stop.get() {
                return;
            }
            let logs: Vec<Rc<Log>> = ctx.logs.borrow().values().cloned().collect();
            for log in logs {
                match log.apply_retention(SystemTime::now()).await {
                    Ok(r) if r.segments > 0 => log::info!(
                        "{}: retention removed {} segments ({} bytes)",
                        log.dir().display(),
                        r.segments,
                        r.bytes
                    ),
                    Ok(_) => {}
                    Err(e) => log::error!("{}: retention failed: {e}", log.dir().display()),
                }
            }
        }
    })
    .detach();
}

/// The shard that owns a partition: a stable hash of topic and partition.
pub fn owner(topic: &str, partition: u32, shards: usize) -> usize {
    let mut h = crc32c::crc32c(topic.as_bytes());
    h = crc32c::crc32c_append(h, &partition.to_le_bytes());
    (h as usize) % shards.max(1)
}

impl EngineHandle {
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.config.data_dir
    }

    pub fn config(&self) -> &EngineConfig {
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
        self.on_shard(shard, move |ctx| async move {
            let mut partitions: Vec<(String, u32, LogStats)> = ctx
                .logs
                .borrow()
                .iter()
                .map(|((t, p), log)| (t.clone(), *p, log.stats()))
                .collect();
            partitions.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            Ok(ShardReport {
                shard,
                partitions,
                open_sealed_segments: ctx.open_segments(),
            })
        })
        .await
    }

    /// The shard that owns `topic`/`partition`.
    pub fn shard_of(&self, topic: &str, partition: u32) -> usize {
        owner(topic, partition, self.shards())
    }

    /// The shard the calling thread runs, when it is one of this engine's.
    pub fn current_shard(&self) -> Option<usize> {
        CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(id, _)| *id == self.shared.id)
                .map(|(_, ctx)| ctx.index)
        })
    }

    /// The catalog of topics (the topic operations are in `topics.rs`).
    pub(crate) fn topics(&self) -> &Topics {
        &self.shared.topics
    }

    /// Runs `f` on the shard with index `shard` and returns its result.
    pub async fn on_shard<R, F, Fut>(&self, shard: usize, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<ShardCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R>> + 'static,
    {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return Err(Error::ShutDown);
        }
        let local = CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(id, ctx)| *id == self.shared.id && ctx.index == shard)
                .map(|(_, ctx)| Rc::clone(ctx))
        });
        if let Some(ctx) = local {
            // Run as a detached task even in place: an operation, once started, completes
            // even if the caller goes away (a roll or truncation must not stop halfway).
            let (tx, rx) = oneshot::channel::<Result<R>>();
            glommio::spawn_local(async move {
                let _ = tx.send(f(ctx).await);
            })
            .detach();
            return rx.await.map_err(|_| Error::ShutDown)?;
        }
        let target = self
            .shared
            .shards
            .get(shard)
            .ok_or_else(|| Error::InvalidArgument(format!("no shard {shard}")))?;
        let (tx, rx) = oneshot::channel::<Result<R>>();
        let job: Job = Box::new(move |ctx: &Rc<ShardCtx>| {
            let ctx = Rc::clone(ctx);
            glommio::spawn_local(async move {
                let r = f(ctx).await;
                let _ = tx.send(r);
            })
            .detach();
        });
        match target.tx.try_send(job) {
            Ok(()) => target.waker.wake(),
            Err(TrySendError::Full(_)) => {
                return Err(Error::Overloaded {
                    shard,
                    depth: target.tx.len(),
                })
            }
            Err(TrySendError::Disconnected(_)) => return Err(Error::ShutDown),
        }
        rx.await.map_err(|_| Error::ShutDown)?
    }

    /// Runs `f` with the log of `topic`/`partition` on its owning shard.
    pub async fn with_log<R, F, Fut>(&self, topic: &str, partition: u32, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Log>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R>> + 'static,
    {
        self.topics().check_partition(topic, partition)?;
        let shard = self.shard_of(topic, partition);
        let topic = topic.to_owned();
        self.on_shard(shard, move |ctx| async move {
            let log = ctx.log(&topic, partition)?;
            f(log).await
        })
        .await
    }

    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<Appended> {
        self.with_log(topic, partition, move |log| async move {
            log.append(&records).await
        })
        .await
    }

    /// [`append`](Self::append), also reporting where the time went: the hop to the owning
    /// shard, buffering, and waiting for durability.
    pub async fn append_timed(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<(Appended, AppendTiming)> {
        let sent = std::time::Instant::now();
        self.with_log(topic, partition, move |log| async move {
            let queue = sent.elapsed();
            let (appended, timing) = log.append_timed(&records).await?;
            Ok((appended, AppendTiming { queue, ..timing }))
        })
        .await
    }

    pub async fn read(&self, topic: &str, partition: u32, offset: u64) -> Result<Record> {
        self.with_log(topic, partition, move |log| async move {
            log.read(offset).await
        })
        .await
    }

    pub async fn read_range(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        self.with_log(topic, partition, move |log| async move {
            log.read_range(from, max_records, max_bytes).await
        })
        .await
    }

    /// Resolves once the partition holds `offset` and readers may see it (see
    /// `Log::readable_next`); returns the readable end then. Dropping the
    /// future cancels the wait on the owning shard.
    pub async fn wait_for(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let r = self
            .with_log(topic, partition, move |log| async move {
                let wait = async {
                    log.wait_for(offset).await;
                    true
                };
                let cancelled = async {
                    let _ = cancel_rx.await;
                    false
                };
                let _ = futures_lite::future::or(wait, cancelled).await;
                Ok(log.readable_next())
            })
            .await;
        drop(cancel_tx);
        r
    }

    pub async fn stats(&self, topic: &str, partition: u32) -> Result<LogStats> {
        self.with_log(topic, partition, |log| async move { Ok(log.stats()) })
            .await
    }
}

/// The CPUs this process may run on, in order: shard i is pinned to the i-th. Not CPU i:
/// in a container with a cpuset (Kubernetes' static CPU manager gives a Guaranteed pod
/// exclusive CPUs such as 4 and 5) pinning to CPU 0 fails or, under a mere affinity mask
/// (taskset), escapes it. Empty when the mask cannot be read: shards then run unbound.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity(2) writes at most size_of::<cpu_set_t>() bytes into `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads bit `cpu` of `set`, and `cpu` < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}
