//! The node's place in a cluster on disk: `cluster.meta` in the data directory holds the
//! cluster id and this node's Raft id, written once (at bootstrap, or when a join is
//! answered) before the node takes part in any group. With it a restarted node rejoins as
//! itself, a `--bootstrap` on it is a no-op, and it refuses another cluster. A wiped data
//! directory has none: the node joins again as a new member with a new Raft id.
//!
//! A `.meta` file (layout in docs/format.md) whose payload is JSON:
//! `{"version":1,"cluster_id":"<id>","node_id":<u64>}`.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const CLUSTER_FILE: &str = "cluster.meta";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub version: u32,
    pub cluster_id: String,
    pub node_id: u64,
}

/// Errors reading or writing the cluster file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {reason}")]
    Bad { path: String, reason: String },
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

pub fn read(dir: &Path) -> Result<Option<ClusterIdentity>, IdentityError> {
    let bad = |reason: String| IdentityError::Bad {
        path: dir.join(CLUSTER_FILE).display().to_string(),
        reason,
    };
    let Some(payload) = engine::meta::read(dir, CLUSTER_FILE)? else {
        return Ok(None);
    };
    let f: ClusterIdentity = serde_json::from_slice(&payload).map_err(|e| bad(e.to_string()))?;
    if f.version != 1 {
        return Err(bad(format!("unknown version {}", f.version)));
    }
    if f.node_id == 0 || f.cluster_id.is_empty() {
        return Err(bad("no cluster id or Raft id".into()));
    }
    Ok(Some(f))
}

/// Writes the file durably.
pub fn write(dir: &Path, cluster_id: &str, node_id: u64) -> Result<(), IdentityError> {
    let f = ClusterIdentity {
        version: 1,
        cluster_id: cluster_id.to_owned(),
        node_id,
    };
    let payload = serde_json::to_vec(&f).map_err(|e| IdentityError::Bad {
        path: CLUSTER_FILE.into(),
        reason: e.to_string(),
    })?;
    engine::meta::write(dir, CLUSTER_FILE, &payload)?;
    Ok(())
}

/// A new cluster id: 128 random bits, as hex.
pub fn new_cluster_id() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), "abc", 3).unwrap();
        let f = read(dir.path()).unwrap().unwrap();
        assert_eq!((f.cluster_id.as_str(), f.node_id), ("abc", 3));
        assert_ne!(new_cluster_id(), new_cluster_id());
    }
}
