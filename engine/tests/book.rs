//! The reference system's own store/index/segment/log cases (reference.md section 9), against
//! our log.

use bytes::Bytes;
use engine::{Error, FileBudget, Log, LogConfig, NewRecord};
use std::path::Path;

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

fn rec(s: &str) -> Vec<NewRecord> {
    vec![NewRecord::new(Bytes::copy_from_slice(s.as_bytes()))]
}

fn run<F, Fut>(dir: &Path, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    engine::run_local(dir, f).expect("executor");
}

#[test]
fn append_read_and_reopen_continue_offsets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let d = dir.clone();
    run(tmp.path(), move || async move {
        let log = Log::open(&d, small(), FileBudget::new(16))
            .await
            .expect("open");
        assert_eq!(log.highest_offset(), None);
        for i in 0..3u64 {
            let a = log.append(&rec("hello world")).await.expect("append");
            assert_eq!((a.base_offset, a.last_offset), (i, i));
        }
        let r = log.read(1).await.expect("read");
        assert_eq!(&r.value[..], b"hello world");
        assert_eq!(r.offset, 1);
        log.close().await.expect("close");
        let log = Log::open(&d, small(), FileBudget::new(16))
            .await
            .expect("reopen");
        assert_eq!((log.lowest_offset(), log.highest_offset()), (0, Some(2)));
        let a = log.append(&rec("again")).await.expect("append");
        assert_eq!(a.base_offset, 3);
        assert_eq!(&log.read(3).await.expect("read").value[..], b"again");
        assert_eq!(&log.read(0).await.expect("read").value[..], b"hello world");
    });
}

#[test]
fn read_past_the_end_is_out_of_range() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&d, small(), FileBudget::new(16))
            .await
            .expect("open");
        log.append(&rec("x")).await.expect("append");
        match log.read(1).await {
            Err(Error::OffsetOutOfRange {
                offset: 1,
                lowest: 0,
                next: 1,
            }) => {}
            other => panic!("expected out of range, got {other:?}"),
        }
    });
}

#[test]
fn segments_roll_at_max_size_and_reads_cross_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&d, small(), FileBudget::new(2))
            .await
            .expect("open");
        let value = vec![7u8; 1000];
        for i in 0..300u64 {
            let a = log
                .append(&[NewRecord::new(Bytes::from(value.clone()))])
                .await
                .expect("append");
            assert_eq!(a.base_offset, i);
        }
        let st = log.stats();
        assert!(
            st.segments >= 4,
            "expected several segments, got {}",
            st.segments
        );
        for i in (0..300).step_by(7) {
            assert_eq!(log.read(i).await.expect("read").offset, i);
        }
        let all = log.read_range(0, 1000, usize::MAX).await.expect("range");
        assert_eq!(all.len(), 300);
        assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64));
        log.close().await.expect("close");
        let log = Log::open(&d, small(), FileBudget::new(2))
            .await
            .expect("reopen");
        assert_eq!(log.next_offset(), 300);
        assert_eq!(log.read(150).await.expect("read").offset, 150);
    });
}

#[test]
fn truncate_prefix_removes_whole_old_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&d, small(), FileBudget::new(16))
            .await
            .expect("open");
        let value = vec![1u8; 4000];
        for _ in 0..60 {
            log.append(&[NewRecord::new(Bytes::from(value.clone()))])
                .await
                .expect("append");
        }
        let removed = log.truncate_prefix(30).await.expect("truncate");
        assert!(removed.segments >= 1);
        let lowest = log.lowest_offset();
        assert!(lowest > 0 && lowest <= 31, "lowest {lowest}");
        assert!(matches!(
            log.read(0).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.read(lowest).await.expect("read").offset, lowest);
        assert_eq!(log.read(59).await.expect("read").offset, 59);
    });
}

#[test]
fn snapshot_reader_streams_the_whole_log_and_installs_elsewhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(tmp.path(), move || async move {
        let src = Log::open(&a, small(), FileBudget::new(16))
            .await
            .expect("open");
        for i in 0..200u32 {
            src.append_with_term(u64::from(i / 50 + 1), &rec(&format!("record {i}")))
                .await
                .expect("append");
        }
        let mut reader = src.snapshot_reader(0);
        let mut chunks = Vec::new();
        while let Some(c) = reader.next_chunk(3000).await.expect("chunk") {
            chunks.push(c);
        }
        assert!(chunks.len() > 1);
        let dst = Log::open(&b, small(), FileBudget::new(16))
            .await
            .expect("open");
        dst.append(&rec("to be replaced")).await.expect("append");
        dst.install_snapshot(0, chunks).await.expect("install");
        assert_eq!(dst.next_offset(), 200);
        for i in [0u64, 49, 50, 199] {
            let (x, y) = (
                src.read(i).await.expect("src"),
                dst.read(i).await.expect("dst"),
            );
            assert_eq!(x, y);
            assert_eq!(dst.term_of(i).await.expect("term"), i / 50 + 1);
        }
    });
}
