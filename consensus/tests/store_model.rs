//! `engine::Log` as a Raft log store against the in-memory store as its model: the same random
//! operations (appends of data and control batches, cuts after an index, prefix drops, resets,
//! installs, reopens) on both, every answer compared (indexes, offsets, batches read by
//! range, term runs, last header, metadata). Segments are small so that cuts, drops and reads
//! cross segment boundaries. Seeded: `PROGLOG_SEED=<n>` replays a run.

use bytes::Bytes;
use consensus::raft::{LogStore, MemStore};
use engine::batch::{self, Kind, NewRecord, Stamp};
use engine::{FileBudget, Log, LogConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 700,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// A batch continuing `store`, of a random kind and size.
fn batch_for(store: &impl LogStore, rng: &mut StdRng, term: u64) -> Vec<u8> {
    let stamp = Stamp {
        kind: Kind::Data,
        base_offset: store.next_offset(),
        term,
        raft_index: store.next_index(),
        commit_index: store.next_index().saturating_sub(rng.random_range(1..5)),
        timestamp_ms: rng.random_range(0..1000),
    };
    let mut out = Vec::new();
    if rng.random_bool(0.25) {
        let kind = [Kind::NoOp, Kind::ConfChange, Kind::Controller][rng.random_range(0..3)];
        let payload: Vec<u8> = (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect();
        batch::encode_with_payload(&mut out, &Stamp { kind, ..stamp }, 0, &payload);
    } else {
        let records: Vec<NewRecord> = (0..rng.random_range(1..4))
            .map(|_| {
                NewRecord::new(Bytes::from(vec![
                    rng.random::<u8>();
                    rng.random_range(0..4000)
                ]))
            })
            .collect();
        batch::encode_into(&mut out, &stamp, &records);
    }
    out
}

async fn compare(log: &Log, mem: &MemStore, ctx: &str, rng: &mut StdRng) {
    assert_eq!(
        (log.first_index(), log.next_index(), log.next_offset()),
        (
            LogStore::first_index(mem),
            LogStore::next_index(mem),
            LogStore::next_offset(mem)
        ),
        "{ctx}: indexes and offsets"
    );
    assert_eq!(
        LogStore::first_offset(log),
        mem.first_offset(),
        "{ctx}: first offset"
    );
    assert_eq!(
        LogStore::term_runs(log).await.expect("runs"),
        LogStore::term_runs(mem).await.expect("runs"),
        "{ctx}: term runs"
    );
    assert_eq!(
        LogStore::last_header(log).await.expect("last"),
        mem.last_header().await.expect("last"),
        "{ctx}: last header"
    );
    let (first, next) = (mem.first_index(), mem.next_index());
    if first < next {
        for _ in 0..3 {
            let from = rng.random_range(first..next);
            let to = rng.random_range(from + 1..=next);
            let max = rng.random_range(1..20_000);
            let a = LogStore::read(log, from, to, max)
                .await
                .expect("engine read");
            let b = mem.read(from, to, max).await.expect("model read");
            let a: Vec<_> = a.iter().map(|b| (b.header, b.bytes.clone())).collect();
            let b: Vec<_> = b.iter().map(|b| (b.header, b.bytes.clone())).collect();
            // The engine may stop earlier or later within its byte budget; the batches it
            // returns are the model's.
            let n = a.len().min(b.len());
            assert!(n >= 1, "{ctx}: read [{from}, {to}) returned nothing");
            assert_eq!(a[..n], b[..n], "{ctx}: read [{from}, {to}) max {max}");
        }
    }
}

async fn run(root: PathBuf, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = root.join("log");
    let mut log = Log::open(&dir, config(), FileBudget::new(8))
        .await
        .expect("open");
    let mem = MemStore::new();
    let mut term = 1;
    for step in 0..400 {
        let ctx = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..=59 => {
                if rng.random_bool(0.05) {
                    term += 1;
                }
                let n = rng.random_range(1..4);
                for _ in 0..n {
                    let b = batch_for(&mem, &mut rng, term);
                    LogStore::append(log.as_ref(), &b)
                        .await
                        .expect("engine append");
                    mem.append(&b).await.expect("model append");
                }
                if rng.random_bool(0.5) {
                    LogStore::sync(log.as_ref()).await.expect("sync");
                    mem.sync().await.expect("sync");
                }
            }
            60..=74 => {
                let (first, next) = (mem.first_index(), mem.next_index());
                let keep = rng.random_range(first.saturating_sub(1)..next);
                LogStore::truncate_after(log.as_ref(), keep)
                    .await
                    .expect("engine cut");
                mem.truncate_after(keep).await.expect("model cut");
            }
            75..=82 => {
                // The engine drops whole segments only: the model drops what the engine did.
                let (first, next) = (mem.first_index(), mem.next_index());
                let want = rng.random_range(first..=next);
                LogStore::truncate_prefix(log.as_ref(), want)
                    .await
                    .expect("engine drop");
                mem.truncate_prefix(log.first_index())
                    .await
                    .expect("model drop");
            }
            83..=85 => {
                let (offset, index) = (mem.next_offset() + 7, mem.next_index() + 3);
                LogStore::reset(log.as_ref(), offset, index)
                    .await
                    .expect("engine reset");
                mem.reset(offset, index).await.expect("model reset");
            }
            86..=88 => {
                // Install a log taken from the model itself, shifted to a new start.
                let other = MemStore::new();
                other
                    .reset(mem.next_offset() + 11, mem.next_index() + 5)
                    .await
                    .expect("reset");
                let mut all = Vec::new();
                for _ in 0..rng.random_range(0..6) {
                    let b = batch_for(&other, &mut rng, term);
                    other.append(&b).await.expect("append");
                    all.extend_from_slice(&b);
                }
                let (o, i) = (other.first_offset(), LogStore::first_index(&other));
                let meta = vec![step as u8; 9];
                LogStore::install(log.as_ref(), o, i, &all, &meta)
                    .await
                    .expect("engine install");
                mem.install(o, i, &all, &meta).await.expect("model install");
                assert_eq!(
                    LogStore::read_meta(log.as_ref()).expect("meta"),
                    mem.read_meta().expect("meta")
                );
            }
            _ => {
                LogStore::sync(log.as_ref()).await.expect("sync");
                mem.sync().await.expect("sync");
                log.close().await.expect("close");
                log = Log::open(&dir, config(), FileBudget::new(8))
                    .await
                    .expect("reopen");
            }
        }
        compare(&log, &mem, &ctx, &mut rng).await;
    }
    log.close().await.expect("close");
}

#[test]
fn engine_log_matches_the_in_memory_store() {
    let seeds: Vec<u64> = match std::env::var("PROGLOG_SEED") {
        Ok(s) => vec![s.trim().parse().expect("PROGLOG_SEED must be a u64")],
        Err(_) => (0..3).map(|_| rand::random::<u64>() >> 1).collect(),
    };
    for seed in seeds {
        eprintln!("seed {seed} (replay with PROGLOG_SEED={seed})");
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        engine::run_local(tmp.path(), move || run(root, seed)).expect("executor");
    }
}
