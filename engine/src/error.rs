//! The engine's error type.
//!
//! Expected outcomes (an offset outside the log, an unknown topic) are cheap variants that the
//! server maps to gRPC statuses; I/O failures carry the operation and the path they concern.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything an engine operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The offset is below the lowest or at/after the next offset of the log.
    #[error("offset out of range: {offset} (log holds [{lowest}, {next}))")]
    OffsetOutOfRange { offset: u64, lowest: u64, next: u64 },

    /// An I/O operation failed. `op` names what we were doing.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// Bytes on disk failed validation (checksum, magic, bounds).
    #[error("corrupt data in {path} at byte {position}: {reason}", path = path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    /// A previous write or fsync failed; the log refuses writes until it is reopened, because
    /// retrying an fsync after a failure can silently lose data.
    #[error("log {path} is read-only after an earlier I/O error ({cause}); reopen it to recover", path = path.display())]
    Latched { path: PathBuf, cause: String },

    /// The disk holding the log is full: a write failed for want of space (ENOSPC, EDQUOT)
    /// and left the log in a known state. Writes are refused until space returns, when the
    /// log recovers by itself; reads go on.
    #[error(
        "partition {partition} cannot take writes: the disk holding {path} is full ({free_bytes} bytes free); reads go on, and writes resume by themselves once space is freed",
        path = path.display()
    )]
    DiskFull {
        /// `topic/partition`.
        partition: String,
        path: PathBuf,
        free_bytes: u64,
    },

    /// A record is larger than the configured limit.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },

    /// A batch is larger than the configured limit (bytes or records).
    #[error("batch of {size} {unit} exceeds the limit of {limit} {unit}")]
    BatchTooLarge {
        size: usize,
        limit: usize,
        unit: &'static str,
    },

    /// The caller passed something the engine cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No such topic.
    #[error("topic {} does not exist", shorten(.0))]
    UnknownTopic(String),

    /// No such partition in an existing topic.
    #[error(
        "topic {} has no partition {partition} (it has {partitions})",
        shorten(topic)
    )]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },

    /// A topic with this name exists already.
    #[error("topic {} already exists", shorten(.0))]
    TopicExists(String),

    /// A shard's request queue is full: the caller should back off.
    #[error("shard {shard} is overloaded ({depth} requests queued)")]
    Overloaded { shard: usize, depth: usize },

    /// The engine (or the log) is shutting down or closed.
    #[error("engine is shut down")]
    ShutDown,

    /// The replication layer could not complete an operation (not the leader, no leader,
    /// outcome unknown, ...), in the seam's own terms.
    #[error("{0}")]
    Replication(crate::seam::Error),

    /// A data directory holds something we did not write and will not touch.
    #[error("unexpected content in {path}: {reason}", path = path.display())]
    Foreign { path: PathBuf, reason: String },

    /// A data file written in another batch format version. Refused, never misread: reading
    /// it as this version would serve garbage, and treating it as a torn tail would cut
    /// acknowledged records.
    #[error("{path} holds batches of format version {version}; this proglog reads format version {supported} only (format 1 is the single-node format from before replication: export its records with a client and produce them into a new data directory)", path = path.display())]
    UnsupportedFormat {
        path: PathBuf,
        version: u8,
        supported: u8,
    },
}

impl Error {
    /// Wraps an `std::io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Wraps a glommio error with the operation and path it concerns. glommio's own wrapper
    /// of an I/O error (operation, path, descriptor) is unwrapped to the OS error it carries,
    /// since we name the operation and path ourselves, and its conversion would drop the OS
    /// error code (which tells a full disk from a failing one).
    pub fn glommio(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: glommio::GlommioError<()>,
    ) -> Self {
        let source = match source {
            glommio::GlommioError::EnhancedIoError { source, .. } => source,
            other => std::io::Error::from(other),
        };
        Self::io(op, path, source)
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }

    /// True for an I/O error that means there is no space: the device is full (ENOSPC) or the
    /// user's quota is (EDQUOT).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || source.kind() == std::io::ErrorKind::StorageFull)
    }

    /// True for an I/O error that means the process has no file descriptor left
    /// (RLIMIT_NOFILE: EMFILE), or the system none (ENFILE).
    pub fn is_out_of_descriptors(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)))
    }

    /// True when the shards' executors could not be started or stopped before they were
    /// ready without an error of their own: what the host's io_uring, locked memory or
    /// seccomp profile cause, never what the data directory's files do.
    pub fn is_executor_failure(&self) -> bool {
        match self {
            Error::ShutDown => true,
            Error::Io { op, .. } => *op == crate::shard::EXECUTOR_OP,
            _ => false,
        }
    }

    /// True when the data directory is locked by another process (another proglog on it).
    pub fn is_locked_elsewhere(&self) -> bool {
        matches!(self, Error::Io { op, source, .. }
            if *op == crate::shard::LOCK_OP
                && source.raw_os_error() == Some(libc::EWOULDBLOCK))
    }

    /// True for a failure of an operation that makes data durable (fdatasync, fsync, msync):
    /// by convention their `op` starts with "syncing". After one fails the kernel may have
    /// dropped the data it was to write, so it latches the log whatever the reason; a failed
    /// *write* leaves a known state instead.
    pub fn is_sync_failure(&self) -> bool {
        matches!(self, Error::Io { op, .. } if op.starts_with("syncing"))
    }

    /// True for errors that leave the log unchanged and concern only the request.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::OffsetOutOfRange { .. }
                | Error::RecordTooLarge { .. }
                | Error::BatchTooLarge { .. }
                | Error::InvalidArgument(_)
                | Error::UnknownTopic(_)
                | Error::UnknownPartition { .. }
                | Error::TopicExists(_)
        )
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Quotes a client-supplied name for an error message, cut to a length that keeps the message
/// (which travels in a gRPC trailer) small whatever the client sent.
pub fn shorten(name: &str) -> String {
    use crate::limits::MAX_QUOTED_NAME_CHARS;
    if name.chars().count() <= MAX_QUOTED_NAME_CHARS {
        format!("{name:?}")
    } else {
        let head: String = name.chars().take(MAX_QUOTED_NAME_CHARS).collect();
        format!("{head:?}... ({} bytes)", name.len())
    }
}
