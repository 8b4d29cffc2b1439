//! The storage adapter: raft-rs's `Storage` over a partition's log ([`LogStore`]).
//!
//! raft-rs calls `Storage` synchronously, so everything it asks of the Ready loop's hot path is
//! answered from memory:
//! - `term(i)` from the term runs `(first index, term)`, rebuilt from the log's sparse indexes
//!   at open (they hold an entry at every term change) and kept as entries are appended or cut;
//!   the term of `first_index - 1` (the snapshot point) lives in the metadata file;
//! - `entries(lo, hi)` from a tail cache that holds every entry not yet applied (so the calls
//!   raft-rs cannot defer, those for committed entries, always hit it) plus recently applied
//!   ones up to a byte budget. An older range (a follower far behind) is answered
//!   `LogTemporarilyUnavailable` when the context allows; the Ready loop hands the read to a
//!   [`FetchJob`] that runs beside it (a task on the shard's executor), and once its entries
//!   are here, calls `on_entries_fetched`: a lagging follower never blocks the loop.
//!
//! Hard state: term and vote live in the metadata file with the configuration state, written
//! only when they change (each replacement costs a rename and a directory sync). The commit
//! index is not written there: every batch carries the commit index its writer knew, so the
//! commit recovered at open is the last batch's (never above the last index), and the Ready
//! loop sets `Config.applied` to it. Applying has no effect of its own beyond the log's
//! visible end (which is not persisted: at open it is set again from the recovered commit),
//! so an apply that was never "persisted" needs no redo.
//!
//! Offsets: a data entry's base offset is the log's next offset when it is written; each
//! cached entry keeps its own, which is where the visible watermark moves when it commits.
//! The group owns the log's visible end ([`LogStore::set_visible`]): it takes it at open, at
//! the offset after the recovered commit, and raises it as entries are applied. raft-rs
//! hands out for applying only entries this node has persisted (synced), so readers never
//! see a record a crash of this node could take back, as under the single-node `always`
//! policy.
//!
//! Compaction and snapshots: [`RaftLog::compact`] moves Raft's first index past an applied
//! index (the metadata file keeps that point and its term) and lets the store drop whole
//! segments below it. A follower that needs an entry below the leader's first index gets a
//! snapshot: a log partition's snapshot at index S is its retained log up to S. The Raft
//! message carries only a small descriptor ([`SnapshotData`]: first retained index and
//! offset, S, the offset after S); the data travels outside Raft, is checked, and replaces
//! the follower's log with the metadata: the server's transport streams the sender's segment
//! files into a directory beside the log and swaps it in ([`RaftLog::install_staged`], see
//! `snapshot_transfer`); the simulation's fetches the batches (`Transport::fetch_snapshot`,
//! [`RaftLog::install`]).

use super::entry;
use super::error::{Error, Result};
use super::store::LogStore;
use super::wire;
use proto::proglog::raft::v1 as pb;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

/// What the metadata file holds. Layout (little-endian): u8 version 1, u64 term, u64 vote,
/// u64 snapshot index, u64 snapshot term, u64 index of the last applied configuration change,
/// then the configuration state as a prost `ConfState`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftMeta {
    pub term: u64,
    pub vote: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub conf_index: u64,
    pub conf_state: ConfState,
}

const META_VERSION: u8 = 1;
const META_FIXED: usize = 1 + 5 * 8;

impl RaftMeta {
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message as _;
        let mut out = Vec::with_capacity(META_FIXED + 32);
        out.push(META_VERSION);
        for x in [
            self.term,
            self.vote,
            self.snapshot_index,
            self.snapshot_term,
            self.conf_index,
        ] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        wire::conf_state_to_pb(&self.conf_state)
            .encode(&mut out)
            .ok();
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RaftMeta> {
        use prost::Message as _;
        let bad = |why: String| Error::Malformed {
            what: "Raft metadata",
            why,
        };
        if bytes.len() < META_FIXED || bytes[0] != META_VERSION {
            return Err(bad(format!(
                "{} bytes, version {:?}",
                bytes.len(),
                bytes.first()
            )));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[1 + 8 * i..9 + 8 * i]);
            u64::from_le_bytes(b)
        };
        let cs = pb::ConfState::decode(&bytes[META_FIXED..]).map_err(|e| bad(e.to_string()))?;
        Ok(RaftMeta {
            term: word(0),
            vote: word(1),
            snapshot_index: word(2),
            snapshot_term: word(3),
            conf_index: word(4),
            conf_state: wire::conf_state_from_pb(cs),
        })
    }
}

