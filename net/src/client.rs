//! The gRPC client: one HTTP/2 connection, many concurrent calls.
//!
//! A [`Channel`] lives on the glommio executor that created it (its
//! connection is driven by a local task there). Calls pipeline freely:
//! clone the channel and run calls from as many local tasks as you like.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use net::client::{CallOptions, Channel, ClientConfig};
//!
//! let ch = Channel::connect("127.0.0.1:50051".parse()?, ClientConfig::default()).await?;
//! let reply = ch.unary("/echo.Echo/Say", Bytes::from_static(b"hi"), CallOptions::default()).await?;
//! let (mut tx, mut rx) = ch.streaming("/echo.Echo/Chat", CallOptions::default()).await?;
//! tx.send(Bytes::from_static(b"one")).await?;
//! tx.finish()?;
//! while let Some(msg) = rx.message().await? { let _ = msg; }
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::TcpStream;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{poll_send, with_deadline, MessageReader};
use crate::codec::{self, encode_frame, format_timeout};
use crate::keepalive::KeepAlive;
use crate::limits;
use crate::memory::Lease;
use crate::socket::Socket;
use crate::tls::ClientTls;
use crate::{Error, Status};

/// Limits and timers of a client connection; the defaults and their reasons are in
/// [`limits`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub max_recv_message_bytes: usize,
    pub max_send_message_bytes: usize,
    pub connect_timeout: Duration,
    /// Interval between keepalive PINGs; `None` disables them.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    pub max_header_list_bytes: u32,
    /// Bytes h2 may buffer per stream for sending.
    pub max_send_buffer_bytes: usize,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE: the largest frame the server may send us.
    pub max_frame_bytes: u32,
    /// h2's budget for small DATA frames waiting to be read (a ConsumeStream of short
    /// records while the caller is busy).
    pub data_frame_budget_bytes: usize,
    /// TLS (and mutual TLS with a client certificate); `None` is plaintext. Build it with
    /// [`ClientTlsOptions::load`](crate::tls::ClientTlsOptions::load). The TLS handshake
    /// counts against `connect_timeout`.
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            max_recv_message_bytes: limits::MAX_MESSAGE_BYTES,
            max_send_message_bytes: limits::MAX_MESSAGE_BYTES,
            connect_timeout: limits::CONNECT_TIMEOUT,
            keepalive_interval: None,
            keepalive_timeout: limits::KEEPALIVE_TIMEOUT,
            initial_stream_window_bytes: limits::STREAM_WINDOW_BYTES,
            initial_connection_window_bytes: limits::CONNECTION_WINDOW_BYTES,
            max_header_list_bytes: limits::MAX_HEADER_LIST_BYTES,
            max_send_buffer_bytes: limits::MAX_SEND_BUFFER_BYTES,
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            data_frame_budget_bytes: limits::DATA_FRAME_BUDGET_BYTES,
            tls: None,
        }
    }
}

/// Per-call settings.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Sent as `grpc-timeout` and enforced locally.
    pub timeout: Option<Duration>,
    /// Extra request headers (custom metadata).
    pub metadata: HeaderMap,
}

impl CallOptions {
    pub fn timeout(d: Duration) -> CallOptions {
        CallOptions {
            timeout: Some(d),
            ..Default::default()
        }
    }
}

/// A client connection. Cheap to clone; `!Send`.
#[derive(Clone)]
pub struct Channel {
    inner: Rc<Inner>,
}

struct Inner {
    send: SendRequest<Bytes>,
    authority: String,
    config: ClientConfig,
    /// Set by the connection's task when it ends: no call on this channel can be sent, so
    /// a caller may connect again and send without risking a duplicate.
    closed: Rc<Cell<bool>>,
}

