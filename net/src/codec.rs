//! gRPC message framing (length-prefixed messages), `grpc-timeout`, and
//! typed prost helpers.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Status;

/// 1-byte compressed flag + 4-byte big-endian length.
pub const HEADER_LEN: usize = 5;

/// Frames one message. Fails when it is larger than `max_send_bytes`.
pub fn encode_frame(msg: &[u8], max_send_bytes: usize) -> Result<Bytes, Status> {
    if msg.len() > max_send_bytes || msg.len() > u32::MAX as usize {
        return Err(Status::resource_exhausted(format!(
            "trying to send message larger than max ({} vs. {})",
            msg.len(),
            max_send_bytes
        )));
    }
    let mut b = BytesMut::with_capacity(HEADER_LEN + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    Ok(b.freeze())
}

/// `m` encoded straight into its gRPC frame (what `encode_frame(&encode(m), max)` makes,
/// without the intermediate buffer).
pub fn encode_framed<M: prost::Message>(m: &M, max_send_bytes: usize) -> Result<Bytes, Status> {
    let len = m.encoded_len();
    if len > max_send_bytes || len > u32::MAX as usize {
        return Err(Status::resource_exhausted(format!(
            "trying to send message larger than max ({len} vs. {max_send_bytes})"
        )));
    }
    let mut b = BytesMut::with_capacity(HEADER_LEN + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    m.encode_raw(&mut b);
    Ok(b.freeze())
}

/// Several messages framed back to back in one buffer, each encoded straight into it (no
/// intermediate buffer per message), for [`ResponseSink::send_framed`].
///
/// [`ResponseSink::send_framed`]: crate::server::ResponseSink::send_framed
#[derive(Debug)]
pub struct FrameBuilder {
    buf: BytesMut,
    max_send_bytes: usize,
    messages: usize,
}

impl FrameBuilder {
    pub fn with_capacity(bytes: usize, max_send_bytes: usize) -> FrameBuilder {
        FrameBuilder {
            buf: BytesMut::with_capacity(bytes),
            max_send_bytes,
            messages: 0,
        }
    }

    /// Appends `m` with its frame header; RESOURCE_EXHAUSTED (and nothing appended) when it
    /// exceeds the send limit.
    pub fn push<M: prost::Message>(&mut self, m: &M) -> Result<(), Status> {
        let len = m.encoded_len();
        if len > self.max_send_bytes || len > u32::MAX as usize {
            return Err(Status::resource_exhausted(format!(
                "trying to send message larger than max ({len} vs. {})",
                self.max_send_bytes
            )));
        }
        self.buf.reserve(HEADER_LEN + len);
        self.buf.put_u8(0);
        self.buf.put_u32(len as u32);
        // Cannot fail: the buffer has room for `encoded_len` bytes.
        let _ = m.encode(&mut self.buf);
        self.messages += 1;
        Ok(())
    }

    /// Bytes framed so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Messages framed so far.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// The frames, leaving the builder empty.
    pub fn take(&mut self) -> Bytes {
        self.messages = 0;
        self.buf.split().freeze()
    }
}

/// Incremental decoder of length-prefixed messages from HTTP/2 DATA chunks.
///
/// A message that lies whole in one chunk handed over as `Bytes` ([`push_bytes`]) and is at
/// least half of it is a slice of that chunk, not a copy: the common case for large
/// messages, since a DATA frame may carry 256 KiB. A smaller one is copied, so that no
/// message keeps alive more than twice the bytes it is charged for (a slice holds its whole
/// chunk). A message split over chunks is assembled in `buf`.
///
/// Invariants: at most one of `chunk` and `buf` holds bytes; `buf` never holds more than
/// one header plus `max_recv_bytes` of unconsumed message bytes beyond what has been
/// pushed in one chunk, because the length is checked against the limit before the body is
/// awaited.
///
/// [`push_bytes`]: FrameDecoder::push_bytes
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// The unconsumed rest of a chunk pushed while `buf` was empty.
    chunk: Bytes,
    /// The length of that chunk when it was pushed.
    chunk_len: usize,
    max_recv_bytes: usize,
    /// Length of the message whose header has been read, body pending.
    pending: Option<usize>,
}

impl FrameDecoder {
    pub fn new(max_recv_bytes: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            chunk_len: 0,
            max_recv_bytes,
            pending: None,
        }
    }

    /// Takes a copy of `chunk`.
    pub fn push(&mut self, chunk: &[u8]) {
        self.spill();
        self.buf.extend_from_slice(chunk);
    }

    /// Takes `chunk`; the messages that lie whole in it are returned as slices of it.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        if self.buf.is_empty() && self.chunk.is_empty() {
            self.chunk_len = chunk.len();
            self.chunk = chunk;
        } else {
            self.spill();
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Moves what is left of `chunk` into `buf`. Room for the rest of a pending message is
    /// made by [`reserve_pending`](Self::reserve_pending), once the reader was granted the
    /// memory, never here.
    fn spill(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let rest = std::mem::take(&mut self.chunk);
        self.buf.extend_from_slice(&rest);
    }

    /// The next complete message, if buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        let max = self.max_recv_bytes;
        if !self.chunk.is_empty() {
            let Some(len) = message_len(max, &mut self.pending, &mut self.chunk)? else {
                self.spill();
                return Ok(None);
            };
            if self.chunk.len() >= len {
                self.pending = None;
                let m = self.chunk.split_to(len);
                return Ok(Some(if len * 2 >= self.chunk_len {
                    m
                } else {
                    Bytes::copy_from_slice(&m)
                }));
            }
            self.spill();
            return Ok(None);
        }
        let Some(len) = message_len(max, &mut self.pending, &mut self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// The length of the message whose header has been read and whose body is still
    /// arriving: what a reader charges to memory before taking more of it.
    pub fn pending_len(&self) -> Option<usize> {
        self.pending
    }

    /// Makes room for the whole pending message at once, instead of growing the buffer
    /// chunk by chunk, once part of it is in `buf` (with none there yet, the rest may come
    /// whole in one chunk, which needs no room). Its length is already bounded by
    /// `max_recv_bytes`; a reader calls this once the memory is granted.
    pub fn reserve_pending(&mut self) {
        if let (Some(len), false) = (self.pending, self.buf.is_empty()) {
            self.buf.reserve(len.saturating_sub(self.buf.len()));
        }
    }

    /// Call at end of stream: leftover bytes mean the peer lied about a length
    /// or cut the stream short.
    pub fn finish(&self) -> Result<(), Status> {
        let left = self.buf.len() + self.chunk.len();
        match self.pending {
            Some(len) => Err(Status::internal(format!(
                "truncated message: header announced {len} bytes, stream ended after {left}"
            ))),
            None if left > 0 => Err(Status::internal(format!(
                "truncated message: stream ended inside a message header ({left} of {HEADER_LEN} bytes)"
            ))),
            None => Ok(()),
        }
    }
}

/// The length of the pending message, or if none is pending, the length the header at the
/// front of `bytes` announces (checked against `max`; the header then taken off `bytes`);
/// `None` while `bytes` is shorter than a header.
fn message_len<B: Buf + std::ops::Deref<Target = [u8]>>(
    max: usize,
    pending: &mut Option<usize>,
    bytes: &mut B,
) -> Result<Option<usize>, Status> {
    if let Some(len) = *pending {
        return Ok(Some(len));
    }
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    match h[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "compressed messages are not supported: \
                 compressed flag set but no grpc-encoding was negotiated",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "invalid compressed flag {f} in message header"
            )))
        }
    }
    if len > max {
        return Err(Status::resource_exhausted(format!(
            "received message larger than max ({len} vs. {max})"
        )));
    }
    bytes.advance(HEADER_LEN);
    *pending = Some(len);
    Ok(Some(len))
}