/// What a snapshot's data says (33 bytes, little-endian): u8 version 1, u64 first Raft index
/// the sender retains, u64 its base offset, u64 the snapshot's index S, u64 the offset after
/// S. The batches `[first_index, S]` are fetched from the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotData {
    pub first_index: u64,
    pub first_offset: u64,
    pub last_index: u64,
    pub next_offset: u64,
}

const SNAPSHOT_DATA_LEN: usize = 33;

impl SnapshotData {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_DATA_LEN);
        out.push(1);
        for x in [
            self.first_index,
            self.first_offset,
            self.last_index,
            self.next_offset,
        ] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<SnapshotData> {
        if b.len() != SNAPSHOT_DATA_LEN || b[0] != 1 {
            return Err(Error::Malformed {
                what: "snapshot data",
                why: format!("{} bytes, version {:?}", b.len(), b.first()),
            });
        }
        let word = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[1 + 8 * i..9 + 8 * i]);
            u64::from_le_bytes(x)
        };
        let d = SnapshotData {
            first_index: word(0),
            first_offset: word(1),
            last_index: word(2),
            next_offset: word(3),
        };
        // A last index of u64::MAX leaves no room to count the batches up to it.
        if d.first_index == 0
            || d.last_index == u64::MAX
            || d.first_index > d.last_index + 1
            || d.first_offset > d.next_offset
        {
            return Err(Error::Malformed {
                what: "snapshot data",
                why: format!("{d:?}"),
            });
        }
        Ok(d)
    }

    /// Checks fetched batches against the descriptor: indexes `[first_index, last_index]`
    /// without gaps, offsets from `first_offset` to `next_offset`, checksums. Returns them
    /// back to back.
    pub fn check(&self, batches: &[engine::log::EntryBatch]) -> Result<Vec<u8>> {
        let bad = |why: String| Error::Malformed {
            what: "snapshot batches",
            why,
        };
        if batches.len() as u64 != self.last_index + 1 - self.first_index {
            return Err(bad(format!("{} batches for {self:?}", batches.len())));
        }
        let (mut index, mut offset) = (self.first_index, self.first_offset);
        let mut out = Vec::with_capacity(batches.iter().map(|b| b.bytes.len()).sum());
        for b in batches {
            let h = &b.header;
            if h.raft_index != index
                || h.base_offset != offset
                || !engine::batch::crc_ok(h, &b.bytes)
            {
                return Err(bad(format!(
                    "batch of index {} at offset {}",
                    h.raft_index, h.base_offset
                )));
            }
            index += 1;
            offset = h.next_offset();
            out.extend_from_slice(&b.bytes);
        }
        if offset != self.next_offset {
            return Err(bad(format!(
                "offsets end at {offset}, not {}",
                self.next_offset
            )));
        }
        Ok(out)
    }
}

/// An entry in the tail cache, with the offset its batch starts at.
#[derive(Debug, Clone)]
struct Cached {
    entry: Entry,
    base_offset: u64,
}

/// A read raft-rs asked for and the loop has to do.
struct PendingFetch {
    low: u64,
    high: u64,
    max_size: u64,
    context: GetEntriesContext,
}

/// A deferred read of entries for a lagging follower, to run beside the Ready loop (spawned
/// on the shard's executor, or run inline by a simulation). When it is done, the next round
/// calls `on_entries_fetched` for every request it answers.
pub struct FetchJob<S: LogStore> {
    log: RaftLog<S>,
    low: u64,
    high: u64,
    max_size: u64,
    /// The log's generation when the job was made: entries read across a cut, a compaction
    /// or an install are dropped, never served.
    generation: u64,
}

impl<S: LogStore> FetchJob<S> {
    pub fn group(&self) -> u64 {
        self.log.group()
    }

    /// Reads the range and hands the entries to the adapter.
    pub async fn run(self) {
        let read = self
            .log
            .store
            .read(
                self.low,
                self.high,
                self.max_size.min(usize::MAX as u64) as usize,
            )
            .await;
        let result = match read {
            Ok(batches) => batches
                .iter()
                .map(|b| entry::decode(&b.header, &b.bytes))
                .collect::<Result<Vec<_>>>(),
            Err(e) => Err(Error::Storage {
                group: self.log.group(),
                source: e,
            }),
        };
        self.log
            .core
            .borrow_mut()
            .finish_fetch(self.generation, result);
    }
}

