//! One gRPC call on one HTTP/2 stream: validate, read, run the handler,
//! write, end with a status.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use glommio::channels::local_channel;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::conn::ConnShared;
use super::registry::StreamGuard;
use super::router::{MessageStream, Request, Response, ResponseSink, Route};
use crate::body::{poll_send, with_deadline, MessageReader};
use crate::codec::{encode_frame, parse_timeout};
use crate::memory::{ConnMemory, Lease};
use crate::observe::{self, CallInfo, TraceContext};
use crate::Status;

const CONTENT_TYPE: &str = "application/grpc";

/// The response half of a call. Headers go out lazily with the first
/// message so that an error before any message is a trailers-only response.
enum Out {
    Headers(SendResponse<Bytes>),
    Body(SendStream<Bytes>),
    Done,
}

struct Responder {
    out: Out,
}

fn grpc_response(extra: Option<HeaderMap>) -> http::Response<()> {
    let mut resp = http::Response::new(());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Some(extra) = extra {
        for (k, v) in extra.iter() {
            resp.headers_mut().append(k, v.clone());
        }
    }
    resp
}

impl Responder {
    fn body(&mut self, extra: Option<HeaderMap>) -> Result<&mut SendStream<Bytes>, Status> {
        if let Out::Headers(respond) = &mut self.out {
            match respond.send_response(grpc_response(extra), false) {
                Ok(stream) => self.out = Out::Body(stream),
                Err(e) => {
                    let status = reset_status(respond.poll_reset(&mut noop_cx()))
                        .unwrap_or_else(|| Status::from_h2(&e));
                    self.out = Out::Done;
                    return Err(status);
                }
            }
        }
        match &mut self.out {
            Out::Body(s) => Ok(s),
            _ => Err(Status::internal("response already finished")),
        }
    }

    fn finish(&mut self, status: &Status) {
        match std::mem::replace(&mut self.out, Out::Done) {
            Out::Headers(mut respond) => {
                let mut resp = grpc_response(None);
                status.write_headers(resp.headers_mut());
                // Failure means the stream is gone: nobody to tell.
                let _ = respond.send_response(resp, true);
            }
            Out::Body(mut stream) => {
                let mut trailers = HeaderMap::new();
                status.write_headers(&mut trailers);
                let _ = stream.send_trailers(trailers);
            }
            Out::Done => {}
        }
    }

    /// Refuses the call with RST_STREAM REFUSED_STREAM while nothing was sent on it: the
    /// client may send it again as it is (gRPC libraries do so by themselves).
    fn refuse(&mut self) {
        match std::mem::replace(&mut self.out, Out::Done) {
            Out::Headers(mut respond) => respond.send_reset(h2::Reason::REFUSED_STREAM),
            Out::Body(mut stream) => stream.send_reset(h2::Reason::REFUSED_STREAM),
            Out::Done => {}
        }
    }

    /// Whether the client reset the stream (asked without waiting; the call is over).
    fn was_reset_by_client(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let r = match &mut self.out {
            Out::Headers(r) => r.poll_reset(&mut cx),
            Out::Body(s) => s.poll_reset(&mut cx),
            Out::Done => return false,
        };
        matches!(r, Poll::Ready(Ok(_)))
    }

    /// Ready when the client reset the stream or the connection died.
    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Status> {
        let r = match &mut self.out {
            Out::Headers(r) => r.poll_reset(cx),
            Out::Body(s) => s.poll_reset(cx),
            Out::Done => return Poll::Pending,
        };
        r.map(|r| match r {
            Ok(reason) => cancelled_by_client(reason),
            // The client's connection closed under the call: the client left, as with a
            // reset. UNAVAILABLE would blame this server.
            Err(e) if e.is_io() => Status::cancelled(format!("client connection closed: {e}")),
            Err(e) => Status::from_h2(&e),
        })
    }
}

fn cancelled_by_client(reason: h2::Reason) -> Status {
    Status::cancelled(format!("call cancelled by client: {reason}"))
}

