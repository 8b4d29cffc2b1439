//! What every handler shares, on whichever shard it runs: [`AppState`], one for the node,
//! and [`ShardState`], one per shard, which adds the shard's own seam objects.

use std::net::SocketAddr;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use consensus::membership::MembershipWatch;
use engine::seam::{Factory, Partitions, TopicConfig, Topics};
use net::server::Request;
use net::tls::TlsInfo;
use net::Shutdown;
use proto::log::v1::DEFAULT_TOPIC;

use super::acl::{Action, Authorizer, ANY_OBJECT};
use super::health::Health;

/// Shared by all shards: everything here is `Send + Sync`, so one `Arc` serves every
/// executor's router.
pub struct AppState {
    /// Builds each shard's seam objects (the only way handlers reach partitions and topics).
    pub seam: Arc<dyn Factory>,
    pub health: Arc<Health>,
    /// Fires when the server starts draining; long-lived streams end on it so that draining
    /// does not wait for the drain timeout.
    pub shutdown: Shutdown,
    pub node_name: String,
    pub rpc_addr: SocketAddr,
    /// Largest gRPC message in either direction: bounds batch reads.
    pub max_message_bytes: usize,
    /// Settings for topics created without explicit ones.
    pub default_log: TopicConfig,
    /// Who may do what; disabled unless ACL files are configured. Reloaded in place.
    pub authz: Arc<Authorizer>,
    /// The cluster's members as gossip sees them (this node alone without gossip).
    pub members: MembershipWatch,
    /// Whether this node gossips (started with --bind-addr or --start-join-addrs).
    pub gossip: bool,
    /// The controller's state as this node applied it, and the node's Raft groups.
    pub cluster: Arc<consensus::cluster::ClusterNode>,
}

impl AppState {
    /// Authorizes `act` by the caller of `req` on `topic` as the request names it (`None`
    /// for calls about every topic).
    pub fn authorize<T>(
        &self,
        req: &Request<T>,
        act: Action,
        topic: Option<&str>,
    ) -> Result<(), net::Status> {
        self.authorize_tls(req.tls.as_deref(), act, topic)
    }

    /// [`authorize`](Self::authorize) for a caller known by its TLS information.
    pub fn authorize_tls(
        &self,
        tls: Option<&TlsInfo>,
        act: Action,
        topic: Option<&str>,
    ) -> Result<(), net::Status> {
        if !self.authz.is_enabled() {
            return Ok(());
        }
        // A request without a topic goes to the default topic; the book's server (whose
        // clients never name one) words the denial `... to *`.
        let (obj, shown) = match topic {
            None => (ANY_OBJECT, ANY_OBJECT),
            Some("") => (DEFAULT_TOPIC, ANY_OBJECT),
            Some(t) => (t, t),
        };
        self.authz.check(tls, act, obj, shown)
    }

    /// Lets any authenticated caller through when authorization is on (see
    /// [`Authorizer::authenticate`]).
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<(), net::Status> {
        self.authz.authenticate(req.tls.as_deref())
    }

    /// Resolves once shutdown begins, with the status that long-lived calls end with.
    pub async fn draining(&self) -> Result<(), net::Status> {
        self.shutdown.wait().await;
        Err(net::Status::unavailable("server is shutting down"))
    }
}

/// What the data handlers of one shard share: the node's state and the shard's seam objects
/// (`!Send`: built on the shard's executor, with the router that uses them).
pub struct ShardState {
    pub app: Arc<AppState>,
    pub partitions: Rc<dyn Partitions>,
    pub topics: Rc<dyn Topics>,
}

impl ShardState {
    /// The state of the executor this is called on.
    pub fn new(app: &Arc<AppState>) -> Rc<ShardState> {
        let seam = app.seam.build();
        Rc::new(ShardState {
            app: app.clone(),
            partitions: seam.partitions,
            topics: seam.topics,
        })
    }
}

/// A shard's state is the node's plus its seam: handlers call `authorize` and read settings
/// through it as through the node's.
impl Deref for ShardState {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.app
    }
}