struct Core {
    group: u64,
    hard_state: HardState,
    meta: RaftMeta,
    /// Raft index of the last entry. Invariant: `meta.snapshot_index <= last_index`.
    last_index: u64,
    /// `(first index, term)` for every term change of the entries after the snapshot point.
    runs: Vec<(u64, u64)>,
    /// Entries `[last_index + 1 - cache.len(), last_index]`. Invariant: holds every entry
    /// after `applied`.
    cache: VecDeque<Cached>,
    cache_bytes: u64,
    cache_budget: u64,
    /// The offset after the last entry.
    next_offset: u64,
    applied: u64,
    /// The offset after the applied entry: the visible watermark.
    applied_offset: u64,
    /// Entries read for a deferred request, contiguous.
    fetched: Vec<Entry>,
    /// Requests raft-rs deferred, not yet given to a job.
    pending: Vec<PendingFetch>,
    /// A job is reading; `waiting` are the requests it answers.
    in_flight: bool,
    waiting: Vec<GetEntriesContext>,
    /// Requests answered (or to be asked again), for `on_entries_fetched`.
    answered: Vec<GetEntriesContext>,
    /// A read failed on the device: the group stops.
    fetch_error: Option<Error>,
    /// Bumped by every cut, compaction and install.
    generation: u64,
    /// A snapshot of this group is streaming to a follower.
    sending_snapshot: bool,
}

/// Payload CRCs of data entries a leader proposed, `(index, term, crc)` in index order, kept
/// from the proposal until the round that stores the entry.
pub type FreshCrcs = VecDeque<(u64, u64, u32)>;

/// Entries a leader proposed that its log has not stored yet are at most this many; older
/// ones are forgotten (their entries are then stored with a CRC computed again).
pub const FRESH_CRCS_MAX: usize = 4096;

/// raft-rs `Storage` for one group, over its log store. Cloning shares the state: the
/// `RawNode` owns one handle, the Ready loop another.
pub struct RaftLog<S: LogStore> {
    core: Rc<RefCell<Core>>,
    store: Rc<S>,
}

impl<S: LogStore> Clone for RaftLog<S> {
    fn clone(&self) -> Self {
        RaftLog {
            core: Rc::clone(&self.core),
            store: Rc::clone(&self.store),
        }
    }
}

/// The first entries of a new group: one simple change per voter of `cs` (indexes 1..=n,
/// term 1), from no configuration to `cs`. One change each, as etcd bootstraps: a single
/// entry adding several voters would be a joint change, which raft-rs cannot enter from an
/// empty configuration (a replica added later replays these).
fn bootstrap_entries(cs: &ConfState) -> Vec<Entry> {
    use prost::Message as _;
    cs.voters
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let mut c = raft::eraftpb::ConfChangeSingle::default();
            c.change_type = raft::eraftpb::ConfChangeType::AddNode;
            c.node_id = v;
            let mut cc = raft::eraftpb::ConfChangeV2::default();
            cc.set_changes(vec![c].into());
            let mut e = Entry::default();
            e.entry_type = raft::eraftpb::EntryType::EntryConfChangeV2;
            e.index = i as u64 + 1;
            e.term = 1;
            e.data = super::wire::conf_change_v2_to_pb(&cc)
                .encode_to_vec()
                .into();
            e
        })
        .collect()
}

/// Why `store` (group `group`'s log) no longer holds what its group wrote, when its files
/// say so at open (before the group could vote on a log that forgot its vote or entries it
/// acknowledged):
/// - no Raft metadata, in a log that a group opened before (it is not
///   [`unopened`](LogStore::unopened)): the metadata is written at a group's first open,
///   so it was deleted (with the vote it recorded);
/// - a log ending before the last configuration change the metadata says was applied (an
///   applied entry was committed and written here first, or lies below the snapshot point):
///   entries it held were deleted.
///
/// A log shortened past neither (its newest entries gone, the metadata kept, the last
/// applied configuration change still there) is not detected here: the engine's log finds
/// segment files deleted at its own open (`engine::SEGMENTS_META`, which marks it lost
/// before this runs), and anything else (a segment's tail cut) only the leader's next
/// heartbeat shows, naming a commit index past its end ([`Error::LostEntries`]).
pub fn found_short<S: LogStore>(group: u64, store: &S) -> Result<Option<String>> {
    let err = storage_err(group);
    let Some(bytes) = store.read_meta().map_err(&err)? else {
        if store.unopened().map_err(&err)? {
            return Ok(None);
        }
        return Ok(Some(
            "its Raft metadata (raft.meta: term, vote, configuration) is gone although its \
             group opened it before: its vote, and perhaps entries it acknowledged, are \
             forgotten"
                .to_owned(),
        ));
    };
    let meta = RaftMeta::decode(&bytes)?;
    let last = store
        .next_index()
        .saturating_sub(1)
        .max(meta.snapshot_index);
    Ok((last < meta.conf_index).then(|| {
        format!(
            "its log ends at Raft index {last}, before the configuration change at index {} \
             that it applied: entries it held are gone",
            meta.conf_index
        )
    }))
}

