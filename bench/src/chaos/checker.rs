//! The checker: reads a [`History`] and names every anomaly a replicated log must never
//! show, Jepsen's classes for Kafka-like logs.
//!
//! Evidence comes from three sources, all through the public API: acknowledgements (value
//! `v` at offset `o`), consumers' reads, and the final read of every partition from every
//! node once every fault healed. Values are unique per produce, so a value names its
//! operation. The classes:
//!
//! | class | what it means |
//! |---|---|
//! | lost-write | an acknowledged value is in no node's final read |
//! | duplicate | one value at two offsets |
//! | inconsistent-offset | one offset with two values (between nodes, reads, acknowledgements) |
//! | aborted-read | a value whose produce was proven not to happen is seen |
//! | non-monotonic | a consumer reads an offset at or below one it read before; or a producer's acknowledged offset is at or below one acknowledged to it before this produce began |
//! | poll-skip | a consumer, always asking for the offset after the last one it read, gets a later one |
//! | replica-divergence | below the commit index (the highest acknowledged offset) a node lacks an offset or holds another value than a node does |
//! | unseen | an acknowledged value in the final log that no consumer of its partition ever received |
//!
//! Each anomaly comes with the operations and reads involved, the nodes, and the fault
//! window: the faults that overlapped the operations, else the last fault before them and
//! the first after (a write lost after its acknowledgement was lost by a later fault).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::history::{Fault, History, Op, Outcome, Read};

/// Examples kept per class (every anomaly is counted).
pub const MAX_EXAMPLES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    LostWrite,
    Duplicate,
    InconsistentOffset,
    AbortedRead,
    NonMonotonic,
    PollSkip,
    ReplicaDivergence,
    Unseen,
}

impl Class {
    pub const ALL: [Class; 8] = [
        Class::LostWrite,
        Class::Duplicate,
        Class::InconsistentOffset,
        Class::AbortedRead,
        Class::NonMonotonic,
        Class::PollSkip,
        Class::ReplicaDivergence,
        Class::Unseen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::LostWrite => "lost-write",
            Class::Duplicate => "duplicate",
            Class::InconsistentOffset => "inconsistent-offset",
            Class::AbortedRead => "aborted-read",
            Class::NonMonotonic => "non-monotonic",
            Class::PollSkip => "poll-skip",
            Class::ReplicaDivergence => "replica-divergence",
            Class::Unseen => "unseen",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Class::LostWrite => "an acknowledged value is in no node's final read",
            Class::Duplicate => "one value at two offsets",
            Class::InconsistentOffset => "one offset with two values",
            Class::AbortedRead => "a value whose produce was proven not to happen was seen",
            Class::NonMonotonic => "offsets went backwards for one consumer or one producer",
            Class::PollSkip => "a consumer skipped offsets it asked for",
            Class::ReplicaDivergence => {
                "below the commit index a node lacks an offset or disagrees with another"
            }
            Class::Unseen => "an acknowledged value no consumer of its partition received",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One anomaly with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub class: Class,
    pub partition: u32,
    pub summary: String,
    pub ops: Vec<Op>,
    pub reads: Vec<Read>,
    pub nodes: Vec<String>,
    pub faults: Vec<Fault>,
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Every anomaly, counted by class.
    pub counts: BTreeMap<Class, usize>,
    /// At most [`MAX_EXAMPLES`] per class.
    pub examples: Vec<Anomaly>,
    /// What could not be judged, and why (a final read that failed).
    pub notes: Vec<String>,
}

impl Report {
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn found(&self, c: Class) -> bool {
        self.counts.get(&c).copied().unwrap_or(0) > 0
    }

    fn add(&mut self, a: Anomaly) {
        let n = self.counts.entry(a.class).or_default();
        *n += 1;
        if *n <= MAX_EXAMPLES {
            self.examples.push(a);
        }
    }

