//! `grpc.health.v1.Health`: Check and Watch.
//!
//! One status for the whole node: NOT_SERVING while starting, SERVING once every shard
//! listens, NOT_SERVING again from the moment draining begins.

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
            log::info!("health: {}", s.as_str_name());
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
        status: state.health.get() as i32,
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
        let current = state.health.get();
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
        futures_lite::future::or(state.health.changed_from(current), async {
            state.shutdown.wait().await;
        })
        .await;
    }
}
