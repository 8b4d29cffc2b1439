//! RPC metrics and the one log line per finished call.
//!
//! Each shard's gRPC server reports to its own [`ShardObserver`], which writes only that
//! shard's slot of [`RpcMetrics`] (relaxed atomic adds on cache lines no other core writes);
//! a scrape sums the slots. Methods are the router's paths, fixed at start-up, plus `other`
//! for paths nobody registered, so a client cannot grow the label set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam::utils::CachePadded;
use engine::metrics::{Histogram, HistogramSnapshot, LATENCY_BOUNDS_NS};
use log::Level;
use net::observe::{CallInfo, CallKind, CallObserver};
use net::{Code, Status};

/// gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED).
pub const CODES: usize = 17;
/// Label of calls to paths no handler is registered for.
pub const OTHER_METHOD: &str = "other";
/// Log target of the per-call lines, so they can be filtered on their own
/// (`--log-level info,proglog::rpc=debug` logs every call).
pub const RPC_TARGET: &str = "proglog::rpc";

/// One shard's RPC counters.
#[derive(Debug)]
pub struct ShardRpc {
    /// `[method * CODES + code]`.
    calls: Box<[AtomicU64]>,
    latency_ns: Box<[Histogram]>,
    bytes_in: Box<[AtomicU64]>,
    bytes_out: Box<[AtomicU64]>,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// Calls (HTTP/2 streams) running now.
    pub calls_open: AtomicI64,
}

/// The RPC metrics of every shard.
#[derive(Debug)]
pub struct RpcMetrics {
    /// Sorted registered paths, then [`OTHER_METHOD`].
    methods: Vec<String>,
    index: HashMap<String, usize>,
    shards: Vec<CachePadded<ShardRpc>>,
    /// Where the shards' servers place connections (they share it); read for the moves.
    pub balancer: std::sync::Arc<net::server::Balancer>,
}

