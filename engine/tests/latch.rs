//! A log whose I/O fails latches: it refuses writes until it is reopened, and whatever else it
//! is asked (reads, retention, close) gets an answer, never a panic.
//!
//! The failures are real, made without privileges (root ignores permission bits): the log's
//! directory is taken away or replaced by a file under an open log.

use crate::common;

use bytes::Bytes;
use common::segment_files;
use engine::{Error, FileBudget, Log, LogConfig, NewRecord, Removed};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        retention_bytes: 1,
        ..LogConfig::default()
    }
}

fn records(n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| NewRecord::new(Bytes::from(vec![i as u8; 10 * 1024])))
        .collect()
}

/// Opens a log of several segments in `<root>/log`, lets `break_dir` damage its directory,
/// then resets it and checks what a latched log must do.
fn reset_fails_and_latches(root: &Path, break_dir: fn(&Path), op: &'static str) {
    let dir: PathBuf = root.join("log");
    engine::run_local(root, move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("open");
        for _ in 0..10 {
            log.append(&records(1)).await.expect("append");
        }
        assert!(log.stats().segments > 1, "the test wants sealed segments");
        break_dir(&dir);

        match log.reset(1000).await {
            Err(Error::Io { op: got, .. }) => assert_eq!(got, op),
            other => panic!("reset with its directory broken: {other:?}"),
        }
        match log.append(&records(1)).await {
            Err(Error::Latched { .. }) => {}
            other => panic!("append after a failed reset: {other:?}"),
        }
        match log.truncate_suffix(3).await {
            Err(Error::Latched { .. }) => {}
            other => panic!("truncate_suffix after a failed reset: {other:?}"),
        }
        // The segments are gone: reads find nothing, retention has nothing to remove.
        match log.read(0).await {
            Err(Error::OffsetOutOfRange { .. }) => {}
            other => panic!("read after a failed reset: {other:?}"),
        }
        assert!(log.term_of(0).await.is_err());
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(
            log.apply_retention(later).await.expect("retention"),
            Removed::default()
        );
        assert_eq!(
            log.truncate_prefix(u64::MAX)
                .await
                .expect("truncate_prefix"),
            Removed::default()
        );
        assert_eq!(log.stats().segments, 0);
        log.close().await.expect("close");
    })
    .expect("executor");
}

#[test]
fn a_reset_that_cannot_create_its_segment_latches_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The old segments' files are already gone (deleting them finds nothing); creating the
    // new segment fails for want of a directory.
    reset_fails_and_latches(
        tmp.path(),
        |dir| std::fs::remove_dir_all(dir).expect("remove the log directory"),
        "opening data file",
    );
}

#[test]
fn a_reset_that_cannot_delete_its_segments_latches_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Deleting the first old segment fails: its directory is now a file.
    reset_fails_and_latches(
        tmp.path(),
        |dir| {
            std::fs::remove_dir_all(dir).expect("remove the log directory");
            std::fs::write(dir, b"not a directory").expect("a file in its place");
        },
        "removing",
    );
}

#[test]
fn a_reset_after_a_failed_reset_leaves_no_old_segment_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    let dir = root.join("log");
    engine::run_local(&root, move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("open");
        for _ in 0..20 {
            log.append(&records(1)).await.expect("append");
        }
        let mut data_files = segment_files(&dir, ".log");
        assert!(data_files.len() >= 3, "the test wants sealed segments");
        // The second segment's data file becomes a directory: the reset deletes the first
        // segment, then fails (EISDIR) and leaves the later ones on disk.
        let second = data_files.remove(1);
        std::fs::remove_file(&second).expect("remove a data file");
        std::fs::create_dir(&second).expect("a directory in its place");
        match log.reset(1000).await {
            Err(Error::Io { op: "removing", .. }) => {}
            other => panic!("reset with a data file it cannot remove: {other:?}"),
        }
        std::fs::remove_dir(&second).expect("remove the directory");

        log.reset(1000).await.expect("a second reset");
        let a = log.append(&records(1)).await.expect("append after reset");
        assert_eq!(a.base_offset, 1000);
        log.close().await.expect("close");
        assert_eq!(
            segment_files(&dir, ".log"),
            vec![dir.join(format!("{:020}.log", 1000))],
            "only the new segment may remain"
        );
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("reopen");
        assert_eq!((log.lowest_offset(), log.next_offset()), (1000, 1001));
    })
    .expect("executor");
}
