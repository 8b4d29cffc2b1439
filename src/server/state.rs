//! What every handler shares, on whichever shard it runs.

use std::net::SocketAddr;
use std::sync::Arc;

use consensus::membership::MembershipWatch;
use engine::{EngineHandle, LogConfig};
use net::server::Request;
use net::tls::TlsInfo;
use net::Shutdown;
use proto::log::v1::DEFAULT_TOPIC;

use super::acl::{Action, Authorizer, ANY_OBJECT};
use super::health::Health;

/// Shared by all shards: everything here is `Send + Sync`, so one `Arc` serves every
/// executor's router.
pub struct AppState {
    pub engine: EngineHandle,
    pub health: Arc<Health>,
    /// Fires when the server starts draining; long-lived streams end on it so that draining
    /// does not wait for the drain timeout.
    pub shutdown: Shutdown,
    pub node_name: String,
    pub rpc_addr: SocketAddr,
    /// Largest gRPC message in either direction: bounds batch reads.
    pub max_message_bytes: usize,
    /// Settings for topics created without explicit ones.
    pub default_log: LogConfig,
    /// Who may do what; disabled unless ACL files are configured. Reloaded in place.
    pub authz: Arc<Authorizer>,
    /// The cluster's members as gossip sees them (this node alone without gossip).
    pub members: MembershipWatch,
    /// Whether this node gossips (started with --bind-addr or --start-join-addrs).
    pub gossip: bool,
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
