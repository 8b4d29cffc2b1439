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
    let before = state.cluster.state();
    let (id, already_removed) = state
        .cluster
        .remove_node(&node)
        .await
        .map_err(|e| to_status(e.into()))?;
    let (stranded, lost) = if already_removed {
        (Vec::new(), Vec::new())
    } else {
        before.stranded_without(id)
    };
    if !already_removed {
        log::warn!("node {id} ({node}) removed from the cluster on request");
    }
    if !stranded.is_empty() {
        log::warn!(
            "removing node {id} leaves {} partition(s) without enough replicas to elect a \
             leader: they take no appends from now on: {}",
            stranded.len(),
            stranded.join(", ")
        );
    }
    if !lost.is_empty() {
        log::warn!(
            "node {id} held the only replica of {} partition(s): their records are gone: {}",
            lost.len(),
            lost.join(", ")
        );
    }
    Ok(RemoveNodeResponse {
        id,
        already_removed,
        stranded,
        lost,
    })
}
