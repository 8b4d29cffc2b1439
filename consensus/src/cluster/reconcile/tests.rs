//! The reconcile passes' decisions, unit by unit.

use super::controller::*;
use super::leader::*;
use super::leaderless::why_leaderless;
use super::local::*;
use super::stopped::*;
use crate::cluster::state::NodeEntry;
use crate::cluster::state::{ClusterState, Command, PartitionEntry, Replica};
use crate::cluster::ClusterNode;
use crate::membership::{Member, NodeId};
use crate::membership::{MemberList, MemberState};
use crate::raft::board::GroupView;
use crate::raft::group::Stopped;
use engine::seam::PartitionId;
use raft::StateRole;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(600);

fn member_id(i: u8) -> NodeId {
    NodeId([i; 16])
}

/// Nodes 1 (this one, the controller's leader), 2 and 3, registered.
fn state() -> ClusterState {
    let mut s = ClusterState::default();
    let entry = |i: u8| NodeEntry {
        member: member_id(i).to_string(),
        name: format!("n{i}"),
        rpc_addr: "127.0.0.1:1".into(),
        gossip_addr: "127.0.0.1:2".into(),
        shards: 1,
        removed: false,
    };
    s.apply(
        1,
        &Command::Bootstrap {
            cluster_id: "c".into(),
            node: entry(1),
        },
    );
    s.apply(2, &Command::Register { node: entry(2) });
    s.apply(3, &Command::Register { node: entry(3) });
    s
}

/// A member list taken at `as_of` on the membership clock: each member in its state
/// since `since`. Members not given are not listed.
fn list(as_of: u64, members: &[(u8, MemberState, u64)]) -> MemberList {
    let mut members: Vec<Member> = members
        .iter()
        .map(|&(i, state, since)| Member {
            node_id: member_id(i),
            name: format!("n{i}"),
            gossip_addr: "127.0.0.1:2".parse().unwrap(),
            rpc_addr: "127.0.0.1:1".parse().unwrap(),
            generation: 1,
            renewal: 0,
            state,
            since: Duration::from_secs(since),
            is_self: i == 1,
        })
        .collect();
    members.sort_by_key(|m| m.node_id);
    MemberList {
        version: 1,
        as_of: Duration::from_secs(as_of),
        members,
    }
}

use MemberState::{Down, Left, Suspect, Up};

/// Far enough from the clock's origin to go back in time by a list's durations.
fn start() -> Instant {
    Instant::now() + Duration::from_secs(100_000)
}

fn at(t0: Instant, secs: u64) -> Instant {
    t0 + Duration::from_secs(secs)
}

#[test]
fn a_suspect_member_is_removed_after_the_timeout() {
    let s = state();
    let mut c = Countdown::default();
    let t0 = start();
    let l = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &l, t0, TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &l, at(t0, 599), TIMEOUT), None);
    let (id, why) = c.due(&s, 1, &l, at(t0, 600), TIMEOUT).unwrap();
    assert_eq!(id, 2);
    assert!(why.contains("suspect"), "{why}");
}

#[test]
fn suspicion_then_down_counts_from_the_suspicion() {
    let s = state();
    let mut c = Countdown::default();
    let t0 = start();
    let suspect = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &suspect, t0, TIMEOUT), None);
    // Down 6 s later: the list says down for 0 s, but the member has not been up since t0.
    let down = list(106, &[(1, Up, 0), (2, Down, 106), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &down, at(t0, 6), TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &down, at(t0, 600), TIMEOUT).unwrap().0, 2);
}

#[test]
fn a_member_seen_up_again_starts_over() {
    let s = state();
    let mut c = Countdown::default();
    let t0 = start();
    let suspect = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
    let up = list(400, &[(1, Up, 0), (2, Up, 400), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &suspect, t0, TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &up, at(t0, 300), TIMEOUT), None);
    let again = list(401, &[(1, Up, 0), (2, Suspect, 401), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &again, at(t0, 301), TIMEOUT), None);
    // 600 s after the first suspicion, 299 s after the second: not yet.
    assert_eq!(c.due(&s, 1, &again, at(t0, 600), TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &again, at(t0, 901), TIMEOUT).unwrap().0, 2);
}

#[test]
fn flapping_between_two_passes_starts_over_too() {
    let s = state();
    let mut c = Countdown::default();
    let t0 = start();
    let suspect = list(100, &[(1, Up, 0), (2, Suspect, 100), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &suspect, t0, TIMEOUT), None);
    // No pass saw it up, but it is suspect since a later time: up in between.
    let again = list(400, &[(1, Up, 0), (2, Suspect, 399), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &again, at(t0, 300), TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &again, at(t0, 600), TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &again, at(t0, 898), TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &again, at(t0, 899), TIMEOUT).unwrap().0, 2);
}

