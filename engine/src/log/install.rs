//! Snapshots as segment files: the files a leader streams to a follower far behind it, the
//! temporary directory a follower downloads them into, and the atomic swap that replaces the
//! follower's whole log by it.
//!
//! - Sending ([`Log::snapshot_files`]): the data files of the segments holding Raft indexes
//!   `[first, last]`, opened at once (retention may delete a file while it streams: the open
//!   handle keeps reading it), the last one cut after the batch of index `last`. Index files
//!   are not sent: the follower rebuilds them from the data while it verifies it.
//! - Receiving ([`Staging`]): `<partition>.install`, a directory beside the partition's, holds
//!   the downloaded data files. [`Staging::verify`] scans each one like recovery does (every
//!   batch's CRC, offsets and Raft indexes continuous from file to file, ending at the
//!   snapshot's point), writes their index files, syncs everything, and writes `start.meta`.
//! - Swapping ([`Log::install_staged`]): the Raft metadata, and the partition's mark
//!   (`partition.meta`) copied from the log's directory, are written into the staged
//!   directory, then one `renameat2(RENAME_EXCHANGE)` swaps it with the partition's directory
//!   and the parent directory is synced: a crash before the exchange leaves the old log, after
//!   it the new one, never a mix. The old log, now under the temporary name, is deleted and
//!   the log reopens its state from the new files. A temporary directory found at open (a
//!   download cut short, or an old log whose deletion a crash interrupted) is removed.

use super::recovery::{self, START_META};
use super::roll::create_segment;
use super::Log;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::limits;
use crate::meta;
use crate::segment;
use std::path::{Path, PathBuf};

/// A data file of a snapshot, as the sender streams it.
#[derive(Debug)]
pub struct SnapshotFile {
    /// The segment's base offset (its file name).
    pub base: u64,
    /// Bytes to send: the whole sealed file, or up to the end of the snapshot's last batch.
    pub len: u64,
    /// Open for reading, so that retention deleting the segment meanwhile does not matter.
    pub file: std::fs::File,
}

/// The temporary directory beside a partition's directory `dir` where a snapshot is
/// downloaded: `<dir>.install`.
pub fn staging_path(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".install");
    dir.with_file_name(name)
}

/// Removes the temporary directory of `dir` left by a crash (a partial download, or the old
/// log of an exchange whose cleanup did not finish). Called when the log opens.
pub(super) fn remove_leftover_staging(dir: &Path) -> Result<()> {
    let staging = staging_path(dir);
    if !staging.exists() {
        return Ok(());
    }
    log::warn!(
        "{}: removing a snapshot's temporary directory left by an earlier run",
        staging.display()
    );
    std::fs::remove_dir_all(&staging).map_err(|e| Error::io("removing", &staging, e))?;
    if let Some(parent) = dir.parent() {
        meta::sync_dir(parent)?;
    }
    Ok(())
}

/// Swaps two directory entries atomically (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    crate::catalog::renameat2(a, b, libc::RENAME_EXCHANGE)
        .map_err(|e| Error::io("exchanging (renameat2 RENAME_EXCHANGE) with", b, e))
}

/// A snapshot being downloaded into `<partition>.install`. Dropped, it removes its directory
/// (after an install, that directory holds the old log).
pub struct Staging {
    dir: PathBuf,
    /// Base offset and length of each data file, in order.
    files: Vec<(u64, u64)>,
    verified: bool,
}

