//! The cluster error contract as a client reads it: UNAVAILABLE with a `google.rpc.ErrorInfo`
//! of domain `proglog.log.v1` in `grpc-status-details-bin` (see `proto::log::v1::errors`),
//! and which of those outcomes a produce may be retried after.

use net::{Code, Status};
use prost::Message;
use proto::google::rpc;
use proto::log::v1::errors;

/// Why a node refused a call because of where the partition's leadership stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// Another node leads the partition; retry there (when it is named).
    NotLeader {
        leader_id: Option<String>,
        leader_addr: Option<String>,
    },
    /// No node leads it right now; retry after a pause.
    NoLeader,
    /// The write may or may not have been committed: retrying could duplicate it.
    OutcomeUnknown,
}

/// The cluster outcome a status carries, if it carries one.
pub fn cluster_error(status: &Status) -> Option<ClusterError> {
    if status.code != Code::Unavailable || status.details.is_empty() {
        return None;
    }
    let details = rpc::Status::decode(status.details.as_ref()).ok()?;
    let info = rpc::find_error_info(&details).filter(|i| i.domain == errors::DOMAIN)?;
    match info.reason.as_str() {
        errors::NOT_LEADER => Some(ClusterError::NotLeader {
            leader_id: info.metadata.get(errors::LEADER_ID).cloned(),
            leader_addr: info.metadata.get(errors::LEADER_ADDR).cloned(),
        }),
        errors::NO_LEADER => Some(ClusterError::NoLeader),
        errors::OUTCOME_UNKNOWN => Some(ClusterError::OutcomeUnknown),
        _ => None,
    }
}

/// The `ErrorInfo` domain of the reasons this client gives statuses it makes itself; no
/// server sends it.
pub const CLIENT_DOMAIN: &str = "client.proglog";

/// The reason of a write the client never sent: no server could be reached, or none
/// answered before the deadline, and every earlier try was refused (`NOT_LEADER`,
/// `NO_LEADER`). Its records were not stored.
pub const NOT_SENT: &str = "NOT_SENT";

/// `st` marked as a write that was never sent ([`NOT_SENT`]).
pub(crate) fn not_sent(mut st: Status) -> Status {
    let mut details = if st.details.is_empty() {
        rpc::Status {
            code: st.code as i32,
            message: st.message.clone(),
            details: Vec::new(),
        }
    } else {
        match rpc::Status::decode(st.details.as_ref()) {
            Ok(d) => d,
            Err(_) => return st,
        }
    };
    details
        .details
        .push(rpc::any_error_info(NOT_SENT, CLIENT_DOMAIN, []));
    st.details = details.encode_to_vec().into();
    st
}

/// Whether a write that failed with `status` was never sent ([`NOT_SENT`]).
pub fn never_sent(status: &Status) -> bool {
    if status.details.is_empty() {
        return false;
    }
    rpc::Status::decode(status.details.as_ref()).is_ok_and(|d| {
        d.details
            .iter()
            .filter(|a| a.type_url.ends_with("/google.rpc.ErrorInfo"))
            .filter_map(|a| rpc::ErrorInfo::decode(a.value.as_slice()).ok())
            .any(|i| i.domain == CLIENT_DOMAIN && i.reason == NOT_SENT)
    })
}

/// Whether a produce that failed with `status` may be sent again without risking a
/// duplicate: only when the node said it did not take it (`NOT_LEADER`, `NO_LEADER`).
pub fn produce_retryable(status: &Status) -> bool {
    matches!(
        cluster_error(status),
        Some(ClusterError::NotLeader { .. } | ClusterError::NoLeader)
    )
}

/// Whether a node refused a produce outright: the record was not stored, and on a stream,
/// neither was anything sent after it (the server ends the stream at its first refused
/// request). Other failures (a lost connection, a timeout, `OUTCOME_UNKNOWN`) leave what was
/// in flight in doubt. `DATA_LOSS` is a refusal: an append gets it only from a partition
/// whose log is marked lost or whose replica stopped on damaged data, before anything is
/// proposed (an append in flight when a replica stops gets `OUTCOME_UNKNOWN`).
pub fn produce_refused(status: &Status) -> bool {
    matches!(
        status.code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::DataLoss
    )
}
