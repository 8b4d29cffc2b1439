//! The catalog: which topics exist and their settings, in `<data_dir>/catalog.meta` (a JSON
//! payload in the atomically replaced metadata format of `meta.rs`), and in memory (`Topics`);
//! and where topics live on disk.
//!
//! `Topics` holds the authoritative copy behind one lock: topic administration (`topics.rs`)
//! changes it, shards ask it what to open at start, and threads that are no shard route by
//! it. A change is saved to `catalog.meta` before it takes effect in memory. The data path
//! never takes that lock: every shard keeps its own snapshot (an immutable `Arc<Catalog>`),
//! which topic administration replaces on every shard before it returns.

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::limits::MAX_TOPIC_NAME_BYTES;
use crate::meta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub const FILE: &str = "catalog.meta";

/// The catalog version this code writes. Version 1 (before partition marks) is read and
/// upgraded at start ([`Topics::load`]); any other is refused.
pub const VERSION: u32 = 2;

/// The mark a partition's directory holds from its creation on, written and synced before the
/// catalog names the partition held (`docs/format.md`, "`partition.meta` payload"): a held
/// partition's directory found without it was emptied after it was made.
pub const PARTITION_META: &str = "partition.meta";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    pub topics: BTreeMap<String, TopicEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicEntry {
    pub partitions: u32,
    pub config: LogConfig,
    /// The partitions this node holds, ascending: their directories were made before this
    /// entry named them, and their logs open at start. `None` (absent): every partition (a
    /// topic held whole is written so, as every topic was before this field). A node
    /// of a cluster holds only the partitions placed on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<u32>>,
}

impl TopicEntry {
    /// True when this node holds `partition` (see [`TopicEntry::held`]).
    pub fn holds(&self, partition: u32) -> bool {
        partition < self.partitions
            && self
                .held
                .as_ref()
                .is_none_or(|h| h.binary_search(&partition).is_ok())
    }

    /// The partitions this node holds, ascending.
    pub fn held_partitions(&self) -> Vec<u32> {
        (0..self.partitions).filter(|&p| self.holds(p)).collect()
    }
}

/// A topic as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub config: LogConfig,
}

impl Catalog {
    /// The topic's entry.
    pub fn entry(&self, topic: &str) -> Result<&TopicEntry> {
        self.topics
            .get(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    /// Fails unless `topic` exists and has `partition`.
    pub fn check_partition(&self, topic: &str, partition: u32) -> Result<()> {
        let partitions = self.entry(topic)?.partitions;
        if partition >= partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions,
            });
        }
        Ok(())
    }

    /// The topic as callers see it.
    pub fn info(&self, name: &str) -> Result<TopicInfo> {
        Ok(info(name, self.entry(name)?))
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<TopicInfo> {
        self.topics.iter().map(|(name, t)| info(name, t)).collect()
    }
}

/// Reads the catalog of `dir` (an empty one of [`VERSION`] when there is none). A catalog of
/// version 1 is returned as it is (version 1): [`Topics::load`] upgrades it.
pub fn load(dir: &Path) -> Result<Catalog> {
    let Some(bytes) = meta::read(dir, FILE)? else {
        return Ok(Catalog {
            version: VERSION,
            topics: BTreeMap::new(),
        });
    };
    decode(&dir.join(FILE), &bytes)
}

/// The catalog in the payload `bytes` of the file `path`, checked.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Catalog> {
    let cat: Catalog = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(path, 16, format!("catalog does not parse: {e}")))?;
    if cat.version != 1 && cat.version != VERSION {
        return Err(Error::corrupt(
            path,
            16,
            format!("unknown catalog version {}", cat.version),
        ));
    }
    for (name, t) in &cat.topics {
        check_topic_name(name)?;
        if t.partitions == 0 || t.partitions > crate::limits::MAX_PARTITIONS {
            return Err(Error::corrupt(
                path,
                16,
                format!(
                    "topic {name}: {} partitions, outside [1, {}]",
                    t.partitions,
                    crate::limits::MAX_PARTITIONS
                ),
            ));
        }
        t.config
            .validate()
            .map_err(|e| Error::corrupt(path, 16, format!("topic {name}: {e}")))?;
        if let Some(held) = &t.held {
            let ascending = held.windows(2).all(|w| w[0] < w[1]);
            if !ascending || held.iter().any(|&p| p >= t.partitions) {
                return Err(Error::corrupt(
                    path,
                    16,
                    format!(
                        "topic {name}: held partitions {held:?} are not ascending partitions of \
                         its {}",
                        t.partitions
                    ),
                ));
            }
        }
    }
    Ok(cat)
}

