//! `RemoveNode`: takes a node out of the cluster through the controller; its replicas are
//! re-created on other live nodes by the reconcile loop.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{RemoveNodeRequest, RemoveNodeResponse};

use super::super::error::to_status;
use super::super::state::AppState;
use crate::server::acl::Action;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<RemoveNodeRequest>,
) -> Result<RemoveNodeResponse, Status> {
    state.authorize(&req, Action::Admin, None)?;
    let node = req.message.node.trim().to_owned();
    if node.is_empty() {
        return Err(Status::invalid_argument(
            "name the node to remove (a Raft id or a name)",
        ));
    }
    let (id, already_removed) = state
        .cluster
        .remove_node(&node)
        .await
        .map_err(|e| to_status(e.into()))?;
    if !already_removed {
        log::warn!("node {id} ({node}) removed from the cluster on request");
    }
    Ok(RemoveNodeResponse {
        id,
        already_removed,
    })
}
