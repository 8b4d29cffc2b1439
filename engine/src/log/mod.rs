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
//! One file per concern, each an `impl Log` block:
//! - `recovery.rs`: listing a directory's segments, validating the active one on open;
//! - `admission.rs`: appends, from limits to the offset they get, first come first served;
//! - `commit.rs`: write-out and fdatasync (pipelined group commit), the background flusher;
//! - `roll.rs`: creating the active segment, sealing it and starting the next;
//! - `read.rs`: what readers may see (the visible mark), and reading records and batches
//!   from segments;
//! - `retention.rs`: removing whole old segments (by offset, size or age);
//! - `truncate.rs`: cutting the tail (`truncate_suffix`) and emptying the log (`reset`);
//! - `space.rs`: a full disk: refusing writes while it lasts, and recovering once space returns;
//! - `install.rs`: snapshots as segment files: sent, downloaded beside the log, swapped in
//!   atomically;
//! - `replica.rs`: what replication needs (raw batches, terms, snapshots, metadata files);
//! - `entries.rs`: the log as a Raft log, by Raft index (append without waiting, ranges,
//!   cut after an index, term runs);
//! - `invariants.rs`: the checks of the invariants below, at the end of every change of state;
//! - `power_loss.rs`: TEST-ONLY, what each fdatasync covered, for [`crate::power_loss`].
//!
//! Invariants of the state (checked in debug builds):
//! - `segments` is sorted by base and contiguous (`s[i].next == s[i+1].base`); only the last
//!   segment may have a writer; `lowest == segments[0].base`;
//!   `durable_next <= written_next <= next` (what is synced was written, what is written was
//!   appended); `durable_index <= next_index`; under `Visibility::Owner`, `visible <= next`.
//! - The marks: `durable_next` (by offset) and `durable_index` (by Raft index) move together,
//!   from the same write-out, and say what is synced; `written_next` what completed writes
//!   handed to the device; `visible` (by offset) what readers may see, the owner's to move. A
//!   single-node owner keeps it at the policy's end (`durable_next` under `always`,
//!   `written_next` under `interval` and `never`); a Raft group at the offset after its
//!   applied entries, which raft-rs hands out only once this node persisted them
//!   (`durable_index` passed them). So `visible` never passes what a crash of the process
//!   keeps, nor what power loss keeps except under `interval` and `never`, by choice.
//! - Bytes of the active segment before `writer.buf_pos` (block-aligned) are on the device;
//!   bytes from it on are in `writer.buf` (which may also have reached the device), up to the
//!   segment's size: `buf_pos <= written <= size == buf_pos + buf.len()`. The tail cache, if
//!   it holds anything, ends at `buf_pos`; the zero-filled window ends at a block boundary
//!   `alloc_end >= buf_pos`.
//! - A healthy log (not latched, no roll, truncation or reset under way) has segments,
//!   `next == last.next`, and unless closed the last segment has a writer. A rebuild under
//!   way (`exclusive`) or one that failed (which latches the log) may leave no segments
//!   (a reset between deleting and creating), a last segment without a writer, or `next`
//!   past the last segment (a truncation cut short); a latched log serves what reads still
//!   find and refuses writes until it is reopened (or reset).

mod admission;
mod commit;
mod entries;
mod install;
mod invariants;
mod manifest;
mod power_loss;
mod read;
mod recovery;
mod replica;
mod retention;
mod roll;
mod space;
mod truncate;

pub use entries::EntryBatch;
pub use install::{staging_path, SnapshotFile, Staging};
pub use manifest::SEGMENTS_META;
pub(crate) use replica::write_unopened;
pub use replica::{FreshBatch, SnapshotReader, LOST_META, UNOPENED_META};
pub(crate) use space::free_bytes;

use crate::budget::FileBudget;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::limits;
use crate::segment::Segment;
use bytes::Bytes;
use event_listener::Event;
use glommio::sync::{Permit, Semaphore};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Offsets assigned to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// Whether a log takes writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteState {
    #[default]
    Writable,
    /// A write failed for want of space: writes are refused until space returns, then the
    /// log recovers by itself.
    DiskFull,
    /// A write or sync failed otherwise: read-only until the log is reopened.
    Latched,
}

impl WriteState {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteState::Writable => "writable",
            WriteState::DiskFull => "disk_full",
            WriteState::Latched => "latched",
        }
    }
}