pub fn save(dir: &Path, cat: &Catalog) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(cat).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    meta::write(dir, FILE, &bytes)
}

/// What an operator can do about a data directory refused at start because a file that says
/// what it holds (the catalog, the node's or its cluster's identity) was lost.
pub const RESTORE_OR_START_AFRESH: &str = "Restore the file from a backup; or, to start this \
     node afresh (in a cluster it joins as a new member, and the old member's replicas are \
     re-created on other nodes once it is removed), move the data directory away and start \
     with an empty one";

/// Whether the partition directory `dir` holds more than its creation writes before the
/// catalog names its topic (the mark and `unopened.meta`): its log was opened (a segment,
/// `raft.meta`, ...). False when there is no such directory.
pub fn was_opened(dir: &Path) -> Result<bool> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for e in rd {
        let name = e.map_err(|e| Error::io("listing", dir, e))?.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(PARTITION_META) || name.starts_with(crate::log::UNOPENED_META)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses a data directory that has no catalog but holds partitions that were opened (a
/// partition's directory holding more than what its creation writes before the catalog names
/// its topic: the mark and `unopened.meta`). The catalog was then deleted or lost, not yet
/// written: taken for a new directory, every topic would be missing, and the creation of any
/// of them again (the controller's, the `default` topic's at start) would delete its data as
/// the leftovers of a deleted topic; in a cluster the node would bootstrap a controller of its
/// own and acknowledge appends at offsets its cluster gave out already.
fn refuse_opened_partitions_without_catalog(data_dir: &Path) -> Result<()> {
    let topics = data_dir.join("topics");
    let entries = |dir: &Path| -> Result<Vec<(String, PathBuf)>> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| {
                    e.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                        .map_err(|e| Error::io("listing", dir, e))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("listing", dir, e)),
        }
    };
    let mut opened = Vec::new();
    for (topic, topic_path) in entries(&topics)? {
        if !topic_path.is_dir() {
            continue;
        }
        for (partition, path) in entries(&topic_path)? {
            if partition.parse::<u32>().is_err() || !path.is_dir() {
                continue;
            }
            if was_opened(&path)? {
                opened.push(format!("{topic}/{partition}"));
            }
        }
    }
    if opened.is_empty() {
        return Ok(());
    }
    opened.sort();
    let count = opened.len();
    let shown: Vec<&str> = opened.iter().take(5).map(String::as_str).collect();
    Err(Error::Foreign {
        path: topics,
        reason: format!(
            "{count} partition(s) that were opened ({}{}) but no {FILE}, which names every topic: \
             it was deleted or lost. Not started, rather than taking the directory for a new one \
             (which would delete those partitions as leftovers and, in a cluster, start a \
             controller of its own). {RESTORE_OR_START_AFRESH} (the file: {})",
            shown.join(", "),
            if count > shown.len() { ", ..." } else { "" },
            data_dir.join(FILE).display()
        ),
    })
}

/// Topic names become directory names: 1 to `MAX_TOPIC_NAME_BYTES` of `[A-Za-z0-9._-]`, not
/// `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "topic name {} must be 1 to {MAX_TOPIC_NAME_BYTES} characters of letters, digits, '.', '_' or '-'",
            crate::error::shorten(name)
        )))
    }
}

/// `<data_dir>/topics/<topic>`: a topic's data.
pub fn topic_dir(data_dir: &Path, topic: &str) -> PathBuf {
    data_dir.join("topics").join(topic)
}

/// `<data_dir>/topics/<topic>/<partition>`: one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic).join(partition.to_string())
}

/// What a partition's directory is renamed to, in its topic's directory, before it is
/// removed: `<partition>.removing` (a tombstone).
pub const REMOVING_SUFFIX: &str = ".removing";

