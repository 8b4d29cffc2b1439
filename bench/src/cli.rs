//! Command-line options of `proglog-engine-bench` (a small hand-written parser, so the bench
//! adds no dependency to the workspace).

use anyhow::{anyhow, bail, Context, Result};
use engine::Durability;
use std::path::PathBuf;
use std::str::FromStr;

pub const USAGE: &str = "\
proglog-engine-bench: benchmarks proglog's storage engine (engine::Log, no network) and, in the
same run and on the same filesystem, the limits of the disk under it (O_DIRECT bandwidth and
fdatasync latency), then reports the engine's figures as ratios to those limits.

USAGE:
    proglog-engine-bench [OPTIONS]

GENERAL:
    --dir PATH              Data directory for every test (default: a fresh directory
                            ./target/engine-bench-<pid>). Must be on the filesystem you want to
                            measure; everything the bench creates there is removed at the end.
    --only LIST             Comma-separated parts to run: disk, append, read, restart
                            (default: disk,append,read,restart).
    --json                  Print the results as one JSON document on stdout (the human table
                            goes to stderr instead).
    --json-file PATH        Also write the JSON document to PATH.
    --keep                  Keep the data directory's contents instead of deleting them.
    --quick                 Shorter defaults for a smoke test (0.5 s per scenario, 64 MiB
                            datasets, 0.25 GiB restart, 200 sync iterations). Options given
                            explicitly still win.
    -h, --help              Print this help.

DISK BASELINE (O_DIRECT through glommio's DmaFile, like the engine):
    --disk-secs SECS        Time limit of each bandwidth test (default 3).
    --disk-mib MIB          Size limit of each bandwidth test (default 2048).
    --disk-block-kib KIB    Size of each sequential read/write (default 1024).
    --disk-qd LIST          Queue depths for the bandwidth tests (default 1,4). The largest
                            result is used as \"the disk's bandwidth\" in the ratios.
    --disk-sync-write-mib MIB
                            Chunk of the write+fdatasync loop that bounds group commit
                            (default 4; 0 skips it).
    --sync-iters N          Iterations of each 4 KiB write + fdatasync latency test (default 2000).

APPEND SCENARIOS (every combination of the four lists below is run):
    --append-secs SECS      Duration of each append scenario (default 2.5).
    --record-sizes LIST     Record value sizes in bytes (default 100,1024).
    --batches LIST          Records per append call (default 1,64).
    --appenders LIST        Concurrent appender tasks on the log's executor (default 1,64).
    --durability LIST       Durability policies: always, never, interval:<ms>, and
                            always-gc: the log runs under `never` while one bench task calls
                            sync() in a loop and each append waits for a sync that started
                            after it (an emulation of leader/follower group commit, to show
                            what `always` could reach). Default always,never,always-gc.
    --write-behind-mib MIB  LogConfig::write_behind_bytes for the scenarios (default: the
                            engine's default, 8).

READ SCENARIOS (over a dataset of 1 KiB records, written first under durability never):
    --read-mib MIB          Size of the dataset (default 1024).
    --read-batch N          Records per batch in the dataset (default 64). A point read reads
                            and checks the whole batch holding the record.
    --read-chunk-kib KIB    max_bytes of each read_range call of the sequential catch-up read
                            (default 1024).
    --read-secs SECS        Duration of each random point-read test (default 3).
    --read-concurrency LIST Concurrent reader tasks for random point reads (default 1,64).

RESTART:
    --restart-gib GIB       Data written (1 KiB records, batches of 64, durability never, then
                            sync) before the log is closed and reopened; then open time and the
                            first reads at the first and the last offset are measured, after the
                            log's files are evicted from the page cache (default 2; 0 skips).
    --segment-mib MIB       Segment size of the restart log (default: the engine's default, 256).

ENVIRONMENT:
    RUST_LOG                Log level of the engine and the bench (default warn).

EXAMPLES:
    cargo build --release -p bench
    ./target/release/proglog-engine-bench
    ./target/release/proglog-engine-bench --restart-gib 10 --only disk,restart
    ./target/release/proglog-engine-bench --json --json-file bench.json
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Disk,
    Append,
    Read,
    Restart,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: Option<PathBuf>,
    pub parts: Vec<Part>,
    pub json: bool,
    pub json_file: Option<PathBuf>,
    pub keep: bool,

    pub disk_secs: f64,
    pub disk_mib: u64,
    pub disk_block_kib: usize,
    pub disk_qd: Vec<usize>,
    pub disk_sync_write_mib: usize,
    pub sync_iters: usize,

    pub append_secs: f64,
    pub record_sizes: Vec<usize>,
    pub batches: Vec<usize>,
    pub appenders: Vec<usize>,
    pub durability: Vec<Durability>,
    /// Also run the emulated group commit (`always-gc`).
    pub emulated_group_commit: bool,
    pub write_behind_mib: Option<usize>,

    pub read_mib: u64,
    pub read_batch: usize,
    pub read_chunk_kib: usize,
    pub read_secs: f64,
    pub read_concurrency: Vec<usize>,

    pub restart_gib: f64,
    pub segment_mib: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: None,
            parts: vec![Part::Disk, Part::Append, Part::Read, Part::Restart],
            json: false,
            json_file: None,
            keep: false,
            disk_secs: 3.0,
            disk_mib: 2048,
            disk_block_kib: 1024,
            disk_qd: vec![1, 4],
            disk_sync_write_mib: 4,
            sync_iters: 2000,
            append_secs: 2.5,
            record_sizes: vec![100, 1024],
            batches: vec![1, 64],
            appenders: vec![1, 64],
            durability: vec![Durability::Always, Durability::Never],
            emulated_group_commit: true,
            write_behind_mib: None,
            read_mib: 1024,
            read_batch: 64,
            read_chunk_kib: 1024,
            read_secs: 3.0,
            read_concurrency: vec![1, 64],
            restart_gib: 2.0,
            segment_mib: None,
        }
    }
}

