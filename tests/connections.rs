//! Connections against the real binary, through its flags: a flood of connections that only
//! send the HTTP/2 preface does not lock a new client out, handshakes show in the connection
//! gauge, a flood of handshake timeouts writes a few log lines, not one per connection, a
//! client's connections are spread evenly over the shards, and a lone connection is served on
//! the shard of the default topic's partition.

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A per-shard metric's samples, by shard.
fn per_shard(s: &TestServer, name: &str) -> Vec<f64> {
    let (_, body) = http_get(s.admin_addr(), "/metrics").expect("scrape");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// The sum of a per-shard gauge's samples.
fn gauge_sum(s: &TestServer, name: &str) -> f64 {
    per_shard(s, name).iter().sum()
}

#[test]
fn idle_floods_neither_lock_clients_out_nor_flood_the_log() {
    // 2 shards x 8 connections, handshakes bounded at 500 ms.
    let s = TestServer::start_with(&[
        "--max-connections-per-shard",
        "8",
        "--handshake-timeout",
        "500ms",
    ]);
    // 40 connections that send nothing: counted while in their handshake.
    let quiet: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(s.addr).expect("connect"))
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    while gauge_sum(&s, "proglog_connections_open") < 1.0 {
        assert!(
            Instant::now() < until,
            "handshakes never showed in the gauge"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 40 more that complete the preface and then never call.
    let idle: Vec<_> = (0..40)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
            let _ = c.write_all(PREFACE);
            let _ = c.write_all(&EMPTY_SETTINGS);
            c
        })
        .collect();
    // Every flood connection accepted first (the count of accepted connections stops
    // growing): one accepted after the client's, before its first call is read, would find
    // the client's idle and could close it to make room.
    let until = Instant::now() + Duration::from_secs(20);
    let mut seen = gauge_sum(&s, "proglog_connections_total");
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = gauge_sum(&s, "proglog_connections_total");
        if now == seen && now >= 40.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the flood was never all accepted ({now})"
        );
        seen = now;
    }
    // A new client is served (an idle connection made room for it).
    let ch = s.channel();
    produce(&ch, "", 0, "through the flood").expect("served despite the flood");
    // Once the evicted ones have closed, at most the limit is open.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let open = gauge_sum(&s, "proglog_connections_open");
        if open <= 16.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{open} connections open over a limit of 2 x 8"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(quiet);
    drop(idle);
    // Let the handshake timeouts and evictions happen, then count their lines.
    std::thread::sleep(Duration::from_secs(1));
    let log = s.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("timed out") || l.contains("quiet the longest"))
        .count();
    assert!(
        lines <= 8,
        "{lines} log lines for 80 connections of the same kinds:\n{log}"
    );
    produce(&ch, "", 0, "still").expect("still served");
}

/// A literal header field without indexing, names and values shorter than 127 bytes.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// A HEADERS frame (END_HEADERS, not END_STREAM) opening a unary Produce on `stream`: a
/// call whose request message never comes.
fn stalled_call(stream: u32) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", "POST");
    literal(&mut block, ":scheme", "http");
    literal(&mut block, ":path", "/log.v1.Log/Produce");
    literal(&mut block, ":authority", "proglog");
    literal(&mut block, "content-type", "application/grpc");
    literal(&mut block, "te", "trailers");
    let len = block.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, 1, 0x4];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Calls that never send their request cannot lock clients out or grow without bound:
