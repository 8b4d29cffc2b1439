//! `proglog produce`: ProduceStream (pipelined) by default, ProduceBatch with --batch, to the
//! partition's leader as the cluster-aware client finds it from `--addr`. Both send again
//! what a cluster refused without taking (NOT_LEADER: at the leader it names; NO_LEADER:
//! after a pause) until `--timeout` has passed without progress; ProduceBatch calls are sent
//! by [`Cluster::produce_batch`], which does the same.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures_channel::mpsc;
use futures_lite::StreamExt;
use prost::Message;
use proto::log::v1::{paths, ProduceBatchRequest, ProduceRequest, ProduceResponse, Record};

use proglog_client::errors;
use proglog_client::{Cluster, ReadFrom, NO_LEADER_PAUSE};

use super::Conn;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Topic; empty means "default"
    #[arg(long, default_value = "")]
    pub topic: String,
    #[arg(long, default_value_t = 0)]
    pub partition: u32,
    /// Send ProduceBatch calls of up to N records each (atomic per call) instead of a stream
    #[arg(
        long,
        value_name = "N",
        num_args = 0..=1,
        default_missing_value = "1000",
        value_parser = parse_batch
    )]
    pub batch: Option<usize>,
    /// Record values; without any, each line of standard input is one record
    pub values: Vec<String>,
}

/// `--batch N`: a count of records. The word after a bare `--batch` is taken for N, so a
/// value that is not one is refused with what to write instead, never sent or dropped.
fn parse_batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a batch holds at least 1 record".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "N is a number of records per call; to send {s:?} as a record, give N first \
             (--batch 1000 {s}) or put the values after -- (--batch -- {s})"
        )),
    }
}

/// Values queued ahead of the network.
const QUEUE: usize = 1024;

/// How long one ProduceBatch is sent again while the cluster says it did not take it, when
/// the call has no deadline (`--timeout 0`): about an election and a configuration change.
const RETRY_WITHOUT_DEADLINE: Duration = Duration::from_secs(10);

/// Feeds values from the arguments or from stdin through a bounded channel, read on a
/// separate thread so that a slow stdin never blocks the executor.
fn values(args: Vec<String>) -> anyhow::Result<mpsc::Receiver<std::io::Result<Bytes>>> {
    let (mut tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("proglog-stdin".into())
        .spawn(move || {
            let push = |tx: &mut mpsc::Sender<std::io::Result<Bytes>>, v| {
                let ready =
                    futures_lite::future::block_on(std::future::poll_fn(|cx| tx.poll_ready(cx)));
                ready.is_ok() && tx.start_send(v).is_ok()
            };
            if !args.is_empty() {
                for a in args {
                    if !push(&mut tx, Ok(Bytes::from(a))) {
                        return;
                    }
                }
                return;
            }
            let stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin) {
                eprintln!(
                    "proglog: reading records from standard input, one per line (Ctrl-D ends)"
                );
            }
            // Lines of bytes: a value need not be UTF-8 (as `lines()` would insist). A line
            // ends at "\n" or "\r\n", neither kept.
            for line in stdin.lock().split(b'\n') {
                let stop = line.is_err();
                let value = line.map(|mut l| {
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    Bytes::from(l)
                });
                if !push(&mut tx, value) || stop {
                    return;
                }
            }
        })
        .context("starting the input thread")?;
    Ok(rx)
}

