//! A partition log: an ordered list of segments with dense offsets.
//!
//! A `Log` lives on one shard (it is `!Send`) and is shared there as `Rc<Log>`. Appends encode
//! their batch straight into the active segment's write-behind buffer without awaiting, so
//! offsets are assigned in call order; what they then wait for depends on the durability
//! policy. Everything that touches files of the active segment (write-out, fdatasync, roll,
//! truncation, reset) runs under `io`, a one-permit semaphore: the first appender that needs
//! durability writes out and syncs everything buffered so far, and every appender that queued
//! behind it finds its data already durable (group commit).
//!
//! Invariants (checked where cheap):
//! - `segments` is non-empty, sorted by base, contiguous (`s[i].next == s[i+1].base`), and only
//!   the last segment has a writer.
//! - `lowest == segments[0].base`, `next == last.next`, `durable_next <= next`.
//! - Bytes of the active segment before `writer.buf_pos` are on the device; bytes from it on
//!   are in `writer.buf` (which may also have reached the device).

use crate::batch::{self, Header, NewRecord, Parsed, Record, HEADER_LEN};
use crate::budget::{FileBudget, OpenFiles};
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::limits;
use crate::meta;
use crate::segment::{self, align_down, align_up, Segment, Writer};
use bytes::Bytes;
use event_listener::Event;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::{self, AppendTiming};

/// Offsets assigned to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// Counters of one log, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub lowest_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
    pub appends: u64,
    pub records_appended: u64,
    pub writes: u64,
    pub fdatasyncs: u64,
}

/// Raw batches as stored, for replication and snapshots.
#[derive(Debug, Clone)]
pub struct RawBatches {
    /// Whole batches, back to back, in the on-disk format.
    pub bytes: Bytes,
    /// Offset of the first record in `bytes` (may be below the offset asked for).
    pub first_offset: u64,
    /// Offset after the last record in `bytes`.
    pub next_offset: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub segments: usize,
    pub bytes: u64,
}

enum Need {
    /// Appenders that arrived earlier are still waiting.
    Turn,
    /// A roll, truncation or reset is rebuilding the active segment.
    Exclusive,
    Roll,
    WriteOut,
}

/// An appender's place in the admission queue; leaving it (appended, failed or dropped)
/// wakes the others.
struct Ticket<'a> {
    log: &'a Log,
    id: Option<u64>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut st = self.log.state.borrow_mut();
            if st.admission.front() == Some(&id) {
                st.admission.pop_front();
            } else {
                st.admission.retain(|&t| t != id);
            }
            drop(st);
            self.log.io_done.notify(usize::MAX);
        }
    }
}

