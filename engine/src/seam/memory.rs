//! A plain in-memory seam: a list of batches per partition behind one lock, nothing of the
//! engine's storage code. It is the model the conformance suite holds the real
//! implementations to, and a stand-in where a test needs partitions without disks.
//!
//! Every append is visible at once (its owner, this code, raises the visible end as it
//! appends). Instances built on different executors share one state.

use super::{
    AppendTiming, Appended, Chunk, EncodedBatch, Error, Factory, LocalBoxFuture, NodeRef,
    PartitionId, PartitionState, Partitions, PastEnd, ReadLimits, Result, Run, Seam, TopicChange,
    TopicConfig, TopicDeleted, TopicInfo, Topics, Writability,
};
use crate::batch::{now_ms, Stamp};
use crate::limits::MAX_PARTITIONS;
use event_listener::Event;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

/// One appended batch: its payload as the caller encoded it, where it starts, and what the
/// owner stamped on it.
struct MemBatch {
    base: u64,
    /// Its Raft index (format v2 numbers every batch; here simply 1, 2, 3, ...).
    raft_index: u64,
    batch: EncodedBatch,
    timestamp_ms: i64,
}

struct MemPartition {
    batches: Vec<MemBatch>,
    /// The offset of the first record (the topic's initial offset).
    lowest: u64,
    /// The offset the next append gets; everything below it is visible.
    end: u64,
    waiters: usize,
    records: u64,
}

struct MemTopic {
    config: TopicConfig,
    partitions: Vec<MemPartition>,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, MemTopic>,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every append and every topic deletion.
    changed: Event,
    node: NodeRef,
}

/// Builds [`MemoryPartitions`] sharing one in-memory state.
#[derive(Clone)]
pub struct MemoryFactory {
    shared: Arc<Shared>,
}

impl Default for MemoryFactory {
    fn default() -> Self {
        MemoryFactory::new()
    }
}

impl MemoryFactory {
    pub fn new() -> MemoryFactory {
        MemoryFactory {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Event::new(),
                node: NodeRef {
                    id: "memory".into(),
                    addr: String::new(),
                },
            }),
        }
    }
}

impl Factory for MemoryFactory {
    fn build(&self) -> Seam {
        let m = Rc::new(MemoryPartitions {
            shared: Arc::clone(&self.shared),
        });
        Seam {
            partitions: m.clone(),
            topics: m,
        }
    }
}

/// The in-memory seam of one executor.
pub struct MemoryPartitions {
    shared: Arc<Shared>,
}

impl MemoryPartitions {
    /// A poisoned lock means a thread panicked while changing the state: refuse to go on.
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.shared
            .state
            .lock()
            .map_err(|_| Error::Internal("in-memory partitions: a holder panicked".into()))
    }

    /// Runs `f` on the partition `id`, if it exists.
    fn with_partition<R>(
        &self,
        id: &PartitionId,
        f: impl FnOnce(&TopicConfig, &mut MemPartition) -> Result<R>,
    ) -> Result<R> {
        let mut st = self.lock()?;
        let t = st
            .topics
            .get_mut(&*id.topic)
            .ok_or_else(|| Error::from(crate::Error::UnknownTopic(id.topic.to_string())))?;
        let partitions = t.partitions.len() as u32;
        let p = t.partitions.get_mut(id.partition as usize).ok_or_else(|| {
            Error::from(crate::Error::UnknownPartition {
                topic: id.topic.to_string(),
                partition: id.partition,
                partitions,
            })
        })?;
        f(&t.config, p)
    }
}

/// Checks a batch against a topic's limits, as every implementation must.
fn check_limits(c: &TopicConfig, b: &EncodedBatch) -> Result<()> {
    let too_large = |what, size, limit, unit| Error::TooLarge {
        what,
        size,
        limit,
        unit,
    };
    if b.record_count() as usize > c.max_batch_records {
        return Err(too_large(
            "batch",
            b.record_count() as usize,
            c.max_batch_records,
            "records",
        ));
    }
    if b.max_value_len() as usize > c.max_record_bytes {
        return Err(too_large(
            "record",
            b.max_value_len() as usize,
            c.max_record_bytes,
            "bytes",
        ));
    }
    if b.payload_len() > c.max_batch_bytes {
        return Err(too_large(
            "batch",
            b.payload_len(),
            c.max_batch_bytes,
            "bytes",
        ));
    }
    Ok(())
}