/// 40 connections (over a limit of 2 x 8) each opening 16 calls that send their headers and
/// nothing more leave a new client served (a connection whose calls all wait for their
/// client is evicted like an idle one; before, every new client was refused with a reset),
/// and at most 2 x 64 such calls stay open (those waiting the longest end to make room;
/// before, 1,024 per connection stayed, 12-42 KiB each).
#[test]
fn calls_that_never_send_their_request_neither_lock_clients_out_nor_pile_up() {
    let s = TestServer::start_with(&["--max-connections-per-shard", "8"]);
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
            let _ = c.write_all(PREFACE);
            let _ = c.write_all(&EMPTY_SETTINGS);
            for i in 0..16 {
                let _ = c.write_all(&stalled_call(1 + 2 * i));
            }
            c
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    while gauge_sum(&s, "proglog_rpc_streams_open") < 16.0 {
        assert!(Instant::now() < until, "the stalled calls never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ch = s.channel();
    produce(&ch, "", 0, "through the flood").expect("served despite the flood");
    let open = gauge_sum(&s, "proglog_rpc_streams_open");
    assert!(
        open <= 128.0 + 1.0,
        "{open} calls open over a bound of 2 x 64"
    );
    // More stalled calls on connections still open: the bound holds, the client is served.
    for mut c in flood.iter().take(4) {
        for i in 16..64 {
            let _ = c.write_all(&stalled_call(1 + 2 * i));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    produce(&ch, "", 0, "still").expect("still served");
    let open = gauge_sum(&s, "proglog_rpc_streams_open");
    assert!(
        open <= 128.0 + 1.0,
        "{open} calls open over a bound of 2 x 64"
    );
    drop(flood);
    let log = s.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("quiet the longest") || l.contains("waited the longest"))
        .count();
    assert!(lines <= 8, "{lines} lines for the flood:\n{log}");
}

/// Ten connections opened one after another, each making a call and staying open, are
/// served five by each of the two shards, whichever shard the kernel's SO_REUSEPORT hash gave
/// each (it gives five and five about one time in four); the moves show in a counter.
#[test]
fn a_clients_connections_are_spread_evenly_over_the_shards() {
    let s = TestServer::start();
    // Placement counts the connections open when each arrives: start from none (the start-up
    // readiness check's connection closes by itself).
    let none_open = wait_for(Duration::from_secs(10), || {
        (gauge_sum(&s, "proglog_connections_open") == 0.0).then_some(())
    });
    assert!(none_open.is_some(), "the readiness connection never closed");
    let channels: Vec<_> = (0..10)
        .map(|i| {
            let ch = s.channel();
            produce(&ch, "", 0, &format!("record {i}")).expect("produce");
            ch
        })
        .collect();
    // Each connection is counted from accept, and the call made on it was answered: the ten
    // are all counted by now; waiting only covers the gauge's own update.
    let open = wait_for(Duration::from_secs(10), || {
        let open = per_shard(&s, "proglog_connections_open");
        (open.iter().sum::<f64>() == 10.0).then_some(open)
    })
    .unwrap_or_else(|| per_shard(&s, "proglog_connections_open"));
    assert_eq!(open, vec![5.0, 5.0], "connections open per shard");
    let (_, body) = http_get(s.admin_addr(), "/metrics").expect("scrape");
    assert!(
        body.lines()
            .any(|l| l.starts_with("proglog_connections_moved_total ")),
        "no moves counter in the metrics"
    );
    drop(channels);
}

/// A lone connection (a book client's one channel) is served on the shard that owns the
/// default topic's partition 0, so its calls need no hop: four connections in turn, each
/// alone, each on that shard (the kernel's hash alone would put all four there one time in
/// sixteen).
#[test]
fn a_lone_connection_is_served_on_the_shard_of_the_default_partition() {
    let s = TestServer::start();
    let home = engine::shard::owner(proto::log::v1::DEFAULT_TOPIC, 0, 2);
    let mut expected = vec![0.0, 0.0];
    expected[home] = 1.0;
    for i in 0..4 {
        let none_open = wait_for(Duration::from_secs(10), || {
            (gauge_sum(&s, "proglog_connections_open") == 0.0).then_some(())
        });
        assert!(
            none_open.is_some(),
            "connection {i}: an earlier one never closed"
        );
        let ch = s.channel();
        produce(&ch, "", 0, &format!("record {i}")).expect("produce");
        let open = wait_for(Duration::from_secs(10), || {
            let open = per_shard(&s, "proglog_connections_open");
            (open.iter().sum::<f64>() == 1.0).then_some(open)
        })
        .unwrap_or_else(|| per_shard(&s, "proglog_connections_open"));
        assert_eq!(
            open, expected,
            "connection {i}: connections open per shard (default/0 on shard {home})"
        );
        drop(ch);
    }
}

#[test]
fn a_silent_connection_is_logged_as_silent_and_a_stalled_preface_as_a_handshake() {
    let s = TestServer::start_with(&["--handshake-timeout", "300ms"]);
    let silent = std::net::TcpStream::connect(s.addr).expect("connect");
    let mut stalled = std::net::TcpStream::connect(s.addr).expect("connect");
    stalled
        .write_all(&PREFACE[..8])
        .expect("part of the preface");
    let line = |needle: &str| {
        wait_for(Duration::from_secs(10), || {
            s.log()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    };
    let silent_line = line("timed out before its first byte (nothing within 300ms); closed");
    let stalled_line = line("HTTP/2 handshake with");
    assert!(silent_line.is_some(), "{}", s.log());
    assert!(stalled_line.is_some(), "{}", s.log());
    // One line each: the silent one is not called an HTTP/2 handshake.
    let local = silent.local_addr().unwrap().to_string();
    assert!(
        !s.log()
            .lines()
            .any(|l| l.contains("HTTP/2 handshake") && l.contains(&local)),
        "{}",
        s.log()
    );
    drop((silent, stalled));
}
