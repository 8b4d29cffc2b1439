//! The cluster-aware client (crate `proglog-client`, and the CLI over it) against real
//! `proglog` clusters: the book's picker tests, ported to real processes, and a producer that
//! outlives kill -9 of the node it first contacted and then of the partition's leader.
//!
//! * produce goes to the partition's leader (as every node's own DescribeCluster says);
//!   reads go round-robin over the followers, never the leader, when follower reads are on;
//!   the CLI given a host name and a dead address produces and reads back the same records;
//! * "no connection available" until a server appears at the address, then calls succeed;
//! * under ACLs that deny it DescribeCluster (an Admin call), a client reached over TLS by
//!   host name falls back to GetServers' leader and still produces and reads;
//! * a client given a single node keeps producing while that node, then (after it is back)
//!   the leader, are killed -9: every acknowledged record is read back afterwards at its
//!   offset, and records are acknowledged after each kill.
//!
//! The multi-node tests are `#[ignore]`d in the plain `cargo test` run and run one at a time
//! in scripts/test's cluster phase (`--ignored --test-threads=1`); the ACL one (a single
//! node) runs in the plain run. Clusters come from `tests/common/cluster.rs`. Nothing waits a
//! fixed time: every step waits for a condition with a generous deadline.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{create_topic, form, preferred_leader_of, wait, Cluster, Node};
use common::{cert, free_port, run_async, TestServer, BIN};
use net::client::ClientConfig;
use net::Code;
use proglog_client::{Cluster as Client, Options, ReadFrom};
use proto::log::v1::*;

const DEADLINE: Duration = Duration::from_secs(90);
const CALL: Duration = Duration::from_secs(10);

/// Three nodes on 127.0.0.`first_ip`.. (formed with the book's flags), and `topic` (one
/// partition, three replicas) led with three voters; returns the leader's index.
fn form_with_topic(name: &'static str, first_ip: u8, topic: &str) -> (Cluster, usize) {
    let c = form(name, first_ip, &[]);
    create_topic(&c, topic, 1, 3);
    let mut leader = None;
    wait(
        "the topic led by its preferred replica with three voters",
        || {
            leader = preferred_leader_of(&c, topic, 0, 3);
            leader.is_some()
        },
    );
    let leader = leader.unwrap_or(0);
    (c, leader)
}

fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("CLI output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn produce_goes_to_the_leader_and_reads_round_robin_over_the_followers() {
    // Node 0 on 127.0.0.1, so that `localhost` reaches it.
    let (c, leader) = form_with_topic("picker: leader and followers", 1, "picks");
    let leader_addr = c.nodes[leader].rpc.to_string();
    let followers: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| c.nodes[i].rpc.to_string())
        .collect();
    // Told of one follower, so that the leader has to be learned.
    let seed = c.nodes[(leader + 1) % 3].rpc.to_string();
    let (leader_addr2, followers2) = (leader_addr.clone(), followers.clone());
    run_async(move || async move {
        let cluster = Client::new(
            vec![seed],
            Options {
                read_from: ReadFrom::Followers,
                ..Options::default()
            },
        )
        .expect("client");
        let mut offsets = Vec::new();
        for i in 0..5 {
            let off = cluster
                .produce("picks", 0, format!("p{i}").into(), Some(CALL))
                .await
                .expect("produce");
            offsets.push(off);
        }
        assert_eq!(offsets, (0..5).collect::<Vec<u64>>());
        // Produce goes to the leader the nodes name.
        let deadline = Instant::now() + CALL;
        let (addr, _) = cluster.leader("picks", 0, deadline).await.expect("pick");
        assert_eq!(addr, leader_addr2, "produce picks the leader");
        let route = cluster.route("picks", 0).expect("a route");
        assert_eq!(route.leader.as_deref(), Some(leader_addr2.as_str()));
        let mut known = route.followers.clone();
        known.sort();
        let mut want = followers2.clone();
        want.sort();
        assert_eq!(known, want, "followers learned");
        // Reads: round-robin over the two followers, never the leader.
        let mut picks = Vec::new();
        for _ in 0..4 {
            let (addr, _) = cluster.reader("picks", 0, deadline).await.expect("pick");
            picks.push(addr);
        }
        assert!(picks.iter().all(|a| followers2.contains(a)), "{picks:?}");
        assert_ne!(picks[0], picks[1], "{picks:?}");
        assert_eq!(picks[0], picks[2], "{picks:?}");
        assert_eq!(picks[1], picks[3], "{picks:?}");
        // And the reads themselves, from each follower in turn, return what was acknowledged
        // (a follower applies a committed record a little after the leader acknowledges it).
        let until = Instant::now() + DEADLINE;
        let mut served = 0;
        while served < 4 {
            let r = cluster
                .consume_batch(
                    &ConsumeBatchRequest {
                        topic: "picks".into(),
                        partition: 0,
                        offset: 0,
                        max_records: 0,
                        max_bytes: 0,
                    },
                    Some(CALL),
                )
                .await
                .expect("consume");
            let values: Vec<String> = r
                .records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                .collect();
            if values.len() == 5 {
                assert_eq!(values, ["p0", "p1", "p2", "p3", "p4"]);
                served += 1;
            } else {
                assert!(
                    Instant::now() < until,
                    "followers never caught up: {values:?}"
                );
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The CLI, given an address where nothing listens and a host name.
    let dead = format!("127.0.0.1:{}", free_port());
    let addrs = format!("{dead},localhost:{}", c.nodes[0].rpc.port());
    let (ok, out, err) = cli(
        &["produce", "--addr", &addrs, "--topic", "picks"],
        "c5\nc6\nc7\n",
    );
    assert!(ok, "CLI produce: {err}");
    assert_eq!(out, "5\n6\n7\n");
    let (ok, out, err) = cli(
        &[
            "produce", "--addr", &addrs, "--topic", "picks", "--batch", "2",
        ],
        "c8\nc9\n",
    );
    assert!(ok, "CLI produce --batch: {err}");
    assert_eq!(out, "8\n9\n");
    let mut last = String::new();
    wait("the CLI reads every record from a follower", || {
        let (ok, out, err) = cli(
            &[
                "consume",
                "--addr",
                &addrs,
                "--topic",
                "picks",
                "--from",
                "5",
                "--read-from",
                "followers",
            ],
            "",
        );
        last = format!("{ok} {out} {err}");
        ok && out == "5\tc5\n6\tc6\n7\tc7\n8\tc8\n9\tc9\n"
    });
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn no_connection_available_clears_when_a_server_appears() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let started = Instant::now();
    let node: Arc<Mutex<Option<Node>>> = Arc::new(Mutex::new(None));
    let node2 = node.clone();
    let dir = tmp.path().to_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_async(move || async move {
            let cluster =
                Client::new(vec![format!("127.0.0.1:{port}")], Options::default()).expect("client");
            let e = cluster
                .produce("", 0, "early".into(), Some(Duration::from_secs(1)))
                .await
                .expect_err("nothing listens yet");
            assert_eq!(e.code, Code::Unavailable, "{e:?}");
            assert!(e.message.contains("no connection available"), "{e:?}");
            // A node of its own (a cluster of one) appears at the address.
            *node2.lock().expect("lock") = Some(Node::start_on(
                &dir,
                "alone",
                "127.0.0.1",
                port,
                &["--bootstrap".to_owned()],
            ));
            let until = Instant::now() + DEADLINE;
            loop {
                match cluster
                    .produce("", 0, "late".into(), Some(Duration::from_secs(5)))
                    .await
                {
                    Ok(off) => {
                        assert_eq!(off, 0);
                        break;
                    }
                    // Until the node has formed its cluster of one and placed `default`.
                    Err(e) => assert!(Instant::now() < until, "still failing: {e:?}"),
                }
            }
            assert_eq!(
                cluster.servers(),
                vec![format!("127.0.0.1:{port}")],
                "the server learned from GetServers"
            );
        })
    }));
    let mut n = node.lock().expect("lock").take();
    if result.is_err() {
        if let Some(n) = &n {
            eprintln!("===== log of {}\n{}", n.rpc, n.log());
        }
    }
    if let Some(n) = n.as_mut() {
        n.kill9();
    }
    eprintln!(
        "picker: no connection available: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_producer_outlives_kill_9_of_its_first_node_and_then_of_the_leader() {
    let (mut c, leader) = form_with_topic(
        "client: kill -9 of the first node, then of the leader",
        71,
        "kills",
    );
    // The client is told of one follower only.
    let first = (leader + 1) % 3;
    let seed = c.nodes[first].rpc.to_string();
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (acked2, failures2, stop2) = (acked.clone(), failures.clone(), stop.clone());
    let producer = std::thread::spawn(move || {
        run_async(move || async move {
            let cluster = Client::new(vec![seed], Options::default()).expect("client");
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let value = format!("k{i}");
                i += 1;
                match cluster
                    .produce(
                        "kills",
                        0,
                        value.clone().into(),
                        Some(Duration::from_secs(5)),
                    )
                    .await
                {
                    Ok(off) => {
                        let old = acked2.lock().expect("lock").insert(off, value);
                        assert!(old.is_none(), "offset {off} acknowledged twice");
                    }
                    // Unknown outcome (a call cut by the kill) or no leader yet: not
                    // acknowledged, and not sent again by the client.
                    Err(_) => {
                        failures2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    });
    let count = || acked.lock().map(|a| a.len()).unwrap_or(0);
    wait("records acknowledged", || count() >= 20);
    c.nodes[first].kill9();
    let before = count();
    wait("records acknowledged after the first node's kill", || {
        count() >= before + 20
    });
    // Back, so that a majority survives the leader's kill.
    c.nodes[first].spawn();
    wait("the first node back with the others", || {
        c.nodes[first].describe().is_some_and(|d| {
            d.partitions
                .iter()
                .any(|p| p.topic == "kills" && p.local && p.leader != 0)
        })
    });
    let mut leader = None;
    wait("the preferred leader with three voters", || {
        leader = preferred_leader_of(&c, "kills", 0, 3);
        leader.is_some()
    });
    let leader = leader.unwrap_or(0);
    c.nodes[leader].kill9();
    let before = count();
    wait("records acknowledged after the leader's kill", || {
        count() >= before + 20
    });
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    let acked = acked.lock().expect("lock").clone();
    let last = *acked.keys().next_back().expect("some acknowledged");
    eprintln!(
        "{} acknowledged, {} failed (unknown outcome or no leader), last offset {last}",
        acked.len(),
        failures.load(Ordering::Relaxed)
    );
    // Every acknowledged record, read back through a fresh client at its offset.
    let seeds: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.rpc.to_string())
        .collect();
    let read = run_async(move || async move {
        let cluster = Client::new(seeds, Options::default()).expect("client");
        let mut out = BTreeMap::new();
        let mut offset = 0;
        while offset <= last {
            let r = cluster
                .consume_batch(
                    &ConsumeBatchRequest {
                        topic: "kills".into(),
                        partition: 0,
                        offset,
                        max_records: 0,
                        max_bytes: 0,
                    },
                    Some(CALL),
                )
                .await
                .expect("consume");
            assert!(!r.records.is_empty(), "nothing at offset {offset}");
            for rec in r.records {
                out.insert(rec.offset, String::from_utf8_lossy(&rec.value).into_owned());
            }
            offset = r.next_offset;
        }
        out
    });
    for (off, v) in &acked {
        assert_eq!(read.get(off), Some(v), "acknowledged offset {off}");
    }
}

#[test]
fn under_acls_without_describe_cluster_the_leader_comes_from_get_servers() {
    let certs = tempfile::tempdir().expect("temp dir");
    let dir = certs.path();
    cert(dir, &["ca"]);
    cert(dir, &["server", "localhost", "127.0.0.1"]);
    cert(dir, &["client", "root"]);
    let path = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_owned();
    let client_config = || {
        let tls = net::tls::ClientTlsOptions {
            ca_file: Some(dir.join("ca.pem")),
            cert_file: Some(dir.join("root-client.pem")),
            key_file: Some(dir.join("root-client-key.pem")),
            server_name: None,
        }
        .load()
        .expect("client TLS");
        ClientConfig {
            tls,
            ..ClientConfig::default()
        }
    };
    // root may produce and consume, nothing else (tests/fixtures/policy.csv).
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let args = [
        "--server-tls-cert-file".to_owned(),
        path("server.pem"),
        "--server-tls-key-file".to_owned(),
        path("server-key.pem"),
        "--server-tls-ca-file".to_owned(),
        path("ca.pem"),
        "--acl-model-file".to_owned(),
        format!("{fixtures}/model.conf"),
        "--acl-policy-file".to_owned(),
        format!("{fixtures}/policy.csv"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_with_client(&args, client_config());
    let seed = format!("localhost:{}", server.addr.port());
    let config = client_config();
    let addr = server.addr.to_string();
    run_async(move || async move {
        let cluster = Client::new(
            vec![seed],
            Options {
                config,
                ..Options::default()
            },
        )
        .expect("client");
        let until = Instant::now() + DEADLINE;
        let off = loop {
            match cluster.produce("", 0, "acl".into(), Some(CALL)).await {
                Ok(off) => break off,
                Err(e) => {
                    assert_eq!(e.code, Code::Unavailable, "{e:?}");
                    assert!(Instant::now() < until, "{e:?}");
                }
            }
        };
        // Learned from GetServers (a term of 0), not from the DescribeCluster it may not call.
        let route = cluster.route("", 0).expect("a route");
        assert_eq!(route.leader.as_deref(), Some(addr.as_str()));
        assert_eq!(route.term, 0, "{route:?}");
        let r = cluster
            .consume_batch(
                &ConsumeBatchRequest {
                    topic: String::new(),
                    partition: 0,
                    offset: off,
                    max_records: 1,
                    max_bytes: 0,
                },
                Some(CALL),
            )
            .await
            .expect("consume");
        assert_eq!(
            r.records.first().map(|r| r.value.clone()),
            Some("acl".into())
        );
    });
}