fn storage_err(group: u64) -> impl Fn(engine::Error) -> Error {
    move |source| Error::Storage { group, source }
}

impl<S: LogStore> RaftLog<S> {
    /// Opens the adapter over `store`: metadata (or `bootstrap`, a first configuration,
    /// written at once when there is none), term runs, the commit index recovered from the
    /// last batch, and the unapplied tail loaded into the cache. The recovered commit index
    /// counts as applied (raft-rs starts there, and never asks for an entry below the
    /// snapshot point); a state machine in memory (the controller's) is rebuilt by its group
    /// from the retained log (`GroupSet::add_group_with`).
    pub async fn open(
        group: u64,
        store: Rc<S>,
        bootstrap: Option<ConfState>,
        cache_budget: u64,
    ) -> Result<RaftLog<S>> {
        let err = storage_err(group);
        let fresh = store.next_index() == store.first_index() && store.first_index() <= 1;
        let meta = match store.read_meta().map_err(&err)? {
            Some(bytes) => RaftMeta::decode(&bytes)?,
            None if fresh && bootstrap.as_ref().is_some_and(|cs| !cs.voters.is_empty()) => {
                // A new group's first configuration is its first entry (index 1, term 1,
                // committed), as etcd bootstraps: a replica added later replays it from the
                // leader's log and starts from the same configuration as everyone else,
                // instead of applying later changes to an empty one.
                let cs = bootstrap.clone().unwrap_or_default();
                let first = bootstrap_entries(&cs);
                let last = first.len() as u64;
                let mut buf = Vec::new();
                for e in &first {
                    entry::encode(e, store.next_offset(), last, &mut buf)?;
                }
                store.append(&buf).await.map_err(&err)?;
                store.sync().await.map_err(&err)?;
                let meta = RaftMeta {
                    term: 1,
                    conf_state: cs,
                    conf_index: last,
                    ..RaftMeta::default()
                };
                store.write_meta(&meta.encode()).map_err(&err)?;
                meta
            }
            None => {
                let meta = RaftMeta {
                    conf_state: bootstrap.unwrap_or_default(),
                    snapshot_index: store.first_index().saturating_sub(1),
                    ..RaftMeta::default()
                };
                store.write_meta(&meta.encode()).map_err(&err)?;
                meta
            }
        };
        let last_index = store
            .next_index()
            .saturating_sub(1)
            .max(meta.snapshot_index);
        let runs = clip_runs(store.term_runs().await.map_err(&err)?, meta.snapshot_index);
        let last = store.last_header().await.map_err(&err)?;
        let commit = last
            .map(|h| h.commit_index)
            .unwrap_or(0)
            .max(meta.snapshot_index)
            .min(last_index);
        let mut hard_state = HardState::default();
        hard_state.term = meta.term;
        hard_state.vote = meta.vote;
        hard_state.commit = commit;
        let core = Core {
            group,
            hard_state,
            last_index,
            runs,
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_budget,
            next_offset: store.next_offset(),
            applied: commit,
            applied_offset: store.first_offset(),
            fetched: Vec::new(),
            pending: Vec::new(),
            in_flight: false,
            waiting: Vec::new(),
            answered: Vec::new(),
            fetch_error: None,
            generation: 0,
            sending_snapshot: false,
            meta,
        };
        let log = RaftLog {
            core: Rc::new(RefCell::new(core)),
            store,
        };
        let applied = log.core.borrow().applied;
        log.load_tail(applied).await?;
        if let Some(o) = log.offset_after(applied) {
            log.core.borrow_mut().applied_offset = o;
        }
        // Readers see what is applied, nothing past it: after a restart the log may end with
        // entries this node wrote but does not know committed (the policy's end would show
        // them).
        let visible = log.core.borrow().applied_offset;
        log.store.take_visibility_at(visible);
        Ok(log)
    }

