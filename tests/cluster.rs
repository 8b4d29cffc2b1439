//! Black-box clusters: real `proglog` binaries on 127.0.0.x formed with the book's flags
//! (`--bootstrap` on the first, `--start-join-addrs` on the others), with and without peer
//! mutual TLS. What they check: the controller forms (three voters), a topic created with
//! replication factor 3 has a replica and the same records on every node, and a kill -9 of a
//! partition's leader under load loses no acknowledged record: after the node restarts,
//! every acknowledged offset holds its value, byte for byte, on every node. A leader whose
//! partition log fails (its directory taken away) stops: it reports no leadership, the others
//! elect, and produces made on its node reach the new leader. A follower whose log fails is
//! moved, past `--stopped-replica-grace`, to a free fourth node, without losing an
//! acknowledged record and without its node leaving the cluster, also when that node's
//! controller replica stopped first (the report then relayed over the peer channel). A node
//! restarted with its controller log lost (node 1 too) recovers it and the controller's state.
//!
//! Multi-node tests are `#[ignore]`d in the plain `cargo test` run and run one at a time in
//! their own phase of scripts/test (`cargo test --test cluster -- --ignored
//! --test-threads=1`), each printing its duration. Nothing waits a fixed time: every step
//! waits for a condition with a generous deadline.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cert;
use common::cluster::{
    controller_leader, controller_voters, create_topic, form, leader_of, opts, preferred_leader_of,
    wait, wait_for, Cluster, Node,
};
use net::blocking::BlockingChannel;
use net::client::ClientConfig;
use net::Status;
use proto::log::v1::*;

fn produce(n: &Node, topic: &str, value: &[u8]) -> Result<u64, Status> {
    produce_to(n, topic, 0, value)
}

fn produce_to(n: &Node, topic: &str, partition: u32, value: &[u8]) -> Result<u64, Status> {
    let ch = n
        .channel()
        .ok_or_else(|| Status::unavailable("no connection"))?;
    produce_on(&ch, topic, partition, value)
}

fn produce_on(
    ch: &BlockingChannel,
    topic: &str,
    partition: u32,
    value: &[u8],
) -> Result<u64, Status> {
    let r: ProduceResponse = ch.unary_prost(
        paths::PRODUCE,
        &ProduceRequest {
            record: Some(Record {
                value: value.to_vec().into(),
                ..Default::default()
            }),
            topic: topic.into(),
            partition,
        },
        opts(),
    )?;
    Ok(r.offset)
}

fn consume(n: &Node, topic: &str, offset: u64) -> Result<Vec<u8>, Status> {
    consume_from(n, topic, 0, offset)
}

fn consume_from(n: &Node, topic: &str, partition: u32, offset: u64) -> Result<Vec<u8>, Status> {
    let ch = n
        .channel()
        .ok_or_else(|| Status::unavailable("no connection"))?;
    consume_on(&ch, topic, partition, offset)
}

fn consume_on(
    ch: &BlockingChannel,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<Vec<u8>, Status> {
    let r: ConsumeResponse = ch.unary_prost(
        paths::CONSUME,
        &ConsumeRequest {
            offset,
            topic: topic.into(),
            partition,
        },
        opts(),
    )?;
    Ok(r.record.map(|r| r.value.to_vec()).unwrap_or_default())
}

/// One connection to a node for many reads of partition 0, made again after a call that
/// found no server (a connection per read made checks of a thousand records take seconds).
struct NodeReader<'a> {
    node: &'a Node,
    ch: Option<BlockingChannel>,
}

impl<'a> NodeReader<'a> {
    fn new(node: &'a Node) -> Self {
        NodeReader { node, ch: None }
    }

    fn consume(&mut self, topic: &str, offset: u64) -> Result<Vec<u8>, Status> {
        if self.ch.is_none() {
            self.ch = self.node.channel();
        }
        let Some(ch) = &self.ch else {
            return Err(Status::unavailable("no connection"));
        };
        let r = consume_on(ch, topic, 0, offset);
        if let Err(s) = &r {
            if matches!(s.code, net::Code::Unavailable | net::Code::DeadlineExceeded) {
                self.ch = None;
            }
        }
        r
    }

    /// The value at `offset` of `topic`/0, once a read of it succeeds (waiting for a
    /// follower to apply it, or a node to serve).
    fn read_back(&mut self, topic: &str, offset: u64) -> Vec<u8> {
        let mut got = Err(Status::unavailable("not asked yet"));
        let what = format!("offset {offset} of {topic} on {}", self.node.rpc);
        wait(&what, || {
            got = self.consume(topic, offset);
            got.is_ok()
        });
        got.unwrap_or_default()
    }
}

/// Every acknowledged offset holds its value on every node (waiting for followers to apply).
fn check_everywhere(c: &Cluster, topic: &str, acked: &BTreeMap<u64, Vec<u8>>) {
    check_on(&c.nodes, topic, acked);
}

/// [`check_everywhere`] on `nodes`.
fn check_on(nodes: &[Node], topic: &str, acked: &BTreeMap<u64, Vec<u8>>) {
    for n in nodes {
        let mut reader = NodeReader::new(n);
        for (&offset, value) in acked {
            assert_eq!(
                &reader.read_back(topic, offset),
                value,
                "offset {offset} on {} differs from what was acknowledged",
                n.rpc
            );
        }
    }
}

