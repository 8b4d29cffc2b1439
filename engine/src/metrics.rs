//! Per-shard metrics of the engine: fdatasync latency and group-commit batch sizes.
//!
//! Recording stays on the shard that does the work: each shard owns one [`ShardMetrics`]
//! (cache-line padded, so shards never write the same line), and only that shard's thread
//! writes it, with relaxed atomic adds that never contend. A scrape reads every shard's
//! counters from any thread and merges them ([`HistogramSnapshot::merge`]); it may see one
//! histogram a few observations ahead of another, which is fine for monitoring and costs the
//! hot path nothing.
//!
//! Logs find their shard's metrics through a thread-local set by the shard when it starts
//! ([`set_local`]). A log driven outside an engine (tests, tools, `run_local`) records
//! nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::utils::CachePadded;

/// Upper bounds of latency buckets, in nanoseconds: 25 µs to 10 s, roughly 1-2.5-5 steps,
/// fine enough around the 100-500 µs a 4 KiB fdatasync takes on a virtio disk.
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of count buckets (appends per fdatasync, messages per batch): powers of two.
pub const COUNT_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// A fixed-bucket histogram of integer observations (nanoseconds, counts).
///
/// Written by one thread, read by any: every field is an atomic updated with relaxed
/// ordering, which on one writer is as cheap as a plain add plus a locked instruction on an
/// uncontended, private cache line.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// `buckets[i]` counts observations in `(bounds[i-1], bounds[i]]`; the last one counts
    /// everything above the last bound. Not cumulative: the exposition makes them so.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Records a duration in nanoseconds (saturating at u64::MAX ns, about 584 years).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// A histogram read at one moment; shards' snapshots merge into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    /// Per bucket, not cumulative; one more than `bounds` (the last is above every bound).
    pub counts: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl HistogramSnapshot {
    pub fn empty(bounds: &'static [u64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0,
            count: 0,
        }
    }

    /// Adds `other`'s observations. Both must have the same bounds (they come from the same
    /// constant); a mismatch is a programming error.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        assert_eq!(
            self.bounds, other.bounds,
            "merging histograms of other buckets"
        );
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// `(upper bound, observations at or below it)` for every bound, then `(None, count)`
    /// for +Inf: what the Prometheus `_bucket` series want.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let mut acc = 0u64;
        self.counts.iter().enumerate().map(move |(i, c)| {
            acc += c;
            (self.bounds.get(i).copied(), acc)
        })
    }
}

/// What one shard's logs record.
#[derive(Debug)]
pub struct ShardMetrics {
    /// Duration of every fdatasync of a data file (group commit, interval flush, roll,
    /// truncation, close), in nanoseconds.
    pub fdatasync_ns: Histogram,
    /// Appends made durable by one fdatasync: how many appenders shared it.
    pub group_commit_appends: Histogram,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            fdatasync_ns: Histogram::new(LATENCY_BOUNDS_NS),
            group_commit_appends: Histogram::new(COUNT_BOUNDS),
        }
    }
}

impl ShardMetrics {
    pub fn snapshot(&self) -> ShardMetricsSnapshot {
        ShardMetricsSnapshot {
            fdatasync_ns: self.fdatasync_ns.snapshot(),
            group_commit_appends: self.group_commit_appends.snapshot(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMetricsSnapshot {
    pub fdatasync_ns: HistogramSnapshot,
    pub group_commit_appends: HistogramSnapshot,
}

/// One shard's metrics, alone on its cache lines.
pub type ShardSlot = Arc<CachePadded<ShardMetrics>>;

thread_local! {
    static LOCAL: RefCell<Option<ShardSlot>> = const { RefCell::new(None) };
}

/// Makes `slot` the metrics of the calling thread's logs (a shard calls this when it starts);
/// `None` stops recording.
pub fn set_local(slot: Option<ShardSlot>) {
    LOCAL.with(|l| *l.borrow_mut() = slot);
}

/// Runs `f` on the calling thread's shard metrics, if it has any.
pub(crate) fn with_local(f: impl FnOnce(&ShardMetrics)) {
    LOCAL.with(|l| {
        if let Some(m) = l.borrow().as_ref() {
            f(m)
        }
    })
}

/// Where one append's time went, for slow-request logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendTiming {
    /// From the call to the operation starting on the owning shard (the cross-shard hop and
    /// the shard's job queue; near zero on the owning shard).
    pub queue: Duration,
    /// Admission and encoding into the write-behind buffer, including any write-out or segment
    /// roll the append had to wait for to find room.
    pub append: Duration,
    /// Waiting for durability per the log's policy: group commit's write and fdatasync
    /// (zero unless the policy is `always`).
    pub fsync: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_inclusive_and_merge() {
        let h = Histogram::new(COUNT_BOUNDS);
        for v in [1, 2, 3, 4, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 5010);
        let cum: Vec<_> = s.cumulative().collect();
        assert_eq!(cum[0], (Some(1), 1));
        assert_eq!(cum[1], (Some(2), 2));
        assert_eq!(cum[2], (Some(4), 4));
        assert_eq!(*cum.last().unwrap(), (None, 5));
        let mut m = HistogramSnapshot::empty(COUNT_BOUNDS);
        m.merge(&s);
        m.merge(&s);
        assert_eq!(m.count, 10);
        assert_eq!(m.counts[2], 4);
    }

    #[test]
    fn local_slot_records_only_when_set() {
        let slot: ShardSlot = Arc::new(CachePadded::new(ShardMetrics::default()));
        with_local(|m| m.fdatasync_ns.observe(1));
        set_local(Some(slot.clone()));
        with_local(|m| m.fdatasync_ns.observe(30_000));
        set_local(None);
        let s = slot.snapshot();
        assert_eq!(s.fdatasync_ns.count, 1);
        assert_eq!(s.fdatasync_ns.counts[1], 1);
    }
}
