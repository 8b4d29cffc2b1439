//! One segment: a data file of batches written with O_DIRECT, and its mmap'd index.
//!
//! `<base>.log` holds batches back to back from byte 0 (layout in `batch.rs`). While a segment
//! is active the file is written in whole aligned blocks from a write-behind buffer, so it is
//! zero-padded past the last batch; a sealed segment's file is cut to its exact length.
//! File names are the segment's base offset in 20 decimal digits.

use crate::batch::{self, Header, Parsed, HEADER_LEN};
use crate::budget::Slot;
use crate::error::{Error, Result};
use crate::index::{Entry, Index};
use crate::limits::{
    MIN_INDEX_GROWTH_ENTRIES, MIN_READ_WINDOW_BYTES, SCAN_CHUNK_BYTES, TAIL_CACHE_BYTES,
};
use crate::tail_cache::TailCache;
use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// O_DIRECT block size. 4 KiB satisfies both 512-byte and 4 KiB logical-sector devices.
pub const BLOCK: u64 = 4096;

// A recovery read and the smallest read window are whole blocks.
const _: () = assert!((SCAN_CHUNK_BYTES as u64).is_multiple_of(BLOCK));
const _: () = assert!(MIN_READ_WINDOW_BYTES as u64 == BLOCK);

pub fn align_down(x: u64) -> u64 {
    x & !(BLOCK - 1)
}

pub fn align_up(x: u64) -> u64 {
    (x + BLOCK - 1) & !(BLOCK - 1)
}

pub fn data_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// What a data file's name continues with in the file that keeps the bytes recovery cut
/// after damage (`<base>.log.damaged-at-<byte>`): never read by the log, kept for the operator.
pub const DAMAGED_INFIX: &str = ".log.damaged-at-";

/// The file that keeps what recovery cut from segment `base` at byte `at` after damage.
pub fn damaged_path(dir: &Path, base: u64, at: u64) -> PathBuf {
    dir.join(format!("{base:020}{DAMAGED_INFIX}{at}"))
}

pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Parses a segment file name into its base offset and kind.
pub fn parse_file_name(name: &str) -> Option<(u64, &'static str)> {
    let (stem, kind) = if let Some(s) = name.strip_suffix(".log") {
        (s, "log")
    } else if let Some(s) = name.strip_suffix(".index") {
        (s, "index")
    } else {
        return None;
    };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(|b| (b, kind))
}

pub async fn open_dma(path: &Path, create: bool) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(|e| Error::glommio("opening data file", path, e))
}

/// Reads `len` bytes at `pos`, or fewer at the end of the file.
pub async fn read_at(file: &DmaFile, path: &Path, pos: u64, len: usize) -> Result<Bytes> {
    let r = file
        .read_at(pos, len)
        .await
        .map_err(|e| Error::glommio("reading data file", path, e))?;
    Ok(Bytes::copy_from_slice(&r))
}

