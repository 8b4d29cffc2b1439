//! Group commit: writing the active segment's buffer out with O_DIRECT and making it durable
//! with fdatasync, one leader at a time for every appender waiting, pipelined so one round's
//! write overlaps the previous round's sync; group writes (without the sync) for `interval`
//! and `never`, whose appends are acknowledged once written; and the log's background task
//! (the periodic sync of `interval`, and the check for space while the disk is full).

use super::{Log, State};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::limits::{PREALLOC_MIN_SYNCS, PREALLOC_WINDOW_BYTES};
use crate::metrics;
use crate::segment::{align_down, align_up};
use glommio::io::{DmaBuffer, DmaFile};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Instant;

impl Log {
    /// Writes out and fdatasyncs everything appended so far, whatever the policy: records
    /// and control batches (which take a Raft index but no offset).
    pub async fn sync(&self) -> Result<()> {
        let (target, target_index) = {
            let st = self.state.borrow();
            (st.next, st.next_index)
        };
        loop {
            let offset_target = {
                let st = self.state.borrow();
                // A cut meanwhile lowers what there is to sync.
                let (target, target_index) = (target.min(st.next), target_index.min(st.next_index));
                if st.durable_next >= target && st.durable_index >= target_index {
                    return Ok(());
                }
                self.check_writable(&st)?;
                target
            };
            if self.must_wait(offset_target) {
                let listener = self.io_done.listen();
                if self.must_wait(offset_target) {
                    listener.await;
                }
                continue;
            }
            self.lead_sync().await?;
        }
    }

    /// Makes everything appended so far as durable as the topic's policy asks before an
    /// acknowledgement: fdatasynced under `always` ([`sync`](Self::sync)); under `interval`
    /// and `never`, written to the data file (a crash of the process cannot take it back;
    /// `interval`'s background sync makes it durable later). What a replica does before it
    /// acknowledges a Raft entry.
    pub async fn persist(&self) -> Result<()> {
        if self.config.durability == Durability::Always {
            return self.sync().await;
        }
        // One write-out of the whole buffer after any in flight: control batches (which move
        // no offset) included, which a wait by offset would miss.
        self.wait_io().await;
        self.check_writable(&self.state.borrow())?;
        self.lead_io(false).await
    }

    /// Waits until offsets below `target` are durable.
    ///
    /// Group commit, pipelined: one leader at a time writes out everything buffered (holding
    /// `io` only for the write), then fdatasyncs without holding it, so the next leader's write
    /// overlaps this leader's sync. An appender whose data is already covered by a sync in
    /// flight, or that finds a write under way, waits for it and checks again; followers never
    /// queue on the semaphore (glommio's does not hand permits over in order, so a busy
    /// appender could otherwise take it again and again while others starve).
    pub(super) async fn wait_durable(&self, target: u64) -> Result<()> {
        loop {
            {
                let st = self.state.borrow();
                if st.durable_next >= target {
                    return Ok(());
                }
                // A full disk stopped later writes, but a sync in flight still covers what
                // was written before: its outcome decides these offsets.
                let covered = st.disk_full.is_some() && st.sync_requested >= target;
                if !covered {
                    self.check_writable(&st)?;
                }
            }
            if self.must_wait(target) {
                let listener = self.io_done.listen();
                if self.must_wait(target) {
                    listener.await;
                }
                continue;
            }
            self.lead_sync().await?;
        }
    }

    /// True while someone else's write or sync will move `target` along.
    fn must_wait(&self, target: u64) -> bool {
        let st = self.state.borrow();
        st.durable_next < target
            && st.latched.is_none()
            && !st.closed
            && (st.io_busy || st.sync_requested >= target)
    }

    /// Waits until offsets below `target` are written to the data file: what `interval` and
    /// `never` acknowledge, so that a crash of this process never takes back an acknowledged
    /// record (nor one a reader saw). Group write: one leader writes out everything buffered
    /// for everyone waiting; the others wait for its write and check again.
    pub(super) async fn wait_written(&self, target: u64) -> Result<()> {
        loop {
            let busy = {
                let st = self.state.borrow();
                if st.written_next >= target {
                    return Ok(());
                }
                self.check_writable(&st)?;
                st.io_busy
            };
            if busy {
                self.wait_io().await;
            } else {
                self.lead_io(false).await?;
            }
        }
    }

