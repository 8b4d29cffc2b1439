//! The gRPC server: one SO_REUSEPORT listener per executor, one local task
//! per connection, one local task per call.
//!
//! Each connection's first byte says what it speaks (TLS, plaintext HTTP/2,
//! or the byte reserved for replication); see [`transport`] for the table.
//!
//! ```no_run
//! use bytes::Bytes;
//! use net::server::{Router, Response, Server, ServerConfig};
//! use net::Shutdown;
//!
//! let shutdown = Shutdown::new();
//! let make_router = || {
//!     Router::new().unary("/echo.Echo/Say", |req| async move {
//!         Ok(Response::new(req.message))
//!     })
//! };
//! let pool = net::server::spawn_pool(
//!     2,
//!     "127.0.0.1:50051".parse().unwrap(),
//!     ServerConfig::default(),
//!     make_router,
//!     shutdown.clone(),
//! )
//! .unwrap();
//! // ... later, from any thread:
//! shutdown.trigger();
//! pool.join().unwrap();
//! ```

mod balance;
mod call;
mod conn;
pub(crate) mod metered;
pub(crate) mod registry;
mod router;
pub mod transport;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Gate;
use tokio::io::{AsyncRead, AsyncWrite};

pub use balance::Balancer;
pub use router::{LocalBoxFuture, MessageStream, Request, Response, ResponseSink, Router};

use crate::conn_log;
use crate::limits;
use crate::memory::{ConnMemory, MemoryBudget};
use crate::observe::CallObserver;
use crate::socket::Socket;
use crate::tls::{ServerTls, TlsInfo};
use crate::{Error, Shutdown, Status};
use balance::Placed;
use conn::ConnShared;
use registry::{Admit, ConnState, Registry, Slot};
use transport::{REPLICATION_BYTE, TLS_HANDSHAKE_BYTE};

/// Limits and timers of a server. Every limit is per executor (shard) or
/// per connection, as named; the defaults and their reasons are in [`limits`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections one executor serves at once, handshakes included. At the limit the one
    /// idle the longest is closed for a new one; when none is idle the new one is closed.
    pub max_connections_per_shard: usize,
    /// A connection running no call for this long gets GOAWAY and closes; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Client stream resets allowed per second per connection, on average; over it the
    /// connection gets GOAWAY (ENHANCE_YOUR_CALM) and closes. 0 turns the check off.
    pub max_resets_per_second: u32,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls in flight per connection.
    pub max_concurrent_streams: u32,
    /// Calls a client reset before this server accepted them, per connection; more close
    /// the connection with GOAWAY ENHANCE_YOUR_CALM (the HTTP/2 "rapid reset" guard).
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_bytes: u32,
    pub max_recv_message_bytes: usize,
    pub max_send_message_bytes: usize,
    /// HTTP/2 receive windows: how much a client may send before we read.
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    /// Bytes h2 may buffer per stream for sending.
    pub max_send_buffer_bytes: usize,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE: the largest frame a client may send us.
    pub max_frame_bytes: u32,
    /// h2's budget for small DATA frames waiting to be read (see the limit's reasoning).
    pub data_frame_budget_bytes: usize,
    /// Messages a streaming handler may queue ahead of the socket.
    pub response_buffer_messages: usize,
    /// Interval between keepalive PINGs; `None` disables them.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for a PING ack before closing the connection.
    pub keepalive_timeout: Duration,
    /// Bound on the HTTP/2 preface and SETTINGS exchange.
    pub handshake_timeout: Duration,
    /// How long in-flight calls may run after shutdown begins.
    pub drain_timeout: Duration,
    /// TLS for every connection (with a client CA: mutual TLS). When set, plaintext
    /// connections are refused; when not, TLS ClientHellos are.
    pub tls: Option<Arc<ServerTls>>,
    /// Bound on waiting for a connection's first byte and on the TLS handshake, each.
    pub tls_handshake_timeout: Duration,
    /// Serves peer connections (first byte 0x01); `None` closes them.
    pub peer: Option<crate::peer::PeerService>,
    /// The server-wide memory budget every connection's buffers are charged to (shared by
    /// every executor: clone the config, not the budget's value). See [`crate::memory`].
    pub memory: Arc<MemoryBudget>,
    /// One connection's share of `memory`.
    pub connection_memory_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections_per_shard: limits::MAX_CONNECTIONS_PER_SHARD,
            idle_timeout: Some(limits::CONNECTION_IDLE_TIMEOUT),
            max_resets_per_second: limits::MAX_RESETS_PER_SECOND,
            max_concurrent_streams: limits::MAX_CONCURRENT_STREAMS,
            max_pending_accept_reset_streams: limits::MAX_PENDING_ACCEPT_RESET_STREAMS,
            max_header_list_bytes: limits::MAX_HEADER_LIST_BYTES,
            max_recv_message_bytes: limits::MAX_MESSAGE_BYTES,
            max_send_message_bytes: limits::MAX_MESSAGE_BYTES,
            initial_stream_window_bytes: limits::STREAM_WINDOW_BYTES,
            initial_connection_window_bytes: limits::CONNECTION_WINDOW_BYTES,
            max_send_buffer_bytes: limits::MAX_SEND_BUFFER_BYTES,
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            data_frame_budget_bytes: limits::DATA_FRAME_BUDGET_BYTES,
            response_buffer_messages: limits::RESPONSE_BUFFER_MESSAGES,
            keepalive_interval: Some(limits::KEEPALIVE_INTERVAL),
            keepalive_timeout: limits::KEEPALIVE_TIMEOUT,
            handshake_timeout: limits::HANDSHAKE_TIMEOUT,
            drain_timeout: limits::DRAIN_TIMEOUT,
            tls: None,
            tls_handshake_timeout: limits::TLS_HANDSHAKE_TIMEOUT,
            peer: None,
            memory: MemoryBudget::new(limits::MEMORY_BUDGET_BYTES),
            connection_memory_bytes: limits::CONNECTION_MEMORY_BYTES,
        }
    }
}

