//! One HTTP/2 server connection: handshake, accept streams, keepalive,
//! graceful shutdown.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use glommio::timer::Timer;
use tokio::io::{AsyncRead, AsyncWrite};

use super::call::serve_call;
use super::router::Router;
use super::ServerConfig;
use crate::keepalive::KeepAlive;
use crate::tls::TlsInfo;
use crate::{Error, Shutdown, Status};

/// What every call on a connection shares.
pub(crate) struct ConnShared {
    pub(crate) router: Rc<Router>,
    pub(crate) config: Rc<ServerConfig>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) tls: Option<Arc<TlsInfo>>,
    /// Set on a plaintext connection to a TLS port: every call gets this status, and the
    /// connection closes after the first call or the TLS handshake timeout.
    pub(crate) refuse: Option<Status>,
    /// Set once shutdown began: streams that h2 still accepts (opened before
    /// the client saw GOAWAY) get UNAVAILABLE instead of running.
    pub(crate) draining: Rc<Cell<bool>>,
    /// Hears of every call (metrics, call logs); `None` costs nothing.
    pub(crate) observer: Option<Rc<dyn crate::observe::CallObserver>>,
}

/// Drives one connection to its end. Returns when the peer closed, the
/// connection failed, or shutdown finished draining it.
pub(crate) async fn drive<T>(io: T, shared: Rc<ConnShared>, shutdown: Shutdown) -> Result<(), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let cfg = shared.config.clone();
    let peer = shared.peer;
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_pending_accept_reset_streams(cfg.max_pending_accept_reset_streams)
        .max_header_list_size(cfg.max_header_list_bytes)
        .initial_window_size(cfg.initial_stream_window_bytes)
        .initial_connection_window_size(cfg.initial_connection_window_bytes)
        .max_send_buffer_size(cfg.max_send_buffer_bytes)
        .handshake::<T, Bytes>(io);
    let mut conn =
        match glommio::timer::timeout(cfg.handshake_timeout, async { Ok(handshake.await) }).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Error::Handshake { peer, source: e }),
            Err(_) => return Err(Error::HandshakeTimeout(peer)),
        };

    let mut keepalive = match (cfg.keepalive_interval, conn.ping_pong()) {
        (Some(interval), Some(pp)) => {
            Some(KeepAlive::new(pp, peer, interval, cfg.keepalive_timeout))
        }
        _ => None,
    };
    let mut shutdown_wait = pin!(shutdown.wait());
    let mut drain_timer: Option<Timer> = None;
    // A refused connection lives only long enough to tell its client why.
    let mut refuse_timer = shared
        .refuse
        .is_some()
        .then(|| Timer::new(cfg.tls_handshake_timeout));
    let mut refused_one = false;

    poll_fn(|cx| {
        if drain_timer.is_none() && shutdown_wait.as_mut().poll(cx).is_ready() {
            log::debug!("connection {peer:?}: shutdown, sending GOAWAY");
            shared.draining.set(true);
            conn.graceful_shutdown();
            drain_timer = Some(Timer::new(cfg.drain_timeout));
        }
        if let Some(t) = drain_timer.as_mut() {
            if Pin::new(t).poll(cx).is_ready() {
                return Poll::Ready(Err(Error::DrainTimeout(peer, cfg.drain_timeout)));
            }
        }
        if let Some(t) = refuse_timer.as_mut() {
            if Pin::new(t).poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        if let Some(ka) = keepalive.as_mut() {
            if let Poll::Ready(Err(e)) = ka.poll(cx) {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    if shared.refuse.is_some() && !refused_one {
                        refused_one = true;
                        conn.graceful_shutdown();
                    }
                    let shared = shared.clone();
                    glommio::spawn_local(serve_call(req, respond, shared)).detach();
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(Error::Connection { peer, source: e }))
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}