    /// Leads one round: write out under `io`, then fdatasync outside it.
    async fn lead_sync(&self) -> Result<()> {
        let epoch = self.state.borrow().cut_epoch;
        let Written {
            file,
            path,
            target,
            target_index,
            appends,
        } = {
            let _busy = self.busy();
            let _permit = self.lock_io().await?;
            match self.write_phase().await {
                Ok(x) => x,
                Err(e) => return Err(self.fail(e)),
            }
        };
        {
            let mut st = self.state_mut();
            st.sync_requested = st.sync_requested.max(target);
        }
        let mark = self.power_loss_mark();
        let sync_started = Instant::now();
        let r = file
            .fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing", &path, e));
        {
            let mut st = self.state_mut();
            if r.is_ok() {
                st.stats.fdatasyncs += 1;
                record_sync(&mut st, sync_started, Some(appends));
                // A truncation or reset while the sync ran may have reused these offsets
                // for records this sync did not cover.
                if st.cut_epoch == epoch {
                    st.durable_next = st.durable_next.max(target.min(st.next));
                    st.durable_index = st.durable_index.max(target_index.min(st.next_index));
                    // TEST-ONLY journal: before anyone can learn that these are durable.
                    self.power_loss_synced(mark);
                }
                // Records just became readable: wake tailing readers.
                self.appended.notify(usize::MAX);
            }
            if st.cut_epoch != epoch {
                st.sync_requested = st.durable_next;
            }
        }
        if let Err(e) = &r {
            self.latch(e);
        }
        self.io_done.notify(usize::MAX);
        r
    }

