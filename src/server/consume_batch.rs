//! `ConsumeBatch`: up to max_records / max_bytes from an offset, with the high watermark.

use std::rc::Rc;

use engine::seam::Record;
use net::server::Request;
use net::Status;
use proto::log::v1::{ConsumeBatchRequest, ConsumeBatchResponse};

use super::acl::Action;
use super::reader;
use super::records;
use super::state::ShardState;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<ConsumeBatchRequest>,
) -> Result<ConsumeBatchResponse, Status> {
    state.authorize(&req, Action::Consume, Some(&req.message.topic))?;
    let id = records::partition_id(&req.message.topic, req.message.partition);
    reader::read_point(&state, &req, &id).await?;
    let r = req.message;
    let (max_records, max_bytes) = reader::limits(&state, r.max_records, r.max_bytes);
    // Held until the reply is encoded; the frame is charged on its own from then.
    let mut lease = reader::reserve_read(&req.memory, max_records, max_bytes).await;
    let (recs, high_watermark) = reader::read_chunk(
        &state,
        &id,
        r.offset,
        max_records,
        max_bytes,
        reader::PastEnd::OutOfRange,
        &mut lease,
    )
    .await?;
    Ok(response(recs, r.offset, high_watermark))
}

pub fn response(recs: Vec<Record>, offset: u64, high_watermark: u64) -> ConsumeBatchResponse {
    let next_offset = recs.last().map_or(offset, |r| r.offset + 1);
    ConsumeBatchResponse {
        records: recs.into_iter().map(records::to_wire).collect(),
        next_offset,
        high_watermark,
    }
}
