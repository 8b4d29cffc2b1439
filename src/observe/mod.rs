//! Observability: logs, metrics, health endpoints and request tracing.
//!
//! - [`logging`]: the `log` backend (human lines or JSON lines, per-module levels), which
//!   stamps every line written on behalf of a call with the call's trace id.
//! - [`rpc`]: per-shard RPC metrics and the one line per finished call, fed by the net
//!   server's `CallObserver` hook.
//! - [`Observability::render`]: the Prometheus exposition: RPC metrics, the engine's
//!   per-shard and per-partition numbers, and the process's own.
//! - [`admin`]: the admin HTTP port (`/metrics`, `/healthz`, `/readyz`), on threads of its
//!   own so that it answers while the engine recovers and while it drains.
//!
//! Nothing here takes a lock on the hot path: calls record into their shard's slot, and the
//! scrape, on the admin thread, reads and merges every slot.

pub mod admin;
pub mod forward;
pub mod logging;
pub mod process;
pub mod prom;
pub mod rpc;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use consensus::membership::{GossipStats, MemberState, MembershipWatch};
use engine::metrics::{HistogramSnapshot, COUNT_BOUNDS, LATENCY_BOUNDS_NS};
use engine::EngineHandle;

use process::ProcessStats;
use prom::{Exposition, Kind};
use rpc::{RpcMetrics, CODES};

/// Where the server is in its life; only `Serving` is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Settings loaded, nothing opened yet.
    Starting = 0,
    /// The engine opens and recovers every partition.
    Recovering = 1,
    /// Every shard listens.
    Serving = 2,
    /// Shutdown began: GOAWAY sent, calls in flight finishing, logs being synced.
    Draining = 3,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Starting,
        Phase::Recovering,
        Phase::Serving,
        Phase::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Recovering => "recovering",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Recovering,
            2 => Phase::Serving,
            _ => Phase::Draining,
        }
    }
}

/// What the admin port reports, shared by the server's threads.
pub struct Observability {
    phase: AtomicU8,
    engine: Mutex<Option<EngineHandle>>,
    rpc: OnceLock<Arc<RpcMetrics>>,
    membership: OnceLock<MembershipWatch>,
    cluster: OnceLock<Arc<consensus::cluster::ClusterNode>>,
    memory: OnceLock<Arc<net::memory::MemoryBudget>>,
    forward: OnceLock<Arc<consensus::raft::forward::ForwardStats>>,
    snapshots: OnceLock<Arc<consensus::raft::snapshot_transfer::SnapshotShared>>,
    start_time: SystemTime,
}

impl Default for Observability {
    fn default() -> Self {
        Observability::new()
    }
}