impl Partitions for MemoryPartitions {
    fn append<'a>(
        &'a self,
        id: &'a PartitionId,
        batch: EncodedBatch,
    ) -> LocalBoxFuture<'a, Result<Appended>> {
        Box::pin(async move {
            let appended = self.with_partition(id, |config, p| {
                check_limits(config, &batch)?;
                let base = p.end;
                let count = u64::from(batch.record_count());
                let raft_index = p.batches.len() as u64 + 1;
                p.batches.push(MemBatch {
                    base,
                    raft_index,
                    batch,
                    timestamp_ms: now_ms(),
                });
                p.end += count;
                p.records += count;
                Ok(Appended {
                    base_offset: base,
                    last_offset: base + count - 1,
                    timing: AppendTiming::default(),
                })
            })?;
            self.shared.changed.notify(usize::MAX);
            Ok(appended)
        })
    }

    fn read<'a>(
        &'a self,
        id: &'a PartitionId,
        from: u64,
        limits: ReadLimits,
    ) -> LocalBoxFuture<'a, Result<Chunk>> {
        Box::pin(async move {
            self.with_partition(id, |_, p| {
                let end = p.end;
                let origin: Arc<Path> = Arc::from(Path::new(&format!("memory:{id}")));
                let mut chunk = Chunk::new(from, end, limits, origin);
                let at_end = match limits.past_end {
                    PastEnd::OutOfRange => from == end,
                    PastEnd::Empty => from >= end,
                };
                if at_end && from >= p.lowest {
                    return Ok(chunk);
                }
                if from < p.lowest || from > end {
                    return Err(Error::OffsetOutOfRange {
                        offset: from,
                        lowest: p.lowest,
                        next: end,
                    });
                }
                let first = p.batches.partition_point(|b| b.base <= from) - 1;
                let (mut bytes, mut records) = (0usize, 0usize);
                for b in &p.batches[first..] {
                    let stored = b.batch.stored(&Stamp {
                        base_offset: b.base,
                        raft_index: b.raft_index,
                        timestamp_ms: b.timestamp_ms,
                        ..Stamp::default()
                    });
                    bytes += stored.len();
                    records +=
                        (b.base + u64::from(b.batch.record_count())).saturating_sub(from) as usize;
                    chunk.runs.push(Run {
                        bytes: stored,
                        segment: None,
                        pos: 0,
                    });
                    if bytes >= limits.max_bytes || records >= limits.max_records {
                        break;
                    }
                }
                Ok(chunk)
            })
        })
    }

    fn wait_for<'a>(&'a self, id: &'a PartitionId, offset: u64) -> LocalBoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let _waiting = self.with_partition(id, |_, p| {
                p.waiters += 1;
                Ok(WaiterGuard {
                    seam: self,
                    id: id.clone(),
                })
            })?;
            loop {
                let listener = self.shared.changed.listen();
                let end = self
                    .with_partition(id, |_, p| Ok(p.end))
                    .map_err(|_| Error::Unavailable(format!("partition {id} closed")))?;
                if end > offset {
                    return Ok(end);
                }
                listener.await;
            }
        })
    }

    fn describe<'a>(&'a self, id: &'a PartitionId) -> LocalBoxFuture<'a, Result<PartitionState>> {
        Box::pin(async move {
            self.with_partition(id, |_, p| {
                Ok(PartitionState {
                    lowest_offset: p.lowest,
                    visible_end: p.end,
                    log_end: p.end,
                    size_bytes: p
                        .batches
                        .iter()
                        .map(|b| (crate::batch::HEADER_LEN + b.batch.payload_len()) as u64)
                        .sum(),
                    segments: 1,
                    shard: 0,
                    leader: Some(self.shared.node.clone()),
                    replicas: Vec::new(),
                    writable: Writability::Writable,
                    waiters: p.waiters,
                    appends: p.batches.len() as u64,
                    records_appended: p.records,
                    fdatasyncs: 0,
                })
            })
        })
    }
}

/// Counts a waiting reader until dropped (cancelled or done).
struct WaiterGuard<'a> {
    seam: &'a MemoryPartitions,
    id: PartitionId,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        // The partition may be gone (its topic deleted): then there is nothing to count.
        let _ = self.seam.with_partition(&self.id, |_, p| {
            p.waiters = p.waiters.saturating_sub(1);
            Ok(())
        });
    }
}

impl Topics for MemoryPartitions {
    fn create_topic<'a>(
        &'a self,
        name: &'a str,
        partitions: u32,
        config: TopicConfig,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        Box::pin(async move {
            crate::catalog::check_topic_name(name)?;
            if partitions == 0 || partitions > MAX_PARTITIONS {
                return Err(Error::InvalidArgument(format!(
                    "a topic needs between 1 and {MAX_PARTITIONS} partitions, not {partitions}"
                )));
            }
            config.validate().map_err(Error::InvalidArgument)?;
            let mut st = self.lock()?;
            if st.topics.contains_key(name) {
                return Err(crate::Error::TopicExists(name.to_owned()).into());
            }
            st.topics.insert(
                name.to_owned(),
                MemTopic {
                    config: config.clone(),
                    partitions: (0..partitions)
                        .map(|_| MemPartition {
                            batches: Vec::new(),
                            lowest: config.initial_offset,
                            end: config.initial_offset,
                            waiters: 0,
                            records: 0,
                        })
                        .collect(),
                },
            );
            Ok(TopicInfo {
                name: name.to_owned(),
                partitions,
                config,
            })
        })
    }

    fn delete_topic<'a>(&'a self, name: &'a str) -> LocalBoxFuture<'a, Result<TopicDeleted>> {
        Box::pin(async move {
            self.lock()?
                .topics
                .remove(name)
                .ok_or_else(|| Error::from(crate::Error::UnknownTopic(name.to_owned())))?;
            self.shared.changed.notify(usize::MAX);
            Ok(TopicDeleted::default())
        })
    }

    fn alter_topic<'a>(
        &'a self,
        name: &'a str,
        change: TopicChange,
    ) -> LocalBoxFuture<'a, Result<TopicInfo>> {
        Box::pin(async move {
            let mut st = self.lock()?;
            let t = st
                .topics
                .get_mut(name)
                .ok_or_else(|| Error::from(crate::Error::UnknownTopic(name.to_owned())))?;
            t.config = change.applied_to(&t.config);
            Ok(TopicInfo {
                name: name.to_owned(),
                partitions: t.partitions.len() as u32,
                config: t.config.clone(),
            })
        })
    }

    fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .lock()?
            .topics
            .iter()
            .map(|(name, t)| TopicInfo {
                name: name.clone(),
                partitions: t.partitions.len() as u32,
                config: t.config.clone(),
            })
            .collect())
    }

    fn topic(&self, name: &str) -> Result<TopicInfo> {
        let st = self.lock()?;
        let t = st
            .topics
            .get(name)
            .ok_or_else(|| Error::from(crate::Error::UnknownTopic(name.to_owned())))?;
        Ok(TopicInfo {
            name: name.to_owned(),
            partitions: t.partitions.len() as u32,
            config: t.config.clone(),
        })
    }
}
