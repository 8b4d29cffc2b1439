//! The narrow log-store interface the Raft storage adapter sits on: what Raft needs of a
//! partition's log, by Raft index. `engine::Log` implements it for production
//! (`engine_store.rs`); [`MemStore`](super::mem_store::MemStore) implements it in memory for the
//! simulation, with written versus synced state so that a simulated crash loses exactly what
//! a real one may lose. The adapter's logic (offsets, term runs, truncation, commit recovery)
//! is the same code over both.
//!
//! Contract:
//! - `append` buffers whole v2 batches continuing the log (offsets and Raft indexes) and
//!   returns without making them durable; `sync` makes everything appended so far durable.
//!   A crash may lose any suffix of what was appended but not synced.
//! - `persist` is what a round calls before acknowledging: `sync` in memory; on
//!   `engine::Log`, the topic's durability policy (fdatasync under `always`; under `interval`
//!   and `never` a completed write, which a crash of the process cannot take back).
//! - `truncate_after`, `truncate_prefix`, `reset`, `install`, `write_meta` and `mark_lost` are durable
//!   when they return. `install` replaces the log and the metadata together from batches in
//!   memory (atomically in memory; on `engine::Log` as reset, append, sync, metadata, used
//!   only by tests); `install_staged` replaces them by a snapshot downloaded beside the log
//!   (`Staged`), atomically: on `engine::Log` one directory exchange.
//! - `read` returns checked batches of `[from, to)`, at least one, then up to about
//!   `max_bytes`, committed or not: a leader sends followers entries not committed yet.
//! - The visible end (the offset below which readers of records may see them) belongs to the
//!   Raft group: it takes it over at open, at the offset after its last applied entry
//!   (`take_visibility_at`), and raises it as entries are applied (`set_visible`). Cuts and
//!   resets lower it with the log. Raft's own reads above ignore it.

use engine::batch::Header;
use engine::log::{EntryBatch, FreshBatch};
use engine::Result;

/// A partition's log as Raft sees it. Futures are not `Send`: a store lives on one shard.
#[allow(async_fn_in_trait)]
pub trait LogStore {
    /// A snapshot downloaded and verified beside the log, ready to replace it
    /// (`engine::log::Staging` for `engine::Log`; none in memory).
    type Staged: 'static;
    /// Raft index of the first batch held (`next_index` when empty).
    fn first_index(&self) -> u64;
    /// Raft index the next batch gets.
    fn next_index(&self) -> u64;
    /// Batches below this Raft index are durable: a crash keeps them.
    fn durable_index(&self) -> u64;
    /// Offset the next data batch gets.
    fn next_offset(&self) -> u64;
    /// Base offset of the first batch held (`next_offset` when empty).
    fn first_offset(&self) -> u64;
    /// Drops whole batches (whole segments, for the engine) below Raft index `first_kept`;
    /// it may keep some of them.
    async fn truncate_prefix(&self, first_kept: u64) -> Result<()>;
    /// Replaces the whole log by `batches` (starting at `first_offset`, Raft index
    /// `first_index`), synced, and the metadata by `meta`.
    async fn install(
        &self,
        first_offset: u64,
        first_index: u64,
        batches: &[u8],
        meta: &[u8],
    ) -> Result<()>;
    /// Replaces the whole log by `staged` and the metadata by `meta`, atomically and durably.
    async fn install_staged(&self, staged: Self::Staged, meta: &[u8]) -> Result<()>;
    /// Buffers batches (format v2, back to back) at the end of the log: batches the caller
    /// has just encoded (`entry::encode`), so a store need not check their CRCs again.
    async fn append(&self, batches: &[u8]) -> Result<()>;
    /// [`append`](Self::append) for batches given as a header and a payload each (stamped
    /// a moment ago, as `append`'s), which a store may copy from where they are.
    async fn append_parts(&self, batches: &[FreshBatch<'_>]) -> Result<()> {
        let len = batches
            .iter()
            .map(|b| b.header.len() + b.payload.len())
            .sum();
        let mut whole = Vec::with_capacity(len);
        for b in batches {
            whole.extend_from_slice(b.header);
            whole.extend_from_slice(b.payload);
        }
        self.append(&whole).await
    }
    /// Makes everything appended so far durable.
    async fn sync(&self) -> Result<()>;
    /// Makes everything appended so far as durable as the log's policy asks before a
    /// replica acknowledges it (what a Ready round does once per touched log): `sync` unless
    /// the store says otherwise.
    async fn persist(&self) -> Result<()> {
        self.sync().await
    }
    /// Drops every batch after Raft index `last_kept`, durably.
    async fn truncate_after(&self, last_kept: u64) -> Result<()>;
    /// Empties the log, to continue at `next_offset` and Raft index `next_index`, durably.
    async fn reset(&self, next_offset: u64, next_index: u64) -> Result<()>;
    /// Checked batches of Raft indexes `[from, to)`.
    async fn read(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<EntryBatch>>;
    /// `(first Raft index, term)` at every term change of the log, in order.
    async fn term_runs(&self) -> Result<Vec<(u64, u64)>>;
    /// The header of the last batch, if any.
    async fn last_header(&self) -> Result<Option<Header>>;
    /// Makes the Raft group the owner of the visible end, which starts at `end` (the offset
    /// after the last applied entry, at most the log's end): entries past it are not
    /// committed as far as this node knows, and readers must not see them. Called when the
    /// group opens the log, before anyone reads it.
    fn take_visibility_at(&self, end: u64);
    /// Raises the visible end to `end` (never down, never past the log's end).
    fn set_visible(&self, end: u64);
    /// The offset below which readers of records may see them.
    fn visible_end(&self) -> u64;
    /// Replaces the Raft metadata file (hard state, conf state, snapshot point) atomically
    /// and durably.
    fn write_meta(&self, payload: &[u8]) -> Result<()>;
    /// The Raft metadata file, if written.
    fn read_meta(&self) -> Result<Option<Vec<u8>>>;
    /// Marks the log lost, durably: it no longer holds entries it acknowledged, and its
    /// group must never run on it again (`engine::Log::mark_lost`).
    fn mark_lost(&self, why: &str) -> Result<()>;
    /// Why the log was marked lost, if it was.
    fn lost(&self) -> Result<Option<String>>;
    /// Whether the log was made and no group has opened it since (`engine::Log::unopened`):
    /// a log without it and without Raft metadata lost that metadata.
    fn unopened(&self) -> Result<bool>;
    /// Forgets [`unopened`](Self::unopened), once the group's metadata is written (nothing
    /// to do when it is forgotten already).
    fn forget_unopened(&self) -> Result<()>;
}
