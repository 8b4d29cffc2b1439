//! Retention: removing whole old segments, below an offset (`truncate_prefix`) or beyond the
//! log's size and age limits. The active segment is never removed.

use super::{find, Log, Removed};
use crate::error::{Error, Result};
use crate::meta;
use crate::segment::{self, Segment};
use std::path::Path;
use std::time::{Duration, SystemTime};

impl Log {
    /// Removes every whole segment whose records all have offsets <= `lowest` (the book's
    /// `Truncate`). The active segment is never removed.
    pub async fn truncate_prefix(&self, lowest: u64) -> Result<Removed> {
        let _permit = self.lock_io().await?;
        self.remove_prefix_while(|seg, _| {
            seg.next <= lowest.saturating_add(1) && seg.next > seg.base
        })
    }

    /// Removes every whole segment whose batches all have Raft indexes below `first_kept`
    /// (Raft compacted its log past them). The active segment is never removed.
    pub async fn truncate_prefix_index(&self, first_kept: u64) -> Result<Removed> {
        let _permit = self.lock_io().await?;
        self.remove_prefix_while(|seg, _| seg.next_index <= first_kept && !seg.is_empty())
    }

    /// Deletes the oldest sealed segments while the log exceeds `retention_bytes`, and those
    /// last written before `now - retention_ms`.
    pub async fn apply_retention(&self, now: SystemTime) -> Result<Removed> {
        let (max_bytes, max_age) = self.retention_limits();
        if max_bytes == 0 && max_age == 0 {
            return Ok(Removed::default());
        }
        let _permit = self.lock_io().await?;
        let cutoff = now.checked_sub(Duration::from_millis(max_age));
        self.remove_prefix_while(|seg, total| {
            (max_bytes > 0 && total > max_bytes)
                || (max_age > 0 && cutoff.is_some_and(|c| seg.modified < c))
        })
    }

    /// Where [`apply_retention`](Self::apply_retention) would cut, as a Raft index: the
    /// first index of the first segment it would keep, or `None` when it would remove
    /// nothing. For owners whose replication layer must compact its own log first.
    pub fn retention_cut(&self, now: SystemTime) -> Option<u64> {
        let (max_bytes, max_age) = self.retention_limits();
        self.retention_cut_with(now, max_bytes, max_age)
    }

    /// [`retention_cut`](Self::retention_cut) under other limits (0: none), e.g. the bound
    /// past which retention no longer waits for a lagging replica.
    pub fn retention_cut_with(&self, now: SystemTime, max_bytes: u64, max_age: u64) -> Option<u64> {
        if max_bytes == 0 && max_age == 0 {
            return None;
        }
        let cutoff = now.checked_sub(Duration::from_millis(max_age));
        let st = self.state.borrow();
        let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
        let mut cut = None;
        for (i, seg) in st.segments.iter().enumerate() {
            // The active segment is never removed.
            if i + 1 == st.segments.len() {
                break;
            }
            let doomed = (max_bytes > 0 && total > max_bytes)
                || (max_age > 0 && cutoff.is_some_and(|c| seg.modified < c));
            if !doomed {
                break;
            }
            total -= seg.size;
            cut = Some(seg.next_index);
        }
        cut
    }

    fn remove_prefix_while(&self, mut pred: impl FnMut(&Segment, u64) -> bool) -> Result<Removed> {
        let mut removed = Removed::default();
        let mut doomed = Vec::new();
        {
            let mut st = self.state_mut();
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            while st.segments.len() > 1 && pred(&st.segments[0], total) {
                let seg = st.segments.remove(0);
                total -= seg.size;
                removed.segments += 1;
                removed.bytes += seg.size;
                doomed.push(seg);
            }
            // A latched log may have no segments left (a reset that failed midway).
            if let Some(first) = st.segments.first() {
                st.lowest = first.base;
            }
        }
        if !doomed.is_empty() {
            // Recorded before the deletions: a record naming a deleted segment would find
            // the log short at the next open.
            if let Some(span) = super::manifest::Span::of(&self.segment_extents()) {
                super::manifest::write(&self.dir, span)?;
            }
        }
        for seg in doomed {
            self.delete_segment_files(seg)?;
        }
        if removed.segments > 0 {
            meta::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    pub(super) fn delete_segment_files(&self, seg: Segment) -> Result<()> {
        self.budget.release(&seg.slot);
        remove_file(&seg.data_path)?;
        remove_file(&seg.index_path)
    }

    /// Deletes the segment files in the log's directory that its state does not hold: what a
    /// reset or truncation that failed midway took out of the state but could not delete.
    pub(super) fn delete_stray_segment_files(&self) -> Result<()> {
        let listing = |e| Error::io("listing", &self.dir, e);
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            // No directory, no strays (creating the next segment will fail on its own).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(listing(e)),
        };
        for entry in entries {
            let entry = entry.map_err(listing)?;
            let Some((base, _)) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_file_name)
            else {
                continue;
            };
            let known = find(&self.state.borrow().segments, base).is_some();
            if !known {
                log::warn!(
                    "{}: removing a segment file left by a failed reset or truncation",
                    entry.path().display()
                );
                remove_file(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Removes a file; one that is already gone is fine.
fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}
