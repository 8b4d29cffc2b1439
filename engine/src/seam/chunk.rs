//! What a read hands back: whole stored batches as the owner found them (shared bytes, no
//! copy, no per-record work on the owner), checked and decoded by the caller on its own core.

use super::error::Result;
use super::ReadLimits;
use crate::batch::{self, Header, Parsed, Record, HEADER_LEN, RECORD_OVERHEAD};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whole stored batches, back to back, as one contiguous piece of a data file (or memory).
#[derive(Debug, Clone)]
pub struct Run {
    pub bytes: Bytes,
    /// The base offset of the segment whose data file holds the run (`None`: not a file).
    pub(crate) segment: Option<u64>,
    /// Byte position of the run in that file.
    pub(crate) pos: u64,
}

/// The result of one read: stored batches from the one holding `from`, never past
/// `visible_end`, and the bounds [`records`](Chunk::records) applies.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// In offset order; the first batch may start before `from`.
    pub runs: Vec<Run>,
    /// The offset asked for.
    pub from: u64,
    /// The end of what readers could see when the read was served.
    pub visible_end: u64,
    pub limits: ReadLimits,
    /// The partition's directory (or a name), for error messages.
    pub(crate) origin: Arc<Path>,
}

impl Chunk {
    pub(crate) fn new(from: u64, visible_end: u64, limits: ReadLimits, origin: Arc<Path>) -> Chunk {
        Chunk {
            runs: Vec::new(),
            from,
            visible_end,
            limits,
            origin,
        }
    }

    /// A chunk of stored batches that came from elsewhere (another node's replica, which
    /// read them for this one): `origin` names where, for error messages. Nothing is
    /// trusted: [`records`](Self::records) checks every batch's CRC before it yields a record.
    pub fn from_remote(
        runs: Vec<Bytes>,
        from: u64,
        visible_end: u64,
        limits: ReadLimits,
        origin: &str,
    ) -> Chunk {
        Chunk {
            runs: runs
                .into_iter()
                .map(|bytes| Run {
                    bytes,
                    segment: None,
                    pos: 0,
                })
                .collect(),
            from,
            visible_end,
            limits,
            origin: Arc::from(Path::new(origin)),
        }
    }

    /// Whether the chunk was read from this node's own log (its segment files, or the cache
    /// of its active segment's newest bytes), not sent by another node.
    pub fn is_from_files(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(|r| r.segment.is_some())
    }

    /// True when the read found nothing (at or past the visible end).
    pub fn is_empty(&self) -> bool {
        self.runs.iter().all(|r| r.bytes.is_empty())
    }

    /// Stored bytes in the chunk.
    pub fn stored_len(&self) -> usize {
        self.runs.iter().map(|r| r.bytes.len()).sum()
    }

    /// The records at or after `from` and before `visible_end`, at most `max_records` and
    /// `max_bytes` of values (the first whatever its size). Each batch's CRC is checked before
    /// any of its records is yielded; a bad one ends the iteration with `Internal`, naming
    /// the file and byte.
    pub fn records(&self) -> impl Iterator<Item = Result<Record>> + '_ {
        self.checked_records().map(|r| r.map_err(Into::into))
    }

    /// Checks every batch [`records`](Self::records) would yield records of (its header and
    /// CRC), without making records: for a chunk sent on to another node, which checks it
    /// again, so that damage here is found here.
    pub fn verify(&self) -> Result<()> {
        let mut it = self.checked_records();
        while it.next_batch()? {
            it.batch = None;
        }
        Ok(())
    }

    /// [`records`](Self::records) with the engine's errors (`Corrupt` with path and position).
    pub(crate) fn checked_records(&self) -> Records<'_> {
        Records {
            chunk: self,
            run: 0,
            pos: 0,
            batch: None,
            count: 0,
            value_bytes: 0,
            done: false,
        }
    }

    /// The data file a run was read from (or the partition's name, for runs not in a file).
    fn file(&self, run: &Run) -> PathBuf {
        match run.segment {
            Some(base) => crate::segment::data_path(&self.origin, base),
            None => self.origin.to_path_buf(),
        }
    }

    fn corrupt(&self, run: &Run, at: usize, why: impl Into<String>) -> crate::Error {
        crate::Error::Corrupt {
            path: self.file(run),
            position: run.pos + at as u64,
            reason: why.into(),
        }
    }
}

