//! Cutting the log's tail (`truncate_suffix`, for a follower whose log conflicts with its
//! leader's) and emptying it (`reset`, the first step of installing a snapshot). Both rebuild
//! the active segment under `io` and bump the cut epoch, so an appender or a sync that
//! waited across one learns that its offsets were cut.

use super::Log;
use crate::batch;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::segment::{self, align_down, align_up, Segment, Writer};
use glommio::io::DmaFile;
use std::path::Path;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use super::commit::record_sync;
use super::manifest::{self, Span};
use super::roll::create_segment;

impl Log {
    /// Drops every record after `last_kept` (Raft: a follower's log conflicts with its
    /// leader's). The cut is durable when this returns.
    pub async fn truncate_suffix(&self, last_kept: u64) -> Result<()> {
        let _permit = self.lock_io().await?;
        let new_next = last_kept.saturating_add(1);
        {
            let st = self.state.borrow();
            self.check_writable(&st)?;
            if new_next >= st.next {
                return Ok(());
            }
            if new_next < st.lowest {
                return Err(Error::InvalidArgument(format!(
                    "cannot truncate after {last_kept}: the log starts at {}",
                    st.lowest
                )));
            }
        }
        let exclusive = self.exclusive();
        let r = self.truncate_suffix_inner(Target::Offset(new_next)).await;
        self.end_cut(&r, new_next);
        drop(exclusive);
        r
    }

    /// Drops every batch after Raft index `last_kept` (a follower's log conflicts with its
    /// leader's). One batch is one entry, so the cut always falls between batches. The cut is
    /// durable when this returns.
    pub async fn truncate_after_index(&self, last_kept: u64) -> Result<()> {
        let _permit = self.lock_io().await?;
        let next_index = last_kept.saturating_add(1);
        {
            let st = self.state.borrow();
            self.check_writable(&st)?;
            if next_index >= st.next_index {
                return Ok(());
            }
            let first = st.segments.first().map(|s| s.base_index).unwrap_or(0);
            if next_index < first {
                return Err(Error::InvalidArgument(format!(
                    "cannot truncate after Raft index {last_kept}: the log starts at {first}"
                )));
            }
        }
        let exclusive = self.exclusive();
        let r = self.truncate_suffix_inner(Target::Index(next_index)).await;
        let floor = self.state.borrow().next;
        self.end_cut(&r, floor);
        drop(exclusive);
        r
    }

    /// Ends a truncation or reset, before it lets appends in again: latches the log if it
    /// failed (it may have left no writer, or no segments), and bumps the cut epoch so that
    /// appenders and syncs that waited across it see that offsets from `floor` on were cut.
    ///
    /// A cut that found the disk full before it touched a file (its first step, writing out
    /// the buffer, failed for want of space) left the log waiting for space, in the state
    /// any write-out leaves: that is not a failure to latch, and the log takes writes (and
    /// cuts) again once space returns.
    pub(super) fn end_cut(&self, r: &Result<()>, floor: u64) {
        if let Err(e) = r {
            let waiting =
                matches!(e, Error::DiskFull { .. }) && self.state.borrow().disk_full.is_some();
            if !waiting {
                self.latch(e);
            }
        }
        let mut st = self.state_mut();
        st.cut_epoch += 1;
        st.cut_floor = st.cut_floor.min(floor);
    }

    async fn truncate_suffix_inner(&self, target: Target) -> Result<()> {
        // Make the device match memory first, so the cut below works on the files only. A
        // failure here has touched no file: it is any write-out's (a full disk waits for
        // space, anything else latches).
        self.write_out_inner(false)
            .await
            .map_err(|e| self.fail(e))?;
        // The segment the cut falls in: it becomes the active segment again.
        let t = {
            let st = self.state.borrow();
            let i = match target {
                Target::Offset(o) => st.segments.partition_point(|s| s.base < o),
                // The segment holding Raft index x (cut at its start when it begins there).
                Target::Index(x) => st.segments.partition_point(|s| s.base_index <= x),
            };
            i.max(1) - 1
        };
        let base = self.state.borrow().segments[t].base;
        self.ensure_open(base).await?;
        let path = self.state.borrow().segments[t].data_path.clone();
        let cut = match target {
            Target::Offset(new_next) => self.cut_point(base, &path, new_next).await?,
            Target::Index(next_index) => self.cut_point_index(base, &path, next_index).await?,
        };
        let (new_next, next_index) = (cut.next_offset, cut.next_index);
        if t == 0 && cut.end == 0 {
            // The cut empties the log: nothing on disk would tell a restart the Raft index it
            // continues at. Written before the cut, so a crash never finds an empty log
            // without it (before the cut, batches say it and this file is not read).
            crate::meta::write(
                &self.dir,
                super::recovery::START_META,
                &next_index.to_le_bytes(),
            )?;
        }
        let (data, mut index) = self.take_files_from(t)?;
        index.reopen_for_append(self.index_capacity)?;
        // Index entries of batches before the cut stay: those at positions below its end.
        let keep_entries = (0..index.len())
            .rev()
            .find(|&i| {
                index
                    .entry(i)
                    .is_some_and(|e| u64::from(e.position) < cut.end)
            })
            .map(|i| i + 1)
            .unwrap_or(0);
        let keep_entries = if cut.end == 0 { 0 } else { keep_entries };
        index.truncate(keep_entries);
        let tail = self.cut_data_file(&data, &path, &cut).await?;
        index.flush()?;
        let since_index = index
            .last()
            .map(|e| cut.end - u64::from(e.position))
            .unwrap_or(0);
        let last_term = index.last().map(|e| e.term).unwrap_or(0);
        let mut st = self.state_mut();
        let seg = &mut st.segments[t];
        seg.size = cut.end;
        seg.next = new_next;
        seg.next_index = next_index;
        seg.last_term = last_term;
        seg.modified = SystemTime::now();
        seg.writer = Some(Writer::new(
            data,
            index,
            align_down(cut.end),
            tail,
            cut.end,
            since_index,
        ));
        st.next = new_next;
        st.next_index = next_index;
        st.durable_next = st.durable_next.min(new_next);
        st.durable_index = st.durable_index.min(next_index);
        st.visible = st.visible.min(new_next);
        st.written_next = st.written_next.min(new_next);
        st.sync_requested = st.durable_next;
        st.lowest = st.segments[0].base;
        Ok(())
    }

