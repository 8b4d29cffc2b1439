//! Observability against the real binary: /metrics after a known workload, /healthz and
//! /readyz through start-up and drain, and trace ids from `traceparent` in the log.

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::HeaderValue;
use net::client::{CallOptions, Channel, ClientConfig};
use net::Code;
use proto::health::v1::health_check_response::ServingStatus;
use proto::health::v1::{paths as hpaths, HealthCheckRequest, HealthCheckResponse};
use proto::log::v1::*;

/// Samples of an exposition by `name{labels}` as written, after checking the structure
/// the format asks for: every sample belongs to the family of the last TYPE line, no family
/// appears twice, histogram buckets ascend and end with +Inf equal to `_count`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut families = std::collections::HashSet::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(families.insert(name.to_owned()), "family {name} twice");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            current = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().expect("numeric value");
        let name = series.split('{').next().unwrap_or(series);
        let (family, kind) = current.as_ref().expect("sample after a TYPE line");
        let ok = match kind.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_owned()),
            _ => name == family,
        };
        assert!(ok, "sample {name} outside its family {family}");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "series {series} twice"
        );
    }
    samples
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn sum_of(samples: &HashMap<String, f64>, name_prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(name_prefix))
        .map(|(_, v)| v)
        .sum()
}

fn rpc(method: &str, code: &str) -> String {
    format!("proglog_rpc_requests_total{{method=\"/log.v1.Log/{method}\",code=\"{code}\"}}")
}

