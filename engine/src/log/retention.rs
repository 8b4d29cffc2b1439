//! Retention: removing whole old segments, below an offset (`truncate_prefix`) or beyond the
//! log's size and age limits. The active segment is never removed.

use super::{Log, Removed};
use crate::error::{Error, Result};
use crate::meta;
use crate::segment::Segment;
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

    /// Deletes the oldest sealed segments while the log exceeds `retention_bytes`, and those
    /// last written before `now - retention_ms`.
    pub async fn apply_retention(&self, now: SystemTime) -> Result<Removed> {
        let (max_bytes, max_age) = (self.config.retention_bytes, self.config.retention_ms);
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
        for p in [&seg.data_path, &seg.index_path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", p, e)),
            }
        }
        Ok(())
    }
}
