//! `GetServers`: a single node is its own leader.

use std::sync::Arc;

use net::server::Request;
use net::Status;
use proto::log::v1::{GetServersRequest, GetServersResponse, Server};

use super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    _req: Request<GetServersRequest>,
) -> Result<GetServersResponse, Status> {
    Ok(GetServersResponse {
        servers: vec![Server {
            id: state.node_name.clone(),
            rpc_addr: state.rpc_addr.to_string(),
            is_leader: true,
        }],
    })
}