    /// Marks a leader's write-out as under way until the guard drops (even if the future
    /// holding it is dropped midway), then wakes the waiters.
    fn busy(&self) -> impl Drop + '_ {
        struct Busy<'a>(&'a Log);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                self.0.state_mut().io_busy = false;
                self.0.io_done.notify(usize::MAX);
            }
        }
        self.state_mut().io_busy = true;
        Busy(self)
    }

    /// Runs one write-out (and fdatasync if `sync`) as the leader. The flag is cleared and
    /// followers are woken even if this future is dropped.
    pub(super) async fn lead_io(&self, sync: bool) -> Result<()> {
        let _busy = self.busy();
        let _permit = self.lock_io().await?;
        self.write_out_locked(sync).await
    }

    /// Resolves when the current leader's write-out ends (at once if there is none).
    pub(super) async fn wait_io(&self) {
        let listener = self.io_done.listen();
        if self.state.borrow().io_busy {
            listener.await;
        }
    }

    /// Writes the active segment's buffer to the device (whole aligned blocks, the partial
    /// tail block zero-padded and rewritten next time), then optionally fdatasyncs. Caller
    /// holds `io`. A failure latches the log, or for want of space makes it wait for space.
    async fn write_out_locked(&self, sync: bool) -> Result<()> {
        self.write_out_inner(sync).await.map_err(|e| self.fail(e))
    }

    /// `write_out_locked` without the latch: for callers that latch on their own failure
    /// (roll, truncation) or have nothing to latch (close). Caller holds `io`.
    pub(super) async fn write_out_inner(&self, sync: bool) -> Result<()> {
        let Written {
            file,
            path,
            target,
            target_index,
            appends,
        } = self.write_phase().await?;
        if sync {
            let mark = self.power_loss_mark();
            let sync_started = Instant::now();
            file.fdatasync()
                .await
                .map_err(|e| Error::glommio("syncing", &path, e))?;
            let mut st = self.state_mut();
            st.stats.fdatasyncs += 1;
            record_sync(&mut st, sync_started, Some(appends));
            st.durable_next = st.durable_next.max(target);
            st.durable_index = st.durable_index.max(target_index);
            // TEST-ONLY journal: before anyone can learn that these are durable.
            self.power_loss_synced(mark);
            drop(st);
            self.appended.notify(usize::MAX);
        }
        Ok(())
    }

    /// Writes the buffer out (whole aligned blocks, the partial tail block zero-padded and
    /// rewritten next time), topping up the zero-filled window ahead of it in the same round
    /// when the write comes near its end.
    async fn write_phase(&self) -> Result<Written> {
        let (written, copy) = self.copy_out()?;
        if let Some(Copied { pos, dma, len: n }) = copy {
            let want = dma.len();
            let zeroes = self.zero_window(&written.file, pos + want as u64);
            let data = written.file.write_at(dma, pos);
            let (wrote, zeroed) = futures_lite::future::zip(data, zeroes).await;
            let wrote = wrote.map_err(|e| Error::glommio("writing", &written.path, e))?;
            if wrote != want {
                self.state_mut().stats.short_writes += 1;
                return Err(self.short_write(&written.path, wrote, want));
            }
            let mut st = self.state_mut();
            st.stats.writes += 1;
            st.stats.bytes_written += want as u64;
            let full = align_down(n as u64) as usize;
            let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
            let w = seg.writer.as_mut().ok_or(Error::ShutDown)?;
            w.written = pos + n as u64;
            w.alloc_end = w.alloc_end.max(align_up(pos + want as u64));
            let zeroed = match zeroed {
                Some(Ok(end)) => {
                    let z = end.saturating_sub(w.alloc_end);
                    w.alloc_end = w.alloc_end.max(end);
                    z
                }
                Some(Err(e)) => {
                    // Best effort: a disk too full for the window still takes the data
                    // (the write above succeeded); writes extend the file from here on, and
                    // the next failing one reports the full disk.
                    log::debug!(
                        "partition {}: no zeroed window ahead of the data ({e}); writes extend the file",
                        self.partition_name()
                    );
                    w.prealloc = false;
                    0
                }
                None => 0,
            };
            w.cache.push(w.buf_pos, &w.buf[..full]);
            w.buf.drain(..full);
            w.buf_pos += full as u64;
            st.stats.zeroed_bytes += zeroed;
            st.written_next = st.written_next.max(written.target.min(st.next));
            drop(st);
            // Under `interval` and `never`, written records are what readers see.
            self.appended.notify(usize::MAX);
        } else {
            let mut st = self.state_mut();
            st.written_next = st.written_next.max(written.target.min(st.next));
        }
        Ok(written)
    }

    /// The error of a write the device took only `wrote` of `want` bytes of, reporting no
    /// error. A file system that fills up during a write may do that instead of failing it
    /// with ENOSPC (tmpfs writes the pages it has and stops at the one it cannot get): with
    /// no room left for the rest, it is a full disk, in the state ENOSPC leaves (the
    /// completed writes on the device, the rest still buffered; a retry of the write-out
    /// rewrites what the short one put there, and the recovery from a full disk cuts it
    /// off), so the log waits for space (`ErrorKind::StorageFull`, which `Log::fail` takes
    /// for that). With room left, the device failed: an I/O error, which latches the log.
    fn short_write(&self, path: &std::path::Path, wrote: usize, want: usize) -> Error {
        let free = super::space::free_bytes(&self.dir);
        let rest = want.saturating_sub(wrote) as u64;
        let (kind, what) = if free < rest {
            (std::io::ErrorKind::StorageFull, "the file system is full")
        } else {
            (std::io::ErrorKind::WriteZero, "with room left")
        };
        Error::io(
            "writing",
            path,
            std::io::Error::new(
                kind,
                format!("short write: {wrote} of {want} bytes, {what} ({free} bytes free)"),
            ),
        )
    }

    /// Keeps the window of zero-filled blocks ahead of a write that ends at `data_end`, while
    /// syncs are frequent enough for it to pay ([`PREALLOC_MIN_SYNCS`]): when less than half
    /// of [`PREALLOC_WINDOW_BYTES`] lies ahead of it, writes zeroes from the
    /// end of what is allocated (or `data_end`) to a full window past `data_end`, never past
    /// the segment's size limit. Resolves to `None` when nothing was to be done, else to the
    /// new end of the zero-filled blocks (or the error of the write, which the caller treats
    /// as "no window"). Caller holds `io`.
    fn zero_window(
        &self,
        file: &Rc<DmaFile>,
        data_end: u64,
    ) -> impl std::future::Future<Output = Option<std::io::Result<u64>>> + 'static {
        let plan = {
            let mut st = self.state_mut();
            let syncs = st.stats.fdatasyncs;
            let w = st.segments.last_mut().and_then(|s| s.writer.as_mut());
            let window = PREALLOC_WINDOW_BYTES.min(align_up(self.config.segment_bytes));
            let limit = align_up(self.config.segment_bytes);
            let w = w.map(|w| {
                if data_end >= w.mark_pos + window / 2 {
                    w.zeroing = syncs.saturating_sub(w.mark_syncs) >= PREALLOC_MIN_SYNCS;
                    w.mark_pos = data_end;
                    w.mark_syncs = syncs;
                }
                &*w
            });
            match w {
                Some(w) if w.prealloc && w.zeroing && data_end + window / 2 > w.alloc_end => {
                    let from = w.alloc_end.max(data_end);
                    let to = (data_end + window).min(limit);
                    (to > from).then_some((from, to))
                }
                _ => None,
            }
        };
        let file = Rc::clone(file);
        async move {
            let (from, to) = plan?;
            let len = (to - from) as usize;
            let mut dma = file.alloc_dma_buffer(len);
            dma.as_bytes_mut().fill(0);
            Some(match file.write_at(dma, from).await {
                Ok(n) if n == len => Ok(to),
                Ok(n) => Ok(from + align_down(n as u64)),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            })
        }
    }

    /// What a write-out will have written, and unless everything is written already, the
    /// buffer copied into an aligned DMA buffer, with its file position and length.
    fn copy_out(&self) -> Result<(Written, Option<Copied>)> {
        let mut st = self.state_mut();
        self.check_writable(&st)?;
        let target = st.next;
        let target_index = st.next_index;
        let appends = st.stats.appends;
        let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
        let w = seg.writer.as_mut().ok_or(Error::ShutDown)?;
        let written = Written {
            file: Rc::clone(&w.data),
            path: seg.data_path.clone(),
            target,
            target_index,
            appends,
        };
        if w.written == seg.size {
            return Ok((written, None));
        }
        let n = w.buf.len();
        let mut dma = w.data.alloc_dma_buffer(align_up(n as u64) as usize);
        let bytes = dma.as_bytes_mut();
        bytes[..n].copy_from_slice(&w.buf);
        bytes[n..].fill(0);
        Ok((
            written,
            Some(Copied {
                pos: w.buf_pos,
                dma,
                len: n,
            }),
        ))
    }

    pub(super) fn spawn_flusher(log: &Rc<Log>) {
        let weak: Weak<Log> = Rc::downgrade(log);
        let period = log.config.flush_period();
        let sync = matches!(log.config.durability, Durability::Interval { .. });
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(period).await;
                let Some(log) = weak.upgrade() else { return };
                if log.state.borrow().closed {
                    return;
                }
                // A full or latched log said so once; writing out again would only fail
                // again (every period, forever). A full one checks for space instead.
                if log.state.borrow().disk_full.is_some() {
                    log.probe_space().await;
                    continue;
                }
                if log.state.borrow().latched.is_some() {
                    continue;
                }
                log.shrink_idle_buffer();
                if log.is_dirty() {
                    let Ok(_permit) = log.lock_io().await else {
                        return;
                    };
                    if log.state.borrow().closed {
                        return;
                    }
                    match log.write_out_locked(sync).await {
                        Ok(())
                        | Err(Error::ShutDown)
                        | Err(Error::Latched { .. })
                        | Err(Error::DiskFull { .. }) => {}
                        // The first failure: it latched the log or made it wait for space.
                        Err(e) => {
                            log::error!("background flush of {} failed: {e}", log.dir.display())
                        }
                    }
                }
            }
        })
        .detach();
    }

    /// Gives back the write-behind buffer's memory beyond what it holds, once the log has
    /// nothing left to write: a partition that took a burst does not keep its peak forever.
    ///
    /// Likewise the tail cache of a log that took no append for [`CACHE_IDLE`], and the
    /// recent reads of one nobody read for as long: what they hold is charged to the memory
    /// budget, and a server with many partitions must not hold 4 MiB for each idle one.
    ///
    /// [`CACHE_IDLE`]: crate::limits::CACHE_IDLE
    fn shrink_idle_buffer(&self) {
        let mut st = self.state_mut();
        let now = std::time::Instant::now();
        let (appends, reads) = (st.stats.appends, st.stats.dma_reads + st.stats.memory_reads);
        if appends != st.idle_marks.0 {
            st.idle_marks.0 = appends;
            st.idle_since.0 = now;
        }
        if reads != st.idle_marks.1 {
            st.idle_marks.1 = reads;
            st.idle_since.1 = now;
        }
        let idle_for =
            |since: std::time::Instant| now.duration_since(since) >= crate::limits::CACHE_IDLE;
        if idle_for(st.idle_since.1) {
            st.recent_reads.clear();
        }
        let drop_cache = idle_for(st.idle_since.0);
        let idle = st.written_next == st.next && !st.io_busy;
        if let Some(w) = st.segments.last_mut().and_then(|s| s.writer.as_mut()) {
            if drop_cache && !w.cache.is_empty() {
                w.cache.clear();
            }
        }
        let Some(w) = st.segments.last_mut().and_then(|s| s.writer.as_mut()) else {
            return;
        };
        if idle && w.buf.capacity() > crate::limits::IDLE_WRITE_BUFFER_BYTES {
            w.buf
                .shrink_to(crate::limits::IDLE_WRITE_BUFFER_BYTES.max(w.buf.len()));
            w.track_buffer();
        }
    }

    fn is_dirty(&self) -> bool {
        let st = self.state.borrow();
        st.durable_next < st.next
            || st.durable_index < st.next_index
            || st
                .segments
                .last()
                .and_then(|s| s.writer.as_ref().map(|w| w.written < s.size))
                .unwrap_or(false)
    }
}

