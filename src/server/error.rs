//! Engine errors as gRPC statuses.

use bytes::Bytes;
use net::Status;
use prost::Message;
use proto::google::rpc;

/// Maps an engine error to the status a client sees. Exhaustive on purpose: a new engine
/// error must get a deliberate code.
pub fn to_status(e: engine::Error) -> Status {
    use engine::Error as E;
    match e {
        E::OffsetOutOfRange { offset, .. } => out_of_range(offset),
        E::UnknownTopic(_) | E::UnknownPartition { .. } => Status::not_found(e.to_string()),
        E::TopicExists(_) => Status::already_exists(e.to_string()),
        E::RecordTooLarge { .. } | E::BatchTooLarge { .. } | E::Overloaded { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        E::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        E::ShutDown => Status::unavailable(e.to_string()),
        // Not logged here: the call's line logs INTERNAL at error level with this message
        // (and the call's trace id), once.
        E::Io { .. } | E::Corrupt { .. } | E::Latched { .. } | E::Foreign { .. } => {
            Status::internal(e.to_string())
        }
    }
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

    #[test]
    fn out_of_range_details_decode() {
        let st = to_status(engine::Error::OffsetOutOfRange {
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
    }
}
