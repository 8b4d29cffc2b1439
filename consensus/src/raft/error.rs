//! Errors of the Raft side of the consensus crate.

/// Why a Raft operation failed. Outcomes a client acts on (not the leader, no leader, an
/// outcome that cannot be known) are variants of their own, mapped by the server to the seam's
/// wire contract (`NOT_LEADER`, `NO_LEADER`, `OUTCOME_UNKNOWN`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// This node is not the group's leader; `leader` is the one it knows of.
    #[error("not the leader of group {group} (leader: node {leader})")]
    NotLeader { group: u64, leader: u64 },

    /// The group has no leader at the moment (an election is under way).
    #[error("group {group} has no leader at the moment")]
    NoLeader { group: u64 },

    /// The proposal may or may not have been committed: it was proposed, and then this node
    /// stopped following it (leadership was lost, the group stopped). A client retrying must
    /// be ready to see it twice. `why` says what happened, for the message only: every cause
    /// is the same outcome on the wire (`OUTCOME_UNKNOWN`).
    #[error("outcome unknown in group {group}: {why}")]
    OutcomeUnknown { group: u64, why: &'static str },

    /// The leader holds as much uncommitted data as it accepts (`max_uncommitted_size`):
    /// retry once earlier proposals commit.
    #[error("group {group}: too much uncommitted data; retry")]
    Busy { group: u64 },

    /// A configuration change is already pending; Raft allows one at a time.
    #[error("group {group}: a configuration change is already in progress (entry {pending})")]
    ConfChangePending { group: u64, pending: u64 },

    /// Raft replaced the proposed configuration change by an empty entry (it conflicted with
    /// one in progress, or broke joint-consensus rules).
    #[error("group {group}: configuration change at index {index} was refused by Raft")]
    ConfChangeRefused { group: u64, index: u64 },

    /// A linearizable read could not be served yet (no leader, or the leader has not
    /// committed in its term); retry until a deadline.
    #[error("group {group}: read index not available yet; retry")]
    ReadNotReady { group: u64 },

    /// No such group on this shard.
    #[error("no Raft group {0} on this shard")]
    UnknownGroup(u64),

    /// The proposal is malformed or too large.
    #[error("invalid proposal: {0}")]
    InvalidProposal(String),

    /// Bytes from a peer or from disk that do not decode.
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },

    /// The group's storage failed; the group stops (its log is latched).
    #[error("storage of group {group}: {source}")]
    Storage {
        group: u64,
        #[source]
        source: engine::Error,
    },

    /// The group's leader counts entries as held by this replica that its log no longer
    /// has: they were acknowledged, then lost (the partition's directory was deleted or
    /// replaced, or the device lied about a sync). The replica stops: stepping on would
    /// make raft-rs panic, and voting would count entries it does not hold.
    #[error(
        "group {group}: the leader (node {leader}) counts entries up to index {acknowledged} \
         as held by this replica, whose log ends at index {held}: entries it acknowledged are \
         gone (its directory lost or replaced). It stays stopped; it is moved to another node \
         after --stopped-replica-grace, or remove this node and add it back with an empty \
         data directory"
    )]
    LostEntries {
        group: u64,
        leader: u64,
        held: u64,
        acknowledged: u64,
    },

    /// The replica's log was marked lost ([`engine::Log::mark_lost`]): its directory vanished
    /// or was emptied while the node kept its identity, segment files it recorded were
    /// deleted, or a leader named acknowledged entries it no longer held. It opens stopped,
    /// before it could vote or acknowledge anything, at every start.
    #[error(
        "group {group}: this replica's log is marked lost ({why}). It stays stopped and never \
         votes; it is moved to another node after --stopped-replica-grace, or remove this \
         node and add it back with an empty data directory. The partition's only replica \
         (a single node) serves what is left once the loss is accepted: stop the server, \
         delete lost.meta in the partition's directory, start it"
    )]
    LostLog { group: u64, why: String },

    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(String),
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        Error::Raft(e.to_string())
    }
}

impl Error {
    /// True for a storage failure for want of space (the log waits for space and recovers).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Storage { source, .. }
            if matches!(source, engine::Error::DiskFull { .. }) || source.is_out_of_space())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
