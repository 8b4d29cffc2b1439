//! Record values the bench writes: a header that identifies the record and a body derived
//! from it, so any record read back can be checked on its own.
//!
//! Layout (little-endian):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..4   | magic `PLB1`                                                 |
//! | 4..8   | run id (random per run: records of other runs are ignored)   |
//! | 8..12  | lane id (the producer)                                       |
//! | 12..20 | sequence number within the lane                              |
//! | 20..28 | intended send time, ns since the run's epoch                 |
//! | 28..32 | CRC-32C of bytes 0..28 and of the body                       |
//! | 32..   | body: a window of the run's pattern chosen by the sequence   |
//!
//! The body comes from a shared pattern rather than a PRNG per record so that generating
//! 400 MB/s of values costs a memcpy, not the bench's whole core.

use bytes::{BufMut, Bytes, BytesMut};

pub const HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"PLB1";
/// Offsets into the pattern cycle over this many positions.
const PATTERN_SLACK: usize = 4096;

/// The bytes every body is cut from; the same for every lane of a run.
#[derive(Clone)]
pub struct Pattern {
    bytes: Bytes,
}

impl Pattern {
    pub fn new(run_id: u32, max_record: usize) -> Pattern {
        let mut v = vec![0u8; max_record + PATTERN_SLACK];
        crate::Rng::new(u64::from(run_id) ^ 0x005e_edf0_b0d1).fill(&mut v);
        Pattern { bytes: v.into() }
    }

    fn body(&self, lane: u32, seq: u64, len: usize) -> &[u8] {
        let start = (seq.wrapping_mul(4099).wrapping_add(u64::from(lane) * 31)
            % PATTERN_SLACK as u64) as usize;
        &self.bytes[start..start + len]
    }
}

/// What a stamped record says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run_id: u32,
    pub lane: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Why a value failed its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not one of ours (no magic): someone else's record.
    Foreign,
    Checksum,
    Body,
}

/// Builds a value of `len` bytes. Values shorter than the header carry only pattern bytes
/// (allowed when neither verification nor end-to-end latency needs the stamp).
pub fn build(pattern: &Pattern, stamp: Stamp, len: usize) -> Bytes {
    if len < HEADER_LEN {
        return pattern.bytes.slice(0..len);
    }
    let mut b = BytesMut::with_capacity(len);
    put(&mut b, pattern, stamp, len, false);
    b.freeze()
}

/// Appends the value [`build`] makes to `out` (a buffer the values of one request share:
/// one allocation per request, not per record); `corrupt` flips its last byte after the
/// checksum, as [`build_corrupt`] does.
pub fn put(out: &mut BytesMut, pattern: &Pattern, stamp: Stamp, len: usize, corrupt: bool) {
    if len < HEADER_LEN {
        out.put_slice(&pattern.bytes[..len]);
    } else {
        let start = out.len();
        out.put_slice(MAGIC);
        out.put_u32_le(stamp.run_id);
        out.put_u32_le(stamp.lane);
        out.put_u64_le(stamp.seq);
        out.put_u64_le(stamp.sent_ns);
        let body = pattern.body(stamp.lane, stamp.seq, len - HEADER_LEN);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 28]), body);
        out.put_u32_le(crc);
        out.put_slice(body);
    }
    if corrupt && len > 0 {
        let last = out.len() - 1;
        out[last] ^= 0xff;
    }
}

/// Like [`build`], with one body byte flipped after the checksum was computed.
pub fn build_corrupt(pattern: &Pattern, stamp: Stamp, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    put(&mut b, pattern, stamp, len, true);
    b.freeze()
}

fn u32_at(v: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&v[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(v: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&v[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the header without checking the rest (cheap: for latency stamps).
pub fn peek(v: &[u8]) -> Option<Stamp> {
    if v.len() < HEADER_LEN || &v[..4] != MAGIC {
        return None;
    }
    Some(Stamp {
        run_id: u32_at(v, 4),
        lane: u32_at(v, 8),
        seq: u64_at(v, 12),
        sent_ns: u64_at(v, 20),
    })
}

/// Checks the checksum and, when `pattern` is given, the body against the sequence.
pub fn check(v: &[u8], pattern: Option<&Pattern>) -> Result<Stamp, Bad> {
    let stamp = peek(v).ok_or(Bad::Foreign)?;
    let body = &v[HEADER_LEN..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&v[..28]), body);
    if crc != u32_at(v, 28) {
        return Err(Bad::Checksum);
    }
    if let Some(p) = pattern {
        if body.len() + PATTERN_SLACK > p.bytes.len()
            || p.body(stamp.lane, stamp.seq, body.len()) != body
        {
            return Err(Bad::Body);
        }
    }
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_appends_what_build_makes() {
        let p = Pattern::new(9, 2048);
        let mut out = BytesMut::new();
        let mut want = Vec::new();
        for (seq, len) in [(0u64, 100usize), (1, 5), (2, 32), (3, 1024)] {
            let s = Stamp {
                run_id: 9,
                lane: 2,
                seq,
                sent_ns: 77 + seq,
            };
            put(&mut out, &p, s, len, false);
            want.extend_from_slice(&build(&p, s, len));
        }
        let s = Stamp {
            run_id: 9,
            lane: 2,
            seq: 4,
            sent_ns: 0,
        };
        put(&mut out, &p, s, 64, true);
        want.extend_from_slice(&build_corrupt(&p, s, 64));
        assert_eq!(&out[..], &want[..]);
        assert_eq!(check(&out[out.len() - 64..], None), Err(Bad::Checksum));
    }

    #[test]
    fn roundtrip_and_faults() {
        let p = Pattern::new(7, 2048);
        let s = Stamp {
            run_id: 7,
            lane: 3,
            seq: 99,
            sent_ns: 12345,
        };
        let v = build(&p, s, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(check(&v, Some(&p)), Ok(s));
        assert_eq!(
            check(&build_corrupt(&p, s, 100), Some(&p)),
            Err(Bad::Checksum)
        );
        assert_eq!(check(b"hello", None), Err(Bad::Foreign));
        assert_eq!(build(&p, s, 10).len(), 10);
        // Another sequence's body under this header fails even with a valid checksum.
        let other = build(&p, Stamp { seq: 100, ..s }, 100);
        let mut forged = BytesMut::from(&v[..HEADER_LEN]);
        forged.put_slice(&other[HEADER_LEN..]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&forged[..28]), &forged[HEADER_LEN..]);
        forged[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check(&forged, Some(&p)), Err(Bad::Body));
    }
}