/// Writes the block at `buf_pos` holding `buf` (the valid bytes of the tail block) with zeros
/// after it.
pub async fn rewrite_tail(data: &DmaFile, path: &Path, buf_pos: u64, buf: &[u8]) -> Result<()> {
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

/// Writer state of the active segment.
pub struct Writer {
    pub data: Rc<DmaFile>,
    pub index: Index,
    /// Aligned file position where `buf` starts. Bytes before it are on the device.
    pub buf_pos: u64,
    /// Bytes from `buf_pos` to the logical end of the segment.
    pub buf: Vec<u8>,
    /// Logical bytes handed to the device by completed writes.
    pub written: u64,
    /// Data bytes since the last index entry.
    pub since_index: u64,
    /// `buf`'s capacity, charged to the memory budget (see `memory`).
    pub(crate) charged: crate::memory::Charged,
    /// The file is allocated and written (data or zeroes) below this block-aligned
    /// position: writes below it change no metadata (see `PREALLOC_WINDOW_BYTES`).
    pub alloc_end: u64,
    /// False once topping up the zeroed window failed (a full disk): writes then extend the
    /// file as they go, until the writer is rebuilt.
    pub prealloc: bool,
    /// Recently written bytes, ending at `buf_pos`, for readers (see `tail_cache`).
    pub cache: TailCache,
    /// Whether the zeroed window is worth keeping up (see `PREALLOC_MIN_SYNCS`), decided
    /// again after every half window of data: from `mark_pos` on, with the log's fdatasync
    /// count at `mark_syncs` then.
    pub zeroing: bool,
    pub mark_pos: u64,
    pub mark_syncs: u64,
}

impl Writer {
    /// The writer of an active segment whose file holds `written` valid bytes, is
    /// `align_up(written)` long, and whose write-behind buffer (`buf`, at `buf_pos`) holds the
    /// valid bytes of its last block.
    pub fn new(
        data: Rc<DmaFile>,
        index: Index,
        buf_pos: u64,
        buf: Vec<u8>,
        written: u64,
        since_index: u64,
    ) -> Writer {
        let mut w = Writer {
            data,
            index,
            buf_pos,
            buf,
            written,
            since_index,
            charged: crate::memory::Charged::local(),
            alloc_end: align_up(written),
            prealloc: true,
            cache: TailCache::new(TAIL_CACHE_BYTES),
            zeroing: true,
            mark_pos: written,
            mark_syncs: 0,
        };
        w.track_buffer();
        w
    }

    /// Charges `buf`'s capacity as it is now.
    pub fn track_buffer(&mut self) {
        self.charged.track(self.buf.capacity());
    }
}

/// One segment of a log.
pub struct Segment {
    pub base: u64,
    /// Offset after the segment's last record.
    pub next: u64,
    /// Raft index of the segment's first batch (of the next batch while it is empty).
    pub base_index: u64,
    /// Raft index after the segment's last batch.
    pub next_index: u64,
    /// Logical bytes of batches.
    pub size: u64,
    /// Term of the last batch (valid when `next > base`).
    pub last_term: u64,
    /// Last write, for retention by age.
    pub modified: std::time::SystemTime,
    pub data_path: PathBuf,
    pub index_path: PathBuf,
    /// Open files of a sealed segment (None while closed).
    pub slot: Slot,
    /// Present only on the active segment.
    pub writer: Option<Writer>,
}

impl Segment {
    pub fn new_sealed(
        dir: &Path,
        base: u64,
        size: u64,
        modified: std::time::SystemTime,
    ) -> Segment {
        Segment {
            base,
            next: base,
            base_index: 0,
            next_index: 0,
            size,
            last_term: 0,
            modified,
            data_path: data_path(dir, base),
            index_path: index_path(dir, base),
            slot: Rc::new(RefCell::new(None)),
            writer: None,
        }
    }

    /// True when the segment holds no batch at all (no record and no control batch).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// True when the segment holds no record (it may hold control batches).
    pub fn has_no_records(&self) -> bool {
        self.next == self.base
    }
}

/// The header of the first batch in a data file, read without O_DIRECT (only its first
/// bytes are needed): `Ok(None)` for an empty or zero-filled file, or one whose first bytes
/// are not a header (a torn first batch, left to the active segment's scan); an error for a
/// file of another format version.
pub fn first_header(path: &Path) -> Result<Option<Header>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(HEADER_LEN);
    std::fs::File::open(path)
        .and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut buf))
        .map_err(|e| Error::io("reading first batch header of", path, e))?;
    match batch::parse_header(&buf) {
        Parsed::Header(h) => Ok(Some(h)),
        Parsed::Unsupported(version) => Err(unsupported(path, version)),
        Parsed::End | Parsed::Invalid(_) => Ok(None),
    }
}

/// The error for a data file of another format version.
pub fn unsupported(path: &Path, version: u8) -> Error {
    Error::UnsupportedFormat {
        path: path.to_owned(),
        version,
        supported: batch::VERSION,
    }
}

/// The smallest unit a device writes whole: an interrupted write leaves each 512-byte sector
/// either as it was or as written.
pub const SECTOR: u64 = 512;

