//! Reads: what readers may see (the visible end: the durability policy's, or a mark the log's
//! owner sets), waiting for it to grow, and reading records and whole batches from segments,
//! from the write-behind buffer where it holds them and with DMA reads otherwise.

use super::{find, Log, State, Visibility};
use crate::batch::{self, Header, Parsed, Record, HEADER_LEN};
use crate::budget::OpenFiles;
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::limits;
use crate::seam::{Chunk, PastEnd, ReadLimits, Run};
use crate::segment;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// What `config`'s durability policy makes visible of a log in state `st`: what it
/// acknowledges (durable under `always`, written under `interval` and `never`).
fn policy_end(config: &LogConfig, st: &State) -> u64 {
    if config.durability == Durability::Always {
        st.durable_next.min(st.next)
    } else {
        st.written_next.min(st.next)
    }
}

impl Log {
    /// What the durability policy makes visible: what it acknowledges. Under `always` the
    /// durable mark, so that no consumer ever reads a record a crash could take back (and
    /// whose offset could then be reused); under `interval` and `never`, every record written
    /// to the data file, which a crash of the process cannot take back (only an OS crash or
    /// power loss).
    pub fn policy_end(&self) -> u64 {
        policy_end(&self.config, &self.state.borrow())
    }

    /// The offset after the last record readers may see: [`policy_end`](Self::policy_end)
    /// unless an owner took over the mark ([`take_visibility`](Self::take_visibility)), then
    /// what the owner last set.
    pub fn visible_end(&self) -> u64 {
        let st = self.state.borrow();
        match st.visibility {
            Visibility::Policy => policy_end(&self.config, &st),
            Visibility::Owner => st.visible,
        }
    }

    /// [`visible_end`](Self::visible_end) (the name tools and tests know).
    pub fn readable_next(&self) -> u64 {
        self.visible_end()
    }

    /// Hands the visible mark to the log's owner: from now on only
    /// [`set_visible`](Self::set_visible) raises it. It starts where the policy has it, so
    /// nothing visible disappears.
    pub fn take_visibility(&self) {
        let mut st = self.state_mut();
        if st.visibility == Visibility::Policy {
            st.visible = policy_end(&self.config, &st);
            st.visibility = Visibility::Owner;
        }
    }

    /// Hands the visible mark to an owner that knows where it starts better than the policy:
    /// a Raft group opening its log, whose end may hold entries not committed yet (the policy
    /// would show them). The mark starts at `end` (at most the log's end), which may be below
    /// what the policy showed: the owner takes the mark when it opens the log, before anyone
    /// reads it. From now on only [`set_visible`](Self::set_visible) raises it.
    pub fn take_visibility_at(&self, end: u64) {
        let mut st = self.state_mut();
        st.visibility = Visibility::Owner;
        st.visible = end.min(st.next);
        drop(st);
        self.appended.notify(usize::MAX);
    }

    /// Who moves the visible mark.
    pub fn visibility(&self) -> Visibility {
        self.state.borrow().visibility
    }

    /// The owner raises the visible mark to `end` (never past the log's end, never down:
    /// truncation and reset lower it themselves) and wakes the readers waiting for it.
    /// Returns the mark. Ignored, apart from the return, unless the owner took the mark.
    pub fn set_visible(&self, end: u64) -> u64 {
        let mut st = self.state_mut();
        if st.visibility != Visibility::Owner {
            return policy_end(&self.config, &st);
        }
        let end = end.min(st.next);
        if end <= st.visible {
            return st.visible;
        }
        st.visible = end;
        drop(st);
        self.appended.notify(usize::MAX);
        end
    }