/// The client's cancel, if the stream ended with a reset from the client.
fn reset_status(r: Poll<Result<h2::Reason, h2::Error>>) -> Option<Status> {
    match r {
        Poll::Ready(Ok(reason)) => Some(cancelled_by_client(reason)),
        _ => None,
    }
}

/// A context for asking h2 about a stream's state without waiting: nothing is woken.
fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Rejections at the HTTP level, before gRPC semantics apply.
fn http_reject(req: &http::Request<RecvStream>) -> Option<(StatusCode, &'static str)> {
    if req.method() != Method::POST {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "gRPC requires POST"));
    }
    let ct = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !is_grpc_proto(ct) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/grpc or application/grpc+proto",
        ));
    }
    None
}

/// Whether a request's `content-type` is gRPC with protobuf messages, the only codec we
/// speak: `application/grpc` or `application/grpc+proto` (case-insensitive, as media types
/// are), optionally followed by `;` parameters. The gRPC spec's grammar is
/// `"application/grpc" [("+proto" / "+json" / {custom})]`: a prefix match would take
/// `application/grpcfoo` for gRPC, and `+json` would be decoded as protobuf.
pub(crate) fn is_grpc_proto(content_type: &[u8]) -> bool {
    let essence = match content_type.iter().position(|&b| b == b';') {
        Some(i) => &content_type[..i],
        None => content_type,
    }
    .trim_ascii();
    essence.eq_ignore_ascii_case(CONTENT_TYPE.as_bytes())
        || essence.eq_ignore_ascii_case(b"application/grpc+proto")
}

pub(crate) async fn serve_call(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    conn: Rc<ConnShared>,
    running: StreamGuard,
) {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    if let Some((code, why)) = http_reject(&req) {
        log::debug!(
            "rejecting {} {path} from {:?}: {why}",
            req.method(),
            conn.peer
        );
        let mut resp = http::Response::new(());
        *resp.status_mut() = code;
        resp.headers_mut().insert(
            "grpc-status",
            HeaderValue::from(crate::Code::Internal.as_i32()),
        );
        resp.headers_mut()
            .insert("grpc-message", HeaderValue::from_static(why));
        let _ = respond.send_response(resp, true);
        return;
    }
    let out = RefCell::new(Responder {
        out: Out::Headers(respond),
    });
    let Some(observer) = conn.observer.clone() else {
        let status = run_counted(req, &out, &conn, &path, &running).await;
        out.borrow_mut().finish(&status);
        log::debug!(
            "{path} from {:?}: {} in {:?}",
            conn.peer,
            status.code,
            started.elapsed()
        );
        return;
    };
    let call = Rc::new(CallInfo::new(
        path.clone(),
        conn.peer,
        conn.tls.as_ref().and_then(|t| t.client_subject.clone()),
        TraceContext::from_headers(req.headers()),
    ));
    // The whole call, its final line included, runs as the current call, so that every log
    // line written on its behalf carries its trace id.
    observe::scoped(call.clone(), async {
        observer.call_started(&call);
        let status = run_counted(req, &out, &conn, &path, &running).await;
        out.borrow_mut().finish(&status);
        observer.call_finished(&call, &status);
    })
    .await;
}

/// Runs the call, and counts it against the connection's reset rate if the client reset it.
async fn run_counted(
    req: http::Request<RecvStream>,
    out: &RefCell<Responder>,
    conn: &ConnShared,
    path: &str,
    running: &StreamGuard,
) -> Status {
    match run(req, out, conn, path, running).await {
        Ok(()) => Status::ok(),
        Err(status) => {
            if out.borrow_mut().was_reset_by_client() {
                let cfg = &conn.config;
                let burst = cfg.max_concurrent_streams.max(1);
                conn.state
                    .client_reset(cfg.max_resets_per_second, burst, Instant::now());
            }
            status
        }
    }
}

