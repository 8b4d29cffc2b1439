//! Snapshots as segment files: a log's files for Raft indexes `[first, last]` copied into a
//! second log's temporary directory, verified and swapped in atomically; the copy reads
//! byte for byte like the source up to `last` and takes appends after it; a corrupt byte
//! fails verification and leaves the old log; a temporary directory left by a crash (a
//! partial download before the exchange, or the whole old log after it) is removed when the
//! log opens, and the log is the one the exchange left in place.

use bytes::Bytes;
use engine::batch::{self, Kind, NewRecord, Stamp};
use engine::log::{staging_path, Staging};
use engine::{FileBudget, Log, LogConfig};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 512,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

fn run<F, Fut>(dir: &Path, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    engine::run_local(dir, f).expect("executor");
}

/// Entry `i`: a data batch of two records, every fifth a no-op control batch.
fn entry(log: &Log, i: u64) -> Vec<u8> {
    let stamp = Stamp {
        kind: if i % 5 == 4 { Kind::NoOp } else { Kind::Data },
        base_offset: log.next_offset(),
        term: i / 10 + 1,
        raft_index: log.next_index(),
        commit_index: log.next_index().saturating_sub(1),
        timestamp_ms: i as i64,
    };
    let mut out = Vec::new();
    if stamp.kind == Kind::NoOp {
        batch::encode_with_payload(&mut out, &stamp, 0, b"");
    } else {
        let records: Vec<NewRecord> = (0..2)
            .map(|k| NewRecord::new(Bytes::from(vec![(i * 2 + k) as u8; 2000])))
            .collect();
        batch::encode_into(&mut out, &stamp, &records);
    }
    out
}

async fn fill(log: &Rc<Log>, n: u64) {
    for i in 0..n {
        let b = entry(log, i);
        log.append_buffered(&b).await.expect("append");
    }
    log.sync().await.expect("sync");
}

/// Copies the source's snapshot files of `[first, last]` into a staging directory for
/// `target`, flipping one byte of file `corrupt` if given.
async fn stage(src: &Log, target: &Path, first: u64, last: u64, corrupt: Option<usize>) -> Staging {
    let files = src.snapshot_files(first, last).await.expect("files");
    let mut st = Staging::create(target).expect("staging");
    let decl: Vec<(u64, u64)> = files.iter().map(|f| (f.base, f.len)).collect();
    st.set_files(&decl).expect("declare");
    for (i, f) in files.iter().enumerate() {
        let mut buf = vec![0u8; f.len as usize];
        let mut h = &f.file;
        h.seek(SeekFrom::Start(0)).expect("seek");
        h.read_exact(&mut buf).expect("read");
        if corrupt == Some(i) {
            let at = buf.len() / 2;
            buf[at] ^= 0x40;
        }
        st.open_file(i)
            .expect("open")
            .write_all_at(&buf, 0)
            .expect("write");
    }
    st
}

async fn records(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = from;
    while at < log.visible_end() {
        let rs = log.read_range(at, 1000, 1 << 20).await.expect("read");
        if rs.is_empty() {
            break;
        }
        for r in rs {
            at = r.offset + 1;
            out.push((r.offset, r.value.to_vec()));
        }
    }
    out
}

