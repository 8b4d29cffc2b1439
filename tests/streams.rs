//! The streaming RPCs: pipelined ProduceStream, tailing ConsumeStream and
//! ConsumeBatchStream, and health Watch through a graceful stop.

use crate::common;

use std::time::Duration;

use common::*;
use net::client::{CallOptions, Channel, ClientConfig};
use net::Code;
use proto::log::v1::*;

const PIPELINED: usize = 1000;

#[test]
fn produce_stream_pipelines_and_answers_in_order() {
    let s = TestServer::start();
    let addr = s.addr;
    let offsets = produce_stream(addr, PIPELINED, "r");
    assert_eq!(offsets, (0..PIPELINED as u64).collect::<Vec<_>>());
    let ch = s.channel();
    for i in [0, 1, 499, 999] {
        assert_eq!(
            consume(&ch, "", 0, i).unwrap().value,
            format!("r{i}").into_bytes()
        );
    }
}

#[test]
fn produce_stream_mixes_partitions_and_reports_errors_in_order() {
    let s = TestServer::start();
    create_topic(&s.channel(), "two", 2).unwrap();
    let addr = s.addr;
    let (offsets, end) = run_async(move || async move {
        let ch = Channel::connect(addr, ClientConfig::default())
            .await
            .unwrap();
        let (mut tx, mut rx) = ch
            .streaming(
                paths::PRODUCE_STREAM,
                CallOptions::timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        for i in 0..10u32 {
            tx.send_message(&ProduceRequest {
                record: record(format!("{i}")),
                topic: "two".into(),
                partition: i % 2,
            })
            .await
            .unwrap();
        }
        // The 11th names a topic that does not exist: the call fails there.
        tx.send_message(&ProduceRequest {
            record: record("x"),
            topic: "missing".into(),
            partition: 0,
        })
        .await
        .unwrap();
        tx.finish().unwrap();
        let mut got = Vec::new();
        let end = loop {
            match rx.message_as::<ProduceResponse>().await {
                Ok(Some(r)) => got.push(r.offset),
                Ok(None) => break None,
                Err(st) => break Some(st.code),
            }
        };
        (got, end)
    });
    assert_eq!(offsets, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(end, Some(Code::NotFound));
}

#[test]
fn consume_stream_tails_new_records() {
    let s = TestServer::start();
    let ch = s.channel();
    produce(&ch, "", 0, "before").unwrap();
    let addr = s.addr;
    // The consumer starts first and waits at the end of the log.
    let consumer = std::thread::spawn(move || {
        run_async(move || async move {
            let ch = Channel::connect(addr, ClientConfig::default())
                .await
                .unwrap();
            let mut stream = ch
                .server_streaming(
                    paths::CONSUME_STREAM,
                    net::encode(&ConsumeRequest::default()),
                    CallOptions::timeout(Duration::from_secs(20)),
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < 6 {
                let r = stream
                    .message_as::<ConsumeResponse>()
                    .await
                    .unwrap()
                    .unwrap();
                let rec = r.record.unwrap();
                got.push((rec.offset, String::from_utf8(rec.value.to_vec()).unwrap()));
            }
            got
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    // Waiting at the end of the log costs nothing: no polling (the reference spins a core).
    let cpu = s.cpu_time();
    std::thread::sleep(Duration::from_millis(500));
    let idle = s.cpu_time() - cpu;
    assert!(
        idle < Duration::from_millis(100),
        "idle tailing used {idle:?} of CPU"
    );
    for i in 0..5 {
        produce(&ch, "", 0, &format!("later{i}")).unwrap();
    }
    let got = consumer.join().unwrap();
    let mut want = vec![(0, "before".to_string())];
    want.extend((0..5).map(|i| (i as u64 + 1, format!("later{i}"))));
    assert_eq!(got, want);
}

#[test]
fn consume_batch_stream_tails_from_the_middle() {
    let s = TestServer::start();
    let ch = s.channel();
    create_topic(&ch, "t", 4).unwrap();
    for i in 0..10 {
        produce(&ch, "t", 3, &i.to_string()).unwrap();
    }
    let addr = s.addr;
    let consumer = std::thread::spawn(move || {
        run_async(move || async move {
            let ch = Channel::connect(addr, ClientConfig::default())
                .await
                .unwrap();
            let req = ConsumeBatchRequest {
                topic: "t".into(),
                partition: 3,
                offset: 5,
                ..Default::default()
            };
            let mut stream = ch
                .server_streaming(
                    paths::CONSUME_BATCH_STREAM,
                    net::encode(&req),
                    CallOptions::timeout(Duration::from_secs(20)),
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < 8 {
                let b = stream
                    .message_as::<ConsumeBatchResponse>()
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(b.next_offset, b.records.last().unwrap().offset + 1);
                got.extend(b.records.into_iter().map(|r| r.offset));
            }
            got
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    for i in 10..13 {
        produce(&ch, "t", 3, &i.to_string()).unwrap();
    }
    assert_eq!(consumer.join().unwrap(), (5..13).collect::<Vec<u64>>());
}

#[test]
fn consume_stream_of_unknown_topic_is_not_found() {
    let s = TestServer::start();
    let ch = s.channel();
    let st = ch
        .server_streaming_collect(
            paths::CONSUME_STREAM,
            net::encode(&ConsumeRequest {
                topic: "nope".into(),
                ..Default::default()
            }),
            opts(),
            10,
        )
        .unwrap_err();
    assert_eq!(st.code, Code::NotFound);
}

#[test]
fn health_watch_sees_not_serving_on_graceful_stop() {
    use proto::health::v1::health_check_response::ServingStatus;
    use proto::health::v1::*;
    let mut s = TestServer::start();
    let addr = s.addr;
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        run_async(move || async move {
            let ch = Channel::connect(addr, ClientConfig::default())
                .await
                .unwrap();
            let mut stream = ch
                .server_streaming(
                    paths::WATCH,
                    net::encode(&HealthCheckRequest::default()),
                    CallOptions::timeout(Duration::from_secs(20)),
                )
                .await
                .unwrap();
            let mut seen = Vec::new();
            let end = loop {
                match stream.message_as::<HealthCheckResponse>().await {
                    Ok(Some(r)) => {
                        seen.push(r.status);
                        let _ = tx.send(());
                    }
                    Ok(None) => break Code::Ok,
                    Err(st) => break st.code,
                }
            };
            (seen, end)
        })
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("first Watch message");
    let status = s.sigterm();
    assert!(status.success(), "exit status {status:?}\n{}", s.log());
    let (seen, end) = watcher.join().unwrap();
    assert_eq!(
        seen,
        vec![
            ServingStatus::Serving as i32,
            ServingStatus::NotServing as i32
        ]
    );
    assert_eq!(end, Code::Unavailable);
}

/// A client streaming many tiny records (as `proglog produce` does with the lines of a file,
/// one DATA frame each) faster than the log takes them: the frames wait in the connection's
/// window, as flow control allows, and every record is acknowledged. h2's budget for small
/// DATA frames (half the connection window by default, about 17,000 frames of ten bytes)
/// closed such a connection with ENHANCE_YOUR_CALM ("detected excessive load generating
/// behavior") long before the window was used.
#[test]
fn produce_stream_of_many_tiny_records_is_not_taken_for_a_flood() {
    let s = TestServer::start();
    let n = 60_000;
    let got = produce_stream(s.addr, n, "");
    assert_eq!(got.len(), n, "every record acknowledged");
    assert!(
        got.iter().enumerate().all(|(i, &o)| o == i as u64),
        "offsets dense and in order"
    );
}