/// Calls open at once on one executor's connections: twice its connections, so that at the
/// connection limit every client may still run a couple of calls (a tail and a producer),
/// while streams that never send a message cannot grow without bound (1,024 on each of
/// thousands of connections): see `registry`.
fn max_calls_per_shard(cfg: &ServerConfig) -> usize {
    cfg.max_connections_per_shard.saturating_mul(2).max(64)
}

/// A server bound to the current executor. Build one per executor: the
/// router's handlers are `!Send`.
#[derive(Clone)]
pub struct Server {
    config: Rc<ServerConfig>,
    router: Rc<Router>,
    connections: Rc<Registry>,
    observer: Option<Rc<dyn CallObserver>>,
    /// The balancer shared with the other executors, and this executor's number in it.
    balance: Option<(Arc<Balancer>, usize)>,
    /// Refused connections being closed with a FIN (see [`REFUSED_LINGERING`]).
    lingering: Rc<Cell<usize>>,
}

/// Refused connections closed gracefully at once per executor (drained for a moment so that
/// the client sees a close, not a reset); past it a refused connection is dropped, so that a
/// flood cannot hold descriptors in lingering closes.
const REFUSED_LINGERING: usize = 64;

impl Server {
    pub fn new(config: ServerConfig, router: Router) -> Server {
        let max_calls = max_calls_per_shard(&config);
        Server {
            config: Rc::new(config),
            router: Rc::new(router),
            connections: Rc::new(Registry::new(max_calls)),
            observer: None,
            balance: None,
            lingering: Rc::new(Cell::new(0)),
        }
    }

    /// Spreads accepted connections over the executors sharing `balancer` (see
    /// [`Balancer`]); this executor is number `executor` in it, and takes connections from
    /// the others while [`serve`](Self::serve) runs.
    pub fn with_balancer(mut self, balancer: Arc<Balancer>, executor: usize) -> Server {
        self.balance = Some((balancer, executor));
        self
    }

    /// Reports this executor's connections and calls to `observer` (metrics, call logs),
    /// and makes each call's trace context current while it runs (see [`crate::observe`]).
    pub fn with_observer(mut self, observer: Rc<dyn CallObserver>) -> Server {
        self.observer = Some(observer);
        self
    }

    /// Connections currently counted on this executor (handshakes included).
    pub fn connection_count(&self) -> usize {
        self.connections.count()
    }

    /// How many resets a connection may make at once before the rate applies.
    fn reset_burst(&self) -> u32 {
        self.config.max_concurrent_streams.max(1)
    }

