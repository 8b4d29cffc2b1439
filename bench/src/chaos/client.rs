//! gRPC calls from the client namespace: the channel settings every client uses, how an
//! answer is classified (ok / fail / unknown), topic set-up, the leader, the ends of the
//! partitions, and the final read of every partition from every node.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use glommio::{LocalExecutorBuilder, Placement};
use net::client::{CallOptions, Channel, ClientConfig};
use net::{Code, Status};
use prost::Message;
use proto::google::rpc;
use proto::log::v1::{
    errors, paths, ConsumeBatchRequest, ConsumeBatchResponse, CreateTopicRequest,
    CreateTopicResponse, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest,
    DescribeTopicResponse, GetServersRequest, GetServersResponse, RemoveNodeRequest,
    RemoveNodeResponse, TopicConfig,
};

use super::history::{FinalRead, Outcome};
use super::net::CLIENT_NS;
use super::sys::from_ns;

/// A node as clients see it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// How long a produce or a read may take before its outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Short connect timeout (a dead node refuses at once; a cut one must not hold a client
/// long) and keepalive every second, so that a paused or cut-off node's connections fail
/// within about three seconds instead of hanging a tail forever.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Some(Duration::from_secs(1)),
        keepalive_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

/// Runs `f` on a glommio executor on a thread inside the client namespace.
pub fn run<T, F, Fut>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
{
    from_ns(CLIENT_NS, move || {
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .map_err(|e| anyhow!("client executor: {e}"))?;
        ex.run(f())
    })
}

/// The `ErrorInfo` reason of the cluster error contract, if the status carries one.
pub fn cluster_reason(st: &Status) -> Option<(String, Option<String>)> {
    if st.details.is_empty() {
        return None;
    }
    let details = rpc::Status::decode(st.details.as_ref()).ok()?;
    let info = rpc::find_error_info(&details).filter(|i| i.domain == errors::DOMAIN)?;
    let leader = info.metadata.get(errors::LEADER_ADDR).cloned();
    Some((info.reason, leader))
}

