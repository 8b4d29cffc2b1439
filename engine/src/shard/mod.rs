//! The shard-per-core runtime: one glommio executor per shard, each owning the partitions that
//! hash to it, and a `Send + Clone` handle ([`EngineHandle`]) that routes any operation to the
//! owning shard.
//!
//! Routing: a caller on the owning shard runs the operation in place. Any other caller (another
//! shard, or a plain thread) sends a typed message ([`msg::ShardMsg`]) through that shard's
//! bounded crossbeam channel and wakes its receiver task; the message runs as a local task on
//! the owner ([`owner`]), and the result comes back through a oneshot channel. glommio wakers
//! may be woken from foreign threads, which is what makes both directions work without
//! polling. Which shard owns a partition, and whether it exists, a shard reads from its own
//! snapshot of the catalog: the data path takes no lock shared between cores.
//!
//! A replication layer ([`replication`], Raft in the server) may own a shard's appends: the
//! shard builds it at start, hands it each partition's log as it opens it, and the owner
//! passes it every append, its retention and what other nodes send it (`ShardMsg::Peer`).

mod handle;
pub(crate) mod msg;
pub(crate) mod owner;
pub mod replication;

pub use handle::EngineHandle;
pub use replication::{ReplicaStatus, ReplicationFactory, ReplicationHook, Replicator};

use crate::budget::FileBudget;
use crate::catalog::{
    has_partition_mark, partition_dir, write_partition_mark, Catalog, Topics, PARTITION_META,
};
use crate::config::{EngineConfig, LogConfig};
use crate::error::{Error, Result};
use crate::limits;
use crate::log::{Log, LogStats};
use crate::metrics::{self, ShardMetrics, ShardSlot};
use crate::seam::PartitionId;
use atomic_waker::AtomicWaker;
use crossbeam::channel::{self, Receiver, Sender, TryRecvError};
use event_listener::Event;
use glommio::{LocalExecutorBuilder, Placement};
use msg::ShardMsg;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

/// The operation named in the error of a data directory locked by another process.
pub(crate) const LOCK_OP: &str = "locking data directory (is another proglog using it?)";

/// The operation of an error starting a shard's executor thread.
pub(crate) const EXECUTOR_OP: &str = "starting shard executor";

static NEXT_ENGINE_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: RefCell<Option<(usize, Rc<ShardCtx>)>> = const { RefCell::new(None) };
}

struct ShardTx {
    tx: Sender<ShardMsg>,
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

/// A partition as its owner holds it.
pub(crate) struct Owned {
    pub(crate) log: Rc<Log>,
    /// Readers parked until the partition's visible end passes their offset.
    pub(crate) waiters: Rc<Cell<usize>>,
}

/// State of one shard, living on its executor thread.
pub struct ShardCtx {
    pub index: usize,
    data_dir: PathBuf,
    budget: Rc<FileBudget>,
    partitions: RefCell<HashMap<PartitionId, Owned>>,
    /// This shard's copy of the catalog: routing reads it without a lock. Topic
    /// administration replaces it (`ShardMsg::CatalogChanged`) on every shard before it
    /// returns.
    catalog: RefCell<Arc<Catalog>>,
    stop: Cell<bool>,
    /// The replication layer that owns this shard's appends, if the engine has one.
    replicator: Option<Rc<dyn Replicator>>,
    /// Partitions being opened or closed on this shard now ([`ShardCtx::one_at_a_time`]),
    /// and the event that tells waiters one is done.
    busy: RefCell<HashSet<PartitionId>>,
    busy_done: Event,
}

/// A partition's turn to be opened or closed on its shard: given back when dropped.
pub(crate) struct Turn<'a> {
    ctx: &'a ShardCtx,
    id: PartitionId,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.ctx.busy.borrow_mut().remove(&self.id);
        self.ctx.busy_done.notify(usize::MAX);
    }
}

impl ShardCtx {
    /// The log of `id`, with its waiter count.
    pub(crate) fn owned(&self, id: &PartitionId) -> Result<(Rc<Log>, Rc<Cell<usize>>)> {
        self.partitions
            .borrow()
            .get(id)
            .map(|o| (Rc::clone(&o.log), Rc::clone(&o.waiters)))
            .ok_or_else(|| Error::UnknownTopic(id.topic.to_string()))
    }

