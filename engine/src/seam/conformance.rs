//! The seam's conformance suite: what every implementation of [`Partitions`] and [`Topics`]
//! must do, as `pub` async checks over a [`Factory`], so that each implementation runs the
//! same suite from its own tests (the engine's `local` and `memory` here; the Raft group's
//! from `consensus` later, with `features = ["conformance"]`).
//!
//! Each check creates topics of its own (named from a prefix, so the checks can share one
//! implementation) and panics with a message saying what broke. The checks run on a glommio
//! executor (they spawn tasks and sleep while waiting for conditions, with generous deadlines
//! and no timed assertions). [`model`] drives seeded random operations against a plain list
//! of records; it prints its seed and replays one from `PROGLOG_SEAM_SEED`.

use super::{
    BatchBuilder, Chunk, EncodedBatch, Error, Factory, NewRecord, PartitionId, PastEnd, ReadLimits,
    Record, Seam, TopicChange, TopicConfig,
};
use bytes::Bytes;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// How long a check waits for a condition (a waiter to register or go) before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Record limits of the suite's topics: small, so that the limit checks need little data;
/// small segments, so that reads cross segment boundaries.
pub fn topic_config() -> TopicConfig {
    TopicConfig {
        segment_bytes: 64 * 1024,
        write_behind_bytes: 64 * 1024,
        max_record_bytes: 1000,
        max_batch_bytes: 4000,
        max_batch_records: 16,
        ..TopicConfig::default()
    }
}

/// Runs every check against the seam `factory` builds on the calling executor. `prefix`
/// keeps topic names apart when one implementation runs the suite more than once.
pub async fn run_all(factory: &dyn Factory, prefix: &str) {
    let seam = factory.build();
    let name = |check: &str| format!("{prefix}{check}");
    dense_offsets(&seam, &name("dense")).await;
    concurrent_appenders(&seam, &name("concurrent")).await;
    reads_are_byte_identical(&seam, &name("identical")).await;
    read_from_the_middle_of_a_batch(&seam, &name("middle")).await;
    past_the_visible_end(&seam, &name("past-end")).await;
    before_the_lowest_offset(&seam, &name("before-lowest")).await;
    wait_for_wakes_on_append(&seam, &name("wait")).await;
    dropped_wait_leaves_no_waiter(&seam, &name("cancel")).await;
    deleting_a_topic_ends_its_waits(&seam, &name("closing")).await;
    unknown_topics_and_partitions(&seam, &name("unknown")).await;
    bad_batches(&seam, &name("bad")).await;
    topic_administration(&seam, &name("admin")).await;
    altering_a_topic(&seam, &name("alter")).await;
    describe_counts(&seam, &name("describe")).await;
    model(&seam, &name("model"), seed_from_env()).await;
}

fn batch(values: &[&[u8]]) -> EncodedBatch {
    let records: Vec<NewRecord> = values
        .iter()
        .enumerate()
        .map(|(i, v)| NewRecord {
            value: Bytes::copy_from_slice(v),
            rtype: i as u32,
        })
        .collect();
    EncodedBatch::encode(&records).expect("encodes")
}

fn limits(max_records: usize, max_bytes: usize, past_end: PastEnd) -> ReadLimits {
    ReadLimits {
        max_records,
        max_bytes,
        past_end,
    }
}

const ALL: ReadLimits = ReadLimits {
    max_records: usize::MAX,
    max_bytes: usize::MAX,
    past_end: PastEnd::OutOfRange,
};

fn records(chunk: &Chunk) -> Vec<Record> {
    chunk
        .records()
        .collect::<Result<Vec<_>, _>>()
        .expect("stored batches check out")
}

/// Every record of a partition from `from`, read chunk by chunk.
async fn read_all(seam: &Seam, id: &PartitionId, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let chunk = seam
            .partitions
            .read(id, at, limits(7, 300, PastEnd::Empty))
            .await
            .expect("read");
        let got = records(&chunk);
        match got.last() {
            None => return out,
            Some(last) => at = last.offset + 1,
        }
        out.extend(got);
    }
}

