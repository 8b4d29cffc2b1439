//! The peer channel: node-to-node connections on the RPC port, marked by the first byte
//! `0x01` (the book's Raft byte; h2 starts with `P`, TLS with `0x16`).
//!
//! After the mark, when peer TLS is configured, both sides run a mutual-TLS handshake with
//! their peer certificates (ALPN `proglog-peer/1`; each side's certificate must chain to the
//! peer CA). Then both directions carry length-prefixed typed frames (docs/format.md):
//!
//! ```text
//!  0  4  length   u32 little-endian: bytes of kind + payload (1 ..= the receiver's maximum)
//!  4  1  kind     see [`kind`]
//!  5  n  payload  length - 1 bytes
//! ```
//!
//! The frame layer knows no protocol: membership's key exchange uses kinds `0x10`-`0x11` and
//! the Raft transport adds its own ([`kind`] is the registry, so two users never collide).
//! A frame over the maximum, or a connection that ends inside a frame, is an error that
//! closes the connection; the server side never panics on what a peer sends.
//!
//! A server accepts peer connections only when it was given a [`PeerService`]
//! ([`crate::server::ServerConfig::peer`]); otherwise they are logged and closed.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::server::transport::REPLICATION_BYTE;
use crate::server::LocalBoxFuture;
use crate::tls::{self, TlsError, TlsInfo};

/// ALPN of the peer channel: a peer certificate presented to the gRPC side (or the reverse)
/// fails the handshake instead of being misread.
pub const ALPN_PEER: &[u8] = b"proglog-peer/1";

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Frame kinds: one registry for every user of the channel.
pub mod kind {
    /// Payload: a UTF-8 message saying why the request cannot be served.
    pub const ERROR: u8 = 0x00;
    /// Membership: "send me the cluster's gossip key". Empty payload.
    pub const GOSSIP_KEY_REQUEST: u8 = 0x10;
    /// Membership: the 32-byte gossip key.
    pub const GOSSIP_KEY: u8 = 0x11;
    /// 0x20 ..= 0x3F: reserved for the Raft transport.
    pub const RAFT_FIRST: u8 = 0x20;
    pub const RAFT_LAST: u8 = 0x3F;
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer channel: frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("peer channel: empty frame (no kind byte)")]
    Empty,
    #[error("peer channel: connection closed inside a frame")]
    Truncated,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Reads one frame; `Ok(None)` when the peer closed cleanly between frames. At most `max`
/// bytes (kind + payload) are accepted, and they are allocated only once the length checks.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    let Some((len, kind)) = read_header(r).await? else {
        return Ok(None);
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let payload = read_payload(r, len).await?;
    Ok(Some(Frame { kind, payload }))
}

/// Reads a frame's length and kind only (for a server that decides by kind who reads the
/// payload, and how large it may be); `Ok(None)` when the peer closed cleanly between frames.
/// The length counts the kind byte: the payload is `len - 1` bytes.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(usize, u8)>, FrameError> {
    let mut head = [0u8; LENGTH_BYTES + 1];
    let mut got = 0;
    while got < LENGTH_BYTES {
        let n = r.read(&mut head[got..LENGTH_BYTES]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    r.read_exact(&mut head[LENGTH_BYTES..]).await.map_err(eof)?;
    Ok(Some((len, head[LENGTH_BYTES])))
}

/// Reads the payload of a frame whose header said `len` (checked by the caller).
pub async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0u8; len.saturating_sub(1)];
    r.read_exact(&mut body).await.map_err(eof)?;
    Ok(body)
}

fn eof(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len() + 1)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; LENGTH_BYTES + 1];
    head[..LENGTH_BYTES].copy_from_slice(&len.to_le_bytes());
    head[LENGTH_BYTES] = kind;
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// A byte stream of the peer channel (TCP, or TLS over TCP), after the `0x01` mark.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> PeerIo for T {}

/// An accepted peer connection, handed to the [`PeerHandler`].
pub struct PeerConn {
    pub stream: Box<dyn PeerIo>,
    pub peer: Option<SocketAddr>,
    /// What mutual TLS proved about the peer; `None` without peer TLS.
    pub tls: Option<TlsInfo>,
}

