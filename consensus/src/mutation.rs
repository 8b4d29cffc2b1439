//! Seeded mutation tests of every decoder of bytes read from disk or received from another
//! node: valid encodings made with the crate's own encoders, then mutated many thousands of
//! times (bit flips, bytes set to 0x00, 0xFF or random, truncations, appended garbage,
//! length fields set to huge or zero values, splices of two valid inputs) and random bytes.
//! A decoder returns an error or a value, never panics; a value it decodes from mutated bytes
//! encodes and decodes again to itself.
//!
//! The seed is printed and `PROGLOG_SEED=<n>` replays it. `PROGLOG_FUZZ_ITERS=<n>` runs `n`
//! mutations per decoder, `PROGLOG_FUZZ_ITERS=<k>x` `k` times the default.

// raft-rs's protobuf types are built field by field, as in `raft::wire`'s tests.
#![allow(clippy::field_reassign_with_default)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) use engine::mutator::{iterations, Mutator};

use crate::cluster::relay;
use crate::cluster::state::{ClusterState, Command, NodeEntry, PartitionEntry, Replica};
use crate::membership::envelope::{self, Opened};
use crate::membership::key::GossipKey;
use crate::raft::entry;
use crate::raft::snapshot_transfer::{self as st, Request};
use crate::raft::storage::{RaftMeta, SnapshotData};
use crate::raft::wire;
use bytes::Bytes;
use engine::batch::{self, Parsed};
use engine::NewRecord;
use raft::eraftpb;

