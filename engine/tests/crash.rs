//! kill -9 test: a child process (this test binary, re-executed) appends with several
//! concurrent writers and prints an `ACK` line for every record once its append resolved; the
//! parent kills it with SIGKILL at a random moment, reopens the log and checks that every
//! acknowledged record is there, byte for byte, with dense offsets. Then the next round's child
//! continues on the same directory.
//!
//! The parent prints its seed; `PROGLOG_SEED=<n>` replays the kill delays and record contents,
//! `PROGLOG_CRASH_ROUNDS=<n>` changes the number of rounds (default 30).

use crate::common;
use bytes::Bytes;
use engine::{Durability, FileBudget, Log, LogConfig, NewRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "PROGLOG_CRASH_CHILD";
const CHILD_TEST: &str = "crash_child";
const WRITERS: u32 = 4;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        max_record_bytes: 4096,
        max_batch_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// A value: writer id (u32), sequence (u64), random filler, crc32c of all that (u32).
fn make_value(rng: &mut StdRng, writer: u32, seq: u64) -> Bytes {
    let len = match rng.random_range(0..4) {
        0 => 16,
        1 => rng.random_range(16..200),
        _ => rng.random_range(200..3000),
    };
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.resize(len - 4, 0);
    rng.fill(&mut v[12..]);
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    Bytes::from(v)
}

/// Parses a value written by `make_value`: `(writer, seq)` if its own checksum holds.
fn parse_value(v: &[u8]) -> Option<(u32, u64)> {
    if v.len() < 16 {
        return None;
    }
    let (body, crc) = v.split_at(v.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    Some((
        u32::from_le_bytes(body[..4].try_into().ok()?),
        u64::from_le_bytes(body[4..12].try_into().ok()?),
    ))
}

fn log_dir(root: &Path) -> PathBuf {
    root.join("log")
}

/// The child: appends until killed. Does nothing when run as an ordinary test.
#[test]
fn crash_child() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    let root = PathBuf::from(root);
    let round: u32 = std::env::var("PROGLOG_CRASH_ROUND")
        .expect("round")
        .parse()
        .expect("round");
    let seed: u64 = std::env::var("PROGLOG_CRASH_CHILD_SEED")
        .expect("seed")
        .parse()
        .expect("seed");
    let dir = log_dir(&root);
    engine::run_local(&root, move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("child: open");
        // libtest has printed "test crash_child ... " without a newline: start a fresh line.
        println!("\nOPEN {}", log.next_offset());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let log = Rc::clone(&log);
            let writer = round * 16 + w;
            let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(w) << 32));
            tasks.push(glommio::spawn_local(async move {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let n = rng.random_range(1..=4);
                    let records: Vec<NewRecord> = (0..n)
                        .map(|i| NewRecord::new(make_value(&mut rng, writer, seq + i)))
                        .collect();
                    let a = log.append(&records).await.expect("child: append");
                    seq += n;
                    let mut out = String::new();
                    for (i, r) in records.iter().enumerate() {
                        out.push_str(&format!(
                            "ACK {} {} {}\n",
                            a.base_offset + i as u64,
                            r.value.len(),
                            crc32c::crc32c(&r.value)
                        ));
                    }
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(out.as_bytes()).expect("child: stdout");
                    stdout.flush().expect("child: flush");
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    })
    .expect("child executor");
}

struct Ack {
    len: usize,
    crc: u32,
    round: u32,
}

/// What the parent reads back from the log.
struct Snapshot {
    lowest: u64,
    next: u64,
    /// Each offset's value, or why it could not be read.
    records: Vec<(u64, Result<Bytes, String>)>,
}

fn read_back(root: &Path) -> Snapshot {
    let dir = log_dir(root);
    engine::run_local(root, move || async move {
        let log = Log::open(&dir, config(), FileBudget::new(4))
            .await
            .expect("parent: reopen after kill");
        // A kill between a segment's making and its record in `segments.meta` (segments
        // of 64 KiB roll often here) is never taken for a deletion.
        assert_eq!(
            log.lost().expect("parent: lost.meta"),
            None,
            "a kill marked the log lost"
        );
        let (lowest, next) = (log.lowest_offset(), log.next_offset());
        let mut records = Vec::with_capacity((next - lowest) as usize);
        let mut from = lowest;
        while from < next {
            let rs = match log.read_range(from, 100_000, 16 << 20).await {
                Ok(rs) => rs,
                Err(_) => {
                    // Read record by record so that the checks name the offsets that fail.
                    let r = log.read(from).await.map_err(|e| e.to_string());
                    records.push((from, r.map(|r| r.value)));
                    from += 1;
                    continue;
                }
            };
            assert!(
                !rs.is_empty(),
                "read_range({from}) returned nothing below next {next}"
            );
            for r in rs {
                assert_eq!(r.offset, from, "offsets are dense");
                from += 1;
                records.push((r.offset, Ok(r.value)));
            }
        }
        log.close().await.expect("parent: close");
        Snapshot {
            lowest,
            next,
            records,
        }
    })
    .expect("parent executor")
}

#[test]
fn kill_9_never_loses_acknowledged_records() {
    let seed = std::env::var("PROGLOG_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("PROGLOG_SEED must be a u64"))
        .unwrap_or_else(|| rand::random::<u64>() >> 1);
    let rounds: u32 = std::env::var("PROGLOG_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!("crash: seed {seed}, {rounds} rounds (replay with PROGLOG_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().expect("current_exe");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    let mut acked: BTreeMap<u64, Ack> = BTreeMap::new();
    let mut last_next = 0u64;
    let mut total_acks = 0usize;
    let started = Instant::now();
    for round in 0..rounds {
        let ctx = format!("seed {seed} round {round}");
        let delay = Duration::from_millis(rng.random_range(5..300));
        let stderr_path = root.join(format!("child-{round}.stderr"));
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                &common::test_name(module_path!(), CHILD_TEST),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &root)
            .env("PROGLOG_CRASH_ROUND", round.to_string())
            .env(
                "PROGLOG_CRASH_CHILD_SEED",
                (seed ^ u64::from(round)).to_string(),
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill has no newline: it was never acknowledged.
                    Ok(_) if line.last() == Some(&b'\n') => {
                        lines.push(String::from_utf8_lossy(&line).trim_end().to_owned())
                    }
                    Ok(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait for child");
        let lines = reader.join().expect("reader thread");
        {
            use std::os::unix::process::ExitStatusExt;
            if status.signal() != Some(9) {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("{ctx}: child was not killed but ended with {status}; its stderr:\n{err}\nits stdout:\n{}", lines.join("\n"));
            }
        }
        let mut opened = None;
        let mut round_acks = 0usize;
        for line in &lines {
            let line = match (line.find("OPEN "), line.starts_with("ACK ")) {
                (Some(i), _) => &line[i..],
                _ => line.as_str(),
            };
            let mut f = line.split_whitespace();
            match f.next() {
                Some("OPEN") => {
                    let n: u64 = f.next().and_then(|x| x.parse().ok()).expect("OPEN line");
                    assert_eq!(
                        n, last_next,
                        "{ctx}: the child opened the log at {n}, the parent left it at {last_next}"
                    );
                    opened = Some(n);
                }
                Some("ACK") => {
                    let v: Vec<u64> = f.map(|x| x.parse().expect("ACK field")).collect();
                    let (offset, len, crc) = (v[0], v[1] as usize, v[2] as u32);
                    assert!(offset >= last_next, "{ctx}: child acknowledged offset {offset} below where it started ({last_next})");
                    let prev = acked.insert(offset, Ack { len, crc, round });
                    assert!(prev.is_none(), "{ctx}: offset {offset} acknowledged twice");
                    round_acks += 1;
                }
                _ => {}
            }
        }
        if round_acks > 0 {
            assert!(opened.is_some(), "{ctx}: ACKs without OPEN");
        }
        total_acks += round_acks;

        let snap = read_back(&root);
        assert_eq!(snap.lowest, 0, "{ctx}: lowest offset");
        assert!(
            snap.next >= last_next,
            "{ctx}: the log shrank from {last_next} to {}",
            snap.next
        );
        if let Some((&max_ack, _)) = acked.last_key_value() {
            assert!(
                snap.next > max_ack,
                "{ctx}: offset {max_ack} was acknowledged but the log ends at {}",
                snap.next
            );
        }
        assert_eq!(snap.records.len() as u64, snap.next, "{ctx}: record count");
        let mut next_seq: HashMap<u32, u64> = HashMap::new();
        let unreadable: Vec<String> = snap
            .records
            .iter()
            .filter_map(|(o, r)| {
                let e = r.as_ref().err()?;
                let acked = match acked.get(o) {
                    Some(a) => format!("acknowledged in round {}", a.round),
                    None => "not acknowledged".to_string(),
                };
                Some(format!("offset {o} ({acked}): {e}"))
            })
            .collect();
        assert!(
            unreadable.is_empty(),
            "{ctx}: {} records cannot be read back:\n{}",
            unreadable.len(),
            unreadable.join("\n")
        );
        for (offset, value) in &snap.records {
            let value = value.as_ref().expect("checked above");
            let (writer, seq) = parse_value(value).unwrap_or_else(|| {
                panic!(
                    "{ctx}: record {offset} ({} bytes) does not hold a value a writer wrote",
                    value.len()
                )
            });
            let want = next_seq.entry(writer).or_default();
            assert_eq!(
                seq, *want,
                "{ctx}: record {offset}: writer {writer} sequence gap"
            );
            *want += 1;
            if let Some(a) = acked.get(offset) {
                assert_eq!(
                    (value.len(), crc32c::crc32c(value)),
                    (a.len, a.crc),
                    "{ctx}: acknowledged record {offset} (round {}) differs",
                    a.round
                );
            }
        }
        eprintln!(
            "{ctx}: killed after {delay:?}: {round_acks} acks, log [0, {}) (+{} unacknowledged survivors)",
            snap.next,
            snap.next - last_next - round_acks as u64
        );
        last_next = snap.next;
    }
    println!(
        "crash: seed {seed}: {rounds} rounds, {total_acks} acknowledged records, {last_next} in the log, {:?}",
        started.elapsed()
    );
    assert!(total_acks > 0, "no child ever acknowledged a record");
}