async fn run(
    req: http::Request<RecvStream>,
    out: &RefCell<Responder>,
    conn: &ConnShared,
    path: &str,
    running: &StreamGuard,
) -> Result<(), Status> {
    if let Some(st) = &conn.refuse {
        return Err(st.clone());
    }
    if conn.draining.get() {
        return Err(Status::unavailable("server is shutting down"));
    }
    if let Some(enc) = req.headers().get("grpc-encoding") {
        if enc.as_bytes() != b"identity" {
            return Err(Status::unimplemented(format!(
                "grpc-encoding {enc:?} is not supported; only identity"
            )));
        }
    }
    let deadline = match req.headers().get("grpc-timeout") {
        None => None,
        Some(v) => match parse_timeout(v.as_bytes()) {
            Some(d) => Some(Instant::now() + d),
            None => {
                return Err(Status::invalid_argument(format!(
                    "malformed grpc-timeout: {v:?}"
                )))
            }
        },
    };
    let route = conn
        .router
        .get(path)
        .cloned()
        .ok_or_else(|| Status::unimplemented(format!("unknown method {path}")))?;
    observe::with_current(|c| c.set_kind(route.kind()));

    let (parts, body) = req.into_parts();
    let cfg = &conn.config;
    let mut reader =
        MessageReader::new(body, cfg.max_recv_message_bytes, Some(conn.memory.clone()));
    reader.tell(running.call().clone());
    let request = Request {
        path: path.to_owned(),
        metadata: parts.headers,
        peer: conn.peer,
        tls: conn.tls.clone(),
        deadline,
        memory: conn.memory.clone(),
        message: reader,
    };

    let main = dispatch(route, request, out, conn);
    let reset = poll_fn(|cx| out.borrow_mut().poll_reset(cx).map(Err));
    // Ended by the registry to make room for another call while it waited for its request:
    // nothing of it was processed, and it is refused so (REFUSED_STREAM), which clients may
    // send again; the status is what the call's line logs.
    let ended = async {
        let waited = running.call().ended().await;
        out.borrow_mut().refuse();
        Err(Status::unavailable(format!(
            "refused to make room: the call had waited {waited:?} for its request while this \
             server core had its bound of calls open"
        )))
    };
    let main = futures_lite::future::or(ended, main);
    // The reset first: once the client is gone, a handler woken at the same moment (say by
    // memory returned by calls that just ended) must not start another read.
    match with_deadline(deadline, futures_lite::future::or(reset, main)).await {
        // Clients reset the stream when their deadline passes (grpc-js, grpc-go, ours), often
        // a moment before the server's own timer, which started later: past the deadline,
        // the cancel is the deadline's.
        Err(st)
            if st.code == crate::Code::Cancelled
                && deadline.is_some_and(|d| Instant::now() >= d) =>
        {
            Err(Status::deadline_exceeded(format!(
                "deadline exceeded ({})",
                st.message
            )))
        }
        r => r,
    }
}

/// The one request message of a unary or server-streaming call, with its memory, which the
/// call holds until its handler is done.
async fn read_one(reader: &mut MessageReader) -> Result<(Bytes, Lease), Status> {
    let (first, lease) = reader
        .next_leased()
        .await?
        .ok_or_else(|| Status::invalid_argument("missing request message"))?;
    observe::with_current(|c| c.received(first.len() + crate::codec::HEADER_LEN));
    if reader.next().await?.is_some() {
        return Err(Status::invalid_argument(
            "expected exactly one request message, got more",
        ));
    }
    Ok((first, lease))
}