async fn create(seam: &Seam, name: &str, partitions: u32, config: TopicConfig) {
    seam.topics
        .create_topic(name, partitions, config)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

/// Waits until `cond` holds, checking every few milliseconds, for at most [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Offsets are dense from 0, in append order, per partition.
pub async fn dense_offsets(seam: &Seam, topic: &str) {
    create(seam, topic, 2, topic_config()).await;
    for p in 0..2 {
        let id = PartitionId::new(topic, p);
        let mut next = 0;
        for n in 1..=5usize {
            let values: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; n]).collect();
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            let a = seam
                .partitions
                .append(&id, batch(&refs))
                .await
                .expect("append");
            assert_eq!(a.base_offset, next, "{id}: dense offsets");
            assert_eq!(
                a.last_offset,
                next + n as u64 - 1,
                "{id}: a batch's offsets"
            );
            next += n as u64;
        }
        let all = read_all(seam, &id, 0).await;
        let offsets: Vec<u64> = all.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..next).collect::<Vec<_>>(),
            "{id}: read back in order"
        );
    }
}

/// Many appenders at once: every append gets its own offsets, together dense, each
/// appender's in its call order, and every record reads back at its offset.
pub async fn concurrent_appenders(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    let (tasks, per_task) = (16u32, 12u32);
    let partitions = Rc::clone(&seam.partitions);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (partitions, id) = (Rc::clone(&partitions), id.clone());
            glommio::spawn_local(async move {
                let mut got = Vec::new();
                for i in 0..per_task {
                    let v = format!("task {t} append {i}");
                    let a = partitions
                        .append(&id, batch(&[v.as_bytes()]))
                        .await
                        .expect("append");
                    assert_eq!(a.base_offset, a.last_offset);
                    got.push((a.base_offset, v));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let got = h.await;
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "one appender's offsets follow its calls: {got:?}"
        );
        all.extend(got);
    }
    all.sort();
    let offsets: Vec<u64> = all.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..u64::from(tasks * per_task)).collect::<Vec<_>>()
    );
    let read = read_all(seam, &id, 0).await;
    assert_eq!(read.len(), all.len());
    for (r, (o, v)) in read.iter().zip(&all) {
        assert_eq!((r.offset, &r.value[..]), (*o, v.as_bytes()));
    }
}

/// What is read is what was appended: value, type, offset; term and timestamp are present
/// and the same for every record of one batch.
pub async fn reads_are_byte_identical(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    let big = vec![0xA5u8; 1000];
    let values: Vec<&[u8]> = vec![b"", b"\x00\x01\xff", b"hello", &big];
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(v, 7 * i as u32 + 1).expect("push");
    }
    let a = seam
        .partitions
        .append(&id, b.finish().expect("finish"))
        .await
        .expect("append");
    let second = seam
        .partitions
        .append(&id, batch(&[b"next"]))
        .await
        .expect("append");
    let chunk = seam.partitions.read(&id, 0, ALL).await.expect("read");
    let got = records(&chunk);
    assert_eq!(got.len(), values.len() + 1);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for (i, r) in got.iter().take(values.len()).enumerate() {
        assert_eq!(r.offset, a.base_offset + i as u64);
        assert_eq!(&r.value[..], values[i], "value of record {i}");
        assert_eq!(r.rtype, 7 * i as u32 + 1, "type of record {i}");
        assert_eq!((r.term, r.timestamp_ms), (got[0].term, got[0].timestamp_ms));
        assert!(
            (now_ms - 3_600_000..=now_ms + 3_600_000).contains(&r.timestamp_ms),
            "timestamp {} is the append time",
            r.timestamp_ms
        );
    }
    assert_eq!(got[values.len()].offset, second.base_offset);
    assert_eq!(&got[values.len()].value[..], b"next");
}

/// A read can start inside a batch.
pub async fn read_from_the_middle_of_a_batch(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    seam.partitions
        .append(&id, batch(&[b"a", b"b", b"c", b"d", b"e"]))
        .await
        .expect("append");
    let chunk = seam
        .partitions
        .read(&id, 2, limits(2, 1000, PastEnd::OutOfRange))
        .await
        .expect("read");
    let got = records(&chunk);
    let seen: Vec<(u64, &[u8])> = got.iter().map(|r| (r.offset, &r.value[..])).collect();
    assert_eq!(seen, vec![(2, &b"c"[..]), (3, &b"d"[..])]);
    // The first record comes whatever its size; later ones only within max_bytes.
    let chunk = seam
        .partitions
        .read(&id, 1, limits(10, 1, PastEnd::OutOfRange))
        .await
        .expect("read");
    assert_eq!(records(&chunk).len(), 1);
}

