//! The controller's state machine: what the controller log (Raft group 0) describes, rebuilt
//! on every node by applying that log's commands in order.
//!
//! State: the cluster id, the node registry (membership UUID -> Raft id, assigned here and
//! never reused, name, RPC and gossip addresses), topics with their configuration, and each
//! partition's replicas (node, shard) with the voters it was created with. A command is JSON
//! (docs/format.md, "Controller commands"); applying is deterministic, so every node holds
//! the same state after the same index. A command that no longer fits (a topic created twice
//! by two racing requests, a node removed twice) is applied as a no-op, never an error: the
//! log is the order.
//!
//! A `checkpoint` command carries the whole state as applied through index `at`, and is valid
//! only at `at + 1`: there it replaces the state (equal to it on a replica that holds the
//! state), and a replay of a log compacted below it starts from it ([`ClusterState::
//! replaying_from`]); anywhere else it is a no-op on every replica alike. A state too large
//! for one command is checkpointed in parts at `at + 1..=at + n`, each a command of its own,
//! valid only when all of them land there in order; the state is replaced when the last one
//! applies, and the log is compacted below the first.

use engine::LogConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The Raft id of the node that bootstrapped a cluster.
pub const FIRST_NODE_ID: u64 = 1;

/// Voters of the controller group at most; other nodes follow it as learners.
pub const CONTROLLER_VOTERS: usize = 3;

/// A node of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The membership layer's node id (a UUID kept in the node's data directory).
    pub member: String,
    pub name: String,
    pub rpc_addr: String,
    pub gossip_addr: String,
    /// Shards of the node (partitions are spread over them by the engine's hash).
    pub shards: u32,
    /// Removed from the cluster: its id is never given again, its replicas moved away.
    #[serde(default)]
    pub removed: bool,
}

/// One replica of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: u64,
    pub shard: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// The voters the group was created with (each writes them as its first entry).
    pub initial: Vec<u64>,
    /// Where the partition should have replicas; the first is its preferred leader.
    pub replicas: Vec<Replica>,
    /// Nodes whose replica reported itself stopped for good (its log failed: it stays
    /// stopped until its server restarts); the controller's leader moves each to a live
    /// node that lacks one. Only nodes of `replicas`: a node leaves it with its replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<u64>,
    /// Nodes of `initial` once placed here and then placed elsewhere (a `set_replicas`
    /// left them out), in the order they left; kept when placed back. Such a node's replica
    /// never starts with the `initial` configuration again (it may have dropped its data
    /// while the group still counted it): it starts with none and is added as a learner, as
    /// any replica placed after the topic's creation. Other nodes start with none anyway, so
    /// they are not recorded: the list never outgrows `initial`. Absent from the encoding
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<u64>,
}

impl PartitionEntry {
    pub fn nodes(&self) -> Vec<u64> {
        self.replicas.iter().map(|r| r.node).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub config: LogConfig,
    pub replication_factor: u32,
    pub partitions: Vec<PartitionEntry>,
}

/// A command of the controller log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// The first command: the cluster id and the bootstrapping node, id 1.
    Bootstrap {
        cluster_id: String,
        node: NodeEntry,
    },
    /// A node joins (or a known one, by member id, updates its addresses).
    Register {
        node: NodeEntry,
    },
    CreateTopic {
        name: String,
        config: LogConfig,
        replication_factor: u32,
        partitions: Vec<PartitionEntry>,
    },
    DeleteTopic {
        name: String,
    },
    /// A topic's retention limits change: each one given replaces the topic's (0: none),
    /// each one absent stays.
    AlterTopic {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention_ms: Option<u64>,
    },
    /// A partition's replica set changes (the group's leader enacts it, one change at a
    /// time).
    SetReplicas {
        topic: String,
        partition: u32,
        replication_factor: u32,
        replicas: Vec<Replica>,
    },
    RemoveNode {
        id: u64,
    },
    /// Node `node`'s replica of `topic`/`partition` stopped for good (sent by that node,
    /// after a grace period): it is to be moved to another node. Of `__cluster`/0 (the
    /// controller's own replica, on every node): the node is to leave the controller's group
    /// until it says its replica runs again (`ClusterState::controller_stopped`).
    ReplicaStopped {
        topic: String,
        partition: u32,
        node: u64,
    },
    /// Node `node`'s replica of `topic`/`partition`, marked stopped, runs again (its server
    /// restarted and reopened it; sent by that node): the mark is withdrawn and the replica
    /// stays where it is.
    ReplicaRecovered {
        topic: String,
        partition: u32,
        node: u64,
    },
    /// The whole state as applied through log index `at`, proposed by the leader when
    /// nothing follows `at` in its log, so that it lands at `at + 1`: a replica that starts
    /// its state from this entry (its log compacted below it) needs nothing older. A
    /// checkpoint at any other index is stale (entries came between) and is applied as a
    /// no-op.
    ///
    /// Version 1 carries the state in `state`. A state whose checkpoint would not fit in one
    /// command goes in version 2 parts ([`Command::checkpoint_parts`]): part `part` of
    /// `parts` carries `chunk`, a piece of the state's JSON text, and is valid only at index
    /// `at + part`; the parts' chunks in order are the text of `state`. The state is replaced
    /// when the last part applies after all the others, at consecutive indexes; anything
    /// else (a part missing, repeated, out of order, or an entry between two parts) makes the
    /// whole checkpoint a no-op.
    Checkpoint {
        /// [`CHECKPOINT_VERSION`] or [`CHECKPOINT_PARTS_VERSION`]; a checkpoint of another
        /// version, or whose fields do not fit its version, does not decode.
        version: u32,
        at: u64,
        /// Version 1: the whole state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<Box<ClusterState>>,
        /// Version 2: this part's number, from 1 to `parts`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<u32>,
        /// Version 2: how many parts the checkpoint has (at least 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parts: Option<u32>,
        /// Version 2: this part's piece of the state's JSON text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk: Option<String>,
    },
}

/// The version of the checkpoint command's state encoding: the whole state in one command.
pub const CHECKPOINT_VERSION: u32 = 1;

/// The version of a checkpoint in parts: the state's encoding of version 1, as text, cut in
/// pieces each carried by a command of its own.
pub const CHECKPOINT_PARTS_VERSION: u32 = 2;

/// What a checkpoint command holds, once its version's fields are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointBody<'a> {
    /// Version 1: the whole state.
    Whole(&'a ClusterState),
    /// Version 2: part `part` of `parts`.
    Part {
        part: u32,
        parts: u32,
        chunk: &'a str,
    },
}

/// The body of checkpoint fields `state`, `part`, `parts` and `chunk` of `version`, or why
/// they do not fit it.
fn checkpoint_body<'a>(
    version: u32,
    at: u64,
    state: &'a Option<Box<ClusterState>>,
    part: Option<u32>,
    parts: Option<u32>,
    chunk: &'a Option<String>,
) -> Result<CheckpointBody<'a>, String> {
    match (version, state, part, parts, chunk) {
        (CHECKPOINT_VERSION, Some(state), None, None, None) => Ok(CheckpointBody::Whole(state)),
        (CHECKPOINT_PARTS_VERSION, None, Some(part), Some(parts), Some(chunk)) => {
            if parts < 2 || part == 0 || part > parts {
                return Err(format!(
                    "a checkpoint (at {at}) of version {version}: part {part} of {parts}"
                ));
            }
            Ok(CheckpointBody::Part { part, parts, chunk })
        }
        (CHECKPOINT_VERSION | CHECKPOINT_PARTS_VERSION, ..) => Err(format!(
            "a checkpoint (at {at}) of version {version} whose fields do not fit that version"
        )),
        _ => Err(format!(
            "a checkpoint (at {at}) of version {version}; this node reads versions \
             {CHECKPOINT_VERSION} and {CHECKPOINT_PARTS_VERSION}"
        )),
    }
}

/// The smallest part size [`Command::checkpoint_parts`] cuts a state into.
pub const MIN_CHECKPOINT_PART_BYTES: usize = 256;

