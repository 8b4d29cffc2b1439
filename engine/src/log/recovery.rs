//! Recovery: which segments a log directory holds, and the active segment validated batch by
//! batch on open, a torn or damaged tail cut off (damage kept in a file of its own and the log
//! marked lost first) and the index rebuilt from the data.
//!
//! These run before the `Log` exists (`Log::open` builds its state from what they return),
//! except `recover_last_batch`, which needs the log's reads.
//!
//! Every segment's first batch header is read at open: a data directory of another format
//! version is refused there, before anything is scanned or cut.

use super::{Log, LOST_META};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::segment::{self, align_down, align_up, Scan, Segment, Stop, Writer};
use glommio::io::DmaFile;
use std::path::Path;
use std::rc::Rc;
use std::time::SystemTime;

/// The segments of a log directory, sorted by base offset, all still sealed; each ends where
/// the next begins (the last one's end is what `recover_active` finds).
pub(super) fn sealed_segments(dir: &Path) -> Result<Vec<Segment>> {
    let bases = list_segments(dir)?;
    let mut segments = Vec::with_capacity(bases.len().max(1));
    for (i, &base) in bases.iter().enumerate() {
        let path = segment::data_path(dir, base);
        let md =
            std::fs::metadata(&path).map_err(|e| Error::io("reading metadata of", &path, e))?;
        let modified = md.modified().unwrap_or(SystemTime::now());
        let mut seg = Segment::new_sealed(dir, base, md.len(), modified);
        let first = segment::first_header(&path)?;
        if let Some(&next_base) = bases.get(i + 1) {
            if next_base <= base {
                return Err(Error::corrupt(&path, 0, "segments overlap"));
            }
            seg.next = next_base;
            if first.is_none() {
                // Reads of it will report the damage; its Raft indexes are unknown.
                log::warn!(
                    "{}: a sealed segment does not start with a batch header",
                    path.display()
                );
            }
        }
        seg.base_index = first.map(|h| h.raft_index).unwrap_or(0);
        seg.next_index = seg.base_index;
        if let Some(prev) = segments.last_mut() {
            let prev: &mut Segment = prev;
            prev.next_index = seg.base_index;
        }
        segments.push(seg);
    }
    Ok(segments)
}

/// Name of the file that holds the Raft index an emptied log continues at (written by
/// `reset_at`): an empty log has no batch to tell it.
pub(super) const START_META: &str = "start.meta";

/// The Raft index a log emptied by a reset continues at, if it was reset.
pub(super) fn start_index(dir: &Path) -> Result<Option<u64>> {
    let Some(payload) = crate::meta::read(dir, START_META)? else {
        return Ok(None);
    };
    decode_start(&dir.join(START_META), &payload).map(Some)
}

/// The Raft index in the payload of [`START_META`] file `path`.
pub(super) fn decode_start(path: &Path, payload: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::corrupt(path, 16, "start index too short"))?;
    Ok(u64::from_le_bytes(bytes))
}

/// The Raft index after the last batch of sealed segment `seg`: from its index's last entry,
/// the batches to the end of the file, each checked. `None` when that cannot be read or does
/// not check (reads of the segment report such damage later).
pub(super) async fn index_after_sealed(seg: &Segment) -> Option<u64> {
    let (index, _) = Index::open_sealed(&seg.index_path).ok()?;
    let from = index.last().map(|e| u64::from(e.position)).unwrap_or(0);
    drop(index);
    if from >= seg.size {
        return None;
    }
    let data = segment::open_dma(&seg.data_path, false).await.ok()?;
    let bytes = segment::read_at(&data, &seg.data_path, from, (seg.size - from) as usize).await;
    let _ = data.close().await;
    let bytes = bytes.ok()?;
    let (mut pos, mut last) = (0usize, None);
    while pos < bytes.len() {
        let crate::batch::Parsed::Header(h) = crate::batch::parse_header(&bytes[pos..]) else {
            return None;
        };
        let end = pos + h.batch_len();
        if !bytes
            .get(pos..end)
            .is_some_and(|b| crate::batch::crc_ok(&h, b))
        {
            return None;
        }
        last = Some(h.raft_index);
        pos = end;
    }
    last.map(|i| i + 1)
}

/// Scans `seg` (a log's last segment), cuts what does not validate, and makes it the active
/// segment.
pub(super) async fn recover_active(
    seg: &mut Segment,
    index_capacity: usize,
    index_interval: u64,
    start_index: Option<u64>,
) -> Result<()> {
    let path = seg.data_path.clone();
    let data = segment::open_dma(&path, false).await?;
    let mut index = Index::open(&seg.index_path, index_capacity)?;
    let expect = (seg.base_index > 0).then_some(seg.base_index);
    let scan = segment::scan(&data, &path, seg.base, expect, &mut index, index_interval).await?;
    match &scan.stopped {
        Some(stop) if stop.torn => log::warn!(
            "{}: cutting {} bytes after the last valid batch ({stop}); offsets continue at {}",
            path.display(),
            scan.file_len.saturating_sub(scan.valid_len),
            scan.next
        ),
        Some(stop) => mark_damaged(&path, seg.base, stop, scan.file_len, scan.next)?,
        None => {}
    }
    let buf_pos = align_down(scan.valid_len);
    let buf = read_tail_block(&data, &path, buf_pos, scan.valid_len).await?;
    if scan.file_len > align_up(scan.valid_len) || scan.stopped.is_some() {
        cut_after_valid(&data, &path, &scan, buf_pos, &buf).await?;
    } else if scan.valid_len > 0 {
        // What a killed process wrote but never synced validates like the rest, and the
        // log serves it from here on: it must be durable first, or a power cut after the
        // restart would take back records that readers already saw (and let new ones take
        // their offsets).
        data.fdatasync()
            .await
            .map_err(|e| Error::glommio("syncing recovered", &path, e))?;
        crate::power_loss::synced_at_least(&path, scan.valid_len);
    }
    index.flush()?;
    seg.size = scan.valid_len;
    seg.next = scan.next;
    seg.last_term = scan.last_term;
    if scan.valid_len == 0 {
        // Nothing valid: the index it continues at comes from the previous segment
        // (`recover_last_batch`) or, for a lone segment, from the last reset.
        seg.base_index = start_index.unwrap_or(1);
        seg.next_index = seg.base_index;
    } else {
        seg.next_index = scan.next_index;
    }
    seg.writer = Some(Writer::new(
        Rc::new(data),
        index,
        buf_pos,
        buf,
        scan.valid_len,
        scan.since_index,
    ));
    Ok(())
}