    /// Binds `addr` with SO_REUSEPORT on the current executor and serves
    /// until `shutdown` fires and every connection has drained.
    pub async fn serve(self, addr: SocketAddr, shutdown: Shutdown) -> Result<(), Error> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::Bind {
            addr,
            source: e.into(),
        })?;
        self.serve_listener(listener, shutdown).await
    }

    /// Serves an already-bound listener (see [`serve`](Self::serve)).
    pub async fn serve_listener(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), Error> {
        let local = listener.local_addr().ok();
        // Each shard's listener; the server says once at info level that it is ready.
        log::debug!("serving gRPC on {}", crate::show_peer(&local));
        let gate = Gate::new();
        if let Some(inbox) = self.balance.as_ref().and_then(|(b, i)| b.inbox(*i)) {
            let this = self.clone();
            let (stop, gate2) = (shutdown.clone(), gate.clone());
            let receiving = async move {
                loop {
                    let next =
                        futures_lite::future::or(async { Some(inbox.next().await) }, async {
                            stop.wait().await;
                            None
                        })
                        .await;
                    let Some((stream, peer, placed)) = next else {
                        break;
                    };
                    if this
                        .start_connection(stream, peer, Some(placed), &stop, &gate2)
                        .is_err()
                    {
                        break;
                    }
                }
            };
            // Spawned outside the gate: it ends with the shutdown signal, and the
            // connections it starts are the gate's.
            glommio::spawn_local(receiving).detach();
        }
        let result = loop {
            let accepted =
                futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    shutdown.wait().await;
                    None
                })
                .await;
            let stream = match accepted {
                None => break Ok(()),
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    let e: std::io::Error = e.into();
                    // Running out of descriptors or memory is transient:
                    // back off instead of spinning or dying (and say so once per window,
                    // not every 50 ms).
                    conn_log!(
                        log::Level::Warn,
                        "accept-failed",
                        "accept on {}: {e}{}",
                        crate::show_peer(&local),
                        if e.raw_os_error() == Some(libc::EMFILE) {
                            " (this process's file-descriptor limit, RLIMIT_NOFILE: connections \
                             wait in the listen queue until one is closed; raise it)"
                        } else {
                            ""
                        }
                    );
                    glommio::timer::sleep(limits::ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            };
            let peer = stream.peer_addr().ok();
            let (stream, placed) = match &self.balance {
                None => (stream, None),
                Some((balancer, here)) => match balancer.route(*here, stream, peer) {
                    Ok((stream, placed)) => (stream, Some(placed)),
                    // Handed to another executor.
                    Err(()) => continue,
                },
            };
            if self
                .start_connection(stream, peer, placed, &shutdown, &gate)
                .is_err()
            {
                break Ok(());
            }
        };
        drop(listener);
        // Connections received the same signal: wait for them to drain.
        let _ = gate.close().await;
        log::debug!("gRPC server on {} stopped", crate::show_peer(&local));
        result
    }

    /// Counts and starts an accepted connection (refused when the executor is full of busy
    /// ones). `Err` when the server stopped taking connections.
    fn start_connection(
        &self,
        stream: TcpStream,
        peer: Option<SocketAddr>,
        placed: Option<Placed>,
        shutdown: &Shutdown,
        gate: &Gate,
    ) -> Result<(), ()> {
        let limit = self.config.max_connections_per_shard;
        // Counted now, not when the task first runs, so that a burst of accepts cannot
        // overshoot the limit.
        let slot = match self.connections.admit(limit, self.reset_burst()) {
            Admit::Yes(slot, evicted) => {
                if let Some(idle) = evicted {
                    conn_log!(
                        log::Level::Info,
                        "conn-evicted",
                        "{limit} connections open on this shard: closing the one quiet the longest ({idle:?}: idle, or its calls waiting for their client) to accept {peer:?}"
                    );
                }
                slot
            }
            Admit::Full => {
                conn_log!(
                    log::Level::Warn,
                    "conn-refused",
                    "refusing connection from {peer:?}: {limit} connections open on this shard, all running calls the server works on"
                );
                // With a FIN, not a reset, while few are being closed so.
                if self.lingering.get() < REFUSED_LINGERING {
                    let lingering = self.lingering.clone();
                    lingering.set(lingering.get() + 1);
                    let closing = async move {
                        transport::close_gracefully(stream).await;
                        lingering.set(lingering.get() - 1);
                    };
                    match gate.spawn(closing) {
                        // Detached: a task handle dropped cancels its task.
                        Ok(task) => {
                            task.detach();
                        }
                        Err(_) => self.lingering.set(self.lingering.get() - 1),
                    }
                }
                return Ok(());
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("set_nodelay for {peer:?}: {e}");
        }
        let fut = self.connection_task(stream, peer, shutdown.clone(), (slot, placed));
        gate.spawn(fut)
            .map(|t| {
                t.detach();
            })
            .map_err(|_| ())
    }

    /// Serves one already-accepted connection: the seam for transports
    /// other than plain TCP (a TLS acceptor wraps the socket and hands the
    /// result here). Counts toward `connection_count`, but is never refused or evicted:
    /// such a transport brings its own limits.
    pub async fn serve_connection<T>(
        &self,
        io: T,
        peer: Option<SocketAddr>,
        shutdown: Shutdown,
    ) -> Result<(), Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let slot = self
            .connections
            .add(std::time::Instant::now(), self.reset_burst());
        if let Some(o) = &self.observer {
            o.connection_opened(peer);
        }
        let r = self.drive(io, peer, None, shutdown, &slot.state).await;
        if let Some(o) = &self.observer {
            o.connection_closed(peer);
        }
        r
    }

    fn shared(
        &self,
        peer: Option<SocketAddr>,
        tls: Option<Arc<TlsInfo>>,
        refuse: Option<Status>,
        state: &Rc<ConnState>,
    ) -> Rc<ConnShared> {
        Rc::new(ConnShared {
            router: self.router.clone(),
            config: self.config.clone(),
            peer,
            tls,
            refuse,
            draining: Rc::new(Cell::new(false)),
            observer: self.observer.clone(),
            state: state.clone(),
            calls: self.connections.clone(),
            memory: ConnMemory::new(
                self.config.memory.clone(),
                self.config.connection_memory_bytes,
            ),
        })
    }

    async fn drive<T>(
        &self,
        io: T,
        peer: Option<SocketAddr>,
        tls: Option<Arc<TlsInfo>>,
        shutdown: Shutdown,
        state: &Rc<ConnState>,
    ) -> Result<(), Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        conn::drive(io, self.shared(peer, tls, None, state), shutdown).await
    }

    /// Dispatches an accepted TCP connection on its first byte (see [`transport`]).
    async fn accept(
        &self,
        stream: TcpStream,
        peer: Option<SocketAddr>,
        shutdown: Shutdown,
        state: &Rc<ConnState>,
    ) -> Result<(), Error> {
        let within = self.config.tls_handshake_timeout;
        // Before HTTP/2 is up there is no GOAWAY to send: an eviction closes at once.
        let first = unless_evicted(
            state,
            glommio::timer::timeout(within, async { Ok(transport::peek_first(&stream).await) }),
        )
        .await;
        let first = match first {
            None => return Ok(()),
            Some(Ok(Ok(Some(b)))) => b,
            Some(Ok(Ok(None))) => return Ok(()),
            Some(Ok(Err(e))) => {
                log::debug!("connection from {peer:?}: {e}");
                return Ok(());
            }
            Some(Err(_)) => return Err(Error::FirstByteTimeout { peer, within }),
        };
        match (first, &self.config.tls) {
            (REPLICATION_BYTE, _) => match self.config.peer.clone() {
                Some(service) => {
                    self.accept_peer(stream, peer, service, shutdown, state)
                        .await
                }
                None => {
                    conn_log!(
                        log::Level::Warn,
                        "conn-peer-refused",
                        "peer connection from {peer:?} (first byte 0x01): this node serves no peer channel; closing it"
                    );
                    transport::close_gracefully(stream).await;
                    Ok(())
                }
            },
            (TLS_HANDSHAKE_BYTE, None) => {
                conn_log!(
                    log::Level::Warn,
                    "conn-tls-to-plaintext",
                    "TLS connection from {peer:?} to a plaintext port (no server certificate configured): closing it"
                );
                transport::close_gracefully(stream).await;
                Ok(())
            }
            (TLS_HANDSHAKE_BYTE, Some(tls)) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let accepting = acceptor.accept(Socket::new(stream));
                let accepting = glommio::timer::timeout(within, async { Ok(accepting.await) });
                let io = match unless_evicted(state, accepting).await {
                    None => return Ok(()),
                    Some(Ok(Ok(io))) => io,
                    Some(Ok(Err(source))) => return Err(Error::TlsHandshake { peer, source }),
                    Some(Err(_)) => return Err(Error::TlsHandshakeTimeout(peer)),
                };
                let info = TlsInfo::from_server(io.get_ref().1);
                log::debug!(
                    "TLS from {peer:?}: {} {} client {:?}",
                    info.protocol_version,
                    info.cipher_suite,
                    info.client_subject
                );
                self.drive(io, peer, Some(Arc::new(info)), shutdown, state)
                    .await
            }
            (_, Some(_)) => {
                conn_log!(
                    log::Level::Warn,
                    "conn-plaintext-to-tls",
                    "plaintext connection from {peer:?} to a TLS-only port: answering its calls with UNAUTHENTICATED and closing it"
                );
                // Spoken to in HTTP/2, so that a gRPC client reports why instead of
                // "connection reset"; no call runs. Anything else fails the HTTP/2
                // handshake and is closed.
                let refuse = Some(Status::unauthenticated(transport::TLS_REQUIRED));
                let shared = self.shared(peer, None, refuse, state);
                match conn::drive(Socket::new(stream), shared, shutdown).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        log::debug!("refused plaintext connection: {e}");
                        Ok(())
                    }
                }
            }
            (_, None) => {
                self.drive(Socket::new(stream), peer, None, shutdown, state)
                    .await
            }
        }
    }

    /// A peer connection: consume the mark, run mutual TLS when configured, hand over.
    async fn accept_peer(
        &self,
        mut stream: TcpStream,
        peer: Option<SocketAddr>,
        service: crate::peer::PeerService,
        shutdown: Shutdown,
        state: &Rc<ConnState>,
    ) -> Result<(), Error> {
        // A peer link is never idle to the registry: it is counted, but never evicted to
        // make room for a client.
        let _busy = state.stream_started();
        use futures_lite::AsyncReadExt;
        let mut mark = [0u8; 1];
        if let Err(e) = stream.read_exact(&mut mark).await {
            log::debug!("peer connection from {peer:?}: {e}");
            return Ok(());
        }
        let within = self.config.tls_handshake_timeout;
        let conn = match service.tls {
            None => crate::peer::PeerConn {
                stream: Box::new(Socket::new(stream)),
                peer,
                tls: None,
            },
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let accepting = acceptor.accept(Socket::new(stream));
                let io = match glommio::timer::timeout(within, async { Ok(accepting.await) }).await
                {
                    Ok(Ok(io)) => io,
                    Ok(Err(source)) => return Err(Error::TlsHandshake { peer, source }),
                    Err(_) => return Err(Error::TlsHandshakeTimeout(peer)),
                };
                let info = TlsInfo::from_server(io.get_ref().1);
                crate::peer::PeerConn {
                    stream: Box::new(io),
                    peer,
                    tls: Some(info),
                }
            }
        };
        // Peer links are long-lived (a Raft connection lasts as long as both nodes run): on
        // shutdown they close at once instead of holding the drain for its whole timeout.
        futures_lite::future::or(service.handler.serve(conn), shutdown.wait()).await;
        Ok(())
    }

    /// A counted connection's whole life: the observer hears of it from accept (so that
    /// handshakes show in the connection gauge) until its slot frees.
    fn connection_task(
        &self,
        stream: TcpStream,
        peer: Option<SocketAddr>,
        shutdown: Shutdown,
        (slot, placed): (Slot, Option<Placed>),
    ) -> impl std::future::Future<Output = ()> + 'static {
        let this = self.clone();
        async move {
            if let Some(o) = &this.observer {
                o.connection_opened(peer);
            }
            match this.accept(stream, peer, shutdown, &slot.state).await {
                Ok(()) => log::debug!("connection {peer:?} closed"),
                Err(e) if e.is_peer_gone() => log::debug!("{e}"),
                Err(e) => conn_log!(log::Level::Info, &e.log_kind(), "{e}"),
            }
            drop(slot);
            drop(placed);
            if let Some(o) = &this.observer {
                o.connection_closed(peer);
            }
        }
    }
}

