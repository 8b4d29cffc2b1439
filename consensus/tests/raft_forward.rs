//! Any node serves any client, at the seam: three engines in one process (the harness of
//! `common`), each node's Raft seam as its server builds it.
//!
//! - Appends on every node (followers forward to the leader over the peer channel): every
//!   record once, offsets dense, each producer's records in its order; a burst of concurrent
//!   appends through a follower likewise.
//! - Reads of committed offsets succeed on every node, at once after the acknowledgement (a
//!   follower behind asks the leader's commit index); past the commit index is out of range
//!   on every node; a linearizable read point on every node covers every acknowledged record;
//!   a tail on each follower wakes for a record appended through the leader.
//! - The leader killed while a follower forwards: each append is acknowledged, refused, or
//!   reported with an unknown outcome; no acknowledged record is lost or stored twice, no
//!   refused one is stored, and appends go on through the new leader.
//! - Without a majority: appends NO_LEADER naming the partition, committed records still
//!   read, a read past them and a linearizable read point UNAVAILABLE (not OUT_OF_RANGE).
//! - Hostile forward frames close their connection and are counted; the cluster goes on.
//! - The in-flight bound per leader holds against a leader that never answers.

use crate::common;

use common::{frame, hostile, leader_of, start_nodes, stat, with_seam, Node, DEADLINE};
use consensus::raft::forward::{
    ForwardStats, Forwarder, FORWARD_REQUEST, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES,
};
use consensus::raft::transport::{PeerAddr, Peers};
use engine::seam::{EncodedBatch, Error as SeamError, PartitionId, PastEnd, ReadLimits};
use engine::{LogConfig, NewRecord};
use prost::Message;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u64 = 3;

fn pid() -> PartitionId {
    PartitionId::new("t", 0)
}

fn batch(v: &str) -> EncodedBatch {
    EncodedBatch::encode(&[NewRecord::new(v.as_bytes().to_vec())]).expect("encode")
}

fn create_topic(nodes: &[Node]) {
    for n in nodes {
        futures_lite::future::block_on(n.handle.create_topic("t", 1, LogConfig::default()))
            .expect("create");
    }
}

/// What became of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Acked(u64),
    /// The outcome is unknown (it may be stored once, or not at all).
    Unknown,
    /// Refused: never proposed; must not be stored.
    Refused(String),
}

fn fate(r: Result<engine::seam::Appended, SeamError>) -> Fate {
    match r {
        Ok(a) => Fate::Acked(a.base_offset),
        Err(SeamError::OutcomeUnknown(_)) => Fate::Unknown,
        Err(e) => Fate::Refused(e.to_string()),
    }
}

/// Appends `values` one after the other through node `n`, each once (a retry of a refused
/// append uses a new value, so that every value stored names one attempt).
fn produce_through(n: &Node, client: &std::path::Path, values: Vec<String>) -> Vec<(String, Fate)> {
    with_seam(n, client, move |seam| async move {
        let mut out = Vec::new();
        for v in values {
            let r = seam.partitions.append(&pid(), batch(&v)).await;
            out.push((v, fate(r)));
        }
        out
    })
}