impl Channel {
    /// Connects over TCP, with TLS when `config.tls` is set, and performs the HTTP/2
    /// handshake.
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<Channel, Error> {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(addr, config.connect_timeout)
            .await
            .map_err(|e| Error::Connect {
                addr,
                source: e.into(),
            })?;
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("set_nodelay to {addr}: {e}");
        }
        let Some(tls) = config.tls.clone() else {
            return Channel::handshake(Socket::new(stream), &addr.to_string(), Some(addr), config)
                .await;
        };
        let name = tls.server_name_for(addr);
        // :authority names the server the way the certificate was checked.
        let authority = match &name {
            rustls::pki_types::ServerName::DnsName(d) => format!("{}:{}", d.as_ref(), addr.port()),
            _ => addr.to_string(),
        };
        let left = config.connect_timeout.saturating_sub(started.elapsed());
        let connecting = tls.connector().connect(name, Socket::new(stream));
        let io = match glommio::timer::timeout(left, async { Ok(connecting.await) }).await {
            Ok(Ok(io)) => io,
            Ok(Err(source)) => {
                return Err(Error::TlsHandshake {
                    peer: Some(addr),
                    source: explain_handshake_eof(source),
                })
            }
            Err(_) => return Err(Error::TlsHandshakeTimeout(Some(addr))),
        };
        Channel::handshake(AlertFirst::new(io), &authority, Some(addr), config).await
    }

    /// Runs HTTP/2 over an already-established transport: the seam for TLS
    /// (wrap the TCP stream, then call this). `authority` becomes
    /// `:authority`; `peer` is only for error messages.
    pub async fn handshake<T>(
        io: T,
        authority: &str,
        peer: Option<SocketAddr>,
        config: ClientConfig,
    ) -> Result<Channel, Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(config.initial_stream_window_bytes)
            .initial_connection_window_size(config.initial_connection_window_bytes)
            .max_header_list_size(config.max_header_list_bytes)
            .max_send_buffer_size(config.max_send_buffer_bytes)
            .max_frame_size(config.max_frame_bytes)
            .data_frame_budget(config.data_frame_budget_bytes)
            .handshake::<T, Bytes>(io)
            .await
            .map_err(|e| Error::Handshake { peer, source: e })?;
        let mut keepalive = match (config.keepalive_interval, conn.ping_pong()) {
            (Some(i), Some(pp)) => Some(KeepAlive::new(pp, peer, i, config.keepalive_timeout)),
            _ => None,
        };
        let name = authority.to_owned();
        let closed = Rc::new(Cell::new(false));
        let closed_by_task = closed.clone();
        // h2 spawns nothing: this task moves every byte of the connection.
        // It ends when every Channel clone and call on it is gone.
        glommio::spawn_local(async move {
            let r = poll_fn(|cx| {
                if let Some(ka) = keepalive.as_mut() {
                    if let Poll::Ready(Err(e)) = ka.poll(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Pin::new(&mut conn).poll(cx).map_err(|e| Error::Connection {
                    peer: None,
                    source: e,
                })
            })
            .await;
            closed_by_task.set(true);
            match r {
                Ok(()) => log::debug!("connection to {name} closed"),
                Err(e) => log::info!("connection to {name}: {e}"),
            }
        })
        .detach();
        Ok(Channel {
            inner: Rc::new(Inner {
                send,
                authority: authority.to_owned(),
                config,
                closed,
            }),
        })
    }

    /// Whether the connection has ended (the peer closed it, reset it, or went silent past
    /// the keepalive timeout). A call started on a closed channel fails before anything is
    /// sent; one started on an open channel may still find it closed mid-call.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// The flag [`Channel::is_closed`] reads, for a holder that drops every clone of the
    /// channel and then waits for its connection to end.
    pub(crate) fn closed_flag(&self) -> Rc<Cell<bool>> {
        self.inner.closed.clone()
    }

    fn build_request(&self, path: &str, opts: &CallOptions) -> Result<http::Request<()>, Status> {
        let uri = format!("http://{}{}", self.inner.authority, path);
        let mut req = http::Request::post(uri)
            .body(())
            .map_err(|e| Status::internal(format!("invalid request for {path}: {e}")))?;
        let h = req.headers_mut();
        for (k, v) in opts.metadata.iter() {
            h.append(k, v.clone());
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("proglog-net/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(t) = opts.timeout {
            if let Ok(v) = HeaderValue::from_str(&format_timeout(t)) {
                h.insert("grpc-timeout", v);
            }
        }
        Ok(req)
    }

    async fn start(
        &self,
        path: &str,
        opts: &CallOptions,
    ) -> Result<(Streaming, SendStream<Bytes>), Status> {
        let req = self.build_request(path, opts)?;
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        // Waiting for a stream slot (max concurrent streams) counts
        // against the deadline too.
        let mut send = with_deadline(deadline, async {
            self.inner
                .send
                .clone()
                .ready()
                .await
                .map_err(|e| Status::from_h2(&e))
        })
        .await?;
        let (resp, stream) = send
            .send_request(req, false)
            .map_err(|e| Status::from_h2(&e))?;
        let streaming = Streaming {
            state: RecvState::Waiting(resp),
            deadline,
            max_recv_bytes: self.inner.config.max_recv_message_bytes,
            headers: None,
        };
        Ok((streaming, stream))
    }

    /// One request, one response.
    pub async fn unary(&self, path: &str, msg: Bytes, opts: CallOptions) -> Result<Bytes, Status> {
        let frame = encode_frame(&msg, self.inner.config.max_send_message_bytes)?;
        self.unary_framed(path, frame, opts).await
    }

    /// [`unary`](Self::unary) for a message already in its gRPC frame.
    async fn unary_framed(
        &self,
        path: &str,
        frame: Bytes,
        opts: CallOptions,
    ) -> Result<Bytes, Status> {
        let (streaming, mut stream) = self.start(path, &opts).await?;
        send_whole(&mut stream, frame);
        streaming.single().await
    }

    /// Unary on prost types.
    pub async fn unary_prost<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        // Encoded straight into its frame: no second copy of the message behind a header.
        let frame = codec::encode_framed(req, self.inner.config.max_send_message_bytes)?;
        let b = self.unary_framed(path, frame, opts).await?;
        codec::decode_response(b)
    }

    /// One request, a stream of responses.
    pub async fn server_streaming(
        &self,
        path: &str,
        msg: Bytes,
        opts: CallOptions,
    ) -> Result<Streaming, Status> {
        let frame = encode_frame(&msg, self.inner.config.max_send_message_bytes)?;
        let (streaming, mut stream) = self.start(path, &opts).await?;
        send_whole(&mut stream, frame);
        Ok(streaming)
    }

    /// Client-streaming and bidi calls: a request sender and the response
    /// stream, usable from different tasks. For client streaming, send,
    /// [`finish`](Sender::finish), then [`Streaming::single`].
    pub async fn streaming(
        &self,
        path: &str,
        opts: CallOptions,
    ) -> Result<(Sender, Streaming), Status> {
        let (streaming, stream) = self.start(path, &opts).await?;
        let sender = Sender {
            stream,
            deadline: streaming.deadline,
            max_send_bytes: self.inner.config.max_send_message_bytes,
            finished: false,
        };
        Ok((sender, streaming))
    }
}