enum Payload<'a> {
    Records { term: u64, records: &'a [NewRecord] },
    Raw { header: Header, bytes: &'a [u8] },
}

struct State {
    segments: Vec<Segment>,
    lowest: u64,
    next: u64,
    durable_next: u64,
    /// Term stamped on batches appended with `append`.
    term: u64,
    latched: Option<String>,
    /// Set while a roll, truncation or reset holds `io` and rebuilds the active segment:
    /// appends wait for it instead of writing into a segment that is being replaced.
    exclusive: bool,
    /// A leader is writing out (and maybe syncing) on behalf of everyone; see `wait_durable`.
    io_busy: bool,
    /// Tickets of appenders waiting to append, first come first served.
    admission: std::collections::VecDeque<u64>,
    next_ticket: u64,
    /// The highest target of any fdatasync started by a leader (in flight or done).
    sync_requested: u64,
    /// Bumped by every truncate-suffix and reset; with `cut_floor` (the lowest offset any of
    /// them cut from), lets an appender that waited across one see that its record was cut.
    cut_epoch: u64,
    cut_floor: u64,
    closed: bool,
    stats: LogStats,
    /// `stats.appends` covered by the latest completed fdatasync: the next sync's
    /// group-commit batch is the difference.
    synced_appends: u64,
}

/// One partition's log.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    budget: Rc<FileBudget>,
    state: RefCell<State>,
    io: Semaphore,
    appended: Event,
    /// Notified when a leader's write-out ends.
    io_done: Event,
    index_capacity: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Log {
    /// Opens the log in `dir` (creating it if needed) and recovers its active segment: the tail
    /// is validated batch by batch, a torn or corrupt tail is cut off, and the index is rebuilt
    /// from the data.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        budget: Rc<FileBudget>,
    ) -> Result<Rc<Log>> {
        let dir = dir.as_ref().to_owned();
        config.validate().map_err(Error::InvalidArgument)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating log directory", &dir, e))?;
        let index_capacity = (config.segment_bytes / u64::from(config.index_interval_bytes.max(1)))
            as usize
            + limits::INDEX_ENTRIES_SLACK;
        let bases = list_segments(&dir)?;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let path = segment::data_path(&dir, base);
            let md =
                std::fs::metadata(&path).map_err(|e| Error::io("reading metadata of", &path, e))?;
            let mut seg = Segment::new_sealed(
                &dir,
                base,
                md.len(),
                md.modified().unwrap_or(SystemTime::now()),
            );
            if let Some(&next_base) = bases.get(i + 1) {
                if next_base <= base {
                    return Err(Error::corrupt(&path, 0, "segments overlap"));
                }
                seg.next = next_base;
            }
            segments.push(seg);
        }
        let log = Rc::new(Log {
            dir: dir.clone(),
            budget,
            state: RefCell::new(State {
                segments,
                lowest: 0,
                next: 0,
                durable_next: 0,
                term: 0,
                latched: None,
                exclusive: false,
                io_busy: false,
                admission: std::collections::VecDeque::new(),
                next_ticket: 0,
                sync_requested: 0,
                cut_epoch: 0,
                cut_floor: u64::MAX,
                closed: false,
                stats: LogStats::default(),
                synced_appends: 0,
            }),
            io: Semaphore::new(1),
            appended: Event::new(),
            io_done: Event::new(),
            index_capacity,
            config,
        });
        if bases.is_empty() {
            let seg = log.create_segment(log.config.initial_offset).await?;
            log.state.borrow_mut().segments.push(seg);
        } else {
            log.recover_active().await?;
        }
        {
            let mut st = log.state.borrow_mut();
            st.lowest = st.segments[0].base;
            st.next = st.segments.last().map(|s| s.next).unwrap_or(0);
            st.durable_next = st.next;
            st.term = st.segments.last().map(|s| s.last_term).unwrap_or(0);
        }
        // An empty active segment (a crash right after a roll) knows no term: take the term
        // of the last record, from the previous segment's index.
        let empty_active = log
            .state
            .borrow()
            .segments
            .last()
            .is_some_and(|s| s.is_empty());
        if let (true, Some(last)) = (empty_active, log.highest_offset()) {
            match log.term_of(last).await {
                Ok(term) => log.state.borrow_mut().term = term,
                Err(e) => log::warn!("{}: term of the last record unknown: {e}", dir.display()),
            }
        }
        Self::spawn_flusher(&log);
        Ok(log)
    }

    fn spawn_flusher(log: &Rc<Log>) {
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
                if log.is_dirty() {
                    let Ok(_permit) = log.io.acquire_permit(1).await else {
                        return;
                    };
                    if log.state.borrow().closed {
                        return;
                    }
                    match log.write_out_locked(sync).await {
                        Ok(()) | Err(Error::ShutDown) => {}
                        Err(e) => {
                            log::error!("background flush of {} failed: {e}", log.dir.display())
                        }
                    }
                }
            }
        })
        .detach();
    }

    fn is_dirty(&self) -> bool {
        let st = self.state.borrow();
        st.durable_next < st.next
            || st
                .segments
                .last()
                .and_then(|s| s.writer.as_ref().map(|w| w.written < s.size))
                .unwrap_or(false)
    }

    async fn create_segment(&self, base: u64) -> Result<Segment> {
        let data_path = segment::data_path(&self.dir, base);
        let index_path = segment::index_path(&self.dir, base);
        let data = segment::open_dma(&data_path, true).await?;
        data.truncate(0)
            .await
            .map_err(|e| Error::glommio("truncating new data file", &data_path, e))?;
        let index = Index::open(&index_path, self.index_capacity)?;
        meta::sync_dir(&self.dir)?;
        let mut seg = Segment::new_sealed(&self.dir, base, 0, SystemTime::now());
        seg.writer = Some(Writer {
            data: Rc::new(data),
            index,
            buf_pos: 0,
            buf: Vec::new(),
            written: 0,
            since_index: 0,
        });
        Ok(seg)
    }

    /// Scans the last segment, cuts what does not validate, and makes it the active segment.
    async fn recover_active(&self) -> Result<()> {
        let (base, data_path, index_path) = {
            let st = self.state.borrow();
            let s = st.segments.last().ok_or(Error::ShutDown)?;
            (s.base, s.data_path.clone(), s.index_path.clone())
        };
        let data = segment::open_dma(&data_path, false).await?;
        let mut index = Index::open(&index_path, self.index_capacity)?;
        let scan = segment::scan(
            &data,
            &data_path,
            base,
            &mut index,
            u64::from(self.config.index_interval_bytes),
        )
        .await?;
        if let Some(why) = &scan.stopped {
            log::warn!(
                "{}: cutting {} bytes after the last valid batch ({why}); offsets continue at {}",
                data_path.display(),
                scan.file_len.saturating_sub(scan.valid_len),
                scan.next
            );
        }
        let buf_pos = align_down(scan.valid_len);
        let buf = if buf_pos < scan.valid_len {
            segment::read_at(
                &data,
                &data_path,
                buf_pos,
                (scan.valid_len - buf_pos) as usize,
            )
            .await?
            .to_vec()
        } else {
            Vec::new()
        };
        if buf.len() as u64 != scan.valid_len - buf_pos {
            return Err(Error::corrupt(
                &data_path,
                buf_pos,
                "data file shrank during recovery",
            ));
        }
        if scan.file_len > align_up(scan.valid_len) || scan.stopped.is_some() {
            // Zero whatever follows the valid data in its block and drop later blocks, so that
            // nothing cut here can reappear after another crash.
            rewrite_tail(&data, &data_path, buf_pos, &buf).await?;
            data.truncate(align_up(scan.valid_len))
                .await
                .map_err(|e| Error::glommio("cutting torn tail of", &data_path, e))?;
            data.fdatasync()
                .await
                .map_err(|e| Error::glommio("syncing repaired", &data_path, e))?;
        }
        index.flush()?;
        let mut st = self.state.borrow_mut();
        let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
        seg.size = scan.valid_len;
        seg.next = scan.next;
        seg.last_term = scan.last_term;
        seg.writer = Some(Writer {
            data: Rc::new(data),
            index,
            buf_pos,
            written: scan.valid_len,
            buf,
            since_index: scan.since_index,
        });
        Ok(())
    }

    // ---------------------------------------------------------------- appends

    /// Appends records as one batch under the log's current term; resolves once the
    /// durability policy is satisfied.
    pub async fn append(&self, records: &[NewRecord]) -> Result<Appended> {
        let term = self.state.borrow().term;
        self.append_with_term(term, records).await
    }

    /// Appends records as one batch stamped with `term`.
    pub async fn append_with_term(&self, term: u64, records: &[NewRecord]) -> Result<Appended> {
        self.check_batch(records)?;
        let appended = self
            .append_payload(Payload::Records { term, records })
            .await?;
        self.after_append(appended).await
    }

    /// [`append`](Self::append), also reporting where the time went (for slow-request logs).
    /// `queue` is left zero: only the caller knows how long it took to get here.
    pub async fn append_timed(&self, records: &[NewRecord]) -> Result<(Appended, AppendTiming)> {
        let started = Instant::now();
        let term = self.state.borrow().term;
        self.check_batch(records)?;
        let appended = self
            .append_payload(Payload::Records { term, records })
            .await?;
        let buffered = Instant::now();
        let appended = self.after_append(appended).await?;
        let timing = AppendTiming {
            queue: Duration::ZERO,
            append: buffered - started,
            fsync: buffered.elapsed(),
        };
        Ok((appended, timing))
    }

    /// Appends batches already in the on-disk format (from a leader or a snapshot). Each batch
    /// is checked (CRC, continuity with the log's next offset) before anything is written.
    pub async fn append_raw(&self, bytes: &[u8]) -> Result<Option<Appended>> {
        let mut pos = 0usize;
        let mut expect = self.next_offset();
        let mut batches = Vec::new();
        while pos < bytes.len() {
            let header = match batch::parse_header(&bytes[pos..]) {
                Parsed::Header(h) => h,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "raw batches: no valid batch header at byte {pos}"
                    )))
                }
            };
            let end = pos + header.batch_len();
            if end > bytes.len() || !batch::crc_ok(&header, &bytes[pos..end]) {
                return Err(Error::InvalidArgument(format!(
                    "raw batches: batch at byte {pos} is torn or corrupt"
                )));
            }
            if header.base_offset != expect {
                return Err(Error::InvalidArgument(format!(
                    "raw batches: batch at byte {pos} starts at offset {} but the log continues at {expect}",
                    header.base_offset
                )));
            }
            if header.payload_len as usize > self.config.max_batch_bytes {
                return Err(Error::BatchTooLarge {
                    size: header.payload_len as usize,
                    limit: self.config.max_batch_bytes,
                    unit: "bytes",
                });
            }
            expect = header.next_offset();
            batches.push((header, pos, end));
            pos = end;
        }
        let mut result: Option<Appended> = None;
        for (header, start, end) in batches {
            let a = self
                .append_payload(Payload::Raw {
                    header,
                    bytes: &bytes[start..end],
                })
                .await?;
            result = Some(Appended {
                base_offset: result.map(|r| r.base_offset).unwrap_or(a.base_offset),
                last_offset: a.last_offset,
            });
        }
        match result {
            Some(a) => self.after_append(a).await.map(Some),
            None => Ok(None),
        }
    }

    fn check_batch(&self, records: &[NewRecord]) -> Result<()> {
        let c = &self.config;
        if records.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        if records.len() > c.max_batch_records {
            return Err(Error::BatchTooLarge {
                size: records.len(),
                limit: c.max_batch_records,
                unit: "records",
            });
        }
        if let Some(r) = records.iter().find(|r| r.value.len() > c.max_record_bytes) {
            return Err(Error::RecordTooLarge {
                size: r.value.len(),
                limit: c.max_record_bytes,
            });
        }
        let len = batch::encoded_len(records) - HEADER_LEN;
        if len > c.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size: len,
                limit: c.max_batch_bytes,
                unit: "bytes",
            });
        }
        Ok(())
    }

    async fn after_append(&self, appended: Appended) -> Result<Appended> {
        self.appended.notify(usize::MAX);
        if self.config.durability != Durability::Always {
            // Buffered appends complete without awaiting anything; let other tasks run.
            glommio::yield_if_needed().await;
        } else {
            let epoch = self.state.borrow().cut_epoch;
            self.wait_durable(appended.last_offset + 1).await?;
            let st = self.state.borrow();
            if st.cut_epoch != epoch && st.cut_floor <= appended.last_offset {
                return Err(Error::InvalidArgument(format!(
                    "offsets {}..={} were truncated before they became durable",
                    appended.base_offset, appended.last_offset
                )));
            }
        }
        Ok(appended)
    }

    async fn append_payload(&self, payload: Payload<'_>) -> Result<Appended> {
        let len = match &payload {
            Payload::Records { records, .. } => batch::encoded_len(*records),
            Payload::Raw { bytes, .. } => bytes.len(),
        } as u64;
        // Admission is first come, first served: an appender that cannot append at once takes
        // a ticket, and while tickets are queued nobody else appends out of turn. So offsets
        // follow call order and no appender starves behind others that keep finding room.
        let mut ticket = Ticket {
            log: self,
            id: None,
        };
        loop {
            let need = {
                let mut st = self.state.borrow_mut();
                self.check_writable(&st)?;
                let st = &mut *st;
                let my_turn = match ticket.id {
                    None => st.admission.is_empty(),
                    Some(id) => st.admission.front() == Some(&id),
                };
                let needs = if !my_turn {
                    Some(Need::Turn)
                } else if st.exclusive {
                    Some(Need::Exclusive)
                } else {
                    let seg = st.segments.last().ok_or(Error::ShutDown)?;
                    let w = seg.writer.as_ref().ok_or(Error::ShutDown)?;
                    if (seg.size + len > self.config.segment_bytes && seg.size > 0)
                        || w.index.is_full()
                    {
                        Some(Need::Roll)
                    } else if w.buf.len() as u64 + len > self.config.write_behind_bytes as u64 {
                        Some(Need::WriteOut)
                    } else {
                        None
                    }
                };
                if let Some(need) = needs {
                    if ticket.id.is_none() {
                        let id = st.next_ticket;
                        st.next_ticket += 1;
                        st.admission.push_back(id);
                        ticket.id = Some(id);
                    }
                    need
                } else {
                    let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
                    let w = seg.writer.as_mut().ok_or(Error::ShutDown)?;
                    let base = st.next;
                    let pos = seg.size;
                    let start = w.buf.len();
                    let (header, count) = match &payload {
                        Payload::Records { term, records } => {
                            batch::encode_into(&mut w.buf, base, *term, now_ms(), records);
                            let Parsed::Header(h) = batch::parse_header(&w.buf[start..]) else {
                                unreachable!("a batch just encoded parses")
                            };
                            (h, records.len() as u64)
                        }
                        Payload::Raw { header, bytes } => {
                            w.buf.extend_from_slice(bytes);
                            (*header, u64::from(header.record_count))
                        }
                    };
                    let interval = u64::from(self.config.index_interval_bytes);
                    if !segment::index_batch(
                        &mut w.index,
                        seg.base,
                        pos,
                        &header,
                        seg.last_term,
                        &mut w.since_index,
                        interval,
                    ) {
                        // The index filled up between the check above and here: cannot happen
                        // on one thread, but never leave an unindexed batch behind.
                        w.buf.truncate(start);
                        return Err(Error::InvalidArgument("segment index is full".into()));
                    }
                    seg.size += len;
                    seg.next = base + count;
                    seg.last_term = header.term;
                    seg.modified = SystemTime::now();
                    st.next = base + count;
                    st.stats.appends += 1;
                    st.stats.records_appended += count;
                    if let Some(id) = ticket.id.take() {
                        st.admission.retain(|&t| t != id);
                        self.io_done.notify(usize::MAX);
                    }
                    return Ok(Appended {
                        base_offset: base,
                        last_offset: base + count - 1,
                    });
                }
            };
            match need {
                Need::Turn => {
                    let listener = self.io_done.listen();
                    let still_waiting = {
                        let st = self.state.borrow();
                        st.admission.front() != ticket.id.as_ref()
                            && st.latched.is_none()
                            && !st.closed
                    };
                    if still_waiting {
                        listener.await;
                    }
                }
                Need::Exclusive => {
                    let _permit = self
                        .io
                        .acquire_permit(1)
                        .await
                        .map_err(|_| Error::ShutDown)?;
                }
                Need::Roll => {
                    let _permit = self
                        .io
                        .acquire_permit(1)
                        .await
                        .map_err(|_| Error::ShutDown)?;
                    self.roll_locked(len).await?
                }
                Need::WriteOut => {
                    if self.state.borrow().io_busy {
                        self.wait_io().await
                    } else {
                        self.lead_io(false).await?
                    }
                }
            }
        }
    }

    fn check_writable(&self, st: &State) -> Result<()> {
        if st.closed {
            return Err(Error::ShutDown);
        }
        if let Some(cause) = &st.latched {
            return Err(Error::Latched {
                path: self.dir.clone(),
                cause: cause.clone(),
            });
        }
        Ok(())
    }

    fn latch(&self, e: &Error) {
        let mut st = self.state.borrow_mut();
        if st.latched.is_none() {
            log::error!("{}: latching into read-only state: {e}", self.dir.display());
            st.latched = Some(e.to_string());
        }
    }

    /// Waits until offsets below `target` are durable.
    ///
    /// Group commit, pipelined: one leader at a time writes out everything buffered (holding
    /// `io` only for the write), then fdatasyncs without holding it, so the next leader's write
    /// overlaps this leader's sync. An appender whose data is already covered by a sync in
    /// flight, or that finds a write under way, waits for it and checks again; followers never
    /// queue on the semaphore (glommio's does not hand permits over in order, so a busy
    /// appender could otherwise take it again and again while others starve).
    async fn wait_durable(&self, target: u64) -> Result<()> {
        loop {
            {
                let st = self.state.borrow();
                if st.durable_next >= target {
                    return Ok(());
                }
                self.check_writable(&st)?;
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

    /// Leads one round: write out under `io`, then fdatasync outside it.
    async fn lead_sync(&self) -> Result<()> {
        let epoch = self.state.borrow().cut_epoch;
        let (file, path, target, appends) = {
            let _busy = self.busy();
            let _permit = self
                .io
                .acquire_permit(1)
                .await
                .map_err(|_| Error::ShutDown)?;
            match self.write_phase().await {
                Ok(x) => x,
                Err(e) => {
                    self.latch(&e);
                    return Err(e);
                }
            }
        };
        {
            let mut st = self.state.borrow_mut();
            st.sync_requested = st.sync_requested.max(target);
        }
        let sync_started = Instant::now();
        let r = file
            .fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing", &path, e));
        {
            let mut st = self.state.borrow_mut();
            match &r {
                Ok(()) => {
                    st.stats.fdatasyncs += 1;
                    record_sync(&mut st, sync_started, Some(appends));
                    // A truncation or reset while the sync ran may have reused these offsets
                    // for records this sync did not cover.
                    if st.cut_epoch == epoch {
                        st.durable_next = st.durable_next.max(target.min(st.next));
                    }
                    // Records just became readable: wake tailing readers.
                    self.appended.notify(usize::MAX);
                }
                Err(_) => {}
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
                self.0.state.borrow_mut().io_busy = false;
                self.0.io_done.notify(usize::MAX);
            }
        }
        self.state.borrow_mut().io_busy = true;
        Busy(self)
    }

    /// Runs one write-out (and fdatasync if `sync`) as the leader. The flag is cleared and
    /// followers are woken even if this future is dropped.
    async fn lead_io(&self, sync: bool) -> Result<()> {
        let _busy = self.busy();
        let _permit = self
            .io
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
        self.write_out_locked(sync).await
    }

    /// Marks the active segment as being rebuilt until the guard drops (even if the future
    /// holding it is dropped midway).
    fn exclusive(&self) -> impl Drop + '_ {
        struct Exclusive<'a>(&'a Log);
        impl Drop for Exclusive<'_> {
            fn drop(&mut self) {
                self.0.state.borrow_mut().exclusive = false;
            }
        }
        self.state.borrow_mut().exclusive = true;
        Exclusive(self)
    }

    /// Resolves when the current leader's write-out ends (at once if there is none).
    async fn wait_io(&self) {
        let listener = self.io_done.listen();
        if self.state.borrow().io_busy {
            listener.await;
        }
    }

    /// Writes the active segment's buffer to the device (whole aligned blocks, the partial
    /// tail block zero-padded and rewritten next time), then optionally fdatasyncs. Caller
    /// holds `io`. Any failure latches the log.
    async fn write_out_locked(&self, sync: bool) -> Result<()> {
        let r = self.write_out_inner(sync).await;
        if let Err(e) = &r {
            if !matches!(e, Error::Latched { .. } | Error::ShutDown) {
                self.latch(e);
            }
        }
        r
    }

    async fn write_out_inner(&self, sync: bool) -> Result<()> {
        let (file, path, target, appends) = self.write_phase().await?;
        if sync {
            let sync_started = Instant::now();
            file.fdatasync()
                .await
                .map_err(|e| Error::glommio("syncing", &path, e))?;
            let mut st = self.state.borrow_mut();
            st.stats.fdatasyncs += 1;
            record_sync(&mut st, sync_started, Some(appends));
            st.durable_next = st.durable_next.max(target);
            drop(st);
            self.appended.notify(usize::MAX);
        }
        Ok(())
    }

    /// Writes the buffer out; returns the file written, its path, the offset below which
    /// everything is now on the device, and how many appends that covers (`stats.appends`).
    async fn write_phase(&self) -> Result<(Rc<glommio::io::DmaFile>, PathBuf, u64, u64)> {
        let (file, path, pos, dma, n, target, appends) = {
            let mut st = self.state.borrow_mut();
            self.check_writable(&st)?;
            let target = st.next;
            let appends = st.stats.appends;
            let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
            let path = seg.data_path.clone();
            let w = seg.writer.as_mut().ok_or(Error::ShutDown)?;
            if w.written == seg.size {
                (
                    Rc::clone(&w.data),
                    path,
                    w.buf_pos,
                    None,
                    0,
                    target,
                    appends,
                )
            } else {
                let n = w.buf.len();
                let mut dma = w.data.alloc_dma_buffer(align_up(n as u64) as usize);
                let bytes = dma.as_bytes_mut();
                bytes[..n].copy_from_slice(&w.buf);
                bytes[n..].fill(0);
                (
                    Rc::clone(&w.data),
                    path,
                    w.buf_pos,
                    Some(dma),
                    n,
                    target,
                    appends,
                )
            }
        };
        if let Some(dma) = dma {
            let want = dma.len();
            let wrote = file
                .write_at(dma, pos)
                .await
                .map_err(|e| Error::glommio("writing", &path, e))?;
            if wrote != want {
                return Err(Error::io(
                    "writing",
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write: {wrote} of {want} bytes"),
                    ),
                ));
            }
            let mut st = self.state.borrow_mut();
            st.stats.writes += 1;
            let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
            let w = seg.writer.as_mut().ok_or(Error::ShutDown)?;
            w.written = pos + n as u64;
            let full = align_down(n as u64) as usize;
            w.buf.drain(..full);
            w.buf_pos += full as u64;
        }
        Ok((file, path, target, appends))
    }

    /// Seals the active segment (everything written and synced, index cut to size) and starts
    /// a new one at the next offset. Caller holds `io`.
    async fn roll_locked(&self, len: u64) -> Result<()> {
        {
            let st = self.state.borrow();
            self.check_writable(&st)?;
            let seg = st.segments.last().ok_or(Error::ShutDown)?;
            let index_full = seg.writer.as_ref().is_some_and(|w| w.index.is_full());
            // Someone else may have rolled while we waited for the lock.
            if seg.size == 0 || (seg.size + len <= self.config.segment_bytes && !index_full) {
                return Ok(());
            }
        }
        let _exclusive = self.exclusive();
        let r = self.roll_inner().await;
        self.state.borrow_mut().exclusive = false;
        if let Err(e) = &r {
            self.latch(e);
        }
        r
    }

    async fn roll_inner(&self) -> Result<()> {
        self.write_out_inner(true).await?;
        let (writer, size, path, next) = {
            let mut st = self.state.borrow_mut();
            let next = st.next;
            let seg = st.segments.last_mut().ok_or(Error::ShutDown)?;
            (seg.writer.take(), seg.size, seg.data_path.clone(), next)
        };
        let Some(mut w) = writer else {
            return Err(Error::ShutDown);
        };
        w.data
            .truncate(size)
            .await
            .map_err(|e| Error::glommio("cutting sealed segment", &path, e))?;
        let sync_started = Instant::now();
        w.data
            .fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing sealed segment", &path, e))?;
        record_sync(&mut self.state.borrow_mut(), sync_started, None);
        w.index.seal()?;
        let new = self.create_segment(next).await?;
        let mut st = self.state.borrow_mut();
        if let Some(seg) = st.segments.last_mut() {
            self.budget
                .install(&seg.slot, OpenFiles::new(w.data, w.index));
        }
        st.segments.push(new);
        Ok(())
    }

    /// Writes out and fdatasyncs everything appended so far, whatever the policy.
    pub async fn sync(&self) -> Result<()> {
        let target = self.next_offset();
        self.wait_durable(target).await
    }

    // ---------------------------------------------------------------- reads

    pub fn lowest_offset(&self) -> u64 {
        self.state.borrow().lowest
    }

    /// The offset the next append will get.
    pub fn next_offset(&self) -> u64 {
        self.state.borrow().next
    }

    /// The offset after the last record readers may see. Under `always` that is the durable
    /// mark: a record is visible only once it is on disk, so no consumer ever sees a record
    /// that a crash could take back (and whose offset could then be reused). Under
    /// `interval` and `never`, every appended record is visible.
    pub fn readable_next(&self) -> u64 {
        let st = self.state.borrow();
        if self.config.durability == Durability::Always {
            st.durable_next.min(st.next)
        } else {
            st.next
        }
    }

    /// Checks that `from` is readable; returns the end of what readers may see.
    fn readable_from(&self, from: u64) -> Result<u64> {
        let end = self.readable_next();
        let lowest = self.lowest_offset();
        if from < lowest || from >= end {
            return Err(Error::OffsetOutOfRange {
                offset: from,
                lowest,
                next: end,
            });
        }
        Ok(end)
    }

    /// The last offset in the log, or `None` when it is empty.
    pub fn highest_offset(&self) -> Option<u64> {
        let st = self.state.borrow();
        (st.next > st.lowest).then(|| st.next - 1)
    }

    pub fn stats(&self) -> LogStats {
        let st = self.state.borrow();
        LogStats {
            lowest_offset: st.lowest,
            next_offset: st.next,
            size_bytes: st.segments.iter().map(|s| s.size).sum(),
            segments: st.segments.len(),
            ..st.stats
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Sets the term stamped on later `append`s.
    pub fn set_term(&self, term: u64) {
        self.state.borrow_mut().term = term;
    }

    /// Resolves once the log holds `offset` (for tailing readers), or at once if it does; also
    /// resolves when the log is closed or reset.
    pub async fn wait_for(&self, offset: u64) {
        loop {
            if self.readable_next() > offset || self.state.borrow().closed {
                return;
            }
            let listener = self.appended.listen();
            if self.readable_next() > offset || self.state.borrow().closed {
                return;
            }
            listener.await;
        }
    }

    /// Reads the record at `offset`.
    pub async fn read(&self, offset: u64) -> Result<Record> {
        let mut records = self.read_range(offset, 1, 1).await?;
        records.pop().ok_or_else(|| self.out_of_range(offset))
    }

    /// Reads records from `from`: at most `max_records`, and at most `max_bytes` of values
    /// except that the first record is returned whatever its size.
    pub async fn read_range(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let end = self.readable_from(from)?;
        let (batches, _) = self.read_batches(from, max_bytes, max_records, end).await?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'batches: for (header, pos, path, data) in batches {
            let records = batch::decode_records(&header, &data).ok_or_else(|| {
                Error::corrupt(&path, pos, "records do not add up to the batch length")
            })?;
            for r in records {
                if r.offset < from {
                    continue;
                }
                if out.len() >= max_records
                    || (!out.is_empty() && bytes + r.value.len() > max_bytes)
                {
                    break 'batches;
                }
                bytes += r.value.len();
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Reads whole batches in the on-disk format from the batch holding `from`, up to about
    /// `max_bytes` (at least one batch).
    pub async fn read_raw(&self, from: u64, max_bytes: usize) -> Result<RawBatches> {
        let end = self.readable_from(from)?;
        let (batches, _) = self.read_batches(from, max_bytes, usize::MAX, end).await?;
        let first_offset = batches.first().map(|b| b.0.base_offset).unwrap_or(from);
        let next_offset = batches.last().map(|b| b.0.next_offset()).unwrap_or(from);
        let bytes = if batches.len() == 1 {
            batches[0].3.clone()
        } else {
            let mut v = Vec::with_capacity(batches.iter().map(|b| b.3.len()).sum());
            for b in &batches {
                v.extend_from_slice(&b.3);
            }
            Bytes::from(v)
        };
        Ok(RawBatches {
            bytes,
            first_offset,
            next_offset,
        })
    }

    /// The term of the record at `offset`.
    pub async fn term_of(&self, offset: u64) -> Result<u64> {
        let base = self.segment_for(offset)?;
        self.ensure_open(base).await?;
        let st = self.state.borrow();
        let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(offset))?;
        let rel = (offset - seg.base) as u32;
        let entry = match &seg.writer {
            Some(w) => w.index.lookup(rel).map(|e| e.1),
            None => seg
                .slot
                .borrow()
                .as_ref()
                .and_then(|f| f.index.lookup(rel).map(|e| e.1)),
        };
        entry.map(|e| e.term).ok_or_else(|| {
            Error::corrupt(
                &seg.index_path,
                0,
                format!("no index entry covers offset {offset}"),
            )
        })
    }

    fn out_of_range(&self, offset: u64) -> Error {
        let st = self.state.borrow();
        Error::OffsetOutOfRange {
            offset,
            lowest: st.lowest,
            next: st.next,
        }
    }

    /// Base offset of the segment holding `offset` (binary search). Segments are named by
    /// base rather than position because retention may remove segments while a read awaits.
    fn segment_for(&self, offset: u64) -> Result<u64> {
        let st = self.state.borrow();
        if offset < st.lowest || offset >= st.next || st.segments.is_empty() {
            return Err(Error::OffsetOutOfRange {
                offset,
                lowest: st.lowest,
                next: st.next,
            });
        }
        let i = st.segments.partition_point(|s| s.base <= offset) - 1;
        Ok(st.segments[i].base)
    }

    /// Opens a sealed segment's files if they are closed, validating its index.
    async fn ensure_open(&self, base: u64) -> Result<()> {
        let (slot, data_path, index_path, next, size) = {
            let st = self.state.borrow();
            let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(base))?;
            if seg.writer.is_some() {
                return Ok(());
            }
            if self.budget.touch(&seg.slot) {
                return Ok(());
            }
            (
                Rc::clone(&seg.slot),
                seg.data_path.clone(),
                seg.index_path.clone(),
                seg.next,
                seg.size,
            )
        };
        let data = segment::open_dma(&data_path, false).await?;
        let (mut index, entries) = match Index::open_sealed(&index_path) {
            Ok(x) => x,
            Err(_) => (Index::open(&index_path, 0)?, 0),
        };
        let trusted = segment::validate_sealed_index(&index, entries, size, base, next);
        if trusted == entries && entries > 0 {
            index.trust_prefix(entries);
        } else {
            log::warn!(
                "{}: index has {entries} entries of which {trusted} check out; rebuilding it from the data",
                index_path.display()
            );
            index.reopen_for_append(self.index_capacity)?;
            let interval = u64::from(self.config.index_interval_bytes);
            let scan = segment::scan(&data, &data_path, base, &mut index, interval).await?;
            if scan.next != next || scan.valid_len != size {
                log::error!(
                    "{}: sealed segment holds offsets [{base}, {}) in {} bytes; expected [{base}, {next}) in {size} bytes",
                    data_path.display(),
                    scan.next,
                    scan.valid_len
                );
            }
            index.seal()?;
        }
        if slot.borrow().is_some() {
            // Opened concurrently by another reader; keep theirs.
            return Ok(());
        }
        self.budget
            .install(&slot, OpenFiles::new(Rc::new(data), index));
        Ok(())
    }

    /// Bytes `[pos, pos + len)` of a segment's data, or fewer at its end: from memory where
    /// the active segment's buffer holds them, from the device (one DMA read) otherwise.
    async fn fetch(&self, base: u64, pos: u64, len: usize) -> Result<Bytes> {
        let (path, mem, file_part) = {
            let st = self.state.borrow();
            let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(base))?;
            let end = (pos + len as u64).min(seg.size);
            if pos >= end {
                return Ok(Bytes::new());
            }
            let (data, mem_from) = match &seg.writer {
                Some(w) => (Rc::clone(&w.data), Some((w.buf_pos, &w.buf))),
                None => {
                    let slot = seg.slot.borrow();
                    let f = slot.as_ref().ok_or(Error::ShutDown)?;
                    (Rc::clone(&f.data), None)
                }
            };
            let (mem, file_end) = match mem_from {
                Some((buf_pos, buf)) if end > buf_pos => {
                    let m0 = pos.max(buf_pos);
                    let m = Bytes::copy_from_slice(
                        &buf[(m0 - buf_pos) as usize..(end - buf_pos) as usize],
                    );
                    (m, pos.max(buf_pos.min(end)))
                }
                _ => (Bytes::new(), end),
            };
            let file_part = (file_end > pos).then_some((data, file_end));
            (seg.data_path.clone(), mem, file_part)
        };
        let Some((data, file_end)) = file_part else {
            return Ok(mem);
        };
        let disk = segment::read_at(&data, &path, pos, (file_end - pos) as usize).await?;
        if disk.len() as u64 != file_end - pos {
            return Err(Error::corrupt(
                &path,
                pos + disk.len() as u64,
                "data file ends before the log does",
            ));
        }
        if mem.is_empty() {
            return Ok(disk);
        }
        let mut v = Vec::with_capacity(disk.len() + mem.len());
        v.extend_from_slice(&disk);
        v.extend_from_slice(&mem);
        Ok(Bytes::from(v))
    }

    /// Reads whole, checked batches starting with the one that holds `from`, until about
    /// `max_bytes` or `max_records` (at least one batch).
    #[allow(clippy::type_complexity)]
    async fn read_batches(
        &self,
        from: u64,
        max_bytes: usize,
        max_records: usize,
        end: u64,
    ) -> Result<(Vec<(Header, u64, PathBuf, Bytes)>, u64)> {
        let mut out: Vec<(Header, u64, PathBuf, Bytes)> = Vec::new();
        let mut want = from;
        let mut bytes = 0usize;
        let mut records = 0usize;
        let window = max_bytes.clamp(limits::READ_WINDOW_BYTES_MIN, limits::READ_WINDOW_BYTES_MAX)
            + self.config.index_interval_bytes as usize;
        loop {
            if want >= end && !out.is_empty() {
                break;
            }
            let base = match self.segment_for(want) {
                Ok(b) => b,
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            };
            self.ensure_open(base).await?;
            let (path, index_path, mut pos, size) = {
                let st = self.state.borrow();
                let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(want))?;
                let slot = seg.slot.borrow();
                let index = match (&seg.writer, slot.as_ref()) {
                    (Some(w), _) => &w.index,
                    (None, Some(f)) => &f.index,
                    (None, None) => return Err(Error::ShutDown),
                };
                let (_, entry) = index.lookup((want - seg.base) as u32).ok_or_else(|| {
                    Error::corrupt(
                        &seg.index_path,
                        0,
                        format!("no index entry covers offset {want}"),
                    )
                })?;
                (
                    seg.data_path.clone(),
                    seg.index_path.clone(),
                    u64::from(entry.position),
                    seg.size,
                )
            };
            let (mut chunk_pos, mut chunk) = (pos, Bytes::new());
            let before = want;
            while pos < size {
                if pos + HEADER_LEN as u64 > chunk_pos + chunk.len() as u64 {
                    chunk = self.fetch(base, pos, window).await?;
                    chunk_pos = pos;
                }
                let at = (pos - chunk_pos) as usize;
                let header = match batch::parse_header(&chunk[at..]) {
                    Parsed::Header(h) => h,
                    Parsed::End => {
                        return Err(Error::corrupt(
                            &path,
                            pos,
                            "zeroes where a batch was expected",
                        ))
                    }
                    Parsed::Invalid(why) => return Err(Error::corrupt(&path, pos, why)),
                };
                let len = header.batch_len();
                let batch_pos = pos;
                if header.next_offset() <= want {
                    // Before the offset asked for: skip without reading its body. Whatever is
                    // returned is still checked (CRC and offset continuity) below.
                    pos += len as u64;
                    continue;
                }
                if header.base_offset > want {
                    return Err(Error::corrupt(
                        &path,
                        batch_pos,
                        format!(
                            "batch starts at offset {} where {want} was expected",
                            header.base_offset
                        ),
                    ));
                }
                if !out.is_empty() && bytes + len > max_bytes {
                    return Ok((out, want));
                }
                if pos + len as u64 > chunk_pos + chunk.len() as u64 {
                    let need = len.max(max_bytes.saturating_sub(bytes).min(window));
                    chunk = self.fetch(base, pos, need).await?;
                    chunk_pos = pos;
                    if chunk.len() < len {
                        return Err(Error::corrupt(
                            &path,
                            pos,
                            "batch runs past the end of the segment",
                        ));
                    }
                }
                let at = (pos - chunk_pos) as usize;
                let data = chunk.slice(at..at + len);
                if !batch::crc_ok(&header, &data) {
                    return Err(Error::corrupt(&path, pos, "checksum mismatch"));
                }
                pos += len as u64;
                bytes += len;
                records += (header.next_offset() - want) as usize;
                want = header.next_offset();
                out.push((header, batch_pos, path.clone(), data));
                if bytes >= max_bytes || records >= max_records || want >= end {
                    return Ok((out, want));
                }
            }
            if want == before {
                return Err(Error::corrupt(
                    &index_path,
                    0,
                    format!("offset {want} is not in the segment its index points to"),
                ));
            }
        }
        Ok((out, want))
    }

    // ---------------------------------------------------------------- truncation & retention

    /// Removes every whole segment whose records all have offsets <= `lowest` (the book's
    /// `Truncate`). The active segment is never removed.
    pub async fn truncate_prefix(&self, lowest: u64) -> Result<Removed> {
        let _permit = self
            .io
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
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
        let _permit = self
            .io
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
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
            let mut st = self.state.borrow_mut();
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            while st.segments.len() > 1 && pred(&st.segments[0], total) {
                let seg = st.segments.remove(0);
                total -= seg.size;
                removed.segments += 1;
                removed.bytes += seg.size;
                doomed.push(seg);
            }
            st.lowest = st.segments[0].base;
        }
        for seg in doomed {
            self.delete_segment_files(seg)?;
        }
        if removed.segments > 0 {
            meta::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    fn delete_segment_files(&self, seg: Segment) -> Result<()> {
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
        rewrite_tail(&data, &path, w0, &content).await?;
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

    /// Flushes, syncs and closes the log. Later calls fail with `ShutDown`.
    pub async fn close(&self) -> Result<()> {
        let _permit = self
            .io
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
        let r = if self.state.borrow().latched.is_none() && !self.state.borrow().closed {
            self.write_out_inner(true).await
        } else {
            Ok(())
        };
        let mut st = self.state.borrow_mut();
        st.closed = true;
        for seg in st.segments.iter_mut() {
            if let Some(w) = seg.writer.take() {
                w.index.flush()?;
            }
            self.budget.release(&seg.slot);
        }
        drop(st);
        self.appended.notify(usize::MAX);
        r
    }

    /// Closes the log and deletes its directory.
    pub async fn remove(&self) -> Result<()> {
        let _ = self.close().await;
        std::fs::remove_dir_all(&self.dir)
            .map_err(|e| Error::io("removing log directory", &self.dir, e))
    }

    /// Writes a small metadata file in the log's directory atomically (Raft's hard state).
    pub fn write_meta(&self, name: &str, payload: &[u8]) -> Result<()> {
        check_meta_name(name)?;
        meta::write(&self.dir, name, payload)
    }

    pub fn read_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_meta_name(name)?;
        meta::read(&self.dir, name)
    }

    /// A reader that streams the log from `from` as raw batches.
    pub fn snapshot_reader(self: &Rc<Self>, from: u64) -> SnapshotReader {
        SnapshotReader {
            log: Rc::clone(self),
            next: from,
            end: self.next_offset(),
        }
    }

    /// Replaces the log's content with a snapshot stream: resets to `first_offset`, then
    /// appends each chunk of raw batches, then syncs.
    pub async fn install_snapshot<I>(&self, first_offset: u64, chunks: I) -> Result<()>
    where
        I: IntoIterator<Item = Bytes>,
    {
        self.reset(first_offset).await?;
        for chunk in chunks {
            self.append_raw(&chunk).await?;
        }
        self.sync().await
    }
}

