//! What replication needs of a log: batches in the on-disk format read and appended as they
//! are, the term stamped on appends, snapshots streamed out and installed, and small
//! metadata files (Raft's hard state).

use super::admission::Payload;
use super::{Appended, Log, RawBatches};
use crate::batch::{self, Header, Parsed};
use crate::error::{Error, Result};
use crate::limits;
use crate::meta;
use bytes::Bytes;
use std::ops::Range;
use std::rc::Rc;

/// The metadata file that marks a log lost ([`Log::mark_lost`]).
pub const LOST_META: &str = "lost.meta";

/// The metadata file of a log directory made and not yet opened by a replicated group
/// ([`Log::unopened`]): written where the directory is made (a partition's creation, or
/// [`Log::open`] making a missing directory), removed once the group has written its own
/// metadata. A directory without it and without that metadata was emptied after it was
/// opened, not made a moment ago.
pub const UNOPENED_META: &str = "unopened.meta";

/// Writes [`UNOPENED_META`] in the log directory `dir`, durably.
pub(crate) fn write_unopened(dir: &std::path::Path) -> Result<()> {
    meta::write(
        dir,
        UNOPENED_META,
        b"made; not yet opened by its Raft group",
    )
}

/// Whether [`Log::check_raw`] checks each batch's CRC: always for bytes that came from
/// elsewhere (a leader, a snapshot); not for batches this process encoded a moment ago from
/// their payload, whose CRC it has just computed (a second pass would only find its own
/// arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Crc {
    Check,
    Fresh,
}

/// A batch for [`Log::append_fresh_parts`]: its header's bytes, stamped a moment ago from its
/// payload's CRC, and the payload.
#[derive(Debug, Clone, Copy)]
pub struct FreshBatch<'a> {
    pub header: &'a [u8; batch::HEADER_LEN],
    pub payload: &'a [u8],
}

impl Log {
    /// Appends batches already in the on-disk format (from a leader or a snapshot). Each batch
    /// is checked (CRC, continuity with the log's next offset) before anything is written.
    pub async fn append_raw(&self, bytes: &[u8]) -> Result<Option<Appended>> {
        let result = self.admit_raw(bytes, Crc::Check).await?;
        match result {
            Some(a) => self.after_append(a).await.map(Some),
            None => Ok(None),
        }
    }

    /// Checks `bytes` ([`check_raw`](Self::check_raw)) and copies its batches into the
    /// write-behind buffer, returning the offsets they took (none for an empty input).
    pub(super) async fn admit_raw(&self, bytes: &[u8], crc: Crc) -> Result<Option<Appended>> {
        let batches = self.check_raw(bytes, crc)?;
        let parts: Vec<(Header, &[u8], &[u8])> = batches
            .into_iter()
            .map(|(header, range)| (header, &bytes[range], &[][..]))
            .collect();
        self.admit_parts(&parts).await
    }

    /// Copies checked batches, each given as two pieces stored back to back, into the
    /// write-behind buffer, returning the offsets they took (none for an empty input).
    async fn admit_parts(&self, batches: &[(Header, &[u8], &[u8])]) -> Result<Option<Appended>> {
        let mut result: Option<Appended> = None;
        for &(header, head, body) in batches {
            let a = self
                .append_payload(Payload::Raw { header, head, body })
                .await?;
            result = Some(Appended {
                base_offset: result.map(|r| r.base_offset).unwrap_or(a.base_offset),
                last_offset: a.last_offset,
            });
        }
        Ok(result)
    }

