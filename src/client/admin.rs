//! `proglog topics ...`: the Admin service.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use engine::Durability;
use proto::log::v1::{self as pb, paths};

use super::Conn;
use crate::config::ByteSize;

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic
    Create(CreateArgs),
    /// List topic names
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a topic's settings and each partition's offsets and size
    Describe {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// Change a topic's retention limits; its partitions apply them at once
    Alter(AlterArgs),
    /// Delete a topic and all its data
    Delete {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub name: String,
    /// Number of partitions, at least 1
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// always | interval:<ms> | never [default: the server's]
    #[arg(long, value_name = "POLICY")]
    pub durability: Option<Durability>,
    /// Segment size, 64KiB to 2GiB; a record must fit in one segment, so a smaller one also
    /// caps the topic's record size [default: the server's]
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<ByteSize>,
    /// Delete the oldest segments beyond this size: BYTES (units as 1GiB) or `unlimited`
    /// [default: unlimited]
    #[arg(long, value_name = "BYTES|unlimited", value_parser = retention_bytes)]
    pub retention_bytes: Option<u64>,
    /// Delete segments older than this: MS or `forever` [default: forever]
    #[arg(long, value_name = "MS|forever", value_parser = retention_ms)]
    pub retention_ms: Option<u64>,
    /// Copies of each partition, on distinct nodes, at least 1 [default: min(3, nodes)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true)
    .args(["retention_bytes", "retention_ms"])))]
pub struct AlterArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub name: String,
    /// Delete the oldest segments beyond this size: BYTES (units as 1GiB) or `unlimited`
    #[arg(long, value_name = "BYTES|unlimited", value_parser = retention_bytes)]
    pub retention_bytes: Option<u64>,
    /// Delete segments older than this: MS or `forever`
    #[arg(long, value_name = "MS|forever", value_parser = retention_ms)]
    pub retention_ms: Option<u64>,
}

/// A retention size: a byte count, or `unlimited` (0 on the wire, as is 0).
fn retention_bytes(s: &str) -> Result<u64, String> {
    match s.trim() {
        "unlimited" | "none" => Ok(0),
        s => s.parse::<ByteSize>().map(|b| b.0),
    }
}

/// A retention time: milliseconds, or `forever` (0 on the wire, as is 0).
fn retention_ms(s: &str) -> Result<u64, String> {
    match s.trim() {
        "forever" | "none" => Ok(0),
        s => s
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a number of milliseconds (or `forever`)")),
    }
}

fn wire_durability(d: Option<Durability>) -> (pb::Durability, u64) {
    match d {
        None => (pb::Durability::Unspecified, 0),
        Some(Durability::Always) => (pb::Durability::Always, 0),
        Some(Durability::Never) => (pb::Durability::Never, 0),
        Some(Durability::Interval { interval_ms }) => (pb::Durability::Interval, interval_ms),
    }
}

