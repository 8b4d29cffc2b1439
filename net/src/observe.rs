//! What a server tells the outside about its calls: a [`CallObserver`] hears of every
//! connection and call, and the call being polled is reachable from its task
//! ([`with_current`]) so that log lines written on its behalf can carry its trace id.
//!
//! # Trace context
//!
//! A call's trace comes from the W3C `traceparent` request header
//! (`00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`); a call without one, or
//! with one that does not parse, starts a fresh trace. Either way the server's own handling
//! gets a fresh span id.
//!
//! # Current call
//!
//! Each call runs as one glommio task. While the server polls that task it sets a
//! thread-local pointer to the call's [`CallInfo`] and restores the previous value after, so
//! code running inside the handler (and a `log` formatter called from it) finds its own call
//! even though many calls interleave on one executor thread. Work the handler hands to other
//! tasks (another shard, a detached task) is outside the scope.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::Status;

/// Hears of a server's connections and calls. One per executor: it is called on the
/// executor that serves the connection, so it may keep per-shard state without locks.
pub trait CallObserver {
    fn connection_opened(&self, _peer: Option<SocketAddr>) {}
    fn connection_closed(&self, _peer: Option<SocketAddr>) {}
    /// A call passed the HTTP checks and is about to run.
    fn call_started(&self, _call: &CallInfo) {}
    /// The call ended with `status` (sent to the client, or not if it was gone).
    fn call_finished(&self, call: &CallInfo, status: &Status);
}

/// A W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This server's span for the call: always fresh.
    pub span_id: [u8; 8],
    /// The caller's span, from `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The `sampled` flag, passed on as received.
    pub flags: u8,
}

fn hex_val(b: u8) -> Option<u8> {
    // The spec allows lowercase only.
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
    static CURRENT: RefCell<Option<Rc<CallInfo>>> = const { RefCell::new(None) };
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // A stack address differs per thread: two threads seeded in the same nanosecond still
    // draw different ids.
    let local = 0u8;
    t ^ (&local as *const u8 as u64).rotate_left(32) ^ u64::from(std::process::id())
}

/// splitmix64: ids need to be unique, not unpredictable, and this is fast and lock-free.
fn next_random() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn fresh_span_id() -> [u8; 8] {
    loop {
        let v = next_random();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

impl TraceContext {
    /// A new trace (no parent), sampled.
    pub fn fresh() -> TraceContext {
        let mut trace_id = [0u8; 16];
        while trace_id == [0u8; 16] {
            trace_id[..8].copy_from_slice(&next_random().to_be_bytes());
            trace_id[8..].copy_from_slice(&next_random().to_be_bytes());
        }
        TraceContext {
            trace_id,
            span_id: fresh_span_id(),
            parent_id: None,
            flags: 1,
        }
    }

    /// Parses a `traceparent` value; `None` when it is not valid per W3C Trace Context
    /// (wrong lengths, uppercase hex, all-zero ids, version ff).
    pub fn from_traceparent(value: &[u8]) -> Option<TraceContext> {
        let value = value.trim_ascii();
        if value.len() < 55 {
            return None;
        }
        let version = parse_hex::<1>(&value[0..2])?[0];
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        // A later version may append fields after another dash; its first four we read.
        if value.len() > 55 && value[55] != b'-' {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = parse_hex::<16>(&value[3..35])?;
        let parent = parse_hex::<8>(&value[36..52])?;
        let flags = parse_hex::<1>(&value[53..55])?[0];
        if trace_id == [0u8; 16] || parent == [0u8; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id: fresh_span_id(),
            parent_id: Some(parent),
            flags,
        })
    }

    /// The caller's trace from `traceparent`, or a fresh one.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        headers
            .get("traceparent")
            .and_then(|v| TraceContext::from_traceparent(v.as_bytes()))
            .unwrap_or_else(TraceContext::fresh)
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        to_hex(&self.span_id)
    }

    /// The `traceparent` naming this server's span, to pass downstream.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            self.flags
        )
    }
}

/// How a call's messages flow, as its route declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Unary,
    ClientStreaming,
    ServerStreaming,
    Bidi,
}

impl CallKind {
    /// A call whose length the client decides (how long it keeps sending or reading), so
    /// that its duration says nothing of the server's speed.
    pub fn is_streaming(self) -> bool {
        self != CallKind::Unary
    }
}

