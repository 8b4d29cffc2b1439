//! Messages from peers, checked before raft-rs steps them.
//!
//! raft-rs trusts its peers: a message no correct node sends (a local message type, a term of
//! 0, entries out of order or conflicting with committed ones, a configuration it cannot
//! restore) makes it panic (`fatal!`), and the panic would take the shard, every group on
//! it, down with it. A peer's bug, or anyone who reaches the peer port as a member, must not
//! be able to do that: such a message is refused here (dropped, counted and logged), never
//! stepped. What a correct node sends always passes (`tests/raft_sim.rs` checks that no
//! message is refused over thousands of seeded rounds of faults).
//!
//! This is not a defence against a member that lies within the protocol (votes twice,
//! acknowledges what it does not hold): Raft assumes its members are not malicious.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfState, Message, MessageType};
use raft::StateRole;

/// Why `m`, received from a peer, must not be stepped into `r`, if it must not.
pub fn refusal<S: raft::Storage>(r: &raft::Raft<S>, m: &Message) -> Option<String> {
    use MessageType as T;
    match m.msg_type {
        T::MsgAppend
        | T::MsgAppendResponse
        | T::MsgRequestVote
        | T::MsgRequestVoteResponse
        | T::MsgRequestPreVote
        | T::MsgRequestPreVoteResponse
        | T::MsgSnapshot
        | T::MsgHeartbeat
        | T::MsgHeartbeatResponse
        | T::MsgTimeoutNow
        | T::MsgReadIndex
        | T::MsgReadIndexResp
        | T::MsgPropose => {}
        // Local messages (an election, a heartbeat round, a snapshot's status, ...): raft-rs
        // makes them on this node.
        t => return Some(format!("{t:?} is not a message between nodes")),
    }
    match m.msg_type {
        // A follower forwards a read request without a term, as raft-rs does; the leader
        // reads its one entry (the request's context).
        T::MsgReadIndex => {
            return (m.entries.len() != 1).then(|| {
                format!(
                    "a read index request with {} entries, 1 expected",
                    m.entries.len()
                )
            })
        }
        // A follower forwards a proposal (a controller command) without a term too; raft-rs
        // panics on one with a term (when it forwards it on) or without entries.
        T::MsgPropose if m.term != 0 => return Some("a forwarded proposal with a term".into()),
        T::MsgPropose if m.entries.is_empty() => {
            return Some("a forwarded proposal without entries".into())
        }
        T::MsgPropose => return None,
        _ => {}
    }
    if m.term == 0 {
        // raft-rs takes a message without a term for one of its own: no term check, and a
        // vote granted on it is answered with term 0, on which it panics.
        return Some(format!("{:?} without a term", m.msg_type));
    }
    match m.msg_type {
        T::MsgAppend => append_refusal(m),
        T::MsgAppendResponse
            if r.state == StateRole::Leader
                && m.term == r.term
                && m.index > r.raft_log.last_index() =>
        {
            // In its term, a follower answers for what this leader sent it, no more.
            Some(format!(
                "an append response for index {}, past this leader's last index {}",
                m.index,
                r.raft_log.last_index()
            ))
        }
        T::MsgSnapshot => conf_state_problem(m.get_snapshot().get_metadata().get_conf_state())
            .map(|why| format!("a snapshot whose configuration cannot be restored: {why}")),
        _ => None,
    }
}

/// Why an append, whose term is not 0, must not be stepped, if it must not: raft-rs's
/// `maybe_append` takes its entries as numbered from `m.index + 1` (it slices them by the
/// difference, and panics on one that conflicts with an entry it committed: numbered so,
/// none can, since it looks no further below its commit index) and as having terms.
fn append_refusal(m: &Message) -> Option<String> {
    if m.log_term > m.term {
        return Some(format!(
            "an append after an entry of term {}, from a leader of term {}",
            m.log_term, m.term
        ));
    }
    if m.index > 0 && m.log_term == 0 {
        // Every entry has a term; raft-rs reads an index past its log as term 0, so this
        // would match there and leave a gap.
        return Some(format!("an append after index {} of term 0", m.index));
    }
    let mut floor = m.log_term.max(1);
    for (i, e) in m.entries.iter().enumerate() {
        let want = m.index.checked_add(i as u64 + 1);
        if want != Some(e.index) {
            return Some(format!(
                "entry {i} of an append after index {} has index {}",
                m.index, e.index
            ));
        }
        if e.term < floor || e.term > m.term {
            return Some(format!(
                "entry {} has term {}, outside [{floor}, {}]",
                e.index, e.term, m.term
            ));
        }
        floor = e.term;
    }
    None
}

