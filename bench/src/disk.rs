//! What the device under the data directory can do, measured with the engine's own I/O path:
//! glommio `DmaFile` (O_DIRECT through io_uring) on the same filesystem.

use crate::{mb_per_s, new_hist, Latency};
use anyhow::{anyhow, Result};
use glommio::io::{DmaFile, OpenOptions};
use serde_json::{json, Value};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub secs: f64,
    pub max_bytes: u64,
    pub block: usize,
    pub qds: Vec<usize>,
    pub sync_write_chunk: usize,
    pub sync_iters: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    pub qd: usize,
    pub bytes: u64,
    pub secs: f64,
    pub mb_s: f64,
    /// Bytes /proc/self/io says the process read from the storage layer meanwhile.
    pub device_read_bytes: Option<u64>,
}

impl Bandwidth {
    fn json(&self) -> Value {
        json!({"qd": self.qd, "bytes": self.bytes, "secs": crate::round2(self.secs * 1000.0) / 1000.0,
               "mb_s": crate::round2(self.mb_s), "device_read_bytes": self.device_read_bytes})
    }
}

#[derive(Debug, Clone)]
pub struct DiskResult {
    pub block: usize,
    /// Sequential O_DIRECT writes extending a new file, one fdatasync at the end (included).
    pub seq_write: Vec<Bandwidth>,
    /// Sequential O_DIRECT reads of that file.
    pub seq_read: Vec<Bandwidth>,
    /// Repeated `write(chunk) + fdatasync` extending a file, QD 1: the ceiling of a group
    /// commit that writes `chunk` per sync.
    pub sync_write: Option<(usize, Bandwidth)>,
    /// 4 KiB write extending the file + fdatasync.
    pub sync_append_4k: Latency,
    /// 4 KiB write over the same block + fdatasync.
    pub sync_overwrite_4k: Latency,
}

impl DiskResult {
    pub fn write_limit_mb_s(&self) -> f64 {
        self.seq_write.iter().map(|b| b.mb_s).fold(0.0, f64::max)
    }

    pub fn read_limit_mb_s(&self) -> f64 {
        self.seq_read.iter().map(|b| b.mb_s).fold(0.0, f64::max)
    }

    pub fn json(&self) -> Value {
        json!({
            "block_bytes": self.block,
            "seq_write": self.seq_write.iter().map(Bandwidth::json).collect::<Vec<_>>(),
            "seq_read": self.seq_read.iter().map(Bandwidth::json).collect::<Vec<_>>(),
            "write_limit_mb_s": crate::round2(self.write_limit_mb_s()),
            "read_limit_mb_s": crate::round2(self.read_limit_mb_s()),
            "sync_write": self.sync_write.map(|(chunk, b)| json!({"chunk_bytes": chunk, "mb_s": crate::round2(b.mb_s), "bytes": b.bytes, "secs": b.secs})),
            "write4k_fdatasync_append": self.sync_append_4k.json(),
            "write4k_fdatasync_overwrite": self.sync_overwrite_4k.json(),
        })
    }
}

