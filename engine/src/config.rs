//! Settings of logs and of the engine, with their defaults and bounds.

use crate::batch::HEADER_LEN;
use crate::limits::{
    DEFAULT_FLUSH_MS, DEFAULT_INDEX_INTERVAL_BYTES, DEFAULT_INTERVAL_MS, DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_RECORDS, DEFAULT_MAX_OPEN_SEGMENTS_PER_SHARD, DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_QUEUE_DEPTH, DEFAULT_RETENTION_CHECK, DEFAULT_SEGMENT_BYTES,
    DEFAULT_WRITE_BEHIND_BYTES, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// When an append is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "policy")]
pub enum Durability {
    /// An append resolves only after `fdatasync` of its data. Concurrent appends share one
    /// `fdatasync` (group commit).
    #[default]
    Always,
    /// Data is written and `fdatasync`ed every `interval_ms`; appends resolve once buffered.
    Interval { interval_ms: u64 },
    /// Data is written out in the background, never explicitly synced; appends resolve once
    /// buffered.
    Never,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            "interval" => Ok(Durability::Interval {
                interval_ms: DEFAULT_INTERVAL_MS,
            }),
            other => match other.strip_prefix("interval:").map(|ms| ms.trim_end_matches("ms").parse::<u64>()) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval { interval_ms: ms }),
                Some(Ok(_)) => Err(format!(
                    "durability {other:?}: the sync interval is at least 1 ms (`always` syncs \
                     before every acknowledgement)"
                )),
                _ => Err(format!(
                    "unknown durability {other:?}: expected always, never, interval or interval:<ms>"
                )),
            },
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Never => f.write_str("never"),
            Durability::Interval { interval_ms } => write!(f, "interval:{interval_ms}"),
        }
    }
}

/// Settings of one partition log. Persisted per topic in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    pub durability: Durability,
    /// A segment rolls once its data file reaches this size.
    pub segment_bytes: u64,
    /// One sparse index entry per this many data bytes (and one per term change).
    pub index_interval_bytes: u32,
    /// Delete the oldest sealed segments while the log is larger than this (0 = no limit).
    pub retention_bytes: u64,
    /// Delete sealed segments whose last write is older than this (0 = keep forever).
    pub retention_ms: u64,
    /// The offset of the first record of a new, empty log.
    pub initial_offset: u64,
    /// Bytes of records buffered in memory before appends wait for a write-out.
    pub write_behind_bytes: usize,
    /// Background write-out period for `never` (and the timer of `interval`), in ms.
    pub flush_ms: u64,
    pub max_record_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    /// Which creation of its topic's name the log belongs to: in a cluster, a number the
    /// controller gives each `CreateTopic` (never 0), part of the partitions' Raft group ids,
    /// so that the groups of a topic deleted and created again under the same name are other
    /// groups, and a copy of the deleted one is never taken for the new one. 0: a topic
    /// created before incarnations (or outside a cluster's controller), whose group ids stay
    /// as they were. The log itself ignores it.
    #[serde(skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

// The defaults pass `LogConfig::validate`.
const _: () = assert!(MIN_SEGMENT_BYTES <= DEFAULT_SEGMENT_BYTES);
const _: () = assert!(DEFAULT_SEGMENT_BYTES <= MAX_SEGMENT_BYTES);
const _: () = assert!(MAX_SEGMENT_BYTES <= u32::MAX as u64 + 1);
const _: () = assert!(DEFAULT_MAX_RECORD_BYTES <= DEFAULT_MAX_BATCH_BYTES);
const _: () = assert!((DEFAULT_MAX_BATCH_BYTES + HEADER_LEN) as u64 <= DEFAULT_SEGMENT_BYTES);
const _: () = assert!(DEFAULT_MAX_BATCH_BYTES + HEADER_LEN <= DEFAULT_WRITE_BEHIND_BYTES);

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durability: Durability::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            retention_bytes: 0,
            retention_ms: 0,
            initial_offset: 0,
            write_behind_bytes: DEFAULT_WRITE_BEHIND_BYTES,
            flush_ms: DEFAULT_FLUSH_MS,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            incarnation: 0,
        }
    }
}

/// Segment size of the controller's log ([`crate::CONTROLLER_TOPIC`]), whatever its catalog
/// entry says ([`LogConfig::for_controller`]). Small, so that the controller's log, compacted
/// below its checkpoints, drops whole segments and stays small on disk; large enough for the
/// largest command (1 MiB) in one batch.
pub const CONTROLLER_SEGMENT_BYTES: u64 = 2 << 20;

const _: () = assert!(MIN_SEGMENT_BYTES <= CONTROLLER_SEGMENT_BYTES);

impl LogConfig {
    /// The settings the controller's log runs with: these, with segments of
    /// [`CONTROLLER_SEGMENT_BYTES`] (batches up to a segment), and no retention (the
    /// controller compacts its log itself, below its checkpoints). Applied when the log is
    /// opened, so a data directory whose catalog holds other settings (created before them)
    /// gets them too: only sizes and the deletion of old segments change, nothing on disk.
    pub fn for_controller(mut self) -> LogConfig {
        self.segment_bytes = CONTROLLER_SEGMENT_BYTES;
        self.max_batch_bytes = CONTROLLER_SEGMENT_BYTES as usize - HEADER_LEN;
        self.max_record_bytes = self.max_batch_bytes;
        self.write_behind_bytes = self
            .write_behind_bytes
            .max(CONTROLLER_SEGMENT_BYTES as usize);
        self.retention_bytes = 0;
        self.retention_ms = 0;
        self
    }

