//! The sparse index of one segment: a memory-mapped array of fixed-size entries, mapping both
//! offsets and Raft indexes to positions.
//!
//! Byte layout of `<base>.index` (little-endian), documented in `docs/format.md`:
//!
//! ```text
//! entry i at byte 24*i, ENTRY_LEN = 24 (format version 2)
//!   0  u32  relative_offset   base_offset of a batch minus the segment's base offset
//!   4  u32  position          byte position of that batch in the segment's data file
//!   8  u64  term              the batch's term
//!  16  u64  raft_index        the batch's Raft index
//! ```
//!
//! There is an entry for the segment's first batch, for the first batch after every
//! `index_interval_bytes` of data, and for every batch whose term differs from the previous
//! one (so the term of any offset or Raft index is the term of its entry, and the term runs
//! of the log can be rebuilt from the index alone). Entries are strictly increasing in position
//! and Raft index, and non-decreasing in offset: a control batch (no records) shares its base
//! offset with the batch after it. The file of the active segment is pre-sized; its valid length is
//! never read from the file: it comes from scanning validated data (see `segment.rs`). A sealed
//! segment's index is cut to its exact length and synced when the segment is sealed.
//!
//! Every block of the file is allocated (`fallocate`) before it is mapped for writing. A page
//! of a sparse file is given its block only when first written through the mapping, and on a
//! full disk that store raises SIGBUS, which kills the process. Allocated up front, a full
//! disk is an error returned by `open` (the caller reports it), never a signal.

use crate::error::{Error, Result};
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

pub const ENTRY_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub relative_offset: u32,
    pub position: u32,
    pub term: u64,
    pub raft_index: u64,
}

impl Entry {
    /// The entry's bytes in the file.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.position.to_le_bytes());
        b[8..16].copy_from_slice(&self.term.to_le_bytes());
        b[16..24].copy_from_slice(&self.raft_index.to_le_bytes());
        b
    }

    /// The entry in the first [`ENTRY_LEN`] bytes of `b`, valid or not; `None` when `b` is
    /// shorter.
    pub fn decode(b: &[u8]) -> Option<Entry> {
        let b = b.get(..ENTRY_LEN)?;
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        Some(Entry {
            relative_offset: u32_at(0),
            position: u32_at(4),
            term: u64_at(8),
            raft_index: u64_at(16),
        })
    }
}

pub struct Index {
    path: PathBuf,
    file: File,
    /// `None` when the file is empty (a zero-length mapping is not allowed).
    map: Option<MmapMut>,
    /// Valid entries. Invariant: `len <= capacity`; entries `[0, len)` are strictly increasing
    /// in position and Raft index, non-decreasing in offset.
    len: usize,
    capacity: usize,
}

