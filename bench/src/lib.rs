//! Benchmarks of proglog's storage engine, measured against the machine's own limits.
//!
//! The `proglog-engine-bench` binary drives these modules: [`disk`] measures what the device
//! under the data directory can do with O_DIRECT (the same I/O path the engine uses), and
//! [`scenarios`] drives `engine::Log` directly on a glommio executor. [`report`] prints both
//! side by side and as JSON. [`chaos`] is `proglog-chaos`, the fault campaign against real
//! nodes in network namespaces.

pub mod chaos;
pub mod cli;
pub mod disk;
pub mod grpc;
pub mod out;
pub mod report;
pub mod scenarios;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::path::Path;

/// A latency histogram in nanoseconds (1 ns .. 1 h, 3 significant figures).
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_us": round2(self.p50_us),
            "p90_us": round2(self.p90_us),
            "p99_us": round2(self.p99_us),
            "p99_9_us": round2(self.p999_us),
            "max_us": round2(self.max_us),
            "mean_us": round2(self.mean_us),
        })
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// 10^6 bytes per second.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    }
}

/// A small, fast, seedable PRNG (splitmix64) for offsets and payloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Bytes this process has caused to be read from / written to the storage layer so far
/// (`/proc/self/io`: `read_bytes`, `write_bytes`). `None` where the kernel does not account I/O.
pub fn proc_io() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

/// Drops the page-cache pages of every file under `dir` (posix_fadvise DONTNEED), so a reopen
/// starts cold for this data without disturbing the rest of the machine's cache.
pub fn evict_page_cache(dir: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            n += evict_page_cache(&entry.path())?;
        } else if ft.is_file() {
            let f = std::fs::File::open(entry.path())?;
            // SAFETY: advisory call on a descriptor we own; no memory is passed.
            unsafe {
                libc::fdatasync(f.as_raw_fd());
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Total size of the regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
