//! Seam errors as gRPC statuses, and the cluster error contract on the wire.
//!
//! `NotLeader`, `NoLeader` and `OutcomeUnknown` are UNAVAILABLE with a `google.rpc.ErrorInfo`
//! detail (domain `proglog.log.v1`, reason `NOT_LEADER` with metadata `leader_id` and
//! `leader_addr` when known, `NO_LEADER`, or `OUTCOME_UNKNOWN`; see
//! `proto::log::v1::errors`): UNAVAILABLE alone would not tell a client whether retrying a
//! produce could duplicate it. A single node never produces them; the mapping is fixed now so
//! that clients can rely on it before replication exists.

use bytes::Bytes;
use engine::seam;
use net::{Code, Status};
use prost::Message;
use proto::google::rpc;
use proto::log::v1::errors;

/// Maps a seam error to the status a client sees. Exhaustive on purpose: a new seam error
/// must get a deliberate code.
pub fn to_status(e: seam::Error) -> Status {
    use seam::Error as E;
    match e {
        E::OffsetOutOfRange { offset, .. } => out_of_range(offset),
        E::NotFound(m) => Status::not_found(m),
        E::AlreadyExists(m) => Status::already_exists(m),
        E::TooLarge { .. } | E::Overloaded { .. } | E::Exhausted(_) => {
            Status::resource_exhausted(e.to_string())
        }
        // The bare reason: the code says "invalid argument" already.
        E::InvalidArgument(m) => Status::invalid_argument(m),
        E::Unavailable(m) => Status::unavailable(m),
        E::NotLeader {
            ref leader_id,
            ref leader_addr,
        } => {
            let metadata = [
                (errors::LEADER_ID, leader_id.clone()),
                (errors::LEADER_ADDR, leader_addr.clone()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)));
            cluster(e.to_string(), errors::NOT_LEADER, metadata)
        }
        E::NoLeader(_) => cluster(e.to_string(), errors::NO_LEADER, []),
        E::OutcomeUnknown(_) => cluster(e.to_string(), errors::OUTCOME_UNKNOWN, []),
        // A full disk is an operating condition, not a failure of the server: the client may
        // retry once space is freed. The message names the partition and the free space.
        E::NotWritable {
            writability: seam::Writability::DiskFull { .. },
            ..
        } => Status::resource_exhausted(e.to_string()),
        // Not logged here: the call's line logs INTERNAL at error level with this message
        // (and the call's trace id), once.
        E::NotWritable { .. } | E::Internal(_) => Status::internal(e.to_string()),
        // Damaged stored data (never served) or a log marked lost: no retry brings it back.
        E::DataLoss(m) => Status::data_loss(m),
    }
}

/// How a ProduceStream ends when the server begins to shut down: every request it read has
/// been answered, and none is read after: `NO_LEADER` (nothing of the rest was appended;
/// retry, on another node), so that clients neither wait for the drain timeout nor take the
/// requests they sent after the last answer for an unknown outcome.
pub fn shutting_down_stream() -> Status {
    cluster(
        "this server is shutting down: every record it read from this stream was answered; \
         the ones sent after the last answer were not read (not stored): send them to another \
         node"
            .into(),
        errors::NO_LEADER,
        [],
    )
}

/// UNAVAILABLE with an `ErrorInfo` of `reason` in the details.
fn cluster<'a>(
    message: String,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'a str, String)>,
) -> Status {
    let details = rpc::Status {
        code: Code::Unavailable.as_i32(),
        message: message.clone(),
        details: vec![rpc::any_error_info(reason, errors::DOMAIN, metadata)],
    };
    Status::unavailable(message).with_details(Bytes::from(details.encode_to_vec()))
}

