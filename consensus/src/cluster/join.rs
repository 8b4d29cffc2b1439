//! Joining a cluster: a node without a Raft id asks a member for one over the peer channel.
//!
//! One request per connection: kind [`JOIN_REQUEST`] (0x21) carries a JSON [`JoinRequest`]
//! (the node's registry entry, and the cluster id it belongs to if it has one); the member
//! answers kind [`JOIN_ANSWER`] (0x22) with a JSON [`JoinAnswer`]: the Raft id the controller
//! assigned (registering the node if new, keyed by its membership id), the cluster id and the
//! registry's addresses; or the controller leader's address to ask instead; or a refusal (a
//! node of another cluster, no peer certificate where peer TLS is on). Frames and their
//! limits are in docs/format.md. Without peer TLS anyone who can reach the RPC port can
//! register a node: peer TLS is the security boundary, as for Raft.

use super::state::NodeEntry;
use super::ClusterNode;
use net::peer::{self, PeerConn, PeerTls};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A join request (JSON).
pub const JOIN_REQUEST: u8 = 0x21;
/// The answer to a join request (JSON).
pub const JOIN_ANSWER: u8 = 0x22;
/// Largest join frame either way.
pub const MAX_JOIN_FRAME: usize = 64 << 10;
/// Bound on one exchange, either side.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a member waits for gossip to list a node that asks to join.
pub const GOSSIP_SEEN_WAIT: Duration = Duration::from_secs(5);
/// What a refusal says of a node gossip does not list yet: the node asks again.
pub const NOT_SEEN_YET: &str = "is not seen live through gossip here yet";
/// How a refusal for belonging to another cluster begins (the joiner's cluster id differs).
pub const OF_ANOTHER_CLUSTER: &str = "the node belongs to cluster";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The cluster the node belongs to already, if any: another cluster refuses it.
    pub cluster_id: Option<String>,
    pub node: NodeEntry,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum JoinAnswer {
    Joined {
        cluster_id: String,
        node_id: u64,
        /// Raft id -> RPC address of the node and of the registered nodes gossip lists live.
        nodes: Vec<(u64, String)>,
        /// The answering member's applied controller index: the node serves appends and
        /// reads only once its own controller state has applied as far (a restarted node's
        /// state may predate a topic's deletion). Absent from older nodes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        applied: Option<u64>,
    },
    /// Ask the controller's leader (its RPC address, when known).
    NotLeader {
        leader_addr: Option<String>,
        /// Whether the answering node belongs to a cluster (it has a Raft id), though it
        /// knows no leader to name: a node given `--bootstrap` and `--start-join-addrs` on an
        /// empty data directory joins the cluster it finds so rather than bootstrapping a
        /// second one. Absent (false) from older nodes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_cluster: bool,
    },
    Refused {
        reason: String,
    },
}

/// Serves join requests on the peer channel.
pub struct JoinService(pub Arc<ClusterNode>);

impl JoinService {
    pub async fn serve(&self, mut conn: PeerConn, len: usize) {
        let answer = match self.read_and_answer(&mut conn, len).await {
            Ok(a) => a,
            Err(reason) => JoinAnswer::Refused { reason },
        };
        if let JoinAnswer::Refused { reason } = &answer {
            net::conn_log!(
                log::Level::Warn,
                "join-refused",
                "join request from {} refused: {reason}",
                net::show_peer(&conn.peer)
            );
        }
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        let _ = peer::write_frame(&mut conn.stream, JOIN_ANSWER, &bytes).await;
    }

