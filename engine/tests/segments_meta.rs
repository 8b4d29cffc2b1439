//! Segment files deleted from under a log whose directory (and every metadata file) stayed,
//! or sealed ones cut short: `segments.meta` records the segments the log holds (first and
//! last base offsets, how many, the sealed ones' total length), changed only once a new
//! segment's files are durable and before the log deletes one, so a log found without a
//! recorded segment, or with a sealed one shorter, at open is marked lost (`lost.meta`)
//! before anything is made there. Nothing else shows it: without its newest segments the log
//! reads as a shorter valid log, without its oldest as a log that retention cut, without a
//! middle one (or with a sealed one cut) as a valid log until a read reaches the gap. What
//! legitimately removes segments (a truncation, retention, a reset) is never taken for it.

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

/// What `segments.meta` records (first base, last base, count, sealed bytes), if it is there
/// (docs/format.md: a 16-byte metadata header, then version 2 and four u64).
fn recorded_in_full(dir: &Path) -> Option<(u64, u64, u64, u64)> {
    let bytes = std::fs::read(dir.join(SEGMENTS_META)).ok()?;
    let p = &bytes[16..];
    assert_eq!(p.len(), 33, "payload");
    assert_eq!(p[0], 2, "version");
    let u = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"));
    Some((u(1), u(9), u(17), u(25)))
}

/// What `segments.meta` records of the set (first base, last base, count), checking that its
/// sealed length is the files' (all but the newest).
fn recorded(dir: &Path) -> Option<(u64, u64, u64)> {
    let (first, last, count, sealed) = recorded_in_full(dir)?;
    let files = segment_files(dir);
    let on_disk: u64 = files[..files.len().saturating_sub(1)]
        .iter()
        .map(|f| std::fs::metadata(f).expect("stat").len())
        .sum();
    if Some((first, last, count)) == Some(as_found(dir)) {
        assert_eq!(sealed, on_disk, "the sealed segments' length");
    }
    Some((first, last, count))
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

/// Writes `segments.meta` as version 1 wrote it (25 bytes of payload, no sealed length),
/// through the engine's own metadata writer so that only the payload differs.
fn write_version_1(dir: &Path, first: u64, last: u64, count: u64) {
    let mut p = vec![1u8];
    for x in [first, last, count] {
        p.extend_from_slice(&x.to_le_bytes());
    }
    engine::meta::write(dir, SEGMENTS_META, &p).expect("write version 1");
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

/// A log made in `d`, [`fill`]ed and closed: four segments or more (how many is returned).
async fn four_segments_or_more(d: &Path) -> usize {
    let log = open(d).await;
    fill(&log).await;
    log.close().await.expect("close");
    let n = segment_files(d).len();
    assert!(n >= 4, "{n} segments");
    n
}

/// A log of four segments or more, closed, then the segments at `which` deleted and the log
/// opened again: it is marked lost, its reason holding `why`, and serves what is left; the
/// mark stays (with its first reason) at the next open, and the record follows the files.
fn deleted_segments_are_found(which: fn(usize) -> Vec<usize>, why: &'static str) {
    with_log_dir(move |d| async move {
        let n = four_segments_or_more(&d).await;
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
        the_mark_stays(&d, &reason).await;
    });
}

/// At the next open the log is still marked lost for `reason` (its first), and the record
/// now follows the files.
async fn the_mark_stays(d: &Path, reason: &str) {
    let log = open(d).await;
    assert_eq!(log.lost().expect("read").as_deref(), Some(reason));
    assert_eq!(recorded(d), Some(as_found(d)));
    log.close().await.expect("close");
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

/// The length of a batch of one 1 KiB record, as `fill` appends them (docs/format.md: a
/// 64-byte batch header, then per record 8 bytes and its value).
const ONE_RECORD_BATCH: u64 = 64 + 8 + 1024;

/// Cuts `bytes` off the end of the segment data file at position `i` (oldest first).
fn cut_segment(dir: &Path, i: usize, bytes: u64) -> u64 {
    let f = &segment_files(dir)[i];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(f)
        .expect("open segment");
    let len = file.metadata().expect("stat").len();
    if bytes.is_multiple_of(ONE_RECORD_BATCH) && i + 1 < segment_files(dir).len() {
        assert_eq!(
            len % ONE_RECORD_BATCH,
            0,
            "a sealed segment of whole batches"
        );
    }
    file.set_len(len - bytes).expect("cut");
    file.sync_all().expect("sync");
    base_of(f)
}

fn a_sealed_segment_cut_short_is_found(which: fn(usize) -> usize, bytes: u64) {
    with_log_dir(move |d| async move {
        let n = four_segments_or_more(&d).await;
        let base = cut_segment(&d, which(n), bytes);
        let log = open(&d).await;
        let reason = log
            .lost()
            .expect("read")
            .unwrap_or_else(|| panic!("segment {base} cut by {bytes} bytes, not marked lost"));
        println!("segment {base} cut by {bytes} bytes: {reason}");
        assert!(
            reason.contains(&format!("{bytes} bytes were cut")),
            "{reason}"
        );
        log.close().await.expect("close");
        the_mark_stays(&d, &reason).await;
    });
}

#[test]
fn a_log_whose_oldest_segment_was_cut_short_opens_marked_lost() {
    // Mid-batch: the segment's last batch torn.
    a_sealed_segment_cut_short_is_found(|_| 0, 100);
}

#[test]
fn a_log_whose_last_sealed_segment_lost_whole_batches_opens_marked_lost() {
    // Two whole batches of one 1 KiB record (a batch boundary, so the segment still reads as
    // valid up to its new end), from the segment just before the active one.
    // docs/format.md: a 64-byte batch header, then per record 8 bytes and its value.
    a_sealed_segment_cut_short_is_found(|n| n - 2, 2 * ONE_RECORD_BATCH);
}

#[test]
fn the_newest_segment_is_not_compared_and_a_version_1_record_is_replaced() {
    with_log_dir(|d| async move {
        let log = open(&d).await;
        fill(&log).await;
        log.close().await.expect("close");
        let (first, last, count) = as_found(&d);
        // A record as version 1 wrote it: opened, nothing found, replaced by version 2.
        write_version_1(&d, first, last, count);
        let log = open(&d).await;
        assert_eq!(log.lost().expect("read"), None);
        assert!(recorded_in_full(&d).is_some(), "replaced by version 2");
        assert_eq!(recorded(&d), Some(as_found(&d)));
        let next = log.next_offset();
        log.close().await.expect("close");
        // The newest segment was being written: its tail is the recovery's to cut (a torn
        // batch here), never a loss.
        let newest = segment_files(&d).pop().expect("a segment");
        let data_len = (next - base_of(&newest)) * ONE_RECORD_BATCH;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .expect("open segment");
        assert!(file.metadata().expect("stat").len() >= data_len);
        file.set_len(data_len - 100)
            .expect("cut into the last batch");
        drop(file);
        let log = open(&d).await;
        assert_eq!(
            log.lost().expect("read"),
            None,
            "the newest segment's torn tail"
        );
        assert_eq!(log.next_offset(), next - 1);
        log.close().await.expect("close");
    });
}
