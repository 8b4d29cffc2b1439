//! What each accepted connection speaks, decided by its first byte.
//!
//! One port carries everything, so that a node needs one address and one firewall rule:
//!
//! | first byte | meaning | served when |
//! |---|---|---|
//! | `0x16` | TLS handshake record (ClientHello) | TLS is configured |
//! | `0x01` | the peer channel (the book's Raft stream mark): node to node, see [`crate::peer`] | a peer service is configured; otherwise logged and closed |
//! | anything else | plaintext HTTP/2 (its preface starts with `P`) | TLS is not configured |
//!
//! No valid HTTP/2 preface or TLS record starts with `0x01`, so the mark cannot be taken for
//! either. A connection that does not fit the port's configuration is closed with a log line:
//! a TLS port never serves plaintext gRPC, and a plaintext port does not pretend to handshake.
//! A plaintext HTTP/2 client on a TLS port is answered in HTTP/2: its calls end with
//! UNAUTHENTICATED [`TLS_REQUIRED`] (no handler runs) and the connection closes after the first
//! call or the TLS handshake timeout. Merely closing would leave a gRPC client with
//! "connection reset", and a GOAWAY before any stream makes grpcio retry the call
//! transparently until its deadline.

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

use crate::limits::{CLOSE_LINGER, CLOSE_LINGER_MAX_BYTES};

/// First byte of a TLS handshake record.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// First byte of a peer-channel connection (membership's key exchange, later Raft).
pub const REPLICATION_BYTE: u8 = 0x01;

/// The status message a plaintext call to a TLS port gets.
pub const TLS_REQUIRED: &str = "this port requires TLS: connect with TLS (and a client certificate if the server asks for one)";

/// Waits for the first byte without consuming it; `None` if the peer closed first.
pub(crate) async fn peek_first(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    let n = stream.peek(&mut b).await?;
    Ok((n == 1).then_some(b[0]))
}

/// Closes a connection we will not serve with a FIN, not a reset: closing a socket that still
/// holds unread input makes the kernel send RST, which the client reports as an error of the
/// network rather than a refusal. Bounded in time and bytes.
pub(crate) async fn close_gracefully(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    let _ = glommio::timer::timeout(CLOSE_LINGER, async {
        while drained < CLOSE_LINGER_MAX_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bytes_do_not_start_http2_or_tls() {
        // The HTTP/2 client preface starts with "PRI".
        assert_ne!(b'P', REPLICATION_BYTE);
        assert_ne!(b'P', TLS_HANDSHAKE_BYTE);
        assert_ne!(TLS_HANDSHAKE_BYTE, REPLICATION_BYTE);
    }
}
