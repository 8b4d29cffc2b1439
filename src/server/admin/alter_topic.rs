//! `AlterTopic`: a topic's retention limits.

use std::rc::Rc;

use engine::seam::TopicChange;
use net::server::Request;
use net::Status;
use proto::log::v1::{AlterTopicRequest, AlterTopicResponse};

use super::super::error::to_status;
use super::super::state::ShardState;
use crate::server::acl::Action;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<AlterTopicRequest>,
) -> Result<AlterTopicResponse, Status> {
    state.authorize(&req, Action::Admin, Some(&req.message.name))?;
    let mut r = req.message;
    // No name is the `default` topic, as for the Log calls.
    r.name = proto::log::v1::topic_or_default(&r.name).to_owned();
    let change = TopicChange {
        retention_bytes: r.retention_bytes,
        retention_ms: r.retention_ms,
    };
    if change.is_empty() {
        return Err(Status::invalid_argument(format!(
            "altering topic {:?}: the request changes nothing (give retention_bytes or \
             retention_ms; 0 means no limit)",
            r.name
        )));
    }
    let info = state
        .topics
        .alter_topic(&r.name, change)
        .await
        .map_err(to_status)?;
    log::info!(
        "topic {:?}: retention limits now {} bytes, {} ms (0: none)",
        r.name,
        info.config.retention_bytes,
        info.config.retention_ms
    );
    Ok(AlterTopicResponse {
        topic: Some(super::describe(&state, &r.name).await?),
    })
}
