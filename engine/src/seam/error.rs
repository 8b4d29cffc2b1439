//! The seam's errors: what the server maps to gRPC statuses, whichever implementation is
//! behind the seam. Implementations convert their own errors into these in one place.

use super::Writability;

/// Everything a seam operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No such topic, or no such partition of it. The message names which.
    #[error("{0}")]
    NotFound(String),

    /// The offset is before the lowest offset, or past the visible end where that is an error.
    #[error("offset out of range: {offset} (log holds [{lowest}, {next}))")]
    OffsetOutOfRange { offset: u64, lowest: u64, next: u64 },

    /// The request cannot be served as asked.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A record or batch over the topic's limits.
    #[error("{what} of {size} {unit} exceeds the limit of {limit} {unit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
        unit: &'static str,
    },

    /// The owner's queue is full: the caller should back off.
    #[error("shard {shard} is overloaded ({depth} requests queued)")]
    Overloaded { shard: usize, depth: usize },

    /// A topic of that name exists. The message names it.
    #[error("{0}")]
    AlreadyExists(String),

    /// The partition refuses writes: its disk is full (it takes writes again by itself once
    /// space returns), or a write or sync failed earlier (until it is reopened). The reason
    /// names the partition, and for a full disk the free space.
    #[error("{reason}")]
    NotWritable {
        partition: String,
        /// Why: `DiskFull` or `Latched`.
        writability: Writability,
        reason: String,
    },

    /// This node does not lead the partition; the leader, when known, takes appends.
    #[error("not the leader of this partition{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<String>,
        leader_addr: Option<String>,
    },

    /// The partition (named, `topic/partition`) has no leader now (an election is under
    /// way, or its replicas cannot reach a majority) or this node is still catching up with
    /// its cluster: retry later.
    #[error(
        "no leader for partition {0} at the moment (an election is under way, its replicas \
         cannot reach a majority, or this node is still catching up with its cluster); retry"
    )]
    NoLeader(String),

    /// The append may or may not have been committed (leadership changed while it was in
    /// flight): the caller must not assume either.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),

    /// A bound of this node's resources would be exceeded (the partitions a shard may hold,
    /// the process's file descriptors): the request can succeed once some are freed or the
    /// bound is raised. The message names the bound and how to raise it.
    #[error("{0}")]
    Exhausted(String),

    /// Shutting down, or the partition closed.
    #[error("{0}")]
    Unavailable(String),

    /// Stored data found damaged: a batch that fails its checks on a read (never served), or
    /// a log marked lost (records it held were deleted or cut). The message names the file
    /// and byte, or the loss.
    #[error("{0}")]
    DataLoss(String),

    /// I/O failure, or a file that is not ours; the message names the file.
    #[error("{0}")]
    Internal(String),
}

fn leader_hint(id: &Option<String>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; the leader is {id} at {addr}"),
        (Some(id), None) => format!("; the leader is {id}"),
        (None, Some(addr)) => format!("; the leader is at {addr}"),
        (None, None) => String::new(),
    }
}

/// The seam's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::Error> for Error {
    /// The engine's errors as the seam's, in one place. Exhaustive on purpose: a new engine
    /// error must get a deliberate place.
    fn from(e: crate::Error) -> Error {
        use crate::Error as E;
        match e {
            E::OffsetOutOfRange {
                offset,
                lowest,
                next,
            } => Error::OffsetOutOfRange {
                offset,
                lowest,
                next,
            },
            E::UnknownTopic(_) | E::UnknownPartition { .. } => Error::NotFound(e.to_string()),
            E::TopicExists(_) => Error::AlreadyExists(e.to_string()),
            E::RecordTooLarge { size, limit } => Error::TooLarge {
                what: "record",
                size,
                limit,
                unit: "bytes",
            },
            E::BatchTooLarge { size, limit, unit } => Error::TooLarge {
                what: "batch",
                size,
                limit,
                unit,
            },
            E::Overloaded { shard, depth } => Error::Overloaded { shard, depth },
            E::Replication(e) => e,
            E::InvalidArgument(m) => Error::InvalidArgument(m),
            E::ShutDown => Error::Unavailable(e.to_string()),
            E::Latched {
                ref path,
                ref cause,
            } => Error::NotWritable {
                partition: path.display().to_string(),
                writability: Writability::Latched {
                    cause: cause.clone(),
                },
                reason: e.to_string(),
            },
            E::DiskFull {
                ref partition,
                free_bytes,
                ..
            } => Error::NotWritable {
                partition: partition.clone(),
                writability: Writability::DiskFull { free_bytes },
                reason: e.to_string(),
            },
            // Out of space outside a log's write path (the catalog, a new partition's files):
            // the writes asked for cannot happen until space is freed, as for a full partition.
            E::Io { ref path, .. } if e.is_out_of_space() => {
                let free_bytes = crate::log::free_bytes(path.parent().unwrap_or(path));
                Error::NotWritable {
                    partition: path.display().to_string(),
                    writability: Writability::DiskFull { free_bytes },
                    reason: format!("{e} ({free_bytes} bytes free)"),
                }
            }
            E::Corrupt { .. } => Error::DataLoss(e.to_string()),
            E::Io { .. } | E::Foreign { .. } | E::UnsupportedFormat { .. } => {
                Error::Internal(e.to_string())
            }
        }
    }
}
