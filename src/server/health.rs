//! `grpc.health.v1.Health`: Check and Watch.
//!
//! One status for the whole node: NOT_SERVING while starting, SERVING once every shard
//! listens and (in a cluster) the node has caught up with the controller's log,
//! NOT_SERVING again from the moment draining begins.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use event_listener::Event;
use net::server::{Request, ResponseSink};
use net::Status;
use proto::health::v1::health_check_response::ServingStatus;
use proto::health::v1::{HealthCheckRequest, HealthCheckResponse};
use proto::log::v1::paths;

use super::state::AppState;

/// Services this node reports on; "" is the node as a whole.
const SERVICES: [&str; 4] = [
    "",
    paths::LOG_SERVICE,
    paths::ADMIN_SERVICE,
    proto::health::v1::paths::SERVICE,
];

pub struct Health {
    status: AtomicI32,
    /// Notified on every change; watchers on any shard wait on it.
    changed: Event,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            status: AtomicI32::new(ServingStatus::NotServing as i32),
            changed: Event::new(),
        }
    }

    pub fn get(&self) -> ServingStatus {
        ServingStatus::try_from(self.status.load(Ordering::SeqCst))
            .unwrap_or(ServingStatus::Unknown)
    }

    pub fn set(&self, s: ServingStatus) {
        let old = self.status.swap(s as i32, Ordering::SeqCst);
        if old != s as i32 {
            // What clients see also waits for the node to be ready (`effective`): the server
            // logs when it is ("ready: serving gRPC ...").
            log::debug!("health flag: {}", s.as_str_name());
            self.changed.notify(usize::MAX);
        }
    }

    /// Resolves once the status differs from `seen`.
    async fn changed_from(&self, seen: ServingStatus) {
        loop {
            if self.get() != seen {
                return;
            }
            let listener = self.changed.listen();
            // Re-check after registering: a change between the check and `listen` would
            // otherwise be missed.
            if self.get() != seen {
                return;
            }
            listener.await;
        }
    }
}

/// How often a watcher re-checks whether the node has caught up with its cluster (that
/// changes without an event here).
const CLUSTER_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// The status clients see: a node that serves but has not joined and caught up with the
/// controller's log is NOT_SERVING, as its `/readyz` is 503 (see
/// `consensus::raft::seam::ready`).
fn effective(state: &AppState) -> ServingStatus {
    match state.health.get() {
        ServingStatus::Serving if consensus::raft::seam::ready(&state.cluster).is_err() => {
            ServingStatus::NotServing
        }
        s => s,
    }
}

fn known(service: &str) -> bool {
    SERVICES.contains(&service)
}

pub async fn check(
    state: Arc<AppState>,
    req: Request<HealthCheckRequest>,
) -> Result<HealthCheckResponse, Status> {
    let service = req.message.service;
    if !known(&service) {
        return Err(Status::not_found(format!("unknown service {service:?}")));
    }
    Ok(HealthCheckResponse {
        status: effective(&state) as i32,
    })
}

pub async fn watch(
    state: Arc<AppState>,
    req: Request<bytes::Bytes>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let req: HealthCheckRequest = net::decode(req.message)?;
    if !known(&req.service) {
        // The health protocol asks Watch to report SERVICE_UNKNOWN and keep the stream open.
        sink.send_message(&HealthCheckResponse {
            status: ServingStatus::ServiceUnknown as i32,
        })
        .await?;
        return state.draining().await;
    }
    let mut sent: Option<ServingStatus> = None;
    loop {
        let stored = state.health.get();
        let current = effective(&state);
        if sent != Some(current) {
            sink.send_message(&HealthCheckResponse {
                status: current as i32,
            })
            .await?;
            sent = Some(current);
        }
        // Checked after sending, so a watcher sees NOT_SERVING before its stream ends.
        if state.shutdown.is_triggered() {
            return Err(Status::unavailable("server is shutting down"));
        }
        futures_lite::future::or(state.health.changed_from(stored), async {
            futures_lite::future::or(state.shutdown.wait(), async {
                glommio::timer::sleep(CLUSTER_RECHECK).await;
            })
            .await;
        })
        .await;
    }
}
