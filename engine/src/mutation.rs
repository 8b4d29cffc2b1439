//! Seeded mutation tests of every decoder of bytes read from disk or received from another
//! node: valid encodings made with the crate's own encoders, then mutated many thousands of
//! times (bit flips, bytes set to 0x00, 0xFF or random, truncations, appended garbage,
//! length fields set to huge or zero values, splices of two valid inputs) and random bytes.
//! A decoder returns an error or a value, never panics; a value it decodes from mutated bytes
//! encodes and decodes again to itself.
//!
//! The seed is printed and `PROGLOG_SEED=<n>` replays it. `PROGLOG_FUZZ_ITERS=<n>` runs `n`
//! mutations per decoder, `PROGLOG_FUZZ_ITERS=<k>x` `k` times the default.

use crate::batch::{self, Kind, NewRecord, Parsed, Stamp, HEADER_LEN};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) use crate::mutator::{iterations, Mutator};

fn records(rng: &mut StdRng) -> Vec<NewRecord> {
    (0..rng.random_range(1..6))
        .map(|_| NewRecord {
            value: Bytes::from(
                (0..rng.random_range(0..3) * rng.random_range(0..24))
                    .map(|_| rng.random::<u8>())
                    .collect::<Vec<u8>>(),
            ),
            rtype: rng.random_range(0..3),
        })
        .collect()
}

fn stamp(rng: &mut StdRng, kind: Kind) -> Stamp {
    let raft_index = rng.random_range(1..1000);
    Stamp {
        kind,
        base_offset: rng.random_range(0..1_000_000),
        term: rng.random_range(1..9),
        raft_index,
        commit_index: rng.random_range(0..=raft_index),
        timestamp_ms: rng.random(),
    }
}

/// Valid stored batches of every kind.
pub(crate) fn batches(rng: &mut StdRng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut out = Vec::new();
            match i % 4 {
                0 | 1 => batch::encode_into(&mut out, &stamp(rng, Kind::Data), &records(rng)),
                2 => batch::encode_with_payload(&mut out, &stamp(rng, Kind::NoOp), 0, &[]),
                _ => {
                    let kind = [Kind::ConfChange, Kind::Controller][rng.random_range(0..2)];
                    let data: Vec<u8> =
                        (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                    batch::encode_with_payload(&mut out, &stamp(rng, kind), 0, &data)
                }
            }
            out
        })
        .collect()
}

