//! `DeleteTopic`.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{DeleteTopicRequest, DeleteTopicResponse};

use super::super::error::to_status;
use super::super::state::ShardState;
use crate::server::acl::Action;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<DeleteTopicRequest>,
) -> Result<DeleteTopicResponse, Status> {
    state.authorize(&req, Action::Admin, Some(&req.message.name))?;
    let name = req.message.name;
    state.topics.delete_topic(&name).await.map_err(to_status)?;
    log::info!("deleted topic {name:?}");
    Ok(DeleteTopicResponse {})
}
