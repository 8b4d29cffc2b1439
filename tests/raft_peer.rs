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

/// A join request (kind 0x21) for a node gossip does not list is refused (after waiting a few
/// seconds for gossip to see it), and registers nothing: a stranger sending them registered
/// thousands of nodes that never ran, until the answer listing them outgrew its frame and no
/// real node could join.
#[test]
fn a_join_for_a_node_gossip_does_not_list_registers_nothing() {
    let bind = format!("127.0.0.1:{}", free_port());
    let mut s = TestServer::start_with(&["--bind-addr", &bind, "--bootstrap"]);
    for i in 0..3 {
        let req = serde_json::json!({
            "cluster_id": null,
            "node": {
                "member": format!("00000000-0000-4000-8000-{i:012}"),
                "name": format!("stranger{i}"),
                "rpc_addr": "127.0.0.9:1",
                "gossip_addr": "127.0.0.9:2",
                "shards": 64,
            }
        })
        .to_string();
        let mut frame = vec![0x01];
        frame.extend_from_slice(&(req.len() as u32 + 1).to_le_bytes());
        frame.push(0x21);
        frame.extend_from_slice(req.as_bytes());
        let answer = send_and_read(&s, &frame);
        let text = String::from_utf8_lossy(answer.get(5..).unwrap_or_default());
        assert!(
            text.contains("refused") && text.contains("not seen live through gossip"),
            "{text}"
        );
    }
    let (ok, out, err) = run_cli(s.addr, &["cluster", "describe", "--json"], None);
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).expect("json");
    let nodes = d["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{out}");
    assert!(s.is_running());
}
