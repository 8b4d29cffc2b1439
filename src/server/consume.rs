//! `Consume`: the record at one offset; OUT_OF_RANGE outside the log.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{ConsumeRequest, ConsumeResponse};

use super::acl::Action;
use super::error::{out_of_range, to_status};
use super::reader;
use super::records;
use super::state::ShardState;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<ConsumeRequest>,
) -> Result<ConsumeResponse, Status> {
    state.authorize(&req, Action::Consume, Some(&req.message.topic))?;
    let id = records::partition_id(&req.message.topic, req.message.partition);
    reader::read_point(&state, &req, &id).await?;
    let r = req.message;
    // One record, at most the topic's largest: reserved before the read (see `reader`).
    let max_record = state
        .topics
        .topic(&id.topic)
        .map_err(to_status)?
        .config
        .max_record_bytes;
    let mut lease = reader::reserve_read(&req.memory, 1, max_record).await;
    let (mut recs, _) = reader::read_chunk(
        &state,
        &id,
        r.offset,
        1,
        1,
        reader::PastEnd::OutOfRange,
        &mut lease,
    )
    .await?;
    // Empty only at the visible end, which is out of range for a one-record read.
    let record = recs.pop().ok_or_else(|| out_of_range(r.offset))?;
    Ok(ConsumeResponse {
        record: Some(records::to_wire(record)),
    })
}
