//! `ListTopics`.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{ListTopicsRequest, ListTopicsResponse};

use super::super::error::to_status;
use super::super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    _req: Request<ListTopicsRequest>,
) -> Result<ListTopicsResponse, Status> {
    let topics = state.engine.list_topics().map_err(to_status)?;
    Ok(ListTopicsResponse {
        names: topics.into_iter().map(|t| t.name).collect(),
    })
}
