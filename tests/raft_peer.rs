//! The peer channel of a running server takes Raft connections: from an address that is no
//! known member, without peer TLS, a Raft frame closes the connection and the server keeps
//! serving; so does a gossip key request to a node that does not gossip.

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// Sends `bytes` on a fresh connection and reads until the server closes it.
fn send_and_read(s: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    c.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn the_peer_channel_routes_raft_and_refuses_strangers() {
    let mut s = TestServer::start();
    // A Raft frame (kind 0x20) from 127.0.0.1, which is no member's address: closed unread.
    let mut raft = vec![0x01];
    raft.extend_from_slice(&5u32.to_le_bytes());
    raft.extend_from_slice(&[0x20, 1, 2, 3, 4]);
    assert!(
        send_and_read(&s, &raft).is_empty(),
        "no answer to a Raft frame"
    );
    // An oversized one: closed as well.
    let mut big = vec![0x01];
    big.extend_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    big.push(0x20);
    assert!(send_and_read(&s, &big).is_empty());
    // A gossip key request: this node does not gossip and 127.0.0.1 is no member: closed.
    let mut key = vec![0x01];
    key.extend_from_slice(&1u32.to_le_bytes());
    key.push(0x10);
    assert!(send_and_read(&s, &key).is_empty());
    // The server serves on.
    let ch = s.channel();
    let off = produce(&ch, "", 0, "after").expect("produce");
    assert_eq!(
        &consume(&ch, "", 0, off).expect("consume").value[..],
        b"after"
    );
    assert!(s.is_running());
}