/// Damage that no interrupted write explains, found in the active segment: what follows the
/// last valid batch is kept in a file of its own before recovery cuts it, and the log is
/// marked lost (`LOST_META`), for the batches after the damage may hold acknowledged records.
/// A log marked lost before keeps its first reason.
fn mark_damaged(path: &Path, base: u64, stop: &Stop, file_len: u64, next: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let cut = file_len.saturating_sub(stop.at);
    let keep = segment::damaged_path(dir, base, stop.at);
    keep_bytes(path, stop.at, cut, &keep)?;
    let why = format!(
        "{}: damage at byte {} that no interrupted write leaves ({stop}): the {cut} bytes \
         from there, which may hold acknowledged records, were cut (kept in {}); offsets \
         continue at {next}",
        path.display(),
        stop.at,
        keep.display()
    );
    log::error!("{why}");
    if crate::meta::read(dir, LOST_META)?.is_none() {
        crate::meta::write(dir, LOST_META, why.as_bytes())?;
    }
    Ok(())
}

/// Copies `len` bytes of `from` at `at` into a new durable file `to`.
fn keep_bytes(from: &Path, at: u64, len: u64, to: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut src = std::fs::File::open(from).map_err(|e| Error::io("opening", from, e))?;
    src.seek(SeekFrom::Start(at))
        .map_err(|e| Error::io("reading", from, e))?;
    let mut dst = std::fs::File::create(to).map_err(|e| Error::io("creating", to, e))?;
    std::io::copy(&mut src.take(len), &mut dst).map_err(|e| Error::io("writing", to, e))?;
    dst.sync_all().map_err(|e| Error::io("syncing", to, e))?;
    if let Some(dir) = to.parent() {
        crate::meta::sync_dir(dir)?;
    }
    Ok(())
}

/// The valid bytes of the block at `buf_pos` (up to `valid_len`): the start of the
/// write-behind buffer, rewritten whole at the next write-out.
async fn read_tail_block(
    data: &DmaFile,
    path: &Path,
    buf_pos: u64,
    valid_len: u64,
) -> Result<Vec<u8>> {
    if buf_pos == valid_len {
        return Ok(Vec::new());
    }
    let len = (valid_len - buf_pos) as usize;
    let buf = segment::read_at(data, path, buf_pos, len).await?.to_vec();
    if buf.len() != len {
        return Err(Error::corrupt(
            path,
            buf_pos,
            "data file shrank during recovery",
        ));
    }
    Ok(buf)
}

/// Zeroes whatever follows the valid data in its block and drops later blocks, durably, so
/// that nothing cut here can reappear after another crash.
async fn cut_after_valid(
    data: &DmaFile,
    path: &Path,
    scan: &Scan,
    buf_pos: u64,
    buf: &[u8],
) -> Result<()> {
    segment::rewrite_tail(data, path, buf_pos, buf).await?;
    data.truncate(align_up(scan.valid_len))
        .await
        .map_err(|e| Error::glommio("cutting torn tail of", path, e))?;
    data.fdatasync()
        .await
        .map_err(|e| Error::glommio("syncing repaired", path, e))?;
    crate::power_loss::synced_exactly(path, scan.valid_len);
    Ok(())
}

impl Log {
    /// An empty active segment (a crash right after a roll) knows neither the term nor the
    /// Raft index it continues at: takes them from the previous segment's last batch.
    pub(super) async fn recover_last_batch(&self) -> Result<()> {
        let prev = {
            let st = self.state.borrow();
            let n = st.segments.len();
            match st.segments.last() {
                Some(active) if active.is_empty() && n >= 2 => st.segments[n - 2].base,
                _ => return Ok(()),
            }
        };
        let header = match self.last_header_in(prev).await {
            Ok(h) => h,
            Err(e) => {
                // Reads of the damaged segment report it; the log still opens.
                log::warn!(
                    "{}: last batch before the active segment unreadable: {e}",
                    self.dir.display()
                );
                return Ok(());
            }
        };
        let mut st = self.state_mut();
        let n = st.segments.len();
        let next_index = header.map(|h| h.raft_index + 1);
        if let Some(h) = header {
            st.term = h.term;
            st.segments[n - 2].last_term = h.term;
        }
        let next_index = next_index.unwrap_or(st.segments[n - 2].base_index);
        st.segments[n - 2].next_index = next_index;
        st.segments[n - 1].base_index = next_index;
        st.segments[n - 1].next_index = next_index;
        st.next_index = next_index;
        st.durable_index = next_index;
        Ok(())
    }
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
        if name.ends_with(".meta") || name.contains(segment::DAMAGED_INFIX) {
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