/// Counters of one log, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub lowest_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
    /// Batches of records appended (control batches, which hold none, are not counted).
    pub appends: u64,
    pub records_appended: u64,
    pub writes: u64,
    pub fdatasyncs: u64,
    pub write_state: WriteState,
    /// Record value bytes appended (the payload the other byte counts compare to).
    pub payload_bytes: u64,
    /// Bytes handed to the device by writes of batches (whole blocks: a partial tail block
    /// is written again with the next batches).
    pub bytes_written: u64,
    /// Bytes of zeroes written ahead of the data to keep the active segment's tail allocated
    /// (see `limits::PREALLOC_WINDOW_BYTES`); counted apart from `bytes_written`.
    pub zeroed_bytes: u64,
    /// Writes of batches the device took only part of, reporting no error (a tmpfs filling
    /// up does that instead of ENOSPC): a full disk when no room is left, else an I/O error.
    pub short_writes: u64,
    /// Reads of segment data that went to the device (one DMA read each).
    pub dma_reads: u64,
    /// Reads of segment data served wholly from memory (the write-behind buffer and the
    /// tail cache).
    pub memory_reads: u64,
}

/// Raw batches as stored, for replication and snapshots.
///
/// Offsets count records only; control batches (no records) sit between them and share the
/// base offset of the data batch after them.
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

/// Who moves the end of what readers may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// The log itself, to what its durability policy makes visible: the durable end under
    /// `always`, the written end otherwise. For a log used on its own (tools, tests).
    Policy,
    /// Only the log's owner, with [`Log::set_visible`]: the engine's single-node owner to
    /// the policy's end after each append, a Raft owner to the commit index.
    Owner,
}

struct State {
    segments: Vec<Segment>,
    lowest: u64,
    next: u64,
    /// The Raft index the next batch gets (single-node appends count on from the last one).
    next_index: u64,
    durable_next: u64,
    /// Batches below this Raft index are durable. Offsets alone cannot say it: a control
    /// batch takes no offset.
    durable_index: u64,
    /// Who moves the visible end; under `Owner`, `visible` is it.
    visibility: Visibility,
    /// The end of what readers may see when an owner sets it (unused under `Policy`).
    /// Raised only by `set_visible`; lowered by truncation and reset.
    visible: u64,
    /// Offsets below it are in the data file: a completed write handed them to the device,
    /// so a crash of this process cannot take them back (an OS crash or power loss can,
    /// until they are synced).
    written_next: u64,
    /// Term stamped on batches appended with `append`.
    term: u64,
    latched: Option<String>,
    /// Set while the disk is full (a write failed for want of space); see `space.rs`.
    disk_full: Option<space::DiskFull>,
    /// Set while a roll, truncation or reset holds `io` and rebuilds the active segment:
    /// appends wait for it instead of writing into a segment that is being replaced.
    exclusive: bool,
    /// A leader is writing out (and maybe syncing) on behalf of everyone; see `wait_durable`.
    io_busy: bool,
    /// Tickets of appenders waiting to append, first come first served.
    admission: VecDeque<u64>,
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
    /// The last pieces read from the device, for readers walking older data.
    recent_reads: crate::tail_cache::RecentReads,
    /// Appends and reads counted when the background task last saw them change, and when:
    /// a log idle for `limits::CACHE_IDLE` drops its tail cache or recent reads (see
    /// `shrink_idle_buffer`).
    idle_marks: (u64, u64),
    idle_since: (std::time::Instant, std::time::Instant),
}

impl State {
    /// The state of a log just opened on `segments` (sorted, the last one active).
    fn new(segments: Vec<Segment>) -> State {
        let lowest = segments.first().map(|s| s.base).unwrap_or(0);
        let next = segments.last().map(|s| s.next).unwrap_or(0);
        let next_index = segments.last().map(|s| s.next_index).unwrap_or(1);
        let term = segments.last().map(|s| s.last_term).unwrap_or(0);
        State {
            segments,
            lowest,
            next,
            next_index,
            durable_next: next,
            durable_index: next_index,
            visibility: Visibility::Policy,
            visible: next,
            written_next: next,
            term,
            latched: None,
            disk_full: None,
            exclusive: false,
            io_busy: false,
            admission: VecDeque::new(),
            next_ticket: 0,
            sync_requested: 0,
            cut_epoch: 0,
            cut_floor: u64::MAX,
            closed: false,
            stats: LogStats::default(),
            recent_reads: crate::tail_cache::RecentReads::new(),
            idle_marks: (0, 0),
            idle_since: (std::time::Instant::now(), std::time::Instant::now()),
            synced_appends: 0,
        }
    }
}

