//! Topic administration: the engine's topic operations (create, delete, list, describe) over
//! the catalog (`catalog::Topics`) and the shards that own the partitions.
//!
//! Creation writes the catalog first, then opens the partitions on their shards; deletion
//! removes the data first, then the catalog entry, so an interrupted deletion never lets a new
//! topic of the same name see old data.

use crate::catalog::{self, topic_dir, TopicInfo};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::limits::MAX_PARTITIONS;
use crate::shard::{EngineHandle, PartitionInfo};

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
