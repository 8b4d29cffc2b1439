//! Engine scenarios: appends, reads and restart of one `engine::Log`, driven by glommio tasks
//! on the log's own executor (`engine::run_local`), so no network or cross-thread routing is
//! measured.

use crate::{mb_per_s, new_hist, round2, Latency, Rng};
use anyhow::{anyhow, Result};
use bytes_free::make_batch;
use engine::{Durability, FileBudget, Log, LogConfig, LogStats};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

mod bytes_free {
    use engine::NewRecord;

    /// `count` records of `size` bytes of non-repeating data (the engine does not compress,
    /// but nothing should be able to shortcut zeros).
    pub fn make_batch(size: usize, count: usize, seed: u64) -> Vec<NewRecord> {
        let mut rng = crate::Rng::new(seed);
        (0..count)
            .map(|_| {
                let mut v = vec![0u8; size];
                rng.fill(&mut v);
                NewRecord::new(v)
            })
            .collect()
    }
}

fn eerr(e: engine::Error) -> anyhow::Error {
    anyhow!("{e}")
}

fn base_config(durability: Durability, write_behind: Option<usize>) -> LogConfig {
    let mut c = LogConfig {
        durability,
        ..LogConfig::default()
    };
    if let Some(w) = write_behind {
        c.write_behind_bytes = w;
    }
    c
}

// ------------------------------------------------------------------------------- appends

#[derive(Debug, Clone)]
pub struct AppendSpec {
    pub record_size: usize,
    pub batch: usize,
    pub appenders: usize,
    pub durability: Durability,
    /// Emulate the group commit `always` should give: the log runs under `never` and one
    /// bench task syncs in a loop; an append resolves once a sync that started after it has
    /// completed (the leader/follower scheme proposed for the engine). `durability` is then
    /// `Never`.
    pub emulated_group_commit: bool,
    pub secs: f64,
    pub write_behind: Option<usize>,
}

/// `--durability` value of the emulated group commit.
pub const EMULATED: &str = "always-gc";

impl AppendSpec {
    pub fn mode(&self) -> String {
        if self.emulated_group_commit {
            EMULATED.to_owned()
        } else {
            self.durability.to_string()
        }
    }

    pub fn name(&self) -> String {
        format!(
            "{}B x{} c{} {}",
            self.record_size,
            self.batch,
            self.appenders,
            self.mode()
        )
    }
}

/// Shared state of the emulated group commit.
#[derive(Default)]
struct Syncer {
    /// Offsets below this are durable.
    synced: Cell<u64>,
    waiters: RefCell<Vec<std::task::Waker>>,
    wake_syncer: RefCell<Option<std::task::Waker>>,
    stop: Cell<bool>,
    failed: RefCell<Option<String>>,
}

