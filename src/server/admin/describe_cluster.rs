//! `DescribeCluster`: the controller's registry and placement as this node applied them, with
//! this node's view of each partition's group (leader, term, commit index; on the leader each
//! replica's matched index and lag). `proglog cluster describe` asks every node and shows, for
//! each partition, its leader's answer.

use std::sync::Arc;

use consensus::cluster::ClusterNode;
use consensus::raft::board::GroupView;
use consensus::raft::replica::{group_id, CONTROLLER_TOPIC};
use consensus::raft::Stopped;
use engine::seam::PartitionId;
use net::server::Request;
use net::Status;
use proto::log::v1::{self as pb, DescribeClusterRequest, DescribeClusterResponse};

use super::super::state::AppState;
use crate::server::acl::Action;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<DescribeClusterRequest>,
) -> Result<DescribeClusterResponse, Status> {
    state.authorize(&req, Action::Admin, None)?;
    Ok(describe(&state.cluster))
}

fn partition(
    topic: &str,
    partition: u32,
    rf: u32,
    placed: &[(u64, u32)],
    view: Option<GroupView>,
    not_open: Option<String>,
) -> pb::PartitionReplication {
    let mut out = pb::PartitionReplication {
        topic: topic.to_owned(),
        partition,
        replication_factor: rf,
        not_open: not_open.unwrap_or_default(),
        ..Default::default()
    };
    let mut nodes: Vec<(u64, u32)> = placed.to_vec();
    if let Some(v) = &view {
        out.leader = v.leader;
        out.term = v.term;
        out.commit_index = v.commit;
        out.local = true;
        out.stopped = v.stopped.is_some();
        out.disk_full = v.stopped == Some(Stopped::DiskFull);
        out.lost = v.lost;
        for n in v.voters.iter().chain(v.learners.iter()) {
            if !nodes.iter().any(|(x, _)| x == n) {
                nodes.push((*n, 0));
            }
        }
    }
    for (node, shard) in nodes {
        let mut r = pb::ReplicaState {
            node,
            shard,
            ..Default::default()
        };
        if let Some(v) = &view {
            r.voter = v.voters.contains(&node);
            r.learner = v.learners.contains(&node);
            if let Some(&(_, m)) = v.matched.iter().find(|(n, _)| *n == node) {
                r.progress_known = true;
                r.matched_index = m;
                r.lag = v.commit.saturating_sub(m);
            }
        }
        out.replicas.push(r);
    }
    out
}

pub fn describe(cluster: &ClusterNode) -> DescribeClusterResponse {
    let s = cluster.state();
    let live = cluster.live_nodes(&s);
    let up = cluster.up_nodes(&s);
    let board = &cluster.peers.board;
    let controller = board.get(0);
    let mut partitions = vec![partition(
        CONTROLLER_TOPIC,
        0,
        s.active_nodes().len().min(3) as u32,
        &[],
        controller.clone(),
        None,
    )];
    for (name, t) in &s.topics {
        for (p, e) in t.partitions.iter().enumerate() {
            // Each replica's shard as its node's engine computes it now (the shard stored at
            // placement predates any change of the node's `--shards` or of the rule).
            let placed: Vec<(u64, u32)> = e
                .replicas
                .iter()
                .map(|r| (r.node, s.replica_on(name, p as u32, r.node).shard))
                .collect();
            let group = group_id(
                &PartitionId::new(name.as_str(), p as u32),
                t.config.incarnation,
            );
            let view = board.get(group);
            // Placed here, not open, and its last opening failed.
            let not_open = match view {
                None if placed.iter().any(|&(n, _)| n == cluster.id()) => {
                    cluster.open_failure(group)
                }
                _ => None,
            };
            partitions.push(partition(
                name,
                p as u32,
                t.replication_factor,
                &placed,
                view,
                not_open,
            ));
        }
    }
    DescribeClusterResponse {
        cluster_id: s.cluster_id.clone(),
        node_id: cluster.id(),
        controller_leader: controller.map_or(0, |v| v.leader),
        nodes: s
            .nodes
            .iter()
            .map(|(id, n)| pb::ClusterNode {
                id: *id,
                name: n.name.clone(),
                rpc_addr: n.rpc_addr.clone(),
                member_id: n.member.clone(),
                live: live.contains(id),
                removed: n.removed,
                suspect: live.contains(id) && !up.contains(id),
            })
            .collect(),
        partitions,
    }
}