/// The batch a [`Records`] iterator is inside.
struct Cursor {
    header: Header,
    bytes: Bytes,
    /// Records of the batch yielded or skipped so far.
    index: u32,
    /// Where the next record starts in `bytes`.
    at: usize,
    /// The run holding the batch, and where the batch starts in it (for error positions).
    run: usize,
    run_at: usize,
}

/// Iterator over a chunk's records; see [`Chunk::records`].
pub struct Records<'a> {
    chunk: &'a Chunk,
    run: usize,
    /// Where the next batch starts in the current run.
    pos: usize,
    batch: Option<Cursor>,
    count: usize,
    value_bytes: usize,
    done: bool,
}

impl Records<'_> {
    /// Moves to the next batch with records at or after `from`; `Ok(false)` at the end.
    fn next_batch(&mut self) -> crate::Result<bool> {
        loop {
            let Some(run) = self.chunk.runs.get(self.run) else {
                return Ok(false);
            };
            if self.pos >= run.bytes.len() {
                self.run += 1;
                self.pos = 0;
                continue;
            }
            let rest = &run.bytes[self.pos..];
            let header = match batch::parse_header(rest) {
                Parsed::Header(h) => h,
                Parsed::End => {
                    return Err(self.chunk.corrupt(
                        run,
                        self.pos,
                        "zeroes where a batch was expected",
                    ))
                }
                Parsed::Unsupported(version) => {
                    return Err(crate::segment::unsupported(&self.chunk.file(run), version))
                }
                Parsed::Invalid(why) => return Err(self.chunk.corrupt(run, self.pos, why)),
            };
            let len = header.batch_len();
            if len > rest.len() {
                return Err(self.chunk.corrupt(
                    run,
                    self.pos,
                    "batch runs past the end of what was read",
                ));
            }
            let at = self.pos;
            self.pos += len;
            // Before `from`, or a control batch (a Raft entry without records, format v2):
            // nothing to yield, so nothing to check.
            if header.next_offset() <= self.chunk.from || !header.is_data() {
                continue;
            }
            let bytes = run.bytes.slice(at..at + len);
            if !batch::crc_ok(&header, &bytes) {
                return Err(self.chunk.corrupt(run, at, "checksum mismatch"));
            }
            self.batch = Some(Cursor {
                header,
                bytes,
                index: 0,
                at: HEADER_LEN,
                run: self.run,
                run_at: at,
            });
            return Ok(true);
        }
    }

    /// The next record of the current batch at or after `from`, `Ok(None)` when it has no
    /// more.
    fn next_in_batch(&mut self) -> crate::Result<Option<Record>> {
        let from = self.chunk.from;
        let Some(c) = self.batch.as_mut() else {
            return Ok(None);
        };
        // Records before `from` (a read that starts inside a batch) are stepped over without
        // being made into records: a unary Consume of one offset in a large batch pays a few
        // additions per record skipped, not a `Record` and its slice of the batch.
        let mut skipped = Some(());
        while skipped.is_some()
            && c.index < c.header.record_count
            && c.header.base_offset + u64::from(c.index) < from
        {
            skipped = skip_record(c);
        }
        let record = if skipped.is_none() {
            None
        } else if c.index == c.header.record_count {
            // Every record read: the batch must end exactly there.
            (c.at == c.bytes.len()).then_some(None)
        } else {
            record_at(c).map(Some)
        };
        match record {
            Some(Some(r)) => Ok(Some(r)),
            Some(None) => {
                self.batch = None;
                Ok(None)
            }
            None => {
                let (run, at) = (c.run, c.run_at);
                self.batch = None;
                Err(self.chunk.corrupt(
                    &self.chunk.runs[run],
                    at,
                    "records do not add up to the batch length",
                ))
            }
        }
    }
}

