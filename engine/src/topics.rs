//! Topic administration: the engine's topic operations (create, delete, list, describe) over
//! the catalog (`catalog::Topics`) and the shards that own the partitions.
//!
//! Creation makes the partitions' directories, writes the catalog, then opens the partitions
//! on their shards (a directory missing under a catalog entry is therefore lost data, not a
//! creation cut short); deletion removes the data first, then the catalog entry, so an
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
        check_new_topic(name, partitions, &config)?;
        self.topics().add(name, partitions, &config)?;
        let opened = self.open_partitions(name, partitions, &config).await;
        self.publish_catalog().await?;
        opened?;
        Ok(TopicInfo {
            name: name.to_owned(),
            partitions,
            config,
        })
    }

    async fn open_partitions(&self, name: &str, partitions: u32, config: &LogConfig) -> Result<()> {
        let here = self.here();
        for p in 0..partitions {
            let id = PartitionId::new(name, p);
            let shard = self.shard_of(name, p);
            match here.as_ref().filter(|c| c.index == shard) {
                Some(ctx) => {
                    ctx.open_log(&id, config.clone()).await?;
                }
                None => {
                    let (reply, rx) = oneshot::channel();
                    let config = config.clone();
                    self.send_control(shard, ShardMsg::Open { id, config, reply })
                        .await?;
                    rx.await.map_err(crate::shard::msg::gone)??;
                }
            }
        }
        Ok(())
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

    /// Replaces partition `partition` of `topic` by an empty log in a new directory (the
    /// topic and its other partitions stay): for a replica moved away from this node whose
    /// log failed or was lost. Its replication group opens again as a new, empty replica.
    pub async fn recreate_partition(&self, topic: &str, partition: u32) -> Result<()> {
        self.topics().check_partition(topic, partition)?;
        let id = PartitionId::new(topic, partition);
        let shard = self.shard_of(topic, partition);
        match self.here().as_ref().filter(|c| c.index == shard) {
            Some(ctx) => crate::shard::owner::recreate(ctx, &id).await,
            None => {
                let (reply, rx) = oneshot::channel();
                self.send_control(shard, ShardMsg::Recreate { id, reply })
                    .await?;
                rx.await.map_err(crate::shard::msg::gone)?
            }
        }
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
