//! The controller's checkpoints on real engine logs, through the shard's Ready loop and the
//! cluster layer (`ClusterNode` as the cluster's hooks), over real sockets
//! (`consensus/tests/common`): node 1 alone leads the controller and applies commands, a
//! checkpoint is asked for every 5 (as the reconcile pass does), each applied one compacts
//! the log below it (`raft.meta`'s snapshot point moves); node 2, added afterwards, is behind
//! the leader's first index and gets the log as a snapshot, whose install rebuilds its state;
//! a restart of either rebuilds the same state from its log.
//!
//! The log shrinks on disk: each checkpoint is a record (it takes one offset), so the
//! controller's segments ([`CONTROLLER_SEGMENT_BYTES`], whatever the catalog says: the test
//! creates the partition with the defaults, as a data directory of an earlier version holds
//! it) roll, and the compaction below a checkpoint deletes the segments before it: the first
//! one, whose commands take no offset as every earlier version wrote them, is gone, the files
//! left are bounded, a restart replays from a checkpoint, and the snapshot a node added later
//! receives is as small as the retained log.

use crate::common;
use crate::mem_cluster;
use mem_cluster::add_learner;

use common::{serial, stat, wait_until, Cluster, HooksFactory};
use consensus::cluster::state::{ClusterState, Command, NodeEntry};
use consensus::cluster::ClusterNode;
use consensus::raft::transport::Peers;
use consensus::raft::RaftMeta;
use engine::{EngineConfig, LogConfig, CONTROLLER_SEGMENT_BYTES, CONTROLLER_TOPIC};
use futures_lite::future::block_on;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Nodes = Arc<Mutex<BTreeMap<u64, Arc<ClusterNode>>>>;

fn entry(name: &str) -> NodeEntry {
    entry_at(name, "127.0.0.1:9".into())
}

fn cluster_node(nodes: &Nodes, id: u64) -> Arc<ClusterNode> {
    Arc::clone(nodes.lock().expect("nodes").get(&id).expect("node"))
}

/// A registry entry; its address is where the transport reaches the node's Raft id (nodes
/// registered beyond the two running ones get a port nobody listens on, and no message).
fn entry_at(name: &str, rpc_addr: String) -> NodeEntry {
    NodeEntry {
        member: format!("member-{name}"),
        name: name.into(),
        rpc_addr,
        gossip_addr: "127.0.0.1:2".into(),
        shards: 1,
        removed: false,
    }
}

/// What the cluster layer needs of a running node: its engine, and the controller's
/// partition (the server creates it at start).
fn attach(c: &Cluster, nodes: &Nodes, id: u64) {
    let n = cluster_node(nodes, id);
    let handle = c.node(id).handle.clone();
    n.set_engine(handle.clone());
    match block_on(handle.create_topic(CONTROLLER_TOPIC, 1, LogConfig::default())) {
        Ok(_) | Err(engine::Error::TopicExists(_)) => {}
        Err(e) => panic!("node {id}: the controller's partition: {e}"),
    }
}

/// Node `id`'s controller partition directory.
fn controller_dir(c: &Cluster, id: u64) -> std::path::PathBuf {
    engine::catalog::partition_dir(&c.root.join(format!("n{id}")), CONTROLLER_TOPIC, 0)
}

/// The segment data files of node `id`'s controller log: (base offset, file length). The
/// node compacts its log meanwhile: a file deleted between the listing and its length is
/// left out, as gone.
fn segment_files(c: &Cluster, id: u64) -> Vec<(u64, u64)> {
    let mut files: Vec<(u64, u64)> = std::fs::read_dir(controller_dir(c, id))
        .expect("lists the controller's directory")
        .filter_map(|e| {
            let e = e.expect("a directory entry");
            let name = e.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.parse().ok()?;
            match e.metadata() {
                Ok(m) => Some((base, m.len())),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => panic!("metadata of {name}: {err}"),
            }
        })
        .collect();
    files.sort();
    files
}

fn total_bytes(files: &[(u64, u64)]) -> u64 {
    files.iter().map(|&(_, len)| len).sum()
}

/// The snapshot point of node `id`'s controller log, from its `raft.meta`.
fn snapshot_point(c: &Cluster, id: u64) -> u64 {
    let dir = controller_dir(c, id);
    let bytes = engine::meta::read(&dir, "raft.meta")
        .expect("raft.meta reads")
        .expect("raft.meta exists");
    RaftMeta::decode(&bytes).expect("decodes").snapshot_index
}