pub async fn run(cmd: TopicsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TopicsCommand::Create(a) => {
            let (durability, flush_interval_ms) = wire_durability(a.durability);
            let req = pb::CreateTopicRequest {
                name: a.name.clone(),
                config: Some(pb::TopicConfig {
                    partitions: a.partitions,
                    durability: durability as i32,
                    segment_bytes: a.segment_bytes.map_or(0, |b| b.0),
                    retention_bytes: a.retention_bytes.unwrap_or(0),
                    retention_ms: a.retention_ms.unwrap_or(0),
                    flush_interval_ms,
                    replication_factor: a.replication_factor.unwrap_or(0),
                }),
            };
            let resp: pb::CreateTopicResponse =
                a.conn.controller_call(paths::CREATE_TOPIC, &req).await?;
            match resp.topic {
                Some(t) => print_topic(a.conn.json, &t)?,
                None => crate::out::outln!("created {}", a.name)?,
            }
        }
        TopicsCommand::List { conn } => {
            let resp: pb::ListTopicsResponse = conn
                .ask_any(paths::LIST_TOPICS, &pb::ListTopicsRequest {})
                .await?;
            if conn.json {
                crate::out::outln!("{}", serde_json::json!({ "names": resp.names }))?;
            } else {
                for n in resp.names {
                    crate::out::outln!("{n}")?;
                }
            }
        }
        TopicsCommand::Describe { conn, name } => {
            let resp: pb::DescribeTopicResponse = conn
                .ask_any(paths::DESCRIBE_TOPIC, &pb::DescribeTopicRequest { name })
                .await?;
            if let Some(t) = resp.topic {
                print_topic(conn.json, &t)?;
            }
        }
        TopicsCommand::Alter(a) => {
            let req = pb::AlterTopicRequest {
                name: a.name.clone(),
                retention_bytes: a.retention_bytes,
                retention_ms: a.retention_ms,
            };
            let resp: pb::AlterTopicResponse =
                a.conn.controller_call(paths::ALTER_TOPIC, &req).await?;
            match resp.topic {
                Some(t) => print_topic(a.conn.json, &t)?,
                None => crate::out::outln!("altered {}", a.name)?,
            }
        }
        TopicsCommand::Delete { conn, name } => {
            let resp: pb::DeleteTopicResponse = conn
                .controller_call(
                    paths::DELETE_TOPIC,
                    &pb::DeleteTopicRequest { name: name.clone() },
                )
                .await?;
            if conn.json {
                crate::out::outln!(
                    "{}",
                    serde_json::json!({ "deleted": name, "not_yet_on": resp.not_yet_on })
                )?;
            } else {
                crate::out::outln!("deleted {name}")?;
            }
            if !resp.not_yet_on.is_empty() {
                eprintln!(
                    "warning: nodes {:?} hold replicas of {name} and had not learned of its \
                     deletion (down, or cut off from the others): until they do, they may \
                     still take appends to it, which go with the topic",
                    resp.not_yet_on
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn durability_text(c: &pb::TopicConfig) -> String {
    match pb::Durability::try_from(c.durability) {
        Ok(pb::Durability::Always) => "always".into(),
        Ok(pb::Durability::Never) => "never".into(),
        Ok(pb::Durability::Interval) => format!("interval:{}", c.flush_interval_ms),
        _ => "server default".into(),
    }
}

fn print_topic(json: bool, t: &pb::TopicDescription) -> std::io::Result<()> {
    let c = t.config.unwrap_or_default();
    if json {
        let parts: Vec<serde_json::Value> = t
            .partitions
            .iter()
            .map(|p| {
                serde_json::json!({
                    "partition": p.partition,
                    "lowest_offset": p.lowest_offset,
                    "next_offset": p.next_offset,
                    "size_bytes": p.size_bytes,
                    "write_state": write_state_text(p.write_state),
                })
            })
            .collect();
        crate::out::outln!(
            "{}",
            serde_json::json!({
                "name": t.name,
                "partitions": c.partitions,
                "replication_factor": c.replication_factor,
                "durability": durability_text(&c),
                "segment_bytes": c.segment_bytes,
                "retention_bytes": c.retention_bytes,
                "retention_ms": c.retention_ms,
                "partition_stats": parts,
            })
        )?;
        return Ok(());
    }
    crate::out::outln!(
        "topic {}: {} partition(s), replication factor {}, durability {}, segment-bytes {}, retention-bytes {}, retention-ms {}",
        t.name,
        c.partitions,
        match c.replication_factor {
            0 => "-".to_owned(),
            rf => rf.to_string(),
        },
        durability_text(&c),
        c.segment_bytes,
        match c.retention_bytes {
            0 => "unlimited".to_owned(),
            b => b.to_string(),
        },
        match c.retention_ms {
            0 => "forever".to_owned(),
            ms => ms.to_string(),
        }
    )?;
    crate::out::outln!("partition\tlowest\tnext\tsize-bytes\twrites")?;
    for p in &t.partitions {
        crate::out::outln!(
            "{}\t{}\t{}\t{}\t{}",
            p.partition,
            p.lowest_offset,
            p.next_offset,
            p.size_bytes,
            write_state_text(p.write_state)
        )?;
    }
    Ok(())
}

/// A partition's write state as the CLI shows it.
fn write_state_text(state: i32) -> &'static str {
    match pb::PartitionWriteState::try_from(state) {
        Ok(pb::PartitionWriteState::Writable) => "writable",
        Ok(pb::PartitionWriteState::DiskFull) => "disk-full",
        Ok(pb::PartitionWriteState::Latched) => "latched",
        Ok(pb::PartitionWriteState::Lost) => "lost",
        Ok(pb::PartitionWriteState::NoLeader) => "no-leader",
        Err(_) => "unknown",
    }
}
