//! One HTTP/2 server connection: handshake, accept streams, keepalive, the idle timeout,
//! eviction, rapid-reset defence and graceful shutdown.
//!
//! A connection ends with a GOAWAY (then closes once the client has it, or after
//! [`GOAWAY_LINGER`]) when it ran no call for the idle timeout (as grpc-go's
//! `MaxConnectionIdle`), when the shard's registry evicts it to make room for a new client,
//! or, with ENHANCE_YOUR_CALM, when its client resets calls faster than allowed.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use glommio::timer::Timer;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};

use super::call::serve_call;
use super::metered::MeteredIo;
use super::registry::{CallAdmit, ConnState, Registry};
use super::router::Router;
use super::{unless_evicted, ServerConfig};
use crate::conn_log;
use crate::keepalive::KeepAlive;
use crate::limits::{EVICT_LINGER, GOAWAY_LINGER};
use crate::memory::ConnMemory;
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
    /// Calls running, idleness, eviction and client resets (see `registry`).
    pub(crate) state: Rc<ConnState>,
    /// The executor's registry, which bounds its calls.
    pub(crate) calls: Rc<Registry>,
    /// The connection's share of the memory budget; dropped (returning everything) with
    /// the connection's last call.
    pub(crate) memory: Rc<ConnMemory>,
}

/// Why the server is closing a connection that it did not have to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Idle,
    Evicted,
    RapidReset,
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
        .max_frame_size(cfg.max_frame_bytes)
        .data_frame_budget(cfg.data_frame_budget_bytes)
        .handshake::<MeteredIo<T>, Bytes>(MeteredIo::new(io, shared.memory.clone()));
    let handshake = glommio::timer::timeout(cfg.handshake_timeout, async { Ok(handshake.await) });
    let mut conn = match unless_evicted(&shared.state, handshake).await {
        // Evicted before HTTP/2 was up: nothing to say goodbye with.
        None => return Ok(()),
        Some(Ok(Ok(c))) => c,
        Some(Ok(Err(e))) => return Err(Error::Handshake { peer, source: e }),
        Some(Err(_)) => return Err(Error::HandshakeTimeout(peer)),
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
    let state = shared.state.clone();
    // (the idle period it was armed for, the timer)
    let mut idle_timer: Option<(Instant, Timer)> = None;
    let mut closing: Option<(Closing, Timer)> = None;

    poll_fn(|cx| {
        state.register(cx.waker());
        if closing.is_none() && drain_timer.is_none() {
            let why = if state.is_calm_needed() {
                Some(Closing::RapidReset)
            } else if state.is_evicted() {
                Some(Closing::Evicted)
            } else {
                poll_idle(&mut idle_timer, &state, &cfg, cx).then_some(Closing::Idle)
            };
            if let Some(why) = why {
                close(&mut conn, why, peer);
                // An evicted connection no longer counts: it gets only the moment its
                // GOAWAY takes, so that sockets closing cannot pile up past the limit.
                let linger = match why {
                    Closing::Evicted => EVICT_LINGER,
                    _ => GOAWAY_LINGER,
                };
                closing = Some((why, Timer::new(linger)));
            }
        }
        if let Some((_, t)) = closing.as_mut() {
            if Pin::new(t).poll(cx).is_ready() {
                // The client did not take the GOAWAY and close in time.
                return Poll::Ready(Ok(()));
            }
        }
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
                    // Counted from here, so the connection is busy before the task first runs.
                    let running = match shared.calls.start_call(&shared.state) {
                        CallAdmit::Yes(running, ended) => {
                            if let Some(waited) = ended {
                                conn_log!(
                                    log::Level::Warn,
                                    "call-ended-for-room",
                                    "{} calls open on this shard (the bound): ending the one that waited the longest ({waited:?}) for its client to send a message, for a call from {peer:?}",
                                    shared.calls.calls()
                                );
                            }
                            running
                        }
                        CallAdmit::Full => {
                            conn_log!(
                                log::Level::Warn,
                                "call-refused",
                                "refusing a call from {peer:?}: {} calls open on this shard (the bound), the server working on all of them",
                                shared.calls.calls()
                            );
                            // Not processed: a client may send it again.
                            let mut respond = respond;
                            respond.send_reset(Reason::REFUSED_STREAM);
                            continue;
                        }
                    };
                    let shared = shared.clone();
                    glommio::spawn_local(serve_call(req, respond, shared, running)).detach();
                }
                // A connection we are closing may end in an error the client caused by
                // closing first; what matters was logged when the close began.
                Poll::Ready(Some(Err(_))) if closing.is_some() => return Poll::Ready(Ok(())),
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

/// Whether the connection has run no call for the idle timeout; arms the timer for the
/// current idle period (re-armed whenever a new one begins).
fn poll_idle(
    timer: &mut Option<(Instant, Timer)>,
    state: &ConnState,
    cfg: &ServerConfig,
    cx: &mut std::task::Context<'_>,
) -> bool {
    let (Some(timeout), Some(since)) = (cfg.idle_timeout, state.idle_since()) else {
        *timer = None;
        return false;
    };
    if timer.as_ref().is_none_or(|(armed, _)| *armed != since) {
        let left = (since + timeout).saturating_duration_since(Instant::now());
        *timer = Some((since, Timer::new(left)));
    }
    match timer.as_mut() {
        Some((_, t)) => Pin::new(t).poll(cx).is_ready(),
        None => false,
    }
}

/// Starts closing a connection with a GOAWAY saying why.
fn close<T, B>(conn: &mut h2::server::Connection<T, B>, why: Closing, peer: Option<SocketAddr>)
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: bytes::Buf,
{
    match why {
        Closing::Idle => {
            log::debug!("connection {peer:?}: idle, sending GOAWAY");
            conn.graceful_shutdown();
        }
        // Logged by the registry when it chose this connection. It is quiet: its calls, if
        // any, still wait for their request and nothing of them was processed, so the
        // one-step GOAWAY (no PING round trip first) loses nothing and closes at once.
        Closing::Evicted => conn.abrupt_shutdown(Reason::NO_ERROR),
        Closing::RapidReset => {
            conn_log!(
                log::Level::Warn,
                "conn-rapid-reset",
                "connection {peer:?}: the client resets calls faster than allowed (rapid reset); sending GOAWAY ENHANCE_YOUR_CALM and closing"
            );
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
        }
    }
}
