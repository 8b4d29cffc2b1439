//! Topic administration: the engine's topic operations (create, delete, list, describe) over
//! the catalog (`catalog::Topics`) and the shards that own the partitions.
//!
//! Creation makes the partitions' directories, each with its mark (`partition.meta`), writes
//! the catalog, then opens the partitions on their shards (a directory missing under a
//! catalog entry, or there without its mark, is therefore lost data, not a creation cut
//! short); deletion removes the data first, then the catalog entry, so an
//! interrupted deletion never lets a new topic of the same name see old data. Either way, every shard's copy of the catalog is
//! replaced before the operation returns (also when it fails halfway, with whatever the
//! catalog then holds), so that routing on any shard agrees with the catalog from then on.

use crate::catalog::{self, topic_dir, TopicInfo};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::limits::MAX_PARTITIONS;
use crate::seam::PartitionId;
use crate::shard::msg::ShardMsg;
use crate::shard::{EngineHandle, PartitionInfo};
use futures_channel::oneshot;

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
        self.create_topic_with(name, partitions, config, None).await
    }

    /// Creates a topic with `partitions` partitions of which this node holds only `held`
    /// (a node of a cluster holds the partitions placed on it): only their directories are
    /// made and only their logs opened. The others are the topic's all the same (routing
    /// knows them; this engine has no log for them). `held` must name at least one partition.
    pub async fn create_topic_holding(
        &self,
        name: &str,
        partitions: u32,
        config: LogConfig,
        held: &[u32],
    ) -> Result<TopicInfo> {
        if held.is_empty() || held.iter().any(|&p| p >= partitions) {
            return Err(Error::InvalidArgument(format!(
                "topic {name}: the partitions held here ({held:?}) must be some of its \
                 {partitions}"
            )));
        }
        self.create_topic_with(name, partitions, config, Some(held))
            .await
    }

    async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        config: LogConfig,
        held: Option<&[u32]>,
    ) -> Result<TopicInfo> {
        check_new_topic(name, partitions, &config)?;
        self.topics().add(name, partitions, &config, held)?;
        let opened = match held {
            Some(h) => self.open_partitions(name, h, &config).await,
            None => {
                let all: Vec<u32> = (0..partitions).collect();
                self.open_partitions(name, &all, &config).await
            }
        };
        self.publish_catalog().await?;
        opened?;
        Ok(TopicInfo {
            name: name.to_owned(),
            partitions,
            config,
        })
    }

    async fn open_partitions(
        &self,
        name: &str,
        partitions: &[u32],
        config: &LogConfig,
    ) -> Result<()> {
        for &p in partitions {
            self.open_on_owner(&PartitionId::new(name, p), config)
                .await?;
        }
        Ok(())
    }

    /// Opens the log of `id` on its owning shard (or finds it open).
    async fn open_on_owner(&self, id: &PartitionId, config: &LogConfig) -> Result<()> {
        let shard = self.shard_of(&id.topic, id.partition);
        match self.here().as_ref().filter(|c| c.index == shard) {
            Some(ctx) => ctx.open_log(id, config.clone()).await.map(|_| ()),
            None => {
                let (reply, rx) = oneshot::channel();
                let (id, config) = (id.clone(), config.clone());
                self.send_control(shard, ShardMsg::Open { id, config, reply })
                    .await?;
                rx.await.map_err(crate::shard::msg::gone)?
            }
        }
    }

    /// Closes the log of `id` on its owning shard, if it is open there.
    async fn close_on_owner(&self, id: &PartitionId) -> Result<()> {
        let shard = self.shard_of(&id.topic, id.partition);
        match self.here().as_ref().filter(|c| c.index == shard) {
            Some(ctx) => crate::shard::owner::close(ctx, id).await,
            None => {
                let (reply, rx) = oneshot::channel();
                let id = id.clone();
                self.send_control(shard, ShardMsg::Close { id, reply })
                    .await?;
                rx.await.map_err(crate::shard::msg::gone)?
            }
        }
    }

    /// The partitions of `topic` this node holds (see [`create_topic_holding`]
    /// (Self::create_topic_holding)), ascending: from the calling shard's copy of the
    /// catalog when called on a shard.
    pub fn held_partitions(&self, topic: &str) -> Result<Vec<u32>> {
        match self.here() {
            Some(ctx) => ctx.with_catalog(|c| c.entry(topic).map(|t| t.held_partitions())),
            None => self.topics().held(topic),
        }
    }

    /// Makes this node hold partition `partition` of `topic` (a replica of it placed here
    /// after the topic was created): its directory is made with its mark (or, there already,
    /// its data kept from an earlier time it was held here is reopened: marked lost if its
    /// mark is gone, the directory emptied), its log opened on its owning shard, and then the
    /// catalog records it held, so that it opens at every start. Held already, its log is
    /// opened if it is not open. The directory is made all or nothing (built aside, marked,
    /// then moved to its name: `catalog::create_partition_dir`), so a creation that
    /// fails or that a crash cuts short leaves no directory that the next call would open
    /// lost.
    pub async fn open_partition(&self, topic: &str, partition: u32) -> Result<()> {
        let config = self.topics().get(topic)?.config;
        self.topics().check_partition(topic, partition)?;
        let id = PartitionId::new(topic, partition);
        if self.topics().held(topic)?.contains(&partition) {
            return self.open_on_owner(&id, &config).await;
        }
        // A tombstone of an earlier removal (`close_partition`) is never taken for data kept:
        // it is swept first, and what decides below is the partition's own directory alone.
        if let Err(e) = crate::catalog::sweep_tombstones(&topic_dir(self.data_dir(), topic)) {
            log::warn!("partition {id}: removing partition directories being removed: {e}");
        }
        let made = crate::catalog::create_partition_dir(self.data_dir(), topic, partition)?;
        if !made {
            log::info!(
                "partition {id}: held here again; opening the data kept in {}",
                crate::catalog::partition_dir(self.data_dir(), topic, partition).display()
            );
        }
        self.open_on_owner(&id, &config).await?;
        if let Err(e) = self.topics().set_held(topic, partition, true) {
            // Not recorded: it must not stay open unrecorded (it would not open at start).
            let _ = self.close_on_owner(&id).await;
            return Err(e);
        }
        self.publish_catalog().await
    }

    /// Makes this node no longer hold partition `partition` of `topic` (no replica of it is
    /// placed here any more): its log is closed, the catalog records it not held (it no
    /// longer opens at start), and, with `remove_data`, its directory is removed; without,
    /// the directory stays as it is (opened again if the partition is held here again). The
    /// topic and its other partitions stay.
    ///
    /// A removal is all or nothing as any later open sees it: the directory is renamed to its
    /// tombstone (`<partition>.removing`, see [`crate::catalog::removing_dir`]) and the rename
    /// made durable before the catalog changes, and only then is the tombstone deleted. A
    /// partition still held whose directory is gone (a crash between the rename and the
    /// catalog) opens marked lost at the next start; one no longer held left only a
    /// tombstone, swept at start and before the partition is opened again, so placed here
    /// again it opens empty, never from a directory half removed. A failure before the
    /// catalog changes (closing the log, the rename) returns the error and leaves the
    /// partition held, so the call can be made again: the log already closed is fine, and a
    /// directory already renamed away is taken as moved. A tombstone that cannot be deleted
    /// is logged and left to the next sweep; the call succeeds.
    pub async fn close_partition(
        &self,
        topic: &str,
        partition: u32,
        remove_data: bool,
    ) -> Result<()> {
        self.topics().check_partition(topic, partition)?;
        let id = PartitionId::new(topic, partition);
        self.close_on_owner(&id).await?;
        let tombstone = if remove_data {
            self.move_away(topic, partition)?
        } else {
            None
        };
        let changed = self.topics().set_held(topic, partition, false);
        self.publish_catalog().await?;
        changed?;
        if let Some(tomb) = tombstone {
            let removed = crate::catalog::remove_tombstone(&tomb)
                .and_then(|_| crate::meta::sync_dir(&topic_dir(self.data_dir(), topic)));
            if let Err(e) = removed {
                log::warn!(
                    "partition {id}: no longer held here, its directory renamed away: {e} \
                     (removed at the next start, or when the partition is opened again)"
                );
            }
        }
        Ok(())
    }

    /// Renames the directory of a closed partition to its tombstone and syncs the topic
    /// directory, so that nothing opens it again as the partition's: returns the tombstone,
    /// or `None` when there was no directory (removed already, or renamed away by an earlier
    /// call that failed after the rename). A tombstone of an earlier removal of the partition
    /// is deleted first (the rename cannot replace a directory that holds files).
    fn move_away(&self, topic: &str, partition: u32) -> Result<Option<std::path::PathBuf>> {
        let dir = crate::catalog::partition_dir(self.data_dir(), topic, partition);
        let tomb = crate::catalog::removing_dir(self.data_dir(), topic, partition);
        crate::catalog::remove_tombstone(&tomb)?;
        match std::fs::rename(&dir, &tomb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("renaming to be removed", &dir, e)),
        }
        crate::meta::sync_dir(&topic_dir(self.data_dir(), topic))?;
        Ok(Some(tomb))
    }

    /// Changes a topic's retention limits (bytes, milliseconds; 0: none): recorded in the
    /// catalog (so that its partitions open with them), then given to every partition held
    /// here, each of which applies them at once. Returns the topic's settings then.
    pub async fn set_retention(&self, name: &str, bytes: u64, ms: u64) -> Result<TopicInfo> {
        let info = self.topics().set_retention(name, bytes, ms)?;
        self.publish_catalog().await?;
        for p in self.topics().held(name)? {
            let id = PartitionId::new(name, p);
            let shard = self.shard_of(name, p);
            match self.here().as_ref().filter(|c| c.index == shard) {
                Some(ctx) => crate::shard::owner::set_retention(ctx, &id, bytes, ms).await?,
                None => {
                    let (reply, rx) = oneshot::channel();
                    let msg = ShardMsg::SetRetention {
                        id,
                        bytes,
                        ms,
                        reply,
                    };
                    self.send_control(shard, msg).await?;
                    rx.await.map_err(crate::shard::msg::gone)??;
                }
            }
        }
        Ok(info)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let partitions = self.topics().partitions(name)?;
        let removed = self.remove_topic_data(name, partitions).await;
        self.publish_catalog().await?;
        removed
    }

    async fn remove_topic_data(&self, name: &str, partitions: u32) -> Result<()> {
        let here = self.here();
        for p in 0..partitions {
            let id = PartitionId::new(name, p);
            let shard = self.shard_of(name, p);
            match here.as_ref().filter(|c| c.index == shard) {
                Some(ctx) => crate::shard::owner::remove(ctx, &id).await?,
                None => {
                    let (reply, rx) = oneshot::channel();
                    self.send_control(shard, ShardMsg::Remove { id, reply })
                        .await?;
                    rx.await.map_err(crate::shard::msg::gone)??;
                }
            }
        }
        let dir = topic_dir(self.data_dir(), name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        self.topics().remove(name)
    }

    /// Replaces every shard's copy of the catalog with the catalog as it is now, and waits
    /// until each has it.
    async fn publish_catalog(&self) -> Result<()> {
        let catalog = self.topics().snapshot()?;
        let here = self.here();
        let mut acks = Vec::with_capacity(self.shards());
        for shard in 0..self.shards() {
            match here.as_ref().filter(|c| c.index == shard) {
                Some(ctx) => ctx.set_catalog(catalog.clone()),
                None => {
                    let (done, rx) = oneshot::channel();
                    let msg = ShardMsg::CatalogChanged {
                        catalog: catalog.clone(),
                        done,
                    };
                    self.send_control(shard, msg).await?;
                    acks.push(rx);
                }
            }
        }
        for ack in acks {
            ack.await.map_err(crate::shard::msg::gone)?;
        }
        Ok(())
    }

    /// Every topic: from the calling shard's copy of the catalog when called on a shard.
    pub fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        match self.here() {
            Some(ctx) => Ok(ctx.with_catalog(|c| c.list())),
            None => self.topics().list(),
        }
    }

    /// One topic: from the calling shard's copy of the catalog when called on a shard.
    pub fn topic(&self, name: &str) -> Result<TopicInfo> {
        match self.here() {
            Some(ctx) => ctx.with_catalog(|c| c.info(name)),
            None => self.topics().get(name),
        }
    }

    /// Each partition of a topic this node holds, with its offsets and size.
    pub async fn describe_topic(&self, name: &str) -> Result<Vec<PartitionInfo>> {
        let held = self.held_partitions(name)?;
        let mut out = Vec::with_capacity(held.len());
        for p in held {
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