/// The state as every replica must hold it (the node's own view of leadership aside).
fn same(a: &ClusterState, b: &ClusterState) -> bool {
    a == b && !a.awaiting_checkpoint
}

#[test]
fn controller_checkpoints_compact_its_log_and_a_node_added_later_rebuilds_the_state_from_a_snapshot(
) {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Nodes = Arc::default();
    let made = Arc::clone(&nodes);
    let factory: HooksFactory = Arc::new(move |id: u64, peers: &Peers| {
        let n = ClusterNode::new(
            peers.clone(),
            Duration::from_secs(600),
            Duration::from_secs(600),
        );
        n.set_id(id);
        // Node 1 creates the controller with itself as its only voter; the others learn it.
        n.bootstrapper.store(id == 1, Ordering::Relaxed);
        n.checkpoint_every.store(5, Ordering::Relaxed);
        // Checkpoints of more than 8 KiB go in parts: the state with a name of 32 KiB below.
        n.checkpoint_part_bytes.store(8 << 10, Ordering::Relaxed);
        made.lock().expect("nodes").insert(id, Arc::clone(&n));
        n.hooks()
    });
    let retention = EngineConfig::new(dir.path().join("n1")).retention_check;
    let mut c = Cluster::start_with(dir.path(), 2, retention, Some(factory));
    for id in 1..=2 {
        attach(&c, &nodes, id);
    }
    let n1 = cluster_node(&nodes, 1);
    wait_until("node 1 leads the controller", || n1.is_controller_leader());

    // Raft ids 1 and 2 are the running nodes.
    block_on(n1.propose(&Command::Bootstrap {
        cluster_id: "c".into(),
        node: entry_at("a", c.node(1).addr.to_string()),
    }))
    .expect("bootstrap");
    for i in 0..23 {
        let node = match i {
            0 => entry_at("n0", c.node(2).addr.to_string()),
            _ => entry(&format!("n{i}")),
        };
        block_on(n1.propose(&Command::Register { node })).expect("register");
        if n1.state().since_checkpoint >= 5 {
            // What the leader's reconcile pass does; the loop proposes it once its log ends
            // at its applied index.
            n1.request_checkpoint();
            wait_until("a checkpoint applied", || n1.state().since_checkpoint < 5);
        }
    }
    let s = n1.state();
    println!(
        "applied {}, last checkpoint at {}, {} since",
        s.applied, s.last_checkpoint, s.since_checkpoint
    );
    assert!(s.last_checkpoint > 20, "{s:?}");
    // Compacted below the last checkpoint (tried once a second).
    wait_until("node 1's log compacted below its checkpoint", || {
        snapshot_point(&c, 1) == n1.state().last_checkpoint - 1
    });

    // So far one segment, at offset 0: the commands before the first checkpoint take no
    // offset (as every earlier version wrote them), the checkpoints one each.
    let files = segment_files(&c, 1);
    assert_eq!(files.first().map(|f| f.0), Some(0), "{files:?}");

    // Commands of 32 KiB (one member registering again and again under a long name, so the
    // state stays small) fill several segments; a checkpoint every 5 commands.
    let long = "x".repeat(32 << 10);
    let mut written = 0u64;
    let (mut i, mut peak) = (0, 0);
    while written < 5 * CONTROLLER_SEGMENT_BYTES {
        let command = Command::Register {
            node: NodeEntry {
                member: "member-big".into(),
                name: format!("{long}{i}"),
                ..entry("big")
            },
        };
        written += command.encode().len() as u64;
        block_on(n1.propose(&command)).expect("register");
        if n1.state().since_checkpoint >= 5 {
            n1.request_checkpoint();
            wait_until("a checkpoint applied", || n1.state().since_checkpoint < 5);
        }
        peak = peak.max(total_bytes(&segment_files(&c, 1)));
        i += 1;
    }
    n1.request_checkpoint();
    wait_until("the last checkpoint applied", || {
        n1.state().since_checkpoint == 0
    });
    let big = n1.state();
    // In parts: the state was replaced at the last part, and the log is compacted below the
    // first.
    assert!(big.applied >= big.last_checkpoint + 4, "{big:?}");
    wait_until("node 1's log compacted below its last checkpoint", || {
        snapshot_point(&c, 1) == big.last_checkpoint - 1
    });
    // The segments below the checkpoint are deleted: the first one (offset 0) among them,
    // and what is left is bounded by the segment size, not by what was written. The
    // compaction records its point (`raft.meta`) before it deletes the segments below it
    // (a crash between leaves segments too many, never too few), so the deletions are
    // waited for.
    wait_until(
        "node 1's segments below its last checkpoint deleted",
        || {
            let files = segment_files(&c, 1);
            files.first().is_some_and(|f| f.0 > 0) && files.len() <= 3
        },
    );
    let files = segment_files(&c, 1);
    println!(
        "{written} bytes of commands in {i} commands, through index {}; at most {peak} bytes \
         of segment files meanwhile, left: {files:?}",
        big.applied
    );
    assert!(peak > CONTROLLER_SEGMENT_BYTES, "{peak}");
    assert!(files.first().is_some_and(|f| f.0 > 0), "{files:?}");
    assert!(files.len() <= 3, "{files:?}");
    assert!(
        total_bytes(&files) <= 3 * CONTROLLER_SEGMENT_BYTES,
        "{} bytes left of {written}: {files:?}",
        total_bytes(&files)
    );

    // Node 2 joins now: the leader's log starts past what it holds (nothing), so it gets a
    // snapshot, as small as the retained log, and its state is rebuilt from the installed
    // log.
    block_on(n1.conf_change(0, 0, add_learner(2))).expect("node 2 added");
    let n2 = cluster_node(&nodes, 2);
    wait_until("node 2 holds node 1's state", || {
        same(&n2.state(), &n1.state())
    });
    let snapshots = &c.node(2).peers.snapshots.stats;
    assert!(stat(&snapshots.installed) >= 1);
    let received = stat(&snapshots.bytes_received);
    println!("node 2 received a snapshot of {received} bytes");
    assert!(
        received > 0 && received <= 3 * CONTROLLER_SEGMENT_BYTES,
        "{received} bytes"
    );
    assert!(
        segment_files(&c, 2).first().is_some_and(|f| f.0 > 0),
        "{:?}",
        segment_files(&c, 2)
    );
    assert_eq!(n2.state().id_of("member-n22"), Some(24));
    assert_eq!(n2.state().id_of("member-big"), Some(25));
    // The installed directory holds the partition's mark: restarted, it is not found emptied.
    assert!(controller_dir(&c, 2).join("partition.meta").exists());
    assert!(!controller_dir(&c, 2).join("lost.meta").exists());

    // Both go on alike: more commands, another checkpoint.
    for i in 0..6 {
        block_on(n1.propose(&Command::Register {
            node: entry(&format!("m{i}")),
        }))
        .expect("register");
    }
    n1.request_checkpoint();
    wait_until("another checkpoint", || n1.state().since_checkpoint == 0);
    wait_until("node 2 caught up", || same(&n2.state(), &n1.state()));
    wait_until("node 2 compacted too", || {
        snapshot_point(&c, 2) == n2.state().last_checkpoint - 1
    });

    // Restarts: each rebuilds the same state from its log. A restarted node listens on a new
    // port, and registers again under it (as a server does).
    let before = n1.state();
    c.restart(2);
    attach(&c, &nodes, 2);
    let n2 = cluster_node(&nodes, 2);
    wait_until("node 2 rebuilt its state", || same(&n2.state(), &before));
    assert!(!controller_dir(&c, 2).join("lost.meta").exists());
    block_on(n1.propose(&Command::Register {
        node: entry_at("n0", c.node(2).addr.to_string()),
    }))
    .expect("node 2 registers again");
    wait_until("node 2 applies it", || same(&n2.state(), &n1.state()));

    let before = n1.state();
    c.restart(1);
    attach(&c, &nodes, 1);
    let n1 = cluster_node(&nodes, 1);
    wait_until("node 1 rebuilt its state", || same(&n1.state(), &before));
    // From a checkpoint: the log it replayed starts past index 1.
    let files = segment_files(&c, 1);
    assert!(files.first().is_some_and(|f| f.0 > 0), "{files:?}");
    wait_until("node 1 leads again", || n1.is_controller_leader());
    block_on(n1.propose(&Command::Register {
        node: entry_at("a", c.node(1).addr.to_string()),
    }))
    .expect("node 1 registers again");
    wait_until("node 2 applies it", || same(&n2.state(), &n1.state()));
    c.shutdown();
}
