//! Bad input to the log and the engine: over-limit records and batches, offsets outside the
//! log, foreign files in a log directory, a damaged catalog, a locked data directory, unknown
//! topics and bad names. Plus the engine's routing: partitions over two shards, appends from
//! plain threads, and topics surviving a restart.

use crate::common;

use bytes::Bytes;
use common::{engine_config, start, topic_config};
use engine::{Engine, EngineConfig, Error, FileBudget, Log, LogConfig, NewRecord};
use futures_lite::future::block_on;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn limits() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_record_bytes: 1000,
        max_batch_bytes: 4000,
        max_batch_records: 5,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

fn recs(lens: &[usize]) -> Vec<NewRecord> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| NewRecord::new(Bytes::from(vec![i as u8 + 1; n])))
        .collect()
}

fn run<F, Fut>(dir: &Path, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    engine::run_local(dir, f).expect("executor");
}

#[test]
fn over_limit_records_and_batches_are_refused_and_the_log_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, limits(), FileBudget::new(4))
            .await
            .expect("open");
        log.append(&recs(&[10])).await.expect("append");
        for term in [None, Some(3u64)] {
            let append = |r: Vec<NewRecord>| {
                let log = &log;
                async move {
                    match term {
                        None => log.append(&r).await,
                        Some(t) => log.append_with_term(t, &r).await,
                    }
                }
            };
            let e = append(recs(&[1001]))
                .await
                .expect_err("record over the limit");
            assert!(
                matches!(
                    e,
                    Error::RecordTooLarge {
                        size: 1001,
                        limit: 1000
                    }
                ),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("1001") && msg.contains("1000"), "{msg}");
            assert!(e.is_client_error());

            let e = append(recs(&[10, 10, 1001]))
                .await
                .expect_err("one record over");
            assert!(
                matches!(e, Error::RecordTooLarge { size: 1001, .. }),
                "{e:?}"
            );

            // 5 records of 900 bytes: 4540 payload bytes with their record headers.
            let e = append(recs(&[900; 5]))
                .await
                .expect_err("batch over max_batch_bytes");
            assert!(
                matches!(
                    e,
                    Error::BatchTooLarge {
                        size: 4540,
                        limit: 4000,
                        unit: "bytes"
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("4540 bytes"), "{e}");

            let e = append(recs(&[1; 6]))
                .await
                .expect_err("batch over max_batch_records");
            assert!(
                matches!(
                    e,
                    Error::BatchTooLarge {
                        size: 6,
                        limit: 5,
                        unit: "records"
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("6 records"), "{e}");

            let e = append(Vec::new()).await.expect_err("empty batch");
            match &e {
                Error::InvalidArgument(m) => assert!(m.contains("at least one record"), "{m}"),
                other => panic!("empty batch gave {other:?}"),
            }
            assert_eq!(
                log.next_offset(),
                log.stats().records_appended,
                "nothing was appended"
            );
        }
        // Exactly at the limits is fine: a 1000-byte record, 5 records, 4000 payload bytes.
        let n0 = log.next_offset();
        log.append(&recs(&[1000]))
            .await
            .expect("record at the limit");
        log.append(&recs(&[1; 5]))
            .await
            .expect("records at the limit");
        log.append(&recs(&[992; 4]))
            .await
            .expect("bytes at the limit");
        assert_eq!(log.next_offset(), n0 + 10);
        let r = log.read(n0).await.expect("read");
        assert_eq!(r.value.len(), 1000);
        let r = log.read(n0 + 9).await.expect("read");
        assert_eq!(&r.value[..], &[4u8; 992][..]);
        assert_eq!(&log.read(0).await.expect("read").value[..], &[1u8; 10][..]);
        log.close().await.expect("close");
    });
}

#[test]
fn config_out_of_bounds_is_refused_with_its_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let bad = [
            (
                LogConfig {
                    segment_bytes: 1000,
                    ..limits()
                },
                "segment_bytes",
            ),
            (
                LogConfig {
                    max_batch_records: 0,
                    ..limits()
                },
                "max_batch_records",
            ),
            (
                LogConfig {
                    max_record_bytes: 5000,
                    ..limits()
                },
                "max_batch_bytes",
            ),
            (
                LogConfig {
                    flush_ms: 0,
                    ..limits()
                },
                "flush_ms",
            ),
        ];
        for (config, name) in bad {
            match Log::open(&dir, config, FileBudget::new(4)).await {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(name), "{name}: {m}"),
                Err(e) => panic!("{name}: {e:?}"),
                Ok(_) => panic!("{name}: a bad config was accepted"),
            }
        }
    });
}

