//! Recovery: which segments a log directory holds, and the active segment validated batch by
//! batch on open, a torn or corrupt tail cut off and the index rebuilt from the data.

use super::Log;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::segment::{self, align_down, align_up, Writer};
use std::path::Path;
use std::rc::Rc;

impl Log {
    /// Scans the last segment, cuts what does not validate, and makes it the active segment.
    pub(super) async fn recover_active(&self) -> Result<()> {
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
            segment::rewrite_tail(&data, &data_path, buf_pos, &buf).await?;
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
}

/// Lists the segments of a log directory by base offset, removing leftovers we own (temporary
/// files, an index without data) and refusing files that look like ours but are not.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
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