/// Records a completed fdatasync in the shard's metrics: its duration, and when it made
/// appends durable (`covered`: `stats.appends` when its write-out began), how many it
/// newly covered. Syncs may complete out of order under pipelining; the count never goes
/// back, so an overtaken sync records the appends it alone covered, possibly none.
pub(super) fn record_sync(st: &mut State, started: Instant, covered: Option<u64>) {
    let elapsed = started.elapsed();
    let batch = covered.map(|c| {
        let n = c.saturating_sub(st.synced_appends);
        st.synced_appends = st.synced_appends.max(c);
        n
    });
    metrics::with_local(|m| {
        m.fdatasync_ns.observe_duration(elapsed);
        if let Some(n) = batch.filter(|&n| n > 0) {
            m.group_commit_appends.observe(n);
        }
    });
}

/// What a write-out put on the device.
struct Written {
    /// The active segment's data file, to sync.
    file: Rc<DmaFile>,
    path: PathBuf,
    /// The offset below which every record is on the device.
    target: u64,
    /// The Raft index below which every batch is on the device.
    target_index: u64,
    /// `stats.appends` when the write-out began: what a sync of it covers.
    appends: u64,
}

/// The write-behind buffer copied for one O_DIRECT write.
struct Copied {
    /// The file position of the buffer's first byte (block-aligned).
    pos: u64,
    /// The buffer, zero-padded to whole blocks.
    dma: DmaBuffer,
    /// The buffer's bytes before the padding.
    len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::FileBudget;
    use crate::config::LogConfig;