    /// Where a cut before `new_next` falls in segment `base` (data file `path`): after a whole
    /// batch, or inside one that must be re-encoded.
    async fn cut_point(&self, base: u64, path: &Path, new_next: u64) -> Result<Cut> {
        if new_next == base {
            let base_index = self.segment_base_index(base);
            return Ok(Cut {
                end: 0,
                rewritten: None,
                next_offset: new_next,
                next_index: base_index,
            });
        }
        let b = self
            .read_batches(new_next - 1, 1, 1, u64::MAX)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::corrupt(path, 0, "batch holding the cut point not found"))?;
        if b.header.next_offset() == new_next {
            return Ok(Cut {
                end: b.pos + b.header.batch_len() as u64,
                rewritten: None,
                next_offset: new_next,
                next_index: b.header.raft_index + 1,
            });
        }
        let keep = (new_next - b.header.base_offset) as u32;
        let bytes = batch::truncate_batch(&b.header, &b.bytes, keep).ok_or_else(|| {
            Error::corrupt(path, b.pos, "records do not add up to the batch length")
        })?;
        Ok(Cut {
            end: b.pos + bytes.len() as u64,
            rewritten: Some((b.pos, bytes)),
            next_offset: new_next,
            next_index: b.header.raft_index + 1,
        })
    }

    /// Where a cut before Raft index `next_index` falls in segment `base`: before the batch
    /// of that index (or at the segment's start).
    async fn cut_point_index(&self, base: u64, path: &Path, next_index: u64) -> Result<Cut> {
        let base_index = self.segment_base_index(base);
        if next_index <= base_index {
            return Ok(Cut {
                end: 0,
                rewritten: None,
                next_offset: base,
                next_index: base_index,
            });
        }
        let b = self
            .read_by_index(next_index, next_index + 1, 1)
            .await?
            .into_iter()
            .next()
            .filter(|b| b.header.raft_index == next_index && b.segment == base)
            .ok_or_else(|| {
                Error::corrupt(
                    path,
                    0,
                    format!("batch of Raft index {next_index} not found where the cut falls"),
                )
            })?;
        Ok(Cut {
            end: b.pos,
            rewritten: None,
            next_offset: b.header.base_offset,
            next_index,
        })
    }

    fn segment_base_index(&self, base: u64) -> u64 {
        super::find(&self.state.borrow().segments, base)
            .map(|s| s.base_index)
            .unwrap_or(0)
    }

    /// Drops the segments after segment `t` (the active one too when the cut is before it)
    /// and takes segment `t`'s files, to make it the active segment again.
    fn take_files_from(&self, t: usize) -> Result<(Rc<DmaFile>, Index)> {
        let kept = {
            let st = self.state.borrow();
            (st.segments.len() > t + 1)
                .then(|| Span::of(&manifest::extents(&st.segments[..=t])))
                .flatten()
        };
        if let Some(span) = kept {
            // Recorded before the deletions: a record naming a deleted segment would find
            // the log short at the next open.
            manifest::write(&self.dir, span)?;
        }
        let (doomed, taken) = {
            let mut st = self.state_mut();
            let doomed: Vec<Segment> = st.segments.drain(t + 1..).collect();
            let seg = &mut st.segments[t];
            let taken = match seg.writer.take() {
                Some(w) => Some((w.data, w.index)),
                None => self.budget.release(&seg.slot).map(|f| (f.data, f.index)),
            };
            (doomed, taken)
        };
        for mut seg in doomed {
            seg.writer = None;
            self.delete_segment_files(seg)?;
        }
        taken.ok_or(Error::ShutDown)
    }

    /// Rewrites the data file from the block holding the first changed byte (the bytes
    /// before it in that block, then the re-encoded batch if any, zero-padded), drops
    /// everything after the cut, and syncs. Returns the bytes of the block holding the new
    /// end, before it: the new write-behind buffer.
    async fn cut_data_file(&self, data: &DmaFile, path: &Path, cut: &Cut) -> Result<Vec<u8>> {
        let changed = cut.rewritten.as_ref().map(|(p, _)| *p).unwrap_or(cut.end);
        let w0 = align_down(changed);
        let mut content = if changed > w0 {
            segment::read_at(data, path, w0, (changed - w0) as usize)
                .await?
                .to_vec()
        } else {
            Vec::new()
        };
        if content.len() as u64 != changed - w0 {
            return Err(Error::corrupt(
                path,
                w0,
                "data file ends before the cut point",
            ));
        }
        if let Some((_, bytes)) = &cut.rewritten {
            content.extend_from_slice(bytes);
        }
        segment::rewrite_tail(data, path, w0, &content).await?;
        data.truncate(align_up(cut.end))
            .await
            .map_err(|e| Error::glommio("cutting", path, e))?;
        let sync_started = Instant::now();
        data.fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing", path, e))?;
        record_sync(&mut self.state_mut(), sync_started, None);
        crate::power_loss::synced_exactly(path, cut.end);
        Ok(content
            .get((align_down(cut.end) - w0) as usize..)
            .map(|b| b.to_vec())
            .unwrap_or_default())
    }

    /// Removes every segment and starts empty at `next_offset` (also the first step of
    /// installing a snapshot). A reset that fails latches the log; one that succeeds clears
    /// an earlier latch, as the files the latch distrusted are gone.
    pub async fn reset(&self, next_offset: u64) -> Result<()> {
        let next_index = self.state.borrow().next_index;
        self.reset_at(next_offset, next_index).await
    }

    /// Removes every segment and starts empty at `next_offset` and Raft index `next_index`
    /// (installing a snapshot whose last entry is `next_index - 1`). The Raft index is kept
    /// in `start.meta`, since an empty log has no batch to tell it after a restart.
    pub async fn reset_at(&self, next_offset: u64, next_index: u64) -> Result<()> {
        let _permit = self.lock_io().await?;
        let old_lowest = self.state.borrow().lowest;
        let exclusive = self.exclusive();
        let r = self.reset_inner(next_offset, next_index).await;
        self.end_cut(&r, next_offset.min(old_lowest));
        drop(exclusive);
        self.appended.notify(usize::MAX);
        r
    }

    async fn reset_inner(&self, next_offset: u64, next_index: u64) -> Result<()> {
        let doomed: Vec<Segment> = std::mem::take(&mut self.state_mut().segments);
        // No segment recorded until the new one is made: a crash in between finds no
        // record, not a log short of the segments it recorded. (After the segments left the
        // state: a failure here latches a log that serves none of them.)
        manifest::forget(&self.dir)?;
        for mut seg in doomed {
            seg.writer = None;
            self.delete_segment_files(seg)?;
        }
        // A reset removes every segment, those an earlier failure lost track of included: a
        // reopen would find them and serve records this reset removed.
        self.delete_stray_segment_files()?;
        let seg = create_segment(&self.dir, next_offset, next_index, self.index_capacity).await?;
        manifest::write(
            &self.dir,
            Span {
                first: next_offset,
                last: next_offset,
                count: 1,
                sealed_bytes: Some(0),
            },
        )?;
        // After the segment: a reset that cannot create files fails on the segment (and
        // latches) before anything else. A crash between the two leaves an empty log that
        // continues at the index of the previous reset; installing a snapshot (which writes
        // its own metadata last) is repeated then.
        crate::meta::write(
            &self.dir,
            super::recovery::START_META,
            &next_index.to_le_bytes(),
        )?;
        let mut st = self.state_mut();
        st.segments.push(seg);
        st.lowest = next_offset;
        st.next = next_offset;
        st.next_index = next_index;
        st.durable_next = next_offset;
        st.durable_index = next_index;
        st.visible = next_offset;
        st.written_next = next_offset;
        st.latched = None;
        st.disk_full = None;
        st.sync_requested = next_offset;
        Ok(())
    }
}

/// Where a cut falls in its segment's data file.
struct Cut {
    /// The data file's length after the cut.
    end: u64,
    /// A batch re-encoded without the records after the cut, and its position.
    rewritten: Option<(u64, Vec<u8>)>,
    /// The offset and Raft index the log continues at after the cut.
    next_offset: u64,
    next_index: u64,
}

/// What a truncation keeps: everything before an offset, or before a Raft index.
#[derive(Clone, Copy)]
enum Target {
    Offset(u64),
    Index(u64),
}
