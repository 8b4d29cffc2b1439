//! Reads close behind the writer come from memory (the write-behind buffer and the tail
//! cache), not from the device; older data still comes from the device; a cut never leaves
//! cached bytes of records it removed; an idle partition gives the cache's memory back. Counted with the log's `dma_reads` / `memory_reads`.

use bytes::Bytes;
use engine::{Durability, FileBudget, Log, LogConfig, NewRecord};

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 64 << 20,
        // The background tick (which gives an idle partition's cache back) is not what the
        // first test is about.
        flush_ms: 3_600_000,
        ..LogConfig::default()
    }
}

fn value(i: u64, tag: &str) -> Bytes {
    Bytes::from(format!("{tag} {i:06} {}", "v".repeat(1000)))
}

#[test]
fn hot_reads_do_no_disk_io_and_cold_ones_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(&root.clone(), move || async move {
        let log = Log::open(&root.join("log"), config(), FileBudget::new(4))
            .await
            .expect("open");
        // About 8 MiB: twice the tail cache, so the start of the log is only on the device.
        let total = 8000u64;
        for chunk in 0..(total / 100) {
            let records: Vec<NewRecord> = (0..100)
                .map(|i| NewRecord::new(value(chunk * 100 + i, "a")))
                .collect();
            log.append(&records).await.expect("append");
        }
        assert_eq!(log.next_offset(), total);

        // Hot: the last records, each read as a unary Consume would, and a range.
        let before = log.stats();
        for o in (total - 500)..total {
            let r = log.read(o).await.expect("hot read");
            assert_eq!(r.value, value(o, "a"), "offset {o}");
        }
        let rs = log
            .read_range(total - 1000, 1000, 4 << 20)
            .await
            .expect("hot range");
        assert_eq!(rs.len(), 1000);
        for r in &rs {
            assert_eq!(r.value, value(r.offset, "a"));
        }
        let after = log.stats();
        assert_eq!(
            after.dma_reads, before.dma_reads,
            "reads of recent records touched the device"
        );
        assert!(
            after.memory_reads > before.memory_reads,
            "served from memory"
        );

        // Cold: the first records were written long before and are no longer cached.
        let r = log.read(0).await.expect("cold read");
        assert_eq!(r.value, value(0, "a"));
        assert!(
            log.stats().dma_reads > after.dma_reads,
            "cold read from the device"
        );

        // A cut, then other records at the same offsets: reads see the new ones only.
        log.truncate_suffix(total - 51).await.expect("truncate");
        assert_eq!(log.next_offset(), total - 50);
        let records: Vec<NewRecord> = ((total - 50)..total)
            .map(|i| NewRecord::new(value(i, "b")))
            .collect();
        log.append(&records).await.expect("append after cut");
        for o in (total - 60)..total {
            let want = if o < total - 50 {
                value(o, "a")
            } else {
                value(o, "b")
            };
            assert_eq!(log.read(o).await.expect("read after cut").value, want);
        }
        log.close().await.expect("close");
    })
    .expect("executor");
}

#[test]
fn an_idle_partition_gives_its_cache_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(&root.clone(), move || async move {
        let config = LogConfig {
            flush_ms: 100,
            ..config()
        };
        let log = Log::open(&root.join("log"), config, FileBudget::new(4))
            .await
            .expect("open");
        let records: Vec<NewRecord> = (0..100).map(|i| NewRecord::new(value(i, "a"))).collect();
        log.append(&records).await.expect("append");
        let before = log.stats();
        log.read(50).await.expect("hot read");
        assert_eq!(
            log.stats().dma_reads,
            before.dma_reads,
            "served from memory"
        );
        // Idle past `CACHE_IDLE` (and a few background ticks): the cache and the recent
        // reads are given back, so the same read goes to the device.
        glommio::timer::sleep(engine::limits::CACHE_IDLE + std::time::Duration::from_secs(1)).await;
        let r = log.read(50).await.expect("read after idle");
        assert_eq!(r.value, value(50, "a"));
        assert!(
            log.stats().dma_reads > before.dma_reads,
            "the idle partition kept its cache"
        );
        log.close().await.expect("close");
    })
    .expect("executor");
}
