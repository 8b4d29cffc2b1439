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
    // No name is the `default` topic, as for the Log calls (which refuses it).
    let name = proto::log::v1::topic_or_default(&req.message.name).to_owned();
    state.topics.delete_topic(&name).await.map_err(to_status)?;
    log::info!("deleted topic {name:?}");
    Ok(DeleteTopicResponse {})
}
