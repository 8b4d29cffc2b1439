//! The known traps of running raft-rs under a log, one test each, on the real `GroupSet` over
//! in-memory logs and a lossless in-process network that the tests drive step by step:
//! a configuration change proposed while one is pending, or one raft-rs turns into an empty
//! entry; a ReadIndex before the new leader has committed in its term; applying before the
//! commit index is persisted (restart); a follower acknowledging before its fsync; a node
//! restarted with an empty disk; a proposal during a leadership transfer; a lone voter whose
//! disk fills up while it writes.

// raft-rs's message types (rust-protobuf) are filled field by field.
#![allow(clippy::field_reassign_with_default)]

use consensus::raft::{
    Error, FullAt, GroupConfig, GroupSet, LogStore, MemStore, Outcome, Transport,
};
use engine::NewRecord;
use futures_channel::oneshot;
use futures_lite::future::block_on;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, MessageType};
use raft::StateRole;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::mem_cluster;
use mem_cluster::{add_learner, MemNet, Queue, Rounds};

const G: u64 = 1;

/// A cluster of `n` nodes with one group, all in one thread.
struct Cluster {
    mem: MemNet,
    voters: Vec<u64>,
}

impl std::ops::Deref for Cluster {
    type Target = MemNet;
    fn deref(&self) -> &MemNet {
        &self.mem
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut MemNet {
        &mut self.mem
    }
}

impl Rounds for Cluster {
    fn mem(&self) -> &MemNet {
        &self.mem
    }
    fn mem_mut(&mut self) -> &mut MemNet {
        &mut self.mem
    }
    fn group(&self) -> u64 {
        G
    }
    fn round(&mut self) {
        self.mem.round_with(|_, _| {});
    }
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let voters: Vec<u64> = (1..=n).collect();
        let mut c = Cluster {
            mem: MemNet::default(),
            voters: voters.clone(),
        };
        for id in 1..=n {
            c.stores.insert(id, Rc::new(MemStore::new()));
            c.start(id, &voters);
        }
        c
    }

    fn start(&mut self, id: u64, voters: &[u64]) {
        let mut set = GroupSet::new(id, GroupConfig::default(), id * 1000);
        block_on(set.add_group(G, Rc::clone(&self.stores[&id]), voters)).expect("open group");
        self.sets.insert(id, set);
    }

    fn propose(&mut self, leader: u64, value: &str) -> oneshot::Receiver<Outcome> {
        self.set(leader)
            .propose(G, &[NewRecord::new(value.as_bytes().to_vec())], 0)
            .expect("propose")
    }
}

fn outcome<T>(rx: &mut oneshot::Receiver<T>) -> Option<T> {
    rx.try_recv().expect("the waiter is never dropped")
}

#[test]
fn a_conf_change_while_one_is_pending_is_refused_with_an_error() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    let mut first = c
        .set(l)
        .propose_conf_change(G, add_learner(4))
        .expect("first");
    // raft-rs would accept this one and silently replace it by an empty entry.
    match c.set(l).propose_conf_change(G, add_learner(5)) {
        Err(Error::ConfChangePending { .. }) => {}
        other => panic!("a second pending conf change gave {other:?}"),
    }
    c.rounds(5);
    let done = outcome(&mut first).expect("committed").expect("applied");
    assert!(done.index > 0);
    let meta = c.sets[&l].log(G).expect("log").meta();
    assert_eq!(meta.conf_state.learners, vec![4]);
    assert_eq!(meta.conf_index, done.index);
    // Once applied, the next one goes through.
    let mut next = c
        .set(l)
        .propose_conf_change(G, add_learner(5))
        .expect("next");
    c.rounds(5);
    assert!(outcome(&mut next).expect("committed").is_ok());
}