/// Moves the cursor past the record at it without decoding it; `None` if it does not fit the
/// batch (as [`record_at`]).
fn skip_record(c: &mut Cursor) -> Option<()> {
    let s = c.bytes.get(c.at..c.at.checked_add(4)?)?;
    let len = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let end = (c.at + RECORD_OVERHEAD)
        .checked_add(len)
        .filter(|&e| e <= c.bytes.len())?;
    c.index += 1;
    c.at = end;
    Some(())
}

/// Decodes the record at the cursor and moves past it; `None` if it does not fit the batch
/// (which its good CRC makes a bug, but bytes from disk are never trusted with a panic).
fn record_at(c: &mut Cursor) -> Option<Record> {
    let b = &c.bytes;
    let field = |at: usize| -> Option<u32> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let len = field(c.at)? as usize;
    let rtype = field(c.at + 4)?;
    let start = c.at + RECORD_OVERHEAD;
    let end = start.checked_add(len).filter(|&e| e <= b.len())?;
    let record = Record {
        offset: c.header.base_offset + u64::from(c.index),
        term: c.header.term,
        timestamp_ms: c.header.timestamp_ms,
        rtype,
        value: b.slice(start..end),
    };
    c.index += 1;
    c.at = end;
    Some(record)
}

impl Iterator for Records<'_> {
    type Item = crate::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let step = match self.next_in_batch() {
                Ok(Some(r)) => Ok(Some(r)),
                Ok(None) => self.next_batch().map(|_| None),
                Err(e) => Err(e),
            };
            let more = self.batch.is_some() || self.run < self.chunk.runs.len();
            match step {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) if !more => self.done = true,
                Ok(None) => {}
                Ok(Some(r)) => {
                    if r.offset < self.chunk.from {
                        continue;
                    }
                    let l = &self.chunk.limits;
                    if r.offset >= self.chunk.visible_end
                        || self.count >= l.max_records
                        || (self.count > 0 && self.value_bytes + r.value.len() > l.max_bytes)
                    {
                        self.done = true;
                        return None;
                    }
                    self.count += 1;
                    self.value_bytes += r.value.len();
                    return Some(Ok(r));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Kind, Stamp};
    use crate::seam::{EncodedBatch, NewRecord, PastEnd};

    fn stored(base: u64, values: &[&str]) -> Bytes {
        let records: Vec<NewRecord> = values
            .iter()
            .map(|v| NewRecord::new(v.to_string()))
            .collect();
        EncodedBatch::encode(&records)
            .expect("encode")
            .stored(&Stamp {
                base_offset: base,
                term: 1,
                raft_index: base + 1,
                timestamp_ms: 5,
                ..Stamp::default()
            })
    }

    /// A control batch (a Raft entry without records) that sits before offset `base`.
    fn control(base: u64, kind: Kind, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let stamp = Stamp {
            kind,
            base_offset: base,
            term: 2,
            raft_index: base + 1,
            ..Stamp::default()
        };
        batch::encode_with_payload(&mut out, &stamp, 0, data);
        out
    }

    fn chunk(from: u64, visible_end: u64, runs: Vec<Bytes>) -> Chunk {
        let limits = ReadLimits {
            max_records: 100,
            max_bytes: 1 << 20,
            past_end: PastEnd::OutOfRange,
        };
        let mut c = Chunk::new(from, visible_end, limits, Arc::from(Path::new("/d/t/0")));
        for (i, bytes) in runs.into_iter().enumerate() {
            c.runs.push(Run {
                bytes,
                segment: Some(0),
                pos: 4096 * i as u64,
            });
        }
        c
    }

    fn values(c: &Chunk) -> Vec<(u64, String)> {
        c.records()
            .map(|r| {
                let r = r.expect("record");
                (
                    r.offset,
                    String::from_utf8(r.value.to_vec()).expect("utf-8"),
                )
            })
            .collect()
    }

    #[test]
    fn records_start_at_from_and_stop_at_the_visible_end() {
        let mut run = stored(10, &["a", "b", "c"]).to_vec();
        run.extend_from_slice(&stored(13, &["d", "e"]));
        let c = chunk(11, 14, vec![Bytes::from(run), stored(15, &["f"])]);
        assert_eq!(
            values(&c),
            vec![(11, "b".into()), (12, "c".into()), (13, "d".into())]
        );
    }

    #[test]
    fn a_read_from_deep_inside_a_large_batch_starts_at_its_offset() {
        let owned: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
        let vals: Vec<&str> = owned.iter().map(String::as_str).collect();
        let c = chunk(57, 100, vec![stored(0, &vals)]);
        let got = values(&c);
        assert_eq!(got.len(), 43);
        assert_eq!(got[0], (57, "v57".into()));
        assert_eq!(got[42], (99, "v99".into()));
        // At the batch's last record, and past a whole batch of records before `from`.
        let c = chunk(99, 100, vec![stored(0, &vals)]);
        assert_eq!(values(&c), vec![(99, "v99".into())]);
    }

    #[test]
    fn a_damaged_batch_is_an_error_naming_file_and_byte() {
        let good = stored(0, &["one"]);
        let mut bad = stored(1, &["two", "three"]).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x20;
        assert!(chunk(0, 1, vec![good.clone()]).verify().is_ok());
        let c = chunk(0, 3, vec![good, Bytes::from(bad)]);
        assert!(
            matches!(c.verify(), Err(crate::seam::Error::DataLoss(m)) if m.contains("checksum")),
            "verify finds the damage"
        );
        // Not if the read starts past the damaged batch.
        assert!(
            chunk(3, 3, c.runs.iter().map(|r| r.bytes.clone()).collect())
                .verify()
                .is_ok()
        );
        let mut it = c.checked_records();
        assert_eq!(&it.next().expect("first").expect("good").value[..], b"one");
        match it.next() {
            Some(Err(crate::Error::Corrupt {
                path,
                position,
                reason,
            })) => {
                assert_eq!(path, Path::new("/d/t/0/00000000000000000000.log"));
                assert_eq!((position, reason.as_str()), (4096, "checksum mismatch"));
            }
            other => panic!("a flipped byte: {other:?}"),
        }
        assert!(it.next().is_none(), "nothing after the damage");
        let cut = stored(0, &["four"]);
        let c = chunk(0, 1, vec![cut.slice(..cut.len() - 1)]);
        assert!(matches!(
            c.records().next(),
            Some(Err(crate::seam::Error::DataLoss(m))) if m.contains("past the end")
        ));
    }

    #[test]
    fn control_batches_are_skipped_wherever_they_sit() {
        // A no-op before the first record, a configuration change between two data batches,
        // a no-op at the end: only the records come out, at their offsets.
        let mut run = control(0, Kind::NoOp, b"");
        run.extend_from_slice(&stored(0, &["a", "b"]));
        run.extend_from_slice(&control(2, Kind::ConfChange, b"a configuration"));
        run.extend_from_slice(&stored(2, &["c"]));
        run.extend_from_slice(&control(3, Kind::NoOp, b""));
        let c = chunk(1, 3, vec![Bytes::from(run)]);
        assert_eq!(values(&c), vec![(1, "b".into()), (2, "c".into())]);
    }

    #[test]
    fn a_batch_of_format_one_is_named_not_misread() {
        let mut v1 = stored(0, &["old"]).to_vec();
        v1[4] = 1;
        let c = chunk(0, 1, vec![Bytes::from(v1)]);
        match c.checked_records().next() {
            Some(Err(crate::Error::UnsupportedFormat { path, version, .. })) => {
                assert_eq!(path, Path::new("/d/t/0/00000000000000000000.log"));
                assert_eq!(version, 1);
            }
            other => panic!("a version-1 batch: {other:?}"),
        }
    }
}