fn some_bytes(rng: &mut StdRng, max: usize) -> Bytes {
    let n = rng.random_range(0..=max);
    Bytes::from((0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>())
}

fn records(rng: &mut StdRng) -> Vec<NewRecord> {
    (0..rng.random_range(1..5))
        .map(|_| NewRecord {
            value: some_bytes(rng, 20),
            rtype: rng.random_range(0..3),
        })
        .collect()
}

fn conf_change(rng: &mut StdRng) -> eraftpb::ConfChangeV2 {
    let mut c = eraftpb::ConfChangeV2::default();
    let changes: Vec<eraftpb::ConfChangeSingle> = (0..rng.random_range(1..3))
        .map(|_| {
            let mut s = eraftpb::ConfChangeSingle::default();
            s.node_id = rng.random_range(1..9);
            s.change_type = [
                eraftpb::ConfChangeType::AddNode,
                eraftpb::ConfChangeType::RemoveNode,
                eraftpb::ConfChangeType::AddLearnerNode,
            ][rng.random_range(0..3)];
            s
        })
        .collect();
    c.set_changes(changes.into());
    c.context = some_bytes(rng, 8);
    c
}

/// Entries of every kind: data, controller command, controller record, no-op, conf change.
fn entries(rng: &mut StdRng) -> Vec<eraftpb::Entry> {
    use prost::Message as _;
    (0..10)
        .map(|i| {
            let mut e = eraftpb::Entry::default();
            e.term = rng.random_range(1..9);
            e.index = rng.random_range(1..1000);
            match i % 5 {
                0 => e.data = entry::data_proposal(&records(rng), rng.random()),
                1 => e.data = entry::controller_proposal(&some_bytes(rng, 30)),
                2 => e.data = entry::controller_record_proposal(&some_bytes(rng, 30), rng.random()),
                3 => {}
                _ => {
                    e.entry_type = eraftpb::EntryType::EntryConfChangeV2;
                    e.data = wire::conf_change_v2_to_pb(&conf_change(rng))
                        .encode_to_vec()
                        .into();
                    e.context = some_bytes(rng, 8);
                }
            }
            e
        })
        .collect()
}

/// Entry data (what a leader sends) mutated: `stamp` checks it; what it stores decodes back
/// to the same entry.
#[test]
fn entry_payloads_never_panic() {
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = entries(&mut m.rng)
        .into_iter()
        .filter(|e| e.entry_type == eraftpb::EntryType::EntryNormal)
        .map(|e| e.data.to_vec())
        .collect();
    let mut pick = StdRng::seed_from_u64(m.rng.random());
    m.run("entry data", &corpus, iterations(300_000), |b| {
        let mut e = eraftpb::Entry::default();
        e.term = 3;
        e.index = 17;
        e.entry_type = [
            eraftpb::EntryType::EntryNormal,
            eraftpb::EntryType::EntryNormal,
            eraftpb::EntryType::EntryConfChange,
            eraftpb::EntryType::EntryConfChangeV2,
        ][pick.random_range(0..4)];
        e.data = Bytes::copy_from_slice(b);
        let _ = entry::record_count(&e);
        let _ = entry::controller_record(&e);
        let _ = entry::controller_command(&e);
        let _ = wire::decode_conf_change(&e);
        let base = [0, 5, u64::MAX / 2][pick.random_range(0..3)];
        let mut out = Vec::new();
        let Ok(next) = entry::encode(&e, base, 9, &mut out) else {
            return;
        };
        let Parsed::Header(h) = batch::parse_header(&out) else {
            panic!("an entry stamped as a batch does not parse");
        };
        assert!(batch::crc_ok(&h, &out));
        assert_eq!(h.next_offset(), next);
        let back = entry::decode(&h, &Bytes::from(out)).expect("decodes");
        assert_eq!((back.term, back.index), (e.term, e.index));
        assert_eq!(back.entry_type, e.entry_type);
        assert_eq!(back.data, e.data);
    });
}

/// Stored batches (read back from disk) mutated, their CRC made good again: an entry
/// decoded from one stores the same batch again.
#[test]
fn stored_entries_never_panic() {
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = entries(&mut m.rng)
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            entry::encode(e, 100, 0, &mut out).expect("encodes");
            out
        })
        .collect();
    m.run("stored entry", &corpus, iterations(300_000), |b| {
        let mut b = b.to_vec();
        if b.len() >= batch::HEADER_LEN {
            let crc = crc32c::crc32c_append(
                crc32c::crc32c(&b[..batch::OFF_CRC]),
                &b[batch::HEADER_LEN..],
            );
            b[batch::OFF_CRC..batch::HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        }
        let Parsed::Header(h) = batch::parse_header(&b) else {
            return;
        };
        if b.len() != h.batch_len() {
            return;
        }
        let Ok(e) = entry::decode(&h, &Bytes::from(b)) else {
            return;
        };
        let _ = entry::record_count(&e);
        let _ = wire::decode_conf_change(&e);
        let mut again = Vec::new();
        if entry::encode(&e, h.base_offset, h.commit_index, &mut again).is_ok() {
            let Parsed::Header(h2) = batch::parse_header(&again) else {
                panic!("a re-encoded entry does not parse");
            };
            assert_eq!(entry::decode(&h2, &Bytes::from(again)).ok(), Some(e));
        }
    });
}

