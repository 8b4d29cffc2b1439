//! The gossip key exchange on the peer channel (RPC port, first byte 0x01, mutual TLS with
//! peer certificates, then frames: see [`net::peer`]).
//!
//! ```text
//! joining node                                member
//!   0x01, TLS ClientHello (peer cert)  ->
//!                                      <-     TLS (peer cert); both chains checked against the peer CA
//!   frame GOSSIP_KEY_REQUEST (empty)   ->
//!                                      <-     frame GOSSIP_KEY (32 bytes) | frame ERROR (UTF-8 reason)
//! ```
//!
//! The member answers only over mutual TLS: without peer TLS there is no key to give, and the
//! request gets an ERROR frame. One request per connection; the connection is closed after
//! the answer, after a malformed frame, or after [`EXCHANGE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use net::peer::{self, kind, PeerConn, PeerHandler, PeerTls};
use net::server::LocalBoxFuture;

use super::key::{GossipKey, KEY_BYTES};
use super::MembershipError;

/// Bound on one whole exchange, either side.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame accepted in the exchange (both directions are tiny).
const MAX_FRAME_BYTES: usize = 1024;

/// Serves the gossip key to peers that proved they hold a peer certificate.
#[derive(Clone, Default)]
pub struct KeyService {
    key: Arc<Mutex<Option<GossipKey>>>,
}

impl KeyService {
    pub fn new() -> KeyService {
        KeyService::default()
    }

    /// Sets the key once this node has one (created, loaded or fetched).
    pub fn set(&self, key: GossipKey) {
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    fn get(&self) -> Option<GossipKey> {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn exchange(&self, conn: &mut PeerConn) -> Result<&'static str, std::io::Error> {
        match peer::read_header(&mut conn.stream).await {
            Ok(Some((len, kind))) => self.answer(conn, len, kind).await,
            Ok(None) => Ok("closed without a request"),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Serves a request whose frame header (`len`, `kind`) was read already (by this
    /// service, or by the peer channel's router, which reads it to choose the service).
    pub async fn answer(
        &self,
        conn: &mut PeerConn,
        len: usize,
        kind: u8,
    ) -> Result<&'static str, std::io::Error> {
        if len > MAX_FRAME_BYTES {
            return Err(std::io::Error::other(peer::FrameError::TooLarge {
                len,
                max: MAX_FRAME_BYTES,
            }));
        }
        let payload = peer::read_payload(&mut conn.stream, len)
            .await
            .map_err(std::io::Error::other)?;
        let frame = peer::Frame { kind, payload };
        let answer: Result<GossipKey, &str> = match (frame.kind, &conn.tls, self.get()) {
            (kind::GOSSIP_KEY_REQUEST, None, _) => Err(
                "this node has no peer TLS: gossip is not authenticated and there is no key to share",
            ),
            (kind::GOSSIP_KEY_REQUEST, Some(_), None) => {
                Err("this node has not obtained the cluster's gossip key yet; try another member")
            }
            (kind::GOSSIP_KEY_REQUEST, Some(_), Some(k)) => Ok(k),
            _ => Err("unknown request on the peer channel"),
        };
        match answer {
            Ok(k) => {
                peer::write_frame(&mut conn.stream, kind::GOSSIP_KEY, k.bytes()).await?;
                Ok("gave the gossip key")
            }
            Err(why) => {
                peer::write_frame(&mut conn.stream, kind::ERROR, why.as_bytes()).await?;
                Ok(why)
            }
        }
    }
}

impl KeyService {
    /// Serves one key request whose frame header was read already, within
    /// [`EXCHANGE_TIMEOUT`], and logs the outcome.
    pub async fn serve_request(&self, mut conn: PeerConn, len: usize, kind: u8) {
        let peer = net::show_peer(&conn.peer);
        let done = glommio::timer::timeout(EXCHANGE_TIMEOUT, async {
            Ok(self.answer(&mut conn, len, kind).await)
        })
        .await;
        match done {
            Ok(Ok(what)) => log::info!("peer channel from {peer}: {what}"),
            Ok(Err(e)) => log::info!("peer channel from {peer}: {e}"),
            Err(_) => log::info!("peer channel from {peer}: no request in time"),
        }
    }
}

impl PeerHandler for KeyService {
    fn serve(&self, mut conn: PeerConn) -> LocalBoxFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let peer = net::show_peer(&conn.peer);
            let subject = conn.tls.as_ref().and_then(|t| t.client_subject.clone());
            let done = glommio::timer::timeout(EXCHANGE_TIMEOUT, async {
                Ok(this.exchange(&mut conn).await)
            })
            .await;
            match done {
                Ok(Ok(what)) => log::info!("peer channel from {peer} ({subject:?}): {what}"),
                Ok(Err(e)) => log::info!("peer channel from {peer} ({subject:?}): {e}"),
                Err(_) => log::info!("peer channel from {peer}: no request in time"),
            }
        })
    }
}

/// Fetches the gossip key from the member whose RPC address is `rpc_addr`, verifying its
/// certificate against `server_name`. Must run on a glommio executor.
pub async fn fetch_key(
    rpc_addr: SocketAddr,
    tls: &PeerTls,
    server_name: &str,
) -> Result<GossipKey, MembershipError> {
    let fail = |e: String| MembershipError::KeyFetch(format!("from {rpc_addr}: {e}"));
    let mut stream = peer::connect(rpc_addr, Some(tls), server_name, EXCHANGE_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        peer::write_frame(&mut stream, kind::GOSSIP_KEY_REQUEST, &[])
            .await
            .map_err(|e| e.to_string())?;
        match peer::read_frame(&mut stream, MAX_FRAME_BYTES).await {
            Ok(Some(f)) if f.kind == kind::GOSSIP_KEY => {
                let bytes: [u8; KEY_BYTES] = f
                    .payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("a key of {} bytes", f.payload.len()))?;
                Ok(GossipKey::from_bytes(bytes))
            }
            Ok(Some(f)) if f.kind == kind::ERROR => {
                Err(format!("refused: {}", String::from_utf8_lossy(&f.payload)))
            }
            Ok(Some(f)) => Err(format!("unexpected frame kind {:#04x}", f.kind)),
            Ok(None) => Err("closed without an answer".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    match glommio::timer::timeout(EXCHANGE_TIMEOUT, async { Ok(exchange.await) }).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail("no answer in time".into())),
    }
}