/// `<data_dir>/topics/<topic>/<partition>.removing`: the tombstone of a partition's directory
/// being removed. A partition's directory is named by its number alone, so a tombstone is
/// never taken for one; whatever it holds is garbage, removed at start and whenever a
/// partition of its topic is opened again.
pub fn removing_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic).join(format!("{partition}{REMOVING_SUFFIX}"))
}

/// What a partition's directory is built under, in its topic's directory, before it is moved
/// to its own name when a partition is held after its topic's creation:
/// `<partition>.creating`.
///
/// A name of its own rather than the tombstone's ([`REMOVING_SUFFIX`]): the tombstones of a
/// topic are swept whenever any partition of it is opened, so a directory being built under
/// `<partition>.removing` could be deleted under a creation running meanwhile for another
/// partition of the topic, and a removal of the same partition deletes its tombstone before
/// renaming onto it. A `.creating` directory is deleted only at start (no creation runs yet)
/// and by the next creation of its own partition (see [`create_partition_dir`]).
pub const CREATING_SUFFIX: &str = ".creating";

/// `<data_dir>/topics/<topic>/<partition>.creating`: a partition's directory being built
/// (see [`CREATING_SUFFIX`]). Never taken for a partition's directory nor read; whatever a
/// crash leaves under it is garbage.
pub fn creating_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic).join(format!("{partition}{CREATING_SUFFIX}"))
}

/// True when `name` is a partition number as `partition_dir` writes it, then `suffix`.
fn is_partition_then(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .and_then(|p| p.parse::<u32>().ok().filter(|n| n.to_string() == p))
        .is_some()
}

/// True when `name` is a tombstone's: a partition number as `partition_dir` writes it, then
/// [`REMOVING_SUFFIX`].
fn is_removing_name(name: &str) -> bool {
    is_partition_then(name, REMOVING_SUFFIX)
}

/// True when `name` is a tombstone's or a partition directory's being built
/// ([`CREATING_SUFFIX`]).
fn is_removing_or_creating_name(name: &str) -> bool {
    is_removing_name(name) || is_partition_then(name, CREATING_SUFFIX)
}

/// Removes the tombstone `dir` (see [`removing_dir`]) if it is there, as a directory; anything
/// else of that name is left alone. Does not sync its parent. Returns true when it removed
/// one.
pub(crate) fn remove_tombstone(dir: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("looking for", dir, e)),
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        // Swept meanwhile by another caller.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io("removing", dir, e)),
    }
}

/// Removes every tombstone (`<partition>.removing` directory) in the topic directory
/// `topic`, then syncs it if one was removed. A missing topic directory holds none. Every
/// tombstone is tried; the first failure is returned.
pub(crate) fn sweep_tombstones(topic: &Path) -> Result<()> {
    sweep(topic, is_removing_name)
}