/// One method's totals over every shard.
#[derive(Debug, Clone)]
pub struct MethodTotals {
    pub method: String,
    pub calls_by_code: [u64; CODES],
    pub latency_ns: HistogramSnapshot,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl RpcMetrics {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>, shards: usize) -> RpcMetrics {
        let mut methods: Vec<String> = paths.into_iter().map(str::to_owned).collect();
        methods.sort_unstable();
        methods.dedup();
        methods.push(OTHER_METHOD.to_owned());
        let index = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        let n = methods.len();
        let shard = || {
            CachePadded::new(ShardRpc {
                calls: (0..n * CODES).map(|_| AtomicU64::new(0)).collect(),
                latency_ns: (0..n).map(|_| Histogram::new(LATENCY_BOUNDS_NS)).collect(),
                bytes_in: (0..n).map(|_| AtomicU64::new(0)).collect(),
                bytes_out: (0..n).map(|_| AtomicU64::new(0)).collect(),
                connections_open: AtomicI64::new(0),
                connections_total: AtomicU64::new(0),
                calls_open: AtomicI64::new(0),
            })
        };
        RpcMetrics {
            methods,
            index,
            shards: (0..shards.max(1)).map(|_| shard()).collect(),
            balancer: net::server::Balancer::new(shards.max(1)),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    pub fn shard(&self, i: usize) -> &ShardRpc {
        // Shard indexes come from the engine, which has as many shards as this has slots;
        // clamp anyway rather than panic on a wiring mistake.
        &self.shards[i.min(self.shards.len() - 1)]
    }

    fn method_index(&self, path: &str) -> usize {
        self.index
            .get(path)
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    /// Sums of every method over the shards.
    pub fn totals(&self) -> Vec<MethodTotals> {
        self.methods
            .iter()
            .enumerate()
            .map(|(m, name)| {
                let mut t = MethodTotals {
                    method: name.clone(),
                    calls_by_code: [0; CODES],
                    latency_ns: HistogramSnapshot::empty(LATENCY_BOUNDS_NS),
                    bytes_in: 0,
                    bytes_out: 0,
                };
                for s in &self.shards {
                    for (c, slot) in t.calls_by_code.iter_mut().enumerate() {
                        *slot += s.calls[m * CODES + c].load(Relaxed);
                    }
                    t.latency_ns.merge(&s.latency_ns[m].snapshot());
                    t.bytes_in += s.bytes_in[m].load(Relaxed);
                    t.bytes_out += s.bytes_out[m].load(Relaxed);
                }
                t
            })
            .collect()
    }
}

/// The level of a finished call's line: routine outcomes stay below the default `info`,
/// what a client did wrong is `info`, what may need an operator is `warn`, and server
/// faults are `error` (logged here once, with the status message).
pub fn level_for(code: Code) -> Level {
    match code {
        // Reading past the end is how clients find it; a cancel is the client leaving.
        Code::Ok | Code::OutOfRange | Code::Cancelled => Level::Debug,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Level::Info,
        Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => {
            Level::Warn
        }
        Code::Internal | Code::Unknown | Code::DataLoss => Level::Error,
    }
}

/// [`level_for`] the status's code, but `info` for NOT_LEADER: a redirect the client follows
/// (a cluster-aware client once per leader change, the CLI's admin writes whenever they
/// reach a follower), routine in a cluster.
pub fn status_level(status: &Status) -> Level {
    let redirect = status.code == Code::Unavailable
        && matches!(
            proglog_client::errors::cluster_error(status),
            Some(proglog_client::errors::ClusterError::NotLeader { .. })
        );
    if redirect {
        Level::Info
    } else {
        level_for(status.code)
    }
}

/// `queue=12µs append=30µs fsync=910µs`.
pub fn format_breakdown(parts: &[(&'static str, Duration)]) -> String {
    let mut s = String::new();
    for (name, d) in parts {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&format!("{name}={d:?}"));
    }
    s
}

/// One shard's observer: records into its slot and logs each finished call.
pub struct ShardObserver {
    metrics: std::sync::Arc<RpcMetrics>,
    shard: usize,
    /// Calls slower than this are logged at `warn` with their timing breakdown (for streams:
    /// calls with an operation slower than this; see [`slowness`]).
    slow: Option<Duration>,
}

impl ShardObserver {
    pub fn new(
        metrics: std::sync::Arc<RpcMetrics>,
        shard: usize,
        slow: Option<Duration>,
    ) -> ShardObserver {
        ShardObserver {
            metrics,
            shard,
            slow,
        }
    }

    fn slot(&self) -> &ShardRpc {
        self.metrics.shard(self.shard)
    }
}

/// Whether a finished call was slow, as the prefix of its log line. A unary call is slow when
/// it took `threshold` or more. A stream lasts as long as its client wants (a tail is open for
/// hours, a producer keeps one ProduceStream for its life), so its duration says nothing of
/// the server: a stream is slow when one operation the server did for it (an append, from the
/// hop to the owning shard to its fsync) took `threshold` or more.
fn slowness(call: &CallInfo, elapsed: Duration, threshold: Duration) -> Option<String> {
    if call.kind().is_some_and(CallKind::is_streaming) {
        let op = call.slowest_operation().filter(|d| *d >= threshold)?;
        Some(format!("slow stream (slowest operation {op:?}) "))
    } else {
        (elapsed >= threshold).then(|| "slow call ".to_owned())
    }
}

fn peer_str(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

impl CallObserver for ShardObserver {
    fn connection_opened(&self, _peer: Option<SocketAddr>) {
        let s = self.slot();
        s.connections_open.fetch_add(1, Relaxed);
        s.connections_total.fetch_add(1, Relaxed);
    }

    fn connection_closed(&self, _peer: Option<SocketAddr>) {
        self.slot().connections_open.fetch_sub(1, Relaxed);
    }

    fn call_started(&self, _call: &CallInfo) {
        self.slot().calls_open.fetch_add(1, Relaxed);
    }

    fn call_finished(&self, call: &CallInfo, status: &Status) {
        let elapsed = call.elapsed();
        let s = self.slot();
        s.calls_open.fetch_sub(1, Relaxed);
        let m = self.metrics.method_index(&call.method);
        let code = usize::try_from(status.code.as_i32())
            .unwrap_or(0)
            .min(CODES - 1);
        s.calls[m * CODES + code].fetch_add(1, Relaxed);
        s.latency_ns[m].observe_duration(elapsed);
        s.bytes_in[m].fetch_add(call.bytes_in(), Relaxed);
        s.bytes_out[m].fetch_add(call.bytes_out(), Relaxed);

        let slow = self.slow.and_then(|t| slowness(call, elapsed, t));
        let mut level = status_level(status);
        if slow.is_some() && level > Level::Warn {
            level = Level::Warn;
        }
        if !log::log_enabled!(target: RPC_TARGET, level) {
            return;
        }
        let peer = peer_str(call.peer);
        let subject = call.subject.as_deref().unwrap_or("-");
        let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let breakdown = if slow.is_some() {
            format_breakdown(&call.breakdown())
        } else {
            String::new()
        };
        let is_slow = slow.is_some();
        let what = slow.unwrap_or_default();
        // A failure repeated call after call (every produce to a full disk, a client asking
        // for a topic that is not there in a loop) is logged once per window per shard and
        // kind (method, code, message), with the count held back: one line per call buried
        // everything else (98 MB of log in 13 s against a full disk). A message may quote
        // what a client sent (a topic name), so a client varying it made every call a new
        // kind (1.2 GB of log in 10 s): a method and code also write at most
        // `LINES_PER_METHOD_AND_CODE` lines per window, whatever the messages, and an
        // unknown path is one method. Slow calls likewise: a client can make its own calls
        // slow (a call whose request never comes), and one line each was another flood.
        let mut held_back = String::new();
        if status.code != Code::Ok || is_slow {
            let group = format!(
                "rpc {m} {}{}",
                status.code.name(),
                if is_slow { " slow" } else { "" }
            );
            let kind = format!(
                "{group} {}",
                status.message.chars().take(96).collect::<String>()
            );
            // A slow call's line tells of that call (its breakdown): each may show, within
            // the group's bound.
            let kind = (!is_slow).then_some(kind.as_str());
            match net::ratelog::admit_in_group(
                &group,
                LINES_PER_METHOD_AND_CODE,
                kind,
                std::time::Instant::now(),
            ) {
                None => return,
                Some(0) => {}
                Some(n) => {
                    held_back = format!(
                        " ({n} more calls like this in the last {:?} not logged)",
                        net::ratelog::WINDOW
                    )
                }
            }
        }
        // What a client sent is shown bounded: a path the server does not serve and a
        // message quoting the request (both up to the 16 KiB header list).
        let method = if m == self.metrics.methods.len() - 1 {
            bounded(&call.method, LOGGED_PATH_CHARS)
        } else {
            call.method.clone()
        };
        let message = bounded(&status.message, LOGGED_MESSAGE_CHARS);
        log::log!(
            target: RPC_TARGET,
            level,
            method = method.as_str(),
            code = status.code.name(),
            duration_us = duration_us,
            peer = peer.as_str(),
            subject = subject,
            bytes_in = call.bytes_in(),
            bytes_out = call.bytes_out(),
            breakdown = breakdown.as_str();
            "{what}{} {} in {elapsed:?}{}{}{held_back}",
            method,
            status.code.name(),
            if message.is_empty() { "" } else { ": " },
            message,
        );
    }
}

/// Failed (or slow) calls' lines per method and code per shard per window, whatever their
/// messages.
const LINES_PER_METHOD_AND_CODE: u32 = 4;

/// How much of a path no method has is logged.
const LOGGED_PATH_CHARS: usize = 96;

/// How much of a failed call's message is logged.
const LOGGED_MESSAGE_CHARS: usize = 512;

/// `s` cut to `max` characters, saying how much was cut.
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}... ({} more bytes)", &s[..at], s.len() - at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::observe::TraceContext;

    #[test]
    fn totals_sum_shards_and_unknown_paths_are_other() {
        let m = std::sync::Arc::new(RpcMetrics::new(["/a.A/X", "/a.A/Y"], 2));
        for (shard, path, status) in [
            (0, "/a.A/X", Status::ok()),
            (1, "/a.A/X", Status::ok()),
            (1, "/a.A/X", Status::not_found("t")),
            (0, "/nope", Status::unimplemented("?")),
        ] {
            let o = ShardObserver::new(m.clone(), shard, None);
            let call = CallInfo::new(path.into(), None, None, TraceContext::fresh());
            o.call_started(&call);
            o.call_finished(&call, &status);
        }
        let t = m.totals();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].method, "/a.A/X");
        assert_eq!(t[0].calls_by_code[0], 2);
        assert_eq!(t[0].calls_by_code[Code::NotFound.as_i32() as usize], 1);
        assert_eq!(t[0].latency_ns.count, 3);
        assert_eq!(t[2].method, OTHER_METHOD);
        assert_eq!(t[2].calls_by_code[Code::Unimplemented.as_i32() as usize], 1);
        assert_eq!(m.shard(0).calls_open.load(Relaxed), 0);
    }

    #[test]
    fn streams_are_slow_by_their_operations_not_their_length() {
        let second = Duration::from_secs(1);
        let call = |kind| {
            let c = CallInfo::new("/a.A/X".into(), None, None, TraceContext::fresh());
            c.set_kind(kind);
            c
        };
        let unary = call(CallKind::Unary);
        assert!(slowness(&unary, 2 * second, second).is_some());
        assert!(slowness(&unary, second / 2, second).is_none());
        // An hour-long stream whose appends were quick is not slow...
        let stream = call(CallKind::Bidi);
        stream.add_operation(Duration::from_millis(3));
        assert!(slowness(&stream, 3600 * second, second).is_none());
        // ...one with a slow append is, however short.
        stream.add_operation(2 * second);
        stream.add_operation(Duration::from_millis(5));
        assert_eq!(stream.slowest_operation(), Some(2 * second));
        let line = slowness(&stream, second / 10, second).unwrap();
        assert!(line.contains("slowest operation 2s"), "{line}");
        // A tail does no appends: never slow.
        let tail = call(CallKind::ServerStreaming);
        assert!(slowness(&tail, 3600 * second, second).is_none());
    }

    #[test]
    fn a_redirect_is_routine() {
        let not_leader = crate::server::error::to_status(engine::seam::Error::NotLeader {
            leader_id: Some("2".into()),
            leader_addr: Some("10.0.0.2:8400".into()),
        });
        assert_eq!(status_level(&not_leader), Level::Info);
        let no_leader =
            crate::server::error::to_status(engine::seam::Error::NoLeader("t/0".into()));
        assert_eq!(status_level(&no_leader), Level::Warn);
        assert_eq!(status_level(&Status::not_found("x")), Level::Info);
    }

    #[test]
    fn levels_follow_outcomes() {
        assert_eq!(level_for(Code::Ok), Level::Debug);
        assert_eq!(level_for(Code::NotFound), Level::Info);
        assert_eq!(level_for(Code::Unavailable), Level::Warn);
        assert_eq!(level_for(Code::Internal), Level::Error);
    }
}