/// Bytes that character `c` takes in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        let c: Command = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        c.checkpoint_body().transpose()?;
        Ok(c)
    }

    /// What a checkpoint holds (`None` for any other command), or why its fields do not fit
    /// its version.
    pub fn checkpoint_body(&self) -> Option<Result<CheckpointBody<'_>, String>> {
        match self {
            Command::Checkpoint {
                version,
                at,
                state,
                part,
                parts,
                chunk,
            } => Some(checkpoint_body(*version, *at, state, *part, *parts, chunk)),
            _ => None,
        }
    }

    /// A checkpoint of `state`, as applied through log index `at`, in one command (version
    /// 1).
    pub fn checkpoint(state: &ClusterState, at: u64) -> Command {
        let mut state = state.clone();
        state.assembling = None;
        Command::Checkpoint {
            version: CHECKPOINT_VERSION,
            at,
            state: Some(Box::new(state)),
            part: None,
            parts: None,
            chunk: None,
        }
    }

    /// Part `part` of `parts` (version 2) of a checkpoint through `at`.
    pub fn checkpoint_part(at: u64, part: u32, parts: u32, chunk: String) -> Command {
        Command::Checkpoint {
            version: CHECKPOINT_PARTS_VERSION,
            at,
            state: None,
            part: Some(part),
            parts: Some(parts),
            chunk: Some(chunk),
        }
    }

    /// A checkpoint of `state` through `at`, encoded, as commands of at most `part_bytes`
    /// each, to be proposed in a row: one command of version 1 when it fits (the bytes of
    /// [`checkpoint`](Self::checkpoint)), else parts of version 2. An error when
    /// `part_bytes` is below [`MIN_CHECKPOINT_PART_BYTES`].
    pub fn checkpoint_parts(
        state: &ClusterState,
        at: u64,
        part_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, String> {
        if part_bytes < MIN_CHECKPOINT_PART_BYTES {
            return Err(format!(
                "checkpoint parts of {part_bytes} bytes (at least {MIN_CHECKPOINT_PART_BYTES})"
            ));
        }
        let whole = Command::checkpoint(state, at).encode();
        if whole.len() <= part_bytes {
            return Ok(vec![whole]);
        }
        let mut state = state.clone();
        state.assembling = None;
        let text = serde_json::to_string(&state).map_err(|e| e.to_string())?;
        // Each part's fields but its chunk take at most this much (the largest numbers).
        let frame = Command::checkpoint_part(at, u32::MAX, u32::MAX, String::new())
            .encode()
            .len();
        let room = part_bytes.saturating_sub(frame);
        let mut chunks = Vec::new();
        let (mut start, mut used) = (0, 0);
        for (i, c) in text.char_indices() {
            let n = escaped_len(c);
            if used + n > room {
                chunks.push(&text[start..i]);
                (start, used) = (i, 0);
            }
            used += n;
        }
        chunks.push(&text[start..]);
        let parts = u32::try_from(chunks.len())
            .map_err(|_| format!("a checkpoint of {} parts", chunks.len()))?;
        let mut out = Vec::with_capacity(chunks.len());
        for (k, chunk) in (1..=parts).zip(chunks) {
            let bytes = Command::checkpoint_part(at, k, parts, chunk.to_string()).encode();
            if bytes.len() > part_bytes {
                return Err(format!(
                    "checkpoint part {k} of {parts} takes {} bytes (at most {part_bytes})",
                    bytes.len()
                ));
            }
            out.push(bytes);
        }
        Ok(out)
    }
}

/// What applying a command did, beyond the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied (or a no-op by the command's own rules).
    Done,
    /// At or below the applied index: applied already.
    Again,
    /// Not applied: a replay that starts past the log's first entry waits for its first
    /// valid checkpoint, and skips what comes before.
    AwaitingCheckpoint,
    /// A checkpoint that landed elsewhere than right after the index it was taken at, or a
    /// part that does not follow the parts before it: no-op (the checkpoint's parts applied
    /// so far are dropped).
    StaleCheckpoint { at: u64 },
    /// A part of a checkpoint, not its last, right after the parts before it: kept until
    /// the last one applies.
    CheckpointPart { at: u64, part: u32, parts: u32 },
    /// All the parts of a checkpoint applied, whose text is no state (a bug, or corruption
    /// the entries' checksums missed): no-op.
    BrokenCheckpoint { at: u64, why: String },
    /// A valid checkpoint: the state is its content from here on.
    Checkpoint,
    /// A valid checkpoint whose content differs from the state held here (a bug): its
    /// content is taken.
    Diverged,
}

/// A map by Raft id as a list of `[id, value]` pairs.
mod id_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<V: Serialize, S: Serializer>(
        m: &BTreeMap<u64, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, V>, D::Error> {
        let pairs = Vec::<(u64, V)>::deserialize(d)?;
        let n = pairs.len();
        let m: BTreeMap<u64, V> = pairs.into_iter().collect();
        if m.len() != n {
            return Err(serde::de::Error::custom("a Raft id listed twice"));
        }
        Ok(m)
    }
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

/// The controller's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Empty until the bootstrap command is applied.
    pub cluster_id: String,
    /// The next Raft id to assign.
    pub next_id: u64,
    /// Encoded as `[[id, node], ...]`: JSON map keys are strings, which a command (an
    /// internally tagged enum) cannot read back as integers.
    #[serde(with = "id_pairs")]
    pub nodes: BTreeMap<u64, NodeEntry>,
    pub topics: BTreeMap<String, TopicEntry>,
    /// The index of the last command applied.
    pub applied: u64,
    /// The index of the last valid checkpoint applied (its first part's, for one in parts;
    /// 0: none): the log may be compacted below it.
    #[serde(default)]
    pub last_checkpoint: u64,
    /// Commands applied since that checkpoint (or since the start).
    #[serde(default)]
    pub since_checkpoint: u64,
    /// Nodes whose controller replica stopped for good (their log failed), as they reported
    /// (`replica_stopped` of `__cluster`/0): the controller's leader removes them from the
    /// controller's group and adds them back once they report it runs again
    /// (`replica_recovered`). Absent from the encoding when empty.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub controller_stopped: BTreeSet<u64>,
    /// Above the incarnation of every topic created so far (`LogConfig::incarnation`): the
    /// controller's leader gives the next `create_topic` this one, so that a name deleted and
    /// created again gets a larger one than before. Absent from the encoding while 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_incarnation: u64,
    /// A replay that starts past the log's first entry (the log was compacted): nothing is
    /// applied until the first valid checkpoint, which brings the whole state.
    #[serde(skip)]
    pub awaiting_checkpoint: bool,
    /// The parts applied so far of a checkpoint in several parts, while each came right
    /// after the one before it; dropped by any other entry applied.
    #[serde(skip)]
    assembling: Option<Assembly>,
}

/// The first parts of a checkpoint in parts, applied at `at + 1..=at + got`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Assembly {
    at: u64,
    parts: u32,
    got: u32,
    /// Their chunks, in order.
    text: String,
}

impl Assembly {
    /// The index of the last part applied.
    fn last(&self) -> u64 {
        self.at.saturating_add(u64::from(self.got))
    }
}

/// Whether `topic`/`partition` names the controller's own replica (`__cluster`/0), which the
/// placement does not list: every active node holds one.
pub fn is_controller(topic: &str, partition: u32) -> bool {
    topic == engine::CONTROLLER_TOPIC && partition == 0
}

impl ClusterState {
    /// The placement of partition `id`, if its topic and partition exist.
    pub fn partition(&self, id: &engine::seam::PartitionId) -> Option<&PartitionEntry> {
        self.topics
            .get(&*id.topic)
            .and_then(|t| t.partitions.get(id.partition as usize))
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionEntry> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
    }

    /// The state a replay of a log whose entries start at `first_index` starts from: empty
    /// when the log is whole (it starts at 1), else waiting for a checkpoint.
    pub fn replaying_from(first_index: u64) -> ClusterState {
        ClusterState {
            awaiting_checkpoint: first_index > 1,
            ..ClusterState::default()
        }
    }

    /// The parts of a checkpoint applied so far, while its last is awaited: (at, parts
    /// applied, parts).
    pub fn assembling(&self) -> Option<(u64, u32, u32)> {
        self.assembling.as_ref().map(|a| (a.at, a.got, a.parts))
    }