/// Removes every directory in the topic directory `topic` whose name `swept` accepts, then
/// syncs it if one was removed (see [`sweep_tombstones`]).
fn sweep(topic: &Path, swept: fn(&str) -> bool) -> Result<()> {
    let entries = match std::fs::read_dir(topic) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", topic, e)),
    };
    let mut first_err = None;
    let mut removed = false;
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                first_err.get_or_insert(Error::io("listing", topic, e));
                continue;
            }
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !swept(&name) {
            continue;
        }
        let path = entry.path();
        match remove_tombstone(&path) {
            Ok(true) => {
                let what = if is_removing_name(&name) {
                    "a partition directory being removed"
                } else {
                    "a partition directory whose creation was cut short"
                };
                log::info!("{}: removed ({what})", path.display());
                removed = true;
            }
            Ok(false) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if removed {
        if let Err(e) = meta::sync_dir(topic) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Sweeps the tombstones of every topic directory under `<data_dir>/topics` (see
/// [`sweep_tombstones`]), and the partition directories whose creation a crash cut short
/// (`<partition>.creating`, see [`creating_dir`]): called at start, before any creation
/// runs. Failures are logged (neither is ever read as data, so it can wait for the next
/// sweep).
pub(crate) fn sweep_all_tombstones(data_dir: &Path) {
    let topics = data_dir.join("topics");
    let entries = match std::fs::read_dir(&topics) {
        Ok(e) => e,
        Err(e) => {
            log::warn!("{}: listing topic directories: {e}", topics.display());
            return;
        }
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Err(e) = sweep(&entry.path(), is_removing_or_creating_name) {
            log::warn!("removing partition directories being removed or cut short: {e}");
        }
    }
}

/// The catalog in memory, behind one lock, and the directory it is saved in. The lock guards
/// an immutable snapshot that every change replaces, so shards can keep a copy of their own.
pub(crate) struct Topics {
    data_dir: PathBuf,
    catalog: Mutex<Arc<Catalog>>,
}

impl Topics {
    /// Loads the catalog of `data_dir`, upgrading one of version 1 (see [`upgrade`]). The
    /// caller holds the data directory's lock.
    pub(crate) fn load(data_dir: &Path) -> Result<Topics> {
        let mut cat = load(data_dir)?;
        // `load` read it (or found none): no catalog at all, not an empty one.
        if cat.topics.is_empty() && !data_dir.join(FILE).exists() {
            refuse_opened_partitions_without_catalog(data_dir)?;
        }
        if cat.version == 1 {
            upgrade(data_dir, &mut cat)?;
        }
        Ok(Topics {
            data_dir: data_dir.to_owned(),
            catalog: Mutex::new(Arc::new(cat)),
        })
    }

    /// A poisoned lock means a thread panicked while changing the catalog: refuse to go on.
    fn lock(&self) -> Result<MutexGuard<'_, Arc<Catalog>>> {
        self.catalog.lock().map_err(|_| Error::ShutDown)
    }

    /// The catalog as of now.
    pub(crate) fn snapshot(&self) -> Result<Arc<Catalog>> {
        Ok(Arc::clone(&*self.lock()?))
    }

    /// Fails unless `topic` exists and has `partition`.
    pub(crate) fn check_partition(&self, topic: &str, partition: u32) -> Result<()> {
        self.lock()?.check_partition(topic, partition)
    }

    /// How many partitions `topic` has.
    pub(crate) fn partitions(&self, topic: &str) -> Result<u32> {
        Ok(self.lock()?.entry(topic)?.partitions)
    }

    /// Every partition this node holds, of every topic, with its topic's settings.
    pub(crate) fn all_partitions(&self) -> Result<Vec<(String, u32, LogConfig)>> {
        let cat = self.lock()?;
        Ok(cat
            .topics
            .iter()
            .flat_map(|(name, t)| {
                t.held_partitions()
                    .into_iter()
                    .map(move |p| (name.clone(), p, t.config.clone()))
            })
            .collect())
    }

    /// The partitions of `topic` this node holds, ascending.
    pub(crate) fn held(&self, topic: &str) -> Result<Vec<u32>> {
        Ok(self.lock()?.entry(topic)?.held_partitions())
    }

    pub(crate) fn list(&self) -> Result<Vec<TopicInfo>> {
        Ok(self.lock()?.list())
    }

    pub(crate) fn get(&self, name: &str) -> Result<TopicInfo> {
        self.lock()?.info(name)
    }

    /// Adds a topic to the catalog, on disk first, holding the partitions `held` (every
    /// partition when `None`). Leftovers of an earlier topic of the same name (a deletion that
    /// was interrupted) are removed first, then every held partition's directory is created
    /// with its mark and made durable before the catalog names the topic: a held partition's
    /// directory missing under a catalog entry, or there without its mark, was therefore
    /// removed or emptied after its creation (its records are gone), never a creation that a
    /// crash cut short.
    pub(crate) fn add(
        &self,
        name: &str,
        partitions: u32,
        config: &LogConfig,
        held: Option<&[u32]>,
    ) -> Result<()> {
        let mut cat = self.lock()?;
        if cat.topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_owned()));
        }
        let dir = topic_dir(&self.data_dir, name);
        if dir.exists() {
            // Leftovers of a topic whose deletion was interrupted: the catalog, which is
            // authoritative, no longer lists it.
            log::warn!("{}: removing leftovers of a deleted topic", dir.display());
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        let held = held.and_then(|h| {
            let mut h = h.to_vec();
            h.sort_unstable();
            h.dedup();
            some_of(h, partitions)
        });
        let dirs: Vec<u32> = match &held {
            Some(h) => h.clone(),
            None => (0..partitions).collect(),
        };
        if let Err(e) = create_partition_dirs(&self.data_dir, name, &dirs) {
            // Nothing names them: the next `add` of this name removes what was made.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mut next = Catalog::clone(&cat);
        next.topics.insert(
            name.to_owned(),
            TopicEntry {
                partitions,
                config: config.clone(),
                held,
            },
        );
        save(&self.data_dir, &next)?;
        *cat = Arc::new(next);
        Ok(())
    }

    /// Records that this node holds `partition` of `topic` (`holds`) or no longer does, on
    /// disk first. Its directory must exist before it is recorded held, and its log be closed
    /// before it is recorded not held. Returns false when nothing changed.
    pub(crate) fn set_held(&self, topic: &str, partition: u32, holds: bool) -> Result<bool> {
        let mut cat = self.lock()?;
        cat.check_partition(topic, partition)?;
        let mut next = Catalog::clone(&cat);
        let Some(t) = next.topics.get_mut(topic) else {
            return Err(Error::UnknownTopic(topic.to_owned()));
        };
        if t.holds(partition) == holds {
            return Ok(false);
        }
        let mut held = t.held_partitions();
        if holds {
            held.push(partition);
            held.sort_unstable();
        } else {
            held.retain(|&p| p != partition);
        }
        t.held = some_of(held, t.partitions);
        save(&self.data_dir, &next)?;
        *cat = Arc::new(next);
        Ok(true)
    }

    /// Changes a topic's retention limits (bytes, milliseconds; 0: none), on disk first.
    /// Returns the topic as it is then.
    pub(crate) fn set_retention(&self, name: &str, bytes: u64, ms: u64) -> Result<TopicInfo> {
        let mut cat = self.lock()?;
        let mut next = Catalog::clone(&cat);
        let Some(t) = next.topics.get_mut(name) else {
            return Err(Error::UnknownTopic(name.to_owned()));
        };
        if (t.config.retention_bytes, t.config.retention_ms) != (bytes, ms) {
            t.config.retention_bytes = bytes;
            t.config.retention_ms = ms;
            save(&self.data_dir, &next)?;
            *cat = Arc::new(next);
        }
        cat.info(name)
    }

    /// Removes a topic from the catalog, on disk first.
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        let mut cat = self.lock()?;
        let mut next = Catalog::clone(&cat);
        next.topics.remove(name);
        save(&self.data_dir, &next)?;
        *cat = Arc::new(next);
        Ok(())
    }
}

