//! The partition seam's conformance suite on the Raft seam (every partition a Raft group on
//! a node that is a cluster of one), from a shard (in place and by message) and from a thread
//! that is no shard; and what the Raft path adds: the partition's group, the visible end at
//! the commit point after a restart.

use consensus::raft::seam::{engine_config, RaftFactory};
use consensus::raft::RaftReplication;
use engine::seam::{conformance, EncodedBatch, Factory, NodeRef, PartitionId};
use engine::{Engine, EngineConfig, LogConfig, NewRecord};

fn node() -> NodeRef {
    NodeRef {
        id: "node-a".into(),
        addr: "127.0.0.1:1".into(),
    }
}

fn start(dir: &std::path::Path) -> Engine {
    let config = EngineConfig {
        shards: 2,
        pin: false,
        ..EngineConfig::new(dir)
    };
    Engine::start(engine_config(config, RaftReplication::single_node())).expect("start")
}

#[test]
fn the_raft_seam_passes_the_conformance_suite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = start(&tmp.path().join("data"));
    let h = engine.handle();
    let factory = RaftFactory::new(h.clone(), node());
    futures_lite::future::block_on(h.on_shard(0, move |_| async move {
        conformance::run_all(&factory, "s-").await;
        Ok(())
    }))
    .expect("suite on shard 0");
    let factory = RaftFactory::new(h.clone(), node());
    engine::run_local(&tmp.path().join("client"), move || async move {
        conformance::run_all(&factory, "t-").await
    })
    .expect("suite off the shards");
    engine.shutdown();
}

#[test]
fn appends_are_raft_entries_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let id = PartitionId::new("events", 0);
    let acked = {
        let engine = start(&data);
        let h = engine.handle();
        futures_lite::future::block_on(h.create_topic("events", 1, LogConfig::default()))
            .expect("create");
        let factory = RaftFactory::new(h.clone(), node());
        let id2 = id.clone();
        let acked = engine::run_local(&tmp.path().join("client"), move || async move {
            let seam = factory.build();
            let mut acked = Vec::new();
            for i in 0..20u32 {
                let records: Vec<NewRecord> = (0..=i % 3)
                    .map(|j| NewRecord::new(format!("r{i}-{j}").into_bytes()))
                    .collect();
                let batch = EncodedBatch::encode(&records).expect("encode");
                let a = seam.partitions.append(&id2, batch).await.expect("append");
                assert_eq!(a.last_offset - a.base_offset + 1, records.len() as u64);
                acked.push((a.base_offset, records));
            }
            let st = seam.partitions.describe(&id2).await.expect("describe");
            assert_eq!(st.leader.map(|n| n.id), Some("node-a".to_string()));
            acked
        })
        .expect("appends");
        let dir = engine::catalog::partition_dir(&data, "events", 0);
        assert!(
            dir.join("raft.meta").exists(),
            "the partition is a Raft group"
        );
        engine.shutdown();
        acked
    };
    // Offsets are dense: each batch starts where the last ended, though Raft's no-op took
    // an index.
    let mut next = 0;
    for (base, records) in &acked {
        assert_eq!(*base, next);
        next += records.len() as u64;
    }
    // After a restart every acknowledged record is visible as soon as the engine is up.
    let engine = start(&data);
    let h = engine.handle();
    let got =
        futures_lite::future::block_on(h.read_range("events", 0, 0, 1000, 1 << 20)).expect("read");
    let want: Vec<Vec<u8>> = acked
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.value.to_vec()))
        .collect();
    let got: Vec<Vec<u8>> = got.into_iter().map(|r| r.value.to_vec()).collect();
    assert_eq!(got, want);
    engine.shutdown();
}

/// Two opens of one partition at once (the engine hands each to the partition's shard as a
/// message of its own): the second waits for the first and finds its log open, instead of
/// opening the same files again (its Raft group then refused as open already), and the
/// partition takes appends that survive a restart.
#[test]
fn two_opens_of_one_partition_at_once_share_one_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    {
        let engine = start(&data);
        let h = engine.handle();
        futures_lite::future::block_on(h.create_topic_holding("t", 2, LogConfig::default(), &[0]))
            .expect("create, holding partition 0");
        let (a, b) = futures_lite::future::block_on(futures_lite::future::zip(
            h.open_partition("t", 1),
            h.open_partition("t", 1),
        ));
        a.expect("the first open");
        b.expect("the second open, at the same time");
        for i in 0..3u8 {
            futures_lite::future::block_on(h.append("t", 1, vec![NewRecord::new(vec![i; 10])]))
                .expect("append");
        }
        engine.shutdown();
    }
    let engine = start(&data);
    let h = engine.handle();
    let recs = futures_lite::future::block_on(h.read_range("t", 1, 0, 100, 1 << 20)).expect("read");
    assert_eq!(recs.len(), 3, "{recs:?}");
    engine.shutdown();
}
