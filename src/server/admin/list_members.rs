//! `ListMembers`: the cluster's members as this node's gossip sees them.

use std::sync::Arc;

use consensus::membership::MemberState;
use net::server::Request;
use net::Status;
use proto::log::v1::{self as pb, ListMembersRequest, ListMembersResponse};

use super::super::state::AppState;
use crate::server::acl::Action;

pub fn wire_state(s: MemberState) -> pb::MemberState {
    match s {
        MemberState::Up => pb::MemberState::Up,
        MemberState::Suspect => pb::MemberState::Suspect,
        MemberState::Down => pb::MemberState::Down,
        MemberState::Left => pb::MemberState::Left,
    }
}

pub async fn handle(
    state: Arc<AppState>,
    req: Request<ListMembersRequest>,
) -> Result<ListMembersResponse, Status> {
    state.authorize(&req, Action::Admin, None)?;
    let list = state.members.members();
    // As of this answer, not of the list's last change.
    let now = state.members.clock_now();
    Ok(ListMembersResponse {
        members: list
            .members
            .iter()
            .map(|m| pb::Member {
                node_id: m.node_id.to_string(),
                name: m.name.clone(),
                // Nothing listens there without gossip.
                gossip_addr: if state.gossip {
                    m.gossip_addr.to_string()
                } else {
                    String::new()
                },
                rpc_addr: m.rpc_addr.to_string(),
                state: wire_state(m.state) as i32,
                generation: m.generation,
                renewal: m.renewal,
                in_state_ms: u64::try_from(now.saturating_sub(m.since).as_millis())
                    .unwrap_or(u64::MAX),
                is_self: m.is_self,
            })
            .collect(),
        gossip: state.gossip,
    })
}
