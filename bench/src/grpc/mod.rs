//! `proglog-bench`: a load generator for any log.v1 gRPC server.
//!
//! [`opts`] is the command line, [`run`] plans connections and lanes and drives them on
//! glommio executors, [`payload`] stamps and checks record values, [`verify`] reads back
//! what was acknowledged, [`loopback`] measures the machine's loopback TCP ceiling, and
//! [`report`] prints the results. [`main`] ties them together. [`failover`] is a scenario of
//! its own (`proglog-bench failover`): it kills a partition's leader and times the recovery.

pub mod failover;
pub mod loopback;
pub mod opts;
pub mod payload;
pub mod report;
mod route;
pub mod run;
pub mod stats;
pub mod tls;
pub mod verify;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use opts::Opts;
use report::{Cpu, RunReport};
use stats::{pid_cpu, self_cpu, Window};

/// A run id that differs between runs, so read-back ignores records of earlier runs.
fn run_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut r = crate::Rng::new(t ^ (u64::from(std::process::id()) << 32));
    r.next_u64() as u32
}

/// A result the caller prints; `failed` decides the exit status.
pub struct Outcome {
    pub report: RunReport,
    pub failed: Vec<String>,
}

/// Prints a progress line per second until the executors finish; returns CPU figures of the
/// measurement window (taken at its edges).
fn watch(load: &run::Load, w: Window, opts: &Opts) -> (Option<Cpu>, Option<Cpu>) {
    let n = load.shared.parts.len();
    let mut prev: Vec<(u64, u64, u64)> = vec![(0, 0, 0); n];
    let mut next_tick = w.start + Duration::from_secs(1);
    let mut cpu_at_measure = None;
    let mut cpu_at_end = None;
    let server = |pid: Option<u32>| pid.and_then(pid_cpu);
    let mut stderr = std::io::stderr();
    loop {
        let now = Instant::now();
        if cpu_at_measure.is_none() && now >= w.measure {
            cpu_at_measure = Some((Instant::now(), self_cpu(), server(opts.server_pid)));
        }
        if cpu_at_end.is_none() && now >= w.end {
            cpu_at_end = Some((Instant::now(), self_cpu(), server(opts.server_pid)));
        }
        if now >= next_tick {
            if !opts.quiet {
                let mut line = format!("[{:5.1}s]", now.duration_since(w.start).as_secs_f64());
                for (i, p) in load.shared.parts.iter().enumerate() {
                    if p.kind == opts::Kind::None {
                        continue;
                    }
                    let cur = load.shared.live[i].snapshot();
                    let dt = 1.0;
                    line.push_str(&format!(
                        "  {} {:.0} rec/s {:.1} MB/s err {}",
                        p.kind,
                        (cur.0 - prev[i].0) as f64 / dt,
                        (cur.1 - prev[i].1) as f64 / dt / 1e6,
                        cur.2
                    ));
                    prev[i] = cur;
                }
                if now < w.measure {
                    line.push_str("  (warm-up)");
                } else if now >= w.end {
                    line.push_str("  (draining)");
                }
                let _ = writeln!(stderr, "{line}");
            }
            next_tick += Duration::from_secs(1);
        }
        if load.done() && cpu_at_end.is_some() {
            break;
        }
        if load.done() && now < w.end {
            // Every lane gave up early (e.g. the server went away): close the window now.
            cpu_at_end = Some((Instant::now(), self_cpu(), server(opts.server_pid)));
            break;
        }
        let mut wake = next_tick;
        for t in [w.measure, w.end] {
            if t > now && t < wake {
                wake = t;
            }
        }
        let nap = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        std::thread::sleep(nap);
    }
    let diff = |a: Option<(f64, f64)>, b: Option<(f64, f64)>, wall: f64| match (a, b) {
        (Some(a), Some(b)) => Some(Cpu {
            user_s: b.0 - a.0,
            sys_s: b.1 - a.1,
            wall_s: wall,
        }),
        _ => None,
    };
    match (cpu_at_measure, cpu_at_end) {
        (Some((t0, c0, s0)), Some((t1, c1, s1))) => {
            let wall = t1.duration_since(t0).as_secs_f64();
            (diff(Some(c0), Some(c1), wall), diff(s0, s1, wall))
        }
        _ => (None, None),
    }
}