impl Staging {
    /// Creates an empty temporary directory for the partition whose directory is `target`
    /// (an earlier one is removed first).
    pub fn create(target: &Path) -> Result<Staging> {
        let dir = staging_path(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        Ok(Staging {
            dir,
            files: Vec::new(),
            verified: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Declares the data files to come (base offset, length), in order; creates them empty.
    pub fn set_files(&mut self, files: &[(u64, u64)]) -> Result<()> {
        for &(base, _) in files {
            let path = segment::data_path(&self.dir, base);
            std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
        }
        self.files = files.to_vec();
        self.verified = false;
        Ok(())
    }

    pub fn files(&self) -> &[(u64, u64)] {
        &self.files
    }

    /// A handle on data file `i` for writing (blocking writes, e.g. on a helper thread).
    pub fn open_file(&self, i: usize) -> Result<std::fs::File> {
        let (base, _) = *self
            .files
            .get(i)
            .ok_or_else(|| Error::InvalidArgument(format!("no staged file {i}")))?;
        let path = segment::data_path(&self.dir, base);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))
    }

    /// Checks the downloaded files as a log holding Raft indexes `[first_index, last_index]`
    /// and offsets `[first_offset, next_offset)`: every batch whole, its CRC right, offsets
    /// and indexes continuous across files, each file exactly its declared length. Writes
    /// each segment's index, `start.meta`, and syncs every file and the directory.
    pub async fn verify(
        &mut self,
        first_index: u64,
        first_offset: u64,
        last_index: u64,
        next_offset: u64,
        config: &LogConfig,
    ) -> Result<()> {
        let interval = u64::from(config.index_interval_bytes.max(1));
        let capacity = (config.segment_bytes / interval) as usize + limits::INDEX_SLACK_ENTRIES;
        let (mut offset, mut index) = (first_offset, first_index);
        let n = self.files.len();
        for (i, &(base, len)) in self.files.iter().enumerate() {
            let path = segment::data_path(&self.dir, base);
            let bad = |why: String| Error::corrupt(&path, 0, format!("snapshot file: {why}"));
            if base != offset {
                return Err(bad(format!("starts at offset {base}, {offset} expected")));
            }
            let data = segment::open_dma(&path, false).await?;
            let mut idx = Index::open(&segment::index_path(&self.dir, base), capacity)?;
            let scan = segment::scan(&data, &path, base, Some(index), &mut idx, interval).await?;
            if let Some(stop) = scan.stopped {
                return Err(bad(stop.why));
            }
            if scan.valid_len != len || scan.file_len != len || len == 0 {
                return Err(bad(format!(
                    "{} valid bytes in a file of {}, {len} announced",
                    scan.valid_len, scan.file_len
                )));
            }
            if i + 1 < n {
                idx.seal()?;
            } else {
                idx.flush()?;
            }
            data.fdatasync()
                .await
                .map_err(|e| Error::glommio("syncing", &path, e))?;
            let _ = data.close().await;
            offset = scan.next;
            index = scan.next_index;
        }
        if n == 0 {
            // Nothing retained up to the snapshot's point: the log continues after it.
            if first_index != last_index + 1 || first_offset != next_offset {
                return Err(Error::InvalidArgument(format!(
                    "an empty snapshot from index {first_index} offset {first_offset} to \
                     index {last_index} offset {next_offset}"
                )));
            }
            let seg = create_segment(&self.dir, next_offset, last_index + 1, capacity).await?;
            if let Some(w) = seg.writer {
                w.index.flush()?;
            }
        } else if index != last_index + 1 || offset != next_offset {
            return Err(Error::corrupt(
                &self.dir,
                0,
                format!(
                    "snapshot files end at index {} offset {offset}, not index {} offset \
                     {next_offset}",
                    index.saturating_sub(1),
                    last_index
                ),
            ));
        }
        let segments: Vec<(u64, u64)> = if n == 0 {
            vec![(next_offset, 0)]
        } else {
            self.files.clone()
        };
        if let Some(span) = super::manifest::Span::of(&segments) {
            super::manifest::write(&self.dir, span)?;
        }
        meta::write(&self.dir, START_META, &(last_index + 1).to_le_bytes())?;
        meta::sync_dir(&self.dir)?;
        self.verified = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{}: cannot remove: {e}", self.dir.display());
            }
        }
    }
}