/// `fut`'s output, or `None` if the connection is evicted first.
pub(crate) async fn unless_evicted<T>(
    state: &ConnState,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        state.evicted().await;
        None
    })
    .await
}

/// Executors started by [`spawn_pool`].
pub struct ServerPool {
    handles: glommio::PoolThreadHandles<Result<(), Error>>,
}

impl ServerPool {
    /// Waits for every executor to stop (after the shutdown signal).
    pub fn join(self) -> Result<(), Error> {
        for r in self.handles.join_all() {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(Error::Executor(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Starts `executors` glommio executors (unpinned), each serving `addr`
/// with its own SO_REUSEPORT listener and its own router from `make_router`,
/// connections spread evenly over them (see [`Balancer`]).
pub fn spawn_pool<F>(
    executors: usize,
    addr: SocketAddr,
    config: ServerConfig,
    make_router: F,
    shutdown: Shutdown,
) -> Result<ServerPool, Error>
where
    F: Fn() -> Router + Send + Sync + Clone + 'static,
{
    let balancer = Balancer::new(executors);
    let numbers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles =
        glommio::LocalExecutorPoolBuilder::new(glommio::PoolPlacement::Unbound(executors))
            .on_all_shards(move || async move {
                let me = numbers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Server::new(config, make_router())
                    .with_balancer(balancer, me)
                    .serve(addr, shutdown)
                    .await
            })
            .map_err(|e| Error::Executor(e.to_string()))?;
    Ok(ServerPool { handles })
}
