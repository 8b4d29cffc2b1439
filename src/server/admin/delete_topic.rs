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
    let deleted = state.topics.delete_topic(&name).await.map_err(to_status)?;
    if deleted.not_yet_on.is_empty() {
        log::info!("deleted topic {name:?}");
    } else {
        log::warn!(
            "deleted topic {name:?}; nodes {:?} holding its replicas have not learned of it yet",
            deleted.not_yet_on
        );
    }
    Ok(DeleteTopicResponse {
        not_yet_on: deleted.not_yet_on,
    })
}