fn message(
    rng: &mut StdRng,
    msg_type: eraftpb::MessageType,
    from: u64,
    to: u64,
) -> eraftpb::Message {
    let mut m = eraftpb::Message::default();
    m.msg_type = msg_type;
    m.from = from;
    m.to = to;
    m.term = rng.random_range(1..9);
    m.log_term = rng.random_range(0..9);
    m.index = rng.random_range(0..1000);
    m.commit = rng.random_range(0..1000);
    m.reject = rng.random();
    m.context = some_bytes(rng, 4);
    if msg_type == eraftpb::MessageType::MsgAppend {
        m.set_entries(
            entries(rng)
                .into_iter()
                .take(rng.random_range(0..4))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    if msg_type == eraftpb::MessageType::MsgSnapshot {
        let mut s = eraftpb::Snapshot::default();
        s.data = SnapshotData {
            first_index: 1,
            first_offset: 0,
            last_index: 9,
            next_offset: 20,
        }
        .encode()
        .into();
        let meta = s.mut_metadata();
        meta.index = 9;
        meta.term = 2;
        meta.mut_conf_state().voters = vec![1, 2, 3];
        m.set_snapshot(s);
    }
    m
}

/// Raft frames from a peer: decoded by prost, then split into messages.
#[test]
fn raft_frames_never_panic() {
    use eraftpb::MessageType as T;
    let mut m = Mutator::new();
    let types = [
        T::MsgAppend,
        T::MsgAppendResponse,
        T::MsgHeartbeat,
        T::MsgHeartbeatResponse,
        T::MsgRequestVote,
        T::MsgSnapshot,
        T::MsgTimeoutNow,
    ];
    let corpus: Vec<Vec<u8>> = (0..12)
        .map(|_| {
            let msgs: Vec<(u64, eraftpb::Message)> = (0..m.rng.random_range(1..5))
                .map(|_| {
                    let t = types[m.rng.random_range(0..types.len())];
                    (m.rng.random_range(0..4), message(&mut m.rng, t, 1, 2))
                })
                .collect();
            wire::encode_frame(&wire::frame(1, 2, &msgs))
        })
        .collect();
    m.run("raft frame", &corpus, iterations(200_000), |b| {
        let shared = wire::decode_frame_shared(Bytes::copy_from_slice(b));
        let Ok(f) = wire::decode_frame(b) else {
            assert!(shared.is_err());
            return;
        };
        assert_eq!(shared.ok().as_ref(), Some(&f));
        assert_eq!(
            wire::decode_frame(&wire::encode_frame(&f)).ok().as_ref(),
            Some(&f)
        );
        let (from, to) = (f.from, f.to);
        let Ok(msgs) = wire::unframe(f) else {
            return;
        };
        for (_, msg) in &msgs {
            for e in msg.get_entries() {
                let _ = entry::record_count(e);
                let _ = wire::decode_conf_change(e);
            }
            if msg.has_snapshot() {
                let _ = SnapshotData::decode(&msg.get_snapshot().data);
            }
        }
        // What came out goes out again and comes back the same, message by message.
        let again = wire::unframe(
            wire::decode_frame(&wire::encode_frame(&wire::frame(from, to, &msgs)))
                .expect("decodes"),
        )
        .expect("unframes");
        // Compared as our prost types: raft-rs's tell an absent snapshot metadata from a
        // default one, which mean the same.
        let pb = |v: &[(u64, eraftpb::Message)]| -> Vec<_> {
            v.iter()
                .map(|(g, m)| (*g, wire::message_to_pb(m)))
                .collect()
        };
        let again = pb(&again);
        assert_eq!(again.len(), msgs.len());
        for m in pb(&msgs) {
            assert!(again.contains(&m), "{m:?} lost in a round trip");
        }
    });
}

#[test]
fn raft_meta_and_snapshot_data_never_panic() {
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let mut conf_state = eraftpb::ConfState::default();
            conf_state.voters = (1..=i).collect();
            conf_state.learners = vec![9; i as usize % 2];
            RaftMeta {
                term: m.rng.random(),
                vote: m.rng.random_range(0..4),
                snapshot_index: m.rng.random(),
                snapshot_term: m.rng.random(),
                conf_index: m.rng.random(),
                conf_state,
            }
            .encode()
        })
        .collect();
    m.run("raft.meta", &corpus, iterations(300_000), |b| {
        if let Ok(meta) = RaftMeta::decode(b) {
            let again = RaftMeta::decode(&meta.encode()).expect("decodes again");
            assert_eq!(again.encode(), meta.encode());
        }
    });
    let corpus: Vec<Vec<u8>> = (0..6)
        .map(|_| {
            let first_index = m.rng.random_range(1..100);
            let first_offset = m.rng.random_range(0..100);
            SnapshotData {
                first_index,
                first_offset,
                last_index: first_index + m.rng.random_range(0..100),
                next_offset: first_offset + m.rng.random_range(0..100),
            }
            .encode()
        })
        .collect();
    m.run("snapshot data", &corpus, iterations(300_000), |b| {
        if let Ok(d) = SnapshotData::decode(b) {
            assert_eq!(SnapshotData::decode(&d.encode()).ok(), Some(d));
            // What a follower does with it: count the batches it asks for.
            let _ = d.check(&[]);
        }
    });
}

