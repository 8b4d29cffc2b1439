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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    pub topics: BTreeMap<String, TopicEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicEntry {
    pub partitions: u32,
    pub config: LogConfig,
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

pub fn load(dir: &Path) -> Result<Catalog> {
    let Some(bytes) = meta::read(dir, FILE)? else {
        return Ok(Catalog {
            version: 1,
            topics: BTreeMap::new(),
        });
    };
    let cat: Catalog = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(dir.join(FILE), 16, format!("catalog does not parse: {e}")))?;
    if cat.version != 1 {
        return Err(Error::corrupt(
            dir.join(FILE),
            16,
            format!("unknown catalog version {}", cat.version),
        ));
    }
    for (name, t) in &cat.topics {
        check_topic_name(name)?;
        t.config
            .validate()
            .map_err(|e| Error::corrupt(dir.join(FILE), 16, format!("topic {name}: {e}")))?;
    }
    Ok(cat)
}

pub fn save(dir: &Path, cat: &Catalog) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(cat).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    meta::write(dir, FILE, &bytes)
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

/// The catalog in memory, behind one lock, and the directory it is saved in. The lock guards
/// an immutable snapshot that every change replaces, so shards can keep a copy of their own.
pub(crate) struct Topics {
    data_dir: PathBuf,
    catalog: Mutex<Arc<Catalog>>,
}

impl Topics {
    /// Loads the catalog of `data_dir`.
    pub(crate) fn load(data_dir: &Path) -> Result<Topics> {
        Ok(Topics {
            data_dir: data_dir.to_owned(),
            catalog: Mutex::new(Arc::new(load(data_dir)?)),
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

    /// Every partition of every topic, with its topic's settings.
    pub(crate) fn all_partitions(&self) -> Result<Vec<(String, u32, LogConfig)>> {
        let cat = self.lock()?;
        Ok(cat
            .topics
            .iter()
            .flat_map(|(name, t)| {
                (0..t.partitions).map(move |p| (name.clone(), p, t.config.clone()))
            })
            .collect())
    }

    pub(crate) fn list(&self) -> Result<Vec<TopicInfo>> {
        Ok(self.lock()?.list())
    }

    pub(crate) fn get(&self, name: &str) -> Result<TopicInfo> {
        self.lock()?.info(name)
    }

    /// Adds a topic to the catalog, on disk first. Leftovers of an earlier topic of the same
    /// name (a deletion that was interrupted) are removed first, then every partition's
    /// directory is created and made durable before the catalog names the topic: a partition
    /// directory missing under a catalog entry was therefore removed after its creation (its
    /// records are gone), never a creation that a crash cut short.
    pub(crate) fn add(&self, name: &str, partitions: u32, config: &LogConfig) -> Result<()> {
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
        if let Err(e) = create_partition_dirs(&self.data_dir, name, partitions) {
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
            },
        );
        save(&self.data_dir, &next)?;
        *cat = Arc::new(next);
        Ok(())
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

/// Creates `topics/<name>/<p>` for every partition, durably: each new directory entry is
/// synced in its parent.
fn create_partition_dirs(data_dir: &Path, name: &str, partitions: u32) -> Result<()> {
    let topic = topic_dir(data_dir, name);
    std::fs::create_dir_all(&topic).map_err(|e| Error::io("creating", &topic, e))?;
    for p in 0..partitions {
        let dir = partition_dir(data_dir, name, p);
        std::fs::create_dir(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    }
    meta::sync_dir(&topic)?;
    meta::sync_dir(&data_dir.join("topics"))
}

fn info(name: &str, t: &TopicEntry) -> TopicInfo {
    TopicInfo {
        name: name.to_owned(),
        partitions: t.partitions,
        config: t.config.clone(),
    }
}
