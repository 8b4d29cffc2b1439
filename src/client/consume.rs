//! `proglog consume`: ConsumeBatch up to the end (or a limit); with --follow, then
//! ConsumeBatchStream to tail the partition. Reads go to the partition's leader, or
//! round-robin over its followers with `--read-from followers`; a read that finds a node
//! gone is tried again on another from where it stopped (reads change nothing).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use net::Code;
use proglog_client::{ReadFrom, NO_LEADER_PAUSE};
use proto::log::v1::{
    paths, ConsumeBatchRequest, ConsumeBatchResponse, DescribeTopicRequest, DescribeTopicResponse,
    Record,
};

use super::{json_value, Conn};

/// Where reads go (`--read-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadFromArg {
    /// The partition's leader
    Leader,
    /// Round-robin over the partition's followers (committed records only; a follower may
    /// lag the leader briefly)
    Followers,
}

/// How long a tail (`--follow`) keeps looking for a server after its stream broke, without
/// receiving anything: about an election.
const TAIL_RETRY: Duration = Duration::from_secs(10);

/// A tail's stream that stayed open this long before it broke was healthy: the break starts
/// a fresh [`TAIL_RETRY`] (an idle tail is the normal case, and its budget must not be
/// spent while it waited). One that breaks sooner, without a record, spends the budget on.
const TAIL_HEALTHY: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Topic; empty means "default"
    #[arg(long, default_value = "")]
    pub topic: String,
    #[arg(long, default_value_t = 0)]
    pub partition: u32,
    /// First offset to read
    #[arg(long, default_value_t = 0, value_name = "OFFSET")]
    pub from: u64,
    /// Stop before this offset (exclusive)
    #[arg(long, value_name = "OFFSET", conflicts_with = "count")]
    pub to: Option<u64>,
    /// Stop after this many records
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// At the end of the log, wait for new records instead of exiting (like tail -f)
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Read from the partition's leader, or round-robin from its followers
    #[arg(long, value_enum, default_value = "leader", value_name = "FROM")]
    pub read_from: ReadFromArg,
}

/// How long an out-of-range read waits for a description of the partition to add to its
/// error.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first read's OUT_OF_RANGE, saying what the partition holds (from DescribeTopic, when
/// a node answers it).
async fn out_of_range(
    cluster: &proglog_client::Cluster,
    a: &ConsumeArgs,
    st: net::Status,
) -> anyhow::Error {
    let topic = proto::log::v1::topic_or_default(&a.topic);
    let deadline = Instant::now() + DESCRIBE_TIMEOUT;
    let described = async {
        let (_, ch) = cluster.any(deadline).await.ok()?;
        let resp: DescribeTopicResponse = ch
            .unary_prost(
                paths::DESCRIBE_TOPIC,
                &DescribeTopicRequest {
                    name: topic.to_string(),
                },
                net::client::CallOptions::timeout(DESCRIBE_TIMEOUT),
            )
            .await
            .ok()?;
        resp.topic?
            .partitions
            .into_iter()
            .find(|p| p.partition == a.partition)
    };
    match described.await {
        Some(p) if p.lowest_offset == p.next_offset => anyhow::anyhow!(
            "{st}: {topic}/{} is empty (its next offset is {})",
            a.partition,
            p.next_offset
        ),
        Some(p) => anyhow::anyhow!(
            "{st}: {topic}/{} holds offsets {} to {}",
            a.partition,
            p.lowest_offset,
            p.next_offset.saturating_sub(1)
        ),
        None => st.into(),
    }
}

fn print(json: bool, r: &Record) -> std::io::Result<()> {
    if json {
        let (key, value) = json_value(&r.value);
        let mut m = serde_json::Map::new();
        m.insert("offset".into(), r.offset.into());
        m.insert(key.into(), value);
        m.insert("timestamp_ms".into(), r.timestamp_ms.into());
        m.insert("type".into(), r.r#type.into());
        crate::out::outln!("{}", serde_json::Value::Object(m))?;
    } else {
        crate::out::outln!("{}\t{}", r.offset, String::from_utf8_lossy(&r.value))?;
    }
    Ok(())
}

pub async fn run(a: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let read_from = match a.read_from {
        ReadFromArg::Leader => ReadFrom::Leader,
        ReadFromArg::Followers => ReadFrom::Followers,
    };
    if let Some(to) = a.to.filter(|&to| to < a.from) {
        anyhow::bail!("--to {to} is before --from {}: nothing to read", a.from);
    }
    let cluster = a.conn.cluster(read_from)?;
    let end = match (a.to, a.count) {
        (Some(to), _) => Some(to),
        (None, Some(n)) => Some(a.from.saturating_add(n)),
        (None, None) => None,
    };
    let done = |offset: u64| end.is_some_and(|e| offset >= e);
    let mut offset = a.from;
    let request = |offset| ConsumeBatchRequest {
        topic: a.topic.clone(),
        partition: a.partition,
        offset,
        max_records: 0,
        max_bytes: 0,
    };
    // What is there now.
    while !done(offset) {
        let resp = match cluster
            .consume_batch(&request(offset), a.conn.opts().timeout)
            .await
        {
            Ok(r) => r,
            Err(st) if st.code == Code::OutOfRange && offset == a.from => {
                return Err(out_of_range(&cluster, &a, st).await)
            }
            Err(st) => return Err(st.into()),
        };
        if resp.records.is_empty() {
            break;
        }
        for r in &resp.records {
            if done(r.offset) {
                return Ok(ExitCode::SUCCESS);
            }
            print(a.conn.json, r)?;
        }
        offset = resp.next_offset;
    }
    if !a.follow || done(offset) {
        return Ok(ExitCode::SUCCESS);
    }
    // Then everything appended later, as it arrives; no deadline. A broken stream is
    // opened again (on another node if need be) from the next offset, for up to TAIL_RETRY
    // from when it broke.
    let mut failing_since = Instant::now();
    loop {
        let (addr, ch) = cluster
            .reader(&a.topic, a.partition, failing_since + TAIL_RETRY)
            .await?;
        let opened_at = Instant::now();
        let opened = ch
            .server_streaming(
                paths::CONSUME_BATCH_STREAM,
                net::encode(&request(offset)),
                net::client::CallOptions::default(),
            )
            .await;
        let st = match opened {
            Err(st) => st,
            Ok(mut stream) => loop {
                match stream.message_as::<ConsumeBatchResponse>().await {
                    Ok(Some(resp)) => {
                        failing_since = Instant::now();
                        for r in &resp.records {
                            if done(r.offset) {
                                return Ok(ExitCode::SUCCESS);
                            }
                            print(a.conn.json, r)?;
                            offset = r.offset + 1;
                            // Stop at the limit now, not when a record past it arrives.
                            if done(offset) {
                                return Ok(ExitCode::SUCCESS);
                            }
                        }
                    }
                    Ok(None) => return Ok(ExitCode::SUCCESS),
                    Err(st) => break st,
                }
            },
        };
        cluster.report(&a.topic, a.partition, &addr, &st);
        if opened_at.elapsed() >= TAIL_HEALTHY {
            failing_since = Instant::now();
        }
        if st.code != Code::Unavailable || failing_since.elapsed() + NO_LEADER_PAUSE >= TAIL_RETRY {
            return Err(st.into());
        }
        glommio::timer::sleep(NO_LEADER_PAUSE).await;
    }
}