fn gerr<T>(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(glommio::GlommioError<T>) -> anyhow::Error
where
    T: std::fmt::Debug,
{
    let path = path.display().to_string();
    move |e| anyhow!("{what} {path}: {e}")
}

async fn open_rw(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(gerr("opening", path))
}

fn filled(file: &DmaFile, len: usize, seed: u64) -> Rc<glommio::io::DmaBuffer> {
    let mut buf = file.alloc_dma_buffer(len);
    crate::Rng::new(seed).fill(buf.as_bytes_mut());
    Rc::new(buf)
}

/// Sequential writes of `block` bytes from `qd` tasks (each takes the next free block), until
/// `max_bytes` or the deadline; then one fdatasync, included in the time.
async fn seq_write(path: &Path, o: &DiskOptions, qd: usize) -> Result<Bandwidth> {
    let file = Rc::new(open_rw(path).await?);
    let next = Rc::new(Cell::new(0u64));
    let block = o.block as u64;
    let max = o.max_bytes.max(block);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for t in 0..qd {
        let (file, next) = (Rc::clone(&file), Rc::clone(&next));
        let buf = filled(&file, o.block, t as u64 + 1);
        let p = path.to_owned();
        tasks.push(glommio::spawn_local(async move {
            loop {
                let pos = next.get();
                if pos + block > max || Instant::now() >= deadline {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(pos + block);
                let n = file
                    .write_rc_at(Rc::clone(&buf), pos)
                    .await
                    .map_err(gerr("writing", &p))?;
                if n != block as usize {
                    return Err(anyhow!("short write {n} at {pos}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    file.fdatasync().await.map_err(gerr("syncing", path))?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = next.get();
    Ok(Bandwidth {
        qd,
        bytes,
        secs,
        mb_s: mb_per_s(bytes, secs),
        device_read_bytes: None,
    })
}

/// Sequential reads of `block` bytes from `qd` tasks over the first `len` bytes of `path`.
async fn seq_read(path: &Path, len: u64, o: &DiskOptions, qd: usize) -> Result<Bandwidth> {
    let file = Rc::new(
        OpenOptions::new()
            .read(true)
            .dma_open(path)
            .await
            .map_err(gerr("opening", path))?,
    );
    let next = Rc::new(Cell::new(0u64));
    let done = Rc::new(Cell::new(0u64));
    let io0 = crate::proc_io();
    let block = o.block as u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for _ in 0..qd {
        let (file, next, done) = (Rc::clone(&file), Rc::clone(&next), Rc::clone(&done));
        let p = path.to_owned();
        tasks.push(glommio::spawn_local(async move {
            loop {
                let pos = next.get();
                if pos + block > len || Instant::now() >= deadline {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(pos + block);
                let r = file
                    .read_at_aligned(pos, block as usize)
                    .await
                    .map_err(gerr("reading", &p))?;
                if r.len() != block as usize {
                    return Err(anyhow!("short read {} at {pos}", r.len()));
                }
                done.set(done.get() + block);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = done.get();
    let dev = match (io0, crate::proc_io()) {
        (Some(a), Some(b)) => Some(b.0.saturating_sub(a.0)),
        _ => None,
    };
    Ok(Bandwidth {
        qd,
        bytes,
        secs,
        mb_s: mb_per_s(bytes, secs),
        device_read_bytes: dev,
    })
}

/// `write(chunk)` at the end of the file, then fdatasync, repeated (QD 1).
async fn sync_write(path: &Path, o: &DiskOptions) -> Result<Bandwidth> {
    let file = open_rw(path).await?;
    let buf = filled(&file, o.sync_write_chunk, 7);
    let chunk = o.sync_write_chunk as u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.secs);
    let mut pos = 0u64;
    while Instant::now() < deadline && pos + chunk <= o.max_bytes.max(chunk) {
        file.write_rc_at(Rc::clone(&buf), pos)
            .await
            .map_err(gerr("writing", path))?;
        file.fdatasync().await.map_err(gerr("syncing", path))?;
        pos += chunk;
    }
    let secs = start.elapsed().as_secs_f64();
    file.close().await.map_err(gerr("closing", path))?;
    Ok(Bandwidth {
        qd: 1,
        bytes: pos,
        secs,
        mb_s: mb_per_s(pos, secs),
        device_read_bytes: None,
    })
}

/// 4 KiB write + fdatasync, `iters` times: at successive offsets (`append`, which also makes
/// the file longer, like a log) or over block 0.
async fn sync_latency(path: &Path, iters: usize, append: bool) -> Result<Latency> {
    let file = open_rw(path).await?;
    let buf = filled(&file, 4096, 9);
    let mut h = new_hist();
    // Warm-up: allocate the first block so the overwrite case really overwrites.
    file.write_rc_at(Rc::clone(&buf), 0)
        .await
        .map_err(gerr("writing", path))?;
    file.fdatasync().await.map_err(gerr("syncing", path))?;
    for i in 0..iters {
        let pos = if append { 4096 * (i as u64 + 1) } else { 0 };
        let t0 = Instant::now();
        file.write_rc_at(Rc::clone(&buf), pos)
            .await
            .map_err(gerr("writing", path))?;
        file.fdatasync().await.map_err(gerr("syncing", path))?;
        h.saturating_record(t0.elapsed().as_nanos() as u64);
    }
    file.close().await.map_err(gerr("closing", path))?;
    Ok(Latency::of(&h))
}

/// Runs the disk baseline in `dir` on its own executor (with the engine's DMA probe fix).
pub fn run(dir: &Path, o: &DiskOptions) -> Result<DiskResult> {
    let dir: PathBuf = dir.join("disk-baseline");
    let o = o.clone();
    let d = dir.clone();
    let r = engine::run_local(&dir, move || async move {
        let data = d.join("seq.dat");
        let mut seq_write_r = Vec::new();
        for &qd in &o.qds {
            let _ = std::fs::remove_file(&data);
            let b = seq_write(&data, &o, qd).await?;
            log::info!("disk: seq write qd {qd}: {:.0} MB/s", b.mb_s);
            seq_write_r.push(b);
        }
        let len = std::fs::metadata(&data)?.len();
        let mut seq_read_r = Vec::new();
        for &qd in &o.qds {
            let b = seq_read(&data, len, &o, qd).await?;
            log::info!("disk: seq read qd {qd}: {:.0} MB/s", b.mb_s);
            seq_read_r.push(b);
        }
        std::fs::remove_file(&data)?;
        let sw = if o.sync_write_chunk > 0 {
            let p = d.join("sync-write.dat");
            let b = sync_write(&p, &o).await?;
            std::fs::remove_file(&p)?;
            Some((o.sync_write_chunk, b))
        } else {
            None
        };
        let p = d.join("sync-latency.dat");
        let app = sync_latency(&p, o.sync_iters, true).await?;
        let _ = std::fs::remove_file(&p);
        let ovw = sync_latency(&p, o.sync_iters, false).await?;
        let _ = std::fs::remove_file(&p);
        Ok::<_, anyhow::Error>(DiskResult {
            block: o.block,
            seq_write: seq_write_r,
            seq_read: seq_read_r,
            sync_write: sw,
            sync_append_4k: app,
            sync_overwrite_4k: ovw,
        })
    })
    .map_err(|e| anyhow!("{e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    r
}
