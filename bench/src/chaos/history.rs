//! What a campaign records: every produce operation (invoked, then ok / fail / unknown),
//! every record a consumer saw, the final read of every partition from every node, and the
//! fault windows. Times are milliseconds since the run began. Written as JSON lines
//! (`history.jsonl`) so that a run can be checked again without running it.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a produce's answer proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged, with an offset.
    Ok,
    /// Proven not to have happened (the request was refused before any append, or never
    /// sent).
    Fail,
    /// May or may not have happened: a timeout, a broken connection, UNAVAILABLE without a
    /// reason that proves otherwise, OUTCOME_UNKNOWN.
    Unknown,
}

/// The public API call an operation or a read went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    Produce,
    ProduceStream,
    Consume,
    ConsumeStream,
    ConsumeBatch,
}

/// One produce of one unique value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    /// The producer (`p0`, `s1`, ...): its operations are sequential, or ordered on one
    /// stream.
    pub client: String,
    pub api: Api,
    /// The node the request went to.
    pub node: String,
    pub partition: u32,
    pub value: String,
    pub invoke_ms: f64,
    /// When the outcome became known (for unknown: when the client stopped waiting).
    pub complete_ms: f64,
    pub outcome: Outcome,
    pub offset: Option<u64>,
    /// The status (code, reason, message) for fail and unknown.
    pub error: Option<String>,
}

impl Op {
    pub fn latency_ms(&self) -> f64 {
        (self.complete_ms - self.invoke_ms).max(0.0)
    }
}

/// One record one consumer received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    pub consumer: String,
    pub api: Api,
    /// Which of the consumer's streams or polling rounds (a new one after every reconnect).
    pub session: u64,
    pub node: String,
    pub partition: u32,
    pub offset: u64,
    pub value: String,
    pub at_ms: f64,
}

/// A consumer and the partition it follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub name: String,
    pub api: Api,
    pub partition: u32,
}

/// Everything one node returned for one partition after the faults healed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRead {
    pub node: String,
    pub partition: u32,
    /// (offset, value) in offset order.
    pub records: Vec<(u64, String)>,
    /// Why the read did not complete (the records read so far are kept).
    pub error: Option<String>,
}

/// One injected fault, from its start until it healed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub id: u32,
    pub kind: String,
    /// What exactly: the victim, the sides of a partition, the loss rate, the delay.
    pub detail: String,
    pub nodes: Vec<String>,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// A whole run's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub partitions: u32,
    pub nodes: Vec<String>,
    pub ops: Vec<Op>,
    pub reads: Vec<Read>,
    pub consumers: Vec<Consumer>,
    pub finals: Vec<FinalRead>,
    pub faults: Vec<Fault>,
    pub end_ms: f64,
}

/// One line of `history.jsonl`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Run {
        partitions: u32,
        nodes: Vec<String>,
        end_ms: f64,
    },
    Op(Op),
    Read(Read),
    Consumer(Consumer),
    Final(FinalRead),
    Fault(Fault),
}

impl History {
    pub fn write_jsonl(&self, path: &Path) -> Result<()> {
        let f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let mut put = |l: &Line| -> Result<()> {
            serde_json::to_writer(&mut w, l)?;
            w.write_all(b"\n")?;
            Ok(())
        };
        put(&Line::Run {
            partitions: self.partitions,
            nodes: self.nodes.clone(),
            end_ms: self.end_ms,
        })?;
        for f in &self.faults {
            put(&Line::Fault(f.clone()))?;
        }
        for c in &self.consumers {
            put(&Line::Consumer(c.clone()))?;
        }
        for o in &self.ops {
            put(&Line::Op(o.clone()))?;
        }
        for r in &self.reads {
            put(&Line::Read(r.clone()))?;
        }
        for f in &self.finals {
            put(&Line::Final(f.clone()))?;
        }
        w.flush()?;
        Ok(())
    }

    pub fn read_jsonl(path: &Path) -> Result<History> {
        let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        let mut h = History::default();
        let mut saw_run = false;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?;
            match l {
                Line::Run {
                    partitions,
                    nodes,
                    end_ms,
                } => {
                    saw_run = true;
                    h.partitions = partitions;
                    h.nodes = nodes;
                    h.end_ms = end_ms;
                }
                Line::Op(o) => h.ops.push(o),
                Line::Read(r) => h.reads.push(r),
                Line::Consumer(c) => h.consumers.push(c),
                Line::Final(f) => h.finals.push(f),
                Line::Fault(f) => h.faults.push(f),
            }
        }
        if !saw_run {
            bail!(
                "{}: no run line: not a proglog-chaos history",
                path.display()
            );
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_lines() {
        let h = History {
            partitions: 2,
            nodes: vec!["node-1".into()],
            ops: vec![Op {
                id: 1,
                client: "p0".into(),
                api: Api::Produce,
                node: "node-1".into(),
                partition: 1,
                value: "p0-1".into(),
                invoke_ms: 1.5,
                complete_ms: 2.5,
                outcome: Outcome::Ok,
                offset: Some(0),
                error: None,
            }],
            reads: vec![Read {
                consumer: "t0".into(),
                api: Api::ConsumeStream,
                session: 0,
                node: "node-1".into(),
                partition: 1,
                offset: 0,
                value: "p0-1".into(),
                at_ms: 3.0,
            }],
            consumers: vec![Consumer {
                name: "t0".into(),
                api: Api::ConsumeStream,
                partition: 1,
            }],
            finals: vec![FinalRead {
                node: "node-1".into(),
                partition: 1,
                records: vec![(0, "p0-1".into())],
                error: None,
            }],
            faults: vec![Fault {
                id: 0,
                kind: "kill".into(),
                detail: "kill -9 node-1".into(),
                nodes: vec!["node-1".into()],
                start_ms: 0.5,
                end_ms: 1.0,
            }],
            end_ms: 10.0,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("h.jsonl");
        h.write_jsonl(&p).expect("write");
        assert_eq!(History::read_jsonl(&p).expect("read"), h);
    }
}
