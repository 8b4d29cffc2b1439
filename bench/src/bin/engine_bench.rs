//! `proglog-engine-bench`: benchmarks proglog's storage engine directly (no network) and, in
//! the same run and on the same filesystem, the limits of the disk under it. See `--help` and
//! docs/benchmarks.md.

use anyhow::{bail, Context, Result};
use bench::cli::{self, Options, Parsed, Part};
use bench::disk::{self, DiskOptions};
use bench::report::Report;
use bench::scenarios::{self, AppendSpec, ReadSpec};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match cli::parse(std::env::args().skip(1)) {
        Ok(Parsed::Help) => {
            if !bench::out::emit("proglog-engine-bench", cli::USAGE) {
                std::process::exit(1);
            }
        }
        Ok(Parsed::Run(o)) => {
            if let Err(e) = run(&o) {
                eprintln!("proglog-engine-bench: {e:#}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("proglog-engine-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Free bytes on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is a plain C struct of integers, for which all-zero bytes are a valid
    // value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The mount (device, mount point, filesystem type) holding `dir`: the longest matching
/// mount point in /proc/self/mounts.
fn mount_of(dir: &Path) -> Option<(String, String, String)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()))
        })
        .filter(|(_, mp, _)| dir.starts_with(mp))
        .max_by_key(|(_, mp, _)| mp.len())
}

