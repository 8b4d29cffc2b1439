//! A topic's retention limits changed on a live topic (`EngineHandle::set_retention`): every
//! held partition applies them at once (no wait for the periodic pass), the catalog keeps
//! them (a restart opens the partitions with them), and the other settings stay.

use crate::common;

use common::{records_of_100_bytes, start, topic_config};
use futures_lite::future::block_on;

#[test]
fn new_retention_limits_apply_at_once_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let engine = start(&dir);
    let h = engine.handle();
    block_on(h.create_topic("t", 2, topic_config())).expect("create");
    // About 700 KiB per partition: a dozen 64 KiB segments each.
    for p in 0..2 {
        for _ in 0..70 {
            block_on(h.append("t", p, records_of_100_bytes(100))).expect("append");
        }
    }
    for p in 0..2 {
        let st = block_on(h.stats("t", p)).expect("stats");
        assert_eq!(st.lowest_offset, 0, "partition {p}: nothing removed yet");
        assert!(st.segments > 8, "partition {p}: {} segments", st.segments);
    }
    let info = block_on(h.set_retention("t", 200 * 1024, 0)).expect("set retention");
    assert_eq!(
        (info.config.retention_bytes, info.config.retention_ms),
        (200 * 1024, 0)
    );
    assert_eq!(info.config.segment_bytes, topic_config().segment_bytes);
    for p in 0..2 {
        let st = block_on(h.stats("t", p)).expect("stats");
        assert!(
            st.lowest_offset > 0 && st.size_bytes <= 200 * 1024 + 64 * 1024,
            "partition {p}: applied at once: lowest {} size {} in {} segments",
            st.lowest_offset,
            st.size_bytes,
            st.segments
        );
        // What is left reads back whole, from the new lowest offset on.
        let first = block_on(h.read("t", p, st.lowest_offset)).expect("read the lowest");
        assert_eq!(first.offset, st.lowest_offset);
        assert!(matches!(
            block_on(h.read("t", p, 0)),
            Err(engine::Error::OffsetOutOfRange { .. })
        ));
    }
    let kept: Vec<u64> = (0..2)
        .map(|p| block_on(h.stats("t", p)).expect("stats").lowest_offset)
        .collect();
    assert!(matches!(
        block_on(h.set_retention("missing", 1, 0)),
        Err(engine::Error::UnknownTopic(_))
    ));
    engine.shutdown();

    let engine = start(&dir);
    let h = engine.handle();
    let info = h.topic("t").expect("topic after the restart");
    assert_eq!(
        (info.config.retention_bytes, info.config.retention_ms),
        (200 * 1024, 0),
        "the catalog keeps the new limits"
    );
    for p in 0..2u32 {
        let st = block_on(h.stats("t", p)).expect("stats");
        assert_eq!(st.lowest_offset, kept[p as usize], "partition {p} reopened");
        assert_eq!(st.next_offset, 7000);
    }
    // No limit again: nothing more is removed however much is written.
    block_on(h.set_retention("t", 0, 0)).expect("unlimited");
    for _ in 0..30 {
        block_on(h.append("t", 0, records_of_100_bytes(100))).expect("append");
    }
    block_on(h.set_retention("t", 0, 0)).expect("unlimited again");
    assert_eq!(
        block_on(h.stats("t", 0)).expect("stats").lowest_offset,
        kept[0],
        "with no limit nothing is removed"
    );
    engine.shutdown();
}
