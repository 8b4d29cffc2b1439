//! `DescribeTopic`.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{DescribeTopicRequest, DescribeTopicResponse};

use super::super::state::ShardState;
use crate::server::acl::Action;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<DescribeTopicRequest>,
) -> Result<DescribeTopicResponse, Status> {
    state.authorize(&req, Action::Admin, Some(&req.message.name))?;
    Ok(DescribeTopicResponse {
        // No name is the `default` topic, as for the Log calls.
        topic: Some(
            super::describe(&state, proto::log::v1::topic_or_default(&req.message.name)).await?,
        ),
    })
}