impl Observability {
    pub fn new() -> Observability {
        Observability {
            phase: AtomicU8::new(Phase::Starting as u8),
            engine: Mutex::new(None),
            rpc: OnceLock::new(),
            membership: OnceLock::new(),
            cluster: OnceLock::new(),
            memory: OnceLock::new(),
            forward: OnceLock::new(),
            snapshots: OnceLock::new(),
            start_time: SystemTime::now(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    pub fn set_phase(&self, p: Phase) {
        let old = self.phase.swap(p as u8, Ordering::SeqCst);
        if old != p as u8 {
            log::info!("phase: {}", p.as_str());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the node is not ready, or `None` when it is: serving, and (in a cluster) joined
    /// and caught up with the controller's log. A node that listens but has not caught up
    /// would answer clients from a stale view of the cluster (a topic it has not heard of
    /// yet), so a Service must not send it clients yet.
    pub fn not_ready(&self) -> Option<String> {
        let phase = self.phase();
        if phase != Phase::Serving {
            return Some(phase.as_str().to_owned());
        }
        let c = self.cluster.get()?;
        consensus::raft::seam::ready(c)
            .err()
            .map(|why| format!("serving, but not ready: {why}"))
    }

    /// The engine to report on, once it runs.
    pub fn set_engine(&self, engine: Option<EngineHandle>) {
        if let Ok(mut e) = self.engine.lock() {
            *e = engine;
        }
    }

    /// The RPC metrics every shard's server records into (set once).
    pub fn set_rpc(&self, rpc: Arc<RpcMetrics>) {
        let _ = self.rpc.set(rpc);
    }

    /// The member list and gossip counters to report (set once).
    pub fn set_membership(&self, watch: MembershipWatch) {
        let _ = self.membership.set(watch);
    }

    /// The node's cluster layer: the controller's state and this node's Raft groups.
    pub fn set_cluster(&self, cluster: Arc<consensus::cluster::ClusterNode>) {
        let _ = self.cluster.set(cluster);
    }

    /// The server's memory budget (set once).
    pub fn set_memory(&self, memory: Arc<net::memory::MemoryBudget>) {
        let _ = self.memory.set(memory);
    }

    /// Produce forwarding's and follower reads' counters (set once).
    pub fn set_forward(&self, stats: Arc<consensus::raft::forward::ForwardStats>) {
        let _ = self.forward.set(stats);
    }

    /// The Raft snapshot transfers' counters (set once).
    pub fn set_snapshots(&self, s: Arc<consensus::raft::snapshot_transfer::SnapshotShared>) {
        let _ = self.snapshots.set(s);
    }

    /// The whole Prometheus exposition, as of now.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "proglog_build_info",
            Kind::Gauge,
            "Always 1; the version is in the label.",
        )
        .sample(
            "proglog_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        let phase = self.phase();
        e.single(
            "proglog_ready",
            Kind::Gauge,
            "1 while the server serves and has caught up with its cluster (what /readyz answers), else 0.",
            if self.is_ready() { 1.0 } else { 0.0 },
        );
        e.family(
            "proglog_phase",
            Kind::Gauge,
            "1 for the phase the server is in: starting, recovering, serving, draining.",
        );
        for p in Phase::ALL {
            e.sample(
                "proglog_phase",
                &[("phase", p.as_str())],
                if p == phase { 1.0 } else { 0.0 },
            );
        }
        if let Some(rpc) = self.rpc.get() {
            render_rpc(&mut e, rpc);
        }
        if let Some(m) = self.membership.get() {
            render_membership(&mut e, m);
        }
        if let Some(c) = self.cluster.get() {
            render_cluster(&mut e, c);
        }
        if let Some(m) = self.memory.get() {
            render_memory(&mut e, m);
        }
        if let Some(f) = self.forward.get() {
            forward::render(&mut e, f);
        }
        if let Some(s) = self.snapshots.get() {
            for (name, help, value) in s.stats.rows() {
                let name = format!("proglog_raft_snapshot_{name}_total");
                e.single(&name, Kind::Counter, help, value as f64);
            }
            e.single(
                "proglog_raft_snapshot_rate_limit_bytes_per_second",
                Kind::Gauge,
                "Bytes per second each snapshot this node sends may take (0: no limit).",
                s.rate_limit() as f64,
            );
        }
        let engine = self.engine.lock().ok().and_then(|e| e.clone());
        if let Some(engine) = engine {
            render_engine(&mut e, &engine);
        }
        render_process(&mut e, &ProcessStats::read(), self.start_time);
        e.finish()
    }
}

/// Proposals and the shards' Ready loops.
fn render_raft_loops(e: &mut Exposition, board: &consensus::raft::board::Board) {
    use consensus::raft::group::ProposalMetrics;
    use std::sync::atomic::Ordering::Relaxed;
    let p = &board.proposals;
    e.family(
        "proglog_raft_proposals_total",
        Kind::Counter,
        "Proposals made on this node's groups (data: clients' appends; controller: cluster \
         commands; conf_change: membership changes), by outcome: refused before reaching \
         Raft's log (not the leader, a transfer or a change pending, too many uncommitted \
         bytes, the group stopped), committed, or failed after it (replaced, leadership \
         lost, group stopped or closed).",
    );
    for (k, kind) in ProposalMetrics::KINDS.iter().enumerate() {
        for (outcome, counter) in [
            ("refused", &p.refused[k]),
            ("committed", &p.committed[k]),
            ("failed", &p.failed[k]),
        ] {
            e.sample(
                "proglog_raft_proposals_total",
                &[("kind", kind), ("outcome", outcome)],
                counter.load(Relaxed) as f64,
            );
        }
    }
    e.family(
        "proglog_raft_commit_latency_seconds",
        Kind::Histogram,
        "From a client's append proposed on its group's leader here to its entry committed \
         and applied, when the appender is answered.",
    )
    .histogram(
        "proglog_raft_commit_latency_seconds",
        &[],
        &p.data_commit_latency.snapshot(),
        1e9,
    );
    let l = board.loop_stats();
    for (name, help, v) in [
        (
            "proglog_raft_ready_rounds_total",
            "Rounds of the shards' Ready loops (each writes its groups' entries and syncs each touched log once).",
            l.rounds,
        ),
        (
            "proglog_raft_syncs_total",
            "Logs persisted by the Ready loops' rounds (one per touched log per round).",
            l.syncs,
        ),
        (
            "proglog_raft_entries_written_total",
            "Raft entries written to this node's logs.",
            l.entries_written,
        ),
        (
            "proglog_raft_entries_applied_total",
            "Committed Raft entries applied here.",
            l.entries_applied,
        ),
        (
            "proglog_raft_messages_sent_total",
            "Raft messages sent in full (heartbeats and their answers travel apart, compact).",
            l.messages,
        ),
        (
            "proglog_raft_frames_sent_total",
            "Transport frames sent: one per destination node per round.",
            l.frames,
        ),
        (
            "proglog_raft_snapshot_reports_stale_total",
            "Reports on a snapshot sent earlier than the one awaited from that follower, dropped.",
            l.snapshot_reports_stale,
        ),
        (
            "proglog_raft_heartbeats_merged_total",
            "Heartbeats and heartbeat answers sent in a frame's compact list, many groups' in one frame.",
            l.heartbeats_merged,
        ),
        (
            "proglog_raft_peer_messages_refused_total",
            "Peer Raft messages refused before raft-rs saw them: ones it would panic on, which no correct node sends.",
            l.peer_messages_refused,
        ),
    ] {
        e.single(name, Kind::Counter, help, v as f64);
    }
}

/// A group is under-replicated (Kafka's term) with fewer voters than its replication factor,
/// or with a voter on a node gossip does not list `live`: such a voter replicates nothing,
/// though the group counts it until the controller removes the node.
fn under_replicated(voters: &[u64], rf: usize, live: &[u64]) -> bool {
    voters.len() < rf || voters.iter().any(|n| !live.contains(n))
}

fn render_cluster(e: &mut Exposition, c: &consensus::cluster::ClusterNode) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = c.state();
    let groups = c.peers.board.all();
    let led: Vec<_> = groups
        .iter()
        .filter(|(_, v)| v.leader != 0 && v.leader == c.id())
        .collect();
    e.single(
        "proglog_cluster_node_id",
        Kind::Gauge,
        "This node's Raft id (0 while it joins).",
        c.id() as f64,
    );
    e.family(
        "proglog_cluster_nodes",
        Kind::Gauge,
        "Nodes of the controller's registry, by state (active, removed).",
    )
    .sample(
        "proglog_cluster_nodes",
        &[("state", "active")],
        s.active_nodes().len() as f64,
    )
    .sample(
        "proglog_cluster_nodes",
        &[("state", "removed")],
        (s.nodes.len() - s.active_nodes().len()) as f64,
    );
    e.single(
        "proglog_cluster_controller_applied_index",
        Kind::Gauge,
        "The last controller command applied here.",
        s.applied as f64,
    );
    e.single(
        "proglog_raft_groups",
        Kind::Gauge,
        "Raft groups (partitions and the controller) this node holds.",
        groups.len() as f64,
    );
    e.single(
        "proglog_raft_groups_led",
        Kind::Gauge,
        "Raft groups this node leads.",
        led.len() as f64,
    );
    e.single(
        "proglog_raft_groups_without_leader",
        Kind::Gauge,
        "Raft groups held here that know no leader.",
        groups.iter().filter(|(_, v)| v.leader == 0).count() as f64,
    );
    let max_lag = led
        .iter()
        .flat_map(|(_, v)| v.matched.iter().map(|&(_, m)| v.commit.saturating_sub(m)))
        .max()
        .unwrap_or(0);
    e.single(
        "proglog_raft_follower_lag_max",
        Kind::Gauge,
        "The largest lag (commit index minus matched index) of a replica of a group led here whose matched index is known (it has answered this leader).",
        max_lag as f64,
    );
    let live = c.live_nodes(&s);
    let under = led
        .iter()
        .filter(|(g, v)| {
            let rf = s
                .topics
                .iter()
                .flat_map(|(name, t)| (0..t.partitions.len() as u32).map(move |p| (name, p, t)))
                .find(|(name, p, t)| {
                    consensus::raft::replica::group_id(
                        &engine::seam::PartitionId::new(name, *p),
                        t.config.incarnation,
                    ) == *g
                })
                .map_or(0, |(_, _, t)| t.replication_factor as usize);
            under_replicated(&v.voters, rf, &live)
        })
        .count();
    e.single(
        "proglog_raft_under_replicated_groups",
        Kind::Gauge,
        "Groups led here with fewer voters than their replication factor, or with a voter on \
         a node gossip does not list live (suspect, down or gone).",
        under as f64,
    );
    e.single(
        "proglog_raft_leader_changes_total",
        Kind::Counter,
        "Times a group held here saw a new leader (elections and transfers).",
        c.peers.board.leader_changes.load(Relaxed) as f64,
    );
    e.single(
        "proglog_raft_became_leader_total",
        Kind::Counter,
        "Times this node became a group's leader.",
        c.peers.board.became_leader.load(Relaxed) as f64,
    );
    e.single(
        "proglog_raft_groups_reopened_total",
        Kind::Counter,
        "Times a group stopped for want of space was opened again here once its log and its \
         Raft metadata took writes again.",
        c.peers.board.reopened.load(Relaxed) as f64,
    );
    e.single(
        "proglog_raft_term_max",
        Kind::Gauge,
        "The highest Raft term among the groups held here.",
        groups.iter().map(|(_, v)| v.term).max().unwrap_or(0) as f64,
    );
    render_raft_loops(e, &c.peers.board);
    e.by_label(
        "proglog_raft_conf_changes_total",
        Kind::Counter,
        "Configuration changes this node proposed, by outcome (committed, failed).",
        "outcome",
        &[
            ("committed", c.stats.conf_changes.load(Relaxed) as f64),
            ("failed", c.stats.conf_changes_failed.load(Relaxed) as f64),
        ],
    );
    e.single(
        "proglog_cluster_commands_total",
        Kind::Counter,
        "Controller commands this node proposed and saw applied.",
        c.stats.commands.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_replicas_replaced_total",
        Kind::Counter,
        "Partitions whose replicas this node, as the controller's leader, moved off removed nodes or topped up.",
        c.stats.replicas_replaced.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_stopped_replicas_moved_total",
        Kind::Counter,
        "Partitions whose stopped replica (its log failed) this node, as the controller's leader, moved to another node.",
        c.stats.stopped_replicas_moved.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_stopped_replicas_reported_total",
        Kind::Counter,
        "Times this node asked the controller to move a replica of its own that stopped (its log failed).",
        c.stats.stopped_replicas_reported.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_stopped_replicas_recovered_total",
        Kind::Counter,
        "Times this node told the controller that a replica of its own marked stopped runs again (after a restart), withdrawing the mark.",
        c.stats.stopped_replicas_recovered.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_stopped_replicas_reset_total",
        Kind::Counter,
        "Replicas of this node that stopped for good and were moved to another node, which this node closed and whose directories it removed.",
        c.stats.stopped_replicas_reset.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_unplaced_replicas_removed_total",
        Kind::Counter,
        "Running replicas of this node no longer placed here whose groups no longer count this node, closed and their logs removed.",
        c.stats.unplaced_replicas_removed.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_controller_replica_resets_total",
        Kind::Counter,
        "Times this node started its controller replica afresh: it had stopped for good, and the controller's group no longer counted it.",
        c.stats.controller_replica_resets.load(Relaxed) as f64,
    );
    e.single(
        "proglog_cluster_commands_relayed_total",
        Kind::Counter,
        "Controller commands this node sent to another member over the peer channel, its own controller replica being stopped or not running.",
        c.stats.commands_relayed.load(Relaxed) as f64,
    );
    e.by_label(
        "proglog_cluster_relayed_commands_received_total",
        Kind::Counter,
        "Controller commands other members relayed to this node over the peer channel, by outcome (taken, refused).",
        "outcome",
        &[
            ("taken", c.stats.commands_relay_served.load(Relaxed) as f64),
            ("refused", c.stats.commands_relay_refused.load(Relaxed) as f64),
        ],
    );
    e.by_label(
        "proglog_cluster_membership_questions_received_total",
        Kind::Counter,
        "Questions from other members whether a group still counts them, by outcome (answered, refused).",
        "outcome",
        &[
            ("answered", c.stats.membership_questions_answered.load(Relaxed) as f64),
            ("refused", c.stats.membership_questions_refused.load(Relaxed) as f64),
        ],
    );
    e.single(
        "proglog_cluster_nodes_removed_total",
        Kind::Counter,
        "Nodes this node, as the controller's leader, removed (left, or unreachable past the dead-node timeout).",
        c.stats.nodes_removed.load(Relaxed) as f64,
    );
    let st = &c.peers.stats;
    let get = consensus::raft::transport::TransportStats::get;
    e.family(
        "proglog_raft_transport_bytes_total",
        Kind::Counter,
        "Raft transport bytes, by direction.",
    )
    .sample(
        "proglog_raft_transport_bytes_total",
        &[("direction", "sent")],
        get(&st.bytes_sent) as f64,
    )
    .sample(
        "proglog_raft_transport_bytes_total",
        &[("direction", "received")],
        get(&st.bytes_received) as f64,
    );
    e.single(
        "proglog_raft_transport_connects_total",
        Kind::Counter,
        "Raft connections opened (reconnects included).",
        get(&st.connects) as f64,
    );
    e.single(
        "proglog_raft_transport_connect_failures_total",
        Kind::Counter,
        "Raft connection attempts that failed.",
        get(&st.connect_failures) as f64,
    );
    e.family(
        "proglog_raft_transport_connections_closed_total",
        Kind::Counter,
        "Raft connections this node closed: a frame over the maximum (oversized), one no member sends (malformed), no peer TLS and not a member's address (refused), or from a node of another cluster (foreign).",
    );
    for (reason, c) in [
        ("oversized", &st.oversized),
        ("malformed", &st.malformed),
        ("refused", &st.refused),
        ("foreign", &st.foreign),
    ] {
        e.sample(
            "proglog_raft_transport_connections_closed_total",
            &[("reason", reason)],
            get(c) as f64,
        );
    }
}

fn render_membership(e: &mut Exposition, m: &MembershipWatch) {
    let list = m.members();
    e.family(
        "proglog_members",
        Kind::Gauge,
        "Cluster members this node knows, by state (up, suspect, down, left); itself included.",
    );
    for s in MemberState::ALL {
        e.sample(
            "proglog_members",
            &[("state", s.as_str())],
            list.count(s) as f64,
        );
    }
    let st = m.stats();
    let get = GossipStats::get;
    e.single(
        "proglog_gossip_suspicions_total",
        Kind::Counter,
        "Times a member became suspect (a probe failed and was not yet refuted).",
        get(&st.suspicions) as f64,
    );
    e.single(
        "proglog_gossip_failed_probes_total",
        Kind::Counter,
        "Probes of a member that got no answer, directly or through others.",
        get(&st.failed_probes) as f64,
    );
    e.family(
        "proglog_gossip_packets_total",
        Kind::Counter,
        "Gossip datagrams, by direction.",
    )
    .sample(
        "proglog_gossip_packets_total",
        &[("direction", "sent")],
        get(&st.packets_sent) as f64,
    )
    .sample(
        "proglog_gossip_packets_total",
        &[("direction", "received")],
        get(&st.packets_received) as f64,
    );
    e.family(
        "proglog_gossip_bytes_total",
        Kind::Counter,
        "Gossip bytes (UDP payload), by direction.",
    )
    .sample(
        "proglog_gossip_bytes_total",
        &[("direction", "sent")],
        get(&st.bytes_sent) as f64,
    )
    .sample(
        "proglog_gossip_bytes_total",
        &[("direction", "received")],
        get(&st.bytes_received) as f64,
    );
    e.family(
        "proglog_gossip_dropped_packets_total",
        Kind::Counter,
        "Datagrams dropped: malformed (not ours, truncated, undecodable), unauthenticated (no or another cluster key, bad tag), or full (they named members past the bound on listed members).",
    )
    .sample(
        "proglog_gossip_dropped_packets_total",
        &[("reason", "malformed")],
        get(&st.dropped_malformed) as f64,
    )
    .sample(
        "proglog_gossip_dropped_packets_total",
        &[("reason", "unauthenticated")],
        get(&st.dropped_unauthenticated) as f64,
    )
    .sample(
        "proglog_gossip_dropped_packets_total",
        &[("reason", "full")],
        get(&st.dropped_full) as f64,
    );
    e.single(
        "proglog_gossip_send_errors_total",
        Kind::Counter,
        "Gossip datagrams the operating system refused to send.",
        get(&st.send_errors) as f64,
    );
    e.single(
        "proglog_gossip_join_attempts_total",
        Kind::Counter,
        "Rounds of announcing this node to the start-join addresses (or asking them for the gossip key).",
        get(&st.join_attempts) as f64,
    );
}

fn render_memory(e: &mut Exposition, m: &net::memory::MemoryBudget) {
    e.single(
        "proglog_memory_budget_bytes",
        Kind::Gauge,
        "The server's memory budget (--memory-budget) for buffers that grow with load.",
        m.limit() as f64,
    );
    e.single(
        "proglog_memory_used_bytes",
        Kind::Gauge,
        "Bytes charged to the memory budget now: connections' queued requests, replies, read-ahead and HTTP/2 send buffers, and the engine's write-behind buffers.",
        m.used() as f64,
    );
    e.single(
        "proglog_memory_peak_bytes",
        Kind::Gauge,
        "The most ever charged to the memory budget at once.",
        m.peak() as f64,
    );
    e.single(
        "proglog_memory_waits_total",
        Kind::Counter,
        "Reservations that waited for memory (a connection's share or the budget used up).",
        m.waits() as f64,
    );
}

fn render_rpc(e: &mut Exposition, rpc: &RpcMetrics) {
    let totals = rpc.totals();
    e.family(
        "proglog_rpc_requests_total",
        Kind::Counter,
        "Finished gRPC calls by method and status code.",
    );
    for t in &totals {
        for (code, &n) in t.calls_by_code.iter().enumerate().take(CODES) {
            // Every method shows its OK series from the start; other codes once they occur.
            if n > 0 || code == 0 {
                let name = net::Code::from_i32(code as i32).name();
                e.sample(
                    "proglog_rpc_requests_total",
                    &[("method", &t.method), ("code", name)],
                    n as f64,
                );
            }
        }
    }
    e.family(
        "proglog_rpc_duration_seconds",
        Kind::Histogram,
        "gRPC call duration by method, from the request headers to the status (whole streams for streaming calls).",
    );
    for t in &totals {
        e.histogram(
            "proglog_rpc_duration_seconds",
            &[("method", &t.method)],
            &t.latency_ns,
            1e9,
        );
    }
    e.family(
        "proglog_rpc_received_bytes_total",
        Kind::Counter,
        "Request message bytes received, gRPC framing included.",
    );
    for t in &totals {
        e.sample(
            "proglog_rpc_received_bytes_total",
            &[("method", &t.method)],
            t.bytes_in as f64,
        );
    }
    e.family(
        "proglog_rpc_sent_bytes_total",
        Kind::Counter,
        "Response message bytes sent, gRPC framing included.",
    );
    for t in &totals {
        e.sample(
            "proglog_rpc_sent_bytes_total",
            &[("method", &t.method)],
            t.bytes_out as f64,
        );
    }
    let per_shard =
        |e: &mut Exposition, name: &str, kind: Kind, help: &str, f: &dyn Fn(usize) -> f64| {
            e.family(name, kind, help);
            for i in 0..rpc.shards() {
                let shard = i.to_string();
                e.sample(name, &[("shard", &shard)], f(i));
            }
        };
    use std::sync::atomic::Ordering::Relaxed;
    per_shard(
        e,
        "proglog_connections_open",
        Kind::Gauge,
        "Client connections open, by the shard serving them.",
        &|i| rpc.shard(i).connections_open.load(Relaxed) as f64,
    );
    per_shard(
        e,
        "proglog_connections_total",
        Kind::Counter,
        "Client connections accepted and served, by shard.",
        &|i| rpc.shard(i).connections_total.load(Relaxed) as f64,
    );
    e.family(
        "proglog_connections_moved_total",
        Kind::Counter,
        "Client connections handed from the shard that accepted them to one serving fewer.",
    );
    e.sample(
        "proglog_connections_moved_total",
        &[],
        rpc.balancer.moved() as f64,
    );
    per_shard(
        e,
        "proglog_rpc_streams_open",
        Kind::Gauge,
        "gRPC calls (HTTP/2 streams) running, by shard.",
        &|i| rpc.shard(i).calls_open.load(Relaxed) as f64,
    );
}

fn merged(
    snaps: &[engine::metrics::ShardMetricsSnapshot],
    bounds: &'static [u64],
    f: fn(&engine::metrics::ShardMetricsSnapshot) -> &HistogramSnapshot,
) -> HistogramSnapshot {
    let mut m = HistogramSnapshot::empty(bounds);
    for s in snaps {
        m.merge(f(s));
    }
    m
}

fn render_engine(e: &mut Exposition, engine: &EngineHandle) {
    let snaps = engine.shard_metrics();
    let fsync = merged(&snaps, LATENCY_BOUNDS_NS, |s| &s.fdatasync_ns);
    let groups = merged(&snaps, COUNT_BOUNDS, |s| &s.group_commit_appends);
    e.family(
        "proglog_fdatasync_duration_seconds",
        Kind::Histogram,
        "Duration of each fdatasync of a segment data file (all shards).",
    )
    .histogram("proglog_fdatasync_duration_seconds", &[], &fsync, 1e9);
    e.family(
        "proglog_group_commit_appends",
        Kind::Histogram,
        "Appends made durable by one fdatasync: how many appenders shared it.",
    )
    .histogram("proglog_group_commit_appends", &[], &groups, 1.0);
    e.family(
        "proglog_shard_queue_depth",
        Kind::Gauge,
        "Operations queued for a shard by other threads and shards.",
    );
    for (i, d) in engine.queue_depths().into_iter().enumerate() {
        let shard = i.to_string();
        e.sample("proglog_shard_queue_depth", &[("shard", &shard)], d as f64);
    }

    let mut reports = Vec::with_capacity(engine.shards());
    let mut up = Vec::with_capacity(engine.shards());
    for shard in 0..engine.shards() {
        match futures_lite::future::block_on(engine.shard_report(shard)) {
            Ok(r) => {
                reports.push(r);
                up.push(1.0);
            }
            Err(err) => {
                log::debug!("metrics: shard {shard} did not report: {err}");
                up.push(0.0);
            }
        }
    }
    e.family(
        "proglog_shard_report_up",
        Kind::Gauge,
        "1 if the shard answered this scrape's request for its partitions.",
    );
    for (i, v) in up.iter().enumerate() {
        let shard = i.to_string();
        e.sample("proglog_shard_report_up", &[("shard", &shard)], *v);
    }
    e.family(
        "proglog_open_sealed_segments",
        Kind::Gauge,
        "Sealed segments whose files are open (two descriptors each), by shard; every partition's active segment is open besides.",
    );
    for r in &reports {
        let shard = r.shard.to_string();
        e.sample(
            "proglog_open_sealed_segments",
            &[("shard", &shard)],
            r.open_sealed_segments as f64,
        );
    }
    type Field = fn(&engine::LogStats) -> Option<f64>;
    let per_partition: [(&str, Kind, &str, Field); 16] = [
        (
            "proglog_partition_disk_full",
            Kind::Gauge,
            "1 while the partition refuses writes because its disk is full (it takes writes again by itself once space returns), else 0.",
            |s| Some(f64::from(u8::from(s.write_state == engine::WriteState::DiskFull))),
        ),
        (
            "proglog_partition_latched",
            Kind::Gauge,
            "1 while the partition is read-only after an I/O error (until the server restarts), else 0.",
            |s| Some(f64::from(u8::from(s.write_state == engine::WriteState::Latched))),
        ),
        (
            "proglog_partition_lowest_offset",
            Kind::Gauge,
            "Offset of the first record the partition keeps.",
            |s| Some(s.lowest_offset as f64),
        ),
        (
            "proglog_partition_highest_offset",
            Kind::Gauge,
            "Offset of the last record (absent while the partition is empty).",
            |s| (s.next_offset > s.lowest_offset).then(|| (s.next_offset - 1) as f64),
        ),
        (
            "proglog_partition_next_offset",
            Kind::Gauge,
            "Offset the next append gets.",
            |s| Some(s.next_offset as f64),
        ),
        (
            "proglog_partition_size_bytes",
            Kind::Gauge,
            "Bytes of record batches on disk (and buffered) in the partition's segments.",
            |s| Some(s.size_bytes as f64),
        ),
        (
            "proglog_partition_segments",
            Kind::Gauge,
            "Segments of the partition.",
            |s| Some(s.segments as f64),
        ),
        (
            "proglog_partition_appends_total",
            Kind::Counter,
            "Append operations (batches) since the partition was opened.",
            |s| Some(s.appends as f64),
        ),
        (
            "proglog_partition_records_appended_total",
            Kind::Counter,
            "Records appended since the partition was opened.",
            |s| Some(s.records_appended as f64),
        ),
        (
            "proglog_partition_writes_total",
            Kind::Counter,
            "Writes of the write-behind buffer to the data file since the partition was opened.",
            |s| Some(s.writes as f64),
        ),
        (
            "proglog_partition_fdatasyncs_total",
            Kind::Counter,
            "fdatasyncs of the partition's data files since it was opened.",
            |s| Some(s.fdatasyncs as f64),
        ),
        (
            "proglog_partition_payload_bytes_total",
            Kind::Counter,
            "Record value bytes appended since the partition was opened.",
            |s| Some(s.payload_bytes as f64),
        ),
        (
            "proglog_partition_written_bytes_total",
            Kind::Counter,
            "Bytes of batches written to the data files (whole blocks; a partial last block is written again with the next batches) since the partition was opened.",
            |s| Some(s.bytes_written as f64),
        ),
        (
            "proglog_partition_zeroed_bytes_total",
            Kind::Counter,
            "Bytes of zeroes written ahead of the data to keep the active segment's tail allocated (not counted in written_bytes) since the partition was opened.",
            |s| Some(s.zeroed_bytes as f64),
        ),
        (
            "proglog_partition_dma_reads_total",
            Kind::Counter,
            "Reads of segment data from the device since the partition was opened.",
            |s| Some(s.dma_reads as f64),
        ),
        (
            "proglog_partition_memory_reads_total",
            Kind::Counter,
            "Reads of segment data served from memory (write-behind buffer, tail cache) since the partition was opened.",
            |s| Some(s.memory_reads as f64),
        ),
    ];
    for (name, kind, help, field) in per_partition {
        e.family(name, kind, help);
        for r in &reports {
            for (topic, partition, stats) in &r.partitions {
                if let Some(v) = field(stats) {
                    let p = partition.to_string();
                    e.sample(name, &[("topic", topic), ("partition", &p)], v);
                }
            }
        }
    }
}

fn render_process(e: &mut Exposition, p: &ProcessStats, start: SystemTime) {
    let gauges: [(&str, Kind, &str, Option<f64>); 7] = [
        (
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_resident_memory_max_bytes",
            Kind::Gauge,
            "Peak resident memory size in bytes.",
            p.resident_max_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            p.virtual_bytes.map(|v| v as f64),
        ),
        (
            "process_threads",
            Kind::Gauge,
            "Threads of the process.",
            p.threads.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            Kind::Gauge,
            "Limit on open file descriptors.",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time spent, in seconds.",
            p.cpu_seconds,
        ),
    ];
    for (name, kind, help, v) in gauges {
        if let Some(v) = v {
            e.single(name, kind, help, v);
        }
    }
    let start = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    e.single(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since the Unix epoch, in seconds.",
        start,
    );
}

#[cfg(test)]
mod tests {
    use super::under_replicated;

    #[test]
    fn a_group_is_under_replicated_short_of_voters_or_with_one_not_live() {
        assert!(!under_replicated(&[1, 2, 3], 3, &[1, 2, 3, 4]));
        assert!(under_replicated(&[1, 2], 3, &[1, 2, 3]));
        assert!(under_replicated(&[1, 2, 3], 3, &[1, 3]));
        // A lone voter, as on a single node (which lists itself live).
        assert!(!under_replicated(&[1], 1, &[1]));
    }
}
