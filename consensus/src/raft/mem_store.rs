//! An in-memory log store with written versus synced state, for the deterministic
//! simulation: batches are checked exactly as the engine checks them (format v2 headers, CRC,
//! continuity of offsets and Raft indexes), `sync` marks what a crash keeps, and
//! [`MemStore::crash`] returns the store a restarted node finds: everything synced, plus
//! whatever prefix of the unsynced batches the simulated device happened to keep.

use super::store::LogStore;
use bytes::Bytes;
use engine::batch::{self, Header, Parsed};
use engine::log::EntryBatch;
use engine::{Error, Result};
use std::cell::RefCell;

#[derive(Clone)]
struct Inner {
    /// Batches written, in order. Invariant: Raft indexes `start_index..` without gaps,
    /// offsets continuing from `start_offset`.
    batches: Vec<EntryBatch>,
    /// `batches[..synced]` survive a crash.
    synced: usize,
    start_offset: u64,
    start_index: u64,
    meta: Option<Vec<u8>>,
    /// Why the log was marked lost (durable at once, as a metadata file is).
    lost: Option<String>,
    /// Made and never opened by a group (durable at once, as a metadata file is).
    unopened: bool,
    /// The offset below which readers may see records (set by the group; not persisted).
    visible: u64,
    syncs: u64,
    /// The next `sync` fails (as a device error would), leaving its batches unsynced.
    fail_next_sync: bool,
    /// The next `append` or `sync` fails for want of space ([`MemStore::fill_up_at`]).
    full_at: Option<FullAt>,
}

/// Where a store fills up ([`MemStore::fill_up_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullAt {
    /// The next append keeps its batches, then fails: as a segment roll does that wrote out
    /// and synced the old segment, then could not create the new one.
    AppendAfterWriting,
    /// The next sync fails, its batches written and not synced.
    Sync,
}

fn disk_full() -> Error {
    Error::DiskFull {
        partition: "memory".into(),
        path: "memory".into(),
        free_bytes: 0,
    }
}

/// A snapshot's batches staged beside an in-memory log (what a simulation's streaming
/// transport downloads), checked, installed whole by `install_staged`.
#[derive(Debug, Clone)]
pub struct MemStaged {
    pub first_offset: u64,
    pub first_index: u64,
    /// Whole batches, back to back.
    pub batches: Vec<u8>,
}

/// A partition log in memory.
pub struct MemStore {
    inner: RefCell<Inner>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(why: String) -> Error {
    Error::InvalidArgument(why)
}

impl MemStore {
    /// An empty log starting at offset 0 and Raft index 1.
    pub fn new() -> MemStore {
        MemStore {
            inner: RefCell::new(Inner {
                batches: Vec::new(),
                synced: 0,
                start_offset: 0,
                start_index: 1,
                meta: None,
                lost: None,
                unopened: true,
                visible: 0,
                syncs: 0,
                fail_next_sync: false,
                full_at: None,
            }),
        }
    }

    /// The store a restart finds after a crash: the synced batches and the first
    /// `keep_unsynced` of the others (a device may have written some of them).
    pub fn crash(&self, keep_unsynced: usize) -> MemStore {
        let mut st = self.inner.borrow().clone();
        let keep = (st.synced + keep_unsynced).min(st.batches.len());
        st.batches.truncate(keep);
        st.synced = keep;
        st.fail_next_sync = false;
        st.full_at = None;
        // Nobody reads a log before its group opens it and sets the mark again.
        st.visible = st.start_offset;
        MemStore {
            inner: RefCell::new(st),
        }
    }

    /// Batches written but not yet synced.
    pub fn unsynced(&self) -> usize {
        let st = self.inner.borrow();
        st.batches.len() - st.synced
    }

    /// Every batch written (synced or not), for checks.
    pub fn batches(&self) -> Vec<EntryBatch> {
        self.inner.borrow().batches.clone()
    }

    /// Makes the next `sync` fail: the simulation's crash in the middle of a round, after the
    /// writes and the leader's messages, before the data is durable.
    pub fn fail_next_sync(&self) {
        self.inner.borrow_mut().fail_next_sync = true;
    }