/// Produces to the partition's leader (found again after any failure) until `stop`; returns
/// what was acknowledged. An error never counts: it may or may not have been committed.
fn producer(
    c: Arc<Mutex<Vec<SocketAddr>>>,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    prefix: &'static str,
) -> std::thread::JoinHandle<BTreeMap<u64, Vec<u8>>> {
    std::thread::spawn(move || {
        let mut acked = BTreeMap::new();
        let mut i = 0u64;
        let mut target = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let addrs = c.lock().map(|a| a.clone()).unwrap_or_default();
            let addr = addrs[target % addrs.len()];
            let value = format!("{prefix}-{i}").into_bytes();
            i += 1;
            let ok = BlockingChannel::connect(addr, ClientConfig::default())
                .map_err(|e| Status::unavailable(e.to_string()))
                .and_then(|ch| {
                    let r: Result<ProduceResponse, Status> = ch.unary_prost(
                        paths::PRODUCE,
                        &ProduceRequest {
                            record: Some(Record {
                                value: value.clone().into(),
                                ..Default::default()
                            }),
                            topic: topic.into(),
                            partition: 0,
                        },
                        opts(),
                    );
                    r
                });
            match ok {
                Ok(r) => {
                    assert!(
                        acked.insert(r.offset, value).is_none(),
                        "offset {} acknowledged twice",
                        r.offset
                    );
                }
                Err(_) => {
                    target += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        acked
    })
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn three_nodes_form_replicate_and_lose_nothing_when_the_leader_is_killed() {
    let mut c = form("three nodes, kill -9 of the leader", 41, &[]);
    // GetServers lists every member, one of them the default topic's leader.
    wait("GetServers lists three servers and a leader", || {
        c.nodes[1]
            .channel()
            .and_then(|ch| {
                ch.unary_prost::<_, GetServersResponse>(
                    paths::GET_SERVERS,
                    &GetServersRequest {},
                    opts(),
                )
                .ok()
            })
            .is_some_and(|r| {
                r.servers.len() == 3 && r.servers.iter().filter(|s| s.is_leader).count() == 1
            })
    });
    create_topic(&c, "orders", 1, 3);
    // The CLI's admin writes through a node that does not lead the controller: it follows
    // the leader that node names.
    let ctl = controller_leader(&c);
    let other = c.nodes[(ctl + 1) % 3].rpc;
    let (ok, out, err) = common::run_cli(other, &["topics", "create", "notes"], None);
    assert!(ok && out.contains("notes"), "{out}{err}");
    let (ok, out, err) = common::run_cli(other, &["topics", "delete", "notes"], None);
    assert!(ok && out.contains("deleted notes"), "{out}{err}");
    // Every node lists a topic, also the two that hold no replica of it.
    let (ok, out, err) = common::run_cli(
        other,
        &["topics", "create", "solo", "--replication-factor", "1"],
        None,
    );
    assert!(ok, "{out}{err}");
    for n in &c.nodes {
        wait("every node lists the topic", || {
            let (ok, out, _) = common::run_cli(n.rpc, &["topics", "list"], None);
            ok && out.lines().any(|l| l == "solo")
        });
    }
    let mut leader = None;
    wait("orders/0 led with three voters", || {
        leader = leader_of(&c, "orders", 0, 3);
        leader.is_some()
    });
    // A record produced on the leader is read back from every node.
    let mut first = leader.unwrap_or(0);
    let mut r = Err(Status::unavailable(""));
    wait("a produce on the leader", || {
        first = leader_of(&c, "orders", 0, 3).unwrap_or(first);
        r = produce(&c.nodes[first], "orders", b"first");
        r.is_ok()
    });
    let off = r.expect("produce on the leader");
    check_everywhere(&c, "orders", &BTreeMap::from([(off, b"first".to_vec())]));
    // A write on a follower is refused with the leader's address.
    let follower = (first + 1) % 3;
    // (A node that forwards produces to the leader answers it instead.)
    if let Err(s) = produce(&c.nodes[follower], "orders", b"x") {
        assert!(s.message.contains(&c.nodes[first].rpc.to_string()), "{s:?}");
    }

    // Load, then kill -9 the leader in the middle of it, then restart it.
    let addrs = Arc::new(Mutex::new(
        c.nodes.iter().map(|n| n.rpc).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let load = producer(addrs, "orders", stop.clone(), "load");
    wait("some records acknowledged before the kill", || {
        c.nodes[first].describe().is_some_and(|d| {
            d.partitions
                .iter()
                .any(|p| p.topic == "orders" && p.commit_index >= 30)
        })
    });
    let killed = raft_ids(&c)[first];
    c.nodes[first].kill9();
    // The registry says what gossip knows as soon as it knows it: suspect (for about four
    // seconds, in which this polls forty times), then unreachable, never live throughout.
    let witness = &c.nodes[(first + 1) % 3];
    let state = |d: &proto::log::v1::DescribeClusterResponse| {
        d.nodes
            .iter()
            .find(|n| n.id == killed)
            .map(|n| (n.live, n.suspect))
    };
    let mut seen = Vec::new();
    wait(
        "the killed node suspect, then down, in the registry",
        || {
            if let Some(s) = witness.describe().as_ref().and_then(state) {
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
            }
            seen.last() == Some(&(false, false))
        },
    );
    assert!(seen.contains(&(true, true)), "never suspect: {seen:?}");
    wait("a new leader for orders/0", || {
        leader_of(&c, "orders", 0, 3).is_some_and(|l| l != first)
    });
    c.nodes[first].spawn();
    wait("the killed node serves again", || c.nodes[first].serving());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut acked = load.join().expect("producer");
    acked.insert(off, b"first".to_vec());
    assert!(acked.len() > 10, "only {} acknowledged", acked.len());
    // Offsets are dense: every offset below the last acknowledged one exists everywhere and
    // the acknowledged ones hold their values.
    check_everywhere(&c, "orders", &acked);
    let last = *acked.keys().next_back().unwrap_or(&0);
    let mut reader = NodeReader::new(&c.nodes[(first + 1) % 3]);
    let reference: Vec<Vec<u8>> = (0..=last)
        .map(|o| reader.consume("orders", o).expect("dense offsets"))
        .collect();
    for n in &c.nodes {
        let mut reader = NodeReader::new(n);
        for (o, v) in reference.iter().enumerate() {
            let got = reader.read_back("orders", o as u64);
            assert_eq!(&got, v, "offset {o} on {}", n.rpc);
        }
    }
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn three_nodes_form_over_peer_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    cert(certs.path(), &["ca"]);
    cert(
        certs.path(),
        &[
            "peer",
            "127.0.0.51",
            "127.0.0.52",
            "127.0.0.53",
            "--name",
            "peer",
        ],
    );
    let p = |f: &str| certs.path().join(f).display().to_string();
    let tls = vec![
        "--peer-tls-cert-file".to_owned(),
        p("peer.pem"),
        "--peer-tls-key-file".to_owned(),
        p("peer-key.pem"),
        "--peer-tls-ca-file".to_owned(),
        p("ca.pem"),
    ];
    let c = form("three nodes over peer mTLS", 51, &tls);
    create_topic(&c, "secure", 1, 3);
    let mut leader = None;
    wait("secure/0 led with three voters", || {
        leader = leader_of(&c, "secure", 0, 3);
        leader.is_some()
    });
    let mut acked = BTreeMap::new();
    for i in 0..20u32 {
        let v = format!("r{i}").into_bytes();
        // Leadership may move (to the preferred replica) meanwhile: the leader is found again.
        let mut r = Err(Status::unavailable(""));
        wait("a produce on the leader", || {
            let l = leader_of(&c, "secure", 0, 3).or(leader).unwrap_or(0);
            r = produce(&c.nodes[l], "secure", &v);
            r.is_ok()
        });
        acked.insert(r.unwrap_or(0), v);
    }
    check_everywhere(&c, "secure", &acked);
}

/// What `n` logged after its first `from` bytes of log.
fn log_since(n: &Node, from: usize) -> String {
    n.log().get(from..).unwrap_or_default().to_owned()
}

/// Whether `node`'s replica of `topic`/0 is a voter its leader (of a group of `voters`)
/// counts caught up.
fn caught_up(c: &Cluster, topic: &str, voters: usize, node: u64) -> bool {
    leader_of(c, topic, 0, voters)
        .and_then(|l| c.nodes[l].describe())
        .is_some_and(|d| {
            d.partitions
                .iter()
                .filter(|p| p.topic == topic && p.partition == 0)
                .flat_map(|p| p.replicas.iter())
                .any(|r| r.node == node && r.voter && r.progress_known && r.lag == 0)
        })
}

/// Voters of `topic`/0 as its leader reports them.
fn voters_of(c: &Cluster, topic: &str) -> Option<Vec<u64>> {
    partition_voters(c, topic, 0)
}

/// Voters of `topic`/`partition` as its leader reports them.
fn partition_voters(c: &Cluster, topic: &str, partition: u32) -> Option<Vec<u64>> {
    c.nodes.iter().find_map(|n| {
        let d = n.describe()?;
        let p = d
            .partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)?;
        (p.local && p.leader == d.node_id && p.leader != 0).then(|| {
            let mut v: Vec<u64> = p
                .replicas
                .iter()
                .filter(|r| r.voter)
                .map(|r| r.node)
                .collect();
            v.sort_unstable();
            v
        })
    })
}

/// Raft id of each node, by index, from the registry (by RPC address).
fn raft_ids(c: &Cluster) -> Vec<u64> {
    let mut d = None;
    wait("the registry", || {
        d = c.nodes.iter().find_map(Node::describe);
        d.as_ref().is_some_and(|d| d.nodes.len() >= c.nodes.len())
    });
    let d = d.unwrap_or_default();
    c.nodes
        .iter()
        .map(|n| {
            d.nodes
                .iter()
                .find(|x| x.rpc_addr == n.rpc.to_string())
                .map_or(0, |x| x.id)
        })
        .collect()
}

/// Of a four-node cluster (Raft ids `ids`) whose topic `events` has one partition on the
/// first three nodes and a dead-node timeout short enough: kill -9s a replica of events/0
/// that leads neither it nor the controller, and waits until the partition's voters are the
/// other three nodes (re-created on the fourth). Returns the victim and those voters.
fn kill_a_follower_and_see_events_re_created(c: &mut Cluster, ids: &[u64]) -> (usize, Vec<u64>) {
    let ctl = controller_leader(c);
    let lead = leader_of(c, "events", 0, 3).unwrap_or(0);
    let victim = (0..3).find(|&i| i != ctl && i != lead).unwrap_or(2);
    c.nodes[victim].kill9();
    let mut expected: Vec<u64> = (0..4).filter(|&i| i != victim).map(|i| ids[i]).collect();
    expected.sort_unstable();
    wait("events/0 re-created on the fourth node", || {
        voters_of(c, "events").as_deref() == Some(&expected[..])
    });
    (victim, expected)
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_fourth_node_joins_a_dead_node_is_replaced_and_a_node_is_removed() {
    let timeout = ["--dead-node-timeout".to_owned(), "3s".to_owned()];
    let mut c = form("join, dead-node timeout, remove", 61, &timeout);
    create_topic(&c, "events", 1, 3);
    let mut leader = None;
    wait("events/0 led with three voters", || {
        leader = leader_of(&c, "events", 0, 3);
        leader.is_some()
    });
    let mut acked = BTreeMap::new();
    for i in 0..20u32 {
        let v = format!("e{i}").into_bytes();
        let mut r = Err(Status::unavailable(""));
        wait("a produce on the leader", || {
            let l = leader_of(&c, "events", 0, 3).unwrap_or(0);
            r = produce(&c.nodes[l], "events", &v);
            r.is_ok()
        });
        acked.insert(r.unwrap_or(0), v);
    }

    // A fourth node joins: registered, a learner of the controller (three voters at most).
    let join = c.nodes[0].gossip.clone();
    let mut args = timeout.to_vec();
    args.extend(["--start-join-addrs".to_owned(), join]);
    let n4 = Node::start(c.dir(), "n4", "127.0.0.64", &args);
    c.nodes.push(n4);
    wait("the fourth node serving", || c.nodes[3].serving());
    let ids = raft_ids(&c);
    wait("the fourth node a learner of the controller", || {
        c.nodes.iter().filter_map(Node::describe).any(|d| {
            d.partitions.first().is_some_and(|p| {
                p.leader == d.node_id
                    && p.replicas.iter().filter(|r| r.voter).count() == 3
                    && p.replicas.iter().any(|r| r.node == ids[3] && r.learner)
            })
        })
    });

    // The fourth node holds no replica of events/0: a write there names a replica to go to.
    // (A node that forwards produces to the leader answers it instead.)
    if let Err(s) = produce(&c.nodes[3], "events", b"elsewhere") {
        assert!(s.message.contains("not the leader"), "{s:?}");
    }

    // kill -9 a replica of events/0 that leads neither it nor the controller: past the
    // dead-node timeout it is removed and its replica re-created on the fourth node.
    let (victim, _) = kill_a_follower_and_see_events_re_created(&mut c, &ids);
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    for &i in &survivors {
        for (&o, v) in &acked {
            let mut got = Err(Status::unavailable(""));
            wait("acknowledged records on the new replica", || {
                got = consume(&c.nodes[i], "events", o);
                got.is_ok()
            });
            assert_eq!(got.as_ref().ok(), Some(v), "offset {o} on node {}", ids[i]);
        }
    }
    let d = c.nodes[controller_leader(&c)].describe().expect("describe");
    assert!(
        d.nodes.iter().any(|n| n.id == ids[victim] && n.removed),
        "{:?}",
        d.nodes
    );

    // `cluster remove` of a live replica: it leaves the group (two voters remain, no third
    // node is free), and the partition keeps its records and a leader.
    let ctl = controller_leader(&c);
    let gone = survivors
        .iter()
        .copied()
        .find(|&i| i != ctl)
        .unwrap_or(survivors[0]);
    // Through the node being removed, which does not lead the controller: it names the
    // leader, and the CLI follows.
    let (ok, out, err) = common::run_cli(
        c.nodes[gone].rpc,
        &["cluster", "remove", &ids[gone].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    let mut left: Vec<u64> = survivors
        .iter()
        .filter(|&&i| i != gone)
        .map(|&i| ids[i])
        .collect();
    left.sort_unstable();
    wait("the removed node out of events/0", || {
        voters_of(&c, "events").as_deref() == Some(&left[..])
    });
    let (ok, out, err) = common::run_cli(c.nodes[ctl].rpc, &["cluster", "describe"], None);
    assert!(ok && out.contains("removed"), "{out}{err}");
    let cluster_id = d.cluster_id.clone();

    // The first node restarted with --bootstrap (still in its flags): a no-op, same cluster.
    c.nodes[0].kill9();
    c.nodes[0].spawn();
    wait("the first node serving again", || c.nodes[0].serving());
    wait("the first node back in its cluster", || {
        c.nodes[0]
            .describe()
            .is_some_and(|d| d.cluster_id == cluster_id && d.node_id == ids[0])
    });
    assert!(c.nodes[0].log().contains("already belongs to cluster"));

    // A node of another cluster is refused: bootstrapped alone, then pointed at this one.
    let other = Node::start(c.dir(), "n5", "127.0.0.65", &["--bootstrap".to_owned()]);
    c.nodes.push(other);
    wait("the other cluster's node serving", || c.nodes[4].serving());
    c.nodes[4].kill9();
    let join = c.nodes[0].gossip.clone();
    c.nodes[4].args.retain(|a| a != "--bootstrap");
    c.nodes[4]
        .args
        .extend(["--start-join-addrs".to_owned(), join]);
    c.nodes[4].spawn();
    wait("the stranger refused", || {
        c.nodes[4].log().contains("belongs to cluster")
    });
    let d = c.nodes[0].describe().expect("describe");
    assert!(
        d.nodes
            .iter()
            .all(|n| n.rpc_addr != c.nodes[4].rpc.to_string()),
        "{:?}",
        d.nodes
    );
}

/// A node given `--bootstrap` and `--start-join-addrs` (the first node of the deploy
/// manifests) bootstraps only where no member at those addresses belongs to a cluster: at
/// its first start, the others up but joining (no cluster), it does at once; started again
/// on a wiped data directory while the others run, it joins their cluster as a new member,
/// not as node 1 (it remembers no vote), rather than bootstrapping a second cluster beside
/// it, and serves the records acknowledged before.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_bootstrap_node_given_join_addresses_joins_the_cluster_it_finds() {
    bootstrap_with_join_addresses("bootstrap with join addresses", 161, false);
}

/// The same over peer mutual TLS (the deploy manifests' mtls overlay), the first node
/// started alone: given no gossip key by anyone within the probe, it creates the key and
/// bootstraps (no member runs with its key: none to find); wiped, it is given the key by
/// the others and joins them.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_bootstrap_node_given_join_addresses_joins_the_cluster_it_finds_over_peer_tls() {
    bootstrap_with_join_addresses("bootstrap with join addresses, peer TLS", 165, true);
}

/// The first node's data directory wiped, and the node started again with `--bootstrap` and
/// join addresses while every member it names is down: nothing answers its probe, so it
/// bootstraps a second cluster (and, alone, serves it). It is restarted before the others
/// are back: what it bootstrapped by probing is kept in cluster.meta. Once the others are
/// back (their cluster, without it, elects as before), their refusal of its registration
/// shows it: it is not ready and refuses produces, UNAVAILABLE naming the way out; its
/// refusals never keep the others from registering with each other; and restarted again,
/// with nobody to refuse it this time, it is fenced from its start (cluster.meta keeps
/// that too), never acknowledging a produce, and admits no new node.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_second_cluster_started_by_mistake_serves_no_client_once_the_first_is_back() {
    second_cluster_by_mistake("a second cluster by mistake", 45, false);
}

/// The same over peer mutual TLS: the stray, given the gossip key by none of the members it
/// names (all down), creates its own, so the two clusters drop each other's gossip; it asks
/// the members at its join addresses directly, over peer TLS, and their refusal shows it.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_second_cluster_started_by_mistake_over_peer_tls_serves_no_client_once_the_first_is_back() {
    second_cluster_by_mistake("a second cluster by mistake, peer TLS", 55, true);
}

fn second_cluster_by_mistake(name: &'static str, first_ip: u8, peer_tls: bool) {
    let certs = tempfile::tempdir().unwrap();
    let mut tls = Vec::new();
    if peer_tls {
        cert(certs.path(), &["ca"]);
        let ips: Vec<String> = (0..4)
            .map(|i| format!("127.0.0.{}", first_ip + i))
            .collect();
        let mut args = vec!["peer"];
        args.extend(ips.iter().map(String::as_str));
        args.extend(["--name", "peer"]);
        cert(certs.path(), &args);
        for (flag, file) in [
            ("--peer-tls-cert-file", "peer.pem"),
            ("--peer-tls-key-file", "peer-key.pem"),
            ("--peer-tls-ca-file", "ca.pem"),
        ] {
            tls.extend([
                flag.to_owned(),
                certs.path().join(file).display().to_string(),
            ]);
        }
    }
    let mut c = form(name, first_ip, &tls);
    let mut acked = BTreeMap::new();
    wait("a produce", || match produce(&c.nodes[1], "", b"before") {
        Ok(offset) => {
            acked.insert(offset, b"before".to_vec());
            true
        }
        Err(_) => false,
    });
    wait("default/0 with three voters", || {
        leader_of(&c, "default", 0, 3).is_some()
    });
    for n in &mut c.nodes {
        n.kill9();
    }
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    let others = format!("{},{}", c.nodes[1].gossip, c.nodes[2].gossip);
    c.nodes[0]
        .args
        .extend(["--start-join-addrs".to_owned(), others]);
    // The others name one another too (as pods name every other): with peer TLS the stray,
    // whose key is another, cannot bring their gossip together.
    let all = format!(
        "{},{},{}",
        c.nodes[0].gossip, c.nodes[1].gossip, c.nodes[2].gossip
    );
    for n in &mut c.nodes[1..] {
        if let Some(i) = n.args.iter().position(|a| a == "--start-join-addrs") {
            n.args[i + 1] = all.clone();
        }
    }
    let first_run = c.nodes[0].log().len();
    c.nodes[0].spawn();
    wait("the wiped node bootstrapping a cluster of its own", || {
        log_since(&c.nodes[0], first_run).contains("bootstrapping a new cluster")
    });
    wait("the second cluster serving", || c.nodes[0].serving());
    c.nodes[0].kill9();
    let second_run = c.nodes[0].log().len();
    c.nodes[0].spawn();
    wait("the stray restarted as its own cluster's node", || {
        log_since(&c.nodes[0], second_run).contains("already belongs to cluster")
    });
    c.nodes[1].spawn();
    c.nodes[2].spawn();
    wait("the second cluster found out", || {
        log_since(&c.nodes[0], second_run).contains("a second cluster, started by mistake")
    });
    let refused = produce(&c.nodes[0], "", b"to the second cluster").expect_err("refused");
    assert_eq!(refused.code, net::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message.contains("without --bootstrap to join them"),
        "{refused:?}"
    );
    assert!(!c.nodes[0].serving(), "the second cluster reports serving");
    // The first cluster goes on without it.
    wait("a produce to the first cluster", || {
        match produce(&c.nodes[2], "", b"after") {
            Ok(offset) => {
                acked.insert(offset, b"after".to_vec());
                true
            }
            Err(_) => false,
        }
    });
    check_on(&c.nodes[1..], "", &acked);
    for n in &c.nodes[1..] {
        let log = n.log();
        assert!(
            !log.contains("a second cluster, started by mistake"),
            "{log}"
        );
    }
    // Restarted with the first cluster down: nobody refuses it, and it serves nobody.
    for n in &mut c.nodes {
        n.kill9();
    }
    c.nodes[0].spawn();
    let mut first_answer = None;
    wait("the restarted stray answering a produce", || {
        match produce(&c.nodes[0], "", b"to the second cluster, restarted") {
            Ok(offset) => first_answer = Some(Ok(offset)),
            Err(st) if st.message.contains("a second cluster") => first_answer = Some(Err(st)),
            Err(_) => {}
        }
        first_answer.is_some()
    });
    let refused = first_answer
        .unwrap()
        .expect_err("the restarted stray refuses produces");
    assert_eq!(refused.code, net::Code::Unavailable, "{refused:?}");
    assert!(!c.nodes[0].serving(), "the restarted stray reports serving");
    // A new node pointed at it is not admitted (it would serve that cluster, unfenced).
    let mut args = tls.clone();
    args.extend(["--start-join-addrs".to_owned(), c.nodes[0].gossip.clone()]);
    let n4 = Node::start(c.dir(), "n4", &format!("127.0.0.{}", first_ip + 3), &args);
    c.nodes.push(n4);
    wait("the new node refused by the stray", || {
        c.nodes[3].log().contains("which admits no node")
    });
    assert!(!c.nodes[3].serving(), "the node the stray refused serves");
}

fn bootstrap_with_join_addresses(name: &'static str, first_ip: u8, peer_tls: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let ips: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.{}", first_ip + i))
        .collect();
    let mut tls = Vec::new();
    if peer_tls {
        let certs = tmp.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        cert(&certs, &["ca"]);
        let mut args = vec!["peer"];
        args.extend(ips.iter().map(String::as_str));
        args.extend(["--name", "peer"]);
        cert(&certs, &args);
        for (flag, file) in [
            ("--peer-tls-cert-file", "peer.pem"),
            ("--peer-tls-key-file", "peer-key.pem"),
            ("--peer-tls-ca-file", "ca.pem"),
        ] {
            tls.extend([flag.to_owned(), certs.join(file).display().to_string()]);
        }
    }
    let mut boot = tls.clone();
    boot.push("--bootstrap".to_owned());
    let (n1, n2, n3) = if peer_tls {
        // Nothing listens at the first node's join address: no member gives it the key.
        boot.extend(["--start-join-addrs".to_owned(), "127.0.0.169:9".to_owned()]);
        let n1 = Node::start(tmp.path(), "n1", &ips[0], &boot);
        let mut join = tls.clone();
        join.extend(["--start-join-addrs".to_owned(), n1.gossip.clone()]);
        let n2 = Node::start(tmp.path(), "n2", &ips[1], &join);
        let n3 = Node::start(tmp.path(), "n3", &ips[2], &join);
        (n1, n2, n3)
    } else {
        // The others start first, joining the first node's address, as pods started at
        // once: they hold no cluster, and say so.
        let port = common::ports::free_port();
        let join = [
            "--start-join-addrs".to_owned(),
            format!("{}:{port}", ips[0]),
        ];
        let n2 = Node::start(tmp.path(), "n2", &ips[1], &join);
        let n3 = Node::start(tmp.path(), "n3", &ips[2], &join);
        let others = format!("{},{}", n2.gossip, n3.gossip);
        boot.extend(["--start-join-addrs".to_owned(), others]);
        let rpc = common::ports::free_port();
        let n1 = Node::start_on_ports(tmp.path(), "n1", &ips[0], rpc, port, &boot);
        (n1, n2, n3)
    };
    let mut c = Cluster::of(name, tmp, vec![n1, n2, n3]);
    for n in &c.nodes {
        wait("every node serving", || n.serving());
    }
    let log = c.nodes[0].log();
    assert!(
        log.contains("no member at --start-join-addrs belongs to a cluster")
            && log.contains("bootstrapping a new cluster"),
        "{log}"
    );
    if peer_tls {
        assert!(log.contains("gave the cluster's gossip key in"), "{log}");
    }
    wait("three controller voters", || controller_voters(&c) == 3);
    let before = c.nodes[1].describe().expect("describe");
    wait("default/0 led with three voters", || {
        leader_of(&c, "default", 0, 3).is_some()
    });
    let mut acked = Vec::new();
    for i in 0..20 {
        let v = format!("before the wipe {i}").into_bytes();
        wait("a produce", || match produce(&c.nodes[1], "", &v) {
            Ok(off) => {
                acked.push((off, v.clone()));
                true
            }
            Err(_) => false,
        });
    }

    // Its data directory lost, the first node starts again with the same flags, now naming
    // the others.
    c.nodes[0].kill9();
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    let others = format!("{},{}", c.nodes[1].gossip, c.nodes[2].gossip);
    let at = c.nodes[0]
        .args
        .iter()
        .position(|a| a == "--start-join-addrs")
        .unwrap();
    c.nodes[0].args[at + 1] = others;
    c.nodes[0].spawn();
    wait("the wiped node serving", || c.nodes[0].serving());
    wait("the wiped node joined", || {
        c.nodes[0].log().contains("joined cluster")
    });
    let log = c.nodes[0].log();
    assert!(
        log.contains("rather than bootstrapping a second one"),
        "{log}"
    );
    if peer_tls {
        assert!(log.contains("obtained the cluster's gossip key"), "{log}");
    }
    assert_eq!(
        log.matches("bootstrapping a new cluster").count(),
        1,
        "bootstrapped again: {log}"
    );
    let d = c.nodes[0].describe().expect("describe the wiped node");
    assert_eq!(d.cluster_id, before.cluster_id);
    let old_ids: Vec<u64> = before.nodes.iter().map(|n| n.id).collect();
    assert!(
        !old_ids.contains(&d.node_id),
        "{} in {old_ids:?}",
        d.node_id
    );
    wait("the others list it", || {
        c.nodes[1]
            .describe()
            .is_some_and(|d2| d2.nodes.iter().any(|n| n.id == d.node_id))
    });
    for (off, v) in &acked {
        wait("an acknowledged record read on the wiped node", || {
            consume(&c.nodes[0], "", *off).is_ok_and(|got| &got == v)
        });
    }
}

/// A node down while a topic it held alone (replication factor 1) was deleted and created
/// again restarts with its controller state from before the deletion: its replica of the
/// old topic elected itself at once and acknowledged appends for ~1.5 s, until the state
/// caught up and dropped the topic with them, and the new topic gave their offsets out again.
/// A restarted node now serves appends and reads only once its state has applied what a
/// member had applied when it answered its registration: every append acknowledged while
/// it starts is in the live topic at its offset.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_restarted_node_takes_no_append_for_a_topic_deleted_while_it_was_down() {
    let stay = ["--leave-on-shutdown=false".to_owned()];
    let mut c = form("no append for a topic deleted while down", 191, &stay);
    create_topic(&c, "t", 3, 1);
    let ids = raft_ids(&c);
    let ctl = controller_leader(&c);
    // A partition held by a node that does not lead the controller.
    let mut found = None;
    wait("t's partitions placed", || {
        let Some(d) = c.nodes[ctl].describe() else {
            return false;
        };
        found = d.partitions.iter().find_map(|p| {
            let holder = p.replicas.first()?.node;
            let i = ids.iter().position(|&id| id == holder)?;
            (p.topic == "t" && i != ctl).then_some((p.partition, i))
        });
        found.is_some()
    });
    let (part, victim) = found.unwrap();
    wait("a produce to the victim's partition", || {
        produce_to(&c.nodes[victim], "t", part, b"of the old topic").is_ok()
    });
    // Stopped (a rolling restart: it stays a member).
    c.nodes[victim].sigterm();
    let other = (0..3).find(|&i| i != victim && i != ctl).unwrap_or(ctl);
    let ch = c.nodes[ctl].channel().expect("connect");
    let _: DeleteTopicResponse = ch
        .unary_prost(
            paths::DELETE_TOPIC,
            &DeleteTopicRequest { name: "t".into() },
            net::client::CallOptions::timeout(Duration::from_secs(30)),
        )
        .expect("delete t");
    create_topic(&c, "t", 3, 2);
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    wait("a produce to the new topic", || {
        match produce_to(&c.nodes[other], "t", part, b"new-a") {
            Ok(o) => {
                acked.insert(o, b"new-a".to_vec());
                true
            }
            Err(_) => false,
        }
    });

    // Down a while longer: the others' transport reconnects to it at its longest backoff
    // (2 s), so its state stays stale for up to that long after it starts. Appends are
    // sent to it from the moment it starts, without pause, until it has been ready for two
    // seconds.
    std::thread::sleep(Duration::from_secs(10));
    c.nodes[victim].spawn();
    let started = std::time::Instant::now();
    let mut ready_at = None;
    let mut refused = 0;
    // One connection, made again only once it fails: a connection per call ran this test
    // process out of file descriptors for the tests after it.
    let mut ch: Option<BlockingChannel> = None;
    for i in 0.. {
        if ch.is_none() {
            ch = c.nodes[victim].channel();
        }
        if let Some(conn) = &ch {
            let v = format!("while starting {i}").into_bytes();
            match produce_on(conn, "t", part, &v) {
                Ok(o) => {
                    assert!(
                        acked.insert(o, v).is_none(),
                        "offset {o} acknowledged twice"
                    );
                }
                Err(e) => {
                    refused += 1;
                    if proglog_client::errors::cluster_error(&e).is_none() {
                        ch = None;
                    }
                }
            }
        }
        if ready_at.is_none() && ch.as_ref().is_some_and(common::cluster::serving_on) {
            ready_at = Some(std::time::Instant::now());
        }
        if ready_at.is_some_and(|r| r.elapsed() > Duration::from_secs(2)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the victim never got ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "{} appends acknowledged while the node started, {refused} refused",
        acked.len()
    );
    for n in [other, victim] {
        let conn = c.nodes[n].channel().expect("connect");
        for (o, v) in &acked {
            let mut got = Err(Status::unavailable(""));
            wait("an acknowledged record read back", || {
                got = consume_on(&conn, "t", part, *o);
                got.is_ok()
            });
            assert_eq!(got.as_ref().ok(), Some(v), "offset {o} on node {}", ids[n]);
        }
    }
}

/// A leader paused (SIGSTOP: alive, silent) loses its leadership to an election among the
/// others. An append sent afterwards to a node that had forwarded appends to the paused one
/// went there again (its remembered leader, corrected only by a forward that fails) and
/// ended at the forward deadline with an unknown outcome, however long after the election,
/// even on the new leader itself. Now a node forwards to the leader its own replica knows.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn an_append_goes_to_the_new_leader_not_to_a_paused_old_one() {
    let c = form("paused leader", 201, &[]);
    create_topic(&c, "p", 1, 3);
    let old = wait_for("p/0 led with three voters by its preferred replica", || {
        preferred_leader_of(&c, "p", 0, 3)
    });
    let ids = raft_ids(&c);
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    // Both others forward an append to the leader: each remembers it.
    for &i in &others {
        wait("an append forwarded to the leader", || {
            produce_to(&c.nodes[i], "p", 0, b"before the pause").is_ok()
        });
    }
    let pid = c.nodes[old]
        .child
        .as_ref()
        .map(|ch| ch.id() as i32)
        .unwrap_or(0);
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let elected = |i: usize| {
        c.nodes[i].describe().is_some_and(|d| {
            d.partitions
                .iter()
                .any(|p| p.topic == "p" && p.leader != 0 && p.leader != ids[old])
        })
    };
    wait("a new leader known to both others", || {
        others.iter().all(|&i| elected(i))
    });
    let results: Vec<Result<u64, Status>> = others
        .iter()
        .map(|&i| produce_to(&c.nodes[i], "p", 0, b"after the election"))
        .collect();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for (r, &i) in results.iter().zip(&others) {
        assert!(r.is_ok(), "append through node {}: {r:?}", ids[i]);
    }
}

/// The first node (started with `--bootstrap` and no join addresses, as in the README's
/// three-node cluster) killed and removed past the dead-node timeout, then restarted with
/// the same flags: its own log never saw the removal, so it asks the members it finds, and
/// is registered again (it stayed outside the controller, asking "not now", for ever).
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn the_first_node_removed_while_down_rejoins_with_its_own_flags() {
    let timeout = ["--dead-node-timeout".to_owned(), "3s".to_owned()];
    let mut c = form("removed while down, back", 151, &timeout);
    create_topic(&c, "spread", 3, 3);
    let ids = raft_ids(&c);
    c.nodes[0].kill9();
    wait("the first node removed", || {
        c.nodes[1]
            .describe()
            .is_some_and(|d| d.nodes.iter().any(|n| n.id == ids[0] && n.removed))
    });
    c.nodes[0].spawn();
    wait("the first node serving again", || c.nodes[0].serving());
    wait("the first node registered again", || {
        c.nodes[1]
            .describe()
            .is_some_and(|d| d.nodes.iter().any(|n| n.id == ids[0] && !n.removed))
    });
    // Its removal was made while it was down: news to it, but no removal while it runs (it
    // registers again as it starts), so no warning to restart it.
    let log = c.nodes[0].log();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("was removed from the cluster")),
        "{log}"
    );
    wait("the first node back among the controller's voters", || {
        c.nodes[1].describe().is_some_and(|d| {
            d.partitions
                .first()
                .is_some_and(|p| p.replicas.iter().any(|r| r.node == ids[0] && r.voter))
        })
    });
    // Its replicas, re-created last in their sets, are made preferred again where the
    // others had two more partitions each: it leads again.
    wait("the first node leading a partition again", || {
        leader_of(&c, "default", 0, 3) == Some(0)
            || (0..3).any(|p| leader_of(&c, "spread", p, 3) == Some(0))
    });
}