async fn dispatch(
    route: Route,
    request: Request<MessageReader>,
    out: &RefCell<Responder>,
    conn: &ConnShared,
) -> Result<(), Status> {
    let max_send = conn.config.max_send_message_bytes;
    let mem = &conn.memory;
    match route {
        Route::Unary(h) => {
            let mut request = request;
            let (msg, msg_lease) = read_one(&mut request.message).await?;
            let resp = h(request.map(|_| msg)).await?;
            drop(msg_lease);
            write_response(out, resp, max_send, mem).await
        }
        Route::ClientStreaming(h) => {
            let resp = h(request.map(|reader| MessageStream { reader })).await?;
            write_response(out, resp, max_send, mem).await
        }
        Route::ServerStreaming(h) => {
            let mut request = request;
            let (msg, _msg_lease) = read_one(&mut request.message).await?;
            let (sink, rx) = sink(conn);
            let handler = h(request.map(|_| msg), sink);
            run_streaming(handler, rx, out).await
        }
        Route::Bidi(h) => {
            let (sink, rx) = sink(conn);
            let handler = h(request.map(|reader| MessageStream { reader }), sink);
            run_streaming(handler, rx, out).await
        }
    }
}

fn sink(conn: &ConnShared) -> (ResponseSink, local_channel::LocalReceiver<(Bytes, Lease)>) {
    let (tx, rx) = local_channel::new_bounded(conn.config.response_buffer_messages.max(1));
    let sink = ResponseSink {
        tx,
        max_send_bytes: conn.config.max_send_message_bytes,
        memory: conn.memory.clone(),
    };
    (sink, rx)
}

/// Sends a unary reply. Its frame exists once encoded, so it is charged without waiting;
/// the charge follows it into h2 and leaves as it reaches the socket.
async fn write_response(
    out: &RefCell<Responder>,
    resp: Response,
    max_send: usize,
    mem: &Rc<ConnMemory>,
) -> Result<(), Status> {
    let mut frame = encode_frame(&resp.message, max_send)?;
    drop(resp.message);
    let mut lease = mem.charge(frame.len());
    observe::with_current(|c| c.sent(frame.len()));
    let mut extra = Some(resp.metadata);
    poll_fn(|cx| {
        let mut o = out.borrow_mut();
        let stream = o.body(extra.take())?;
        poll_send(stream, cx, &mut frame, &mut lease)
    })
    .await
}

/// Runs a streaming handler and the writer that drains its sink into h2
/// side by side. The writer failing (client gone) ends the call at once,
/// dropping the handler; the handler finishing ends it once the queued
/// messages are written.
async fn run_streaming(
    handler: impl Future<Output = Result<(), Status>>,
    rx: local_channel::LocalReceiver<(Bytes, Lease)>,
    out: &RefCell<Responder>,
) -> Result<(), Status> {
    let writer = async move {
        while let Some((mut frame, mut lease)) = rx.recv().await {
            observe::with_current(|c| c.sent(frame.len()));
            poll_fn(|cx| {
                let mut o = out.borrow_mut();
                let stream = o.body(None)?;
                poll_send(stream, cx, &mut frame, &mut lease)
            })
            .await?;
        }
        Ok::<(), Status>(())
    };
    let mut handler = pin!(handler);
    let mut writer = pin!(writer);
    let mut handler_result: Option<Result<(), Status>> = None;
    let mut writer_done = false;
    poll_fn(|cx| {
        if handler_result.is_none() {
            if let Poll::Ready(r) = handler.as_mut().poll(cx) {
                // The handler's sink is dropped with it, so the writer will
                // see the channel close after the last queued message.
                handler_result = Some(r);
            }
        }
        if !writer_done {
            match writer.as_mut().poll(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => writer_done = true,
                Poll::Pending => {}
            }
        }
        if writer_done {
            if let Some(r) = handler_result.take() {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::is_grpc_proto;

    #[test]
    fn grpc_content_types() {
        for ok in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"Application/GRPC",
            b"application/grpc; charset=utf-8",
            b"application/grpc+proto ;x=1",
        ] {
            assert!(is_grpc_proto(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"application/grpcfoo"[..],
            b"application/grpc+json",
            b"application/grpc+",
            b"application/grpc-web",
            b"application/json",
            b"",
        ] {
            assert!(!is_grpc_proto(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
