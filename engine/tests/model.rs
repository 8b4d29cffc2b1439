//! Model-based test of `Log`: random sequences of operations run against the log and against a
//! plain in-memory model, compared after every step.
//!
//! Every run prints the seeds it uses. `PROGLOG_SEED=<n>` replays one seed;
//! `PROGLOG_MODEL_SEEDS` and `PROGLOG_MODEL_OPS` change how many seeds and operations run.

use bytes::Bytes;
use engine::{Durability, Error, FileBudget, Log, LogConfig, NewRecord, Record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

const BUDGET: usize = 2;

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    rtype: u32,
    term: u64,
    /// Base offset of the batch the record was written in.
    batch: u64,
    /// Bounds on the batch's timestamp (taken before and after the append call).
    ts: (i64, i64),
}

#[derive(Debug, Default)]
struct Model {
    entries: BTreeMap<u64, Entry>,
    lowest: u64,
    next: u64,
}

impl Model {
    fn value_len(&self, o: u64) -> usize {
        self.entries[&o].value.len()
    }

    /// Bytes the batch with base `b` takes on disk (header + records).
    fn batch_len(&self, b: u64) -> usize {
        engine::batch::HEADER_LEN
            + self
                .entries
                .range(b..)
                .take_while(|(_, e)| e.batch == b)
                .map(|(_, e)| 8 + e.value.len())
                .sum::<usize>()
    }

    fn drop_below(&mut self, lowest: u64) {
        self.entries = self.entries.split_off(&lowest);
        self.lowest = lowest;
    }

