//! What the rest of the node sees of membership: a list of members with their states and
//! metadata, published as immutable snapshots that any thread can read or wait on.
//!
//! The gossip shard owns the SWIM state; after every packet and timer it recomputes the list
//! and, when it changed, publishes a new `Arc<MemberList>` with a higher version and wakes
//! every waiter ([`MembershipWatch::changed`]). Readers never block the gossip shard for
//! longer than an `Arc` clone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;

use super::identity::{NodeId, NodeIdentity};

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    /// Alive: answers probes (directly or through others).
    Up,
    /// A probe failed and the suspicion is not refuted yet; still counted as live by SWIM.
    /// Becomes down after the suspicion timeout unless the member refutes it.
    Suspect,
    /// Declared dead by the cluster (failed probes, no refutation in time).
    Down,
    /// Left on purpose (SIGTERM): announced its departure before it stopped.
    Left,
}

impl MemberState {
    pub const ALL: [MemberState; 4] = [
        MemberState::Up,
        MemberState::Suspect,
        MemberState::Down,
        MemberState::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }

    /// Up or suspect: SWIM still treats the member as part of the cluster.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Up | MemberState::Suspect)
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node: its latest known run and what state it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: NodeId,
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    /// Run counter of the node (bumped at each start).
    pub generation: u64,
    /// Rejoins of this run after being declared down.
    pub renewal: u32,
    pub state: MemberState,
    /// Membership-clock time (see [`MemberList::as_of`]) when `state` was entered.
    pub since: Duration,
    /// This member is the node that holds the list.
    pub is_self: bool,
}

impl Member {
    pub(crate) fn from_identity(
        id: &NodeIdentity,
        state: MemberState,
        since: Duration,
        is_self: bool,
    ) -> Member {
        Member {
            node_id: id.node_id,
            name: id.name.clone(),
            gossip_addr: id.gossip_addr,
            rpc_addr: id.rpc_addr,
            generation: id.generation,
            renewal: id.renewal,
            state,
            since,
            is_self,
        }
    }

    /// How long the member had been in its state when the list was taken (the list's
    /// `as_of` is when it last changed: for how long until now, take
    /// [`MembershipWatch::clock_now`] minus `since`).
    pub fn in_state_for(&self, list: &MemberList) -> Duration {
        list.as_of.saturating_sub(self.since)
    }
}

/// A snapshot of every member this node knows, sorted by node id. Down and left members stay
/// listed (with the time they went) for the configured retention, so that a reconcile loop
/// can act on "down for longer than X".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberList {
    /// Bumped every time the list changes.
    pub version: u64,
    /// Membership-clock time the list was taken (time since membership started on this node).
    pub as_of: Duration,
    pub members: Vec<Member>,
}

impl MemberList {
    pub fn get(&self, node: NodeId) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node_id.cmp(&node))
            .ok()
            .map(|i| &self.members[i])
    }

    pub fn count(&self, state: MemberState) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    pub(crate) fn from_map(version: u64, as_of: Duration, map: &BTreeMap<NodeId, Member>) -> Self {
        MemberList {
            version,
            as_of,
            members: map.values().cloned().collect(),
        }
    }
}

/// Counters of the gossip layer; read by the metrics exporter from any thread.
#[derive(Debug, Default)]
pub struct GossipStats {
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Not ours, truncated, unknown version or kind, or foca could not decode it.
    pub dropped_malformed: AtomicU64,
    /// SWIM packets without the cluster key (none, another cluster's, or a bad tag).
    pub dropped_unauthenticated: AtomicU64,
    /// SWIM packets that would have taken the membership past `max_members` addresses.
    pub dropped_full: AtomicU64,
    /// Transitions of a member into suspect.
    pub suspicions: AtomicU64,
    /// Probes that got no answer, directly or indirectly.
    pub failed_probes: AtomicU64,
    /// Sends the operating system refused (unreachable network, full buffers).
    pub send_errors: AtomicU64,
    /// Join attempts (one per round over the resolved start-join addresses).
    pub join_attempts: AtomicU64,
}

