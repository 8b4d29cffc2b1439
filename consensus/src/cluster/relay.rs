//! Controller commands over the peer channel, for a node whose own controller replica cannot
//! take them: stopped (its log failed, or its disk is full) or not running. Such a node cannot
//! propose through that replica (raft-rs forwards a proposal to the leader only from a replica
//! that runs), so [`ClusterNode::ask_controller`] sends the command to another member instead.
//!
//! One request and one answer per connection: kind [`CONTROL_COMMAND`] (0x23) carries the
//! sender's Raft id and the command's JSON ([`Command::encode`]); the receiver answers
//! kind [`CONTROL_ANSWER`] (0x24). Layouts and limits are in docs/format.md. The receiver
//! proposes the command when it leads the controller, else passes it on through its own
//! running controller replica (raft-rs forwards it to the leader), else refuses it: a command
//! that came this way is never sent on over the peer channel again (no loops).
//!
//! Only commands a node sends about itself are taken: `ReplicaStopped` and
//! `ReplicaRecovered` naming the sender, a registered node.
//!
//! A node also asks, kind [`CONTROL_MEMBERSHIP`] (0x25), whether a group's configuration
//! still counts it ([`membership_of`]): its controller replica stopped for good, or a replica
//! of a partition no longer placed on it hears from no leader. The answer, kind
//! [`MEMBERSHIP_ANSWER`] (0x26), tells it when its replica's data is needed by no one. The same acceptance rules as
//! the other peer frames: where peer TLS runs, only over it; without it, only from the
//! addresses of known members (no security boundary, as for Raft frames). An oversized,
//! truncated or malformed request is refused and counted ([`super::ClusterStats`]); nothing a
//! peer sends panics.

use super::state::Command;
use super::{ClusterNode, MAX_COMMAND_BYTES};
use crate::raft::board::GroupView;
use net::peer::{self, PeerConn, PeerTls};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A controller command relayed from another node (see [`encode_request`]).
pub const CONTROL_COMMAND: u8 = 0x23;
/// Its answer (see [`encode_answer`]).
pub const CONTROL_ANSWER: u8 = 0x24;
/// A question about the controller's configuration (see [`encode_membership_request`]).
pub const CONTROL_MEMBERSHIP: u8 = 0x25;
/// Its answer (see [`encode_membership`]).
pub const MEMBERSHIP_ANSWER: u8 = 0x26;
/// A membership request's payload: the version, the sender's id, the group, the index its
/// replica applied.
pub const MEMBERSHIP_REQUEST_BYTES: usize = 1 + 8 + 8 + 8;
/// A membership answer's payload: the outcome and the index the receiver applied.
pub const MEMBERSHIP_ANSWER_BYTES: usize = 1 + 8;
/// The request layout's version (of both requests).
pub const VERSION: u8 = 1;
/// Bytes of a request before the command: the version and the sender's id.
const REQUEST_HEAD: usize = 1 + 8;
/// The largest request frame (its kind byte, the head and the largest command).
pub const MAX_REQUEST_FRAME: usize = 1 + REQUEST_HEAD + MAX_COMMAND_BYTES;
/// The longest reason a refusal carries (longer ones are cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 4 << 10;
/// The largest answer frame (its kind byte, the outcome and the reason).
pub const MAX_ANSWER_FRAME: usize = 1 + 1 + MAX_REASON_BYTES;
/// How long one node's exchange may take, either side; a sender tries the next node after
/// it, within [`RELAY_DEADLINE`] in all.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node tries to relay one command, over every node it asks.
pub const RELAY_DEADLINE: Duration = Duration::from_secs(6);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the receiving node did with a relayed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It leads the controller: the command was proposed and applied there.
    Proposed,
    /// Passed on to the leader its controller replica follows, not waited for: the sender
    /// sees it applied, or asks again later.
    PassedOn,
    /// Not taken, saying why.
    Refused(String),
}

/// A request's payload: u8 [`VERSION`], u64 LE the sender's Raft id, then the command's JSON
/// ([`Command::encode`]; at least one byte, at most [`MAX_COMMAND_BYTES`]).
pub fn encode_request(from: u64, command: &[u8]) -> Result<Vec<u8>, String> {
    if command.is_empty() || command.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "a controller command of {} bytes (1 to {MAX_COMMAND_BYTES})",
            command.len()
        ));
    }
    let mut out = Vec::with_capacity(REQUEST_HEAD + command.len());
    out.push(VERSION);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(command);
    Ok(out)
}

