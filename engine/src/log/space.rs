//! A full disk: an operating condition, not corruption.
//!
//! A write that fails for want of space (ENOSPC, EDQUOT) leaves a known state: every
//! completed write is on the device (`written` of the active segment), and the rest is still
//! in the write-behind buffer, acknowledged to nobody (appends are acknowledged only once
//! written, or synced under `always`). So instead of latching, the log refuses writes with
//! [`Error::DiskFull`] (naming the partition and the free space), keeps serving reads, and
//! says so once: one log line when it fills, one when it recovers, and its
//! [`WriteState`](super::WriteState) in the metrics and the admin API.
//!
//! Its background task checks the free space every [`DISK_FULL_PROBE_INTERVAL`]. Once there
//! is room for a write-out and a new segment, the log re-runs its tail recovery, as at
//! start-up: the data file is cut to what completed writes put there (the unwritten buffer
//! and anything a failed write may have left are dropped, so no record whose append failed
//! ever appears), synced, scanned and re-indexed, and the log takes writes again at the
//! offset after its last written record. Files a roll cut short are removed first.
//!
//! A failed *sync* is different: after a failed fdatasync the kernel may have dropped the
//! data it was to write, so whatever the error (ENOSPC included) the log latches until it
//! is reopened, as before.

use super::Log;
use crate::error::{Error, Result};
use crate::index::ENTRY_LEN;
use crate::limits::{DISK_FULL_PROBE_INTERVAL, DISK_FULL_RESUME_MARGIN_BYTES};
use crate::seam::Writability;
use crate::segment::{self, align_down, align_up, Segment};
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::recovery;

/// The state of a log whose disk is full.
#[derive(Debug)]
pub(super) struct DiskFull {
    /// Free space when last checked, for messages.
    free_bytes: u64,
    /// When the free space was last checked.
    probed: Instant,
}

impl DiskFull {
    #[cfg(test)]
    pub(super) fn for_tests() -> DiskFull {
        DiskFull {
            free_bytes: 0,
            probed: Instant::now(),
        }
    }
}

impl Log {
    /// Refuses writes from now on, after a write failed for want of space.
    pub(super) fn enter_disk_full(&self, e: &Error) {
        let free = free_bytes(&self.dir);
        let mut st = self.state_mut();
        if st.disk_full.is_none() && st.latched.is_none() {
            log::warn!(
                "partition {}: disk full ({e}; {free} bytes free): refusing writes until space returns, reads go on",
                self.partition_name()
            );
            st.disk_full = Some(DiskFull {
                free_bytes: free,
                probed: Instant::now(),
            });
        }
        drop(st);
        // Appenders and flushers waiting on a write-out learn of it now.
        self.io_done.notify(usize::MAX);
        self.appended.notify(usize::MAX);
    }

    /// Whether the log takes writes, as the partition seam describes it.
    pub(crate) fn writability(&self) -> Writability {
        let st = self.state.borrow();
        if let Some(cause) = &st.latched {
            Writability::Latched {
                cause: cause.clone(),
            }
        } else if let Some(full) = &st.disk_full {
            Writability::DiskFull {
                free_bytes: full.free_bytes,
            }
        } else {
            Writability::Writable
        }
    }

    pub(super) fn disk_full_error(&self, full: &DiskFull) -> Error {
        Error::DiskFull {
            partition: self.partition_name(),
            path: self.dir.clone(),
            free_bytes: full.free_bytes,
        }
    }

    /// `topic/partition`, from the log's directory (`<data>/topics/<topic>/<partition>`).
    pub(super) fn partition_name(&self) -> String {
        let mut parts = self.dir.iter().rev().take(2).map(|c| c.to_string_lossy());
        let partition = parts.next().unwrap_or_default();
        match parts.next() {
            Some(topic) => format!("{topic}/{partition}"),
            None => partition.into_owned(),
        }
    }

    /// Space the log waits for before it tries to resume: a full write-behind buffer, the
    /// index of a next segment, and a margin.
    fn space_to_resume(&self) -> u64 {
        self.config.write_behind_bytes as u64
            + (self.index_capacity * ENTRY_LEN) as u64
            + DISK_FULL_RESUME_MARGIN_BYTES
    }

    /// While the disk is full, checks (at most every [`DISK_FULL_PROBE_INTERVAL`]) whether
    /// space has returned, and if so recovers the tail and takes writes again. Called by the
    /// log's background task.
    pub(super) async fn probe_space(&self) {
        let free = {
            let mut st = self.state_mut();
            let Some(full) = st.disk_full.as_mut() else {
                return;
            };
            if full.probed.elapsed() < DISK_FULL_PROBE_INTERVAL {
                return;
            }
            full.probed = Instant::now();
            full.free_bytes = free_bytes(&self.dir);
            full.free_bytes
        };
        if free < self.space_to_resume() {
            return;
        }
        let Ok(_permit) = self.lock_io().await else {
            return;
        };
        if self.state.borrow().disk_full.is_none() || self.state.borrow().closed {
            return;
        }
        let exclusive = self.exclusive();
        let r = self.rebuild_tail().await;
        drop(exclusive);
        match r {
            Ok(next) => {
                self.state_mut().disk_full = None;
                log::info!(
                    "partition {}: space is back ({free} bytes free): tail recovered, accepting writes again at offset {next}",
                    self.partition_name()
                );
                self.io_done.notify(usize::MAX);
                self.appended.notify(usize::MAX);
            }
            // Filled again meanwhile: still full, nothing new to say.
            Err(e) if e.is_out_of_space() && !e.is_sync_failure() => {
                log::debug!(
                    "partition {}: not recovered yet: {e}",
                    self.partition_name()
                );
            }
            Err(e) => self.latch(&e),
        }
    }

