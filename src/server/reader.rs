//! Reading for the consume RPCs: bounded chunks, and waiting at the end of a partition.

use engine::Record;
use net::Status;

use super::error::to_status;
use super::state::AppState;
use crate::limits::{
    READ_DEFAULT_BYTES, READ_DEFAULT_RECORDS, READ_MAX_RECORDS, RECORD_OVERHEAD_BYTES,
};

/// Bounds of one read: records and value bytes, so that a whole response fits in one gRPC
/// message whatever the client asks for. 0 means the default.
pub fn limits(state: &AppState, max_records: u32, max_bytes: u32) -> (usize, usize) {
    let records_cap =
        (state.max_message_bytes / (2 * RECORD_OVERHEAD_BYTES)).clamp(1, READ_MAX_RECORDS);
    let bytes_cap = state
        .max_message_bytes
        .saturating_sub(records_cap * RECORD_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES)
        .max(1);
    let pick = |asked: u32, default: usize, cap: usize| match asked {
        0 => default.min(cap),
        n => (n as usize).min(cap),
    };
    (
        pick(max_records, READ_DEFAULT_RECORDS, records_cap),
        pick(max_bytes, READ_DEFAULT_BYTES, bytes_cap),
    )
}

/// What a read does at and past the end of the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PastEnd {
    /// Offsets after the next one are OUT_OF_RANGE (one-shot reads).
    OutOfRange,
    /// Offsets after the next one read as empty: a tailing reader waits for them.
    Empty,
}

/// Records from `offset` and the partition's next offset, in one trip to the owning shard.
/// At the end of the log the list is empty; before its start is OUT_OF_RANGE.
pub async fn read_chunk(
    state: &AppState,
    topic: &str,
    partition: u32,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
    past_end: PastEnd,
) -> Result<(Vec<Record>, u64), Status> {
    state
        .engine
        .with_log(topic, partition, move |log| async move {
            let next = log.readable_next();
            let at_end = match past_end {
                PastEnd::OutOfRange => offset == next,
                PastEnd::Empty => offset >= next,
            };
            if at_end && offset >= log.lowest_offset() {
                return Ok((Vec::new(), next));
            }
            let records = log.read_range(offset, max_records, max_bytes).await?;
            Ok((records, log.readable_next()))
        })
        .await
        .map_err(to_status)
}

/// Waits until the partition holds `offset`: woken by the append, no polling.
pub async fn wait_for(
    state: &AppState,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<(), Status> {
    let next = state
        .engine
        .wait_for(topic, partition, offset)
        .await
        .map_err(to_status)?;
    if next <= offset {
        // wait_for also returns when the log closes (shutdown, deletion): retrying would spin.
        return Err(Status::unavailable(format!(
            "partition {topic}/{partition} closed"
        )));
    }
    Ok(())
}

/// Records from `offset` for a tailing reader: waits (woken by the log, no polling) until
/// there is at least one, then returns them with the partition's readable end.
pub async fn next_chunk(
    state: &AppState,
    topic: &str,
    partition: u32,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<(Vec<Record>, u64), Status> {
    loop {
        let (recs, end) = read_chunk(
            state,
            topic,
            partition,
            offset,
            max_records,
            max_bytes,
            PastEnd::Empty,
        )
        .await?;
        if !recs.is_empty() {
            return Ok((recs, end));
        }
        wait_for(state, topic, partition, offset).await?;
    }
}