/// One call as the observer sees it.
#[derive(Debug)]
pub struct CallInfo {
    /// Full method path, e.g. `/log.v1.Log/Produce`.
    pub method: String,
    pub peer: Option<SocketAddr>,
    /// Who the client proved to be (the client certificate's Common Name under mutual TLS).
    pub subject: Option<String>,
    pub trace: TraceContext,
    /// `trace.trace_id` in hex, made once because every log line of the call prints it.
    pub trace_id: String,
    pub span_id: String,
    pub started: Instant,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    messages_in: Cell<u64>,
    messages_out: Cell<u64>,
    /// Where the time went, as the handler reports it (`queue`, `append`, `fsync`, ...);
    /// a streaming call's entries of the same name add up.
    breakdown: RefCell<Vec<(&'static str, Duration)>>,
    /// Known once the path matched a route; `None` for unknown methods.
    kind: Cell<Option<CallKind>>,
    /// The longest single operation done for the call (one append, from hop to fsync):
    /// what "slow" means for a stream, whose own duration is the client's choice.
    slowest_operation: Cell<Option<Duration>>,
}

impl CallInfo {
    pub fn new(
        method: String,
        peer: Option<SocketAddr>,
        subject: Option<String>,
        trace: TraceContext,
    ) -> CallInfo {
        CallInfo {
            method,
            peer,
            subject,
            trace_id: trace.trace_id_hex(),
            span_id: trace.span_id_hex(),
            trace,
            started: Instant::now(),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            messages_in: Cell::new(0),
            messages_out: Cell::new(0),
            breakdown: RefCell::new(Vec::new()),
            kind: Cell::new(None),
            slowest_operation: Cell::new(None),
        }
    }

    pub fn kind(&self) -> Option<CallKind> {
        self.kind.get()
    }

    /// Set by the server once the call's route is known.
    pub fn set_kind(&self, kind: CallKind) {
        self.kind.set(Some(kind));
    }

    /// Notes one whole operation done for the call (e.g. an append from the hop to its
    /// fsync); the longest is kept.
    pub fn add_operation(&self, d: Duration) {
        if self.slowest_operation.get().is_none_or(|m| d > m) {
            self.slowest_operation.set(Some(d));
        }
    }

    pub fn slowest_operation(&self) -> Option<Duration> {
        self.slowest_operation.get()
    }

    /// Request bytes received, gRPC framing included (5 bytes per message).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.get()
    }

    /// Response bytes sent, gRPC framing included.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.get()
    }

    pub fn messages_in(&self) -> u64 {
        self.messages_in.get()
    }

    pub fn messages_out(&self) -> u64 {
        self.messages_out.get()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Adds `d` to the breakdown entry `name`.
    pub fn add_timing(&self, name: &'static str, d: Duration) {
        let mut b = self.breakdown.borrow_mut();
        match b.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => b.push((name, d)),
        }
    }

    pub fn breakdown(&self) -> Vec<(&'static str, Duration)> {
        self.breakdown.borrow().clone()
    }

    pub(crate) fn received(&self, frame_bytes: usize) {
        self.bytes_in
            .set(self.bytes_in.get().saturating_add(frame_bytes as u64));
        self.messages_in.set(self.messages_in.get() + 1);
    }

    pub(crate) fn sent(&self, frame_bytes: usize) {
        self.bytes_out
            .set(self.bytes_out.get().saturating_add(frame_bytes as u64));
        self.messages_out.set(self.messages_out.get() + 1);
    }
}

/// Runs `f` on the call whose task is being polled on this thread, if any.
pub fn with_current<R>(f: impl FnOnce(&CallInfo) -> R) -> Option<R> {
    // `try_with`: a logger may run during thread teardown, after the slot is gone.
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|c| c.as_deref().map(f)))
        .ok()
        .flatten()
}

/// Adds to the current call's timing breakdown (no-op outside a call).
pub fn add_timing(name: &'static str, d: Duration) {
    with_current(|c| c.add_timing(name, d));
}

/// Polls `fut` with `call` as the current call, restoring the previous one after each poll
/// (even if the poll unwinds).
pub(crate) async fn scoped<F: Future>(call: Rc<CallInfo>, fut: F) -> F::Output {
    struct Restore(Option<Rc<CallInfo>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        let prev = CURRENT.with(|c| c.borrow_mut().replace(call.clone()));
        let _restore = Restore(prev);
        fut.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_traceparent(tp).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(t.flags, 1);
        assert_ne!(t.span_id, t.parent_id.unwrap());
        let again = TraceContext::from_traceparent(t.traceparent().as_bytes()).unwrap();
        assert_eq!(again.trace_id, t.trace_id);
        assert_eq!(again.parent_id, Some(t.span_id));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::from_traceparent(bad).is_none(), "{bad:?}");
        }
        // A future version may carry more fields.
        assert!(TraceContext::from_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
    }

    #[test]
    fn fresh_ids_differ() {
        let a = TraceContext::fresh();
        let b = TraceContext::fresh();
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, [0; 16]);
        assert!(a.parent_id.is_none());
    }

    #[test]
    fn current_call_is_scoped_to_its_polls() {
        let call = Rc::new(CallInfo::new(
            "/x.Y/Z".into(),
            None,
            None,
            TraceContext::fresh(),
        ));
        let id = call.trace_id.clone();
        assert!(with_current(|c| c.trace_id.clone()).is_none());
        let seen = futures_lite::future::block_on(scoped(call.clone(), async {
            add_timing("fsync", Duration::from_millis(2));
            add_timing("fsync", Duration::from_millis(3));
            with_current(|c| c.trace_id.clone())
        }));
        assert_eq!(seen, Some(id));
        assert!(with_current(|c| c.trace_id.clone()).is_none());
        assert_eq!(call.breakdown(), vec![("fsync", Duration::from_millis(5))]);
    }
}