    /// Loads entries `[from, last_index]` into the cache (at open: the unapplied tail, and
    /// the entry at the commit point for its offset).
    async fn load_tail(&self, from: u64) -> Result<()> {
        let err = storage_err(self.group());
        let (last, first) = {
            let c = self.core.borrow();
            (c.last_index, self.store.first_index())
        };
        let mut next = from.max(first);
        while next <= last {
            let batches = self
                .store
                .read(next, last + 1, 1 << 20)
                .await
                .map_err(&err)?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                let e = entry::decode(&b.header, &b.bytes)?;
                let mut c = self.core.borrow_mut();
                c.cache_bytes += entry::size(&e);
                c.cache.push_back(Cached {
                    entry: e,
                    base_offset: b.header.base_offset,
                });
                next = b.header.raft_index + 1;
            }
        }
        Ok(())
    }

    pub fn group(&self) -> u64 {
        self.core.borrow().group
    }

    pub fn store(&self) -> &Rc<S> {
        &self.store
    }

    /// The commit index recovered at open (and the applied index raft-rs starts from).
    pub fn recovered_applied(&self) -> u64 {
        self.core.borrow().applied
    }

    pub fn meta(&self) -> RaftMeta {
        self.core.borrow().meta.clone()
    }

    pub fn last_index(&self) -> u64 {
        self.core.borrow().last_index
    }

    /// Records a new hard state; writes the metadata file when the term or vote changed.
    /// Durable when it returns.
    pub fn set_hard_state(&self, hs: &HardState) -> Result<()> {
        let changed = {
            let mut c = self.core.borrow_mut();
            c.hard_state = hs.clone();
            let changed = c.meta.term != hs.term || c.meta.vote != hs.vote;
            c.meta.term = hs.term;
            c.meta.vote = hs.vote;
            changed
        };
        if changed {
            self.write_meta()?;
        }
        Ok(())
    }

    /// Records the configuration after applying the change at `index`, durably.
    pub fn set_conf_state(&self, cs: ConfState, index: u64) -> Result<()> {
        {
            let mut c = self.core.borrow_mut();
            c.meta.conf_state = cs.clone();
            c.meta.conf_index = index;
        }
        self.write_meta()
    }

    fn write_meta(&self) -> Result<()> {
        let (group, bytes) = {
            let c = self.core.borrow();
            (c.group, c.meta.encode())
        };
        self.store.write_meta(&bytes).map_err(storage_err(group))
    }

    /// Writes `entries` (from a Ready) to the store without syncing: first cuts a conflicting
    /// suffix, then appends one batch per entry, each stamped with the commit index `commit`
    /// (capped at its own index). The entries are readable through `Storage` when it returns.
    pub async fn append(&self, entries: &[Entry], commit: u64) -> Result<()> {
        self.append_known(entries, commit, &mut VecDeque::new())
            .await
    }

    /// [`append`](Self::append), with the payload CRCs of entries this node proposed
    /// (`(index, term, crc)`, oldest first, as [`FreshCrcs`] keeps them): an entry found there
    /// is stored without another pass over its payload. Entries up to the last appended are
    /// taken out of `known`.
    pub async fn append_known(
        &self,
        entries: &[Entry],
        commit: u64,
        known: &mut FreshCrcs,
    ) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let group = self.group();
        let err = storage_err(group);
        let last = self.core.borrow().last_index;
        if first.index <= last {
            self.store
                .truncate_after(first.index - 1)
                .await
                .map_err(&err)?;
            self.cut_after(first.index - 1);
        }
        let mut offset = self.store.next_offset();
        // The commit index stamped is at most what this log has made durable: a batch found
        // whole after a crash then proves the entries its commit index covers were synced
        // here, so a torn-looking one before it is damage (`engine::segment::scan`). A
        // follower knows the leader's commit index, which may cover entries it is writing in
        // this very round, still unsynced.
        let commit = commit.min(self.store.durable_index().saturating_sub(1));
        // Stamped where they are: each data entry's records are copied once, by the store.
        let mut stamped = Vec::with_capacity(entries.len());
        let mut cached = Vec::with_capacity(entries.len());
        for e in entries {
            let base_offset = offset;
            while known.front().is_some_and(|&(i, _, _)| i < e.index) {
                known.pop_front();
            }
            // An index and a term name one entry (Raft's log matching): the CRC is of this
            // entry's payload, whatever else was proposed at that index in another term.
            let crc = match known.front() {
                Some(&(i, t, crc)) if i == e.index && t == e.term => Some(crc),
                _ => None,
            };
            let (s, next) = entry::stamp(e, offset, commit, crc)?;
            stamped.push(s);
            offset = next;
            cached.push(Cached {
                entry: e.clone(),
                base_offset,
            });
        }
        if let Some(last) = entries.last() {
            while known.front().is_some_and(|&(i, _, _)| i <= last.index) {
                known.pop_front();
            }
        }
        let parts: Vec<_> = entries
            .iter()
            .zip(&stamped)
            .map(|(e, s)| s.parts(e))
            .collect();
        self.store.append_parts(&parts).await.map_err(&err)?;
        let mut c = self.core.borrow_mut();
        for x in cached {
            if c.runs.last().is_none_or(|&(_, t)| t != x.entry.term) {
                c.runs.push((x.entry.index, x.entry.term));
            }
            c.last_index = x.entry.index;
            c.cache_bytes += entry::size(&x.entry);
            c.cache.push_back(x);
        }
        c.next_offset = offset;
        Ok(())
    }

    /// Forgets everything after `last_kept` (the store already cut it).
    fn cut_after(&self, last_kept: u64) {
        let mut c = self.core.borrow_mut();
        while c.cache.back().is_some_and(|x| x.entry.index > last_kept) {
            if let Some(x) = c.cache.pop_back() {
                c.cache_bytes -= entry::size(&x.entry);
            }
        }
        c.runs.retain(|&(i, _)| i <= last_kept);
        c.last_index = last_kept;
        c.fetched.clear();
        c.generation += 1;
    }

    /// The base offset of cached entry `index` (committed entries are always cached).
    pub fn base_offset(&self, index: u64) -> Option<u64> {
        let c = self.core.borrow();
        let first = c.cache.front()?.entry.index;
        c.cache
            .get(index.checked_sub(first)? as usize)
            .map(|x| x.base_offset)
    }

    /// The offset after cached entry `index` (its base offset plus its records).
    pub fn offset_after(&self, index: u64) -> Option<u64> {
        let c = self.core.borrow();
        let first = c.cache.front()?.entry.index;
        let x = c.cache.get(index.checked_sub(first)? as usize)?;
        Some(x.base_offset + u64::from(entry::record_count(&x.entry).unwrap_or(0)))
    }

    /// The offset after the applied entry (the visible watermark).
    pub fn applied_offset(&self) -> u64 {
        self.core.borrow().applied_offset
    }

    /// Entries up to `applied` have been applied (the offset after it is `offset`): older
    /// cached entries may go, down to the cache's byte budget.
    pub fn applied_to(&self, applied: u64, offset: u64) {
        let mut c = self.core.borrow_mut();
        if applied >= c.applied {
            c.applied = applied;
            c.applied_offset = offset;
            self.store.set_visible(offset);
        }
        while c.cache_bytes > c.cache_budget
            && c.cache.len() > 1
            && c.cache.front().is_some_and(|x| x.entry.index < c.applied)
        {
            if let Some(x) = c.cache.pop_front() {
                c.cache_bytes -= entry::size(&x.entry);
            }
        }
    }

    /// Compacts Raft's log: its first index becomes `to + 1` (`to` at most the applied
    /// index), the metadata file keeps `to` and its term, and the store may drop whole
    /// segments below. Returns false when there was nothing to do.
    pub async fn compact(&self, to: u64) -> Result<bool> {
        let group = self.group();
        let term = {
            let c = self.core.borrow();
            if to <= c.meta.snapshot_index || to > c.applied {
                return Ok(false);
            }
            c.term(to).map_err(|e| Error::Raft(e.to_string()))?
        };
        {
            let mut c = self.core.borrow_mut();
            c.meta.snapshot_index = to;
            c.meta.snapshot_term = term;
            let runs = std::mem::take(&mut c.runs);
            c.runs = clip_runs(runs, to);
            while c.cache.front().is_some_and(|x| x.entry.index <= to) {
                if let Some(x) = c.cache.pop_front() {
                    c.cache_bytes -= entry::size(&x.entry);
                }
            }
            c.fetched.clear();
            c.generation += 1;
        }
        self.write_meta()?;
        self.store
            .truncate_prefix(to + 1)
            .await
            .map_err(storage_err(group))?;
        Ok(true)
    }

    /// Installs a snapshot whose batches were fetched and checked: the store is replaced by
    /// them and the metadata takes the snapshot's point and configuration, together; the
    /// adapter then starts after the snapshot.
    pub async fn install(
        &self,
        snap: &Snapshot,
        data: &SnapshotData,
        batches: &[u8],
    ) -> Result<()> {
        let group = self.group();
        let meta = self.snapshot_meta(snap);
        self.store
            .install(data.first_offset, data.first_index, batches, &meta.encode())
            .await
            .map_err(storage_err(group))?;
        self.installed(snap, data, meta);
        Ok(())
    }

    /// [`install`](Self::install) from a snapshot downloaded and verified beside the log
    /// (segment files): the store swaps it in with the metadata, atomically.
    pub async fn install_staged(
        &self,
        snap: &Snapshot,
        data: &SnapshotData,
        staged: S::Staged,
    ) -> Result<()> {
        let group = self.group();
        let meta = self.snapshot_meta(snap);
        self.store
            .install_staged(staged, &meta.encode())
            .await
            .map_err(storage_err(group))?;
        if self.store.first_index() != data.first_index
            || self.store.next_index() != data.last_index + 1
            || self.store.next_offset() != data.next_offset
        {
            return Err(Error::Malformed {
                what: "installed snapshot",
                why: format!(
                    "the log holds indexes [{}, {}) up to offset {} for {data:?}",
                    self.store.first_index(),
                    self.store.next_index(),
                    self.store.next_offset()
                ),
            });
        }
        self.installed(snap, data, meta);
        Ok(())
    }

    /// The metadata a snapshot installs: its point and configuration, the hard state kept.
    fn snapshot_meta(&self, snap: &Snapshot) -> RaftMeta {
        let m = snap.get_metadata();
        let c = self.core.borrow();
        RaftMeta {
            snapshot_index: m.index,
            snapshot_term: m.term,
            conf_index: m.index,
            conf_state: m.get_conf_state().clone(),
            ..c.meta.clone()
        }
    }

    /// The adapter's state after an install: it starts after the snapshot.
    fn installed(&self, snap: &Snapshot, data: &SnapshotData, meta: RaftMeta) {
        let m = snap.get_metadata();
        let mut c = self.core.borrow_mut();
        c.meta = meta;
        c.last_index = m.index;
        c.runs.clear();
        c.cache.clear();
        c.cache_bytes = 0;
        c.fetched.clear();
        c.generation += 1;
        c.next_offset = data.next_offset;
        c.applied = m.index;
        c.applied_offset = data.next_offset;
        c.hard_state.commit = c.hard_state.commit.max(m.index);
        // The install emptied the log and refilled it with committed entries only.
        self.store.set_visible(data.next_offset);
    }

    /// While a snapshot of this group is streaming to a follower, `snapshot()` answers
    /// `SnapshotTemporarilyUnavailable` (one transfer per group at a time; raft-rs asks
    /// again later for another follower).
    pub fn set_sending_snapshot(&self, sending: bool) {
        self.core.borrow_mut().sending_snapshot = sending;
    }

    /// A job for the deferred reads, unless one is running already: it reads the first
    /// request's range and answers every request made so far (raft-rs asks again for what
    /// it still misses, and the next job reads that).
    pub fn take_fetch_job(&self) -> Option<FetchJob<S>> {
        let mut c = self.core.borrow_mut();
        if c.in_flight || c.pending.is_empty() {
            return None;
        }
        let pending = std::mem::take(&mut c.pending);
        let (low, high, max_size) = (pending[0].low, pending[0].high, pending[0].max_size);
        c.waiting = pending.into_iter().map(|p| p.context).collect();
        c.in_flight = true;
        Some(FetchJob {
            log: self.clone(),
            low,
            high,
            max_size,
            generation: c.generation,
        })
    }

    /// Requests whose job is done, for `on_entries_fetched`; an error if a read failed on
    /// the device.
    pub fn take_answered(&self) -> Result<Vec<GetEntriesContext>> {
        let mut c = self.core.borrow_mut();
        if let Some(e) = c.fetch_error.take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut c.answered))
    }

    /// True when deferred reads have work for the loop (a job to start, answers to hand).
    pub fn has_fetch_work(&self) -> bool {
        let c = self.core.borrow();
        (!c.in_flight && !c.pending.is_empty()) || !c.answered.is_empty() || c.fetch_error.is_some()
    }

    /// Entries in the cache, for checks (index, term, data).
    pub fn cached_len(&self) -> usize {
        self.core.borrow().cache.len()
    }
}