/// Hands the single request message of a unary or server-streaming call to h2 whole, with
/// the end of the stream. h2 sends it once the stream is open and flow control allows: with
/// the request's headers, in one write, when the peer's window holds it. (Waiting for
/// capacity first cost a write of its own: h2 gives a stream capacity only once its headers
/// are sent.) The message is in memory already and bounded by `max_send_message_bytes`, so
/// h2 holding it until then adds nothing. A stream the peer refused or reset takes no data:
/// the response, read next, says why.
fn send_whole(stream: &mut SendStream<Bytes>, frame: Bytes) {
    if let Err(e) = stream.send_data(frame, true) {
        log::debug!("sending the request failed: {e}");
    }
}

/// The request half of a streaming call. Dropping it half-closes.
pub struct Sender {
    stream: SendStream<Bytes>,
    deadline: Option<Instant>,
    max_send_bytes: usize,
    finished: bool,
}

impl Sender {
    /// Sends one message, waiting for flow-control window. An error here
    /// often means the server ended the call: read the [`Streaming`] for
    /// its status.
    pub async fn send(&mut self, msg: Bytes) -> Result<(), Status> {
        if self.finished {
            return Err(Status::internal("send after finish"));
        }
        let mut frame = encode_frame(&msg, self.max_send_bytes)?;
        let stream = &mut self.stream;
        with_deadline(
            self.deadline,
            poll_fn(|cx| poll_send(stream, cx, &mut frame, &mut Lease::none())),
        )
        .await
    }