fn assert_oor(
    what: &str,
    r: Result<impl std::fmt::Debug, Error>,
    offset: u64,
    lowest: u64,
    next: u64,
) {
    match r {
        Err(e @ Error::OffsetOutOfRange { .. }) => {
            let Error::OffsetOutOfRange {
                offset: o,
                lowest: l,
                next: n,
            } = e
            else {
                unreachable!()
            };
            assert_eq!((o, l, n), (offset, lowest, next), "{what}");
            assert!(e.to_string().contains("out of range"), "{what}: {e}");
            assert!(e.is_client_error());
        }
        other => panic!("{what}: expected OffsetOutOfRange, got {other:?}"),
    }
}

#[test]
fn offsets_outside_the_log_are_out_of_range() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, limits(), FileBudget::new(4))
            .await
            .expect("open");
        assert_oor("empty log", log.read(0).await, 0, 0, 0);
        for i in 0..200u64 {
            log.append(&recs(&[900])).await.expect("append");
            assert_eq!(log.next_offset(), i + 1);
        }
        log.truncate_prefix(100).await.expect("truncate");
        let (lo, next) = (log.lowest_offset(), log.next_offset());
        assert!(lo > 0 && lo <= 101, "lowest {lo}");
        assert_oor("below lowest", log.read(0).await, 0, lo, next);
        assert_oor(
            "just below lowest",
            log.read(lo - 1).await,
            lo - 1,
            lo,
            next,
        );
        assert_oor("at next", log.read(next).await, next, lo, next);
        assert_oor("far past", log.read(u64::MAX).await, u64::MAX, lo, next);
        assert_oor(
            "range at next",
            log.read_range(next, 10, 1000).await,
            next,
            lo,
            next,
        );
        assert_oor(
            "range below",
            log.read_range(lo - 1, 10, 1000).await,
            lo - 1,
            lo,
            next,
        );
        assert_oor("term_of at next", log.term_of(next).await, next, lo, next);
        assert_oor("term_of below", log.term_of(0).await, 0, lo, next);
        assert_eq!(log.read(lo).await.expect("lowest").offset, lo);
        assert_eq!(log.read(next - 1).await.expect("last").offset, next - 1);
        // truncate_suffix below the log's start is refused and changes nothing.
        match log.truncate_suffix(lo - 2).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(&lo.to_string()), "{m}"),
            other => panic!("truncate_suffix below lowest: {other:?}"),
        }
        assert_eq!((log.lowest_offset(), log.next_offset()), (lo, next));
        log.close().await.expect("close");
        assert!(matches!(
            log.append(&recs(&[1])).await,
            Err(Error::ShutDown)
        ));
    });
}

fn open_err(dir: PathBuf) -> Result<(u64, u64), Error> {
    let root = dir.parent().expect("parent").to_owned();
    engine::run_local(&root, move || async move {
        let log = Log::open(&dir, limits(), FileBudget::new(4)).await?;
        let r = (log.lowest_offset(), log.next_offset());
        log.close().await?;
        Ok(r)
    })
    .expect("executor")
}