/// A node killed and removed past the dead-node timeout, its replica of events/0 re-created
/// on the fourth node, comes back with its data: re-admitted, but with nothing placed on it.
/// Its replica's own configuration still counts it (the removal happened while it was
/// down) and no leader talks to it; once it has heard from none for
/// `--moved-replica-timeout` (3 s here, 30 s by default) it asks the partition's members,
/// which say the group no longer counts it, and it drops the topic.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_node_back_after_its_replica_was_re_created_elsewhere_drops_its_copy() {
    let timeout = ["--dead-node-timeout", "3s", "--moved-replica-timeout", "3s"].map(String::from);
    let mut c = form("back after re-placement", 181, &timeout);
    create_topic(&c, "events", 1, 3);
    wait("events/0 led with three voters", || {
        leader_of(&c, "events", 0, 3).is_some()
    });
    for i in 0..5u32 {
        let v = format!("e{i}").into_bytes();
        wait("a produce on the leader", || {
            let l = leader_of(&c, "events", 0, 3).unwrap_or(0);
            produce(&c.nodes[l], "events", &v).is_ok()
        });
    }
    let join = c.nodes[0].gossip.clone();
    let mut args = timeout.to_vec();
    args.extend(["--start-join-addrs".to_owned(), join]);
    let n4 = Node::start(c.dir(), "n4", "127.0.0.184", &args);
    c.nodes.push(n4);
    wait("the fourth node serving", || c.nodes[3].serving());
    let ids = raft_ids(&c);
    let (victim, expected) = kill_a_follower_and_see_events_re_created(&mut c, &ids);
    assert!(c.nodes[victim].data_dir.join("topics/events/0").exists());

    c.nodes[victim].spawn();
    wait("the node back, serving", || c.nodes[victim].serving());
    wait("the node back re-admitted", || {
        c.nodes[controller_leader(&c)]
            .describe()
            .is_some_and(|d| d.nodes.iter().any(|n| n.id == ids[victim] && !n.removed))
    });
    wait("the node back drops its copy of events", || {
        !c.nodes[victim].data_dir.join("topics/events").exists()
    });
    assert_eq!(voters_of(&c, "events").as_deref(), Some(&expected[..]));
    let log = c.nodes[victim].log();
    assert!(log.contains("no longer counts this node"), "{log}");
    assert!(log.contains("dropped topic \"events\""), "{log}");
}

/// `cluster remove` of a node that is running and leads a partition. The controller's log
/// stops reaching a removed node before the entry that re-places its replicas, so the node
/// never learnt that the partition had moved: it went on leading the group, its followers
/// never campaigned, and the group kept the removed voter (found by `proglog-chaos`, where a
/// node cut off and paused past the dead-node timeout was removed while it led). A removed
/// node hands each group it leads to a caught-up voter, and that leader enacts the new
/// placement.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_node_removed_while_it_leads_a_partition_hands_the_partition_over() {
    let mut c = form("remove a running leader", 101, &[]);
    create_topic(&c, "held", 3, 3);
    let ctl = controller_leader(&c);
    let mut found = None;
    wait(
        "a partition led with three voters by a node that does not lead the controller",
        || {
            found = (0..3).find_map(|p| {
                leader_of(&c, "held", p, 3)
                    .filter(|&l| l != ctl)
                    .map(|l| (p, l))
            });
            found.is_some()
        },
    );
    let (part, victim) = found.unwrap_or((0, 1));
    let mut acked = BTreeMap::new();
    for i in 0..10u32 {
        let v = format!("held-{i}").into_bytes();
        let mut r = Err(Status::unavailable(""));
        wait("a produce on the partition's leader", || {
            r = produce_to(&c.nodes[victim], "held", part, &v);
            r.is_ok()
        });
        acked.insert(r.unwrap_or(0), v);
    }

    let ids = raft_ids(&c);
    let (ok, out, err) = common::run_cli(
        c.nodes[ctl].rpc,
        &["cluster", "remove", &ids[victim].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    // Removed again: nothing changes, and the CLI says so.
    let (ok, again, err) = common::run_cli(
        c.nodes[ctl].rpc,
        &["cluster", "remove", &ids[victim].to_string()],
        None,
    );
    assert!(ok && again.contains("was removed already"), "{again}{err}");
    // The node still runs; the partition's group is down to the two others.
    let stay: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let mut left: Vec<u64> = stay.iter().map(|&i| ids[i]).collect();
    left.sort_unstable();
    wait("the removed node out of the group it led", || {
        partition_voters(&c, "held", part).as_deref() == Some(&left[..])
    });
    assert!(
        c.nodes[victim].describe().is_some(),
        "the removed node stopped answering"
    );
    // Not ready any more (gRPC health NOT_SERVING, /readyz 503): a load balancer stops
    // sending it clients, saying why.
    wait("the removed node no longer serving", || {
        !c.nodes[victim].serving()
    });
    let (ok, out, err) = common::run_cli(c.nodes[victim].rpc, &["health"], None);
    assert!(!ok && out.trim() == "NOT_SERVING", "{out}{err}");
    assert!(
        c.nodes[victim].log().contains("leadership handed to"),
        "{}",
        c.nodes[victim].log()
    );
    // Asked directly (a client pinned to it, a load balancer not yet told), it refuses
    // produces and reads at once, saying it was removed: UNAVAILABLE without the NO_LEADER
    // reason, which would have a client retry there for ever (it waited 2 s for a leader of
    // a group it no longer follows, then 5 s for a read index). Its log says so once.
    let first = acked.keys().next().copied().unwrap_or(0);
    for what in ["produce", "consume"] {
        let started = std::time::Instant::now();
        let r = match what {
            "produce" => produce_to(&c.nodes[victim], "held", part, b"on the removed node").err(),
            _ => consume_from(&c.nodes[victim], "held", part, first).err(),
        };
        let e = r.unwrap_or_else(|| panic!("a {what} on the removed node was served"));
        assert_eq!(e.code, net::Code::Unavailable, "{what}: {e:?}");
        assert!(
            e.message.contains("was removed from the cluster") && e.message.contains("restart it"),
            "{what}: {e:?}"
        );
        assert!(
            proglog_client::errors::cluster_error(&e).is_none(),
            "{what}: no NO_LEADER/NOT_LEADER reason: {e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: refused after {:?}",
            started.elapsed()
        );
    }
    let removal_warnings = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("WARN  consensus::cluster:")
                    && l.contains("was removed from the cluster")
            })
            .count()
    };
    let log = c.nodes[victim].log();
    assert_eq!(removal_warnings(&log), 1, "{log}");

    // It takes writes on its new leader, and nothing acknowledged before went missing.
    let mut r = Err(Status::unavailable(""));
    wait("a produce on the new leader", || {
        r = match leader_of(&c, "held", part, 2) {
            Some(l) => produce_to(&c.nodes[l], "held", part, b"after"),
            None => Err(Status::unavailable("no leader")),
        };
        r.is_ok()
    });
    acked.insert(r.unwrap_or(0), b"after".to_vec());
    for &i in &stay {
        for (&o, v) in &acked {
            let mut got = Err(Status::unavailable(""));
            wait("acknowledged records on the replicas that stay", || {
                got = consume_from(&c.nodes[i], "held", part, o);
                got.is_ok()
            });
            assert_eq!(got.as_ref().ok(), Some(v), "offset {o} on node {}", ids[i]);
        }
    }

    // Restarted, it registers again; restarted again, its controller log holds the removal
    // and the registration after it, history that it does not report again as news.
    c.nodes[victim].kill9();
    c.nodes[victim].spawn();
    wait("the removed node registered again", || {
        c.nodes[victim]
            .log()
            .contains("registered with the controller again")
    });
    wait("the removed node serving again", || {
        c.nodes[victim].serving()
    });
    c.nodes[victim].sigterm();
    c.nodes[victim].spawn();
    wait("the node serving again", || c.nodes[victim].serving());
    let log = c.nodes[victim].log();
    assert_eq!(removal_warnings(&log), 1, "{log}");
}

