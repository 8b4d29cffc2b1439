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
        topic: Some(super::describe(&state, &req.message.name).await?),
    })
}