/// The sender's id and the command of a request's payload, its bounds checked.
pub fn decode_request(payload: &[u8]) -> Result<(u64, &[u8]), String> {
    let Some((&version, rest)) = payload.split_first() else {
        return Err("an empty controller command request".into());
    };
    if version != VERSION {
        return Err(format!(
            "a controller command request of version {version} (this node reads {VERSION})"
        ));
    }
    let Some((from, command)) = rest.split_first_chunk::<8>() else {
        return Err(format!(
            "a controller command request of {} bytes, shorter than its head",
            payload.len()
        ));
    };
    let from = u64::from_le_bytes(*from);
    if from == 0 {
        return Err("a controller command request from node 0".into());
    }
    if command.is_empty() || command.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "a controller command of {} bytes (1 to {MAX_COMMAND_BYTES})",
            command.len()
        ));
    }
    Ok((from, command))
}

/// An answer's payload: u8 outcome (`0` proposed, `1` passed on, `2` refused), then, for a
/// refusal, the reason in UTF-8 (at most [`MAX_REASON_BYTES`]).
pub fn encode_answer(a: &Answer) -> Vec<u8> {
    match a {
        Answer::Proposed => vec![0],
        Answer::PassedOn => vec![1],
        Answer::Refused(why) => {
            let mut end = why.len().min(MAX_REASON_BYTES);
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = Vec::with_capacity(1 + end);
            out.push(2);
            out.extend_from_slice(&why.as_bytes()[..end]);
            out
        }
    }
}

/// An answer's payload decoded.
pub fn decode_answer(payload: &[u8]) -> Result<Answer, String> {
    match payload.split_first() {
        Some((0, [])) => Ok(Answer::Proposed),
        Some((1, [])) => Ok(Answer::PassedOn),
        Some((2, why)) if why.len() <= MAX_REASON_BYTES => std::str::from_utf8(why)
            .map(|w| Answer::Refused(w.to_owned()))
            .map_err(|_| "a refusal whose reason is not UTF-8".to_owned()),
        Some((o @ (0..=2), rest)) => Err(format!(
            "an answer of outcome {o} with {} bytes after it",
            rest.len()
        )),
        Some((o, _)) => Err(format!("an answer of unknown outcome {o}")),
        None => Err("an empty answer".into()),
    }
}

/// What a node's controller replica makes of a node asking whether the controller still
/// counts it: the configuration it applied, through `applied` (at least the index asked
/// about), counts the asker as a voter or a learner, does not count it, or it cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Counted {
        applied: u64,
    },
    NotCounted {
        applied: u64,
    },
    /// This node's controller replica does not run, or applied less than asked.
    Unknown {
        applied: u64,
    },
}

/// A membership request's payload: u8 [`VERSION`], u64 LE the sender's Raft id, u64 LE the
/// group (0: the controller's), u64 LE the index the sender's replica of it applied (the
/// configuration it knows counts it).
pub fn encode_membership_request(from: u64, group: u64, applied: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(MEMBERSHIP_REQUEST_BYTES);
    out.push(VERSION);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&applied.to_le_bytes());
    out
}