/// Node `n`'s whole log of t/0 once it holds at least `want` records: (offset, value).
fn log_of(n: &Node, want: usize) -> Vec<(u64, String)> {
    let until = Instant::now() + DEADLINE;
    loop {
        let got = futures_lite::future::block_on(n.handle.read_range("t", 0, 0, 100_000, 64 << 20));
        if let Ok(rs) = got {
            if rs.len() >= want {
                return rs
                    .into_iter()
                    .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
                    .collect();
            }
        }
        assert!(
            Instant::now() < until,
            "node {} did not show {want} records",
            n.id
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The checks every history must pass against the log of a replica: offsets dense from 0,
/// no value twice, every acknowledged value at its offset, no refused value at all, and each
/// producer's acknowledged values in the order it sent them.
fn check(history: &[Vec<(String, Fate)>], log: &[(u64, String)]) {
    for (i, (off, _)) in log.iter().enumerate() {
        assert_eq!(*off, i as u64, "offsets are dense");
    }
    let mut at: HashMap<&str, u64> = HashMap::new();
    for (off, v) in log {
        assert!(at.insert(v, *off).is_none(), "value {v} stored twice");
    }
    for producer in history {
        let mut last = None;
        for (v, f) in producer {
            match f {
                Fate::Acked(off) => {
                    assert_eq!(at.get(v.as_str()), Some(off), "{v} acknowledged at {off}");
                    assert!(last < Some(*off), "{v}: a producer's records stay in order");
                    last = Some(*off);
                }
                Fate::Refused(why) => {
                    assert!(
                        !at.contains_key(v.as_str()),
                        "{v} was refused ({why}) but stored"
                    )
                }
                Fate::Unknown => {}
            }
        }
    }
}

#[test]
fn every_node_takes_appends_and_serves_committed_reads() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_nodes(tmp.path(), NODES);
    let client = tmp.path().join("client");
    create_topic(&nodes);
    let leader = leader_of(&nodes, "t", 0);
    println!("leader: node {leader}");

    // Each node in turn, followers forwarding; then every node at once.
    let mut history = Vec::new();
    for n in &nodes {
        let values = (0..15).map(|i| format!("n{}-{i}", n.id)).collect();
        history.push(produce_through(n, &client, values));
    }
    let together: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let client = &client;
                s.spawn(move || {
                    let values = (0..15).map(|i| format!("m{}-{i}", n.id)).collect();
                    produce_through(n, client, values)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("producer"))
            .collect()
    });
    history.extend(together);
    // A burst of concurrent appends through a follower, all in flight at once.
    let follower = nodes.iter().find(|n| n.id != leader).expect("a follower");
    let burst = with_seam(follower, &client, |seam| async move {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let p = seam.partitions.clone();
                glommio::spawn_local(async move {
                    let v = format!("burst-{i}");
                    let r = p.append(&pid(), batch(&v)).await;
                    (v, fate(r))
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    // Concurrent appends have no order among themselves: one "producer" each.
    history.extend(burst.into_iter().map(|x| vec![x]));

    let acked: Vec<u64> = history
        .iter()
        .flatten()
        .filter_map(|(_, f)| match f {
            Fate::Acked(o) => Some(*o),
            _ => None,
        })
        .collect();
    let total = history.iter().map(Vec::len).sum::<usize>();
    // A stable leader: nothing should have been refused; an election on a loaded machine
    // may refuse a few, which the checks below still hold to account.
    assert!(
        acked.len() * 10 >= total * 9,
        "{} of {total} acknowledged",
        acked.len()
    );
    let end = acked.iter().max().map_or(0, |m| m + 1) as usize;
    for n in &nodes {
        check(&history, &log_of(n, end));
    }
    let forwarded: u64 = nodes
        .iter()
        .map(|n| stat(&n.peers.forward.forwarded_ok))
        .sum();
    assert!(forwarded > 0, "followers forwarded appends");
    println!("{} appends forwarded", forwarded);

    // Reads of a committed offset succeed on every node at once after its acknowledgement:
    // append through the leader, then read on each follower from the same client core.
    let lead = nodes.iter().find(|n| n.id == leader).expect("leader");
    let lf = lead.factory();
    let ffs: Vec<_> = nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.factory())
        .collect();
    let reads = engine::run_local(&client, move || async move {
        use engine::seam::Factory;
        let l = lf.build();
        let fs: Vec<_> = ffs.iter().map(|f| f.build()).collect();
        let limits = ReadLimits {
            max_records: 1,
            max_bytes: 1 << 20,
            past_end: PastEnd::OutOfRange,
        };
        let mut bad = Vec::new();
        for i in 0..20 {
            let v = format!("r{i}");
            let off = match l.partitions.append(&pid(), batch(&v)).await {
                Ok(a) => a.base_offset,
                Err(e) => {
                    bad.push(format!("append {v}: {e}"));
                    continue;
                }
            };
            for (k, f) in fs.iter().enumerate() {
                match f.partitions.read(&pid(), off, limits).await {
                    Ok(c) => {
                        let recs: Vec<_> =
                            c.records().collect::<Result<_, _>>().unwrap_or_default();
                        if recs.first().map(|r| r.value.as_ref()) != Some(v.as_bytes()) {
                            bad.push(format!("follower {k} at {off}: {recs:?}"));
                        }
                    }
                    Err(e) => bad.push(format!("follower {k} at {off}: {e}")),
                }
            }
        }
        bad
    })
    .expect("client");
    assert!(reads.is_empty(), "{reads:#?}");
    let waits: u64 = nodes
        .iter()
        .map(|n| stat(&n.peers.forward.read_index_waits))
        .sum();
    println!("read-index waits: {waits}");

    // Past the commit index: out of range on every node; a linearizable read point on
    // every node covers every acknowledged record.
    let end = log_of(lead, 0).len() as u64;
    for n in &nodes {
        let (at_end, past, point) = with_seam(n, &client, move |seam| async move {
            let limits = ReadLimits {
                max_records: 1,
                max_bytes: 1 << 20,
                past_end: PastEnd::OutOfRange,
            };
            let at_end = seam
                .partitions
                .read(&pid(), end, limits)
                .await
                .map(|c| c.is_empty());
            let past = seam
                .partitions
                .read(&pid(), end + 5, limits)
                .await
                .map(|c| c.is_empty());
            let point = seam.partitions.read_barrier(&pid()).await;
            (at_end, past, point)
        });
        assert_eq!(at_end, Ok(true), "node {}: the end reads empty", n.id);
        assert!(
            matches!(past, Err(SeamError::OffsetOutOfRange { offset, .. }) if offset == end + 5),
            "node {}: {past:?}",
            n.id
        );
        assert!(
            point.as_ref().is_ok_and(|&p| p >= end),
            "node {}: {point:?}",
            n.id
        );
    }

    // A tail on each follower (what ConsumeStream does: read at the end, wait on the
    // replica's visible mark) wakes for a record appended through the leader.
    let lf = lead.factory();
    let ffs: Vec<_> = nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.factory())
        .collect();
    let tails = engine::run_local(&client, move || async move {
        use engine::seam::Factory;
        let l = lf.build();
        let waits: Vec<_> = ffs
            .iter()
            .map(|f| {
                let p = f.build().partitions;
                glommio::spawn_local(async move {
                    let limits = ReadLimits {
                        max_records: 10,
                        max_bytes: 1 << 20,
                        past_end: PastEnd::Empty,
                    };
                    let c = p.read(&pid(), end, limits).await?;
                    assert!(c.is_empty(), "nothing past the end yet");
                    p.wait_for(&pid(), end).await?;
                    let c = p.read(&pid(), end, limits).await?;
                    let recs: Vec<_> = c.records().collect::<Result<_, _>>()?;
                    Ok::<_, SeamError>(recs.first().map(|r| r.value.to_vec()))
                })
            })
            .collect();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        l.partitions.append(&pid(), batch("tail")).await?;
        let mut got = Vec::new();
        for w in waits {
            got.push(w.await?);
        }
        Ok::<_, SeamError>(got)
    })
    .expect("client");
    assert_eq!(tails, Ok(vec![Some(b"tail".to_vec()); 2]));
    common::shutdown_all(&mut nodes);
}

#[test]
fn leader_killed_while_a_follower_forwards() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_nodes(tmp.path(), NODES);
    let client = tmp.path().join("client");
    create_topic(&nodes);
    let leader = leader_of(&nodes, "t", 0);
    let fi = nodes
        .iter()
        .position(|n| n.id != leader)
        .expect("a follower");
    let li = nodes
        .iter()
        .position(|n| n.id == leader)
        .expect("the leader");
    println!(
        "leader: node {leader}, producing through node {}",
        nodes[fi].id
    );

    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let history = std::thread::scope(|s| {
        let (acks2, stop2) = (Arc::clone(&acks), Arc::clone(&stop));
        let factory = nodes[fi].factory();
        let client = &client;
        let producer = s.spawn(move || {
            engine::run_local(client, move || async move {
                let seam = engine::seam::Factory::build(&factory);
                let mut out = Vec::new();
                let mut k = 0;
                // Several appends in flight at once (a few producers on one core), so that
                // some are on the wire when the leader dies.
                while !stop2.load(Ordering::SeqCst) {
                    let tasks: Vec<_> = (0..4)
                        .map(|j| {
                            let p = seam.partitions.clone();
                            let v = format!("k{k}-{j}");
                            glommio::spawn_local(async move {
                                let r = p.append(&pid(), batch(&v)).await;
                                (v, fate(r))
                            })
                        })
                        .collect();
                    for t in tasks {
                        let (v, f) = t.await;
                        if matches!(f, Fate::Acked(_)) {
                            acks2.fetch_add(1, Ordering::SeqCst);
                        } else {
                            glommio::timer::sleep(Duration::from_millis(20)).await;
                        }
                        out.push(vec![(v, f)]);
                    }
                    k += 1;
                }
                out
            })
            .expect("client executor")
        });
        let wait_acks = |n: u64| {
            let until = Instant::now() + DEADLINE;
            while acks.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < until,
                    "only {} acknowledged",
                    acks.load(Ordering::SeqCst)
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_acks(40);
        let before = acks.load(Ordering::SeqCst);
        nodes[li].kill();
        // Appends go on through the new leader.
        wait_acks(before + 40);
        stop.store(true, Ordering::SeqCst);
        producer.join().expect("producer")
    });
    let count = |want: fn(&Fate) -> bool| history.iter().flatten().filter(|(_, f)| want(f)).count();
    println!(
        "{} acknowledged, {} unknown, {} refused",
        count(|f| matches!(f, Fate::Acked(_))),
        count(|f| matches!(f, Fate::Unknown)),
        count(|f| matches!(f, Fate::Refused(_)))
    );
    let mut reasons: Vec<&str> = history
        .iter()
        .flatten()
        .filter_map(|(_, f)| match f {
            Fate::Refused(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    reasons.dedup();
    println!("refusals: {reasons:#?}");
    let end = history
        .iter()
        .flatten()
        .filter_map(|(_, f)| match f {
            Fate::Acked(o) => Some(*o + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0) as usize;
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.is_alive()).collect();
    let logs: Vec<_> = survivors.iter().map(|n| log_of(n, end)).collect();
    for log in &logs {
        check(&history, log);
    }
    let shorter = logs.iter().map(Vec::len).min().unwrap_or(0);
    assert_eq!(logs[0][..shorter], logs[1][..shorter], "survivors agree");
    common::shutdown_all(&mut nodes);
}

#[test]
fn hostile_forward_frames_close_their_connection_and_are_counted() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_nodes(tmp.path(), NODES);
    let client = tmp.path().join("client");
    create_topic(&nodes);
    let leader = leader_of(&nodes, "t", 0);
    let target = nodes.iter().find(|n| n.id == leader).expect("leader");

    // Oversized: a length of 2 GiB announced.
    let mut oversized = vec![0x01];
    oversized.extend_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    oversized.push(FORWARD_REQUEST);
    hostile(target.addr, &oversized);
    // Not a ForwardRequest at all.
    hostile(target.addr, &frame(FORWARD_REQUEST, &[0xFF; 9]));
    // A request whose records do not add up to what it announces.
    let b = batch("x");
    let lying = proto::proglog::raft::v1::ForwardRequest {
        request_id: 1,
        topic: "t".into(),
        partition: 0,
        record_count: 3,
        payload_crc: b.payload_crc(),
        payload: b.payload().clone(),
        incarnation: 0,
        cluster_id: String::new(),
    };
    hostile(target.addr, &frame(FORWARD_REQUEST, &lying.encode_to_vec()));
    // A frame cut short: the connection ends inside it.
    let mut cut = frame(FORWARD_REQUEST, &lying.encode_to_vec());
    cut.truncate(cut.len() - 3);
    hostile(target.addr, &cut);
    // A read request (the first frame of a connection may be one) of a mode that does not
    // exist.
    let bad_read = proto::proglog::raft::v1::ReadRequest {
        request_id: 1,
        topic: "t".into(),
        mode: 7,
        ..Default::default()
    };
    hostile(
        target.addr,
        &frame(
            consensus::raft::forward::READ_REQUEST,
            &bad_read.encode_to_vec(),
        ),
    );
    // A good append and a good read, from a node of another cluster (whose ids, groups and
    // incarnations may equal this one's): the connection is closed, nothing served.
    target
        .peers
        .cluster_id
        .set("c1".into())
        .expect("not set yet");
    let foreign = proto::proglog::raft::v1::ForwardRequest {
        record_count: 1,
        cluster_id: "c2".into(),
        ..lying
    };
    hostile(
        target.addr,
        &frame(FORWARD_REQUEST, &foreign.encode_to_vec()),
    );
    let foreign_read = proto::proglog::raft::v1::ReadRequest {
        request_id: 1,
        topic: "t".into(),
        cluster_id: "c2".into(),
        ..Default::default()
    };
    hostile(
        target.addr,
        &frame(
            consensus::raft::forward::READ_REQUEST,
            &foreign_read.encode_to_vec(),
        ),
    );
    let s = &target.peers.forward;
    assert_eq!(stat(&s.oversized), 1);
    assert_eq!(stat(&s.malformed), 4);
    assert_eq!(stat(&s.foreign), 2);
    assert_eq!(stat(&s.served), 0, "nothing hostile was appended");

    // The cluster goes on: every node takes appends.
    let mut history = Vec::new();
    for n in &nodes {
        let values = (0..5).map(|i| format!("after-{}-{i}", n.id)).collect();
        history.push(produce_through(n, &client, values));
    }
    let acked = history
        .iter()
        .flatten()
        .filter(|(_, f)| matches!(f, Fate::Acked(_)))
        .count();
    assert_eq!(acked, 15, "{history:?}");
    for n in &nodes {
        check(&history, &log_of(n, 15));
    }
    common::shutdown_all(&mut nodes);
}

/// A "leader" that reads everything and never answers.
fn black_hole() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let read = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&read);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    r.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, read)
}

#[test]
fn requests_in_flight_to_a_leader_are_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (addr, read) = black_hole();
    let peers = Peers::default();
    peers.book.write().expect("book").insert(
        9,
        PeerAddr {
            addr,
            server_name: "127.0.0.1".into(),
        },
    );
    let stats = Arc::clone(&peers.forward);
    let outcome = engine::run_local(tmp.path(), move || async move {
        let fwd = std::rc::Rc::new(Forwarder::new(1, peers));
        let deadline = Instant::now() + Duration::from_secs(3);
        let tasks: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|i| {
                let fwd = std::rc::Rc::clone(&fwd);
                glommio::spawn_local(async move {
                    fwd.forward(9, &pid(), &batch(&format!("q{i}")), deadline)
                        .await
                })
            })
            .collect();
        // Every one of them is queued or on the wire before the next call.
        while ForwardStats::get(&fwd.stats().forwarded) < MAX_IN_FLIGHT as u64 {
            glommio::yield_if_needed().await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let over = fwd
            .forward(9, &pid(), &batch("one too many"), deadline)
            .await;
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await);
        }
        // Bytes: a few large batches, the last one over the byte bound.
        let big = EncodedBatch::encode(&[NewRecord::new(vec![7u8; MAX_IN_FLIGHT_BYTES / 3])])
            .expect("encode");
        let deadline = Instant::now() + Duration::from_secs(3);
        let bigs: Vec<_> = (0..2)
            .map(|_| {
                let (fwd, big) = (std::rc::Rc::clone(&fwd), big.clone());
                glommio::spawn_local(async move { fwd.forward(9, &pid(), &big, deadline).await })
            })
            .collect();
        while ForwardStats::get(&fwd.stats().forwarded) < MAX_IN_FLIGHT as u64 + 2 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let big_over = fwd.forward(9, &pid(), &big, deadline).await;
        for t in bigs {
            let _ = t.await;
        }
        (over, answers, big_over)
    })
    .expect("executor");
    let (over, answers, big_over) = outcome;
    assert!(
        matches!(&over, Err(SeamError::Unavailable(m)) if m.contains("full")),
        "{over:?}"
    );
    assert!(
        matches!(&big_over, Err(SeamError::Unavailable(m)) if m.contains("full")),
        "{big_over:?}"
    );
    assert_eq!(ForwardStats::get(&stats.err_queue_full), 2);
    // Nobody answered: written requests have an unknown outcome, none is acknowledged.
    for a in &answers {
        assert!(
            matches!(
                a,
                Err(SeamError::OutcomeUnknown(_) | SeamError::Unavailable(_))
            ),
            "{a:?}"
        );
    }
    assert!(read.load(Ordering::Relaxed) > 0, "the requests went out");
}