impl Log {
    /// The data files holding Raft indexes `[first_index, last_index]`, for a snapshot:
    /// `first_index` must be the log's first index, and `last_index` written to the device
    /// (a snapshot point is applied, hence persisted). Fails when the log no longer starts
    /// there (retention moved on: the follower gets a newer snapshot).
    pub async fn snapshot_files(
        &self,
        first_index: u64,
        last_index: u64,
    ) -> Result<Vec<SnapshotFile>> {
        if first_index > last_index {
            return Ok(Vec::new());
        }
        {
            let st = self.state.borrow();
            let first = st.segments.first().map(|s| s.base_index).unwrap_or(0);
            if first != first_index || last_index >= st.next_index {
                return Err(Error::InvalidArgument(format!(
                    "snapshot of Raft indexes [{first_index}, {last_index}]: the log holds \
                     [{first}, {})",
                    st.next_index
                )));
            }
        }
        let last = self
            .read_by_index(last_index, last_index + 1, 1)
            .await?
            .into_iter()
            .next()
            .filter(|b| b.header.raft_index == last_index)
            .ok_or_else(|| Error::InvalidArgument(format!("Raft index {last_index} not found")))?;
        let end = last.pos + last.header.batch_len() as u64;
        let st = self.state.borrow();
        let mut out = Vec::new();
        for seg in &st.segments {
            let len = if seg.base == last.segment {
                if let Some(w) = &seg.writer {
                    if end > w.written {
                        return Err(Error::InvalidArgument(format!(
                            "Raft index {last_index} is not written to the device yet"
                        )));
                    }
                }
                end
            } else {
                seg.size
            };
            let file = std::fs::File::open(&seg.data_path)
                .map_err(|e| Error::io("opening", &seg.data_path, e))?;
            out.push(SnapshotFile {
                base: seg.base,
                len,
                file,
            });
            if seg.base == last.segment {
                return Ok(out);
            }
        }
        Err(Error::InvalidArgument(format!(
            "the segment of Raft index {last_index} is gone"
        )))
    }

    /// Replaces the whole log by the verified snapshot in `staging`, with the metadata file
    /// `meta_name` holding `meta`, atomically (see the module doc), and reopens the log's
    /// state from the new files. A failure after the exchange latches the log (a restart
    /// opens the new files).
    pub async fn install_staged(
        &self,
        staging: Staging,
        meta_name: &str,
        meta: &[u8],
    ) -> Result<()> {
        if !staging.verified {
            return Err(Error::InvalidArgument(
                "a snapshot is installed only once verified".into(),
            ));
        }
        meta::write(&staging.dir, meta_name, meta)?;
        // The partition's mark goes into the new directory before it is exchanged in: the
        // directory that then holds the partition holds its mark (`docs/format.md`,
        // "`partition.meta` payload"). A log without one (opened outside a catalog) stays so.
        let mark = crate::catalog::PARTITION_META;
        if let Some(payload) = meta::read(&self.dir, mark)? {
            meta::write(&staging.dir, mark, &payload)?;
        }
        let _permit = self.lock_io().await?;
        // An exchange that fails (a file system without RENAME_EXCHANGE) leaves the log as
        // it was, serving and writable.
        exchange(&staging.dir, &self.dir)?;
        let old_lowest = self.state.borrow().lowest;
        let exclusive = self.exclusive();
        let r = self.reopen_swapped().await;
        let new_lowest = self.state.borrow().lowest;
        self.end_cut(&r, old_lowest.min(new_lowest));
        drop(exclusive);
        self.appended.notify(usize::MAX);
        drop(_permit);
        // `staging` now names the old log; dropping it deletes it.
        drop(staging);
        if let Some(parent) = self.dir.parent() {
            meta::sync_dir(parent)?;
        }
        r?;
        self.recover_last_batch().await
    }

    /// The state of the log from the files just exchanged in.
    async fn reopen_swapped(&self) -> Result<()> {
        // The old files are under the staging name now (open handles still read them).
        let doomed = std::mem::take(&mut self.state_mut().segments);
        for mut seg in doomed {
            seg.writer = None;
            self.budget.release(&seg.slot);
        }
        if let Some(parent) = self.dir.parent() {
            meta::sync_dir(parent)?;
        }
        let mut segments = recovery::sealed_segments(&self.dir)?;
        let start_index = recovery::start_index(&self.dir)?;
        let active = segments.last_mut().ok_or_else(|| {
            Error::corrupt(&self.dir, 0, "an installed snapshot without segments")
        })?;
        let interval = u64::from(self.config.index_interval_bytes);
        recovery::recover_active(active, self.index_capacity, interval, start_index).await?;
        let mut st = self.state_mut();
        let (lowest, next, next_index, term) = {
            let first = &segments[0];
            let last = &segments[segments.len() - 1];
            (first.base, last.next, last.next_index, last.last_term)
        };
        st.segments = segments;
        st.lowest = lowest;
        st.next = next;
        st.next_index = next_index;
        st.term = term;
        st.durable_next = next;
        st.durable_index = next_index;
        st.written_next = next;
        // The owner raises it to what it knows is committed.
        st.visible = lowest;
        st.latched = None;
        st.disk_full = None;
        st.sync_requested = next;
        st.recent_reads.clear();
        Ok(())
    }
}
