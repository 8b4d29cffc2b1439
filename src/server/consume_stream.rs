//! `ConsumeStream`: every record from an offset, then tails the partition forever.
//!
//! Unlike the reference, which spins at the end of the log, this waits on the partition's
//! visible end (its owner wakes it). A chunk of records is encoded into one buffer of
//! frames and queued whole, and the next chunk is read while it is written out. Reading ahead is bounded twice: the response sink holds
//! a few messages, and each chunk read from the log (at most
//! [`CONSUME_STREAM_READ_AHEAD_BYTES`]) is reserved from the connection's memory first, so
//! that a connection whose client stops reading stops reading the log once its share is
//! queued, however many streams it has.

use std::rc::Rc;

use bytes::Bytes;
use engine::seam::Record;
use net::memory::Lease;
use net::server::{Request, ResponseSink};
use net::Status;
use proto::log::v1::{ConsumeRequest, ConsumeResponse};

use super::acl::Action;
use super::reader;
use super::records;
use super::state::ShardState;
use crate::limits::{
    CONSUME_STREAM_CHUNK_RECORDS, CONSUME_STREAM_READ_AHEAD_BYTES, RECORD_OVERHEAD_BYTES,
};
use net::codec::FrameBuilder;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<Bytes>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let r: ConsumeRequest = net::decode(req.message.clone())?;
    state.authorize(&req, Action::Consume, Some(&r.topic))?;
    let id = records::partition_id(&r.topic, r.partition);
    reader::read_point(&state, &req, &id).await?;
    let (_, max_bytes) = reader::limits(&state, 0, 0);
    let max_bytes = max_bytes.min(CONSUME_STREAM_READ_AHEAD_BYTES);
    let tail = async {
        let mut chunk = reader::next_chunk(
            &state,
            sink.memory(),
            &id,
            r.offset,
            CONSUME_STREAM_CHUNK_RECORDS,
            max_bytes,
        )
        .await?;
        loop {
            let (recs, _, lease) = chunk;
            let Some(offset) = recs.last().map(|r| r.offset + 1) else {
                return Err(Status::internal("a read of the log brought no records"));
            };
            // The next chunk is read while this one is encoded and written out: the hop to
            // the partition's shard, the device read and the checks of the next chunk
            // overlap the encoding of this one. The next read reserves its memory before it
            // starts, so a client that stops reading stops both.
            let read = reader::next_chunk(
                &state,
                sink.memory(),
                &id,
                offset,
                CONSUME_STREAM_CHUNK_RECORDS,
                max_bytes,
            );
            // A failed send ends the stream at once (the read may be waiting at the end of
            // the log); a failed read only once this chunk is queued, so that the client gets
            // every record read before the error, as when the two took turns.
            let read = async { Ok::<_, Status>(read.await) };
            let send = async {
                io_out_first().await;
                send(&sink, recs, lease).await
            };
            let (next, ()) = futures_lite::future::try_zip(read, send).await?;
            chunk = next?;
        }
    };
    futures_lite::future::or(tail, state.draining()).await
}

/// Lets the executor hand the I/O queued so far to the kernel before this task goes on.
///
/// glommio submits the requests queued on its rings only between rounds of its task queues
/// (before running them, and when it parks), not when a task queues one. The first poll of
/// the next chunk's read queues its device read (on this shard when it owns the partition);
/// encoding and writing out the chunk before then takes about half a millisecond of the core
/// per MiB, and without this the read waited for all of it before reaching the device: the
/// two took turns instead of overlapping. Waiting on a timer a microsecond away leaves this
/// task's queue empty, so the executor polls its rings (submitting) before it resumes us.
async fn io_out_first() {
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
}

/// Encodes every record of a chunk straight into one buffer of frames (one copy of each
/// value, from the stored bytes) and queues it as one unit: one queue hop and one write for
/// the whole chunk. The sink's queue lets the chunk after be read while this one is written
/// out.
async fn send(sink: &ResponseSink, recs: Vec<Record>, lease: Lease) -> Result<(), Status> {
    let bytes: usize = recs
        .iter()
        .map(|r| r.value.len() + RECORD_OVERHEAD_BYTES + net::codec::HEADER_LEN)
        .sum();
    let mut frames = FrameBuilder::with_capacity(bytes, sink.max_send_bytes());
    for rec in recs {
        frames.push(&ConsumeResponse {
            record: Some(records::to_wire(rec)),
        })?;
    }
    // The stored bytes went with the records: the lease now covers the frames.
    sink.send_framed(frames.take(), lease).await
}