/// Parses `grpc-timeout`: 1 to 8 ASCII digits and a unit (H M S m u n).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: cannot overflow u64.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a `grpc-timeout` value, choosing the finest unit that fits in
/// 8 digits so that precision is lost only for long timeouts.
pub fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    if nanos <= MAX {
        return format!("{nanos}n");
    }
    let micros = nanos.div_ceil(1_000);
    if micros <= MAX {
        return format!("{micros}u");
    }
    let millis = nanos.div_ceil(1_000_000);
    if millis <= MAX {
        return format!("{millis}m");
    }
    let secs = nanos.div_ceil(1_000_000_000);
    if secs <= MAX {
        return format!("{secs}S");
    }
    let mins = secs.div_ceil(60);
    if mins <= MAX {
        return format!("{mins}M");
    }
    format!("{}H", secs.div_ceil(3600).min(MAX))
}

/// Serializes a prost message.
pub fn encode<M: prost::Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Deserializes a request message; bad bytes are the caller's fault.
pub fn decode<M: prost::Message + Default>(b: Bytes) -> Result<M, Status> {
    M::decode(b).map_err(|e| Status::invalid_argument(format!("malformed request message: {e}")))
}

/// Deserializes a response message; bad bytes mean the server is broken.
pub fn decode_response<M: prost::Message + Default>(b: Bytes) -> Result<M, Status> {
    M::decode(b).map_err(|e| Status::internal(format!("malformed response message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_framed_is_encode_then_frame() {
        let m = proto::log::v1::Record {
            value: Bytes::from_static(b"some value"),
            offset: 7,
            ..Default::default()
        };
        let want = encode_frame(&encode(&m), 100).unwrap();
        assert_eq!(encode_framed(&m, 100).unwrap(), want);
        assert!(encode_framed(&m, want.len() - HEADER_LEN - 1).is_err());
    }

    #[test]
    fn frames_split_anywhere() {
        let mut wire = Vec::new();
        for m in [&b""[..], b"a", b"hello world"] {
            wire.extend_from_slice(&encode_frame(m, 100).unwrap());
        }
        for cut in 1..wire.len() {
            let mut d = FrameDecoder::new(100);
            let mut got = Vec::new();
            for part in wire.chunks(cut) {
                d.push(part);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, vec![&b""[..], b"a", b"hello world"]);
        }
    }

    /// The same stream handed over as `Bytes` chunks cut anywhere decodes to the same
    /// messages; a message that lay whole in one chunk and is at least half of it is a slice
    /// of it (no copy), a smaller one a copy (it would hold the whole chunk).
    #[test]
    fn frames_in_bytes_chunks_split_anywhere_and_whole_ones_are_not_copied() {
        let msgs: [&[u8]; 4] = [b"", b"a", b"hello world", &[7u8; 300]];
        let mut wire = Vec::new();
        for m in msgs {
            wire.extend_from_slice(&encode_frame(m, 1000).unwrap());
        }
        let wire = Bytes::from(wire);
        for cut in 1..=wire.len() {
            let mut d = FrameDecoder::new(1000);
            let mut got = Vec::new();
            let (mut at, mut sliced) = (0, 0);
            while at < wire.len() {
                let part = wire.slice(at..(at + cut).min(wire.len()));
                let range = part.as_ptr() as usize..part.as_ptr() as usize + part.len();
                // Alternate the two ways in, so that a copied rest meets a handed-over chunk.
                if (at / cut) % 3 == 2 {
                    d.push(&part);
                } else {
                    d.push_bytes(part);
                }
                at += cut;
                while let Some(m) = d.next_message().unwrap() {
                    if !m.is_empty() && range.contains(&(m.as_ptr() as usize)) {
                        sliced += 1;
                    }
                    got.push(m);
                }
                if d.pending_len().is_some() {
                    d.reserve_pending();
                }
            }
            d.finish().unwrap();
            assert_eq!(got, msgs.to_vec(), "cut {cut}");
            if cut == wire.len() {
                // 332 bytes: only the 300-byte message is at least half of them.
                assert_eq!(sliced, 1, "one chunk: the large message alone is a slice");
            }
        }
    }

    #[test]
    fn limits_and_truncation() {
        let mut d = FrameDecoder::new(3);
        d.push(&[0, 0, 0, 0, 4]);
        assert_eq!(
            d.next_message().unwrap_err().code,
            crate::Code::ResourceExhausted
        );

        let mut d = FrameDecoder::new(100);
        d.push(&[0, 0, 0, 0, 50, 1, 2]);
        assert_eq!(d.next_message().unwrap(), None);
        let e = d.finish().unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");

        let mut d = FrameDecoder::new(100);
        d.push(&[1, 0, 0, 0, 1, 9]);
        assert!(d.next_message().unwrap_err().message.contains("compressed"));
        assert!(encode_frame(b"1234", 3).is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"4m"), Some(Duration::from_millis(4)));
        assert_eq!(parse_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1 S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(86400 * 365),
        ] {
            let f = format_timeout(d);
            let back = parse_timeout(f.as_bytes()).unwrap();
            assert!(back >= d, "{d:?} -> {f} -> {back:?}");
        }
    }
}