/// A snapshot whose last index is u64::MAX: its batch count overflowed.
#[test]
fn snapshot_data_at_the_end_of_u64_is_refused() {
    let d = SnapshotData {
        first_index: 1,
        first_offset: 0,
        last_index: u64::MAX,
        next_offset: 0,
    };
    let mut b = vec![1u8];
    for x in [1u64, 0, u64::MAX, 0] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!(d.encode(), b);
    assert!(SnapshotData::decode(&b).is_err());
}

#[test]
fn snapshot_transfer_frames_never_panic() {
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            Request {
                from: m.rng.random_range(1..4),
                to: m.rng.random_range(1..4),
                group: m.rng.random(),
                index: m.rng.random(),
                term: m.rng.random(),
                first_index: m.rng.random(),
                pos: m.rng.random(),
                file: m.rng.random(),
            }
            .encode()
        })
        .collect();
    m.run("snapshot request", &corpus, iterations(200_000), |b| {
        if let Ok(r) = Request::decode(b) {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    });
    let corpus: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let mut base = 0u64;
            let files: Vec<(u64, u64)> = (0..i)
                .map(|_| {
                    base += m.rng.random_range(1..1000);
                    (base, m.rng.random_range(1..1 << 20))
                })
                .collect();
            st::encode_manifest(&files)
        })
        .collect();
    m.run("snapshot manifest", &corpus, iterations(200_000), |b| {
        if let Ok(files) = st::decode_manifest(b) {
            assert_eq!(st::decode_manifest(&st::encode_manifest(&files)), Ok(files));
        }
    });
    let corpus: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let data = some_bytes(&mut m.rng, 100);
            st::encode_chunk(m.rng.random(), m.rng.random(), &data)
        })
        .collect();
    m.run("snapshot chunk", &corpus, iterations(200_000), |b| {
        if let Ok((file, pos, data)) = st::decode_chunk(b) {
            assert_eq!(st::encode_chunk(file, pos, data), b);
        }
    });
}

/// A manifest whose count is u32::MAX is refused before anything is allocated for it.
#[test]
fn a_manifest_with_a_huge_count_is_refused() {
    let mut b = st::encode_manifest(&[(1, 2)]);
    b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(st::decode_manifest(&b).is_err());
}

fn node(rng: &mut StdRng) -> NodeEntry {
    NodeEntry {
        member: format!("{:032x}", rng.random::<u128>()),
        name: "node-a".into(),
        rpc_addr: "10.0.0.1:50051".into(),
        gossip_addr: "10.0.0.1:7946".into(),
        shards: rng.random_range(1..4),
        removed: false,
    }
}

/// Controller commands (relayed from another node, or read from the controller's log) and
/// checkpoints: decoded, encoded again, and applied to a state.
#[test]
fn controller_commands_never_panic() {
    let mut m = Mutator::new();
    let rng = &mut m.rng;
    let mut commands = vec![
        Command::Bootstrap {
            cluster_id: "c1".into(),
            node: node(rng),
        },
        Command::Register { node: node(rng) },
        Command::CreateTopic {
            name: "orders".into(),
            config: engine::LogConfig::default(),
            replication_factor: 2,
            partitions: vec![PartitionEntry {
                initial: vec![1, 2],
                replicas: vec![Replica { node: 1, shard: 0 }, Replica { node: 2, shard: 1 }],
                stopped: vec![2],
                departed: vec![],
            }],
        },
        Command::SetReplicas {
            topic: "orders".into(),
            partition: 0,
            replication_factor: 1,
            replicas: vec![Replica { node: 2, shard: 0 }],
        },
        Command::ReplicaStopped {
            topic: "orders".into(),
            partition: 0,
            node: 2,
        },
        Command::ReplicaRecovered {
            topic: "orders".into(),
            partition: 0,
            node: 2,
        },
        Command::RemoveNode { id: 2 },
        Command::DeleteTopic {
            name: "orders".into(),
        },
    ];
    let mut state = ClusterState::default();
    for (i, c) in commands.iter().enumerate() {
        state.apply(i as u64 + 1, c);
    }
    commands.push(Command::checkpoint(&state, 9));
    let mut corpus: Vec<Vec<u8>> = commands.iter().map(Command::encode).collect();
    corpus.extend(Command::checkpoint_parts(&state, 9, 256).expect("parts"));
    let mut index = 100;
    m.run("controller command", &corpus, iterations(100_000), |b| {
        let Ok(c) = Command::decode(b) else {
            return;
        };
        assert_eq!(Command::decode(&c.encode()), Ok(c.clone()));
        // A relayed command, as the relay reads it.
        if let Ok(req) = relay::encode_request(7, b) {
            assert_eq!(relay::decode_request(&req), Ok((7, b)));
        }
        // Applied, as every replica applies what the log holds.
        index += 1;
        let mut s = state.clone();
        s.apply(index, &c);
    });
}