/// OUT_OF_RANGE with the book's message and rich details, so that book clients that decode
/// `grpc-status-details-bin` find the same `LocalizedMessage` as from the reference server.
pub fn out_of_range(offset: u64) -> Status {
    let message = format!("offset out of range: {offset}");
    let details = rpc::Status {
        code: net::Code::OutOfRange.as_i32(),
        message: message.clone(),
        details: vec![rpc::any_localized_message(
            "en-US",
            &format!("The requested offset is outside of the log: {offset}"),
        )],
    };
    Status::out_of_range(message).with_details(Bytes::from(details.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proglog_client::errors::{cluster_error, produce_retryable, ClusterError};

    #[test]
    fn out_of_range_details_decode() {
        let st = to_status(seam::Error::OffsetOutOfRange {
            offset: 7,
            lowest: 0,
            next: 3,
        });
        assert_eq!(st.code, net::Code::OutOfRange);
        assert_eq!(st.message, "offset out of range: 7");
        let details = rpc::Status::decode(st.details.as_ref()).unwrap();
        assert_eq!(details.code, 11);
        let lm = rpc::find_localized_message(&details).unwrap();
        assert_eq!(lm.locale, "en-US");
        assert_eq!(lm.message, "The requested offset is outside of the log: 7");
        assert_eq!(cluster_error(&st), None);
    }

    /// The cluster contract as a client decodes it from the status: code, reason, domain,
    /// metadata, and which outcomes a produce may be retried after.
    #[test]
    fn cluster_errors_are_unavailable_with_their_reason() {
        let cases = [
            (
                seam::Error::NotLeader {
                    leader_id: Some("node-2".into()),
                    leader_addr: Some("10.0.0.2:8400".into()),
                },
                "NOT_LEADER",
                ClusterError::NotLeader {
                    leader_id: Some("node-2".into()),
                    leader_addr: Some("10.0.0.2:8400".into()),
                },
                true,
            ),
            (
                seam::Error::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                },
                "NOT_LEADER",
                ClusterError::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                },
                true,
            ),
            (
                seam::Error::NoLeader("t/0".into()),
                "NO_LEADER",
                ClusterError::NoLeader,
                true,
            ),
            (
                seam::Error::OutcomeUnknown("leader changed".into()),
                "OUTCOME_UNKNOWN",
                ClusterError::OutcomeUnknown,
                false,
            ),
        ];
        for (err, reason, decoded, retry) in cases {
            let st = to_status(err.clone());
            assert_eq!(st.code, Code::Unavailable, "{err:?}");
            assert_eq!(st.message, err.to_string());
            let details = rpc::Status::decode(st.details.as_ref()).unwrap();
            assert_eq!(details.code, Code::Unavailable.as_i32());
            let info = rpc::find_error_info(&details).unwrap();
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, "proglog.log.v1");
            if let seam::Error::NotLeader {
                leader_id,
                leader_addr,
            } = &err
            {
                assert_eq!(info.metadata.get("leader_id"), leader_id.as_ref());
                assert_eq!(info.metadata.get("leader_addr"), leader_addr.as_ref());
                assert_eq!(info.metadata.len(), usize::from(leader_id.is_some()) * 2);
            } else {
                assert!(info.metadata.is_empty());
            }
            assert_eq!(cluster_error(&st), Some(decoded), "{err:?}");
            assert_eq!(produce_retryable(&st), retry, "{err:?}");
        }
        // Other UNAVAILABLEs (shutting down) carry no reason and are not a cluster answer.
        let st = to_status(seam::Error::Unavailable("engine is shut down".into()));
        assert_eq!((st.code, cluster_error(&st)), (Code::Unavailable, None));
        assert!(!produce_retryable(&st));
    }

    #[test]
    fn the_engine_messages_reach_the_wire_unchanged() {
        // (An invalid argument's reason alone: the code says what it is.)
        let cases = [
            (
                engine::Error::UnknownTopic("t".into()),
                Code::NotFound,
                "topic \"t\" does not exist",
            ),
            (
                engine::Error::RecordTooLarge {
                    size: 20,
                    limit: 10,
                },
                Code::ResourceExhausted,
                "record of 20 bytes exceeds the limit of 10 bytes",
            ),
            (
                engine::Error::BatchTooLarge {
                    size: 6,
                    limit: 5,
                    unit: "records",
                },
                Code::ResourceExhausted,
                "batch of 6 records exceeds the limit of 5 records",
            ),
            (
                engine::Error::InvalidArgument("x".into()),
                Code::InvalidArgument,
                "x",
            ),
            (
                engine::Error::ShutDown,
                Code::Unavailable,
                "engine is shut down",
            ),
            (
                engine::Error::Latched {
                    path: "/d/t/0".into(),
                    cause: "syncing: EIO".into(),
                },
                Code::Internal,
                "log /d/t/0 is read-only after an earlier I/O error (syncing: EIO); reopen it to recover",
            ),
            (
                engine::Error::DiskFull {
                    partition: "t/0".into(),
                    path: "/d/t/0".into(),
                    free_bytes: 4096,
                },
                Code::ResourceExhausted,
                "partition t/0 cannot take writes: the disk holding /d/t/0 is full (4096 bytes free); reads go on, and writes resume by themselves once space is freed",
            ),
            (
                engine::Error::UnsupportedFormat {
                    path: "/d/t/0/00000000000000000000.log".into(),
                    version: 1,
                    supported: 2,
                },
                Code::Internal,
                "/d/t/0/00000000000000000000.log holds batches of format version 1; this proglog reads format version 2 only (format 1 is the single-node format from before replication: export its records with a client and produce them into a new data directory)",
            ),
        ];
        for (e, code, message) in cases {
            let st = to_status(e.into());
            assert_eq!((st.code, st.message.as_str()), (code, message));
        }
    }

    /// A full disk and a latched partition are both `NotWritable` at the seam, told apart by
    /// their `Writability`: one is an operating condition (RESOURCE_EXHAUSTED, retry once
    /// space is freed), the other a failure (INTERNAL). Out of space outside a log's write
    /// path (a new topic's files) is a full disk too, and says how much is free.
    #[test]
    fn a_full_disk_is_resource_exhausted_and_a_latch_internal() {
        let full: seam::Error = engine::Error::DiskFull {
            partition: "t/0".into(),
            path: "/d/t/0".into(),
            free_bytes: 7,
        }
        .into();
        assert!(matches!(
            &full,
            seam::Error::NotWritable {
                partition,
                writability: seam::Writability::DiskFull { free_bytes: 7 },
                ..
            } if partition == "t/0"
        ));
        let latched: seam::Error = engine::Error::Latched {
            path: "/d/t/0".into(),
            cause: "syncing: EIO".into(),
        }
        .into();
        assert!(matches!(
            &latched,
            seam::Error::NotWritable {
                writability: seam::Writability::Latched { .. },
                ..
            }
        ));
        assert_eq!(to_status(latched).code, Code::Internal);
        let enospc = engine::Error::io(
            "allocating index",
            "/nonexistent/t/0/0.index",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let st = to_status(enospc.into());
        assert_eq!(st.code, Code::ResourceExhausted, "{st}");
        assert!(
            st.message
                .starts_with("allocating index /nonexistent/t/0/0.index")
                && st.message.ends_with("bytes free)"),
            "{st}"
        );
        let eio = engine::Error::io(
            "writing",
            "/d/t/0/0.log",
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(to_status(eio.into()).code, Code::Internal);
    }
}
