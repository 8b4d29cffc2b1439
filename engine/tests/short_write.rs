//! A file system that fills up during a write may take part of it and report no error: tmpfs
//! writes the pages it has and returns a short count instead of ENOSPC when the write
//! extends the file over a page it holds and one it cannot get. With no room left for the
//! rest, that is a full disk, not an I/O error: the log must wait for space (refuse writes,
//! keep reads, take writes again once there is room, cut back to what completed writes put
//! there), not latch until a restart.
//!
//! A small tmpfs mounted on the log's directory, batches that are not whole pages (so the
//! write that fills it starts in a page the file already holds). Needs root (to mount it);
//! not root, or no tmpfs: the test says so and passes.
//!
//! The same holds for a Raft follower's cut of a conflicting suffix: it writes out what it
//! buffered before it cuts, and a full disk there is a full disk too, not a latch.

use bytes::Bytes;
use engine::batch::{self, Kind, Stamp};
use engine::testkit::Tmpfs;
use engine::{Durability, Error, FileBudget, Log, LogConfig, NewRecord, WriteState};
use std::path::Path;
use std::time::{Duration, Instant};

/// 256 KiB for the data, plus a page for `segments.meta` (tmpfs gives each file whole pages).
const VOLUME_BYTES: u64 = 260 * 1024;
const VALUE_BYTES: usize = 3000;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 1 << 20,
        index_interval_bytes: 4096,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

fn value(i: usize) -> Bytes {
    let mut v = format!("v{i:05}-").into_bytes();
    v.resize(VALUE_BYTES, b'.');
    Bytes::from(v)
}

#[test]
fn a_short_write_on_a_full_tmpfs_is_a_full_disk_not_a_latch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let Some(volume) = Tmpfs::mount(&dir, VOLUME_BYTES) else {
        return;
    };
    engine::run_local(tmp.path(), move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("open");
        let mut acked = 0;
        let failure = loop {
            assert!(acked < 1000, "the volume never filled up");
            match log.append(&[NewRecord::new(value(acked))]).await {
                Ok(a) => {
                    assert_eq!(a.base_offset, acked as u64);
                    acked += 1;
                }
                Err(e) => break e,
            }
        };
        let stats = log.stats();
        println!(
            "after {acked} appends: {failure}; write state {:?}, short writes {}, latched: {:?}",
            stats.write_state,
            stats.short_writes,
            log.latched_cause()
        );
        assert!(
            stats.short_writes > 0,
            "the volume filled without a short write"
        );
        assert!(
            matches!(failure, Error::DiskFull { .. }),
            "the append the volume cut short: {failure:?}"
        );
        assert_eq!(stats.write_state, WriteState::DiskFull);
        assert_eq!(log.latched_cause(), None);
        // Refused, not latched, and what was acknowledged reads back.
        match log.append(&[NewRecord::new(value(acked))]).await {
            Err(Error::DiskFull { .. }) => {}
            other => panic!("an append while full: {other:?}"),
        }
        for i in 0..acked {
            let r = log.read(i as u64).await.expect("read while full");
            assert_eq!(r.value, value(i), "offset {i}");
        }

        // Room again: the log takes writes at the offset after the last acknowledged one.
        // Enough for a write-behind buffer, an index and the 1 MiB margin.
        volume.resize(16 * VOLUME_BYTES);
        let deadline = Instant::now() + Duration::from_secs(10);
        let resumed = loop {
            match log.append(&[NewRecord::new(value(acked))]).await {
                Ok(a) => break a,
                Err(Error::DiskFull { .. }) if Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("after space returned: {e:?}"),
            }
        };
        assert_eq!(resumed.base_offset, acked as u64);
        assert_eq!(log.stats().write_state, WriteState::Writable);
        for i in 0..=acked {
            let r = log.read(i as u64).await.expect("read after recovery");
            assert_eq!(r.value, value(i), "offset {i}");
        }
        log.close().await.expect("close");
        // Reopened, it holds exactly those.
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("reopen");
        assert_eq!(log.next_offset(), acked as u64 + 1);
        for i in 0..=acked {
            assert_eq!(log.read(i as u64).await.expect("read").value, value(i));
        }
        log.close().await.expect("close");
    })
    .expect("executor");
}

