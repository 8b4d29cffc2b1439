//! `proglog consume`: ConsumeBatch up to the end (or a limit); with --follow, then
//! ConsumeBatchStream to tail the partition.

use std::process::ExitCode;

use clap::Args;
use proto::log::v1::{paths, ConsumeBatchRequest, ConsumeBatchResponse, Record};

use super::{json_value, Conn};

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
}

fn print(json: bool, r: &Record) {
    if json {
        let (key, value) = json_value(&r.value);
        let mut m = serde_json::Map::new();
        m.insert("offset".into(), r.offset.into());
        m.insert(key.into(), value);
        m.insert("timestamp_ms".into(), r.timestamp_ms.into());
        m.insert("type".into(), r.r#type.into());
        println!("{}", serde_json::Value::Object(m));
    } else {
        println!("{}\t{}", r.offset, String::from_utf8_lossy(&r.value));
    }
}

pub async fn run(a: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let ch = a.conn.connect().await?;
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
        let resp: ConsumeBatchResponse = ch
            .unary_prost(paths::CONSUME_BATCH, &request(offset), a.conn.opts())
            .await?;
        if resp.records.is_empty() {
            break;
        }
        for r in &resp.records {
            if done(r.offset) {
                return Ok(ExitCode::SUCCESS);
            }
            print(a.conn.json, r);
        }
        offset = resp.next_offset;
    }
    if !a.follow || done(offset) {
        return Ok(ExitCode::SUCCESS);
    }
    // Then everything appended later, as it arrives; no deadline.
    let mut stream = ch
        .server_streaming(
            paths::CONSUME_BATCH_STREAM,
            net::encode(&request(offset)),
            net::client::CallOptions::default(),
        )
        .await?;
    while let Some(resp) = stream.message_as::<ConsumeBatchResponse>().await? {
        for r in &resp.records {
            if done(r.offset) {
                return Ok(ExitCode::SUCCESS);
            }
            print(a.conn.json, r);
            // Stop at the limit now, not when a record past it arrives.
            if done(r.offset + 1) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
