//! results.json and the lines printed at the end of a run.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::checker::{Class, Report};
use super::cluster::Cluster;
use super::history::{History, Outcome};
use super::node::Mode;
use super::opts::Plan;

/// One line: passed or not, and why.
pub fn verdict_line(plan: &Plan, r: &Report, crashes: usize, pass: bool) -> String {
    let found = if r.total() == 0 {
        "no anomalies".to_string()
    } else {
        let v: Vec<String> = r.counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
        format!("anomalies: {}", v.join(", "))
    };
    let crashes = if crashes > 0 {
        format!(", {crashes} node crash(es)")
    } else {
        String::new()
    };
    let expected = match &plan.expect {
        None => String::new(),
        Some(c) if c.is_empty() => " (anomalies expected)".to_string(),
        Some(c) => {
            let v: Vec<&str> = c.iter().map(|c| c.name()).collect();
            format!(" (expected: {})", v.join(", "))
        }
    };
    format!(
        "{}: {found}{crashes}{expected}",
        if pass { "PASS" } else { "FAIL" }
    )
}

fn count(h: &History, o: Outcome) -> usize {
    h.ops.iter().filter(|x| x.outcome == o).count()
}

/// Operations, reads and faults in one line.
pub fn summary(h: &History, r: &Report) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &h.faults {
        *kinds.entry(&f.kind).or_default() += 1;
    }
    let k: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(
        "{:.0} s: {} produces ({} ok, {} fail, {} unknown), {} records read by consumers, \
         {} final reads, {} faults ({}); {} anomalies",
        h.end_ms / 1000.0,
        h.ops.len(),
        count(h, Outcome::Ok),
        count(h, Outcome::Fail),
        count(h, Outcome::Unknown),
        h.reads.len(),
        h.finals.len(),
        h.faults.len(),
        k.join(", "),
        r.total()
    )
}

pub fn results(
    plan: &Plan,
    mode: Mode,
    cluster: &Cluster,
    h: &History,
    r: &Report,
    pass: bool,
    replay: &str,
) -> Value {
    let mut by_api: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    for o in &h.ops {
        let e = by_api.entry(format!("{:?}", o.api)).or_default();
        *e.entry(match o.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        })
        .or_default() += 1;
    }
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for o in &h.ops {
        if let Some(e) = &o.error {
            let key = e.split(':').next().unwrap_or(e).to_string();
            *errors.entry(key).or_default() += 1;
        }
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &h.faults {
        *kinds.entry(&f.kind).or_default() += 1;
    }
    let by_class: BTreeMap<&str, usize> = Class::ALL
        .iter()
        .map(|c| (c.name(), r.counts.get(c).copied().unwrap_or(0)))
        .collect();
    let mut lat: Vec<f64> = h
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.latency_ms())
        .collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map(|v| (v * 1000.0).round() / 1000.0)
    };
    json!({
        "seed": plan.seed,
        "replay": replay,
        "nodes": plan.nodes,
        "mode": match mode {
            Mode::Single => "single",
            Mode::Replicated => "replicated",
        },
        "durability": plan.durability,
        "nemeses": plan.nemeses.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "time_s": plan.time.as_secs(),
        "elapsed_s": (h.end_ms / 100.0).round() / 10.0,
        "partitions": h.partitions,
        "operations": {
            "total": h.ops.len(),
            "ok": count(h, Outcome::Ok),
            "fail": count(h, Outcome::Fail),
            "unknown": count(h, Outcome::Unknown),
            "by_api": by_api,
            "errors": errors,
            "ok_latency_ms": { "p50": q(0.5), "p99": q(0.99), "max": q(1.0) },
        },
        "reads": h.reads.len(),
        "final_reads": h.finals.iter().map(|f| json!({
            "node": f.node,
            "partition": f.partition,
            "records": f.records.len(),
            "end": f.records.last().map(|(o, _)| o + 1),
            "error": f.error,
        })).collect::<Vec<_>>(),
        "faults": h.faults,
        "faults_by_kind": kinds,
        "crashes": cluster.crashes,
        // One node has no replica to diverge from: that class cannot be found, so it is not
        // claimed as checked.
        "classes_checked": Class::ALL.iter().filter(|c| applies(**c, mode)).map(|c| c.name()).collect::<Vec<_>>(),
        "classes_not_applicable": Class::ALL.iter().filter(|c| !applies(**c, mode)).map(|c| json!({
            "class": c.name(),
            "why": "one node: there is no replica to diverge from",
        })).collect::<Vec<_>>(),
        "anomalies": {
            "total": r.total(),
            "by_class": by_class,
            "examples": r.examples,
            "notes": r.notes,
        },
        "expected": plan.expect.as_ref().map(|c| c.iter().map(|c| c.name()).collect::<Vec<_>>()),
        "pass": pass,
        "files": {
            "history": "history.jsonl",
            "timeline": "timeline.png",
            "node_logs": cluster.nodes.iter().map(|n| n.log_path()).collect::<Vec<_>>(),
        },
    })
}

/// Whether anomaly class `c` can occur in a run of this mode.
pub fn applies(c: Class, mode: Mode) -> bool {
    !(mode == Mode::Single && c == Class::ReplicaDivergence)
}
