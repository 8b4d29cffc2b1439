//! The envelope of every gossip datagram: a small header, the body, and (with a cluster key)
//! a truncated HMAC-SHA256 tag. Layout (little-endian), also in docs/format.md:
//!
//! ```text
//!  0  2   magic      0x50 0x4D ("PM": proglog membership)
//!  2  1   version    1
//!  3  1   kind       1 = SWIM (foca message), 2 = RPC address query, 3 = RPC address answer
//!  4  4   key_id     u32: 0 = not authenticated; else the first 4 bytes of SHA-256(key)
//!  8  n   body
//!  8+n 16 tag        HMAC-SHA256(key, bytes 0 .. 8+n), first 16 bytes; only when key_id != 0
//! ```
//!
//! A node with a cluster key accepts SWIM packets only under that key; a node without one
//! accepts only unauthenticated ones. Queries and answers are never authenticated: they carry
//! nothing but the answering node's advertised RPC address (public: clients dial it), which a
//! joining node needs to fetch the key over the peer channel. An answer is never larger than
//! the query (which is padded), so the port cannot amplify a spoofed query.

use std::net::SocketAddr;

use super::key::GossipKey;

pub const MAGIC: [u8; 2] = *b"PM";
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 8;
pub const TAG_BYTES: usize = 16;

pub const KIND_SWIM: u8 = 1;
pub const KIND_QUERY: u8 = 2;
pub const KIND_ANSWER: u8 = 3;

/// Body of a query: an 8-byte nonce, then zero padding up to this size.
pub const QUERY_BODY_BYTES: usize = 64;
/// Longest address text in an answer ("[v6 address%scope]:port" fits).
const MAX_ADDR_TEXT: usize = QUERY_BODY_BYTES - 8 - 1;

/// Bytes the envelope adds to a SWIM payload at most.
pub const OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;

/// A datagram that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    Swim(&'a [u8]),
    Query { nonce: u64 },
    Answer { nonce: u64, rpc_addr: SocketAddr },
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not ours, truncated, or an unknown version or kind.
    Malformed(&'static str),
    /// A SWIM packet without the cluster's key: no key, another key, or a bad tag.
    Unauthenticated(&'static str),
}

fn header(kind: u8, key_id: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&key_id.to_le_bytes());
}

/// Wraps a foca message into `out`.
pub fn seal_swim(key: Option<&GossipKey>, payload: &[u8], out: &mut Vec<u8>) {
    header(KIND_SWIM, key.map_or(0, GossipKey::id), out);
    out.extend_from_slice(payload);
    if let Some(k) = key {
        let tag = k.sign(out);
        out.extend_from_slice(&tag.as_ref()[..TAG_BYTES]);
    }
}

pub fn query(nonce: u64, out: &mut Vec<u8>) {
    header(KIND_QUERY, 0, out);
    out.extend_from_slice(&nonce.to_le_bytes());
    out.resize(HEADER_BYTES + QUERY_BODY_BYTES, 0);
}

pub fn answer(nonce: u64, rpc_addr: SocketAddr, out: &mut Vec<u8>) {
    let text = rpc_addr.to_string();
    header(KIND_ANSWER, 0, out);
    out.extend_from_slice(&nonce.to_le_bytes());
    // A socket address prints in at most 47 bytes; the check keeps the no-amplification
    // promise even if that ever changed.
    let text = if text.len() <= MAX_ADDR_TEXT {
        text
    } else {
        String::new()
    };
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// Checks and unwraps a datagram.
pub fn open<'a>(key: Option<&GossipKey>, packet: &'a [u8]) -> Result<Opened<'a>, Rejected> {
    if packet.len() < HEADER_BYTES {
        return Err(Rejected::Malformed("shorter than the header"));
    }
    if packet[0..2] != MAGIC {
        return Err(Rejected::Malformed("bad magic"));
    }
    if packet[2] != VERSION {
        return Err(Rejected::Malformed("unknown version"));
    }
    let key_id = u32::from_le_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[HEADER_BYTES..];
    match packet[3] {
        KIND_SWIM => match (key, key_id) {
            (None, 0) => Ok(Opened::Swim(body)),
            (None, _) => Err(Rejected::Unauthenticated(
                "authenticated packet, but this node has no gossip key",
            )),
            (Some(_), 0) => Err(Rejected::Unauthenticated("packet without authentication")),
            (Some(k), id) if id != k.id() => Err(Rejected::Unauthenticated(
                "packet under another cluster's key",
            )),
            (Some(k), _) => {
                if body.len() < TAG_BYTES {
                    return Err(Rejected::Malformed("shorter than its tag"));
                }
                let split = packet.len() - TAG_BYTES;
                if k.verify(&packet[..split], &packet[split..]) {
                    Ok(Opened::Swim(&packet[HEADER_BYTES..split]))
                } else {
                    Err(Rejected::Unauthenticated("bad tag"))
                }
            }
        },
        KIND_QUERY => {
            if key_id != 0 || body.len() != QUERY_BODY_BYTES {
                return Err(Rejected::Malformed("bad query"));
            }
            Ok(Opened::Query {
                nonce: u64_at(body),
            })
        }
        KIND_ANSWER => {
            if key_id != 0 || body.len() < 9 || body.len() != 9 + body[8] as usize {
                return Err(Rejected::Malformed("bad answer"));
            }
            let rpc_addr = std::str::from_utf8(&body[9..])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Rejected::Malformed("answer without an address"))?;
            Ok(Opened::Answer {
                nonce: u64_at(body),
                rpc_addr,
            })
        }
        _ => Err(Rejected::Malformed("unknown kind")),
    }
}

fn u64_at(b: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[..8]);
    u64::from_le_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swim_round_trips_with_and_without_a_key() {
        let mut out = Vec::new();
        seal_swim(None, b"payload", &mut out);
        assert_eq!(open(None, &out), Ok(Opened::Swim(b"payload")));
        let k = GossipKey::generate().unwrap();
        assert!(matches!(
            open(Some(&k), &out),
            Err(Rejected::Unauthenticated(_))
        ));
        seal_swim(Some(&k), b"payload", &mut out);
        assert_eq!(out.len(), b"payload".len() + OVERHEAD_BYTES);
        assert_eq!(open(Some(&k), &out), Ok(Opened::Swim(b"payload")));
        assert!(matches!(
            open(None, &out),
            Err(Rejected::Unauthenticated(_))
        ));
        let other = GossipKey::generate().unwrap();
        assert!(matches!(
            open(Some(&other), &out),
            Err(Rejected::Unauthenticated(_))
        ));
        // Every single-bit flip is caught.
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert!(open(Some(&k), &bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn answers_are_never_larger_than_queries() {
        let mut q = Vec::new();
        query(7, &mut q);
        assert_eq!(open(None, &q), Ok(Opened::Query { nonce: 7 }));
        let mut a = Vec::new();
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        answer(7, longest, &mut a);
        assert!(a.len() <= q.len(), "{} > {}", a.len(), q.len());
        assert_eq!(
            open(None, &a),
            Ok(Opened::Answer {
                nonce: 7,
                rpc_addr: longest
            })
        );
    }

    #[test]
    fn garbage_is_rejected_never_panics() {
        let k = GossipKey::generate().unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..300 {
            let mut p = vec![0u8; len];
            for b in p.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if len >= 4 && len % 3 == 0 {
                p[0..2].copy_from_slice(&MAGIC);
                p[2] = VERSION;
                p[3] = (len % 4) as u8;
            }
            let _ = open(Some(&k), &p);
            let _ = open(None, &p);
        }
    }
}
