//! The memory budget against a client that opens many ConsumeStreams on one connection and
//! never reads the socket: the server stops feeding those streams once the connection's
//! share is queued, its memory stays under the budget, other clients keep being served, and
//! the memory comes back when the connection closes.
//!
//! Lean by default (200 streams over 16 MiB of records); `PROGLOG_TEST_FULL=1` runs the
//! figure of the report: 1,000 streams over 200 MB.

use crate::common;

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use prost::Message;
use proto::log::v1::*;

fn full() -> bool {
    std::env::var("PROGLOG_TEST_FULL").is_ok_and(|v| v == "1")
}

/// Resident set size of `pid`, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A metric's value from the admin port's /metrics.
fn metric(s: &TestServer, name: &str) -> f64 {
    let (_, body) = http_get(s.admin_addr(), "/metrics").expect("scrape");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Produces at least `total` bytes in records of `record` bytes, in batches of 1 MiB.
fn fill(s: &TestServer, total: usize, record: usize) -> u64 {
    let ch = s.channel();
    let per_batch = (1 << 20) / record;
    let mut records = 0u64;
    while (records as usize) * record < total {
        let batch: Vec<Record> = (0..per_batch)
            .map(|i| Record {
                value: Bytes::from(vec![(i % 251) as u8; record]),
                ..Default::default()
            })
            .collect();
        let _: ProduceBatchResponse = ch
            .unary_prost(
                paths::PRODUCE_BATCH,
                &ProduceBatchRequest {
                    records: batch,
                    ..Default::default()
                },
                opts(),
            )
            .expect("produce batch");
        records += per_batch as u64;
    }
    records
}

/// Opens `n` ConsumeStreams from offset 0 on one HTTP/2 connection that grants the server
/// windows of 2 GiB (so only the server's own bounds hold it back), then stops reading the
/// socket altogether until `release` fires; then closes the connection.
fn never_reading_consumers(
    addr: std::net::SocketAddr,
    n: usize,
    opened: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) {
    run_async(move || async move {
        use tokio_util::compat::FuturesAsyncReadCompatExt;
        let tcp = glommio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(i32::MAX as u32)
            .initial_connection_window_size(i32::MAX as u32)
            .handshake::<_, Bytes>(tcp.compat())
            .await
            .unwrap();
        let stop = Rc::new(Cell::new(false));
        let stop2 = stop.clone();
        let woken: Rc<RefCell<Option<Waker>>> = Rc::default();
        let woken2 = woken.clone();
        // Drives the connection until told to stop, then hands it back unread.
        let driver = glommio::spawn_local(async move {
            let mut conn = conn;
            poll_fn(|cx| {
                if stop2.get() {
                    return Poll::Ready(());
                }
                *woken2.borrow_mut() = Some(cx.waker().clone());
                match std::pin::Pin::new(&mut conn).poll(cx) {
                    Poll::Ready(r) => panic!("connection ended early: {r:?}"),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            // Wrapped: handed back to be held, not awaited.
            Some(conn)
        });
        let req = ConsumeRequest::default().encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(req.len() as u32).to_be_bytes());
        body.extend_from_slice(&req);
        let body = Bytes::from(body);
        let mut streams = Vec::new();
        let mut send = send;
        for _ in 0..n {
            send = send.ready().await.unwrap();
            let r = http::Request::post(format!("http://{addr}{}", paths::CONSUME_STREAM))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (resp, mut tx) = send.send_request(r, false).unwrap();
            tx.send_data(body.clone(), true).unwrap();
            streams.push(resp);
        }
        // Let the requests go out, then stop reading.
        glommio::timer::sleep(Duration::from_millis(500)).await;
        stop.set(true);
        // Woken so that it sees `stop`: nothing else may wake it (the server may have sent
        // all it had, and the suite once waited 60 s here for the next frame).
        if let Some(w) = woken.borrow_mut().take() {
            w.wake();
        }
        let conn = driver.await;
        opened.send(()).unwrap();
        // Blocking this executor is the point: nothing reads the socket now.
        let _ = release.recv();
        drop(streams);
        drop(send);
        drop(conn);
    });
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn produce_value(ch: &net::blocking::BlockingChannel, v: String) -> u64 {
    let r: ProduceResponse = ch
        .unary_prost(
            paths::PRODUCE,
            &ProduceRequest {
                record: record(v),
                ..Default::default()
            },
            opts(),
        )
        .expect("produce");
    r.offset
}

#[test]
fn never_reading_streams_stay_within_the_budget() {
    let (streams, data, record) = if full() {
        (1000, 200 << 20, 8 << 10)
    } else {
        (200, 16 << 20, 8 << 10)
    };
    // The defaults: 256 MiB budget, 32 MiB per connection.
    let budget: u64 = 256 << 20;
    let s = TestServer::start_with(&["--durability", "never"]);
    let records = fill(&s, data, record);
    let pid = s.pid();
    let rss_before = rss_bytes(pid);

    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let addr = s.addr;
    let hostile =
        std::thread::spawn(move || never_reading_consumers(addr, streams, opened_tx, release_rx));
    opened_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("streams opened");

    // Meanwhile, a fresh client produces and consumes; the server's memory is sampled.
    let fresh = s.channel();
    let (mut produce, mut consume_t) = (Vec::new(), Vec::new());
    let mut rss_peak = rss_before;
    let mut used_peak = 0f64;
    let until = Instant::now() + Duration::from_secs(if full() { 10 } else { 3 });
    let mut i = 0u64;
    while Instant::now() < until {
        let t = Instant::now();
        let off = produce_value(&fresh, format!("fresh-{i}"));
        produce.push(t.elapsed());
        let t = Instant::now();
        let got = consume(&fresh, "", 0, off).expect("consume");
        consume_t.push(t.elapsed());
        assert_eq!(got.value, format!("fresh-{i}").into_bytes());
        i += 1;
        if i % 20 == 0 {
            rss_peak = rss_peak.max(rss_bytes(pid));
            used_peak = used_peak.max(metric(&s, "proglog_memory_used_bytes"));
        }
    }
    rss_peak = rss_peak.max(rss_bytes(pid));
    let used_stalled = metric(&s, "proglog_memory_used_bytes");
    println!(
        "{streams} never-reading ConsumeStreams on one connection over {} MiB ({records} records): \
         RSS {} MiB before, peak {} MiB; charged to the budget: peak {} MiB, {} MiB while stalled \
         (budget {} MiB, connection share 32 MiB); fresh client meanwhile ({i} rounds): \
         Produce p99 {:?}, Consume p99 {:?}",
        data >> 20,
        rss_before >> 20,
        rss_peak >> 20,
        used_peak as u64 >> 20,
        used_stalled as u64 >> 20,
        budget >> 20,
        p99(produce),
        p99(consume_t),
    );
    assert!(
        rss_peak < budget,
        "RSS {} MiB passed the budget of {} MiB",
        rss_peak >> 20,
        budget >> 20
    );
    assert!(
        (used_stalled as u64) < 48 << 20,
        "{} MiB charged for one stalled connection (share 32 MiB)",
        used_stalled as u64 >> 20
    );

    release_tx.send(()).unwrap();
    hostile.join().unwrap();
    // The connection is gone: its memory is returned (the engine's write-behind buffers
    // stay charged while their logs are open).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let used = metric(&s, "proglog_memory_used_bytes");
        if used < f64::from(16u32 << 20) {
            // The trimming thread runs once a second.
            std::thread::sleep(Duration::from_millis(2500));
            println!(
                "after the connection closed: {} MiB charged, RSS {} MiB",
                used as u64 >> 20,
                rss_bytes(pid) >> 20
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "{} MiB still charged",
            used as u64 >> 20
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        consume(&s.channel(), "", 0, 0)
            .expect("served after")
            .value
            .len(),
        record
    );
}

/// Many connections that stop reading, together holding their shares of the whole budget,
/// leave room for other consumers: a new ConsumeStream (from the start of the log, and
/// tailing its end) gets its records. Before, 16 stalled connections of 32 MiB filled the
/// default 256 MiB budget and every other stream waited until they went away; here 12 of
/// 8 MiB against a 64 MiB budget.
#[test]
fn connections_that_stop_reading_leave_room_for_other_consumers() {
    let s = TestServer::start_with(&[
        "--durability",
        "never",
        "--memory-budget",
        "64MiB",
        "--connection-memory",
        "8MiB",
        "--max-message-bytes",
        "2MiB",
    ]);
    let records = fill(&s, 48 << 20, 8 << 10);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let mut releases = Vec::new();
    let mut hostile = Vec::new();
    for _ in 0..12 {
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let (addr, opened) = (s.addr, opened_tx.clone());
        hostile.push(std::thread::spawn(move || {
            never_reading_consumers(addr, 4, opened, release_rx)
        }));
        releases.push(release_tx);
    }
    for _ in 0..12 {
        opened_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("streams opened");
    }
    // Their streams read ahead until each connection's share is queued.
    let until = Instant::now() + Duration::from_secs(20);
    while metric(&s, "proglog_memory_used_bytes") < f64::from(48u32 << 20) {
        assert!(
            Instant::now() < until,
            "the stalled streams never filled the budget"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let used = metric(&s, "proglog_memory_used_bytes");
    assert!(used <= f64::from(64u32 << 20) * 1.1, "{used} bytes charged");

    // A new consumer: from offset 0 (the whole chunk size each time), then at the end, where
    // a record produced now reaches it.
    let addr = s.addr;
    let consumer = std::thread::spawn(move || {
        run_async(move || async move {
            let ch = net::client::Channel::connect(addr, net::client::ClientConfig::default())
                .await
                .expect("connect");
            let mut stream = ch
                .server_streaming(
                    paths::CONSUME_STREAM,
                    net::encode(&ConsumeRequest::default()),
                    net::client::CallOptions::timeout(Duration::from_secs(30)),
                )
                .await
                .expect("open the stream");
            let mut n = 0u64;
            while n <= records {
                let r = stream
                    .message_as::<ConsumeResponse>()
                    .await
                    .expect("a record while the others stall")
                    .expect("the stream goes on");
                assert_eq!(r.record.map(|x| x.offset), Some(n));
                n += 1;
            }
            n
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let at_end = produce_value(&s.channel(), "the tail's".into());
    assert_eq!(at_end, records);
    assert_eq!(consumer.join().expect("the consumer"), records + 1);
    for r in releases {
        let _ = r.send(());
    }
    for h in hostile {
        h.join().expect("hostile client");
    }
}