#[test]
fn foreign_files_in_a_log_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in [
        "garbage.log",
        "123.log",
        "0000000000000000000x.log",
        "abc.index",
        "00000000000000000000000.log",
    ] {
        let dir = tmp.path().join(format!("foreign-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), b"not ours").expect("write");
        match open_err(dir.clone()) {
            Err(e @ Error::Foreign { .. }) => {
                let Error::Foreign { path, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &dir.join(name), "{name}");
                assert!(e.to_string().contains(name), "{name}: {e}");
            }
            other => panic!("{name}: expected Foreign, got {other:?}"),
        }
        assert!(
            dir.join(name).exists(),
            "{name}: a foreign file must not be touched"
        );
    }
    // Unrelated files are ignored; our leftovers (temporary files, an index without its
    // data) are removed.
    let dir = tmp.path().join("mixed");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("README"), b"notes").expect("write");
    std::fs::write(dir.join("notes.txt"), b"notes").expect("write");
    std::fs::write(dir.join("catalog.meta.tmp"), b"half").expect("write");
    std::fs::write(dir.join(format!("{:020}.index", 77)), [1u8; 64]).expect("write");
    assert_eq!(open_err(dir.clone()).expect("open"), (0, 0));
    assert!(dir.join("README").exists() && dir.join("notes.txt").exists());
    assert!(!dir.join("catalog.meta.tmp").exists(), "stray .tmp removed");
    assert!(
        !dir.join(format!("{:020}.index", 77)).exists(),
        "orphan index removed"
    );
}

#[test]
fn a_data_file_of_garbage_recovers_to_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for (base, bytes) in [
        (0u64, junk(10_000)),
        (500, junk(4096)),
        (0, vec![0u8; 8192]),
        (0, Vec::new()),
        (42, junk(3)),
    ] {
        let dir = tmp.path().join(format!("g-{base}-{}", bytes.len()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("{base:020}.log")), &bytes).expect("write");
        let d = dir.clone();
        run(tmp.path(), move || async move {
            let log = Log::open(&d, limits(), FileBudget::new(4))
                .await
                .unwrap_or_else(|e| panic!("base {base}: open: {e}"));
            assert_eq!((log.lowest_offset(), log.next_offset()), (base, base));
            let a = log.append(&recs(&[5, 6])).await.expect("append");
            assert_eq!(a.base_offset, base);
            log.close().await.expect("close");
            let log = Log::open(&d, limits(), FileBudget::new(4))
                .await
                .expect("reopen");
            assert_eq!(log.next_offset(), base + 2);
            assert_eq!(
                &log.read(base + 1).await.expect("read").value[..],
                &[2u8; 6][..]
            );
            log.close().await.expect("close");
        });
    }
    // Garbage in a sealed segment (before the active one) is reported when read, not
    // returned and not a panic.
    let dir = tmp.path().join("sealed-garbage");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(format!("{:020}.log", 0)), junk(20_000)).expect("write");
    std::fs::write(dir.join(format!("{:020}.log", 1000)), b"").expect("write");
    let d = dir.clone();
    run(tmp.path(), move || async move {
        let log = Log::open(&d, limits(), FileBudget::new(4))
            .await
            .expect("open");
        assert_eq!((log.lowest_offset(), log.next_offset()), (0, 1000));
        for o in [0u64, 1, 500, 999] {
            match log.read(o).await {
                // The index is rebuilt from the data and finds nothing: either file of the
                // segment may be named.
                Err(Error::Corrupt { path, .. }) => assert!(
                    path == d.join(format!("{:020}.log", 0))
                        || path == d.join(format!("{:020}.index", 0)),
                    "read({o}): {}",
                    path.display()
                ),
                other => panic!("read({o}) of a garbage sealed segment gave {other:?}"),
            }
        }
        assert!(matches!(
            log.read_range(0, 10, 10_000).await,
            Err(Error::Corrupt { .. })
        ));
        let a = log
            .append(&recs(&[3]))
            .await
            .expect("append after the garbage");
        assert_eq!(a.base_offset, 1000);
        log.close().await.expect("close");
    });
}

// ------------------------------------------------------------------------------ engine

