//! Connections against the real binary, through its flags: a flood of connections that only
//! send the HTTP/2 preface does not lock a new client out, handshakes show in the connection
//! gauge, and a flood of handshake timeouts writes a few log lines, not one per connection.

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The sum of a per-shard gauge's samples.
fn gauge_sum(s: &TestServer, name: &str) -> f64 {
    let (_, body) = http_get(s.admin_addr(), "/metrics").expect("scrape");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
        .filter(|l| l.contains("timed out") || l.contains("idle the longest"))
        .count();
    assert!(
        lines <= 8,
        "{lines} log lines for 80 connections of the same kinds:\n{log}"
    );
    produce(&ch, "", 0, "still").expect("still served");
}
