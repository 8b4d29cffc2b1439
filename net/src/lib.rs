//! A gRPC codec over HTTP/2 (the `h2` crate) on glommio: server and client.
//!
//! # What this crate owns
//!
//! Everything between a TCP socket and a handler that takes and returns
//! message bytes: HTTP/2 connections, gRPC framing, status codes and
//! trailers, deadlines, flow control, keepalive, limits and graceful
//! shutdown. It knows nothing of the log: handlers are registered by full
//! method path (`/log.v1.Log/Produce`) on a [`server::Router`].
//!
//! # Threading model
//!
//! Shard-per-core: every glommio executor runs its own [`server::Server`]
//! with its own SO_REUSEPORT listener on the same address; the kernel spreads
//! connections over them. A connection, its calls and its handlers all stay
//! on the executor that accepted it, so handlers are `!Send` futures that
//! may hold `Rc` state of their shard. There is no tokio runtime: tokio is
//! used only for its `AsyncRead`/`AsyncWrite` traits, which h2 needs.
//!
//! # Invariants
//!
//! * Bad input never panics and never outlives its scope: a bad call ends
//!   with a status and leaves the connection usable; a bad HTTP/2 frame
//!   closes only its own connection.
//! * Memory per call is bounded: reads pull from h2 only when the handler
//!   asks for the next message (at most one message of
//!   `max_recv_message_bytes` is buffered); writes wait for flow-control
//!   window, and streaming handlers write into a bounded sink, so a client
//!   that stops reading blocks the handler instead of growing a buffer.
//! * Every call ends with exactly one status: in trailers, or as a
//!   trailers-only response when it fails before its first message.
//! * A deadline (`grpc-timeout`) or a client reset drops the handler future.
//!
//! # Use
//!
//! Server: build a [`server::Router`] per executor, then
//! [`server::Server::serve`] on each executor, or [`server::spawn_pool`]
//! to start N executors at once; [`Shutdown::trigger`] stops them
//! gracefully. Client: [`client::Channel::connect`] on a glommio executor,
//! or [`blocking::BlockingChannel`] from an ordinary thread.
//!
//! TLS (rustls, `ring` provider) is built in: set
//! [`server::ServerConfig::tls`] and [`client::ClientConfig::tls`]; see
//! [`tls`]. One port serves everything: the server looks at the first byte
//! of each connection (see [`server`]: TLS, plaintext HTTP/2, and a byte
//! reserved for replication). Node-to-node connections (the byte `0x01`, then mutual TLS
//! with peer certificates, then typed frames) are served by a [`peer::PeerHandler`] given in
//! [`server::ServerConfig::peer`]; see [`peer`]. Other transports plug in through
//! [`server::Server::serve_connection`] and [`client::Channel::handshake`],
//! which take any tokio `AsyncRead + AsyncWrite` stream.

pub mod blocking;
mod body;
pub mod client;
pub mod codec;
mod keepalive;
pub mod limits;
pub mod memory;
pub mod observe;
pub mod peer;
pub mod ratelog;
pub mod server;
mod shutdown;
pub mod socket;
mod status;
pub mod tls;

#[cfg(test)]
mod mutation;

use std::net::SocketAddr;
use std::time::Duration;

pub use codec::{decode, encode};
pub use shutdown::Shutdown;
pub use status::{percent_decode, percent_encode, Code, Status};

/// Transport-level failures: binding, connecting, whole connections.
/// Failures of single calls are [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {}: {source}", show_peer(.peer))]
    TlsHandshake {
        peer: Option<SocketAddr>,
        source: std::io::Error,
    },
    #[error("TLS handshake with {} timed out", show_peer(.0))]
    TlsHandshakeTimeout(Option<SocketAddr>),
    #[error("TLS settings: {0}")]
    TlsConfig(#[from] tls::TlsError),
    #[error("HTTP/2 handshake with {}: {source}", show_peer(.peer))]
    Handshake {
        peer: Option<SocketAddr>,
        source: h2::Error,
    },
    #[error("HTTP/2 handshake with {} timed out", show_peer(.0))]
    HandshakeTimeout(Option<SocketAddr>),
    /// The connection sent nothing (not a TLS hello, not the HTTP/2 preface) in time.
    #[error("connection from {} timed out before its first byte (nothing within {within:?}); closed", show_peer(.peer))]
    FirstByteTimeout {
        peer: Option<SocketAddr>,
        within: Duration,
    },
    #[error("HTTP/2 connection with {}: {source}", show_peer(.peer))]
    Connection {
        peer: Option<SocketAddr>,
        source: h2::Error,
    },
    #[error("keepalive: {} did not acknowledge a PING within {timeout:?}", show_peer(.peer))]
    KeepaliveTimeout {
        peer: Option<SocketAddr>,
        timeout: Duration,
    },
    #[error("connection with {peer} still had calls in flight {left:?} after shutdown began", peer = show_peer(.0), left = .1)]
    DrainTimeout(Option<SocketAddr>, Duration),
    #[error("executor: {0}")]
    Executor(String),
}

/// A peer's (or listener's) address for a message, or words saying it is not known.
pub fn show_peer(peer: &Option<SocketAddr>) -> String {
    match peer {
        Some(a) => a.to_string(),
        None => "a peer of unknown address".to_owned(),
    }
}

impl Error {
    /// A TLS handshake refused over a certificate or a setting: the server's certificate
    /// failed our checks, or the server sent an alert (ours refused, no common version or
    /// cipher). Connecting again gets the same answer, unlike a refused or dropped
    /// connection.
    pub fn is_tls_refusal(&self) -> bool {
        let Error::TlsHandshake { source, .. } = self else {
            return false;
        };
        source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::AlertReceived(_)
                        | rustls::Error::NoCertificatesPresented
                        | rustls::Error::PeerIncompatible(_)
                )
            })
    }

    /// The client went away (closed or reset its socket, e.g. a process that exited after
    /// its call): how connections normally end, not a failure worth a log line.
    pub fn is_peer_gone(&self) -> bool {
        let Error::Connection { source, .. } = self else {
            return false;
        };
        source.get_io().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
    }

    /// What tells this failure's log lines from others', to rate-limit them per kind: the
    /// kind, and for a refused TLS handshake its reason (digits left out, so that an expired
    /// certificate's timestamps do not make every line a kind of its own).
    pub fn log_kind(&self) -> String {
        match self {
            Error::TlsHandshake { source, .. } => {
                let reason: String = source
                    .to_string()
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(64)
                    .collect();
                format!("{}: {reason}", self.kind())
            }
            _ => self.kind().to_owned(),
        }
    }

    /// A name for the kind of failure, e.g. to rate-limit log lines per kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Bind { .. } => "bind",
            Error::Connect { .. } => "connect",
            Error::TlsHandshake { .. } => "tls-handshake",
            Error::TlsHandshakeTimeout(_) => "tls-handshake-timeout",
            Error::TlsConfig(_) => "tls-config",
            Error::Handshake { .. } => "handshake",
            Error::HandshakeTimeout(_) => "handshake-timeout",
            Error::FirstByteTimeout { .. } => "first-byte-timeout",
            Error::Connection { .. } => "connection",
            Error::KeepaliveTimeout { .. } => "keepalive-timeout",
            Error::DrainTimeout(..) => "drain-timeout",
            Error::Executor(_) => "executor",
        }
    }
}