    /// The minimal report: per class, the count and the first `per_class` examples, each
    /// with its operations, reads, nodes and fault window.
    pub fn render(&self, per_class: usize) -> String {
        let mut s = String::new();
        if self.total() == 0 {
            s.push_str("no anomalies\n");
        }
        for (class, n) in &self.counts {
            s.push_str(&format!("{class}: {n} ({})\n", class.meaning()));
            for a in self
                .examples
                .iter()
                .filter(|a| a.class == *class)
                .take(per_class)
            {
                s.push_str(&format!("  - partition {}: {}\n", a.partition, a.summary));
                for o in &a.ops {
                    s.push_str(&format!("      op {}\n", describe_op(o)));
                }
                for r in a.reads.iter().take(6) {
                    s.push_str(&format!("      read {}\n", describe_read(r)));
                }
                if !a.nodes.is_empty() {
                    s.push_str(&format!("      nodes {}\n", a.nodes.join(", ")));
                }
                if a.faults.is_empty() {
                    s.push_str("      faults: none recorded\n");
                }
                for f in &a.faults {
                    s.push_str(&format!(
                        "      fault #{} {} [{:.1}s - {:.1}s]: {}\n",
                        f.id,
                        f.kind,
                        f.start_ms / 1000.0,
                        f.end_ms / 1000.0,
                        f.detail
                    ));
                }
            }
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }
}

pub fn describe_op(o: &Op) -> String {
    let outcome = match (o.outcome, o.offset) {
        (Outcome::Ok, Some(off)) => format!("ok offset {off}"),
        (Outcome::Ok, None) => "ok".to_string(),
        (Outcome::Fail, _) => "fail".to_string(),
        (Outcome::Unknown, _) => "unknown".to_string(),
    };
    format!(
        "#{} {} {:?} {} -> {} p{} [{:.3}s - {:.3}s] {}{}",
        o.id,
        o.value,
        o.api,
        o.client,
        o.node,
        o.partition,
        o.invoke_ms / 1000.0,
        o.complete_ms / 1000.0,
        outcome,
        o.error
            .as_ref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )
}

pub fn describe_read(r: &Read) -> String {
    format!(
        "{} {:?} session {} from {} p{} offset {} = {} at {:.3}s",
        r.consumer,
        r.api,
        r.session,
        r.node,
        r.partition,
        r.offset,
        r.value,
        r.at_ms / 1000.0
    )
}

/// Where a value was seen at an offset.
#[derive(Debug, Clone, Copy)]
enum Witness<'a> {
    Ack(&'a Op),
    Read(&'a Read),
    Final(&'a str),
}

/// Lookups built once over the history.
struct Index<'a> {
    h: &'a History,
    op_by_value: HashMap<&'a str, &'a Op>,
    /// (partition, offset) -> value -> witnesses
    at_offset: BTreeMap<(u32, u64), BTreeMap<&'a str, Vec<Witness<'a>>>>,
    /// (partition, value) -> offset -> witnesses
    of_value: HashMap<(u32, &'a str), BTreeMap<u64, Vec<Witness<'a>>>>,
    /// Values in some node's final read (complete or not), per partition.
    in_finals: HashSet<(u32, &'a str)>,
    /// Partitions with at least one complete final read.
    judged: BTreeSet<u32>,
}

impl<'a> Index<'a> {
    fn build(h: &'a History) -> Index<'a> {
        let mut ix = Index {
            h,
            op_by_value: HashMap::new(),
            at_offset: BTreeMap::new(),
            of_value: HashMap::new(),
            in_finals: HashSet::new(),
            judged: BTreeSet::new(),
        };
        for o in &h.ops {
            ix.op_by_value.insert(&o.value, o);
            if let (Outcome::Ok, Some(off)) = (o.outcome, o.offset) {
                ix.witness(o.partition, off, &o.value, Witness::Ack(o));
            }
        }
        for r in &h.reads {
            ix.witness(r.partition, r.offset, &r.value, Witness::Read(r));
        }
        for f in &h.finals {
            if f.error.is_none() {
                ix.judged.insert(f.partition);
            }
            for (off, v) in &f.records {
                ix.in_finals.insert((f.partition, v));
                ix.witness(f.partition, *off, v, Witness::Final(&f.node));
            }
        }
        ix
    }

    fn witness(&mut self, p: u32, off: u64, v: &'a str, w: Witness<'a>) {
        self.at_offset
            .entry((p, off))
            .or_default()
            .entry(v)
            .or_default()
            .push(w);
        self.of_value
            .entry((p, v))
            .or_default()
            .entry(off)
            .or_default()
            .push(w);
    }

    /// Faults overlapping `[t0, t1]`; when none did, the last one before and the first after.
    fn window(&self, t0: f64, t1: f64) -> Vec<Fault> {
        let faults = &self.h.faults;
        let overlap: Vec<Fault> = faults
            .iter()
            .filter(|f| f.start_ms <= t1 && f.end_ms >= t0)
            .cloned()
            .collect();
        if !overlap.is_empty() {
            return overlap;
        }
        let before = faults
            .iter()
            .filter(|f| f.end_ms < t0)
            .max_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
        let after = faults
            .iter()
            .filter(|f| f.start_ms > t1)
            .min_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        before.into_iter().chain(after).cloned().collect()
    }

    /// The operations, reads and nodes behind a set of witnesses, and their time span.
    fn evidence(&self, ws: &[Witness<'a>]) -> (Vec<Op>, Vec<Read>, Vec<String>, f64, f64) {
        let (mut ops, mut reads, mut nodes) = (Vec::new(), Vec::new(), BTreeSet::new());
        let (mut t0, mut t1) = (f64::MAX, f64::MIN);
        for w in ws {
            match w {
                Witness::Ack(o) => {
                    if !ops.iter().any(|x: &Op| x.id == o.id) {
                        ops.push((*o).clone());
                    }
                    nodes.insert(o.node.clone());
                    t0 = t0.min(o.invoke_ms);
                    t1 = t1.max(o.complete_ms);
                }
                Witness::Read(r) => {
                    reads.push((*r).clone());
                    nodes.insert(r.node.clone());
                    t0 = t0.min(r.at_ms);
                    t1 = t1.max(r.at_ms);
                }
                Witness::Final(n) => {
                    nodes.insert((*n).to_string());
                }
            }
        }
        if t0 > t1 {
            (t0, t1) = (self.h.end_ms, self.h.end_ms);
        }
        (ops, reads, nodes.into_iter().collect(), t0, t1)
    }

    /// The produce of `v`, when the history has one.
    fn producer_of(&self, v: &str) -> Option<&'a Op> {
        self.op_by_value.get(v).copied()
    }
}

/// Runs every check.
pub fn check(h: &History) -> Report {
    let ix = Index::build(h);
    let mut r = Report::default();
    for p in 0..h.partitions {
        if !ix.judged.contains(&p) {
            r.notes.push(format!(
                "partition {p}: no node's final read completed; lost writes, divergence and \
                 unseen values there cannot be judged"
            ));
        }
    }
    lost_writes(&ix, &mut r);
    duplicates(&ix, &mut r);
    inconsistent_offsets(&ix, &mut r);
    aborted_reads(&ix, &mut r);
    non_monotonic_reads(&ix, &mut r);
    non_monotonic_sends(&ix, &mut r);
    poll_skips(&ix, &mut r);
    // One node has no replica: what it lacks is a lost write, reported as such.
    if h.nodes.len() > 1 {
        divergence(&ix, &mut r);
    }
    unseen(&ix, &mut r);
    r
}

fn lost_writes(ix: &Index, r: &mut Report) {
    for o in &ix.h.ops {
        if o.outcome != Outcome::Ok || !ix.judged.contains(&o.partition) {
            continue;
        }
        if ix.in_finals.contains(&(o.partition, o.value.as_str())) {
            continue;
        }
        let reads: Vec<Read> =
            ix.h.reads
                .iter()
                .filter(|x| x.partition == o.partition && x.value == o.value)
                .cloned()
                .collect();
        let nodes: Vec<String> =
            ix.h.finals
                .iter()
                .filter(|f| f.partition == o.partition && f.error.is_none())
                .map(|f| f.node.clone())
                .collect();
        let seen = if reads.is_empty() {
            String::new()
        } else {
            format!(", though consumers received it {} times", reads.len())
        };
        r.add(Anomaly {
            class: Class::LostWrite,
            partition: o.partition,
            summary: format!(
                "{} acknowledged at offset {} is in no final read{seen}",
                o.value,
                o.offset.map_or("?".into(), |x| x.to_string())
            ),
            ops: vec![o.clone()],
            reads,
            nodes,
            faults: ix.window(o.invoke_ms, o.complete_ms),
        });
    }
}

fn duplicates(ix: &Index, r: &mut Report) {
    let mut keys: Vec<_> = ix.of_value.keys().copied().collect();
    keys.sort();
    for key in keys {
        let offsets = &ix.of_value[&key];
        if offsets.len() < 2 {
            continue;
        }
        let ws: Vec<Witness> = offsets.values().flatten().copied().collect();
        let (mut ops, reads, nodes, t0, t1) = ix.evidence(&ws);
        if let Some(o) = ix.producer_of(key.1) {
            if !ops.iter().any(|x| x.id == o.id) {
                ops.push(o.clone());
            }
        }
        let at: Vec<String> = offsets.keys().map(|o| o.to_string()).collect();
        r.add(Anomaly {
            class: Class::Duplicate,
            partition: key.0,
            summary: format!("{} at offsets {}", key.1, at.join(", ")),
            ops,
            reads,
            nodes,
            faults: ix.window(t0, t1),
        });
    }
}

fn inconsistent_offsets(ix: &Index, r: &mut Report) {
    for (&(p, off), values) in &ix.at_offset {
        if values.len() < 2 {
            continue;
        }
        let ws: Vec<Witness> = values.values().flatten().copied().collect();
        let (ops, reads, nodes, t0, t1) = ix.evidence(&ws);
        let who: Vec<String> = values
            .iter()
            .map(|(v, ws)| format!("{v} ({})", witnesses(ws)))
            .collect();
        r.add(Anomaly {
            class: Class::InconsistentOffset,
            partition: p,
            summary: format!("offset {off} holds {}", who.join(" vs ")),
            ops,
            reads,
            nodes,
            faults: ix.window(t0, t1),
        });
    }
}

/// "acked by #3, read by t0 from node-1, final on node-2, node-3".
fn witnesses(ws: &[Witness]) -> String {
    let mut parts = Vec::new();
    let acks: Vec<String> = ws
        .iter()
        .filter_map(|w| match w {
            Witness::Ack(o) => Some(format!("#{}", o.id)),
            _ => None,
        })
        .collect();
    if !acks.is_empty() {
        parts.push(format!("acknowledged to {}", acks.join(" ")));
    }
    let reads: BTreeSet<String> = ws
        .iter()
        .filter_map(|w| match w {
            Witness::Read(x) => Some(format!("{} from {}", x.consumer, x.node)),
            _ => None,
        })
        .collect();
    if !reads.is_empty() {
        parts.push(format!(
            "read by {}",
            reads.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let finals: BTreeSet<&str> = ws
        .iter()
        .filter_map(|w| match w {
            Witness::Final(n) => Some(*n),
            _ => None,
        })
        .collect();
    if !finals.is_empty() {
        parts.push(format!(
            "final on {}",
            finals.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    parts.join("; ")
}

fn aborted_reads(ix: &Index, r: &mut Report) {
    for o in &ix.h.ops {
        if o.outcome != Outcome::Fail {
            continue;
        }
        let Some(offsets) = ix.of_value.get(&(o.partition, o.value.as_str())) else {
            continue;
        };
        let ws: Vec<Witness> = offsets.values().flatten().copied().collect();
        let (_, reads, nodes, _, _) = ix.evidence(&ws);
        let at: Vec<String> = offsets.keys().map(|x| x.to_string()).collect();
        r.add(Anomaly {
            class: Class::AbortedRead,
            partition: o.partition,
            summary: format!(
                "{} failed ({}) yet is at offset {}",
                o.value,
                o.error.as_deref().unwrap_or("no reason"),
                at.join(", ")
            ),
            ops: vec![o.clone()],
            reads,
            nodes,
            faults: ix.window(o.invoke_ms, o.complete_ms),
        });
    }
}

/// Reads grouped per (consumer, partition), in the order they were received.
fn reads_by_consumer(h: &History) -> BTreeMap<(&str, u32), Vec<&Read>> {
    let mut m: BTreeMap<(&str, u32), Vec<&Read>> = BTreeMap::new();
    for r in &h.reads {
        m.entry((&r.consumer, r.partition)).or_default().push(r);
    }
    m
}

fn non_monotonic_reads(ix: &Index, r: &mut Report) {
    for ((consumer, p), reads) in reads_by_consumer(ix.h) {
        for w in reads.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.offset <= a.offset {
                r.add(Anomaly {
                    class: Class::NonMonotonic,
                    partition: p,
                    summary: format!(
                        "consumer {consumer} read offset {} after offset {}",
                        b.offset, a.offset
                    ),
                    ops: Vec::new(),
                    reads: vec![a.clone(), b.clone()],
                    nodes: dedup(vec![a.node.clone(), b.node.clone()]),
                    faults: ix.window(a.at_ms, b.at_ms),
                });
            }
        }
    }
}

/// A producer's acknowledged offset must be above every offset acknowledged to it before
/// the produce began (on the same partition).
fn non_monotonic_sends(ix: &Index, r: &mut Report) {
    let mut by_client: BTreeMap<(&str, u32), Vec<&Op>> = BTreeMap::new();
    for o in &ix.h.ops {
        if o.outcome == Outcome::Ok && o.offset.is_some() {
            by_client
                .entry((&o.client, o.partition))
                .or_default()
                .push(o);
        }
    }
    for ((client, p), ops) in by_client {
        let mut done = ops.clone();
        done.sort_by(|a, b| a.complete_ms.total_cmp(&b.complete_ms));
        // prefix[i]: the op with the highest offset among done[..=i].
        let mut prefix: Vec<&Op> = Vec::with_capacity(done.len());
        for o in &done {
            let best = match prefix.last() {
                Some(b) if b.offset >= o.offset => *b,
                _ => *o,
            };
            prefix.push(best);
        }
        for o in &ops {
            let n = done.partition_point(|d| d.complete_ms < o.invoke_ms);
            let Some(before) = n.checked_sub(1).map(|i| prefix[i]) else {
                continue;
            };
            if o.offset <= before.offset {
                r.add(Anomaly {
                    class: Class::NonMonotonic,
                    partition: p,
                    summary: format!(
                        "producer {client} got offset {} after offset {} was acknowledged to it",
                        o.offset.unwrap_or(0),
                        before.offset.unwrap_or(0)
                    ),
                    ops: vec![before.clone(), (*o).clone()],
                    reads: Vec::new(),
                    nodes: dedup(vec![before.node.clone(), o.node.clone()]),
                    faults: ix.window(before.invoke_ms, o.complete_ms),
                });
            }
        }
    }
}

fn poll_skips(ix: &Index, r: &mut Report) {
    for ((consumer, p), reads) in reads_by_consumer(ix.h) {
        let mut prev: Option<&Read> = None;
        for x in reads {
            let want = prev.map_or(0, |a| a.offset + 1);
            if x.offset > want {
                r.add(Anomaly {
                    class: Class::PollSkip,
                    partition: p,
                    summary: format!(
                        "consumer {consumer} asked for offset {want} and got {}",
                        x.offset
                    ),
                    ops: Vec::new(),
                    reads: prev.into_iter().chain([x]).cloned().collect(),
                    nodes: dedup(
                        prev.into_iter()
                            .chain([x])
                            .map(|a| a.node.clone())
                            .collect(),
                    ),
                    faults: ix.window(prev.map_or(x.at_ms, |a| a.at_ms), x.at_ms),
                });
            }
            prev = Some(x);
        }
    }
}

fn divergence(ix: &Index, r: &mut Report) {
    for p in 0..ix.h.partitions {
        let Some(commit) =
            ix.h.ops
                .iter()
                .filter(|o| o.partition == p && o.outcome == Outcome::Ok)
                .filter_map(|o| o.offset)
                .max()
                .map(|o| o + 1)
        else {
            continue;
        };
        let logs: Vec<(&str, BTreeMap<u64, &str>)> =
            ix.h.finals
                .iter()
                .filter(|f| f.partition == p && f.error.is_none())
                .map(|f| {
                    (
                        f.node.as_str(),
                        f.records
                            .iter()
                            .filter(|(o, _)| *o < commit)
                            .map(|(o, v)| (*o, v.as_str()))
                            .collect(),
                    )
                })
                .collect();
        let window = ix.window(0.0, ix.h.end_ms);
        for (node, log) in &logs {
            let missing: Vec<u64> = (0..commit).filter(|o| !log.contains_key(o)).collect();
            if let Some(first) = missing.first() {
                r.add(Anomaly {
                    class: Class::ReplicaDivergence,
                    partition: p,
                    summary: format!(
                        "{node} lacks {} offsets below the commit index {commit} (first {first})",
                        missing.len()
                    ),
                    ops: Vec::new(),
                    reads: Vec::new(),
                    nodes: vec![node.to_string()],
                    faults: window.clone(),
                });
            }
        }
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let differ: Vec<(u64, &str, &str)> = la
                    .iter()
                    .filter_map(|(o, va)| lb.get(o).filter(|vb| *vb != va).map(|vb| (*o, *va, *vb)))
                    .collect();
                if let Some((o, va, vb)) = differ.first() {
                    r.add(Anomaly {
                        class: Class::ReplicaDivergence,
                        partition: p,
                        summary: format!(
                            "{a} and {b} differ at {} offsets below the commit index {commit} \
                             (first {o}: {va} vs {vb})",
                            differ.len()
                        ),
                        ops: Vec::new(),
                        reads: Vec::new(),
                        nodes: vec![a.to_string(), b.to_string()],
                        faults: window.clone(),
                    });
                }
            }
        }
    }
}

fn unseen(ix: &Index, r: &mut Report) {
    let followed: BTreeSet<u32> = ix.h.consumers.iter().map(|c| c.partition).collect();
    let seen: HashSet<(u32, &str)> =
        ix.h.reads
            .iter()
            .map(|x| (x.partition, x.value.as_str()))
            .collect();
    let mut reached: BTreeMap<u32, u64> = BTreeMap::new();
    for x in &ix.h.reads {
        let e = reached.entry(x.partition).or_default();
        *e = (*e).max(x.offset + 1);
    }
    for o in &ix.h.ops {
        let key = (o.partition, o.value.as_str());
        if o.outcome != Outcome::Ok
            || !followed.contains(&o.partition)
            || !ix.in_finals.contains(&key)
            || seen.contains(&key)
        {
            continue;
        }
        let consumers: Vec<&str> =
            ix.h.consumers
                .iter()
                .filter(|c| c.partition == o.partition)
                .map(|c| c.name.as_str())
                .collect();
        r.add(Anomaly {
            class: Class::Unseen,
            partition: o.partition,
            summary: format!(
                "{} acknowledged at offset {} was received by none of {} (they read up to \
                 offset {})",
                o.value,
                o.offset.map_or("?".into(), |x| x.to_string()),
                consumers.join(", "),
                reached
                    .get(&o.partition)
                    .map_or("none".into(), |e| e.saturating_sub(1).to_string())
            ),
            ops: vec![o.clone()],
            reads: Vec::new(),
            nodes: vec![o.node.clone()],
            faults: ix.window(o.invoke_ms, o.complete_ms),
        });
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    //! One injected history per anomaly class, each caught; and a clean history, in which
    //! nothing is.

    use super::*;
    use crate::chaos::history::{Api, Consumer, FinalRead};

    const N: u64 = 5;

    fn op(id: u64, client: &str, offset: Option<u64>, outcome: Outcome, t: f64) -> Op {
        Op {
            id,
            client: client.into(),
            api: Api::Produce,
            node: "node-1".into(),
            partition: 0,
            value: format!("v{id}"),
            invoke_ms: t,
            complete_ms: t + 5.0,
            outcome,
            offset,
            error: (outcome != Outcome::Ok).then(|| "UNAVAILABLE".to_string()),
        }
    }

    fn read(consumer: &str, offset: u64, value: &str, t: f64) -> Read {
        Read {
            consumer: consumer.into(),
            api: Api::ConsumeStream,
            session: 0,
            node: "node-1".into(),
            partition: 0,
            offset,
            value: value.into(),
            at_ms: t,
        }
    }

    fn final_read(node: &str, records: Vec<(u64, String)>) -> FinalRead {
        FinalRead {
            node: node.into(),
            partition: 0,
            records,
            error: None,
        }
    }

    /// Values v0..v4 acknowledged at offsets 0..4 by one producer, read by one consumer,
    /// and on both nodes at the end; a kill fault in the middle.
    fn clean() -> History {
        let ops: Vec<Op> = (0..N)
            .map(|i| op(i, "p0", Some(i), Outcome::Ok, i as f64 * 10.0))
            .collect();
        let reads = (0..N)
            .map(|i| read("t0", i, &format!("v{i}"), 100.0 + i as f64))
            .collect();
        let log: Vec<(u64, String)> = (0..N).map(|i| (i, format!("v{i}"))).collect();
        History {
            partitions: 1,
            nodes: vec!["node-1".into(), "node-2".into()],
            ops,
            reads,
            consumers: vec![Consumer {
                name: "t0".into(),
                api: Api::ConsumeStream,
                partition: 0,
            }],
            finals: vec![final_read("node-1", log.clone()), final_read("node-2", log)],
            faults: vec![Fault {
                id: 0,
                kind: "kill".into(),
                detail: "kill -9 node-1".into(),
                nodes: vec!["node-1".into()],
                start_ms: 20.0,
                end_ms: 30.0,
            }],
            end_ms: 200.0,
        }
    }

    fn classes(h: &History) -> BTreeSet<Class> {
        check(h)
            .counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, _)| c)
            .collect()
    }

    fn assert_caught(h: &History, want: Class) -> Report {
        let r = check(h);
        assert!(r.found(want), "{want} not caught; found:\n{}", r.render(3));
        let a = r
            .examples
            .iter()
            .find(|a| a.class == want)
            .expect("an example");
        assert!(!a.summary.is_empty());
        assert!(!a.faults.is_empty(), "no fault window: {a:?}");
        r
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let r = check(&clean());
        assert_eq!(r.total(), 0, "{}", r.render(5));
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }

    #[test]
    fn lost_write() {
        let mut h = clean();
        // Both nodes lost the last two acknowledged records (a power loss under `never`).
        for f in &mut h.finals {
            f.records.truncate(3);
        }
        let r = assert_caught(&h, Class::LostWrite);
        assert_eq!(r.counts[&Class::LostWrite], 2);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::LostWrite)
            .unwrap();
        assert_eq!(a.ops[0].value, "v3");
        assert_eq!(a.nodes, vec!["node-1", "node-2"]);
        // It was read before it was lost: the reads are the evidence.
        assert_eq!(a.reads.len(), 1);
    }

    #[test]
    fn duplicate() {
        let mut h = clean();
        for f in &mut h.finals {
            f.records.push((5, "v1".into()));
        }
        let r = assert_caught(&h, Class::Duplicate);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::Duplicate)
            .unwrap();
        assert!(a.summary.contains("offsets 1, 5"), "{}", a.summary);
        assert_eq!(a.ops[0].value, "v1");
    }

    #[test]
    fn inconsistent_offset() {
        let mut h = clean();
        h.reads[3].value = "x".into();
        let r = assert_caught(&h, Class::InconsistentOffset);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::InconsistentOffset)
            .unwrap();
        assert!(a.summary.starts_with("offset 3 holds"), "{}", a.summary);
        assert_eq!(a.reads.len(), 1);
    }

    #[test]
    fn aborted_read() {
        let mut h = clean();
        h.ops.push(op(9, "p1", None, Outcome::Fail, 50.0));
        h.finals[1].records.push((5, "v9".into()));
        let r = assert_caught(&h, Class::AbortedRead);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::AbortedRead)
            .unwrap();
        assert_eq!(a.nodes, vec!["node-2"]);
        // An unknown outcome may show up: that is no anomaly.
        let mut h = clean();
        h.ops.push(op(9, "p1", None, Outcome::Unknown, 50.0));
        h.finals[1].records.push((5, "v9".into()));
        assert!(!classes(&h).contains(&Class::AbortedRead));
    }

    #[test]
    fn non_monotonic_read() {
        let mut h = clean();
        let again = h.reads[1].clone();
        h.reads.push(Read {
            at_ms: 200.0,
            ..again
        });
        let r = assert_caught(&h, Class::NonMonotonic);
        assert!(!r.found(Class::PollSkip));
    }

    #[test]
    fn non_monotonic_send() {
        let mut h = clean();
        // v4, produced after v3 was acknowledged, got an offset below it; the log agrees.
        h.ops[4].offset = Some(2);
        h.ops[2].offset = Some(4);
        for f in &mut h.finals {
            f.records = vec![
                (0, "v0".into()),
                (1, "v1".into()),
                (2, "v4".into()),
                (3, "v3".into()),
                (4, "v2".into()),
            ];
        }
        h.reads.clear();
        h.consumers.clear();
        let r = assert_caught(&h, Class::NonMonotonic);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::NonMonotonic)
            .unwrap();
        assert!(a.summary.contains("producer p0"), "{}", a.summary);
        // Concurrent produces may be ordered either way.
        let mut h = clean();
        h.ops[3].invoke_ms = h.ops[4].invoke_ms;
        h.ops[3].complete_ms = h.ops[4].complete_ms + 1.0;
        assert!(!classes(&h).contains(&Class::NonMonotonic));
    }

    #[test]
    fn poll_skip() {
        let mut h = clean();
        h.reads.remove(2);
        let r = assert_caught(&h, Class::PollSkip);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::PollSkip)
            .unwrap();
        assert!(
            a.summary.contains("asked for offset 2 and got 3"),
            "{}",
            a.summary
        );
        assert!(!r.found(Class::Unseen) || r.counts[&Class::Unseen] == 1);
    }

    #[test]
    fn replica_divergence() {
        let mut h = clean();
        // node-2 ends below the commit index...
        h.finals[1].records.truncate(3);
        let r = assert_caught(&h, Class::ReplicaDivergence);
        assert!(!r.found(Class::LostWrite), "node-1 still has them");
        // ...or holds another value below it.
        let mut h = clean();
        h.finals[1].records[2].1 = "w".into();
        let r = assert_caught(&h, Class::ReplicaDivergence);
        let a = r
            .examples
            .iter()
            .find(|a| a.class == Class::ReplicaDivergence)
            .unwrap();
        assert!(a.summary.contains("first 2: v2 vs w"), "{}", a.summary);
        // Above the commit index, nodes may differ (an unacknowledged tail).
        let mut h = clean();
        h.finals[1].records.push((5, "z".into()));
        assert!(!classes(&h).contains(&Class::ReplicaDivergence));
    }

    #[test]
    fn a_single_node_history_is_judged_without_replicas() {
        let mut h = one_node();
        assert!(classes(&h).is_empty(), "{}", check(&h).render(3));
        // The node lost acknowledged records: lost writes, not a divergence from nobody.
        h.finals[0].records.truncate(3);
        let r = assert_caught(&h, Class::LostWrite);
        assert!(!r.found(Class::ReplicaDivergence));
    }

    /// The clean history with one node, as single-node mode records it.
    fn one_node() -> History {
        let mut h = clean();
        h.nodes.truncate(1);
        h.finals.truncate(1);
        h
    }

    #[test]
    fn every_single_node_class_is_caught_on_one_node() {
        type Inject = fn(&mut History);
        let cases: [(Class, Inject); 7] = [
            (Class::LostWrite, |h| h.finals[0].records.truncate(3)),
            (Class::Duplicate, |h| {
                h.finals[0].records.push((5, "v1".into()))
            }),
            (Class::InconsistentOffset, |h| h.reads[3].value = "x".into()),
            (Class::AbortedRead, |h| {
                h.ops.push(op(9, "p1", None, Outcome::Fail, 50.0));
                h.finals[0].records.push((5, "v9".into()));
            }),
            (Class::NonMonotonic, |h| {
                let again = h.reads[1].clone();
                h.reads.push(Read {
                    at_ms: 200.0,
                    ..again
                });
            }),
            (Class::PollSkip, |h| {
                h.reads.remove(2);
            }),
            (Class::Unseen, |h| h.reads.truncate(3)),
        ];
        for (class, inject) in cases {
            let mut h = one_node();
            inject(&mut h);
            let r = assert_caught(&h, class);
            assert!(!r.found(Class::ReplicaDivergence), "{class}");
        }
    }

    #[test]
    fn unseen() {
        let mut h = clean();
        h.reads.truncate(3);
        let r = assert_caught(&h, Class::Unseen);
        assert_eq!(r.counts[&Class::Unseen], 2);
        assert!(!r.found(Class::LostWrite));
    }

    #[test]
    fn a_failed_final_read_is_a_note_not_a_verdict() {
        let mut h = clean();
        for f in &mut h.finals {
            f.records.clear();
            f.error = Some("DEADLINE_EXCEEDED".into());
        }
        h.reads.clear();
        let r = check(&h);
        assert!(!r.found(Class::LostWrite));
        assert_eq!(r.notes.len(), 1);
    }

    #[test]
    fn the_report_names_operations_nodes_and_faults() {
        let mut h = clean();
        for f in &mut h.finals {
            f.records.truncate(4);
        }
        let text = check(&h).render(3);
        assert!(text.contains("lost-write: 1"), "{text}");
        assert!(text.contains("op #4 v4"), "{text}");
        assert!(text.contains("nodes node-1, node-2"), "{text}");
        assert!(text.contains("fault #0 kill"), "{text}");
    }
}
