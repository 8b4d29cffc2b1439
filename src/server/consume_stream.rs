//! `ConsumeStream`: every record from an offset, then tails the partition forever.
//!
//! Unlike the reference, which spins at the end of the log, this waits on the partition's
//! append notification, and the bounded response sink stops reading while the client does
//! not read.

use std::sync::Arc;

use bytes::Bytes;
use net::server::{Request, ResponseSink};
use net::Status;
use proto::log::v1::{topic_or_default, ConsumeRequest, ConsumeResponse};

use super::acl::Action;
use super::reader;
use super::records;
use super::state::AppState;
use crate::limits::CONSUME_STREAM_CHUNK_RECORDS;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<Bytes>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let r: ConsumeRequest = net::decode(req.message.clone())?;
    state.authorize(&req, Action::Consume, Some(&r.topic))?;
    let topic = topic_or_default(&r.topic).to_owned();
    let (_, max_bytes) = reader::limits(&state, 0, 0);
    let tail = async {
        let mut offset = r.offset;
        loop {
            let (recs, _) = reader::next_chunk(
                &state,
                &topic,
                r.partition,
                offset,
                CONSUME_STREAM_CHUNK_RECORDS,
                max_bytes,
            )
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