/// A node wiped and added back as a new member is placed on the `default` topic last of all
/// (the controller raises that topic's replicas after the others); killed and restarted
/// before the controller writes anything else, it recovers a controller log whose last
/// entry (that placement) is past the commit index its log carries. Until the controller's
/// leader confirms that entry, the applied state places `default/0` elsewhere: dropping the
/// replica then deleted a voter's log (and the node's shard panicked at the leader's next
/// heartbeat, "to_commit is out of range"). Found by `proglog-chaos --nodes 3`. A node drops
/// a replica only once everything in its controller log is applied and known committed.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_restart_right_after_a_placement_keeps_the_replica_it_placed() {
    let mut c = form("restart right after the last placement", 71, &[]);
    // Partitions re-placed before `default` (topics go by name): the new member's promotion
    // in the controller is over by the time `default` is placed on it, the last entry.
    create_topic(&c, "alpha", 4, 3);
    let mut leader = None;
    wait("default/0 led with three voters", || {
        leader = leader_of(&c, "default", 0, 3);
        leader.is_some()
    });
    let mut acked = BTreeMap::new();
    for i in 0..10u32 {
        let v = format!("d{i}").into_bytes();
        let mut r = Err(Status::unavailable(""));
        wait("a produce on the leader", || {
            let l = leader_of(&c, "default", 0, 3).unwrap_or(0);
            r = produce(&c.nodes[l], "default", &v);
            r.is_ok()
        });
        acked.insert(r.unwrap_or(0), v);
    }
    let ids = raft_ids(&c);
    let ctl = controller_leader(&c);
    let lead = leader_of(&c, "default", 0, 3).unwrap_or(0);
    let victim = (0..3).find(|&i| i != ctl && i != lead).unwrap_or(2);
    let name = format!("n{}", victim + 1);
    let (ok, out, err) = common::run_cli(
        c.nodes[ctl].rpc,
        &["cluster", "remove", &ids[victim].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    c.nodes[victim].kill9();
    std::fs::remove_dir_all(&c.nodes[victim].data_dir).expect("wipe");
    c.nodes[victim].spawn();
    wait("the wiped node serving as a new member", || {
        c.nodes[victim].serving()
    });
    let mut new_id = 0;
    wait(
        "the new member placed on default/0 with three voters",
        || {
            new_id = c
                .nodes
                .iter()
                .filter_map(Node::describe)
                .find_map(|d| {
                    d.nodes
                        .iter()
                        .find(|n| n.name == name && !n.removed)
                        .map(|n| n.id)
                })
                .unwrap_or(0);
            new_id != 0
                && voters_of(&c, "default").is_some_and(|v| v.len() == 3 && v.contains(&new_id))
        },
    );
    check_everywhere(&c, "default", &acked);
    let before = c.nodes[victim].log().len();
    c.nodes[victim].kill9();
    c.nodes[victim].spawn();
    wait("the new member serving again", || c.nodes[victim].serving());
    check_everywhere(&c, "default", &acked);
    wait("default/0 led with three voters again", || {
        voters_of(&c, "default").is_some_and(|v| v.len() == 3 && v.contains(&new_id))
    });
    // The leader's heartbeats reached it (what made a replica dropped by mistake panic).
    std::thread::sleep(Duration::from_secs(2));
    check_everywhere(&c, "default", &acked);
    let log = c.nodes[victim].log();
    let after = &log[before.min(log.len())..];
    assert!(
        !after.contains("dropped topic \"default\"") && !after.contains("panicked"),
        "the restarted node dropped the replica placed on it:\n{after}"
    );
}

/// The stopped node's own view of `topic`/0: (leader, stopped).
fn own_view(n: &Node, topic: &str) -> Option<(u64, bool)> {
    let d = n.describe()?;
    let p = d
        .partitions
        .iter()
        .find(|p| p.topic == topic && p.partition == 0 && p.local)?;
    Some((p.leader, p.stopped))
}

/// Records of 60 KB produced to `s`/0's leader (a 2 MiB segment rolls every 35 or so),
/// and what was acknowledged: an error never counts.
#[derive(Default)]
struct BigRecords {
    acked: BTreeMap<u64, Vec<u8>>,
    next: u32,
}

impl BigRecords {
    fn produce_one(&mut self, c: &Cluster) {
        let mut v = format!("r{}-", self.next).into_bytes();
        v.resize(60_000, b'x');
        self.next += 1;
        let l = leader_of(c, "s", 0, 3).unwrap_or(0);
        if let Ok(o) = produce(&c.nodes[l], "s", &v) {
            assert!(
                self.acked.insert(o, v).is_none(),
                "offset {o} acknowledged twice"
            );
        }
    }
}

/// Creates topic `s` (one partition, three replicas, 2 MiB segments: a replica rolls soon,
/// and a roll cannot create its next file once its directory is gone) and returns the index
/// of its leader once it has three voters.
fn create_small_segment_topic(c: &Cluster) -> Option<usize> {
    create_small_segment_topic_with(c, 1)
}

/// [`create_small_segment_topic`] with `partitions` partitions.
fn create_small_segment_topic_with(c: &Cluster, partitions: u32) -> Option<usize> {
    let ctl = controller_leader(c);
    let ch = c.nodes[ctl].channel().expect("connect");
    let r: Result<CreateTopicResponse, Status> = ch.unary_prost(
        paths::CREATE_TOPIC,
        &CreateTopicRequest {
            name: "s".into(),
            config: Some(TopicConfig {
                partitions,
                replication_factor: 3,
                segment_bytes: 2 << 20,
                ..Default::default()
            }),
        },
        net::client::CallOptions::timeout(Duration::from_secs(30)),
    );
    r.expect("create topic s");
    // Each partition led by its preferred replica (leadership goes there as soon as it is
    // caught up), so that the leader a test finds here does not move a moment later.
    let mut lead = None;
    wait(
        "every partition of s led by its preferred replica with three voters",
        || {
            lead = preferred_leader_of(c, "s", 0, 3);
            lead.is_some() && (1..partitions).all(|p| preferred_leader_of(c, "s", p, 3).is_some())
        },
    );
    lead
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_leader_whose_log_fails_stops_leading_and_its_node_still_takes_produces() {
    let c = form("a leader's log fails", 81, &[]);
    let lead = create_small_segment_topic(&c);
    let l = lead.unwrap_or(0);
    let other = (l + 1) % 3;
    let value = vec![b'x'; 60_000];
    wait("a produce to s", || {
        produce(&c.nodes[l], "s", &value).is_ok()
    });

    // Its partition's directory taken away under the open log: a real I/O error at the
    // next segment, made without privileges.
    std::fs::remove_dir_all(c.nodes[l].data_dir.join("topics/s/0")).expect("remove");
    wait("the leader's replica of s/0 stopped", || {
        // Appends reach it through another node until it fails (errors are expected).
        let _ = produce(&c.nodes[other], "s", &value);
        own_view(&c.nodes[l], "s").is_some_and(|(_, stopped)| stopped)
    });
    let (leader, _) = own_view(&c.nodes[l], "s").unwrap_or_default();
    println!("the stopped former leader reports leader {leader}");
    assert_eq!(
        leader, 0,
        "a stopped replica leads nothing and knows no leader"
    );
    let mut next = None;
    wait("another leader of s/0", || {
        next = leader_of(&c, "s", 0, 3);
        next.is_some()
    });
    assert_ne!(next, Some(l));
    assert_eq!(own_view(&c.nodes[l], "s").map(|v| v.0), Some(0));

    // A produce made on the stopped node goes to the new leader.
    let mut got = Err(Status::unavailable("not tried"));
    wait("a produce through the stopped node", || {
        got = produce(&c.nodes[l], "s", b"through the stopped node");
        if let Err(e) = &got {
            assert_eq!(e.code, net::Code::Unavailable, "{e:?}");
        }
        got.is_ok()
    });
    let offset = got.unwrap_or(0);
    let on_leader = consume(&c.nodes[next.unwrap_or(0)], "s", offset).expect("consume");
    assert_eq!(on_leader, b"through the stopped node");

    // `cluster describe` through it names the stopped replica.
    let (ok, out, err) = common::run_cli(c.nodes[l].rpc, &["cluster", "describe"], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("stopped: s/0 on node"), "{out}");
    // A failed log, not a lost one: a restart brings it back.
    assert!(
        out.contains("failed: an I/O error, or damaged data"),
        "{out}"
    );
}

/// Three nodes formed from `first_ip` with `extra` flags, topic `s` made by
/// [`create_small_segment_topic_with`], then a fourth node (`first_ip` + 3), free to take a
/// replica of s/0. Returns the cluster, the Raft ids, the controller's leader, the leader of
/// s/0, and a victim among the first three that leads neither (its reports are forwarded).
fn four_with_a_victim(
    name: &'static str,
    first_ip: u8,
    partitions: u32,
    extra: &[String],
) -> (Cluster, Vec<u64>, usize, usize, usize) {
    let mut c = form(name, first_ip, extra);
    create_small_segment_topic_with(&c, partitions);
    let join = c.nodes[0].gossip.clone();
    let mut args = extra.to_vec();
    args.extend(["--start-join-addrs".to_owned(), join]);
    let ip = format!("127.0.0.{}", first_ip + 3);
    let n4 = Node::start(c.dir(), "n4", &ip, &args);
    c.nodes.push(n4);
    wait("the fourth node serving", || c.nodes[3].serving());
    let ids = raft_ids(&c);
    let ctl = controller_leader(&c);
    let l = leader_of(&c, "s", 0, 3).unwrap_or(0);
    let victim = (0..3).find(|&i| i != ctl && i != l).unwrap_or(2);
    (c, ids, ctl, l, victim)
}

/// A follower whose partition log fails (its directory taken away) stops that replica until
/// its server restarts, while the node stays up in gossip (so the dead-node removal never
/// acts). Past `--stopped-replica-grace` the node tells the controller (its command
/// forwarded to the controller's leader on another node), which moves the replica to the
/// fourth node: the group's leader adds it, promotes it, removes the stopped voter. The
/// partition is back to three voters on live nodes, every acknowledged record on each, and
/// the stopped node is still a member of the cluster.
/// Of a four-node cluster whose topic `s` has one partition on three nodes: stops `victim`'s
/// replica of s/0 (its directory deleted, then produced to until the replica stops), waits
/// until s/0's voters are the three other nodes, and checks every acknowledged record on each
/// of them.
fn stop_the_victims_replica_and_see_it_moved(
    c: &Cluster,
    victim: usize,
    ids: &[u64],
    big: &mut BigRecords,
) {
    std::fs::remove_dir_all(c.nodes[victim].data_dir.join("topics/s/0")).expect("remove");
    wait("the victim's replica of s/0 stopped", || {
        big.produce_one(c);
        own_view(&c.nodes[victim], "s").is_some_and(|(_, stopped)| stopped)
    });
    for _ in 0..5 {
        big.produce_one(c);
    }

    let mut expected: Vec<u64> = (0..4).filter(|&i| i != victim).map(|i| ids[i]).collect();
    expected.sort_unstable();
    wait(
        "s/0 moved off the stopped replica to the fourth node",
        || voters_of(c, "s").as_deref() == Some(&expected[..]),
    );
    for _ in 0..5 {
        big.produce_one(c);
    }
    assert!(
        big.acked.len() >= 10,
        "{} records acknowledged",
        big.acked.len()
    );
    for n in (0..4).filter(|&i| i != victim) {
        for (&o, v) in &big.acked {
            let mut got = Err(Status::unavailable(""));
            wait("acknowledged records on every live replica", || {
                got = consume(&c.nodes[n], "s", o);
                got.is_ok()
            });
            assert!(
                got.as_ref().ok() == Some(v),
                "offset {o} on node {} differs from what was acknowledged",
                ids[n]
            );
        }
    }
}

#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_replica_whose_log_fails_is_moved_to_a_free_node() {
    let grace = ["--stopped-replica-grace".to_owned(), "2s".to_owned()];
    let (c, ids, ctl, l, victim) = four_with_a_victim("a stopped replica moves", 91, 1, &grace);
    println!(
        "controller leader node {}, s/0 leader node {}, stopped replica on node {}",
        ids[ctl], ids[l], ids[victim]
    );
    let mut big = BigRecords::default();
    for _ in 0..5 {
        big.produce_one(&c);
    }
    stop_the_victims_replica_and_see_it_moved(&c, victim, &ids, &mut big);

    // The stopped node is still a member, serving, and no longer holds s.
    let d = c.nodes[ctl].describe().expect("describe");
    assert!(
        d.nodes.iter().any(|n| n.id == ids[victim] && !n.removed),
        "{:?}",
        d.nodes
    );
    assert!(c.nodes[victim].serving());
    wait("the stopped node drops its copy of s", || {
        own_view(&c.nodes[victim], "s").is_none()
    });
    let log = c.nodes[victim].log();
    assert!(log.contains("asking the controller to move it"), "{log}");
    assert!(log.contains("dropped topic \"s\""), "{log}");
    for l in log
        .lines()
        .filter(|l| l.contains("s/0") || l.contains("topic \"s\""))
    {
        println!("stopped node: {l}");
    }
    let moved = c
        .nodes
        .iter()
        .any(|n| n.log().contains("(its log failed) moves"));
    assert!(moved, "no controller leader logged the move");
    println!(
        "{} acknowledged records on the three live replicas; topics/s on the stopped node: {}",
        big.acked.len(),
        c.nodes[victim].data_dir.join("topics/s").exists()
    );
    // The stopped replica's node asked for the move through the controller's leader (a
    // forwarded proposal): taken, never refused.
    c.assert_no_peer_message_refused();
}

/// Stops node `n`'s process for `d` (SIGSTOP, then SIGCONT), so that the groups it leads
/// elect another leader meanwhile: every other replica of them takes a new term.
fn pause(n: &Node, d: Duration) {
    let Some(pid) = n.child.as_ref().map(|c| c.id().to_string()) else {
        return;
    };
    let signal = |s: &str| {
        std::process::Command::new("kill")
            .args([s, pid.as_str()])
            .status()
            .is_ok_and(|st| st.success())
    };
    assert!(signal("-STOP"), "SIGSTOP to {pid}");
    std::thread::sleep(d);
    assert!(signal("-CONT"), "SIGCONT to {pid}");
}

/// A node whose controller replica stopped (its log's directory taken away, then a new
/// controller term, whose `raft.meta` it cannot write) and then a data replica (its directory
/// taken away too) cannot send `replica_stopped` through its controller replica: it relays
/// the command over the peer channel to another member, and the controller moves the stopped
/// replica to the free fourth node as in
/// [`a_replica_whose_log_fails_is_moved_to_a_free_node`], with every acknowledged record. The
/// node stays a member (up in gossip). Its controller replica, reported stopped too, is left
/// out of the controller's group; the node then starts it afresh and asks to be counted
/// again, is added back and caught up, and so learns that s/0 moved: it drops its copy.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_stopped_replica_is_moved_when_its_nodes_controller_replica_stopped_too() {
    let grace = ["--stopped-replica-grace".to_owned(), "2s".to_owned()];
    let (c, ids, ctl, l, victim) =
        four_with_a_victim("a stopped replica moves, relayed", 161, 1, &grace);
    println!(
        "controller leader node {}, s/0 leader node {}, stopped replicas on node {}",
        ids[ctl], ids[l], ids[victim]
    );
    let mut big = BigRecords::default();
    for _ in 0..5 {
        big.produce_one(&c);
    }

    // The controller replica first, so that no report can go through it.
    let ctl_dir = c.nodes[victim].data_dir.join("topics/__cluster/0");
    std::fs::remove_dir_all(&ctl_dir).expect("remove the controller's directory");
    wait("the victim's controller replica stopped", || {
        if own_view(&c.nodes[victim], "__cluster").is_some_and(|(_, stopped)| stopped) {
            return true;
        }
        let ctl = controller_leader(&c);
        pause(&c.nodes[ctl], Duration::from_secs(3));
        false
    });

    stop_the_victims_replica_and_see_it_moved(&c, victim, &ids, &mut big);

    // The placement as the controller's leader describes it: s/0 no longer on the victim,
    // which is still a member.
    let mut d = None;
    wait(
        "s/0 placed off the victim in the controller's state",
        || {
            d = c.nodes[controller_leader(&c)].describe();
            d.as_ref().is_some_and(|d| {
                d.partitions
                    .iter()
                    .find(|p| p.topic == "s" && p.partition == 0)
                    .is_some_and(|p| p.replicas.iter().all(|r| r.node != ids[victim]))
            })
        },
    );
    let d = d.expect("describe");
    assert!(
        d.nodes.iter().any(|n| n.id == ids[victim] && !n.removed),
        "{:?}",
        d.nodes
    );
    let log = c.nodes[victim].log();
    assert!(log.contains("asking the controller to move it"), "{log}");
    assert!(log.contains("controller command relayed to node"), "{log}");

    // The controller replica comes back afresh: counted again, following the leader, with
    // the controller's state (s/0 placed elsewhere, so s is dropped there).
    let victim_id = ids[victim];
    wait(
        "the victim's controller replica started afresh and counted again",
        || {
            let fresh = own_view(&c.nodes[victim], "__cluster")
                .is_some_and(|(leader, stopped)| leader != 0 && !stopped);
            let counted = c.nodes[controller_leader(&c)].describe().is_some_and(|d| {
                d.partitions
                    .iter()
                    .find(|p| p.topic == "__cluster")
                    .is_some_and(|p| p.replicas.iter().any(|r| r.node == victim_id))
            });
            fresh && counted
        },
    );
    wait("the victim drops its copy of s, placed elsewhere", || {
        !c.nodes[victim].data_dir.join("topics/s").exists()
    });
    wait("the victim serving again", || c.nodes[victim].serving());
    let log = c.nodes[victim].log();
    assert!(log.contains("started afresh"), "{log}");
    for l in log
        .lines()
        .filter(|l| l.contains("s/0") || l.contains("controller"))
    {
        println!("stopped node: {l}");
    }
}

