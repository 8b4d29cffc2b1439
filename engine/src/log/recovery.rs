//! Recovery: which segments a log directory holds, and the active segment validated batch by
//! batch on open, a torn or corrupt tail cut off and the index rebuilt from the data.
//!
//! These run before the `Log` exists (`Log::open` builds its state from what they return),
//! except `recover_term`, which needs the log's reads.

use super::Log;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::segment::{self, align_down, align_up, Scan, Segment, Writer};
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
        if let Some(&next_base) = bases.get(i + 1) {
            if next_base <= base {
                return Err(Error::corrupt(&path, 0, "segments overlap"));
            }
            seg.next = next_base;
        }
        segments.push(seg);
    }
    Ok(segments)
}

/// Scans `seg` (a log's last segment), cuts what does not validate, and makes it the active
/// segment.
pub(super) async fn recover_active(
    seg: &mut Segment,
    index_capacity: usize,
    index_interval: u64,
) -> Result<()> {
    let path = seg.data_path.clone();
    let data = segment::open_dma(&path, false).await?;
    let mut index = Index::open(&seg.index_path, index_capacity)?;
    let scan = segment::scan(&data, &path, seg.base, &mut index, index_interval).await?;
    if let Some(why) = &scan.stopped {
        log::warn!(
            "{}: cutting {} bytes after the last valid batch ({why}); offsets continue at {}",
            path.display(),
            scan.file_len.saturating_sub(scan.valid_len),
            scan.next
        );
    }
    let buf_pos = align_down(scan.valid_len);
    let buf = read_tail_block(&data, &path, buf_pos, scan.valid_len).await?;
    if scan.file_len > align_up(scan.valid_len) || scan.stopped.is_some() {
        cut_after_valid(&data, &path, &scan, buf_pos, &buf).await?;
    }
    index.flush()?;
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
        charged: crate::memory::Charged::local(),
    });
    if let Some(w) = seg.writer.as_mut() {
        w.track_buffer();
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
        .map_err(|e| Error::glommio("syncing repaired", path, e))
}

impl Log {
    /// An empty active segment (a crash right after a roll) knows no term: takes the term of
    /// the last record from the previous segment's index.
    pub(super) async fn recover_term(&self) {
        let empty_active = self
            .state
            .borrow()
            .segments
            .last()
            .is_some_and(|s| s.is_empty());
        let Some(last) = self.highest_offset().filter(|_| empty_active) else {
            return;
        };
        match self.term_of(last).await {
            Ok(term) => self.state_mut().term = term,
            Err(e) => log::warn!(
                "{}: term of the last record unknown: {e}",
                self.dir.display()
            ),
        }
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