/// `held` (ascending, without repeats) as [`TopicEntry::held`] records it: `None` when it is
/// every one of `partitions`, so that a topic held whole is written as before the field.
fn some_of(held: Vec<u32>, partitions: u32) -> Option<Vec<u32>> {
    (held.len() != partitions as usize).then_some(held)
}

/// Creates `topics/<name>/<p>` for every partition of `partitions`, each with its mark
/// ([`write_partition_mark`]), durably: each new directory entry is synced in its parent.
fn create_partition_dirs(data_dir: &Path, name: &str, partitions: &[u32]) -> Result<()> {
    let topic = topic_dir(data_dir, name);
    std::fs::create_dir_all(&topic).map_err(|e| Error::io("creating", &topic, e))?;
    for &p in partitions {
        let dir = partition_dir(data_dir, name, p);
        std::fs::create_dir(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        crate::log::write_unopened(&dir)?;
        write_partition_mark(&dir, name, p)?;
    }
    meta::sync_dir(&topic)?;
    meta::sync_dir(&data_dir.join("topics"))
}

/// Makes `topics/<name>/<partition>` (and `topics/<name>` if missing) with its mark
/// ([`write_partition_mark`]), durably and all or nothing: the directory is built as
/// `<partition>.creating` ([`creating_dir`]), its mark written and synced in it, then it is
/// moved to its name by a rename that never replaces what is there
/// (`renameat2(RENAME_NOREPLACE)`), and `topics/<name>` and `topics` are synced. So
/// `<partition>` is never there without its mark: a crash or an I/O error midway leaves at
/// most a `.creating` directory, deleted at start or by the next creation of the partition
/// (here, before it builds its own). Returns false when the directory was there already (data
/// kept from an earlier time the partition was held here: its mark is left as it is, and the
/// open decides), true when it was made now.
pub(crate) fn create_partition_dir(data_dir: &Path, name: &str, partition: u32) -> Result<bool> {
    // One creation at a time in this process: two threads making the same partition would
    // share its `.creating` directory, the second removing it (a leftover, to it) while the
    // first writes in it. Creations are rare and short (a few small files and syncs).
    static CREATING: Mutex<()> = Mutex::new(());
    let _one = CREATING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let topic = topic_dir(data_dir, name);
    std::fs::create_dir_all(&topic).map_err(|e| Error::io("creating", &topic, e))?;
    let dir = partition_dir(data_dir, name, partition);
    match std::fs::symlink_metadata(&dir) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("looking for", &dir, e)),
    }
    let staged = creating_dir(data_dir, name, partition);
    if remove_tombstone(&staged)? {
        log::info!(
            "{}: removed (a partition directory whose creation was cut short)",
            staged.display()
        );
    }
    std::fs::create_dir(&staged).map_err(|e| Error::io("creating", &staged, e))?;
    let moved = crate::log::write_unopened(&staged)
        .and_then(|()| write_partition_mark(&staged, name, partition))
        .and_then(|()| {
            match rename_noreplace(&staged, &dir) {
                Ok(()) => Ok(true),
                // Made meanwhile (or a file of that name): what is there is kept.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Error::io(
                    "moving into place (renameat2 RENAME_NOREPLACE)",
                    &dir,
                    e,
                )),
            }
        });
    if !matches!(moved, Ok(true)) {
        // Never read: left behind, it goes at start or at the next creation of the partition.
        if let Err(e) = remove_tombstone(&staged).and_then(|_| meta::sync_dir(&topic)) {
            log::warn!("{}: {e}", staged.display());
        }
        return moved;
    }
    meta::sync_dir(&topic)?;
    meta::sync_dir(&data_dir.join("topics"))?;
    Ok(true)
}

