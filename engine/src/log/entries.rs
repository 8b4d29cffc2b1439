//! The log as a Raft log: batches addressed by Raft index (one batch = one entry), appended
//! as they come from the leader without waiting for durability (the caller syncs once for
//! many logs), read by index range for followers that lag, cut after an index when a
//! follower's log conflicts with its leader's, and the term runs `(first index, term)`
//! rebuilt from the sparse indexes (which hold an entry at every term change).

use super::read::{StoredBatch, Window};
use super::replica::Crc;
use super::{find, Appended, Log};
use crate::batch::Header;
use crate::error::{Error, Result};
use crate::limits;
use bytes::Bytes;

/// A whole, checked batch read by Raft index.
#[derive(Debug, Clone)]
pub struct EntryBatch {
    pub header: Header,
    /// The batch, header included, in the on-disk format.
    pub bytes: Bytes,
}

impl Log {
    /// Raft index of the first batch the log holds (`next_index` when it holds none).
    pub fn first_index(&self) -> u64 {
        let st = self.state.borrow();
        st.segments
            .first()
            .map(|s| s.base_index)
            .unwrap_or(st.next_index)
    }

    /// The Raft index the next batch gets.
    pub fn next_index(&self) -> u64 {
        self.state.borrow().next_index
    }

    /// Batches below this Raft index are durable (synced).
    pub fn durable_index(&self) -> u64 {
        self.state.borrow().durable_index
    }

    /// Appends whole batches in the on-disk format (checked: header, CRC, offsets and Raft
    /// indexes continuing the log's) to the write-behind buffer, and returns without waiting
    /// for any write or sync, whatever the durability policy: the caller syncs ([`Log::sync`])
    /// before it acknowledges them.
    pub async fn append_buffered(&self, bytes: &[u8]) -> Result<Option<Appended>> {
        let result = self.admit_raw(bytes, Crc::Check).await?;
        self.appended.notify(usize::MAX);
        Ok(result)
    }

    /// [`append_buffered`](Self::append_buffered) for batches the caller has just encoded
    /// (`batch::encode_with_payload`: header CRC computed from the payload it copied): every
    /// check but the CRC's, which would be a second pass over the payload finding the first
    /// one's arithmetic. Bytes that came from anywhere else go through `append_buffered`.
    pub async fn append_fresh(&self, bytes: &[u8]) -> Result<Option<Appended>> {
        let result = self.admit_raw(bytes, Crc::Fresh).await?;
        self.appended.notify(usize::MAX);
        Ok(result)
    }

    /// The batches of Raft indexes `[from, to)`, up to about `max_bytes` (at least one).
    pub async fn read_entries(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<EntryBatch>> {
        Ok(self
            .read_by_index(from, to, max_bytes)
            .await?
            .into_iter()
            .map(|b| EntryBatch {
                header: b.header,
                bytes: b.bytes,
            })
            .collect())
    }

    /// The header of the log's last batch, if it holds one.
    pub async fn last_header(&self) -> Result<Option<Header>> {
        let bases: Vec<u64> = {
            let st = self.state.borrow();
            st.segments
                .iter()
                .rev()
                .filter(|s| !s.is_empty())
                .map(|s| s.base)
                .take(1)
                .collect()
        };
        match bases.first() {
            Some(&base) => self.last_header_in(base).await,
            None => Ok(None),
        }
    }

    /// The term runs of the log: `(first Raft index, term)` for every index where the term
    /// changes, in order, from the sparse indexes of every segment.
    pub async fn term_runs(&self) -> Result<Vec<(u64, u64)>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (base, _) in self.segment_extents() {
            self.ensure_open(base).await?;
            let st = self.state.borrow();
            let Some(seg) = find(&st.segments, base) else {
                continue;
            };
            let slot = seg.slot.borrow();
            let index = match (&seg.writer, slot.as_ref()) {
                (Some(w), _) => &w.index,
                (None, Some(f)) => &f.index,
                (None, None) => return Err(Error::ShutDown),
            };
            for i in 0..index.len() {
                let Some(e) = index.entry(i) else { break };
                if runs.last().is_none_or(|&(_, t)| t != e.term) {
                    runs.push((e.raft_index, e.term));
                }
            }
        }
        Ok(runs)
    }

    /// Whole, checked batches of Raft indexes `[from, to)` (at least one, then up to about
    /// `max_bytes`), across segments.
    pub(super) async fn read_by_index(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>> {
        let mut out: Vec<StoredBatch> = Vec::new();
        let mut want = from;
        let mut bytes = 0usize;
        while want < to {
            let base = {
                let st = self.state.borrow();
                let first = st.segments.first().map(|s| s.base_index).unwrap_or(0);
                if want < first || want >= st.next_index {
                    if out.is_empty() {
                        return Err(Error::InvalidArgument(format!(
                            "Raft index {want} is outside the log [{first}, {})",
                            st.next_index
                        )));
                    }
                    break;
                }
                let i = st.segments.partition_point(|s| s.base_index <= want) - 1;
                st.segments[i].base
            };
            self.ensure_open(base).await?;
            let (path, pos, size) = self.locate_index(base, want)?;
            let window = max_bytes
                .clamp(limits::MIN_READ_WINDOW_BYTES, limits::MAX_READ_WINDOW_BYTES)
                + self.config.index_interval_bytes as usize;
            let mut w = Window::new(pos);
            let mut pos = pos;
            let before = want;
            while pos < size && want < to {
                let header = self.header_in(base, &path, &mut w, pos, window).await?;
                let len = header.batch_len();
                if header.raft_index < want {
                    pos += len as u64;
                    continue;
                }
                if header.raft_index != want {
                    return Err(Error::corrupt(
                        &path,
                        pos,
                        format!(
                            "batch of Raft index {} where {want} was expected",
                            header.raft_index
                        ),
                    ));
                }
                if !out.is_empty() && bytes + len > max_bytes {
                    return Ok(out);
                }
                let b = self
                    .batch_in(base, &path, &mut w, &header, pos, window, true)
                    .await?;
                bytes += len;
                out.push(StoredBatch {
                    header,
                    segment: base,
                    pos,
                    bytes: b,
                });
                want += 1;
                pos += len as u64;
            }
            if want == before {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("Raft index {want} is not in the segment its index points to"),
                ));
            }
        }
        Ok(out)
    }

    /// Where to start reading segment `base` for Raft index `raft_index`: its data path, the
    /// position its index gives for that batch (or one before it), its size.
    fn locate_index(&self, base: u64, raft_index: u64) -> Result<(std::path::PathBuf, u64, u64)> {
        let st = self.state.borrow();
        let seg = find(&st.segments, base).ok_or(Error::ShutDown)?;
        let slot = seg.slot.borrow();
        let index = match (&seg.writer, slot.as_ref()) {
            (Some(w), _) => &w.index,
            (None, Some(f)) => &f.index,
            (None, None) => return Err(Error::ShutDown),
        };
        let pos = index
            .lookup_raft_index(raft_index)
            .map(|(_, e)| u64::from(e.position))
            .unwrap_or(0);
        Ok((seg.data_path.clone(), pos, seg.size))
    }
}
