//! `ConsumeBatch`: up to max_records / max_bytes from an offset, with the high watermark.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{topic_or_default, ConsumeBatchRequest, ConsumeBatchResponse};

use super::acl::Action;
use super::reader;
use super::records;
use super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<ConsumeBatchRequest>,
) -> Result<ConsumeBatchResponse, Status> {
    state.authorize(&req, Action::Consume, Some(&req.message.topic))?;
    let r = req.message;
    let (max_records, max_bytes) = reader::limits(&state, r.max_records, r.max_bytes);
    let (recs, high_watermark) = reader::read_chunk(
        &state,
        topic_or_default(&r.topic),
        r.partition,
        r.offset,
        max_records,
        max_bytes,
        reader::PastEnd::OutOfRange,
    )
    .await?;
    Ok(response(recs, r.offset, high_watermark))
}

pub fn response(
    recs: Vec<engine::Record>,
    offset: u64,
    high_watermark: u64,
) -> ConsumeBatchResponse {
    let next_offset = recs.last().map_or(offset, |r| r.offset + 1);
    ConsumeBatchResponse {
        records: recs.into_iter().map(records::to_wire).collect(),
        next_offset,
        high_watermark,
    }
}
