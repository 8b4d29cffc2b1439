//! The log as a Raft log (batch format v2): Raft indexes counted on every batch, control
//! batches (no records) between data batches with dense offsets, reads, cuts and term runs by
//! Raft index across segments and reopens, a reset at an index remembered across a restart,
//! and a data directory of format version 1 refused with its version named.

use crate::common;
use bytes::Bytes;
use engine::batch::{self, Kind, NewRecord, Stamp};
use engine::{Error, FileBudget, Log, LogConfig};
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

/// Entry `i` of a test log: a data batch of `i % 3 + 1` records, except every fourth entry,
/// which is a control batch (no-op, configuration change or controller command by turn).
/// Terms change every 7 entries.
fn entry(log: &Log, i: u64, value_len: usize) -> Vec<u8> {
    entry_at(i, log.next_offset(), log.next_index(), value_len)
}

/// [`entry`] at a given offset and Raft index.
fn entry_at(i: u64, base_offset: u64, raft_index: u64, value_len: usize) -> Vec<u8> {
    let term = i / 7 + 1;
    let mut stamp = Stamp {
        kind: Kind::Data,
        base_offset,
        term,
        raft_index,
        // None known: entries a test cuts later must not claim a commit index that reaches
        // the cut (Raft cuts only entries never committed), or a torn batch before one of
        // them would be taken for damage (`engine::segment::scan`).
        commit_index: 0,
        timestamp_ms: i as i64,
    };
    let mut out = Vec::new();
    if i % 4 == 3 {
        stamp.kind = [Kind::NoOp, Kind::ConfChange, Kind::Controller][(i / 4 % 3) as usize];
        batch::encode_with_payload(&mut out, &stamp, 0, format!("control {i}").as_bytes());
    } else {
        let records: Vec<NewRecord> = (0..i % 3 + 1)
            .map(|k| NewRecord::new(Bytes::from(vec![(i + k) as u8; value_len])))
            .collect();
        batch::encode_into(&mut out, &stamp, &records);
    }
    out
}

async fn fill(log: &Rc<Log>, n: u64, value_len: usize) {
    for i in 0..n {
        let b = entry(log, i, value_len);
        log.append_buffered(&b).await.expect("append");
    }
    log.sync().await.expect("sync");
}

/// Records of entries `0..n` as `fill` writes them: (offset, first byte of the value).
fn expected_records(n: u64) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    for i in 0..n {
        if i % 4 != 3 {
            for k in 0..i % 3 + 1 {
                out.push((out.len() as u64, (i + k) as u8));
            }
        }
    }
    out
}

async fn check(log: &Rc<Log>, n: u64) {
    assert_eq!((log.first_index(), log.next_index()), (1, n + 1));
    let want = expected_records(n);
    assert_eq!(log.next_offset(), want.len() as u64);
    // Readers see records only, at dense offsets.
    let got = log
        .read_range(0, usize::MAX, usize::MAX)
        .await
        .expect("read records");
    let got: Vec<(u64, u8)> = got.iter().map(|r| (r.offset, r.value[0])).collect();
    assert_eq!(got, want);
    // Every entry by Raft index, one batch each, in order, from any starting index.
    for from in [1, 2, n / 2, n]
        .into_iter()
        .filter(|&f| (1..=n).contains(&f))
    {
        let b = log
            .read_entries(from, n + 1, usize::MAX)
            .await
            .expect("entries");
        assert_eq!(b.len() as u64, n + 1 - from, "entries from {from}");
        for (k, e) in b.iter().enumerate() {
            let i = from + k as u64;
            assert_eq!(e.header.raft_index, i);
            assert_eq!(e.header.term, (i - 1) / 7 + 1);
            assert_eq!(e.header.is_data(), (i - 1) % 4 != 3);
        }
    }
    // A byte budget returns at least one batch.
    if n >= 3 {
        assert_eq!(log.read_entries(3, n + 1, 1).await.expect("one").len(), 1);
    }
    let runs = log.term_runs().await.expect("term runs");
    let want_runs: Vec<(u64, u64)> = (0..n.div_ceil(7)).map(|t| (t * 7 + 1, t + 1)).collect();
    assert_eq!(runs, want_runs);
    let last = log.last_header().await.expect("last").expect("a batch");
    assert_eq!(last.raft_index, n);
}