#[test]
fn a_conf_change_raft_turns_into_an_empty_entry_is_answered_refused() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    // Enter a joint configuration explicitly: leaving it takes an explicit empty change.
    let mut joint = add_learner(4);
    joint.transition = ConfChangeTransition::Explicit;
    let mut s = ConfChangeSingle::default();
    s.change_type = ConfChangeType::AddNode;
    s.node_id = 5;
    joint.mut_changes().push(s);
    let mut rx = c.set(l).propose_conf_change(G, joint).expect("joint");
    c.rounds(5);
    assert!(outcome(&mut rx).expect("committed").is_ok());
    // Any change but leaving the joint configuration breaks the rules: raft-rs appends an
    // empty entry in its place and says nothing.
    let mut rx = c
        .set(l)
        .propose_conf_change(G, add_learner(6))
        .expect("proposed");
    c.rounds(5);
    match outcome(&mut rx).expect("answered") {
        Err(Error::ConfChangeRefused { .. }) => {}
        other => panic!("a conf change raft refused was answered {other:?}"),
    }
}

#[test]
fn read_index_before_the_leader_commits_in_its_term_is_not_silently_dropped() {
    let mut c = Cluster::new(3);
    let old = c.elect(1);
    // A new leader in a new term whose first entry cannot commit: the moment a node wins the
    // election, its only follower is cut off.
    c.isolated.insert(old);
    let mut new = None;
    for _ in 0..200 {
        for s in c.sets.values_mut() {
            s.tick();
        }
        c.round();
        new = [2u64, 3].into_iter().find(|&n| {
            c.sets[&n]
                .status(G)
                .is_some_and(|s| s.role == StateRole::Leader)
        });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("a new leader");
    c.isolated.insert(5 - new);
    c.rounds(3);
    let s = c.sets[&new].status(G).expect("status");
    assert_eq!(s.role, StateRole::Leader);
    assert!(
        s.commit < s.last_index,
        "the new term's first entry is not committed"
    );
    // raft-rs would take this ReadIndex and drop it without a word.
    match c.set(new).read_index(G) {
        Err(Error::ReadNotReady { .. }) => {}
        other => panic!(
            "read_index before commit in term gave {:?}",
            other.map(|_| ())
        ),
    }
    // Without a leader at all, the answer is the same.
    let mut lonely = Cluster::new(3);
    match lonely.set(1).read_index(G) {
        Err(Error::ReadNotReady { .. }) => {}
        other => panic!("read_index without a leader gave {:?}", other.map(|_| ())),
    }
    // Once the leader has committed in its term, the read is served.
    let l = lonely.elect(1);
    let mut rx = lonely.set(l).read_index(G).expect("read index");
    lonely.rounds(3);
    let index = outcome(&mut rx).expect("answered").expect("served");
    assert!(index >= 1);
}

#[test]
fn applied_entries_survive_a_restart_that_persisted_no_commit_index() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(c.propose(l, &format!("r{i}")));
        c.rounds(2);
    }
    c.rounds(5);
    for rx in &mut acks {
        assert!(outcome(rx).expect("committed").is_ok());
    }
    let before = c.sets[&2].status(G).expect("status");
    assert_eq!(before.applied, before.commit);
    // Node 2 applied everything; its commit index lives only in the batches it wrote, which
    // carry the commit its writer knew (lower). It restarts: no panic (applied is set from
    // the recovered commit), and it catches up with the leader.
    let crashed = Rc::new(c.stores[&2].crash(0));
    c.stores.insert(2, crashed);
    let voters = c.voters.clone();
    c.start(2, &voters);
    let after = c.sets[&2].status(G).expect("status");
    assert!(after.commit <= before.commit && after.applied == after.commit);
    assert!(after.visible_offset <= before.visible_offset);
    for _ in 0..5 {
        c.tick();
    }
    let healed = c.sets[&2].status(G).expect("status");
    assert_eq!(healed.commit, c.sets[&l].status(G).expect("leader").commit);
    assert_eq!(healed.visible_offset, 20);
}

/// Checks every append response in `frames` against the sender's store: nothing unsynced.
struct AckAudit<'a> {
    store: &'a MemStore,
    inner: Queue,
    acks: usize,
}

