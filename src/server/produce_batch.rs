//! `ProduceBatch`: many records appended atomically as one engine batch.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{topic_or_default, ProduceBatchRequest, ProduceBatchResponse};

use super::acl::Action;
use super::append;
use super::error::to_status;
use super::records;
use super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<ProduceBatchRequest>,
) -> Result<ProduceBatchResponse, Status> {
    state.authorize(&req, Action::Produce, Some(&req.message.topic))?;
    let r = req.message;
    let count = u32::try_from(r.records.len())
        .map_err(|_| Status::resource_exhausted("too many records in one batch"))?;
    // The engine rejects an empty batch as INVALID_ARGUMENT, which is what we want too.
    let batch = r.records.into_iter().map(records::to_new).collect();
    let a = append::append(
        &state.engine,
        topic_or_default(&r.topic),
        r.partition,
        batch,
    )
    .await
    .map_err(to_status)?;
    Ok(ProduceBatchResponse {
        base_offset: a.base_offset,
        last_offset: a.last_offset,
        count,
    })
}