#[test]
fn control_batches_take_indexes_not_offsets_across_segments_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 200, 900).await;
        assert!(log.stats().segments > 3, "the test wants several segments");
        check(&log, 200).await;
        log.close().await.expect("close");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        check(&log, 200).await;
        // Appends continue the indexes and the dense offsets.
        let next = log.next_offset();
        let b = entry(&log, 200, 10);
        log.append_buffered(&b).await.expect("append");
        assert_eq!(
            (log.next_index(), log.next_offset()),
            (202, next + 200 % 3 + 1)
        );
        log.close().await.expect("close");
    });
}

#[test]
fn cut_after_an_index_in_an_earlier_segment_and_continue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 200, 900).await;
        for keep in [150u64, 149, 60, 12, 1] {
            log.truncate_after_index(keep).await.expect("truncate");
            check(&log, keep).await;
        }
        // The cut is durable, and appends continue the indexes.
        log.close().await.expect("close");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        check(&log, 1).await;
        for i in 1..40 {
            let b = entry(&log, i, 900);
            log.append_buffered(&b).await.expect("append");
        }
        log.sync().await.expect("sync");
        check(&log, 40).await;
        // Nothing below the log's first index can be cut, and a cut past the end is a no-op.
        log.truncate_after_index(1000).await.expect("past the end");
        assert_eq!(log.next_index(), 41);
        log.close().await.expect("close");
    });
}

#[test]
fn appends_must_continue_the_indexes_and_offsets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 5, 10).await;
        let mut b = entry(&log, 5, 10);
        // Raft index 7 where 6 is next.
        let mut stamp = Stamp {
            kind: Kind::NoOp,
            base_offset: log.next_offset(),
            term: 1,
            raft_index: 7,
            commit_index: 0,
            timestamp_ms: 0,
        };
        let mut skip = Vec::new();
        batch::encode_with_payload(&mut skip, &stamp, 0, b"");
        assert!(matches!(
            log.append_buffered(&skip).await,
            Err(Error::InvalidArgument(_))
        ));
        stamp.raft_index = 6;
        stamp.base_offset += 1;
        let mut gap = Vec::new();
        batch::encode_with_payload(&mut gap, &stamp, 0, b"");
        assert!(matches!(
            log.append_buffered(&gap).await,
            Err(Error::InvalidArgument(_))
        ));
        b[70] ^= 1;
        assert!(log.append_buffered(&b).await.is_err(), "a corrupt batch");
        assert_eq!(log.next_index(), 6);
        log.close().await.expect("close");
    });
}

#[test]
fn a_reset_at_an_index_is_remembered_by_an_empty_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 30, 100).await;
        log.reset_at(1000, 57).await.expect("reset");
        assert_eq!((log.first_index(), log.next_index()), (57, 57));
        log.close().await.expect("close");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        assert_eq!(
            (log.first_index(), log.next_index(), log.next_offset()),
            (57, 57, 1000)
        );
        let mut b = Vec::new();
        let stamp = Stamp {
            kind: Kind::Data,
            base_offset: 1000,
            term: 9,
            raft_index: 57,
            commit_index: 56,
            timestamp_ms: 0,
        };
        batch::encode_into(&mut b, &stamp, &[NewRecord::new(&b"x"[..])]);
        log.append_buffered(&b).await.expect("append");
        log.sync().await.expect("sync");
        assert_eq!(
            log.read(1000).await.expect("read").value,
            Bytes::from_static(b"x")
        );
        assert_eq!(log.term_runs().await.expect("runs"), vec![(57, 9)]);
        log.close().await.expect("close");
    });
}