impl Transport for AckAudit<'_> {
    async fn fetch_snapshot(
        &mut self,
        _from: u64,
        _group: u64,
        _first: u64,
        _last: u64,
    ) -> Result<Vec<engine::log::EntryBatch>, String> {
        Err("no log is compacted in this test".into())
    }

    fn send(&mut self, to: u64, frame: Vec<u8>) {
        let f = consensus::raft::wire::decode_frame(&frame).expect("frame");
        for (_, m) in consensus::raft::wire::unframe(f).expect("split") {
            if m.msg_type == MessageType::MsgAppendResponse && !m.reject {
                assert_eq!(
                    self.store.unsynced(),
                    0,
                    "acknowledged index {} unsynced",
                    m.index
                );
                assert!(
                    self.store.next_index() > m.index,
                    "acknowledged an entry it lacks"
                );
                self.acks += 1;
            }
        }
        self.inner.send(to, frame);
    }
}

#[test]
fn a_follower_acknowledges_only_what_it_has_synced() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    let syncs_before = c.stores[&2].syncs();
    let mut acks = 0;
    for i in 0..10 {
        let _rx = c.propose(l, &format!("r{i}"));
        // Node 2's rounds are audited; the others run as usual.
        let ids: Vec<u64> = c.sets.keys().copied().collect();
        for id in ids {
            let store = Rc::clone(&c.stores[&id]);
            let mut audit = AckAudit {
                store: &store,
                inner: Queue(Vec::new(), BTreeMap::new()),
                acks: 0,
            };
            block_on(c.set(id).round(&mut audit));
            if id == 2 {
                acks += audit.acks;
            }
            for (to, bytes) in audit.inner.0 {
                c.net.push((id, to, bytes));
            }
        }
        for (_, to, bytes) in std::mem::take(&mut c.net) {
            c.set(to).step_frame(&bytes).expect("frame");
        }
    }
    assert!(acks >= 10, "node 2 acknowledged {acks} appends");
    assert!(c.stores[&2].syncs() > syncs_before);
}

#[test]
fn a_node_restarted_with_an_empty_disk_neither_campaigns_nor_votes() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    let mut rx = c.propose(l, "before");
    c.rounds(5);
    assert!(outcome(&mut rx).expect("committed").is_ok());
    // Node 3's disk is wiped and it comes back under the same id without a configuration
    // (only a group's creation bootstraps one; a wiped member rejoins under a fresh id given
    // by the controller). It may have voted in the current term before: it must not vote
    // again, nor campaign.
    c.stores.insert(3, Rc::new(MemStore::new()));
    c.start(3, &[]);
    c.isolated.insert(l);
    c.set(2).campaign(G).expect("campaign");
    c.rounds(10);
    assert_ne!(
        c.sets[&2].status(G).expect("status").role,
        StateRole::Leader,
        "node 2 won an election with the vote of a node that forgot its votes"
    );
    assert!(c.sets[&3].stats().votes_refused > 0);
    for _ in 0..30 {
        c.tick();
        let s = c.sets[&3].status(G).expect("status");
        assert!(
            matches!(s.role, StateRole::Follower),
            "node 3 is {:?}",
            s.role
        );
    }
    // Nodes 1 and 2 still elect a leader between them once they meet again.
    c.isolated.clear();
    for _ in 0..30 {
        c.tick();
    }
    let leader = c.leader().expect("a leader");
    assert!(leader == 1 || leader == 2);
}