    fn drop_from(&mut self, next: u64) {
        self.entries.split_off(&next);
        self.next = next;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("PROGLOG_SEED") {
        return vec![s.trim().parse().expect("PROGLOG_SEED must be a u64")];
    }
    let n: usize = std::env::var("PROGLOG_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut r = rand::rng();
    (0..n).map(|_| r.random::<u64>() >> 1).collect()
}

fn ops_per_seed() -> usize {
    std::env::var("PROGLOG_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn config_for(rng: &mut StdRng) -> LogConfig {
    let durability = match rng.random_range(0..4) {
        0 | 1 => Durability::Always,
        2 => Durability::Never,
        _ => Durability::Interval {
            interval_ms: rng.random_range(1..20),
        },
    };
    LogConfig {
        durability,
        segment_bytes: 64 * 1024,
        index_interval_bytes: [1u32, 512, 4096, 16384][rng.random_range(0..4)],
        retention_bytes: rng.random_range(100_000..400_000),
        retention_ms: 0,
        initial_offset: [0u64, 0, 7, 1 << 40][rng.random_range(0..4)],
        write_behind_bytes: 64 * 1024,
        flush_ms: rng.random_range(1..50),
        max_record_bytes: 4096,
        max_batch_bytes: 32 * 1024,
        max_batch_records: 64,
        incarnation: 0,
    }
}

fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .expect("list log dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn check_record(ctx: &str, m: &Model, r: &Record) {
    let e = m
        .entries
        .get(&r.offset)
        .unwrap_or_else(|| panic!("{ctx}: log returned offset {} the model lacks", r.offset));
    assert!(
        r.value == e.value,
        "{ctx}: value of offset {} differs: log {} bytes, model {} bytes",
        r.offset,
        r.value.len(),
        e.value.len()
    );
    assert_eq!(r.rtype, e.rtype, "{ctx}: rtype of offset {}", r.offset);
    assert_eq!(r.term, e.term, "{ctx}: term of offset {}", r.offset);
    assert!(
        r.timestamp_ms >= e.ts.0 && r.timestamp_ms <= e.ts.1,
        "{ctx}: timestamp {} of offset {} outside [{}, {}]",
        r.timestamp_ms,
        r.offset,
        e.ts.0,
        e.ts.1
    );
}

fn check_bounds(ctx: &str, log: &Log, m: &Model, budget: &FileBudget) {
    assert_eq!(
        (log.lowest_offset(), log.next_offset()),
        (m.lowest, m.next),
        "{ctx}: (lowest, next) of log vs model"
    );
    let hi = (m.next > m.lowest).then(|| m.next - 1);
    assert_eq!(log.highest_offset(), hi, "{ctx}: highest offset");
    let st = log.stats();
    assert_eq!(
        (st.lowest_offset, st.next_offset),
        (m.lowest, m.next),
        "{ctx}: stats offsets"
    );
    assert!(
        budget.open_segments() <= BUDGET,
        "{ctx}: {} sealed segments open with a budget of {BUDGET}",
        budget.open_segments()
    );
}

fn expect_out_of_range(ctx: &str, r: Result<Vec<Record>, Error>, o: u64, m: &Model) {
    match r {
        Err(Error::OffsetOutOfRange {
            offset,
            lowest,
            next,
        }) => assert_eq!(
            (offset, lowest, next),
            (o, m.lowest, m.next),
            "{ctx}: fields of OffsetOutOfRange"
        ),
        other => panic!(
            "{ctx}: reading offset {o} outside [{}, {}) gave {other:?}",
            m.lowest, m.next
        ),
    }
}

async fn full_compare(ctx: &str, log: &Log, m: &Model) {
    if m.next == m.lowest {
        expect_out_of_range(ctx, log.read_range(m.lowest, 1, 1).await, m.lowest, m);
        return;
    }
    let all = log
        .read_range(m.lowest, usize::MAX, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: full read: {e}"));
    assert_eq!(
        all.len() as u64,
        m.next - m.lowest,
        "{ctx}: full read length"
    );
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, m.lowest + i as u64, "{ctx}: full read offsets");
        check_record(ctx, m, r);
    }
}

async fn run_seed(seed: u64, dir: PathBuf, ops: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = config_for(&mut rng);
    let budget = FileBudget::new(BUDGET);
    let mut log = Log::open(&dir, config.clone(), Rc::clone(&budget))
        .await
        .expect("open");
    let mut m = Model {
        lowest: config.initial_offset,
        next: config.initial_offset,
        ..Model::default()
    };
    let mut term = rng.random_range(0..3u64);
    let mut counts = BTreeMap::<&str, usize>::new();
    check_bounds("open", &log, &m, &budget);
    for step in 0..ops {
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..=39 => "append",
            40..=59 => "read",
            60..=69 => "read_range",
            70..=74 => "reopen",
            75..=80 => "truncate_prefix",
            81..=87 => "truncate_suffix",
            88..=91 => "apply_retention",
            92..=94 => "term_of",
            95..=97 => "sync",
            _ => {
                if rng.random_range(0..4) == 0 {
                    "reset"
                } else {
                    "append"
                }
            }
        };
        *counts.entry(op).or_default() += 1;
        let ctx = format!("seed {seed} step {step} ({op})");
        match op {
            "append" => {
                let n = rng.random_range(1..=8);
                let records: Vec<NewRecord> = (0..n)
                    .map(|_| {
                        let len = match rng.random_range(0..10) {
                            0 => 0,
                            1..=5 => rng.random_range(1..100),
                            _ => rng.random_range(100..=3000),
                        };
                        let mut v = vec![0u8; len];
                        rng.fill(&mut v[..]);
                        NewRecord {
                            value: Bytes::from(v),
                            rtype: rng.random_range(0..4),
                        }
                    })
                    .collect();
                if rng.random_bool(0.15) {
                    term += rng.random_range(1..4);
                }
                let before = now_ms();
                let a = if rng.random_bool(0.2) {
                    log.set_term(term);
                    log.append(&records).await
                } else {
                    log.append_with_term(term, &records).await
                }
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let after = now_ms();
                assert_eq!(
                    (a.base_offset, a.last_offset),
                    (m.next, m.next + n as u64 - 1),
                    "{ctx}: offsets assigned"
                );
                for (i, r) in records.into_iter().enumerate() {
                    m.entries.insert(
                        m.next + i as u64,
                        Entry {
                            value: r.value,
                            rtype: r.rtype,
                            term,
                            batch: a.base_offset,
                            ts: (before, after),
                        },
                    );
                }
                m.next += n as u64;
            }
            "read" => {
                let o =
                    rng.random_range(m.lowest.saturating_sub(3)..m.next.saturating_add(3).max(1));
                let r = log.read(o).await;
                if o >= m.lowest && o < m.next {
                    let r = r.unwrap_or_else(|e| panic!("{ctx}: read {o}: {e}"));
                    assert_eq!(r.offset, o, "{ctx}: offset of read");
                    check_record(&ctx, &m, &r);
                } else {
                    expect_out_of_range(&ctx, r.map(|r| vec![r]), o, &m);
                }
            }
            "read_range" => {
                let from = rng.random_range(m.lowest.saturating_sub(1)..=m.next);
                let max_records = if rng.random_bool(0.2) {
                    usize::MAX
                } else {
                    rng.random_range(1..50)
                };
                let max_bytes = match rng.random_range(0..5) {
                    0 => usize::MAX,
                    1 => 0,
                    _ => rng.random_range(1..100_000),
                };
                let r = log.read_range(from, max_records, max_bytes).await;
                if from < m.lowest || from >= m.next {
                    expect_out_of_range(&ctx, r, from, &m);
                } else {
                    let got = r.unwrap_or_else(|e| panic!("{ctx}: read_range {from}: {e}"));
                    let avail = (m.next - from) as usize;
                    let k = got.len();
                    assert!(k >= 1, "{ctx}: read_range({from}) returned nothing");
                    assert!(
                        k <= max_records.min(avail),
                        "{ctx}: {k} records, max_records {max_records}, {avail} available"
                    );
                    let mut vbytes = 0usize;
                    for (i, r) in got.iter().enumerate() {
                        assert_eq!(r.offset, from + i as u64, "{ctx}: read_range offsets");
                        check_record(&ctx, &m, r);
                        vbytes += r.value.len();
                    }
                    assert!(
                        k == 1 || vbytes <= max_bytes,
                        "{ctx}: {vbytes} value bytes returned with max_bytes {max_bytes}"
                    );
                    if max_bytes == usize::MAX {
                        assert_eq!(k, max_records.min(avail), "{ctx}: unbounded read_range");
                    }
                    if k < max_records.min(avail) {
                        // Stopping early is allowed only when the next record would overflow
                        // max_bytes, counted in values or in whole batches on disk.
                        let o_next = from + k as u64;
                        let values: usize = vbytes + m.value_len(o_next);
                        let mut batches = std::collections::BTreeSet::new();
                        for o in from..=o_next {
                            batches.insert(m.entries[&o].batch);
                        }
                        let disk: usize = batches.iter().map(|&b| m.batch_len(b)).sum();
                        assert!(
                            values > max_bytes || disk >= max_bytes,
                            "{ctx}: read_range({from}, {max_records}, {max_bytes}) stopped after {k} \
                             records although {values} value bytes / {disk} batch bytes fit"
                        );
                    }
                }
            }
            "reopen" => {
                log.close()
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
                assert!(
                    matches!(
                        log.append(&[NewRecord::new(&b"x"[..])]).await,
                        Err(Error::ShutDown)
                    ),
                    "{ctx}: append after close must fail with ShutDown"
                );
                drop(log);
                assert_eq!(
                    budget.open_segments(),
                    0,
                    "{ctx}: files left open after close"
                );
                log = Log::open(&dir, config.clone(), Rc::clone(&budget))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                // A reopened log stamps `append` with the term of its last record.
                if let Some((_, e)) = m.entries.last_key_value() {
                    let got = log.term_of(m.next - 1).await.expect("term_of last");
                    assert_eq!(got, e.term, "{ctx}: term of the last record after reopen");
                }
            }
            "truncate_prefix" => {
                let x = rng.random_range(m.lowest..=m.next.saturating_add(2));
                let old = m.lowest;
                log.truncate_prefix(x)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: truncate_prefix({x}): {e}"));
                let new = log.lowest_offset();
                assert!(new >= old, "{ctx}: lowest moved back from {old} to {new}");
                assert!(
                    new <= x.saturating_add(1).max(old),
                    "{ctx}: truncate_prefix({x}) moved lowest past what was asked: {new}"
                );
                assert!(new <= m.next, "{ctx}: lowest {new} past next {}", m.next);
                if new > old {
                    assert!(
                        new == m.next || m.entries[&new].batch == new,
                        "{ctx}: new lowest {new} is not a batch boundary"
                    );
                }
                // Every removable segment was removed.
                let bases = segment_bases(&dir);
                assert_eq!(bases.first(), Some(&new), "{ctx}: first segment file");
                if bases.len() > 1 {
                    assert!(
                        bases[1] > x.saturating_add(1),
                        "{ctx}: truncate_prefix({x}) left segment [{}, {})",
                        bases[0],
                        bases[1]
                    );
                }
                m.drop_below(new);
            }
            "truncate_suffix" => {
                if m.lowest >= 2 && rng.random_bool(0.1) {
                    let bad = rng.random_range(0..m.lowest - 1);
                    match log.truncate_suffix(bad).await {
                        Err(Error::InvalidArgument(msg)) => {
                            assert!(msg.contains(&bad.to_string()), "{ctx}: message {msg:?}")
                        }
                        other => panic!(
                            "{ctx}: truncate_suffix({bad}) below lowest {} gave {other:?}",
                            m.lowest
                        ),
                    }
                } else {
                    let lo = if m.lowest == 0 { 0 } else { m.lowest - 1 };
                    let last_kept = rng.random_range(lo..=m.next);
                    log.truncate_suffix(last_kept)
                        .await
                        .unwrap_or_else(|e| panic!("{ctx}: truncate_suffix({last_kept}): {e}"));
                    if last_kept + 1 < m.next {
                        m.drop_from(last_kept + 1);
                    }
                }
            }
            "apply_retention" => {
                let old = m.lowest;
                log.apply_retention(SystemTime::now())
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let new = log.lowest_offset();
                assert!(new >= old && new <= m.next, "{ctx}: lowest {old} -> {new}");
                let st = log.stats();
                assert!(
                    st.segments == 1 || st.size_bytes <= config.retention_bytes,
                    "{ctx}: {} bytes in {} segments left with retention_bytes {}",
                    st.size_bytes,
                    st.segments,
                    config.retention_bytes
                );
                m.drop_below(new);
            }
            "term_of" => {
                if m.next > m.lowest {
                    let o = rng.random_range(m.lowest..m.next);
                    let t = log
                        .term_of(o)
                        .await
                        .unwrap_or_else(|e| panic!("{ctx}: term_of({o}): {e}"));
                    assert_eq!(t, m.entries[&o].term, "{ctx}: term_of({o})");
                }
                if m.lowest > 0 {
                    assert!(
                        matches!(
                            log.term_of(m.lowest - 1).await,
                            Err(Error::OffsetOutOfRange { .. })
                        ),
                        "{ctx}: term_of below lowest"
                    );
                }
                assert!(
                    matches!(
                        log.term_of(m.next).await,
                        Err(Error::OffsetOutOfRange { .. })
                    ),
                    "{ctx}: term_of(next)"
                );
            }
            "sync" => {
                log.sync().await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            }
            "reset" => {
                let to = m.next + rng.random_range(0..100);
                log.reset(to)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: reset({to}): {e}"));
                m.entries.clear();
                m.lowest = to;
                m.next = to;
            }
            _ => unreachable!(),
        }
        check_bounds(&ctx, &log, &m, &budget);
    }
    full_compare(&format!("seed {seed} final"), &log, &m).await;
    log.close().await.expect("close");
    drop(log);
    let log = Log::open(&dir, config.clone(), Rc::clone(&budget))
        .await
        .expect("final reopen");
    check_bounds(&format!("seed {seed} final reopen"), &log, &m, &budget);
    full_compare(&format!("seed {seed} final reopen"), &log, &m).await;
    log.close().await.expect("close");
    println!(
        "seed {seed}: {} records in [{}, {}), config {:?}/{} B index interval, ops {counts:?}",
        m.entries.len(),
        m.lowest,
        m.next,
        config.durability,
        config.index_interval_bytes
    );
}

#[test]
fn random_operations_match_the_model() {
    let seeds = seeds();
    let ops = ops_per_seed();
    println!("model seeds: {seeds:?} (replay one with PROGLOG_SEED=<seed>)");
    for seed in seeds {
        eprintln!("model: running seed {seed} (replay with PROGLOG_SEED={seed})");
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        let r = engine::run_local(tmp.path(), move || run_seed(seed, dir, ops));
        if let Err(e) = r {
            panic!("seed {seed} failed (replay with PROGLOG_SEED={seed}): {e}");
        }
    }
}

/// `append` without a term continues the term of the log's last record after a reopen, also
/// when the active segment is empty because the log just rolled.
#[test]
fn append_after_reopen_keeps_the_last_term() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    engine::run_local(tmp.path(), move || async move {
        let config = LogConfig {
            segment_bytes: 64 * 1024,
            max_batch_bytes: 32 * 1024,
            max_record_bytes: 32 * 1024,
            write_behind_bytes: 64 * 1024,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, config.clone(), FileBudget::new(4))
            .await
            .expect("open");
        // Three 30 KiB records: the third one rolls to a second segment.
        let big = NewRecord::new(Bytes::from(vec![1u8; 30 * 1024]));
        for _ in 0..3 {
            log.append_with_term(5, std::slice::from_ref(&big)).await.expect("append");
        }
        assert_eq!(log.stats().segments, 2, "the third record rolls");
        let segments = log.stats().segments;
        log.close().await.expect("close");
        drop(log);
        // A crash right after the roll (or a torn first batch of the new segment) leaves the
        // active segment empty: recovery cuts it to nothing.
        let active = dir.join(format!("{:020}.log", 2));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&active)
            .expect("active data file")
            .set_len(0)
            .expect("cut");
        let log = Log::open(&dir, config.clone(), FileBudget::new(4))
            .await
            .expect("reopen");
        assert_eq!(log.next_offset(), 2);
        assert_eq!(log.term_of(1).await.expect("term_of"), 5);
        let a = log.append(&[NewRecord::new(&b"after"[..])]).await.expect("append");
        let t = log.term_of(a.base_offset).await.expect("term_of");
        log.close().await.expect("close");
        assert_eq!(
            t, 5,
            "append after reopen stamped term {t} instead of the last term 5 ({segments} segments before the reopen)"
        );
    })
    .expect("executor");
}