#[test]
fn single_node_appends_count_raft_indexes_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        for i in 0..10u8 {
            log.append(&[NewRecord::new(Bytes::from(vec![i; 3]))])
                .await
                .expect("append");
        }
        assert_eq!((log.first_index(), log.next_index()), (1, 11));
        // The seam's path too: a batch encoded elsewhere gets its header (and Raft index)
        // stamped by the log, its CRC combined from the payload's.
        let encoded = engine::seam::EncodedBatch::encode(&[
            NewRecord::new(Bytes::from_static(b"x")),
            NewRecord::new(Bytes::from_static(b"yz")),
        ])
        .expect("encode");
        let (a, _) = log.append_encoded(&encoded).await.expect("append encoded");
        assert_eq!(
            (a.base_offset, a.last_offset, log.next_index()),
            (10, 11, 12)
        );
        log.close().await.expect("close");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        assert_eq!(log.next_index(), 12);
        let e = log.read_entries(4, 5, 1).await.expect("entry");
        assert_eq!((e[0].header.raft_index, e[0].header.base_offset), (4, 3));
        let e = log.read_entries(11, 12, 1).await.expect("checked entry");
        let h = e[0].header;
        assert_eq!(
            (
                h.kind,
                h.raft_index,
                h.commit_index,
                h.base_offset,
                h.record_count
            ),
            // Its commit index: the last Raft index the log had made durable.
            (Kind::Data, 11, 10, 10, 2)
        );
        log.close().await.expect("close");
    });
}

/// A Raft group owns the visible end: reopened with entries past what it applied, it takes the
/// mark below the log's end (where the policy would show everything durable); readers of
/// records, the seam's chunks included, stop there and skip control batches; Raft reads by
/// index past it; the mark rises when the owner says so and falls with a cut below it.
#[test]
fn a_raft_owner_shows_readers_only_what_it_applied() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 40, 100).await;
        log.close().await.expect("close");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        let want = expected_records(40);
        let end = log.next_offset();
        assert_eq!(
            log.visible_end(),
            end,
            "on its own, the log shows what is durable"
        );
        // Applied up to entry 20: the records of entries 0..20 (1-based indexes 1..=20).
        let applied = expected_records(20).len() as u64;
        log.take_visibility_at(applied);
        assert_eq!(log.visibility(), engine::Visibility::Owner);
        assert_eq!(log.visible_end(), applied);
        let got = log
            .read_range(0, usize::MAX, usize::MAX)
            .await
            .expect("read records");
        let got: Vec<(u64, u8)> = got.iter().map(|r| (r.offset, r.value[0])).collect();
        assert_eq!(got, want[..applied as usize]);
        assert!(matches!(
            log.read_range(applied, 1, usize::MAX).await,
            Err(Error::OffsetOutOfRange { next, .. }) if next == applied
        ));
        // The seam's read: stored batches, decoded on the reader's side, control batches
        // skipped, nothing past the mark.
        let limits = engine::seam::ReadLimits {
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            past_end: engine::seam::PastEnd::Empty,
        };
        let chunk = log.read_chunk(1, limits).await.expect("chunk");
        assert_eq!(chunk.visible_end, applied);
        let got: Vec<(u64, u8)> = chunk
            .records()
            .map(|r| r.map(|r| (r.offset, r.value[0])))
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(got, want[1..applied as usize]);
        assert!(log
            .read_chunk(applied, limits)
            .await
            .expect("chunk")
            .is_empty());
        // Raft reads every entry, applied or not.
        let all = log.read_entries(1, 41, usize::MAX).await.expect("entries");
        assert_eq!(all.len(), 40);
        // The owner raises the mark; it never passes the end.
        assert_eq!(log.set_visible(applied + 3), applied + 3);
        assert_eq!(log.set_visible(u64::MAX), end);
        // A cut below the mark (Raft cuts only what is not committed; a reset or an install
        // may) lowers it with the log.
        log.truncate_after_index(30).await.expect("cut");
        let after = expected_records(30).len() as u64;
        assert_eq!((log.next_offset(), log.visible_end()), (after, after));
        // Appends by Raft index do not move the mark.
        let b = entry(&log, 30, 10);
        log.append_buffered(&b).await.expect("append");
        log.sync().await.expect("sync");
        assert_eq!(log.visible_end(), after);
        log.close().await.expect("close");
    });
}

