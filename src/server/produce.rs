//! `Produce`: append one record, reply with its offset once durable per the topic's policy.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{topic_or_default, ProduceRequest, ProduceResponse};

use super::acl::Action;
use super::append;
use super::error::to_status;
use super::records;
use super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<ProduceRequest>,
) -> Result<ProduceResponse, Status> {
    state.authorize(&req, Action::Produce, Some(&req.message.topic))?;
    let r = req.message;
    let record = records::to_new(records::required(r.record)?);
    let appended = append::append(
        &state.engine,
        topic_or_default(&r.topic),
        r.partition,
        vec![record],
    )
    .await
    .map_err(to_status)?;
    Ok(ProduceResponse {
        offset: appended.base_offset,
    })
}
