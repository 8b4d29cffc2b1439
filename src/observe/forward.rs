//! Metrics of produce forwarding and follower reads (`consensus::raft::forward`): appends this
//! node forwarded to leaders and how they ended, appends it served for other nodes, the
//! connections it closed for what peers sent, and reads that waited for a read index.

use consensus::raft::forward::ForwardStats;

use super::prom::{Exposition, Kind};

pub fn render(e: &mut Exposition, s: &ForwardStats) {
    let get = ForwardStats::get;
    e.single(
        "proglog_forwarded_appends_total",
        Kind::Counter,
        "Appends this node sent to the partition's leader because it does not lead it.",
        get(&s.forwarded) as f64,
    );
    e.single(
        "proglog_forwarded_appends_ok_total",
        Kind::Counter,
        "Forwarded appends the leader acknowledged with offsets.",
        get(&s.forwarded_ok) as f64,
    );
    e.family(
        "proglog_forward_errors_total",
        Kind::Counter,
        "Appends this node could not forward, or whose forward failed, by kind: queue_full \
         (too many in flight to that leader; not sent), unreachable (no address or no \
         connection; not sent), timeout (deadline before it was sent), outcome_unknown (sent, \
         then the connection broke or the deadline passed), remote (the leader answered an \
         error), no_leader (no leader known; not sent).",
    );
    for (kind, c) in [
        ("queue_full", &s.err_queue_full),
        ("unreachable", &s.err_unreachable),
        ("timeout", &s.err_timeout),
        ("outcome_unknown", &s.err_outcome_unknown),
        ("remote", &s.err_remote),
        ("no_leader", &s.no_leader),
    ] {
        e.sample(
            "proglog_forward_errors_total",
            &[("kind", kind)],
            get(c) as f64,
        );
    }
    e.single(
        "proglog_forward_redirects_total",
        Kind::Counter,
        "Forwarded appends sent again to another node after a NotLeader answer (nothing was \
         proposed).",
        get(&s.redirects) as f64,
    );
    e.single(
        "proglog_forward_reroutes_total",
        Kind::Counter,
        "Appends whose leader could not be reached (nothing sent), held until another leader \
         was known or the link could connect again, then sent there.",
        get(&s.reroutes) as f64,
    );
    e.single(
        "proglog_forward_served_total",
        Kind::Counter,
        "Appends this node took from other nodes' forward requests.",
        get(&s.served) as f64,
    );
    e.family(
        "proglog_forward_connections_closed_total",
        Kind::Counter,
        "Forward connections this node closed for what the peer sent: oversized (a frame over \
         the maximum), malformed (cut short, wrong kind, undecodable, bad records), refused (no \
         peer TLS and not a known member's address), foreign (a node of another cluster).",
    );
    for (reason, c) in [
        ("oversized", &s.oversized),
        ("malformed", &s.malformed),
        ("refused", &s.refused),
        ("foreign", &s.foreign),
    ] {
        e.sample(
            "proglog_forward_connections_closed_total",
            &[("reason", reason)],
            get(c) as f64,
        );
    }
    e.single(
        "proglog_read_index_waits_total",
        Kind::Counter,
        "Reads that asked the leader's commit index (ReadIndex) and waited until this replica \
         applied it: reads past this replica's visible end, and linearizable reads.",
        get(&s.read_index_waits) as f64,
    );
    e.single(
        "proglog_read_index_retries_total",
        Kind::Counter,
        "ReadIndex attempts retried (no leader yet, or a leader not yet able to serve reads).",
        get(&s.read_index_retries) as f64,
    );
    e.single(
        "proglog_read_index_failures_total",
        Kind::Counter,
        "Reads that got no read index before their deadline (answered UNAVAILABLE).",
        get(&s.read_index_failures) as f64,
    );
}