/// Without a majority there is no leader: an append on the node left is refused
/// UNAVAILABLE NO_LEADER naming the partition (after a short wait for one); its own committed
/// records still read; a read past them is UNAVAILABLE (they may be committed elsewhere), not
/// OUT_OF_RANGE; a linearizable read point is UNAVAILABLE.
#[test]
fn without_a_majority_appends_are_no_leader_and_reads_past_the_end_unavailable() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_nodes(tmp.path(), NODES);
    let client = tmp.path().join("client");
    create_topic(&nodes);
    let leader = leader_of(&nodes, "t", 0);
    let li = nodes.iter().position(|n| n.id == leader).expect("leader");
    let history = vec![produce_through(
        &nodes[li],
        &client,
        (0..3).map(|i| format!("v{i}")).collect(),
    )];
    assert!(history[0].iter().all(|(_, f)| matches!(f, Fate::Acked(_))));
    let si = (li + 1) % nodes.len();
    // The survivor has every record before the others go.
    check(&history, &log_of(&nodes[si], 3));
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != si {
            n.kill();
        }
    }
    // Until its election timeout it still names the old leader.
    let local = nodes[si]
        .handle
        .seam_factory(common::node_ref(nodes[si].id))
        .local();
    let until = Instant::now() + DEADLINE;
    loop {
        let s = futures_lite::future::block_on(local.replica_status(&pid())).expect("status");
        if s.is_some_and(|s| s.leader.is_none()) {
            break;
        }
        assert!(Instant::now() < until, "the survivor kept a leader");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (append, read, past, point) = with_seam(&nodes[si], &client, |seam| async move {
        let p = &seam.partitions;
        let limits = ReadLimits {
            max_records: 10,
            max_bytes: 1 << 20,
            past_end: PastEnd::OutOfRange,
        };
        // At once, since each waits for its own deadline (a leader for 2 s, a read point
        // for 5 s) and none depends on another.
        let id = pid();
        let append = p.append(&id, batch("lost?"));
        let read = async {
            p.read(&id, 0, limits)
                .await
                .map(|c| c.records().filter_map(Result::ok).count())
        };
        let past = async { p.read(&id, 3, limits).await.map(|c| c.is_empty()) };
        let point = p.read_barrier(&id);
        let ((append, read), (past, point)) = futures_lite::future::zip(
            futures_lite::future::zip(append, read),
            futures_lite::future::zip(past, point),
        )
        .await;
        (append, read, past, point)
    });
    match append {
        Err(SeamError::NoLeader(ref p)) => assert_eq!(p, "\"t\"/0"),
        ref other => panic!("append without a majority: {other:?}"),
    }
    assert!(
        append
            .as_ref()
            .is_err_and(|e| e.to_string().starts_with("no leader for partition \"t\"/0")),
        "{append:?}"
    );
    assert_eq!(read, Ok(3), "committed records read");
    assert!(matches!(past, Err(SeamError::Unavailable(_))), "{past:?}");
    assert!(matches!(point, Err(SeamError::Unavailable(_))), "{point:?}");
    common::shutdown_all(&mut nodes);
}
