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
        // A node joins or bootstraps a cluster (writing `cluster.meta`) only after this file
        // holds its id: without it, the id the cluster knows this node by was lost. A new
        // one would register a second member at this address while the data (and
        // `cluster.meta`) stay the old member's, and neither would ever serve again.
        None if dir.join(crate::cluster::identity::CLUSTER_FILE).exists() => {
            return Err(bad(format!(
                "missing, while {} says this data directory's node is a member of a cluster: \
                 node.meta holds the node id the cluster knows it by. {}",
                crate::cluster::identity::CLUSTER_FILE,
                engine::catalog::RESTORE_OR_START_AFRESH
            )))
        }
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
    fn a_member_without_its_node_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        start_generation(dir.path()).unwrap();
        crate::cluster::identity::write(
            dir.path(),
            &crate::cluster::identity::ClusterIdentity::new("c", 3),
        )
        .unwrap();
        start_generation(dir.path()).expect("a member with its node file starts");
        std::fs::remove_file(dir.path().join(NODE_FILE)).unwrap();
        let e = start_generation(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("node.meta") && e.contains("missing, while cluster.meta"),
            "{e}"
        );
        assert!(!dir.path().join(NODE_FILE).exists(), "no new id written");
    }

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