#[test]
fn a_member_the_list_no_longer_holds_is_removed_after_the_timeout() {
    let s = state();
    let mut c = Countdown::default();
    let t0 = start();
    // Node 3 is registered but not listed (its down entry expired, or never seen here).
    let l = list(100, &[(1, Up, 0), (2, Up, 0)]);
    assert_eq!(c.due(&s, 1, &l, t0, TIMEOUT), None);
    assert_eq!(c.due(&s, 1, &l, at(t0, 599), TIMEOUT), None);
    let (id, why) = c.due(&s, 1, &l, at(t0, 600), TIMEOUT).unwrap();
    assert_eq!(id, 3);
    assert!(why.contains("no longer in the member list"), "{why}");
}

#[test]
fn the_countdown_survives_the_member_dropping_out_of_the_list() {
    let s = state();
    let mut c = Countdown::default();
    let t0 = start();
    // Down for 3000 s already when first seen (a timeout above the list's retention).
    let timeout = Duration::from_secs(7200);
    let down = list(3000, &[(1, Up, 0), (2, Up, 0), (3, Down, 0)]);
    assert_eq!(c.due(&s, 1, &down, t0, timeout), None);
    // An hour after going down it is dropped from the list: still counting from then.
    let gone = list(3600, &[(1, Up, 0), (2, Up, 0)]);
    assert_eq!(c.due(&s, 1, &gone, at(t0, 600), timeout), None);
    assert_eq!(c.due(&s, 1, &gone, at(t0, 4199), timeout), None);
    assert_eq!(c.due(&s, 1, &gone, at(t0, 4200), timeout).unwrap().0, 3);
    // Listed up again (it came back), it is forgotten.
    let back = list(9000, &[(1, Up, 0), (2, Up, 0), (3, Up, 9000)]);
    assert_eq!(c.due(&s, 1, &back, at(t0, 4300), timeout), None);
    assert!(c.since.is_empty());
}

#[test]
fn a_new_leader_counts_from_its_own_first_sight() {
    let s = state();
    let t0 = start();
    let gone = list(100, &[(1, Up, 0), (2, Up, 0)]);
    // The old leader had counted 500 s; the new one (a fresh countdown) starts now.
    let mut old = Countdown::default();
    assert_eq!(old.due(&s, 1, &gone, t0, TIMEOUT), None);
    let mut new = Countdown::default();
    assert_eq!(new.due(&s, 2, &gone, at(t0, 500), TIMEOUT), None);
    assert_eq!(new.due(&s, 2, &gone, at(t0, 1099), TIMEOUT), None);
    assert_eq!(new.due(&s, 2, &gone, at(t0, 1100), TIMEOUT).unwrap().0, 3);
    // A node that stops leading forgets its countdown.
    old.clear();
    assert_eq!(old.due(&s, 1, &gone, at(t0, 600), TIMEOUT), None);
}

/// A partition placed on `nodes` (created there, shard 0), the first its preferred leader.
fn placed(nodes: &[u64]) -> PartitionEntry {
    PartitionEntry {
        initial: nodes.to_vec(),
        replicas: nodes
            .iter()
            .map(|&node| Replica { node, shard: 0 })
            .collect(),
        stopped: Vec::new(),
        departed: Vec::new(),
    }
}

/// [`state`] with `topics` created at indexes 4, 5, ..., each with the factor of its first
/// partition's replica count; returns the next index.
fn with_topics(s: &mut ClusterState, topics: Vec<(&str, Vec<PartitionEntry>)>) -> u64 {
    let mut index = 4;
    for (name, partitions) in topics {
        s.apply(
            index,
            &Command::CreateTopic {
                name: name.into(),
                config: engine::LogConfig::default(),
                replication_factor: partitions.first().map_or(0, |p| p.replicas.len() as u32),
                partitions,
            },
        );
        index += 1;
    }
    index
}

/// Replicas re-created after a node's removal and added back when it returns go last in
/// their sets: the nodes that stayed would keep every leadership. The controller
/// reorders sets, one partition a step, until no node is preferred by two partitions
/// more than another replica's node; a node that is not up keeps what it is preferred
/// for; the sets themselves never change.
#[test]
fn preferred_leaders_spread_over_the_nodes_that_are_up() {
    let mut s = state();
    // Six partitions on nodes 1-3, all preferring node 1 or 2 (node 3 came back).
    let partitions: Vec<PartitionEntry> = [[1, 2, 3], [2, 1, 3], [1, 2, 3]]
        .iter()
        .cycle()
        .take(6)
        .map(|nodes| placed(nodes))
        .collect();
    s.apply(
        4,
        &Command::CreateTopic {
            name: "t".into(),
            config: engine::LogConfig::default(),
            replication_factor: 3,
            partitions,
        },
    );
    let sets = |s: &ClusterState| -> Vec<Vec<u64>> {
        let mut v: Vec<Vec<u64>> = s.topics["t"].partitions.iter().map(|p| p.nodes()).collect();
        v.iter_mut().for_each(|n| n.sort_unstable());
        v
    };
    let before = sets(&s);
    let mut index = 5;
    let mut settle = |s: &mut ClusterState, up: &[u64]| {
        let mut steps = 0;
        while let Some(c) = spread_preferred_leaders(s, up) {
            s.apply(index, &c);
            index += 1;
            steps += 1;
            assert!(steps < 10, "no fixed point");
        }
        let mut count = BTreeMap::new();
        for p in &s.topics["t"].partitions {
            *count.entry(p.replicas[0].node).or_insert(0) += 1;
        }
        count
    };
    // Node 3 not up (restarting): nothing goes to it, and 1 and 2 even out (4 and 2).
    assert_eq!(settle(&mut s, &[1, 2]), BTreeMap::from([(1, 3), (2, 3)]));
    // Node 3 up: it gets its share.
    let spread = BTreeMap::from([(1, 2), (2, 2), (3, 2)]);
    assert_eq!(settle(&mut s, &[1, 2, 3]), spread);
    assert_eq!(sets(&s), before);
    // A node down keeps what it is preferred for: nothing moves away from node 3.
    assert_eq!(spread_preferred_leaders(&s, &[1, 2]), None);
}