/// Of a three-node cluster, node `victim` (by index) is killed, its controller replica's
/// directory (`topics/__cluster/0`) deleted (or, `emptied`, its files deleted and the
/// directory kept), and the node restarted: its controller log is found lost (the directory
/// missing although the catalog lists it, or there without its `partition.meta`), so the
/// replica opens stopped, with no state to replay. The node registers, reports the replica stopped
/// (relayed), is left out of the controller's group, starts the replica afresh once a
/// member that marks it stopped says so, and is added back: it serves again, counted in the
/// controller's group, with the same cluster id, and a topic created afterwards on another
/// node is opened on it.
fn lose_the_controller_log_and_recover(
    name: &'static str,
    first_ip: u8,
    victim_first: bool,
    emptied: bool,
) {
    let grace = ["--stopped-replica-grace".to_owned(), "2s".to_owned()];
    let mut c = form(name, first_ip, &grace);
    let ids = raft_ids(&c);
    let ctl = controller_leader(&c);
    let victim = if victim_first {
        0
    } else {
        (1..3).find(|&i| i != ctl).unwrap_or(2)
    };
    let victim_id = ids[victim];
    let cluster_id = c.nodes[ctl].describe().expect("describe").cluster_id;
    println!(
        "controller leader node {}, the controller log lost on node {victim_id}",
        ids[ctl]
    );

    c.nodes[victim].kill9();
    // Only what the restarted node logs is looked at (the log file is appended to).
    let first_run = c.nodes[victim].log().len();
    let ctl_dir = c.nodes[victim].data_dir.join("topics/__cluster/0");
    let found = if emptied {
        empty_out(&ctl_dir);
        "was emptied"
    } else {
        std::fs::remove_dir_all(&ctl_dir).expect("remove the controller's directory");
        "was missing at start"
    };
    c.nodes[victim].spawn();
    wait("the restarted node's controller log found lost", || {
        c.nodes[victim].log().contains(found)
    });

    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    wait(
        "the victim's controller replica started afresh and counted again",
        || {
            let running = own_view(&c.nodes[victim], "__cluster")
                .is_some_and(|(leader, stopped)| leader != 0 && !stopped);
            let counted = others.iter().any(|&i| {
                c.nodes[i].describe().is_some_and(|d| {
                    d.controller_leader == d.node_id
                        && d.partitions
                            .iter()
                            .find(|p| p.topic == "__cluster")
                            .is_some_and(|p| p.replicas.iter().any(|r| r.node == victim_id))
                })
            }) || c.nodes[victim]
                .describe()
                .is_some_and(|d| d.controller_leader == d.node_id && d.node_id == victim_id);
            running && counted
        },
    );
    wait("the victim serving again", || c.nodes[victim].serving());
    wait("three controller voters again", || {
        common::cluster::controller_voters(&c) == 3
    });
    let d = c.nodes[victim].describe().expect("describe the victim");
    assert_eq!(d.cluster_id, cluster_id, "one cluster, the same");
    assert_eq!(d.node_id, victim_id);
    assert_eq!(d.nodes.len(), 3, "{:?}", d.nodes);

    // A topic created afterwards, through the controller's leader on another node.
    let mut via = controller_leader(&c);
    if via == victim {
        via = others[0];
    }
    let ch = c.nodes[via].channel().expect("connect");
    let r: Result<CreateTopicResponse, Status> = ch.unary_prost(
        paths::CREATE_TOPIC,
        &CreateTopicRequest {
            name: "after".into(),
            config: Some(TopicConfig {
                partitions: 1,
                replication_factor: 3,
                ..Default::default()
            }),
        },
        net::client::CallOptions::timeout(Duration::from_secs(30)),
    );
    if let Err(e) = &r {
        // Not the leader (it moved): through the one it names.
        println!(
            "create topic through node {}: {e}; through the leader",
            ids[via]
        );
        create_topic(&c, "after", 1, 3);
    }
    wait("the topic created afterwards opened on the victim", || {
        own_view(&c.nodes[victim], "after").is_some_and(|(leader, stopped)| leader != 0 && !stopped)
    });
    let value = b"after the controller log came back".to_vec();
    let mut offset = None;
    wait("a produce to the new topic", || {
        offset = produce(&c.nodes[via], "after", &value).ok();
        offset.is_some()
    });
    let offset = offset.unwrap_or(0);
    let mut got = Err(Status::unavailable(""));
    wait("the record read on the victim", || {
        got = consume(&c.nodes[victim], "after", offset);
        got.is_ok()
    });
    assert_eq!(got.ok(), Some(value));

    let log = log_since(&c.nodes[victim], first_run);
    assert!(log.contains("started afresh"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("bootstrapping a new cluster"), "{log}");
    assert!(!log.contains("timed out waiting for"), "{log}");
    for l in log.lines().filter(|l| l.contains("controller")) {
        println!("victim: {l}");
    }
}

/// [`lose_the_controller_log_and_recover`] on a node that is not node 1.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_node_whose_controller_log_is_lost_at_start_recovers_it() {
    lose_the_controller_log_and_recover("a controller log lost at start", 191, false, false);
}

/// [`lose_the_controller_log_and_recover`] on node 1, the bootstrapper: its start does not
/// wait to bootstrap (nor fail), and it starts no second cluster.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn the_first_node_whose_controller_log_is_lost_at_start_recovers_it() {
    lose_the_controller_log_and_recover("node 1's controller log lost at start", 201, true, false);
}

/// [`lose_the_controller_log_and_recover`] with the directory emptied, not deleted, on a node
/// that is not node 1: before partition marks it opened as an empty log, a voter of the
/// controller's group that remembered no vote and none of the entries it acknowledged.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_node_whose_controller_directory_is_emptied_at_start_recovers_it() {
    lose_the_controller_log_and_recover("a controller directory emptied", 211, false, true);
}

/// [`lose_the_controller_log_and_recover`] with the directory emptied, not deleted, on node 1:
/// before partition marks it was bootstrapped again with node 1 as its only voter, a second
/// controller of the same cluster id.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn the_first_node_whose_controller_directory_is_emptied_at_start_recovers_it() {
    lose_the_controller_log_and_recover("node 1's controller directory emptied", 221, true, true);
}

/// Deletes every file and directory in `dir`, keeping `dir` itself (`rm -rf dir/*`).
fn empty_out(dir: &std::path::Path) {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("list the directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove a directory in it");
        } else {
            std::fs::remove_file(&path).expect("remove a file in it");
        }
        n += 1;
    }
    assert!(n > 0, "{} held nothing", dir.display());
}

/// Of a four-node cluster whose topic `s` has one partition on three nodes, a follower of
/// s/0 is killed, its directory `topics/s/0` emptied (the directory kept), and the node
/// restarted: the replica is found emptied at start and opens stopped, marked lost, before it
/// could vote (before partition marks it opened as an empty voter of its first configuration,
/// until the leader's next heartbeat named entries it no longer held). It is moved to the
/// fourth node, and every acknowledged record reads the same through every node.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_follower_whose_data_directory_is_emptied_at_start_is_replaced() {
    emptied_follower_is_replaced(Deleted::All, "was emptied");
}

/// [`a_follower_whose_data_directory_is_emptied_at_start_is_replaced`], every file deleted
/// but the partition's mark (`partition.meta`, what the engine's own check looks for): the
/// Raft group finds its metadata gone in a log it opened before, and the replica opens
/// stopped, marked lost, all the same (before, it opened as an empty voter of its first
/// configuration with no vote record).
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_follower_whose_files_but_the_partition_mark_are_deleted_at_start_is_replaced() {
    emptied_follower_is_replaced(
        Deleted::AllBut("partition.meta"),
        "its Raft metadata (raft.meta",
    );
}

/// [`a_follower_whose_data_directory_is_emptied_at_start_is_replaced`], the newest segment's
/// files alone deleted (`.log` and `.index`): everything else is there, and the log left
/// reaches past every configuration change (a shorter, valid log), so only the log's record
/// of its segments (`segments.meta`) shows it; the replica opens stopped, marked lost.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_follower_whose_newest_segment_is_deleted_at_start_is_replaced() {
    emptied_follower_is_replaced(Deleted::NewestSegment, "its newest segment");
}

/// A sealed segment of a follower cut short while it was down (its file truncated): found
/// at open from the sealed length `segments.meta` records, stopped, and moved.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_follower_whose_sealed_segment_is_cut_short_at_start_is_replaced() {
    emptied_follower_is_replaced(Deleted::SealedSegmentCut, "100 bytes were cut");
}

/// A byte inside a record of the middle of a follower's active segment flipped while it was
/// down (valid batches after it): recovery finds damage that no interrupted write leaves,
/// keeps the bytes from there in `<base>.log.damaged-at-<byte>`, marks the log lost and cuts
/// it; the replica opens stopped, marked lost, and is moved like the others.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_follower_with_damage_in_its_active_segment_is_replaced() {
    emptied_follower_is_replaced(Deleted::DamagedActive, "that no interrupted write leaves");
}