impl Syncer {
    fn wake_all(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn wait(&self, target: u64) -> Result<()> {
        if self.synced.get() < target {
            if let Some(w) = self.wake_syncer.borrow_mut().take() {
                w.wake();
            }
        }
        futures_lite::future::poll_fn(|cx| {
            if let Some(e) = self.failed.borrow().as_ref() {
                return std::task::Poll::Ready(Err(anyhow!("sync failed: {e}")));
            }
            if self.synced.get() >= target {
                std::task::Poll::Ready(Ok(()))
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// One sync at a time, each covering everything appended before it started.
    async fn run(self: Rc<Self>, log: Rc<Log>) {
        loop {
            let target = log.next_offset();
            if target > self.synced.get() {
                if let Err(e) = log.sync().await {
                    *self.failed.borrow_mut() = Some(e.to_string());
                    self.wake_all();
                    return;
                }
                self.synced.set(target);
                self.wake_all();
                continue;
            }
            if self.stop.get() {
                return;
            }
            futures_lite::future::poll_fn(|cx| {
                if self.stop.get() || log.next_offset() > self.synced.get() {
                    std::task::Poll::Ready(())
                } else {
                    *self.wake_syncer.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            })
            .await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppendResult {
    pub spec: AppendSpec,
    /// From the first append to the last one resolving.
    pub append_secs: f64,
    /// Including a final `sync()` (what `never` still owes the disk).
    pub total_secs: f64,
    pub appends: u64,
    pub records: u64,
    pub payload_bytes: u64,
    pub log_bytes: u64,
    pub writes: u64,
    pub fdatasyncs: u64,
    /// Bytes of batches written to the data file (whole blocks).
    pub written_bytes: u64,
    /// Zeroes written ahead of the data (the preallocated tail), apart from `written_bytes`.
    pub zeroed_bytes: u64,
    pub latency: Latency,
    pub cpu_secs: f64,
}

impl AppendResult {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.total_secs
    }
    pub fn payload_mb_s(&self) -> f64 {
        mb_per_s(self.payload_bytes, self.total_secs)
    }
    pub fn log_mb_s(&self) -> f64 {
        mb_per_s(self.log_bytes, self.total_secs)
    }
    pub fn fdatasync_per_append(&self) -> f64 {
        if self.appends == 0 {
            0.0
        } else {
            self.fdatasyncs as f64 / self.appends as f64
        }
    }

    /// `bytes` per byte of record payload.
    pub fn per_payload(&self, bytes: u64) -> f64 {
        if self.payload_bytes == 0 {
            0.0
        } else {
            bytes as f64 / self.payload_bytes as f64
        }
    }

    pub fn json(&self) -> Value {
        let s = &self.spec;
        json!({
            "name": s.name(),
            "record_bytes": s.record_size,
            "batch_records": s.batch,
            "appenders": s.appenders,
            "durability": s.mode(),
            "emulated_group_commit": s.emulated_group_commit,
            "append_secs": round2(self.append_secs * 1000.0) / 1000.0,
            "total_secs_incl_final_sync": round2(self.total_secs * 1000.0) / 1000.0,
            "appends": self.appends,
            "records": self.records,
            "payload_bytes": self.payload_bytes,
            "log_bytes": self.log_bytes,
            "records_per_s": self.records_per_s().round(),
            "appends_per_s": (self.appends as f64 / self.total_secs).round(),
            "payload_mb_s": round2(self.payload_mb_s()),
            "log_mb_s": round2(self.log_mb_s()),
            "writes": self.writes,
            "fdatasyncs": self.fdatasyncs,
            "fdatasync_per_append": (self.fdatasync_per_append() * 1e4).round() / 1e4,
            "written_bytes": self.written_bytes,
            "zeroed_bytes": self.zeroed_bytes,
            "written_per_payload_byte": round2(self.per_payload(self.written_bytes) * 100.0) / 100.0,
            "zeroed_per_payload_byte": round2(self.per_payload(self.zeroed_bytes) * 100.0) / 100.0,
            "latency": self.latency.json(),
            "cpu_secs": round2(self.cpu_secs),
        })
    }
}

/// CPU time of the calling thread (the executor), in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

async fn append_load(log: &Rc<Log>, spec: &AppendSpec) -> Result<(f64, Latency, LogStats, f64)> {
    let hist = Rc::new(RefCell::new(new_hist()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(spec.secs);
    let failed: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
    let syncer = spec
        .emulated_group_commit
        .then(|| Rc::new(Syncer::default()));
    let syncer_task = syncer
        .as_ref()
        .map(|s| glommio::spawn_local(Rc::clone(s).run(Rc::clone(log))));
    let mut tasks = Vec::new();
    for t in 0..spec.appenders {
        let log = Rc::clone(log);
        let hist = Rc::clone(&hist);
        let failed = Rc::clone(&failed);
        let syncer = syncer.clone();
        let batch = make_batch(spec.record_size, spec.batch, 1 + t as u64);
        tasks.push(glommio::spawn_local(async move {
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                match log.append(&batch).await {
                    Ok(a) => {
                        if let Some(s) = &syncer {
                            if let Err(e) = s.wait(a.last_offset + 1).await {
                                failed.set(Some(e.to_string()));
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        failed.set(Some(e.to_string()));
                        break;
                    }
                }
                hist.borrow_mut()
                    .saturating_record(t0.elapsed().as_nanos() as u64);
                // Appends that resolve without waiting (never) would otherwise starve the
                // other tasks and the log's background flusher.
                glommio::yield_if_needed().await;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    if let (Some(s), Some(t)) = (&syncer, syncer_task) {
        s.stop.set(true);
        if let Some(w) = s.wake_syncer.borrow_mut().take() {
            w.wake();
        }
        t.await;
    }
    if let Some(e) = failed.take() {
        return Err(anyhow!("append failed: {e}"));
    }
    let append_secs = start.elapsed().as_secs_f64();
    let stats = log.stats();
    log.sync().await.map_err(eerr)?;
    let total = start.elapsed().as_secs_f64();
    let lat = Latency::of(&hist.borrow());
    Ok((append_secs, lat, stats, total))
}

/// One append scenario on a fresh log in `dir` (removed afterwards).
pub fn append(dir: &Path, spec: &AppendSpec) -> Result<AppendResult> {
    let logdir = dir.join(format!(
        "append-{}-{}-{}-{}",
        spec.record_size,
        spec.batch,
        spec.appenders,
        spec.mode()
    ));
    let _ = std::fs::remove_dir_all(&logdir);
    let spec2 = spec.clone();
    let d = logdir.clone();
    let r = engine::run_local(dir, move || async move {
        let cfg = base_config(spec2.durability, spec2.write_behind);
        let log = Log::open(&d, cfg, FileBudget::new(1024))
            .await
            .map_err(eerr)?;
        let cpu0 = thread_cpu();
        let (append_secs, latency, stats, total_secs) = append_load(&log, &spec2).await?;
        let cpu = thread_cpu() - cpu0;
        let end = log.stats();
        log.close().await.map_err(eerr)?;
        let payload = stats.records_appended * spec2.record_size as u64;
        Ok::<_, anyhow::Error>(AppendResult {
            spec: spec2,
            append_secs,
            total_secs,
            appends: stats.appends,
            records: stats.records_appended,
            payload_bytes: payload,
            log_bytes: end.size_bytes,
            writes: stats.writes,
            fdatasyncs: stats.fdatasyncs,
            written_bytes: end.bytes_written,
            zeroed_bytes: end.zeroed_bytes,
            latency,
            cpu_secs: cpu,
        })
    })
    .map_err(eerr)?;
    let _ = std::fs::remove_dir_all(&logdir);
    r
}

// ------------------------------------------------------------------------------- reads

#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub dataset_bytes: u64,
    pub batch: usize,
    pub chunk_bytes: usize,
    pub secs: f64,
    pub concurrency: Vec<usize>,
    pub write_behind: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct RandomRead {
    pub concurrency: usize,
    pub reads: u64,
    pub secs: f64,
    pub latency: Latency,
    /// Bytes the process read from the storage layer per point read (O_DIRECT reads are
    /// accounted in /proc/self/io), if the kernel accounts them.
    pub device_bytes_per_read: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: u64,
    pub record_size: usize,
    pub batch: usize,
    pub write_secs: f64,
    pub seq_records: u64,
    pub seq_secs: f64,
    pub seq_calls: u64,
    pub seq_device_bytes: Option<u64>,
    pub random: Vec<RandomRead>,
}

impl ReadResult {
    pub fn seq_records_per_s(&self) -> f64 {
        self.seq_records as f64 / self.seq_secs
    }
    pub fn seq_mb_s(&self) -> f64 {
        mb_per_s(self.seq_records * self.record_size as u64, self.seq_secs)
    }

    pub fn json(&self) -> Value {
        json!({
            "dataset_records": self.records,
            "record_bytes": self.record_size,
            "batch_records": self.batch,
            "dataset_write_secs": round2(self.write_secs),
            "sequential": {
                "records": self.seq_records,
                "secs": round2(self.seq_secs * 1000.0) / 1000.0,
                "read_range_calls": self.seq_calls,
                "records_per_s": self.seq_records_per_s().round(),
                "payload_mb_s": round2(self.seq_mb_s()),
                "device_bytes": self.seq_device_bytes,
            },
            "random_point": self.random.iter().map(|r| json!({
                "concurrency": r.concurrency,
                "reads": r.reads,
                "secs": round2(r.secs),
                "reads_per_s": (r.reads as f64 / r.secs).round(),
                "payload_mb_s": round2(mb_per_s(r.reads * self.record_size as u64, r.secs)),
                "latency": r.latency.json(),
                "device_bytes_per_read": r.device_bytes_per_read.map(|b| b.round()),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Appends `bytes` of payload as records of `record_size` in batches of `batch`, then syncs.
async fn fill(log: &Rc<Log>, bytes: u64, record_size: usize, batch: usize) -> Result<u64> {
    let per = (record_size * batch) as u64;
    let batch = make_batch(record_size, batch, 42);
    let mut written = 0;
    while written < bytes {
        log.append(&batch).await.map_err(eerr)?;
        written += per;
        glommio::yield_if_needed().await;
    }
    log.sync().await.map_err(eerr)?;
    Ok(written)
}

pub fn read(dir: &Path, spec: &ReadSpec) -> Result<ReadResult> {
    let logdir = dir.join("read");
    let _ = std::fs::remove_dir_all(&logdir);
    let spec2 = spec.clone();
    let d = logdir.clone();
    let record_size = 1024usize;
    let r = engine::run_local(dir, move || async move {
        let cfg = base_config(Durability::Never, spec2.write_behind);
        let t0 = Instant::now();
        {
            let log = Log::open(&d, cfg.clone(), FileBudget::new(1024))
                .await
                .map_err(eerr)?;
            fill(&log, spec2.dataset_bytes, record_size, spec2.batch).await?;
            log.close().await.map_err(eerr)?;
        }
        let write_secs = t0.elapsed().as_secs_f64();
        let _ = crate::evict_page_cache(&d);
        let log = Log::open(&d, cfg, FileBudget::new(1024))
            .await
            .map_err(eerr)?;
        let (lowest, next) = (log.lowest_offset(), log.next_offset());

        // Sequential catch-up.
        let io0 = crate::proc_io();
        let t = Instant::now();
        let mut from = lowest;
        let mut seq_records = 0u64;
        let mut calls = 0u64;
        while from < next {
            let recs = log
                .read_range(from, usize::MAX, spec2.chunk_bytes)
                .await
                .map_err(eerr)?;
            calls += 1;
            let last = recs.last().ok_or_else(|| anyhow!("empty read at {from}"))?;
            if last.offset < from {
                return Err(anyhow!("read_range went backwards at {from}"));
            }
            from = last.offset + 1;
            seq_records += recs.len() as u64;
        }
        let seq_secs = t.elapsed().as_secs_f64();
        let seq_device = match (io0, crate::proc_io()) {
            (Some(a), Some(b)) => Some(b.0.saturating_sub(a.0)),
            _ => None,
        };

        // Random point reads.
        let mut random = Vec::new();
        for &conc in &spec2.concurrency {
            let hist = Rc::new(RefCell::new(new_hist()));
            let count = Rc::new(Cell::new(0u64));
            let failed: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
            let io0 = crate::proc_io();
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(spec2.secs);
            let mut tasks = Vec::new();
            for i in 0..conc {
                let (log, hist, count, failed) = (
                    Rc::clone(&log),
                    Rc::clone(&hist),
                    Rc::clone(&count),
                    Rc::clone(&failed),
                );
                tasks.push(glommio::spawn_local(async move {
                    let mut rng = Rng::new(1000 + i as u64);
                    loop {
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            break;
                        }
                        let off = lowest + rng.below(next - lowest);
                        match log.read(off).await {
                            Ok(r) if r.offset == off && r.value.len() == record_size => {}
                            Ok(r) => {
                                failed.set(Some(format!(
                                    "read({off}) returned offset {} with {} bytes",
                                    r.offset,
                                    r.value.len()
                                )));
                                break;
                            }
                            Err(e) => {
                                failed.set(Some(format!("read({off}): {e}")));
                                break;
                            }
                        }
                        hist.borrow_mut()
                            .saturating_record(t0.elapsed().as_nanos() as u64);
                        count.set(count.get() + 1);
                        glommio::yield_if_needed().await;
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            if let Some(e) = failed.take() {
                return Err(anyhow!("random read failed: {e}"));
            }
            let secs = start.elapsed().as_secs_f64();
            let reads = count.get();
            let dev = match (io0, crate::proc_io()) {
                (Some(a), Some(b)) if reads > 0 => {
                    Some(b.0.saturating_sub(a.0) as f64 / reads as f64)
                }
                _ => None,
            };
            random.push(RandomRead {
                concurrency: conc,
                reads,
                secs,
                latency: Latency::of(&hist.borrow()),
                device_bytes_per_read: dev,
            });
        }
        log.close().await.map_err(eerr)?;
        Ok::<_, anyhow::Error>(ReadResult {
            records: next - lowest,
            record_size,
            batch: spec2.batch,
            write_secs,
            seq_records,
            seq_secs,
            seq_calls: calls,
            seq_device_bytes: seq_device,
            random,
        })
    })
    .map_err(eerr)?;
    let _ = std::fs::remove_dir_all(&logdir);
    r
}

// ------------------------------------------------------------------------------- restart

#[derive(Debug, Clone)]
pub struct RestartResult {
    pub gib: f64,
    pub segment_bytes: u64,
    pub records: u64,
    pub log_bytes: u64,
    pub segments: usize,
    pub active_segment_bytes: u64,
    pub write_secs: f64,
    pub close_secs: f64,
    pub evicted_files: u64,
    pub open_secs: f64,
    pub first_read_secs: f64,
    pub last_read_secs: f64,
    pub open_device_bytes: Option<u64>,
}

impl RestartResult {
    /// Open plus the read of the first offset: what a consumer starting from the beginning
    /// waits for after a restart.
    pub fn open_to_first_read(&self) -> f64 {
        self.open_secs + self.first_read_secs
    }

    pub fn json(&self) -> Value {
        let ms = |s: f64| round2(s * 1000.0);
        json!({
            "gib": self.gib,
            "segment_bytes": self.segment_bytes,
            "records": self.records,
            "log_bytes": self.log_bytes,
            "segments": self.segments,
            "active_segment_bytes": self.active_segment_bytes,
            "write_secs": round2(self.write_secs),
            "write_payload_mb_s": round2(mb_per_s(self.records * 1024, self.write_secs)),
            "close_ms": ms(self.close_secs),
            "open_ms": ms(self.open_secs),
            "first_offset_read_ms": ms(self.first_read_secs),
            "last_offset_read_ms": ms(self.last_read_secs),
            "open_plus_first_read_ms": ms(self.open_to_first_read()),
            "open_device_read_bytes": self.open_device_bytes,
        })
    }
}

pub fn restart(
    dir: &Path,
    gib: f64,
    segment_bytes: Option<u64>,
    write_behind: Option<usize>,
) -> Result<RestartResult> {
    let logdir: PathBuf = dir.join("restart");
    let _ = std::fs::remove_dir_all(&logdir);
    let mut cfg = base_config(Durability::Never, write_behind);
    if let Some(s) = segment_bytes {
        cfg.segment_bytes = s;
    }
    let bytes = (gib * (1u64 << 30) as f64) as u64;
    let (d, c) = (logdir.clone(), cfg.clone());
    let written = engine::run_local(dir, move || async move {
        let log = Log::open(&d, c, FileBudget::new(1024))
            .await
            .map_err(eerr)?;
        let t0 = Instant::now();
        fill(&log, bytes, 1024, 64).await?;
        let write_secs = t0.elapsed().as_secs_f64();
        let st = log.stats();
        let t1 = Instant::now();
        log.close().await.map_err(eerr)?;
        Ok::<_, anyhow::Error>((write_secs, t1.elapsed().as_secs_f64(), st))
    });
    let (write_secs, close_secs, st) = match written.map_err(eerr).and_then(|r| r) {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&logdir);
            return Err(e);
        }
    };
    let evicted = crate::evict_page_cache(&logdir).unwrap_or(0);
    let (d, c) = (logdir.clone(), cfg.clone());
    let reopened = engine::run_local(dir, move || async move {
        let io0 = crate::proc_io();
        let t0 = Instant::now();
        let log = Log::open(&d, c, FileBudget::new(1024))
            .await
            .map_err(eerr)?;
        let open_secs = t0.elapsed().as_secs_f64();
        let io1 = crate::proc_io();
        let first = log.lowest_offset();
        let last = log
            .highest_offset()
            .ok_or_else(|| anyhow!("reopened log is empty"))?;
        let t1 = Instant::now();
        let r = log.read(first).await.map_err(eerr)?;
        let first_read_secs = t1.elapsed().as_secs_f64();
        if r.offset != first {
            return Err(anyhow!("read({first}) returned offset {}", r.offset));
        }
        let t2 = Instant::now();
        let r = log.read(last).await.map_err(eerr)?;
        let last_read_secs = t2.elapsed().as_secs_f64();
        if r.offset != last {
            return Err(anyhow!("read({last}) returned offset {}", r.offset));
        }
        let st2 = log.stats();
        let active = log_active_bytes(&d);
        log.close().await.map_err(eerr)?;
        let open_dev = match (io0, io1) {
            (Some(a), Some(b)) => Some(b.0.saturating_sub(a.0)),
            _ => None,
        };
        Ok::<_, anyhow::Error>((
            open_secs,
            first_read_secs,
            last_read_secs,
            st2,
            active,
            open_dev,
        ))
    });
    let out = reopened.map_err(eerr).and_then(|r| r);
    let _ = std::fs::remove_dir_all(&logdir);
    let (open_secs, first_read_secs, last_read_secs, st2, active, open_dev) = out?;
    if st2.next_offset != st.next_offset {
        return Err(anyhow!(
            "reopened log ends at {} but {} records were written",
            st2.next_offset,
            st.next_offset
        ));
    }
    Ok(RestartResult {
        gib,
        segment_bytes: cfg.segment_bytes,
        records: st.records_appended,
        log_bytes: st.size_bytes,
        segments: st2.segments,
        active_segment_bytes: active,
        write_secs,
        close_secs,
        evicted_files: evicted,
        open_secs,
        first_read_secs,
        last_read_secs,
        open_device_bytes: open_dev,
    })
}

/// Size of the newest segment's data file (the one recovery scans).
fn log_active_bytes(dir: &Path) -> u64 {
    let mut best: Option<(String, u64)> = None;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if best.as_ref().is_none_or(|(b, _)| name > *b) {
                    best = Some((name, len));
                }
            }
        }
    }
    best.map(|b| b.1).unwrap_or(0)
}
