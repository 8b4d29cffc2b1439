//! Raft messages on the wire: conversions between raft-rs's eraftpb types and our own prost
//! types (`proto::proglog::raft::v1`, field for field the same messages), and the frame of one
//! round's messages from one node to another, with the heartbeats of all groups merged into
//! compact records and split again on arrival.
//!
//! Bytes from a peer are decoded only by prost, then converted: raft-rs's own decoder
//! (rust-protobuf 2) never sees them (RUSTSEC-2024-0437). A value an enum does not know is an
//! error, never a default.

use super::error::{Error, Result};
use proto::proglog::raft::v1 as pb;
use raft::eraftpb;

fn malformed(what: &'static str, why: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        why: why.into(),
    }
}

pub fn entry_to_pb(e: &eraftpb::Entry) -> pb::Entry {
    pb::Entry {
        entry_type: match e.entry_type {
            eraftpb::EntryType::EntryNormal => pb::EntryType::EntryNormal,
            eraftpb::EntryType::EntryConfChange => pb::EntryType::EntryConfChange,
            eraftpb::EntryType::EntryConfChangeV2 => pb::EntryType::EntryConfChangeV2,
        } as i32,
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        sync_log: e.sync_log,
        context: e.context.clone(),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<eraftpb::Entry> {
    let mut out = eraftpb::Entry::default();
    out.entry_type = match pb::EntryType::try_from(e.entry_type) {
        Ok(pb::EntryType::EntryNormal) => eraftpb::EntryType::EntryNormal,
        Ok(pb::EntryType::EntryConfChange) => eraftpb::EntryType::EntryConfChange,
        Ok(pb::EntryType::EntryConfChangeV2) => eraftpb::EntryType::EntryConfChangeV2,
        Err(_) => return Err(malformed("entry", format!("entry type {}", e.entry_type))),
    };
    out.term = e.term;
    out.index = e.index;
    out.data = e.data;
    out.sync_log = e.sync_log;
    out.context = e.context;
    Ok(out)
}

pub fn conf_state_to_pb(c: &eraftpb::ConfState) -> pb::ConfState {
    pb::ConfState {
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        voters_outgoing: c.voters_outgoing.clone(),
        learners_next: c.learners_next.clone(),
        auto_leave: c.auto_leave,
    }
}

pub fn conf_state_from_pb(c: pb::ConfState) -> eraftpb::ConfState {
    let mut out = eraftpb::ConfState::default();
    out.voters = c.voters;
    out.learners = c.learners;
    out.voters_outgoing = c.voters_outgoing;
    out.learners_next = c.learners_next;
    out.auto_leave = c.auto_leave;
    out
}

fn snapshot_to_pb(s: &eraftpb::Snapshot) -> pb::Snapshot {
    let m = s.get_metadata();
    pb::Snapshot {
        data: s.data.clone(),
        metadata: Some(pb::SnapshotMetadata {
            conf_state: Some(conf_state_to_pb(m.get_conf_state())),
            index: m.index,
            term: m.term,
        }),
    }
}

fn snapshot_from_pb(s: pb::Snapshot) -> eraftpb::Snapshot {
    let mut out = eraftpb::Snapshot::default();
    out.data = s.data;
    if let Some(m) = s.metadata {
        let mut meta = eraftpb::SnapshotMetadata::default();
        meta.index = m.index;
        meta.term = m.term;
        if let Some(c) = m.conf_state {
            meta.set_conf_state(conf_state_from_pb(c));
        }
        out.set_metadata(meta);
    }
    out
}

/// The message types in the order of their wire values (both enums number them alike).
const MESSAGE_TYPES: [(eraftpb::MessageType, pb::MessageType); 19] = {
    use eraftpb::MessageType as R;
    use pb::MessageType as P;
    [
        (R::MsgHup, P::MsgHup),
        (R::MsgBeat, P::MsgBeat),
        (R::MsgPropose, P::MsgPropose),
        (R::MsgAppend, P::MsgAppend),
        (R::MsgAppendResponse, P::MsgAppendResponse),
        (R::MsgRequestVote, P::MsgRequestVote),
        (R::MsgRequestVoteResponse, P::MsgRequestVoteResponse),
        (R::MsgSnapshot, P::MsgSnapshot),
        (R::MsgHeartbeat, P::MsgHeartbeat),
        (R::MsgHeartbeatResponse, P::MsgHeartbeatResponse),
        (R::MsgUnreachable, P::MsgUnreachable),
        (R::MsgSnapStatus, P::MsgSnapStatus),
        (R::MsgCheckQuorum, P::MsgCheckQuorum),
        (R::MsgTransferLeader, P::MsgTransferLeader),
        (R::MsgTimeoutNow, P::MsgTimeoutNow),
        (R::MsgReadIndex, P::MsgReadIndex),
        (R::MsgReadIndexResp, P::MsgReadIndexResp),
        (R::MsgRequestPreVote, P::MsgRequestPreVote),
        (R::MsgRequestPreVoteResponse, P::MsgRequestPreVoteResponse),
    ]
};

pub fn message_to_pb(m: &eraftpb::Message) -> pb::Message {
    let msg_type = MESSAGE_TYPES
        .iter()
        .find(|(r, _)| *r == m.msg_type)
        .map(|(_, p)| *p as i32)
        .unwrap_or_default();
    pb::Message {
        msg_type,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m.entries.iter().map(entry_to_pb).collect(),
        commit: m.commit,
        snapshot: m.has_snapshot().then(|| snapshot_to_pb(m.get_snapshot())),
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context.clone(),
        request_snapshot: m.request_snapshot,
        deprecated_priority: m.deprecated_priority,
        commit_term: m.commit_term,
        priority: m.priority,
    }
}

pub fn message_from_pb(m: pb::Message) -> Result<eraftpb::Message> {
    let msg_type = MESSAGE_TYPES
        .iter()
        .find(|(_, p)| *p as i32 == m.msg_type)
        .map(|(r, _)| *r)
        .ok_or_else(|| malformed("message", format!("message type {}", m.msg_type)))?;
    let mut out = eraftpb::Message::default();
    out.msg_type = msg_type;
    out.to = m.to;
    out.from = m.from;
    out.term = m.term;
    out.log_term = m.log_term;
    out.index = m.index;
    let entries: Result<Vec<_>> = m.entries.into_iter().map(entry_from_pb).collect();
    out.set_entries(entries?.into());
    out.commit = m.commit;
    if let Some(s) = m.snapshot {
        out.set_snapshot(snapshot_from_pb(s));
    }
    out.reject = m.reject;
    out.reject_hint = m.reject_hint;
    out.context = m.context;
    out.request_snapshot = m.request_snapshot;
    out.deprecated_priority = m.deprecated_priority;
    out.commit_term = m.commit_term;
    out.priority = m.priority;
    Ok(out)
}

fn change_type_from_pb(t: i32) -> Result<eraftpb::ConfChangeType> {
    Ok(match pb::ConfChangeType::try_from(t) {
        Ok(pb::ConfChangeType::AddNode) => eraftpb::ConfChangeType::AddNode,
        Ok(pb::ConfChangeType::RemoveNode) => eraftpb::ConfChangeType::RemoveNode,
        Ok(pb::ConfChangeType::AddLearnerNode) => eraftpb::ConfChangeType::AddLearnerNode,
        Err(_) => {
            return Err(malformed(
                "configuration change",
                format!("change type {t}"),
            ))
        }
    })
}

fn change_type_to_pb(t: eraftpb::ConfChangeType) -> pb::ConfChangeType {
    match t {
        eraftpb::ConfChangeType::AddNode => pb::ConfChangeType::AddNode,
        eraftpb::ConfChangeType::RemoveNode => pb::ConfChangeType::RemoveNode,
        eraftpb::ConfChangeType::AddLearnerNode => pb::ConfChangeType::AddLearnerNode,
    }
}

pub fn conf_change_v2_to_pb(c: &eraftpb::ConfChangeV2) -> pb::ConfChangeV2 {
    pb::ConfChangeV2 {
        transition: match c.transition {
            eraftpb::ConfChangeTransition::Auto => pb::ConfChangeTransition::Auto,
            eraftpb::ConfChangeTransition::Implicit => pb::ConfChangeTransition::Implicit,
            eraftpb::ConfChangeTransition::Explicit => pb::ConfChangeTransition::Explicit,
        } as i32,
        changes: c
            .changes
            .iter()
            .map(|s| pb::ConfChangeSingle {
                change_type: change_type_to_pb(s.change_type) as i32,
                node_id: s.node_id,
            })
            .collect(),
        context: c.context.clone(),
    }
}

pub fn conf_change_v2_from_pb(c: pb::ConfChangeV2) -> Result<eraftpb::ConfChangeV2> {
    let mut out = eraftpb::ConfChangeV2::default();
    out.transition = match pb::ConfChangeTransition::try_from(c.transition) {
        Ok(pb::ConfChangeTransition::Auto) => eraftpb::ConfChangeTransition::Auto,
        Ok(pb::ConfChangeTransition::Implicit) => eraftpb::ConfChangeTransition::Implicit,
        Ok(pb::ConfChangeTransition::Explicit) => eraftpb::ConfChangeTransition::Explicit,
        Err(_) => {
            return Err(malformed(
                "configuration change",
                format!("transition {}", c.transition),
            ))
        }
    };
    let mut changes = Vec::with_capacity(c.changes.len());
    for s in c.changes {
        let mut single = eraftpb::ConfChangeSingle::default();
        single.change_type = change_type_from_pb(s.change_type)?;
        single.node_id = s.node_id;
        changes.push(single);
    }
    out.set_changes(changes.into());
    out.context = c.context;
    Ok(out)
}

/// Decodes the data of a configuration-change entry (ConfChangeV2, or the older ConfChange
/// which raft-rs still accepts) with prost, into a ConfChangeV2.
pub fn decode_conf_change(entry: &eraftpb::Entry) -> Result<eraftpb::ConfChangeV2> {
    use prost::Message as _;
    match entry.entry_type {
        eraftpb::EntryType::EntryConfChangeV2 => {
            let c = pb::ConfChangeV2::decode(entry.data.as_ref())
                .map_err(|e| malformed("configuration change", e.to_string()))?;
            conf_change_v2_from_pb(c)
        }
        eraftpb::EntryType::EntryConfChange => {
            let c = pb::ConfChange::decode(entry.data.as_ref())
                .map_err(|e| malformed("configuration change", e.to_string()))?;
            let mut single = eraftpb::ConfChangeSingle::default();
            single.change_type = change_type_from_pb(c.change_type)?;
            single.node_id = c.node_id;
            let mut out = eraftpb::ConfChangeV2::default();
            out.set_changes(vec![single].into());
            out.context = c.context;
            Ok(out)
        }
        eraftpb::EntryType::EntryNormal => Err(malformed(
            "configuration change",
            "a normal entry is not a configuration change",
        )),
    }
}

/// Is `m` a heartbeat (or its response) that a compact record carries whole?
fn mergeable_heartbeat(m: &eraftpb::Message) -> bool {
    let kind = matches!(
        m.msg_type,
        eraftpb::MessageType::MsgHeartbeat | eraftpb::MessageType::MsgHeartbeatResponse
    );
    kind && m.log_term == 0
        && m.index == 0
        && m.entries.is_empty()
        && !m.has_snapshot()
        && !m.reject
        && m.reject_hint == 0
        && m.request_snapshot == 0
        && m.commit_term == 0
        && m.priority == 0
        && m.deprecated_priority == 0
}

/// Builds one frame of everything `from` sends `to` in a round: heartbeats merged into
/// compact records, every other message whole. A message of another node's (raft-rs relays
/// a follower's read request to the leader it learns of, under the follower's name) is left
/// out: a receiver refuses a frame in which one node speaks for another, and the follower
/// asks again when its read times out.
pub fn frame(from: u64, to: u64, messages: &[(u64, eraftpb::Message)]) -> pb::RaftFrame {
    let mut f = pb::RaftFrame {
        from,
        to,
        ..pb::RaftFrame::default()
    };
    for (group, m) in messages.iter().filter(|(_, m)| m.from == from) {
        if mergeable_heartbeat(m) && m.to == to {
            f.heartbeats.push(pb::Heartbeat {
                group: *group,
                response: m.msg_type == eraftpb::MessageType::MsgHeartbeatResponse,
                term: m.term,
                commit: m.commit,
                context: m.context.clone(),
            });
        } else {
            f.messages.push(pb::GroupMessage {
                group: *group,
                message: Some(message_to_pb(m)),
            });
        }
    }
    f
}

/// Splits a frame back into per-group raft-rs messages. A message that does not name the
/// frame's sender and receiver is refused: one node cannot speak for another.
pub fn unframe(f: pb::RaftFrame) -> Result<Vec<(u64, eraftpb::Message)>> {
    let mut out = Vec::with_capacity(f.messages.len() + f.heartbeats.len());
    for h in f.heartbeats {
        let mut m = eraftpb::Message::default();
        m.msg_type = if h.response {
            eraftpb::MessageType::MsgHeartbeatResponse
        } else {
            eraftpb::MessageType::MsgHeartbeat
        };
        m.from = f.from;
        m.to = f.to;
        m.term = h.term;
        m.commit = h.commit;
        m.context = h.context;
        out.push((h.group, m));
    }
    for gm in f.messages {
        let m = gm
            .message
            .ok_or_else(|| malformed("frame", "a group message without a message"))?;
        let m = message_from_pb(m)?;
        if m.from != f.from || m.to != f.to {
            return Err(malformed(
                "frame",
                format!(
                    "message from {} to {} in a frame from {} to {}",
                    m.from, m.to, f.from, f.to
                ),
            ));
        }
        out.push((gm.group, m));
    }
    Ok(out)
}

/// Encodes a frame.
pub fn encode_frame(f: &pb::RaftFrame) -> Vec<u8> {
    use prost::Message as _;
    f.encode_to_vec()
}

/// Decodes a frame.
pub fn decode_frame(bytes: &[u8]) -> Result<pb::RaftFrame> {
    use prost::Message as _;
    pb::RaftFrame::decode(bytes).map_err(|e| malformed("frame", e.to_string()))
}

/// [`decode_frame`] from shared bytes: the entries' data and context are slices of `bytes`,
/// not copies.
pub fn decode_frame_shared(bytes: bytes::Bytes) -> Result<pb::RaftFrame> {
    use prost::Message as _;
    pb::RaftFrame::decode(bytes).map_err(|e| malformed("frame", e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::field_reassign_with_default)]
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn bytes(rng: &mut StdRng) -> bytes::Bytes {
        let n = rng.random_range(0..3) * rng.random_range(0..20);
        (0..n)
            .map(|_| rng.random::<u8>())
            .collect::<Vec<u8>>()
            .into()
    }

    fn ids(rng: &mut StdRng) -> Vec<u64> {
        (0..rng.random_range(0..4))
            .map(|_| rng.random_range(1..9))
            .collect()
    }

    fn entry(rng: &mut StdRng) -> eraftpb::Entry {
        let mut e = eraftpb::Entry::default();
        e.entry_type = [
            eraftpb::EntryType::EntryNormal,
            eraftpb::EntryType::EntryConfChange,
            eraftpb::EntryType::EntryConfChangeV2,
        ][rng.random_range(0..3)];
        e.term = rng.random();
        e.index = rng.random();
        e.data = bytes(rng);
        e.context = bytes(rng);
        e.sync_log = rng.random();
        e
    }

    /// A message with every field drawn at random.
    fn message(rng: &mut StdRng) -> eraftpb::Message {
        let mut m = eraftpb::Message::default();
        m.msg_type = MESSAGE_TYPES[rng.random_range(0..MESSAGE_TYPES.len())].0;
        m.to = rng.random();
        m.from = rng.random();
        m.term = rng.random();
        m.log_term = rng.random();
        m.index = rng.random();
        let entries: Vec<_> = (0..rng.random_range(0..4)).map(|_| entry(rng)).collect();
        m.set_entries(entries.into());
        m.commit = rng.random();
        m.commit_term = rng.random();
        if rng.random_bool(0.3) {
            let mut s = eraftpb::Snapshot::default();
            s.data = bytes(rng);
            let mut meta = eraftpb::SnapshotMetadata::default();
            meta.index = rng.random();
            meta.term = rng.random();
            let mut cs = eraftpb::ConfState::default();
            cs.voters = ids(rng);
            cs.learners = ids(rng);
            cs.voters_outgoing = ids(rng);
            cs.learners_next = ids(rng);
            cs.auto_leave = rng.random();
            meta.set_conf_state(cs);
            s.set_metadata(meta);
            m.set_snapshot(s);
        }
        m.request_snapshot = rng.random();
        m.reject = rng.random();
        m.reject_hint = rng.random();
        m.context = bytes(rng);
        m.deprecated_priority = rng.random();
        m.priority = rng.random();
        m
    }

    #[test]
    fn messages_round_trip_and_match_raft_rs_bytes() {
        use prost::Message as _;
        use protobuf::Message as _;
        let seed = rand::random::<u64>();
        eprintln!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..2000 {
            let m = message(&mut rng);
            let ours = message_to_pb(&m);
            let back = message_from_pb(ours.clone()).expect("converts back");
            assert_eq!(back, m);
            // Both codecs write and read the same bytes.
            let theirs = m.write_to_bytes().expect("raft-rs encodes");
            let decoded = pb::Message::decode(theirs.as_slice()).expect("prost decodes");
            assert_eq!(decoded, ours);
            let mut parsed = eraftpb::Message::default();
            parsed
                .merge_from_bytes(&ours.encode_to_vec())
                .expect("raft-rs decodes");
            assert_eq!(parsed, m);
        }
    }

    #[test]
    fn conf_changes_decode_with_prost() {
        use protobuf::Message as _;
        let mut s = eraftpb::ConfChangeSingle::default();
        s.change_type = eraftpb::ConfChangeType::AddLearnerNode;
        s.node_id = 4;
        let mut cc = eraftpb::ConfChangeV2::default();
        cc.transition = eraftpb::ConfChangeTransition::Explicit;
        cc.set_changes(vec![s].into());
        cc.context = bytes::Bytes::from_static(b"ctx");
        let mut e = eraftpb::Entry::default();
        e.entry_type = eraftpb::EntryType::EntryConfChangeV2;
        e.data = cc.write_to_bytes().expect("encodes").into();
        assert_eq!(decode_conf_change(&e).expect("decodes"), cc);
        assert_eq!(
            conf_change_v2_from_pb(conf_change_v2_to_pb(&cc)).expect("converts"),
            cc
        );
        let mut old = eraftpb::ConfChange::default();
        old.change_type = eraftpb::ConfChangeType::RemoveNode;
        old.node_id = 2;
        e.entry_type = eraftpb::EntryType::EntryConfChange;
        e.data = old.write_to_bytes().expect("encodes").into();
        let v2 = decode_conf_change(&e).expect("decodes");
        assert_eq!(v2.changes[0].node_id, 2);
        e.entry_type = eraftpb::EntryType::EntryNormal;
        assert!(decode_conf_change(&e).is_err());
    }

    #[test]
    fn frames_merge_heartbeats_and_split_them_back() {
        let mut msgs = Vec::new();
        for group in 1..=50u64 {
            let mut h = eraftpb::Message::default();
            h.msg_type = if group % 2 == 0 {
                eraftpb::MessageType::MsgHeartbeat
            } else {
                eraftpb::MessageType::MsgHeartbeatResponse
            };
            (h.from, h.to, h.term, h.commit) = (1, 2, group, group * 10);
            h.context = bytes::Bytes::from(group.to_le_bytes().to_vec());
            msgs.push((group, h));
        }
        let mut append = eraftpb::Message::default();
        append.msg_type = eraftpb::MessageType::MsgAppend;
        (append.from, append.to, append.index) = (1, 2, 7);
        msgs.push((9, append));
        let f = frame(1, 2, &msgs);
        assert_eq!((f.heartbeats.len(), f.messages.len()), (50, 1));
        let bytes = encode_frame(&f);
        assert_eq!(
            decode_frame_shared(bytes::Bytes::from(bytes.clone())).expect("decodes"),
            decode_frame(&bytes).expect("decodes")
        );
        let mut back = unframe(decode_frame(&bytes).expect("decodes")).expect("splits");
        back.sort_by_key(|(g, m)| (*g, m.msg_type as i32));
        msgs.sort_by_key(|(g, m)| (*g, m.msg_type as i32));
        assert_eq!(back, msgs);
        // Fifty heartbeats cost less than fifty messages.
        let whole: usize = msgs
            .iter()
            .map(|(g, m)| {
                use prost::Message as _;
                pb::GroupMessage {
                    group: *g,
                    message: Some(message_to_pb(m)),
                }
                .encoded_len()
            })
            .sum();
        assert!(bytes.len() < whole, "{} vs {whole}", bytes.len());
    }

    /// raft-rs relays a follower's read request to the leader under the follower's name: a
    /// frame leaves it out (its receiver would refuse the whole frame) and keeps the rest.
    #[test]
    fn a_relayed_message_is_left_out_of_the_frame() {
        let mut relayed = eraftpb::Message::default();
        relayed.msg_type = eraftpb::MessageType::MsgReadIndex;
        (relayed.from, relayed.to) = (4, 1);
        relayed.entries = vec![eraftpb::Entry::default()].into();
        let mut own = eraftpb::Message::default();
        own.msg_type = eraftpb::MessageType::MsgAppendResponse;
        (own.from, own.to, own.term, own.index) = (2, 1, 7, 40);
        let f = frame(2, 1, &[(5, relayed), (5, own.clone())]);
        let back = unframe(decode_frame(&encode_frame(&f)).expect("decodes")).expect("splits");
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].0, back[0].1.index), (5, 40));
    }

    #[test]
    fn bad_frames_are_errors_never_panics() {
        let mut m = eraftpb::Message::default();
        m.msg_type = eraftpb::MessageType::MsgAppend;
        (m.from, m.to) = (3, 2);
        // A message that claims another sender than its frame's.
        let speaks_for_another = pb::RaftFrame {
            from: 1,
            to: 2,
            messages: vec![pb::GroupMessage {
                group: 1,
                message: Some(message_to_pb(&m)),
            }],
            ..Default::default()
        };
        assert!(unframe(speaks_for_another).is_err());
        // An unknown message type, an unknown entry type.
        let mut f = pb::RaftFrame {
            from: 1,
            to: 2,
            ..Default::default()
        };
        f.messages.push(pb::GroupMessage {
            group: 1,
            message: Some(pb::Message {
                msg_type: 99,
                from: 1,
                to: 2,
                ..Default::default()
            }),
        });
        assert!(unframe(f.clone()).is_err());
        f.messages[0].message = Some(pb::Message {
            msg_type: 3,
            from: 1,
            to: 2,
            entries: vec![pb::Entry {
                entry_type: 7,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(unframe(f).is_err());
        let mut rng = StdRng::seed_from_u64(5);
        for len in 0..300 {
            let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Ok(f) = decode_frame(&junk) {
                let _ = unframe(f);
            }
        }
    }

    #[test]
    fn a_shared_frame_lends_its_memory_to_the_entries() {
        let mut m = eraftpb::Message::default();
        m.msg_type = eraftpb::MessageType::MsgAppend;
        (m.from, m.to, m.index) = (1, 2, 7);
        let mut e = eraftpb::Entry::default();
        (e.term, e.index) = (1, 8);
        e.data = bytes::Bytes::from(vec![7u8; 4096]);
        m.entries = vec![e].into();
        let bytes = bytes::Bytes::from(encode_frame(&frame(1, 2, &[(3, m.clone())])));
        let (lo, hi) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        let back = unframe(decode_frame_shared(bytes).expect("decodes")).expect("splits");
        assert_eq!(back, vec![(3, m)]);
        let data = back[0].1.entries[0].data.as_ptr() as usize;
        assert!(
            (lo..hi).contains(&data),
            "entry data copied out of the frame"
        );
    }
}