    /// Caps the batch and record sizes to what one segment holds (a batch never spans two),
    /// for segments smaller than the default batch: a topic of 64 KiB segments takes
    /// records of up to 64 KiB less a batch header, and refuses larger ones.
    pub fn fit_to_segment(&mut self) {
        let fits = usize::try_from(self.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(HEADER_LEN);
        self.max_batch_bytes = self.max_batch_bytes.min(fits);
        self.max_record_bytes = self.max_record_bytes.min(self.max_batch_bytes);
    }

    /// Checks the settings against their bounds; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes {} (the segment size) is outside {} KiB to {} GiB",
                self.segment_bytes,
                MIN_SEGMENT_BYTES >> 10,
                MAX_SEGMENT_BYTES >> 30
            ));
        }
        if self.max_record_bytes == 0 {
            return Err("max_record_bytes 0: a record may hold at least 1 byte".into());
        }
        if self.max_batch_bytes < self.max_record_bytes {
            return Err(format!(
                "max_batch_bytes {} must be at least max_record_bytes {}",
                self.max_batch_bytes, self.max_record_bytes
            ));
        }
        if self.max_batch_bytes as u64 + HEADER_LEN as u64 > self.segment_bytes {
            return Err(format!(
                "max_batch_bytes {} must fit in a segment of {} bytes",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        if self.write_behind_bytes < self.max_batch_bytes + HEADER_LEN {
            return Err(format!(
                "write_behind_bytes {} must hold at least one full batch ({} bytes)",
                self.write_behind_bytes, self.max_batch_bytes
            ));
        }
        if self.max_batch_records == 0 {
            return Err("max_batch_records must be > 0".into());
        }
        if let Durability::Interval { interval_ms: 0 } = self.durability {
            return Err("durability interval must be > 0 ms".into());
        }
        if self.flush_ms == 0 {
            return Err("flush_ms must be > 0".into());
        }
        Ok(())
    }

    pub(crate) fn flush_period(&self) -> Duration {
        match self.durability {
            Durability::Interval { interval_ms } => Duration::from_millis(interval_ms),
            _ => Duration::from_millis(self.flush_ms),
        }
    }
}

/// Settings of the whole engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Number of shards (executors); 0 = one per CPU of `cpuset` (one per available CPU
    /// when there is none, or when `pin` is off).
    pub shards: usize,
    /// Pin shard i to the i-th CPU of `cpuset`, when there is one.
    pub pin: bool,
    /// The CPUs shards are pinned to, ascending; every one must be in the process's affinity
    /// mask. `None`: the CPUs of that mask. Shards beyond the list float over its CPUs
    /// (over the whole mask for `None`, that is unbound).
    pub cpuset: Option<Vec<usize>>,
    /// Requests queued per shard before callers get `Overloaded`.
    pub queue_depth: usize,
    /// Open segment files per shard (each open segment holds a data and an index file).
    pub max_open_segments_per_shard: usize,
    /// Settings for topics created without explicit ones.
    pub default_log: LogConfig,
    /// How often each shard applies retention.
    pub retention_check: Duration,
    /// Where write-behind buffers are charged (the server's memory budget); `None`: nowhere.
    pub memory: Option<crate::memory::MemoryHook>,
    /// The replication layer that owns every partition's appends (Raft, from `consensus`);
    /// `None`: each shard appends to its logs itself (the single-node engine).
    pub replication: Option<crate::shard::ReplicationHook>,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            shards: 0,
            pin: true,
            cpuset: None,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            max_open_segments_per_shard: DEFAULT_MAX_OPEN_SEGMENTS_PER_SHARD,
            default_log: LogConfig::default(),
            retention_check: DEFAULT_RETENTION_CHECK,
            memory: None,
            replication: None,
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else if let Some(cpus) = self.cpuset.as_ref().filter(|c| self.pin && !c.is_empty()) {
            cpus.len()
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_settings_are_valid_whatever_they_start_from() {
        let small = LogConfig {
            segment_bytes: MIN_SEGMENT_BYTES,
            max_batch_bytes: 1024,
            max_record_bytes: 1024,
            write_behind_bytes: 1024 + HEADER_LEN,
            retention_bytes: 1,
            retention_ms: 1,
            ..LogConfig::default()
        };
        for base in [LogConfig::default(), small] {
            let c = base.for_controller();
            assert_eq!(c.validate(), Ok(()));
            assert_eq!(c.segment_bytes, CONTROLLER_SEGMENT_BYTES);
            // The largest command (1 MiB) and a record's framing fit in one batch.
            assert!(c.max_batch_bytes >= (1 << 20) + 8);
            assert_eq!((c.retention_bytes, c.retention_ms), (0, 0));
        }
    }

    #[test]
    fn a_small_segment_caps_the_batch_and_record_sizes() {
        let mut c = LogConfig {
            segment_bytes: MIN_SEGMENT_BYTES,
            ..LogConfig::default()
        };
        assert!(
            c.validate().is_err(),
            "a default batch does not fit in 64 KiB"
        );
        c.fit_to_segment();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.max_batch_bytes, MIN_SEGMENT_BYTES as usize - HEADER_LEN);
        assert_eq!(c.max_record_bytes, c.max_batch_bytes);
        // A segment that holds the default batch changes nothing.
        let mut d = LogConfig::default();
        d.fit_to_segment();
        assert_eq!(d.max_batch_bytes, LogConfig::default().max_batch_bytes);
        assert_eq!(d.max_record_bytes, LogConfig::default().max_record_bytes);
    }
}
