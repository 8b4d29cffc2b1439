//! The engine's hard limits and defaults, in one place, each with the reason for its value.
//!
//! Hard limits (`MIN_`, `MAX_`) are checked where input enters the engine; defaults
//! (`DEFAULT_`) are the values of settings nobody set, themselves bounded by
//! `LogConfig::validate`. Names end with their unit, as in `net::limits` and the server's
//! `limits`.
//!
//! Constants that define an on-disk format (the block size, header and entry lengths, magic
//! numbers) stay with the format they define (`segment.rs`, `batch.rs`, `index.rs`,
//! `meta.rs`): changing one of those changes the format, not a limit. This file imports
//! nothing of the crate; the files that combine a limit with a format constant assert the
//! relation at compile time (`config.rs`, `segment.rs`).

use std::time::Duration;

// ---- Topics ----------------------------------------------------------------------------

/// Partitions of one topic. Every partition keeps its active segment open (a data and an
/// index file) and mapped: 4,096 partitions of one topic hold 8,192 descriptors, well within
/// the 65,536 the systemd unit in `deploy/` allows, with room for connections and sealed
/// segments.
pub const MAX_PARTITIONS: u32 = 4096;

/// Partition replicas one shard holds by default (`--max-partitions-per-shard`; Redpanda
/// bounds partitions per shard the same way, `topic_partitions_per_shard`). A replica costs
/// two descriptors for its active segment, an index file of up to 1.6 MiB and up to 8 MiB of
/// zeroed blocks ahead of its writes on disk, and up to 14 MiB of buffers and caches while
/// busy: without a bound, topic creations alone could take every descriptor, the disk or the
/// memory.
pub const DEFAULT_MAX_PARTITIONS_PER_SHARD: u32 = 1000;

/// Bytes of a topic name. A topic is a directory named after it, and Linux file systems allow
/// 255 bytes a name; 249 is also Kafka's limit, so every Kafka topic name is valid here.
pub const MAX_TOPIC_NAME_BYTES: usize = 249;

// ---- Segments and indexes --------------------------------------------------------------

/// Positions inside a segment are u32 in its index; 2 GiB leaves a batch that starts below
/// it room to end within u32 range.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 31;

/// Sixteen 4 KiB blocks. Every segment costs two files and a directory fsync when it is
/// created and sealed; smaller segments would roll on nearly every append.
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// The active segment is scanned in full when a log opens, so this bounds recovery time;
/// it is also large enough that rolls (two fsyncs and a directory fsync) are rare.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Kafka's choice: an index entry per 4 KiB of data keeps a read's walk from its entry to
/// about a block, and the index of a full default segment to 1 MiB (65,536 entries of 16
/// bytes), small enough to stay resident (a page fault on the map blocks the executor).
pub const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;

/// Entries an active segment's index holds beyond one per `index_interval_bytes`: batches
/// also take an entry when their term changes. When they run out the segment rolls early.
pub const INDEX_SLACK_ENTRIES: usize = 1024;

/// When recovered data needs more entries than its index holds (settings changed since it
/// was written), the index at least doubles, and grows by no fewer entries than this.
pub const MIN_INDEX_GROWTH_ENTRIES: usize = 1024;

/// Recovery reads a data file in reads of this size: large enough for sequential bandwidth,
/// small enough that a scan never holds a segment's worth of memory.
pub const SCAN_CHUNK_BYTES: usize = 1 << 20;

// ---- Records and batches ---------------------------------------------------------------

/// Kafka's default (`message.max.bytes`, about 1 MB): a record is a message, not a file.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// A batch arrives in one gRPC message, which grpcio clients refuse above 4 MiB by default.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Bounds the per-record work of one batch (decoding, one `Record` each) whatever the
/// records' sizes: 4 MiB of empty records would otherwise be half a million.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 65536;

// ---- Buffering and durability ----------------------------------------------------------

/// Each partition's write-behind buffer: twice the largest default batch, so a full batch
/// can be buffered while the one before it is written out; it bounds memory per partition.
pub const DEFAULT_WRITE_BEHIND_BYTES: usize = 8 * 1024 * 1024;

/// Under `never`, buffered data reaches the device within this time; often enough that a
/// crash loses little, rarely enough that the timer costs nothing.
pub const DEFAULT_FLUSH_MS: u64 = 200;

/// `interval` without a period: at most about 100 ms of appends lost in a crash, for ten
/// fdatasyncs a second per partition.
pub const DEFAULT_INTERVAL_MS: u64 = 100;

// ---- Reads -----------------------------------------------------------------------------

/// The smallest DMA read a read issues: one block, the unit O_DIRECT reads anyway.
pub const MIN_READ_WINDOW_BYTES: usize = 4096;

/// The largest DMA read a read issues (plus an index interval), whatever `max_bytes` the
/// caller passes: bounds the memory one read holds per I/O.
pub const MAX_READ_WINDOW_BYTES: usize = 8 << 20;

// ---- Shards ----------------------------------------------------------------------------

/// Messages queued for one shard before callers get `Overloaded`. A message only starts a task
/// on the shard, so 4,096 queued is far more than any healthy burst; a longer queue means the
/// shard is behind, and callers should back off rather than grow its memory.
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;