/// What an error answer to a produce proves. Only answers given before any append are
/// failures: INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, RESOURCE_EXHAUSTED (too large,
/// or a shard's queue full), and UNAVAILABLE with NOT_LEADER or NO_LEADER. Everything else
/// (timeouts, UNAVAILABLE without those reasons or with OUTCOME_UNKNOWN, INTERNAL, a broken
/// connection) may have been written.
pub fn classify(st: &Status) -> (Outcome, String) {
    let reason = cluster_reason(st);
    let outcome = match st.code {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::NotFound
        | Code::ResourceExhausted => Outcome::Fail,
        Code::Unavailable => match reason.as_ref().map(|(r, _)| r.as_str()) {
            Some(errors::NOT_LEADER | errors::NO_LEADER) => Outcome::Fail,
            _ => Outcome::Unknown,
        },
        _ => Outcome::Unknown,
    };
    let mut msg = st.message.clone();
    if msg.len() > 200 {
        let mut cut = 200;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    let reason = reason.map(|(r, _)| format!(" {r}")).unwrap_or_default();
    (outcome, format!("{}{reason}: {msg}", st.code.name()))
}

/// The topic config for a durability policy name.
fn topic_config(partitions: u32, durability: &str) -> TopicConfig {
    let (d, interval) = match durability {
        "always" => (1, 0),
        "never" => (3, 0),
        other => (
            2,
            other
                .strip_prefix("interval:")
                .and_then(|ms| ms.trim_end_matches("ms").parse().ok())
                .unwrap_or(0),
        ),
    };
    TopicConfig {
        partitions,
        durability: d,
        flush_interval_ms: interval,
        ..Default::default()
    }
}

/// Creates the topic (ALREADY_EXISTS is fine), retrying for up to 30 s while no node will.
/// With `each`, on every target (single nodes keep a topic each); else once in the cluster:
/// the targets are asked in turn, and a NOT_LEADER's address is followed to the controller's
/// leader.
pub fn create_topic(
    targets: Vec<Target>,
    each: bool,
    topic: String,
    partitions: u32,
    durability: String,
) -> Result<()> {
    run(move || async move {
        let groups: Vec<Vec<Target>> = if each {
            targets.iter().map(|t| vec![t.clone()]).collect()
        } else {
            vec![targets.clone()]
        };
        for group in &groups {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut next: Option<SocketAddr> = None;
            let mut turn = 0usize;
            loop {
                let addr = next.take().unwrap_or_else(|| {
                    turn += 1;
                    group[turn % group.len()].addr
                });
                let r = async {
                    let ch = Channel::connect(addr, client_config())
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    ch.unary_prost::<_, CreateTopicResponse>(
                        paths::CREATE_TOPIC,
                        &CreateTopicRequest {
                            name: topic.clone(),
                            config: Some(topic_config(partitions, &durability)),
                        },
                        CallOptions::timeout(Duration::from_secs(5)),
                    )
                    .await
                }
                .await;
                match r {
                    Ok(_) => break,
                    Err(st) if st.code == Code::AlreadyExists => break,
                    Err(st) if Instant::now() > deadline => {
                        bail!("creating topic {topic} via {addr}: {st}")
                    }
                    Err(st) => {
                        next = leader_addr(&st, group);
                        glommio::timer::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Ok(())
    })
}

/// The target a NOT_LEADER names (by address, or by host name and port).
fn leader_addr(st: &Status, targets: &[Target]) -> Option<SocketAddr> {
    let addr = cluster_reason(st)?.1?;
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    targets
        .iter()
        .find(|t| t.addr.to_string() == addr || t.name == host || t.addr.ip().to_string() == host)
        .map(|t| t.addr)
}

/// The cluster as `t` describes it (registry, every group's replication).
pub async fn describe_cluster(t: SocketAddr) -> Result<DescribeClusterResponse, Status> {
    let ch = Channel::connect(t, client_config())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    ch.unary_prost(
        paths::DESCRIBE_CLUSTER,
        &DescribeClusterRequest {},
        CallOptions::timeout(Duration::from_secs(3)),
    )
    .await
}

/// Every target's description of the cluster (None where it did not answer).
pub fn cluster_views(targets: Vec<Target>) -> Result<Vec<Option<DescribeClusterResponse>>> {
    run(move || async move {
        let mut out = Vec::new();
        for t in &targets {
            out.push(describe_cluster(t.addr).await.ok());
        }
        Ok(out)
    })
}

/// Removes the cluster member named `name` (its Raft id as the registry has it, not removed),
/// asking the targets in turn and following NOT_LEADER to the controller's leader, for up
/// to `limit`. Returns the Raft id removed.
pub fn remove_node(targets: Vec<Target>, name: String, limit: Duration) -> Result<u64> {
    run(move || async move {
        let deadline = Instant::now() + limit;
        let mut next: Option<SocketAddr> = None;
        let mut turn = 0usize;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            let addr = next.take().unwrap_or_else(|| {
                turn += 1;
                targets[turn % targets.len()].addr
            });
            let id = match describe_cluster(addr).await {
                Ok(d) => d
                    .nodes
                    .iter()
                    .find(|n| n.name == name && !n.removed)
                    .map(|n| n.id),
                Err(st) => {
                    last = st.to_string();
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(id) = id else {
                last = format!("{addr} knows no member {name}");
                glommio::timer::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let r = async {
                let ch = Channel::connect(addr, client_config())
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                ch.unary_prost::<_, RemoveNodeResponse>(
                    paths::REMOVE_NODE,
                    &RemoveNodeRequest {
                        node: id.to_string(),
                    },
                    CallOptions::timeout(Duration::from_secs(10)),
                )
                .await
            }
            .await;
            match r {
                Ok(r) => return Ok(r.id),
                Err(st) => {
                    last = format!("{addr}: {st}");
                    next = leader_addr(&st, &targets);
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        bail!("removing {name}: not done within {limit:?} (last: {last})")
    })
}

/// Each partition's next offset as `target` describes it.
pub async fn describe(t: &Target, topic: &str) -> Result<Vec<u64>, Status> {
    let ch = Channel::connect(t.addr, client_config())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let d: DescribeTopicResponse = ch
        .unary_prost(
            paths::DESCRIBE_TOPIC,
            &DescribeTopicRequest {
                name: topic.to_owned(),
            },
            CallOptions::timeout(Duration::from_secs(3)),
        )
        .await?;
    let mut parts = d.topic.map(|t| t.partitions).unwrap_or_default();
    parts.sort_by_key(|p| p.partition);
    Ok(parts.iter().map(|p| p.next_offset).collect())
}

/// Every node's view of every partition's end (None where a node did not answer).
pub fn ends(targets: Vec<Target>, topic: String) -> Result<Vec<Option<Vec<u64>>>> {
    run(move || async move {
        let mut out = Vec::new();
        for t in &targets {
            out.push(describe(t, &topic).await.ok());
        }
        Ok(out)
    })
}

/// The node GetServers marks as leader, asked of each target in turn.
pub fn leader(targets: Vec<Target>) -> Result<Option<String>> {
    run(move || async move {
        for t in &targets {
            let r: Result<GetServersResponse, Status> = async {
                let ch = Channel::connect(t.addr, client_config())
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                ch.unary_prost(
                    paths::GET_SERVERS,
                    &GetServersRequest {},
                    CallOptions::timeout(Duration::from_secs(2)),
                )
                .await
            }
            .await;
            let Ok(r) = r else { continue };
            if let Some(s) = r.servers.iter().find(|s| s.is_leader) {
                // Match by address (ip:port or name:port) or by id.
                let found = targets.iter().find(|x| {
                    s.rpc_addr == x.addr.to_string()
                        || s.rpc_addr.split(':').next() == Some(x.name.as_str())
                        || s.id == x.name
                });
                if let Some(x) = found {
                    return Ok(Some(x.name.clone()));
                }
            }
        }
        Ok(None)
    })
}

/// Reads every record of every partition from every node (ConsumeBatch from offset 0 to
/// the end DescribeTopic gives), retrying each for up to 20 s.
pub fn final_reads(targets: Vec<Target>, topic: String, partitions: u32) -> Result<Vec<FinalRead>> {
    run(move || async move {
        let mut out = Vec::new();
        for t in &targets {
            for p in 0..partitions {
                out.push(final_read(t, &topic, p).await);
            }
        }
        Ok(out)
    })
}

async fn final_read(t: &Target, topic: &str, p: u32) -> FinalRead {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut records: Vec<(u64, String)> = Vec::new();
    let mut last_err = None;
    while Instant::now() < deadline {
        match read_all(t, topic, p, &mut records).await {
            Ok(()) => {
                return FinalRead {
                    node: t.name.clone(),
                    partition: p,
                    records,
                    error: None,
                }
            }
            Err(st) => last_err = Some(st.to_string()),
        }
        glommio::timer::sleep(Duration::from_millis(300)).await;
    }
    FinalRead {
        node: t.name.clone(),
        partition: p,
        records,
        error: last_err,
    }
}

/// Appends to `records` from the offset after its last one to the partition's end.
async fn read_all(
    t: &Target,
    topic: &str,
    p: u32,
    records: &mut Vec<(u64, String)>,
) -> Result<(), Status> {
    let end = describe(t, topic)
        .await?
        .get(p as usize)
        .copied()
        .ok_or_else(|| Status::not_found(format!("partition {p} not described")))?;
    let ch = Channel::connect(t.addr, client_config())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    loop {
        let from = records.last().map_or(0, |(o, _)| o + 1);
        if from >= end {
            return Ok(());
        }
        let r: Result<ConsumeBatchResponse, Status> = ch
            .unary_prost(
                paths::CONSUME_BATCH,
                &ConsumeBatchRequest {
                    topic: topic.to_owned(),
                    partition: p,
                    offset: from,
                    max_records: 1000,
                    max_bytes: 2 << 20,
                },
                CallOptions::timeout(Duration::from_secs(5)),
            )
            .await;
        let r = match r {
            Ok(r) => r,
            Err(st) if st.code == Code::OutOfRange => return Ok(()),
            Err(st) => return Err(st),
        };
        if r.records.is_empty() {
            return Ok(());
        }
        for rec in r.records {
            if records.last().is_some_and(|(o, _)| rec.offset <= *o) {
                continue;
            }
            records.push((rec.offset, value_key(&rec.value)));
        }
    }
}

/// A value as the history names it: the unique id without its padding; anything that is
/// not one of ours is kept (lossily), so that it shows up as an inconsistency.
pub fn value_key(v: &[u8]) -> String {
    let trimmed = v
        .iter()
        .rposition(|&b| b != b'.')
        .map_or(&v[..0], |i| &v[..=i]);
    match std::str::from_utf8(trimmed) {
        Ok(s) if !s.is_empty() => s.to_owned(),
        _ => format!("<{} foreign bytes>", v.len()),
    }
}

/// A value: `id` padded with dots to `len` bytes.
pub fn padded(id: &str, len: usize) -> bytes::Bytes {
    let mut v = id.as_bytes().to_vec();
    if v.len() < len {
        v.resize(len, b'.');
    }
    bytes::Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_cluster_error_contract() {
        let with_reason = |reason: &str| {
            let details = rpc::Status {
                code: Code::Unavailable.as_i32(),
                message: String::new(),
                details: vec![rpc::any_error_info(
                    reason,
                    errors::DOMAIN,
                    [(errors::LEADER_ADDR, "node-2:8400".to_string())],
                )],
            };
            let mut st = Status::unavailable("x");
            st.details = details.encode_to_vec().into();
            st
        };
        assert_eq!(classify(&with_reason(errors::NOT_LEADER)).0, Outcome::Fail);
        assert_eq!(classify(&with_reason(errors::NO_LEADER)).0, Outcome::Fail);
        assert_eq!(
            classify(&with_reason(errors::OUTCOME_UNKNOWN)).0,
            Outcome::Unknown
        );
        assert_eq!(
            cluster_reason(&with_reason(errors::NOT_LEADER)).and_then(|r| r.1),
            Some("node-2:8400".into())
        );
        assert_eq!(classify(&Status::unavailable("gone")).0, Outcome::Unknown);
        assert_eq!(
            classify(&Status::new(Code::DeadlineExceeded, "late")).0,
            Outcome::Unknown
        );
        assert_eq!(classify(&Status::internal("io")).0, Outcome::Unknown);
        for c in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::NotFound,
            Code::ResourceExhausted,
        ] {
            assert_eq!(classify(&Status::new(c, "no")).0, Outcome::Fail, "{c}");
        }
    }

    #[test]
    fn values_keep_their_id_through_padding() {
        assert_eq!(value_key(&padded("p0-00000012", 64)), "p0-00000012");
        assert_eq!(value_key(b"...."), "<4 foreign bytes>");
        assert_eq!(value_key(&[0xff, 0xfe]), "<2 foreign bytes>");
    }
}