/// Renames `from` to `to` unless `to` exists (`renameat2` with `RENAME_NOREPLACE`): an
/// error of kind `AlreadyExists` then. A plain rename(2) would replace an empty directory.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

/// `renameat2(from, to, flags)` (paths relative to the working directory, as `rename`).
pub(crate) fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} holds a NUL byte", p.display()),
            )
        })
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: both pointers are NUL-terminated paths that outlive the call; renameat2 only
    // reads them. The raw syscall avoids depending on the C library's wrapper.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            flags,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The payload of [`PARTITION_META`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PartitionMark {
    version: u32,
    topic: String,
    partition: u32,
}

/// Writes the mark of partition `partition` of `topic` in its directory `dir`, durably (the
/// file synced, then `dir`).
pub(crate) fn write_partition_mark(dir: &Path, topic: &str, partition: u32) -> Result<()> {
    let mark = PartitionMark {
        version: 1,
        topic: topic.to_owned(),
        partition,
    };
    let bytes = serde_json::to_vec(&mark).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    meta::write(dir, PARTITION_META, &bytes)
}

/// Whether the partition directory `dir` holds its mark: `Ok(false)` when it has none (or
/// there is no directory), an error naming the file when the mark is damaged, of an unknown
/// version, or names another partition than `topic`/`partition` (the directory holds some
/// other partition's files: nothing decides for the operator which).
pub(crate) fn has_partition_mark(dir: &Path, topic: &str, partition: u32) -> Result<bool> {
    let path = dir.join(PARTITION_META);
    let Some(bytes) = meta::read(dir, PARTITION_META)? else {
        return Ok(false);
    };
    decode_partition_mark(&path, &bytes, topic, partition)
}

/// Whether the payload `bytes` of the mark `path` names partition `partition` of `topic`
/// (an error when it is damaged, of an unknown version, or names another).
pub(crate) fn decode_partition_mark(
    path: &Path,
    bytes: &[u8],
    topic: &str,
    partition: u32,
) -> Result<bool> {
    let mark: PartitionMark = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(path, 16, format!("partition mark does not parse: {e}")))?;
    if mark.version != 1 {
        return Err(Error::corrupt(
            path,
            16,
            format!("unknown partition mark version {}", mark.version),
        ));
    }
    if mark.topic != topic || mark.partition != partition {
        return Err(Error::corrupt(
            path,
            16,
            format!(
                "the directory of partition {topic}/{partition} holds the mark of topic {} \
                 partition {}",
                crate::error::shorten(&mark.topic),
                mark.partition
            ),
        ));
    }
    Ok(true)
}