    /// Syncs what completed writes put in the active data file, writing nothing: closing a
    /// log whose disk is full.
    pub(super) async fn sync_written(&self) -> Result<()> {
        let file = {
            let st = self.state.borrow();
            let seg = st.segments.last().ok_or(Error::ShutDown)?;
            match &seg.writer {
                Some(w) => (std::rc::Rc::clone(&w.data), seg.data_path.clone()),
                None => return Ok(()),
            }
        };
        let written = {
            let st = self.state.borrow();
            st.segments
                .last()
                .and_then(|s| s.writer.as_ref().map(|w| w.written))
        };
        file.0
            .fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing", &file.1, e))?;
        if let Some(written) = written {
            crate::power_loss::synced_at_least(&file.1, written);
        }
        Ok(())
    }

    /// Cuts the last segment to what completed writes put on the device, syncs it, and
    /// recovers it as at start-up. Returns the offset appends continue at. Caller holds `io`
    /// and marks the log exclusive.
    async fn rebuild_tail(&self) -> Result<u64> {
        let (base, base_index, known, sealed_end) = {
            let mut st = self.state_mut();
            let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
            let writer = seg.writer.take();
            // A roll that sealed the segment and failed to start the next one left it whole
            // on the device.
            let known = writer.as_ref().map_or(seg.size, |w| w.written);
            let sealed_end = writer.is_none().then_some(seg.next);
            (seg.base, seg.base_index, known, sealed_end)
        };
        if let Some(end) = sealed_end {
            remove_if_present(&segment::data_path(&self.dir, end))?;
            remove_if_present(&segment::index_path(&self.dir, end))?;
        }
        let path = segment::data_path(&self.dir, base);
        let data = segment::open_dma(&path, false).await?;
        let buf_pos = align_down(known);
        let tail = segment::read_at(&data, &path, buf_pos, (known - buf_pos) as usize).await?;
        if tail.len() as u64 != known - buf_pos {
            return Err(Error::corrupt(
                &path,
                buf_pos,
                "data file shorter than written",
            ));
        }
        segment::rewrite_tail(&data, &path, buf_pos, &tail).await?;
        data.truncate(align_up(known))
            .await
            .map_err(|e| Error::glommio("cutting unwritten tail of", &path, e))?;
        data.fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing repaired", &path, e))?;
        crate::power_loss::synced_exactly(&path, known);
        drop(data);

        let mut fresh = Segment::new_sealed(&self.dir, base, align_up(known), SystemTime::now());
        // Its batches continue the Raft indexes from where the segment began; if none was
        // written, the segment still begins there.
        fresh.base_index = base_index;
        fresh.next_index = base_index;
        let interval = u64::from(self.config.index_interval_bytes);
        let start = Some(base_index).filter(|&i| i > 0);
        recovery::recover_active(&mut fresh, self.index_capacity, interval, start).await?;
        let (next, next_index) = (fresh.next, fresh.next_index);
        let mut st = self.state_mut();
        if let Some(old) = st.segments.pop() {
            // Reads may have opened the old entry's files through the budget.
            self.budget.release(&old.slot);
        }
        st.segments.push(fresh);
        if next < st.next {
            // Appenders still waiting for offsets from here on must not mistake the new
            // records at those offsets for theirs.
            st.cut_epoch += 1;
            st.cut_floor = st.cut_floor.min(next);
        }
        st.next = next;
        st.written_next = next;
        st.durable_next = next;
        st.next_index = next_index;
        st.durable_index = next_index;
        st.sync_requested = next;
        // An owner's mark covers only acknowledged records (a Raft group's: applied ones,
        // which this node synced), which were all written and so are all still here; the cut
        // never lowers it. `min` keeps `visible <= next` as a truncation does.
        st.visible = st.visible.min(next);
        Ok(next)
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

/// Bytes that can still be written on the file system holding `dir`: what statvfs counts as
/// available to unprivileged users, the figure `df` shows as Avail (0 if it cannot be told).
///
/// The blocks a file system reserves are left out even for root: whether root may use them
/// depends on the mount (ext4's `resuid`/`resgid` can give them to another user, and some
/// kernels refuse them to root outright), and nothing tells a process which. Counting them
/// would report gigabytes free on a disk whose writes all fail with ENOSPC: a log would try
/// to resume every probe and fail again, and a short write would be taken for a device
/// error. At worst a process that may use them waits for space beyond the reserve.
pub(crate) fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: an all-zero statvfs is a valid value of that plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into `st`, which we own, and reads the NUL-terminated path.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail.saturating_mul(st.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::free_bytes;

    /// The free space the log reports and waits for is the operator's figure: `df`'s Avail,
    /// not the free blocks, which include a reserve this process may not be allowed (this
    /// machine's root file system reserves most of its free blocks for another user).
    #[test]
    fn free_bytes_is_what_df_calls_available() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ours = free_bytes(tmp.path());
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(tmp.path())
            .output()
            .expect("run df");
        assert!(out.status.success(), "df: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let avail: u64 = text
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df printed {text:?}"));
        // Others write to this disk meanwhile.
        let slack = 256 << 20;
        assert!(
            ours.abs_diff(avail) <= slack,
            "free_bytes says {ours}, df's Avail is {avail}"
        );
    }
}