#[test]
fn metrics_count_a_known_workload() {
    let s = TestServer::start();
    let ch = s.channel();
    create_topic(&ch, "obs", 2).unwrap();
    for i in 0..10 {
        produce(&ch, "obs", 0, &format!("a{i}")).unwrap();
    }
    for i in 0..5 {
        produce(&ch, "obs", 1, &format!("b{i}")).unwrap();
    }
    let r: ProduceBatchResponse = ch
        .unary_prost(
            paths::PRODUCE_BATCH,
            &ProduceBatchRequest {
                records: vec![
                    record("x").unwrap(),
                    record("y").unwrap(),
                    record("z").unwrap(),
                ],
                topic: "obs".into(),
                partition: 0,
            },
            opts(),
        )
        .unwrap();
    assert_eq!((r.base_offset, r.last_offset), (10, 12));
    for off in 0..4 {
        consume(&ch, "obs", 0, off).unwrap();
    }
    let e = consume(&ch, "obs", 1, 99).unwrap_err();
    assert_eq!(e.code, Code::OutOfRange);

    let (code, text) = http_get(s.admin_addr(), "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    let m = parse_exposition(&text);
    assert_eq!(get(&m, &rpc("Produce", "OK")), 15.0);
    assert_eq!(get(&m, &rpc("ProduceBatch", "OK")), 1.0);
    assert_eq!(get(&m, &rpc("Consume", "OK")), 4.0);
    assert_eq!(get(&m, &rpc("Consume", "OUT_OF_RANGE")), 1.0);
    assert_eq!(
        get(
            &m,
            "proglog_rpc_requests_total{method=\"/log.v1.Admin/CreateTopic\",code=\"OK\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "proglog_rpc_duration_seconds_count{method=\"/log.v1.Log/Produce\"}"
        ),
        15.0
    );
    // Each Produce request carries at least its 1-byte-plus record in a 5-byte frame.
    assert!(
        get(
            &m,
            "proglog_rpc_received_bytes_total{method=\"/log.v1.Log/Produce\"}"
        ) > 15.0 * 7.0
    );
    assert!(
        get(
            &m,
            "proglog_rpc_sent_bytes_total{method=\"/log.v1.Log/Consume\"}"
        ) > 0.0
    );
    // A single node sends and receives no Raft snapshot; the counters are there.
    for name in ["sent", "received", "installed", "bytes_sent", "malformed"] {
        assert_eq!(get(&m, &format!("proglog_raft_snapshot_{name}_total")), 0.0);
    }

    let p =
        |name: &str, part: u32| get(&m, &format!("{name}{{topic=\"obs\",partition=\"{part}\"}}"));
    assert_eq!(p("proglog_partition_lowest_offset", 0), 0.0);
    assert_eq!(p("proglog_partition_highest_offset", 0), 12.0);
    assert_eq!(p("proglog_partition_next_offset", 0), 13.0);
    assert_eq!(p("proglog_partition_highest_offset", 1), 4.0);
    assert_eq!(p("proglog_partition_appends_total", 0), 11.0);
    assert_eq!(p("proglog_partition_records_appended_total", 0), 13.0);
    assert_eq!(p("proglog_partition_appends_total", 1), 5.0);
    assert_eq!(p("proglog_partition_segments", 0), 1.0);
    assert!(p("proglog_partition_size_bytes", 0) > 13.0);
    // Values "a0".."a9" and "x", "y", "z".
    assert_eq!(p("proglog_partition_payload_bytes_total", 0), 23.0);
    assert!(p("proglog_partition_written_bytes_total", 0) >= 4096.0);
    // The zero-filled window ahead of the data is counted apart from the data.
    assert!(p("proglog_partition_zeroed_bytes_total", 0) > 0.0);
    // The four Consumes of records just written were served from memory: no disk I/O.
    assert_eq!(p("proglog_partition_dma_reads_total", 0), 0.0);
    assert!(p("proglog_partition_memory_reads_total", 0) >= 4.0);
    // The `default` topic exists and is empty: no highest offset.
    assert!(!m.contains_key("proglog_partition_highest_offset{topic=\"default\",partition=\"0\"}"));

    // Durability `always`: every append was made durable by exactly one fdatasync.
    let appends = sum_of(&m, "proglog_partition_appends_total");
    assert_eq!(appends, 16.0);
    assert_eq!(get(&m, "proglog_group_commit_appends_sum"), appends);
    let syncs = sum_of(&m, "proglog_partition_fdatasyncs_total");
    assert!(syncs >= 1.0);
    assert_eq!(get(&m, "proglog_fdatasync_duration_seconds_count"), syncs);
    assert_eq!(
        get(&m, "proglog_fdatasync_duration_seconds_bucket{le=\"+Inf\"}"),
        syncs
    );

    // Every append was one data proposal, committed, timed from proposal to answer.
    let proposals = |kind: &str, outcome: &str| {
        format!("proglog_raft_proposals_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(get(&m, &proposals("data", "committed")), 16.0);
    assert_eq!(get(&m, &proposals("data", "failed")), 0.0);
    assert_eq!(get(&m, &proposals("data", "refused")), 0.0);
    // The topic's creation went through the controller's group.
    assert!(get(&m, &proposals("controller", "committed")) >= 1.0);
    assert_eq!(get(&m, "proglog_raft_commit_latency_seconds_count"), 16.0);
    let latency = get(&m, "proglog_raft_commit_latency_seconds_sum");
    assert!(latency > 0.0 && latency < 16.0 * 10.0, "{latency}");
    // One Raft entry written and applied per append at least (plus the controller's and
    // each leader's first entry), in rounds that each synced what they wrote.
    assert!(get(&m, "proglog_raft_entries_written_total") >= 16.0);
    assert!(get(&m, "proglog_raft_entries_applied_total") >= 16.0);
    assert!(get(&m, "proglog_raft_ready_rounds_total") >= get(&m, "proglog_raft_syncs_total"));
    assert!(get(&m, "proglog_raft_syncs_total") >= 1.0);
    // A single node sends no Raft message, and no snapshot.
    assert_eq!(get(&m, "proglog_raft_frames_sent_total"), 0.0);
    assert_eq!(get(&m, "proglog_raft_snapshot_reports_stale_total"), 0.0);
    assert!(get(&m, "proglog_raft_term_max") >= 1.0);

    assert!(sum_of(&m, "proglog_connections_open") >= 1.0);
    assert!(sum_of(&m, "proglog_rpc_streams_open") >= 0.0);
    for shard in 0..2 {
        get(
            &m,
            &format!("proglog_shard_queue_depth{{shard=\"{shard}\"}}"),
        );
        assert_eq!(
            get(&m, &format!("proglog_shard_report_up{{shard=\"{shard}\"}}")),
            1.0
        );
        get(
            &m,
            &format!("proglog_open_sealed_segments{{shard=\"{shard}\"}}"),
        );
    }
    assert!(get(&m, "process_resident_memory_bytes") > 1e6);
    assert!(get(&m, "process_open_fds") > 0.0);
    assert_eq!(get(&m, "proglog_ready"), 1.0);
    assert_eq!(get(&m, "proglog_phase{phase=\"serving\"}"), 1.0);
    assert_eq!(
        get(&m, "proglog_raft_snapshot_rate_limit_bytes_per_second"),
        0.0,
        "no snapshot throttle by default"
    );

    // A second scrape sees the counters move by what happened in between, and only that.
    produce(&ch, "obs", 1, "c").unwrap();
    let (_, text) = http_get(s.admin_addr(), "/metrics").unwrap();
    let m2 = parse_exposition(&text);
    assert_eq!(get(&m2, &rpc("Produce", "OK")), 16.0);
    assert_eq!(get(&m2, &proposals("data", "committed")), 17.0);
    assert_eq!(get(&m2, "proglog_raft_commit_latency_seconds_count"), 17.0);
    assert_eq!(get(&m2, &rpc("Consume", "OK")), 4.0);
}

/// `--snapshot-rate-limit` reaches the snapshot sender (the throttle itself is tested where
/// snapshots stream: consensus/tests/raft_snapshot.rs).
#[test]
fn the_snapshot_rate_limit_flag_sets_the_throttle() {
    let s = TestServer::start_with(&["--snapshot-rate-limit", "3MiB"]);
    let (code, text) = http_get(s.admin_addr(), "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    let m = parse_exposition(&text);
    assert_eq!(
        get(&m, "proglog_raft_snapshot_rate_limit_bytes_per_second"),
        (3u64 << 20) as f64
    );
}

fn health(addr: SocketAddr) -> Option<i32> {
    let ch = net::blocking::BlockingChannel::connect(addr, ClientConfig::default()).ok()?;
    let r: HealthCheckResponse = ch
        .unary_prost(
            hpaths::CHECK,
            &HealthCheckRequest::default(),
            CallOptions::timeout(Duration::from_secs(2)),
        )
        .ok()?;
    Some(r.status)
}

#[test]
fn readyz_flips_during_start_up_and_drain() {
    let tmp = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log_path = tmp.path().join("server.log");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--listen", &addr.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--shards", "2", "--drain-timeout", "20s"])
        .env_remove("RUST_LOG")
        // Long enough to look at the admin port while the engine "recovers".
        .env("PROGLOG_TEST_HOLD_RECOVERY_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Alive at once, not ready while recovering, and gRPC is not serving either.
    let alive = wait_for(Duration::from_secs(10), || {
        http_get(admin, "/healthz").ok().filter(|(c, _)| *c == 200)
    });
    assert!(alive.is_some(), "no /healthz; log:\n{}", log());
    let recovering = wait_for(Duration::from_secs(10), || {
        let (code, body) = http_get(admin, "/readyz").ok()?;
        assert_eq!(code, 503, "{body}");
        (body == "recovering\n").then_some(())
    });
    assert!(recovering.is_some(), "{}", log());
    assert_ne!(health(addr), Some(ServingStatus::Serving as i32));
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    assert!(metrics.contains("proglog_ready 0\n"), "{metrics}");

    let ready = wait_for(Duration::from_secs(20), || {
        http_get(admin, "/readyz").ok().filter(|(c, _)| *c == 200)
    });
    assert_eq!(
        ready.map(|r| r.1),
        Some("serving\n".to_owned()),
        "{}",
        log()
    );
    assert_eq!(health(addr), Some(ServingStatus::Serving as i32));

    // A call whose request is still arriving holds the drain: the window in which to look.
    // (A Produce whose message announces 1,000 bytes and sends 10; an open ProduceStream no
    // longer holds it: it ends once what it read is answered.)
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        run_async(move || async move {
            use tokio_util::compat::FuturesAsyncReadCompatExt;
            let tcp = glommio::net::TcpStream::connect(addr).await.unwrap();
            let (send, conn) = h2::client::handshake(tcp.compat()).await.unwrap();
            let driver = glommio::spawn_local(async move {
                let _ = conn.await;
            });
            let mut send = send.ready().await.unwrap();
            let r = http::Request::post(format!("http://{addr}{}", paths::PRODUCE))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (resp, mut tx) = send.send_request(r, false).unwrap();
            let mut partial = vec![0u8];
            partial.extend_from_slice(&1000u32.to_be_bytes());
            partial.extend_from_slice(&[0u8; 10]);
            tx.send_data(bytes::Bytes::from(partial), false).unwrap();
            glommio::timer::sleep(Duration::from_millis(300)).await;
            opened_tx.send(()).unwrap();
            // Blocking this executor is fine: the call only has to stay in flight.
            close_rx.recv().unwrap();
            drop(tx);
            drop(resp);
            drop(send);
            drop(driver);
        })
    });
    opened_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let draining = wait_for(Duration::from_secs(10), || {
        http_get(admin, "/readyz").ok().filter(|(c, _)| *c == 503)
    });
    assert_eq!(
        draining.map(|r| r.1),
        Some("draining\n".to_owned()),
        "{}",
        log()
    );
    assert_eq!(
        http_get(admin, "/healthz").unwrap().0,
        200,
        "alive while draining"
    );
    close_tx.send(()).unwrap();
    client.join().unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    assert!(
        status.is_some_and(|s| s.success()),
        "{:?}\n{}",
        status,
        log()
    );
    assert!(
        http_get(admin, "/healthz").is_err(),
        "admin port closed after exit"
    );
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traced() -> CallOptions {
    let mut o = opts();
    o.metadata.insert(
        "traceparent",
        HeaderValue::from_str(&format!("00-{TRACE_ID}-00f067aa0ba902b7-01")).unwrap(),
    );
    o
}

#[test]
fn traceparent_reaches_the_call_log_lines() {
    // Every call is logged (rpc=debug) and counts as slow (1 µs), so it shows its breakdown.
    let s = TestServer::start_with(&[
        "--log-level",
        "info,proglog::rpc=debug",
        "--slow-call-threshold",
        "1us",
    ]);
    let ch = s.channel();
    let r: ProduceResponse = ch
        .unary_prost(
            paths::PRODUCE,
            &ProduceRequest {
                record: record("traced"),
                ..Default::default()
            },
            traced(),
        )
        .unwrap();
    assert_eq!(r.offset, 0);
    // And one without: a fresh trace id of its own.
    produce(&ch, "", 0, "untraced").unwrap();
    let e: Result<ConsumeResponse, _> = ch.unary_prost(
        paths::CONSUME,
        &ConsumeRequest {
            offset: 7,
            ..Default::default()
        },
        traced(),
    );
    assert_eq!(e.unwrap_err().code, Code::OutOfRange);

    let log = wait_for(Duration::from_secs(5), || {
        let l = s.log();
        (l.matches(TRACE_ID).count() >= 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("trace id not logged:\n{}", s.log()));
    let produce_line = log
        .lines()
        .find(|l| l.contains(TRACE_ID) && l.contains("/log.v1.Log/Produce"))
        .unwrap_or_else(|| panic!("no Produce line with the trace id:\n{log}"));
    assert!(produce_line.contains("WARN"), "{produce_line}");
    assert!(produce_line.contains("slow call"), "{produce_line}");
    for part in [
        "queue=",
        "append=",
        "fsync=",
        "code=OK",
        "peer=127.0.0.1:",
        "bytes_in=",
    ] {
        assert!(
            produce_line.contains(part),
            "{part} missing: {produce_line}"
        );
    }
    assert!(log
        .lines()
        .any(|l| l.contains(TRACE_ID) && l.contains("OUT_OF_RANGE")));
    let fresh: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/log.v1.Log/Produce") && !l.contains(TRACE_ID))
        .collect();
    assert_eq!(fresh.len(), 1, "{log}");
    assert!(fresh[0].contains("trace_id="), "{}", fresh[0]);
}

#[test]
fn json_log_lines_carry_the_trace_id() {
    let s = TestServer::start_with(&[
        "--log-format",
        "json",
        "--log-level",
        "info,proglog::rpc=debug",
    ]);
    let ch = s.channel();
    let _: ProduceResponse = ch
        .unary_prost(
            paths::PRODUCE,
            &ProduceRequest {
                record: record("j"),
                ..Default::default()
            },
            traced(),
        )
        .unwrap();
    let log = wait_for(Duration::from_secs(5), || {
        let l = s.log();
        l.contains(TRACE_ID).then_some(l)
    })
    .unwrap_or_else(|| panic!("trace id not logged:\n{}", s.log()));
    // Every line is one JSON object.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let call = lines
        .iter()
        .find(|v| v["trace_id"] == TRACE_ID)
        .expect("the call's line");
    assert_eq!(call["method"], "/log.v1.Log/Produce");
    assert_eq!(call["code"], "OK");
    assert_eq!(call["level"], "DEBUG");
    assert!(call["bytes_in"].as_u64().is_some_and(|b| b > 5));
    assert!(call["duration_us"].is_u64());
    // Start-up states the effective settings.
    assert!(lines.iter().any(|v| v["msg"]
        .as_str()
        .is_some_and(|m| m.contains("starting:") && m.contains("admin-addr="))));
}

/// Calls a client gives up on (its deadline passes, so it resets the stream) while the server
/// is busy end as CANCELLED or DEADLINE_EXCEEDED in /metrics and the call log: never as
/// UNAVAILABLE, which would tell an operator the server failed. Deadlines of a few
/// milliseconds against durable appends on a loaded server make the client's RST_STREAM race
/// the server's answer, the case where the answer used to fail as "unexpected frame type".
#[test]
fn cancelled_calls_are_counted_as_cancelled() {
    const CONNS: usize = 4;
    const CALLERS: usize = 32;
    const CALLS: usize = 25;
    let s = TestServer::start();
    let addr = s.addr;
    let mut made = 0u64;
    let mut gave_up = 0u64;
    let mut rounds = 0;
    // Until the client has given up on some calls: a machine fast enough to answer every
    // call within its deadline proves nothing. Bounded, so the test ends either way.
    for round in 0..10 {
        let (n, late) = run_async(move || async move {
            let mut tasks = Vec::new();
            for c in 0..CONNS {
                let ch = Channel::connect(addr, ClientConfig::default())
                    .await
                    .unwrap();
                for k in 0..CALLERS {
                    let ch = ch.clone();
                    tasks.push(glommio::spawn_local(async move {
                        let mut late = 0u64;
                        for i in 0..CALLS {
                            // 1 to 16 ms: some answers come in time, some do not.
                            let ms = 1 + ((c * 5 + k * 3 + i * 7 + round) % 16) as u64;
                            let r: Result<ProduceResponse, _> = ch
                                .unary_prost(
                                    paths::PRODUCE,
                                    &ProduceRequest {
                                        record: record(vec![b'x'; 100]),
                                        ..Default::default()
                                    },
                                    CallOptions::timeout(Duration::from_millis(ms)),
                                )
                                .await;
                            match r {
                                Ok(_) => {}
                                Err(e) if e.code == Code::DeadlineExceeded => late += 1,
                                Err(e) => panic!("unexpected status {e:?}"),
                            }
                        }
                        late
                    }));
                }
                // A tailing ConsumeStream the client abandons at its deadline.
                let ch = ch.clone();
                tasks.push(glommio::spawn_local(async move {
                    let req = ConsumeRequest::default();
                    let mut rx = ch
                        .server_streaming(
                            paths::CONSUME_STREAM,
                            net::encode(&req),
                            CallOptions::timeout(Duration::from_millis(20)),
                        )
                        .await
                        .unwrap();
                    loop {
                        match rx.message().await {
                            Ok(Some(_)) => {}
                            Err(e) if e.code == Code::DeadlineExceeded => return 0,
                            other => panic!("tail ended with {other:?}"),
                        }
                    }
                }));
            }
            let mut late = 0;
            for t in tasks {
                late += t.await;
            }
            ((CONNS * CALLERS * CALLS) as u64, late)
        });
        made += n;
        gave_up += late;
        rounds += 1;
        if gave_up >= 50 {
            break;
        }
    }
    assert!(gave_up > 0, "no call missed its deadline in {made} calls");

    // The client's connections are closed; once the server has closed them too and no call
    // is open, every call it saw has its one count. (A call whose deadline passed before its
    // HEADERS left the client never reached the server.)
    let admin = s.admin_addr();
    let mut seen = String::new();
    let m = wait_for(Duration::from_secs(30), || {
        let (_, text) = http_get(admin, "/metrics").ok()?;
        let m = parse_exposition(&text);
        seen = text;
        let idle = sum_of(&m, "proglog_rpc_streams_open") == 0.0
            && sum_of(&m, "proglog_connections_open") == 0.0;
        idle.then_some(m)
    })
    .unwrap_or_else(|| {
        let rpc_lines: Vec<&str> = seen
            .lines()
            .filter(|l| l.contains("_open") || l.contains("requests_total"))
            .collect();
        panic!(
            "calls or connections still open; metrics:\n{}\nlog:\n{}",
            rpc_lines.join("\n"),
            s.log()
        )
    });
    let counted = sum_of(
        &m,
        "proglog_rpc_requests_total{method=\"/log.v1.Log/Produce\"",
    );
    let count = |code: &str| m.get(&rpc("Produce", code)).copied().unwrap_or(0.0);
    let (ok, cancelled, deadline) = (count("OK"), count("CANCELLED"), count("DEADLINE_EXCEEDED"));
    eprintln!(
        "{made} calls, {gave_up} given up by the client; server: OK {ok}, CANCELLED {cancelled}, DEADLINE_EXCEEDED {deadline}, UNAVAILABLE {}",
        count("UNAVAILABLE")
    );
    assert_eq!(
        ok + cancelled + deadline,
        counted,
        "every call is OK, CANCELLED or DEADLINE_EXCEEDED; log:\n{}",
        s.log()
    );
    assert!(counted <= made as f64);
    // The client saw an answer for every call it did not give up on.
    assert!(ok >= (made - gave_up) as f64);
    let tail = |code: &str| {
        m.get(&format!(
            "proglog_rpc_requests_total{{method=\"/log.v1.Log/ConsumeStream\",code=\"{code}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(
        tail("CANCELLED") + tail("DEADLINE_EXCEEDED"),
        sum_of(
            &m,
            "proglog_rpc_requests_total{method=\"/log.v1.Log/ConsumeStream\""
        ),
    );
    assert!(tail("CANCELLED") + tail("DEADLINE_EXCEEDED") <= (rounds * CONNS) as f64);
    assert!(!s.log().contains("unexpected frame type"), "{}", s.log());
}

/// Clients that trickle their request head cannot keep probes and scrapers off the admin
/// port: one that sends a byte a second is answered 408 once 5 s from its accept have
/// passed (a per-read timeout kept it for ever), and 24 connections holding a partial head
/// (more than the 16 slots) leave `/healthz`, `/metrics` and `/readyz` answered (16 such
/// clients answered every probe 503).
#[test]
fn admin_clients_that_trickle_their_request_leave_probes_served() {
    use std::io::{Read, Write};
    let s = TestServer::start();
    let admin = s.admin_addr();
    let mut trickle = std::net::TcpStream::connect(admin).expect("connect");
    trickle.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the trickling client still holds its connection: {}",
            String::from_utf8_lossy(&got)
        );
        let _ = trickle.write_all(b"X");
        match trickle.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");

    let mut held = Vec::new();
    for _ in 0..24 {
        let mut c = std::net::TcpStream::connect(admin).expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        held.push(c);
    }
    for path in ["/healthz", "/metrics", "/readyz"] {
        let (code, body) = http_get(admin, path).expect("admin answers");
        assert_eq!(code, 200, "{path}: {body}");
    }
}

/// What a client sends cannot make each failure a new kind of line: calls to 300 paths the
/// server does not serve, for 300 topics that are not there, and 300 connections that open
/// the peer port's byte and say nothing more write a few lines each way (at most four per
/// method and code per shard, one per peer failure per shard), not 900 (they wrote 1.2 GB of
/// log in 10 s). The metrics still count every call.
#[test]
fn failures_that_vary_what_the_client_sent_are_logged_a_few_times() {
    let s = TestServer::start();
    let ch = s.channel();
    for i in 0..300 {
        let r: Result<ConsumeResponse, _> =
            ch.unary_prost(&format!("/x.Y/Nope{i}"), &ConsumeRequest::default(), opts());
        assert_eq!(r.expect_err("no such method").code, Code::Unimplemented);
        let r: Result<ConsumeResponse, _> = ch.unary_prost(
            paths::CONSUME,
            &ConsumeRequest {
                topic: format!("missing-{i}"),
                ..Default::default()
            },
            opts(),
        );
        assert_eq!(r.expect_err("no such topic").code, Code::NotFound);
        let mut peer = std::net::TcpStream::connect(s.addr).expect("connect");
        std::io::Write::write_all(&mut peer, &[0x01]).expect("the peer byte");
    }
    let samples = parse_exposition(&http_get(s.admin_addr(), "/metrics").expect("metrics").1);
    assert_eq!(get(&samples, &rpc("Consume", "NOT_FOUND")), 300.0);
    // Calls' lines are written as they end, before the metrics were read; the peer
    // connections' once the server has read their byte: wait for one, then some more.
    let count = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    wait_for(Duration::from_secs(10), || {
        (count(&s.log(), "first byte 0x01") > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("no peer connection logged:\n{}", s.log()));
    std::thread::sleep(Duration::from_millis(500));
    let log = s.log();
    let count = |what: &str| count(&log, what);
    let (unknown, missing, peer) = (
        count("/x.Y/Nope"),
        count("does not exist"),
        count("first byte 0x01"),
    );
    assert!(
        (1..=8).contains(&unknown),
        "{unknown} lines of unknown paths:\n{log}"
    );
    assert!(
        (1..=8).contains(&missing),
        "{missing} lines of missing topics:\n{log}"
    );
    assert!(peer <= 2, "{peer} lines of peer connections:\n{log}");
}

/// A failure repeated call after call is logged once per window and kind (method, code,
/// message), not once per call: a producer against a full disk wrote 98 MB of identical
/// lines in 13 s. Another failure still shows, and the metrics count every call.
#[test]
fn a_failure_repeated_call_after_call_is_logged_once() {
    let s = TestServer::start();
    let ch = s.channel();
    let ask = |topic: &str| {
        let r: Result<ConsumeResponse, _> = ch.unary_prost(
            paths::CONSUME,
            &ConsumeRequest {
                topic: topic.into(),
                ..Default::default()
            },
            opts(),
        );
        assert_eq!(r.expect_err("no such topic").code, Code::NotFound);
    };
    for _ in 0..200 {
        ask("nope");
    }
    ask("other");
    let lines = |l: &str, topic: &str| {
        l.lines()
            .filter(|x| x.contains("/log.v1.Log/Consume NOT_FOUND") && x.contains(topic))
            .count()
    };
    let log = wait_for(Duration::from_secs(5), || {
        let l = s.log();
        (lines(&l, "other") > 0).then_some(l)
    })
    .unwrap_or_else(|| panic!("the other failure not logged:\n{}", s.log()));
    assert_eq!(lines(&log, "nope"), 1, "{log}");
    let samples = parse_exposition(&http_get(s.admin_addr(), "/metrics").expect("metrics").1);
    assert_eq!(get(&samples, &rpc("Consume", "NOT_FOUND")), 201.0);
}
