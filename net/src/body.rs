//! Moving gRPC messages over one HTTP/2 stream, shared by client and server.
//!
//! Both directions respect HTTP/2 flow control: a reader releases window
//! only for bytes it has pulled, and a writer waits for window before it
//! hands bytes to h2 (whose `send_data` would otherwise buffer without limit).

use std::task::{Context, Poll};
use std::time::Instant;

use std::rc::Rc;

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use crate::codec::FrameDecoder;
use crate::memory::{ConnMemory, Lease};
use crate::Status;

/// Reads length-prefixed messages from a request or response body.
///
/// On the server each message is charged to the connection's memory: once its header
/// announces its length, the whole message is reserved ([`ConnMemory::reserve`], which may
/// wait) before any more of the body is taken from h2, so that while memory is short the
/// stream's window stays closed and HTTP/2 flow control stops the client.
#[derive(Debug)]
pub(crate) struct MessageReader {
    recv: RecvStream,
    decoder: FrameDecoder,
    eos: bool,
    failed: bool,
    /// Where messages are charged; `None` on the client side.
    mem: Option<Rc<ConnMemory>>,
    /// What is reserved for the message being assembled.
    held: Lease,
    /// The server's call this body belongs to, told when it waits for its client.
    call: Option<Rc<crate::server::registry::CallState>>,
}

impl MessageReader {
    pub(crate) fn new(
        recv: RecvStream,
        max_recv_bytes: usize,
        mem: Option<Rc<ConnMemory>>,
    ) -> MessageReader {
        MessageReader {
            recv,
            decoder: FrameDecoder::new(max_recv_bytes),
            eos: false,
            failed: false,
            mem,
            held: Lease::none(),
            call: None,
        }
    }

    /// Tells `call` when its request has come (see `registry`).
    pub(crate) fn tell(&mut self, call: Rc<crate::server::registry::CallState>) {
        self.call = Some(call);
    }

    fn waiting(&self, waiting: bool) {
        if let Some(c) = &self.call {
            if !waiting {
                c.request_came();
            }
        }
    }

    /// The next message; `Ok(None)` at a clean end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        Ok(self.next_leased().await?.map(|(m, _)| m))
    }

    /// The next message and the memory charged for it, to hold as long as the message is.
    pub(crate) async fn next_leased(&mut self) -> Result<Option<(Bytes, Lease)>, Status> {
        if self.failed {
            return Err(Status::internal("message stream already failed"));
        }
        let r = self.next_inner().await;
        // Its first message, the end of the body or a failure: the call no longer waits for
        // its request (once it has one, the server may be working on it whatever it reads
        // next: a stream's appends in flight, its answers queued).
        self.waiting(false);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// A framing error the peer made: on the server the request is malformed
    /// (INVALID_ARGUMENT), which the client caused, not the server (INTERNAL, which asks an
    /// operator to look); a client reading a response keeps INTERNAL.
    fn malformed(&self, st: Status) -> Status {
        if self.call.is_some() && st.code == crate::Code::Internal {
            Status::invalid_argument(st.message)
        } else {
            st
        }
    }

    async fn next_inner(&mut self) -> Result<Option<(Bytes, Lease)>, Status> {
        loop {
            let next = self.decoder.next_message().map_err(|e| self.malformed(e))?;
            if let Some(m) = next {
                let framed = m.len() + crate::codec::HEADER_LEN;
                let mut lease = self.held.split(framed);
                // A message that arrived whole in one chunk was never pending: its bytes
                // exist already, so they are charged without waiting.
                lease.charge_more(framed - lease.bytes());
                return Ok(Some((m, lease)));
            }
            if let Some(len) = self.decoder.pending_len() {
                let framed = len + crate::codec::HEADER_LEN;
                if let Some(mem) = &self.mem {
                    if self.held.bytes() < framed {
                        let more = mem.reserve(framed - self.held.bytes()).await;
                        self.held.merge(more);
                    }
                }
                self.decoder.reserve_pending();
            }
            if self.eos {
                self.decoder.finish().map_err(|e| self.malformed(e))?;
                return Ok(None);
            }
            match self.recv.data().await {
                Some(Ok(chunk)) => {
                    // The bytes now live in the decoder, which is bounded by
                    // the message limit, so the peer may send more.
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.decoder.push_bytes(chunk);
                }
                Some(Err(e)) => return Err(Status::from_h2(&e)),
                None => self.eos = true,
            }
        }
    }

    /// Trailers after the body (client side: where the status is).
    pub(crate) async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Status> {
        self.recv.trailers().await.map_err(|e| Status::from_h2(&e))
    }
}

/// Hands `data` to h2 as flow-control window becomes available. Returns
/// `Pending` while waiting; `data` shrinks as it is sent, and the part of `lease` covering
/// it moves into the connection's account of h2's buffers (see `server::metered`).
pub(crate) fn poll_send(
    stream: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    data: &mut Bytes,
    lease: &mut Lease,
) -> Poll<Result<(), Status>> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let avail = stream.capacity();
        if avail > 0 {
            let chunk = data.split_to(avail.min(data.len()));
            let n = chunk.len();
            if let Err(e) = stream.send_data(chunk, false) {
                // A stream the peer reset refuses data with a "user error"; the reset is the
                // reason, not a broken connection.
                return Poll::Ready(Err(match stream.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => {
                        Status::cancelled(format!("stream reset by peer: {reason}"))
                    }
                    _ => Status::from_h2(&e),
                }));
            }
            if let Some(mem) = lease.memory().cloned() {
                mem.handed_to_h2(stream.stream_id().into(), lease, n);
            }
            continue;
        }
        match stream.poll_capacity(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Status::from_h2(&e))),
            Poll::Ready(None) => {
                // The stream is gone; ask why.
                return Poll::Ready(Err(match stream.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => {
                        Status::cancelled(format!("stream reset by peer: {reason}"))
                    }
                    Poll::Ready(Err(e)) => Status::from_h2(&e),
                    Poll::Pending => Status::cancelled("stream closed by peer"),
                }));
            }
        }
    }
    Poll::Ready(Ok(()))
}

/// Runs `fut` until `deadline`, after which it is dropped and the call
/// fails with DEADLINE_EXCEEDED.
pub(crate) async fn with_deadline<T>(
    deadline: Option<Instant>,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        None => fut.await,
        Some(d) => {
            let timer = async {
                let left = d.saturating_duration_since(Instant::now());
                glommio::timer::Timer::new(left).await;
                Err(Status::deadline_exceeded("deadline exceeded"))
            };
            futures_lite::future::or(fut, timer).await
        }
    }
}
