//! This node's cluster membership: started after the engine (which holds the data
//! directory's lock, so two processes never share a node id), on shard 0's executor, and
//! left first on shutdown.
//!
//! Without `--bind-addr` or `--start-join-addrs` the node gossips nothing and lists itself
//! alone; it still gets a node id and a generation (`node.meta`), since they belong to the
//! data directory, not to clustering.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use consensus::membership::peer::KeyService;
use consensus::membership::{
    store, Membership, MembershipConfig, MembershipSettings, MembershipWatch, NodeIdentity,
};
use net::peer::PeerService;

use crate::config::Settings;
use crate::observe::Observability;

/// How long a clean leave may hold up shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the rest of the server uses of membership.
pub struct Cluster {
    pub watch: MembershipWatch,
    /// `None` when the node does not gossip.
    pub running: Option<Membership>,
    /// Serves the gossip key on the peer channel (first byte 0x01) when gossip runs.
    pub peer_service: Option<PeerService>,
    /// The key service alone, for the peer channel's router; `None` when the node does not
    /// gossip.
    pub keys: Option<KeyService>,
}

impl Cluster {
    /// Leaves the cluster cleanly, so that the others list this node as left.
    pub fn leave(&self) {
        if let Some(m) = &self.running {
            futures_lite::future::block_on(m.leave(LEAVE_TIMEOUT));
        }
    }
}

/// `may_bootstrap`: this node bootstraps the cluster if no member at its join addresses
/// belongs to one (`cluster::Mode::NewUnlessFound`): with peer TLS it then creates the
/// gossip key if none of them gives it in time.
pub fn start(
    settings: &Settings,
    engine: &engine::EngineHandle,
    obs: &Observability,
    may_bootstrap: bool,
) -> anyhow::Result<Cluster> {
    let (node_id, generation) = store::start_generation(&settings.data_dir)
        .context("reading this node's identity (node.meta)")?;
    let Some(g) = &settings.gossip else {
        let started_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let me = NodeIdentity {
            node_id,
            generation,
            renewal: 0,
            started_ms,
            name: NodeIdentity::bounded_name(&settings.node_name),
            gossip_addr: settings
                .bind_addr
                .unwrap_or(crate::config::DEFAULT_BIND_ADDR),
            rpc_addr: settings.advertised_rpc_addr(),
        };
        log::info!("node {node_id} generation {generation}: no cluster flags, gossip off");
        let watch = MembershipWatch::single(&me);
        obs.set_membership(watch.clone());
        return Ok(Cluster {
            watch,
            running: None,
            peer_service: None,
            keys: None,
        });
    };
    let peer_tls = match &g.peer_tls {
        None => None,
        Some(files) => Some(files.load().context("loading the peer TLS settings")?),
    };
    let keys = KeyService::new();
    let ms = MembershipSettings {
        data_dir: settings.data_dir.clone(),
        node_id,
        generation,
        node_name: settings.node_name.clone(),
        bind: g.bind,
        advertise: g.advertise,
        rpc_addr: settings.advertised_rpc_addr(),
        join: g.join.clone(),
        peer_tls: peer_tls.clone(),
        create_key_after: may_bootstrap.then_some(super::cluster::BOOTSTRAP_PROBE),
        config: MembershipConfig::default(),
    };
    let shard_keys = keys.clone();
    let started = futures_lite::future::block_on(engine.on_shard(0, move |_ctx| async move {
        Ok(Membership::start(ms, shard_keys).map_err(|e| e.to_string()))
    }))
    .map_err(|e| anyhow!(e))
    .and_then(|r| r.map_err(|e| anyhow!(e)))
    .context("starting gossip membership")?;
    let watch = started.watch();
    obs.set_membership(watch.clone());
    Ok(Cluster {
        watch,
        keys: Some(keys.clone()),
        running: Some(started),
        peer_service: Some(PeerService {
            handler: Arc::new(keys.clone()),
            tls: peer_tls.map(|t| t.server),
        }),
    })
}