/// Upgrades a catalog of version 1 (written before partition marks) in `data_dir`: every
/// partition directory of a listed topic that is there (held, or kept while not held) gets
/// its mark, as it stands (a directory emptied before the upgrade cannot be told from one
/// that held nothing), and then the catalog is saved as [`VERSION`]. A crash midway leaves
/// version 1, and the next start does it again (a mark already there is kept).
fn upgrade(data_dir: &Path, cat: &mut Catalog) -> Result<()> {
    let mut marked = 0usize;
    for (name, t) in &cat.topics {
        for p in 0..t.partitions {
            let dir = partition_dir(data_dir, name, p);
            // Followed if it is a symbolic link, as the open that checks the mark follows it.
            let is_dir = match std::fs::metadata(&dir) {
                Ok(m) => m.is_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::io("looking for", &dir, e)),
            };
            if is_dir && !has_partition_mark(&dir, name, p)? {
                write_partition_mark(&dir, name, p)?;
                marked += 1;
            }
        }
    }
    cat.version = VERSION;
    save(data_dir, cat)?;
    log::info!(
        "{}: upgraded from version 1 to {VERSION} (marked {marked} partition directories)",
        data_dir.join(FILE).display()
    );
    Ok(())
}

fn info(name: &str, t: &TopicEntry) -> TopicInfo {
    TopicInfo {
        name: name.to_owned(),
        partitions: t.partitions,
        config: t.config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions whose creation a crash cut short (their directories made, the catalog not
    /// yet written) do not stop a start; a partition that was opened, under no catalog, does.
    #[test]
    fn a_missing_catalog_is_refused_only_when_partitions_were_opened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path();
        create_partition_dirs(data, "t", &[0, 1]).expect("dirs");
        let topics = Topics::load(data).expect("a creation cut short starts");
        assert!(topics.list().expect("list").is_empty());
        std::fs::write(
            partition_dir(data, "t", 1).join("00000000000000000000.log"),
            b"",
        )
        .expect("a segment");
        let e = Topics::load(data).err().expect("refused");
        let msg = e.to_string();
        assert!(matches!(e, Error::Foreign { .. }), "{e:?}");
        assert!(
            msg.contains("1 partition(s) that were opened (t/1) but no catalog.meta"),
            "{msg}"
        );
        // Nothing was removed.
        assert!(partition_dir(data, "t", 1)
            .join("00000000000000000000.log")
            .exists());
        // A catalog there (even one naming no topic) is authoritative, as before.
        save(
            data,
            &Catalog {
                version: VERSION,
                topics: BTreeMap::new(),
            },
        )
        .expect("save");
        Topics::load(data).expect("an empty catalog loads");
    }

    /// A partition count no topic can have (a hand-edited or damaged catalog) fails the
    /// start naming the file, instead of sizing lists by it.
    #[test]
    fn a_catalog_with_an_impossible_partition_count_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (partitions, ok) in [(1, true), (4096, true), (0, false), (u32::MAX, false)] {
            let mut cat = Catalog {
                version: VERSION,
                topics: BTreeMap::new(),
            };
            let entry = TopicEntry {
                partitions,
                config: LogConfig::default(),
                held: None,
            };
            cat.topics.insert("t".into(), entry);
            save(tmp.path(), &cat).expect("save");
            match load(tmp.path()) {
                Ok(_) => assert!(ok, "{partitions} partitions loaded"),
                Err(e) => {
                    assert!(!ok, "{partitions}: {e}");
                    assert!(e.to_string().contains("catalog.meta"), "{e}");
                }
            }
        }
    }

    #[test]
    fn only_a_partition_number_then_the_suffix_names_a_tombstone() {
        for name in ["0.removing", "3.removing", "4294967295.removing"] {
            assert!(is_removing_name(name), "{name}");
        }
        for name in [
            "0",
            "3",
            ".removing",
            "03.removing",
            "+3.removing",
            "4294967296.removing",
            "3.install",
            "3.removing.tmp",
            "x.removing",
        ] {
            assert!(!is_removing_name(name), "{name}");
        }
        let d = Path::new("/d");
        assert_eq!(removing_dir(d, "t", 7), Path::new("/d/topics/t/7.removing"));
    }

    #[test]
    fn a_sweep_removes_tombstones_and_nothing_else() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path();
        let topic = topic_dir(data, "t");
        let tomb = removing_dir(data, "t", 1);
        std::fs::create_dir_all(tomb.join("sub")).expect("mkdir");
        std::fs::write(tomb.join("00000000000000000000.log"), b"x").expect("write");
        std::fs::create_dir_all(partition_dir(data, "t", 0)).expect("mkdir");
        std::fs::create_dir_all(topic.join("2.install")).expect("mkdir");
        std::fs::write(topic.join("3.removing"), b"a file").expect("write");
        // A topic whose name ends like a tombstone is a topic, not one.
        std::fs::create_dir_all(topic_dir(data, "u.removing").join("0")).expect("mkdir");
        std::fs::create_dir_all(removing_dir(data, "u.removing", 4)).expect("mkdir");
        sweep_all_tombstones(data);
        assert!(!tomb.exists());
        assert!(!removing_dir(data, "u.removing", 4).exists());
        assert!(partition_dir(data, "t", 0).exists());
        assert!(topic.join("2.install").exists());
        assert!(
            topic.join("3.removing").is_file(),
            "not a directory: left alone"
        );
        assert!(partition_dir(data, "u.removing", 0).exists());
        sweep_tombstones(&topic_dir(data, "absent")).expect("no topic directory, no tombstone");
    }

    #[test]
    fn a_creating_name_is_swept_at_start_only() {
        for name in ["0.creating", "4294967295.creating"] {
            assert!(is_removing_or_creating_name(name), "{name}");
            assert!(!is_removing_name(name), "{name}: not by a topic's sweep");
        }
        for name in [
            "3",
            "03.creating",
            "3.creating.tmp",
            "3.install",
            ".creating",
        ] {
            assert!(!is_removing_or_creating_name(name), "{name}");
        }
        assert!(is_removing_or_creating_name("3.removing"));
        let d = Path::new("/d");
        assert_eq!(creating_dir(d, "t", 7), Path::new("/d/topics/t/7.creating"));
    }

    #[test]
    fn a_partition_directory_is_never_moved_onto_one_there() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path();
        let dir = partition_dir(data, "t", 0);
        // Empty, as an operator's `rm -rf topics/t/0/*` leaves it: kept, not replaced.
        std::fs::create_dir_all(&dir).expect("mkdir");
        assert!(!create_partition_dir(data, "t", 0).expect("there already"));
        assert!(!has_partition_mark(&dir, "t", 0).expect("no mark"));
        assert!(!creating_dir(data, "t", 0).exists());
        let from = creating_dir(data, "t", 1);
        std::fs::create_dir(&from).expect("mkdir");
        let err = rename_noreplace(&from, &dir).expect_err("an empty directory there");
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        // Made now: marked, nothing left aside.
        std::fs::create_dir(creating_dir(data, "t", 2)).expect("a leftover");
        assert!(create_partition_dir(data, "t", 2).expect("made"));
        assert!(has_partition_mark(&partition_dir(data, "t", 2), "t", 2).expect("mark"));
        assert!(!creating_dir(data, "t", 2).exists());
    }

    /// Threads making the same partition at once: exactly one makes it, the others find it
    /// made, none fails, and nothing is left aside. Without the lock in
    /// `create_partition_dir` a thread removes the `.creating` directory another is
    /// writing in, and that one fails.
    #[test]
    fn threads_making_one_partition_at_once_make_it_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().to_path_buf();
        for round in 0..40u32 {
            let start = std::sync::Arc::new(std::sync::Barrier::new(6));
            let made: Vec<Result<bool>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..6)
                    .map(|_| {
                        let (data, start) = (&data, start.clone());
                        s.spawn(move || {
                            start.wait();
                            create_partition_dir(data, "t", round)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            let made: Vec<bool> = made
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| panic!("round {round}: {e}")))
                .collect();
            assert_eq!(
                made.iter().filter(|m| **m).count(),
                1,
                "round {round}: {made:?}"
            );
            let dir = partition_dir(&data, "t", round);
            assert!(
                has_partition_mark(&dir, "t", round).expect("mark"),
                "round {round}"
            );
            assert!(!creating_dir(&data, "t", round).exists(), "round {round}");
        }
    }
}
