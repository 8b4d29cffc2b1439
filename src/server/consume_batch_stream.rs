//! `ConsumeBatchStream`: batches from an offset, then tails the partition. Each batch read is
//! reserved from the connection's memory first (see `reader`).

use std::rc::Rc;

use bytes::Bytes;
use net::server::{Request, ResponseSink};
use net::Status;
use proto::log::v1::ConsumeBatchRequest;

use super::acl::Action;
use super::consume_batch::response;
use super::reader;
use super::records;
use super::state::ShardState;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<Bytes>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let r: ConsumeBatchRequest = net::decode(req.message.clone())?;
    state.authorize(&req, Action::Consume, Some(&r.topic))?;
    let id = records::partition_id(&r.topic, r.partition);
    reader::read_point(&state, &req, &id).await?;
    let (max_records, max_bytes) = reader::limits(&state, r.max_records, r.max_bytes);
    let tail = async {
        let mut offset = r.offset;
        loop {
            let (recs, hw, mut lease) =
                reader::next_chunk(&state, sink.memory(), &id, offset, max_records, max_bytes)
                    .await?;
            let resp = response(recs, offset, hw);
            offset = resp.next_offset;
            let msg = net::encode(&resp);
            drop(resp);
            let frame_lease = lease.split(msg.len() + net::codec::HEADER_LEN);
            drop(lease);
            // Waits while the client is not reading: the sink is bounded, and the next read
            // waits for memory.
            sink.send_leased(msg, frame_lease).await?;
        }
    };
    futures_lite::future::or(tail, state.draining()).await
}