    /// Makes the next `append` or `sync` (`at`) fail with [`Error::DiskFull`].
    pub fn fill_up_at(&self, at: FullAt) {
        self.inner.borrow_mut().full_at = Some(at);
    }

    /// Syncs done so far.
    pub fn syncs(&self) -> u64 {
        self.inner.borrow().syncs
    }

    /// The offset after the records a crash would keep (those of the synced batches).
    pub fn synced_offset(&self) -> u64 {
        let st = self.inner.borrow();
        match st.synced.checked_sub(1).and_then(|i| st.batches.get(i)) {
            Some(b) => b.header.next_offset(),
            None => st.start_offset,
        }
    }
}

/// Splits `bytes` into checked batches continuing a log at `(offset, index)`, as the engine
/// checks what it is given.
fn check(bytes: &[u8], mut offset: u64, mut index: u64) -> Result<Vec<EntryBatch>> {
    let mut parsed = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let header = match batch::parse_header(&bytes[pos..]) {
            Parsed::Header(h) => h,
            other => return Err(invalid(format!("no batch at byte {pos}: {other:?}"))),
        };
        let end = pos + header.batch_len();
        if end > bytes.len() || !batch::crc_ok(&header, &bytes[pos..end]) {
            return Err(invalid(format!("batch at byte {pos} is torn or corrupt")));
        }
        if header.base_offset != offset || header.raft_index != index {
            return Err(invalid(format!(
                "batch (offset {}, index {}) does not continue the log at ({offset}, {index})",
                header.base_offset, header.raft_index
            )));
        }
        offset = header.next_offset();
        index += 1;
        parsed.push(EntryBatch {
            header,
            bytes: Bytes::copy_from_slice(&bytes[pos..end]),
        });
        pos = end;
    }
    Ok(parsed)
}

impl Inner {
    fn next_index(&self) -> u64 {
        self.batches
            .last()
            .map(|b| b.header.raft_index + 1)
            .unwrap_or(self.start_index)
    }
    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map(|b| b.header.next_offset())
            .unwrap_or(self.start_offset)
    }
}

impl LogStore for MemStore {
    type Staged = MemStaged;
    fn first_index(&self) -> u64 {
        self.inner.borrow().start_index
    }
    fn next_index(&self) -> u64 {
        self.inner.borrow().next_index()
    }
    fn durable_index(&self) -> u64 {
        let st = self.inner.borrow();
        st.start_index + st.synced as u64
    }
    fn next_offset(&self) -> u64 {
        self.inner.borrow().next_offset()
    }
    fn first_offset(&self) -> u64 {
        self.inner.borrow().start_offset
    }

    async fn truncate_prefix(&self, first_kept: u64) -> Result<()> {
        let mut st = self.inner.borrow_mut();
        let n = (first_kept.saturating_sub(st.start_index) as usize).min(st.batches.len());
        if n == 0 {
            return Ok(());
        }
        let (next_offset, next_index) = (st.next_offset(), st.next_index());
        st.batches.drain(..n);
        st.synced = st.synced.saturating_sub(n);
        match st.batches.first() {
            Some(b) => {
                (st.start_offset, st.start_index) = (b.header.base_offset, b.header.raft_index)
            }
            None => (st.start_offset, st.start_index) = (next_offset, next_index),
        }
        Ok(())
    }

    async fn install_staged(&self, staged: Self::Staged, meta: &[u8]) -> Result<()> {
        self.install(
            staged.first_offset,
            staged.first_index,
            &staged.batches,
            meta,
        )
        .await
    }

    async fn install(
        &self,
        first_offset: u64,
        first_index: u64,
        batches: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        let parsed = check(batches, first_offset, first_index)?;
        let mut st = self.inner.borrow_mut();
        st.batches = parsed;
        st.synced = st.batches.len();
        st.start_offset = first_offset;
        st.start_index = first_index;
        st.meta = Some(meta.to_vec());
        st.visible = first_offset;
        Ok(())
    }

