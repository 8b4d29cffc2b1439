//! The production log store: a partition's `engine::Log` (format v2 batches in O_DIRECT
//! segments). Appends go to the write-behind buffer without waiting; `sync` is the log's
//! group commit (one fdatasync for everything buffered); the Raft metadata is the log
//! directory's `raft.meta`, replaced atomically; the log's visible mark (what `read_chunk`
//! and the seam's readers see) is the group's to set (`Visibility::Owner`).

use super::store::LogStore;
use engine::batch::Header;
use engine::log::{EntryBatch, FreshBatch};
use engine::{Log, Result};

/// Name of the Raft metadata file in a partition's directory.
pub const RAFT_META: &str = "raft.meta";

impl LogStore for Log {
    type Staged = engine::log::Staging;
    fn first_index(&self) -> u64 {
        Log::first_index(self)
    }
    fn next_index(&self) -> u64 {
        Log::next_index(self)
    }
    fn durable_index(&self) -> u64 {
        Log::durable_index(self)
    }
    fn next_offset(&self) -> u64 {
        Log::next_offset(self)
    }
    fn first_offset(&self) -> u64 {
        Log::lowest_offset(self)
    }
    async fn truncate_prefix(&self, first_kept: u64) -> Result<()> {
        self.truncate_prefix_index(first_kept).await.map(|_| ())
    }
    async fn install(
        &self,
        first_offset: u64,
        first_index: u64,
        batches: &[u8],
        meta: &[u8],
    ) -> Result<()> {
        self.reset_at(first_offset, first_index).await?;
        self.append_buffered(batches).await?;
        Log::sync(self).await?;
        Log::write_meta(self, RAFT_META, meta)
    }
    async fn install_staged(&self, staged: Self::Staged, meta: &[u8]) -> Result<()> {
        Log::install_staged(self, staged, RAFT_META, meta).await
    }
    async fn append(&self, batches: &[u8]) -> Result<()> {
        // `RaftLog::append` encoded them from the entries a moment ago.
        self.append_fresh(batches).await.map(|_| ())
    }
    async fn append_parts(&self, batches: &[FreshBatch<'_>]) -> Result<()> {
        self.append_fresh_parts(batches).await.map(|_| ())
    }
    async fn sync(&self) -> Result<()> {
        Log::sync(self).await
    }
    async fn persist(&self) -> Result<()> {
        Log::persist(self).await
    }
    async fn truncate_after(&self, last_kept: u64) -> Result<()> {
        self.truncate_after_index(last_kept).await
    }
    async fn reset(&self, next_offset: u64, next_index: u64) -> Result<()> {
        self.reset_at(next_offset, next_index).await
    }
    async fn read(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<EntryBatch>> {
        self.read_entries(from, to, max_bytes).await
    }
    async fn term_runs(&self) -> Result<Vec<(u64, u64)>> {
        Log::term_runs(self).await
    }
    async fn last_header(&self) -> Result<Option<Header>> {
        Log::last_header(self).await
    }
    fn take_visibility_at(&self, end: u64) {
        Log::take_visibility_at(self, end)
    }
    fn set_visible(&self, end: u64) {
        Log::set_visible(self, end);
    }
    fn visible_end(&self) -> u64 {
        Log::visible_end(self)
    }
    fn write_meta(&self, payload: &[u8]) -> Result<()> {
        Log::write_meta(self, RAFT_META, payload)
    }
    fn read_meta(&self) -> Result<Option<Vec<u8>>> {
        Log::read_meta(self, RAFT_META)
    }
    fn mark_lost(&self, why: &str) -> Result<()> {
        Log::mark_lost(self, why)
    }
    fn lost(&self) -> Result<Option<String>> {
        Log::lost(self)
    }
    fn unopened(&self) -> Result<bool> {
        Log::unopened(self)
    }
    fn forget_unopened(&self) -> Result<()> {
        Log::forget_unopened(self)
    }
}
