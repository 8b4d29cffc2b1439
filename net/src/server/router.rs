//! Handler registration: one handler per full method path.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use glommio::channels::local_channel::LocalSender;
use http::HeaderMap;

use crate::body::MessageReader;
use crate::codec::{self, encode_frame};
use crate::memory::{ConnMemory, Lease};
use crate::tls::TlsInfo;
use crate::Status;

/// A `!Send` boxed future: handlers run on the executor that accepted the call.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// What a handler learns about the call besides the message.
#[derive(Debug, Clone)]
pub struct Request<T> {
    /// Full method path, e.g. `/log.v1.Log/Produce`.
    pub path: String,
    /// Request headers without HTTP/2 pseudo-headers (custom metadata,
    /// `user-agent`, `grpc-timeout`, ...).
    pub metadata: HeaderMap,
    pub peer: Option<SocketAddr>,
    /// What TLS proved about the peer (its certificate's Common Name under mutual TLS);
    /// `None` on a plaintext connection. Shared by every call of the connection.
    pub tls: Option<Arc<TlsInfo>>,
    /// When the server will cancel the call (from `grpc-timeout`).
    pub deadline: Option<Instant>,
    /// The connection's memory: a handler that reads much on the call's behalf (a consume
    /// stream's read-ahead) reserves it here first, see [`crate::memory`].
    pub memory: Rc<ConnMemory>,
    pub message: T,
}

impl<T> Request<T> {
    /// Replaces the message, keeping the call information.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Request<U> {
        Request {
            path: self.path,
            metadata: self.metadata,
            peer: self.peer,
            tls: self.tls,
            deadline: self.deadline,
            memory: self.memory,
            message: f(self.message),
        }
    }
}

/// A unary or client-streaming reply.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub message: Bytes,
    /// Extra response headers sent before the message.
    pub metadata: HeaderMap,
}

impl Response {
    pub fn new(message: Bytes) -> Response {
        Response {
            message,
            metadata: HeaderMap::new(),
        }
    }

    /// Encodes a prost message as the reply.
    pub fn from_message<M: prost::Message>(m: &M) -> Response {
        Response::new(codec::encode(m))
    }
}

/// The request messages of a client-streaming or bidi call, pulled on
/// demand so that a slow handler back-pressures the client.
#[derive(Debug)]
pub struct MessageStream {
    pub(crate) reader: MessageReader,
}

impl MessageStream {
    /// The next request message; `Ok(None)` once the client half-closed.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        Ok(self.message_leased().await?.map(|(m, _)| m))
    }

    /// The next request message and the memory charged for it: a handler that keeps
    /// messages queued (read-ahead) holds the lease as long as it keeps the message, so that
    /// what it queues counts against the connection's share.
    pub async fn message_leased(&mut self) -> Result<Option<(Bytes, Lease)>, Status> {
        let m = self.reader.next_leased().await?;
        if let Some((m, _)) = &m {
            crate::observe::with_current(|c| c.received(m.len() + crate::codec::HEADER_LEN));
        }
        Ok(m)
    }

    /// [`message`](Self::message), decoded.
    pub async fn message_as<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.message().await? {
            Some(b) => codec::decode(b).map(Some),
            None => Ok(None),
        }
    }
}

/// Where a streaming handler puts response messages. Bounded: `send`
/// waits while the client is not reading, so memory does not grow. Every queued frame is
/// charged to the connection's memory until it reaches the socket.
#[derive(Debug)]
pub struct ResponseSink {
    pub(crate) tx: LocalSender<(Bytes, Lease)>,
    pub(crate) max_send_bytes: usize,
    pub(crate) memory: Rc<ConnMemory>,
}

impl ResponseSink {
    /// Queues one message. Fails when it exceeds the send limit, or with
    /// CANCELLED when the call is over (client gone, deadline passed).
    pub async fn send(&self, message: Bytes) -> Result<(), Status> {
        self.send_leased(message, Lease::none()).await
    }

    /// [`send`](Self::send), with memory the handler already holds for the message (split
    /// off its read-ahead); what the frame needs beyond it is charged without waiting.
    pub async fn send_leased(&self, message: Bytes, mut lease: Lease) -> Result<(), Status> {
        let frame = encode_frame(&message, self.max_send_bytes)?;
        drop(message);
        if lease.memory().is_none() {
            lease = self.memory.charge(frame.len());
        } else if lease.bytes() < frame.len() {
            lease.charge_more(frame.len() - lease.bytes());
        } else {
            lease.shrink_to(frame.len());
        }
        self.tx
            .send((frame, lease))
            .await
            .map_err(|_| Status::cancelled("call is no longer active"))
    }

    /// Queues several messages framed already ([`FrameBuilder`](crate::codec::FrameBuilder),
    /// which checks each against the send limit), written as one unit: a handler that has many
    /// small messages at once (a chunk of records) pays one queue hop and one write for all of
    /// them. `lease` is the memory the handler holds for them; what the frames need beyond it
    /// is charged without waiting.
    pub async fn send_framed(&self, frames: Bytes, mut lease: Lease) -> Result<(), Status> {
        if frames.is_empty() {
            return Ok(());
        }
        if lease.memory().is_none() {
            lease = self.memory.charge(frames.len());
        } else if lease.bytes() < frames.len() {
            lease.charge_more(frames.len() - lease.bytes());
        } else {
            lease.shrink_to(frames.len());
        }
        self.tx
            .send((frames, lease))
            .await
            .map_err(|_| Status::cancelled("call is no longer active"))
    }

