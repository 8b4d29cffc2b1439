//! Where the load goes: `--addr` names one server of a cluster or several, and the load
//! goes to the leader of `--topic`/`--partition`, found with the cluster-aware client
//! (`proglog-client`: GetServers and DescribeCluster). With no leader known, or one whose
//! advertised address does not answer from here, the first address that answers is used
//! (it forwards produces, or answers NOT_LEADER, which the lanes report as errors).
//! `--create-topic` creates the topic here, at the controller's leader, before routing.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use net::client::{CallOptions, ClientConfig};
use proglog_client::errors::{self, ClusterError};
use proglog_client::{Cluster, Options};
use proto::log::v1::{paths, CreateTopicRequest, CreateTopicResponse};

use super::opts::Opts;
use super::run::on_executor;

/// The address every lane connects to.
pub fn target(opts: &Opts, config: ClientConfig) -> Result<SocketAddr> {
    let seeds = opts.addrs();
    let topic = opts.topic.clone().unwrap_or_default();
    let partition = opts.partition;
    let deadline = Instant::now() + opts.timeout;
    let server_name_from_host = opts.tls.tls_server_name.is_none();
    let create_topic = opts.create_topic;
    let picked = on_executor("bench-route", move || async move {
        let options = Options {
            config,
            server_name_from_host,
            ..Options::default()
        };
        let cluster = Cluster::new(seeds, options).map_err(|e| anyhow!("--addr: {}", e.message))?;
        if create_topic {
            create(&cluster, &topic, partition, deadline).await?;
        }
        let (addr, _) = cluster
            .leader(&topic, partition, deadline)
            .await
            .map_err(|e| anyhow!("--addr: {}", e.message))?;
        Ok(addr)
    })?;
    picked
        .to_socket_addrs()
        .map_err(|e| anyhow!("{picked:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow!("{picked:?} resolves to no address"))
}

/// How long a topic created here may take to elect its leader before the load starts.
const ELECTION_WAIT: Duration = Duration::from_secs(5);
/// Redirects to the controller's leader followed for CreateTopic.
const MAX_REDIRECTS: usize = 3;

/// Creates the topic (`--create-topic`; ALREADY_EXISTS is fine) at the controller's leader
/// (another node answers NOT_LEADER naming it), then waits briefly for the new partition's
/// leader to be known, so that the load goes to it from the start.
async fn create(cluster: &Cluster, topic: &str, partition: u32, deadline: Instant) -> Result<()> {
    let (mut addr, mut ch) = cluster
        .any(deadline)
        .await
        .map_err(|e| anyhow!("--addr: {}", e.message))?;
    let req = CreateTopicRequest {
        name: topic.to_owned(),
        config: None,
    };
    let mut redirects = 0;
    loop {
        let opts = CallOptions::timeout(deadline.saturating_duration_since(Instant::now()));
        let r: Result<CreateTopicResponse, _> =
            ch.unary_prost(paths::CREATE_TOPIC, &req, opts).await;
        let st = match r {
            Ok(_) => break,
            Err(st) if st.code == net::Code::AlreadyExists => break,
            Err(st) => st,
        };
        match errors::cluster_error(&st) {
            Some(ClusterError::NotLeader {
                leader_addr: Some(leader),
                ..
            }) if redirects < MAX_REDIRECTS && leader != addr => {
                redirects += 1;
                ch = cluster
                    .channel(&leader, deadline)
                    .await
                    .map_err(|e| anyhow!("CreateTopic {topic:?} at {leader}: {}", e.message))?;
                addr = leader;
            }
            _ => {
                return Err(anyhow!(
                    "CreateTopic {topic:?}: {} {}",
                    st.code.name(),
                    st.message
                ))
            }
        }
    }
    let until = deadline.min(Instant::now() + ELECTION_WAIT);
    while Instant::now() < until {
        if cluster.refresh(until).await.is_ok()
            && cluster
                .route(topic, partition)
                .is_some_and(|r| r.leader.is_some())
        {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