/// A node that returns with no leaderships gets its share of each topic, not every partition
/// of the first topics: balancing the totals alone made node 3 the preferred leader of all
/// three partitions of `a` (its writes all on one node), `b` keeping the gap.
#[test]
fn preferred_leaders_spread_within_each_topic() {
    let mut s = state();
    let topic = |prefs: &[u64]| -> Vec<PartitionEntry> {
        prefs
            .iter()
            .map(|&first| placed(if first == 1 { &[1, 2, 3] } else { &[2, 1, 3] }))
            .collect()
    };
    let mut index = with_topics(
        &mut s,
        vec![("a", topic(&[1, 2, 1])), ("b", topic(&[1, 2, 1, 2, 1, 2]))],
    );
    let mut steps = 0;
    while let Some(c) = spread_preferred_leaders(&s, &[1, 2, 3]) {
        s.apply(index, &c);
        index += 1;
        steps += 1;
        assert!(steps < 20, "no fixed point");
    }
    let count = |topics: &[&str]| {
        let mut c = BTreeMap::from([(1, 0), (2, 0), (3, 0)]);
        for t in topics {
            for p in &s.topics[*t].partitions {
                *c.entry(p.replicas[0].node).or_insert(0) += 1;
            }
        }
        c
    };
    assert_eq!(count(&["a"]), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    assert_eq!(count(&["b"]), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    assert_eq!(steps, 3, "one move for a, two for b");
}

/// [`state`] with topic `t` created at index 4: one partition on nodes 1 and 2, factor 2.
fn with_topic_t() -> ClusterState {
    let mut s = state();
    let partitions = s.place("t", 1, 2, &[1, 2]).unwrap();
    s.apply(
        4,
        &Command::CreateTopic {
            name: "t".into(),
            config: engine::LogConfig::default(),
            replication_factor: 2,
            partitions,
        },
    );
    s
}

/// Node `me` of [`state`], which holds topic `t` (one partition on nodes 1 and 2, factor
/// 2), its replica on node 2 marked stopped when `marked`; gossip-less, so the only live
/// node is `me`.
fn stopped_setup(me: u8, marked: bool) -> (Arc<ClusterNode>, ClusterState) {
    let mut s = with_topic_t();
    if marked {
        s.apply(
            5,
            &Command::ReplicaStopped {
                topic: "t".into(),
                partition: 0,
                node: 2,
            },
        );
    }
    let node = ClusterNode::new(
        crate::raft::transport::Peers::default(),
        TIMEOUT,
        Duration::from_secs(30),
    );
    node.set_id(u64::from(me));
    node.set_me(s.nodes[&u64::from(me)].clone());
    (node, s)
}

/// A follower's view of a group of voters 1 and 2, stopped as `stopped` says.
fn view(stopped: Option<Stopped>) -> GroupView {
    GroupView {
        shard: 0,
        role: StateRole::Follower,
        term: 1,
        leader: 0,
        commit: 0,
        applied: 0,
        last_index: 0,
        voters: vec![1, 2],
        learners: Vec::new(),
        matched: Vec::new(),
        committed: Vec::new(),
        stopped,
        lost: false,
    }
}

/// `--moved-replica-timeout` in these tests: its default.
const T: Duration = DEFAULT_MOVED_REPLICA_TIMEOUT;

#[test]
fn a_controller_replica_stopped_or_left_out_makes_the_state_stale() {
    // A voter or a learner of the controller, running: current.
    assert!(!controller_stale(
        2,
        Some(&GroupView::follower(9, vec![1, 2, 3], vec![]))
    ));
    assert!(!controller_stale(
        4,
        Some(&GroupView::follower(9, vec![1, 2, 3], vec![4]))
    ));
    // Left out (awaiting a fresh start), or removed with its node: stale.
    assert!(controller_stale(
        2,
        Some(&GroupView::follower(9, vec![1, 3], vec![]))
    ));
    // Stopped: stale; not open (closed while started afresh): stale.
    let stopped = GroupView {
        stopped: Some(Stopped::Failed),
        ..GroupView::follower(9, vec![1, 2, 3], vec![])
    };
    assert!(controller_stale(2, Some(&stopped)));
    assert!(controller_stale(2, None));
}

#[test]
fn an_unplaced_replica_closes_once_its_group_no_longer_talks_to_it() {
    let led = |leader: u64, voters: Vec<u64>| GroupView {
        leader,
        voters,
        ..view(None)
    };
    let long = Some(T);
    let short = Some(T - Duration::from_secs(1));
    // Not open (or not published yet): nothing to close.
    assert_eq!(unplaced_step(2, None, long, T), Unplaced::Keep);
    // Stopped for good: closed and removed; a full disk resumes by itself: kept.
    let failed = view(Some(Stopped::Failed));
    assert_eq!(unplaced_step(2, Some(&failed), None, T), Unplaced::Remove);
    let full = view(Some(Stopped::DiskFull));
    assert_eq!(unplaced_step(2, Some(&full), long, T), Unplaced::Keep);
    // A group still counting it, with a leader: kept, however long.
    assert_eq!(
        unplaced_step(2, Some(&led(1, vec![1, 2])), None, T),
        Unplaced::Keep
    );
    // One that does not count it (never configured, or its removal applied): closed,
    // its data removed, with or without a leader.
    assert_eq!(
        unplaced_step(2, Some(&led(1, vec![1, 3])), None, T),
        Unplaced::Drop
    );
    assert_eq!(
        unplaced_step(2, Some(&led(0, Vec::new())), None, T),
        Unplaced::Drop
    );
    assert_eq!(
        unplaced_step(2, Some(&led(0, vec![1, 3])), long, T),
        Unplaced::Drop
    );
    // Counted, but no leader heard from: closed only past the grace.
    assert_eq!(
        unplaced_step(2, Some(&led(0, vec![1, 2])), short, T),
        Unplaced::Keep
    );
    assert_eq!(
        unplaced_step(2, Some(&led(0, vec![1, 2])), long, T),
        Unplaced::Close
    );
    let learner = GroupView {
        learners: vec![2],
        ..led(1, vec![1, 3])
    };
    assert_eq!(unplaced_step(2, Some(&learner), long, T), Unplaced::Keep);
}

#[test]
fn a_pass_asks_about_a_bounded_number_of_groups() {
    let (node, s) = stopped_setup(2, false);
    let ids: Vec<PartitionId> = (0..5)
        .map(|i| PartitionId::new(format!("t{i}").as_str(), 0))
        .collect();
    for id in &ids {
        // Held here, placed elsewhere, still counting node 2, no leader heard from.
        node.peers
            .board
            .set(crate::raft::replica::group_id(id, 0), view(None));
    }
    let mut seen = Seen::default();
    let t0 = Instant::now();
    seen.begin_pass();
    for id in &ids {
        let _ = unplaced_decision(&node, &s, id, &mut seen, t0);
    }
    // Past the grace: every one may be asked about, each question up to RELAY_DEADLINE
    // when its members do not answer; one pass asks about a few only.
    let later = t0 + DEFAULT_MOVED_REPLICA_TIMEOUT;
    seen.begin_pass();
    for id in &ids {
        let _ = unplaced_decision(&node, &s, id, &mut seen, later);
    }
    assert_eq!(seen.asked.len(), QUESTIONS_PER_PASS, "one pass");
    // The next passes ask about the others.
    let mut at = later;
    for _ in 0..ids.len() {
        at += Duration::from_secs(1);
        seen.begin_pass();
        for id in &ids {
            let _ = unplaced_decision(&node, &s, id, &mut seen, at);
        }
    }
    assert_eq!(seen.asked.len(), ids.len(), "every group asked in time");
}

#[test]
fn a_closing_that_failed_after_the_replica_closed_is_tried_again_as_decided() {
    let failed = view(Some(Stopped::Failed));
    // First try: decided on the view.
    assert_eq!(
        closing_step(2, Some(&failed), None, T, None),
        Unplaced::Remove
    );
    // It failed after the close took the replica off the board: the same step again,
    // not "not open, nothing to close".
    for tried in [Unplaced::Remove, Unplaced::Drop, Unplaced::Close] {
        assert_eq!(closing_step(2, None, None, T, Some(tried)), tried);
    }
    assert_eq!(closing_step(2, None, None, T, None), Unplaced::Keep);
    // On the board again (opened again): decided on the view anew.
    let running = GroupView {
        leader: 1,
        ..view(None)
    };
    assert_eq!(
        closing_step(2, Some(&running), None, T, Some(Unplaced::Drop)),
        Unplaced::Keep
    );
}

#[test]
fn a_topic_whose_dropping_failed_is_asked_about_again_once_placed_here_again() {
    let mut s = with_topic_t();
    // Node 3 held `t`, placed elsewhere, and failed to drop it.
    let mut dropping: BTreeSet<String> = ["t".to_owned(), "gone".to_owned()].into();
    prune_dropping(&mut dropping, |n| n == "t", &s, 3);
    assert_eq!(
        dropping,
        ["t".to_owned()].into(),
        "a topic no longer held is forgotten"
    );
    // `t` is placed on node 3 again (its replica reopened, re-added to its group): the
    // failure is forgotten, so that a later move away asks again whether the group still
    // counts the replica here before the topic is dropped, instead of dropping at once a
    // voter the group may still need.
    let mut back = s.topics["t"].partitions[0].replicas.clone();
    back.retain(|r| r.node != 2);
    back.push(s.replica_on("t", 0, 3));
    s.apply(
        5,
        &Command::SetReplicas {
            topic: "t".into(),
            partition: 0,
            replication_factor: 2,
            replicas: back,
        },
    );
    prune_dropping(&mut dropping, |n| n == "t", &s, 3);
    assert!(dropping.is_empty(), "{dropping:?}");
    // Still placed elsewhere: kept (dropped again at the next pass).
    let mut dropping: BTreeSet<String> = ["t".to_owned()].into();
    prune_dropping(&mut dropping, |n| n == "t", &s, 2);
    assert_eq!(dropping, ["t".to_owned()].into());
}

#[test]
fn a_partition_placed_here_again_while_its_closing_had_failed_is_opened_again() {
    let group = |p| crate::raft::replica::group_id(&PartitionId::new("t", p), 0);
    let mut seen = Seen::default();
    // t/1's closing failed (its replica may be closed); t/0 and t/2 run as ever.
    seen.closing.insert(group(1), Unplaced::Close);
    // Placed here again and still held: opened again. Not placed here: left to closing.
    assert_eq!(closed_but_held("t", 0, &[0, 1], &[0, 1, 2], &seen), vec![1]);
    assert!(closed_but_held("t", 0, &[0], &[0, 1, 2], &seen).is_empty());
    // Not held (its closing completed meanwhile): opened as any replica placed here.
    assert!(closed_but_held("t", 0, &[1], &[0], &seen).is_empty());
    // Remembered until an opening succeeds: the failed closing is forgotten at the
    // pass's end, the partition not opened yet.
    seen.closing.clear();
    seen.reopen.insert(group(1));
    assert_eq!(closed_but_held("t", 0, &[0, 1], &[0, 1, 2], &seen), vec![1]);
    seen.reopen.clear();
    // A topic whose dropping failed: each of its partitions held and placed here again.
    seen.dropping.insert("t".to_owned());
    assert_eq!(
        closed_but_held("t", 0, &[0, 2], &[0, 1, 2], &seen),
        vec![0, 2]
    );
    assert!(closed_but_held("u", 0, &[0], &[0], &seen).is_empty());
}

#[test]
fn a_start_afresh_whose_closing_failed_is_tried_again() {
    // Closed and let go, the opening failed: opened afresh.
    assert_eq!(closed_controller(Some(false), true), ClosedController::Open);
    assert_eq!(
        closed_controller(Some(false), false),
        ClosedController::Open
    );
    // Closed, but the closing failed before the catalog let it go (the rename of its
    // directory, or the catalog's write): started afresh again, not left closed for the
    // rest of the run.
    assert_eq!(closed_controller(Some(true), true), ClosedController::Reset);
    // Held and no start afresh begun: not opened yet, or not published yet.
    assert_eq!(closed_controller(Some(true), false), ClosedController::Wait);
    assert_eq!(closed_controller(None, true), ClosedController::Wait);
}

fn moved(node: &ClusterNode) -> u64 {
    node.stats
        .stopped_replicas_moved
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_stopped_replica_moves_to_a_free_live_node_only() {
    // Node 3 is live and holds no replica: it takes the stopped one's place (the
    // proposal itself fails here: no engine).
    let (node, s) = stopped_setup(3, true);
    let mut unplaced = BTreeSet::new();
    assert!(replace_removed(&node, &s, &mut unplaced));
    assert_eq!(moved(&node), 1);
    // Not marked: nothing to do.
    let (node, s) = stopped_setup(3, false);
    assert!(!replace_removed(&node, &s, &mut BTreeSet::new()));
    assert_eq!(moved(&node), 0);
    // The only live node already holds a replica: nothing moves, remembered (logged) once.
    let (node, s) = stopped_setup(1, true);
    let mut unplaced = BTreeSet::new();
    assert!(!replace_removed(&node, &s, &mut unplaced));
    assert!(!replace_removed(&node, &s, &mut unplaced));
    assert_eq!(moved(&node), 0);
    assert!(unplaced.contains(&("t".to_string(), 0)));
    // The stopped node itself is never chosen again.
    let (node, s) = stopped_setup(2, true);
    assert!(!replace_removed(&node, &s, &mut BTreeSet::new()));
    assert_eq!(moved(&node), 0);
}

#[test]
fn a_new_replica_goes_to_a_node_without_failed_logs_then_to_the_least_loaded() {
    // Nodes 1-3 and 4-5: t/0 on 1 and 2 (2 stopped there), u/0 on 3, 4 and 5 with 4's
    // replica stopped, v/0 on 5.
    let mut s = state();
    for (i, n) in [(4u64, 4u8), (5, 5)] {
        s.apply(
            i,
            &Command::Register {
                node: NodeEntry {
                    member: member_id(n).to_string(),
                    name: format!("n{n}"),
                    rpc_addr: "127.0.0.1:1".into(),
                    gossip_addr: "127.0.0.1:2".into(),
                    shards: 1,
                    removed: false,
                },
            },
        );
    }
    let mut index = 10;
    for (topic, nodes) in [("t", vec![1, 2]), ("u", vec![3, 4, 5]), ("v", vec![5])] {
        let rf = nodes.len() as u32;
        let partitions = s.place(topic, 1, rf, &nodes).unwrap();
        s.apply(
            index,
            &Command::CreateTopic {
                name: topic.into(),
                config: engine::LogConfig::default(),
                replication_factor: rf,
                partitions,
            },
        );
        index += 1;
    }
    for (topic, node) in [("t", 2), ("u", 4)] {
        let c = Command::ReplicaStopped {
            topic: topic.into(),
            partition: 0,
            node,
        };
        s.apply(index, &c);
        index += 1;
    }
    let t0 = s.topics["t"].partitions[0].clone();
    let live = [1, 2, 3, 4, 5];
    // 4 has a failed log (u/0), 3 and 5 have none: 3 holds one replica, 5 two.
    assert_eq!(new_replica_node(&s, &t0, &[1], &live), Some(3));
    assert_eq!(new_replica_node(&s, &t0, &[1, 3], &live), Some(5));
    // Only the troubled node is left: it is still taken rather than none.
    assert_eq!(new_replica_node(&s, &t0, &[1, 3, 5], &live), Some(4));
    // Never the node whose replica of this partition failed, nor a node not live.
    assert_eq!(new_replica_node(&s, &t0, &[1, 3, 4, 5], &live), None);
    assert_eq!(new_replica_node(&s, &t0, &[1], &[1, 2]), None);
}

#[test]
fn a_node_reports_its_failed_replica_after_the_grace_period_and_again_until_marked() {
    let (node, s) = stopped_setup(2, false);
    let group = ClusterNode::partitions(&s)[0].1;
    let reported = || {
        node.stats
            .stopped_replicas_reported
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut here = HashMap::new();
    let t0 = start();
    // A full disk resumes by itself: never reported.
    node.peers.board.set(group, view(Some(Stopped::DiskFull)));
    report_stopped(&node, &s, &mut here, t0);
    report_stopped(&node, &s, &mut here, at(t0, 100));
    assert_eq!(reported(), 0);
    assert!(here.is_empty());
    node.peers.board.set(group, view(Some(Stopped::Failed)));
    report_stopped(&node, &s, &mut here, t0);
    report_stopped(&node, &s, &mut here, at(t0, 29));
    assert_eq!(reported(), 0, "within the grace period");
    report_stopped(&node, &s, &mut here, at(t0, 30));
    assert_eq!(reported(), 1);
    report_stopped(&node, &s, &mut here, at(t0, 34));
    assert_eq!(reported(), 1, "not again within ASK_AGAIN");
    report_stopped(&node, &s, &mut here, at(t0, 35));
    assert_eq!(reported(), 2);
    // Marked in the applied state: no more reports.
    let (_, marked) = stopped_setup(2, true);
    report_stopped(&node, &marked, &mut here, at(t0, 100));
    assert_eq!(reported(), 2);
    // Running again (a restart): forgotten, a later failure starts a new grace period.
    node.peers.board.set(group, view(None));
    report_stopped(&node, &s, &mut here, at(t0, 200));
    assert!(here.is_empty());
}

#[test]
fn a_controller_replica_lost_at_start_is_reported_only_after_this_runs_registration() {
    // Node 2 restarted with its controller log found lost: no state at all.
    let node = ClusterNode::new(
        crate::raft::transport::Peers::default(),
        TIMEOUT,
        Duration::from_secs(30),
    );
    node.set_id(2);
    let s = ClusterState::default();
    let (reported, recovered) = (
        || {
            node.stats
                .stopped_replicas_reported
                .load(std::sync::atomic::Ordering::Relaxed)
        },
        || {
            node.stats
                .stopped_replicas_recovered
                .load(std::sync::atomic::Ordering::Relaxed)
        },
    );
    let lost = GroupView {
        voters: vec![],
        learners: vec![],
        ..view(Some(Stopped::Failed))
    };
    node.peers.board.set(0, lost);
    let mut here = ControllerHere::default();
    let t0 = start();
    controller_replica(&node, &s, &mut here, t0);
    controller_replica(&node, &s, &mut here, at(t0, 29));
    assert_eq!(reported(), 0, "within the grace period");
    // Past it, but this run's registration is not done: a registration applied after
    // the mark would withdraw it before the replica was started afresh.
    controller_replica(&node, &s, &mut here, at(t0, 40));
    assert_eq!(reported(), 0);
    node.registered
        .store(true, std::sync::atomic::Ordering::Relaxed);
    controller_replica(&node, &s, &mut here, at(t0, 41));
    assert_eq!(reported(), 1);
    controller_replica(&node, &s, &mut here, at(t0, 45));
    assert_eq!(reported(), 1, "not again within ASK_AGAIN");
    controller_replica(&node, &s, &mut here, at(t0, 46));
    assert_eq!(reported(), 2);
    // No member could say the group no longer counts it (none reachable here): never
    // started afresh, never asked to be counted.
    assert_eq!(recovered(), 0);
    assert!(!here.fresh);

    // Started afresh (empty, no configuration) and still without state: it asks to be
    // counted again at once, although it cannot tell whether it was removed (members
    // refuse an unregistered node).
    let afresh = GroupView {
        voters: vec![],
        learners: vec![],
        ..view(None)
    };
    node.peers.board.set(0, afresh);
    here = ControllerHere {
        fresh: true,
        ..ControllerHere::default()
    };
    controller_replica(&node, &s, &mut here, at(t0, 50));
    assert_eq!(recovered(), 1);
    controller_replica(&node, &s, &mut here, at(t0, 55));
    assert_eq!(recovered(), 2);
    // With a state that says this node was removed: it asks nothing.
    let (_, removed) = {
        let (n, mut st) = stopped_setup(2, false);
        if let Some(e) = st.nodes.get_mut(&2) {
            e.removed = true;
        }
        (n, st)
    };
    controller_replica(&node, &removed, &mut here, at(t0, 100));
    assert_eq!(recovered(), 2);
}

#[test]
fn a_marked_replica_that_runs_again_asks_for_its_mark_back_until_it_is_gone() {
    let (node, marked) = stopped_setup(2, true);
    let group = ClusterNode::partitions(&marked)[0].1;
    let sent = || {
        node.stats
            .stopped_replicas_recovered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut asked = HashMap::new();
    let t0 = start();
    // Not open yet (the restart has not reopened it), or still failed: nothing.
    report_recovered(&node, &marked, &mut asked, t0);
    node.peers.board.set(group, view(Some(Stopped::Failed)));
    report_recovered(&node, &marked, &mut asked, t0);
    assert_eq!(sent(), 0);
    // Running: sent at once, again after ASK_AGAIN while the mark shows.
    node.peers.board.set(group, view(None));
    report_recovered(&node, &marked, &mut asked, t0);
    assert_eq!(sent(), 1);
    report_recovered(&node, &marked, &mut asked, at(t0, 4));
    assert_eq!(sent(), 1, "not again within ASK_AGAIN");
    report_recovered(&node, &marked, &mut asked, at(t0, 5));
    assert_eq!(sent(), 2);
    // The mark is gone from the applied state: nothing more, and forgotten.
    let (_, unmarked) = stopped_setup(2, false);
    report_recovered(&node, &unmarked, &mut asked, at(t0, 100));
    assert_eq!(sent(), 2);
    assert!(asked.is_empty());
    // Another node's mark is not this node's to withdraw.
    let (other, marked) = stopped_setup(1, true);
    other.peers.board.set(group, view(None));
    report_recovered(&other, &marked, &mut HashMap::new(), t0);
    assert_eq!(
        other
            .stats
            .stopped_replicas_recovered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn left_is_at_once_and_this_node_and_removed_nodes_never() {
    let mut s = state();
    let mut c = Countdown::default();
    let t0 = start();
    let l = list(100, &[(1, Up, 0), (2, Left, 100), (3, Up, 0)]);
    assert_eq!(
        c.due(&s, 1, &l, t0, TIMEOUT),
        Some((2, "left the cluster".to_string()))
    );
    s.apply(4, &Command::RemoveNode { id: 2 });
    assert_eq!(c.due(&s, 1, &l, t0, TIMEOUT), None);
    assert!(c.since.is_empty(), "a removed node's countdown is dropped");
    // This node, even unlisted in its own list, is never removed by itself.
    let without_me = list(100, &[(2, Up, 0), (3, Up, 0)]);
    assert_eq!(c.due(&s, 1, &without_me, at(t0, 10_000), TIMEOUT), None);
}

/// A group of voters 1, 2 and 3, all caught up, led by `leader`.
fn led_by(leader: u64) -> GroupView {
    GroupView {
        shard: 0,
        role: StateRole::Leader,
        term: 7,
        leader,
        commit: 100,
        applied: 100,
        last_index: 100,
        voters: vec![1, 2, 3],
        learners: vec![],
        matched: vec![(1, 100), (2, 100), (3, 100)],
        committed: vec![(1, 100), (2, 100), (3, 100)],
        stopped: None,
        lost: false,
    }
}

#[test]
fn a_removed_leader_hands_its_groups_to_a_voter_gossip_lists_up() {
    // Node 1 was removed while it led: its own (stale) placement still lists it first.
    let v = led_by(1);
    let stale = [1, 2, 3];
    assert_eq!(
        partition_step(1, true, &v, &stale, &[2, 3], &[3]),
        Some(Step::Transfer(3)),
        "to the voter that is up, not the suspect one"
    );
    // Not while no other voter is both up and caught up: it keeps leading.
    let mut behind = led_by(1);
    behind.matched = vec![(1, 100), (2, 100), (3, 90)];
    assert_eq!(
        partition_step(1, true, &behind, &stale, &[2, 3], &[3]),
        None
    );
    // The same node, not removed, has nothing to change.
    assert_eq!(
        partition_step(1, false, &v, &stale, &[1, 2, 3], &[1, 2, 3]),
        None
    );
}

#[test]
fn a_leader_no_longer_placed_hands_over_to_a_voter_gossip_lists_up_first() {
    // Node 1 leads, and is placed elsewhere now; nodes 2 and 3 stay, both caught up.
    let v = led_by(1);
    let placed = [2, 3];
    assert_eq!(
        next_step(1, &v, &placed, usize::MAX, &[1, 2, 3], &[1, 3]),
        Some(Step::Transfer(3)),
        "not to node 2, which gossip lists suspect"
    );
    // None up: still to a caught-up voter that stays.
    assert_eq!(
        next_step(1, &v, &placed, usize::MAX, &[1, 2, 3], &[]),
        Some(Step::Transfer(2))
    );
}

#[test]
fn leadership_goes_back_to_a_preferred_replica_only_when_it_is_up() {
    let v = led_by(2);
    let placed = [1, 2, 3];
    // Node 1, the preferred replica, is suspect: it may be cut off, or about to be removed.
    assert_eq!(
        partition_step(2, false, &v, &placed, &[1, 2, 3], &[2, 3]),
        None
    );
    assert_eq!(
        partition_step(2, false, &v, &placed, &[1, 2, 3], &[1, 2, 3]),
        Some(Step::Transfer(1))
    );
}

/// What a replica without a leader for a while says: a two-replica partition whose other node
/// was removed cannot elect again (said so); one waiting for nodes that are down elects when
/// they return; one with enough voters up points at the network.
#[test]
fn a_group_without_a_leader_says_why_and_whether_it_lasts() {
    let t = Duration::from_secs(31);
    let gone = why_leaderless(t, &[2, 1], &[2, 3], |n| n == 1);
    assert!(gone.contains("needs 2 of its 2 voters [2, 1]"), "{gone}");
    assert!(gone.contains("[1] were removed"), "{gone}");
    assert!(gone.contains("takes no appends again"), "{gone}");
    let down = why_leaderless(t, &[1, 2, 3], &[3], |_| false);
    assert!(down.contains("needs 2 of its 3 voters"), "{down}");
    assert!(down.contains("once enough of nodes [1, 2]"), "{down}");
    assert!(!down.contains("again"), "{down}");
    // One removed of three, one down: it elects once the down one returns.
    let both = why_leaderless(t, &[1, 2, 3], &[3], |n| n == 1);
    assert!(both.contains("[1] were removed"), "{both}");
    assert!(both.contains("once enough of nodes [2]"), "{both}");
    let up = why_leaderless(t, &[1, 2, 3], &[1, 2, 3], |_| false);
    assert!(up.contains("elections keep failing"), "{up}");
}

/// `cluster remove` names what a removal strands: two-replica partitions with a replica on
/// the node, and single-replica ones it held; three-replica ones go on.
#[test]
fn a_removal_names_the_partitions_it_strands_and_those_it_loses() {
    let mut s = state();
    with_topics(
        &mut s,
        vec![
            ("three", vec![placed(&[1, 2, 3])]),
            ("two", vec![placed(&[2, 1]), placed(&[2, 3])]),
            ("one", vec![placed(&[1]), placed(&[3])]),
        ],
    );
    assert_eq!(
        s.stranded_without(1),
        (vec!["two/0".to_owned()], vec!["one/0".to_owned()])
    );
    assert_eq!(s.stranded_without(4), (vec![], vec![]));
    // A three-replica partition whose other replica's node was removed before (no spare
    // took its place) is stranded by a second removal; one left with only a removed
    // node's replica is lost.
    s.nodes.entry(2).and_modify(|n| n.removed = true);
    assert_eq!(
        s.stranded_without(1),
        (
            vec!["three/0".to_owned()],
            vec!["one/0".to_owned(), "two/0".to_owned()]
        )
    );
}