    async fn append(&self, bytes: &[u8]) -> Result<()> {
        let (offset, index) = {
            let st = self.inner.borrow();
            (st.next_offset(), st.next_index())
        };
        let parsed = check(bytes, offset, index)?;
        let mut st = self.inner.borrow_mut();
        st.batches.extend(parsed);
        if st.full_at == Some(FullAt::AppendAfterWriting) {
            st.full_at = None;
            return Err(disk_full());
        }
        Ok(())
    }
    async fn sync(&self) -> Result<()> {
        let mut st = self.inner.borrow_mut();
        if st.full_at == Some(FullAt::Sync) {
            st.full_at = None;
            return Err(disk_full());
        }
        if std::mem::take(&mut st.fail_next_sync) {
            return Err(Error::io(
                "syncing",
                "memory",
                std::io::Error::other("injected sync failure"),
            ));
        }
        st.synced = st.batches.len();
        st.syncs += 1;
        Ok(())
    }

    async fn truncate_after(&self, last_kept: u64) -> Result<()> {
        let mut st = self.inner.borrow_mut();
        if last_kept + 1 < st.start_index {
            return Err(invalid(format!(
                "cannot truncate after {last_kept}: the log starts at {}",
                st.start_index
            )));
        }
        let keep = (last_kept + 1 - st.start_index) as usize;
        st.batches.truncate(keep);
        st.synced = st.synced.min(keep);
        st.visible = st.visible.min(st.next_offset());
        Ok(())
    }

    async fn reset(&self, next_offset: u64, next_index: u64) -> Result<()> {
        let mut st = self.inner.borrow_mut();
        st.batches.clear();
        st.synced = 0;
        st.start_offset = next_offset;
        st.start_index = next_index;
        st.visible = next_offset;
        Ok(())
    }

    async fn read(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<EntryBatch>> {
        let st = self.inner.borrow();
        if from < st.start_index || from >= st.next_index() || to <= from {
            return Err(invalid(format!(
                "Raft indexes [{from}, {to}) outside the log [{}, {})",
                st.start_index,
                st.next_index()
            )));
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let lo = (from - st.start_index) as usize;
        let hi = ((to - st.start_index) as usize).min(st.batches.len());
        for b in &st.batches[lo..hi] {
            if !out.is_empty() && bytes + b.bytes.len() > max_bytes {
                break;
            }
            // Reads check what they return, as the engine's do.
            if !batch::crc_ok(&b.header, &b.bytes) {
                return Err(invalid(format!("batch {} is corrupt", b.header.raft_index)));
            }
            bytes += b.bytes.len();
            out.push(b.clone());
        }
        Ok(out)
    }

    async fn term_runs(&self) -> Result<Vec<(u64, u64)>> {
        let st = self.inner.borrow();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for b in &st.batches {
            if runs.last().is_none_or(|&(_, t)| t != b.header.term) {
                runs.push((b.header.raft_index, b.header.term));
            }
        }
        Ok(runs)
    }

    async fn last_header(&self) -> Result<Option<Header>> {
        Ok(self.inner.borrow().batches.last().map(|b| b.header))
    }

    fn take_visibility_at(&self, end: u64) {
        let mut st = self.inner.borrow_mut();
        st.visible = end.min(st.next_offset());
    }

    fn set_visible(&self, end: u64) {
        let mut st = self.inner.borrow_mut();
        st.visible = st.visible.max(end.min(st.next_offset()));
    }

    fn visible_end(&self) -> u64 {
        self.inner.borrow().visible
    }

    fn write_meta(&self, payload: &[u8]) -> Result<()> {
        self.inner.borrow_mut().meta = Some(payload.to_vec());
        Ok(())
    }

    fn read_meta(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.borrow().meta.clone())
    }

    fn mark_lost(&self, why: &str) -> Result<()> {
        self.inner.borrow_mut().lost = Some(why.to_owned());
        Ok(())
    }

    fn lost(&self) -> Result<Option<String>> {
        Ok(self.inner.borrow().lost.clone())
    }

    fn unopened(&self) -> Result<bool> {
        Ok(self.inner.borrow().unopened)
    }

    fn forget_unopened(&self) -> Result<()> {
        self.inner.borrow_mut().unopened = false;
        Ok(())
    }
}
