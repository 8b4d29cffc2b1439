//! Between wire records and the seam's: encoding requests into batches and stored records
//! into responses, on the connection's core.

use engine::seam::{self, BatchBuilder, EncodedBatch, PartitionId};
use net::Status;
use proto::log::v1 as pb;

use super::error::to_status;

/// Adds a wire record to a batch. Offset, term and timestamp are the server's to assign.
pub fn push(b: &mut BatchBuilder, r: &pb::Record) -> Result<(), Status> {
    b.push(&r.value, r.r#type).map_err(to_status)
}

/// Wire records as one encoded batch (an empty list is INVALID_ARGUMENT), built in one
/// allocation of the batch's exact size.
pub fn encode<'a, I>(records: I) -> Result<EncodedBatch, Status>
where
    I: IntoIterator<Item = &'a pb::Record>,
    I::IntoIter: Clone,
{
    let records = records.into_iter();
    let len = records.clone().fold(0usize, |n, r| {
        n.saturating_add(seam::encoded_record_len(r.value.len()))
    });
    let mut b = BatchBuilder::with_capacity(len);
    for r in records {
        push(&mut b, r)?;
    }
    b.finish().map_err(to_status)
}

pub fn to_wire(r: seam::Record) -> pb::Record {
    pb::Record {
        value: r.value,
        offset: r.offset,
        term: r.term,
        r#type: r.rtype,
        // Stored as i64 by the engine; a clock before 1970 reads as 0.
        timestamp_ms: u64::try_from(r.timestamp_ms).unwrap_or(0),
    }
}

pub fn required(r: Option<pb::Record>) -> Result<pb::Record, Status> {
    r.ok_or_else(|| Status::invalid_argument("ProduceRequest.record is required"))
}

/// The partition a request names (`""` is the default topic).
pub fn partition_id(topic: &str, partition: u32) -> PartitionId {
    PartitionId::new(pb::topic_or_default(topic), partition)
}
