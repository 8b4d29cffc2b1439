//! Cluster membership by SWIM gossip (the `foca` crate), the book's Serf done without its
//! gaps.
//!
//! # What it gives the node
//!
//! A [`MembershipWatch`]: the list of every member this node knows ([`MemberList`]), each
//! with its node id, name, gossip and RPC addresses, generation and state (up, suspect,
//! down, left), and a way to wait for the next change. The Raft reconcile loop compares it
//! with the Raft configurations; `GetServers` and `proglog cluster members` read it.
//!
//! # How it is built
//!
//! * [`core::Core`] is the state machine without I/O: foca plus authentication, join retries,
//!   the "left" broadcast and the published list. Time and the network sit behind the
//!   [`core::Io`] trait, so the same code runs on glommio ([`driver`]) and in the seeded
//!   network simulation of `consensus/tests/membership_sim.rs`.
//! * [`identity::NodeIdentity`]: node id (UUID in the data directory), generation (bumped at
//!   every start), renewal (bumped on rejoin), name, gossip and RPC addresses.
//! * [`envelope`]: every datagram's header and, with peer TLS, its HMAC-SHA256 tag under the
//!   cluster's [`key::GossipKey`], which joining nodes fetch over the mutual-TLS peer channel
//!   ([`peer`]).
//!
//! # Invariants
//!
//! * A datagram that does not check out is dropped and counted, never fatal.
//! * A node never advertises a wildcard address (the driver refuses to start with one).
//! * Down and left members stay listed for `retention` with the time they went; the list is
//!   bounded by `max_members`.

pub mod core;
pub mod driver;
pub mod envelope;
pub mod identity;
pub mod key;
pub mod peer;
pub mod store;
pub mod view;

use std::path::PathBuf;

pub use self::core::{Core, Effects, Io, MembershipConfig, Timer};
pub use driver::{Membership, MembershipSettings};
pub use identity::{NodeId, NodeIdentity};
pub use key::GossipKey;
pub use view::{GossipStats, Member, MemberList, MemberState, MembershipWatch, Shared};

/// Why membership could not start, or a step of it failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("binding the gossip socket {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("fetching the gossip key: {0}")]
    KeyFetch(String),
    #[error("membership stopped")]
    Stopped,
}
