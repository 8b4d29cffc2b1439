//! `log.v1.Admin`: topic administration and cluster membership, one file per RPC.

pub mod alter_topic;
pub mod create_topic;
pub mod delete_topic;
pub mod describe_cluster;
pub mod describe_topic;
pub mod list_members;
pub mod list_topics;
pub mod remove_node;

use engine::seam::{Durability, PartitionId, TopicConfig, Writability};
use net::Status;
use proto::log::v1::{self as pb, PartitionDescription, PartitionWriteState, TopicDescription};

use super::error::to_status;
use super::state::ShardState;

/// Interval used when a topic asks for interval durability without saying how often and the
/// server's default policy is not an interval.
const DEFAULT_FLUSH_INTERVAL_MS: u64 = 100;

/// Wire settings over the server's defaults: 0 and UNSPECIFIED keep the default.
pub fn log_config(defaults: &TopicConfig, c: &pb::TopicConfig) -> Result<TopicConfig, Status> {
    let mut out = defaults.clone();
    let default_interval = match defaults.durability {
        Durability::Interval { interval_ms } => interval_ms,
        _ => DEFAULT_FLUSH_INTERVAL_MS,
    };
    out.durability = match pb::Durability::try_from(c.durability) {
        Ok(pb::Durability::Unspecified) => match (defaults.durability, c.flush_interval_ms) {
            (Durability::Interval { .. }, ms) if ms > 0 => Durability::Interval { interval_ms: ms },
            (d, _) => d,
        },
        Ok(pb::Durability::Always) => Durability::Always,
        Ok(pb::Durability::Never) => Durability::Never,
        Ok(pb::Durability::Interval) => Durability::Interval {
            interval_ms: if c.flush_interval_ms > 0 {
                c.flush_interval_ms
            } else {
                default_interval
            },
        },
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown durability {}",
                c.durability
            )))
        }
    };
    if c.segment_bytes > 0 {
        out.segment_bytes = c.segment_bytes;
        // A smaller segment caps the topic's batch and record sizes rather than refusing
        // the topic (a batch never spans two segments): a record larger than what fits in
        // one of its segments is refused at produce, naming the limit.
        out.fit_to_segment();
    }
    if c.retention_bytes > 0 {
        out.retention_bytes = c.retention_bytes;
    }
    if c.retention_ms > 0 {
        out.retention_ms = c.retention_ms;
    }
    out.validate().map_err(Status::invalid_argument)?;
    Ok(out)
}

pub fn wire_config(partitions: u32, c: &TopicConfig) -> pb::TopicConfig {
    let (durability, flush_interval_ms) = match c.durability {
        Durability::Always => (pb::Durability::Always, 0),
        Durability::Never => (pb::Durability::Never, 0),
        Durability::Interval { interval_ms } => (pb::Durability::Interval, interval_ms),
    };
    pb::TopicConfig {
        partitions,
        durability: durability as i32,
        segment_bytes: c.segment_bytes,
        retention_bytes: c.retention_bytes,
        retention_ms: c.retention_ms,
        flush_interval_ms,
        replication_factor: 0,
    }
}

fn write_state(w: &Writability) -> PartitionWriteState {
    match w {
        Writability::Writable => PartitionWriteState::Writable,
        Writability::DiskFull { .. } => PartitionWriteState::DiskFull,
        Writability::Latched { .. } => PartitionWriteState::Latched,
        Writability::Lost => PartitionWriteState::Lost,
        Writability::NoLeader => PartitionWriteState::NoLeader,
    }
}

/// A topic's settings and each partition's offsets, size and write state.
pub async fn describe(state: &ShardState, name: &str) -> Result<TopicDescription, Status> {
    let info = state.topics.topic(name).map_err(to_status)?;
    let mut partitions = Vec::with_capacity(info.partitions as usize);
    for p in 0..info.partitions {
        let s = state
            .partitions
            .describe(&PartitionId::new(name, p))
            .await
            .map_err(to_status)?;
        partitions.push(PartitionDescription {
            partition: p,
            lowest_offset: s.lowest_offset,
            // What a reader can get: the visible end (committed, in a cluster), not the
            // log's end, which may hold entries not committed yet (or never).
            next_offset: s.visible_end,
            size_bytes: s.size_bytes,
            write_state: write_state(&s.writable) as i32,
        });
    }
    let mut config = wire_config(info.partitions, &info.config);
    // The registry's factor (the `default` topic's rises with the cluster).
    config.replication_factor = state.cluster.replication_factor_of(&info.name).unwrap_or(0);
    Ok(TopicDescription {
        name: info.name,
        config: Some(config),
        partitions,
    })
}
