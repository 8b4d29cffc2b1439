//! A log whose newest segment files were deleted while its directory (and every metadata
//! file) stayed: `newest.meta` records the newest segment the log made, once its files are
//! durable, so the log found without it at open is marked lost (`lost.meta`) before anything
//! is made there, where nothing else could show it (the log reads as a shorter, valid log).
//! What legitimately removes newest segments (a truncation, a reset) never looks like it.

use bytes::Bytes;
use engine::{FileBudget, Log, LogConfig, NewRecord, LOST_META, NEWEST_META};
use std::path::{Path, PathBuf};

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

fn run<F, Fut>(dir: &Path, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    engine::run_local(dir, f).expect("executor");
}

/// The segment data files of `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// The base offset of a segment data file, from its name.
fn base_of(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment's name")
}

/// Deletes the newest `n` segments' files (`.log` and `.index`); returns the base offset of
/// the oldest one deleted.
fn delete_newest(dir: &Path, n: usize) -> u64 {
    let files = segment_files(dir);
    assert!(files.len() > n, "{} segments, {n} to delete", files.len());
    let doomed = &files[files.len() - n..];
    for f in doomed {
        std::fs::remove_file(f).expect("rm .log");
        std::fs::remove_file(f.with_extension("index")).expect("rm .index");
    }
    base_of(&doomed[0])
}

/// The base offset `newest.meta` records, if it is there.
fn recorded_newest(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join(NEWEST_META)).ok()?;
    Some(u64::from_le_bytes(
        bytes[16..24].try_into().expect("8 bytes"),
    ))
}

/// 200 records of 1 KiB, durable: four segments of 64 KiB.
async fn fill(log: &Log) {
    for i in 0..200u32 {
        let value = Bytes::from(vec![b'a' + (i % 26) as u8; 1024]);
        log.append(&[NewRecord::new(value)]).await.expect("append");
    }
    log.sync().await.expect("sync");
}

async fn open(dir: &Path) -> std::rc::Rc<Log> {
    Log::open(dir, small(), FileBudget::new(16))
        .await
        .expect("open")
}

#[test]
fn a_log_whose_newest_segments_were_deleted_opens_marked_lost() {
    for deleted in [1, 2] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        let d = dir.clone();
        run(tmp.path(), move || async move {
            let log = open(&d).await;
            fill(&log).await;
            log.close().await.expect("close");
            let files = segment_files(&d);
            assert!(files.len() >= 3, "{} segments", files.len());
            let newest = base_of(files.last().expect("a segment"));
            assert_eq!(recorded_newest(&d), Some(newest), "recorded at each roll");

            let from = delete_newest(&d, deleted);
            let log = open(&d).await;
            let why = log.lost().expect("read").unwrap_or_else(|| {
                panic!("{deleted} newest segment(s) deleted, the log is not marked lost")
            });
            println!("{deleted} deleted: {why}");
            assert!(why.contains("newest segment"), "{why}");
            // The engine alone serves what is left, and goes on from its end.
            assert_eq!(log.next_offset(), from);
            let a = log
                .append(&[NewRecord::new(Bytes::from_static(b"after"))])
                .await
                .expect("append after");
            assert_eq!(a.base_offset, from);
            log.close().await.expect("close");
            // The mark stays, with its first reason; the record follows what is there now.
            let log = open(&d).await;
            assert_eq!(log.lost().expect("read").as_deref(), Some(why.as_str()));
            let now = base_of(segment_files(&d).last().expect("a segment"));
            assert_eq!(recorded_newest(&d), Some(now));
            log.close().await.expect("close");
        });
    }
}

#[test]
fn a_log_whose_segment_files_were_all_deleted_opens_marked_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let d = dir.clone();
    run(tmp.path(), move || async move {
        let log = open(&d).await;
        fill(&log).await;
        log.close().await.expect("close");
        for f in segment_files(&d) {
            std::fs::remove_file(&f).expect("rm .log");
            std::fs::remove_file(f.with_extension("index")).expect("rm .index");
        }
        let log = open(&d).await;
        let why = log.lost().expect("read").expect("marked lost");
        assert!(why.contains("segment files are gone"), "{why}");
        log.close().await.expect("close");
    });
}

#[test]
fn truncations_and_resets_are_not_taken_for_deletions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let d = dir.clone();
    run(tmp.path(), move || async move {
        let log = open(&d).await;
        fill(&log).await;
        assert!(segment_files(&d).len() >= 3);
        // A follower's conflicting tail: every segment after the first deleted.
        log.truncate_suffix(10).await.expect("truncate");
        assert_eq!(segment_files(&d).len(), 1);
        assert_eq!(recorded_newest(&d), Some(0));
        log.close().await.expect("close");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None, "after a truncation");
        assert_eq!(log.next_offset(), 11);
        fill(&log).await;
        // A snapshot's install: every segment deleted, the log starts again further on.
        log.reset(5000).await.expect("reset");
        assert_eq!(recorded_newest(&d), Some(5000));
        log.close().await.expect("close");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None, "after a reset");
        assert_eq!(log.next_offset(), 5000);
        log.close().await.expect("close");
    });
}

#[test]
fn a_log_without_the_record_gets_it_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let d = dir.clone();
    run(tmp.path(), move || async move {
        let log = open(&d).await;
        fill(&log).await;
        log.close().await.expect("close");
        // A directory of a version that kept no record (or a crash inside a reset): nothing
        // to compare with, so nothing is found; the record is written from what is there.
        std::fs::remove_file(d.join(NEWEST_META)).expect("rm newest.meta");
        let newest = base_of(segment_files(&d).last().expect("a segment"));
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None);
        assert_eq!(recorded_newest(&d), Some(newest));
        log.close().await.expect("close");
        // And from then on a deletion is found.
        delete_newest(&d, 1);
        let log = open(&d).await;
        assert!(log.lost().expect("read").is_some());
        assert!(d.join(LOST_META).exists());
        log.close().await.expect("close");
    });
}