#[test]
fn a_staged_snapshot_replaces_the_log_atomically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    run(tmp.path(), move || async move {
        let src = Log::open(root.join("src"), small(), FileBudget::new(8))
            .await
            .expect("src");
        fill(&src, 200).await;
        assert!(src.stats().segments >= 4, "segments rolled");
        // Retention moved the source's start past its first segment.
        src.truncate_prefix_index(40).await.expect("prefix");
        let first = src.first_index();
        assert!(first > 1);
        let last = 180;
        let dst_dir = root.join("dst");
        let dst = Log::open(&dst_dir, small(), FileBudget::new(8))
            .await
            .expect("dst");
        fill(&dst, 7).await;

        // A corrupt byte: verification fails, the old log stays.
        let mut bad = stage(&src, &dst_dir, first, last, Some(1)).await;
        let (fo, no) = (src.lowest_offset(), offset_after(&src, last).await);
        assert!(bad.verify(first, fo, last, no, &small()).await.is_err());
        drop(bad);
        assert!(
            !staging_path(&dst_dir).exists(),
            "a dropped staging is removed"
        );
        assert_eq!(dst.next_index(), 8);
        // An install that fails before the exchange (its directory vanished) leaves the log
        // as it was, writable.
        let mut gone = stage(&src, &dst_dir, first, last, None).await;
        gone.verify(first, fo, last, no, &small())
            .await
            .expect("verify");
        std::fs::remove_dir_all(gone.dir()).expect("remove");
        assert!(dst.install_staged(gone, "raft.meta", b"x").await.is_err());
        let b = entry(&dst, 7);
        dst.append_buffered(&b).await.expect("still writable");
        dst.sync().await.expect("sync");
        assert_eq!(dst.next_index(), 9);

        // The partition's mark goes into the new directory; a lost mark goes with the old.
        let mark = br#"{"version":1,"topic":"dst","partition":0}"#;
        dst.write_meta("partition.meta", mark).expect("mark");
        dst.mark_lost("test").expect("mark lost");
        let mut st = stage(&src, &dst_dir, first, last, None).await;
        st.verify(first, fo, last, no, &small())
            .await
            .expect("verify");
        dst.install_staged(st, "raft.meta", b"hello")
            .await
            .expect("install");
        assert!(!staging_path(&dst_dir).exists(), "the old log is deleted");
        assert_eq!(
            dst.read_meta("partition.meta").expect("mark").as_deref(),
            Some(&mark[..])
        );
        assert_eq!(dst.lost().expect("lost"), None);
        // A reset (installing a snapshot into an emptied log) keeps it too.
        let reset = Log::open(root.join("reset"), small(), FileBudget::new(8))
            .await
            .expect("reset log");
        fill(&reset, 5).await;
        reset.write_meta("partition.meta", mark).expect("mark");
        reset.reset_at(100, 50).await.expect("reset");
        assert_eq!(
            reset.read_meta("partition.meta").expect("mark").as_deref(),
            Some(&mark[..])
        );
        reset.close().await.expect("close reset");
        assert_eq!((dst.first_index(), dst.next_index()), (first, last + 1));
        assert_eq!((dst.lowest_offset(), dst.next_offset()), (fo, no));
        assert_eq!(
            dst.read_meta("raft.meta").expect("meta").as_deref(),
            Some(&b"hello"[..])
        );
        let want = src
            .read_entries(first, last + 1, usize::MAX)
            .await
            .expect("src entries");
        let got = dst
            .read_entries(first, last + 1, usize::MAX)
            .await
            .expect("dst entries");
        assert_eq!(want.len(), got.len());
        for (a, b) in want.iter().zip(&got) {
            assert_eq!(a.bytes, b.bytes);
        }
        // It takes appends after the snapshot, and reopens the same.
        let b = entry(&dst, 181);
        dst.append_buffered(&b).await.expect("append after");
        dst.sync().await.expect("sync");
        dst.set_visible(dst.next_offset());
        let before = records(&dst, fo).await;
        assert!(!before.is_empty());
        dst.close().await.expect("close");
        let again = Log::open(&dst_dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        assert_eq!((again.first_index(), again.next_index()), (first, last + 2));
        assert_eq!(records(&again, fo).await, before);
        src.close().await.expect("close src");
    });
}

async fn offset_after(log: &Log, index: u64) -> u64 {
    let b = log.read_entries(index, index + 1, 1).await.expect("entry");
    b[0].header.next_offset()
}

#[test]
fn a_leftover_temporary_directory_is_removed_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    run(tmp.path(), move || async move {
        let dir = root.join("p");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 30).await;
        let next = log.next_index();
        log.close().await.expect("close");
        // A crash mid-download: a half-written file in `<dir>.install`.
        let staging = staging_path(&dir);
        std::fs::create_dir_all(&staging).expect("mkdir");
        std::fs::write(staging.join("00000000000000000000.log"), [7u8; 1000]).expect("write");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        assert!(!staging.exists(), "the leftover is removed");
        assert_eq!(log.next_index(), next, "the log is the old one");
        log.close().await.expect("close");

        // A crash right after the exchange: the new log in place, the old one (whole) under
        // the temporary name. The open keeps the new one and removes the old.
        let new_dir = root.join("new");
        let new = Log::open(&new_dir, small(), FileBudget::new(8))
            .await
            .expect("new");
        fill(&new, 10).await;
        new.close().await.expect("close");
        std::fs::rename(&dir, &staging).expect("old log aside");
        std::fs::rename(&new_dir, &dir).expect("new log in place");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        assert!(!staging.exists(), "the old log is removed");
        assert_eq!(log.next_index(), 11, "the log is the new one");
        log.close().await.expect("close");
    });
}
