//! `ProduceStream`: pipelined appends, one response per request, in request order.
//!
//! Two halves run side by side in the call's task. The reader pulls requests into a bounded
//! queue (when it is full the reader stops, and HTTP/2 flow control stops the client). The
//! writer takes whatever has queued up for the same partition and encodes it, here on the
//! connection's core, as ONE batch for the partition's owner, then answers each request with
//! its offset. While one batch waits for its fsync the
//! next one accumulates, so a client with many requests in flight gets group commit per
//! stream, and offsets follow request order because a stream has one append outstanding at a
//! time. The call ends OK after the client half-closes and every request is answered.
//!
//! Each queued request keeps the memory its bytes were charged (see `net::memory`) while it
//! waits, and then for the batch encoded from it until that batch is appended, so what a
//! stream reads ahead counts against its connection's share, and the reader waits, with its
//! window closed, once the share is used up.

use std::rc::Rc;

use engine::seam::{encoded_record_len, BatchBuilder};
use glommio::channels::local_channel::{self, LocalReceiver};
use net::codec::FrameBuilder;
use net::memory::Lease;
use net::server::{MessageStream, Request, ResponseSink};
use net::tls::TlsInfo;
use net::Status;
use proto::log::v1::{topic_or_default, ProduceRequest, ProduceResponse};

use super::acl::Action;
use super::append;
use super::error::to_status;
use super::records;
use super::state::ShardState;
use crate::limits::PRODUCE_STREAM_MAX_IN_FLIGHT;

/// A request and the memory its bytes hold until it is answered.
type Item = Result<(ProduceRequest, Lease), Status>;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<MessageStream>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let tls = req.tls.clone();
    let mut requests = req.message;
    let (tx, rx) = local_channel::new_bounded::<Item>(PRODUCE_STREAM_MAX_IN_FLIGHT);
    // Set when the server began to shut down: no request is read after that.
    let drained = std::cell::Cell::new(false);
    let reader = async {
        // One wait for the whole stream, polled beside each read (a wait made per request
        // registered with the server's shutdown signal once per record).
        let mut shutdown = std::pin::pin!(state.draining());
        loop {
            let next = async { Some(requests.message_leased().await) };
            let stop = async {
                let _ = shutdown.as_mut().await;
                None
            };
            let Some(next) = futures_lite::future::or(next, stop).await else {
                drained.set(true);
                break;
            };
            let item = match next {
                Ok(Some((bytes, lease))) => {
                    net::decode::<ProduceRequest>(bytes).map(|r| (r, lease))
                }
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let last = item.is_err();
            // Fails only when the writer is gone, and then the call is over anyway.
            if tx.send(item).await.is_err() || last {
                break;
            }
        }
        // Dropping the sender tells the writer that no more requests come.
        drop(tx);
        futures_lite::future::pending::<Result<(), Status>>().await
    };
    futures_lite::future::or(write_loop(&state, tls.as_deref(), rx, &sink), reader).await?;
    if drained.get() {
        // Every request read was answered; the client sends the others to another node
        // instead of this stream holding the server's stop until its drain timeout.
        return Err(super::error::shutting_down_stream());
    }
    Ok(())
}

/// How much one batch may take, from the topic's settings.
struct BatchLimits {
    records: usize,
    bytes: usize,
    record_bytes: usize,
}

fn limits(state: &ShardState, topic: &str) -> Result<BatchLimits, Status> {
    let info = state.topics.topic(topic).map_err(to_status)?;
    Ok(BatchLimits {
        records: info
            .config
            .max_batch_records
            .min(PRODUCE_STREAM_MAX_IN_FLIGHT),
        bytes: info.config.max_batch_bytes,
        record_bytes: info.config.max_record_bytes,
    })
}

async fn write_loop(
    state: &ShardState,
    tls: Option<&TlsInfo>,
    rx: LocalReceiver<Item>,
    sink: &ResponseSink,
) -> Result<(), Status> {
    let mut carry: Option<Item> = None;
    loop {
        let (first, mut held) = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return Ok(()),
            },
        }?;
        // Checked per batch, not per stream: a policy reload applies to open streams, and
        // every request in a batch has the same topic as its first.
        state.authorize_tls(tls, Action::Produce, Some(&first.topic))?;
        let id = records::partition_id(&first.topic, first.partition);
        let lim = limits(state, &id.topic)?;
        let record = records::required(first.record)?;
        let oversized = record.value.len() > lim.record_bytes;
        let mut batch = BatchBuilder::new();
        records::push(&mut batch, &record)?;
        // An oversized record goes alone, so that the owner's refusal fails only it and
        // every request before it is answered.
        while !oversized && (batch.record_count() as usize) < lim.records {
            let Some(Some(item)) = futures_lite::future::poll_once(rx.recv()).await else {
                break;
            };
            // Requests for another partition, without a record, or that would overflow the
            // batch start the next batch instead.
            if let Ok((
                ProduceRequest {
                    record: Some(rec),
                    topic,
                    partition,
                },
                _,
            )) = &item
            {
                let size = encoded_record_len(rec.value.len());
                if topic_or_default(topic) == &*id.topic
                    && *partition == id.partition
                    && rec.value.len() <= lim.record_bytes
                    && batch.payload_len() + size <= lim.bytes
                {
                    records::push(&mut batch, rec)?;
                    // The request is in the batch; its bytes' memory now stands for the
                    // batch's copy of them.
                    if let Ok((_, lease)) = item {
                        held.merge(lease);
                    }
                    continue;
                }
            }
            carry = Some(item);
            break;
        }
        let batch = batch.finish().map_err(to_status)?;
        let appended = append::append(&*state.partitions, &id, batch).await?;
        // Appended (copied into the log's own buffer, which the engine charges itself): the
        // requests' memory, which stood for the encoded batch, is no longer ours.
        drop(held);
        send_offsets(sink, appended.base_offset..=appended.last_offset).await?;
    }
}

/// Answers a batch's requests, one response per offset in order, framed into one buffer and
/// queued as one unit: one queue hop and one HTTP/2 DATA frame for the batch instead of one
/// per record (gRPC frames messages within the stream's bytes, so a client reads them one by
/// one either way).
async fn send_offsets(
    sink: &ResponseSink,
    offsets: std::ops::RangeInclusive<u64>,
) -> Result<(), Status> {
    // A response is a tag and a varint (at most 11 bytes) after its 5-byte frame header; a
    // batch holds at most PRODUCE_STREAM_MAX_IN_FLIGHT records.
    let records = offsets.end().saturating_sub(*offsets.start()) as usize + 1;
    let mut frames = FrameBuilder::with_capacity(16 * records, sink.max_send_bytes());
    for offset in offsets {
        frames.push(&ProduceResponse { offset })?;
    }
    sink.send_framed(frames.take(), Lease::none()).await
}
