//! `ProduceBatch`: many records appended atomically as one batch.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{ProduceBatchRequest, ProduceBatchResponse};

use super::acl::Action;
use super::append;
use super::error::to_status;
use super::records;
use super::state::ShardState;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<ProduceBatchRequest>,
) -> Result<ProduceBatchResponse, Status> {
    state.authorize(&req, Action::Produce, Some(&req.message.topic))?;
    let r = req.message;
    let id = records::partition_id(&r.topic, r.partition);
    let count = u32::try_from(r.records.len())
        .map_err(|_| Status::resource_exhausted("too many records in one batch"))?;
    if count == 0 {
        // An unknown partition is named before the empty batch, as it always was.
        state.partitions.describe(&id).await.map_err(to_status)?;
    }
    // An empty batch is INVALID_ARGUMENT.
    let batch = records::encode(&r.records)?;
    let a = append::append(&*state.partitions, &id, batch).await?;
    Ok(ProduceBatchResponse {
        base_offset: a.base_offset,
        last_offset: a.last_offset,
        count,
    })
}