    /// Applies the command at `index` (commands at or below `applied`, and parts of a
    /// checkpoint at or below the last part kept, were applied already).
    pub fn apply(&mut self, index: u64, c: &Command) -> Applied {
        if index <= self.applied || self.assembling.as_ref().is_some_and(|a| index <= a.last()) {
            return Applied::Again;
        }
        // Only the next part of a checkpoint being assembled keeps it: anything else landed
        // where that part had to be.
        let assembling = self.assembling.take();
        if let (Command::Checkpoint { at, .. }, Some(body)) = (c, c.checkpoint_body()) {
            return match body {
                Ok(CheckpointBody::Whole(state)) => self.apply_checkpoint(index, *at, state),
                Ok(CheckpointBody::Part { part, parts, chunk }) => {
                    self.apply_part(index, *at, (part, parts), chunk, assembling)
                }
                // Only a command built here, not decoded, gets this far.
                Err(why) => Applied::BrokenCheckpoint { at: *at, why },
            };
        }
        if self.awaiting_checkpoint {
            return Applied::AwaitingCheckpoint;
        }
        self.applied = index;
        self.since_checkpoint += 1;
        match c {
            Command::Bootstrap { cluster_id, node } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                    self.nodes.insert(FIRST_NODE_ID, node.clone());
                    self.next_id = FIRST_NODE_ID + 1;
                }
            }
            Command::Register { node } => {
                if let Some(id) = self.id_of(&node.member) {
                    // A known member registering again: new addresses, and a removed one
                    // (it left, or was down too long) is back, under its old id.
                    if let Some(n) = self.nodes.get_mut(&id) {
                        *n = node.clone();
                        n.removed = false;
                    }
                    // Its controller replica may have been started afresh (or its reset cut
                    // short by the stop): empty, it holds no state to send
                    // `replica_recovered` from, so its registration at start stands for it.
                    // One that still fails is reported again after the grace period.
                    self.controller_stopped.remove(&id);
                } else {
                    let id = self.next_id.max(FIRST_NODE_ID + 1);
                    self.nodes.insert(id, node.clone());
                    self.next_id = id + 1;
                }
            }
            Command::CreateTopic {
                name,
                config,
                replication_factor,
                partitions,
            } => {
                // Numbered as applied, the same on every node: the number proposed is only a
                // floor. A leader that had not applied its predecessor's last entries (a
                // creation and deletion of the same name among them) proposes a number
                // given already; the next creation's still gets a larger one.
                let mut config = config.clone();
                if config.incarnation != 0 && !self.topics.contains_key(name) {
                    config.incarnation = config.incarnation.max(self.next_incarnation);
                    self.next_incarnation = config.incarnation.saturating_add(1);
                }
                self.topics
                    .entry(name.clone())
                    .or_insert_with(|| TopicEntry {
                        config,
                        replication_factor: *replication_factor,
                        partitions: partitions.clone(),
                    });
            }
            Command::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            Command::AlterTopic {
                name,
                retention_bytes,
                retention_ms,
            } => {
                if let Some(t) = self.topics.get_mut(name) {
                    if let Some(b) = retention_bytes {
                        t.config.retention_bytes = *b;
                    }
                    if let Some(ms) = retention_ms {
                        t.config.retention_ms = *ms;
                    }
                }
            }
            Command::SetReplicas {
                topic,
                partition,
                replication_factor,
                replicas,
            } => {
                if let Some(t) = self.topics.get_mut(topic) {
                    t.replication_factor = *replication_factor;
                    if let Some(p) = t.partitions.get_mut(*partition as usize) {
                        let before = p.nodes();
                        p.replicas = replicas.clone();
                        let after = p.nodes();
                        // Only a first voter's departure matters (`first_configuration`
                        // reads it), so the list holds at most `initial`'s nodes however
                        // often replicas move.
                        for n in before {
                            if !after.contains(&n)
                                && p.initial.contains(&n)
                                && !p.departed.contains(&n)
                            {
                                p.departed.push(n);
                            }
                        }
                        let initial = &p.initial;
                        p.departed.retain(|n| initial.contains(n));
                        // A node placed anew (or still) keeps its mark only while it stays.
                        let nodes = p.nodes();
                        p.stopped.retain(|n| nodes.contains(n));
                    }
                }
            }
            Command::RemoveNode { id } => {
                if let Some(n) = self.nodes.get_mut(id) {
                    n.removed = true;
                }
                self.controller_stopped.remove(id);
            }
            Command::ReplicaStopped {
                topic,
                partition,
                node,
            } if is_controller(topic, *partition) => {
                if self.nodes.get(node).is_some_and(|n| !n.removed) {
                    self.controller_stopped.insert(*node);
                }
            }
            Command::ReplicaRecovered {
                topic,
                partition,
                node,
            } if is_controller(topic, *partition) => {
                self.controller_stopped.remove(node);
            }
            Command::ReplicaStopped {
                topic,
                partition,
                node,
            } => {
                if let Some(p) = self.partition_mut(topic, *partition) {
                    if p.nodes().contains(node) && !p.stopped.contains(node) {
                        p.stopped.push(*node);
                    }
                }
            }
            Command::ReplicaRecovered {
                topic,
                partition,
                node,
            } => {
                if let Some(p) = self.partition_mut(topic, *partition) {
                    p.stopped.retain(|n| n != node);
                }
            }
            Command::Checkpoint { .. } => {}
        }
        Applied::Done
    }

    /// A checkpoint at `index` taken through `at`: valid only right after `at` (nothing in
    /// between could have changed the state). Every replica that holds the state holds
    /// exactly its content; a replica waiting for a checkpoint takes it.
    fn apply_checkpoint(&mut self, index: u64, at: u64, state: &ClusterState) -> Applied {
        if at.checked_add(1) != Some(index) || state.applied > at {
            // Entries landed between the state taken and its checkpoint (another leader's,
            // or a command applied meanwhile): this content is not the state at `index`.
            // Not counted as a command either: replicas that replay from a checkpoint
            // never see it.
            return Applied::StaleCheckpoint { at };
        }
        self.take_checkpoint(index, index, state.clone())
    }

    /// Part `part` of `parts` of a checkpoint through `at`, at `index`: valid only at
    /// `at + part`, and (but the first) right after the part before it, kept in
    /// `assembling`. The last part replaces the state by the text of all of them, as a
    /// checkpoint in one command would at the first part's index. Anything else drops the
    /// parts kept: the checkpoint is a no-op on every replica alike.
    fn apply_part(
        &mut self,
        index: u64,
        at: u64,
        (part, parts): (u32, u32),
        chunk: &str,
        assembling: Option<Assembly>,
    ) -> Applied {
        if at.checked_add(u64::from(part)) != Some(index) {
            return Applied::StaleCheckpoint { at };
        }
        let mut a = match assembling {
            _ if part == 1 => Assembly {
                at,
                parts,
                ..Assembly::default()
            },
            Some(a) if a.at == at && a.parts == parts && a.got.checked_add(1) == Some(part) => a,
            _ => return Applied::StaleCheckpoint { at },
        };
        a.text.push_str(chunk);
        a.got = part;
        if part < parts {
            self.assembling = Some(a);
            return Applied::CheckpointPart { at, part, parts };
        }
        let state: ClusterState = match serde_json::from_str(&a.text) {
            Ok(s) => s,
            Err(e) => {
                return Applied::BrokenCheckpoint {
                    at,
                    why: e.to_string(),
                }
            }
        };
        if state.applied > at {
            return Applied::StaleCheckpoint { at };
        }
        self.take_checkpoint(at + 1, index, state)
    }

    /// The state becomes `next`, the content of a valid checkpoint whose entries are
    /// `first..=last`.
    fn take_checkpoint(&mut self, first: u64, last: u64, mut next: ClusterState) -> Applied {
        let index = last;
        next.awaiting_checkpoint = false;
        next.assembling = None;
        let outcome = if self.awaiting_checkpoint {
            Applied::Checkpoint
        } else if *self != next {
            debug_assert_eq!(*self, next, "checkpoint at {index} differs from the state");
            Applied::Diverged
        } else {
            Applied::Checkpoint
        };
        *self = next;
        self.applied = index;
        self.last_checkpoint = first;
        self.since_checkpoint = 0;
        outcome
    }

    /// The Raft id of membership node `member`, if registered.
    pub fn id_of(&self, member: &str) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| n.member == member)
            .map(|(id, _)| *id)
    }

    /// What removing node `id` costs, as `T/P` names: the partitions with a replica on it and
    /// too few others to elect a leader, or to change their voters, without it (a partition
    /// with two replicas: Raft needs both; one whose other replicas include a removed node or
    /// a stopped replica), which take no appends again; and those with no other replica that
    /// can still run, whose records go with it.
    pub fn stranded_without(&self, id: u64) -> (Vec<String>, Vec<String>) {
        let (mut stranded, mut lost) = (Vec::new(), Vec::new());
        for (name, t) in &self.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                let nodes = p.nodes();
                if !nodes.contains(&id) {
                    continue;
                }
                // The replicas that can still vote: not this node's, not on a node removed
                // before (no spare took its place), not one marked stopped.
                let left = nodes
                    .iter()
                    .filter(|&&n| n != id && !p.stopped.contains(&n))
                    .filter(|n| self.nodes.get(n).is_some_and(|e| !e.removed))
                    .count();
                if left == 0 {
                    lost.push(format!("{name}/{i}"));
                } else if left < nodes.len() / 2 + 1 {
                    stranded.push(format!("{name}/{i}"));
                }
            }
        }
        (stranded, lost)
    }

    /// Registered nodes not removed, by id.
    pub fn active_nodes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.removed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Replicas each node holds (for placement: the least loaded first).
    pub(crate) fn load(&self) -> BTreeMap<u64, usize> {
        let mut load: BTreeMap<u64, usize> =
            self.active_nodes().into_iter().map(|n| (n, 0)).collect();
        for t in self.topics.values() {
            for p in &t.partitions {
                for r in &p.replicas {
                    if let Some(l) = load.get_mut(&r.node) {
                        *l += 1;
                    }
                }
            }
        }
        load
    }

    /// Nodes with a replica marked stopped (its log failed there), in any partition.
    pub(crate) fn nodes_with_stopped_replicas(&self) -> BTreeSet<u64> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .flat_map(|p| p.stopped.iter().copied())
            .collect()
    }

    /// Places `partitions` partitions of `topic` with `rf` replicas each on distinct nodes
    /// among `nodes` (the live ones), least loaded first, the preferred leader (first
    /// replica) rotating so that leaders spread; each replica on the shard its node's
    /// engine gives the partition.
    pub fn place(
        &self,
        topic: &str,
        partitions: u32,
        rf: u32,
        nodes: &[u64],
    ) -> Result<Vec<PartitionEntry>, String> {
        self.place_on(topic, partitions, rf, nodes, &[])
    }

    /// As [`ClusterState::place`], with `down` (registered nodes that are not live now) taken
    /// only where `up` holds fewer than `rf` nodes, and only while a majority of each
    /// partition's replicas is up: its group elects a leader and takes appends at once, and
    /// a replica on a down node is opened when that node is back (or moved once the node is
    /// removed). The preferred leader is always an up node. A node restarting during a
    /// rolling restart so never leaves a topic created meanwhile with fewer replicas for
    /// good.
    pub fn place_on(
        &self,
        topic: &str,
        partitions: u32,
        rf: u32,
        up: &[u64],
        down: &[u64],
    ) -> Result<Vec<PartitionEntry>, String> {
        if rf == 0 {
            return Err("the replication factor must be at least 1".into());
        }
        let nodes = up.len() + down.len();
        if rf as usize > nodes {
            return Err(format!(
                "replication factor {rf} needs {rf} nodes; the cluster has {nodes}"
            ));
        }
        let majority = rf as usize / 2 + 1;
        if up.len() < majority {
            return Err(format!(
                "replication factor {rf} needs {majority} of its replicas' nodes up to elect a \
                 leader; {} of the cluster's {nodes} nodes are up",
                up.len()
            ));
        }
        let mut load = self.load();
        let mut out = Vec::with_capacity(partitions as usize);
        let by_load = |nodes: &[u64], load: &BTreeMap<u64, usize>| {
            let mut order = nodes.to_vec();
            order.sort_by_key(|n| (load.get(n).copied().unwrap_or(0), *n));
            order
        };
        for p in 0..partitions {
            let mut chosen: Vec<u64> = by_load(up, &load).into_iter().take(rf as usize).collect();
            // The first replica is the preferred leader: rotated (among the up ones) so that
            // leaders spread when every node holds every partition.
            let len = chosen.len().max(1);
            chosen.rotate_left(p as usize % len);
            let missing = rf as usize - chosen.len();
            chosen.extend(by_load(down, &load).into_iter().take(missing));
            let mut replicas = Vec::with_capacity(chosen.len());
            for &n in &chosen {
                *load.entry(n).or_insert(0) += 1;
                let shards = self.nodes.get(&n).map_or(1, |e| e.shards.max(1));
                replicas.push(Replica {
                    node: n,
                    shard: engine::shard::owner(topic, p, shards as usize) as u32,
                });
            }
            out.push(PartitionEntry {
                initial: chosen,
                replicas,
                stopped: Vec::new(),
                departed: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Why `placed` (a new topic's partitions) does not fit: the first node it would give
    /// more replicas than its shards times `per_shard` (`--max-partitions-per-shard`), or
    /// `None` when it fits. Replicas placed since (moved off a removed node, the `default`
    /// topic's growing replication factor) are not refused: they restore what was there.
    pub fn over_capacity(&self, placed: &[PartitionEntry], per_shard: u32) -> Option<String> {
        let load = self.load();
        let mut added: BTreeMap<u64, usize> = BTreeMap::new();
        for r in placed.iter().flat_map(|p| &p.replicas) {
            *added.entry(r.node).or_insert(0) += 1;
        }
        added.into_iter().find_map(|(node, added)| {
            let shards = self.nodes.get(&node).map_or(1, |e| e.shards.max(1));
            let limit = shards as usize * per_shard as usize;
            let held = load.get(&node).copied().unwrap_or(0);
            let after = held + added;
            (after > limit).then(|| {
                let name = self.nodes.get(&node).map_or("?", |e| e.name.as_str());
                format!(
                    "node {name} (id {node}) would hold {after} partition replicas, over its \
                     limit of {limit} ({shards} shards x --max-partitions-per-shard \
                     {per_shard}; it holds {held}); delete topics, create this one with \
                     fewer partitions or replicas, or raise the limit"
                )
            })
        })
    }

    /// A replica of `topic`/`partition` for node `node`.
    pub fn replica_on(&self, topic: &str, partition: u32, node: u64) -> Replica {
        let shards = self.nodes.get(&node).map_or(1, |e| e.shards.max(1));
        Replica {
            node,
            shard: engine::shard::owner(topic, partition, shards as usize) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(m: &str) -> NodeEntry {
        NodeEntry {
            member: m.into(),
            name: m.into(),
            rpc_addr: "127.0.0.1:1".into(),
            gossip_addr: "127.0.0.1:2".into(),
            shards: 2,
            removed: false,
        }
    }

    /// Nodes a, b and c registered as 1, 2 and 3.
    fn three_nodes() -> ClusterState {
        let mut s = bootstrapped();
        s.apply(2, &Command::Register { node: node("b") });
        s.apply(3, &Command::Register { node: node("c") });
        s
    }

    /// Topic "t" of `partitions` partitions, `factor` replicas each on `nodes`, created at
    /// index 4.
    fn create_t(s: &mut ClusterState, partitions: u32, factor: u32, nodes: &[u64]) {
        let placed = s.place("t", partitions, factor, nodes).unwrap();
        s.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                config: LogConfig::default(),
                replication_factor: factor,
                partitions: placed,
            },
        );
    }

    /// Cluster "c" bootstrapped by node a, registered as 1.
    fn bootstrapped() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::Bootstrap {
                cluster_id: "c".into(),
                node: node("a"),
            },
        );
        s
    }

    /// A name deleted and created again gets a larger incarnation, also when the second
    /// creation proposed the number of the first (its leader had not applied them); topics of
    /// incarnation 0 (created before incarnations) keep it.
    #[test]
    fn incarnations_are_numbered_as_creations_apply() {
        let mut s = three_nodes();
        let placed = s.place("x", 1, 1, &[1]).unwrap();
        let create = |name: &str, incarnation: u64| Command::CreateTopic {
            name: name.into(),
            config: LogConfig {
                incarnation,
                ..LogConfig::default()
            },
            replication_factor: 1,
            partitions: placed.clone(),
        };
        let of = |s: &ClusterState, name: &str| s.topics.get(name).map(|t| t.config.incarnation);
        s.apply(4, &create("old", 0));
        assert_eq!((of(&s, "old"), s.next_incarnation), (Some(0), 0));
        s.apply(5, &create("x", 1));
        assert_eq!((of(&s, "x"), s.next_incarnation), (Some(1), 2));
        s.apply(6, &Command::DeleteTopic { name: "x".into() });
        s.apply(7, &create("x", 1));
        assert_eq!((of(&s, "x"), s.next_incarnation), (Some(2), 3));
        // A creation of a name that exists changes nothing.
        s.apply(8, &create("x", 7));
        assert_eq!((of(&s, "x"), s.next_incarnation), (Some(2), 3));
        s.apply(9, &create("y", 5));
        assert_eq!((of(&s, "y"), s.next_incarnation), (Some(5), 6));
    }

    #[test]
    fn ids_are_assigned_once_and_never_reused() {
        let mut s = bootstrapped();
        s.apply(2, &Command::Register { node: node("b") });
        s.apply(3, &Command::Register { node: node("b") });
        s.apply(4, &Command::RemoveNode { id: 2 });
        assert_eq!(s.active_nodes(), vec![1]);
        s.apply(5, &Command::Register { node: node("b2") });
        // Applied again (a replay): no effect.
        s.apply(5, &Command::Register { node: node("b3") });
        assert_eq!(s.id_of("a"), Some(1));
        assert_eq!(s.id_of("b"), Some(2));
        assert_eq!(s.id_of("b2"), Some(3));
        assert_eq!(s.id_of("b3"), None);
        assert_eq!(s.active_nodes(), vec![1, 3]);
        // The removed member comes back under its id.
        s.apply(6, &Command::Register { node: node("b") });
        assert_eq!(s.active_nodes(), vec![1, 2, 3]);
    }

    #[test]
    fn a_stopped_mark_holds_only_for_a_placed_node_and_leaves_with_it() {
        let mut s = three_nodes();
        create_t(&mut s, 1, 2, &[1, 2]);
        let stopped = |node| Command::ReplicaStopped {
            topic: "t".into(),
            partition: 0,
            node,
        };
        let marks = |s: &ClusterState| s.topics["t"].partitions[0].stopped.clone();
        let place = |s: &mut ClusterState, index: u64, replicas: Vec<Replica>| {
            s.apply(
                index,
                &Command::SetReplicas {
                    topic: "t".into(),
                    partition: 0,
                    replication_factor: 2,
                    replicas,
                },
            )
        };
        // Not placed on node 3, an unknown partition, a second report: no effect.
        s.apply(5, &stopped(3));
        s.apply(
            6,
            &Command::ReplicaStopped {
                topic: "t".into(),
                partition: 7,
                node: 1,
            },
        );
        assert!(marks(&s).is_empty());
        s.apply(7, &stopped(2));
        s.apply(8, &stopped(2));
        assert_eq!(marks(&s), vec![2]);
        // Kept while node 2 stays placed, dropped once it is placed elsewhere.
        let mut replicas = s.topics["t"].partitions[0].replicas.clone();
        place(&mut s, 9, replicas.clone());
        assert_eq!(marks(&s), vec![2]);
        replicas.retain(|r| r.node != 2);
        replicas.push(s.replica_on("t", 0, 3));
        place(&mut s, 10, replicas);
        assert!(marks(&s).is_empty());
        assert_eq!(s.topics["t"].partitions[0].nodes(), vec![1, 3]);
        // Node 2 left: recorded as departed, and it stays so when placed back.
        assert_eq!(s.topics["t"].partitions[0].departed, vec![2]);
        let mut back = s.topics["t"].partitions[0].replicas.clone();
        back.retain(|r| r.node != 3);
        back.push(s.replica_on("t", 0, 2));
        place(&mut s, 11, back);
        assert_eq!(s.topics["t"].partitions[0].nodes(), vec![1, 2]);
        // Node 3 left too, but it was not a first voter: not recorded.
        assert_eq!(s.topics["t"].partitions[0].departed, vec![2]);
        let again: ClusterState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again.topics["t"].partitions[0].departed, vec![2]);
        let c = stopped(2);
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        // A partition without marks or departures encodes as before (no `stopped` or
        // `departed` field).
        let mut fresh = three_nodes();
        create_t(&mut fresh, 1, 2, &[1, 2]);
        let json = serde_json::to_string(&fresh.topics["t"].partitions[0]).unwrap();
        assert!(
            !json.contains("stopped") && !json.contains("departed"),
            "{json}"
        );
    }

    #[test]
    fn departures_recorded_never_outgrow_the_first_voters() {
        let mut s = three_nodes();
        create_t(&mut s, 1, 2, &[1, 2]);
        // An entry of an older encoding may name a node that was never a first voter.
        s.topics.get_mut("t").unwrap().partitions[0].departed = vec![3];
        // Replicas moved round and round over the three nodes, 300 times.
        let pairs = [[1, 3], [2, 3], [1, 2], [3, 1], [3, 2]];
        for (i, pair) in pairs.iter().cycle().take(300).enumerate() {
            let replicas = pair.iter().map(|&n| s.replica_on("t", 0, n)).collect();
            s.apply(
                5 + i as u64,
                &Command::SetReplicas {
                    topic: "t".into(),
                    partition: 0,
                    replication_factor: 2,
                    replicas,
                },
            );
            let p = &s.topics["t"].partitions[0];
            assert!(
                p.departed.iter().all(|n| p.initial.contains(n)) && p.departed.len() <= 2,
                "step {i}: departed {:?}, initial {:?}",
                p.departed,
                p.initial
            );
        }
        assert_eq!(s.topics["t"].partitions[0].departed, vec![2, 1]);
    }

    #[test]
    fn a_node_registering_again_leaves_controller_stopped() {
        let mut s = three_nodes();
        s.apply(
            4,
            &Command::ReplicaStopped {
                topic: engine::CONTROLLER_TOPIC.into(),
                partition: 0,
                node: 2,
            },
        );
        s.apply(
            5,
            &Command::ReplicaStopped {
                topic: engine::CONTROLLER_TOPIC.into(),
                partition: 0,
                node: 3,
            },
        );
        assert!(s.controller_stopped.contains(&2));
        // Node 2 restarts with its controller replica started afresh (or its reset cut short
        // by the stop): its log is empty, so it holds no state, runs no reconcile pass and
        // cannot send `replica_recovered`; what it sends is its registration. Its mark goes,
        // or the leader never adds it back and it never learns the state again.
        s.apply(6, &Command::Register { node: node("b") });
        assert_eq!(
            s.controller_stopped.iter().copied().collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(s.id_of("b"), Some(2));
        // A new node registering touches no mark.
        s.apply(7, &Command::Register { node: node("d") });
        assert_eq!(
            s.controller_stopped.iter().copied().collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn a_stopped_controller_replica_is_marked_until_it_runs_again_or_its_node_goes() {
        let mut s = three_nodes();
        let on = |node| Command::ReplicaStopped {
            topic: engine::CONTROLLER_TOPIC.into(),
            partition: 0,
            node,
        };
        let back = |node| Command::ReplicaRecovered {
            topic: engine::CONTROLLER_TOPIC.into(),
            partition: 0,
            node,
        };
        // A state with no mark encodes as before (no `controller_stopped` field).
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("controller_stopped"), "{json}");
        // An unregistered node, another partition of the controller's topic: no mark.
        s.apply(4, &on(9));
        s.apply(
            5,
            &Command::ReplicaStopped {
                topic: engine::CONTROLLER_TOPIC.into(),
                partition: 1,
                node: 2,
            },
        );
        assert!(s.controller_stopped.is_empty());
        s.apply(6, &on(2));
        s.apply(7, &on(3));
        s.apply(8, &on(3));
        assert_eq!(
            s.controller_stopped.iter().copied().collect::<Vec<_>>(),
            [2, 3]
        );
        // Kept through an encoding (a checkpoint carries it).
        let json = serde_json::to_string(&s).unwrap();
        let again: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(again.controller_stopped, s.controller_stopped);
        // Withdrawn by the node, or gone with its removal.
        s.apply(9, &back(2));
        s.apply(10, &back(2));
        assert_eq!(
            s.controller_stopped.iter().copied().collect::<Vec<_>>(),
            [3]
        );
        s.apply(11, &Command::RemoveNode { id: 3 });
        assert!(s.controller_stopped.is_empty());
        // A removed node's report marks nothing.
        s.apply(12, &on(3));
        assert!(s.controller_stopped.is_empty());
        // No topic named like the controller's exists to mark either.
        assert!(!s.topics.contains_key(engine::CONTROLLER_TOPIC));
    }

    #[test]
    fn a_replica_that_runs_again_has_its_stopped_mark_withdrawn() {
        let mut s = three_nodes();
        create_t(&mut s, 1, 3, &[1, 2, 3]);
        let marks = |s: &ClusterState| s.topics["t"].partitions[0].stopped.clone();
        let on = |node| ("t".to_string(), 0, node);
        let stopped = |(topic, partition, node): (String, u32, u64)| Command::ReplicaStopped {
            topic,
            partition,
            node,
        };
        let recovered = |(topic, partition, node): (String, u32, u64)| Command::ReplicaRecovered {
            topic,
            partition,
            node,
        };
        s.apply(5, &stopped(on(2)));
        s.apply(6, &stopped(on(3)));
        assert_eq!(marks(&s), vec![2, 3]);
        // Only that node's mark goes; one withdrawn twice, or never set, changes nothing.
        s.apply(7, &recovered(on(2)));
        s.apply(8, &recovered(on(2)));
        s.apply(9, &recovered(on(1)));
        assert_eq!(marks(&s), vec![3]);
        s.apply(10, &recovered(("gone".into(), 0, 3)));
        s.apply(11, &recovered(("t".into(), 9, 3)));
        assert_eq!(marks(&s), vec![3]);
        // Marked again after a later failure.
        s.apply(12, &stopped(on(2)));
        assert_eq!(marks(&s), vec![3, 2]);
        let c = recovered(on(2));
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        assert!(String::from_utf8_lossy(&c.encode()).contains(r#""op":"replica_recovered""#));
    }

    #[test]
    fn a_placement_over_a_nodes_partition_bound_is_named() {
        // Two shards a node, two partitions a shard: four replicas a node.
        let mut s = three_nodes();
        create_t(&mut s, 3, 3, &[1, 2, 3]);
        let fits = s.place("u", 1, 3, &[1, 2, 3]).unwrap();
        assert_eq!(s.over_capacity(&fits, 2), None);
        // Four more replicas over three nodes holding three each: one gets two.
        let over = s.place("u", 2, 2, &[1, 2, 3]).unwrap();
        let why = s.over_capacity(&over, 2).expect("over the bound");
        assert!(
            why.contains(
                "would hold 5 partition replicas, over its limit of 4 (2 shards x \
                 --max-partitions-per-shard 2; it holds 3)"
            ),
            "{why}"
        );
        // A larger bound takes it.
        assert_eq!(s.over_capacity(&over, 3), None);
    }

    #[test]
    fn an_alteration_changes_only_the_limits_it_names_and_encodes_as_docs_format_md_shows() {
        let mut s = three_nodes();
        create_t(&mut s, 2, 3, &[1, 2, 3]);
        let alter = |bytes: Option<u64>, ms: Option<u64>| Command::AlterTopic {
            name: "t".into(),
            retention_bytes: bytes,
            retention_ms: ms,
        };
        let limits = |s: &ClusterState| {
            let c = &s.topics["t"].config;
            (c.retention_bytes, c.retention_ms)
        };
        s.apply(5, &alter(Some(1 << 30), None));
        assert_eq!(limits(&s), (1 << 30, 0));
        s.apply(6, &alter(None, Some(86_400_000)));
        assert_eq!(limits(&s), (1 << 30, 86_400_000));
        s.apply(7, &alter(Some(0), None));
        assert_eq!(limits(&s), (0, 86_400_000));
        let before = s.topics["t"].clone();
        // An unknown topic is left alone (it may have been deleted before this applied).
        s.apply(
            8,
            &Command::AlterTopic {
                name: "gone".into(),
                retention_bytes: Some(1),
                retention_ms: Some(1),
            },
        );
        assert_eq!(s.topics["t"], before);
        assert!(!s.topics.contains_key("gone"));
        assert_eq!(s.applied, 8);
        let c = alter(Some(1 << 30), None);
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        assert_eq!(
            String::from_utf8(c.encode()).unwrap(),
            r#"{"op":"alter_topic","name":"t","retention_bytes":1073741824}"#
        );
    }

    /// With a node down (a rolling restart that does not leave), a topic still gets its
    /// replicas: the up nodes first, the down one for the rest, never as preferred leader;
    /// refused when its group could not elect a leader with the nodes that are up.
    #[test]
    fn placement_takes_a_down_node_only_for_what_the_up_ones_lack() {
        let s = three_nodes();
        let p = s.place_on("t", 4, 3, &[1, 2], &[3]).unwrap();
        for e in &p {
            let n = e.nodes();
            assert_eq!(n.len(), 3, "{n:?}");
            assert_eq!(n[2], 3, "the down node last: {n:?}");
            assert_eq!(e.initial, n);
        }
        let leaders: BTreeSet<u64> = p.iter().map(|e| e.nodes()[0]).collect();
        assert_eq!(leaders, BTreeSet::from([1, 2]));
        // Enough up nodes: the down one is not used.
        let p = s.place_on("t", 3, 2, &[1, 2], &[3]).unwrap();
        assert!(p.iter().all(|e| !e.nodes().contains(&3)), "{p:?}");
        // One up node of three: a three-replica group would have no leader.
        let e = s.place_on("t", 1, 3, &[1], &[2, 3]).unwrap_err();
        assert!(e.contains("needs 2 of its replicas' nodes up"), "{e}");
        assert!(s.place_on("t", 1, 1, &[1], &[2, 3]).is_ok());
        let e = s.place_on("t", 1, 4, &[1, 2], &[3]).unwrap_err();
        assert!(e.contains("the cluster has 3"), "{e}");
    }

    #[test]
    fn placement_uses_distinct_nodes_and_spreads_leaders() {
        let s = three_nodes();
        let p = s.place("t", 6, 2, &[1, 2, 3]).unwrap();
        let mut leaders = BTreeMap::new();
        for e in &p {
            let n = e.nodes();
            assert_eq!(n.len(), 2);
            assert_ne!(n[0], n[1]);
            *leaders.entry(n[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.len(), 3, "{leaders:?}");
        assert!(s.place("t", 1, 4, &[1, 2, 3]).is_err());
        assert!(s.place("t", 1, 0, &[1, 2, 3]).is_err());
        let c = Command::CreateTopic {
            name: "t".into(),
            config: LogConfig::default(),
            replication_factor: 2,
            partitions: p,
        };
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
    }

    /// Three nodes, a topic of two partitions with a stopped mark: a state with every part
    /// filled.
    fn busy() -> ClusterState {
        let mut s = three_nodes();
        create_t(&mut s, 2, 2, &[1, 2, 3]);
        let node = s.topics["t"].partitions[0].nodes()[1];
        s.apply(
            6,
            &Command::ReplicaStopped {
                topic: "t".into(),
                partition: 0,
                node,
            },
        );
        s.apply(7, &Command::RemoveNode { id: 3 });
        s
    }

    #[test]
    fn a_checkpoint_round_trips_and_applying_it_gives_the_state_it_was_taken_from() {
        let s = busy();
        assert_eq!(
            (s.applied, s.since_checkpoint, s.last_checkpoint),
            (7, 6, 0)
        );
        // Taken through index 9 (entries 8 and 9 were no commands), it lands at 10.
        let c = Command::checkpoint(&s, 9);
        let bytes = c.encode();
        assert_eq!(Command::decode(&bytes).unwrap(), c);
        let json = String::from_utf8_lossy(&bytes).to_string();
        assert!(
            json.starts_with(r#"{"op":"checkpoint","version":1,"at":9,"state":{"#),
            "{json}"
        );
        assert!(!json.contains("awaiting"), "{json}");

        // A replica that holds the state: it holds exactly the checkpoint's content.
        let mut held = s.clone();
        assert_eq!(held.apply(10, &c), Applied::Checkpoint);
        assert_eq!(
            (held.applied, held.last_checkpoint, held.since_checkpoint),
            (10, 10, 0)
        );

        // A replica whose log starts at the checkpoint (compacted below it) skips what comes
        // before and takes the state from it: the same state.
        let mut fresh = ClusterState::replaying_from(8);
        assert_eq!(
            fresh.apply(8, &Command::Register { node: node("x") }),
            Applied::AwaitingCheckpoint
        );
        assert_eq!(fresh.apply(10, &c), Applied::Checkpoint);
        assert_eq!(fresh, held);
        // Both go on alike.
        for st in [&mut held, &mut fresh] {
            assert_eq!(
                st.apply(11, &Command::Register { node: node("d") }),
                Applied::Done
            );
            assert_eq!(st.since_checkpoint, 1);
        }
        assert_eq!(fresh, held);
        assert_eq!(held.id_of("d"), Some(4));
        // Everything but the counters is the state it was taken from.
        let mut back = held.clone();
        back.nodes.remove(&4);
        back.next_id = s.next_id;
        assert_eq!(
            (back.cluster_id, back.nodes, back.topics),
            (s.cluster_id.clone(), s.nodes.clone(), s.topics.clone())
        );
        // A whole log replays from the start, as before checkpoints.
        assert!(!ClusterState::replaying_from(1).awaiting_checkpoint);
    }

    /// The state of the checkpoint examples in docs/format.md: one node, bootstrapped.
    fn docs_example_state() -> ClusterState {
        let mut s = ClusterState::default();
        let mut a = node("a");
        a.rpc_addr = "10.0.0.1:8400".into();
        a.gossip_addr = "10.0.0.1:8401".into();
        a.shards = 1;
        s.apply(
            1,
            &Command::Bootstrap {
                cluster_id: "c".into(),
                node: a,
            },
        );
        s
    }

    /// The bytes docs/format.md shows for a checkpoint.
    #[test]
    fn a_checkpoint_encodes_as_docs_format_md_shows() {
        let s = docs_example_state();
        let json = String::from_utf8(Command::checkpoint(&s, 3).encode()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"op":"checkpoint","version":1,"at":3,"state":{"cluster_id":"c","#,
                r#""next_id":2,"nodes":[[1,{"member":"a","name":"a","#,
                r#""rpc_addr":"10.0.0.1:8400","gossip_addr":"10.0.0.1:8401","shards":1,"#,
                r#""removed":false}]],"topics":{},"applied":1,"last_checkpoint":0,"#,
                r#""since_checkpoint":1}}"#
            )
        );
        let mut fresh = ClusterState::replaying_from(4);
        assert_eq!(
            fresh.apply(4, &Command::decode(json.as_bytes()).unwrap()),
            Applied::Checkpoint
        );
        assert_eq!(fresh.id_of("a"), Some(1));
    }

    /// The bytes docs/format.md shows for a checkpoint in parts: the state of
    /// [`a_checkpoint_encodes_as_docs_format_md_shows`] in parts of at most 256 bytes.
    #[test]
    fn a_checkpoint_in_parts_encodes_as_docs_format_md_shows() {
        let s = docs_example_state();
        let parts = Command::checkpoint_parts(&s, 3, 256).unwrap();
        let parts: Vec<String> = parts
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(
            parts,
            [
                concat!(
                    r#"{"op":"checkpoint","version":2,"at":3,"part":1,"parts":2,"chunk":""#,
                    r#"{\"cluster_id\":\"c\",\"next_id\":2,\"nodes\":[[1,{\"member\":\"a\","#,
                    r#"\"name\":\"a\",\"rpc_addr\":\"10.0.0.1:8400\","#,
                    r#"\"gossip_addr\":\"10.0.0.1:8401\",\"shards\":1,\"removed"}"#
                ),
                concat!(
                    r#"{"op":"checkpoint","version":2,"at":3,"part":2,"parts":2,"chunk":""#,
                    r#"\":false}]],\"topics\":{},\"applied\":1,\"last_checkpoint\":0,"#,
                    r#"\"since_checkpoint\":1}"}"#
                ),
            ]
        );
        assert_eq!((parts[0].len(), parts[1].len()), (238, 153));
        // Applied at 4 and 5, they give the state the checkpoint in one command gives at 4.
        let mut fresh = ClusterState::replaying_from(4);
        for (i, p) in parts.iter().enumerate() {
            fresh.apply(4 + i as u64, &Command::decode(p.as_bytes()).unwrap());
        }
        let mut whole = ClusterState::replaying_from(4);
        whole.apply(4, &Command::checkpoint(&s, 3));
        assert_eq!((fresh.applied, fresh.last_checkpoint), (5, 4));
        whole.applied = 5;
        assert_eq!(fresh, whole);
    }

    #[test]
    fn a_checkpoint_that_lands_anywhere_but_right_after_its_state_is_a_no_op() {
        let s = busy();
        let c = Command::checkpoint(&s, 7);
        // Entries came between (it landed at 9): applied nowhere, counted as nothing.
        let mut held = s.clone();
        assert_eq!(held.apply(9, &c), Applied::StaleCheckpoint { at: 7 });
        assert_eq!(held, s);
        let mut fresh = ClusterState::replaying_from(5);
        assert_eq!(fresh.apply(9, &c), Applied::StaleCheckpoint { at: 7 });
        assert!(fresh.awaiting_checkpoint && fresh.nodes.is_empty());
        // A state claiming commands past the index it was taken at is no checkpoint either.
        let mut ahead = s.clone();
        ahead.applied = 20;
        let c = Command::checkpoint(&ahead, 9);
        assert_eq!(held.apply(10, &c), Applied::StaleCheckpoint { at: 9 });
        assert_eq!(held, s);
    }

    #[test]
    fn a_bad_or_unknown_checkpoint_is_an_error_not_a_panic() {
        let s = busy();
        let good = String::from_utf8(Command::checkpoint(&s, 9).encode()).unwrap();
        let bad = [
            good.replace(r#""version":1"#, r#""version":2"#),
            good.replace(r#""version":1,"#, ""),
            good.replace(r#""at":9"#, r#""at":-1"#),
            good.replace(r#""cluster_id":"c""#, r#""cluster_id":7"#),
            good[..good.len() / 2].to_string(),
            r#"{"op":"checkpoint","version":1,"at":9}"#.to_string(),
            r#"{"op":"checkpoint","version":1,"at":9,"state":null}"#.to_string(),
        ];
        for b in &bad {
            assert!(Command::decode(b.as_bytes()).is_err(), "{b}");
        }
        let e = Command::decode(bad[0].as_bytes()).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = Command::decode(good.replace(r#""version":1"#, r#""version":3"#).as_bytes())
            .unwrap_err();
        assert!(
            e.contains("version 3") && e.contains("versions 1 and 2"),
            "{e}"
        );
        // Random bytes never panic.
        let mut x = seed() | 1;
        let bytes = good.into_bytes();
        for _ in 0..2000 {
            let mut b = bytes.clone();
            for _ in 0..3 {
                let r = xorshift(&mut x);
                let i = (r as usize) % b.len();
                b[i] = (r >> 32) as u8;
            }
            // One that still decodes seeds a replay (a replica that holds the state would
            // assert in a debug build that the content is its own).
            if let Ok(c @ Command::Checkpoint { .. }) = Command::decode(&b) {
                let mut t = ClusterState::replaying_from(2);
                let _ = t.apply(10, &c);
            }
        }
    }

    /// `PROGLOG_CHECKPOINT_SEED`, or the clock; printed.
    fn seed() -> u64 {
        let seed: u64 = std::env::var("PROGLOG_CHECKPOINT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("PROGLOG_CHECKPOINT_SEED={seed}");
        seed
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// [`busy`] with `n` more topics, named with characters JSON escapes (quotes,
    /// backslashes, control characters) and characters of several UTF-8 bytes, applied
    /// through index `7 + n`.
    fn big(n: usize) -> ClusterState {
        let mut s = busy();
        for i in 0..n {
            let name = format!("topic \"{i}\" \\ \u{1}\n é 日本 🦀 {}", "x".repeat(i % 7));
            let partitions = s.place(&name, 3, 2, &[1, 2]).unwrap();
            let outcome = s.apply(
                8 + i as u64,
                &Command::CreateTopic {
                    name,
                    config: LogConfig::default(),
                    replication_factor: 2,
                    partitions,
                },
            );
            assert_eq!(outcome, Applied::Done);
        }
        s
    }

    /// The commands of `parts`, decoded.
    fn decoded(parts: &[Vec<u8>]) -> Vec<Command> {
        parts.iter().map(|b| Command::decode(b).unwrap()).collect()
    }

    #[test]
    fn a_state_too_large_for_one_command_is_cut_in_parts_that_make_its_text() {
        let s = big(40);
        let text = serde_json::to_string(&s).unwrap();
        let whole = Command::checkpoint(&s, 47).encode();
        for limit in [
            MIN_CHECKPOINT_PART_BYTES,
            257,
            300,
            1000,
            4096,
            whole.len() - 1,
        ] {
            let parts = Command::checkpoint_parts(&s, 47, limit).unwrap();
            assert!(parts.len() >= 2, "{limit}: {} parts", parts.len());
            let n = parts.len() as u32;
            let mut joined = String::new();
            for (k, (bytes, c)) in parts.iter().zip(decoded(&parts)).enumerate() {
                assert!(bytes.len() <= limit, "{limit}: part {k} of {}", bytes.len());
                let k = k as u32 + 1;
                let json = String::from_utf8(bytes.clone()).unwrap();
                let head = format!(
                    r#"{{"op":"checkpoint","version":2,"at":47,"part":{k},"parts":{n},"chunk":""#
                );
                assert!(json.starts_with(&head) && json.ends_with(r#""}"#), "{json}");
                let Some(Ok(CheckpointBody::Part { part, parts, chunk })) = c.checkpoint_body()
                else {
                    panic!("{c:?}");
                };
                assert_eq!((part, parts), (k, n));
                assert!(!chunk.is_empty());
                joined.push_str(chunk);
            }
            assert_eq!(joined, text, "{limit}");
        }
        // Below the smallest part size: refused.
        assert!(Command::checkpoint_parts(&s, 47, MIN_CHECKPOINT_PART_BYTES - 1).is_err());
        // One that fits is the checkpoint of one command, byte for byte (version 1).
        assert_eq!(
            Command::checkpoint_parts(&s, 47, whole.len()).unwrap(),
            vec![whole.clone()]
        );
        assert_eq!(
            Command::checkpoint_parts(&s, 47, 1 << 20).unwrap(),
            vec![whole]
        );
    }

    #[test]
    fn applying_every_part_in_order_replaces_the_state_at_the_last_one() {
        let s = big(30);
        assert_eq!(s.applied, 37);
        // Taken through 39 (38 and 39 were no commands): parts at 40, 41, ...
        let parts = decoded(&Command::checkpoint_parts(&s, 39, 1000).unwrap());
        let n = parts.len() as u64;
        assert!(n >= 3, "{n} parts");
        let last = 39 + n;

        let mut held = s.clone();
        let mut fresh = ClusterState::replaying_from(38);
        assert_eq!(
            fresh.apply(38, &Command::Register { node: node("x") }),
            Applied::AwaitingCheckpoint
        );
        for (i, c) in parts.iter().enumerate() {
            let index = 40 + i as u64;
            let want = if index < last {
                Applied::CheckpointPart {
                    at: 39,
                    part: i as u32 + 1,
                    parts: n as u32,
                }
            } else {
                Applied::Checkpoint
            };
            assert_eq!(held.apply(index, c), want, "{index}");
            assert_eq!(fresh.apply(index, c), want, "{index}");
            if index < last {
                // Nothing taken yet; a part applied again changes nothing.
                assert_eq!(held.assembling(), Some((39, i as u32 + 1, n as u32)));
                assert_eq!(held.apply(index, c), Applied::Again);
                assert!(fresh.awaiting_checkpoint && fresh.nodes.is_empty());
                assert_eq!((held.applied, held.last_checkpoint), (37, 0));
            }
        }
        assert_eq!(held.assembling(), None);
        assert_eq!(
            (held.applied, held.last_checkpoint, held.since_checkpoint),
            (last, 40, 0)
        );
        assert_eq!(fresh, held);
        let mut back = held.clone();
        (back.applied, back.last_checkpoint, back.since_checkpoint) = (37, 0, s.since_checkpoint);
        assert_eq!(back, s);
        // Applied again (a replay overlapping the log), nothing changes.
        assert_eq!(held.apply(last, &parts[parts.len() - 1]), Applied::Again);
        // Both go on alike.
        for st in [&mut held, &mut fresh] {
            assert_eq!(
                st.apply(last + 1, &Command::Register { node: node("d") }),
                Applied::Done
            );
            assert_eq!(st.since_checkpoint, 1);
        }
        assert_eq!(fresh, held);
    }

    /// Applies `entries` (index, command) to a copy of `s` and to a replay that starts at
    /// `first` (its log compacted), and checks that no checkpoint was taken by either.
    fn no_checkpoint_taken(s: &ClusterState, first: u64, entries: &[(u64, Command)]) {
        let mut held = s.clone();
        let mut twin = s.clone();
        let mut fresh = ClusterState::replaying_from(first);
        for (index, c) in entries {
            let outcome = held.apply(*index, c);
            assert!(
                !matches!(outcome, Applied::Checkpoint | Applied::Diverged),
                "{index}: {outcome:?}"
            );
            assert_eq!(twin.apply(*index, c), outcome, "{index}");
            let outcome = fresh.apply(*index, c);
            assert!(
                !matches!(outcome, Applied::Checkpoint | Applied::Diverged),
                "{index}: {outcome:?}"
            );
        }
        assert_eq!(held, twin);
        assert_eq!(held.last_checkpoint, s.last_checkpoint);
        assert!(fresh.awaiting_checkpoint && fresh.nodes.is_empty());
    }

    #[test]
    fn a_checkpoint_whose_parts_are_not_all_in_their_places_is_a_no_op() {
        let s = big(30);
        let parts = decoded(&Command::checkpoint_parts(&s, 39, 1000).unwrap());
        let n = parts.len();
        assert!(n >= 3, "{n} parts");
        let at = |i: usize| 40 + i as u64;
        let in_order: Vec<(u64, Command)> = parts
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (at(i), c))
            .collect();
        let register = Command::Register { node: node("x") };

        // A command between two parts: the parts after it are past their places.
        let mut between = in_order.clone();
        between.insert(1, (at(1), register.clone()));
        for e in between.iter_mut().skip(2) {
            e.0 += 1;
        }
        no_checkpoint_taken(&s, 38, &between);
        // ... and the held state took the command, and nothing more.
        let mut held = s.clone();
        for (i, c) in &between {
            held.apply(*i, c);
        }
        assert_eq!(held.id_of("x"), Some(4));
        assert_eq!((held.applied, held.assembling()), (at(1), None));

        // The last part missing, or one in the middle (the next ones shifted down into its
        // place, or kept at their own).
        no_checkpoint_taken(&s, 38, &in_order[..n - 1]);
        let mut gap = in_order.clone();
        gap.remove(1);
        no_checkpoint_taken(&s, 38, &gap);
        let shifted: Vec<(u64, Command)> = gap
            .iter()
            .enumerate()
            .map(|(i, (_, c))| (at(i), c.clone()))
            .collect();
        no_checkpoint_taken(&s, 38, &shifted);

        // A part twice (then the rest, one index later).
        let mut twice = in_order.clone();
        twice.insert(1, (at(1), parts[0].clone()));
        for e in twice.iter_mut().skip(2) {
            e.0 += 1;
        }
        no_checkpoint_taken(&s, 38, &twice);
        let mut twice = in_order.clone();
        twice.insert(2, (at(2), parts[1].clone()));
        for e in twice.iter_mut().skip(3) {
            e.0 += 1;
        }
        no_checkpoint_taken(&s, 38, &twice);

        // Two parts swapped.
        let mut swapped = in_order.clone();
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        no_checkpoint_taken(&s, 38, &swapped);

        // All of them one index late (an entry landed at `at + 1` first).
        let late: Vec<(u64, Command)> = in_order.iter().map(|(i, c)| (i + 1, c.clone())).collect();
        no_checkpoint_taken(&s, 38, &late);

        // Parts of two cuts of the same state (other part sizes) never mix.
        let other = decoded(&Command::checkpoint_parts(&s, 39, 700).unwrap());
        assert_ne!(other.len(), n);
        let mut mixed = in_order.clone();
        mixed[n - 1].1 = other[n - 1].clone();
        no_checkpoint_taken(&s, 38, &mixed);

        // A part whose chunk was changed: the whole makes no state.
        let mut broken = in_order.clone();
        if let Command::Checkpoint { chunk: Some(c), .. } = &mut broken[0].1 {
            c.insert(0, '[');
        }
        let mut held = s.clone();
        let outcomes: Vec<Applied> = broken.iter().map(|(i, c)| held.apply(*i, c)).collect();
        assert!(
            matches!(outcomes[n - 1], Applied::BrokenCheckpoint { at: 39, .. }),
            "{outcomes:?}"
        );
        no_checkpoint_taken(&s, 38, &broken);

        // After all this, a whole checkpoint in its places is taken.
        let mut held = s.clone();
        for (i, c) in between.iter().chain(&late) {
            held.apply(*i, c);
        }
        let parts = decoded(&Command::checkpoint_parts(&held, held.applied + 1, 1000).unwrap());
        let first = held.applied + 2;
        for (i, c) in parts.iter().enumerate() {
            held.apply(first + i as u64, c);
        }
        assert_eq!(held.last_checkpoint, first);
    }

    #[test]
    fn malformed_or_corrupted_parts_are_errors_or_no_ops_never_a_panic() {
        let s = big(20);
        let good =
            String::from_utf8(Command::checkpoint_parts(&s, 29, 600).unwrap()[1].clone()).unwrap();
        let bad = [
            good.replace(r#""version":2"#, r#""version":1"#),
            good.replace(r#""part":2"#, r#""part":0"#),
            good.replace(r#""part":2"#, r#""part":99"#),
            good.replace(r#""part":2,"#, ""),
            good.replace(r#""chunk":"#, r#""chunk":7,"x":"#),
            good.replace(r#","chunk":""#, r#","state":{},"chunk":""#),
            good.replace(r#""parts":"#, r#""parts":1,"p":"#),
            good[..good.len() / 2].to_string(),
        ];
        for b in &bad {
            assert!(Command::decode(b.as_bytes()).is_err(), "{b}");
        }
        // Random changes to random parts' bytes, parts dropped or repeated: errors or
        // no-ops, never a panic, and every replica alike.
        let mut x = seed() | 1;
        let parts = Command::checkpoint_parts(&s, 29, 600).unwrap();
        for _ in 0..300 {
            let mut log = Vec::new();
            for p in &parts {
                let mut b = p.clone();
                match xorshift(&mut x) % 8 {
                    0 => continue,
                    1 => log.push(b.clone()),
                    2 | 3 => {
                        for _ in 0..1 + xorshift(&mut x) % 3 {
                            let r = xorshift(&mut x);
                            let i = (r as usize) % b.len();
                            b[i] = (r >> 32) as u8;
                        }
                    }
                    _ => {}
                }
                log.push(b);
            }
            let mut held = s.clone();
            let mut fresh = ClusterState::replaying_from(20);
            let mut twin = ClusterState::replaying_from(20);
            for (i, b) in log.iter().enumerate() {
                if let Ok(c) = Command::decode(b) {
                    let index = 30 + i as u64;
                    let _ = held.apply(index, &c);
                    let outcome = fresh.apply(index, &c);
                    assert_eq!(twin.apply(index, &c), outcome);
                }
            }
            assert_eq!(fresh, twin);
        }
    }

    #[test]
    fn commands_count_since_the_last_checkpoint() {
        let mut s = bootstrapped();
        assert_eq!(s.since_checkpoint, 1);
        s.apply(2, &Command::Register { node: node("b") });
        s.apply(2, &Command::Register { node: node("c") });
        assert_eq!(s.since_checkpoint, 2);
        let c = Command::checkpoint(&s, 4);
        s.apply(5, &c);
        assert_eq!((s.since_checkpoint, s.last_checkpoint), (0, 5));
        s.apply(6, &Command::DeleteTopic { name: "x".into() });
        assert_eq!(s.since_checkpoint, 1);
    }
}