/// Makes the batch at the start of `b` pass its CRC again after a mutation, so the decoders
/// behind the check see mutated headers and payloads too.
pub(crate) fn reseal(b: &mut [u8]) {
    if b.len() >= HEADER_LEN {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..batch::OFF_CRC]), &b[HEADER_LEN..]);
        b[batch::OFF_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A parsed, checked batch's records, re-encoded and decoded again.
fn records_round_trip(h: &batch::Header, bytes: &Bytes) {
    let Some(records) = batch::decode_records(h, bytes) else {
        return;
    };
    if !h.is_data() {
        assert!(records.is_empty());
        return;
    }
    assert_eq!(records.len(), h.record_count as usize);
    let new: Vec<NewRecord> = records
        .iter()
        .map(|r| NewRecord {
            value: r.value.clone(),
            rtype: r.rtype,
        })
        .collect();
    let mut again = Vec::new();
    batch::encode_into(&mut again, &h.stamp(), &new);
    let Parsed::Header(h2) = batch::parse_header(&again) else {
        panic!("a re-encoded batch does not parse");
    };
    assert!(batch::crc_ok(&h2, &again));
    let again = Bytes::from(again);
    assert_eq!(batch::decode_records(&h2, &again), Some(records));
}

#[test]
fn batches_never_panic() {
    let mut m = Mutator::new();
    let corpus = batches(&mut m.rng, 24);
    let mut resealed = 0usize;
    let mut decoded = 0usize;
    let iters = iterations(300_000);
    // Sealed again after the mutation half of the time: the CRC no longer hides the rest.
    let mut seal = StdRng::seed_from_u64(m.rng.random());
    m.run("batch", &corpus, iters, |input| {
        let mut b = input.to_vec();
        if seal.random() {
            reseal(&mut b);
            resealed += 1;
        }
        let header = match batch::parse_header(&b) {
            Parsed::Header(h) => h,
            Parsed::End | Parsed::Unsupported(_) | Parsed::Invalid(_) => return,
        };
        let _ = header.next_offset();
        let bytes = Bytes::from(b);
        // Whatever the CRC says, decoding the records (given any length) never panics.
        let _ = batch::decode_records(&header, &bytes);
        let _ = batch::decode_records(&header, &bytes.slice(..bytes.len().min(header.batch_len())));
        if bytes.len() >= header.batch_len() {
            let whole = bytes.slice(..header.batch_len());
            if batch::crc_ok(&header, &whole) {
                decoded += 1;
                records_round_trip(&header, &whole);
                let _ = batch::truncate_batch(&header, &whole, seal.random_range(0..4));
            }
        }
    });
    eprintln!("batch: {resealed} resealed, {decoded} passed the CRC and decoded");
}

/// `decode_records` sizes its vector from a header's record count: a count the bytes cannot
/// hold must not allocate for it.
#[test]
fn a_huge_record_count_allocates_nothing_for_it() {
    let mut out = Vec::new();
    batch::encode_into(&mut out, &Stamp::default(), &[NewRecord::new(&b"x"[..])]);
    let Parsed::Header(mut h) = batch::parse_header(&out) else {
        panic!("does not parse");
    };
    h.record_count = u32::MAX;
    assert_eq!(batch::decode_records(&h, &Bytes::from(out)), None);
}

/// A header whose base offset plus its record count passes u64::MAX is refused (its offsets
/// cannot be counted: `next_offset` overflowed).
#[test]
fn a_base_offset_at_the_end_of_u64_is_refused() {
    let mut out = Vec::new();
    let s = Stamp {
        base_offset: u64::MAX,
        ..Stamp::default()
    };
    batch::encode_into(&mut out, &s, &[NewRecord::new(&b"x"[..])]);
    assert_eq!(
        batch::parse_header(&out),
        Parsed::Invalid("base offset plus record count past u64::MAX")
    );
    let s = Stamp {
        base_offset: u64::MAX - 1,
        ..Stamp::default()
    };
    out.clear();
    batch::encode_into(&mut out, &s, &[NewRecord::new(&b"x"[..])]);
    assert!(matches!(batch::parse_header(&out), Parsed::Header(_)));
}

#[test]
fn chunks_from_elsewhere_never_panic() {
    use crate::seam::{Chunk, PastEnd, ReadLimits};
    let mut m = Mutator::new();
    let mut corpus = Vec::new();
    for _ in 0..16 {
        // Runs of consecutive batches, as a read returns them.
        let mut run = Vec::new();
        let mut offset = m.rng.random_range(0..1000u64);
        for i in 0..m.rng.random_range(1..5) {
            let mut s = stamp(&mut m.rng, if i % 3 == 2 { Kind::NoOp } else { Kind::Data });
            s.base_offset = offset;
            if s.kind == Kind::Data {
                let r = records(&mut m.rng);
                offset += r.len() as u64;
                batch::encode_into(&mut run, &s, &r);
            } else {
                batch::encode_with_payload(&mut run, &s, 0, &[]);
            }
        }
        corpus.push(run);
    }
    let mut seal = StdRng::seed_from_u64(m.rng.random());
    let iters = iterations(200_000);
    m.run("chunk", &corpus, iters, |input| {
        let mut b = input.to_vec();
        // Reseal every batch still found at its place.
        let mut at = 0;
        while seal.random_ratio(3, 4) && at + HEADER_LEN <= b.len() {
            let Parsed::Header(h) = batch::parse_header(&b[at..]) else {
                break;
            };
            let end = (at + h.batch_len()).min(b.len());
            reseal(&mut b[at..end]);
            at = end;
        }
        let split = seal.random_range(0..=b.len());
        let bytes = Bytes::from(b);
        let runs = vec![bytes.slice(..split), bytes.slice(split..)];
        let from = seal.random_range(0..1100);
        let chunk = Chunk::from_remote(
            runs,
            from,
            [u64::MAX, from + seal.random_range(0..50)][seal.random_range(0..2)],
            ReadLimits {
                max_records: seal.random_range(1..100),
                max_bytes: seal.random_range(1..10_000),
                past_end: PastEnd::Empty,
            },
            "mutated",
        );
        for r in chunk.records().take(1000) {
            if r.is_err() {
                break;
            }
        }
    });
}

#[test]
fn meta_files_never_panic() {
    let mut m = Mutator::new();
    let path = std::path::Path::new("x.meta");
    let corpus: Vec<Vec<u8>> = [&b""[..], b"a", b"{\"version\":1}", &[7u8; 300]]
        .iter()
        .map(|p| crate::meta::encode(p))
        .collect();
    m.run("meta", &corpus, iterations(300_000), |b| {
        if let Ok(payload) = crate::meta::decode(path, b) {
            assert_eq!(crate::meta::encode(payload), b);
        }
    });
}

#[test]
fn a_meta_file_with_a_huge_length_is_refused() {
    let mut b = crate::meta::encode(b"abc");
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(crate::meta::decode(std::path::Path::new("x.meta"), &b).is_err());
}

#[test]
fn index_entries_never_panic() {
    use crate::index::{Entry, ENTRY_LEN};
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = (0..8)
        .map(|_| {
            (0..m.rng.random_range(1..6))
                .flat_map(|_| {
                    Entry {
                        relative_offset: m.rng.random(),
                        position: m.rng.random(),
                        term: m.rng.random(),
                        raft_index: m.rng.random(),
                    }
                    .encode()
                })
                .collect()
        })
        .collect();
    m.run("index", &corpus, iterations(300_000), |b| {
        for i in 0..=b.len() / ENTRY_LEN + 1 {
            let Some(e) = Entry::decode(b.get(i * ENTRY_LEN..).unwrap_or(&[])) else {
                assert!(b.len() < (i + 1) * ENTRY_LEN);
                continue;
            };
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
    });
}

/// The JSON payloads of `catalog.meta` and `partition.meta`, and their checks.
#[test]
fn catalog_and_partition_marks_never_panic() {
    let mut m = Mutator::new();
    let path = std::path::Path::new("catalog.meta");
    let entry = |held| crate::catalog::TopicEntry {
        partitions: 3,
        config: crate::config::LogConfig::default(),
        held,
    };
    let catalog = crate::catalog::Catalog {
        version: crate::catalog::VERSION,
        topics: [
            ("orders".to_owned(), entry(Some(vec![0, 2]))),
            ("b".to_owned(), entry(None)),
        ]
        .into_iter()
        .collect(),
    };
    let catalog = serde_json::to_vec(&catalog).expect("encodes");
    assert!(crate::catalog::decode(path, &catalog).is_ok());
    let mut corpus = vec![catalog, br#"{"version":1,"topics":{}}"#.to_vec()];
    let mark = br#"{"version":1,"topic":"orders","partition":2}"#;
    corpus.push(mark.to_vec());
    m.run("catalog", &corpus, iterations(100_000), |b| {
        if let Ok(c) = crate::catalog::decode(path, b) {
            let again = serde_json::to_vec(&c).expect("encodes");
            let c2 = crate::catalog::decode(path, &again).expect("decodes again");
            assert_eq!(serde_json::to_vec(&c2).expect("encodes"), again);
        }
        let _ = crate::catalog::decode_partition_mark(path, b, "orders", 2);
    });
}