/// At the visible end a read is empty; past it, OutOfRange or empty by `PastEnd`.
pub async fn past_the_visible_end(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    let empty = seam
        .partitions
        .read(&id, 0, ALL)
        .await
        .expect("read an empty log");
    assert!(records(&empty).is_empty() && empty.visible_end == 0);
    seam.partitions
        .append(&id, batch(&[b"x", b"y"]))
        .await
        .expect("append");
    let at_end = seam
        .partitions
        .read(&id, 2, ALL)
        .await
        .expect("read at the end");
    assert!(records(&at_end).is_empty());
    assert_eq!(at_end.visible_end, 2);
    match seam.partitions.read(&id, 3, ALL).await {
        Err(Error::OffsetOutOfRange { offset: 3, .. }) => {}
        other => panic!("a read past the end: {other:?}"),
    }
    let tail = seam
        .partitions
        .read(&id, 9, limits(10, 10, PastEnd::Empty))
        .await
        .expect("a tailing read past the end");
    assert!(records(&tail).is_empty() && tail.visible_end == 2);
}

/// Before the lowest offset is OutOfRange, whatever `PastEnd` says.
pub async fn before_the_lowest_offset(seam: &Seam, topic: &str) {
    let config = TopicConfig {
        initial_offset: 100,
        ..topic_config()
    };
    create(seam, topic, 1, config).await;
    let id = PartitionId::new(topic, 0);
    let a = seam
        .partitions
        .append(&id, batch(&[b"first"]))
        .await
        .expect("append");
    assert_eq!(a.base_offset, 100, "a new log starts at its initial offset");
    for past_end in [PastEnd::OutOfRange, PastEnd::Empty] {
        match seam.partitions.read(&id, 99, limits(1, 1, past_end)).await {
            Err(Error::OffsetOutOfRange {
                offset: 99,
                lowest: 100,
                ..
            }) => {}
            other => panic!("a read before the lowest offset ({past_end:?}): {other:?}"),
        }
    }
    let state = seam.partitions.describe(&id).await.expect("describe");
    assert_eq!((state.lowest_offset, state.log_end), (100, 101));
}

/// `wait_for` resolves at once for a visible offset, and otherwise when an append makes the
/// offset visible, with the new visible end.
pub async fn wait_for_wakes_on_append(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    seam.partitions
        .append(&id, batch(&[b"0"]))
        .await
        .expect("append");
    assert_eq!(seam.partitions.wait_for(&id, 0).await.expect("visible"), 1);
    let partitions = Rc::clone(&seam.partitions);
    let wid = id.clone();
    let waiter = glommio::spawn_local(async move { partitions.wait_for(&wid, 1).await });
    eventually("the waiter parks", || async {
        seam.partitions
            .describe(&id)
            .await
            .expect("describe")
            .waiters
            == 1
    })
    .await;
    seam.partitions
        .append(&id, batch(&[b"1", b"2"]))
        .await
        .expect("append");
    assert_eq!(waiter.await.expect("woken"), 3, "the new visible end");
}

/// Dropping a wait leaves nothing parked where the partition lives.
pub async fn dropped_wait_leaves_no_waiter(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    {
        let mut wait = seam.partitions.wait_for(&id, 10);
        assert!(
            futures_lite::future::poll_once(&mut wait).await.is_none(),
            "nothing is visible yet"
        );
        eventually("the waiter parks", || async {
            seam.partitions
                .describe(&id)
                .await
                .expect("describe")
                .waiters
                == 1
        })
        .await;
    }
    eventually("the dropped waiter goes", || async {
        seam.partitions
            .describe(&id)
            .await
            .expect("describe")
            .waiters
            == 0
    })
    .await;
}