#[test]
fn compaction_never_passes_a_lagging_follower_unless_forced_and_then_it_gets_a_snapshot() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    // Node 3 falls behind.
    c.isolated.insert(3);
    let mut acks = Vec::new();
    for i in 0..30 {
        acks.push(c.propose(l, &format!("r{i}")));
        c.rounds(2);
    }
    c.rounds(3);
    for rx in &mut acks {
        assert!(outcome(rx).expect("committed").is_ok());
    }
    let applied = c.sets[&l].status(G).expect("status").applied;
    let matched3 = c.stores[&3].next_index() - 1;
    // Retention that respects followers stops at what node 3 still needs.
    let to = block_on(c.set(l).compact(G, applied, false)).expect("compact");
    assert!(
        to.is_none_or(|t| t <= matched3),
        "compacted to {to:?} past node 3's {matched3}"
    );
    // A retention limit overrides it: node 3 now needs a snapshot.
    let to = block_on(c.set(l).compact(G, applied - 10, true))
        .expect("compact")
        .expect("moved");
    assert_eq!(to, applied - 10);
    assert_eq!(c.stores[&1].first_index(), to + 1);
    assert!(to + 1 > matched3 + 1);
    c.isolated.clear();
    for _ in 0..10 {
        c.tick();
    }
    assert!(c.sets[&l].stats().snapshots_sent >= 1);
    assert_eq!(c.sets[&3].stats().snapshots_installed, 1);
    let s3 = c.sets[&3].status(G).expect("status");
    let s1 = c.sets[&l].status(G).expect("leader");
    assert_eq!(
        (s3.commit, s3.applied, s3.visible_offset),
        (s1.commit, s1.applied, 30)
    );
    // Node 3 holds the leader's retained log (the snapshot's 10 entries and what followed),
    // identical, and takes new entries after it.
    let (b1, b3) = (c.stores[&1].batches(), c.stores[&3].batches());
    assert!(b3.len() >= 10);
    assert_eq!(
        b1.iter().map(|b| &b.bytes[..]).collect::<Vec<_>>(),
        b3.iter().map(|b| &b.bytes[..]).collect::<Vec<_>>()
    );
    let mut rx = c.propose(l, "after");
    c.rounds(5);
    assert_eq!(
        outcome(&mut rx)
            .expect("committed")
            .expect("ok")
            .base_offset,
        30
    );
    assert_eq!(c.sets[&3].status(G).expect("status").visible_offset, 31);
    // It restarts from what it installed.
    let crashed = Rc::new(c.stores[&3].crash(0));
    c.stores.insert(3, crashed);
    c.start(3, &[]);
    let s3 = c.sets[&3].status(G).expect("status");
    assert!(s3.commit >= to && s3.visible_offset >= 30);
}

/// raft-rs drops proposals while leadership is being handed over: that is no overload (a
/// client told RESOURCE_EXHAUSTED "overloaded" would back off for nothing) but a moment
/// without a leader taking writes.
#[test]
fn a_proposal_during_a_leadership_transfer_is_refused_as_no_leader() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    // The transferee never answers: the transfer stays pending.
    c.isolated.insert(2);
    c.set(l).transfer_leader(G, 2).expect("transfer");
    match c.set(l).propose(G, &[NewRecord::new(b"x".to_vec())], 0) {
        Err(Error::NoLeader { .. }) => {}
        other => panic!("a proposal during a transfer gave {other:?}"),
    }
}

