//! Membership on loopback with the real binary: a node without cluster flags lists itself
//! alone (and gets a new generation at every start); three nodes with peer TLS share the
//! cluster's gossip key and see each other; a node whose certificate comes from another CA,
//! and a node without peer TLS, are never admitted. (The five-node test with host names,
//! kill -9, restart and SIGTERM is `membership_netns.rs`.)

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{cert, free_port, http_get, run_cli, TestServer};

fn members(s: &TestServer) -> Vec<serde_json::Value> {
    let (ok, out, err) = run_cli(s.addr, &["cluster", "members", "--json"], None);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn metric(s: &TestServer, prefix: &str) -> f64 {
    let (code, body) = http_get(s.admin_addr(), "/metrics").unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

#[test]
fn a_single_node_lists_itself_without_gossiping() {
    let mut s = TestServer::start();
    let m = members(&s);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["is_self"], true);
    assert_eq!(m[0]["state"], "up");
    assert_eq!(m[0]["name"], "test-node");
    assert_eq!(m[0]["gossip_addr"], "");
    assert_eq!(m[0]["generation"], 1);
    let id = m[0]["node_id"].clone();
    let (ok, text, err) = run_cli(s.addr, &["cluster", "members"], None);
    assert!(ok);
    assert!(text.starts_with("NODE_ID"), "{text}");
    assert!(err.contains("no gossip"), "{err}");
    assert_eq!(metric(&s, "proglog_members{state=\"up\"}"), 1.0);
    s.restart();
    let m = members(&s);
    assert_eq!(m[0]["generation"], 2);
    assert_eq!(
        m[0]["node_id"], id,
        "the node id belongs to the data directory"
    );
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn up_count(s: &TestServer) -> usize {
    members(s).iter().filter(|m| m["state"] == "up").count()
}

#[test]
fn only_holders_of_a_peer_certificate_gossip() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let other = tmp.path().join("other");
    cert(&certs, &["ca"]);
    cert(
        &certs,
        &["peer", "127.0.0.1", "localhost", "--name", "peer"],
    );
    cert(&other, &["ca"]);
    cert(&other, &["peer", "127.0.0.1", "--name", "peer"]);
    let tls = |dir: &Path| {
        [
            "--peer-tls-cert-file".to_owned(),
            dir.join("peer.pem").display().to_string(),
            "--peer-tls-key-file".to_owned(),
            dir.join("peer-key.pem").display().to_string(),
            "--peer-tls-ca-file".to_owned(),
            dir.join("ca.pem").display().to_string(),
        ]
    };
    // A node that is never admitted (the stranger, the open one) never becomes SERVING:
    // it has not joined and caught up with a cluster. It runs once it answers health.
    let start = |name: &str, join: Option<&str>, tls: Option<[String; 6]>, admitted: bool| {
        let bind = format!("127.0.0.1:{}", free_port());
        let _ = name;
        let mut args = vec!["--bind-addr".to_owned(), bind.clone()];
        if let Some(j) = join {
            args.extend(["--start-join-addrs".to_owned(), j.to_owned()]);
        }
        args.extend(tls.into_iter().flatten());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = if admitted {
            TestServer::start_with(&refs)
        } else {
            TestServer::start_not_admitted(&refs)
        };
        (server, bind)
    };
    let (a, join) = start("a", None, Some(tls(&certs)), true);
    let (b, _) = start("b", Some(&join), Some(tls(&certs)), true);
    let (c, _) = start("c", Some(&join), Some(tls(&certs)), true);
    for s in [&a, &b, &c] {
        wait("three up", Duration::from_secs(60), || up_count(s) == 3);
    }
    // Another CA: the TLS handshake of the key exchange fails, so it never gossips.
    let (stranger, stranger_bind) = start("stranger", Some(&join), Some(tls(&other)), false);
    // No peer TLS: its datagrams carry no tag and are dropped.
    let (open, open_bind) = start("open", Some(&join), None, false);
    let dropped = || {
        metric(
            &a,
            "proglog_gossip_dropped_packets_total{reason=\"unauthenticated\"}",
        )
    };
    wait(
        "unauthenticated packets dropped",
        Duration::from_secs(30),
        || dropped() >= 1.0,
    );
    wait("the stranger retried", Duration::from_secs(30), || {
        stranger.log().contains("gave the gossip key yet")
    });
    std::thread::sleep(Duration::from_secs(3));
    for s in [&a, &b, &c] {
        let m = members(s);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m.iter().all(|m| m["gossip_addr"] != stranger_bind.as_str()
            && m["gossip_addr"] != open_bind.as_str()));
    }
    assert_eq!(up_count(&stranger), 1);
    assert_eq!(up_count(&open), 1);
    let key = a.data_dir.join("gossip-key.meta");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(b.data_dir.join("gossip-key.meta")).unwrap(),
        "one key for the cluster"
    );
    assert!(!stranger.data_dir.join("gossip-key.meta").exists());
}

/// `in_state_ms` counts to the moment of the answer: a member up for a while reads as up for
/// that long, not for the time since the list last changed.
#[test]
fn time_in_state_grows_while_nothing_changes() {
    let bind = format!("127.0.0.1:{}", free_port());
    // With gossip, and without (a node alone).
    for s in [
        TestServer::start_with(&["--bind-addr", &bind, "--bootstrap"]),
        TestServer::start(),
    ] {
        let in_state = || members(&s)[0]["in_state_ms"].as_u64().expect("in_state_ms");
        let first = in_state();
        std::thread::sleep(Duration::from_millis(1500));
        let second = in_state();
        assert!(
            second >= first + 1400,
            "in state {first} ms, then {second} ms 1.5 s later"
        );
    }
}