/// Raft entry `i` (index `i + 1`, term 1): one record of `value` at the log's end.
fn entry(log: &Log, i: usize, value: Bytes) -> Vec<u8> {
    let stamp = Stamp {
        kind: Kind::Data,
        base_offset: log.next_offset(),
        term: 1,
        raft_index: log.next_index(),
        commit_index: 0,
        timestamp_ms: i as i64,
    };
    let mut out = Vec::new();
    batch::encode_into(&mut out, &stamp, &[NewRecord::new(value)]);
    out
}

/// Fills the volume holding `path` with that file, until it refuses more.
fn fill_volume(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write(&chunk).is_ok_and(|n| n > 0) {}
}

/// Buffered entries this large (for the cut below) go past the zero-filled window the
/// first write-out allocates ahead of the data (8 MiB, and never past the segment's end).
const BIG_VALUE_BYTES: usize = 256 * 1024;
const BIG_ENTRIES: usize = 36;

#[test]
fn a_cut_whose_write_out_finds_the_disk_full_waits_for_space_not_a_latch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let Some(volume) = Tmpfs::mount(&dir, 12 << 20) else {
        return;
    };
    let config = LogConfig {
        segment_bytes: 32 << 20,
        max_batch_bytes: 2 * BIG_VALUE_BYTES,
        max_record_bytes: 2 * BIG_VALUE_BYTES,
        write_behind_bytes: 32 << 20,
        ..config()
    };
    engine::run_local(tmp.path(), move || async move {
        let log = Log::open(&dir, config.clone(), FileBudget::new(4))
            .await
            .expect("open");
        // Ten entries on the device (and the zeroed window after them), then the volume
        // filled by someone else.
        const DURABLE: usize = 10;
        for i in 0..DURABLE {
            let e = entry(&log, i, value(i));
            log.append_buffered(&e).await.expect("append");
        }
        log.sync().await.expect("sync");
        fill_volume(&dir.join("filler"));
        // More only in the write-behind buffer, reaching past the window, then a leader's
        // conflicting suffix: keep up to index 7.
        for i in DURABLE..DURABLE + BIG_ENTRIES {
            let e = entry(&log, i, Bytes::from(vec![b'x'; BIG_VALUE_BYTES]));
            log.append_buffered(&e).await.expect("buffered");
        }
        assert_eq!(log.next_index(), (DURABLE + BIG_ENTRIES) as u64 + 1);
        let cut = log.truncate_after_index(7).await;
        let stats = log.stats();
        println!(
            "the cut: {cut:?}; write state {:?}, latched: {:?}",
            stats.write_state,
            log.latched_cause()
        );
        assert!(
            matches!(cut, Err(Error::DiskFull { .. })),
            "a cut whose write-out found the disk full: {cut:?}"
        );
        assert_eq!(stats.write_state, WriteState::DiskFull);
        assert_eq!(log.latched_cause(), None);
        // Reads of what is on the device go on.
        let read = log.read_entries(1, DURABLE as u64 + 1, 1 << 20).await;
        assert_eq!(read.expect("read while full").len(), DURABLE);

        // Room again: the tail is recovered to what is on the device, and the cut goes
        // through when the follower retries it.
        std::fs::remove_file(dir.join("filler")).expect("remove the filler");
        volume.resize(64 << 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.is_writable() {
            assert!(
                Instant::now() < deadline,
                "space returned, the log still full"
            );
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(log.next_index(), DURABLE as u64 + 1);
        log.truncate_after_index(7)
            .await
            .expect("the cut, with room");
        assert_eq!(log.next_index(), 8);
        let e = entry(&log, 7, value(7));
        log.append_buffered(&e).await.expect("append after the cut");
        log.sync().await.expect("sync");
        log.close().await.expect("close");
        let log = Log::open(&dir, config, FileBudget::new(4))
            .await
            .expect("reopen");
        assert_eq!((log.first_index(), log.next_index()), (1, 9));
        for i in 0..8 {
            assert_eq!(log.read(i as u64).await.expect("read").value, value(i));
        }
        log.close().await.expect("close");
    })
    .expect("executor");
}