impl fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConn")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Serves accepted peer connections; runs on the executor that accepted the connection.
pub trait PeerHandler: Send + Sync {
    fn serve(&self, conn: PeerConn) -> LocalBoxFuture<()>;
}

/// What a server needs to accept peer connections.
#[derive(Clone)]
pub struct PeerService {
    pub handler: Arc<dyn PeerHandler>,
    /// Mutual TLS with peer certificates; `None` accepts plaintext peers (say in docs that
    /// this is no security boundary).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl fmt::Debug for PeerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerService")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The peer certificate, its key and the peer CA, PEM: `--peer-tls-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// Both ends of peer TLS, loaded once: every node is a server and a client of its peers,
/// with the same certificate (it needs both the server and the client auth usage).
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTlsFiles {
    pub fn load(&self) -> Result<PeerTls, TlsError> {
        let server = tls::ServerTlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: Some(self.ca_file.clone()),
        };
        let mut server = Arc::unwrap_or_clone(server.load()?);
        server.alpn_protocols = vec![ALPN_PEER.to_vec()];
        let client =
            tls::ClientTls::from_files(&self.ca_file, Some((&self.cert_file, &self.key_file)))?;
        let mut client = Arc::unwrap_or_clone(client.config());
        client.alpn_protocols = vec![ALPN_PEER.to_vec()];
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Why a peer connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to peer {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with peer {addr} (as {name:?}): {source}")]
    Tls {
        addr: SocketAddr,
        name: String,
        source: std::io::Error,
    },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("peer {0} did not complete the connection in time")]
    Timeout(SocketAddr),
}

/// Opens a peer connection to `addr` from a glommio executor: the mark, then (with `tls`)
/// mutual TLS, verifying the peer's certificate against `server_name` (the host name or
/// address this node was told to join).
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    server_name: &str,
    timeout: Duration,
) -> Result<Box<dyn PeerIo>, ConnectError> {
    let name = match server_name.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(server_name.to_owned())
            .map_err(|_| ConnectError::ServerName(server_name.to_owned()))?,
    };
    let opened = glommio::timer::timeout(timeout, async {
        let stream = TcpStream::connect(addr).await.map_err(std::io::Error::from);
        Ok(stream)
    })
    .await;
    let stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Connect { addr, source }),
        Err(_) => return Err(ConnectError::Timeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    let mut io = stream.compat();
    io.write_all(&[REPLICATION_BYTE])
        .await
        .map_err(|source| ConnectError::Connect { addr, source })?;
    let Some(tls) = tls else {
        return Ok(Box::new(io));
    };
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let handshake =
        glommio::timer::timeout(timeout, async { Ok(connector.connect(name, io).await) }).await;
    match handshake {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(source)) => Err(ConnectError::Tls {
            addr,
            name: server_name.to_owned(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout(addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_errors() {
        futures_lite::future::block_on(async {
            let mut buf: Vec<u8> = Vec::new();
            write_frame(&mut buf, kind::GOSSIP_KEY, b"abc")
                .await
                .unwrap();
            write_frame(&mut buf, kind::GOSSIP_KEY_REQUEST, b"")
                .await
                .unwrap();
            assert_eq!(&buf[..5], &[4, 0, 0, 0, kind::GOSSIP_KEY]);
            let mut r = buf.as_slice();
            let f = read_frame(&mut r, 16).await.unwrap().unwrap();
            assert_eq!(
                (f.kind, f.payload.as_slice()),
                (kind::GOSSIP_KEY, &b"abc"[..])
            );
            let f = read_frame(&mut r, 16).await.unwrap().unwrap();
            assert_eq!((f.kind, f.payload.len()), (kind::GOSSIP_KEY_REQUEST, 0));
            assert!(read_frame(&mut r, 16).await.unwrap().is_none());

            let mut r: &[u8] = &[0xFF, 0xFF, 0xFF, 0x7F, 1];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::TooLarge { .. })
            ));
            let mut r: &[u8] = &[0, 0, 0, 0];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::Empty)
            ));
            let mut r: &[u8] = &[9, 0, 0, 0, 1, 2];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::Truncated)
            ));
            let mut r: &[u8] = &[9, 0];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::Truncated)
            ));
        });
    }
}