/// A byte inside a record of a follower's sealed segment flipped while it was down, where
/// recovery does not look: the replica opens and runs. A read of that record on its node is
/// served by another replica (never the damaged bytes, never an error), and the node logs
/// the damage; the replica stays in its group, which takes appends and serves every other
/// record on every node as before.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_follower_with_damage_in_a_sealed_segment_serves_its_reads_from_another_replica() {
    let (mut c, ids, _, _, victim) = four_with_a_victim("damage in a sealed segment", 231, 1, &[]);
    let mut big = BigRecords::default();
    // 2 MiB segments roll every 35 or so of these.
    for _ in 0..45 {
        big.produce_one(&c);
    }
    c.nodes[victim].kill9();
    let first_run = c.nodes[victim].log().len();
    let dir = c.nodes[victim].data_dir.join("topics/s/0");
    let logs = segment_logs(&dir);
    assert!(logs.len() >= 2, "{} segments: {logs:?}", logs.len());
    let sealed = &logs[0];
    let mut bytes = std::fs::read(sealed).expect("read the sealed segment");
    // The first record's value: `r<n>-` then 'x' to 60,000 bytes.
    let dash = bytes
        .windows(9)
        .position(|w| w == b"-xxxxxxxx")
        .expect("a record in the sealed segment");
    let start = bytes[..dash]
        .iter()
        .rposition(|&b| b == b'r')
        .expect("the record's name");
    let name = bytes[start..=dash].to_vec();
    let at = dash + 1000;
    assert_eq!(bytes[at], b'x', "inside the record's value");
    bytes[at] = b'y';
    std::fs::write(sealed, &bytes).expect("write the damaged segment back");
    let (&offset, value) = big
        .acked
        .iter()
        .find(|(_, v)| v.starts_with(&name))
        .map(|(o, v)| (o, v.clone()))
        .expect("the damaged record was acknowledged");

    c.nodes[victim].spawn();
    wait("the damaged replica's node serving", || {
        c.nodes[victim].serving()
    });
    let got = NodeReader::new(&c.nodes[victim]).read_back("s", offset);
    assert_eq!(
        got, value,
        "offset {offset} read on the damaged replica's node"
    );
    // The replica stays, caught up, in its group.
    for _ in 0..3 {
        big.produce_one(&c);
    }
    let victim_id = ids[victim];
    wait("the damaged replica caught up", || {
        caught_up(&c, "s", 3, victim_id)
    });
    check_everywhere(&c, "s", &big.acked);
    let log = log_since(&c.nodes[victim], first_run);
    assert!(
        log.contains("this node's replica cannot serve offset") && log.contains("checksum"),
        "{log}"
    );
    assert!(!log.contains("is marked lost"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// What is deleted of the victim's `topics/s/0` while it is down.
enum Deleted {
    /// Every file.
    All,
    /// Every file but this one.
    AllBut(&'static str),
    /// The newest segment's files (after enough records for a roll).
    NewestSegment,
    /// Nothing deleted: the segment before the newest cut 100 bytes short.
    SealedSegmentCut,
    /// Nothing deleted: a byte of the third record's value in the active segment flipped.
    DamagedActive,
}

/// The segment data files (`.log`) in `dir`, oldest first.
fn segment_logs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

/// The victim's `topics/s/0` files deleted as `deleted` says, and the reason its log says
/// the replica was found lost.
fn emptied_follower_is_replaced(deleted: Deleted, why: &str) {
    let grace = ["--stopped-replica-grace".to_owned(), "2s".to_owned()];
    let (mut c, ids, _, _, victim) = four_with_a_victim("a data directory emptied", 231, 1, &grace);
    let mut big = BigRecords::default();
    // 2 MiB segments roll every 35 or so of these.
    let n = if matches!(deleted, Deleted::NewestSegment | Deleted::SealedSegmentCut) {
        45
    } else {
        5
    };
    for _ in 0..n {
        big.produce_one(&c);
    }
    c.nodes[victim].kill9();
    let first_run = c.nodes[victim].log().len();
    let dir = c.nodes[victim].data_dir.join("topics/s/0");
    match deleted {
        Deleted::All => empty_out(&dir),
        Deleted::AllBut(keep) => {
            let bytes = std::fs::read(dir.join(keep)).expect("read the kept file");
            empty_out(&dir);
            std::fs::write(dir.join(keep), bytes).expect("put the kept file back");
        }
        Deleted::DamagedActive => {
            let logs = segment_logs(&dir);
            let active = logs.last().expect("an active segment");
            let mut bytes = std::fs::read(active).expect("read the active segment");
            // Records are `r<n>-` and 'x' to 60,000 bytes; ones after the third follow it.
            let at = bytes
                .windows(3)
                .position(|w| w == b"r2-")
                .expect("the third record in the active segment")
                + 1000;
            assert_eq!(bytes[at], b'x', "inside the third record's value");
            bytes[at] = b'y';
            std::fs::write(active, &bytes).expect("write the damaged segment back");
        }
        Deleted::NewestSegment | Deleted::SealedSegmentCut => {
            let logs = segment_logs(&dir);
            assert!(logs.len() >= 2, "{} segments: {logs:?}", logs.len());
            if matches!(deleted, Deleted::SealedSegmentCut) {
                let sealed = &logs[logs.len() - 2];
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(sealed)
                    .expect("open the sealed segment");
                let len = f.metadata().expect("stat").len();
                f.set_len(len - 100).expect("cut it");
            } else {
                let newest = &logs[logs.len() - 1];
                std::fs::remove_file(newest).expect("rm .log");
                std::fs::remove_file(newest.with_extension("index")).expect("rm .index");
            }
        }
    }
    c.nodes[victim].spawn();
    // Stopped, not the node, and said lost (a restart would not help).
    let mut lost = false;
    wait("the emptied replica stopped, not the node", || {
        big.produce_one(&c);
        let view = c.nodes[victim].describe().and_then(|d| {
            d.partitions
                .into_iter()
                .find(|p| p.topic == "s" && p.partition == 0 && p.local)
        });
        lost = view.as_ref().is_some_and(|p| p.lost);
        view.is_some_and(|p| p.stopped)
    });
    assert!(lost, "the stopped replica is not reported lost");
    // The CLI says so too (within --stopped-replica-grace, before the replica is moved).
    let (ok, out, err) = common::run_cli(c.nodes[victim].rpc, &["cluster", "describe"], None);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("stopped: s/0 on node") && out.contains("its log is lost"),
        "{out}"
    );
    let mut expected: Vec<u64> = (0..4).filter(|&i| i != victim).map(|i| ids[i]).collect();
    expected.sort_unstable();
    wait(
        "s/0 moved off the emptied replica to the fourth node",
        || {
            big.produce_one(&c);
            voters_of(&c, "s").as_deref() == Some(&expected[..])
        },
    );
    for _ in 0..3 {
        big.produce_one(&c);
    }
    assert!(
        big.acked.len() >= 8,
        "{} records acknowledged",
        big.acked.len()
    );
    check_everywhere(&c, "s", &big.acked);
    let log = log_since(&c.nodes[victim], first_run);
    // Found at start and opened stopped, not stopped later by a leader's heartbeat.
    assert!(log.contains(why), "{log}");
    assert!(log.contains("is marked lost"), "{log}");
    if matches!(deleted, Deleted::DamagedActive) {
        // The cut bytes were kept for the operator, named in the log.
        assert!(log.contains(".log.damaged-at-"), "{log}");
    }
    assert!(!log.contains("entries it acknowledged are gone"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A node started with `--leave-on-shutdown=false` and stopped with SIGTERM stops without
/// leaving: the controller's leader sees it down but keeps it a member, and keeps its replica
/// of s/0 where it is although the fourth node is free to take it (a clean leave would have
/// the node removed and the replica re-created there within a second or two). A topic created
/// while it is down gets a replica on it too. Restarted, the node catches up the records
/// acknowledged while it was away, and s/0 keeps its voters.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_node_stopped_without_leaving_keeps_its_replicas_and_catches_up() {
    let stay = ["--leave-on-shutdown=false".to_owned()];
    let (mut c, ids, _, _, victim) = four_with_a_victim("a stop without leaving", 171, 1, &stay);
    let mut before = None;
    wait("s/0 with three voters", || {
        before = voters_of(&c, "s").filter(|v| v.len() == 3);
        before.is_some()
    });
    let before = before.unwrap_or_default();
    assert!(before.contains(&ids[victim]), "{before:?}");
    let mut big = BigRecords::default();
    for _ in 0..5 {
        big.produce_one(&c);
    }

    let status = c.nodes[victim].sigterm();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    let victim_id = ids[victim];
    let seen_by_leader = |c: &Cluster| {
        let d = c.nodes[controller_leader(c)].describe()?;
        d.nodes
            .iter()
            .find(|n| n.id == victim_id)
            .map(|n| (n.live, n.removed))
    };
    wait("the controller's leader sees the stopped node down", || {
        seen_by_leader(&c).is_some_and(|(live, _)| !live)
    });
    // `cluster describe` marks its replica, which the group still counts as a voter.
    let ctl = c.nodes[controller_leader(&c)].rpc;
    let mark = format!("{victim_id}/0 voter");
    wait(
        "cluster describe marking the stopped node's replica",
        || {
            let (ok, out, _) = common::run_cli(ctl, &["cluster", "describe"], None);
            ok && out.lines().any(|l| {
                l.starts_with("s/0 ")
                    && l.split(", ")
                        .any(|r| r.contains(&mark) && r.ends_with(" unreachable"))
            })
        },
    );
    // A clean leave is acted on at the controller's next pass: over five seconds, nothing.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let seen = seen_by_leader(&c);
        assert!(
            seen.is_none_or(|(_, removed)| !removed),
            "node {victim_id} removed although it did not leave"
        );
        if let Some(v) = voters_of(&c, "s") {
            assert_eq!(v, before, "s/0 re-placed although its node did not leave");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A topic created meanwhile with a replica on every node, the stopped one too (a rolling
    // restart must not leave it short for good): the three live nodes are a majority of its
    // four replicas, so it takes appends at once; the stopped node opens its replica when
    // it is back, and catches up.
    common::cluster::create_topic(&c, "r", 1, 4);
    wait("r/0 with four voters", || {
        partition_voters(&c, "r", 0).is_some_and(|v| v.len() == 4 && v.contains(&victim_id))
    });
    let via = (victim + 1) % c.nodes.len();
    let mut r_acked = BTreeMap::new();
    for i in 0..5 {
        let v = format!("r while node {victim_id} is down: {i}").into_bytes();
        wait("a produce to r", || match produce(&c.nodes[via], "r", &v) {
            Ok(offset) => {
                r_acked.insert(offset, v.clone());
                true
            }
            Err(_) => false,
        });
    }
    for _ in 0..5 {
        big.produce_one(&c);
    }

    c.nodes[victim].spawn();
    wait("the restarted node serving", || c.nodes[victim].serving());
    wait("the restarted node caught up on s/0", || {
        caught_up(&c, "s", 3, victim_id)
    });
    assert_eq!(voters_of(&c, "s").as_deref(), Some(&before[..]));
    // Its replica of r/0, placed while it was down, opened and caught up.
    wait("the restarted node caught up on r/0", || {
        caught_up(&c, "r", 4, victim_id)
    });
    assert!(
        big.acked.len() >= 8,
        "{} records acknowledged",
        big.acked.len()
    );
    check_everywhere(&c, "s", &big.acked);
    check_everywhere(&c, "r", &r_acked);
    let log = c.nodes[victim].log();
    assert!(
        log.contains("stopping without leaving the cluster"),
        "{log}"
    );
    assert!(!log.contains("gossip: leaving the cluster"), "{log}");
}

/// A follower whose log fails is marked stopped by the controller past
/// `--stopped-replica-grace`, but no node is free to take its place (three nodes, three
/// replicas), so it stays placed.
///
/// - Its directory comes back (renamed away, then back) and its server restarts: the replica
///   reopens and catches up, and the node withdraws the mark (`replica_recovered`), so that a
///   node joining later does not have the healthy replica moved.
/// - Its directory is deleted and its server restarts: the engine finds the directory the
///   catalog names missing and marks the log lost, and the replica opens stopped, saying so,
///   while the node serves on. (Before, it started empty as a new voter and could vote until
///   the leader's next heartbeat named entries it no longer held, on which raft-rs panicked:
///   "to_commit 39 is out of range [last_index 3]".)
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_stopped_replica_whose_log_returns_is_kept_and_one_whose_log_is_gone_stops() {
    let grace = ["--stopped-replica-grace".to_owned(), "2s".to_owned()];
    let mut c = form("a stopped replica restarted", 111, &grace);
    create_small_segment_topic(&c);
    let ids = raft_ids(&c);
    let ctl = controller_leader(&c);
    let l = leader_of(&c, "s", 0, 3).unwrap_or(0);
    let victim = (0..3).find(|&i| i != ctl && i != l).unwrap_or(2);
    let mut big = BigRecords::default();
    let dir = c.nodes[victim].data_dir.join("topics/s/0");
    let away = c.nodes[victim].data_dir.join("topics/s/0.away");
    let marked = format!(
        "replica of s/0 on node {} stopped: to be moved",
        ids[victim]
    );
    let withdrawn = format!("replica of s/0 on node {} runs again: stays", ids[victim]);
    let count = |n: &Node, what: &str| n.log().matches(what).count();

    // The directory goes away (a roll cannot create its next file), then comes back.
    std::fs::rename(&dir, &away).expect("rename away");
    wait("the stopped replica marked by the controller", || {
        big.produce_one(&c);
        count(&c.nodes[ctl], &marked) == 1
    });
    c.nodes[victim].kill9();
    std::fs::rename(&away, &dir).expect("rename back");
    c.nodes[victim].spawn();
    wait("the restarted node serving", || c.nodes[victim].serving());
    wait("the mark withdrawn", || {
        c.nodes.iter().all(|n| count(n, &withdrawn) == 1)
    });
    assert!(
        c.nodes[victim]
            .log()
            .contains("this replica, marked stopped, runs again"),
        "{}",
        c.nodes[victim].log()
    );
    assert!(
        c.nodes
            .iter()
            .all(|n| !n.log().contains("(its log failed) moves")),
        "moved although no node was free"
    );
    // Still a voter, and it catches up with every acknowledged record.
    for _ in 0..3 {
        big.produce_one(&c);
    }
    let mut all: Vec<u64> = ids.clone();
    all.sort_unstable();
    assert_eq!(voters_of(&c, "s").as_deref(), Some(&all[..]));
    for (&o, v) in &big.acked {
        let mut got = Err(Status::unavailable(""));
        wait("acknowledged records on the restarted replica", || {
            got = consume(&c.nodes[victim], "s", o);
            got.is_ok()
        });
        assert!(got.as_ref().ok() == Some(v), "offset {o} differs");
    }

    // Now the directory is deleted for good, and the server restarted.
    std::fs::remove_dir_all(&dir).expect("remove");
    wait("the stopped replica marked again", || {
        big.produce_one(&c);
        count(&c.nodes[ctl], &marked) == 2
    });
    c.nodes[victim].kill9();
    c.nodes[victim].spawn();
    wait("the restarted node serving", || c.nodes[victim].serving());
    wait("the emptied replica stopped, not the node", || {
        big.produce_one(&c);
        own_view(&c.nodes[victim], "s").is_some_and(|(_, stopped)| stopped)
    });
    let log = c.nodes[victim].log();
    // Found missing at start and opened stopped, before it could vote as a new replica.
    assert!(log.contains("was missing at start"), "{log}");
    assert!(log.contains("is marked lost"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(c.nodes[victim].serving());
    // The other two carry the partition.
    let before = big.acked.len();
    wait("produces on the two others", || {
        big.produce_one(&c);
        big.acked.len() >= before + 3
    });
}

/// A topic deleted while one of its replicas' nodes is down (kill -9: the node stays a
/// member): the answer names that node as one that has not learned of the deletion (it
/// would take appends to the topic meanwhile, were it only cut off); the topic is dropped
/// on that node once it is back and has caught up with the controller: its data does not
/// stay on the disk for ever.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_topic_deleted_while_a_node_is_down_is_dropped_there_when_it_returns() {
    let mut c = form("a topic deleted while a node is down", 121, &[]);
    create_small_segment_topic(&c);
    let mut big = BigRecords::default();
    for _ in 0..3 {
        big.produce_one(&c);
    }
    let ctl = controller_leader(&c);
    let victim = (0..3).find(|&i| i != ctl).unwrap_or(1);
    let victim_id = raft_ids(&c)[victim];
    let topic_dir = |n: &Node| n.data_dir.join("topics/s");
    assert!(topic_dir(&c.nodes[victim]).exists());
    c.nodes[victim].kill9();

    let ch = c.nodes[ctl].channel().expect("connect");
    let r: Result<DeleteTopicResponse, Status> = ch.unary_prost(
        paths::DELETE_TOPIC,
        &DeleteTopicRequest { name: "s".into() },
        net::client::CallOptions::timeout(Duration::from_secs(30)),
    );
    let r = r.expect("delete topic s");
    assert_eq!(r.not_yet_on, vec![victim_id], "{r:?}");
    wait("the topic's data gone on the running nodes", || {
        (0..3)
            .filter(|&i| i != victim)
            .all(|i| !topic_dir(&c.nodes[i]).exists())
    });

    c.nodes[victim].spawn();
    wait("the returning node serving", || c.nodes[victim].serving());
    wait("the topic's data gone on the returning node", || {
        !topic_dir(&c.nodes[victim]).exists()
    });
    // Logged once the deletion returns, which is after the directory left its place.
    wait(
        "the returning node's log saying it dropped the topic",
        || c.nodes[victim].log().contains("dropped topic \"s\""),
    );
}

/// Once DeleteTopic has answered, no node acknowledges a produce to the topic: every live
/// node has applied the deletion by then and refuses appends to the replica it still holds
/// until its reconcile pass drops it. Produced first on the partition's leader when the
/// controller's leader is another node (the deletion reaches it last). Before the fence, one
/// round in five (a CLI started right after `topics delete`) got an offset for a record
/// that went with the topic.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn no_produce_is_acknowledged_after_a_topic_delete_answered() {
    let c = form("no produce acknowledged after a delete", 241, &[]);
    for round in 0..8 {
        let topic = format!("gone{round}");
        create_topic(&c, &topic, 1, 3);
        let mut leader = None;
        wait("the topic led with three voters", || {
            leader = leader_of(&c, &topic, 0, 3);
            leader.is_some()
        });
        let leader = leader.unwrap_or(0);
        // Connections open and every node's route to the leader known.
        for n in &c.nodes {
            wait("a produce through every node", || {
                produce(n, &topic, b"before").is_ok()
            });
        }
        let ctl = controller_leader(&c);
        let ch = c.nodes[ctl].channel().expect("connect");
        let order: Vec<usize> = std::iter::once(leader)
            .chain((0..3).filter(|&i| i != leader))
            .collect();
        let chans: Vec<_> = order
            .iter()
            .map(|&i| c.nodes[i].channel().expect("connect"))
            .collect();
        let r: Result<DeleteTopicResponse, Status> = ch.unary_prost(
            paths::DELETE_TOPIC,
            &DeleteTopicRequest {
                name: topic.clone(),
            },
            net::client::CallOptions::timeout(Duration::from_secs(30)),
        );
        let r = r.expect("delete topic");
        assert!(r.not_yet_on.is_empty(), "every node up: {r:?}");
        for (&i, ch) in order.iter().zip(&chans) {
            let r: Result<ProduceResponse, Status> = ch.unary_prost(
                paths::PRODUCE,
                &ProduceRequest {
                    record: Some(Record {
                        value: b"after".to_vec().into(),
                        ..Default::default()
                    }),
                    topic: topic.clone(),
                    partition: 0,
                },
                opts(),
            );
            match r {
                Err(st) if st.code == net::Code::NotFound => {}
                other => panic!(
                    "round {round}: a produce on node {} (partition leader {}, controller \
                     leader {}) after the delete answered: {other:?}",
                    i + 1,
                    leader + 1,
                    ctl + 1
                ),
            }
        }
    }
}

/// A replica whose log failed, moved to a free fourth node while its node keeps another
/// partition of the topic, is closed on its node and its directory removed: placed there
/// again later (the fourth node removed), it is opened empty, added and caught up like a new
/// replica, with every acknowledged record, instead of staying a stopped voter.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_stopped_replica_moved_away_starts_afresh_and_can_be_placed_back() {
    let grace = ["--stopped-replica-grace".to_owned(), "2s".to_owned()];
    let (c, ids, ctl, _, victim) =
        four_with_a_victim("a moved replica starts afresh", 131, 2, &grace);
    let mut three: Vec<u64> = (0..3).map(|i| ids[i]).collect();
    three.sort_unstable();
    assert_eq!(partition_voters(&c, "s", 1).as_deref(), Some(&three[..]));

    let mut big = BigRecords::default();
    for _ in 0..5 {
        big.produce_one(&c);
    }
    std::fs::remove_dir_all(c.nodes[victim].data_dir.join("topics/s/0")).expect("remove");
    let mut moved: Vec<u64> = (0..4).filter(|&i| i != victim).map(|i| ids[i]).collect();
    moved.sort_unstable();
    wait("s/0 moved to the fourth node", || {
        big.produce_one(&c);
        partition_voters(&c, "s", 0).as_deref() == Some(&moved[..])
    });
    wait("the victim's replica of s/0 closed and removed", || {
        c.nodes[victim].log().contains(
            "s/0: this replica, stopped and moved to another node, is closed and its data \
             removed",
        )
    });
    assert!(!c.nodes[victim].data_dir.join("topics/s/0").exists());
    assert!(c.nodes[victim].data_dir.join("topics/s/1").exists());

    // The fourth node goes: s/0 is short of a replica, and only the victim is free.
    let (ok, out, err) = common::run_cli(
        c.nodes[ctl].rpc,
        &["cluster", "remove", &ids[3].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    wait("s/0 back on the first three nodes", || {
        big.produce_one(&c);
        partition_voters(&c, "s", 0).as_deref() == Some(&three[..])
    });
    for (&o, v) in &big.acked {
        let mut got = Err(Status::unavailable(""));
        wait("acknowledged records on the replica placed back", || {
            got = consume(&c.nodes[victim], "s", o);
            got.is_ok()
        });
        assert!(got.as_ref().ok() == Some(v), "offset {o} differs");
    }
    println!(
        "{} acknowledged records of s/0 on the replica placed back",
        big.acked.len()
    );
}

/// Voters of every partition of `topic` (`partitions` of them) as each partition's leader
/// reports them, once each has `rf` voters and no learner.
fn settled_voters(c: &Cluster, topic: &str, partitions: u32, rf: usize) -> Option<Vec<Vec<u64>>> {
    (0..partitions)
        .map(|p| {
            c.nodes.iter().find_map(|n| {
                let d = n.describe()?;
                let e = d
                    .partitions
                    .iter()
                    .find(|e| e.topic == topic && e.partition == p)?;
                let voters: Vec<u64> = e
                    .replicas
                    .iter()
                    .filter(|r| r.voter)
                    .map(|r| r.node)
                    .collect();
                (e.local
                    && e.leader == d.node_id
                    && e.leader != 0
                    && voters.len() == rf
                    && !e.replicas.iter().any(|r| r.learner))
                .then_some(voters)
            })
        })
        .collect()
}

/// Which partitions of `topic` node `n` holds, by its data directory and by its own view
/// (`local` in DescribeCluster: a group open there): `(partition, directory, open)`.
fn held_by(n: &Node, topic: &str, partitions: u32) -> Option<Vec<(u32, bool, bool)>> {
    let d = n.describe()?;
    Some(
        (0..partitions)
            .map(|p| {
                let dir = n.data_dir.join(format!("topics/{topic}/{p}")).exists();
                let open = d
                    .partitions
                    .iter()
                    .any(|e| e.topic == topic && e.partition == p && e.local);
                (p, dir, open)
            })
            .collect(),
    )
}

/// Waits until each node of `nodes` (indexes, Raft ids `ids`) has a directory and an open
/// group for exactly the partitions of `topic` that `voters` place on it.
fn wait_held_as_placed(
    c: &Cluster,
    nodes: &[usize],
    ids: &[u64],
    topic: &str,
    voters: &[Vec<u64>],
) {
    for &i in nodes {
        let want: Vec<(u32, bool, bool)> = voters
            .iter()
            .enumerate()
            .map(|(p, v)| (p as u32, v.contains(&ids[i]), v.contains(&ids[i])))
            .collect();
        let mut got = None;
        let until = std::time::Instant::now() + common::cluster::DEADLINE;
        while std::time::Instant::now() < until {
            got = held_by(&c.nodes[i], topic, voters.len() as u32);
            if got.as_ref() == Some(&want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            got.as_ref(),
            Some(&want),
            "node {} holds (partition, directory, open) other than placed (voters {voters:?})",
            ids[i]
        );
    }
}

/// Produces one record to every partition of `topic` through every node of `nodes`, and
/// reads each back through every one of them (a node holding no replica forwards both).
fn produce_and_consume_everywhere(c: &Cluster, nodes: &[usize], topic: &str, partitions: u32) {
    for p in 0..partitions {
        for &i in nodes {
            let value = format!("{topic}/{p} through node index {i}").into_bytes();
            let mut r = Err(Status::unavailable("not tried"));
            wait(
                &format!("a produce to {topic}/{p} through {}", c.nodes[i].rpc),
                || {
                    r = produce_to(&c.nodes[i], topic, p, &value);
                    r.is_ok()
                },
            );
            let offset = r.unwrap_or(0);
            for &j in nodes {
                let mut got = Err(Status::unavailable("not tried"));
                wait(
                    &format!("{topic}/{p} offset {offset} through {}", c.nodes[j].rpc),
                    || {
                        got = consume_from(&c.nodes[j], topic, p, offset);
                        got.is_ok()
                    },
                );
                assert_eq!(
                    got.ok().as_deref(),
                    Some(&value[..]),
                    "{topic}/{p} at {offset}"
                );
            }
        }
    }
}

/// Four nodes, a topic of four partitions with two replicas each: every node holds (a
/// directory, an open group) only the partitions placed on it, and serves every partition
/// all the same (produce and consume through any node). After `cluster remove` of a node,
/// the replicas re-created elsewhere are opened there, and a node restarted opens again only
/// what is placed on it.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_node_opens_only_the_partitions_placed_on_it() {
    const PARTS: u32 = 4;
    let mut c = form("a node opens only its partitions", 141, &[]);
    let join = c.nodes[0].gossip.clone();
    let n4 = Node::start(
        c.dir(),
        "n4",
        "127.0.0.144",
        &["--start-join-addrs".to_owned(), join],
    );
    c.nodes.push(n4);
    wait("the fourth node serving", || c.nodes[3].serving());
    let ids = raft_ids(&c);
    create_topic(&c, "p", PARTS, 2);
    let mut voters = None;
    wait("every partition of p led with two voters", || {
        voters = settled_voters(&c, "p", PARTS, 2);
        voters.is_some()
    });
    let voters = voters.unwrap_or_default();
    println!("p placed on {voters:?} (nodes {ids:?})");
    let all: Vec<usize> = (0..4).collect();
    wait_held_as_placed(&c, &all, &ids, "p", &voters);
    produce_and_consume_everywhere(&c, &all, "p", PARTS);

    // A node goes: its replicas are re-created on the others, which open them.
    let ctl = controller_leader(&c);
    let gone = (0..4).find(|&i| i != ctl).unwrap_or(1);
    let (ok, out, err) = common::run_cli(
        c.nodes[ctl].rpc,
        &["cluster", "remove", &ids[gone].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    let mut after = None;
    wait(
        "every partition of p re-placed off the removed node",
        || {
            after = settled_voters(&c, "p", PARTS, 2)
                .filter(|v| v.iter().all(|v| !v.contains(&ids[gone])));
            after.is_some()
        },
    );
    let after = after.unwrap_or_default();
    println!("after removing node {}: p placed on {after:?}", ids[gone]);
    assert_ne!(voters, after, "node {} held no replica of p", ids[gone]);
    c.nodes[gone].kill9();
    let rest: Vec<usize> = (0..4).filter(|&i| i != gone).collect();
    wait_held_as_placed(&c, &rest, &ids, "p", &after);
    produce_and_consume_everywhere(&c, &rest, "p", PARTS);

    // Restarted, a node opens what is placed on it, and only that.
    let again = rest.iter().copied().find(|&i| i != ctl).unwrap_or(rest[0]);
    c.nodes[again].kill9();
    c.nodes[again].spawn();
    wait("the restarted node serving", || c.nodes[again].serving());
    wait_held_as_placed(&c, &rest, &ids, "p", &after);
    produce_and_consume_everywhere(&c, &rest, "p", PARTS);
}

/// `topics alter` on a cluster: sent to a node that does not lead the controller (the CLI
/// goes to the leader), committed in the controller's log, and applied at once by every
/// live replica (each trims its own log); a node stopped meanwhile takes the new limits from
/// the controller's state when it comes back, and trims its replica too.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_topics_retention_change_reaches_every_replica_and_a_node_that_was_down() {
    let mut c = form("retention change on every replica", 251, &[]);
    let ctl = controller_leader(&c);
    let (away, asked) = match ctl {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };
    let (ok, _, err) = common::run_cli(
        c.nodes[asked].rpc,
        &[
            "topics",
            "create",
            "r",
            "--segment-bytes",
            "64KiB",
            "--replication-factor",
            "3",
        ],
        None,
    );
    assert!(ok, "{err}");
    wait("r/0 led with three voters", || {
        leader_of(&c, "r", 0, 3).is_some()
    });
    let line = "r".repeat(1000);
    let lines = format!("{line}\n").repeat(1000);
    let (ok, _, err) = common::run_cli(
        c.nodes[asked].rpc,
        &["produce", "--topic", "r", "--batch", "20"],
        Some(&lines),
    );
    assert!(ok, "{err}");
    // (lowest offset, next offset, retention bytes) of node `i`'s replica, as it describes it.
    let replica = |n: &Node| -> Option<(u64, u64, u64)> {
        let (ok, out, _) = common::run_cli(n.rpc, &["topics", "describe", "r", "--json"], None);
        let v: serde_json::Value = serde_json::from_str(out.trim()).ok().filter(|_| ok)?;
        let p = &v["partition_stats"][0];
        Some((
            p["lowest_offset"].as_u64()?,
            p["next_offset"].as_u64()?,
            v["retention_bytes"].as_u64()?,
        ))
    };
    for n in &c.nodes {
        wait("every replica holding the 1,000 records", || {
            replica(n) == Some((0, 1000, 0))
        });
    }
    // Killed, not stopped: a node stopped with SIGTERM leaves the cluster and comes back
    // as a new placement, with the limits of the time.
    c.nodes[away].kill9();

    let (ok, out, err) = common::run_cli(
        c.nodes[asked].rpc,
        &["topics", "alter", "r", "--retention-bytes", "256KiB"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("retention-bytes 262144"), "{out}");
    for i in [ctl, asked] {
        wait("a live replica trimmed to the new limit", || {
            replica(&c.nodes[i]).is_some_and(|(lowest, next, limit)| {
                lowest > 0 && next == 1000 && limit == 256 * 1024
            })
        });
    }
    c.nodes[away].spawn();
    wait("the node that was down serving", || c.nodes[away].serving());
    wait("the node that was down trimming its replica", || {
        replica(&c.nodes[away])
            .is_some_and(|(lowest, next, limit)| lowest > 0 && next == 1000 && limit == 256 * 1024)
    });
    assert!(
        c.nodes[away]
            .log()
            .contains("retention limits now 262144 bytes"),
        "the node that was down says it took the limits"
    );
    // Every replica still serves what it kept, byte for byte, from its own log.
    for n in &c.nodes {
        let (lowest, _, _) = replica(n).expect("describe");
        let ch = n.channel().expect("connect");
        let r = common::consume(&ch, "r", 0, lowest).expect("the lowest offset kept");
        assert_eq!((r.offset, &r.value[..]), (lowest, line.as_bytes()));
    }
}

/// A replica its group never opened (`unopened.meta` beside its mark), of a partition the
/// cluster's state applied on its node does not list, is never opened as that node alone.
/// It happened so: a node's opening of a new topic's replicas failed midway (no file
/// descriptor left), and at its restart its controller state was rebuilt only up to the
/// commit index its log showed, before the topic's creation; the half-made replicas opened
/// with this node as their only voter, elected it leader in a term another replica already
/// led, and the replicas took different records at the same offsets. Here the node's
/// catalog is given such a replica of a topic no state lists (`ghost`): it must stay closed
/// (no election, no leader claim) until the reconcile pass drops the topic, which the
/// controller never created. A topic of that name created afterwards is an ordinary one.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn an_unopened_replica_of_a_partition_its_node_does_not_know_never_leads_alone() {
    let mut c = form("an unopened replica never leads alone", 31, &[]);
    let ctl = controller_leader(&c);
    let x = if ctl == 2 { 1 } else { 2 };
    c.nodes[x].sigterm();
    let data = c.nodes[x].data_dir.clone();
    let mut catalog = engine::catalog::load(&data).expect("the node's catalog");
    catalog.topics.insert(
        "ghost".into(),
        engine::catalog::TopicEntry {
            partitions: 1,
            config: engine::LogConfig::default(),
            held: None,
        },
    );
    engine::catalog::save(&data, &catalog).expect("save the catalog");
    let dir = data.join("topics/ghost/0");
    std::fs::create_dir_all(&dir).expect("the replica's directory");
    engine::meta::write(
        &dir,
        "unopened.meta",
        b"made; not yet opened by its Raft group",
    )
    .expect("unopened.meta");
    engine::meta::write(
        &dir,
        "partition.meta",
        br#"{"version":1,"topic":"ghost","partition":0}"#,
    )
    .expect("partition.meta");
    let before = c.nodes[x].log().len();
    c.nodes[x].spawn();
    wait("the node serving again", || c.nodes[x].serving());
    wait("the unknown topic dropped by the reconcile pass", || {
        c.nodes[x].log()[before..].contains("dropped topic \"ghost\"")
    });
    let log = c.nodes[x].log()[before..].to_string();
    let claims: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"ghost\"/0") && l.contains("leader is node"))
        .collect();
    assert!(
        claims.is_empty(),
        "the unknown replica took part in an election: {claims:?}"
    );
    assert!(
        log.contains(
            "partition \"ghost\"/0: never opened by its group, and not in the cluster's state"
        ),
        "left closed at start: {}",
        log.lines()
            .filter(|l| l.contains("ghost"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!dir.exists(), "dropped with its topic");

    // The name, created for real, is an ordinary topic on every node.
    create_topic(&c, "ghost", 1, 3);
    wait("ghost/0 led with three voters", || {
        leader_of(&c, "ghost", 0, 3).is_some()
    });
    // Through every node in turn (forwarded to the leader); refused ones are not stored.
    let offsets: Vec<u64> = (0..5)
        .map(|i| {
            let mut off = None;
            wait("a produce", || {
                off = produce(&c.nodes[i % 3], "ghost", format!("r{i}").as_bytes()).ok();
                off.is_some()
            });
            off.unwrap_or(u64::MAX)
        })
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    for n in &c.nodes {
        let ch = n.channel().expect("connect");
        for (i, &o) in offsets.iter().enumerate() {
            let mut got = None;
            wait("a committed record read on every node", || {
                got = common::consume(&ch, "ghost", 0, o).ok();
                got.is_some()
            });
            let r = got.unwrap_or_default();
            assert_eq!(&r.value[..], format!("r{i}").as_bytes());
        }
    }
}

/// A replica whose opening failed when its topic was created (the catalog recorded it held,
/// its log could not open: no file descriptor left, or no space) is opened again by the
/// reconcile pass once the cause is gone, and catches up; it stayed closed until a restart,
/// its group one voter short, with nothing reporting it.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn replicas_whose_opening_failed_at_creation_are_opened_once_they_can_be() {
    let c = form("replicas opened after a failed creation", 34, &[]);
    let ctl = controller_leader(&c);
    let x = if ctl == 2 { 1 } else { 2 };
    let limit = common::NofileLimit::of(
        c.nodes[x]
            .child
            .as_ref()
            .map(|ch| ch.id())
            .expect("running"),
    );
    let before = c.nodes[x].log().len();
    // Connected before the limit: the node may have no descriptor left for a connection.
    let chx = c.nodes[x].channel().expect("connect");
    let describe_x = || -> Option<DescribeClusterResponse> {
        chx.unary_prost(
            paths::DESCRIBE_CLUSTER,
            &DescribeClusterRequest {},
            net::client::CallOptions::timeout(Duration::from_secs(5)),
        )
        .ok()
    };
    limit.set(limit.open_now() + 12);
    let partitions = 24u32;
    let ch = c.nodes[ctl].channel().expect("connect");
    let r: Result<CreateTopicResponse, Status> = ch.unary_prost(
        paths::CREATE_TOPIC,
        &CreateTopicRequest {
            name: "wide".into(),
            config: Some(TopicConfig {
                partitions,
                replication_factor: 3,
                ..Default::default()
            }),
        },
        net::client::CallOptions::timeout(Duration::from_secs(30)),
    );
    r.expect("create the topic");
    wait("the node failing to open some of its replicas", || {
        c.nodes[x].log()[before..].contains("Too many open files")
    });
    // DescribeCluster names them, with the error.
    let not_open = |d: &DescribeClusterResponse| -> Vec<(u32, String)> {
        d.partitions
            .iter()
            .filter(|r| r.topic == "wide" && !r.not_open.is_empty())
            .map(|r| (r.partition, r.not_open.clone()))
            .collect()
    };
    let mut shown = Vec::new();
    wait("DescribeCluster naming the replicas not open", || {
        shown = describe_x().map(|d| not_open(&d)).unwrap_or_default();
        !shown.is_empty()
    });
    assert!(
        shown
            .iter()
            .all(|(_, why)| why.contains("Too many open files")),
        "{shown:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    limit.restore();
    // Every replica of the node open: counted by its group, or stopped (one whose log a
    // failed write latched meanwhile is reported stopped and moved, as any I/O error).
    let entry = |d: &DescribeClusterResponse, p: u32| {
        d.partitions
            .iter()
            .find(|r| r.topic == "wide" && r.partition == p && r.local)
            .cloned()
    };
    let counted = |r: &PartitionReplication| {
        !r.stopped && r.leader != 0 && r.replicas.iter().filter(|s| s.voter).count() == 3
    };
    wait("every replica of the node open", || {
        c.nodes[x].describe().is_some_and(|d| {
            (0..partitions).all(|p| entry(&d, p).is_some_and(|r| r.stopped || counted(&r)))
        })
    });
    // Those whose opening failed were opened again, and count in their groups.
    let log = c.nodes[x].log()[before..].to_string();
    let reopened: Vec<u32> = (0..partitions)
        .filter(|p| {
            log.contains(&format!(
                "\"wide\"/{p}: its replica here, held but not open, opened"
            ))
        })
        .collect();
    assert!(
        !reopened.is_empty(),
        "no replica's opening failed and was retried"
    );
    // An accept that failed meanwhile is said once per 10 s, not every 50 ms it is retried.
    let accepts = log.lines().filter(|l| l.contains("accept on")).count();
    assert!(accepts <= 2, "{accepts} lines of failed accepts");
    wait("the replicas opened again counted by their groups", || {
        c.nodes[x].describe().is_some_and(|d| {
            reopened
                .iter()
                .all(|&p| entry(&d, p).is_some_and(|r| counted(&r)))
        })
    });
    // Named while not open, and no longer.
    let d = c.nodes[x].describe().expect("describe the node");
    assert_eq!(not_open(&d), Vec::new());
    for &p in &reopened {
        let mut off = None;
        wait("a produce to a partition opened again", || {
            off = produce_to(&c.nodes[ctl], "wide", p, b"w").ok();
            off.is_some()
        });
        let o = off.unwrap_or(u64::MAX);
        let mut got = None;
        wait("the record read on the node", || {
            got = common::consume(&chx, "wide", p, o).ok();
            got.is_some()
        });
        assert_eq!(&got.unwrap_or_default().value[..], b"w");
    }
}

/// A node whose replica of a partition stopped for want of space passes the appends made
/// through it to the partition's leader elsewhere (the other replicas elected one), as it
/// does when its replica failed; it refused them with its disk's error, and a producer that
/// had found the node kept being refused while the others took appends. A read at the end
/// through it is out of range (asked of the others), not the disk's error.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn appends_through_a_node_whose_replica_is_full_go_to_the_leader() {
    let mut c = form("appends through a full replica's node", 37, &[]);
    let ch = c.nodes[controller_leader(&c)].channel().expect("connect");
    let r: Result<CreateTopicResponse, Status> = ch.unary_prost(
        paths::CREATE_TOPIC,
        &CreateTopicRequest {
            name: "f".into(),
            config: Some(TopicConfig {
                partitions: 1,
                replication_factor: 3,
                segment_bytes: 1 << 20,
                ..Default::default()
            }),
        },
        net::client::CallOptions::timeout(Duration::from_secs(30)),
    );
    r.expect("create the topic");
    let mut leader = 0;
    wait("f/0 led with three voters", || {
        leader_of(&c, "f", 0, 3).is_some_and(|l| {
            leader = l;
            true
        })
    });
    let ctl = controller_leader(&c);
    let x = (0..3).rev().find(|&i| i != leader && i != ctl).unwrap_or(2);
    // The node moved onto a small volume of its own.
    c.nodes[x].kill9();
    let mount = c.dir().join("volume");
    let Some(volume) = engine::testkit::Tmpfs::mount(&mount, 160 << 20) else {
        return;
    };
    let moved = mount.join("data");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&c.nodes[x].data_dir)
        .arg(&moved)
        .status()
        .expect("cp");
    assert!(st.success());
    c.nodes[x].data_dir = moved;
    c.nodes[x].spawn();
    wait("the moved node serving", || c.nodes[x].serving());
    let full_here = |c: &Cluster| {
        c.nodes[x].describe().is_some_and(|d| {
            d.partitions
                .iter()
                .any(|p| p.topic == "f" && p.local && p.stopped && p.disk_full)
        })
    };
    // Filled but for a little (written until the volume refuses, then half a MiB given
    // back), then written to through the leader until its replica stops.
    {
        use std::io::Write;
        let path = mount.join("ballast");
        let mut f = std::fs::File::create(&path).expect("ballast");
        let chunk = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => len += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
        f.set_len(len.saturating_sub(512 << 10))
            .expect("give some back");
    }
    let line = "v".repeat(1000);
    let lines = format!("{line}\n").repeat(64);
    for _ in 0..400 {
        if full_here(&c) {
            break;
        }
        let (ok, _, err) = common::run_cli(
            c.nodes[leader].rpc,
            &["produce", "--topic", "f", "--batch", "64"],
            Some(&lines),
        );
        assert!(ok, "{err}");
    }
    wait("the node's replica stopped for want of space", || {
        full_here(&c)
    });

    let mut stored = Vec::new();
    for _ in 0..20 {
        match produce(&c.nodes[x], "f", b"through the full node") {
            Ok(off) => stored.push(off),
            Err(st) => assert_ne!(
                st.code,
                net::Code::ResourceExhausted,
                "refused with this node's disk error although the others take appends: {st}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!stored.is_empty(), "no append through the full node's node");
    let end = *stored.iter().max().unwrap_or(&0) + 1;
    let chx = c.nodes[x].channel().expect("connect");
    let past = common::consume(&chx, "f", 0, end).expect_err("nothing at the end");
    assert_eq!(past.code, net::Code::OutOfRange, "{past}");
    let last = common::consume(&chx, "f", 0, end - 1).expect("the last record, through it");
    assert_eq!(&last.value[..], b"through the full node");

    // Space back: the replica takes writes again by itself.
    std::fs::remove_file(mount.join("ballast")).expect("free space");
    wait("the replica running again", || {
        c.nodes[x].describe().is_some_and(|d| {
            d.partitions
                .iter()
                .any(|p| p.topic == "f" && p.local && !p.stopped)
        })
    });
    drop(c);
    drop(volume);
}

/// A topic deleted and created again under the same name is another topic. A node that held
/// the deleted one (down while it was deleted and created again) and is then given a replica
/// of the new one drops its old copy, is caught up from the new topic's leader, and serves
/// the new topic's records only. Before topics had incarnations (part of each partition's
/// Raft group id), the two were the same groups: the returning node's old log was taken for
/// its replica of the new topic (it stayed a learner that served the deleted records at the
/// new offsets; placed as a voter, it could win an election and replicate them into the new
/// topic).
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_topic_created_again_never_takes_back_the_deleted_ones_records() {
    let mut c = form("a topic created again", 21, &[]);
    create_topic(&c, "again", 1, 3);
    let leader = wait_for("the topic led with three voters", || {
        leader_of(&c, "again", 0, 3)
    });
    for i in 0..20 {
        let v = format!("OLD-{i}");
        wait("a produce to the first topic", || {
            produce(&c.nodes[leader], "again", v.as_bytes()).is_ok()
        });
    }
    let ids = raft_ids(&c);
    let ctl = controller_leader(&c);
    let x = (0..3).find(|&i| i != ctl).unwrap_or(1);
    let y = (0..3).find(|&i| i != ctl && i != x).unwrap_or(2);
    c.nodes[x].kill9();
    // Asked while still listed live, the killed node fails at once (its port refuses), and
    // the others' answers are shown; it used to be tried again until --timeout, with a
    // warning that no server was reachable.
    let (ok, out, err) = common::run_cli(c.nodes[ctl].rpc, &["cluster", "describe"], None);
    assert!(ok && out.contains("again/0"), "{out}{err}");
    assert!(!err.contains("no server reachable"), "{err}");
    wait("the killed node listed down", || {
        c.nodes[ctl]
            .describe()
            .is_some_and(|d| d.nodes.iter().any(|n| n.id == ids[x] && !n.live))
    });
    let ch = c.nodes[ctl].channel().expect("connect");
    let r: Result<DeleteTopicResponse, Status> = ch.unary_prost(
        paths::DELETE_TOPIC,
        &DeleteTopicRequest {
            name: "again".into(),
        },
        net::client::CallOptions::timeout(Duration::from_secs(30)),
    );
    r.expect("delete the topic");
    // Created again on the two live nodes.
    create_topic(&c, "again", 1, 2);
    for i in 0..5u64 {
        let v = format!("NEW-{i}");
        let mut r = Err(Status::unavailable(""));
        wait("a produce to the topic created again", || {
            r = produce(&c.nodes[ctl], "again", v.as_bytes());
            r.is_ok()
        });
        assert_eq!(
            r.unwrap_or(u64::MAX),
            i,
            "offsets of the new topic start at 0"
        );
    }

    // The node returns with the deleted topic's log, and the new topic's replica on y is
    // moved to it.
    c.nodes[x].spawn();
    wait("the returning node serving", || c.nodes[x].serving());
    let (ok, out, err) = common::run_cli(
        c.nodes[ctl].rpc,
        &["cluster", "remove", &ids[y].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    let mut want = [ids[ctl], ids[x]];
    want.sort_unstable();
    wait("the returning node a voter of the new topic", || {
        partition_voters(&c, "again", 0).as_deref() == Some(&want[..])
    });
    assert!(
        c.nodes[x]
            .log()
            .contains("dropped topic \"again\" (incarnation"),
        "{}",
        c.nodes[x].log()
    );
    // Its replica holds the new topic's records, from its own log.
    let chx = c.nodes[x].channel().expect("connect");
    for i in 0..5u64 {
        let mut got = None;
        wait(
            "a record of the new topic read on the returning node",
            || {
                got = common::consume(&chx, "again", 0, i).ok();
                got.is_some()
            },
        );
        let got = got.unwrap_or_default();
        assert_eq!(got.value, format!("NEW-{i}").into_bytes(), "offset {i}");
    }
    let past = common::consume(&chx, "again", 0, 5).expect_err("nothing past the new records");
    assert_eq!(past.code, net::Code::OutOfRange, "{past}");
}

/// `proglog produce` streaming standard input goes on when its leader is killed between two
/// records (none in flight, so nothing in doubt): the next record goes to the new leader on a
/// new stream, and every line is acknowledged once, in order. It stopped with the lost
/// connection's error, the rest of its input not sent.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn a_produce_stream_goes_on_when_its_leader_is_killed_between_records() {
    use std::io::{BufRead, Write};
    let mut c = form("a produce stream outlives its leader", 24, &[]);
    create_topic(&c, "s", 1, 3);
    let leader = wait_for("the topic led with three voters", || {
        leader_of(&c, "s", 0, 3)
    });
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.rpc.to_string()).collect();
    let mut cli = std::process::Command::new(common::BIN)
        .args(["produce", "--topic", "s", "--timeout", "30", "--addr"])
        .arg(addrs.join(","))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the CLI");
    let mut stdin = cli.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(cli.stdout.take().expect("stdout"));
    stdin.write_all(b"one\n").expect("write");
    stdin.flush().expect("flush");
    let mut first = String::new();
    stdout.read_line(&mut first).expect("the first offset");
    assert_eq!(first, "0\n");
    c.nodes[leader].kill9();
    // The CLI sees its connection end (the killed process's sockets are closed) before the
    // next line comes: what the line is written to is the new stream.
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"two\n").expect("write");
    drop(stdin);
    let out = cli.wait_with_output().expect("the CLI's end");
    let mut rest = String::new();
    stdout.read_line(&mut rest).expect("the second offset");
    assert!(
        out.status.success() && rest == "1\n",
        "{rest:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = (0..3).find(|&i| i != leader).unwrap_or(0);
    let ch = c.nodes[live].channel().expect("connect");
    for (o, v) in [(0u64, "one"), (1, "two")] {
        let mut got = None;
        wait("a record read back", || {
            got = common::consume(&ch, "s", 0, o).ok();
            got.is_some()
        });
        assert_eq!(got.unwrap_or_default().value, v.as_bytes());
    }
}

/// A node of another cluster that gossips with this one (here a node that bootstrapped a
/// cluster of its own, started again with this one's address to join: its registration is
/// refused) is never offered to clients by GetServers: a book client's picker reads from the
/// servers it lists, and would read the other cluster's records at this one's offsets. The
/// refused node, which served as its own cluster before, serves on (a node fences itself as
/// a second cluster started by mistake only when it bootstrapped in the same run:
/// `a_second_cluster_started_by_mistake_serves_no_client_once_the_first_is_back`).
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn get_servers_never_lists_a_node_of_another_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a1", "127.0.0.27", &["--bootstrap".to_owned()]);
    wait("a1 serving", || a.serving());
    let mut b = Node::start(tmp.path(), "b1", "127.0.0.28", &["--bootstrap".to_owned()]);
    wait("b1 serving its own cluster", || b.serving());
    b.kill9();
    b.args
        .extend(["--start-join-addrs".to_owned(), a.gossip.clone()]);
    b.spawn();
    let dump = || format!("a1:\n{}\nb1:\n{}", a.log(), b.log());
    wait("b1 serving its own cluster again", || b.serving());
    wait("b1's join refused", || {
        b.log().contains("the node belongs to cluster")
            || a.log().contains("the node belongs to cluster")
    });
    // Each gossips with the other (their members lists hold both) ...
    wait("a1's gossip listing b1", || {
        let (ok, out, _) = common::run_cli(a.rpc, &["cluster", "members"], None);
        ok && out.contains("b1")
    });
    let b_value = b"of the other cluster".to_vec();
    produce(&b, "", &b_value).unwrap();
    produce(&a, "", b"of this cluster").unwrap();
    // ... yet GetServers on either lists its own cluster's node alone, as its leader.
    for (n, own) in [(&a, "a1"), (&b, "b1")] {
        let r: GetServersResponse = n
            .channel()
            .expect("connect")
            .unary_prost(paths::GET_SERVERS, &GetServersRequest {}, opts())
            .unwrap();
        let ids: Vec<(&str, bool)> = r
            .servers
            .iter()
            .map(|s| (s.id.as_str(), s.is_leader))
            .collect();
        assert_eq!(ids, [(own, true)], "{}", dump());
    }
    assert_eq!(consume(&a, "", 0).unwrap(), b"of this cluster");
}

/// A two-replica partition whose other node is gone for good: `cluster remove` says the
/// partition is stranded (Raft needs both of two voters to elect a leader or to change its
/// voters, so the replica re-created elsewhere can never join), `topics describe` says
/// `no-leader` instead of `writable`, and a produce gets UNAVAILABLE; what it committed
/// stays readable on the survivor. A three-replica partition on the same node goes on.
#[test]
#[ignore = "multi-node: runs one at a time in scripts/test's cluster phase"]
fn removing_a_node_names_the_two_replica_partitions_it_strands() {
    let mut c = form("remove strands a two-replica partition", 14, &[]);
    create_topic(&c, "pair", 1, 2);
    create_topic(&c, "trio", 1, 3);
    let ids = raft_ids(&c);
    let l = wait_for("pair/0 led with two voters", || leader_of(&c, "pair", 0, 2));
    let mut r = Err(Status::unavailable(""));
    wait("a produce to pair/0", || {
        r = produce_to(&c.nodes[l], "pair", 0, b"kept");
        r.is_ok()
    });
    let kept = r.expect("produce");
    let replicas: Vec<u64> = c.nodes[l]
        .describe()
        .and_then(|d| {
            d.partitions
                .into_iter()
                .find(|p| p.topic == "pair" && p.partition == 0)
        })
        .map(|p| {
            p.replicas
                .iter()
                .filter(|r| r.voter)
                .map(|r| r.node)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    // The victim: pair/0's other replica if it does not lead the controller, else this one.
    let ctl = controller_leader(&c);
    let holders: Vec<usize> = (0..3).filter(|&i| replicas.contains(&ids[i])).collect();
    let victim = holders.iter().copied().find(|&i| i != ctl).unwrap_or(l);
    let survivor = holders.iter().copied().find(|&i| i != victim).unwrap_or(0);
    wait("the record committed on the survivor too", || {
        consume_from(&c.nodes[survivor], "pair", 0, kept).is_ok()
    });
    let asked = (0..3).find(|&i| i != victim).unwrap_or(0);
    c.nodes[victim].kill9();
    let (ok, out, err) = common::run_cli(
        c.nodes[asked].rpc,
        &["cluster", "remove", &ids[victim].to_string()],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("too few replicas to elect a leader") && err.contains("pair/0"),
        "{out}{err}"
    );
    assert!(!err.contains("trio/0"), "{err}");
    // Described by the survivor replica: no leader, not writable.
    wait("pair/0 described as without a leader", || {
        let (ok, out, _) =
            common::run_cli(c.nodes[survivor].rpc, &["topics", "describe", "pair"], None);
        ok && out
            .lines()
            .any(|l| l.starts_with("0\t") && l.ends_with("\tno-leader"))
    });
    let e = produce_to(&c.nodes[survivor], "pair", 0, b"refused").expect_err("no leader");
    assert_eq!(e.code, net::Code::Unavailable, "{e:?}");
    assert_eq!(
        consume_from(&c.nodes[survivor], "pair", 0, kept)
            .ok()
            .as_deref(),
        Some(&b"kept"[..])
    );
    // The three-replica partition goes on with two.
    let mut r = Err(Status::unavailable(""));
    wait("a produce to trio/0 after the removal", || {
        r = produce_to(&c.nodes[survivor], "trio", 0, b"on");
        r.is_ok()
    });
}