/// A reader parked on a partition whose topic is deleted gets `Unavailable` (the partition
/// closed), not an endless wait.
pub async fn deleting_a_topic_ends_its_waits(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    let partitions = Rc::clone(&seam.partitions);
    let wid = id.clone();
    let waiter = glommio::spawn_local(async move { partitions.wait_for(&wid, 0).await });
    eventually("the waiter parks", || async {
        seam.partitions
            .describe(&id)
            .await
            .expect("describe")
            .waiters
            == 1
    })
    .await;
    seam.topics.delete_topic(topic).await.expect("delete");
    match waiter.await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("a wait on a deleted partition: {other:?}"),
    }
}

/// Unknown topics and partitions are NotFound for every operation.
pub async fn unknown_topics_and_partitions(seam: &Seam, topic: &str) {
    create(seam, topic, 2, topic_config()).await;
    let missing = format!("{topic}-missing");
    for id in [PartitionId::new(&missing, 0), PartitionId::new(topic, 2)] {
        let p = &seam.partitions;
        let is_not_found = |e: &Error| matches!(e, Error::NotFound(_));
        let e = p.append(&id, batch(&[b"x"])).await.expect_err("append");
        assert!(is_not_found(&e), "append to {id}: {e:?}");
        let e = p.read(&id, 0, ALL).await.expect_err("read");
        assert!(is_not_found(&e), "read of {id}: {e:?}");
        let e = p.wait_for(&id, 0).await.expect_err("wait");
        assert!(is_not_found(&e), "wait on {id}: {e:?}");
        let e = p.describe(&id).await.expect_err("describe");
        assert!(is_not_found(&e), "describe of {id}: {e:?}");
    }
    match seam.topics.topic(&missing) {
        Err(Error::NotFound(m)) => assert!(m.contains("missing"), "{m}"),
        other => panic!("an unknown topic: {other:?}"),
    }
}

