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

use bytes::{Bytes, BytesMut};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::server::transport::REPLICATION_BYTE;
use crate::server::LocalBoxFuture;
use crate::socket::Socket;
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
    // Length and kind in one read when they are there (one receive call, not two); a
    // length of 0 is refused before waiting for a kind byte that will not come.
    while got < head.len() {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else if got >= LENGTH_BYTES && frame_len(&head) == 0 {
                Err(FrameError::Empty)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
        if got >= LENGTH_BYTES && frame_len(&head) == 0 {
            return Err(FrameError::Empty);
        }
    }
    Ok(Some((frame_len(&head), head[LENGTH_BYTES])))
}

fn frame_len(head: &[u8; LENGTH_BYTES + 1]) -> usize {
    u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize
}

/// Reads the payload of a frame whose header said `len` (checked by the caller).
pub async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Vec<u8>, FrameError> {
    let n = len.saturating_sub(1);
    let mut body = Vec::new();
    while body.len() < n {
        let at = body.len();
        body.resize(at + (n - at).min(GROW_BY), 0);
        r.read_exact(&mut body[at..]).await.map_err(eof)?;
    }
    Ok(body)
}

/// How much of a frame's payload is made room for at a time: memory follows the bytes that
/// arrive, not what a header announces (a 9-byte header saying 32 MiB pinned 32 MiB for as
/// long as its sender kept the connection open).
const GROW_BY: usize = 1 << 20;

/// [`read_payload`] into memory taken from `buf` and returned as shared bytes, so a decoder
/// can keep slices of it (prost's `Bytes` fields) instead of copies. `buf` hands its memory
/// back when nothing holds those slices any more.
pub async fn read_payload_shared<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    buf: &mut BytesMut,
) -> Result<Bytes, FrameError> {
    let n = len.saturating_sub(1);
    buf.clear();
    // Zeroed once, a piece at a time before it is read (`read_exact` fills initialized
    // memory): handed uninitialized room instead, a reader below (TLS, or `Socket` for
    // small room) may zero what it is offered at every read, which for a frame arriving in
    // many pieces is many times its size. A piece at a time, so that memory follows the
    // bytes that arrive ([`GROW_BY`]).
    while buf.len() < n {
        let at = buf.len();
        buf.resize(at + (n - at).min(GROW_BY), 0);
        r.read_exact(&mut buf[at..]).await.map_err(eof)?;
    }
    Ok(buf.split_to(n).freeze())
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
    w.write_all(&frame_header(kind, payload.len())?).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// A frame's header: its length (the kind byte and the payload) and its kind.
fn frame_header(kind: u8, payload_len: usize) -> std::io::Result<[u8; LENGTH_BYTES + 1]> {
    let len = u32::try_from(payload_len + 1)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; LENGTH_BYTES + 1];
    head[..LENGTH_BYTES].copy_from_slice(&len.to_le_bytes());
    head[LENGTH_BYTES] = kind;
    Ok(head)
}

/// Appends one whole frame (length, kind, payload) to `out`, for a writer that sends several
/// frames with one write ([`write_all_flush`]).
pub fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let head = frame_header(kind, payload.len())?;
    out.reserve(head.len() + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes `bytes` (whole frames, [`put_frame`]) and flushes.
pub async fn write_all_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
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
///
/// Two client configurations: `client` verifies the peer's certificate against the host name
/// it was dialled by (a `--start-join-addrs` entry); `client_by_address` is for peers known
/// only by the address gossip or the controller's registry gave (an IP): it requires the
/// certificate to chain to the peer CA and ignores the names in it. Peer certificates name
/// hosts (a StatefulSet's `*.svc` names), not the addresses pods get at each start, so a name
/// check against an address would refuse every such peer; and it would protect nothing here,
/// since every holder of a peer-CA certificate is a member trusted with any node's traffic
/// (Raft ids are not bound to certificates).
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub client_by_address: Arc<rustls::ClientConfig>,
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
        let roots = tls::roots(
            "peer CA",
            &self.ca_file,
            &tls::read("peer CA", &self.ca_file)?,
        )?;
        let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            tls::provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut by_address = client.clone();
        by_address
            .dangerous()
            .set_certificate_verifier(Arc::new(ChainOnly(chain)));
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
            client_by_address: Arc::new(by_address),
        })
    }
}

