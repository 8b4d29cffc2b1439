//! Topic administration: the catalog of topics held in memory under one lock, where topics
//! live on disk, and the engine's topic operations (create, delete, list, describe).
//!
//! `Topics` is the only holder of the catalog: routing asks it whether a partition exists,
//! shards ask it what to open at start, and the operations below change it. Changes write
//! `catalog.meta` (see `catalog.rs`) before they take effect in memory. Creation writes the
//! catalog first, then opens the partitions on their shards; deletion removes the data first,
//! then the catalog entry, so an interrupted deletion never lets a new topic of the same name
//! see old data.

use crate::catalog::{self, Catalog, TopicEntry, TopicInfo};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::limits::MAX_PARTITIONS;
use crate::shard::{EngineHandle, PartitionInfo};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// `<data_dir>/topics/<topic>`: a topic's data.
pub fn topic_dir(data_dir: &Path, topic: &str) -> PathBuf {
    data_dir.join("topics").join(topic)
}

/// `<data_dir>/topics/<topic>/<partition>`: one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic).join(partition.to_string())
}

/// The catalog in memory, behind one lock, and the directory it is saved in.
pub(crate) struct Topics {
    data_dir: PathBuf,
    catalog: Mutex<Catalog>,
}

impl Topics {
    /// Loads the catalog of `data_dir`.
    pub(crate) fn load(data_dir: &Path) -> Result<Topics> {
        Ok(Topics {
            data_dir: data_dir.to_owned(),
            catalog: Mutex::new(catalog::load(data_dir)?),
        })
    }

    /// A poisoned lock means a thread panicked while changing the catalog: refuse to go on.
    fn lock(&self) -> Result<MutexGuard<'_, Catalog>> {
        self.catalog.lock().map_err(|_| Error::ShutDown)
    }

    /// Fails unless `topic` exists and has `partition`.
    pub(crate) fn check_partition(&self, topic: &str, partition: u32) -> Result<()> {
        let partitions = self.partitions(topic)?;
        if partition >= partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions,
            });
        }
        Ok(())
    }

    /// How many partitions `topic` has.
    pub(crate) fn partitions(&self, topic: &str) -> Result<u32> {
        let cat = self.lock()?;
        cat.topics
            .get(topic)
            .map(|t| t.partitions)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
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
        let cat = self.lock()?;
        Ok(cat.topics.iter().map(|(name, t)| info(name, t)).collect())
    }

    pub(crate) fn get(&self, name: &str) -> Result<TopicInfo> {
        let cat = self.lock()?;
        let t = cat
            .topics
            .get(name)
            .ok_or_else(|| Error::UnknownTopic(name.to_owned()))?;
        Ok(info(name, t))
    }

    /// Adds a topic to the catalog, on disk first. Leftovers of an earlier topic of the same
    /// name (a deletion that was interrupted) are removed first.
    fn add(&self, name: &str, partitions: u32, config: &LogConfig) -> Result<()> {
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
        let mut next = cat.clone();
        next.topics.insert(
            name.to_owned(),
            TopicEntry {
                partitions,
                config: config.clone(),
            },
        );
        catalog::save(&self.data_dir, &next)?;
        *cat = next;
        Ok(())
    }

    /// Removes a topic from the catalog, on disk first.
    fn remove(&self, name: &str) -> Result<()> {
        let mut cat = self.lock()?;
        let mut next = cat.clone();
        next.topics.remove(name);
        catalog::save(&self.data_dir, &next)?;
        *cat = next;
        Ok(())
    }
}

fn info(name: &str, t: &TopicEntry) -> TopicInfo {
    TopicInfo {
        name: name.to_owned(),
        partitions: t.partitions,
        config: t.config.clone(),
    }
}

/// Checks what a new topic would be before anything is written.
fn check_new_topic(name: &str, partitions: u32, config: &LogConfig) -> Result<()> {
    catalog::check_topic_name(name)?;
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::InvalidArgument(format!(
            "a topic needs between 1 and {MAX_PARTITIONS} partitions, not {partitions}"
        )));
    }
    config.validate().map_err(Error::InvalidArgument)
}

impl EngineHandle {
    /// Creates a topic with `partitions` partitions, each opened on its owning shard.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: LogConfig,
    ) -> Result<TopicInfo> {
        check_new_topic(name, partitions, &config)?;
        self.topics().add(name, partitions, &config)?;
        for p in 0..partitions {
            let shard = self.shard_of(name, p);
            let (n, c) = (name.to_owned(), config.clone());
            self.on_shard(shard, move |ctx| async move {
                ctx.open_log(&n, p, c).await.map(|_| ())
            })
            .await?;
        }
        Ok(TopicInfo {
            name: name.to_owned(),
            partitions,
            config,
        })
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let partitions = self.topics().partitions(name)?;
        for p in 0..partitions {
            let shard = self.shard_of(name, p);
            let n = name.to_owned();
            self.on_shard(shard, move |ctx| async move {
                if let Some(log) = ctx.forget_log(&n, p) {
                    log.remove().await?;
                }
                Ok(())
            })
            .await?;
        }
        let dir = topic_dir(self.data_dir(), name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        self.topics().remove(name)
    }

    pub fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.topics().list()
    }

    pub fn topic(&self, name: &str) -> Result<TopicInfo> {
        self.topics().get(name)
    }

    /// Each partition of a topic with its offsets and size.
    pub async fn describe_topic(&self, name: &str) -> Result<Vec<PartitionInfo>> {
        let t = self.topic(name)?;
        let mut out = Vec::with_capacity(t.partitions as usize);
        for p in 0..t.partitions {
            let stats = self.stats(name, p).await?;
            out.push(PartitionInfo {
                partition: p,
                shard: self.shard_of(name, p),
                stats,
            });
        }
        Ok(out)
    }
}