/// An empty batch is invalid; records and batches over the topic's limits are TooLarge; a
/// refused batch leaves nothing behind.
pub async fn bad_batches(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    let c = topic_config();
    assert!(matches!(
        BatchBuilder::new().finish(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        EncodedBatch::encode(&[]),
        Err(Error::InvalidArgument(_))
    ));
    let over_record = vec![1u8; c.max_record_bytes + 1];
    let fits = vec![2u8; c.max_record_bytes];
    let five: Vec<&[u8]> = vec![&fits; 5];
    let many: Vec<&[u8]> = vec![b"x"; c.max_batch_records + 1];
    let cases: Vec<(&str, EncodedBatch, &str)> = vec![
        (
            "a record over the limit",
            batch(&[b"ok", &over_record]),
            "record",
        ),
        ("a batch over max_batch_bytes", batch(&five), "batch"),
        ("a batch over max_batch_records", batch(&many), "batch"),
    ];
    for (what, b, kind) in cases {
        match seam.partitions.append(&id, b).await {
            Err(Error::TooLarge {
                what: w,
                size,
                limit,
                ..
            }) => {
                assert_eq!(w, kind, "{what}");
                assert!(size > limit, "{what}: {size} > {limit}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let state = seam.partitions.describe(&id).await.expect("describe");
    assert_eq!(
        (state.log_end, state.appends),
        (0, 0),
        "nothing was appended"
    );
    let a = seam
        .partitions
        .append(&id, batch(&[&fits]))
        .await
        .expect("append");
    assert_eq!(a.base_offset, 0, "the partition works on");
}

/// Topics are created, listed, looked up and deleted; a deleted name can be used again and
/// starts empty.
pub async fn topic_administration(seam: &Seam, topic: &str) {
    let t = &seam.topics;
    let info = t
        .create_topic(topic, 3, topic_config())
        .await
        .expect("create");
    assert_eq!((info.name.as_str(), info.partitions), (topic, 3));
    assert_eq!(t.topic(topic).expect("topic"), info);
    assert!(t.list_topics().expect("list").contains(&info));
    match t.create_topic(topic, 1, topic_config()).await {
        Err(Error::AlreadyExists(m)) => assert!(m.contains(topic), "{m}"),
        other => panic!("a second topic of the same name: {other:?}"),
    }
    assert_eq!(
        t.topic(topic).expect("topic").partitions,
        3,
        "the first one stays"
    );
    for (name, n) in [("", 1), ("a/b", 1), (topic, 0)] {
        match t.create_topic(name, n, topic_config()).await {
            Err(Error::InvalidArgument(_)) | Err(Error::AlreadyExists(_)) => {}
            other => panic!("topic {name:?} of {n} partitions: {other:?}"),
        }
    }
    let id = PartitionId::new(topic, 2);
    seam.partitions
        .append(&id, batch(&[b"x"]))
        .await
        .expect("append");
    t.delete_topic(topic).await.expect("delete");
    assert!(matches!(t.topic(topic), Err(Error::NotFound(_))));
    assert!(!t
        .list_topics()
        .expect("list")
        .iter()
        .any(|i| i.name == topic));
    assert!(matches!(
        seam.partitions.describe(&id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        t.delete_topic(topic).await,
        Err(Error::NotFound(_))
    ));
    t.create_topic(topic, 3, topic_config())
        .await
        .expect("create again");
    let state = seam.partitions.describe(&id).await.expect("describe");
    assert_eq!(state.log_end, 0, "a topic created again starts empty");
}

/// A topic's retention limits change, each alone (the other stays), and the topic keeps its
/// records and takes appends; an unknown topic is NotFound.
pub async fn altering_a_topic(seam: &Seam, topic: &str) {
    let t = &seam.topics;
    create(seam, topic, 2, topic_config()).await;
    let id = PartitionId::new(topic, 1);
    seam.partitions
        .append(&id, batch(&[b"a", b"b"]))
        .await
        .expect("append");
    let limits = |c: &TopicConfig| (c.retention_bytes, c.retention_ms);
    let steps = [
        (Some(1 << 20), None, (1 << 20, 0)),
        (None, Some(60_000), (1 << 20, 60_000)),
        (Some(0), None, (0, 60_000)),
        (Some(5 << 20), Some(0), (5 << 20, 0)),
    ];
    for (retention_bytes, retention_ms, want) in steps {
        let change = TopicChange {
            retention_bytes,
            retention_ms,
        };
        let info = t.alter_topic(topic, change).await.expect("alter");
        assert_eq!(limits(&info.config), want, "answered after {change:?}");
        let now = t.topic(topic).expect("topic");
        assert_eq!(limits(&now.config), want, "listed after {change:?}");
        assert_eq!(now.partitions, 2);
        assert_eq!(
            now.config.segment_bytes,
            topic_config().segment_bytes,
            "the other settings stay"
        );
    }
    let appended = seam
        .partitions
        .append(&id, batch(&[b"c"]))
        .await
        .expect("append after the change");
    assert_eq!(appended.base_offset, 2);
    let values: Vec<Bytes> = read_all(seam, &id, 0)
        .await
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values, [&b"a"[..], b"b", b"c"], "the records stay");
    let change = TopicChange {
        retention_bytes: Some(1),
        retention_ms: None,
    };
    assert!(matches!(
        t.alter_topic(&format!("{topic}-missing"), change).await,
        Err(Error::NotFound(_))
    ));
}

/// `describe` counts appends and records, and names a leader.
pub async fn describe_counts(seam: &Seam, topic: &str) {
    create(seam, topic, 1, topic_config()).await;
    let id = PartitionId::new(topic, 0);
    for n in 1..=4usize {
        let values: Vec<&[u8]> = vec![b"v"; n];
        seam.partitions
            .append(&id, batch(&values))
            .await
            .expect("append");
    }
    let s = seam.partitions.describe(&id).await.expect("describe");
    assert_eq!((s.appends, s.records_appended), (4, 10));
    assert_eq!((s.lowest_offset, s.visible_end, s.log_end), (0, 10, 10));
    assert!(s.size_bytes >= 10 * (crate::batch::RECORD_OVERHEAD as u64 + 1));
    assert!(s.leader.is_some(), "a single node leads its partitions");
    assert_eq!(s.waiters, 0);
}

/// A small deterministic generator (SplitMix64): seeded randomness without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed of [`model`]: `PROGLOG_SEAM_SEED` if set, else the clock's nanoseconds.
pub fn seed_from_env() -> u64 {
    std::env::var("PROGLOG_SEAM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Seeded random appends, reads and waits on three partitions, each result compared with a
/// plain list of records per partition.
pub async fn model(seam: &Seam, topic: &str, seed: u64) {
    println!("seam model: seed {seed} (replay with PROGLOG_SEAM_SEED={seed})");
    let mut rng = Rng::new(seed);
    let partitions = 3u32;
    create(seam, topic, partitions, topic_config()).await;
    let mut model: Vec<Vec<(Bytes, u32)>> = vec![Vec::new(); partitions as usize];
    let c = topic_config();
    for step in 0..300 {
        let p = rng.below(u64::from(partitions)) as u32;
        let id = PartitionId::new(topic, p);
        let log = &mut model[p as usize];
        let ctx = format!("seed {seed} step {step} on {id}");
        match rng.below(10) {
            0..=4 => {
                let n = 1 + rng.below(c.max_batch_records as u64) as usize;
                let mut b = BatchBuilder::new();
                let mut new = Vec::new();
                for _ in 0..n {
                    let len = match rng.below(8) {
                        0 => 0,
                        1 => c.max_record_bytes,
                        _ => rng.below(120) as usize,
                    };
                    let v: Bytes = (0..len).map(|_| rng.next_u64() as u8).collect();
                    let rtype = rng.next_u64() as u32;
                    b.push(&v, rtype).expect("push");
                    new.push((v, rtype));
                }
                let fits = b.payload_len() <= c.max_batch_bytes;
                let r = seam
                    .partitions
                    .append(&id, b.finish().expect("finish"))
                    .await;
                match (fits, r) {
                    (true, Ok(a)) => {
                        assert_eq!(a.base_offset, log.len() as u64, "{ctx}");
                        log.extend(new);
                    }
                    (false, Err(Error::TooLarge { .. })) => {}
                    (fits, r) => panic!("{ctx}: append (fits {fits}): {r:?}"),
                }
            }
            5..=8 => {
                let end = log.len() as u64;
                let from = rng.below(end + 3);
                let past_end = if rng.below(2) == 0 {
                    PastEnd::OutOfRange
                } else {
                    PastEnd::Empty
                };
                let max_records = 1 + rng.below(20) as usize;
                let max_bytes = 1 + rng.below(2000) as usize;
                let r = seam
                    .partitions
                    .read(&id, from, limits(max_records, max_bytes, past_end))
                    .await;
                if from > end && past_end == PastEnd::OutOfRange {
                    assert!(
                        matches!(r, Err(Error::OffsetOutOfRange { .. })),
                        "{ctx}: read {from} past {end}: {r:?}"
                    );
                    continue;
                }
                let chunk = r.unwrap_or_else(|e| panic!("{ctx}: read {from}: {e}"));
                assert_eq!(chunk.visible_end, end, "{ctx}");
                let got = records(&chunk);
                if from >= end {
                    assert!(got.is_empty(), "{ctx}");
                    continue;
                }
                assert!(!got.is_empty(), "{ctx}: at least one record");
                assert!(got.len() <= max_records, "{ctx}");
                let value_bytes: usize = got.iter().map(|r| r.value.len()).sum();
                assert!(
                    got.len() == 1 || value_bytes <= max_bytes,
                    "{ctx}: {value_bytes} value bytes over {max_bytes}"
                );
                for (i, r) in got.iter().enumerate() {
                    let o = from + i as u64;
                    let (v, t) = &log[o as usize];
                    assert_eq!((r.offset, &r.value, r.rtype), (o, v, *t), "{ctx}");
                }
            }
            _ => {
                let end = log.len() as u64;
                if end > 0 {
                    let offset = rng.below(end);
                    let got = seam.partitions.wait_for(&id, offset).await;
                    assert_eq!(got, Ok(end), "{ctx}: wait for a visible offset");
                }
            }
        }
    }
    for p in 0..partitions {
        let id = PartitionId::new(topic, p);
        let all = read_all(seam, &id, 0).await;
        let log = &model[p as usize];
        assert_eq!(all.len(), log.len(), "seed {seed}: {id} in full");
        let s = seam.partitions.describe(&id).await.expect("describe");
        assert_eq!(s.log_end, log.len() as u64, "seed {seed}: {id}");
    }
}
