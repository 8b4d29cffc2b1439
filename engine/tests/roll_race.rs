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

/// A value that says what it is: its first 8 bytes are its offset's writer tag, the rest a
/// pattern of them, so a reader that does not know which writer got an offset can still tell
/// a whole value from a damaged or misplaced one.
fn tagged(tag: u64, len: usize) -> Bytes {
    let mut v = vec![(tag % 251) as u8; len];
    v[..8].copy_from_slice(&tag.to_le_bytes());
    Bytes::from(v)
}

fn whole(v: &[u8]) -> bool {
    let Some(tag) = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return false;
    };
    v[8..].iter().all(|&b| b == (tag % 251) as u8)
}

/// Runs `body` on a shard executor of its own and fails the test if it has not finished
/// within `limit`. The deadline is kept from outside the executor: a task that never yields
/// stops the executor's timers too, so only another thread can tell.
fn within<F, Fut>(what: &str, limit: std::time::Duration, body: F)
where
    F: FnOnce(std::path::PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let shard = std::thread::spawn(move || {
        let dir = root.join("log");
        let r = engine::run_local(&root, move || body(dir));
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(limit) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match shard.join() {
            Ok(r) => r.expect("executor"),
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            // The stuck executor thread is left behind; the temporary directory with it.
            std::mem::forget(tmp);
            panic!("{what}: not finished after {limit:?}: the executor is stuck")
        }
    }
}

/// Reads racing many rolls: a reader reads the newest records (those of the segment being
/// sealed, during a roll) and older ones, again and again, while appenders roll the segment
/// over and over, with a budget of two open sealed segments, so that reads open sealed
/// segments' files themselves and close others. Every read is served whole, and the budget
/// counts what is open: a read while a roll creates the next segment finds the sealed
/// segment's files in place (it used to open them again, the roll then put the writer's
/// over them and the budget counted the segment twice, until closing the least recently used
/// files went round forever and stopped the shard).
#[test]
fn reads_racing_rolls_are_served_whole() {
    for durability in [Durability::Never, Durability::Always] {
        let what = format!("{durability}: reads racing rolls");
        within(
            &what,
            std::time::Duration::from_secs(30),
            move |dir| async move {
                let budget = FileBudget::new(2);
                let log = Log::open(&dir, config(durability), Rc::clone(&budget))
                    .await
                    .expect("open");
                let done = Rc::new(std::cell::Cell::new(false));
                let reader = {
                    let (log, done, budget) =
                        (Rc::clone(&log), Rc::clone(&done), Rc::clone(&budget));
                    glommio::spawn_local(async move {
                        let mut reads = 0u64;
                        while !done.get() {
                            // The newest records (in the segment a roll is sealing, while it
                            // does), and older ones of the segments before.
                            let next = log.visible_end();
                            let at = [1, 4, 12, 40].map(|back| next.saturating_sub(back));
                            for o in at {
                                if o >= next {
                                    continue;
                                }
                                match log.read(o).await {
                                    Ok(r) => assert!(
                                        whole(&r.value),
                                        "{durability}: read({o}) during rolls: not whole"
                                    ),
                                    Err(e) => panic!("{durability}: read({o}) during rolls: {e}"),
                                }
                                reads += 1;
                                assert!(
                                budget.open_segments() <= 2,
                                "{durability}: {} sealed segments counted open with a budget of 2",
                                budget.open_segments()
                            );
                            }
                            // Lets the appenders and their I/O run between two passes.
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                        reads
                    })
                };
                let mut tasks = Vec::new();
                for w in 0..4u64 {
                    let log = Rc::clone(&log);
                    tasks.push(glommio::spawn_local(async move {
                        for i in 0..120u64 {
                            let len = 1500 + ((w * 977 + i * 131) % 2500) as usize;
                            log.append(&[NewRecord::new(tagged(w << 32 | i, len))])
                                .await
                                .unwrap_or_else(|e| {
                                    panic!("{durability}: writer {w} append {i}: {e}")
                                });
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
                done.set(true);
                let reads = reader.await;
                let segments = log.stats().segments;
                assert!(segments > 15, "{segments} segments");
                assert!(
                    reads > 100,
                    "{durability}: only {reads} reads during the rolls"
                );
                for o in 0..log.next_offset() {
                    let r = log
                        .read(o)
                        .await
                        .unwrap_or_else(|e| panic!("{durability}: read({o}) after the rolls: {e}"));
                    assert!(whole(&r.value), "{durability}: value of {o}");
                }
                log.close().await.expect("close");
                assert_eq!(
                    budget.open_segments(),
                    0,
                    "{durability}: sealed segments counted open after the log closed"
                );
            },
        );
    }
}
