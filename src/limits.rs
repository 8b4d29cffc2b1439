//! Every fixed limit of the proglog server, in one place, each with the reason for its value.
//!
//! The gRPC layer's own limits (message size, connections, streams, windows, timers) are in
//! `net::limits`; the storage engine's in `engine::limits`; what an operator may change is a
//! setting (`config`), whose default is in its table entry.

use std::time::Duration;

// ---- Messages --------------------------------------------------------------------------

/// Protobuf overhead of one record inside a `ConsumeResponse` (tags, lengths, and the
/// offset/term/type/timestamp varints at their largest), rounded up.
pub const RECORD_OVERHEAD_BYTES: usize = 64;

/// The smallest `--max-message-bytes`: below it a message could not carry a useful record
/// with its framing, and such a value is surely a unit left off (`4` for `4MiB`).
pub const MIN_MESSAGE_BYTES: usize = 1024;

// ---- Reads (Consume*, ConsumeBatch*) ---------------------------------------------------

/// Records one batch read returns when the client does not say: enough to amortize the trip
/// to the owning shard, few enough to answer promptly.
pub const READ_DEFAULT_RECORDS: usize = 1000;

/// Value bytes one batch read returns when the client does not say.
pub const READ_DEFAULT_BYTES: usize = 1 << 20;

/// Records one read may return whatever the client asks, so that a response of tiny records
/// stays cheap to encode; a message must also hold [`RECORD_OVERHEAD_BYTES`] per record.
pub const READ_MAX_RECORDS: usize = 10_000;

/// Records ConsumeStream fetches per trip to the owning shard; each goes out as its own
/// message, all of a chunk encoded into one buffer. Amortizes the trip (the hop, the read,
/// the chunk's buffers and its one write: at 100 B records, about 900 KiB a trip): 8192
/// rather than 2048 cut the server's CPU per record at 100 B by 28-30% and raised a
/// stream's catch-up by 28-74% (docs/benchmarks.md, "ConsumeStream: larger trips"). Records
/// of 1 KiB and more fill a trip's bytes first.
pub const CONSUME_STREAM_CHUNK_RECORDS: usize = 8192;

/// Value bytes ConsumeStream reads ahead per trip to the owning shard, at most (the default
/// read size, [`READ_DEFAULT_BYTES`], is the same). The chunk and its encoded messages are
/// reserved from the connection's memory share before the read (twice these bytes plus
/// [`RECORD_OVERHEAD_BYTES`] for each of up to [`CONSUME_STREAM_CHUNK_RECORDS`]: 3 MiB), so
/// this is also what bounds one stream while its client does not read: a 32 MiB share lets
/// ten trips be under way at once on a connection.
pub const CONSUME_STREAM_READ_AHEAD_BYTES: usize = 1 << 20;

// ---- Writes (ProduceStream) ------------------------------------------------------------

/// Requests one ProduceStream reads ahead of their responses. Requests waiting together
/// share one engine batch (and one fdatasync), so this is also the most records one stream
/// commits at once; when it is full (or the connection's memory share is used up: each
/// request holds its bytes until answered) the reader stops and HTTP/2 flow control stops
/// the client.
pub const PRODUCE_STREAM_MAX_IN_FLIGHT: usize = 1024;

// ---- Admin HTTP (/metrics, /healthz, /readyz) ------------------------------------------

/// Admin connections served at once; more are answered 503 and closed. Scrapers and probes
/// make one request at a time, so a handful is plenty, and a flood cannot take threads.
pub const ADMIN_MAX_CONNECTIONS: usize = 16;

/// Largest admin request head (request line and headers): a GET from Prometheus or a probe
/// is a few hundred bytes.
pub const ADMIN_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;

/// Bound on reading a request and writing its response, so that a stalled client cannot hold
/// one of the [`ADMIN_MAX_CONNECTIONS`] slots.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// After answering, how long and how much a closing admin connection is drained, so that it
/// ends with a FIN rather than a reset that would hide the response.
pub const ADMIN_LINGER: Duration = Duration::from_millis(500);
pub const ADMIN_LINGER_MAX_BYTES: usize = 64 * 1024;