/// A version-1 batch header (48 bytes): magic, version 1, flags, header length 48, then
/// base offset, term, timestamp, count, payload length, reserved, CRC.
fn v1_batch() -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&batch::MAGIC.to_le_bytes());
    h.push(1);
    h.push(0);
    h.extend_from_slice(&48u16.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes());
    h.extend_from_slice(&0i64.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&9u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.push(b'v');
    h.resize(4096, 0);
    h
}

#[test]
fn a_data_directory_of_format_one_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, files) in [("active", vec![0u64]), ("sealed", vec![0u64, 1])] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for base in &files {
            std::fs::write(dir.join(format!("{base:020}.log")), v1_batch()).expect("write");
        }
        let before: Vec<Vec<u8>> = files
            .iter()
            .map(|b| std::fs::read(dir.join(format!("{b:020}.log"))).expect("read"))
            .collect();
        let d = dir.clone();
        run(tmp.path(), move || async move {
            match Log::open(&d, small(), FileBudget::new(8)).await {
                Err(e @ Error::UnsupportedFormat { version: 1, .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("format version 1"), "{msg}");
                }
                Err(e) => panic!("{name}: {e}"),
                Ok(_) => panic!("{name}: a format-1 log opened"),
            }
        });
        for (b, bytes) in files.iter().zip(before) {
            let after = std::fs::read(dir.join(format!("{b:020}.log"))).expect("read");
            assert_eq!(after, bytes, "{name}: the file was changed");
        }
    }
}

#[test]
fn a_run_of_control_batches_never_rolls_into_a_segment_of_the_same_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        // Fill a segment, then 150 control batches of 1 KB (more than a segment) that carry
        // no offset, then records again.
        fill(&log, 60, 900).await;
        for _ in 0..150 {
            let stamp = Stamp {
                kind: Kind::Controller,
                base_offset: log.next_offset(),
                term: 20,
                raft_index: log.next_index(),
                commit_index: 0,
                timestamp_ms: 0,
            };
            let mut b = Vec::new();
            batch::encode_with_payload(&mut b, &stamp, 0, &[7u8; 1000]);
            log.append_buffered(&b).await.expect("control");
        }
        let offset = log.next_offset();
        for i in 0..100u64 {
            let stamp = Stamp {
                kind: Kind::Data,
                base_offset: log.next_offset(),
                term: 20,
                raft_index: log.next_index(),
                commit_index: 0,
                timestamp_ms: 0,
            };
            let mut b = Vec::new();
            batch::encode_into(
                &mut b,
                &stamp,
                &[NewRecord::new(Bytes::from(vec![i as u8; 900]))],
            );
            log.append_buffered(&b).await.expect("data");
        }
        log.sync().await.expect("sync");
        let check = |log: Rc<Log>| async move {
            assert_eq!(log.next_index(), 311);
            let r = log.read_range(offset, 200, usize::MAX).await.expect("read");
            assert_eq!(r.len(), 100);
            assert!(r
                .iter()
                .enumerate()
                .all(|(i, r)| r.offset == offset + i as u64));
            let e = log
                .read_entries(61, 311, usize::MAX)
                .await
                .expect("entries");
            assert_eq!(e.len(), 250);
        };
        check(Rc::clone(&log)).await;
        log.close().await.expect("close");
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        check(log).await;
    });
}

#[test]
fn a_cut_after_every_index_in_turn_across_segment_boundaries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 120, 1500).await;
        assert!(log.stats().segments > 3, "the test wants several segments");
        for keep in (1..120u64).rev() {
            log.truncate_after_index(keep).await.expect("truncate");
            assert_eq!(log.next_index(), keep + 1, "after cutting after {keep}");
            assert_eq!(log.next_offset(), expected_records(keep).len() as u64);
            let last = log
                .read_entries(keep, keep + 1, 1)
                .await
                .expect("last entry");
            assert_eq!(last[0].header.raft_index, keep);
        }
        check(&log, 1).await;
        log.close().await.expect("close");
    });
}

