//! The final human table and the JSON document of `proglog-bench`.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use super::loopback::Loopback;
use super::opts::{Kind, Opts};
use super::run::Part;
use super::stats::PartStats;
use super::verify::VerifyResult;
use crate::{mb_per_s, round2, Latency};

/// CPU used by a process over the measurement window.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
    pub wall_s: f64,
}

impl Cpu {
    pub fn cores(&self) -> f64 {
        if self.wall_s > 0.0 {
            (self.user_s + self.sys_s) / self.wall_s
        } else {
            0.0
        }
    }

    fn json(&self) -> Value {
        json!({
            "user_s": round2(self.user_s),
            "sys_s": round2(self.sys_s),
            "wall_s": round2(self.wall_s),
            "cores_used": round2(self.cores()),
        })
    }
}

pub struct RunReport {
    pub opts: Opts,
    /// Where the load went (the partition's leader, found from the seeds), else `--addr`.
    pub addr: String,
    pub run_id: u32,
    pub parts: Vec<(Part, PartStats)>,
    /// Length of the measurement window.
    pub secs: f64,
    pub bench_cpu: Option<Cpu>,
    pub server_cpu: Option<Cpu>,
    pub cpus_online: usize,
    pub loopback: Option<Loopback>,
    pub verify: Option<VerifyResult>,
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn us(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        thousands(v)
    }
}

impl RunReport {
    pub fn errors(&self) -> u64 {
        self.parts.iter().map(|(_, s)| s.error_count()).sum()
    }

    pub fn loop_kind(&self) -> String {
        match self.opts.rate {
            Some(r) => format!("open loop, {} requests/s per workload", thousands(r)),
            None => "closed loop".into(),
        }
    }