fn list<T: FromStr>(name: &str, v: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    let out: Vec<T> = v
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|e| anyhow!("{name}: bad item {s:?}: {e}"))
        })
        .collect::<Result<_>>()?;
    if out.is_empty() {
        bail!("{name}: empty list");
    }
    Ok(out)
}

fn one<T: FromStr>(name: &str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.trim()
        .parse::<T>()
        .map_err(|e| anyhow!("{name}: bad value {v:?}: {e}"))
}

fn positive(name: &str, v: &[usize]) -> Result<()> {
    if v.contains(&0) {
        bail!("{name}: values must be > 0");
    }
    Ok(())
}

/// What the command line asks for: run with options, or print the help.
pub enum Parsed {
    Run(Box<Options>),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed> {
    let mut o = Options::default();
    let mut quick = false;
    let mut given = std::collections::HashSet::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let flag = |inline: &Option<String>| -> Result<()> {
            if inline.is_some() {
                bail!("{name} takes no value");
            }
            Ok(())
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--json" => {
                flag(&inline)?;
                o.json = true;
                continue;
            }
            "--keep" => {
                flag(&inline)?;
                o.keep = true;
                continue;
            }
            "--quick" => {
                flag(&inline)?;
                quick = true;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .with_context(|| format!("{name} needs a value (see --help)"))?,
        };
        given.insert(name.clone());
        let v = value.as_str();
        match name.as_str() {
            "--dir" => o.dir = Some(PathBuf::from(v)),
            "--only" => {
                o.parts = list::<String>(&name, v)?
                    .iter()
                    .map(|p| match p.as_str() {
                        "disk" => Ok(Part::Disk),
                        "append" => Ok(Part::Append),
                        "read" => Ok(Part::Read),
                        "restart" => Ok(Part::Restart),
                        other => Err(anyhow!(
                            "--only: unknown part {other:?} (disk, append, read, restart)"
                        )),
                    })
                    .collect::<Result<_>>()?
            }
            "--json-file" => o.json_file = Some(PathBuf::from(v)),
            "--disk-secs" => o.disk_secs = one(&name, v)?,
            "--disk-mib" => o.disk_mib = one(&name, v)?,
            "--disk-block-kib" => o.disk_block_kib = one(&name, v)?,
            "--disk-qd" => o.disk_qd = list(&name, v)?,
            "--disk-sync-write-mib" => o.disk_sync_write_mib = one(&name, v)?,
            "--sync-iters" => o.sync_iters = one(&name, v)?,
            "--append-secs" => o.append_secs = one(&name, v)?,
            "--record-sizes" => o.record_sizes = list(&name, v)?,
            "--batches" => o.batches = list(&name, v)?,
            "--appenders" => o.appenders = list(&name, v)?,
            "--durability" => {
                let items = list::<String>(&name, v)?;
                o.emulated_group_commit = items.iter().any(|d| d == crate::scenarios::EMULATED);
                o.durability = items
                    .iter()
                    .filter(|d| *d != crate::scenarios::EMULATED)
                    .map(|d| Durability::from_str(d).map_err(|e| anyhow!("--durability: {e}")))
                    .collect::<Result<_>>()?
            }
            "--write-behind-mib" => o.write_behind_mib = Some(one(&name, v)?),
            "--read-mib" => o.read_mib = one(&name, v)?,
            "--read-batch" => o.read_batch = one(&name, v)?,
            "--read-chunk-kib" => o.read_chunk_kib = one(&name, v)?,
            "--read-secs" => o.read_secs = one(&name, v)?,
            "--read-concurrency" => o.read_concurrency = list(&name, v)?,
            "--restart-gib" => o.restart_gib = one(&name, v)?,
            "--segment-mib" => o.segment_mib = Some(one(&name, v)?),
            other => bail!("unknown option {other:?} (see --help)"),
        }
    }
    if quick {
        let q = |o: &str| !given.contains(o);
        if q("--disk-secs") {
            o.disk_secs = 0.5;
        }
        if q("--disk-mib") {
            o.disk_mib = 256;
        }
        if q("--sync-iters") {
            o.sync_iters = 200;
        }
        if q("--append-secs") {
            o.append_secs = 0.5;
        }
        if q("--read-mib") {
            o.read_mib = 64;
        }
        if q("--read-secs") {
            o.read_secs = 0.5;
        }
        if q("--restart-gib") {
            o.restart_gib = 0.25;
        }
    }
    positive("--record-sizes", &o.record_sizes)?;
    positive("--batches", &o.batches)?;
    positive("--appenders", &o.appenders)?;
    positive("--disk-qd", &o.disk_qd)?;
    positive("--read-concurrency", &o.read_concurrency)?;
    if o.disk_block_kib == 0 || o.disk_block_kib % 4 != 0 {
        bail!("--disk-block-kib must be a positive multiple of 4");
    }
    if o.read_batch == 0 {
        bail!("--read-batch must be > 0");
    }
    if o.read_chunk_kib == 0 {
        bail!("--read-chunk-kib must be > 0");
    }
    for (n, s) in [
        ("--disk-secs", o.disk_secs),
        ("--append-secs", o.append_secs),
        ("--read-secs", o.read_secs),
    ] {
        if !(s > 0.0 && s <= 1e6) {
            bail!("{n} must be > 0 and at most 1e6 seconds");
        }
    }
    if !(o.restart_gib >= 0.0 && o.restart_gib.is_finite()) {
        bail!("--restart-gib must be >= 0");
    }
    Ok(Parsed::Run(Box::new(o)))
}
