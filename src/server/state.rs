//! What every handler shares, on whichever shard it runs.

use std::net::SocketAddr;
use std::sync::Arc;

use engine::{EngineHandle, LogConfig};
use net::Shutdown;

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
}

impl AppState {
    /// Resolves once shutdown begins, with the status that long-lived calls end with.
    pub async fn draining(&self) -> Result<(), net::Status> {
        self.shutdown.wait().await;
        Err(net::Status::unavailable("server is shutting down"))
    }
}