impl Index {
    /// Opens (creating if needed) an index and maps `capacity` entries; the file is grown to
    /// that size. No entry is valid until the caller sets them (`push`) or trusts them
    /// (`trust_prefix`).
    pub fn open(path: &Path, capacity: usize) -> Result<Index> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("opening index", path, e))?;
        let mut index = Index {
            path: path.to_owned(),
            file,
            map: None,
            len: 0,
            capacity: 0,
        };
        index.remap(capacity)?;
        Ok(index)
    }

    /// Opens a sealed segment's index, mapping exactly the entries the file holds. The caller
    /// validates them before trusting them.
    pub fn open_sealed(path: &Path) -> Result<(Index, usize)> {
        let file_len = std::fs::metadata(path)
            .map_err(|e| Error::io("reading metadata of index", path, e))?
            .len() as usize;
        let entries = file_len / ENTRY_LEN;
        Ok((Self::open(path, entries)?, entries))
    }

    fn remap(&mut self, capacity: usize) -> Result<()> {
        self.map = None;
        let bytes = (capacity * ENTRY_LEN) as u64;
        self.file
            .set_len(bytes)
            .map_err(|e| Error::io("sizing index", &self.path, e))?;
        allocate(&self.file, bytes).map_err(|e| Error::io("allocating index", &self.path, e))?;
        if capacity > 0 {
            // SAFETY: the file is owned by this engine (one process per data directory, enforced
            // by the engine's lock file) and only ever changed through this mapping or through
            // set_len while no mapping exists, so the mapped memory is not truncated under us.
            let map = unsafe { MmapOptions::new().len(bytes as usize).map_mut(&self.file) }
                .map_err(|e| Error::io("mapping index", &self.path, e))?;
            self.map = Some(map);
        }
        self.capacity = capacity;
        self.len = self.len.min(capacity);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Reads entry `i` straight from the mapping, valid or not.
    pub fn raw_entry(&self, i: usize) -> Option<Entry> {
        let map = self.map.as_ref()?;
        Entry::decode(map.get(i.checked_mul(ENTRY_LEN)?..)?)
    }

    pub fn entry(&self, i: usize) -> Option<Entry> {
        if i < self.len {
            self.raw_entry(i)
        } else {
            None
        }
    }

    pub fn last(&self) -> Option<Entry> {
        self.len.checked_sub(1).and_then(|i| self.entry(i))
    }

    /// Declares entries `[0, n)` valid after the caller has validated them.
    pub fn trust_prefix(&mut self, n: usize) {
        self.len = n.min(self.capacity);
    }

    /// Appends an entry; false when the index is full (the segment must roll).
    pub fn push(&mut self, e: Entry) -> bool {
        if self.is_full() {
            return false;
        }
        debug_assert!(self
            .last()
            .is_none_or(|l| l.relative_offset <= e.relative_offset
                && l.position < e.position
                && l.raft_index < e.raft_index));
        let i = self.len;
        let Some(map) = self.map.as_mut() else {
            return false;
        };
        map[i * ENTRY_LEN..(i + 1) * ENTRY_LEN].copy_from_slice(&e.encode());
        self.len += 1;
        true
    }

    /// The last entry whose relative offset is <= `rel`, with its index. Binary search.
    pub fn lookup(&self, rel: u32) -> Option<(usize, Entry)> {
        self.floor(|e| e.relative_offset <= rel)
    }

    /// The last entry whose Raft index is <= `raft_index`, with its index. Binary search.
    pub fn lookup_raft_index(&self, raft_index: u64) -> Option<(usize, Entry)> {
        self.floor(|e| e.raft_index <= raft_index)
    }

    /// The last entry for which `below` holds, `below` being true on a prefix of the entries.
    fn floor(&self, below: impl Fn(&Entry) -> bool) -> Option<(usize, Entry)> {
        let (mut lo, mut hi) = (0usize, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid) {
                Some(e) if below(&e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let i = lo.checked_sub(1)?;
        self.entry(i).map(|e| (i, e))
    }

    /// Drops entries `[n, len)` and zeroes them in the mapping, so stale entries can never be
    /// mistaken for valid ones.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        if let Some(map) = self.map.as_mut() {
            map[n * ENTRY_LEN..self.len * ENTRY_LEN].fill(0);
        }
        self.len = n;
    }

    /// Writes dirty pages of the mapping to the file (msync).
    pub fn flush(&self) -> Result<()> {
        if let Some(map) = &self.map {
            map.flush()
                .map_err(|e| Error::io("syncing index", &self.path, e))?;
        }
        Ok(())
    }

    /// Cuts the file to its valid entries and makes it durable: the segment is sealed.
    pub fn seal(&mut self) -> Result<()> {
        self.flush()?;
        let len = self.len;
        self.remap(len)?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("syncing index", &self.path, e))
    }

    /// Grows a sealed index back to `capacity` entries so the segment can take appends again.
    pub fn reopen_for_append(&mut self, capacity: usize) -> Result<()> {
        let len = self.len;
        self.remap(capacity.max(len))?;
        self.len = len;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Gives every block of `file`'s first `len` bytes disk space, so that stores through a
/// mapping never need a block the disk may not have (see the module doc). Where the
/// filesystem has no `fallocate`, each block is read and written back with ordinary I/O,
/// which allocates it just the same.
fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate on a descriptor we own, mode 0 (allocate, extend the size if
    // needed); it touches no memory of ours.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    use std::os::unix::fs::FileExt;
    let mut block = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(block.len() as u64) as usize;
        let got = file.read_at(&mut block[..n], pos)?;
        block[got..n].fill(0);
        file.write_all_at(&block[..n], pos)?;
        pos += n as u64;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rel: u32, pos: u32) -> Entry {
        Entry {
            relative_offset: rel,
            position: pos,
            term: 1,
            raft_index: u64::from(pos) + 1,
        }
    }

    #[test]
    fn lookup_finds_the_floor_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut idx = Index::open(&dir.path().join("0.index"), 8).expect("open");
        assert_eq!(idx.lookup(0), None);
        for (r, p) in [(0, 0), (10, 4096), (20, 8192)] {
            assert!(idx.push(e(r, p)));
        }
        assert_eq!(idx.lookup(0).map(|x| x.0), Some(0));
        assert_eq!(idx.lookup(9).map(|x| x.0), Some(0));
        assert_eq!(idx.lookup(10).map(|x| x.0), Some(1));
        assert_eq!(idx.lookup(u32::MAX).map(|x| x.1), Some(e(20, 8192)));
        assert_eq!(idx.lookup_raft_index(0), None);
        assert_eq!(idx.lookup_raft_index(4096).map(|x| x.0), Some(0));
        assert_eq!(idx.lookup_raft_index(4097).map(|x| x.0), Some(1));
    }

    #[test]
    fn full_index_refuses_and_seal_cuts_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let mut idx = Index::open(&path, 2).expect("open");
        assert!(idx.push(e(0, 0)));
        assert!(idx.push(e(1, 100)));
        assert!(!idx.push(e(2, 200)));
        idx.truncate(1);
        idx.seal().expect("seal");
        drop(idx);
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            ENTRY_LEN as u64
        );
        let (idx, n) = Index::open_sealed(&path).expect("reopen");
        assert_eq!(n, 1);
        assert_eq!(idx.raw_entry(0), Some(e(0, 0)));
    }

    #[test]
    fn the_file_is_allocated_not_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let idx = Index::open(&path, 4096).expect("open");
        let md = std::fs::metadata(&path).expect("stat");
        assert_eq!(md.len(), 4096 * ENTRY_LEN as u64);
        // st_blocks counts 512-byte units actually allocated.
        assert!(
            md.blocks() * 512 >= md.len(),
            "{} of {} bytes allocated",
            md.blocks() * 512,
            md.len()
        );
        drop(idx);
    }

    #[test]
    fn reopen_does_not_trust_the_file_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let mut idx = Index::open(&path, 16).expect("open");
        idx.push(e(0, 0));
        idx.flush().expect("flush");
        drop(idx);
        let idx = Index::open(&path, 16).expect("reopen");
        assert_eq!(
            idx.len(),
            0,
            "entries are valid only once data vouches for them"
        );
        assert_eq!(idx.raw_entry(0), Some(e(0, 0)));
        assert_eq!(
            idx.raw_entry(1),
            Some(e(0, 0)).map(|_| Entry {
                relative_offset: 0,
                position: 0,
                term: 0,
                raft_index: 0,
            })
        );
    }
}