#[test]
fn relay_frames_never_panic() {
    let mut m = Mutator::new();
    let corpus = vec![
        relay::encode_request(3, br#"{"op":"remove_node","id":2}"#).expect("encodes"),
        relay::encode_request(u64::MAX, b"x").expect("encodes"),
    ];
    m.run("relay request", &corpus, iterations(200_000), |b| {
        if let Ok((from, c)) = relay::decode_request(b) {
            assert_eq!(relay::encode_request(from, c).as_deref(), Ok(b));
        }
    });
    let corpus: Vec<Vec<u8>> = [
        relay::Answer::Proposed,
        relay::Answer::PassedOn,
        relay::Answer::Refused("not the leader: naïve ☃".into()),
    ]
    .iter()
    .map(relay::encode_answer)
    .collect();
    m.run("relay answer", &corpus, iterations(200_000), |b| {
        if let Ok(a) = relay::decode_answer(b) {
            assert_eq!(relay::encode_answer(&a), b);
        }
    });
    let corpus = vec![
        relay::encode_membership_request(1, 0, 5),
        relay::encode_membership_request(u64::MAX, 7, u64::MAX),
    ];
    m.run("membership request", &corpus, iterations(200_000), |b| {
        if let Ok((from, group, applied)) = relay::decode_membership_request(b) {
            assert_eq!(relay::encode_membership_request(from, group, applied), b);
        }
    });
    let corpus: Vec<Vec<u8>> = [
        relay::Membership::Counted { applied: 3 },
        relay::Membership::NotCounted { applied: u64::MAX },
        relay::Membership::Unknown { applied: 0 },
    ]
    .into_iter()
    .map(relay::encode_membership)
    .collect();
    m.run("membership answer", &corpus, iterations(200_000), |b| {
        if let Ok(a) = relay::decode_membership(b) {
            assert_eq!(relay::encode_membership(a), b);
        }
    });
}

/// Gossip datagrams: anyone on the network can send them.
#[test]
fn gossip_envelopes_never_panic() {
    let mut m = Mutator::new();
    let key = GossipKey::from_bytes([7; crate::membership::key::KEY_BYTES]);
    let other = GossipKey::from_bytes([8; crate::membership::key::KEY_BYTES]);
    let mut corpus = Vec::new();
    for k in [None, Some(&key), Some(&other)] {
        let mut out = Vec::new();
        envelope::seal_swim(k, &some_bytes(&mut m.rng, 60), &mut out);
        corpus.push(out);
    }
    let mut out = Vec::new();
    envelope::query(m.rng.random(), &mut out);
    corpus.push(out.clone());
    for addr in ["10.1.2.3:50051", "[fe80::1%3]:65535"] {
        envelope::answer(m.rng.random(), addr.parse().expect("address"), &mut out);
        corpus.push(out.clone());
    }
    m.run("gossip envelope", &corpus, iterations(300_000), |b| {
        for k in [None, Some(&key)] {
            match envelope::open(k, b) {
                Ok(Opened::Swim(body)) => {
                    let mut again = Vec::new();
                    envelope::seal_swim(k, body, &mut again);
                    assert_eq!(envelope::open(k, &again), Ok(Opened::Swim(body)));
                }
                Ok(Opened::Query { nonce }) => {
                    let mut again = Vec::new();
                    envelope::query(nonce, &mut again);
                    assert_eq!(envelope::open(k, &again), Ok(Opened::Query { nonce }));
                }
                Ok(Opened::Answer { nonce, rpc_addr }) => {
                    let mut again = Vec::new();
                    envelope::answer(nonce, rpc_addr, &mut again);
                    assert_eq!(
                        envelope::open(k, &again),
                        Ok(Opened::Answer { nonce, rpc_addr })
                    );
                }
                Err(_) => {}
            }
        }
    });
}

/// Identity files (`cluster.meta`, `node.meta`, the gossip key), as read at start.
#[test]
fn identity_files_never_panic() {
    let mut m = Mutator::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // In the order a node writes them: its id, then its cluster's.
    crate::membership::store::start_generation(dir.path()).expect("starts");
    crate::cluster::identity::write(
        dir.path(),
        &crate::cluster::identity::ClusterIdentity::new("0123abcd", 7),
    )
    .expect("writes");
    let file = |name: &str| {
        let b = std::fs::read(dir.path().join(name)).expect("reads");
        engine::meta::decode(std::path::Path::new(name), &b)
            .expect("decodes")
            .to_vec()
    };
    let cluster = file(crate::cluster::identity::CLUSTER_FILE);
    let node = file(crate::membership::store::NODE_FILE);
    key_file_round_trip(dir.path());
    let key = file(crate::membership::key::KEY_FILE);
    let corpus = vec![cluster, node, key];
    // Each input written as a good metadata file: the payload's decoder is what is tried.
    let iters = iterations(1_000);
    m.run("identity files", &corpus, iters, |b| {
        let meta = engine::meta::encode(b);
        for name in [
            crate::cluster::identity::CLUSTER_FILE,
            crate::membership::store::NODE_FILE,
            crate::membership::key::KEY_FILE,
        ] {
            std::fs::write(dir.path().join(name), &meta).expect("writes");
        }
        if let Ok(Some(id)) = crate::cluster::identity::read(dir.path()) {
            crate::cluster::identity::write(dir.path(), &id).expect("writes");
            let again = crate::cluster::identity::read(dir.path()).expect("reads");
            assert_eq!(again, Some(id));
        }
        let _ = crate::membership::store::decode(dir.path(), b);
        if let Ok(Some(k)) = GossipKey::load(dir.path()) {
            assert_eq!(&k.bytes()[..], b);
        }
    });
}

fn key_file_round_trip(dir: &std::path::Path) {
    let k = GossipKey::from_bytes([3; crate::membership::key::KEY_BYTES]);
    k.store(dir).expect("stores");
    assert_eq!(
        GossipKey::load(dir).expect("loads").map(|k| *k.bytes()),
        Some(*k.bytes())
    );
}

/// Two members gossiping for a while without a key, every datagram they send kept: joins,
/// announcements, pings and acks, indirect probes, updates and broadcasts, as foca encodes
/// them inside our envelope.
fn swim_datagrams(rng: &mut StdRng) -> Vec<Vec<u8>> {
    use crate::membership::identity::{NodeId, NodeIdentity};
    use crate::membership::view::Shared;
    use crate::membership::{Core, Effects, MembershipConfig, Timer};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    enum Ev {
        Timer(usize, Timer),
        Packet(usize, SocketAddr, Vec<u8>),
        /// The driver's part of a join: the start-join address resolved, `Core::join`.
        Join(usize),
    }
    let addrs: [SocketAddr; 3] = [
        "10.9.0.1:8401".parse().expect("address"),
        "10.9.0.2:8401".parse().expect("address"),
        "10.9.0.3:8401".parse().expect("address"),
    ];
    let mut cores: Vec<Core> = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let identity = NodeIdentity {
                node_id: NodeId(rng.random()),
                generation: 1,
                renewal: 0,
                started_ms: 1_000 + i as u64,
                name: format!("n{i}"),
                gossip_addr: addr,
                rpc_addr: SocketAddr::new(addr.ip(), 8400),
            };
            Core::new(
                identity,
                MembershipConfig::default(),
                None,
                i > 0,
                rng.random(),
                Arc::new(Shared::default()),
            )
        })
        .collect();
    let mut queue: BTreeMap<(Duration, u64), Ev> = BTreeMap::new();
    let mut seq = 0u64;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut apply = |i: usize, now: Duration, fx: Effects, queue: &mut BTreeMap<_, _>| {
        for (after, t) in fx.timers {
            seq += 1;
            queue.insert((now + after, seq), Ev::Timer(i, t));
        }
        for (to, data) in fx.sends {
            if let Some(j) = addrs.iter().position(|a| *a == to) {
                seq += 1;
                sent.push(data.clone());
                queue.insert(
                    (now + Duration::from_millis(1), seq),
                    Ev::Packet(j, addrs[i], data),
                );
            }
        }
        if fx.join {
            seq += 1;
            queue.insert((now + Duration::from_millis(100), seq), Ev::Join(i));
        }
    };
    for (i, core) in cores.iter_mut().enumerate() {
        let mut fx = Effects::default();
        core.start(Duration::ZERO, &mut fx);
        if i > 0 {
            core.join(&addrs[..1], Duration::ZERO, &mut fx);
        }
        apply(i, Duration::ZERO, fx, &mut queue);
    }
    // Ten seconds of gossip, the third member leaving at five.
    let mut left = false;
    while let Some(((now, _), ev)) = queue.pop_first() {
        if now > Duration::from_secs(10) {
            break;
        }
        let mut fx = Effects::default();
        let i = match ev {
            Ev::Timer(i, t) => {
                cores[i].handle_timer(t, now, &mut fx);
                i
            }
            Ev::Packet(i, from, data) => {
                cores[i].handle_packet(from, &data, now, &mut fx);
                i
            }
            Ev::Join(i) => {
                cores[i].join(&addrs[..1], now, &mut fx);
                i
            }
        };
        apply(i, now, fx, &mut queue);
        if !left && now >= Duration::from_secs(5) {
            left = true;
            let mut fx = Effects::default();
            cores[2].start_leave(now, &mut fx);
            apply(2, now, fx, &mut queue);
        }
    }
    sent.sort();
    sent.dedup();
    // At most 96, spread over the run's variety (sorted, so similar ones sit together).
    let step = sent.len().div_ceil(96).max(1);
    let corpus: Vec<Vec<u8>> = sent.into_iter().step_by(step).collect();
    corpus
}

