//! The active segment's zero-filled tail (blocks written with zeroes ahead of the data, so
//! that a sync commits no metadata) across kill -9: a child process (this test binary,
//! re-executed) appends durably, prints an `ACK` line per record, then waits; the parent kills
//! it with SIGKILL, checks that the data file does reach past the data in zeroes, and that
//! recovery finds the true end of the log there (every acknowledged record, nothing else), also
//! when a torn batch sits in the zeroes, and that appends continue at the right offset.

use crate::common;
use bytes::Bytes;
use engine::{Durability, FileBudget, Log, LogConfig, NewRecord};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "PROGLOG_ZERO_TAIL_CHILD";
const CHILD_TEST: &str = "zero_tail_child";
const RECORDS: u64 = 40;
const HEADER_LEN: usize = engine::batch::HEADER_LEN;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 1 << 20,
        max_batch_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        ..LogConfig::default()
    }
}

fn value(i: u64) -> Bytes {
    Bytes::from(format!("record {i:04} {}", "z".repeat(90)))
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join(format!("{:020}.log", 0))
}

/// The child: appends `RECORDS` records one at a time (each durable before the next), says
/// `DONE`, and waits to be killed. Does nothing when run as an ordinary test.
#[test]
fn zero_tail_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let root = dir.parent().expect("parent").to_owned();
    engine::run_local(&root, move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("child: open");
        println!();
        for i in 0..RECORDS {
            let a = log
                .append(&[NewRecord::new(value(i))])
                .await
                .expect("child: append");
            println!("ACK {}", a.base_offset);
        }
        println!("DONE");
        glommio::timer::sleep(Duration::from_secs(120)).await;
    })
    .expect("child executor");
}

fn reopen(dir: &Path) -> (u64, Vec<Bytes>) {
    let root = dir.parent().expect("parent").to_owned();
    let dir = dir.to_owned();
    engine::run_local(&root, move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("reopen");
        let next = log.next_offset();
        let values = match log.read_range(0, 1000, 1 << 20).await {
            Ok(rs) => rs.into_iter().map(|r| r.value).collect(),
            Err(_) => Vec::new(),
        };
        // Appends continue at the end recovery found, and stay there across a reopen.
        let a = log
            .append(&[NewRecord::new(Bytes::from_static(b"after recovery"))])
            .await
            .expect("append after recovery");
        assert_eq!(a.base_offset, next, "the next append continues the log");
        log.close().await.expect("close");
        drop(log);
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("second reopen");
        assert_eq!(
            log.next_offset(),
            next + 1,
            "the append after recovery stays"
        );
        let r = log
            .read(next)
            .await
            .expect("read the append after recovery");
        assert_eq!(&r.value[..], b"after recovery");
        log.close().await.expect("close");
        (next, values)
    })
    .expect("executor")
}

#[test]
fn recovery_finds_the_end_of_the_log_in_a_zero_filled_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(&exe)
        .args([
            "--exact",
            &common::test_name(module_path!(), CHILD_TEST),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child stdout");
        if let Some(o) = line.strip_prefix("ACK ") {
            acked.push(o.trim().parse::<u64>().expect("ACK offset"));
        }
        if line == "DONE" || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "the child was killed, not ended");
    }
    assert_eq!(
        acked,
        (0..RECORDS).collect::<Vec<_>>(),
        "every append acknowledged"
    );

    // The data file reaches past the data, in zeroes.
    let batch_len = |i: u64| (HEADER_LEN + 8 + value(i).len()) as u64;
    let data_end: u64 = (0..RECORDS).map(batch_len).sum();
    let bytes = std::fs::read(data_file(&dir)).expect("read data file");
    assert!(
        bytes.len() as u64 >= data_end + 64 * 1024,
        "a zero-filled window follows the data: file {} bytes, data {data_end}",
        bytes.len()
    );
    assert!(
        bytes[data_end as usize..].iter().all(|&b| b == 0),
        "everything after the data is zero"
    );

    // 1. As the kill left it: the end is the last acknowledged record.
    let case = tmp.path().join("case");
    common::copy_dir(&dir, &case);
    let (next, values) = reopen(&case);
    assert_eq!(
        next, RECORDS,
        "recovery finds the end after the last record"
    );
    assert_eq!(values, (0..RECORDS).map(value).collect::<Vec<_>>());
    let len = std::fs::metadata(data_file(&case)).expect("meta").len();
    assert!(len >= data_end, "nothing acknowledged was cut");

    // 2. A torn batch in the zeroes (the first part of a next batch: its header and a few
    // payload bytes, the rest still zero) is cut, never served.
    let last_start = data_end - batch_len(RECORDS - 1);
    let mut torn = bytes[last_start as usize..data_end as usize].to_vec();
    torn[8..16].copy_from_slice(&RECORDS.to_le_bytes());
    let raft_index = u64::from_le_bytes(torn[24..32].try_into().expect("8 bytes"));
    torn[24..32].copy_from_slice(&(raft_index + 1).to_le_bytes());
    torn.truncate(HEADER_LEN + 20);
    for (i, keep) in [(0usize, torn.len()), (1, HEADER_LEN)] {
        common::copy_dir(&dir, &case);
        let mut damaged = bytes.clone();
        damaged[data_end as usize..data_end as usize + keep].copy_from_slice(&torn[..keep]);
        std::fs::write(data_file(&case), &damaged).expect("write damaged");
        let (next, values) = reopen(&case);
        assert_eq!(next, RECORDS, "case {i}: the torn batch is cut");
        assert_eq!(values, (0..RECORDS).map(value).collect::<Vec<_>>());
    }
}