fn meta_file(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x4154_454Du32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn a_damaged_catalog_stops_the_start_with_its_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    block_on(engine.handle().create_topic("t", 2, topic_config())).expect("create");
    engine.shutdown();
    let path = dir.join("catalog.meta");
    let good = std::fs::read(&path).expect("catalog");
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("flipped payload byte", flipped),
        ("cut to 5 bytes", good[..5].to_vec()),
        ("cut inside the payload", good[..good.len() - 3].to_vec()),
        ("empty", Vec::new()),
        (
            "not a metadata file",
            b"{\"version\":1,\"topics\":{}}".to_vec(),
        ),
        ("payload is not JSON", meta_file(b"this is not json")),
        (
            "unknown catalog version",
            meta_file(b"{\"version\":7,\"topics\":{}}"),
        ),
        (
            "topic with a bad name",
            meta_file(br#"{"version":1,"topics":{"../x":{"partitions":1,"config":{}}}}"#),
        ),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&path, &bytes).expect("damage");
        match Engine::start(engine_config(&dir)) {
            Ok(_) => panic!("{what}: the engine started on a damaged catalog"),
            Err(e) => {
                let msg = e.to_string();
                if what != "topic with a bad name" {
                    assert!(msg.contains("catalog.meta"), "{what}: {msg}");
                } else {
                    assert!(msg.contains("../x"), "{what}: {msg}");
                }
            }
        }
    }
    std::fs::write(&path, &good).expect("restore");
    let engine = start(&dir);
    assert_eq!(engine.handle().list_topics().expect("list").len(), 1);
    engine.shutdown();
}

#[test]
fn a_second_engine_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let first = start(&dir);
    match Engine::start(engine_config(&dir)) {
        Ok(_) => panic!("two engines run on one data directory"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("lock"), "{msg}");
            assert!(msg.contains("LOCK"), "names the lock file: {msg}");
        }
    }
    // The first engine is unaffected.
    let h = first.handle();
    block_on(h.create_topic("still-here", 1, topic_config())).expect("create");
    first.shutdown();
    let again = start(&dir);
    assert_eq!(
        again.handle().list_topics().expect("list")[0].name,
        "still-here"
    );
    again.shutdown();
}

#[test]
fn unknown_topics_partitions_and_bad_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = start(&tmp.path().join("data"));
    let h = engine.handle();
    block_on(async {
        h.create_topic("known", 3, topic_config())
            .await
            .expect("create");
        match h.append("unknown", 0, recs(&[1])).await {
            Err(Error::UnknownTopic(t)) => assert_eq!(t, "unknown"),
            other => panic!("append to an unknown topic: {other:?}"),
        }
        assert!(matches!(
            h.read("unknown", 0, 0).await,
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            h.stats("unknown", 0).await,
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            h.delete_topic("unknown").await,
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(h.topic("unknown"), Err(Error::UnknownTopic(_))));
        match h.append("known", 3, recs(&[1])).await {
            Err(e @ Error::UnknownPartition { .. }) => {
                assert!(matches!(
                    e,
                    Error::UnknownPartition {
                        partition: 3,
                        partitions: 3,
                        ..
                    }
                ));
                assert!(e.to_string().contains("no partition 3"), "{e}");
            }
            other => panic!("append to partition 3 of 3: {other:?}"),
        }
        assert!(matches!(
            h.read("known", u32::MAX, 0).await,
            Err(Error::UnknownPartition { .. })
        ));
        let long = "x".repeat(250);
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "../etc",
            "with space",
            "tab\t",
            "é",
            "a\0b",
            long.as_str(),
        ] {
            match h.create_topic(name, 1, topic_config()).await {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.contains("topic name"), "{name:?}: {m}")
                }
                other => panic!("topic name {name:?}: {other:?}"),
            }
        }
        h.create_topic(&"y".repeat(249), 1, topic_config())
            .await
            .expect("a 249-character name is fine");
        h.create_topic("Ok.name_with-all-1", 1, topic_config())
            .await
            .expect("allowed characters");
        for n in [0u32, 4097] {
            match h.create_topic("parts", n, topic_config()).await {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("partitions"), "{n}: {m}"),
                other => panic!("{n} partitions: {other:?}"),
            }
        }
        let bad = LogConfig {
            segment_bytes: 10,
            ..topic_config()
        };
        assert!(matches!(
            h.create_topic("badcfg", 1, bad).await,
            Err(Error::InvalidArgument(_))
        ));
        match h.create_topic("known", 5, topic_config()).await {
            Err(Error::TopicExists(t)) => assert_eq!(t, "known"),
            other => panic!("duplicate topic: {other:?}"),
        }
        assert_eq!(
            h.topic("known").expect("topic").partitions,
            3,
            "the first one stays"
        );
        let names: BTreeSet<String> = h
            .list_topics()
            .expect("list")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert!(
            !names.contains("parts") && !names.contains("badcfg"),
            "{names:?}"
        );
        // Client errors leave the engine working.
        let a = h.append("known", 2, recs(&[7])).await.expect("append");
        assert_eq!(a.base_offset, 0);
    });
    engine.shutdown();
}