/// Messages a member could send that raft-rs panics on (a heartbeat without a term naming a
/// commit far past the log, an empty proposal, an append whose entries are misnumbered),
/// in one well-formed frame: each is refused before raft-rs sees it, and counted; the node
/// and its group go on, and the next proposal commits on all three.
#[test]
fn messages_raft_rs_would_panic_on_are_refused_and_the_group_goes_on() {
    let mut c = Cluster::new(3);
    let l = c.elect(1);
    let mut rx = c.propose(l, "before");
    c.rounds(5);
    assert!(outcome(&mut rx).expect("committed").is_ok());
    let f = if l == 2 { 3 } else { 2 };
    let s = c.sets[&f].status(G).expect("status");
    let message = |t: MessageType, term: u64| {
        let mut m = raft::eraftpb::Message::default();
        m.msg_type = t;
        m.from = l;
        m.to = f;
        m.term = term;
        m
    };
    let mut heartbeat = message(MessageType::MsgHeartbeat, 0);
    heartbeat.commit = s.last_index + 1000;
    let proposal = message(MessageType::MsgPropose, 0);
    let mut append = message(MessageType::MsgAppend, s.term);
    append.index = s.last_index;
    append.log_term = s.term;
    let mut e = raft::eraftpb::Entry::default();
    e.index = 1;
    e.term = s.term;
    append.entries = vec![e].into();
    let frame = consensus::raft::wire::frame(l, f, &[(G, heartbeat), (G, proposal), (G, append)]);
    let bytes = consensus::raft::wire::encode_frame(&frame);
    c.set(f).step_frame(&bytes).expect("a well-formed frame");
    assert_eq!(c.sets[&f].stats().peer_messages_refused, 3);
    let mut rx = c.propose(l, "after");
    c.rounds(5);
    assert!(outcome(&mut rx).expect("committed").is_ok());
    let after = c.sets[&f].status(G).expect("status");
    assert!(
        after.commit > s.commit && after.stopped.is_none(),
        "{after:?}"
    );
}

/// A configuration change a follower wrote (caught up after missing it, with a commit index
/// past it) in the round before the one that would apply it, then a crash: after the restart
/// the change is applied, and the follower's configuration is the leader's. The last batch
/// it wrote is stamped with a commit index below the unapplied change; stamped past it,
/// the restart took the change as applied, and the follower kept the configuration before
/// it for good (a learner it ignored, a removed voter it still counted).
#[test]
fn a_conf_change_written_but_not_applied_before_a_crash_is_applied_after_the_restart() {
    for remove in [false, true] {
        let mut c = Cluster::new(3);
        let l = c.elect(1);
        let (f, other) = (2, 3);
        c.isolated.insert(f);
        let cc = if remove {
            let mut s = ConfChangeSingle::default();
            s.change_type = ConfChangeType::RemoveNode;
            s.node_id = other;
            let mut cc = raft::eraftpb::ConfChangeV2::default();
            cc.set_changes(vec![s].into());
            cc
        } else {
            add_learner(4)
        };
        let mut rx = c.set(l).propose_conf_change(G, cc).expect("proposed");
        c.rounds(5);
        let at = outcome(&mut rx).expect("committed").expect("applied").index;
        for i in 0..3 {
            drop(c.propose(l, &format!("after {i}")));
            c.rounds(2);
        }
        let want = c.sets[&l].log(G).expect("log").meta().conf_state;
        c.isolated.remove(&f);
        // Node f catches up (after an election, when the change left the leader without a
        // quorum while f was away); crash it once it holds the change, synced, and has not
        // applied it. One round per tick: the window is one round wide.
        let mut crashed = None;
        for _ in 0..300 {
            for s in c.sets.values_mut() {
                s.tick();
            }
            c.round();
            let batches = c.stores[&f].batches();
            let last = batches.last().map_or(0, |b| b.header.raft_index);
            let applied = c.sets[&f].status(G).expect("status").applied;
            if last >= at && applied < at && c.stores[&f].unsynced() == 0 {
                crashed = Some(batches.last().map_or(0, |b| b.header.commit_index));
                break;
            }
        }
        let Some(stamp) = crashed else {
            panic!("node {f} never held the change unapplied (remove: {remove})");
        };
        c.net.retain(|&(from, to, _)| from != f && to != f);
        let store = Rc::new(c.stores[&f].crash(0));
        c.stores.insert(f, store);
        c.start(f, &[]);
        for _ in 0..20 {
            c.tick();
        }
        let got = c.sets[&f].log(G).expect("log").meta();
        let sorted = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        assert_eq!(
            (
                sorted(&got.conf_state.voters),
                sorted(&got.conf_state.learners)
            ),
            (sorted(&want.voters), sorted(&want.learners)),
            "node {f} restarted without the change at {at} (remove: {remove})"
        );
        assert!(got.conf_index >= at);
        assert!(
            stamp < at,
            "the last batch stamped commit {stamp}, the change is at {at}"
        );
    }
}