    /// Checks that `from` is readable; returns the end of what readers may see.
    pub(crate) fn readable_from(&self, from: u64) -> Result<u64> {
        let end = self.visible_end();
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

    /// Resolves once readers may see `offset` (for tailing readers), or at once if they may;
    /// also resolves when the log is closed or reset.
    pub async fn wait_for(&self, offset: u64) {
        loop {
            if self.visible_end() > offset || self.state.borrow().closed {
                return;
            }
            let listener = self.appended.listen();
            if self.visible_end() > offset || self.state.borrow().closed {
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
        self.readable_from(from)?;
        let limits = ReadLimits {
            max_records,
            max_bytes,
            past_end: PastEnd::OutOfRange,
        };
        let chunk = self.read_chunk(from, limits).await?;
        chunk.checked_records().collect()
    }

    /// Whole stored batches from the one holding `from`, up to about `limits.max_bytes`
    /// (at least one batch) or `limits.max_records`, never past the visible end: what a
    /// partition's owner hands a reader, who checks and decodes them on its own core (see
    /// [`Chunk`]). Each header is parsed here (to walk the segment and check offset
    /// continuity), but no CRC is computed and no record decoded. At the visible end (or
    /// past it, under [`PastEnd::Empty`]) the chunk is empty; before the lowest offset, or
    /// past the end under [`PastEnd::OutOfRange`], it is `OffsetOutOfRange`.
    pub async fn read_chunk(&self, from: u64, limits: ReadLimits) -> Result<Chunk> {
        let end = self.visible_end();
        let lowest = self.lowest_offset();
        let at_end = match limits.past_end {
            PastEnd::OutOfRange => from == end,
            PastEnd::Empty => from >= end,
        };
        let mut chunk = Chunk::new(from, end, limits, Arc::clone(&self.origin));
        if at_end && from >= lowest {
            return Ok(chunk);
        }
        self.readable_from(from)?;
        let c = self
            .collect_batches(from, limits.max_bytes, limits.max_records, end, false)
            .await?;
        chunk.runs = c.runs;
        Ok(chunk)
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

    /// The header of the last batch of segment `base` (`None` if it holds none), read from
    /// its last index entry on, each batch's checksum checked.
    pub(super) async fn last_header_in(&self, base: u64) -> Result<Option<Header>> {
        self.ensure_open(base).await?;
        let (path, from, size) = {
            let st = self.state.borrow();
            let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(base))?;
            let slot = seg.slot.borrow();
            let index = match (&seg.writer, slot.as_ref()) {
                (Some(w), _) => &w.index,
                (None, Some(f)) => &f.index,
                (None, None) => return Err(Error::ShutDown),
            };
            let from = index.last().map(|e| u64::from(e.position)).unwrap_or(0);
            (seg.data_path.clone(), from, seg.size)
        };
        if from >= size {
            return Ok(None);
        }
        let bytes = self.fetch(base, from, (size - from) as usize).await?;
        let mut pos = 0usize;
        let mut last = None;
        while pos < bytes.len() {
            let header = header_at(&bytes[pos..], &path, from + pos as u64)?;
            let end = pos + header.batch_len();
            let ok = bytes
                .get(pos..end)
                .is_some_and(|b| batch::crc_ok(&header, b));
            if !ok {
                return Err(Error::corrupt(
                    &path,
                    from + pos as u64,
                    "checksum mismatch",
                ));
            }
            last = Some(header);
            pos = end;
        }
        Ok(last)
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
    pub(super) async fn ensure_open(&self, base: u64) -> Result<()> {
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
            let scan = segment::scan(&data, &data_path, base, None, &mut index, interval).await?;
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
    /// the active segment's write-behind buffer and tail cache hold them (together, its last
    /// bytes), or from a recent read of the same bytes ([`RecentReads`]), from the device
    /// (one DMA read) otherwise.
    ///
    /// [`RecentReads`]: crate::tail_cache::RecentReads
    pub(super) async fn fetch(&self, base: u64, pos: u64, len: usize) -> Result<Bytes> {
        let (path, mem, file_part, epoch) = {
            let mut st = self.state_mut();
            let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(base))?;
            let end = (pos + len as u64).min(seg.size);
            if pos >= end {
                return Ok(Bytes::new());
            }
            let (data, mem, file_end) = match &seg.writer {
                Some(w) => {
                    let (mem, file_end) = writer_bytes(w, pos, end);
                    (Rc::clone(&w.data), mem, file_end)
                }
                None => {
                    let slot = seg.slot.borrow();
                    let f = slot.as_ref().ok_or(Error::ShutDown)?;
                    (Rc::clone(&f.data), Bytes::new(), end)
                }
            };
            let path = seg.data_path.clone();
            let epoch = st.cut_epoch;
            let recent = (file_end > pos)
                .then(|| st.recent_reads.get(epoch, base, pos, file_end))
                .flatten();
            let file_part = (file_end > pos && recent.is_none()).then_some((data, file_end));
            if file_part.is_some() {
                st.stats.dma_reads += 1;
            } else {
                st.stats.memory_reads += 1;
            }
            match recent {
                Some(r) if mem.is_empty() => return Ok(r),
                Some(r) => {
                    let mut v = Vec::with_capacity(r.len() + mem.len());
                    v.extend_from_slice(&r);
                    v.extend_from_slice(&mem);
                    return Ok(Bytes::from(v));
                }
                None => {}
            }
            (path, mem, file_part, epoch)
        };
        let Some((data, file_end)) = file_part else {
            return Ok(mem);
        };
        let disk = segment::read_at(&data, &path, pos, (file_end - pos) as usize).await?;
        self.state_mut().recent_reads.put(epoch, base, pos, &disk);
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
    /// `max_bytes` or `max_records`, or `end` (at least one batch).
    pub(super) async fn read_batches(
        &self,
        from: u64,
        max_bytes: usize,
        max_records: usize,
        end: u64,
    ) -> Result<Vec<StoredBatch>> {
        Ok(self
            .collect_batches(from, max_bytes, max_records, end, true)
            .await?
            .out)
    }

    /// Collects whole batches starting with the one that holds `from`, until about
    /// `max_bytes` or `max_records`, or `end` (at least one batch), CRC-checking each when
    /// `check` is set; both as batches and as runs of contiguous bytes.
    async fn collect_batches(
        &self,
        from: u64,
        max_bytes: usize,
        max_records: usize,
        end: u64,
        check: bool,
    ) -> Result<Collect> {
        let window = max_bytes.clamp(limits::MIN_READ_WINDOW_BYTES, limits::MAX_READ_WINDOW_BYTES)
            + self.config.index_interval_bytes as usize;
        let mut c = Collect {
            out: Vec::new(),
            runs: Vec::new(),
            open: None,
            check,
            want: from,
            bytes: 0,
            records: 0,
            max_bytes,
            max_records,
            end,
            window,
        };
        loop {
            if c.want >= end && !c.out.is_empty() {
                break;
            }
            let base = match self.segment_for(c.want) {
                Ok(b) => b,
                Err(e) if c.out.is_empty() => return Err(e),
                Err(_) => break,
            };
            self.ensure_open(base).await?;
            let done = self.read_segment(base, &mut c).await;
            c.close_run();
            if done? {
                break;
            }
        }
        Ok(c)
    }

    /// Collects batches of segment `base` from the one holding `c.want`; true once `c` has
    /// all it asked for.
    async fn read_segment(&self, base: u64, c: &mut Collect) -> Result<bool> {
        let (path, index_path, mut pos, size) = self.locate(base, c.want)?;
        let mut w = Window::new(pos);
        // An index is derived data: where its entry does not lead to a batch at or before
        // the offset (a damaged entry that passed the index's checks), the segment is walked
        // from its start instead, and the index, not the intact data file, is named.
        if pos > 0 && self.distrusted.borrow().contains(&base) {
            pos = 0;
            w = Window::new(0);
        } else if pos > 0 {
            let leads_there = match self.header_in(base, &path, &mut w, pos, c.window).await {
                Ok(h) => h.base_offset <= c.want,
                Err(Error::Corrupt { .. }) => false,
                Err(e) => return Err(e),
            };
            if !leads_there {
                log::warn!(
                    "{}: its entry for offset {} points at byte {pos}, where no batch holding \
                     that offset starts: reads of this segment walk it from its start (delete \
                     the index file while the server is stopped to have it rebuilt)",
                    index_path.display(),
                    c.want
                );
                self.distrusted.borrow_mut().insert(base);
                pos = 0;
                w = Window::new(0);
            }
        }
        let before = c.want;
        // The offset after the last batch walked past (all before the one wanted).
        let mut walked_to = None;
        while pos < size {
            if !w.holds(pos, HEADER_LEN) {
                c.close_run();
            }
            let header = self.header_in(base, &path, &mut w, pos, c.window).await?;
            let len = header.batch_len();
            if header.next_offset() <= c.want {
                // Before the offset asked for: skip without reading its body. Whatever is
                // returned is still checked: offset continuity below, the CRC below or, for
                // a chunk handed to a reader, by the reader.
                walked_to = Some(header.next_offset());
                pos += len as u64;
                continue;
            }
            if header.base_offset > c.want {
                return Err(Error::corrupt(
                    &path,
                    pos,
                    format!(
                        "batch starts at offset {} where {} was expected",
                        header.base_offset, c.want
                    ),
                ));
            }
            if !c.out.is_empty() && c.bytes + len > c.max_bytes {
                return Ok(true);
            }
            if !w.holds(pos, len) {
                c.close_run();
            }
            let need = c.max_bytes.saturating_sub(c.bytes).min(c.window);
            let bytes = self
                .batch_in(base, &path, &mut w, &header, pos, need, c.check)
                .await?;
            c.extend_run(&w.bytes, w.offset_of(pos), len, base, pos);
            c.push(StoredBatch {
                header,
                segment: base,
                pos,
                bytes,
            });
            pos += len as u64;
            if c.done() {
                return Ok(true);
            }
        }
        if c.want == before {
            // The whole segment ends before the offset, and the next begins after it: the
            // segment (or segments) that held it are gone, not this index wrong.
            let next_base = {
                let st = self.state.borrow();
                st.segments.iter().find(|s| s.base > base).map(|s| s.base)
            };
            if let (true, Some(end), Some(next)) = (pos >= size, walked_to, next_base) {
                if (end..next).contains(&c.want) {
                    return Err(Error::corrupt(
                        &path,
                        pos,
                        format!(
                            "offset {} is in no segment: this one ends at offset {end} and the \
                             next begins at offset {next}, so offsets {end} to {} are missing \
                             (the segment files that held them were deleted or lost); reading \
                             on from offset {next} works",
                            c.want,
                            next - 1
                        ),
                    ));
                }
            }
            return Err(Error::corrupt(
                &index_path,
                0,
                format!(
                    "offset {} is not in the segment its index points to",
                    c.want
                ),
            ));
        }
        Ok(false)
    }

    /// Where to start reading segment `base` for `offset`: its data and index paths, the
    /// position its index gives for the batch holding `offset` (or one before it), its size.
    fn locate(&self, base: u64, offset: u64) -> Result<(PathBuf, PathBuf, u64, u64)> {
        let st = self.state.borrow();
        let seg = find(&st.segments, base).ok_or_else(|| self.out_of_range(offset))?;
        let slot = seg.slot.borrow();
        let index = match (&seg.writer, slot.as_ref()) {
            (Some(w), _) => &w.index,
            (None, Some(f)) => &f.index,
            (None, None) => return Err(Error::ShutDown),
        };
        let (_, entry) = index.lookup((offset - seg.base) as u32).ok_or_else(|| {
            Error::corrupt(
                &seg.index_path,
                0,
                format!("no index entry covers offset {offset}"),
            )
        })?;
        Ok((
            seg.data_path.clone(),
            seg.index_path.clone(),
            u64::from(entry.position),
            seg.size,
        ))
    }
}

/// A whole, checked batch as stored, and where it is.
pub(super) struct StoredBatch {
    pub(super) header: Header,
    /// The base offset of the segment holding it.
    pub(super) segment: u64,
    /// Byte position in the data file.
    pub(super) pos: u64,
    /// The batch, header included, in the on-disk format.
    pub(super) bytes: Bytes,
}

/// What a read has collected so far, and where it stops.
struct Collect {
    out: Vec<StoredBatch>,
    /// The same batches as runs of contiguous bytes of one fetched piece each.
    runs: Vec<Run>,
    /// The run being extended: the piece it is in, its start and end there.
    open: Option<OpenRun>,
    /// CRC-check each batch here (callers that hand batches on unchecked leave it to the
    /// reader).
    check: bool,
    /// The next offset the read wants.
    want: u64,
    bytes: usize,
    records: usize,
    max_bytes: usize,
    max_records: usize,
    end: u64,
    /// Bytes a DMA read asks for.
    window: usize,
}

/// A run of batches being collected from one fetched piece of a data file.
struct OpenRun {
    piece: Bytes,
    start: usize,
    end: usize,
    segment: u64,
    /// File position of `piece[start]`.
    pos: u64,
}

impl Collect {
    /// Adds `piece[at..at + len]` (at file position `pos` of segment `segment`) to the open
    /// run if it continues it, else starts a new run.
    fn extend_run(&mut self, piece: &Bytes, at: usize, len: usize, segment: u64, pos: u64) {
        if let Some(o) = &mut self.open {
            if o.end == at && o.segment == segment && o.piece.as_ptr() == piece.as_ptr() {
                o.end += len;
                return;
            }
        }
        self.close_run();
        self.open = Some(OpenRun {
            piece: piece.clone(),
            start: at,
            end: at + len,
            segment,
            pos,
        });
    }

    /// Ends the open run (the next batch comes from another piece).
    fn close_run(&mut self) {
        if let Some(o) = self.open.take() {
            self.runs.push(Run {
                bytes: o.piece.slice(o.start..o.end),
                segment: Some(o.segment),
                pos: o.pos,
            });
        }
    }

    fn push(&mut self, b: StoredBatch) {
        self.bytes += b.bytes.len();
        self.records += (b.header.next_offset() - self.want) as usize;
        self.want = b.header.next_offset();
        self.out.push(b);
    }

    fn done(&self) -> bool {
        self.bytes >= self.max_bytes || self.records >= self.max_records || self.want >= self.end
    }
}

/// What the active segment's writer holds in memory of bytes `[pos, end)`: the bytes from
/// the returned position on (the part before it is to be read from the device). The tail
/// cache ends where the write-behind buffer begins, so the two make one range.
fn writer_bytes(w: &segment::Writer, pos: u64, end: u64) -> (Bytes, u64) {
    let mem_start = w.cache.start().unwrap_or(w.buf_pos).min(w.buf_pos);
    if end <= mem_start {
        return (Bytes::new(), end);
    }
    let m0 = pos.max(mem_start);
    let buf_slice =
        |from: u64, to: u64| &w.buf[(from - w.buf_pos) as usize..(to - w.buf_pos) as usize];
    let mem = if end <= w.buf_pos {
        // Wholly in the cache (a slice of one piece when it lies in one).
        w.cache.get(m0, end).unwrap_or_default()
    } else if m0 >= w.buf_pos {
        Bytes::copy_from_slice(buf_slice(m0, end))
    } else {
        let mut v = Vec::with_capacity((end - m0) as usize);
        v.extend_from_slice(&w.cache.get(m0, w.buf_pos).unwrap_or_default());
        v.extend_from_slice(buf_slice(w.buf_pos, end));
        Bytes::from(v)
    };
    (mem, m0)
}

/// A piece of one segment file read ahead: its bytes from `pos`. Readers take headers and
/// batches from it while it holds them whole, and read a new piece from where one runs past
/// its end.
pub(super) struct Window {
    pos: u64,
    bytes: Bytes,
}

impl Window {
    /// An empty window at `pos`: the first header asked of it reads a piece.
    pub(super) fn new(pos: u64) -> Window {
        Window {
            pos,
            bytes: Bytes::new(),
        }
    }

    /// Whether bytes `[pos, pos + len)` of the file are in the window.
    pub(super) fn holds(&self, pos: u64, len: usize) -> bool {
        pos >= self.pos && pos + len as u64 <= self.pos + self.bytes.len() as u64
    }

    /// Where file position `pos` (in the window) is in its bytes.
    fn offset_of(&self, pos: u64) -> usize {
        (pos - self.pos) as usize
    }
}

impl Log {
    /// The batch header at `pos` of segment `base`, from `w`, or from `window` bytes read
    /// into `w` from `pos` when `w` does not hold a whole header there.
    pub(super) async fn header_in(
        &self,
        base: u64,
        path: &Path,
        w: &mut Window,
        pos: u64,
        window: usize,
    ) -> Result<Header> {
        if !w.holds(pos, HEADER_LEN) {
            w.bytes = self.fetch(base, pos, window).await?;
            w.pos = pos;
        }
        header_at(&w.bytes[w.offset_of(pos)..], path, pos)
    }

    /// The batch of `header` at `pos` of segment `base`, its CRC checked when `check`: from
    /// `w`, or from `need` bytes (at least the batch) read into `w` from `pos` when `w` does
    /// not hold it whole. A batch that runs past the end of the file is corrupt.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn batch_in(
        &self,
        base: u64,
        path: &Path,
        w: &mut Window,
        header: &Header,
        pos: u64,
        need: usize,
        check: bool,
    ) -> Result<Bytes> {
        let len = header.batch_len();
        if !w.holds(pos, len) {
            w.bytes = self.fetch(base, pos, len.max(need)).await?;
            w.pos = pos;
            if w.bytes.len() < len {
                return Err(Error::corrupt(
                    path,
                    pos,
                    "batch runs past the end of the segment",
                ));
            }
        }
        let at = w.offset_of(pos);
        let bytes = w.bytes.slice(at..at + len);
        if check && !batch::crc_ok(header, &bytes) {
            return Err(Error::corrupt(path, pos, "checksum mismatch"));
        }
        Ok(bytes)
    }
}

/// The header of the batch at the start of `bytes` (at `pos` in `path`).
pub(super) fn header_at(bytes: &[u8], path: &Path, pos: u64) -> Result<Header> {
    match batch::parse_header(bytes) {
        Parsed::Header(h) => Ok(h),
        Parsed::End => Err(Error::corrupt(
            path,
            pos,
            "zeroes where a batch was expected",
        )),
        Parsed::Unsupported(version) => Err(segment::unsupported(path, version)),
        Parsed::Invalid(why) => Err(Error::corrupt(path, pos, why)),
    }
}
