//! Seeded mutation tests of every decoder of bytes read from disk or received from another
//! node: valid encodings made with the crate's own encoders, then mutated many thousands of
//! times (bit flips, bytes set to 0x00, 0xFF or random, truncations, appended garbage,
//! length fields set to huge or zero values, splices of two valid inputs) and random bytes.
//! A decoder returns an error or a value, never panics; a value it decodes from mutated bytes
//! encodes and decodes again to itself.
//!
//! The seed is printed and `PROGLOG_SEED=<n>` replays it. `PROGLOG_FUZZ_ITERS=<n>` runs `n`
//! mutations per decoder, `PROGLOG_FUZZ_ITERS=<k>x` `k` times the default.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) use engine::mutator::{iterations, Mutator};

use crate::codec::{self, FrameDecoder};
use crate::observe::TraceContext;
use bytes::Bytes;
use proto::log::v1 as pb;

fn messages(rng: &mut StdRng) -> Vec<Vec<u8>> {
    use prost::Message as _;
    let record = |rng: &mut StdRng| pb::Record {
        value: Bytes::from(vec![rng.random::<u8>(); rng.random_range(0..40)]),
        offset: rng.random(),
        term: rng.random_range(0..9),
        r#type: rng.random_range(0..3),
        timestamp_ms: rng.random(),
    };
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(
            pb::ProduceRequest {
                record: Some(record(rng)),
                topic: "orders".into(),
                partition: rng.random_range(0..4),
            }
            .encode_to_vec(),
        );
        out.push(
            pb::ProduceBatchRequest {
                topic: "orders".into(),
                partition: 1,
                records: (0..rng.random_range(0..4)).map(|_| record(rng)).collect(),
            }
            .encode_to_vec(),
        );
    }
    out
}

/// gRPC messages (5-byte prefix: flag, big-endian length) arriving in DATA chunks cut
/// anywhere, and the prost messages they carry.
#[test]
fn grpc_frames_never_panic() {
    use prost::Message as _;
    let mut m = Mutator::new();
    let msgs = messages(&mut m.rng);
    let corpus: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let mut wire = Vec::new();
            for msg in msgs.iter().skip(i).take(1 + i % 3) {
                wire.extend_from_slice(&codec::encode_frame(msg, 1 << 20).expect("frames"));
            }
            wire
        })
        .collect();
    let mut cut = StdRng::seed_from_u64(m.rng.random());
    m.run("grpc frames", &corpus, iterations(200_000), |b| {
        let max = [0, 16, 1 << 20][cut.random_range(0..3)];
        let mut d = FrameDecoder::new(max);
        let mut rest = b;
        let mut got = Vec::new();
        'stream: while !rest.is_empty() {
            let n = cut.random_range(1..=rest.len());
            if cut.random_bool(0.5) {
                d.push(&rest[..n]);
            } else {
                d.push_bytes(Bytes::copy_from_slice(&rest[..n]));
            }
            rest = &rest[n..];
            loop {
                match d.next_message() {
                    Ok(Some(msg)) => got.push(msg),
                    Ok(None) => break,
                    Err(_) => break 'stream,
                }
            }
            if d.pending_len().is_some() {
                d.reserve_pending();
            }
        }
        let _ = d.finish();
        for msg in got {
            assert!(msg.len() <= max);
            // Each message framed again decodes to itself.
            let mut d = FrameDecoder::new(max);
            d.push(&codec::encode_frame(&msg, max).expect("fits"));
            assert_eq!(d.next_message().ok().flatten(), Some(msg.clone()));
            d.finish().expect("whole");
            if let Ok(r) = codec::decode::<pb::ProduceBatchRequest>(msg.clone()) {
                let again = Bytes::from(r.encode_to_vec());
                assert_eq!(
                    codec::decode::<pb::ProduceBatchRequest>(again).ok(),
                    Some(r)
                );
            }
            if let Ok(r) = codec::decode::<pb::ProduceRequest>(msg.clone()) {
                let again = Bytes::from(r.encode_to_vec());
                assert_eq!(codec::decode::<pb::ProduceRequest>(again).ok(), Some(r));
            }
            let _ = codec::decode_response::<pb::CreateTopicRequest>(msg);
        }
    });
}