/// SWIM datagrams as a member without a gossip key takes them from anyone: real ones from a
/// short run of three members, mutated, handed to a member that keeps running through all of
/// them. It drops or takes each, never panics, and never lists more than its bound of
/// members, whatever the datagrams claim.
#[test]
fn swim_datagrams_never_panic() {
    use crate::membership::identity::{NodeId, NodeIdentity};
    use crate::membership::view::Shared;
    use crate::membership::{Core, Effects, MembershipConfig};
    use std::sync::Arc;
    use std::time::Duration;

    let mut m = Mutator::new();
    let corpus = swim_datagrams(&mut m.rng);
    assert!(corpus.len() >= 8, "{} distinct datagrams", corpus.len());
    let config = MembershipConfig {
        max_members: 4,
        ..MembershipConfig::default()
    };
    let victim_addr = "10.9.0.1:8401".parse().expect("address");
    let shared = Arc::new(Shared::default());
    let mut victim = Core::new(
        NodeIdentity {
            node_id: NodeId(m.rng.random()),
            generation: 7,
            renewal: 0,
            started_ms: 1_000,
            name: "victim".into(),
            gossip_addr: victim_addr,
            rpc_addr: victim_addr,
        },
        config.clone(),
        None,
        false,
        m.rng.random(),
        Arc::clone(&shared),
    );
    victim.start(Duration::ZERO, &mut Effects::default());
    let from = "10.9.0.2:8401".parse().expect("address");
    let mut now = Duration::ZERO;
    m.run("swim datagram", &corpus, iterations(100_000), |b| {
        now += Duration::from_millis(1);
        let mut fx = Effects::default();
        victim.handle_packet(from, b, now, &mut fx);
        // Timers it asked for come due as time passes (foca counts on getting them back).
        for (after, t) in fx.timers {
            if after.is_zero() {
                victim.handle_timer(t, now, &mut Effects::default());
            }
        }
        assert!(
            victim.list().members.len() <= config.max_members,
            "{} members listed",
            victim.list().members.len()
        );
    });
    // The datagrams reached foca (they are not all stopped at the envelope): members were
    // learned from them.
    assert!(
        victim.list().members.len() > 1,
        "the victim learned no member from {} datagrams",
        corpus.len()
    );
}