/// Term runs that start after `point` (the snapshot index): a run that covers `point + 1`
/// but starts at or before `point` is kept, starting at `point + 1`.
fn clip_runs(runs: Vec<(u64, u64)>, point: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (first, term) in runs {
        if first > point {
            if out.last().is_some_and(|&(f, _)| f == first) {
                out.pop();
            }
            out.push((first, term));
        } else {
            out.clear();
            out.push((point + 1, term));
        }
    }
    out
}

impl Core {
    /// A job's end: its entries served from now on (unless the log changed meanwhile), its
    /// requests answered. A range that is no longer in the log is no failure (a cut or a
    /// compaction raced the read); a device error stops the group.
    fn finish_fetch(&mut self, generation: u64, result: Result<Vec<Entry>>) {
        self.in_flight = false;
        let waiting = std::mem::take(&mut self.waiting);
        self.answered.extend(waiting);
        match result {
            Ok(entries) if generation == self.generation => self.fetched = entries,
            Ok(_) => {}
            Err(Error::Storage {
                source: engine::Error::InvalidArgument(_) | engine::Error::OffsetOutOfRange { .. },
                ..
            }) => {}
            Err(e) => self.fetch_error = Some(e),
        }
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.meta.snapshot_index {
            return Ok(self.meta.snapshot_term);
        }
        if idx < self.meta.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let i = self.runs.partition_point(|&(first, _)| first <= idx);
        match i.checked_sub(1) {
            Some(i) => Ok(self.runs[i].1),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn cached_range(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.cache.front()?.entry.index;
        if low < first {
            return None;
        }
        let from = (low - first) as usize;
        let to = ((high - first) as usize).min(self.cache.len());
        Some(
            self.cache
                .range(from..to)
                .map(|x| x.entry.clone())
                .collect(),
        )
    }

    fn fetched_range(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.fetched.first()?.index;
        if low < first || low >= first + self.fetched.len() as u64 {
            return None;
        }
        let from = (low - first) as usize;
        let to = ((high - first) as usize).min(self.fetched.len());
        Some(self.fetched[from..to].to_vec())
    }
}

impl<S: LogStore> raft::Storage for RaftLog<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.core.borrow();
        Ok(RaftState::new(
            c.hard_state.clone(),
            c.meta.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let mut c = self.core.borrow_mut();
        if low <= c.meta.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > c.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let found = c
            .cached_range(low, high)
            .or_else(|| c.fetched_range(low, high));
        match found {
            Some(mut entries) => {
                raft::util::limit_size(&mut entries, max_size);
                Ok(entries)
            }
            None if context.can_async() => {
                c.pending.push(PendingFetch {
                    low,
                    high,
                    max_size: max_size.unwrap_or(u64::MAX),
                    context,
                });
                Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
            }
            // Never reached while the cache holds every unapplied entry: raft-rs asks
            // synchronously only for those.
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.core.borrow().term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.borrow().meta.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.borrow().last_index)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The snapshot at the applied index S: the retained log up to S. Its data is only a
        // descriptor; the receiver fetches the batches.
        let c = self.core.borrow();
        if c.sending_snapshot {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let s = c.applied;
        let term = c.term(s)?;
        let data = SnapshotData {
            first_index: self.store.first_index(),
            first_offset: self.store.first_offset(),
            last_index: s,
            next_offset: c.applied_offset,
        };
        if s == 0 || data.first_index > s + 1 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.data = data.encode().into();
        let meta = snap.mut_metadata();
        meta.index = s;
        meta.term = term;
        meta.set_conf_state(c.meta.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_refuses_garbage() {
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        cs.learners = vec![4];
        let m = RaftMeta {
            term: 7,
            vote: 2,
            snapshot_index: 0,
            snapshot_term: 0,
            conf_index: 5,
            conf_state: cs,
        };
        assert_eq!(RaftMeta::decode(&m.encode()).expect("decodes"), m);
        assert!(RaftMeta::decode(&[]).is_err());
        assert!(RaftMeta::decode(&[2u8; 60]).is_err());
    }
}