/// The records `node` shows readers (its committed ones), by value.
fn committed(c: &Cluster, node: u64) -> Vec<String> {
    let visible = c.sets[&node].status(G).expect("status").visible_offset;
    let mut values = Vec::new();
    for b in c.stores[&node].batches() {
        if b.header.next_offset() > visible {
            break;
        }
        for r in engine::batch::decode_records(&b.header, &b.bytes).unwrap_or_default() {
            values.push(String::from_utf8_lossy(&r.value).into_owned());
        }
    }
    values
}

/// A group's only voter whose disk fills up in the middle of a round: entries handed to its
/// log may be on disk although the call failed (a segment roll writes out and syncs the old
/// segment, then cannot create the new one; a failed sync leaves written data in the page
/// cache), and the log recovers them when space returns, where this lone voter commits them.
/// So their appends are outcome unknown; only an append whose entry never reached the log
/// did certainly not happen (RESOURCE_EXHAUSTED to a client). Answering "disk full" to all of
/// them was an aborted read in a single-node fault campaign (seed 8112074419519817324): a
/// produce refused as not written, then read at its offset.
#[test]
fn a_lone_voter_whose_disk_fills_mid_write_says_disk_full_only_of_what_never_reached_its_log() {
    for at in [FullAt::AppendAfterWriting, FullAt::Sync] {
        let mut c = Cluster::new(1);
        let l = c.elect(1);
        let store = Rc::clone(&c.stores[&l]);
        let mut written: Vec<_> = ["a", "b"].iter().map(|v| (*v, c.propose(l, v))).collect();
        store.fill_up_at(at);
        let mut q = Queue(Vec::new(), BTreeMap::new());
        let set = c.set(l);
        // Steps 1-4: "a" and "b" are handed to the log (which fails at once when it fills up
        // while appending).
        let p = block_on(set.round_start(&mut q));
        // Proposed while the round persists: never handed to the log.
        let late = set.propose(G, &[NewRecord::new(b"late".to_vec())], 0);
        let mut synced = Vec::new();
        for (id, s) in set.to_persist(&p) {
            synced.push((id, block_on(s.persist())));
        }
        set.round_finish(p, synced, &mut q);
        assert!(
            set.failure(G).is_some_and(|e| e.is_disk_full()),
            "{at:?}: the group stopped on the full disk"
        );
        for (v, rx) in &mut written {
            match outcome(rx) {
                Some(Err(Error::OutcomeUnknown { why, .. })) => {
                    assert!(why.contains("disk filled up"), "{at:?} {v}: {why}")
                }
                other => panic!("{at:?} {v}: {other:?}, not outcome unknown"),
            }
        }
        let late_refused = match (at, late) {
            // The group stopped in step 4: the proposal is refused as the log is full.
            (FullAt::AppendAfterWriting, Err(e)) => {
                assert!(e.is_disk_full(), "{e:?}");
                true
            }
            (FullAt::Sync, Ok(mut rx)) => match outcome(&mut rx) {
                Some(Err(e)) => {
                    assert!(e.is_disk_full(), "late: {e:?}, not disk full");
                    true
                }
                other => panic!("late: {other:?}"),
            },
            (at, late) => panic!("{at:?}: late proposal {late:?}"),
        };
        assert!(late_refused);

        // Space returns: the group opens again from its log, which kept "a" and "b".
        block_on(c.set(l).reopen_group(G, Rc::clone(&store), false)).expect("reopen");
        c.elect(l);
        c.rounds(3);
        let values = committed(&c, l);
        assert!(
            values.contains(&"a".to_string()) && values.contains(&"b".to_string()),
            "{at:?}: the appends the log kept are committed once it opens again: {values:?}"
        );
        assert!(
            !values.contains(&"late".to_string()),
            "{at:?}: an append answered disk full is committed: {values:?}"
        );
    }
}