/// One partition's log.
pub struct Log {
    dir: PathBuf,
    /// `dir`, shared with the chunks reads hand out (for their error messages).
    origin: Arc<Path>,
    config: LogConfig,
    /// The topic's retention limits (bytes, milliseconds; 0: none): `config`'s at open, then
    /// whatever the topic's settings were changed to ([`Log::set_retention`]).
    retention: Cell<(u64, u64)>,
    budget: Rc<FileBudget>,
    state: RefCell<State>,
    io: Semaphore,
    appended: Event,
    /// Notified when a leader's write-out ends.
    io_done: Event,
    index_capacity: usize,
    /// Sealed segments (by base) whose index pointed a read at a position where no batch
    /// holding the offset starts: their reads walk from the segment's start, and the
    /// warning is logged once each.
    distrusted: RefCell<std::collections::BTreeSet<u64>>,
}

impl Log {
    /// Opens the log in `dir` (creating it if needed) and recovers its active segment: the tail
    /// is validated batch by batch, a torn or damaged tail is cut off (damage is kept aside and
    /// marks the log lost), and the index is rebuilt from the data.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        budget: Rc<FileBudget>,
    ) -> Result<Rc<Log>> {
        let dir = dir.as_ref().to_owned();
        config.validate().map_err(Error::InvalidArgument)?;
        install::remove_leftover_staging(&dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating log directory", &dir, e))?;
        // Made now, or there with nothing in it (a partition's directory is never opened so:
        // the engine finds it unmarked first and marks it lost).
        let made = std::fs::read_dir(&dir)
            .map_err(|e| Error::io("listing", &dir, e))?
            .next()
            .is_none();
        if made {
            replica::write_unopened(&dir)?;
        }
        let index_capacity = (config.segment_bytes / u64::from(config.index_interval_bytes.max(1)))
            as usize
            + limits::INDEX_SLACK_ENTRIES;
        let mut segments = recovery::sealed_segments(&dir)?;
        let found = manifest::extents(&segments);
        // Read once: nothing below writes it before the comparison at the end.
        let recorded = manifest::read(&dir)?;
        if let Some(why) = manifest::missing(recorded, &found) {
            // Marked before anything is made or recorded here, and before a replicated group
            // could vote on what is left; a log marked lost before keeps its first reason.
            log::error!("{}: {why}", dir.display());
            if crate::meta::read(&dir, LOST_META)?.is_none() {
                crate::meta::write(&dir, LOST_META, why.as_bytes())?;
            }
        }
        let start_index = recovery::start_index(&dir)?;
        let n = segments.len();
        if n >= 2 && segments[n - 1].base_index == 0 {
            // The newest segment does not start with a batch header (nothing written yet, or
            // its first sector damaged): the Raft index expected there comes from the one
            // before, so that damage found there can be told from a torn write.
            if let Some(i) = recovery::index_after_sealed(&segments[n - 2]).await {
                segments[n - 1].base_index = i;
                segments[n - 1].next_index = i;
            }
        }
        match segments.last_mut() {
            Some(active) => {
                let interval = u64::from(config.index_interval_bytes);
                recovery::recover_active(active, index_capacity, interval, start_index).await?
            }
            None => {
                let base = config.initial_offset;
                segments.push(
                    roll::create_segment(&dir, base, start_index.unwrap_or(1), index_capacity)
                        .await?,
                )
            }
        }
        let log = Rc::new(Log {
            origin: Arc::from(dir.as_path()),
            dir,
            retention: Cell::new((config.retention_bytes, config.retention_ms)),
            config,
            budget,
            state: RefCell::new(State::new(segments)),
            io: Semaphore::new(1),
            appended: Event::new(),
            io_done: Event::new(),
            index_capacity,
            distrusted: RefCell::new(std::collections::BTreeSet::new()),
        });
        log.recover_last_batch().await?;
        // The segments are recorded as they are from now on: a directory of a version that
        // kept no record, one found short (marked above), a first segment made above, or a
        // crash between a segment's making (or a deletion) and its record.
        if let Some(span) = manifest::Span::of(&log.segment_extents()) {
            if recorded != Some(span) {
                manifest::write(&log.dir, span)?;
            }
        }
        Self::spawn_flusher(&log);
        Ok(log)
    }

    /// Flushes, syncs and closes the log. Later calls fail with `ShutDown`.
    pub async fn close(&self) -> Result<()> {
        let _permit = self.lock_io().await?;
        let (latched, closed, full) = {
            let st = self.state.borrow();
            (st.latched.is_some(), st.closed, st.disk_full.is_some())
        };
        let r = if full && !latched && !closed {
            // What was written is synced; the buffer was acknowledged to nobody.
            self.sync_written().await
        } else if !latched && !closed {
            self.write_out_inner(true).await
        } else {
            Ok(())
        };
        let mut st = self.state_mut();
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

    /// Closes the log and deletes its directory (gone already: done).
    pub async fn remove(&self) -> Result<()> {
        let _ = self.close().await;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing log directory", &self.dir, e)),
        }
    }

    /// `(base offset, length)` of every segment, oldest first: what `segments.meta` records.
    fn segment_extents(&self) -> Vec<(u64, u64)> {
        manifest::extents(&self.state.borrow().segments)
    }

    pub fn lowest_offset(&self) -> u64 {
        self.state.borrow().lowest
    }

    /// The offset the next append will get.
    pub fn next_offset(&self) -> u64 {
        self.state.borrow().next
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
            write_state: if st.latched.is_some() {
                WriteState::Latched
            } else if st.disk_full.is_some() {
                WriteState::DiskFull
            } else {
                WriteState::Writable
            },
            ..st.stats
        }
    }

    /// Why the log refuses writes, if it does (a write or sync failed earlier).
    pub fn latched_cause(&self) -> Option<String> {
        self.state.borrow().latched.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings the log was opened with (its retention limits may have changed since:
    /// [`retention_limits`](Self::retention_limits)).
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The retention limits in force: bytes and milliseconds, 0 for none.
    pub fn retention_limits(&self) -> (u64, u64) {
        self.retention.get()
    }

    /// Changes the retention limits (the topic's settings changed); the next retention pass
    /// applies them.
    pub fn set_retention(&self, bytes: u64, ms: u64) {
        self.retention.set((bytes, ms));
    }

    /// Takes `io`, the one permit to touch the active segment's files. The semaphore is never
    /// closed, so a failure can only mean the log is going away.
    async fn lock_io(&self) -> Result<Permit<'_>> {
        self.io.acquire_permit(1).await.map_err(|_| Error::ShutDown)
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
        if let Some(full) = &st.disk_full {
            return Err(self.disk_full_error(full));
        }
        Ok(())
    }

    /// Puts the log in the state a failed write or sync calls for: a write that failed for
    /// want of space leaves a known state (what was written before it, and the buffer), so
    /// the log waits for space and recovers; anything else, and any failed sync, latches.
    /// Returns the error to report: for a full disk, the one every later write gets too.
    ///
    /// The log's own refusals (full, latched, shut down) are states already entered, not
    /// failures: a write-out that waited for `io` while another one filled the disk finds
    /// the log full, and must leave it so rather than latch it.
    fn fail(&self, e: Error) -> Error {
        if matches!(
            e,
            Error::DiskFull { .. } | Error::Latched { .. } | Error::ShutDown
        ) {
            return e;
        }
        if e.is_out_of_space() && !e.is_sync_failure() {
            self.enter_disk_full(&e);
            match &self.state.borrow().disk_full {
                Some(full) => self.disk_full_error(full),
                None => e,
            }
        } else {
            self.latch(&e);
            e
        }
    }

    fn latch(&self, e: &Error) {
        let mut st = self.state_mut();
        if st.latched.is_none() {
            log::error!("{}: latching into read-only state: {e}", self.dir.display());
            st.latched = Some(e.to_string());
        }
    }

    /// Marks the active segment as being rebuilt until the guard drops (even if the future
    /// holding it is dropped midway).
    fn exclusive(&self) -> impl Drop + '_ {
        struct Exclusive<'a>(&'a Log);
        impl Drop for Exclusive<'_> {
            fn drop(&mut self) {
                self.0.state_mut().exclusive = false;
            }
        }
        self.state_mut().exclusive = true;
        Exclusive(self)
    }
}

/// The segment with base offset `base` (binary search).
fn find(segments: &[Segment], base: u64) -> Option<&Segment> {
    segments
        .binary_search_by_key(&base, |s| s.base)
        .ok()
        .map(|i| &segments[i])
}