/// Answers to forwarded appends and reads, from the node a request went to: each frame's
/// payload decoded as the connection's reader does (`forward::decode_answer`), from real
/// answers of every outcome, mutated. An answer decodes to an outcome or is refused as
/// malformed, never a panic; an append's answer never has its last offset before its first.
#[test]
fn forward_answers_never_panic() {
    use crate::raft::forward::{self, Reply, FORWARD_RESPONSE, READ_RESPONSE};
    use engine::seam;
    use prost::Message as _;
    use proto::proglog::raft::v1::{
        forward_response, read_response, ForwardAppended, ForwardResponse, PartitionSummary,
        ReadChunk, ReadResponse,
    };

    let mut m = Mutator::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let errors = [
        seam::Error::NotLeader {
            leader_id: Some("3".into()),
            leader_addr: Some("10.0.0.3:8400".into()),
        },
        seam::Error::NoLeader("no leader known".into()),
        seam::Error::Unavailable("too many waits".into()),
        seam::Error::TooLarge {
            what: "record",
            size: 2 << 20,
            limit: 1 << 20,
            unit: "bytes",
        },
    ];
    for (i, e) in errors.iter().enumerate() {
        corpus.push(
            ForwardResponse {
                request_id: i as u64,
                outcome: Some(forward_response::Outcome::Error(forward::to_wire(e))),
            }
            .encode_to_vec(),
        );
    }
    corpus.push(
        ForwardResponse {
            request_id: 9,
            outcome: Some(forward_response::Outcome::Appended(ForwardAppended {
                base_offset: 100,
                last_offset: 163,
            })),
        }
        .encode_to_vec(),
    );
    let reads = [
        read_response::Outcome::Chunk(ReadChunk {
            visible_end: 12,
            runs: vec![some_bytes(&mut m.rng, 300), Bytes::from_static(&[1, 2, 3])],
        }),
        read_response::Outcome::VisibleEnd(77),
        read_response::Outcome::Summary(PartitionSummary {
            lowest_offset: 1,
            visible_end: 9,
            log_end: 10,
            size_bytes: 4096,
            segments: 1,
            writability: 1,
            free_bytes: 12,
            cause: "disk full".into(),
        }),
        read_response::Outcome::Error(forward::to_wire(&errors[0])),
    ];
    for (i, o) in reads.into_iter().enumerate() {
        corpus.push(
            ReadResponse {
                request_id: 20 + i as u64,
                outcome: Some(o),
            }
            .encode_to_vec(),
        );
    }
    let forward_count = errors.len() + 1;
    let mut decoded = 0usize;
    m.run("forward answer", &corpus, iterations(200_000), |b| {
        for kind in [FORWARD_RESPONSE, READ_RESPONSE, 0x7F] {
            match forward::decode_answer(kind, b.to_vec()) {
                Ok((_, Ok(Reply::Appended(a)))) => {
                    assert!(a.last_offset >= a.base_offset, "{a:?}");
                    decoded += 1;
                }
                Ok(_) => decoded += 1,
                Err(why) => assert!(!why.is_empty()),
            }
        }
    });
    // The unmutated answers decode as what they are.
    for (i, b) in corpus.iter().enumerate() {
        let kind = if i < forward_count {
            FORWARD_RESPONSE
        } else {
            READ_RESPONSE
        };
        assert!(
            forward::decode_answer(kind, b.clone()).is_ok(),
            "answer {i}"
        );
    }
    assert!(decoded > 0);
}
