//! `ProduceStream`: pipelined appends, one response per request, in request order.
//!
//! Two halves run side by side in the call's task. The reader pulls requests into a bounded
//! queue (when it is full the reader stops, and HTTP/2 flow control stops the client). The
//! writer takes whatever has queued up for the same partition and appends it as ONE engine
//! batch, then answers each request with its offset. While one batch waits for its fsync the
//! next one accumulates, so a client with many requests in flight gets group commit per
//! stream, and offsets follow request order because a stream has one append outstanding at a
//! time. The call ends OK after the client half-closes and every request is answered.

use std::sync::Arc;

use glommio::channels::local_channel::{self, LocalReceiver};
use net::server::{MessageStream, Request, ResponseSink};
use net::tls::TlsInfo;
use net::Status;
use proto::log::v1::{topic_or_default, ProduceRequest, ProduceResponse};

use super::acl::Action;
use super::append;
use super::error::to_status;
use super::records;
use super::state::AppState;
use crate::limits::PRODUCE_STREAM_MAX_IN_FLIGHT;

type Item = Result<ProduceRequest, Status>;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<MessageStream>,
    sink: ResponseSink,
) -> Result<(), Status> {
    let tls = req.tls.clone();
    let mut requests = req.message;
    let (tx, rx) = local_channel::new_bounded::<Item>(PRODUCE_STREAM_MAX_IN_FLIGHT);
    let reader = async move {
        loop {
            let item = match requests.message_as::<ProduceRequest>().await {
                Ok(Some(r)) => Ok(r),
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
    futures_lite::future::or(write_loop(&state, tls.as_deref(), rx, &sink), reader).await
}

/// How much one engine batch may take, from the topic's settings.
struct BatchLimits {
    records: usize,
    bytes: usize,
    record_bytes: usize,
}

fn limits(state: &AppState, topic: &str) -> Result<BatchLimits, Status> {
    let info = state.engine.topic(topic).map_err(to_status)?;
    Ok(BatchLimits {
        records: info
            .config
            .max_batch_records
            .min(PRODUCE_STREAM_MAX_IN_FLIGHT),
        bytes: info.config.max_batch_bytes,
        record_bytes: info.config.max_record_bytes,
    })
}

/// The engine's on-disk size of one record in a batch, beyond the batch header.
fn encoded(r: &engine::NewRecord) -> usize {
    engine::batch::encoded_len(std::slice::from_ref(r)) - engine::batch::HEADER_LEN
}

async fn write_loop(
    state: &AppState,
    tls: Option<&TlsInfo>,
    rx: LocalReceiver<Item>,
    sink: &ResponseSink,
) -> Result<(), Status> {
    let mut carry: Option<Item> = None;
    loop {
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return Ok(()),
            },
        }?;
        // Checked per batch, not per stream: a policy reload applies to open streams, and
        // every request in a batch has the same topic as its first.
        state.authorize_tls(tls, Action::Produce, Some(&first.topic))?;
        let topic = topic_or_default(&first.topic).to_owned();
        let partition = first.partition;
        let lim = limits(state, &topic)?;
        let record = records::to_new(records::required(first.record)?);
        let mut bytes = encoded(&record);
        let oversized = record.value.len() > lim.record_bytes;
        let mut batch = vec![record];
        // An oversized record goes alone, so that the engine's refusal fails only it and
        // every request before it is answered.
        while !oversized && batch.len() < lim.records {
            let Some(Some(item)) = futures_lite::future::poll_once(rx.recv()).await else {
                break;
            };
            // Requests for another partition, without a record, or that would overflow the
            // batch start the next batch instead.
            let next = match item {
                Ok(ProduceRequest {
                    record: Some(rec),
                    topic: t,
                    partition: p,
                }) if topic_or_default(&t) == topic && p == partition => {
                    let rec = records::to_new(rec);
                    let size = encoded(&rec);
                    if rec.value.len() <= lim.record_bytes && bytes + size <= lim.bytes {
                        bytes += size;
                        batch.push(rec);
                        continue;
                    }
                    Ok(ProduceRequest {
                        record: Some(records::from_new(rec)),
                        topic: t,
                        partition: p,
                    })
                }
                other => other,
            };
            carry = Some(next);
            break;
        }
        let appended = append::append(&state.engine, &topic, partition, batch)
            .await
            .map_err(to_status)?;
        for offset in appended.base_offset..=appended.last_offset {
            sink.send_message(&ProduceResponse { offset }).await?;
        }
    }
}
