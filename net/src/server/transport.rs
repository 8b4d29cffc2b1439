//! What each accepted connection speaks, decided by its first byte.
//!
//! One port carries everything, so that a node needs one address and one firewall rule:
//!
//! | first byte | meaning | served when |
//! |---|---|---|
//! | `0x16` | TLS handshake record (ClientHello) | TLS is configured |
//! | `0x01` | replication (the book's Raft stream mark) | never yet: logged and closed |
//! | anything else | plaintext HTTP/2 (its preface starts with `P`) | TLS is not configured |
//!
//! No valid HTTP/2 preface or TLS record starts with `0x01`, so the mark cannot be taken for
//! either. A connection that does not fit the port's configuration is closed with a log line:
//! a TLS port never serves plaintext gRPC, and a plaintext port does not pretend to handshake.
//! A plaintext HTTP/2 client on a TLS port first gets a GOAWAY saying why, so that its error
//! names the cause instead of "connection reset".

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

/// First byte of a TLS handshake record.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// First byte of a replication connection, reserved now so that adding replication later
/// does not change what any existing client sends.
pub const REPLICATION_BYTE: u8 = 0x01;

/// The HTTP/2 client connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/2 INADEQUATE_SECURITY: "the underlying transport has properties that do not meet
/// minimum security requirements", the code that says "use TLS".
const INADEQUATE_SECURITY: u32 = 0xc;
const GOAWAY_REASON: &[u8] = b"this port requires TLS";
/// How long a rejected client gets to send its preface and read our GOAWAY.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Waits for the first byte without consuming it; `None` if the peer closed first.
pub(crate) async fn peek_first(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    let n = stream.peek(&mut b).await?;
    Ok((n == 1).then_some(b[0]))
}

/// An empty SETTINGS frame (our connection preface), then GOAWAY with no stream processed.
fn goaway_frames() -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + 9 + 8 + GOAWAY_REASON.len());
    // SETTINGS: length 0, type 0x4, flags 0, stream 0.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = (8 + GOAWAY_REASON.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    // GOAWAY: type 0x7, flags 0, stream 0; last stream id 0, error code, debug data.
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&INADEQUATE_SECURITY.to_be_bytes());
    out.extend_from_slice(GOAWAY_REASON);
    out
}

/// Closes a plaintext connection to a TLS port cleanly: an HTTP/2 client is told why with a
/// GOAWAY; then the write side is shut and unread input drained, because closing a socket
/// with unread input sends a reset that can destroy the GOAWAY before the client reads it.
pub(crate) async fn reject_plaintext(mut stream: TcpStream, peer: Option<SocketAddr>) {
    log::warn!("plaintext connection from {peer:?} to a TLS-only port: closing it (the client must use TLS)");
    let mut preface = [0u8; 24];
    let read = glommio::timer::timeout(REJECT_LINGER, async {
        Ok(stream.read_exact(&mut preface).await)
    })
    .await;
    if matches!(read, Ok(Ok(()))) && &preface == H2_PREFACE {
        if let Err(e) = stream.write_all(&goaway_frames()).await {
            log::debug!("GOAWAY to {peer:?}: {e}");
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    let _ = glommio::timer::timeout(REJECT_LINGER, async {
        // Bounded: a client that keeps sending is cut off by the timer or this cap.
        while drained < 256 * 1024 {
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
    fn goaway_frame_layout() {
        let f = goaway_frames();
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let len = u32::from_be_bytes([0, f[9], f[10], f[11]]) as usize;
        assert_eq!(len, f.len() - 18);
        assert_eq!(f[12], 7);
        assert_eq!(&f[22..26], &INADEQUATE_SECURITY.to_be_bytes());
        assert_eq!(&f[26..], GOAWAY_REASON);
    }

    #[test]
    fn reserved_bytes_do_not_start_http2_or_tls() {
        assert_ne!(H2_PREFACE[0], REPLICATION_BYTE);
        assert_ne!(H2_PREFACE[0], TLS_HANDSHAKE_BYTE);
    }
}
