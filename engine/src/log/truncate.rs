//! Cutting the log's tail (`truncate_suffix`, for a follower whose log conflicts with its
//! leader's) and emptying it (`reset`, the first step of installing a snapshot). Both rebuild
//! the active segment under `io` and bump the cut epoch, so an appender or a sync that
//! waited across one learns that its offsets were cut.

use super::Log;
use crate::batch;
use crate::error::{Error, Result};
use crate::segment::{self, align_down, align_up, Segment, Writer};
use std::time::{Instant, SystemTime};

use super::commit::record_sync;

impl Log {
    /// Drops every record after `last_kept` (Raft: a follower's log conflicts with its
    /// leader's). The cut is durable when this returns.
    pub async fn truncate_suffix(&self, last_kept: u64) -> Result<()> {
        let _permit = self
            .io
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
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
        let _exclusive = self.exclusive();
        let r = self.truncate_suffix_inner(new_next).await;
        {
            let mut st = self.state.borrow_mut();
            st.exclusive = false;
            st.cut_epoch += 1;
            st.cut_floor = st.cut_floor.min(new_next);
        }
        if let Err(e) = &r {
            self.latch(e);
        }
        r
    }

    async fn truncate_suffix_inner(&self, new_next: u64) -> Result<()> {
        // Make the device match memory first, so the cut below works on the files only.
        self.write_out_inner(false).await?;
        let t = {
            let st = self.state.borrow();
            st.segments.partition_point(|s| s.base < new_next).max(1) - 1
        };
        let t_base = self.state.borrow().segments[t].base;
        self.ensure_open(t_base).await?;
        let (base, path) = {
            let st = self.state.borrow();
            (st.segments[t].base, st.segments[t].data_path.clone())
        };
        // Where the cut falls: after a whole batch, or inside one that must be re-encoded.
        let (cut_pos, rewritten) = if new_next == base {
            (0u64, None)
        } else {
            let (batches, _) = self.read_batches(new_next - 1, 1, 1, u64::MAX).await?;
            let (h, pos, _, data) = batches
                .into_iter()
                .next()
                .ok_or_else(|| Error::corrupt(&path, 0, "batch holding the cut point not found"))?;
            if h.next_offset() == new_next {
                (pos + h.batch_len() as u64, None)
            } else {
                let keep = (new_next - h.base_offset) as u32;
                let bytes = batch::truncate_batch(&h, &data, keep).ok_or_else(|| {
                    Error::corrupt(&path, pos, "records do not add up to the batch length")
                })?;
                (pos + bytes.len() as u64, Some((pos, bytes)))
            }
        };
        // Drop later segments (the active one too when the cut is before it) and take segment
        // t's files to make it the active segment again.
        let (doomed, taken) = {
            let mut st = self.state.borrow_mut();
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
        let (data, mut index) = taken.ok_or(Error::ShutDown)?;
        index.reopen_for_append(self.index_capacity)?;
        let keep_entries = match (new_next - base).checked_sub(1) {
            Some(rel) => index.lookup(rel as u32).map(|(i, _)| i + 1).unwrap_or(0),
            None => 0,
        };
        index.truncate(keep_entries);
        // Rewrite from the block holding the first changed byte: the bytes before it in that
        // block, then the re-encoded batch if any, zero-padded; then drop everything after.
        let changed = rewritten.as_ref().map(|(p, _)| *p).unwrap_or(cut_pos);
        let w0 = align_down(changed);
        let mut content = if changed > w0 {
            segment::read_at(&data, &path, w0, (changed - w0) as usize)
                .await?
                .to_vec()
        } else {
            Vec::new()
        };
        if content.len() as u64 != changed - w0 {
            return Err(Error::corrupt(
                &path,
                w0,
                "data file ends before the cut point",
            ));
        }
        if let Some((_, bytes)) = &rewritten {
            content.extend_from_slice(bytes);
        }
        segment::rewrite_tail(&data, &path, w0, &content).await?;
        data.truncate(align_up(cut_pos))
            .await
            .map_err(|e| Error::glommio("cutting", &path, e))?;
        let sync_started = Instant::now();
        data.fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing", &path, e))?;
        record_sync(&mut self.state.borrow_mut(), sync_started, None);
        index.flush()?;
        let buf_pos = align_down(cut_pos);
        let buf = content
            .get((buf_pos - w0) as usize..)
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let since_index = index
            .last()
            .map(|e| cut_pos - u64::from(e.position))
            .unwrap_or(0);
        let last_term = index.last().map(|e| e.term).unwrap_or(0);
        let mut st = self.state.borrow_mut();
        let seg = &mut st.segments[t];
        seg.size = cut_pos;
        seg.next = new_next;
        seg.last_term = last_term;
        seg.modified = SystemTime::now();
        seg.writer = Some(Writer {
            data,
            index,
            buf_pos,
            buf,
            written: cut_pos,
            since_index,
        });
        st.next = new_next;
        st.durable_next = st.durable_next.min(new_next);
        st.sync_requested = st.durable_next;
        st.lowest = st.segments[0].base;
        Ok(())
    }

    /// Removes every segment and starts empty at `next_offset` (also the first step of
    /// installing a snapshot).
    pub async fn reset(&self, next_offset: u64) -> Result<()> {
        let _permit = self
            .io
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
        let old_lowest = self.state.borrow().lowest;
        let _exclusive = self.exclusive();
        let r = self.reset_inner(next_offset).await;
        let mut st = self.state.borrow_mut();
        st.exclusive = false;
        st.cut_epoch += 1;
        st.cut_floor = st.cut_floor.min(next_offset).min(old_lowest);
        drop(st);
        self.appended.notify(usize::MAX);
        r
    }

    async fn reset_inner(&self, next_offset: u64) -> Result<()> {
        let doomed: Vec<Segment> = std::mem::take(&mut self.state.borrow_mut().segments);
        for mut seg in doomed {
            seg.writer = None;
            self.delete_segment_files(seg)?;
        }
        let seg = self.create_segment(next_offset).await?;
        let mut st = self.state.borrow_mut();
        st.segments.push(seg);
        st.lowest = next_offset;
        st.next = next_offset;
        st.durable_next = next_offset;
        st.latched = None;
        st.sync_requested = next_offset;
        Ok(())
    }
}