/// A shard's receiver yields to its tasks after this many messages, so the tasks the
/// messages start (and I/O completions) run between bursts without a yield per message.
pub const MESSAGES_PER_YIELD: u32 = 64;

/// Sealed segments whose files one shard keeps open: two descriptors each, 2,048 a shard,
/// within the 65,536 the systemd unit in `deploy/` allows for a machine's shards besides
/// connections and active segments.
pub const DEFAULT_MAX_OPEN_SEGMENTS_PER_SHARD: usize = 1024;

/// The open-file budget's LRU queue keeps stale entries (older uses of a slot) until it
/// holds this many per budgeted file plus `BUDGET_LRU_SLACK_ENTRIES`. Pruning walks the whole
/// queue and leaves at most one entry per open file, so it runs at most once per three uses
/// per budgeted file: O(1) a use, amortized.
pub const BUDGET_LRU_ENTRIES_PER_FILE: usize = 4;
pub const BUDGET_LRU_SLACK_ENTRIES: usize = 64;

/// How often each shard applies retention. Retention deletes whole sealed segments, which
/// fill in minutes at the soonest; a check every 30 s costs nothing and lets a log exceed its
/// limit by about 30 s of writes at most.
pub const DEFAULT_RETENTION_CHECK: Duration = Duration::from_secs(30);

// ---- Metadata and messages -------------------------------------------------------------

/// Metadata (the catalog, Raft's hard state) is small by design; a larger file is not ours
/// or is damaged, and is refused before it is read into memory.
pub const MAX_META_PAYLOAD_BYTES: usize = 16 << 20;

/// Bytes of a log's metadata file name (it ends in `.meta`). Callers use short fixed names; the
/// bound keeps a name far below the file system's 255 bytes, `.tmp` of the atomic replacement
/// included.
pub const MAX_META_NAME_BYTES: usize = 99;

/// Characters of a client-supplied name quoted in an error message. Messages travel in a
/// gRPC trailer; the cut keeps them small whatever the client sent.
pub const MAX_QUOTED_NAME_CHARS: usize = 64;

// ---- Memory -----------------------------------------------------------------------------

/// What an idle partition's write-behind buffer keeps of its capacity (the rest goes back to
/// the allocator on the log's next background tick): one block's tail and a few small
/// batches, so that a trickle of appends does not reallocate every time.
pub const IDLE_WRITE_BUFFER_BYTES: usize = 64 * 1024;

// ---- A full disk -----------------------------------------------------------------------

/// How often a log whose disk is full checks whether space has returned. A check is one
/// statvfs; recovering (when there is room) rewrites one block and syncs once. Once a
/// second, writes resume within about a second of space being freed.
pub const DISK_FULL_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Free space a full log waits for beyond what its next write-out and next segment need
/// (the write-behind buffer, an index file), so that it does not resume, fill the disk
/// again at once and flap between the two states.
pub const DISK_FULL_RESUME_MARGIN_BYTES: u64 = 1 << 20;

// ---- The active segment's tail ------------------------------------------------------------

/// Blocks of the active segment's data file kept allocated and written (zero-filled) ahead of
/// the write position. An O_DIRECT write inside them changes neither the file's size nor its
/// extents, so the fdatasync that makes it durable commits no metadata (an extending write
/// makes every sync a journal commit; `fallocate` alone leaves unwritten extents whose
/// conversion is one too). Topped up in steps of half the window, so one extending write (and
/// one metadata commit) per 4 MiB of data; never past the segment's size limit, so a small
/// volume pays at most this per partition.
pub const PREALLOC_WINDOW_BYTES: u64 = 8 << 20;

/// Zeroing the window writes every block twice (zeroes, then data), which pays only when
/// syncs are frequent: it is kept up while at least this many fdatasyncs fell in the last half
/// window of data (at most 256 KiB per sync), and skipped otherwise (large batches, whose
/// rare syncs commit metadata at a cost spread over megabytes, and `never`). Break-even is
/// about 10: a metadata commit costs a sync some 50-200 us here, zeroing 4 MiB about 2 ms of
/// device time.
pub const PREALLOC_MIN_SYNCS: u64 = 16;

/// Bytes of recently written data a partition keeps in memory for readers close behind the
/// writer (see `tail_cache`), charged to the memory budget.
pub const TAIL_CACHE_BYTES: usize = 4 << 20;

/// Pieces read from the device a log keeps for readers walking older data record by record
/// (see `tail_cache::RecentReads`), the largest piece kept, and the bytes all pieces may hold
/// together: at most 2 MiB per partition. Enough pieces for many readers walking at once (16
/// unary Consume callers at different offsets each keep a 4 KiB piece); the byte bound, not
/// the count, limits large pieces.
pub const RECENT_READS: usize = 64;
pub const RECENT_READ_MAX_BYTES: usize = 256 * 1024;
pub const RECENT_READS_BYTES: usize = 2 << 20;

/// How long a partition keeps its tail cache without an append, and its recent reads without
/// a read, before giving their memory back (checked on the log's background tick).
pub const CACHE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
