//! The tail cache: the most recently written bytes of a partition's active segment, kept in
//! memory after they reach the device, so that readers close behind the writer (a tailing
//! consumer, a unary Consume of a hot offset) are served without a DMA read.
//!
//! It holds whole blocks handed to the device by completed writes, as one contiguous range
//! of the data file ending where the write-behind buffer begins (`Writer::buf_pos`): together
//! they cover the segment's last bytes. It is bounded ([`TAIL_CACHE_BYTES`]): the oldest
//! pieces go first, and what it holds is charged to the memory budget like the write-behind
//! buffer. It caches bytes by file position, below the partition seam: what a reader may
//! see is still decided by the visible mark, exactly as for bytes read from the device.
//!
//! [`TAIL_CACHE_BYTES`]: crate::limits::TAIL_CACHE_BYTES

use crate::memory::Charged;
use bytes::Bytes;
use std::collections::VecDeque;

/// Recently written bytes of one active segment.
#[derive(Debug)]
pub struct TailCache {
    /// Contiguous pieces, oldest first: `(file position, bytes)`.
    pieces: VecDeque<(u64, Bytes)>,
    bytes: usize,
    cap: usize,
    charged: Charged,
}

impl TailCache {
    /// An empty cache of at most `cap` bytes (0 turns it off), charged to this thread's
    /// memory account.
    pub(crate) fn new(cap: usize) -> TailCache {
        TailCache {
            pieces: VecDeque::new(),
            bytes: 0,
            cap,
            charged: Charged::local(),
        }
    }

    /// The file position of the first byte held, if any.
    pub fn start(&self) -> Option<u64> {
        self.pieces.front().map(|(p, _)| *p)
    }

