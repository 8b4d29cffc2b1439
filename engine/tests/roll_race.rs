//! Appends that run while another append rolls the segment.
//!
//! A roll first writes out and syncs the active segment, cuts the file to the segment's size,
//! syncs it and seals its index, then takes its writer and starts a new segment. An append that arrives while the roll
//! awaits must not land in the old segment's buffer after it was written out (its bytes would
//! never reach the file, which gets extended with zeros instead, while the append is reported
//! durable), and must not fail while the old segment has no writer any more.

use bytes::Bytes;
use engine::{Durability, FileBudget, Log, LogConfig, NewRecord};
use std::rc::Rc;

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        segment_bytes: 64 * 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

fn value(i: u64, len: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; len];
    v[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
    Bytes::from(v)
}

#[test]
fn an_append_during_a_roll_is_durable_and_reads_back() {
    for durability in [Durability::Always, Durability::Never] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        engine::run_local(tmp.path(), move || async move {
            let log = Log::open(&dir, config(durability), FileBudget::new(4))
                .await
                .expect("open");
            // Fill the first segment to within 1000 bytes of its limit.
            let mut expected: Vec<Bytes> = Vec::new();
            while log.stats().size_bytes < 64 * 1024 - 1000 - 4096 {
                let v = value(expected.len() as u64, 4000);
                log.append(&[NewRecord::new(v.clone())])
                    .await
                    .expect("fill");
                expected.push(v);
            }
            let room = 64 * 1024 - log.stats().size_bytes as usize;
            assert!(room > 200, "room {room}");
            let first = expected.len() as u64;
            // Task 1 needs a roll; tasks 2.. fit in the old segment and arrive while the roll
            // waits for its write-out and sync.
            let big = value(first, room + 100);
            let mut tasks = Vec::new();
            {
                let log = Rc::clone(&log);
                let v = big.clone();
                tasks.push(glommio::spawn_local(async move {
                    log.append(&[NewRecord::new(v)]).await
                }));
            }
            let small: Vec<Bytes> = (1..6).map(|i| value(first + i, 20)).collect();
            for v in &small {
                let log = Rc::clone(&log);
                let v = v.clone();
                tasks.push(glommio::spawn_local(async move {
                    glommio::yield_if_needed().await;
                    log.append(&[NewRecord::new(v)]).await
                }));
            }
            let mut got = Vec::new();
            for (i, t) in tasks.into_iter().enumerate() {
                let a = t.await.unwrap_or_else(|e| {
                    panic!("{durability}: append {i} during the roll failed: {e}")
                });
                got.push(a.base_offset);
            }
            let mut all: Vec<(u64, Bytes)> = expected
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, v.clone()))
                .collect();
            all.push((got[0], big.clone()));
            for (i, v) in small.iter().enumerate() {
                all.push((got[i + 1], v.clone()));
            }
            all.sort_by_key(|x| x.0);
            for (i, (o, _)) in all.iter().enumerate() {
                assert_eq!(*o, i as u64, "{durability}: offsets are dense");
            }
            assert!(log.stats().segments >= 2, "the big record rolled");
            for (o, v) in &all {
                let r = log
                    .read(*o)
                    .await
                    .unwrap_or_else(|e| panic!("{durability}: read({o}) after the roll: {e}"));
                assert!(r.value == *v, "{durability}: value of {o}");
            }
            log.close().await.expect("close");
            drop(log);
            let log = Log::open(&dir, config(durability), FileBudget::new(4))
                .await
                .expect("reopen");
            assert_eq!(
                log.next_offset(),
                all.len() as u64,
                "{durability}: next after reopen"
            );
            for (o, v) in &all {
                let r = log
                    .read(*o)
                    .await
                    .unwrap_or_else(|e| panic!("{durability}: read({o}) after reopen: {e}"));
                assert!(r.value == *v, "{durability}: value of {o} after reopen");
            }
            log.close().await.expect("close");
        })
        .expect("executor");
    }
}

/// Many concurrent appenders over many rolls: every append succeeds and every record reads
/// back after a reopen.
#[test]
fn concurrent_appenders_across_many_rolls() {
    for durability in [Durability::Always, Durability::Never] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        engine::run_local(tmp.path(), move || async move {
            let log = Log::open(&dir, config(durability), FileBudget::new(2))
                .await
                .expect("open");
            let mut tasks = Vec::new();
            for w in 0..8u64 {
                let log = Rc::clone(&log);
                tasks.push(glommio::spawn_local(async move {
                    let mut mine = Vec::new();
                    for i in 0..60u64 {
                        let len = ((w * 977 + i * 131) % 3000) as usize + 8;
                        let v = value(w << 32 | i, len);
                        let a = log
                            .append(&[NewRecord::new(v.clone())])
                            .await
                            .unwrap_or_else(|e| panic!("{durability}: writer {w} append {i}: {e}"));
                        mine.push((a.base_offset, v));
                    }
                    mine
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await);
            }
            all.sort_by_key(|x| x.0);
            assert!(
                log.stats().segments > 10,
                "{} segments",
                log.stats().segments
            );
            log.close().await.expect("close");
            drop(log);
            let log = Log::open(&dir, config(durability), FileBudget::new(2))
                .await
                .expect("reopen");
            assert_eq!(log.next_offset(), all.len() as u64);
            for (i, (o, v)) in all.iter().enumerate() {
                assert_eq!(*o, i as u64, "{durability}: dense offsets");
                let r = log
                    .read(*o)
                    .await
                    .unwrap_or_else(|e| panic!("{durability}: read({o}) after reopen: {e}"));
                assert!(r.value == *v, "{durability}: value of {o}");
            }
            log.close().await.expect("close");
        })
        .expect("executor");
    }
}
