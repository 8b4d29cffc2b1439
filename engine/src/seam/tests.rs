//! The conformance suite on both implementations: the in-memory model, and the engine-backed
//! seam both from a shard (routing by the shard's catalog copy, in place or by message) and
//! from a thread that is no shard (the slower path).

use super::conformance;
use super::local::LocalFactory;
use super::memory::MemoryFactory;
use super::NodeRef;
use crate::{Engine, EngineConfig};

fn node() -> NodeRef {
    NodeRef {
        id: "node-a".into(),
        addr: "127.0.0.1:1".into(),
    }
}

#[test]
fn memory_passes_the_conformance_suite() {
    let factory = MemoryFactory::new();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { conformance::run_all(&factory, "m-").await })
        .expect("executor")
        .join()
        .expect("suite");
}

#[test]
fn the_engine_passes_the_conformance_suite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        shards: 2,
        pin: false,
        ..EngineConfig::new(tmp.path().join("data"))
    };
    let engine = Engine::start(config).expect("start");
    let h = engine.handle();
    // On a shard: partitions of the other shard are reached by message.
    let factory = LocalFactory::new(h.clone(), node());
    futures_lite::future::block_on(h.on_shard(0, move |_| async move {
        conformance::run_all(&factory, "s-").await;
        Ok(())
    }))
    .expect("suite on shard 0");
    // From an executor that is no shard: everything goes by message.
    let factory = LocalFactory::new(h.clone(), node());
    crate::run_local(&tmp.path().join("client"), move || async move {
        conformance::run_all(&factory, "t-").await
    })
    .expect("suite off the shards");
    engine.shutdown();
}