    /// A write-out that fills the disk puts the log in the full state. An appender that was
    /// waiting for `io` meanwhile (a sync leader behind the background flush or a roll) then
    /// finds it full: that refusal is the state already entered, not a new failure, so the
    /// log stays full (and takes writes again once space returns) instead of latching until
    /// a restart. Seen on a 3-node cluster filling a tmpfs: "latching into read-only state:
    /// partition t/0 cannot take writes: the disk ... is full".
    #[test]
    fn a_sync_leader_that_finds_the_disk_full_leaves_it_full() {
        with_log(|log, _| async move {
            log.state_mut().disk_full = Some(super::super::space::DiskFull::for_tests());
            let e = log.lead_sync().await.expect_err("a full log refuses");
            assert!(matches!(e, Error::DiskFull { .. }), "{e:?}");
            assert_eq!(log.latched_cause(), None);
            assert_eq!(log.stats().write_state, super::super::WriteState::DiskFull);
        });
    }

    /// A short write with room left for the rest is the device failing: an I/O error that
    /// latches the log, never a full disk (`tests/short_write.rs` has the full tmpfs).
    #[test]
    fn a_short_write_with_room_left_latches() {
        with_log(|log, dir| async move {
            let free = super::super::space::free_bytes(&dir);
            assert!(free > 8192, "the test wants room: {free} bytes free");
            let e = log.short_write(&dir.join("x.log"), 4096, 8192);
            assert!(!e.is_out_of_space(), "{e}");
            assert!(
                e.to_string().contains("short write: 4096 of 8192 bytes"),
                "{e}"
            );
            let e = log.fail(e);
            assert!(matches!(e, Error::Io { .. }), "{e:?}");
            assert!(log.latched_cause().is_some());
            assert_eq!(log.stats().write_state, super::super::WriteState::Latched);
        });
    }

    /// Runs `body` on a log opened with the default settings in a fresh directory (given
    /// beside it), then closes the log.
    fn with_log<F, Fut>(body: F)
    where
        F: FnOnce(Rc<Log>, std::path::PathBuf) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        crate::run_local(tmp.path(), move || async move {
            let log = Log::open(&dir, LogConfig::default(), FileBudget::new(4))
                .await
                .expect("open");
            body(Rc::clone(&log), dir).await;
            let _ = log.close().await;
        })
        .expect("executor");
    }
}