pub async fn run(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    let cluster = a.conn.cluster(ReadFrom::Leader)?;
    let mut input = values(a.values.clone())?;
    match a.batch {
        Some(n) => batches(&a, &cluster, &mut input, n).await?,
        None => stream(&a, &cluster, &mut input).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_offset(json: bool, offset: u64) -> std::io::Result<()> {
    if json {
        crate::out::outln!("{}", serde_json::json!({ "offset": offset }))
    } else {
        crate::out::outln!("{offset}")
    }
}

/// Why one produce stream ended early.
enum StreamEnd {
    /// Reading the values, or writing the offsets, failed: nothing to retry.
    Input(anyhow::Error),
    /// The call could not be started: nothing of it was sent.
    NotStarted(net::Status),
    /// The server (or the connection) ended the call.
    Status(net::Status),
}

/// ProduceStream to the partition's leader, sent again from the first unacknowledged value
/// while the cluster says it did not take them (`NOT_LEADER`: at the leader it names;
/// `NO_LEADER`: after a pause; a stream stops at its first refused batch and appends nothing
/// after it, see the server's `produce_stream`) or the call could not be started, until
/// `--timeout` has passed without progress. A stream that fails any other way (a lost
/// connection, a timeout) with records in flight is not sent again: they may have been
/// appended. One lost with none in flight goes on on a new stream.
async fn stream(
    a: &ProduceArgs,
    cluster: &Cluster,
    input: &mut mpsc::Receiver<std::io::Result<Bytes>>,
) -> anyhow::Result<()> {
    // Sent and not acknowledged yet, in order. Bounded by what the server and HTTP/2 flow
    // control let the stream have in flight.
    let pending = RefCell::new(VecDeque::<Bytes>::new());
    let mut deadline: Option<Instant> = None;
    let mut redirected = false;
    loop {
        let until = *deadline.get_or_insert_with(|| Instant::now() + retry_budget(a));
        // Whatever is pending was refused or never sent (else the loop has ended).
        let (addr, ch) = match cluster.leader(&a.topic, a.partition, until).await {
            Ok(found) => found,
            Err(st) => return Err(in_doubt(st, pending.borrow().len(), false)),
        };
        let progress = Cell::new(false);
        let (st, sent) = match stream_once(a, &ch, input, &pending, &progress).await {
            Ok(()) => return Ok(()),
            Err(StreamEnd::Input(e)) => return Err(e),
            Err(StreamEnd::NotStarted(st)) => (st, false),
            Err(StreamEnd::Status(st)) => (st, true),
        };
        cluster.report(&a.topic, a.partition, &addr, &st);
        if progress.get() {
            deadline = None;
        }
        let until = *deadline.get_or_insert_with(|| Instant::now() + retry_budget(a));
        // A connection lost with every record sent on it acknowledged leaves nothing in
        // doubt: the input goes on on another stream (to the new leader, once one is known).
        let nothing_in_doubt = pending.borrow().is_empty() && st.code == net::Code::Unavailable;
        let retry = !sent || errors::produce_retryable(&st) || nothing_in_doubt;
        if !retry || Instant::now() + NO_LEADER_PAUSE >= until {
            return Err(in_doubt(st, pending.borrow().len(), sent));
        }
        redirected = super::pause(&st, &addr, redirected).await;
    }
}

/// A stream's final error, saying what became of the records sent and not acknowledged
/// (`unanswered`): the offsets printed are those acknowledged, and nothing read after the
/// unanswered ones was sent. They were not stored when the last call refused them
/// (`NOT_LEADER` and `NO_LEADER` included: the server ends a stream at its first request
/// not taken) or never started (`sent` false): every earlier call the unanswered ones went
/// out on ended so too, or they would not have been sent again.
fn in_doubt(st: net::Status, unanswered: usize, sent: bool) -> anyhow::Error {
    if unanswered == 0 {
        return st.into();
    }
    let fate = if errors::produce_refused(&st) {
        "were not stored (the refused record and those sent after it)"
    } else if errors::produce_retryable(&st) || !sent {
        "were not stored (no node took them; sending them again cannot duplicate them)"
    } else {
        "have an unknown outcome (they may be in the log; not sent again)"
    };
    anyhow::anyhow!(
        "{st}; the {unanswered} record(s) after the last offset printed {fate}, and no input \
         after them was sent"
    )
}

/// One ProduceStream call: what `pending` holds first, then the input.
async fn stream_once(
    a: &ProduceArgs,
    ch: &net::client::Channel,
    input: &mut mpsc::Receiver<std::io::Result<Bytes>>,
    pending: &RefCell<VecDeque<Bytes>>,
    progress: &Cell<bool>,
) -> Result<(), StreamEnd> {
    // No deadline on the call: stdin may stream for as long as the user likes. What was sent
    // must be answered within --timeout, though: since the oldest unanswered record went out,
    // or since the last answer (a paused or wedged server answers nothing, ever).
    let answer_within = a.conn.opts().timeout;
    let waiting_since: Cell<Option<Instant>> = Cell::new(None);
    let (mut tx, mut rx) = ch
        .streaming(paths::PRODUCE_STREAM, net::client::CallOptions::default())
        .await
        .map_err(StreamEnd::NotStarted)?;
    let request = |value: Bytes| ProduceRequest {
        record: Some(Record {
            value,
            ..Default::default()
        }),
        topic: a.topic.clone(),
        partition: a.partition,
    };
    // A record too large for one message is refused here, before it is sent: the call is
    // then half-closed, so that the server answers the records sent before it, and ends
    // with this error. (Sent on, the client's own refusal reached nobody, and the call
    // waited for an answer that never came.)
    let too_large = Cell::new(None);
    let send = async {
        let again: Vec<Bytes> = pending.borrow().iter().cloned().collect();
        let mut again = again.into_iter();
        loop {
            // What an earlier call left unanswered first, then the input.
            let (value, fresh) = match again.next() {
                Some(v) => (v, false),
                None => match input.next().await {
                    Some(v) => (
                        v.context("reading standard input")
                            .map_err(StreamEnd::Input)?,
                        true,
                    ),
                    None => break,
                },
            };
            let req = request(value.clone());
            if req.encoded_len() > tx.max_send_bytes() {
                too_large.set(Some(net::Status::resource_exhausted(format!(
                    "a record of {} bytes does not fit in one message (at most {} bytes): \
                     not sent, nor anything after it",
                    value.len(),
                    tx.max_send_bytes()
                ))));
                break;
            }
            if fresh {
                // Pending before it is sent: if the call fails, it is sent again.
                pending.borrow_mut().push_back(value);
            }
            if waiting_since.get().is_none() {
                waiting_since.set(Some(Instant::now()));
            }
            if let Err(e) = tx.send_message(&req).await {
                // The server ended the call; the response side reports why.
                log::debug!("send: {e}");
                return Ok(());
            }
        }
        tx.finish().map_err(StreamEnd::Status)?;
        Ok::<(), StreamEnd>(())
    };
    let recv = async {
        while let Some(resp) = rx
            .message_as::<ProduceResponse>()
            .await
            .map_err(StreamEnd::Status)?
        {
            let left = {
                let mut p = pending.borrow_mut();
                p.pop_front();
                p.len()
            };
            waiting_since.set((left > 0).then(Instant::now));
            progress.set(true);
            print_offset(a.conn.json, resp.offset).map_err(|e| StreamEnd::Input(e.into()))?;
        }
        Ok::<(), StreamEnd>(())
    };
    let unanswered = async {
        let Some(limit) = answer_within else {
            return std::future::pending::<Result<(), StreamEnd>>().await;
        };
        loop {
            let due = waiting_since.get().map(|t| t + limit);
            match due {
                Some(due) if Instant::now() >= due => {
                    return Err(StreamEnd::Status(net::Status::deadline_exceeded(format!(
                        "the server answered none of the records sent for {:.1} s (--timeout)",
                        limit.as_secs_f64()
                    ))));
                }
                Some(due) => {
                    glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await
                }
                None => glommio::timer::sleep(limit.min(Duration::from_millis(100))).await,
            }
        }
    };
    let recv = futures_lite::future::or(recv, unanswered);
    // The call is over when the server ends it; the sender may still wait for input then.
    futures_lite::future::or(recv, async {
        send.await?;
        std::future::pending::<Result<(), StreamEnd>>().await
    })
    .await?;
    match too_large.take() {
        Some(st) => Err(StreamEnd::Status(st)),
        None => Ok(()),
    }
}

fn retry_budget(a: &ProduceArgs) -> Duration {
    if a.conn.timeout > 0.0 && a.conn.timeout.is_finite() {
        Duration::from_secs_f64(a.conn.timeout)
    } else {
        RETRY_WITHOUT_DEADLINE
    }
}

async fn batches(
    a: &ProduceArgs,
    cluster: &Cluster,
    input: &mut mpsc::Receiver<std::io::Result<Bytes>>,
    n: usize,
) -> anyhow::Result<()> {
    // A record read that did not fit the batch before it: the next batch's first.
    let mut carried: Option<Record> = None;
    loop {
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut ended = false;
        while records.len() < n {
            let record = match carried.take() {
                Some(r) => r,
                None => match input.next().await {
                    Some(v) => Record {
                        value: v.context("reading standard input")?,
                        ..Default::default()
                    },
                    None => {
                        ended = true;
                        break;
                    }
                },
            };
            // Each call is one gRPC message, at most `MAX_MESSAGE_BYTES`: a batch of N
            // records that would not fit is cut before the record that would overflow it
            // (a record too large alone goes alone, and is refused saying so).
            let size = record.encoded_len() + RECORD_FRAMING_BYTES;
            if !records.is_empty() && bytes + size > BATCH_MESSAGE_BYTES {
                carried = Some(record);
                break;
            }
            bytes += size;
            records.push(record);
        }
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        let req = ProduceBatchRequest {
            topic: a.topic.clone(),
            partition: a.partition,
            records,
        };
        let resp = cluster
            .produce_batch(&req, a.conn.opts().timeout)
            .await
            .map_err(|st| batch_in_doubt(st, count))?;
        if a.conn.json {
            crate::out::outln!(
                "{}",
                serde_json::json!({"base_offset": resp.base_offset, "last_offset": resp.last_offset, "count": resp.count})
            )?;
        } else {
            for o in resp.base_offset..=resp.last_offset {
                crate::out::outln!("{o}")?;
            }
        }
        if ended {
            return Ok(());
        }
    }
}

/// What a batch may take of a gRPC message (`net::limits::MAX_MESSAGE_BYTES`, the client's
/// and the server's default), leaving room for the request's other fields.
const BATCH_MESSAGE_BYTES: usize = net::limits::MAX_MESSAGE_BYTES - 1024;

/// A record's field tag and length in a `ProduceBatchRequest`, over its own encoding.
const RECORD_FRAMING_BYTES: usize = 6;

/// A batch call's final error, saying what became of its `count` records (the offsets
/// printed are those of the batches before it) and that no input after them was sent.
fn batch_in_doubt(st: net::Status, count: usize) -> anyhow::Error {
    let fate = if errors::produce_refused(&st) {
        "were not stored (the batch was refused)"
    } else if errors::produce_retryable(&st) || errors::never_sent(&st) {
        "were not stored (no node took them; sending them again cannot duplicate them)"
    } else {
        "have an unknown outcome (they may be in the log; not sent again)"
    };
    anyhow::anyhow!(
        "{st}; the batch of {count} record(s) after the last offset printed {fate}, and no \
         input after it was sent"
    )
}
