//! `ListTopics`.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{ListTopicsRequest, ListTopicsResponse};

use super::super::error::to_status;
use super::super::state::AppState;
use crate::server::acl::Action;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<ListTopicsRequest>,
) -> Result<ListTopicsResponse, Status> {
    state.authorize(&req, Action::Admin, None)?;
    let topics = state.engine.list_topics().map_err(to_status)?;
    Ok(ListTopicsResponse {
        names: topics.into_iter().map(|t| t.name).collect(),
    })
}
