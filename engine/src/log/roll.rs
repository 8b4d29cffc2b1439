//! Segment rolls: creating an active segment, and sealing the active segment (written,
//! synced, cut to size) to start the next one at the next offset.

use super::manifest::{self, Span};
use super::Log;
use crate::budget::OpenFiles;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::meta;
use crate::segment::{self, Segment, Writer};
use std::path::Path;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use super::commit::record_sync;

/// Creates the files of a new, empty active segment at `base` in `dir`, durably (the
/// directory is synced). The caller records it ([`manifest`](super::manifest)) before
/// writing to it.
pub(super) async fn create_segment(
    dir: &Path,
    base: u64,
    base_index: u64,
    index_capacity: usize,
) -> Result<Segment> {
    let data_path = segment::data_path(dir, base);
    let index_path = segment::index_path(dir, base);
    let data = segment::open_dma(&data_path, true).await?;
    data.truncate(0)
        .await
        .map_err(|e| Error::glommio("truncating new data file", &data_path, e))?;
    let index = Index::open(&index_path, index_capacity)?;
    meta::sync_dir(dir)?;
    crate::power_loss::synced_exactly(&data_path, 0);
    let mut seg = Segment::new_sealed(dir, base, 0, SystemTime::now());
    seg.base_index = base_index;
    seg.next_index = base_index;
    seg.writer = Some(Writer::new(Rc::new(data), index, 0, Vec::new(), 0, 0));
    Ok(seg)
}

impl Log {
    /// Seals the active segment (everything written and synced, index cut to size) and starts
    /// a new one at the next offset. Caller holds `io`.
    pub(super) async fn roll_locked(&self, len: u64) -> Result<()> {
        {
            let st = self.state.borrow();
            self.check_writable(&st)?;
            let seg = st.segments.last().ok_or(Error::ShutDown)?;
            let index_full = seg.writer.as_ref().is_some_and(|w| w.index.is_full());
            // Someone else may have rolled while we waited for the lock; a segment without
            // records never rolls (see `need`).
            if seg.size == 0
                || seg.has_no_records()
                || (seg.size + len <= self.config.segment_bytes && !index_full)
            {
                return Ok(());
            }
        }
        let exclusive = self.exclusive();
        // Latch (or wait for space) before the rebuild ends: a roll cut short after its
        // writer was taken leaves none.
        let r = self.roll_inner().await.map_err(|e| self.fail(e));
        drop(exclusive);
        r
    }

    async fn roll_inner(&self) -> Result<()> {
        self.write_out_inner(true).await?;
        // Cut to size, synced and its index sealed while the writer is still in place (the
        // log is exclusive: nothing is admitted meanwhile): a read in the meantime goes
        // through the writer, and never opens the files half sealed, where the index not
        // cut yet would be taken for a damaged one and rebuilt under the roll.
        let (data, size, path) = {
            let st = self.state.borrow();
            let seg = st.segments.last().ok_or(Error::ShutDown)?;
            let w = seg.writer.as_ref().ok_or(Error::ShutDown)?;
            (Rc::clone(&w.data), seg.size, seg.data_path.clone())
        };
        data.truncate(size)
            .await
            .map_err(|e| Error::glommio("cutting sealed segment", &path, e))?;
        let sync_started = Instant::now();
        data.fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing sealed segment", &path, e))?;
        drop(data);
        record_sync(&mut self.state_mut(), sync_started, None);
        crate::power_loss::synced_exactly(&path, size);
        let (next, next_index) = {
            let mut st = self.state_mut();
            let (next, next_index) = (st.next, st.next_index);
            let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
            seg.writer.as_mut().ok_or(Error::ShutDown)?.index.seal()?;
            // The writer's files become the sealed segment's in the same step: a read while
            // the next segment is created finds them in the slot, and never the segment with
            // neither (it would open the files again, and the roll would then replace what
            // the read put in the slot).
            if let Some(w) = seg.writer.take() {
                self.budget
                    .install(&seg.slot, OpenFiles::new(w.data, w.index));
            }
            (next, next_index)
        };
        let new = create_segment(&self.dir, next, next_index, self.index_capacity).await?;
        // Recorded once its files are durable, before anything is written to it.
        let mut segments = self.segment_extents();
        segments.push((next, 0));
        if let Some(span) = Span::of(&segments) {
            manifest::write(&self.dir, span)?;
        }
        self.state_mut().segments.push(new);
        Ok(())
    }
}
