//! The node's place in a cluster on disk: `cluster.meta` in the data directory holds the
//! cluster id and this node's Raft id, written once (at bootstrap, or when a join is
//! answered) before the node takes part in any group. With it a restarted node rejoins as
//! itself, a `--bootstrap` on it is a no-op, and it refuses another cluster. A wiped data
//! directory has none: the node joins again as a new member with a new Raft id.
//!
//! A `.meta` file (layout in docs/format.md) whose payload is JSON:
//! `{"version":1,"cluster_id":"<id>","node_id":<u64>}`, plus `"probed":true` where the node
//! bootstrapped its cluster only after no member at its `--start-join-addrs` answered, and
//! `"fenced":"<why>"` once such a node was refused by one of them for belonging to another
//! cluster.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const CLUSTER_FILE: &str = "cluster.meta";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub version: u32,
    pub cluster_id: String,
    pub node_id: u64,
    /// This node bootstrapped the cluster after no member at its `--start-join-addrs`
    /// answered as one (`--bootstrap` with join addresses on an empty data directory): if
    /// those members turn out to belong to another cluster, this one was started by mistake
    /// beside it. Absent (false) in files written before it existed and for every other node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probed: bool,
    /// Such a node, then refused by a member at its join addresses for belonging to another
    /// cluster: the refusal. It serves no client from then on, across restarts, until its
    /// data directory is emptied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

impl ClusterIdentity {
    /// This node's place as node `node_id` of cluster `cluster_id` (not probed).
    pub fn new(cluster_id: impl Into<String>, node_id: u64) -> ClusterIdentity {
        ClusterIdentity {
            version: 1,
            cluster_id: cluster_id.into(),
            node_id,
            probed: false,
            fenced: None,
        }
    }
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
pub fn write(dir: &Path, f: &ClusterIdentity) -> Result<(), IdentityError> {
    let payload = serde_json::to_vec(f).map_err(|e| IdentityError::Bad {
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
        write(dir.path(), &ClusterIdentity::new("abc", 3)).unwrap();
        let f = read(dir.path()).unwrap().unwrap();
        assert_eq!(
            (f.cluster_id.as_str(), f.node_id, f.probed),
            ("abc", 3, false)
        );
        assert_ne!(new_cluster_id(), new_cluster_id());
        // Written without the field (as before it existed) and with it.
        let raw = engine::meta::read(dir.path(), CLUSTER_FILE)
            .unwrap()
            .unwrap();
        assert_eq!(raw, br#"{"version":1,"cluster_id":"abc","node_id":3}"#);
        let probed = ClusterIdentity {
            probed: true,
            fenced: Some("refused".into()),
            ..ClusterIdentity::new("abc", 1)
        };
        write(dir.path(), &probed).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(probed));
    }
}