#[test]
fn partitions_spread_over_shards_and_appends_from_many_threads_are_dense() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    assert_eq!(h.shards(), 2);
    assert_eq!(h.current_shard(), None, "a plain thread is no shard");
    let parts = 16u32;
    let described = block_on(async {
        h.create_topic("spread", parts, topic_config())
            .await
            .expect("create");
        h.describe_topic("spread").await.expect("describe")
    });
    let shards: BTreeSet<usize> = described.iter().map(|p| p.shard).collect();
    assert_eq!(
        shards,
        BTreeSet::from([0, 1]),
        "16 partitions over 2 shards"
    );
    for p in &described {
        assert_eq!(p.shard, h.shard_of("spread", p.partition));
    }
    // From this plain thread.
    let a = block_on(h.append("spread", 0, recs(&[3]))).expect("append");
    assert_eq!(a.base_offset, 0);
    // From many threads at once: every thread appends to every partition.
    let threads = 8u32;
    let per = 40u32;
    let joins: Vec<_> = (0..threads)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for i in 0..per {
                    let p = (t + i) % parts;
                    let v =
                        Bytes::from(format!("thread {t} append {i} partition {p}").into_bytes());
                    let n = 1 + (i % 3) as usize;
                    let batch: Vec<NewRecord> = (0..n).map(|_| NewRecord::new(v.clone())).collect();
                    let a = block_on(h.append("spread", p, batch))
                        .unwrap_or_else(|e| panic!("thread {t}: {e}"));
                    assert_eq!(a.last_offset - a.base_offset + 1, n as u64);
                    out.push((p, a.base_offset, n, v));
                }
                out
            })
        })
        .collect();
    let mut by_part: BTreeMap<u32, Vec<(u64, usize, Bytes)>> = BTreeMap::new();
    by_part
        .entry(0)
        .or_default()
        .push((0, 1, Bytes::from(vec![1u8; 3])));
    for j in joins {
        for (p, base, n, v) in j.join().expect("thread") {
            by_part.entry(p).or_default().push((base, n, v));
        }
    }
    let check = |h: &engine::EngineHandle, by_part: &BTreeMap<u32, Vec<(u64, usize, Bytes)>>| {
        for (p, list) in by_part {
            let mut list = list.clone();
            list.sort_by_key(|x| x.0);
            let mut next = 0u64;
            for (base, n, _) in &list {
                assert_eq!(*base, next, "partition {p}: offsets are dense");
                next += *n as u64;
            }
            let all = block_on(h.read_range("spread", *p, 0, usize::MAX, usize::MAX))
                .expect("read_range");
            assert_eq!(all.len() as u64, next, "partition {p}");
            for (base, n, v) in &list {
                for k in 0..*n as u64 {
                    assert_eq!(
                        all[(base + k) as usize].value,
                        *v,
                        "partition {p} offset {}",
                        base + k
                    );
                }
            }
            assert_eq!(
                block_on(h.stats("spread", *p)).expect("stats").next_offset,
                next
            );
        }
    };
    check(&h, &by_part);
    let before: Vec<_> = block_on(h.describe_topic("spread")).expect("describe");
    engine.shutdown();
    assert!(matches!(
        block_on(h.append("spread", 0, recs(&[1]))),
        Err(Error::ShutDown)
    ));

    // The catalog brings the topic back after a restart, with its settings and data.
    let engine = start(&dir);
    let h = engine.handle();
    let t = h.topic("spread").expect("topic survives a restart");
    assert_eq!((t.partitions, t.config), (parts, topic_config()));
    check(&h, &by_part);
    let after: Vec<_> = block_on(h.describe_topic("spread")).expect("describe");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (
                b.partition,
                b.shard,
                b.stats.lowest_offset,
                b.stats.next_offset
            ),
            (
                a.partition,
                a.shard,
                a.stats.lowest_offset,
                a.stats.next_offset
            )
        );
    }
    let a = block_on(h.append("spread", 5, recs(&[1]))).expect("append after restart");
    assert_eq!(
        a.base_offset, after[5].stats.next_offset,
        "offsets continue"
    );
    // A deleted topic stays deleted after a restart.
    block_on(h.create_topic("gone", 2, topic_config())).expect("create");
    block_on(h.delete_topic("gone")).expect("delete");
    engine.shutdown();
    let engine = start(&dir);
    assert!(matches!(
        engine.handle().topic("gone"),
        Err(Error::UnknownTopic(_))
    ));
    assert!(!dir.join("topics").join("gone").exists());
    engine.shutdown();
}