impl GossipStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// State shared between the gossip shard and every reader.
#[derive(Debug, Default)]
pub struct Shared {
    list: Mutex<Arc<MemberList>>,
    changed: Event,
    pub stats: GossipStats,
    /// When the membership clock started (set by gossip's driver, or with a lone node's
    /// list): `MemberList::as_of` and `Member::since` count from it.
    pub(crate) clock: std::sync::OnceLock<std::time::Instant>,
    /// Gossip runs: the cluster key is known (or not needed), packets go out and in.
    pub(crate) gossiping: std::sync::atomic::AtomicBool,
    /// This node created the cluster's gossip key after no member at its join addresses
    /// gave it (`MembershipSettings::create_key_after`).
    pub(crate) key_created_here: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn publish(&self, list: MemberList) {
        {
            let mut g = self.list.lock().unwrap_or_else(|p| p.into_inner());
            *g = Arc::new(list);
        }
        self.changed.notify(usize::MAX);
    }

    pub fn current(&self) -> Arc<MemberList> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A handle on the member list for the rest of the node: cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct MembershipWatch {
    pub(crate) shared: Arc<Shared>,
}

impl MembershipWatch {
    pub fn new(shared: Arc<Shared>) -> MembershipWatch {
        MembershipWatch { shared }
    }

    /// A list that never changes: this node alone, up (a node that runs no gossip).
    pub fn single(identity: &NodeIdentity) -> MembershipWatch {
        let shared = Arc::new(Shared::default());
        // Up since now: its time in that state counts from here.
        let _ = shared.clock.set(std::time::Instant::now());
        shared.publish(MemberList {
            version: 1,
            as_of: Duration::ZERO,
            members: vec![Member::from_identity(
                identity,
                MemberState::Up,
                Duration::ZERO,
                true,
            )],
        });
        MembershipWatch { shared }
    }

    /// The membership clock's time now (see [`MemberList::as_of`]): later than the latest
    /// list's `as_of` while the list does not change; the list's time if the clock was
    /// never started.
    pub fn clock_now(&self) -> Duration {
        let list = self.shared.current().as_of;
        self.shared
            .clock
            .get()
            .map_or(list, |start| start.elapsed().max(list))
    }

    /// Whether gossip runs: false while a node with peer TLS still asks its join addresses
    /// for the cluster's key (the list holds this node alone until then), and for a node
    /// that runs no gossip.
    pub fn gossiping(&self) -> bool {
        self.shared.gossiping.load(Ordering::Acquire)
    }

    /// Whether this node created the cluster's gossip key after no member at its join
    /// addresses gave it: it gossips with none of them.
    pub fn key_created_here(&self) -> bool {
        self.shared.key_created_here.load(Ordering::Relaxed)
    }

    /// The latest list.
    pub fn members(&self) -> Arc<MemberList> {
        self.shared.current()
    }

    pub fn stats(&self) -> &GossipStats {
        &self.shared.stats
    }

    /// Waits until the list's version is above `seen`, and returns that list. Works on any
    /// executor or thread (`futures_lite::future::block_on` included).
    pub async fn changed(&self, seen: u64) -> Arc<MemberList> {
        loop {
            let listener = self.shared.changed.listen();
            let now = self.shared.current();
            if now.version > seen {
                return now;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_wakes_on_publish() {
        let shared = Arc::new(Shared::default());
        let w = MembershipWatch::new(shared.clone());
        let t = std::thread::spawn({
            let w = w.clone();
            move || futures_lite::future::block_on(w.changed(0)).version
        });
        std::thread::sleep(Duration::from_millis(20));
        shared.publish(MemberList {
            version: 1,
            ..Default::default()
        });
        assert_eq!(t.join().unwrap(), 1);
        assert_eq!(w.members().version, 1);
    }
}
