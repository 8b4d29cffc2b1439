//! Conversions between wire records and engine records.

use net::Status;
use proto::log::v1 as pb;

/// A wire record as an append. Offset, term and timestamp are the server's to assign.
pub fn to_new(r: pb::Record) -> engine::NewRecord {
    engine::NewRecord {
        value: r.value,
        rtype: r.r#type,
    }
}

/// Back to the wire form, for a request that has to wait for the next batch.
pub fn from_new(r: engine::NewRecord) -> pb::Record {
    pb::Record {
        value: r.value,
        r#type: r.rtype,
        ..Default::default()
    }
}

pub fn to_wire(r: engine::Record) -> pb::Record {
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