    /// The largest message this call may send.
    pub fn max_send_bytes(&self) -> usize {
        self.max_send_bytes
    }

    /// The connection's memory, to reserve read-ahead before producing messages.
    pub fn memory(&self) -> &Rc<ConnMemory> {
        &self.memory
    }

    /// Encodes and queues a prost message.
    pub async fn send_message<M: prost::Message>(&self, m: &M) -> Result<(), Status> {
        self.send(codec::encode(m)).await
    }
}

pub(crate) type UnaryFn = dyn Fn(Request<Bytes>) -> LocalBoxFuture<Result<Response, Status>>;
pub(crate) type ServerStreamingFn =
    dyn Fn(Request<Bytes>, ResponseSink) -> LocalBoxFuture<Result<(), Status>>;
pub(crate) type ClientStreamingFn =
    dyn Fn(Request<MessageStream>) -> LocalBoxFuture<Result<Response, Status>>;
pub(crate) type BidiFn =
    dyn Fn(Request<MessageStream>, ResponseSink) -> LocalBoxFuture<Result<(), Status>>;

#[derive(Clone)]
pub(crate) enum Route {
    Unary(Rc<UnaryFn>),
    ServerStreaming(Rc<ServerStreamingFn>),
    ClientStreaming(Rc<ClientStreamingFn>),
    Bidi(Rc<BidiFn>),
}

impl Route {
    pub(crate) fn kind(&self) -> crate::observe::CallKind {
        use crate::observe::CallKind;
        match self {
            Route::Unary(_) => CallKind::Unary,
            Route::ServerStreaming(_) => CallKind::ServerStreaming,
            Route::ClientStreaming(_) => CallKind::ClientStreaming,
            Route::Bidi(_) => CallKind::Bidi,
        }
    }
}

/// Maps full method paths to handlers. Built once per executor, since
/// handlers are `!Send` and capture that executor's state.
///
/// Registering panics on a duplicate path or one not starting with `/`:
/// both are wiring mistakes found at start-up, never input errors.
#[derive(Default, Clone)]
pub struct Router {
    routes: HashMap<String, Route>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    fn add(mut self, path: &str, route: Route) -> Router {
        // A duplicate is a wiring mistake in the program, not an input error.
        assert!(
            !self.routes.contains_key(path),
            "duplicate gRPC route {path}"
        );
        assert!(
            path.starts_with('/'),
            "gRPC path must start with '/': {path}"
        );
        self.routes.insert(path.to_owned(), route);
        self
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Route> {
        self.routes.get(path)
    }

    /// Registered paths, for logging and reflection.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// One request message, one response message.
    pub fn unary<F, Fut>(self, path: &str, f: F) -> Router
    where
        F: Fn(Request<Bytes>) -> Fut + 'static,
        Fut: Future<Output = Result<Response, Status>> + 'static,
    {
        self.add(path, Route::Unary(Rc::new(move |r| Box::pin(f(r)))))
    }

    /// One request message, any number of response messages.
    pub fn server_streaming<F, Fut>(self, path: &str, f: F) -> Router
    where
        F: Fn(Request<Bytes>, ResponseSink) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        self.add(
            path,
            Route::ServerStreaming(Rc::new(move |r, s| Box::pin(f(r, s)))),
        )
    }

    /// Any number of request messages, one response message.
    pub fn client_streaming<F, Fut>(self, path: &str, f: F) -> Router
    where
        F: Fn(Request<MessageStream>) -> Fut + 'static,
        Fut: Future<Output = Result<Response, Status>> + 'static,
    {
        self.add(
            path,
            Route::ClientStreaming(Rc::new(move |r| Box::pin(f(r)))),
        )
    }

    /// Both directions streaming, independently.
    pub fn bidi_streaming<F, Fut>(self, path: &str, f: F) -> Router
    where
        F: Fn(Request<MessageStream>, ResponseSink) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        self.add(path, Route::Bidi(Rc::new(move |r, s| Box::pin(f(r, s)))))
    }

    /// A unary handler on prost types: bad request bytes are
    /// INVALID_ARGUMENT before the handler runs.
    pub fn unary_prost<Req, Resp, F, Fut>(self, path: &str, f: F) -> Router
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Request<Req>) -> Fut + 'static,
        Fut: Future<Output = Result<Resp, Status>> + 'static,
    {
        let f = Rc::new(f);
        self.unary(path, move |r: Request<Bytes>| {
            let f = f.clone();
            async move {
                let Request {
                    path,
                    metadata,
                    peer,
                    tls,
                    deadline,
                    memory,
                    message,
                } = r;
                let message: Req = codec::decode(message)?;
                let resp = f(Request {
                    path,
                    metadata,
                    peer,
                    tls,
                    deadline,
                    memory,
                    message,
                })
                .await?;
                Ok(Response::from_message(&resp))
            }
        })
    }
}
