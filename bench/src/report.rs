//! The human table and the JSON document.

use crate::disk::DiskResult;
use crate::scenarios::{AppendResult, ReadResult, RestartResult};
use crate::{mb_per_s, round2};
use engine::Durability;
use serde_json::{json, Value};
use std::fmt::Write;

#[derive(Debug, Default)]
pub struct Report {
    pub machine: Value,
    pub disk: Option<DiskResult>,
    pub appends: Vec<AppendResult>,
    pub read: Option<ReadResult>,
    pub restart: Option<RestartResult>,
    pub total_secs: f64,
}

/// A target from the issue, and whether this run met it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Report {
    fn find(
        &self,
        size: usize,
        batch: usize,
        appenders: usize,
        d: Durability,
    ) -> Option<&AppendResult> {
        self.appends.iter().find(|a| {
            a.spec.record_size == size
                && a.spec.batch == batch
                && a.spec.appenders == appenders
                && a.spec.durability == d
                && !a.spec.emulated_group_commit
        })
    }

    fn find_emulated(&self, size: usize, batch: usize, appenders: usize) -> Option<&AppendResult> {
        self.appends.iter().find(|a| {
            a.spec.record_size == size
                && a.spec.batch == batch
                && a.spec.appenders == appenders
                && a.spec.emulated_group_commit
        })
    }

    fn max_appenders(&self) -> Option<usize> {
        self.appends.iter().map(|a| a.spec.appenders).max()
    }

    /// Key figures as ratios to the disk's measured limits.
    pub fn ratios(&self) -> Vec<(String, f64, String)> {
        let mut out = Vec::new();
        let Some(disk) = &self.disk else { return out };
        let w = disk.write_limit_mb_s();
        let r = disk.read_limit_mb_s();
        for a in &self.appends {
            if a.spec.record_size == 1024 && a.spec.batch == 64 {
                out.push((
                    format!("append {} MB/s / disk seq write", a.spec.name()),
                    a.payload_mb_s() / w,
                    format!("{:.0} / {:.0} MB/s", a.payload_mb_s(), w),
                ));
            }
        }
        if let Some((chunk, sw)) = &disk.sync_write {
            for c in [1usize, self.max_appenders().unwrap_or(1)] {
                if let Some(a) = self.find(1024, 64, c, Durability::Always) {
                    out.push((
                        format!(
                            "append 1024B x64 c{c} always / disk write+fdatasync ({} MiB chunks)",
                            chunk >> 20
                        ),
                        a.payload_mb_s() / sw.mb_s,
                        format!("{:.0} / {:.0} MB/s", a.payload_mb_s(), sw.mb_s),
                    ));
                }
            }
        }
        for size in [100usize, 1024] {
            if let Some(a) = self.find(size, 1, 1, Durability::Always) {
                // A small durable append rewrites the log's partial tail block in place, so
                // the device's floor is an overwrite + fdatasync.
                let ceiling = 1e6 / disk.sync_overwrite_4k.p50_us;
                out.push((
                    format!("append {size}B x1 c1 always appends/s / (1 / disk 4K overwrite+fdatasync p50)"),
                    (a.appends as f64 / a.total_secs) / ceiling,
                    format!("{:.0} / {:.0} per s", a.appends as f64 / a.total_secs, ceiling),
                ));
            }
        }
        if let Some(rd) = &self.read {
            out.push((
                "sequential read_range MB/s / disk seq read".into(),
                rd.seq_mb_s() / r,
                format!("{:.0} / {:.0} MB/s", rd.seq_mb_s(), r),
            ));
        }
        out
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let many = self.max_appenders().unwrap_or(1);
        if let Some(disk) = &self.disk {
            let w = disk.write_limit_mb_s();
            for c in [1usize, many] {
                if let Some(a) = self.find(1024, 64, c, Durability::Always) {
                    let pct = 100.0 * a.payload_mb_s() / w;
                    t.push(Target {
                        name: format!("durable 1 KiB x64 appends, {c} appender(s)"),
                        goal: ">= 50% of O_DIRECT seq write".into(),
                        measured: format!("{pct:.1}% ({:.0} of {:.0} MB/s)", a.payload_mb_s(), w),
                        met: Some(pct >= 50.0),
                    });
                }
                if c == many {
                    break;
                }
            }
        }
        for a in self.appends.iter().filter(|a| {
            a.spec.appenders == many
                && many > 1
                && a.spec.durability == Durability::Always
                && !a.spec.emulated_group_commit
        }) {
            t.push(Target {
                name: format!("fdatasync per append, {}", a.spec.name()),
                goal: "< 0.1".into(),
                measured: format!("{:.4}", a.fdatasync_per_append()),
                met: Some(a.fdatasync_per_append() < 0.1),
            });
        }
        if let Some(disk) = &self.disk {
            if let Some(a) = self.find_emulated(1024, 64, many) {
                let pct = 100.0 * a.payload_mb_s() / disk.write_limit_mb_s();
                t.push(Target {
                    name: format!("(what a fixed group commit would give) {}", a.spec.name()),
                    goal: ">= 50% of O_DIRECT seq write, < 0.1 fdatasync/append".into(),
                    measured: format!(
                        "{pct:.1}%, {:.4} fdatasync/append",
                        a.fdatasync_per_append()
                    ),
                    met: None,
                });
            }
        }
        if let Some(rs) = &self.restart {
            let s = rs.open_to_first_read();
            t.push(Target {
                name: format!("restart with {} GiB: open + first read", rs.gib),
                goal: "< 1 s (at 10 GiB)".into(),
                measured: format!("{:.1} ms", s * 1000.0),
                met: if rs.gib >= 10.0 { Some(s < 1.0) } else { None },
            });
        }
        t
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": self.machine,
            "disk": self.disk.as_ref().map(|d| d.json()),
            "append": self.appends.iter().map(|a| a.json()).collect::<Vec<_>>(),
            "read": self.read.as_ref().map(|r| r.json()),
            "restart": self.restart.as_ref().map(|r| r.json()),
            "ratios": self.ratios().iter().map(|(n, r, d)| json!({"name": n, "ratio": (r * 1e4).round() / 1e4, "detail": d})).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|t| json!({"name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met})).collect::<Vec<_>>(),
            "total_secs": round2(self.total_secs),
        })
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "machine: {}", self.machine);
        if let Some(d) = &self.disk {
            let _ = writeln!(
                s,
                "\nDISK LIMITS (O_DIRECT via glommio DmaFile, {} KiB blocks, same filesystem)",
                d.block >> 10
            );
            for b in &d.seq_write {
                let _ = writeln!(s, "  seq write  qd {:>2}: {:>8.0} MB/s  ({} MiB in {:.2} s, incl. final fdatasync)", b.qd, b.mb_s, b.bytes >> 20, b.secs);
            }
            for b in &d.seq_read {
                let _ = writeln!(
                    s,
                    "  seq read   qd {:>2}: {:>8.0} MB/s  ({} MiB in {:.2} s{})",
                    b.qd,
                    b.mb_s,
                    b.bytes >> 20,
                    b.secs,
                    b.device_read_bytes
                        .map(|d| format!("; /proc/self/io read_bytes {} MiB", d >> 20))
                        .unwrap_or_default()
                );
            }
            if let Some((chunk, b)) = &d.sync_write {
                let _ = writeln!(
                    s,
                    "  write {} MiB + fdatasync loop: {:>6.0} MB/s",
                    chunk >> 20,
                    b.mb_s
                );
            }
            for (n, l) in [
                ("4K append write + fdatasync", &d.sync_append_4k),
                ("4K overwrite + fdatasync  ", &d.sync_overwrite_4k),
            ] {
                let _ = writeln!(
                    s,
                    "  {n}: p50 {:.0} us  p99 {:.0} us  max {:.0} us  (n={})",
                    l.p50_us, l.p99_us, l.max_us, l.count
                );
            }
        }
        if !self.appends.is_empty() {
            let _ = writeln!(s, "\nAPPENDS (engine::Log on one glommio executor; MB/s = record payload, incl. final sync)");
            let _ = writeln!(
                s,
                "  {:<9} {:>6} {:>5} {:>4} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>8}",
                "durab.",
                "rec B",
                "batch",
                "conc",
                "records/s",
                "MB/s",
                "p50 us",
                "p90 us",
                "p99 us",
                "p99.9 us",
                "max us",
                "fsync/app",
                "wr/pay",
                "zero/pay",
                "cpu %"
            );
            for a in &self.appends {
                let l = &a.latency;
                let _ = writeln!(s, "  {:<9} {:>6} {:>5} {:>4} {:>11.0} {:>9.1} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>10.4} {:>8.2} {:>8.2} {:>8.0}",
                    a.spec.mode(), a.spec.record_size, a.spec.batch, a.spec.appenders,
                    a.records_per_s(), a.payload_mb_s(), l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us,
                    a.fdatasync_per_append(), a.per_payload(a.written_bytes), a.per_payload(a.zeroed_bytes),
                    100.0 * a.cpu_secs / a.total_secs);
            }
        }
        if let Some(r) = &self.read {
            let _ = writeln!(s, "\nREADS ({} records of {} B in batches of {}, written in {:.1} s, page cache evicted before reading)", r.records, r.record_size, r.batch, r.write_secs);
            let _ = writeln!(
                s,
                "  sequential read_range: {:.0} records/s, {:.0} MB/s ({} calls{})",
                r.seq_records_per_s(),
                r.seq_mb_s(),
                r.seq_calls,
                r.seq_device_bytes
                    .map(|b| format!(", {} MiB read from the device", b >> 20))
                    .unwrap_or_default()
            );
            for q in &r.random {
                let _ = writeln!(s, "  random point reads, {:>2} readers: {:>8.0} reads/s {:>7.1} MB/s  p50 {:.0} us  p99 {:.0} us  max {:.0} us{}",
                    q.concurrency, q.reads as f64 / q.secs, mb_per_s(q.reads * r.record_size as u64, q.secs),
                    q.latency.p50_us, q.latency.p99_us, q.latency.max_us,
                    q.device_bytes_per_read.map(|b| format!("  ({:.0} device bytes per read)", b)).unwrap_or_default());
            }
        }
        if let Some(r) = &self.restart {
            let _ = writeln!(
                s,
                "\nRESTART ({} GiB: {} records, {} segments of {} MiB, active segment {} MiB)",
                r.gib,
                r.records,
                r.segments,
                r.segment_bytes >> 20,
                r.active_segment_bytes >> 20
            );
            let _ = writeln!(
                s,
                "  write (never, 1 KiB x64): {:.1} s = {:.0} MB/s; close {:.0} ms",
                r.write_secs,
                mb_per_s(r.records * 1024, r.write_secs),
                r.close_secs * 1000.0
            );
            let _ = writeln!(s, "  reopen (files evicted from page cache): open {:.1} ms{}; read(first offset) {:.1} ms; read(last offset) {:.1} ms; open + first read {:.1} ms",
                r.open_secs * 1000.0,
                r.open_device_bytes.map(|b| format!(" ({} MiB read)", b >> 20)).unwrap_or_default(),
                r.first_read_secs * 1000.0, r.last_read_secs * 1000.0, r.open_to_first_read() * 1000.0);
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            let _ = writeln!(s, "\nRATIOS TO THE DISK LIMITS MEASURED ABOVE");
            for (n, r, d) in ratios {
                let _ = writeln!(s, "  {:>6.1}%  {n}  ({d})", r * 100.0);
            }
        }
        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(s, "\nTARGETS");
            for t in targets {
                let v = match t.met {
                    Some(true) => "MET   ",
                    Some(false) => "MISSED",
                    None => "n/a   ",
                };
                let _ = writeln!(s, "  {v}  {}: {} (goal {})", t.name, t.measured, t.goal);
            }
        }
        let _ = writeln!(s, "\ntotal run time {:.0} s", self.total_secs);
        s
    }
}