    fn rate(&self, n: u64) -> f64 {
        if self.secs > 0.0 {
            n as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn human(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "proglog-bench {} -> {} ({}/{}): {} executor(s), {:.1} s measured after {:.1} s warm-up, {}, record size {}",
            env!("CARGO_PKG_VERSION"),
            self.addr,
            o.topic.as_deref().unwrap_or("default"),
            o.partition,
            o.cores,
            self.secs,
            o.warmup.as_secs_f64(),
            self.loop_kind(),
            o.record_size
        );
        let _ = writeln!(
            s,
            "{:<22} {:>11} {:>6} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
            "workload",
            "conns x str",
            "window",
            "req/s",
            "records/s",
            "MB/s",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "errors"
        );
        for (p, st) in &self.parts {
            if p.kind == Kind::None {
                continue;
            }
            let l = Latency::of(&st.latency);
            let win = if p.kind.windowed() {
                o.window.to_string()
            } else {
                "-".into()
            };
            let name = match p.kind {
                Kind::ProduceBatch => format!("produce-batch x{}", o.batch),
                Kind::EndToEnd => "end-to-end (produce)".into(),
                Kind::ConsumeStream => "consume-stream (gap)".into(),
                k => k.name().into(),
            };
            let _ = writeln!(
                s,
                "{:<22} {:>11} {:>6} {:>10} {:>12} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
                name,
                format!("{} x {}", p.connections, p.streams),
                win,
                thousands(self.rate(st.requests)),
                thousands(self.rate(st.records)),
                mb_per_s(st.bytes, self.secs),
                us(l.p50_us),
                us(l.p90_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                st.error_count()
            );
            if p.kind == Kind::EndToEnd {
                let e = Latency::of(&st.e2e);
                let _ = writeln!(
                    s,
                    "{:<22} {:>11} {:>6} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
                    "end-to-end (receive)",
                    format!("{} cons.", p.consumers),
                    "-",
                    "-",
                    thousands(self.rate(st.e2e_records)),
                    "-",
                    us(e.p50_us),
                    us(e.p90_us),
                    us(e.p99_us),
                    us(e.p999_us),
                    us(e.max_us),
                    "-"
                );
            }
        }
        for (p, st) in &self.parts {
            if st.error_count() > 0 {
                let codes: Vec<String> =
                    st.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(
                    s,
                    "errors in {}: {} (first: {})",
                    p.kind,
                    codes.join(", "),
                    st.first_error.as_deref().unwrap_or("?")
                );
            }
            if st.unfinished > 0 {
                let _ = writeln!(
                    s,
                    "{}: {} requests still unanswered at the end",
                    p.kind, st.unfinished
                );
            }
        }
        if let Some(c) = &self.bench_cpu {
            let given = o.cores as f64;
            let _ = writeln!(
                s,
                "bench CPU: {:.2} cores (user {:.2} s, sys {:.2} s) of {} executor core(s) given, {} online{}",
                c.cores(),
                c.user_s,
                c.sys_s,
                o.cores,
                self.cpus_online,
                if c.cores() >= 0.9 * given {
                    " -- the bench is near its CPU limit: its figures may be the bench's, not the server's"
                } else {
                    ""
                }
            );
        }
        if let (Some(c), Some(pid)) = (&self.server_cpu, o.server_pid) {
            let _ = writeln!(
                s,
                "server CPU (pid {pid}): {:.3} cores (user {:.2} s, sys {:.2} s)",
                c.cores(),
                c.user_s,
                c.sys_s
            );
        }
        if let Some(lb) = &self.loopback {
            let _ = writeln!(
                s,
                "loopback TCP: {} MB/s ({:.1} Gbit/s) over {:.1} s",
                thousands(lb.mb_per_s()),
                lb.gbit_per_s(),
                lb.secs
            );
            for (p, st) in &self.parts {
                if st.bytes > 0 {
                    let mb = mb_per_s(st.bytes, self.secs);
                    let _ = writeln!(
                        s,
                        "  {}: {:.1} MB/s of record values = {:.2}% of loopback",
                        p.kind,
                        mb,
                        100.0 * mb / lb.mb_per_s()
                    );
                }
            }
        }
        if let Some(v) = &self.verify {
            if v.passed() {
                let _ = writeln!(
                    s,
                    "verify: PASSED: {} acknowledged records read back intact ({} records of others skipped)",
                    thousands(v.acked as f64),
                    v.foreign
                );
            } else {
                let _ = writeln!(
                    s,
                    "verify: FAILED: {} acknowledged, {} intact, {} lost, {} duplicates, {} mismatches{}",
                    v.acked,
                    v.ok,
                    v.lost,
                    v.duplicates,
                    v.mismatches,
                    v.read_error.as_ref().map(|e| format!(", read-back error: {e}")).unwrap_or_default()
                );
                for e in &v.examples {
                    let _ = writeln!(s, "  {e}");
                }
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        let o = &self.opts;
        let workloads: Vec<Value> = self
            .parts
            .iter()
            .filter(|(p, _)| p.kind != Kind::None)
            .map(|(p, st)| {
                let mut m = Map::new();
                m.insert("kind".into(), json!(p.kind.name()));
                m.insert("connections".into(), json!(p.connections));
                m.insert("streams_per_connection".into(), json!(p.streams));
                m.insert(
                    "window".into(),
                    json!(p.kind.windowed().then_some(o.window)),
                );
                if p.kind == Kind::ProduceBatch {
                    m.insert("batch".into(), json!(o.batch));
                }
                m.insert("requests".into(), json!(st.requests));
                m.insert("records".into(), json!(st.records));
                m.insert("bytes".into(), json!(st.bytes));
                m.insert(
                    "requests_per_s".into(),
                    json!(self.rate(st.requests).round()),
                );
                m.insert("records_per_s".into(), json!(self.rate(st.records).round()));
                m.insert(
                    "mb_per_s".into(),
                    json!(round2(mb_per_s(st.bytes, self.secs))),
                );
                m.insert("latency_us".into(), Latency::of(&st.latency).json());
                if p.kind == Kind::EndToEnd {
                    m.insert("consumers".into(), json!(p.consumers));
                    m.insert("received_records".into(), json!(st.e2e_records));
                    m.insert(
                        "received_per_s".into(),
                        json!(self.rate(st.e2e_records).round()),
                    );
                    m.insert("e2e_latency_us".into(), Latency::of(&st.e2e).json());
                }
                m.insert("errors".into(), json!(st.errors));
                m.insert("first_error".into(), json!(st.first_error));
                m.insert("unfinished".into(), json!(st.unfinished));
                if let Some(lb) = &self.loopback {
                    m.insert(
                        "fraction_of_loopback".into(),
                        json!((mb_per_s(st.bytes, self.secs) / lb.mb_per_s() * 1e4).round() / 1e4),
                    );
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "tool": "proglog-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "target": self.addr,
            "run_id": self.run_id,
            "config": {
                "cores": o.cores,
                "pin_cpus": o.pin_cpus,
                "record_size_min": o.record_size.min,
                "record_size_max": o.record_size.max,
                "window": o.window,
                "batch": o.batch,
                "duration_s": o.duration.as_secs_f64(),
                "warmup_s": o.warmup.as_secs_f64(),
                "rate": o.rate,
                "open_loop": o.rate.is_some(),
                "topic": o.topic,
                "partition": o.partition,
                "verify": o.verify,
            },
            "measured_s": round2(self.secs),
            "workloads": workloads,
            "errors_total": self.errors(),
            "bench_cpu": self.bench_cpu.map(|c| c.json()),
            "server_cpu": self.server_cpu.map(|c| c.json()),
            "server_pid": o.server_pid,
            "cpus_online": self.cpus_online,
            "loopback": self.loopback.map(|l| json!({
                "bytes": l.bytes,
                "secs": round2(l.secs),
                "mb_per_s": round2(l.mb_per_s()),
                "gbit_per_s": round2(l.gbit_per_s()),
            })),
            "verify": self.verify.as_ref().map(|v| v.json()),
        })
    }
}
