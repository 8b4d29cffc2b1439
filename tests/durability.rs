//! Every durability policy survives kill -9: rounds of load against the real binary, killed
//! with SIGKILL at a random moment, restarted on the same directory. After every restart,
//! every acknowledged record is there with its value, and every record a consumer read is
//! still at its offset (an offset a consumer saw is never handed out again).
//!
//! Under `interval` and `never` a record is acknowledged (and shown to readers) once its
//! write to the data file completed, so a crash of the process cannot take it back; only an
//! OS crash or power loss can (see `log.proto`).
//!
//! Seeded: the seed is printed, `PROGLOG_SEED=<n>` replays the kill times;
//! `PROGLOG_KILL_ROUNDS=<n>` runs more rounds per policy (default 3).

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use net::blocking::BlockingChannel;
use net::client::CallOptions;
use proto::log::v1::*;

const PRODUCERS: usize = 3;

/// What clients learned: offset -> value, for acknowledged and for consumed records.
#[derive(Default)]
struct Seen {
    acked: BTreeMap<u64, Vec<u8>>,
    consumed: BTreeMap<u64, Vec<u8>>,
}

fn seed() -> u64 {
    std::env::var("PROGLOG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// splitmix64, for the kill delays.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn short() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(5))
}

/// Checks what the restarted server holds against what clients saw before.
fn verify(s: &TestServer, seen: &Seen, policy: &str) {
    let ch = s.channel();
    let mut offset = 0u64;
    let mut log = BTreeMap::new();
    loop {
        let r: ConsumeBatchResponse = ch
            .unary_prost(
                paths::CONSUME_BATCH,
                &ConsumeBatchRequest {
                    offset,
                    ..Default::default()
                },
                opts(),
            )
            .expect("read back");
        if r.records.is_empty() {
            break;
        }
        for rec in r.records {
            log.insert(rec.offset, rec.value.to_vec());
        }
        offset = r.next_offset;
    }
    for (what, map) in [("acknowledged", &seen.acked), ("consumed", &seen.consumed)] {
        for (off, v) in map {
            match log.get(off) {
                None => panic!(
                    "{policy}: {what} offset {off} ({}) is gone after kill -9",
                    String::from_utf8_lossy(v)
                ),
                Some(got) => assert_eq!(
                    got,
                    v,
                    "{policy}: offset {off} was {what} as {:?}, now holds {:?}",
                    String::from_utf8_lossy(v),
                    String::from_utf8_lossy(got)
                ),
            }
        }
    }
}

/// Produces until `stop` or the server dies, recording what was acknowledged.
fn producer(ch: BlockingChannel, tag: String, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let value = format!("{tag}-{i}");
        let r: Result<ProduceResponse, _> = ch.unary_prost(
            paths::PRODUCE,
            &ProduceRequest {
                record: record(value.clone()),
                ..Default::default()
            },
            short(),
        );
        match r {
            Ok(r) => {
                let prev = seen
                    .lock()
                    .expect("lock")
                    .acked
                    .insert(r.offset, value.into_bytes());
                assert!(prev.is_none(), "offset {} acknowledged twice", r.offset);
            }
            Err(_) => return,
        }
        i += 1;
    }
}

/// Tails the partition from `from`, recording what it read.
fn consumer(ch: BlockingChannel, from: u64, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut offset = from;
    while !stop.load(Ordering::Relaxed) {
        let r: Result<ConsumeBatchResponse, _> = ch.unary_prost(
            paths::CONSUME_BATCH,
            &ConsumeBatchRequest {
                offset,
                ..Default::default()
            },
            short(),
        );
        let Ok(r) = r else { return };
        if r.records.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let mut s = seen.lock().expect("lock");
        for rec in r.records {
            s.consumed.insert(rec.offset, rec.value.to_vec());
        }
        offset = r.next_offset;
    }
}

fn rounds_under(policy: &str, rounds: usize, rng: &mut u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let extra = ["--durability", policy];
    let seen = Arc::new(Mutex::new(Seen::default()));
    for round in 0..rounds {
        let mut s = TestServer::start_in(&dir, &extra);
        verify(&s, &seen.lock().expect("lock"), policy);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..PRODUCERS {
            let (ch, seen, stop) = (s.channel(), seen.clone(), stop.clone());
            let tag = format!("{policy}-r{round}-w{w}");
            threads.push(std::thread::spawn(move || producer(ch, tag, seen, stop)));
        }
        let from = seen
            .lock()
            .expect("lock")
            .consumed
            .keys()
            .next_back()
            .map_or(0, |o| o + 1);
        {
            let (ch, seen, stop) = (s.channel(), seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || consumer(ch, from, seen, stop)));
        }
        // Under load for 150-650 ms, then SIGKILL.
        let load_ms = 150 + next(rng) % 500;
        let until = Instant::now() + Duration::from_millis(load_ms);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        s.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("client thread");
        }
        let s = seen.lock().expect("lock");
        println!(
            "{policy} round {round}: killed after {load_ms} ms; {} acknowledged, {} consumed so far",
            s.acked.len(),
            s.consumed.len()
        );
    }
    let s = TestServer::start_in(&dir, &extra);
    let seen = seen.lock().expect("lock");
    verify(&s, &seen, policy);
    assert!(!seen.acked.is_empty() && !seen.consumed.is_empty());
}

#[test]
fn every_policy_survives_kill_9() {
    let seed = seed();
    println!("seed {seed} (PROGLOG_SEED={seed} replays the kill times)");
    let rounds = std::env::var("PROGLOG_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut rng = seed;
    for policy in ["always", "interval:50", "never"] {
        rounds_under(policy, rounds, &mut rng);
    }
}
