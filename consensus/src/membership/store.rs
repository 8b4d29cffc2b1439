//! The node's identity on disk: `node.meta` in the data directory holds the node id (created
//! once, so a wiped disk is a new member) and the generation of its last start (bumped and
//! written durably before the node gossips, so every run has a new one).
//!
//! A `.meta` file (layout in docs/format.md) whose payload is JSON:
//! `{"version":1,"node_id":"<uuid>","generation":<u64>}`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::identity::NodeId;
use super::MembershipError;

pub const NODE_FILE: &str = "node.meta";

#[derive(Debug, Serialize, Deserialize)]
struct NodeFile {
    version: u32,
    node_id: String,
    generation: u64,
}

/// Reads (or creates) the node id and returns it with this run's generation, persisted.
pub fn start_generation(dir: &Path) -> Result<(NodeId, u64), MembershipError> {
    let bad = |reason: String| MembershipError::BadFile {
        path: dir.join(NODE_FILE),
        reason,
    };
    let (node, generation) = match engine::meta::read(dir, NODE_FILE)? {
        None => (NodeId::random(), 1),
        Some(payload) => decode(dir, &payload)?,
    };
    let f = NodeFile {
        version: 1,
        node_id: node.to_string(),
        generation,
    };
    let payload = serde_json::to_vec(&f).map_err(|e| bad(e.to_string()))?;
    engine::meta::write(dir, NODE_FILE, &payload)?;
    Ok((node, generation))
}

/// The node id and the generation of this run (the last one's plus one) from the payload of
/// `dir`'s [`NODE_FILE`].
pub fn decode(dir: &Path, payload: &[u8]) -> Result<(NodeId, u64), MembershipError> {
    let bad = |reason: String| MembershipError::BadFile {
        path: dir.join(NODE_FILE),
        reason,
    };
    let f: NodeFile = serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))?;
    if f.version != 1 {
        return Err(bad(format!("unknown version {}", f.version)));
    }
    let node: NodeId = f.node_id.parse().map_err(bad)?;
    let next = f
        .generation
        .checked_add(1)
        .ok_or_else(|| bad("generation overflow".into()))?;
    Ok((node, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_node_new_generation_each_start() {
        let dir = tempfile::tempdir().unwrap();
        let (a, g1) = start_generation(dir.path()).unwrap();
        let (b, g2) = start_generation(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!((g1, g2), (1, 2));
        let wiped = tempfile::tempdir().unwrap();
        let (c, g) = start_generation(wiped.path()).unwrap();
        assert_ne!(a, c);
        assert_eq!(g, 1);
        std::fs::write(dir.path().join(NODE_FILE), b"junk").unwrap();
        assert!(start_generation(dir.path()).is_err());
    }
}