/// Verifies that a peer's certificate chains to the peer CA (signatures, validity, usage),
/// accepting it whatever names it holds: see [`PeerTls`].
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked last, after the chain: this error means all else passed.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
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
/// mutual TLS, verifying the peer's certificate against `server_name` when it is a host name
/// (one this node was told to join), and by its chain to the peer CA alone when it is an
/// address (see [`PeerTls`]).
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    server_name: &str,
    timeout: Duration,
) -> Result<Box<dyn PeerIo>, ConnectError> {
    // A peer dialled by address is verified by its chain alone (see [`PeerTls`]).
    let (name, by_address) = match server_name.parse::<std::net::IpAddr>() {
        Ok(ip) => (ServerName::IpAddress(ip.into()), true),
        Err(_) => (
            ServerName::try_from(server_name.to_owned())
                .map_err(|_| ConnectError::ServerName(server_name.to_owned()))?,
            false,
        ),
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
    let mut io = Socket::new(stream);
    io.write_all(&[REPLICATION_BYTE])
        .await
        .map_err(|source| ConnectError::Connect { addr, source })?;
    let Some(tls) = tls else {
        return Ok(Box::new(io));
    };
    let config = if by_address {
        tls.client_by_address.clone()
    } else {
        tls.client.clone()
    };
    let connector = tokio_rustls::TlsConnector::from(config);
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
    fn memory_follows_the_bytes_that_arrive_not_the_length_announced() {
        futures_lite::future::block_on(async {
            // A header announcing 32 MiB, then ten bytes and the end.
            let mut data = vec![0u8; 0];
            data.extend_from_slice(&(32u32 << 20).to_le_bytes());
            data.push(kind::GOSSIP_KEY);
            data.extend_from_slice(&[7; 10]);
            let mut r = data.as_slice();
            let (len, _) = read_header(&mut r).await.unwrap().unwrap();
            let mut buf = BytesMut::new();
            let got = read_payload_shared(&mut r, len, &mut buf).await;
            assert!(matches!(got, Err(FrameError::Truncated)), "{got:?}");
            assert!(buf.capacity() <= 2 * GROW_BY, "{}", buf.capacity());
            let mut r = &data[LENGTH_BYTES + 1..];
            assert!(matches!(
                read_payload(&mut r, len).await,
                Err(FrameError::Truncated)
            ));
            // A payload of several pieces is read whole, and exactly.
            let payload: Vec<u8> = (0..3 * GROW_BY + 5).map(|i| (i % 251) as u8).collect();
            let mut framed = Vec::new();
            put_frame(&mut framed, kind::GOSSIP_KEY, &payload).unwrap();
            framed.extend_from_slice(b"next");
            let mut r = framed.as_slice();
            let (len, _) = read_header(&mut r).await.unwrap().unwrap();
            let got = read_payload_shared(&mut r, len, &mut buf).await.unwrap();
            assert_eq!(&got[..], &payload[..]);
            assert_eq!(r, b"next");
            let mut r = &framed[LENGTH_BYTES + 1..];
            assert_eq!(read_payload(&mut r, len).await.unwrap(), payload);
        });
    }

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

            // Frames put into one buffer are the bytes write_frame writes.
            let mut out = Vec::new();
            put_frame(&mut out, kind::GOSSIP_KEY, b"abc").unwrap();
            put_frame(&mut out, kind::GOSSIP_KEY_REQUEST, b"").unwrap();
            assert_eq!(out, buf);
            // Payloads read into shared memory: exactly each payload, never the next frame.
            let mut r = out.as_slice();
            let mut p = BytesMut::new();
            let (len, k) = read_header(&mut r).await.unwrap().unwrap();
            let a = read_payload_shared(&mut r, len, &mut p).await.unwrap();
            assert_eq!((k, &a[..]), (kind::GOSSIP_KEY, &b"abc"[..]));
            let (len, k) = read_header(&mut r).await.unwrap().unwrap();
            let b = read_payload_shared(&mut r, len, &mut p).await.unwrap();
            assert_eq!(
                (k, b.len(), &a[..]),
                (kind::GOSSIP_KEY_REQUEST, 0, &b"abc"[..])
            );
            assert!(read_header(&mut r).await.unwrap().is_none());
            let mut r: &[u8] = &[4, 0, 0, 0, kind::GOSSIP_KEY, b'a'];
            let (len, _) = read_header(&mut r).await.unwrap().unwrap();
            assert!(matches!(
                read_payload_shared(&mut r, len, &mut p).await,
                Err(FrameError::Truncated)
            ));
            let mut r: &[u8] = &[0, 0, 0, 0, 7];
            assert!(matches!(read_header(&mut r).await, Err(FrameError::Empty)));

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

    /// A CA and a peer certificate it signed for `names` (host names only), as PEM files in
    /// `dir`; returns their [`PeerTlsFiles`].
    fn peer_files(dir: &std::path::Path, names: &[&str]) -> PeerTlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let files = PeerTlsFiles {
            cert_file: dir.join("peer.pem"),
            key_file: dir.join("peer-key.pem"),
            ca_file: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        std::fs::write(&files.ca_file, ca_cert.pem()).unwrap();
        files
    }

    /// A TLS handshake in memory between `client` dialling `name` and `server`.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(name.to_owned()).unwrap(),
        };
        let mut c = rustls::ClientConnection::new(client.clone(), name)?;
        let mut s = rustls::ServerConnection::new(server.clone())?;
        let mut buf = Vec::new();
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
        }
        panic!("the handshake did not finish");
    }

    /// A peer dialled by address is taken on its chain to the peer CA alone (its certificate
    /// names only a host), a certificate of another CA is refused that way too, and a peer
    /// dialled by name is still checked against that name.
    #[test]
    fn peers_by_address_are_verified_by_chain_and_by_name_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = peer_files(&tmp.path().join("ours"), &["peer-0.peers.example"]);
        let theirs = peer_files(&tmp.path().join("theirs"), &["peer-0.peers.example"]);
        // A server with another CA's certificate that would take our client certificate:
        // only our client's verification of it can fail the handshake.
        let theirs = PeerTlsFiles {
            ca_file: ours.ca_file.clone(),
            ..theirs
        };
        let (ours, theirs) = (ours.load().unwrap(), theirs.load().unwrap());
        let ok = |c, s: &PeerTls, name| handshake(c, &s.server, name).is_ok();
        assert!(ok(&ours.client_by_address, &ours, "10.0.0.7"));
        assert!(!ok(&ours.client_by_address, &theirs, "10.0.0.7"));
        assert!(ok(&ours.client, &ours, "peer-0.peers.example"));
        assert!(!ok(&ours.client, &ours, "10.0.0.7"));
        assert!(!ok(&ours.client, &ours, "peer-1.peers.example"));
        assert!(!ok(&ours.client, &theirs, "peer-0.peers.example"));
    }
}