    pub async fn send_message<M: prost::Message>(&mut self, m: &M) -> Result<(), Status> {
        self.send(codec::encode(m)).await
    }

    /// The largest message [`send`](Self::send) takes; a larger one is refused here, before
    /// anything reaches the server (which then has nothing to answer).
    pub fn max_send_bytes(&self) -> usize {
        self.max_send_bytes
    }

    /// Half-closes: the server sees the end of the request stream.
    pub fn finish(&mut self) -> Result<(), Status> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.stream
            .send_data(Bytes::new(), true)
            .map_err(|e| Status::from_h2(&e))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

enum RecvState {
    Waiting(ResponseFuture),
    Body(MessageReader),
    /// The call ended; an error status is reported once, then end of stream.
    Finished(Option<Status>),
}

/// The response half of a call: messages, then the status.
pub struct Streaming {
    state: RecvState,
    deadline: Option<Instant>,
    max_recv_bytes: usize,
    headers: Option<HeaderMap>,
}

fn status_from_http(code: StatusCode) -> Status {
    // The gRPC HTTP/2 spec's mapping for responses without grpc-status.
    let c = match code.as_u16() {
        400 => crate::Code::Internal,
        401 => crate::Code::Unauthenticated,
        403 => crate::Code::PermissionDenied,
        404 => crate::Code::Unimplemented,
        429 | 502 | 503 | 504 => crate::Code::Unavailable,
        _ => crate::Code::Unknown,
    };
    Status::new(c, format!("HTTP status {code}"))
}

impl Streaming {
    /// Response headers, once they have arrived.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.headers.as_ref()
    }

    fn poll_headers(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let RecvState::Waiting(fut) = &mut self.state else {
            return Poll::Ready(());
        };
        let resp = match Pin::new(fut).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.state = RecvState::Finished(Some(Status::from_h2(&e)));
                return Poll::Ready(());
            }
            Poll::Ready(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        let trailers_only = Status::from_headers(&parts.headers);
        self.state = if let Some(st) = trailers_only {
            RecvState::Finished((st.code != crate::Code::Ok).then_some(st))
        } else if parts.status != StatusCode::OK {
            RecvState::Finished(Some(status_from_http(parts.status)))
        } else {
            RecvState::Body(MessageReader::new(body, self.max_recv_bytes, None))
        };
        self.headers = Some(parts.headers);
        Poll::Ready(())
    }

