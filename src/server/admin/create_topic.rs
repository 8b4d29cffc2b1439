//! `CreateTopic`.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{CreateTopicRequest, CreateTopicResponse};

use super::super::error::to_status;
use super::super::state::ShardState;
use crate::server::acl::Action;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<CreateTopicRequest>,
) -> Result<CreateTopicResponse, Status> {
    state.authorize(&req, Action::Admin, Some(&req.message.name))?;
    let r = req.message;
    let wire = r.config.unwrap_or_default();
    let config = super::log_config(&state.default_log, &wire)?;
    let partitions = wire.partitions.max(1);
    state
        .topics
        .create_topic_replicated(&r.name, partitions, config, wire.replication_factor)
        .await
        .map_err(to_status)?;
    log::info!("created topic {:?} with {partitions} partitions", r.name);
    Ok(CreateTopicResponse {
        topic: Some(super::describe(&state, &r.name).await?),
    })
}
