//! A server connection's socket (below h2, above TLS), watched for the frames that tell when
//! h2's send buffers empty.
//!
//! h2 buffers what a stream sends until the socket takes it, and says neither how much it
//! holds nor when it lets go. Response bytes are charged to the connection's memory when
//! they are encoded and handed to h2 ([`ConnMemory::handed_to_h2`]); this wrapper reads the
//! HTTP/2 frame headers in the byte stream h2 writes, and returns DATA payload bytes as they
//! reach the socket. A stream reset in either direction (an RST_STREAM frame written or
//! read) makes h2 drop what it still buffered for that stream, so its charge is returned
//! then. Only frame headers are parsed (9 bytes per frame, at a known position), never
//! payloads.

use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::memory::ConnMemory;

const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
/// The client's connection preface, before its first frame.
const CLIENT_PREFACE_LEN: usize = 24;

/// What a frame's bytes mean to the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// `n` payload bytes of a DATA frame of `stream`.
    Data { stream: u32, n: usize },
    /// An RST_STREAM frame for `stream` (its header complete).
    Reset { stream: u32 },
}

/// Follows frame boundaries through a byte stream split at arbitrary points.
#[derive(Debug)]
pub(crate) struct FrameScan {
    /// Bytes still to skip before the first frame (the client preface).
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame not seen yet.
    remaining: usize,
    /// The current frame's stream when it is DATA.
    data_stream: Option<u32>,
}

impl FrameScan {
    pub(crate) fn new(skip: usize) -> FrameScan {
        FrameScan {
            skip,
            header: [0; FRAME_HEADER_LEN],
            have: 0,
            remaining: 0,
            data_stream: None,
        }
    }

    pub(crate) fn scan(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen)) {
        let skip = self.skip.min(bytes.len());
        self.skip -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let k = self.remaining.min(bytes.len());
                if let Some(stream) = self.data_stream {
                    seen(Seen::Data { stream, n: k });
                }
                self.remaining -= k;
                bytes = &bytes[k..];
                continue;
            }
            let k = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + k].copy_from_slice(&bytes[..k]);
            self.have += k;
            bytes = &bytes[k..];
            if self.have < FRAME_HEADER_LEN {
                continue;
            }
            self.have = 0;
            let h = &self.header;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let kind = h[3];
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            self.remaining = len;
            self.data_stream = (kind == DATA).then_some(stream);
            if kind == RST_STREAM {
                seen(Seen::Reset { stream });
            }
        }
    }
}

/// The socket h2 uses, reporting DATA written and streams reset to the connection's memory.
pub(crate) struct MeteredIo<T> {
    io: T,
    mem: Rc<ConnMemory>,
    out: FrameScan,
    inbound: FrameScan,
}

impl<T> MeteredIo<T> {
    pub(crate) fn new(io: T, mem: Rc<ConnMemory>) -> MeteredIo<T> {
        MeteredIo {
            io,
            mem,
            out: FrameScan::new(0),
            inbound: FrameScan::new(CLIENT_PREFACE_LEN),
        }
    }

    fn sent(&mut self, bytes: &[u8]) {
        let mem = &self.mem;
        self.out.scan(bytes, |s| match s {
            Seen::Data { stream, n } => mem.written(stream, n),
            Seen::Reset { stream } => mem.discard(stream),
        });
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let this = &mut *self;
            let mem = &this.mem;
            this.inbound.scan(&buf.filled()[before..], |s| {
                if let Seen::Reset { stream } = s {
                    mem.discard(stream);
                }
            });
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.sent(&buf[..n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let k = n.min(b.len());
                self.sent(&b[..k]);
                n -= k;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn seen_in_pieces(bytes: &[u8], skip: usize, piece: usize) -> Vec<Seen> {
        let mut scan = FrameScan::new(skip);
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            scan.scan(chunk, |s| out.push(s));
        }
        // Merge DATA pieces of one frame, so every split reads the same.
        let mut merged: Vec<Seen> = Vec::new();
        for s in out {
            match (merged.last_mut(), s) {
                (Some(Seen::Data { stream: a, n }), Seen::Data { stream: b, n: m }) if *a == b => {
                    *n += m
                }
                _ => merged.push(s),
            }
        }
        merged
    }

    #[test]
    fn data_and_resets_found_however_the_bytes_are_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, &[])); // SETTINGS
        bytes.extend(frame(0x1, 1, &[0x82; 7])); // HEADERS
        bytes.extend(frame(DATA, 1, &[7; 100]));
        bytes.extend(frame(DATA, 3, &[]));
        bytes.extend(frame(RST_STREAM, 3, &[0, 0, 0, 8]));
        bytes.extend(frame(DATA, 5, &[1; 40_000]));
        let want = vec![
            Seen::Data { stream: 1, n: 100 },
            Seen::Reset { stream: 3 },
            Seen::Data {
                stream: 5,
                n: 40_000,
            },
        ];
        for piece in [1, 2, 5, 9, 10, 24, 1000, 1 << 20] {
            assert_eq!(seen_in_pieces(&bytes, 24, piece), want, "pieces of {piece}");
        }
    }
}
