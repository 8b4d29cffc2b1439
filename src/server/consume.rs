//! `Consume`: the record at one offset; OUT_OF_RANGE outside the log.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{topic_or_default, ConsumeRequest, ConsumeResponse};

use super::acl::Action;
use super::error::to_status;
use super::records;
use super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<ConsumeRequest>,
) -> Result<ConsumeResponse, Status> {
    state.authorize(&req, Action::Consume, Some(&req.message.topic))?;
    let r = req.message;
    let record = state
        .engine
        .read(topic_or_default(&r.topic), r.partition, r.offset)
        .await
        .map_err(to_status)?;
    Ok(ConsumeResponse {
        record: Some(records::to_wire(record)),
    })
}
