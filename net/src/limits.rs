//! Every limit and timer of the gRPC layer, in one place, each with the reason for its value.
//!
//! [`ServerConfig::default`](crate::server::ServerConfig) and
//! [`ClientConfig::default`](crate::client::ClientConfig) are built from these; a server
//! binary overrides some from its own settings (proglog sets the message limit and the drain
//! timeout from `--max-message-bytes` and `--drain-timeout`). Per-connection and per-shard
//! bounds are here, and the defaults of the server-wide memory budget and its shares.

use std::time::Duration;

// ---- Messages --------------------------------------------------------------------------

/// Largest gRPC message received or sent: grpc-go's and grpcio's default receive limit, so
/// that a client built with its defaults is never sent a message it refuses, and a message
/// it may send is never refused here.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest HTTP/2 header block (SETTINGS_MAX_HEADER_LIST_SIZE). gRPC request headers are a
/// few hundred bytes (path, content-type, grpc-timeout, traceparent); this leaves ample room
/// for custom metadata while bounding what one header block makes h2 hold.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

// ---- Connections and calls (server) ----------------------------------------------------

/// Connections one executor (shard) serves at once, handshakes included. At the limit the
/// connection idle the longest is closed to make room; a new one is refused only when every
/// connection runs a call. Bounds the descriptors each core holds: a few thousand per core
/// stays under the common 65,536 open-file limit, which the log's segment files share.
pub const MAX_CONNECTIONS_PER_SHARD: usize = 4096;

/// A connection that runs no call for this long is closed with a GOAWAY, as grpc-go's
/// `MaxConnectionIdle`: a client that connected and went quiet gives its descriptor and
/// buffers back; a gRPC client reconnects on its next call. Long enough that a client
/// calling every few minutes keeps its connection.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Calls on one connection the client may reset per second, on average (a token bucket
/// that holds [`MAX_CONCURRENT_STREAMS`], so a client may cancel every call it has open at
/// once). The HTTP/2 rapid-reset attack opens and resets streams as fast as it can, so each
/// costs the server a handler start; paced or not, it runs at thousands per second. A
/// client over the rate gets GOAWAY with ENHANCE_YOUR_CALM and its connection closes.
pub const MAX_RESETS_PER_SECOND: u32 = 200;

/// After a GOAWAY that closes a connection (idle, rapid reset), how long the server waits
/// for it to be sent and for the client to close before dropping the socket.
pub const GOAWAY_LINGER: Duration = Duration::from_secs(1);

/// The same for a connection evicted to make room for a new one: it no longer counts against
/// the limit, so it gets only the moment its GOAWAY takes to write, and a flood of evictions
/// cannot pile up closing sockets.
pub const EVICT_LINGER: Duration = Duration::from_millis(50);

/// Calls in flight on one connection (SETTINGS_MAX_CONCURRENT_STREAMS), each a local task:
/// room for a client that pipelines hundreds of calls on one connection (the load generator
/// runs 256), while one connection cannot start tasks without bound.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Calls a client may reset before the server accepted them, per connection; one more and
/// h2 closes the connection (GOAWAY ENHANCE_YOUR_CALM), its guard against "rapid reset"
/// floods. Reset streams no longer count as concurrent, so this bounds the memory they hold.
/// h2's own default, 20, killed the connection of an honest client that cancels a burst of
/// short-deadline calls while the server is busy; as many as may be open is no more memory
/// than open calls take.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = MAX_CONCURRENT_STREAMS as usize;

/// Messages a streaming handler may queue ahead of the socket: enough to overlap reading
/// the log with sending, few enough that a client that stops reading stops the handler
/// within 16 messages (and ConsumeStream stops reading the log).
pub const RESPONSE_BUFFER_MESSAGES: usize = 16;

// ---- Memory (server) -------------------------------------------------------------------

