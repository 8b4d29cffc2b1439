//! `proglog cluster members` (the members as one node's gossip sees them), `cluster describe`
//! (registry and replication of every partition) and `cluster remove`.

use std::process::ExitCode;

use clap::Subcommand;
use proto::log::v1::{
    paths, DescribeClusterRequest, DescribeClusterResponse, ListMembersRequest,
    ListMembersResponse, MemberState, RemoveNodeRequest, RemoveNodeResponse,
};

use super::Conn;
use proglog_client::ReadFrom;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// One line per member: NODE_ID NAME GOSSIP_ADDR RPC_ADDR STATE GENERATION
    /// (states: up, suspect, down, left)
    Members {
        #[command(flatten)]
        conn: Conn,
    },
    /// The registry and every partition's replication: leader, term, commit index and each
    /// replica's lag (asks every live node; each partition as its leader reports it)
    Describe {
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a node (its Raft id or name) from the cluster; its replicas are re-created on
    /// other live nodes. Ask the controller's leader (others answer with its address)
    Remove {
        /// Raft id or node name
        node: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Members { conn } => members(conn).await,
        ClusterCommand::Describe { conn } => describe(conn).await,
        ClusterCommand::Remove { node, conn } => {
            let resp: RemoveNodeResponse = conn
                .controller_call(paths::REMOVE_NODE, &RemoveNodeRequest { node })
                .await?;
            if resp.already_removed {
                crate::out::outln!("node {} was removed already", resp.id)?;
            } else {
                crate::out::outln!("removed node {}", resp.id)?;
            }
            if !resp.stranded.is_empty() {
                eprintln!(
                    "warning: without node {} these partitions have too few replicas to elect a \
                     leader (a partition with two replicas needs both), and take no appends \
                     from now on (what their other replicas applied stays readable): {}",
                    resp.id,
                    resp.stranded.join(", ")
                );
            }
            if !resp.lost.is_empty() {
                eprintln!(
                    "warning: node {} held the only replica of these partitions; their records \
                     are gone: {}",
                    resp.id,
                    resp.lost.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn describe_one(conn: &Conn) -> anyhow::Result<DescribeClusterResponse> {
    conn.ask_any(paths::DESCRIBE_CLUSTER, &DescribeClusterRequest {})
        .await
}

/// The answer of the node at `addr`, asked once: a node that refuses the connection (killed
/// a moment ago, still listed live) fails at once, not after being tried again until
/// `--timeout` as a node being started is.
async fn describe_at(conn: &Conn, addr: &str) -> anyhow::Result<DescribeClusterResponse> {
    let cluster = conn.cluster(ReadFrom::Leader)?;
    let ch = cluster.channel(addr, conn.deadline()).await?;
    Ok(ch
        .unary_prost(
            paths::DESCRIBE_CLUSTER,
            &DescribeClusterRequest {},
            conn.opts(),
        )
        .await?)
}

async fn describe(conn: Conn) -> anyhow::Result<ExitCode> {
    let first = describe_one(&conn).await?;
    let mut answers = vec![first.clone()];
    // The other live nodes are asked at once, so that one that hangs (paused, overloaded)
    // costs one --timeout, not one each.
    let asks: Vec<_> = first
        .nodes
        .iter()
        .filter(|n| n.id != first.node_id && n.live && !n.removed)
        .map(|n| {
            let (conn, id, addr) = (conn.clone(), n.id, n.rpc_addr.clone());
            glommio::spawn_local(async move {
                let answer = describe_at(&conn, &addr).await;
                (id, addr, answer)
            })
        })
        .collect();
    for ask in asks {
        match ask.await {
            (_, _, Ok(a)) => answers.push(a),
            (id, addr, Err(e)) => eprintln!("node {id} ({addr}): {e:#}"),
        }
    }
    // Each partition as its leader reports it, else as the first node holding it does.
    let mut parts = Vec::new();
    for p in &first.partitions {
        let same = |q: &&proto::log::v1::PartitionReplication| {
            q.topic == p.topic && q.partition == p.partition && q.local
        };
        let from_leader = answers.iter().find_map(|a| {
            a.partitions
                .iter()
                .find(|q| same(q) && q.leader == a.node_id && q.leader != 0)
        });
        let any = answers.iter().find_map(|a| a.partitions.iter().find(same));
        parts.push(from_leader.or(any).unwrap_or(p).clone());
    }
    // Replicas stopped on the node that answered: (node, topic, partition, why).
    let stopped: Vec<(u64, &str, u32, &str)> = answers
        .iter()
        .flat_map(|a| {
            a.partitions
                .iter()
                .filter(|q| q.local && q.stopped)
                .map(|q| {
                    let why = if q.disk_full {
                        "disk full"
                    } else if q.lost {
                        "its log is lost: records it held were deleted; moved after \
                         --stopped-replica-grace, or, the partition's only replica, serves \
                         again once lost.meta is deleted and the node restarted"
                    } else {
                        "failed: an I/O error, or damaged data it was to read (the node's \
                         log names which); moved after --stopped-replica-grace; a restart \
                         starts it again, but damaged data fails it again when read"
                    };
                    (a.node_id, q.topic.as_str(), q.partition, why)
                })
        })
        .collect();
    // Replicas placed on the node that answered whose opening failed: (node, topic,
    // partition, the error).
    let not_open: Vec<(u64, &str, u32, &str)> = answers
        .iter()
        .flat_map(|a| {
            a.partitions
                .iter()
                .filter(|q| !q.not_open.is_empty())
                .map(|q| {
                    (
                        a.node_id,
                        q.topic.as_str(),
                        q.partition,
                        q.not_open.as_str(),
                    )
                })
        })
        .collect();
    // A replica on a node gossip does not list live replicates nothing, whatever the lag its
    // leader last saw.
    let node_live = |id: u64| {
        first
            .nodes
            .iter()
            .any(|n| n.id == id && n.live && !n.removed)
    };
    if conn.json {
        crate::out::outln!(
            "{}",
            serde_json::json!({
                "cluster_id": first.cluster_id,
                "controller_leader": first.controller_leader,
                "nodes": first.nodes.iter().map(|n| serde_json::json!({
                    "id": n.id, "name": n.name, "rpc_addr": n.rpc_addr,
                    "member_id": n.member_id, "live": n.live, "suspect": n.suspect, "removed": n.removed,
                })).collect::<Vec<_>>(),
                "partitions": parts.iter().map(|p| serde_json::json!({
                    "topic": p.topic, "partition": p.partition,
                    "replication_factor": p.replication_factor,
                    "leader": p.leader, "term": p.term, "commit_index": p.commit_index,
                    "replicas": p.replicas.iter().map(|r| serde_json::json!({
                        "node": r.node, "shard": r.shard, "voter": r.voter,
                        "learner": r.learner,
                        "live": node_live(r.node),
                        "matched_index": r.progress_known.then_some(r.matched_index),
                        "lag": r.progress_known.then_some(r.lag),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "stopped": stopped.iter().map(|(node, topic, partition, why)| serde_json::json!({
                    "node": node, "topic": topic, "partition": partition, "why": why,
                })).collect::<Vec<_>>(),
                "not_open": not_open.iter().map(|(node, topic, partition, why)| serde_json::json!({
                    "node": node, "topic": topic, "partition": partition, "why": why,
                })).collect::<Vec<_>>(),
            })
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::out::outln!(
        "cluster {}  controller leader: {}",
        or_dash(&first.cluster_id),
        match first.controller_leader {
            0 => "- (none known)".to_owned(),
            l => format!("node {l}"),
        }
    )?;
    let header = |cells: &[&str]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let mut rows = vec![header(&["NODE", "NAME", "RPC_ADDR", "STATE"])];
    for n in &first.nodes {
        let st = if n.removed {
            "removed"
        } else if n.suspect {
            "suspect"
        } else if n.live {
            "live"
        } else {
            "unreachable"
        };
        rows.push(vec![
            n.id.to_string(),
            n.name.clone(),
            n.rpc_addr.clone(),
            st.into(),
        ]);
    }
    crate::out::table(&rows)?;
    let mut rows = vec![header(&[
        "PARTITION",
        "RF",
        "LEADER",
        "TERM",
        "COMMIT",
        "REPLICAS (node/shard role lag)",
    ])];
    for p in &parts {
        let replicas: Vec<String> = p
            .replicas
            .iter()
            .map(|r| {
                let role = if r.voter {
                    "voter"
                } else if r.learner {
                    "learner"
                } else {
                    "placed"
                };
                let lag = if r.progress_known {
                    r.lag.to_string()
                } else {
                    "?".into()
                };
                let down = if node_live(r.node) {
                    ""
                } else {
                    " unreachable"
                };
                format!("{}/{} {role} {lag}{down}", r.node, r.shard)
            })
            .collect();
        rows.push(vec![
            format!("{}/{}", p.topic, p.partition),
            p.replication_factor.to_string(),
            // Node ids start at 1: 0 is "none known yet".
            if p.leader == 0 {
                "-".into()
            } else {
                p.leader.to_string()
            },
            p.term.to_string(),
            p.commit_index.to_string(),
            replicas.join(", "),
        ]);
    }
    crate::out::table(&rows)?;
    for (node, topic, partition, why) in &stopped {
        crate::out::outln!("stopped: {topic}/{partition} on node {node} ({why})")?;
    }
    for (node, topic, partition, why) in &not_open {
        crate::out::outln!(
            "not open: {topic}/{partition} on node {node} (opening it failed: {why}; tried \
             again every 5 s)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn state_name(s: i32) -> &'static str {
    match MemberState::try_from(s) {
        Ok(MemberState::Up) => "up",
        Ok(MemberState::Suspect) => "suspect",
        Ok(MemberState::Down) => "down",
        Ok(MemberState::Left) => "left",
        _ => "unknown",
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

async fn members(conn: Conn) -> anyhow::Result<ExitCode> {
    let resp: ListMembersResponse = conn
        .ask_any(paths::LIST_MEMBERS, &ListMembersRequest {})
        .await?;
    if conn.json {
        for m in &resp.members {
            crate::out::outln!(
                "{}",
                serde_json::json!({
                    "node_id": m.node_id,
                    "name": m.name,
                    "gossip_addr": m.gossip_addr,
                    "rpc_addr": m.rpc_addr,
                    "state": state_name(m.state),
                    "generation": m.generation,
                    "renewal": m.renewal,
                    "in_state_ms": m.in_state_ms,
                    "is_self": m.is_self,
                })
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = resp
        .members
        .iter()
        .map(|m| {
            [
                m.node_id.clone(),
                or_dash(&m.name).to_owned(),
                or_dash(&m.gossip_addr).to_owned(),
                m.rpc_addr.clone(),
                state_name(m.state).to_owned(),
                m.generation.to_string(),
            ]
        })
        .collect();
    let header = [
        "NODE_ID",
        "NAME",
        "GOSSIP_ADDR",
        "RPC_ADDR",
        "STATE",
        "GENERATION",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        crate::out::outln!("{out}")
    };
    line(&header)?;
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    if !resp.gossip {
        eprintln!("(this node runs no gossip: start it with --bind-addr or --start-join-addrs)");
    }
    Ok(ExitCode::SUCCESS)
}