#[test]
fn sync_makes_trailing_control_batches_durable_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    run(tmp.path(), move || async move {
        let log = Log::open(&dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&log, 3, 10).await;
        // A no-op takes no offset: an offset-based durability mark would call it durable.
        let stamp = Stamp {
            kind: Kind::NoOp,
            base_offset: log.next_offset(),
            term: 2,
            raft_index: log.next_index(),
            commit_index: 0,
            timestamp_ms: 0,
        };
        let mut b = Vec::new();
        batch::encode_with_payload(&mut b, &stamp, 0, b"");
        log.append_buffered(&b).await.expect("append");
        let before = log.stats().fdatasyncs;
        log.sync().await.expect("sync");
        assert_eq!(log.stats().fdatasyncs, before + 1, "the no-op was synced");
        // Nothing new: no sync.
        log.sync().await.expect("sync");
        assert_eq!(log.stats().fdatasyncs, before + 1);
        log.close().await.expect("close");
    });
}

/// Batches given as a header and a payload each (what a Raft round stores: the records
/// copied once, from the entry) are stored byte for byte as the same batches given whole,
/// across segment rolls and a reopen; a header that claims other bytes than its payload's,
/// or one that does not continue the log, is refused with nothing stored.
#[test]
fn batches_given_in_two_pieces_are_stored_as_the_same_batches_given_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (whole_dir, parts_dir) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let n = 200;
    run(tmp.path(), move || async move {
        let whole = Log::open(&whole_dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        fill(&whole, n, 300).await;
        let parts = Log::open(&parts_dir, small(), FileBudget::new(8))
            .await
            .expect("open");
        // One to three batches per call, as a round stores one to many entries.
        let mut i = 0;
        while i < n {
            let (mut offset, mut index) = (parts.next_offset(), parts.next_index());
            let mut batches = Vec::new();
            for _ in 0..(i % 3 + 1).min(n - i) {
                let b = entry_at(i, offset, index, 300);
                let batch::Parsed::Header(h) = batch::parse_header(&b) else {
                    panic!("entry {i} does not parse")
                };
                (offset, index) = (h.next_offset(), index + 1);
                batches.push(b);
                i += 1;
            }
            let pieces: Vec<engine::log::FreshBatch> = batches
                .iter()
                .map(|b| engine::log::FreshBatch {
                    header: b[..batch::HEADER_LEN].try_into().expect("a header"),
                    payload: &b[batch::HEADER_LEN..],
                })
                .collect();
            parts.append_fresh_parts(&pieces).await.expect("append");
        }
        parts.sync().await.expect("sync");
        let read = |log: Rc<Log>| async move {
            let b = log
                .read_entries(1, n + 1, usize::MAX)
                .await
                .expect("entries");
            b.into_iter()
                .flat_map(|e| e.bytes.to_vec())
                .collect::<Vec<u8>>()
        };
        let want = read(Rc::clone(&whole)).await;
        assert_eq!(read(Rc::clone(&parts)).await, want);
        check(&parts, n).await;

        // Refused, with nothing stored: a payload shorter than its header says, and a batch
        // that skips an offset.
        let b = entry(&parts, n, 300);
        let header: &[u8; batch::HEADER_LEN] = b[..batch::HEADER_LEN].try_into().expect("a header");
        let short = engine::log::FreshBatch {
            header,
            payload: &b[batch::HEADER_LEN..b.len() - 1],
        };
        assert!(matches!(
            parts.append_fresh_parts(&[short]).await,
            Err(Error::InvalidArgument(_))
        ));
        let good = engine::log::FreshBatch {
            header,
            payload: &b[batch::HEADER_LEN..],
        };
        assert!(matches!(
            parts.append_fresh_parts(&[good, good]).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(parts.next_index(), n + 1);
        parts.close().await.expect("close");
        let reopened = Log::open(&parts_dir, small(), FileBudget::new(8))
            .await
            .expect("reopen");
        assert_eq!(read(Rc::clone(&reopened)).await, want);
        check(&reopened, n).await;
        reopened.close().await.expect("close");
        whole.close().await.expect("close");
    });
}

/// A Raft truncation (a follower's conflicting entries cut) rewrites the block holding the
/// cut (the bytes before it, then zeros), cuts the file and syncs. A crash before that sync
/// completes may leave the block's 512-byte sectors any mix of old and new, and the file at
/// either length. Every such mix opens as a torn tail at worst: all the entries before the
/// cut, then some prefix of the entries cut, never damage (no `lost.meta`, no
/// `.damaged-at-` copy), and appends continue from there.
#[test]
fn an_interrupted_cut_by_index_is_never_taken_for_damage() {
    const SECTOR: usize = 512;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    run(tmp.path(), move || async move {
        let mut mixes = 0usize;
        for value_len in [10usize, 333] {
            let base = root.join(format!("base-{value_len}"));
            let log = Log::open(&base, small(), FileBudget::new(8))
                .await
                .expect("open");
            let n = 40u64;
            fill(&log, n, value_len).await;
            assert_eq!(log.stats().segments, 1, "the test wants one segment");
            log.close().await.expect("close");
            drop(log);
            let data = base.join(format!("{:020}.log", 0));
            let old = std::fs::read(&data).expect("read");
            for keep in [1u64, 13, 26, 39] {
                let ctx = format!("values of {value_len} bytes, cut after {keep}");
                let cut = root.join("cut");
                common::copy_dir(&base, &cut);
                let log = Log::open(&cut, small(), FileBudget::new(8))
                    .await
                    .expect("open");
                log.truncate_after_index(keep).await.expect("truncate");
                log.close().await.expect("close");
                drop(log);
                let new = std::fs::read(cut.join(format!("{:020}.log", 0))).expect("read");
                // The block the cut rewrote: the first byte that differs is in it.
                let first = old
                    .iter()
                    .zip(&new)
                    .position(|(a, b)| a != b)
                    .unwrap_or(new.len().min(old.len()));
                let w0 = first / 4096 * 4096;
                let differing: Vec<usize> = (0..4096 / SECTOR)
                    .map(|k| w0 + k * SECTOR)
                    .filter(|&s| {
                        let end = s + SECTOR;
                        old.get(s..end.min(old.len())) != new.get(s..end.min(new.len()))
                    })
                    .collect();
                for mask in 0u32..1 << differing.len() {
                    for cut_len in [old.len(), new.len()] {
                        let mut mix = old.clone();
                        mix.resize(mix.len().max(new.len()), 0);
                        for (k, &s) in differing.iter().enumerate() {
                            if mask & (1 << k) != 0 {
                                let end = (s + SECTOR).min(new.len());
                                mix[s..end].copy_from_slice(&new[s..end]);
                                mix[end..s + SECTOR].fill(0);
                            }
                        }
                        mix.truncate(cut_len);
                        let dir = root.join("mix");
                        common::copy_dir(&base, &dir);
                        std::fs::write(dir.join(format!("{:020}.log", 0)), &mix).expect("write");
                        let ctx = format!("{ctx}, sectors {mask:#b} new, file {cut_len} bytes");
                        let log = Log::open(&dir, small(), FileBudget::new(8))
                            .await
                            .unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
                        let m = log.next_index() - 1;
                        assert!((keep..=n).contains(&m), "{ctx}: {m} entries");
                        check(&log, m).await;
                        let b = entry(&log, m, 7);
                        log.append_buffered(&b).await.expect("append");
                        log.sync().await.expect("sync");
                        log.close().await.expect("close");
                        drop(log);
                        let names: Vec<String> = std::fs::read_dir(&dir)
                            .expect("list")
                            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
                            .collect();
                        assert!(
                            !names
                                .iter()
                                .any(|f| f == engine::LOST_META || f.contains("damaged")),
                            "{ctx}: {names:?}"
                        );
                        mixes += 1;
                    }
                }
            }
        }
        eprintln!("{mixes} interrupted cuts opened");
    });
}
