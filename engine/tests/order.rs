//! Appends are admitted first come, first served: offsets follow the order in which appends
//! were issued even when some must wait for buffer space or a segment roll, and no appender
//! starves while others keep finding room.

use bytes::Bytes;
use engine::{Durability, FileBudget, Log, LogConfig, NewRecord};
use std::cell::RefCell;
use std::rc::Rc;

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        segment_bytes: 256 * 1024,
        max_batch_bytes: 64 * 1024,
        max_record_bytes: 64 * 1024,
        // Room for only a few batches: most appends must wait for a write-out.
        write_behind_bytes: 2 * (64 * 1024 + engine::batch::HEADER_LEN),
        ..LogConfig::default()
    }
}

fn issue_order_is_offset_order(durability: Durability) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    engine::run_local(tmp.path(), move || async move {
        let log = Log::open(&dir, config(durability), FileBudget::new(4))
            .await
            .expect("open");
        let got: Rc<RefCell<Vec<(usize, u64)>>> = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..400usize {
            let (log, got) = (Rc::clone(&log), Rc::clone(&got));
            // Sizes vary so that small appends could slip in ahead of large waiting ones.
            let size = if i % 7 == 0 {
                60 * 1024
            } else {
                100 + (i * 37) % 3000
            };
            tasks.push(glommio::spawn_local(async move {
                let a = log
                    .append(&[NewRecord::new(Bytes::from(vec![i as u8; size]))])
                    .await
                    .expect("append");
                got.borrow_mut().push((i, a.base_offset));
            }));
        }
        for t in tasks {
            t.await;
        }
        let mut got = got.borrow().clone();
        got.sort_by_key(|&(i, _)| i);
        for w in got.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "append {} got offset {} but the later append {} got {}",
                w[0].0,
                w[0].1,
                w[1].0,
                w[1].1
            );
        }
        assert!(
            log.stats().segments > 1,
            "the test must cross segment rolls"
        );
    })
    .expect("executor");
}

#[test]
fn offsets_follow_issue_order_under_never() {
    issue_order_is_offset_order(Durability::Never);
}

#[test]
fn offsets_follow_issue_order_under_always() {
    issue_order_is_offset_order(Durability::Always);
}
