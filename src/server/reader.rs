//! Reading for the consume RPCs: bounded chunks, and waiting at the end of a partition.
//!
//! The partition's owner hands back whole stored batches; they are checked (CRC) and decoded
//! here, on the connection's core, as the responses are encoded.
//!
//! Every read is paid for before it happens: [`reserve_read`] takes memory from the
//! connection's share of the server's budget (waiting while it is used up, which is how a
//! stream whose client does not read stops being fed), sized for the stored batches read and
//! the response encoded from them; once the read returns, [`read_chunk`] settles the lease to
//! what it brought (the stored bytes, which the records' values share, and their encoding).

use std::rc::Rc;

use engine::seam::{PartitionId, ReadLimits, Record};
use net::memory::{ConnMemory, Lease};
use net::server::Request;
use net::Status;

pub use engine::seam::PastEnd;

use super::error::to_status;
use super::state::{AppState, ShardState};
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

/// The request header with which a client asks for a linearizable read (value
/// [`LINEARIZABLE`]; `default`, or no header, is the default read).
pub const READ_CONSISTENCY_HEADER: &str = "proglog-read-consistency";
pub const LINEARIZABLE: &str = "linearizable";

/// Honours [`READ_CONSISTENCY_HEADER`] before a read of `id`: for a linearizable read, waits
/// until every record acknowledged anywhere before the call is visible on this node (the
/// partition leader's commit index, learnt through Raft's ReadIndex, applied here), on a
/// leader and a follower alike; UNAVAILABLE when no leader confirms it in time. A default
/// read already sees every committed offset it asks for (a read past this node's visible end
/// asks the leader's commit index); what a linearizable read adds is a stream's or a batch's
/// visible end (the high watermark) no older than the call.
pub async fn read_point<T>(
    state: &ShardState,
    req: &Request<T>,
    id: &PartitionId,
) -> Result<(), Status> {
    let Some(v) = req.metadata.get(READ_CONSISTENCY_HEADER) else {
        return Ok(());
    };
    match v.to_str().map(str::trim) {
        Ok(LINEARIZABLE) => state
            .partitions
            .read_barrier(id)
            .await
            .map(|_| ())
            .map_err(to_status),
        Ok("default") => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "{READ_CONSISTENCY_HEADER}: {v:?} is not a read consistency: `{LINEARIZABLE}` or \
             `default`"
        ))),
    }
}

/// Records from `offset` and the partition's visible end, in one trip to the owning shard.
/// At the end of the log the list is empty; before its start is OUT_OF_RANGE, and so is past
/// its end under [`PastEnd::OutOfRange`]. `lease` was reserved for the read
/// ([`reserve_read`]); it is settled to what the read brought (see [`settle`]).
pub async fn read_chunk(
    state: &ShardState,
    id: &PartitionId,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
    past_end: PastEnd,
    lease: &mut Lease,
) -> Result<(Vec<Record>, u64), Status> {
    let limits = ReadLimits {
        max_records,
        max_bytes,
        past_end,
    };
    let mut chunk = state
        .partitions
        .read(id, offset, limits)
        .await
        .map_err(to_status)?;
    let records = match chunk.records().collect::<Result<Vec<_>, _>>() {
        Ok(records) => records,
        // Damaged bytes are never served: read again where a healthy copy is (another
        // replica), or DATA_LOSS.
        Err(damage) => {
            chunk = state
                .partitions
                .read_past_damage(id, &chunk, damage)
                .await
                .map_err(to_status)?;
            chunk
                .records()
                .collect::<Result<Vec<_>, _>>()
                .map_err(to_status)?
        }
    };
    settle(lease, chunk.stored_len(), &records);
    Ok((records, chunk.visible_end))
}

/// Reserves memory for a read of up to `max_records` records and `max_bytes` value bytes:
/// twice its size, once for the stored batches read and once for the response encoded from
/// them.
pub async fn reserve_read(memory: &Rc<ConnMemory>, max_records: usize, max_bytes: usize) -> Lease {
    let bytes = max_bytes.saturating_add(max_records.saturating_mul(RECORD_OVERHEAD_BYTES));
    memory.reserve(bytes.saturating_mul(2)).await
}

/// Sets a read's lease to what the read brought: the stored bytes (the records' values are
/// slices of them, so they live as long as any record does) and the response encoded from
/// the records. Whole batches may bring more than was reserved (a read returns at least one
/// batch); the difference exists already, so it is charged without waiting.
fn settle(lease: &mut Lease, stored: usize, records: &[Record]) {
    let encoded: usize = records
        .iter()
        .map(|r| r.value.len() + RECORD_OVERHEAD_BYTES)
        .sum();
    let cost = stored.saturating_add(encoded);
    if cost > lease.bytes() {
        lease.charge_more(cost - lease.bytes());
    } else {
        lease.shrink_to(cost);
    }
}

/// Waits until readers may see `offset`: woken by the partition's owner, no polling.
/// UNAVAILABLE when the partition closes (shutdown, deletion): retrying would spin.
pub async fn wait_for(state: &ShardState, id: &PartitionId, offset: u64) -> Result<(), Status> {
    state
        .partitions
        .wait_for(id, offset)
        .await
        .map(|_| ())
        .map_err(to_status)
}

/// Records from `offset` for a tailing reader: waits (woken by the owner, no polling) until
/// there is at least one, then returns them with the partition's visible end and the memory
/// they hold (reserved before each read, and not held while waiting for records).
pub async fn next_chunk(
    state: &ShardState,
    memory: &Rc<ConnMemory>,
    id: &PartitionId,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<(Vec<Record>, u64, Lease), Status> {
    loop {
        let mut lease = reserve_read(memory, max_records, max_bytes).await;
        let (recs, end) = read_chunk(
            state,
            id,
            offset,
            max_records,
            max_bytes,
            PastEnd::Empty,
            &mut lease,
        )
        .await?;
        if !recs.is_empty() {
            return Ok((recs, end, lease));
        }
        drop(lease);
        wait_for(state, id, offset).await?;
    }
}
