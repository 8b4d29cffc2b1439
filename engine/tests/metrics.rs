//! Per-shard metrics match what the logs did: every append made durable is counted in
//! exactly one group-commit batch, and every fdatasync has a latency observation.

use engine::metrics::HistogramSnapshot;
use engine::{Durability, Engine, EngineConfig, LogConfig, NewRecord};

#[test]
fn group_commit_batches_add_up_to_the_appends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(tmp.path());
    config.shards = 2;
    let engine = Engine::start(config).expect("start");
    let h = engine.handle();
    let log_config = LogConfig {
        durability: Durability::Always,
        ..LogConfig::default()
    };
    futures_lite::future::block_on(h.create_topic("t", 4, log_config)).expect("create");
    // Concurrent appenders, so that some fdatasyncs are shared.
    let threads: Vec<_> = (0..8u32)
        .map(|i| {
            let h = h.clone();
            std::thread::spawn(move || {
                for j in 0..25u32 {
                    let (_, timing) = futures_lite::future::block_on(h.append_timed(
                        "t",
                        i % 4,
                        vec![NewRecord::new(format!("{i}-{j}").into_bytes())],
                    ))
                    .expect("append");
                    assert!(timing.fsync > std::time::Duration::ZERO);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender");
    }
    let mut syncs_by_logs = 0;
    let mut appends = 0;
    for shard in 0..h.shards() {
        let r = futures_lite::future::block_on(h.shard_report(shard)).expect("report");
        for (topic, _, stats) in &r.partitions {
            assert_ne!(topic, "");
            syncs_by_logs += stats.fdatasyncs;
            appends += stats.appends;
        }
    }
    assert_eq!(appends, 200);
    let merged = |f: fn(&engine::metrics::ShardMetricsSnapshot) -> &HistogramSnapshot| {
        let snaps = h.shard_metrics();
        let mut m = f(&snaps[0]).clone();
        for s in &snaps[1..] {
            m.merge(f(s));
        }
        m
    };
    let fsync = merged(|s| &s.fdatasync_ns);
    let groups = merged(|s| &s.group_commit_appends);
    assert_eq!(fsync.count, syncs_by_logs, "one latency per fdatasync");
    assert_eq!(groups.sum, 200, "every durable append in exactly one batch");
    assert!(groups.count <= fsync.count);
    engine.shutdown();
}