/// A length prefix of 4 GiB is refused from the header alone, before its bytes are awaited
/// or room is made for them.
#[test]
fn a_huge_grpc_length_is_refused_at_once() {
    let mut d = FrameDecoder::new(4 << 20);
    d.push(&[0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
    assert!(d.next_message().is_err());
    assert_eq!(d.pending_len(), None);
}

/// Request headers: `grpc-timeout`, `traceparent`, and the status trailers a client reads.
#[test]
fn request_headers_never_panic() {
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = [
        &b"1H"[..],
        b"99999999n",
        b"250m",
        b"30S",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",
        b"0",
        b"naive%20%E2%98%83%0A",
        b"AAECAw",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    m.run("request headers", &corpus, iterations(100_000), |b| {
        if let Some(d) = codec::parse_timeout(b) {
            let again = codec::parse_timeout(codec::format_timeout(d).as_bytes()).expect("parses");
            assert!(again >= d);
        }
        if let Some(t) = TraceContext::from_traceparent(b) {
            let again = TraceContext::from_traceparent(t.traceparent().as_bytes()).expect("parses");
            assert_eq!(again.trace_id_hex(), t.trace_id_hex());
        }
        let text = crate::percent_decode(b);
        assert_eq!(
            crate::percent_decode(crate::percent_encode(&text).as_bytes()),
            text
        );
        if let Ok(v) = http::HeaderValue::from_bytes(b) {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", v.clone());
            h.insert("grpc-message", v.clone());
            h.insert("grpc-status-details-bin", v.clone());
            h.insert("traceparent", v);
            let st = crate::Status::from_headers(&h).expect("a status");
            let mut again = http::HeaderMap::new();
            st.write_headers(&mut again);
            let back = crate::Status::from_headers(&again).expect("a status");
            assert_eq!((back.code, &back.details), (st.code, &st.details));
            let _ = TraceContext::from_headers(&h);
        }
    });
}

/// Peer-channel frames (u32 LE length counting the kind byte, kind, payload).
#[test]
fn peer_frames_never_panic() {
    let mut m = Mutator::new();
    let corpus: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let mut out = Vec::new();
            for j in 0..=i % 3 {
                let payload = vec![j as u8; m.rng.random_range(0..40)];
                crate::peer::put_frame(&mut out, m.rng.random(), &payload).expect("frames");
            }
            out
        })
        .collect();
    m.run("peer frames", &corpus, iterations(200_000), |b| {
        let mut r = b;
        for _ in 0..8 {
            let f = futures_lite::future::block_on(crate::peer::read_frame(&mut r, 1 << 16));
            let Ok(Some(f)) = f else {
                break;
            };
            let mut again = Vec::new();
            crate::peer::put_frame(&mut again, f.kind, &f.payload).expect("frames");
            let mut a = &again[..];
            let back = futures_lite::future::block_on(crate::peer::read_frame(&mut a, 1 << 16));
            assert_eq!(back.ok().flatten(), Some(f));
        }
    });
}

/// A peer frame announcing 4 GiB is refused before anything is allocated for it.
#[test]
fn a_huge_peer_frame_is_refused_at_once() {
    let mut r = &[0xFFu8, 0xFF, 0xFF, 0xFF, 7, 1, 2][..];
    let f = futures_lite::future::block_on(crate::peer::read_frame(&mut r, 1 << 20));
    assert!(matches!(f, Err(crate::peer::FrameError::TooLarge { .. })));
}

/// HTTP/2 frame headers in the bytes a connection reads and writes (the memory accounting
/// follows them).
#[test]
fn h2_frame_scans_never_panic() {
    let mut m = Mutator::new();
    let frame = |kind: u8, stream: u32, payload: &[u8]| {
        let mut b = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        b.push(kind);
        b.push(0);
        b.extend_from_slice(&stream.to_be_bytes());
        b.extend_from_slice(payload);
        b
    };
    let corpus: Vec<Vec<u8>> = vec![
        [frame(0, 1, b"hello"), frame(3, 1, &[0, 0, 0, 8])].concat(),
        [
            frame(4, 0, &[]),
            frame(0, 3, &[7; 100]),
            frame(1, 5, b"hdr"),
        ]
        .concat(),
    ];
    let mut cut = StdRng::seed_from_u64(m.rng.random());
    m.run("h2 frame scan", &corpus, iterations(200_000), |b| {
        let mut scan = crate::server::metered::FrameScan::new(cut.random_range(0..30));
        let mut data = 0usize;
        let mut rest = b;
        while !rest.is_empty() {
            let n = cut.random_range(1..=rest.len());
            scan.scan(&rest[..n], |s| {
                if let crate::server::metered::Seen::Data { n, .. } = s {
                    data += n;
                }
            });
            rest = &rest[n..];
        }
        assert!(data <= b.len());
    });
}