/// Where and why a scan stopped before the end of the written data.
#[derive(Clone, Debug)]
pub struct Stop {
    /// Byte position of the first batch that did not validate.
    pub at: u64,
    pub why: String,
    /// What an interrupted write leaves (docs/format.md, "Torn or damaged"): the batch runs
    /// past the end of the file, or its share of some 512-byte sector is all zero (never
    /// written: the log only ever writes after its data, into zeros). Otherwise the bytes
    /// were written and changed since, or are left from something else: damage.
    pub torn: bool,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl Stop {
    fn torn(at: u64, why: String) -> Stop {
        Stop {
            at,
            why,
            torn: true,
        }
    }

    fn damaged(at: u64, why: String) -> Stop {
        Stop {
            at,
            why,
            torn: false,
        }
    }

    /// A stop at `at` over `bytes` (the batch, or the header, as far as the file holds it).
    fn judged(at: u64, why: String, bytes: &[u8]) -> Stop {
        Stop {
            at,
            why,
            torn: has_unwritten_sector(at, bytes),
        }
    }
}

/// Whether the share of `bytes` (found at file position `pos`) in some 512-byte sector is
/// all zero.
pub fn has_unwritten_sector(pos: u64, bytes: &[u8]) -> bool {
    let (mut i, mut p) = (0usize, pos);
    while i < bytes.len() {
        let n = ((SECTOR - p % SECTOR) as usize).min(bytes.len() - i);
        if bytes[i..i + n].iter().all(|&b| b == 0) {
            return true;
        }
        i += n;
        p += n as u64;
    }
    false
}

/// What a scan of a data file found.
pub struct Scan {
    /// Bytes of valid batches from the start of the file.
    pub valid_len: u64,
    pub next: u64,
    /// Raft index after the last valid batch (`base_index` when there is none).
    pub next_index: u64,
    pub last_term: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<Stop>,
    pub file_len: u64,
    pub since_index: u64,
}

/// Scans a data file from the start, validating every batch (CRC, offsets continuous from
/// `base`, Raft indexes continuous from `base_index`, or from the first batch's when it is
/// `None`), and rebuilds `index` from what it finds. Stops at the first zero block, bad or
/// torn batch; fails on a batch of another format version.
pub async fn scan(
    file: &DmaFile,
    path: &Path,
    base: u64,
    base_index: Option<u64>,
    index: &mut Index,
    interval: u64,
) -> Result<Scan> {
    let file_len = file
        .file_size()
        .await
        .map_err(|e| Error::glommio("reading size of data file", path, e))?;
    index.truncate(0);
    let mut s = Scan {
        valid_len: 0,
        next: base,
        next_index: base_index.unwrap_or(0),
        last_term: 0,
        stopped: None,
        file_len,
        since_index: 0,
    };
    let mut chunk_pos = 0u64;
    let mut chunk = Bytes::new();
    loop {
        let pos = s.valid_len;
        if pos >= file_len {
            break;
        }
        let want_header = (pos + HEADER_LEN as u64).min(file_len) - pos;
        if pos + want_header > chunk_pos + chunk.len() as u64 {
            chunk_pos = pos;
            chunk = read_at(
                file,
                path,
                pos,
                SCAN_CHUNK_BYTES.min((file_len - pos) as usize),
            )
            .await?;
        }
        let at = (pos - chunk_pos) as usize;
        let header = match batch::parse_header(&chunk[at..]) {
            Parsed::Header(h) => h,
            Parsed::End => break,
            // A file of the earlier format starts with such a batch; further in, the same
            // bytes are damage like any other, cut as a torn tail.
            Parsed::Unsupported(version) if pos == 0 => return Err(unsupported(path, version)),
            Parsed::Unsupported(_) => {
                s.stopped = Some(Stop::damaged(
                    pos,
                    format!("a batch of another format version at byte {pos}"),
                ));
                break;
            }
            Parsed::Invalid(why) => {
                let header = &chunk[at..(at + HEADER_LEN).min(chunk.len())];
                let why = format!("{why} at byte {pos}");
                s.stopped = Some(if header.len() < HEADER_LEN {
                    Stop::torn(pos, why)
                } else {
                    Stop::judged(pos, why, header)
                });
                break;
            }
        };
        let len = header.batch_len() as u64;
        if pos + len > file_len {
            s.stopped = Some(Stop::torn(
                pos,
                format!("torn batch at byte {pos}: {len} bytes claimed, file ends at {file_len}"),
            ));
            break;
        }
        if pos + len > chunk_pos + chunk.len() as u64 {
            chunk_pos = pos;
            chunk = read_at(
                file,
                path,
                pos,
                SCAN_CHUNK_BYTES
                    .max(len as usize)
                    .min((file_len - pos) as usize),
            )
            .await?;
        }
        let at = (pos - chunk_pos) as usize;
        // A read returns less than asked only at the end of the file: one cut while scanned.
        let Some(bytes) = chunk.get(at..at + len as usize) else {
            s.stopped = Some(Stop::torn(
                pos,
                format!(
                    "batch at byte {pos}: the file ended while it was read ({} bytes of {len})",
                    chunk.len().saturating_sub(at)
                ),
            ));
            break;
        };
        if !batch::crc_ok(&header, bytes) {
            let why = format!("checksum mismatch in batch at byte {pos}");
            s.stopped = Some(Stop::judged(pos, why, bytes));
            break;
        }
        if header.base_offset != s.next {
            s.stopped = Some(Stop::damaged(
                pos,
                format!(
                    "batch at byte {pos} starts at offset {} where {} was expected",
                    header.base_offset, s.next
                ),
            ));
            break;
        }
        let index_continues = if pos == 0 && base_index.is_none() {
            header.raft_index > 0
        } else {
            header.raft_index == s.next_index
        };
        if !index_continues {
            s.stopped = Some(Stop::damaged(
                pos,
                format!(
                    "batch at byte {pos} has Raft index {} where {} was expected",
                    header.raft_index, s.next_index
                ),
            ));
            break;
        }
        let mut since = s.since_index;
        if !index_batch(index, base, pos, &header, s.last_term, &mut since, interval) {
            // Valid data outgrew the index (settings changed since it was written, or many
            // term changes): grow the index rather than cut acknowledged data.
            let grown = (index.len() * 2).max(MIN_INDEX_GROWTH_ENTRIES);
            index.reopen_for_append(grown)?;
            since = s.since_index;
            if !index_batch(index, base, pos, &header, s.last_term, &mut since, interval) {
                s.stopped = Some(Stop::damaged(
                    pos,
                    format!("the index cannot grow to the batch at byte {pos}"),
                ));
                break;
            }
        }
        s.since_index = since;
        s.valid_len = pos + len;
        s.next = header.next_offset();
        s.next_index = header.raft_index + 1;
        s.last_term = header.term;
    }
    // What looks like the end of an interrupted write (a torn batch, or zeros where the next
    // batch should start with more written after them) is damage when a valid batch further
    // on was written once the entry expected here was durable: its commit index reaches it
    // (`batch.rs`: a writer stamps no more than its log had made durable). Zeros followed by
    // nothing but zeros, in the chunk the scan holds and in the [`LOOK_AHEAD`] bytes after
    // them, are the end of the data.
    let ends_early = match &s.stopped {
        Some(stop) => stop.torn,
        None if s.valid_len < file_len => {
            let nonzero = |b: &[u8]| b.iter().any(|&x| x != 0);
            let in_chunk = s.valid_len >= chunk_pos
                && chunk
                    .get((s.valid_len - chunk_pos) as usize..)
                    .is_some_and(nonzero);
            // Read only what the chunk does not cover already (usually nothing).
            let from = (chunk_pos + chunk.len() as u64).max(s.valid_len);
            let until = (s.valid_len + LOOK_AHEAD).min(file_len);
            in_chunk
                || (from < until
                    && nonzero(&read_at(file, path, from, (until - from) as usize).await?))
        }
        None => false,
    };
    if ends_early && s.next_index > 0 {
        let at = s.valid_len;
        if let Some((later, h)) =
            later_durable_batch(file, path, at, file_len, s.next, s.next_index).await?
        {
            let what = match &s.stopped {
                Some(stop) => stop.why.clone(),
                None => format!("zeros at byte {at} where a batch should start"),
            };
            s.stopped = Some(Stop::damaged(
                at,
                format!(
                    "{what}, and the valid batch at byte {later} (Raft index {}) was written \
                     after Raft index {} was durable (its commit index is {}): damage, not \
                     an interrupted write",
                    h.raft_index, s.next_index, h.commit_index
                ),
            ));
        } else if s.stopped.is_none() {
            s.stopped = Some(Stop::torn(
                at,
                format!("zeros at byte {at} where a batch should start, then other bytes"),
            ));
        }
    }
    Ok(s)
}

/// How far past zeros where a batch should start the scan looks for written bytes at least
/// (the chunk it holds may reach further): a damaged block is a few KiB, and the zeroed
/// window allocated ahead of the data (up to 8 MiB) is not read at every open.
const LOOK_AHEAD: u64 = 64 * 1024;

/// The first valid batch in `file` after byte `at` (from `at + 1`, before `file_len`) that
/// carries on from offset `next` and Raft index `index` and whose commit index is at least
/// `index`: proof that the entry at `index` was durable before it was written. A candidate
/// must be as near as the bytes between allow (every batch takes at least a header, every
/// record at least its 8-byte prefix), which rules out batches of other logs copied into
/// record values; and the batches read whole to check their CRCs total at most twice the
/// bytes searched, whatever headers the bytes claim.
async fn later_durable_batch(
    file: &DmaFile,
    path: &Path,
    at: u64,
    file_len: u64,
    next: u64,
    index: u64,
) -> Result<Option<(u64, Header)>> {
    let magic = batch::MAGIC.to_le_bytes();
    let from = at + 1;
    let mut budget = 2 * (file_len - at) + SCAN_CHUNK_BYTES as u64;
    let mut pos = from;
    while pos + HEADER_LEN as u64 <= file_len {
        let want = SCAN_CHUNK_BYTES.min((file_len - pos) as usize);
        let chunk = read_at(file, path, pos, want).await?;
        if chunk.len() < HEADER_LEN {
            break;
        }
        let mut i = 0;
        while let Some(k) = chunk[i..].windows(magic.len()).position(|w| w == magic) {
            let k_at = i + k;
            if k_at + HEADER_LEN > chunk.len() {
                // Seen whole in the next chunk, which starts less than a header before.
                break;
            }
            if let Parsed::Header(h) = batch::parse_header(&chunk[k_at..]) {
                let p = pos + k_at as u64;
                let len = h.batch_len() as u64;
                let gap = p - at;
                if h.commit_index >= index
                    && h.raft_index > index
                    && h.raft_index - index <= gap / HEADER_LEN as u64 + 1
                    && h.base_offset >= next
                    && h.base_offset - next <= gap / batch::RECORD_OVERHEAD as u64 + 1
                    && p + len <= file_len
                {
                    if len > budget {
                        return Ok(None);
                    }
                    budget -= len;
                    let bytes = read_at(file, path, p, len as usize).await?;
                    if batch::crc_ok(&h, &bytes) {
                        return Ok(Some((p, h)));
                    }
                }
            }
            i = k_at + 1;
        }
        if chunk.len() < want {
            break;
        }
        pos += (chunk.len() - (HEADER_LEN - 1)) as u64;
    }
    Ok(None)
}

/// Adds an index entry for a batch at `pos` when the indexing rule asks for one. False if the
/// index is full.
pub fn index_batch(
    index: &mut Index,
    base: u64,
    pos: u64,
    header: &Header,
    prev_term: u64,
    since_index: &mut u64,
    interval: u64,
) -> bool {
    let needed = index.is_empty() || *since_index >= interval || header.term != prev_term;
    if needed {
        let entry = Entry {
            relative_offset: (header.base_offset - base) as u32,
            position: pos as u32,
            term: header.term,
            raft_index: header.raft_index,
        };
        if !index.push(entry) {
            return false;
        }
        *since_index = 0;
    }
    *since_index += header.batch_len() as u64;
    true
}

/// Checks the entries of a sealed segment's index: strictly increasing in position and Raft
/// index, non-decreasing in offset, inside the data, first entry at the start. Returns how many
/// can be trusted.
pub fn validate_sealed_index(
    index: &Index,
    entries: usize,
    data_len: u64,
    base: u64,
    next: u64,
) -> usize {
    let mut prev: Option<Entry> = None;
    for i in 0..entries {
        let Some(e) = index.raw_entry(i) else {
            return i;
        };
        let ok = match prev {
            None => e.relative_offset == 0 && e.position == 0,
            Some(p) => {
                e.relative_offset >= p.relative_offset
                    && e.position > p.position
                    && e.raft_index > p.raft_index
            }
        };
        if !ok
            || u64::from(e.position) + HEADER_LEN as u64 > data_len
            || base + u64::from(e.relative_offset) > next
        {
            return i;
        }
        prev = Some(e);
    }
    entries
}