    /// [`append_fresh`](Self::append_fresh) for batches given as a header and a payload
    /// each, the payload copied once, from where it is, into the write-behind buffer (a
    /// Raft entry's records stay in the entry instead of being copied behind a header
    /// first). The headers were just stamped from their payloads' CRCs: every check but the
    /// CRC's.
    pub async fn append_fresh_parts(&self, batches: &[FreshBatch<'_>]) -> Result<Option<Appended>> {
        let mut next = self.continuation();
        let mut pos = 0usize;
        let mut checked = Vec::with_capacity(batches.len());
        for b in batches {
            let header = match batch::parse_header(b.header) {
                Parsed::Header(h) => h,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "raw batches: no valid batch header at byte {pos}"
                    )))
                }
            };
            if header.batch_len() != b.header.len() + b.payload.len() {
                return Err(Error::InvalidArgument(format!(
                    "raw batches: batch at byte {pos} claims {} bytes but has {}",
                    header.batch_len(),
                    b.header.len() + b.payload.len()
                )));
            }
            self.check_continues(&header, pos, &mut next)?;
            checked.push((header, &b.header[..], b.payload));
            pos += header.batch_len();
        }
        let result = self.admit_parts(&checked).await?;
        self.appended.notify(usize::MAX);
        Ok(result)
    }

    /// Where the next batch given must continue the log: its next offset, and its next
    /// Raft index unless the log is empty (just reset or created: it takes the Raft index of
    /// what it is given).
    fn continuation(&self) -> (u64, Option<u64>) {
        let st = self.state.borrow();
        let empty = st.segments.iter().all(|s| s.is_empty());
        (st.next, (!empty).then_some(st.next_index))
    }

    /// Checks that a batch at byte `pos` of what was given continues `next` (offset and Raft
    /// index, moved past it) and fits the log's batch limit.
    fn check_continues(
        &self,
        header: &Header,
        pos: usize,
        next: &mut (u64, Option<u64>),
    ) -> Result<()> {
        let (expect, expect_index) = *next;
        if header.base_offset != expect {
            return Err(Error::InvalidArgument(format!(
                "raw batches: batch at byte {pos} starts at offset {} but the log continues at {expect}",
                header.base_offset
            )));
        }
        if expect_index.is_some_and(|x| x != header.raft_index) || header.raft_index == 0 {
            return Err(Error::InvalidArgument(format!(
                "raw batches: batch at byte {pos} has Raft index {} but the log continues at {}",
                header.raft_index,
                expect_index.unwrap_or(1)
            )));
        }
        if header.payload_len as usize > self.config.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size: header.payload_len as usize,
                limit: self.config.max_batch_bytes,
                unit: "bytes",
            });
        }
        *next = (header.next_offset(), Some(header.raft_index + 1));
        Ok(())
    }

    /// Splits `bytes` into whole batches, each checked (header, CRC unless `crc` says the
    /// caller just computed it, size) and continuing the offsets of the one before, the first
    /// continuing the log.
    pub(super) fn check_raw(&self, bytes: &[u8], crc: Crc) -> Result<Vec<(Header, Range<usize>)>> {
        let mut pos = 0usize;
        let mut next = self.continuation();
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
            if end > bytes.len() || (crc == Crc::Check && !batch::crc_ok(&header, &bytes[pos..end]))
            {
                return Err(Error::InvalidArgument(format!(
                    "raw batches: batch at byte {pos} is torn or corrupt"
                )));
            }
            self.check_continues(&header, pos, &mut next)?;
            batches.push((header, pos..end));
            pos = end;
        }
        Ok(batches)
    }

    /// Reads whole batches in the on-disk format from the batch holding `from`, up to about
    /// `max_bytes` (at least one batch), by offset: never past the visible end, and data
    /// batches only (control batches hold no offset). A Raft log is copied by Raft index
    /// instead ([`read_entries`](Self::read_entries), which reads past the visible end: a
    /// leader sends entries that are not committed yet).
    pub async fn read_raw(&self, from: u64, max_bytes: usize) -> Result<RawBatches> {
        let end = self.readable_from(from)?;
        let batches = self.read_batches(from, max_bytes, usize::MAX, end).await?;
        let first_offset = batches
            .first()
            .map(|b| b.header.base_offset)
            .unwrap_or(from);
        let next_offset = batches
            .last()
            .map(|b| b.header.next_offset())
            .unwrap_or(from);
        let bytes = if batches.len() == 1 {
            batches[0].bytes.clone()
        } else {
            let mut v = Vec::with_capacity(batches.iter().map(|b| b.bytes.len()).sum());
            for b in &batches {
                v.extend_from_slice(&b.bytes);
            }
            Bytes::from(v)
        };
        Ok(RawBatches {
            bytes,
            first_offset,
            next_offset,
        })
    }

    /// Sets the term stamped on later `append`s.
    pub fn set_term(&self, term: u64) {
        self.state_mut().term = term;
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

    /// Records, durably, that this log no longer holds what it once held (its directory
    /// vanished or was emptied, or a leader named entries it acknowledged that are gone),
    /// with why: a replicated log marked so must never take part in its group again, whatever
    /// restarts follow. The mark goes with the directory (a snapshot's install, which replaces it,
    /// or the topic's deletion).
    pub fn mark_lost(&self, why: &str) -> Result<()> {
        meta::write(&self.dir, LOST_META, why.as_bytes())
    }

    /// Why this log was marked lost ([`mark_lost`](Self::mark_lost)), if it was.
    pub fn lost(&self) -> Result<Option<String>> {
        Ok(meta::read(&self.dir, LOST_META)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Whether this log's directory was made and never opened by a replicated group since
    /// ([`UNOPENED_META`]): a directory without it that lacks the group's metadata lost it.
    pub fn unopened(&self) -> Result<bool> {
        Ok(meta::read(&self.dir, UNOPENED_META)?.is_some())
    }

    /// Forgets that this log was never opened ([`unopened`](Self::unopened)), once its
    /// group's metadata is written. Not synced: a crash that brings the file back finds
    /// that metadata beside it, which decides.
    pub fn forget_unopened(&self) -> Result<()> {
        let path = self.dir.join(UNOPENED_META);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &path, e)),
        }
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

fn check_meta_name(name: &str) -> Result<()> {
    if name.ends_with(".meta") && !name.contains('/') && name.len() <= limits::MAX_META_NAME_BYTES {
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