/// Runs everything `opts` asks for.
/// `opts` must have passed [`Opts::validate`].
pub fn main(opts: Opts) -> Result<Outcome> {
    let epoch = Instant::now();
    let loopback = if opts.measure_loopback {
        if !opts.quiet {
            eprintln!(
                "measuring loopback TCP bandwidth for {:?} ...",
                opts.loopback_duration
            );
        }
        Some(loopback::measure(opts.loopback_duration)?)
    } else {
        None
    };
    let id = run_id();
    let kinds: Vec<opts::Kind> = opts.workload.iter().map(|w| w.kind).collect();
    let load_wanted = kinds.iter().any(|k| *k != opts::Kind::None);
    let mut failed = Vec::new();
    let mut parts = Vec::new();
    let (mut bench_cpu, mut server_cpu, mut verify_result) = (None, None, None);
    let mut secs = 0.0;
    // Where the load went: the partition's leader the seeds named, reported as the target.
    let mut target = None;
    if load_wanted {
        let config = tls::client_config(&opts.tls).map_err(|e| anyhow!(e))?;
        let addr = route::target(&opts, config.clone())?;
        target = Some(addr);
        if !opts.quiet && opts.addrs().len() > 1 {
            eprintln!("load goes to {addr} (the partition's leader, or the first that answers)");
        }
        if !opts.quiet && kinds.iter().any(|k| k.reads_prefill()) {
            eprintln!("prefilling {} records ...", opts.prefill);
        }
        let setup = run::setup(&opts, addr, config.clone(), id, epoch)?;
        let mut acks = setup.acks.clone();
        let load = run::launch(&opts, addr, config.clone(), id, setup)?;
        let w = load.start(epoch);
        let w = match w {
            Ok(w) => w,
            Err(e) => {
                // Executors see the failure and end on their own.
                let _ = load.join();
                return Err(e);
            }
        };
        let (bc, sc) = watch(&load, w, &opts);
        bench_cpu = bc;
        server_cpu = sc;
        secs = bc.map_or(opts.duration.as_secs_f64(), |c| c.wall_s);
        let plan_parts = load.shared.parts.clone();
        let (stats, load_acks, bad) = load.join()?;
        acks.extend(load_acks);
        parts = plan_parts.into_iter().zip(stats).collect();
        if opts.verify {
            if !opts.quiet {
                eprintln!("verifying {} acknowledged records ...", acks.len());
            }
            let v = verify::verify(&opts, addr, config, id, acks, bad)?;
            if !v.passed() {
                failed.push(format!(
                    "verification failed: {} lost, {} duplicates, {} mismatches{}",
                    v.lost,
                    v.duplicates,
                    v.mismatches,
                    v.read_error
                        .as_ref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                ));
            }
            verify_result = Some(v);
        }
    }
    let report = RunReport {
        addr: target.map_or_else(|| opts.addr.clone(), |a| a.to_string()),
        run_id: id,
        parts,
        secs,
        bench_cpu,
        server_cpu,
        cpus_online: stats::cpus_online(),
        loopback,
        verify: verify_result,
        opts,
    };
    let errors = report.errors();
    if errors > report.opts.max_errors {
        let mut why = format!(
            "{errors} RPC errors (more than --max-errors {})",
            report.opts.max_errors
        );
        if let Some(first) = report
            .parts
            .iter()
            .find_map(|(_, s)| s.first_error.as_deref())
        {
            why.push_str(&format!("; the first: {first}"));
        }
        failed.push(why);
    }
    let produced: u64 = report
        .parts
        .iter()
        .filter(|(p, _)| p.kind != opts::Kind::Tail && p.kind != opts::Kind::None)
        .map(|(_, s)| s.records)
        .sum();
    if load_wanted && produced == 0 && report.parts.iter().any(|(p, _)| p.kind != opts::Kind::Tail)
    {
        failed.push("no request completed inside the measurement window".into());
    }
    Ok(Outcome { report, failed })
}