#[test]
fn a_cpuset_sets_the_shard_count_and_one_outside_the_mask_is_refused() {
    let allowed = engine::cpus::allowed();
    let last = *allowed.last().expect("an affinity mask");
    let tmp = tempfile::tempdir().expect("tempdir");
    // --shards 0 with a cpuset: one shard per CPU of the list.
    let engine = Engine::start(EngineConfig {
        shards: 0,
        pin: true,
        cpuset: Some(vec![last]),
        ..engine_config(&tmp.path().join("one"))
    })
    .unwrap_or_else(|e| panic!("start: {e}"));
    assert_eq!(engine.handle().shards(), 1);
    engine.shutdown();
    // More shards than CPUs: the ones beyond share the list's CPUs.
    let engine = Engine::start(EngineConfig {
        shards: 3,
        pin: true,
        cpuset: Some(vec![last]),
        ..engine_config(&tmp.path().join("three"))
    })
    .unwrap_or_else(|e| panic!("start: {e}"));
    assert_eq!(engine.handle().shards(), 3);
    engine.shutdown();
    let outside = last + 1;
    let e = Engine::start(EngineConfig {
        pin: true,
        cpuset: Some(vec![outside]),
        ..engine_config(&tmp.path().join("outside"))
    })
    .err()
    .expect("a CPU outside the mask is refused");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "cpuset: CPU {outside} is not one this process may run on"
        )),
        "{e}"
    );
}

#[test]
fn a_partition_directory_gone_under_a_kept_catalog_is_marked_lost_at_the_next_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic("t", 2, topic_config())).expect("create");
    block_on(h.append("t", 1, recs(&[10, 20]))).expect("append");
    let lost = |p: u32| dir.join(format!("topics/t/{p}/lost.meta"));
    assert!(
        !lost(0).exists() && !lost(1).exists(),
        "a new topic is not lost"
    );
    engine.shutdown();

    std::fs::remove_dir_all(dir.join("topics/t/1")).expect("remove");
    for round in 0..2 {
        let engine = start(&dir);
        let h = engine.handle();
        assert!(
            lost(1).exists(),
            "round {round}: partition 1 is marked lost"
        );
        assert!(!lost(0).exists(), "round {round}: partition 0 is not");
        let why = String::from_utf8_lossy(&std::fs::read(lost(1)).expect("read")).into_owned();
        assert!(why.contains("was missing at start"), "{why}");
        // The engine alone (no Raft group to keep out) serves the empty log.
        assert!(block_on(h.stats("t", 1)).is_ok());
        engine.shutdown();
    }
}

