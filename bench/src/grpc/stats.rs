//! What each executor counts, how the counts merge, and CPU accounting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::new_hist;

/// One workload's figures on one executor, merged across executors at the end.
pub struct PartStats {
    /// Request latency: response time minus the send time (closed loop) or the intended send
    /// time (open loop). For consume-stream: the gap between consecutive messages.
    pub latency: Histogram<u64>,
    /// Produce-to-receive latency (end-to-end only).
    pub e2e: Histogram<u64>,
    /// Completed requests inside the measurement window.
    pub requests: u64,
    /// Records produced (acknowledged) or received inside the window.
    pub records: u64,
    /// Value bytes of those records.
    pub bytes: u64,
    /// Records received by end-to-end consumers inside the window.
    pub e2e_records: u64,
    /// Failed calls by gRPC code name, over the whole run (warm-up included).
    pub errors: BTreeMap<&'static str, u64>,
    pub first_error: Option<String>,
    /// Requests still unanswered when the drain after the run timed out.
    pub unfinished: u64,
}

impl Default for PartStats {
    fn default() -> PartStats {
        PartStats {
            latency: new_hist(),
            e2e: new_hist(),
            requests: 0,
            records: 0,
            bytes: 0,
            e2e_records: 0,
            errors: BTreeMap::new(),
            first_error: None,
            unfinished: 0,
        }
    }
}

impl PartStats {
    pub fn merge(&mut self, o: PartStats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.e2e.add(&o.e2e);
        self.requests += o.requests;
        self.records += o.records;
        self.bytes += o.bytes;
        self.e2e_records += o.e2e_records;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.unfinished += o.unfinished;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Live counters for the per-second progress line, shared by every executor.
#[derive(Default)]
pub struct Live {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    pub fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// The measurement window, shared by every executor.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Time zero of the run (stamps are ns since this).
    pub epoch: Instant,
    /// Load starts here.
    pub start: Instant,
    /// Warm-up ends; counting starts.
    pub measure: Instant,
    /// Counting and sending stop.
    pub end: Instant,
}

impl Window {
    pub fn counts(&self, t: Instant) -> bool {
        t >= self.measure && t < self.end
    }
    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }
    pub fn at_ns(&self, ns: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(ns)
    }
}

/// CPU seconds (user, system) of this process so far (getrusage).
pub fn self_cpu() -> (f64, f64) {
    // SAFETY: `rusage` is plain integers, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct we pass, which lives across the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// CPU seconds (user, system) of another process so far, from /proc/PID/stat.
pub fn pid_cpu(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((ut / hz, st / hz))
}

/// CPUs online.
pub fn cpus_online() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
