//! proglog's cluster-aware client: the book's resolver and picker, without their bugs.
//!
//! # What this crate owns
//!
//! Given one server address or several (host names allowed), a [`Cluster`] learns the
//! cluster's servers from `GetServers` and each partition's leader and replicas from the
//! Admin service's `DescribeCluster`, then routes every call:
//!
//! * a produce goes to the partition's leader (with no leader known, to any server: it
//!   forwards the write or answers `NOT_LEADER` naming the leader, which is followed at once);
//! * a read goes to the leader, or round-robin over the partition's followers when
//!   [`ReadFrom::Followers`] is chosen (a follower serves only committed records, and may be
//!   a little behind the leader);
//! * the view is refreshed when a node answers `NOT_LEADER` without an address or
//!   `NO_LEADER`, when a connection dies or cannot be made, and every
//!   [`Options::refresh_interval`] in the background.
//!
//! Connect time is bounded by the call's own deadline. A produce is sent again only when it
//! was certainly not taken: after `NOT_LEADER` / `NO_LEADER`, or when no connection could be
//! made to send it on. A produce that failed mid-call (timeout, connection lost) is reported
//! to the caller as it is: sending it again could append it twice (docs/clients.md).
//!
//! # Invariants
//!
//! * No global state: everything lives in one [`Cluster`] value (cheap to clone, `!Send`,
//!   on the glommio executor that made it), so two clients never share a stale leader.
//! * A missing or malformed field in a server's answer is skipped, never a panic.
//! * Connections, routes and servers are bounded by what the cluster reports.
//!
//! # Use
//!
//! ```no_run
//! # async fn example() -> Result<(), net::Status> {
//! use std::time::Duration;
//! use proglog_client::{Cluster, Options, ReadFrom};
//!
//! let cluster = Cluster::new(
//!     vec!["10.0.0.1:8400".into(), "node-2.proglog:8400".into()],
//!     Options { read_from: ReadFrom::Followers, ..Options::default() },
//! )?;
//! let offset = cluster.produce("orders", 0, "hello".into(), Some(Duration::from_secs(10))).await?;
//! # let _ = offset; Ok(()) }
//! ```

mod cluster;
pub mod errors;

pub use cluster::{Cluster, Options, ReadFrom, Route, NO_LEADER_PAUSE, REFRESH_INTERVAL};