/// Records a completed fdatasync in the shard's metrics: its duration, and when it made
/// appends durable (`covered`: `stats.appends` when its write-out began), how many it
/// newly covered. Syncs may complete out of order under pipelining; the count never goes
/// back, so an overtaken sync records the appends it alone covered, possibly none.
fn record_sync(st: &mut State, started: Instant, covered: Option<u64>) {
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

fn check_meta_name(name: &str) -> Result<()> {
    if name.ends_with(".meta") && !name.contains('/') && name.len() <= limits::META_NAME_BYTES_MAX {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "metadata file name {name:?} must end in .meta"
        )))
    }
}

/// Streams a log's batches from an offset up to the end it had when the reader was made.
pub struct SnapshotReader {
    log: Rc<Log>,
    next: u64,
    end: u64,
}

impl SnapshotReader {
    /// The next chunk of whole batches (about `max_bytes`), or `None` at the end.
    pub async fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Bytes>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let raw = self.log.read_raw(self.next, max_bytes).await?;
        if raw.next_offset <= self.next {
            return Ok(None);
        }
        self.next = raw.next_offset;
        Ok(Some(raw.bytes))
    }

    /// Offset of the first record the next chunk holds.
    pub fn position(&self) -> u64 {
        self.next
    }
}

/// Writes the block at `buf_pos` holding `buf` (the valid bytes of the tail block) with zeros
/// after it.
async fn rewrite_tail(
    data: &glommio::io::DmaFile,
    path: &Path,
    buf_pos: u64,
    buf: &[u8],
) -> Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut dma = data.alloc_dma_buffer(align_up(buf.len() as u64) as usize);
    let d = dma.as_bytes_mut();
    d.fill(0);
    d[..buf.len()].copy_from_slice(buf);
    let want = d.len();
    let wrote = data
        .write_at(dma, buf_pos)
        .await
        .map_err(|e| Error::glommio("rewriting tail of", path, e))?;
    if wrote != want {
        return Err(Error::corrupt(
            path,
            buf_pos,
            "short write while rewriting the tail block",
        ));
    }
    Ok(())
}

/// Lists the segments of a log directory by base offset, removing leftovers we own (temporary
/// files, an index without data) and refusing files that look like ours but are not.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            log::warn!("{}: ignoring a file whose name is not UTF-8", dir.display());
            continue;
        };
        if name.ends_with(".meta") {
            continue;
        }
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        match segment::parse_file_name(name) {
            Some((base, "log")) => logs.push(base),
            Some((base, _)) => indexes.push(base),
            None if name.ends_with(".log") || name.ends_with(".index") => {
                return Err(Error::Foreign {
                    path: entry.path(),
                    reason: "a segment file's name must be its base offset in 20 digits".into(),
                })
            }
            None => log::warn!("{}: ignoring unexpected file {name:?}", dir.display()),
        }
    }
    logs.sort_unstable();
    for base in indexes {
        if logs.binary_search(&base).is_err() {
            let p = segment::index_path(dir, base);
            log::warn!("{}: removing index without a data file", p.display());
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(logs)
}

/// The segment with base offset `base` (binary search).
fn find(segments: &[Segment], base: u64) -> Option<&Segment> {
    segments
        .binary_search_by_key(&base, |s| s.base)
        .ok()
        .map(|i| &segments[i])
}
