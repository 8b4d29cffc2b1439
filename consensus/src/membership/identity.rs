//! Who a member is: the identity foca gossips about, with the metadata others need.
//!
//! An identity names one *run* of one node. The node id (a UUID kept in the data directory)
//! says which node; the generation (a counter bumped and persisted at every start) says which
//! run; the renewal (bumped in memory) says which rejoin within that run: SWIM never lets an
//! identity that was declared down come back, so a member that was wrongly declared down (a
//! partition, a long pause) rejoins under `renewal + 1` (foca's [`Identity::renew`]).
//!
//! foca keys members by [`Identity::addr`], the advertised gossip address: a node that joins
//! through `--start-join-addrs` knows only that address of the member it announces itself
//! to, so nothing else can be the key. Two identities with the same address are two runs of
//! whatever listens there; the later one wins ([`NodeIdentity::win_addr_conflict`]).

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's permanent id: a random (version 4) UUID created with its data directory, so a
/// node whose disk was wiped is a new member. Raft ids derive from it, never from the name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// The id of no node: stands in for the unknown member behind a join address.
    pub const UNKNOWN: NodeId = NodeId([0; 16]);

    /// A fresh random id (UUID version 4).
    pub fn random() -> NodeId {
        let bytes: [u8; 16] = rand010::random();
        NodeId(*uuid::Builder::from_random_bytes(bytes).as_uuid().as_bytes())
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    fn from_str(s: &str) -> Result<NodeId, String> {
        uuid::Uuid::parse_str(s)
            .map(|u| NodeId(*u.as_bytes()))
            .map_err(|e| format!("{s:?} is not a node id (a UUID): {e}"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_uuid().hyphenated(), f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Longest node name gossiped, in bytes; longer names are cut at a character boundary.
pub const MAX_NAME_BYTES: usize = 64;

/// One run of one node, as gossiped in every packet header and member update.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    /// Bumped and persisted at every start of the node.
    pub generation: u64,
    /// Bumped when this run rejoins after being declared down; 0 at start.
    pub renewal: u32,
    /// Wall-clock milliseconds since the Unix epoch when this run started: orders two
    /// different nodes that used the same address (a wiped disk restarted in place).
    pub started_ms: u64,
    /// The operator's label (`--node-name`); not unique, never used as a key.
    pub name: String,
    /// Where this member receives gossip (UDP): its advertised address, never a wildcard.
    pub gossip_addr: SocketAddr,
    /// Where clients and peers reach its gRPC port (and the peer channel, first byte 0x01).
    pub rpc_addr: SocketAddr,
}

impl NodeIdentity {
    /// The stand-in for the member behind a join address, whose identity is not known yet.
    /// foca accepts an announcement addressed to any identity with the receiver's address.
    pub fn placeholder(gossip_addr: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            node_id: NodeId::UNKNOWN,
            generation: 0,
            renewal: 0,
            started_ms: 0,
            name: String::new(),
            gossip_addr,
            rpc_addr: gossip_addr,
        }
    }

    /// Cuts `name` to [`MAX_NAME_BYTES`] so that identities stay small in every packet.
    pub fn bounded_name(name: &str) -> String {
        let mut end = name.len().min(MAX_NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name[..end].to_owned()
    }

    /// Which run is newer, for the same node: generation first, then renewal.
    pub fn run(&self) -> (u64, u32) {
        (self.generation, self.renewal)
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({} gen {}.{} at {})",
            self.name, self.node_id, self.generation, self.renewal, self.gossip_addr
        )
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity {
            renewal: self.renewal.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// The same node: the later run wins. Different nodes at one address: the one started
    /// later is what listens there now (ties broken by id, so exactly one side wins).
    fn win_addr_conflict(&self, adversary: &NodeIdentity) -> bool {
        if self.node_id == adversary.node_id {
            self.run() > adversary.run()
        } else {
            (self.started_ms, self.node_id) > (adversary.started_ms, adversary.node_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(node: u8, generation: u64, started_ms: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: NodeId([node; 16]),
            generation,
            renewal: 0,
            started_ms,
            name: format!("n{node}"),
            gossip_addr: "10.0.0.1:8401".parse().unwrap(),
            rpc_addr: "10.0.0.1:8400".parse().unwrap(),
        }
    }

    #[test]
    fn later_runs_win() {
        let a = id(1, 3, 100);
        let restarted = id(1, 4, 50); // clock went back: the generation still decides
        assert!(restarted.win_addr_conflict(&a) && !a.win_addr_conflict(&restarted));
        let renewed = a.renew().unwrap();
        assert!(renewed.win_addr_conflict(&a) && !a.win_addr_conflict(&renewed));
        let wiped = id(2, 1, 200);
        assert!(wiped.win_addr_conflict(&a) && !a.win_addr_conflict(&wiped));
    }

    #[test]
    fn node_ids_print_as_uuids() {
        let n = NodeId::random();
        assert_eq!(n.as_uuid().get_version_num(), 4);
        let s = n.to_string();
        assert_eq!(s.parse::<NodeId>().unwrap(), n);
        assert!("nope".parse::<NodeId>().is_err());
    }

    #[test]
    fn names_are_bounded_on_char_boundaries() {
        let long = "é".repeat(100);
        let cut = NodeIdentity::bounded_name(&long);
        assert!(cut.len() <= MAX_NAME_BYTES && long.starts_with(&cut));
    }
}
