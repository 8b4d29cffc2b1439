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

use bytes::Bytes;
use engine::{Durability, Error, FileBudget, Log, LogConfig, NewRecord, WriteState};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const VOLUME_BYTES: u64 = 256 * 1024;
const VALUE_BYTES: usize = 3000;

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (after saying why) when it cannot be mounted: not root, or no tmpfs here.
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status();
        match st {
            Ok(st) if st.success() => Some(Tmpfs(dir.to_owned())),
            other => {
                println!(
                    "SKIPPED: cannot mount a tmpfs on {} (needs root): {other:?}",
                    dir.display()
                );
                None
            }
        }
    }

    fn resize(&self, bytes: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(st.success(), "remount: {st}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: files a failed test still holds must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

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