/// The server-wide budget for buffers that grow with load (see `net::memory`): 256 MiB fits
/// a small machine (a 1 GiB VM keeps room for the page cache and the engine's indexes) and
/// is plenty for throughput, which needs a few MiB per busy connection.
pub const MEMORY_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// One connection's share of the budget: room for two largest messages and their copies
/// with many streams reading ahead, while eight connections that stop reading still leave
/// most of the default budget to everyone else.
pub const CONNECTION_MEMORY_BYTES: usize = 32 * 1024 * 1024;

// ---- Flow control (server and client) --------------------------------------------------

/// How much one stream may send before its reader takes it (HTTP/2 initial stream window).
/// h2's 64 KiB default would cap a stream at 64 KiB per round trip; 1 MiB lets a
/// default-size record (1 MiB) arrive without waiting for a WINDOW_UPDATE, and still bounds
/// unread input per stream.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;

/// The same for a whole connection: eight streams can fill their windows at once, and a
/// connection's unread input stays at most 8 MiB.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// The largest HTTP/2 frame we accept (SETTINGS_MAX_FRAME_SIZE, server and client), and so
/// the largest DATA frame a peer sends us. HTTP/2's 16 KiB default cuts a 64 KiB request into
/// four DATA frames, each written with two sends (its 9-byte header, then its payload: the
/// socket takes no vectored writes), each one a TCP segment through the whole stack on both
/// ends. 256 KiB carries a 64 KiB batch, or a ConsumeStream response, in one frame. The cost
/// is h2's read buffer, which holds one whole frame before decoding it: at most 256 KiB a
/// connection (was 16 KiB), small beside the [`CONNECTION_WINDOW_BYTES`] of unread input a
/// connection's window already allows.
pub const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// h2's budget for the framing overhead of small DATA frames a peer sends us before we read
/// them (`data_frame_budget`): each frame under 256 bytes takes 256 minus its length, given
/// back when we read it; an exhausted budget closes the connection with ENHANCE_YOUR_CALM.
/// h2's default, half the connection window (4 MiB), let about 17,000 frames of ten bytes
/// wait: a client streaming short records one message a frame (`proglog produce` with the
/// lines of a file, any gRPC client's ProduceStream) while the log was busy syncing had its
/// connection closed long before its flow-control window was used. Twice the connection
/// window lets about 70,000 such frames wait (what a stream's 1 MiB window holds of
/// 15-byte messages); what h2 keeps per waiting frame (about 100 bytes beside the payload)
/// stays under 7 MiB a connection.
pub const DATA_FRAME_BUDGET_BYTES: usize = 2 * CONNECTION_WINDOW_BYTES as usize;

/// Bytes h2 buffers per stream for sending before the peer grants window: several DATA
/// frames in flight keep a link busy, and a peer that stops reading holds at most this much
/// per stream in our memory (send_data itself would buffer without limit).
pub const MAX_SEND_BUFFER_BYTES: usize = 256 * 1024;

// ---- Timers ----------------------------------------------------------------------------

/// Interval between keepalive PINGs on an idle server connection: finds peers that vanished
/// without a FIN (a crashed host, a dropped NAT mapping) within about a minute, at one small
/// frame per idle minute.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// How long a PING may go unanswered before the connection is closed: gRPC's default
/// keepalive timeout; a live peer answers far sooner even on a loaded machine.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on the HTTP/2 preface and SETTINGS exchange: a client that connects and never
/// speaks holds a connection slot; on any real network the exchange takes milliseconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on waiting for a connection's first byte, and on the TLS handshake: the same
/// reasoning as [`HANDSHAKE_TIMEOUT`].
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long calls in flight may run after shutdown begins, unless the server says
/// otherwise: the usual 30 s grace period of process supervisors.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after `accept` fails (out of descriptors or memory, which is transient): short
/// enough to resume soon after connections close, long enough not to spin a core.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// A connection we refuse is closed with a FIN after reading what the client already sent
/// (closing a socket with unread input sends RST, which clients report as a network error).
/// Bounded in time and bytes, so that a refused client cannot keep it open.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
pub const CLOSE_LINGER_MAX_BYTES: usize = 256 * 1024;

/// A client's bound on TCP connect plus the TLS handshake: long enough for a loaded server
/// or a cross-region link, short enough that a dead address is reported promptly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
