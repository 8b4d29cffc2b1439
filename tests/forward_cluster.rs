//! Any node serves any client, black box: a three-node cluster of real binaries formed with
//! the book's flags (`--bind-addr`, `--start-join-addrs`) on 127.0.0.1, produced to through
//! every node (unary Produce and a pipelined ProduceStream) and consumed from every node:
//! every acknowledged record once at its offset on every node, OUT_OF_RANGE past the end on
//! every node, a linearizable ConsumeBatch on every node whose high watermark covers every
//! acknowledged record, and the followers' forwarded appends counted in their metrics. Then a
//! topic with a single replica, served by all three nodes: produced to, consumed from and
//! tailed on every node; and a topic of two single-replica partitions on two nodes (each
//! holding an empty group of the other's), produced to and consumed from every node.
//!
//! Multi-node: `#[ignore]`d in the plain `cargo test` run, run one at a time in
//! scripts/test's cluster phase (`--ignored --test-threads=1`).

use crate::common;

use common::*;
use net::blocking::BlockingChannel;
use net::client::ClientConfig;
use net::Code;
use proto::log::v1::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);

/// One node: a `proglog` process, killed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(dir: &Path, name: &str, gossip: SocketAddr, join: Option<SocketAddr>) -> Node {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(dir.join(name))
            .args(["--listen", &addr.to_string()])
            .args(["--bind-addr", &gossip.to_string()])
            .args(["--node-name", name, "--shards", "1"])
            .args(["--admin-addr", "127.0.0.1:0", "--log-level", "info"]);
        if let Some(j) = join {
            cmd.args(["--start-join-addrs", &j.to_string()]);
        }
        let child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn proglog");
        Node { child, addr, log }
    }

    fn channel(&self) -> BlockingChannel {
        BlockingChannel::connect(self.addr, ClientConfig::default()).expect("connect")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        let Some(admin) = admin_addr_in(&self.log()) else {
            return 0.0;
        };
        let (_, body) = http_get(admin, "/metrics").expect("metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }
}

fn gossip_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// Produces `v` through `n`, retrying while the cluster forms (no leader yet, the default
/// topic not placed yet): only errors that say the record was not stored.
fn produce_when_ready(n: &Node, v: &str) -> u64 {
    produce_to_when_ready(n, "", v)
}

fn produce_to_when_ready(n: &Node, topic: &str, v: &str) -> u64 {
    let until = Instant::now() + DEADLINE;
    while BlockingChannel::connect(n.addr, ClientConfig::default()).is_err() {
        assert!(
            Instant::now() < until,
            "{} never listened:\n{}",
            n.addr,
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    loop {
        match produce(&n.channel(), topic, 0, v) {
            Ok(off) => return off,
            Err(e) if matches!(e.code, Code::Unavailable | Code::NotFound) => {
                assert!(
                    Instant::now() < until,
                    "{} never took a produce: {e:?}\n{}",
                    n.addr,
                    n.log()
                );
                assert!(
                    cluster_reason(&e) != Some(errors::OUTCOME_UNKNOWN.to_owned()),
                    "an unknown outcome while forming: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("produce on {}: {e:?}", n.addr),
        }
    }
}

fn cluster_reason(e: &net::Status) -> Option<String> {
    let details =
        <proto::google::rpc::Status as prost::Message>::decode(e.details.as_ref()).ok()?;
    proto::google::rpc::find_error_info(&details).map(|i| i.reason.clone())
}

impl Node {
    fn channel_produce(&self, v: &str) -> Result<u64, net::Status> {
        produce(&self.channel(), "", 0, v)
    }
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn every_node_takes_produces_and_serves_consumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let g1 = gossip_addr();
    let nodes = [
        Node::start(tmp.path(), "n1", g1, None),
        Node::start(tmp.path(), "n2", gossip_addr(), Some(g1)),
        Node::start(tmp.path(), "n3", gossip_addr(), Some(g1)),
    ];
    // Offset -> value of every acknowledged record.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let v = format!("first-{i}");
        let off = produce_when_ready(n, &v);
        assert!(acked.insert(off, v).is_none(), "offset {off} twice");
    }
    // Unary produces through every node, then a pipelined stream through every node.
    for round in 0..5 {
        for (i, n) in nodes.iter().enumerate() {
            let v = format!("unary-{i}-{round}");
            let off = n.channel_produce(&v).expect("produce");
            assert!(acked.insert(off, v).is_none(), "offset {off} twice");
        }
    }
    let prefixes: [&'static str; 3] = ["stream-0-", "stream-1-", "stream-2-"];
    for (n, prefix) in nodes.iter().zip(prefixes) {
        let offs = produce_stream(n.addr, 20, prefix);
        assert_eq!(offs.len(), 20);
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "a stream's offsets in order: {offs:?}"
        );
        for (i, off) in offs.into_iter().enumerate() {
            assert!(
                acked.insert(off, format!("{prefix}{i}")).is_none(),
                "offset {off} twice"
            );
        }
    }
    let end = acked.len() as u64;
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (0..end).collect::<Vec<_>>(),
        "dense"
    );

    // Every node serves every acknowledged record, at once.
    for n in &nodes {
        let ch = n.channel();
        for (off, v) in &acked {
            let r =
                consume(&ch, "", 0, *off).unwrap_or_else(|e| panic!("{} at {off}: {e:?}", n.addr));
            assert_eq!(&r.value[..], v.as_bytes(), "{} at {off}", n.addr);
        }
        let past = consume(&ch, "", 0, end).expect_err("past the end");
        assert_eq!(past.code, Code::OutOfRange, "{}: {past:?}", n.addr);
        let past = consume(&ch, "", 0, end + 10).expect_err("past the end");
        assert_eq!(past.code, Code::OutOfRange, "{}: {past:?}", n.addr);
        // A linearizable batch read: its high watermark covers every acknowledged record.
        let mut o = opts();
        o.metadata.insert(
            "proglog-read-consistency",
            http::HeaderValue::from_static("linearizable"),
        );
        let b: ConsumeBatchResponse = ch
            .unary_prost(
                paths::CONSUME_BATCH,
                &ConsumeBatchRequest {
                    offset: end - 1,
                    ..Default::default()
                },
                o,
            )
            .expect("linearizable batch");
        assert_eq!(b.high_watermark, end, "{}", n.addr);
        assert_eq!(b.records.len(), 1);
    }
    let forwarded: f64 = nodes
        .iter()
        .map(|n| n.metric("proglog_forwarded_appends_ok_total"))
        .sum();
    assert!(forwarded > 0.0, "followers forwarded appends");
    println!("{forwarded} appends forwarded; {end} records");

    // A topic with one replica: two nodes of three hold none, and serve it all the same
    // (appends sent to the replica, reads asked of it, tails held by it).
    let ch = nodes[0].channel();
    let _: CreateTopicResponse = ch
        .unary_prost(
            paths::CREATE_TOPIC,
            &CreateTopicRequest {
                name: "one".into(),
                config: Some(TopicConfig {
                    partitions: 1,
                    replication_factor: 1,
                    ..Default::default()
                }),
            },
            opts(),
        )
        .expect("create topic one");
    let mut one: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..3 {
        for (i, n) in nodes.iter().enumerate() {
            let v = format!("one-{i}-{round}");
            let off = produce_to_when_ready(n, "one", &v);
            assert!(one.insert(off, v).is_none(), "offset {off} twice");
        }
    }
    let end = one.len() as u64;
    for n in &nodes {
        let ch = n.channel();
        for (off, v) in &one {
            let r = consume(&ch, "one", 0, *off)
                .unwrap_or_else(|e| panic!("{} one at {off}: {e:?}", n.addr));
            assert_eq!(&r.value[..], v.as_bytes(), "{} one at {off}", n.addr);
        }
        let past = consume(&ch, "one", 0, end).expect_err("past the end");
        assert_eq!(past.code, Code::OutOfRange, "{}: {past:?}", n.addr);
    }
    // Two partitions of one replica each, on two nodes: a node holding one of them holds an
    // empty group of the other, and must not serve it from there.
    let _: CreateTopicResponse = ch
        .unary_prost(
            paths::CREATE_TOPIC,
            &CreateTopicRequest {
                name: "two".into(),
                config: Some(TopicConfig {
                    partitions: 2,
                    replication_factor: 1,
                    ..Default::default()
                }),
            },
            opts(),
        )
        .expect("create topic two");
    let mut two: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for p in 0..2u32 {
        for (i, n) in nodes.iter().enumerate() {
            let v = format!("two-{p}-{i}");
            let until = Instant::now() + DEADLINE;
            let off = loop {
                match produce(&n.channel(), "two", p, &v) {
                    Ok(off) => break off,
                    Err(e) if matches!(e.code, Code::Unavailable | Code::NotFound) => {
                        assert!(Instant::now() < until, "{}: two/{p}: {e:?}", n.addr);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("{}: two/{p}: {e:?}", n.addr),
                }
            };
            assert!(
                two.insert((p, off), v).is_none(),
                "two/{p} offset {off} twice"
            );
        }
    }
    for n in &nodes {
        let ch = n.channel();
        for ((p, off), v) in &two {
            let r = consume(&ch, "two", *p, *off)
                .unwrap_or_else(|e| panic!("{} two/{p} at {off}: {e:?}", n.addr));
            assert_eq!(&r.value[..], v.as_bytes(), "{} two/{p} at {off}", n.addr);
        }
    }

    // A tail on every node wakes for a record produced through another.
    for (i, n) in nodes.iter().enumerate() {
        let other = nodes[(i + 1) % nodes.len()].channel();
        let v = format!("tail-{i}");
        let got = tail_one(n.addr, "one", end + i as u64, move || {
            produce(&other, "one", 0, &v).expect("produce for the tail")
        });
        assert_eq!(got, (end + i as u64, format!("tail-{i}")), "{}", n.addr);
    }
}

/// Opens a ConsumeStream on `topic`/0 from `offset` at `addr`, then calls `produce` (once
/// the stream is open) and returns the first record the stream sends: (offset, value).
fn tail_one(
    addr: SocketAddr,
    topic: &'static str,
    offset: u64,
    produce: impl FnOnce() -> u64 + Send + 'static,
) -> (u64, String) {
    run_async(move || async move {
        let ch = net::client::Channel::connect(addr, ClientConfig::default())
            .await
            .expect("connect");
        let (mut tx, mut rx) = ch
            .streaming(
                paths::CONSUME_STREAM,
                net::client::CallOptions::timeout(Duration::from_secs(30)),
            )
            .await
            .expect("stream");
        tx.send_message(&ConsumeRequest {
            offset,
            topic: topic.into(),
            partition: 0,
        })
        .await
        .expect("send");
        tx.finish().expect("half-close");
        // Produced from another thread while this one waits on the stream.
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            produce()
        });
        let r = rx
            .message_as::<ConsumeResponse>()
            .await
            .expect("stream message")
            .expect("a record");
        let _ = producer.join();
        let rec = r.record.expect("record");
        (rec.offset, String::from_utf8_lossy(&rec.value).into_owned())
    })
}
