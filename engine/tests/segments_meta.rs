//! Segment files deleted from under a log whose directory (and every metadata file) stayed:
//! `segments.meta` records the segments the log holds (first and last base offsets, how
//! many), changed only once a new segment's files are durable and before the log deletes
//! one, so a log found without a recorded segment at open is marked lost (`lost.meta`)
//! before anything is made there. Nothing else shows it: without its newest segments the log
//! reads as a shorter valid log, without its oldest as a log that retention cut, without a
//! middle one as a valid log until a read reaches the gap. What legitimately removes
//! segments (a truncation, retention, a reset) is never taken for it.

use crate::common;

use bytes::Bytes;
use common::{topic_config, with_log_dir};
use engine::{FileBudget, Log, NewRecord, LOST_META, SEGMENTS_META};
use std::path::{Path, PathBuf};

/// The segment data files of `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    common::segment_files(dir, ".log")
}

/// The base offset of a segment data file, from its name.
fn base_of(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment's name")
}

/// Deletes the files (`.log` and `.index`) of the segments at positions `which` (oldest
/// first); returns their base offsets.
fn delete_segments(dir: &Path, which: &[usize]) -> Vec<u64> {
    let files = segment_files(dir);
    which
        .iter()
        .map(|&i| {
            let f = &files[i];
            std::fs::remove_file(f).expect("rm .log");
            std::fs::remove_file(f.with_extension("index")).expect("rm .index");
            base_of(f)
        })
        .collect()
}

/// What `segments.meta` records (first base, last base, count), if it is there
/// (docs/format.md: a 16-byte metadata header, then version 1 and three u64).
fn recorded(dir: &Path) -> Option<(u64, u64, u64)> {
    let bytes = std::fs::read(dir.join(SEGMENTS_META)).ok()?;
    let p = &bytes[16..];
    assert_eq!(p.len(), 25, "payload");
    assert_eq!(p[0], 1, "version");
    let u = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"));
    Some((u(1), u(9), u(17)))
}

/// What the files there are, as `segments.meta` would record them.
fn as_found(dir: &Path) -> (u64, u64, u64) {
    let files = segment_files(dir);
    let (first, last) = (
        files.first().expect("a segment"),
        files.last().expect("one"),
    );
    (base_of(first), base_of(last), files.len() as u64)
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
    Log::open(dir, topic_config(), FileBudget::new(16))
        .await
        .expect("open")
}

/// A log of four segments or more, closed, then the segments at `which` deleted and the log
/// opened again: it is marked lost, its reason holding `why`, and serves what is left; the
/// mark stays (with its first reason) at the next open, and the record follows the files.
fn deleted_segments_are_found(which: fn(usize) -> Vec<usize>, why: &'static str) {
    with_log_dir(move |d| async move {
        let log = open(&d).await;
        fill(&log).await;
        log.close().await.expect("close");
        let n = segment_files(&d).len();
        assert!(n >= 4, "{n} segments");
        assert_eq!(recorded(&d), Some(as_found(&d)), "recorded at each roll");

        let gone = delete_segments(&d, &which(n));
        let log = open(&d).await;
        let reason = log
            .lost()
            .expect("read")
            .unwrap_or_else(|| panic!("segments {gone:?} deleted, the log is not marked lost"));
        println!("segments {gone:?} deleted: {reason}");
        assert!(reason.contains(why), "{reason}");
        // The engine alone serves what is left (a replicated group opens stopped).
        let a = log
            .append(&[NewRecord::new(Bytes::from_static(b"after"))])
            .await
            .expect("append after");
        assert_eq!(a.base_offset + 1, log.next_offset());
        log.close().await.expect("close");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read").as_deref(), Some(reason.as_str()));
        assert_eq!(recorded(&d), Some(as_found(&d)));
        log.close().await.expect("close");
    });
}

#[test]
fn a_log_whose_newest_segment_was_deleted_opens_marked_lost() {
    deleted_segments_are_found(|n| vec![n - 1], "its newest segment among them");
}

#[test]
fn a_log_whose_two_newest_segments_were_deleted_opens_marked_lost() {
    deleted_segments_are_found(|n| vec![n - 2, n - 1], "2 of the");
}

#[test]
fn a_log_whose_oldest_segment_was_deleted_opens_marked_lost() {
    deleted_segments_are_found(|_| vec![0], "its oldest segment among them");
}

#[test]
fn a_log_with_a_middle_segment_deleted_opens_marked_lost() {
    deleted_segments_are_found(|_| vec![1], "1 of the");
}

#[test]
fn a_log_whose_segment_files_were_all_deleted_opens_marked_lost() {
    deleted_segments_are_found(|n| (0..n).collect(), "every one of them");
}

#[test]
fn truncations_retention_and_resets_are_not_taken_for_deletions() {
    with_log_dir(|d| async move {
        let log = open(&d).await;
        fill(&log).await;
        assert!(segment_files(&d).len() >= 4);
        // Retention (or Raft's compaction): the oldest segments deleted.
        let removed = log.truncate_prefix(100).await.expect("truncate_prefix");
        assert!(removed.segments >= 1, "{removed:?}");
        assert_eq!(recorded(&d), Some(as_found(&d)));
        log.close().await.expect("close");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None, "after retention");
        // A follower's conflicting tail: every segment after the one the cut falls in.
        let lowest = log.lowest_offset();
        log.truncate_suffix(lowest + 10).await.expect("truncate");
        assert_eq!(segment_files(&d).len(), 1);
        assert_eq!(recorded(&d), Some((lowest, lowest, 1)));
        log.close().await.expect("close");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None, "after a truncation");
        assert_eq!(log.next_offset(), lowest + 11);
        fill(&log).await;
        // A snapshot's install: every segment deleted, the log starts again further on.
        log.reset(5000).await.expect("reset");
        assert_eq!(recorded(&d), Some((5000, 5000, 1)));
        log.close().await.expect("close");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None, "after a reset");
        assert_eq!(log.next_offset(), 5000);
        log.close().await.expect("close");
    });
}

#[test]
fn a_log_without_the_record_gets_it_at_open() {
    with_log_dir(|d| async move {
        let log = open(&d).await;
        fill(&log).await;
        log.close().await.expect("close");
        // A directory of a version that kept no record (or a crash inside a reset): nothing
        // to compare with, so nothing is found; the record is written from what is there.
        std::fs::remove_file(d.join(SEGMENTS_META)).expect("rm segments.meta");
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None);
        assert_eq!(recorded(&d), Some(as_found(&d)));
        log.close().await.expect("close");
        // And from then on a deletion is found.
        delete_segments(&d, &[1]);
        let log = open(&d).await;
        assert!(log.lost().expect("read").is_some());
        assert!(d.join(LOST_META).exists());
        log.close().await.expect("close");
    });
}