    async fn read_and_answer(&self, conn: &mut PeerConn, len: usize) -> Result<JoinAnswer, String> {
        let node = &self.0;
        if len > MAX_JOIN_FRAME {
            return Err(format!(
                "a join request of {len} bytes (at most {MAX_JOIN_FRAME})"
            ));
        }
        if node.peer_tls && conn.tls.is_none() {
            return Err("this cluster runs peer TLS: join over it".into());
        }
        let payload = peer::read_payload(&mut conn.stream, len)
            .await
            .map_err(|e| e.to_string())?;
        let req: JoinRequest =
            serde_json::from_slice(&payload).map_err(|e| format!("malformed join request: {e}"))?;
        let s = node.state();
        if s.cluster_id.is_empty() {
            // A member whose state is not replayed yet (or whose controller replica was
            // lost) has its Raft id from cluster.meta; a node still joining has none.
            return Ok(JoinAnswer::NotLeader {
                leader_addr: None,
                in_cluster: node.id() != 0,
            });
        }
        if let Some(c) = req.cluster_id.as_deref().filter(|c| *c != s.cluster_id) {
            return Ok(JoinAnswer::Refused {
                reason: format!("{OF_ANOTHER_CLUSTER} {c}; this is cluster {}", s.cluster_id),
            });
        }
        if node.removed_while_running() {
            // Its state stopped following the controller when it was removed: an answer from
            // it (a node it still lists as registered, say) would be stale. Ask another.
            return Ok(JoinAnswer::NotLeader {
                leader_addr: None,
                in_cluster: true,
            });
        }
        if node.foreign().is_some() {
            // A second cluster started by mistake, fenced: a node it admitted would serve
            // that cluster's clients, unfenced (its cluster no longer holds one node only).
            return Ok(JoinAnswer::Refused {
                reason: format!(
                    "the member asked belongs to cluster {}, a second cluster started by \
                     mistake, which admits no node: join the cluster its --start-join-addrs \
                     belong to",
                    s.cluster_id
                ),
            });
        }
        let known = s.id_of(&req.node.member);
        let unchanged = known.and_then(|id| s.nodes.get(&id)).is_some_and(|n| {
            n.rpc_addr == req.node.rpc_addr && n.gossip_addr == req.node.gossip_addr
        });
        let removed = known
            .and_then(|id| s.nodes.get(&id))
            .is_some_and(|n| n.removed);
        let mut live = node.live_members();
        if let Some(id) = known.filter(|_| unchanged && !removed) {
            return Ok(joined(&s, id, &live));
        }
        // Registered only once gossip lists it: a node joins gossip first (its
        // --start-join-addrs), so a real one is seen within a gossip round or two, while a
        // stranger sending join requests registered thousands of nodes that never ran (and
        // the answer, listing them all, outgrew its frame: no node could join any more).
        let waiting_until = std::time::Instant::now() + GOSSIP_SEEN_WAIT;
        while !live.contains(&req.node.member) {
            if std::time::Instant::now() >= waiting_until {
                return Err(format!(
                    "node {} ({}) {NOT_SEEN_YET}: it joins gossip first (--start-join-addrs), \
                     then asks again",
                    req.node.name, req.node.member
                ));
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
            live = node.live_members();
        }
        if !node.is_controller_leader() {
            let leader = node.controller().map(|v| v.leader).unwrap_or(0);
            return Ok(JoinAnswer::NotLeader {
                leader_addr: node.rpc_addr_of(leader),
                in_cluster: true,
            });
        }
        if let Err(e) = node
            .propose(&super::state::Command::Register {
                node: req.node.clone(),
            })
            .await
        {
            // Leadership lost around the proposal, or no leader: nothing final, and a
            // node that starts serves no client until its registration is answered. It
            // asks again (as after any `not_leader`), never refused for it.
            log::info!(
                "join request of {} ({}): the registration was not committed ({e}): asked to try again",
                req.node.name,
                req.node.member
            );
            let leader = node.controller().map(|v| v.leader).unwrap_or(0);
            return Ok(JoinAnswer::NotLeader {
                leader_addr: node.rpc_addr_of(leader),
                in_cluster: true,
            });
        }
        let s = node.state();
        match s.id_of(&req.node.member) {
            Some(id) => {
                log::info!(
                    "node {} ({}) joined as Raft node {id}",
                    req.node.name,
                    req.node.member
                );
                Ok(joined(&s, id, &live))
            }
            None => Err("registration did not apply".into()),
        }
    }
}

/// The answer for node `id`: with the addresses of the registered nodes gossip lists live
/// (`live`, membership ids) and its own, which is what it needs to reach and accept the
/// members now; the others reach it with the controller's state. The answer stays small
/// whatever the registry holds (it must fit [`MAX_JOIN_FRAME`]).
fn joined(s: &super::state::ClusterState, id: u64, live: &[String]) -> JoinAnswer {
    JoinAnswer::Joined {
        cluster_id: s.cluster_id.clone(),
        applied: Some(s.applied),
        node_id: id,
        nodes: s
            .nodes
            .iter()
            .filter(|(i, n)| **i == id || (!n.removed && live.contains(&n.member)))
            .map(|(i, n)| (*i, n.rpc_addr.clone()))
            .collect(),
    }
}

/// Sends `req` to the member at `addr` (from a glommio executor) and returns its answer.
pub async fn request(
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    req: &JoinRequest,
) -> Result<JoinAnswer, String> {
    let name = addr.ip().to_string();
    let mut stream = peer::connect(addr, tls, &name, JOIN_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let bytes = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let exchange = async {
        peer::write_frame(&mut stream, JOIN_REQUEST, &bytes)
            .await
            .map_err(|e| e.to_string())?;
        match peer::read_frame(&mut stream, MAX_JOIN_FRAME).await {
            Ok(Some(f)) if f.kind == JOIN_ANSWER => {
                serde_json::from_slice(&f.payload).map_err(|e| format!("malformed answer: {e}"))
            }
            Ok(Some(f)) if f.kind == peer::kind::ERROR => {
                Err(format!("refused: {}", String::from_utf8_lossy(&f.payload)))
            }
            Ok(Some(f)) => Err(format!("unexpected frame kind {:#04x}", f.kind)),
            Ok(None) => Err("closed without an answer".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    match glommio::timer::timeout(JOIN_TIMEOUT, async { Ok(exchange.await) }).await {
        Ok(r) => r,
        Err(_) => Err("no answer in time".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::JoinAnswer;

    /// `in_cluster` is new: an older node's answer (without it) reads as false, and an
    /// answer without it set leaves it out, as older nodes wrote it.
    #[test]
    fn in_cluster_is_read_when_present_and_left_out_when_false() {
        let old: JoinAnswer =
            serde_json::from_str(r#"{"answer": "not_leader", "leader_addr": null}"#).unwrap();
        assert!(matches!(
            old,
            JoinAnswer::NotLeader {
                leader_addr: None,
                in_cluster: false
            }
        ));
        let new: JoinAnswer = serde_json::from_str(
            r#"{"answer": "not_leader", "leader_addr": null, "in_cluster": true}"#,
        )
        .unwrap();
        assert!(matches!(
            new,
            JoinAnswer::NotLeader {
                in_cluster: true,
                ..
            }
        ));
        let written = serde_json::to_string(&JoinAnswer::NotLeader {
            leader_addr: Some("127.0.0.1:8400".into()),
            in_cluster: false,
        })
        .unwrap();
        assert_eq!(
            written,
            r#"{"answer":"not_leader","leader_addr":"127.0.0.1:8400"}"#
        );
    }
}
