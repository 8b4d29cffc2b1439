//! `ListTopics`.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{ListTopicsRequest, ListTopicsResponse};

use super::super::error::to_status;
use super::super::state::ShardState;
use crate::server::acl::Action;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<ListTopicsRequest>,
) -> Result<ListTopicsResponse, Status> {
    state.authorize(&req, Action::Admin, None)?;
    let topics = state.topics.list_topics().map_err(to_status)?;
    Ok(ListTopicsResponse {
        names: topics.into_iter().map(|t| t.name).collect(),
    })
}