    /// The file position after the last byte held, if any.
    pub fn end(&self) -> Option<u64> {
        self.pieces.back().map(|(p, b)| p + b.len() as u64)
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Adds bytes just written at `pos`. A piece that does not continue the cache (the
    /// writer moved back: a rewrite after a cut) replaces it, so it only ever holds one
    /// contiguous range, and what it holds is what the file holds there.
    pub(crate) fn push(&mut self, pos: u64, bytes: &[u8]) {
        if self.cap == 0 || bytes.is_empty() {
            return;
        }
        if self.end() != Some(pos) {
            self.clear();
        }
        // Keep only the newest `cap` bytes of an oversized piece.
        let (pos, bytes) = if bytes.len() > self.cap {
            let skip = bytes.len() - self.cap;
            (pos + skip as u64, &bytes[skip..])
        } else {
            (pos, bytes)
        };
        self.bytes += bytes.len();
        self.pieces.push_back((pos, Bytes::copy_from_slice(bytes)));
        while self.bytes > self.cap {
            match self.pieces.pop_front() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
        self.charged.track(self.bytes);
    }

    /// Drops everything held.
    pub(crate) fn clear(&mut self) {
        self.pieces.clear();
        self.bytes = 0;
        self.charged.track(0);
    }

    /// Bytes `[pos, end)` if the cache holds all of them: a slice of one piece when they lie
    /// in one (no copy), else a copy.
    pub fn get(&self, pos: u64, end: u64) -> Option<Bytes> {
        let (start, stop) = (self.start()?, self.end()?);
        if pos < start || end > stop || pos >= end {
            return None;
        }
        // The piece holding `pos`: the last one starting at or before it.
        let i = self.pieces.partition_point(|(p, _)| *p <= pos) - 1;
        let (p0, b0) = &self.pieces[i];
        if end <= p0 + b0.len() as u64 {
            return Some(b0.slice((pos - p0) as usize..(end - p0) as usize));
        }
        let mut out = Vec::with_capacity((end - pos) as usize);
        for (p, b) in self.pieces.iter().skip(i) {
            if *p >= end {
                break;
            }
            let from = pos.saturating_sub(*p) as usize;
            let to = ((end - p) as usize).min(b.len());
            out.extend_from_slice(&b[from..to]);
        }
        Some(Bytes::from(out))
    }
}

/// The last few pieces read from the device (by segment and position), so that readers
/// walking a sealed or older part of a log record by record (unary Consume of consecutive
/// offsets) pay one DMA read per window rather than one per record. Least recently used goes
/// first, so that each of many readers walking at once keeps its piece while it reads from
/// it. Bounded in entries, in the size of each and in bytes together; charged to the memory
/// budget. Data on the device below the write
/// position never changes except by a cut (truncation, reset), so each entry carries the
/// log's cut epoch when its read began and is served only while the epoch is the same.
#[derive(Debug)]
pub struct RecentReads {
    /// `(cut epoch, segment base, file position, bytes)`, newest last.
    entries: VecDeque<(u64, u64, u64, Bytes)>,
    charged: Charged,
}

impl RecentReads {
    pub(crate) fn new() -> RecentReads {
        RecentReads {
            entries: VecDeque::new(),
            charged: Charged::local(),
        }
    }

    /// Drops every piece.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.charged.track(0);
    }

    /// Bytes `[pos, end)` of segment `base` if a recent read brought them under `epoch`; the
    /// piece that holds them becomes the most recently used.
    pub(crate) fn get(&mut self, epoch: u64, base: u64, pos: u64, end: u64) -> Option<Bytes> {
        let i = self.entries.iter().rposition(|(e, b, p, bytes)| {
            *e == epoch && *b == base && *p <= pos && end <= p + bytes.len() as u64
        })?;
        let entry = self.entries.remove(i)?;
        let (_, _, p, bytes) = &entry;
        let out = bytes.slice((pos - p) as usize..(end - p) as usize);
        self.entries.push_back(entry);
        Some(out)
    }

    /// Keeps a piece just read (unless too large to keep), dropping the least recently used
    /// beyond [`RECENT_READS`] pieces or [`RECENT_READS_BYTES`] bytes.
    ///
    /// [`RECENT_READS`]: crate::limits::RECENT_READS
    /// [`RECENT_READS_BYTES`]: crate::limits::RECENT_READS_BYTES
    pub(crate) fn put(&mut self, epoch: u64, base: u64, pos: u64, bytes: &Bytes) {
        if bytes.len() > crate::limits::RECENT_READ_MAX_BYTES || bytes.is_empty() {
            return;
        }
        self.entries.retain(|(e, _, _, _)| *e == epoch);
        self.entries.push_back((epoch, base, pos, bytes.clone()));
        let mut held: usize = self.entries.iter().map(|(_, _, _, b)| b.len()).sum();
        while self.entries.len() > crate::limits::RECENT_READS
            || held > crate::limits::RECENT_READS_BYTES
        {
            match self.entries.pop_front() {
                Some((_, _, _, b)) => held -= b.len(),
                None => break,
            }
        }
        self.charged.track(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pos: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((pos as usize + i) % 251) as u8).collect()
    }

    #[test]
    fn serves_ranges_inside_and_across_pieces_and_evicts_the_oldest() {
        let mut c = TailCache::new(10_000);
        for k in 0..4u64 {
            c.push(k * 4096, &filled(k * 4096, 4096));
        }
        // Only the newest 10,000 bytes remain: the first two pieces went.
        assert_eq!(c.start(), Some(8192));
        assert_eq!(c.end(), Some(16384));
        assert!(c.len() <= 10_000);
        assert!(c.get(4096, 8200).is_none(), "evicted bytes are not served");
        let inside = c.get(9000, 9100).expect("inside one piece");
        assert_eq!(&inside[..], &filled(9000, 100)[..]);
        let across = c.get(12000, 13000).expect("across two pieces");
        assert_eq!(&across[..], &filled(12000, 1000)[..]);
        assert!(c.get(16000, 17000).is_none(), "past the end");
    }

    #[test]
    fn recent_reads_serve_inside_a_piece_of_the_same_epoch_only() {
        let mut r = RecentReads::new();
        let piece = Bytes::from(filled(4096, 8192));
        r.put(3, 0, 4096, &piece);
        assert_eq!(
            &r.get(3, 0, 5000, 5100).expect("inside")[..],
            &filled(5000, 100)[..]
        );
        assert!(r.get(3, 0, 4000, 4100).is_none(), "starts before the piece");
        assert!(r.get(3, 0, 12000, 12300).is_none(), "ends after the piece");
        assert!(r.get(3, 64, 5000, 5100).is_none(), "another segment");
        assert!(r.get(4, 0, 5000, 5100).is_none(), "after a cut");
        for k in 0..crate::limits::RECENT_READS as u64 {
            r.put(3, 0, 100_000 + k * 4096, &Bytes::from(vec![1u8; 4096]));
        }
        assert!(r.get(3, 0, 5000, 5100).is_none(), "the oldest went");
    }

    #[test]
    fn recent_reads_keep_a_piece_for_each_of_many_walkers() {
        use crate::limits::{RECENT_READS, RECENT_READS_BYTES, RECENT_READ_MAX_BYTES};
        // 16 readers walking the log at once, each through its own 4 KiB piece, in turns:
        // every reader finds its piece again on its next turn.
        let mut r = RecentReads::new();
        let walkers = 16u64;
        for k in 0..walkers {
            r.put(1, 0, k << 20, &Bytes::from(filled(k << 20, 4096)));
        }
        for round in 0..3u64 {
            for k in 0..walkers {
                let pos = (k << 20) + round * 100;
                let got = r.get(1, 0, pos, pos + 100);
                assert_eq!(
                    got.as_deref(),
                    Some(&filled(pos, 100)[..]),
                    "walker {k}, round {round}"
                );
            }
        }
        // The least recently used goes first: a piece just read outlives older ones.
        assert!(r.get(1, 0, 0, 10).is_some());
        for k in 0..RECENT_READS as u64 - 1 {
            r.put(1, 0, (100 + k) << 20, &Bytes::from(vec![2u8; 4096]));
        }
        assert!(r.get(1, 0, 0, 10).is_some(), "used last, kept");
        assert!(
            r.get(1, 0, 1 << 20, (1 << 20) + 10).is_none(),
            "least used, gone"
        );
        assert!(r.entries.len() <= RECENT_READS);
        // Large pieces are bounded by bytes together.
        for k in 0..(RECENT_READS_BYTES / RECENT_READ_MAX_BYTES + 2) as u64 {
            r.put(
                1,
                0,
                (1000 + k) << 20,
                &Bytes::from(vec![3u8; RECENT_READ_MAX_BYTES]),
            );
        }
        let held: usize = r.entries.iter().map(|(_, _, _, b)| b.len()).sum();
        assert!(held <= RECENT_READS_BYTES, "{held} bytes held");
    }

    #[test]
    fn a_piece_that_does_not_continue_replaces_the_cache() {
        let mut c = TailCache::new(1 << 20);
        c.push(0, &filled(0, 8192));
        c.push(4096, &[7u8; 4096]);
        assert_eq!(c.start(), Some(4096));
        assert_eq!(&c.get(4096, 4100).expect("new piece")[..], &[7u8; 4]);
        assert!(c.get(0, 10).is_none());
        let mut off = TailCache::new(0);
        off.push(0, &[1u8; 4096]);
        assert!(off.is_empty());
    }
}