#[test]
fn a_topic_held_in_part_opens_only_its_partitions_and_they_come_and_go() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let part = |p: u32| dir.join(format!("topics/t/{p}"));
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic_holding("t", 4, topic_config(), &[3, 1])).expect("create");
    assert_eq!(h.held_partitions("t").expect("held"), vec![1, 3]);
    assert!(part(1).exists() && part(3).exists());
    assert!(!part(0).exists() && !part(2).exists(), "only the held ones");
    assert!(block_on(h.stats("t", 1)).is_ok());
    assert!(
        block_on(h.stats("t", 0)).is_err(),
        "no log of a partition not held"
    );
    assert_eq!(h.topic("t").expect("topic").partitions, 4);
    let kept = block_on(h.append("t", 1, recs(&[10, 20]))).expect("append");
    assert!(matches!(
        block_on(h.create_topic_holding("u", 2, topic_config(), &[2])),
        Err(Error::InvalidArgument(_))
    ));

    block_on(h.open_partition("t", 2)).expect("open 2");
    assert!(part(2).exists());
    assert!(block_on(h.stats("t", 2)).is_ok());
    block_on(h.close_partition("t", 1, false)).expect("close 1, keeping it");
    assert!(part(1).exists(), "its data kept");
    assert!(block_on(h.stats("t", 1)).is_err());
    block_on(h.close_partition("t", 3, true)).expect("close 3, removing it");
    assert!(!part(3).exists());
    assert_eq!(h.held_partitions("t").expect("held"), vec![2]);
    engine.shutdown();

    // A restart opens what is held, and only that; the kept directory stays.
    let engine = start(&dir);
    let h = engine.handle();
    assert_eq!(h.held_partitions("t").expect("held"), vec![2]);
    assert!(block_on(h.stats("t", 2)).is_ok());
    assert!(block_on(h.stats("t", 1)).is_err());
    assert!(part(1).exists() && !part(0).exists() && !part(3).exists());
    assert!(!dir.join("topics/t/2/lost.meta").exists());
    // Held again, the kept data is there.
    block_on(h.open_partition("t", 1)).expect("open 1 again");
    let r = block_on(h.read("t", 1, kept.base_offset + 1)).expect("read kept record");
    assert_eq!(r.value.len(), 20);
    engine.shutdown();

    let engine = start(&dir);
    let h = engine.handle();
    assert_eq!(h.held_partitions("t").expect("held"), vec![1, 2]);
    assert!(block_on(h.stats("t", 1)).is_ok());
    // A deletion removes every directory of the topic, held or not.
    block_on(h.close_partition("t", 2, false)).expect("close 2");
    block_on(h.delete_topic("t")).expect("delete");
    assert!(!dir.join("topics/t").exists());
    // Held whole, a topic's entry is written as before (no list of held partitions).
    block_on(h.create_topic_holding("w", 2, topic_config(), &[1, 0])).expect("create w");
    let catalog = std::fs::read(dir.join("catalog.meta")).expect("read catalog");
    assert!(!String::from_utf8_lossy(&catalog).contains("held"));
    engine.shutdown();

    // A list of held partitions that is not one (out of order, or past the topic's) is a
    // damaged catalog, named at start.
    let catalog = String::from_utf8_lossy(&catalog[16..]).into_owned();
    let bad = catalog.replacen(
        "\"partitions\": 2,",
        "\"partitions\": 2, \"held\": [1, 0],",
        1,
    );
    assert_ne!(bad, catalog);
    std::fs::write(dir.join("catalog.meta"), meta_file(bad.as_bytes())).expect("write");
    match Engine::start(engine_config(&dir)) {
        Err(e) => assert!(e.to_string().contains("held partitions"), "{e}"),
        Ok(_) => panic!("a damaged list of held partitions was accepted"),
    }
}
