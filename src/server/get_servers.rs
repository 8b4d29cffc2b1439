//! `GetServers` as the book defines it: every live member of the cluster with its RPC
//! address, `is_leader` on the leader of the default topic's partition 0 (what book clients'
//! pickers send produces to). Members and liveness come from gossip, the leader from the
//! controller's registry; a node without cluster flags lists itself, the leader.

use std::sync::Arc;

use consensus::cluster::ClusterNode;
use consensus::raft::replica::group_id;
use engine::seam::PartitionId;
use net::server::Request;
use net::Status;
use proto::log::v1::{GetServersRequest, GetServersResponse, Server, DEFAULT_TOPIC};

use super::state::AppState;

pub async fn handle(
    state: Arc<AppState>,
    _req: Request<GetServersRequest>,
) -> Result<GetServersResponse, Status> {
    let servers = servers(&state.cluster);
    if servers.is_empty() {
        // Not formed yet: this node alone.
        return Ok(GetServersResponse {
            servers: vec![Server {
                id: state.node_name.clone(),
                rpc_addr: state.rpc_addr.to_string(),
                is_leader: false,
            }],
        });
    }
    Ok(GetServersResponse { servers })
}

/// Every live member this cluster's controller registered: live by gossip when the node
/// gossips, else by the registry; `is_leader` on the member the
/// registry maps the default partition's leader to.
pub fn servers(cluster: &ClusterNode) -> Vec<Server> {
    let s = cluster.state();
    let leader = cluster
        .peers
        .board
        .get(group_id(
            &PartitionId::new(DEFAULT_TOPIC, 0),
            s.topics
                .get(DEFAULT_TOPIC)
                .map_or(0, |t| t.config.incarnation),
        ))
        .map(|v| v.leader)
        .filter(|&l| l != 0)
        .and_then(|l| s.nodes.get(&l))
        .map(|n| n.member.clone());
    match cluster.members() {
        Some(w) => w
            .members()
            .members
            .iter()
            .filter(|m| m.state.is_live())
            .filter(|m| {
                // Only nodes of this cluster: registered with its controller, and not removed
                // since (one removed is no member until it is admitted again). Gossip alone
                // is not enough: a node of another cluster (a reused data directory, a joiner
                // given --bootstrap too) gossips with this one, its join refused, and a book
                // client's picker would read that cluster's records from it. A node still
                // joining is not listed until it registers (it serves no call before).
                let id = m.node_id.to_string();
                s.nodes.values().any(|n| !n.removed && n.member == id)
            })
            .map(|m| Server {
                id: m.name.clone(),
                rpc_addr: m.rpc_addr.to_string(),
                is_leader: leader.as_deref() == Some(m.node_id.to_string().as_str()),
            })
            .collect(),
        None => {
            let live = cluster.live_nodes(&s);
            s.nodes
                .iter()
                .filter(|(id, _)| live.contains(id))
                .map(|(_, n)| Server {
                    id: n.name.clone(),
                    rpc_addr: n.rpc_addr.clone(),
                    is_leader: leader.as_deref() == Some(n.member.as_str()),
                })
                .collect()
        }
    }
}