    pub(crate) fn log(&self, id: &PartitionId) -> Result<Rc<Log>> {
        self.owned(id).map(|(log, _)| log)
    }

    /// Waits for partition `id`'s turn to be opened or closed here: one open or close of a
    /// partition at a time (others' go on), so that a second open finds the first's log
    /// instead of opening the same files again, and a close never races an open.
    pub(crate) async fn one_at_a_time(&self, id: &PartitionId) -> Turn<'_> {
        loop {
            let done = self.busy_done.listen();
            if self.busy.borrow_mut().insert(id.clone()) {
                return Turn {
                    ctx: self,
                    id: id.clone(),
                };
            }
            done.await;
        }
    }

    /// Opens the log of `id` (or returns it if it is open). The shard is its owner: the
    /// log's visible mark is the owner's to set from now on.
    pub(crate) async fn open_log(&self, id: &PartitionId, config: LogConfig) -> Result<Rc<Log>> {
        if let Ok(l) = self.log(id) {
            return Ok(l);
        }
        let _turn = self.one_at_a_time(id).await;
        if let Ok(l) = self.log(id) {
            // Opened by the call whose turn came first.
            return Ok(l);
        }
        let config = if &*id.topic == crate::CONTROLLER_TOPIC {
            config.for_controller()
        } else {
            config
        };
        let dir = partition_dir(&self.data_dir, &id.topic, id.partition);
        // The catalog names the partition held here (or is about to: `open_partition` opens
        // before it records), and its directory was made, with its mark, before the catalog
        // named it (`Topics::add`, `EngineHandle::open_partition`): a missing directory was
        // removed after it held records, and one without its mark was emptied.
        let vanished = !dir
            .try_exists()
            .map_err(|e| Error::io("looking for", &dir, e))?;
        let marked = !vanished && has_partition_mark(&dir, &id.topic, id.partition)?;
        let log = Log::open(&dir, config, Rc::clone(&self.budget)).await?;
        let why = if vanished {
            Some(format!(
                "the partition's directory {} was missing at start although the catalog \
                 lists its topic: whatever it held is gone",
                dir.display()
            ))
        } else if !marked {
            Some(format!(
                "the partition's directory {} was emptied (its {PARTITION_META} is gone) \
                 although the catalog lists its topic: whatever it held is gone",
                dir.display()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            log::error!("partition {id}: {why}");
            // Marked lost first, then given its mark: a crash between the two finds it
            // unmarked again, and marks it lost again.
            let marked_now = log
                .mark_lost(&why)
                .and_then(|()| write_partition_mark(log.dir(), &id.topic, id.partition));
            if let Err(e) = marked_now {
                let _ = log.close().await;
                return Err(e);
            }
        }
        match &self.replicator {
            // Before the partition is reachable: the replicator sets the visible mark.
            Some(r) => {
                if let Err(e) = r.open(id, Rc::clone(&log)).await {
                    let _ = log.close().await;
                    return Err(e);
                }
            }
            None => log.take_visibility(),
        }
        self.partitions.borrow_mut().insert(
            id.clone(),
            Owned {
                log: Rc::clone(&log),
                waiters: Rc::new(Cell::new(0)),
            },
        );
        Ok(log)
    }

    /// Takes the log of `id` out of this shard (its topic is being deleted, or the partition
    /// is no longer held here), and out of the replication layer.
    pub(crate) async fn forget_log(&self, id: &PartitionId) -> Option<Rc<Log>> {
        let log = self.partitions.borrow_mut().remove(id).map(|o| o.log);
        if log.is_some() {
            if let Some(r) = &self.replicator {
                r.close(id).await;
            }
        }
        log
    }

    /// The replication layer of this shard, if the engine has one.
    pub fn replicator(&self) -> Option<Rc<dyn Replicator>> {
        self.replicator.clone()
    }

    /// The partitions this shard owns, with their logs.
    fn owned_logs(&self) -> Vec<(PartitionId, Rc<Log>)> {
        self.partitions
            .borrow()
            .iter()
            .map(|(id, o)| (id.clone(), Rc::clone(&o.log)))
            .collect()
    }

    /// Every log this shard owns.
    fn logs(&self) -> Vec<Rc<Log>> {
        self.partitions
            .borrow()
            .values()
            .map(|o| Rc::clone(&o.log))
            .collect()
    }

    /// Runs `f` on this shard's copy of the catalog.
    pub(crate) fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.catalog.borrow())
    }

    pub(crate) fn set_catalog(&self, catalog: Arc<Catalog>) {
        *self.catalog.borrow_mut() = catalog;
    }

    /// Open files of this shard's segments.
    pub fn open_segments(&self) -> usize {
        self.budget.open_segments()
    }

    /// What this shard owns and how each of its partitions stands.
    pub(crate) fn report(&self) -> ShardReport {
        let mut partitions: Vec<(String, u32, LogStats)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(id, o)| (id.topic.to_string(), id.partition, o.log.stats()))
            .collect();
        partitions.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        ShardReport {
            shard: self.index,
            partitions,
            open_sealed_segments: self.open_segments(),
        }
    }
}