/// The sender's id, the group and the applied index of a membership request's payload.
pub fn decode_membership_request(payload: &[u8]) -> Result<(u64, u64, u64), String> {
    if payload.len() != MEMBERSHIP_REQUEST_BYTES {
        return Err(format!(
            "a membership request of {} bytes (it has {MEMBERSHIP_REQUEST_BYTES})",
            payload.len()
        ));
    }
    if payload[0] != VERSION {
        return Err(format!(
            "a membership request of version {} (this node reads {VERSION})",
            payload[0]
        ));
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let from = word(1);
    if from == 0 {
        return Err("a membership request from node 0".into());
    }
    Ok((from, word(9), word(17)))
}

/// A membership answer's payload: u8 outcome (`0` counted, `1` not counted, `2` cannot
/// tell), then u64 LE the index the answering replica applied.
pub fn encode_membership(m: Membership) -> Vec<u8> {
    let (outcome, applied) = match m {
        Membership::Counted { applied } => (0u8, applied),
        Membership::NotCounted { applied } => (1, applied),
        Membership::Unknown { applied } => (2, applied),
    };
    let mut out = Vec::with_capacity(MEMBERSHIP_ANSWER_BYTES);
    out.push(outcome);
    out.extend_from_slice(&applied.to_le_bytes());
    out
}

/// A membership answer's payload decoded.
pub fn decode_membership(payload: &[u8]) -> Result<Membership, String> {
    if payload.len() != MEMBERSHIP_ANSWER_BYTES {
        return Err(format!(
            "a membership answer of {} bytes (it has {MEMBERSHIP_ANSWER_BYTES})",
            payload.len()
        ));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[1..]);
    let applied = u64::from_le_bytes(b);
    match payload[0] {
        0 => Ok(Membership::Counted { applied }),
        1 => Ok(Membership::NotCounted { applied }),
        2 => Ok(Membership::Unknown { applied }),
        o => Err(format!("a membership answer of unknown outcome {o}")),
    }
}

/// What this node answers node `from`, whose controller replica applied through `asked`,
/// from its own controller replica's view `v`. Only a running replica that applied at least
/// as far tells: the configurations a log holds are the same on every replica up to what
/// each applied, so a configuration applied here through `asked` or later that does not
/// count `from` comes after the one `from` knows counted it (a removal committed since).
pub fn membership_of(v: Option<&GroupView>, from: u64, asked: u64) -> Membership {
    match v {
        Some(v) if v.stopped.is_none() && v.applied >= asked => {
            let applied = v.applied;
            if v.voters.contains(&from) || v.learners.contains(&from) {
                Membership::Counted { applied }
            } else {
                Membership::NotCounted { applied }
            }
        }
        Some(v) => Membership::Unknown { applied: v.applied },
        None => Membership::Unknown { applied: 0 },
    }
}

/// [`membership_of`] for the controller's own group, asked by node `from` whose controller
/// replica stopped for good, from this node's replica's view `v` and its applied state
/// (through `state_applied`, which marks `from` stopped when `marked`). "Not counted" is said
/// only when that state marks `from` (its `replica_stopped` applied here) and `v` applied at
/// least as far as that state: the configuration that leaves `from` out then came after the
/// mark, and a stopped replica, which acknowledges nothing, is never promoted once marked, so
/// any configuration that counted it as a voter came before. The index `from` asks about
/// is not enough here: a replica whose acknowledged entries turned out gone (its log marked
/// lost) asks with the index its short log applied, which may precede the entry that added
/// it, and a replica behind that entry (a learner catching up, a node not yet added) would
/// say it is left out while the leader still counts it as a voter.
pub fn controller_membership_of(
    v: Option<&GroupView>,
    from: u64,
    asked: u64,
    marked: bool,
    state_applied: u64,
) -> Membership {
    match membership_of(v, from, asked.max(state_applied)) {
        Membership::NotCounted { applied } if !marked => Membership::Unknown { applied },
        m => m,
    }
}

/// Whether node `from` may send `c` this way: only what a node says about itself.
fn about_sender(c: &Command, from: u64) -> Result<(), String> {
    match c {
        Command::ReplicaStopped { node, .. } | Command::ReplicaRecovered { node, .. }
            if *node == from =>
        {
            Ok(())
        }
        Command::ReplicaStopped { node, .. } | Command::ReplicaRecovered { node, .. } => Err(
            format!("node {from} sent a command about node {node}; a node speaks for itself"),
        ),
        _ => Err(format!(
            "node {from} sent a controller command of another kind than replica_stopped or \
             replica_recovered"
        )),
    }
}

/// Whether `c` may go this way at all (see [`about_sender`]).
pub fn relayable(c: &Command, me: u64) -> bool {
    about_sender(c, me).is_ok()
}

/// Serves one relayed command on the peer channel (the connection's first frame header,
/// `len` and kind [`CONTROL_COMMAND`], read by the router).
pub async fn serve(node: &ClusterNode, mut conn: PeerConn, len: usize) {
    let stats = &node.stats;
    let taken = glommio::timer::timeout(RELAY_TIMEOUT * 2, async {
        Ok(read_and_take(node, &mut conn, len).await)
    })
    .await
    .unwrap_or_else(|_| Err((false, format!("not done within {:?}", RELAY_TIMEOUT * 2))));
    let answer = match taken {
        Ok(a) => {
            stats.commands_relay_served.fetch_add(1, Ordering::Relaxed);
            a
        }
        Err((unread, why)) => {
            stats.commands_relay_refused.fetch_add(1, Ordering::Relaxed);
            net::conn_log!(
                log::Level::Warn,
                "relay-refused",
                "controller command from {} refused: {why}",
                net::show_peer(&conn.peer)
            );
            let bytes = encode_answer(&Answer::Refused(why));
            let _ = peer::write_frame(&mut conn.stream, CONTROL_ANSWER, &bytes).await;
            if unread {
                crate::raft::transport::close_gracefully(&mut conn).await;
            }
            return;
        }
    };
    if let Answer::Refused(why) = &answer {
        log::info!(
            "controller command from {} not taken: {why}",
            net::show_peer(&conn.peer)
        );
    }
    let bytes = encode_answer(&answer);
    let _ = peer::write_frame(&mut conn.stream, CONTROL_ANSWER, &bytes).await;
}

/// Serves one membership request on the peer channel (the connection's first frame header,
/// `len` and kind [`CONTROL_MEMBERSHIP`], read by the router): the same acceptance rules as
/// a relayed command; a refusal is a peer ERROR frame.
pub async fn serve_membership(node: &ClusterNode, mut conn: PeerConn, len: usize) {
    let answered = glommio::timer::timeout(RELAY_TIMEOUT, async {
        Ok(read_membership(node, &mut conn, len).await)
    })
    .await
    .unwrap_or_else(|_| Err((false, format!("not done within {RELAY_TIMEOUT:?}"))));
    match answered {
        Ok(m) => {
            node.stats
                .membership_questions_answered
                .fetch_add(1, Ordering::Relaxed);
            let bytes = encode_membership(m);
            let _ = peer::write_frame(&mut conn.stream, MEMBERSHIP_ANSWER, &bytes).await;
        }
        Err((unread, why)) => {
            node.stats
                .membership_questions_refused
                .fetch_add(1, Ordering::Relaxed);
            net::conn_log!(
                log::Level::Warn,
                "membership-refused",
                "membership request from {} refused: {why}",
                net::show_peer(&conn.peer)
            );
            let _ = peer::write_frame(&mut conn.stream, peer::kind::ERROR, why.as_bytes()).await;
            if unread {
                crate::raft::transport::close_gracefully(&mut conn).await;
            }
        }
    }
}

async fn read_membership(
    node: &ClusterNode,
    conn: &mut PeerConn,
    len: usize,
) -> Result<Membership, (bool, String)> {
    accept(node, conn)?;
    if len != 1 + MEMBERSHIP_REQUEST_BYTES {
        return Err((
            true,
            format!(
                "a membership request frame of {len} bytes (it has {})",
                1 + MEMBERSHIP_REQUEST_BYTES
            ),
        ));
    }
    let payload = peer::read_payload(&mut conn.stream, len)
        .await
        .map_err(|e| (false, e.to_string()))?;
    let (from, group, asked) = decode_membership_request(&payload).map_err(|e| (false, e))?;
    registered(node, from)?;
    if group != 0 {
        return Ok(membership_of(
            node.peers.board.get(group).as_ref(),
            from,
            asked,
        ));
    }
    // The state first, then the view: a view published after the state was read is as new.
    let (marked, state_applied) = node
        .state
        .read()
        .map(|s| (s.controller_stopped.contains(&from), s.applied))
        .map_err(|_| (false, "the controller's state is unreadable".to_owned()))?;
    Ok(controller_membership_of(
        node.peers.board.get(0).as_ref(),
        from,
        asked,
        marked,
        state_applied,
    ))
}

/// The acceptance rules of every request here: over peer TLS where it runs, else only from
/// a known member's address. A refusal leaves the payload unread.
fn accept(node: &ClusterNode, conn: &PeerConn) -> Result<(), (bool, String)> {
    if node.peer_tls && conn.tls.is_none() {
        return Err((true, "this cluster runs peer TLS: send over it".into()));
    }
    if conn.tls.is_none() && !conn.peer.is_some_and(|a| node.peers.knows_ip(a.ip())) {
        return Err((true, "no peer TLS, and not a known member's address".into()));
    }
    Ok(())
}

/// Node `from` must be a registered, active member.
fn registered(node: &ClusterNode, from: u64) -> Result<(), (bool, String)> {
    let registered = node
        .state
        .read()
        .map(|s| s.nodes.get(&from).is_some_and(|n| !n.removed))
        .unwrap_or(false);
    if registered {
        Ok(())
    } else {
        Err((false, format!("node {from} is no registered member")))
    }
}

/// Reads, checks and takes the request. An error is a refusal to count, with whether the
/// payload was left unread.
async fn read_and_take(
    node: &ClusterNode,
    conn: &mut PeerConn,
    len: usize,
) -> Result<Answer, (bool, String)> {
    accept(node, conn)?;
    if len > MAX_REQUEST_FRAME {
        return Err((
            true,
            format!("a request of {len} bytes (at most {MAX_REQUEST_FRAME})"),
        ));
    }
    let payload = peer::read_payload(&mut conn.stream, len)
        .await
        .map_err(|e| (false, e.to_string()))?;
    let (from, command) = decode_request(&payload).map_err(|e| (false, e))?;
    let c = Command::decode(command)
        .map_err(|e| (false, format!("a command that does not decode: {e}")))?;
    about_sender(&c, from).map_err(|e| (false, e))?;
    registered(node, from)?;
    if node.is_controller_leader() {
        return Ok(match node.propose(&c).await {
            Ok(_) => Answer::Proposed,
            Err(e) => Answer::Refused(e.to_string()),
        });
    }
    // Passed on through this node's own replica only: never over the peer channel again.
    Ok(match node.pass_on(command.to_vec()) {
        Ok(()) => Answer::PassedOn,
        Err(e) => Answer::Refused(format!(
            "this node does not lead the controller and cannot pass the command on: {e}"
        )),
    })
}

/// Sends `command` from node `from` to the member at `addr` (from a glommio executor) and
/// returns its answer, within [`RELAY_TIMEOUT`].
pub async fn request(
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    server_name: &str,
    from: u64,
    command: &[u8],
) -> Result<Answer, String> {
    let bytes = encode_request(from, command)?;
    let to = (addr, tls, server_name);
    exchange(to, (CONTROL_COMMAND, &bytes), CONTROL_ANSWER, decode_answer).await
}

/// Asks the member at `addr` (from a glommio executor) whether `group`'s configuration still
/// counts node `from`, whose replica of it applied through `applied`; within
/// [`RELAY_TIMEOUT`].
pub async fn request_membership(
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    server_name: &str,
    (from, group, applied): (u64, u64, u64),
) -> Result<Membership, String> {
    let bytes = encode_membership_request(from, group, applied);
    let to = (addr, tls, server_name);
    exchange(
        to,
        (CONTROL_MEMBERSHIP, &bytes),
        MEMBERSHIP_ANSWER,
        decode_membership,
    )
    .await
}

/// One request and one answer on a connection of their own: `request` (its kind and
/// payload) to the member `to` (address, peer TLS, server name), then the answer of kind
/// `answer` decoded by `decode` (an ERROR frame is its reason as a refusal), all within
/// [`RELAY_TIMEOUT`].
async fn exchange<T>(
    (addr, tls, server_name): (SocketAddr, Option<&PeerTls>, &str),
    (kind, payload): (u8, &[u8]),
    answer: u8,
    decode: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<T, String> {
    let talk = async {
        let mut stream = peer::connect(addr, tls, server_name, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        peer::write_frame(&mut stream, kind, payload)
            .await
            .map_err(|e| e.to_string())?;
        match peer::read_frame(&mut stream, MAX_ANSWER_FRAME).await {
            Ok(Some(f)) if f.kind == answer => decode(&f.payload),
            Ok(Some(f)) if f.kind == peer::kind::ERROR => {
                Err(format!("refused: {}", String::from_utf8_lossy(&f.payload)))
            }
            Ok(Some(f)) => Err(format!("unexpected frame kind {:#04x}", f.kind)),
            Ok(None) => Err("closed without an answer".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    match glommio::timer::timeout(RELAY_TIMEOUT, async { Ok(talk.await) }).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {RELAY_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(node: u64) -> Command {
        Command::ReplicaStopped {
            topic: "s".into(),
            partition: 0,
            node,
        }
    }

    #[test]
    fn a_request_is_laid_out_as_documented() {
        let command = stopped(2).encode();
        let bytes = encode_request(2, &command).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(&bytes[1..9], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[9..], &command[..]);
        // docs/format.md's example.
        let doc = br#"{"op":"replica_stopped","topic":"s","partition":0,"node":2}"#;
        assert_eq!(&bytes[9..], &doc[..]);
        let (from, c) = decode_request(&bytes).unwrap();
        assert_eq!((from, c), (2, &command[..]));
        assert_eq!(Command::decode(c).unwrap(), stopped(2));
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Proposed,
            Answer::PassedOn,
            Answer::Refused(String::new()),
            Answer::Refused("the controller has no leader".into()),
        ] {
            assert_eq!(decode_answer(&encode_answer(&a)).unwrap(), a);
        }
        assert_eq!(encode_answer(&Answer::Proposed), [0]);
        assert_eq!(encode_answer(&Answer::PassedOn), [1]);
        assert_eq!(encode_answer(&Answer::Refused("no".into())), b"\x02no");
        // A long reason is cut at a character boundary, and still decodes.
        let long = "é".repeat(MAX_REASON_BYTES);
        let bytes = encode_answer(&Answer::Refused(long));
        // With its kind byte, within the frame maximum.
        assert!(bytes.len() < MAX_ANSWER_FRAME);
        assert!(matches!(decode_answer(&bytes), Ok(Answer::Refused(w)) if !w.is_empty()));
    }

    #[test]
    fn truncated_oversized_and_garbage_requests_are_errors() {
        let command = stopped(3).encode();
        let good = encode_request(3, &command).unwrap();
        for cut in 0..REQUEST_HEAD + 1 {
            assert!(decode_request(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut other_version = good.clone();
        other_version[0] = 2;
        assert!(decode_request(&other_version).is_err());
        let mut from_zero = good.clone();
        from_zero[1..9].fill(0);
        assert!(decode_request(&from_zero).is_err());
        let big = vec![b'x'; MAX_COMMAND_BYTES + 1];
        assert!(encode_request(3, &big).is_err());
        assert!(encode_request(3, &[]).is_err());
        let mut oversized = good[..REQUEST_HEAD].to_vec();
        oversized.extend_from_slice(&big);
        assert!(decode_request(&oversized).is_err());
        // A body that is no command decodes as a frame and fails as a command.
        let not_json = encode_request(3, b"{not json").unwrap();
        let (_, c) = decode_request(&not_json).unwrap();
        assert!(Command::decode(c).is_err());
        // Random bytes never panic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Ok((_, c)) = decode_request(&bytes) {
                let _ = Command::decode(c);
            }
            let _ = decode_answer(&bytes);
        }
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(decode_answer(&[]).is_err());
        assert!(decode_answer(&[0, 1]).is_err());
        assert!(decode_answer(&[1, b'x']).is_err());
        assert!(decode_answer(&[3]).is_err());
        assert!(decode_answer(&[2, 0xFF, 0xFE]).is_err());
        let mut long = vec![2];
        long.extend(std::iter::repeat_n(b'a', MAX_REASON_BYTES + 1));
        assert!(decode_answer(&long).is_err());
    }

    /// Peers whose address book knows node 2, at the address returned.
    fn peers_knowing_node_2() -> (crate::raft::transport::Peers, SocketAddr) {
        use crate::raft::transport::{PeerAddr, Peers};
        let addr: SocketAddr = "127.0.0.2:9000".parse().unwrap();
        let peers = Peers::default();
        peers.book.write().unwrap().insert(
            2,
            PeerAddr {
                addr,
                server_name: "127.0.0.2".into(),
            },
        );
        (peers, addr)
    }

    /// Node 2's registry entry, its RPC address `addr`.
    fn node_2(addr: SocketAddr) -> super::super::state::NodeEntry {
        super::super::state::NodeEntry {
            member: "m2".into(),
            name: "n2".into(),
            rpc_addr: addr.to_string(),
            gossip_addr: "127.0.0.2:9001".into(),
            shards: 1,
            removed: false,
        }
    }

    /// A node whose controller replica stopped, knowing node 2 (registered, at 127.0.0.2),
    /// and a connection to it from `from` whose peer sends `frame` (a request's payload, or
    /// nothing): what it makes of the request.
    fn take_on_a_stopped_node(
        from: &str,
        len: usize,
        frame: &[u8],
        peer_tls: bool,
    ) -> Result<Answer, (bool, String)> {
        use crate::raft::board::GroupView;
        use crate::raft::group::Stopped;
        use tokio::io::AsyncWriteExt;
        let (peers, addr) = peers_knowing_node_2();
        peers.board.set(
            0,
            GroupView {
                shard: 0,
                role: raft::StateRole::Follower,
                term: 3,
                leader: raft::INVALID_ID,
                commit: 9,
                applied: 9,
                last_index: 9,
                voters: vec![1, 2, 3],
                learners: vec![],
                matched: vec![],
                committed: vec![],
                stopped: Some(Stopped::Failed),
                lost: false,
            },
        );
        let node = ClusterNode::new(peers, Duration::from_secs(60), Duration::from_secs(30));
        let mut node = std::sync::Arc::into_inner(node).unwrap();
        node.peer_tls = peer_tls;
        node.set_id(3);
        node.state.write().unwrap().nodes.insert(2, node_2(addr));
        let (mut near, far) = tokio::io::duplex(MAX_REQUEST_FRAME + 64);
        let mut conn = PeerConn {
            stream: Box::new(far),
            peer: Some(from.parse().unwrap()),
            tls: None,
        };
        futures_lite::future::block_on(async {
            near.write_all(frame).await.unwrap();
            // Closed after the frame: a truncated one ends in EOF, not a wait.
            drop(near);
            read_and_take(&node, &mut conn, len).await
        })
    }

    #[test]
    fn a_node_that_cannot_propose_refuses_and_never_sends_on() {
        let ok = encode_request(2, &stopped(2).encode()).unwrap();
        let len = ok.len() + 1;
        // From a known member, about itself: read and checked, then refused here, since this
        // node's controller replica is stopped (it does not relay it again).
        let a = take_on_a_stopped_node("127.0.0.2:40000", len, &ok, false).unwrap();
        assert!(
            matches!(&a, Answer::Refused(w) if w.contains("controller replica is stopped")),
            "{a:?}"
        );
        // A stranger without peer TLS: refused unread.
        let e = take_on_a_stopped_node("10.9.9.9:40000", len, &ok, false).unwrap_err();
        assert!(e.0 && e.1.contains("known member"), "{e:?}");
        // Peer TLS runs here, and the connection has none.
        let e = take_on_a_stopped_node("127.0.0.2:40000", len, &ok, true).unwrap_err();
        assert!(e.0 && e.1.contains("peer TLS"), "{e:?}");
        // Oversized: refused unread.
        let e = take_on_a_stopped_node("127.0.0.2:40000", MAX_REQUEST_FRAME + 1, &ok, false)
            .unwrap_err();
        assert!(e.0 && e.1.contains("at most"), "{e:?}");
        // Truncated: the peer sent less than its header said.
        let e = take_on_a_stopped_node("127.0.0.2:40000", len, &ok[..5], false).unwrap_err();
        assert!(!e.0, "{e:?}");
        // About another node, from an unregistered node, not a command.
        let other = encode_request(2, &stopped(3).encode()).unwrap();
        let e =
            take_on_a_stopped_node("127.0.0.2:40000", other.len() + 1, &other, false).unwrap_err();
        assert!(e.1.contains("speaks for itself"), "{e:?}");
        let stranger = encode_request(7, &stopped(7).encode()).unwrap();
        let e = take_on_a_stopped_node("127.0.0.2:40000", stranger.len() + 1, &stranger, false)
            .unwrap_err();
        assert!(e.1.contains("no registered member"), "{e:?}");
        let garbage = encode_request(2, b"{not json").unwrap();
        let e = take_on_a_stopped_node("127.0.0.2:40000", garbage.len() + 1, &garbage, false)
            .unwrap_err();
        assert!(e.1.contains("does not decode"), "{e:?}");
    }

    #[test]
    fn membership_requests_and_answers_are_laid_out_as_documented() {
        let bytes = encode_membership_request(2, 0, 0x0102);
        // docs/format.md's example: node 2, the controller's group, index 258.
        assert_eq!(
            bytes,
            [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(decode_membership_request(&bytes).unwrap(), (2, 0, 258));
        let g = encode_membership_request(3, u64::MAX - 1, 7);
        assert_eq!(decode_membership_request(&g).unwrap(), (3, u64::MAX - 1, 7));
        for cut in 0..bytes.len() {
            assert!(
                decode_membership_request(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_membership_request(&long).is_err());
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(decode_membership_request(&other).is_err());
        let mut zero = bytes.clone();
        zero[1..9].fill(0);
        assert!(decode_membership_request(&zero).is_err());
        for m in [
            Membership::Counted { applied: 7 },
            Membership::NotCounted { applied: u64::MAX },
            Membership::Unknown { applied: 0 },
        ] {
            let b = encode_membership(m);
            assert_eq!(b.len(), MEMBERSHIP_ANSWER_BYTES);
            assert_eq!(decode_membership(&b).unwrap(), m);
        }
        assert_eq!(
            encode_membership(Membership::NotCounted { applied: 9 }),
            [1, 9, 0, 0, 0, 0, 0, 0, 0]
        );
        assert!(decode_membership(&[3, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_membership(&[0; 8]).is_err());
        assert!(decode_membership(&[0; 10]).is_err());
    }

    #[test]
    fn only_a_replica_that_applied_as_far_says_a_node_is_not_counted() {
        use crate::raft::group::Stopped;
        let view = GroupView::follower;
        // Node 2 asks, its replica having applied through 20.
        let out = view(25, vec![1, 3, 4], vec![]);
        assert_eq!(
            membership_of(Some(&out), 2, 20),
            Membership::NotCounted { applied: 25 }
        );
        // A voter or a learner is counted.
        let voter = view(25, vec![1, 2, 3], vec![]);
        assert_eq!(
            membership_of(Some(&voter), 2, 20),
            Membership::Counted { applied: 25 }
        );
        let learner = view(25, vec![1, 3, 4], vec![2]);
        assert_eq!(
            membership_of(Some(&learner), 2, 20),
            Membership::Counted { applied: 25 }
        );
        // Behind the asker (its configuration may predate node 2's joining), stopped, or
        // not running: cannot tell.
        let behind = view(19, vec![1, 3], vec![]);
        assert_eq!(
            membership_of(Some(&behind), 2, 20),
            Membership::Unknown { applied: 19 }
        );
        let stopped = GroupView {
            stopped: Some(Stopped::Failed),
            ..out.clone()
        };
        assert_eq!(
            membership_of(Some(&stopped), 2, 20),
            Membership::Unknown { applied: 25 }
        );
        assert_eq!(
            membership_of(None, 2, 0),
            Membership::Unknown { applied: 0 }
        );
    }

    /// Node 3, whose controller replica runs with `view` and whose applied state (through
    /// `state_applied`) marks node 2's controller replica stopped when `marked`, answers node
    /// 2's membership question about `group`, node 2's replica having applied through
    /// `asked`.
    fn answer_on_node_3(
        view: GroupView,
        marked: bool,
        state_applied: u64,
        group: u64,
        asked: u64,
    ) -> Membership {
        use tokio::io::AsyncWriteExt;
        let (peers, addr) = peers_knowing_node_2();
        peers.board.set(group, view);
        let node = ClusterNode::new(peers, Duration::from_secs(60), Duration::from_secs(30));
        node.set_id(3);
        {
            let mut s = node.state.write().unwrap();
            s.nodes.insert(2, node_2(addr));
            s.applied = state_applied;
            if marked {
                s.controller_stopped.insert(2);
            }
        }
        let frame = encode_membership_request(2, group, asked);
        let (mut near, far) = tokio::io::duplex(1024);
        let mut conn = PeerConn {
            stream: Box::new(far),
            peer: Some("127.0.0.2:40000".parse().unwrap()),
            tls: None,
        };
        futures_lite::future::block_on(async {
            near.write_all(&frame).await.unwrap();
            drop(near);
            read_membership(&node, &mut conn, frame.len() + 1).await
        })
        .expect("answered")
    }

    #[test]
    fn a_node_is_told_it_is_out_of_the_controller_only_after_its_mark_applied() {
        let view = |applied: u64, voters: Vec<u64>| GroupView::follower(applied, voters, vec![]);
        // Node 2's controller log was found short (entries it acknowledged gone) and marked
        // lost: it asks with the index its short log applied (here 0), below the entry that
        // added it. Node 3's replica is behind that entry (a learner still catching up), its
        // configuration from before node 2 joined: it must not say node 2 is left out, or
        // node 2 starts its replica afresh (its lost mark gone with its data) while the
        // leader still counts it as a voter, and its empty log's vote could elect a leader
        // lacking entries it acknowledged.
        assert_eq!(
            answer_on_node_3(view(30, vec![1, 3]), false, 30, 0, 0),
            Membership::Unknown { applied: 30 }
        );
        // Marked stopped in node 3's state (the report applied), and node 3's replica applied
        // past that state: the configuration that leaves node 2 out came after the mark, so
        // after node 2's replica last took part; node 2 is left out.
        assert_eq!(
            answer_on_node_3(view(45, vec![1, 3]), true, 40, 0, 0),
            Membership::NotCounted { applied: 45 }
        );
        // Marked, but the replica's view behind the state that holds the mark: cannot tell.
        assert_eq!(
            answer_on_node_3(view(35, vec![1, 3]), true, 40, 0, 0),
            Membership::Unknown { applied: 35 }
        );
        // Counted whether marked or not.
        assert_eq!(
            answer_on_node_3(view(45, vec![1, 2, 3]), false, 40, 0, 0),
            Membership::Counted { applied: 45 }
        );
        // A partition's group (its replica running, its applied index meaningful): as
        // before, on the configuration alone.
        assert_eq!(
            answer_on_node_3(view(30, vec![1, 3]), false, 0, 77, 20),
            Membership::NotCounted { applied: 30 }
        );
    }

    #[test]
    fn only_what_a_node_says_about_itself_is_taken() {
        assert!(about_sender(&stopped(4), 4).is_ok());
        let recovered = Command::ReplicaRecovered {
            topic: "s".into(),
            partition: 1,
            node: 4,
        };
        assert!(about_sender(&recovered, 4).is_ok());
        assert!(about_sender(&stopped(4), 5).is_err());
        assert!(about_sender(&recovered, 5).is_err());
        let remove = Command::RemoveNode { id: 4 };
        assert!(about_sender(&remove, 4).is_err());
    }
}