    /// The next response message; `Ok(None)` when the call ended with OK;
    /// `Err` with the call's status otherwise.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        let deadline = self.deadline;
        let r = with_deadline(deadline, self.message_inner()).await;
        if let Err(e) = &r {
            if e.code == crate::Code::DeadlineExceeded {
                // Dropping the stream resets it: the server stops too.
                self.state = RecvState::Finished(None);
            }
        }
        r
    }

    async fn message_inner(&mut self) -> Result<Option<Bytes>, Status> {
        poll_fn(|cx| self.poll_headers(cx)).await;
        let reader = match &mut self.state {
            RecvState::Body(reader) => reader,
            RecvState::Finished(st) => {
                return match st.take() {
                    Some(st) => Err(st),
                    None => Ok(None),
                }
            }
            RecvState::Waiting(_) => return Err(Status::internal("response headers pending")),
        };
        let next = reader.next().await;
        let status = match next {
            Ok(Some(m)) => return Ok(Some(m)),
            Err(st) => st,
            Ok(None) => match reader.trailers().await {
                Ok(Some(t)) => Status::from_headers(&t)
                    .unwrap_or_else(|| Status::internal("trailers without grpc-status")),
                Ok(None) => Status::internal("stream ended without trailers"),
                Err(st) => st,
            },
        };
        self.state = RecvState::Finished(None);
        if status.code == crate::Code::Ok {
            Ok(None)
        } else {
            Err(status)
        }
    }

    /// [`message`](Self::message), decoded.
    pub async fn message_as<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.message().await? {
            Some(b) => codec::decode_response(b).map(Some),
            None => Ok(None),
        }
    }

    /// Exactly one message followed by OK: the reply of a unary or
    /// client-streaming call.
    pub async fn single(mut self) -> Result<Bytes, Status> {
        let m = self
            .message()
            .await?
            .ok_or_else(|| Status::internal("server sent no response message"))?;
        match self.message().await? {
            None => Ok(m),
            Some(_) => Err(Status::internal(
                "server sent more than one response message",
            )),
        }
    }
}

/// A client TLS stream whose failed writes name the server's alert when one came. With TLS
/// 1.3 the client's handshake ends before the server has checked the client's certificate:
/// a server that refuses it (none sent, an unknown issuer, expired) sends an alert and
/// closes, and the client's next write fails with a broken pipe or a reset that says
/// nothing of why. On such a failure what the server sent is read first (the socket is
/// closed at the other end: the read ends at once, with the bytes or the end): an alert
/// among them (rustls reports it as invalid data) is the error returned instead.
struct AlertFirst<T> {
    io: T,
    /// A write's failure, held while the read for an alert is on its way.
    failed: Option<std::io::Error>,
}

impl<T> AlertFirst<T> {
    fn new(io: T) -> Self {
        AlertFirst { io, failed: None }
    }
}

impl<T: AsyncRead + Unpin> AlertFirst<T> {
    /// Ready with the error a failed write returns: `e`, or the server's alert.
    fn alert_or(&mut self, cx: &mut Context<'_>, e: std::io::Error) -> Poll<std::io::Error> {
        use std::io::ErrorKind;
        if !matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
            return Poll::Ready(e);
        }
        let mut scratch = [0u8; 256];
        let mut buf = tokio::io::ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => {
                self.failed = Some(e);
                Poll::Pending
            }
            Poll::Ready(Err(alert)) if alert.kind() == ErrorKind::InvalidData => {
                Poll::Ready(std::io::Error::new(
                    e.kind(),
                    format!("the server refused this connection: {alert}"),
                ))
            }
            Poll::Ready(_) => Poll::Ready(e),
        }
    }

    /// A write, or a flush, that failed before and waits for the read of the alert.
    fn resume(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Error>> {
        let e = self.failed.take()?;
        Some(self.alert_or(cx, e))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AlertFirst<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AlertFirst<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(r) = self.resume(cx) {
            return r.map(Err);
        }
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => self.alert_or(cx, e).map(Err),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(r) = self.resume(cx) {
            return r.map(Err);
        }
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => self.alert_or(cx, e).map(Err),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(r) = self.resume(cx) {
            return r.map(Err);
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.alert_or(cx, e).map(Err),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// rustls reports a server that closed the connection before answering the ClientHello as
/// "tls handshake eof": what a plaintext server does (ours closes a connection whose first
/// byte starts a TLS record). Said so, with what to do.
fn explain_handshake_eof(e: std::io::Error) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::UnexpectedEof {
        return e;
    }
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!(
            "the server closed the connection during the handshake ({e}): it may not serve \
             TLS on this port (a plaintext server: connect without TLS)"
        ),
    )
}