/// A running engine. Dropping it shuts it down like `shutdown`.
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    _lock: std::fs::File,
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
    /// Starts the shards, recovers every partition the catalog says this node holds, and
    /// returns once all are ready to serve.
    pub fn start(config: EngineConfig) -> Result<Engine> {
        config
            .default_log
            .validate()
            .map_err(Error::InvalidArgument)?;
        // TEST-ONLY hook: refuse to start when it is asked for wrongly.
        crate::power_loss::check()?;
        let allowed = crate::cpus::allowed();
        if let Some(cpuset) = config.cpuset.as_ref().filter(|_| config.pin) {
            crate::cpus::check(cpuset, &allowed)
                .map_err(|e| Error::InvalidArgument(format!("cpuset: {e}")))?;
        }
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(dir.join("topics"))
            .map_err(|e| Error::io("creating data directory", &dir, e))?;
        let lock = lock_data_dir(&dir)?;
        write_probe_file(&dir)?;
        let topics = Topics::load(&dir)?;
        // Directories renamed away to be removed (`close_partition`) whose removal a crash or
        // an error cut short, and partition directories being built (`open_partition`) whose
        // creation one cut short: garbage, gone before any log opens or any creation runs.
        crate::catalog::sweep_all_tombstones(&dir);
        log_unheld_dirs(&dir, &*topics.snapshot()?);
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
        let (ready_tx, ready_rx) = channel::unbounded::<(usize, Result<()>)>();
        let mut threads = Vec::with_capacity(n);
        for (i, (rx, waker)) in rxs.into_iter().enumerate() {
            let placement = placement(i, &shared.config, &allowed, &dir)?;
            let shared2 = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let t = LocalExecutorBuilder::new(placement)
                .name(&format!("proglog-shard-{i}"))
                .spawn(move || shard_main(i, shared2, rx, waker, ready))
                .map_err(|e| Error::io(EXECUTOR_OP, &dir, std::io::Error::other(e.to_string())))?;
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
            // A full queue still drains; block until the stop message fits.
            let _ = s.tx.send(ShardMsg::Stop);
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

/// Logs each partition directory of a listed topic that this node does not hold (a replica
/// moved away whose data was kept): it is not opened, and nothing removes it here (it opens
/// again if the partition is held here again; it goes with its topic).
fn log_unheld_dirs(data_dir: &Path, catalog: &Catalog) {
    for (name, t) in &catalog.topics {
        if t.held.is_none() {
            continue;
        }
        for p in (0..t.partitions).filter(|&p| !t.holds(p)) {
            let dir = partition_dir(data_dir, name, p);
            if dir.exists() {
                log::info!(
                    "partition {name}/{p} is not held here (no replica of it placed on this \
                     node): {} is kept, not opened",
                    dir.display()
                );
            }
        }
    }
}

/// How long `lock_data_dir` waits for a lock held by someone else before refusing.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Takes the data directory's lock (an `flock` on `LOCK`), or refuses naming the file.
///
/// A lock another process or engine holds is held for as long as it runs, so a refusal
/// after a short wait is right. The wait is for a copy of a released lock: an `flock`
/// belongs to the open file, and a child forked by any thread of this process (a
/// `Command::spawn`) holds a copy of every descriptor, the lock file's of an engine that
/// just stopped included, until it execs. Without the wait, an engine started again right
/// after a stop could be refused while another thread starts a program.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening lock file", &path, e))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock || std::time::Instant::now() >= deadline {
            return Err(Error::io(LOCK_OP, &path, e));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
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
    rx: Receiver<ShardMsg>,
    waker: Arc<AtomicWaker>,
    ready: Sender<(usize, Result<()>)>,
) {
    let dir = shared.config.data_dir.clone();
    let catalog = match shared.topics.snapshot() {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send((index, Err(e)));
            return;
        }
    };
    let ctx = Rc::new(ShardCtx {
        index,
        data_dir: dir.clone(),
        budget: FileBudget::new(shared.config.max_open_segments_per_shard),
        partitions: RefCell::new(HashMap::new()),
        catalog: RefCell::new(catalog),
        stop: Cell::new(false),
        busy: RefCell::new(HashSet::new()),
        busy_done: Event::new(),
        replicator: shared
            .config
            .replication
            .as_ref()
            .map(|h| h.0.build(index, shared.shards.len())),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some((shared.id, Rc::clone(&ctx))));
    metrics::set_local(shared.metrics.get(index).cloned());
    crate::memory::set_local(shared.config.memory.clone());
    let started = async {
        dma_probe(&dir).await?;
        let all = shared.topics.all_partitions()?;
        let owned = all
            .into_iter()
            .filter(|(name, p, _)| owner(name, *p, shared.shards.len()) == index);
        for (name, p, config) in owned {
            let id = PartitionId::new(&name, p);
            if let Some(r) = ctx.replicator() {
                if !r.opens_at_start(&id, &partition_dir(&dir, &name, p)) {
                    log::info!(
                        "partition {id}: never opened by its group, and not in the cluster's \
                         state yet: opened once it is"
                    );
                    continue;
                }
            }
            ctx.open_log(&id, config).await?;
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
            Ok(msg) => {
                msg.handle(&ctx);
                handled += 1;
                if handled.is_multiple_of(limits::MESSAGES_PER_YIELD) {
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
    // The replication loop stops first: nothing writes to a log once it is closing.
    if let Some(r) = &ctx.replicator {
        r.stop().await;
    }
    let logs: Vec<Rc<Log>> = ctx
        .partitions
        .borrow_mut()
        .drain()
        .map(|(_, o)| o.log)
        .collect();
    for log in logs {
        if let Err(e) = log.close().await {
            log::error!("closing {}: {e}", log.dir().display());
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = None);
    metrics::set_local(None);
    crate::memory::set_local(None);
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
            if let Some(r) = ctx.replicator() {
                for (id, log) in ctx.owned_logs() {
                    if let Err(e) = r.apply_retention(&id, SystemTime::now()).await {
                        log::error!("{}: retention failed: {e}", log.dir().display());
                    }
                }
                continue;
            }
            for log in ctx.logs() {
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

/// The shard that owns a partition: a topic's partitions take the shards in turn, from one
/// a stable hash of the topic picks (`(crc32c(topic) + partition) mod shards`), so that a
/// topic of N partitions puts N / shards of them on every shard, give or take one, and
/// single-partition topics spread by their names. (A hash of topic and partition together
/// put both partitions of a two-partition topic on one shard half the time.) Ownership is
/// computed, never stored: a change of `--shards`, or of this rule, moves partitions
/// between shards at the next start, which the data directory does not mind.
pub fn owner(topic: &str, partition: u32, shards: usize) -> usize {
    if topic == crate::CONTROLLER_TOPIC {
        return 0;
    }
    let first = u64::from(crc32c::crc32c(topic.as_bytes()));
    ((first + u64::from(partition)) % shards.max(1) as u64) as usize
}

/// Where shard `i` runs: on the i-th CPU of the cpuset (of the process's affinity mask when
/// none is given). A shard beyond its CPUs floats over them: unbound, which keeps it inside
/// the mask, or fenced to an explicit cpuset's CPUs.
fn placement(
    i: usize,
    config: &EngineConfig,
    allowed: &[usize],
    dir: &std::path::Path,
) -> Result<Placement> {
    if !config.pin {
        return Ok(Placement::Unbound);
    }
    let cpus = config.cpuset.as_deref().unwrap_or(allowed);
    if let Some(&cpu) = cpus.get(i) {
        return Ok(Placement::Fixed(cpu));
    }
    match &config.cpuset {
        None => Ok(Placement::Unbound),
        Some(set) => {
            let online = glommio::CpuSet::online().map_err(|e| {
                Error::io(
                    "reading the CPU topology",
                    dir,
                    std::io::Error::other(e.to_string()),
                )
            })?;
            Ok(Placement::Fenced(online.filter(|l| set.contains(&l.cpu))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn a_topics_partitions_take_the_shards_in_turn() {
        for shards in 1..=8usize {
            for topic in [
                "default",
                "two",
                "events",
                "orders",
                "t",
                "a-much-longer-name",
            ] {
                for partitions in [1u32, 2, 3, 7, 16, 100] {
                    let mut per_shard = vec![0u32; shards];
                    for p in 0..partitions {
                        per_shard[owner(topic, p, shards)] += 1;
                    }
                    let (lo, hi) = (per_shard.iter().min(), per_shard.iter().max());
                    let (Some(lo), Some(hi)) = (lo, hi) else {
                        unreachable!("at least one shard")
                    };
                    assert!(
                        hi - lo <= 1,
                        "{topic} with {partitions} partitions on {shards} shards: {per_shard:?}"
                    );
                }
            }
        }
    }

    /// A lock released while another thread forks and execs programs is taken again: the
    /// children's copies of the lock file's descriptor hold the lock until they exec. Without
    /// the wait in `lock_data_dir` about one take in a hundred is refused here.
    #[test]
    fn a_released_lock_is_taken_again_while_other_threads_start_programs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        use std::sync::atomic::{AtomicU32, Ordering};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let launched = std::sync::Arc::new(AtomicU32::new(0));
        let spawners: Vec<_> = (0..2)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                let launched = std::sync::Arc::clone(&launched);
                std::thread::spawn(move || {
                    let mut started = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let status = std::process::Command::new("true").status();
                        assert!(status.is_ok_and(|s| s.success()), "running true");
                        started += 1;
                        launched.fetch_add(1, Ordering::Relaxed);
                    }
                    started
                })
            })
            .collect();
        // The takes begin once programs are being started (on a loaded machine the threads
        // may start later than 3,000 takes take).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while launched.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < until,
                "no program started in 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut refused = Vec::new();
        for i in 0..3000 {
            match super::lock_data_dir(tmp.path()) {
                Ok(lock) => drop(lock),
                Err(e) => refused.push(format!("take {i}: {e}")),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let started: u32 = spawners
            .into_iter()
            .map(|t| t.join().expect("spawner"))
            .sum();
        assert!(
            started > 0,
            "no program was started while the lock was taken"
        );
        assert!(
            refused.is_empty(),
            "{} refused: {:?}",
            refused.len(),
            &refused[..refused.len().min(3)]
        );
        // A lock that is held stays refused (after the wait), naming the file.
        let held = super::lock_data_dir(tmp.path()).expect("take");
        let e = super::lock_data_dir(tmp.path()).expect_err("taken twice");
        assert!(e.to_string().contains("LOCK"), "{e}");
        drop(held);
    }

    #[test]
    fn the_controller_is_on_shard_zero_and_one_shard_owns_everything() {
        assert_eq!(owner(crate::CONTROLLER_TOPIC, 0, 4), 0);
        assert_eq!(owner("anything", 5, 1), 0);
        assert_eq!(owner("anything", 5, 0), 0);
    }
}
