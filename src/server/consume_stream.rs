//! `ConsumeStream`: every record from an offset, then tails the partition forever.
//!
//! Unlike the reference, which spins at the end of the log, this waits on the partition's
//! visible end (its owner wakes it), and the bounded response sink stops reading while the
//! client does not read.

use std::rc::Rc;

use bytes::Bytes;
use net::server::{Request, ResponseSink};
use net::Status;
use proto::log::v1::{ConsumeRequest, ConsumeResponse};

use super::acl::Action;
use super::reader;
use super::records;
use super::state::ShardState;
use crate::limits::CONSUME_STREAM_CHUNK_RECORDS;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<Bytes>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let r: ConsumeRequest = net::decode(req.message.clone())?;
    state.authorize(&req, Action::Consume, Some(&r.topic))?;
    let id = records::partition_id(&r.topic, r.partition);
    let (_, max_bytes) = reader::limits(&state, 0, 0);
    let tail = async {
        let mut offset = r.offset;
        loop {
            let (recs, _) =
                reader::next_chunk(&state, &id, offset, CONSUME_STREAM_CHUNK_RECORDS, max_bytes)
                    .await?;
            for rec in recs {
                offset = rec.offset + 1;
                sink.send_message(&ConsumeResponse {
                    record: Some(records::to_wire(rec)),
                })
                .await?;
            }
        }
    };
    futures_lite::future::or(tail, state.draining()).await
}