fn machine(dir: &Path) -> serde_json::Value {
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    let (dev, mp, fs) = mount_of(dir).unwrap_or_default();
    let dev_name = Path::new(&dev)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sysq = |f: &str| {
        std::fs::read_to_string(format!("/sys/block/{dev_name}/queue/{f}"))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let git = std::process::Command::new("git")
        .args(["log", "-1", "--format=%h %cs", "--", "engine"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({
        "engine_commit": git,
        "loadavg_start": loadavg(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": kernel,
        "data_dir": dir.display().to_string(),
        "device": dev,
        "mount": mp,
        "fs": fs,
        "rotational": sysq("rotational"),
        "io_poll": sysq("io_poll"),
        "free_gib": free_bytes(dir).map(|b| (b as f64 / (1u64 << 30) as f64).round()),
    })
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn progress(json_mode: bool, msg: &str) {
    let _ = json_mode;
    eprintln!("[engine-bench] {msg}");
    let _ = std::io::stderr().flush();
}

fn run(o: &Options) -> Result<()> {
    let started = Instant::now();
    let (dir, created): (PathBuf, bool) = match &o.dir {
        Some(d) => (d.clone(), !d.exists()),
        None => (
            PathBuf::from("target").join(format!("engine-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe_existed = dir.join("dma-probe").exists();
    let dir = std::fs::canonicalize(&dir)?;
    let result = run_in(o, &dir, started);
    if !o.keep {
        if created {
            let _ = std::fs::remove_dir_all(&dir);
        } else if !probe_existed {
            let _ = std::fs::remove_file(dir.join("dma-probe"));
        }
    }
    result
}

fn run_in(o: &Options, dir: &Path, started: Instant) -> Result<()> {
    let j = o.json;
    let mut rep = Report {
        machine: machine(dir),
        ..Report::default()
    };
    progress(
        j,
        &format!("data directory {} ({})", dir.display(), rep.machine),
    );
    let wants = |p: Part| o.parts.contains(&p);
    let write_behind = o.write_behind_mib.map(|m| m << 20);

    if wants(Part::Restart) && o.restart_gib > 0.0 {
        let need = (o.restart_gib * 1.1 * (1u64 << 30) as f64) as u64 + (2u64 << 30);
        if let Some(free) = free_bytes(dir) {
            if free < need {
                bail!(
                    "--restart-gib {} needs about {} GiB free in {}, only {} GiB are",
                    o.restart_gib,
                    need >> 30,
                    dir.display(),
                    free >> 30
                );
            }
        }
    }

    if wants(Part::Disk) {
        progress(
            j,
            "disk baseline: O_DIRECT sequential write/read, write+fdatasync",
        );
        let d = disk::run(
            dir,
            &DiskOptions {
                secs: o.disk_secs,
                max_bytes: o.disk_mib << 20,
                block: o.disk_block_kib << 10,
                qds: o.disk_qd.clone(),
                sync_write_chunk: o.disk_sync_write_mib << 20,
                sync_iters: o.sync_iters,
            },
        )?;
        progress(
            j,
            &format!(
                "disk: write {:.0} MB/s, read {:.0} MB/s, 4K write+fdatasync p50 {:.0} us",
                d.write_limit_mb_s(),
                d.read_limit_mb_s(),
                d.sync_append_4k.p50_us
            ),
        );
        rep.disk = Some(d);
    }

    if wants(Part::Append) {
        let mut modes: Vec<(engine::Durability, bool)> =
            o.durability.iter().map(|&d| (d, false)).collect();
        if o.emulated_group_commit {
            modes.push((engine::Durability::Never, true));
        }
        for &(durability, emulated_group_commit) in &modes {
            for &record_size in &o.record_sizes {
                for &batch in &o.batches {
                    for &appenders in &o.appenders {
                        let spec = AppendSpec {
                            record_size,
                            batch,
                            appenders,
                            durability,
                            emulated_group_commit,
                            secs: o.append_secs,
                            write_behind,
                        };
                        let r = scenarios::append(dir, &spec)
                            .with_context(|| format!("append scenario {}", spec.name()))?;
                        progress(
                            j,
                            &format!(
                                "append {:<22} {:>10.0} records/s {:>8.1} MB/s  p99 {:>8.0} us  fdatasync/append {:.4}",
                                spec.name(),
                                r.records_per_s(),
                                r.payload_mb_s(),
                                r.latency.p99_us,
                                r.fdatasync_per_append()
                            ),
                        );
                        rep.appends.push(r);
                    }
                }
            }
        }
    }

    if wants(Part::Read) {
        progress(j, &format!("reads: writing a {} MiB dataset", o.read_mib));
        let r = scenarios::read(
            dir,
            &ReadSpec {
                dataset_bytes: o.read_mib << 20,
                batch: o.read_batch,
                chunk_bytes: o.read_chunk_kib << 10,
                secs: o.read_secs,
                concurrency: o.read_concurrency.clone(),
                write_behind,
            },
        )
        .context("read scenarios")?;
        progress(
            j,
            &format!(
                "reads: sequential {:.0} MB/s; random {}",
                r.seq_mb_s(),
                r.random
                    .iter()
                    .map(|q| format!("c{} {:.0}/s", q.concurrency, q.reads as f64 / q.secs))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        rep.read = Some(r);
    }

    if wants(Part::Restart) && o.restart_gib > 0.0 {
        progress(j, &format!("restart: writing {} GiB", o.restart_gib));
        let r = scenarios::restart(
            dir,
            o.restart_gib,
            o.segment_mib.map(|m| m << 20),
            write_behind,
        )
        .context("restart scenario")?;
        progress(
            j,
            &format!(
                "restart: open {:.1} ms, open + first read {:.1} ms",
                r.open_secs * 1000.0,
                r.open_to_first_read() * 1000.0
            ),
        );
        rep.restart = Some(r);
    }

    rep.total_secs = started.elapsed().as_secs_f64();
    if let Some(m) = rep.machine.as_object_mut() {
        m.insert("loadavg_end".into(), json!(loadavg()));
    }
    let doc = rep.json();
    if let Some(p) = &o.json_file {
        std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let report = if o.json {
        eprint!("{}", rep.table());
        serde_json::to_string_pretty(&doc)? + "\n"
    } else {
        rep.table()
    };
    bench::out::write(&report).context("writing standard output")?;
    Ok(())
}