/// Why raft-rs could not restore configuration `cs` (a snapshot's), if it could not: the
/// same changes its restore makes, on an empty tracker of our own, and the result compared
/// with `cs` as raft-rs compares them (it panics on either failure).
pub fn conf_state_problem(cs: &ConfState) -> Option<String> {
    let single = |id: u64, t: ConfChangeType| {
        let mut c = ConfChangeSingle::default();
        c.node_id = id;
        c.set_change_type(t);
        c
    };
    let outgoing: Vec<ConfChangeSingle> = cs
        .voters_outgoing
        .iter()
        .map(|&id| single(id, ConfChangeType::AddNode))
        .collect();
    let incoming: Vec<ConfChangeSingle> = (cs.voters_outgoing.iter())
        .map(|&id| single(id, ConfChangeType::RemoveNode))
        .chain(
            cs.voters
                .iter()
                .map(|&id| single(id, ConfChangeType::AddNode)),
        )
        .chain(
            (cs.learners.iter().chain(&cs.learners_next))
                .map(|&id| single(id, ConfChangeType::AddLearnerNode)),
        )
        .collect();
    let mut tracker = raft::ProgressTracker::new(1);
    let mut apply = |joint: bool, changes: &[ConfChangeSingle]| -> Result<(), String> {
        let changed = if joint {
            raft::Changer::new(&tracker).enter_joint(cs.auto_leave, changes)
        } else {
            raft::Changer::new(&tracker).simple(changes)
        };
        let (conf, map) = changed.map_err(|e| e.to_string())?;
        tracker.apply_conf(conf, map, 1);
        Ok(())
    };
    let applied = if outgoing.is_empty() {
        incoming
            .iter()
            .try_for_each(|c| apply(false, std::slice::from_ref(c)))
    } else {
        outgoing
            .iter()
            .try_for_each(|c| apply(false, std::slice::from_ref(c)))
            .and_then(|()| apply(true, &incoming))
    };
    if let Err(why) = applied {
        return Some(why);
    }
    let restored = tracker.conf().to_conf_state();
    // As raft-rs compares them: the same members, in any order.
    let same =
        |a: &[u64], b: &[u64]| a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x));
    let equal = same(&cs.voters, &restored.voters)
        && same(&cs.learners, &restored.learners)
        && same(&cs.voters_outgoing, &restored.voters_outgoing)
        && same(&cs.learners_next, &restored.learners_next)
        && cs.auto_leave == restored.auto_leave;
    (!equal).then(|| format!("{cs:?} restores as {restored:?}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use raft::eraftpb::{Entry, Snapshot};
    use raft::storage::MemStorage;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Node 2 of voters {1, 2}, at term 3 following node 1, its log holding indexes 1..=5 of
    /// term 1, committed up to 3.
    pub(crate) fn follower() -> raft::Raft<MemStorage> {
        let mut r = leaderless();
        r.become_follower(3, 1);
        r
    }

    /// [`follower`] that knows no leader and voted for nobody in term 3.
    fn leaderless() -> raft::Raft<MemStorage> {
        let storage = MemStorage::new_with_conf_state((vec![1, 2], vec![]));
        let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        storage.wl().append(&entries).expect("append");
        let config = raft::Config {
            id: 2,
            ..Default::default()
        };
        let mut r =
            raft::Raft::new(&config, storage, &crate::raft::logger::logger(2, 7)).expect("raft");
        r.become_follower(3, raft::INVALID_ID);
        r.raft_log.commit_to(3);
        r
    }

    /// Node 2 leading in term 4, its no-op (index 6) committed with node 1's answer.
    fn leader() -> raft::Raft<MemStorage> {
        let mut r = leaderless();
        r.become_candidate();
        r.become_leader();
        // The no-op written, as a Ready round would.
        let noop = r.raft_log.unstable_entries().to_vec();
        r.raft_log.store.wl().append(&noop).expect("write");
        r.raft_log.stable_entries(6, 4);
        r.on_persist_entries(6, 4);
        r.step(Message {
            index: 6,
            ..message(MessageType::MsgAppendResponse, 4)
        })
        .expect("node 1's answer");
        assert_eq!((r.term, r.raft_log.committed), (4, 6));
        r
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn message(t: MessageType, term: u64) -> Message {
        Message {
            msg_type: t,
            from: 1,
            to: 2,
            term,
            ..Default::default()
        }
    }

    fn append(term: u64, index: u64, log_term: u64, entries: Vec<Entry>) -> Message {
        Message {
            index,
            log_term,
            entries: entries.into(),
            commit: 3,
            ..message(MessageType::MsgAppend, term)
        }
    }

    /// `m` is refused by a [`follower`] with a reason holding `why`, and stepped into raft-rs
    /// it panics: the reason for the check.
    fn refused_and_fatal(m: Message, why: &str) {
        refused_and_fatal_in(follower, m, why)
    }

    /// [`refused_and_fatal`] in the node `node` makes.
    fn refused_and_fatal_in(node: fn() -> raft::Raft<MemStorage>, m: Message, why: &str) {
        let r = node();
        let reason = refusal(&r, &m).unwrap_or_else(|| panic!("{m:?} not refused"));
        assert!(reason.contains(why), "{reason}");
        let mut r = node();
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            let _ = r.step(m);
        }));
        assert!(stepped.is_err(), "raft-rs took it ({reason})");
    }

    #[test]
    fn what_a_correct_leader_sends_passes() {
        let r = follower();
        for m in [
            append(3, 5, 1, vec![entry(6, 3), entry(7, 3)]),
            append(3, 3, 1, vec![entry(4, 1), entry(5, 1), entry(6, 2)]),
            // A conflict above the commit index: the follower's tail is replaced.
            append(3, 3, 1, vec![entry(4, 3)]),
            // Below the commit index: answered with the commit index.
            append(3, 1, 1, vec![entry(2, 1)]),
            append(3, 0, 0, vec![entry(1, 1)]),
            message(MessageType::MsgHeartbeat, 3),
            message(MessageType::MsgRequestVote, 4),
            message(MessageType::MsgRequestPreVote, 4),
            message(MessageType::MsgTimeoutNow, 3),
            Message {
                entries: vec![entry(0, 0)].into(),
                ..message(MessageType::MsgReadIndex, 0)
            },
        ] {
            assert_eq!(refusal(&r, &m), None, "{m:?}");
            let mut r = follower();
            r.step(m).expect("stepped");
        }
    }

    #[test]
    fn an_append_response_past_the_leaders_log_is_refused() {
        let r = leader();
        let answer = |index| Message {
            index,
            ..message(MessageType::MsgAppendResponse, 4)
        };
        assert_eq!(refusal(&r, &answer(6)), None);
        let why = refusal(&r, &answer(99)).expect("refused");
        assert!(why.contains("past this leader's last index 6"), "{why}");
        // From an older term raft-rs drops it itself; a follower has no use for it.
        assert_eq!(
            refusal(
                &r,
                &Message {
                    term: 3,
                    ..answer(99)
                }
            ),
            None
        );
        assert_eq!(refusal(&follower(), &answer(99)), None);
    }

    #[test]
    fn a_heartbeat_or_a_vote_without_a_term_is_refused() {
        let mut hb = message(MessageType::MsgHeartbeat, 0);
        hb.commit = 40;
        refused_and_fatal(hb, "without a term");
        // Granted by a node that knows no leader, and answered with term 0.
        refused_and_fatal_in(
            leaderless,
            Message {
                index: 9,
                log_term: 9,
                ..message(MessageType::MsgRequestVote, 0)
            },
            "without a term",
        );
    }

    #[test]
    fn local_messages_and_bad_forwarded_proposals_are_refused() {
        // A follower forwards a proposal with a term on, and panics doing it; a leader
        // panics on one without entries.
        refused_and_fatal(message(MessageType::MsgPropose, 3), "with a term");
        refused_and_fatal_in(
            leader,
            message(MessageType::MsgPropose, 0),
            "without entries",
        );
        // A controller command forwarded by a follower: appended by the leader.
        let mut forwarded = message(MessageType::MsgPropose, 0);
        forwarded.entries = vec![entry(0, 0)].into();
        assert_eq!(refusal(&leader(), &forwarded), None);
        let mut r = leader();
        r.step(forwarded).expect("a forwarded proposal");
        assert_eq!(r.raft_log.last_index(), 7);
        for t in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
            MessageType::MsgTransferLeader,
        ] {
            let why = refusal(&follower(), &message(t, 3)).expect("refused");
            assert!(why.contains("not a message between nodes"), "{why}");
        }
        // A leader reads the request's context from its first entry.
        refused_and_fatal_in(leader, message(MessageType::MsgReadIndex, 0), "1 expected");
        let mut read = message(MessageType::MsgReadIndex, 0);
        read.entries = vec![entry(0, 0)].into();
        assert_eq!(refusal(&leader(), &read), None);
        leader().step(read).expect("a read index request");
    }

    #[test]
    fn appends_out_of_order_or_against_committed_entries_are_refused() {
        // Entries not numbered from index + 1: one at a committed index of another term
        // (raft-rs: a conflict with a committed entry), one between the commit index and the
        // index it follows (raft-rs slices by a negative difference).
        refused_and_fatal(append(3, 4, 1, vec![entry(2, 3)]), "has index 2");
        refused_and_fatal(append(3, 4, 1, vec![entry(4, 3)]), "has index 4");
        // Matched past the log's end (raft-rs reads term 0 there), then a commit past it.
        refused_and_fatal(
            Message {
                commit: 20,
                ..append(3, 9, 0, vec![entry(10, 0)])
            },
            "of term 0",
        );
        let r = follower();
        for (m, why) in [
            (append(3, 5, 4, vec![]), "from a leader of term 3"),
            (append(3, 5, 1, vec![entry(6, 4)]), "outside [1, 3]"),
            (append(3, 5, 2, vec![entry(6, 1)]), "outside [2, 3]"),
            (append(3, u64::MAX, 1, vec![entry(0, 1)]), "has index 0"),
        ] {
            let reason = refusal(&r, &m).unwrap_or_else(|| panic!("{m:?}"));
            assert!(reason.contains(why), "{reason}");
        }
    }

    #[test]
    fn a_snapshot_of_a_configuration_raft_cannot_restore_is_refused() {
        let cs = |voters: Vec<u64>, learners: Vec<u64>, outgoing: Vec<u64>, next: Vec<u64>| {
            let mut c = ConfState::default();
            c.voters = voters;
            c.learners = learners;
            c.voters_outgoing = outgoing;
            c.learners_next = next;
            c
        };
        for good in [
            cs(vec![1, 2, 3], vec![], vec![], vec![]),
            cs(vec![1, 2], vec![4], vec![], vec![]),
            cs(vec![1, 2, 3], vec![], vec![1, 2, 4], vec![4]),
            cs(vec![], vec![], vec![], vec![]),
        ] {
            assert_eq!(conf_state_problem(&good), None, "{good:?}");
        }
        // A node listed twice is one node to raft-rs too.
        assert_eq!(
            conf_state_problem(&cs(vec![1, 1, 2], vec![], vec![], vec![])),
            None
        );
        for bad in [
            cs(vec![1, 2], vec![2], vec![], vec![]),
            cs(vec![1, 2], vec![], vec![], vec![3]),
            cs(vec![1, 2], vec![3], vec![1, 2], vec![3]),
        ] {
            assert!(conf_state_problem(&bad).is_some(), "{bad:?}");
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 10;
            snap.mut_metadata().term = 2;
            *snap.mut_metadata().mut_conf_state() = bad.clone();
            let m = Message {
                snapshot: Some(snap.clone()).into(),
                ..message(MessageType::MsgSnapshot, 3)
            };
            let why = refusal(&follower(), &m).expect("refused");
            assert!(why.contains("cannot be restored"), "{why}");
            let mut r = follower();
            let restored = catch_unwind(AssertUnwindSafe(|| r.restore(snap)));
            assert!(restored.is_err(), "raft-rs restored {bad:?}");
        }
    }
}
