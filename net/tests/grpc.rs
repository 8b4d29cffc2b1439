//! Black-box tests of the gRPC codec over real loopback sockets.

use crate::common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{run, TestServer, ERROR_MESSAGE};
use glommio::timer::sleep;
use net::client::{CallOptions, Channel, ClientConfig};
use net::server::ServerConfig;
use net::{Code, Status};
use prost::Message;

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

async fn connect(srv_addr: std::net::SocketAddr) -> Channel {
    Channel::connect(srv_addr, ClientConfig::default())
        .await
        .expect("connect")
}

#[test]
fn unary_ok_and_metadata() {
    let srv = TestServer::start();
    let addr = srv.addr;
    run(async move {
        let ch = connect(addr).await;
        let r = ch
            .unary("/test.Echo/Unary", b("hello"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r, b("hello"));
        // Empty messages are valid messages.
        let r = ch
            .unary("/test.Echo/Unary", Bytes::new(), CallOptions::default())
            .await
            .unwrap();
        assert!(r.is_empty());
    });
}

#[test]
fn error_status_message_and_details_roundtrip() {
    let srv = TestServer::start();
    let addr = srv.addr;
    run(async move {
        let ch = connect(addr).await;
        let e = ch
            .unary("/test.Echo/Unary", b("error"), CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(e.message, ERROR_MESSAGE);
        assert_eq!(&e.details[..], b"\x00\xffopaque-details");
    });
}

#[test]
fn google_rpc_status_details_decode() {
    // What the log server sends for OUT_OF_RANGE, through the real codec.
    let details = proto::google::rpc::Status {
        code: Code::OutOfRange.as_i32(),
        message: "offset out of range: 9".into(),
        details: vec![proto::google::rpc::any_localized_message(
            "en-US",
            "The requested offset is outside of the log: 9",
        )],
    };
    let st = Status::out_of_range("offset out of range: 9")
        .with_details(Bytes::from(details.encode_to_vec()));
    let mut h = http::HeaderMap::new();
    st.write_headers(&mut h);
    let back = Status::from_headers(&h).unwrap();
    let decoded = proto::google::rpc::Status::decode(back.details).unwrap();
    let lm = proto::google::rpc::find_localized_message(&decoded).unwrap();
    assert_eq!(lm.locale, "en-US");
    assert_eq!(lm.message, "The requested offset is outside of the log: 9");
}

#[test]
fn unknown_method_is_unimplemented() {
    let srv = TestServer::start();
    let addr = srv.addr;
    run(async move {
        let ch = connect(addr).await;
        let e = ch
            .unary("/test.Echo/Nope", b("x"), CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
        assert!(e.message.contains("/test.Echo/Nope"), "{e}");
        // The connection is still good.
        ch.unary("/test.Echo/Unary", b("x"), CallOptions::default())
            .await
            .unwrap();
    });
}

#[test]
fn oversized_messages_are_resource_exhausted_and_connection_survives() {
    let srv = TestServer::with_config(ServerConfig {
        max_recv_message_bytes: 64 * 1024,
        max_send_message_bytes: 256 * 1024,
        ..ServerConfig::default()
    });
    let addr = srv.addr;
    run(async move {
        let cfg = ClientConfig {
            max_send_message_bytes: 4 << 20,
            ..ClientConfig::default()
        };
        let ch = Channel::connect(addr, cfg).await.unwrap();
        // Request too big for the server: larger than any window, so the
        // client is still sending when the server answers.
        let big = Bytes::from(vec![1u8; 3 << 20]);
        let e = ch
            .unary("/test.Echo/Unary", big, CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted, "{e}");
        assert!(e.message.contains(&(3usize << 20).to_string()), "{e}");
        assert!(e.message.contains(&(64 * 1024).to_string()), "{e}");
        // Reply too big for the server to send.
        let e = ch
            .unary("/test.Echo/Unary", b("big-reply"), CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted, "{e}");
        // Still usable.
        let r = ch
            .unary("/test.Echo/Unary", b("after"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r, b("after"));

        // The client enforces its own limits both ways.
        let small = ClientConfig {
            max_recv_message_bytes: 10,
            max_send_message_bytes: 10,
            ..ClientConfig::default()
        };
        let ch = Channel::connect(addr, small).await.unwrap();
        let e = ch
            .unary(
                "/test.Echo/Unary",
                b("0123456789abc"),
                CallOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        let e = ch
            .unary("/test.Echo/Unary", b("0123456789"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(e.len(), 10);
    });
}

#[test]
fn deadline_exceeded_client_and_server_side() {
    let srv = TestServer::start();
    let addr = srv.addr;
    let probes = srv.probes.clone();
    run(async move {
        let ch = connect(addr).await;
        // Enforced by the client timer (and the server's).
        let t0 = Instant::now();
        let e = ch
            .unary(
                "/test.Echo/Sleep",
                b("5000"),
                CallOptions::timeout(Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::DeadlineExceeded);
        assert!(t0.elapsed() < Duration::from_secs(2));

        // Only the server knows the deadline: its status must come back.
        let mut opts = CallOptions::default();
        opts.metadata
            .insert("grpc-timeout", "150m".parse().unwrap());
        let t0 = Instant::now();
        let e = ch
            .unary("/test.Echo/Sleep", b("5000"), opts)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
        assert!(t0.elapsed() >= Duration::from_millis(140));
        assert!(t0.elapsed() < Duration::from_secs(2));
        // The handler future was dropped, not left running.
        sleep(Duration::from_millis(50)).await;
        assert!(probes.sleep_dropped.load(Ordering::SeqCst));
        assert_eq!(probes.sleep_finished.load(Ordering::SeqCst), 0);

        // A malformed timeout is rejected, not ignored: the client's mistake.
        let mut opts = CallOptions::default();
        opts.metadata.insert("grpc-timeout", "12x".parse().unwrap());
        let e = ch
            .unary("/test.Echo/Sleep", b("1"), opts)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
    });
}

#[test]
fn two_hundred_concurrent_streams_on_one_connection() {
    let srv = TestServer::start();
    let addr = srv.addr;
    run(async move {
        let ch = connect(addr).await;
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let ch = ch.clone();
            tasks.push(glommio::spawn_local(async move {
                // Each call sleeps so that all 200 are open at once.
                let r = ch
                    .unary("/test.Echo/Sleep", b("100"), CallOptions::default())
                    .await;
                let e = ch
                    .unary(
                        "/test.Echo/Unary",
                        Bytes::from(i.to_string()),
                        CallOptions::default(),
                    )
                    .await;
                (r, e, i)
            }));
        }
        let t0 = Instant::now();
        for t in tasks {
            let (r, e, i) = t.await;
            assert_eq!(r.unwrap(), b("slept"));
            assert_eq!(e.unwrap(), Bytes::from(i.to_string()));
        }
        // Concurrent, not serialized: 200 x 100 ms would be 20 s.
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    });
}

#[test]
fn server_stream_client_stream_and_bidi() {
    let srv = TestServer::start();
    let addr = srv.addr;
    run(async move {
        let ch = connect(addr).await;
        let mut s = ch
            .server_streaming("/test.Echo/Count", b("50"), CallOptions::default())
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            got.push(String::from_utf8(m.to_vec()).unwrap());
        }
        assert_eq!(got, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());

        // Error after messages comes in trailers.
        let mut s = ch
            .server_streaming("/test.Echo/Count", b("x"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(s.message().await.unwrap_err().code, Code::InvalidArgument);

        let (mut tx, rx) = ch
            .streaming("/test.Echo/Sum", CallOptions::default())
            .await
            .unwrap();
        for i in 1..=100u64 {
            tx.send(Bytes::from(i.to_string())).await.unwrap();
        }
        tx.finish().unwrap();
        assert_eq!(rx.single().await.unwrap(), b("5050"));

        // Bidi, pipelined: a writer task runs ahead of the reader.
        let (mut tx, mut rx) = ch
            .streaming("/test.Echo/Chat", CallOptions::default())
            .await
            .unwrap();
        let writer = glommio::spawn_local(async move {
            for i in 0..500u32 {
                tx.send(Bytes::from(i.to_string())).await.unwrap();
            }
            tx.finish().unwrap();
        });
        let mut n = 0u32;
        while let Some(m) = rx.message().await.unwrap() {
            assert_eq!(m, Bytes::from(n.to_string()));
            n += 1;
        }
        assert_eq!(n, 500);
        writer.await;

        // A bidi handler failing mid-stream.
        let (mut tx, mut rx) = ch
            .streaming("/test.Echo/Chat", CallOptions::default())
            .await
            .unwrap();
        tx.send(b("one")).await.unwrap();
        assert_eq!(rx.message().await.unwrap(), Some(b("one")));
        tx.send(b("fail")).await.unwrap();
        let e = rx.message().await.unwrap_err();
        assert_eq!(e.code, Code::Aborted);
        assert_eq!(e.message, "asked to fail");
    });
}

#[test]
fn garbage_and_truncated_preface_close_only_that_connection() {
    let srv = TestServer::with_config(ServerConfig {
        handshake_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    });
    let addr = srv.addr;
    let read_to_close = |mut s: std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let t0 = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("server did not close: {e}"),
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    };

    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage\xff\xfe")
        .unwrap();
    read_to_close(s);

    // The preface cut short, then the client closes its side.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(s);

    // A valid preface followed by a frame header that lies about its length.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    s.write_all(&[0xff, 0xff, 0xff, 0x00, 0x01, 0, 0, 0, 1, 1, 2])
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(s);

    run(async move {
        let ch = connect(addr).await;
        let r = ch
            .unary("/test.Echo/Unary", b("still here"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r, b("still here"));
    });
}

/// A raw h2 client, to send what the net client never would.
async fn raw_call(
    addr: std::net::SocketAddr,
    content_type: &str,
    body: &'static [u8],
) -> (http::StatusCode, http::HeaderMap, Option<http::HeaderMap>) {
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let tcp = glommio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp.compat()).await.unwrap();
    glommio::spawn_local(async move {
        let _ = conn.await;
    })
    .detach();
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}/test.Echo/Unary"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream.send_data(Bytes::from_static(body), true).unwrap();
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut trailers = None;
    if !body.is_end_stream() {
        while let Some(d) = body.data().await {
            let d = d.unwrap();
            let _ = body.flow_control().release_capacity(d.len());
        }
        trailers = body.trailers().await.unwrap();
    }
    (parts.status, parts.headers, trailers)
}

#[test]
fn lying_length_prefix_compressed_flag_and_content_type() {
    let srv = TestServer::start();
    let addr = srv.addr;
    run(async move {
        // Claims 100 bytes, sends 3, ends the stream.
        let (st, headers, trailers) =
            raw_call(addr, "application/grpc", &[0, 0, 0, 0, 100, 1, 2, 3]).await;
        assert_eq!(st, 200);
        assert!(trailers.is_none(), "expected trailers-only");
        let status = Status::from_headers(&headers).unwrap();
        assert_eq!(status.code, Code::InvalidArgument);
        assert!(status.message.contains("truncated"), "{status}");

        // Ends inside the 5-byte header.
        let (_, headers, _) = raw_call(addr, "application/grpc+proto", &[0, 0, 0]).await;
        let status = Status::from_headers(&headers).unwrap();
        assert!(status.message.contains("truncated"), "{status}");

        let (_, headers, _) = raw_call(addr, "application/grpc", &[1, 0, 0, 0, 1, 9]).await;
        let status = Status::from_headers(&headers).unwrap();
        assert_eq!(status.code, Code::InvalidArgument);
        assert!(status
            .message
            .contains("compressed messages are not supported"));

        // Not gRPC, gRPC with a codec we do not speak, and a prefix that only looks like it.
        for ct in [
            "application/json",
            "application/grpc+json",
            "application/grpcfoo",
        ] {
            let (st, _, _) = raw_call(addr, ct, &[0, 0, 0, 0, 0]).await;
            assert_eq!(st, http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        }

        // A well-formed call on the same server still works.
        let (st, headers, trailers) =
            raw_call(addr, "application/grpc", &[0, 0, 0, 0, 2, b'o', b'k']).await;
        assert_eq!(st, 200);
        assert_eq!(headers["x-echo"], "1");
        let status = Status::from_headers(&trailers.unwrap()).unwrap();
        assert_eq!(status.code, Code::Ok);
    });
}

#[test]
fn slow_reader_back_pressures_the_handler() {
    let srv = TestServer::with_config(ServerConfig {
        response_buffer_messages: 4,
        max_send_buffer_bytes: 64 * 1024,
        ..ServerConfig::default()
    });
    let addr = srv.addr;
    let probes = srv.probes.clone();
    run(async move {
        let cfg = ClientConfig {
            initial_stream_window_bytes: 64 * 1024,
            initial_connection_window_bytes: 1 << 20,
            ..ClientConfig::default()
        };
        let ch = Channel::connect(addr, cfg).await.unwrap();
        // 100,000 messages of 1 KiB: 100 MB if nothing pushed back.
        let mut s = ch
            .server_streaming("/test.Echo/Count", b("100000:1024"), CallOptions::default())
            .await
            .unwrap();
        assert!(s.message().await.unwrap().is_some());
        // Wait until the producer stops (robust to a loaded machine), then
        // check where it stopped.
        let mut last = usize::MAX;
        let mut stable = 0;
        for _ in 0..50 {
            sleep(Duration::from_millis(50)).await;
            let now = probes.emitted.load(Ordering::SeqCst);
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
            if stable == 3 {
                break;
            }
        }
        assert_eq!(stable, 3, "producer is not blocked: {last} emitted");
        // Window (64 KiB) + h2 send buffer (64 KiB) + 4 queued, in 1 KiB
        // messages: a few hundred at most.
        assert!(last < 400, "producer ran ahead: {last} messages emitted");

        // Reading resumes the stream.
        for _ in 0..1000 {
            assert!(s.message().await.unwrap().is_some());
        }
        assert!(probes.emitted.load(Ordering::SeqCst) > 1000);
        // Dropping the stream cancels the handler.
        drop(s);
        sleep(Duration::from_millis(100)).await;
        let c = probes.emitted.load(Ordering::SeqCst);
        sleep(Duration::from_millis(100)).await;
        assert_eq!(c, probes.emitted.load(Ordering::SeqCst));
        assert!(c < 100_000);
    });
}

#[test]
fn graceful_shutdown_drains_in_flight_calls() {
    let srv = TestServer::with_config(ServerConfig {
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    });
    let addr = srv.addr;
    let shutdown = srv.shutdown.clone();
    run(async move {
        let ch = connect(addr).await;
        let ch2 = ch.clone();
        let inflight = glommio::spawn_local(async move {
            ch2.unary("/test.Echo/Sleep", b("400"), CallOptions::default())
                .await
        });
        sleep(Duration::from_millis(100)).await;
        shutdown.trigger();
        sleep(Duration::from_millis(50)).await;
        // New calls are refused (GOAWAY or UNAVAILABLE), new connections too.
        let e = ch
            .unary("/test.Echo/Unary", b("late"), CallOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e.code, Code::Unavailable | Code::Internal | Code::Cancelled),
            "{e}"
        );
        let r = Channel::connect(addr, ClientConfig::default()).await;
        if let Ok(late) = r {
            assert!(late
                .unary("/test.Echo/Unary", b("late"), CallOptions::default())
                .await
                .is_err());
        }
        // The call that was running completes normally.
        assert_eq!(inflight.await.unwrap(), b("slept"));
    });
    srv.stop().unwrap();
}

#[test]
fn keepalive_closes_a_peer_that_never_acks_pings() {
    let srv = TestServer::with_config(ServerConfig {
        keepalive_interval: Some(Duration::from_millis(50)),
        keepalive_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    });
    let addr = srv.addr;
    // A peer that completes the preface and then goes silent.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    let mut saw_ping = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            // Frame type 6 is PING; crude, but the first bytes are tiny frames.
            Ok(n) => {
                saw_ping |= buf[..n]
                    .windows(4)
                    .any(|w| w[0] == 0 && w[1] == 8 && w[2] == 6)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server did not close the dead connection: {e}"),
        }
    }
    assert!(saw_ping, "no PING frame seen");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // A live client (h2 acks PINGs) keeps its connection across many intervals.
    run(async move {
        let ch = connect(addr).await;
        let r = ch
            .unary("/test.Echo/Sleep", b("400"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r, b("slept"));
    });
}

#[test]
fn connection_limit_per_shard() {
    let srv = TestServer::with_config(ServerConfig {
        max_connections_per_shard: 1,
        ..ServerConfig::default()
    });
    let addr = srv.addr;
    run(async move {
        let first = connect(addr).await;
        first
            .unary("/test.Echo/Unary", b("1"), CallOptions::default())
            .await
            .unwrap();
        // Busy, so it cannot be evicted to make room (see tests/connections.rs).
        let f = first.clone();
        let busy = glommio::spawn_local(async move {
            f.unary("/test.Echo/Sleep", b("1500"), CallOptions::default())
                .await
        });
        sleep(Duration::from_millis(200)).await;
        // Over the limit: closed on accept, so the handshake or call fails.
        let refused = match Channel::connect(addr, ClientConfig::default()).await {
            Err(_) => true,
            Ok(ch) => ch
                .unary("/test.Echo/Unary", b("2"), CallOptions::default())
                .await
                .is_err(),
        };
        assert!(refused);
        assert_eq!(busy.await.unwrap(), b("slept"));
        drop(first);
        // The slot frees once the first connection is gone.
        let mut ok = false;
        for _ in 0..50 {
            sleep(Duration::from_millis(20)).await;
            if let Ok(ch) = Channel::connect(addr, ClientConfig::default()).await {
                if ch
                    .unary("/test.Echo/Unary", b("3"), CallOptions::default())
                    .await
                    .is_ok()
                {
                    ok = true;
                    break;
                }
            }
        }
        assert!(ok, "connection slot never freed");
    });
}

#[test]
fn pool_of_executors_shares_one_port() {
    let port = common::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", port.port).parse().unwrap();
    let shutdown = net::Shutdown::new();
    let probes = std::sync::Arc::new(common::Probes::default());
    let p = probes.clone();
    let pool = net::server::spawn_pool(
        2,
        addr,
        ServerConfig::default(),
        move || common::router(p.clone()),
        shutdown.clone(),
    )
    .unwrap();
    // The blocking client, from this plain thread. Listeners bind as the
    // executors start: retry briefly.
    let mut client = None;
    for _ in 0..100 {
        match net::blocking::BlockingChannel::connect(addr, ClientConfig::default()) {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let client = client.expect("pool never listened");
    assert_eq!(
        client
            .unary("/test.Echo/Unary", b("blocking"), CallOptions::default())
            .unwrap(),
        b("blocking")
    );
    let all = client
        .server_streaming_collect("/test.Echo/Count", b("5"), CallOptions::default(), 10)
        .unwrap();
    assert_eq!(all.len(), 5);
    let e = client
        .server_streaming_collect("/test.Echo/Count", b("50"), CallOptions::default(), 10)
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    // Many connections: SO_REUSEPORT spreads them over both executors;
    // all must be served whichever executor they land on.
    let clients: Vec<_> = (0..8)
        .map(|_| net::blocking::BlockingChannel::connect(addr, ClientConfig::default()).unwrap())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let m = Bytes::from(i.to_string());
        assert_eq!(
            c.unary("/test.Echo/Unary", m.clone(), CallOptions::default())
                .unwrap(),
            m
        );
    }
    drop(clients);
    drop(client);
    shutdown.trigger();
    pool.join().unwrap();
}

/// Blocking channels opened and dropped in a loop, as a tool polling a server does: each
/// dropped channel's connection is closed by the time the drop returns, and all of them
/// share one client thread (a thread with an executor of its own per channel leaked that
/// executor's eventfds, and a long poll loop ran the process out of file descriptors).
#[test]
fn blocking_channels_opened_in_a_loop_share_one_thread_and_close_on_drop() {
    let s = TestServer::start();
    let client_threads = || {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(|t| t.ok())
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim_end() == "grpc-client")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let mut after_first = 0;
    for i in 0..300 {
        let c = net::blocking::BlockingChannel::connect(s.addr, ClientConfig::default())
            .expect("connect");
        let m = Bytes::from(i.to_string());
        assert_eq!(
            c.unary("/test.Echo/Unary", m.clone(), CallOptions::default())
                .unwrap(),
            m
        );
        drop(c);
        // The server hears the close a moment after the client made it.
        let since = Instant::now();
        while s.probes.connections_open.load(Ordering::SeqCst) != 0 {
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "channel {i}'s connection still open after its drop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        if i == 0 {
            after_first = client_threads();
        }
    }
    // The client thread, and the helper glommio starts beside its executor.
    assert!(after_first >= 1, "no client thread");
    assert_eq!(
        client_threads(),
        after_first,
        "client threads after 300 channels"
    );
}
