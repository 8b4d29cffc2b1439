//! Record batches: the unit in which records travel to and from the data file, and (format
//! version 2) one Raft entry each.
//!
//! Byte layout (little-endian), documented in `docs/format.md`:
//!
//! ```text
//! header, HEADER_LEN = 64 bytes
//!   0  u32  magic          0x474F4C50 ("PLOG")
//!   4  u8   version        2
//!   5  u8   kind           0 data, 1 no-op, 2 configuration change, 3 controller command
//!   6  u16  header_len     64
//!   8  u64  base_offset    offset of the first record; of a control batch: the next data offset
//!  16  u64  term           Raft term of the entry
//!  24  u64  raft_index     Raft index of the entry (one batch = one entry)
//!  32  u64  commit_index   the commit index its writer knew, at most raft_index and at most
//!                          the last index its log had synced (0: unknown)
//!  40  i64  timestamp_ms   append time, Unix milliseconds (set by the proposer)
//!  48  u32  record_count   >= 1 for data, 0 for every other kind
//!  52  u32  payload_len    bytes that follow the header
//!  56  u32  reserved       0
//!  60  u32  crc32c         over bytes 0..60 of the header, then the payload
//! payload of a data batch: record_count records, each
//!   0  u32  value_len
//!   4  u32  type
//!   8  value_len bytes of value
//! payload of a control batch: the entry's data, opaque to the engine
//! ```
//!
//! The checksum covers the header's first 60 bytes and then the payload, in that order, so a
//! payload's CRC computed on one core can be combined (crc32c combine) with the header's on the
//! core that stamps offsets and indexes, without reading the payload twice.
//!
//! Version 1 (48-byte headers, before replication) is recognised and refused with an error that
//! names it (`Parsed::Unsupported`), never misread nor cut off as a torn tail.

use bytes::Bytes;

pub const MAGIC: u32 = 0x474F_4C50;
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 64;
pub const RECORD_OVERHEAD: usize = 8;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 4;
const OFF_KIND: usize = OFF_VERSION + 1;
const OFF_HEADER_LEN: usize = OFF_KIND + 1;
const OFF_BASE: usize = OFF_HEADER_LEN + 2;
const OFF_TERM: usize = OFF_BASE + 8;
const OFF_RAFT_INDEX: usize = OFF_TERM + 8;
const OFF_COMMIT: usize = OFF_RAFT_INDEX + 8;
const OFF_TIMESTAMP: usize = OFF_COMMIT + 8;
const OFF_COUNT: usize = OFF_TIMESTAMP + 8;
const OFF_PAYLOAD_LEN: usize = OFF_COUNT + 4;
const OFF_RESERVED: usize = OFF_PAYLOAD_LEN + 4;
/// The checksum's position: it covers the header bytes before it, then the payload.
pub const OFF_CRC: usize = OFF_RESERVED + 4;
const _: () = assert!(OFF_CRC + 4 == HEADER_LEN);

/// What a batch holds. Only data batches hold records; the others are Raft entries that take
/// a Raft index but no offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Data = 0,
    /// An empty entry (a new leader's first entry).
    NoOp = 1,
    /// A Raft configuration change (ConfChangeV2 in the payload).
    ConfChange = 2,
    /// A command of the cluster controller's state machine.
    Controller = 3,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Data,
            1 => Kind::NoOp,
            2 => Kind::ConfChange,
            3 => Kind::Controller,
            _ => return None,
        })
    }
}

/// A record as it is appended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    pub value: Bytes,
    /// Application-defined type (the book's `Record.type`).
    pub rtype: u32,
}

impl NewRecord {
    pub fn new(value: impl Into<Bytes>) -> Self {
        NewRecord {
            value: value.into(),
            rtype: 0,
        }
    }
}

/// A record as it is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub term: u64,
    pub timestamp_ms: i64,
    pub rtype: u32,
    pub value: Bytes,
}

/// The fields a writer stamps on a batch besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub kind: Kind,
    pub base_offset: u64,
    pub term: u64,
    pub raft_index: u64,
    pub commit_index: u64,
    pub timestamp_ms: i64,
}

/// A decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub base_offset: u64,
    pub term: u64,
    pub raft_index: u64,
    pub commit_index: u64,
    pub timestamp_ms: i64,
    pub record_count: u32,
    pub payload_len: u32,
    pub crc: u32,
}

impl Header {
    /// Header plus payload.
    pub fn batch_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
    /// The offset after this batch's last record (its base offset for a control batch).
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
    pub fn is_data(&self) -> bool {
        self.kind == Kind::Data
    }
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header whose fields are plausible; the CRC is not checked yet.
    Header(Header),
    /// All-zero bytes: the end of written data (files are zero-padded to the block size).
    End,
    /// A batch header of an earlier format version (its magic is ours, its version 1):
    /// refused, never misread. Any other version is `Invalid`.
    Unsupported(u8),
    /// Bytes that are not a header.
    Invalid(&'static str),
}

/// Parses a header from `buf` (which must hold at least `HEADER_LEN` bytes).
pub fn parse_header(buf: &[u8]) -> Parsed {
    // A version-1 header is shorter: recognise it from its first bytes alone.
    if buf.len() >= 6 && u32_at(buf, OFF_MAGIC) == MAGIC && buf[OFF_VERSION] != VERSION {
        return match buf[OFF_VERSION] {
            1 => Parsed::Unsupported(1),
            _ => Parsed::Invalid("unknown batch version"),
        };
    }
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Parsed::Invalid("short header");
    };
    if h.iter().all(|&b| b == 0) {
        return Parsed::End;
    }
    if u32_at(h, OFF_MAGIC) != MAGIC {
        return Parsed::Invalid("bad magic");
    }
    if u16::from_le_bytes([h[OFF_HEADER_LEN], h[OFF_HEADER_LEN + 1]]) as usize != HEADER_LEN {
        return Parsed::Invalid("bad header length");
    }
    let Some(kind) = Kind::from_u8(h[OFF_KIND]) else {
        return Parsed::Invalid("unknown batch kind");
    };
    let header = Header {
        kind,
        base_offset: u64_at(h, OFF_BASE),
        term: u64_at(h, OFF_TERM),
        raft_index: u64_at(h, OFF_RAFT_INDEX),
        commit_index: u64_at(h, OFF_COMMIT),
        timestamp_ms: u64_at(h, OFF_TIMESTAMP) as i64,
        record_count: u32_at(h, OFF_COUNT),
        payload_len: u32_at(h, OFF_PAYLOAD_LEN),
        crc: u32_at(h, OFF_CRC),
    };
    if header.commit_index > header.raft_index {
        return Parsed::Invalid("commit index past the batch's own index");
    }
    match kind {
        Kind::Data if header.record_count == 0 => return Parsed::Invalid("empty data batch"),
        Kind::Data => {}
        _ if header.record_count != 0 => return Parsed::Invalid("control batch with records"),
        _ => {}
    }
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Parsed::Invalid("base offset plus record count past u64::MAX");
    }
    if (header.payload_len as u64) < u64::from(header.record_count) * RECORD_OVERHEAD as u64 {
        return Parsed::Invalid("payload too short for its record count");
    }
    Parsed::Header(header)
}

/// Checks the CRC of a whole batch (header and payload, `batch.len() == batch_len`).
pub fn crc_ok(header: &Header, batch: &[u8]) -> bool {
    batch.len() == header.batch_len() && checksum(batch) == header.crc
}

fn checksum(batch: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&batch[..OFF_CRC]);
    crc32c::crc32c_append(crc, &batch[HEADER_LEN..])
}

/// Bytes a batch of these records takes on disk.
pub fn encoded_len<'a>(values: impl IntoIterator<Item = &'a NewRecord>) -> usize {
    HEADER_LEN
        + values
            .into_iter()
            .map(|r| RECORD_OVERHEAD + r.value.len())
            .sum::<usize>()
}

/// A batch's timestamp for now: milliseconds since the Unix epoch (0 on a clock before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Appends the payload of a batch of `records` (the record layout above, no header) to `out`.
pub fn encode_payload_into(out: &mut Vec<u8>, records: &[NewRecord]) {
    for r in records {
        push_record(out, &r.value, r.rtype);
    }
}

/// Appends one record in the payload layout to `out`.
pub fn push_record(out: &mut Vec<u8>, value: &[u8], rtype: u32) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&rtype.to_le_bytes());
    out.extend_from_slice(value);
}

/// Appends an encoded data batch of `records` to `out`.
pub fn encode_into(out: &mut Vec<u8>, stamp: &Stamp, records: &[NewRecord]) {
    let start = out.len();
    let payload_len = encoded_len(records) - HEADER_LEN;
    out.reserve(HEADER_LEN + payload_len);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    encode_payload_into(out, records);
    let crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
    let stamp = Stamp {
        kind: Kind::Data,
        ..*stamp
    };
    let header = header_bytes(&stamp, records.len() as u32, payload_len as u32, crc);
    out[start..start + HEADER_LEN].copy_from_slice(&header);
}

/// Appends a batch whose payload is already encoded: `record_count` records for a data batch,
/// the entry's data (and a count of 0) for any other kind. The caller vouches that a data
/// payload holds `record_count` records; readers check it against the CRC-covered bytes.
pub fn encode_with_payload(out: &mut Vec<u8>, stamp: &Stamp, record_count: u32, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    let crc = crc32c::crc32c(payload);
    out.extend_from_slice(&header_bytes(
        stamp,
        record_count,
        payload.len() as u32,
        crc,
    ));
    out.extend_from_slice(payload);
}

/// The header of a batch whose payload (`payload_len` bytes, `record_count` records) has the
/// CRC32C `payload_crc`, with its own CRC filled in. The batch CRC covers the header's first
/// 60 bytes and then the payload; it is computed from the payload's CRC with
/// [`crc32c_combine`], so stamping a header costs no pass over the payload.
pub fn header_bytes(
    s: &Stamp,
    record_count: u32,
    payload_len: u32,
    payload_crc: u32,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[OFF_MAGIC..OFF_VERSION].copy_from_slice(&MAGIC.to_le_bytes());
    h[OFF_VERSION] = VERSION;
    h[OFF_KIND] = s.kind as u8;
    h[OFF_HEADER_LEN..OFF_BASE].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[OFF_BASE..OFF_TERM].copy_from_slice(&s.base_offset.to_le_bytes());
    h[OFF_TERM..OFF_RAFT_INDEX].copy_from_slice(&s.term.to_le_bytes());
    h[OFF_RAFT_INDEX..OFF_COMMIT].copy_from_slice(&s.raft_index.to_le_bytes());
    let commit = s.commit_index.min(s.raft_index);
    h[OFF_COMMIT..OFF_TIMESTAMP].copy_from_slice(&commit.to_le_bytes());
    h[OFF_TIMESTAMP..OFF_COUNT].copy_from_slice(&s.timestamp_ms.to_le_bytes());
    h[OFF_COUNT..OFF_PAYLOAD_LEN].copy_from_slice(&record_count.to_le_bytes());
    h[OFF_PAYLOAD_LEN..OFF_RESERVED].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32c_combine(crc32c::crc32c(&h[..OFF_CRC]), payload_crc, payload_len);
    h[OFF_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The payload of a checked batch (its bytes after the header).
pub fn payload(batch: &Bytes) -> Bytes {
    batch.slice(HEADER_LEN.min(batch.len())..)
}

/// Decodes the records of a batch whose CRC has been checked. `batch` is shared so values are
/// zero-copy slices of it. A control batch has none. Returns `None` if the payload does not add
/// up (which a good CRC makes a bug, but bytes from disk are never trusted with a panic).
pub fn decode_records(header: &Header, batch: &Bytes) -> Option<Vec<Record>> {
    if !header.is_data() {
        return Some(Vec::new());
    }
    // Sized by what the bytes can hold, never by the count alone (a header that is not this
    // batch's could claim 4 billion records).
    let fits = batch.len().saturating_sub(HEADER_LEN) / RECORD_OVERHEAD;
    let mut records = Vec::with_capacity((header.record_count as usize).min(fits));
    let mut pos = HEADER_LEN;
    for i in 0..u64::from(header.record_count) {
        let len = u32_at(batch.get(pos..pos + 4)?, 0) as usize;
        let rtype = u32_at(batch.get(pos + 4..pos + 8)?, 0);
        let start = pos + RECORD_OVERHEAD;
        let end = start.checked_add(len)?;
        if end > batch.len() {
            return None;
        }
        records.push(Record {
            offset: header.base_offset + i,
            term: header.term,
            timestamp_ms: header.timestamp_ms,
            rtype,
            value: batch.slice(start..end),
        });
        pos = end;
    }
    (pos == batch.len()).then_some(records)
}

/// Re-encodes the first `keep` records of a checked data batch as a batch of its own (same
/// stamp). Used to cut a single-node log inside a batch.
pub fn truncate_batch(header: &Header, batch: &Bytes, keep: u32) -> Option<Vec<u8>> {
    let records = decode_records(header, batch)?;
    let kept: Vec<NewRecord> = records
        .into_iter()
        .take(keep as usize)
        .map(|r| NewRecord {
            value: r.value,
            rtype: r.rtype,
        })
        .collect();
    let mut out = Vec::new();
    encode_into(&mut out, &header.stamp(), &kept);
    Some(out)
}

impl Header {
    /// The stamp this header carries.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            kind: self.kind,
            base_offset: self.base_offset,
            term: self.term,
            raft_index: self.raft_index,
            commit_index: self.commit_index,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// The CRC32C polynomial, bit-reflected.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b mod p(x)` in the bit-reflected representation of CRC32C (bit 31 is x^0).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut product = 0u32;
    let mut m = 1u32 << 31;
    while m != 0 {
        if a & m != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
        m >>= 1;
    }
    product
}

/// `X2N[k] = x^(2^k) mod p(x)`, for the bit lengths of every u32 byte count (k up to 3 + 32).
const X2N: [u32; 40] = {
    let mut t = [0u32; 40];
    t[0] = 1 << 30; // x^1
    let mut k = 1;
    while k < t.len() {
        t[k] = mult_mod_p(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// `x^(8 n) mod p(x)`: the operator that appends `n` zero bytes to a CRC register.
fn x_pow_8n_mod_p(mut n: u32) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut k = 3; // 8 n = n << 3
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_p(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of `A` followed by `B`, from `crc32c(A)`, `crc32c(B)` and `B`'s length, in a
/// few dozen shifts per set bit of the length (zlib's method; `crc32c::crc32c_combine`
/// squares 32x32 bit matrices instead, some microseconds per call, which the owner of a
/// partition would pay on every append).
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u32) -> u32 {
    mult_mod_p(x_pow_8n_mod_p(len_b), crc_a) ^ crc_b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(base_offset: u64, term: u64, timestamp_ms: i64) -> Stamp {
        Stamp {
            kind: Kind::Data,
            base_offset,
            term,
            raft_index: base_offset + 3,
            commit_index: base_offset + 1,
            timestamp_ms,
        }
    }

    fn recs(n: usize) -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord {
                value: Bytes::from(vec![i as u8; i * 3]),
                rtype: i as u32,
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let r = recs(5);
        encode_into(&mut buf, &stamp(42, 7, 1234), &r);
        assert_eq!(buf.len(), encoded_len(&r));
        let Parsed::Header(h) = parse_header(&buf) else {
            panic!("no header")
        };
        assert_eq!(
            (h.base_offset, h.term, h.timestamp_ms, h.record_count),
            (42, 7, 1234, 5)
        );
        assert!(crc_ok(&h, &buf));
        let out = decode_records(&h, &Bytes::from(buf)).expect("decodes");
        assert_eq!(out.len(), 5);
        for (i, rec) in out.iter().enumerate() {
            assert_eq!(rec.offset, 42 + i as u64);
            assert_eq!(rec.value, r[i].value);
            assert_eq!(rec.rtype, i as u32);
        }
    }

    #[test]
    fn a_stamped_header_checks_out_like_a_whole_encoding() {
        let r = recs(7);
        let mut whole = Vec::new();
        encode_into(&mut whole, &stamp(9, 4, 77), &r);
        let mut payload = Vec::new();
        encode_payload_into(&mut payload, &r);
        let h = header_bytes(
            &stamp(9, 4, 77),
            7,
            payload.len() as u32,
            crc32c::crc32c(&payload),
        );
        assert_eq!(&whole[..HEADER_LEN], &h[..]);
        assert_eq!(&whole[HEADER_LEN..], &payload[..]);
        assert_eq!(checksum(&whole), u32_at(&h, OFF_CRC));
    }

    #[test]
    fn crc_combine_agrees_with_a_crc_over_both_parts() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for split in [0, 1, 3, 44, 48, 100, 4095, 4096, 65_537, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let want = crc32c::crc32c(&data);
            let got = crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u32);
            assert_eq!(got, want, "split at {split}");
            assert_eq!(
                got,
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()),
                "the crate's combine, split at {split}"
            );
        }
        // Lengths with high bits set, against the crate's (slower) combine.
        for len in [1u32 << 20, (1 << 31) + 12_345, u32::MAX] {
            let (x, y) = (0xDEAD_BEEF, 0x1234_5678);
            assert_eq!(
                crc32c_combine(x, y, len),
                crc32c::crc32c_combine(x, y, len as usize),
                "length {len}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &stamp(0, 1, 99), &recs(3));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x5a;
            let ok = match parse_header(&bad) {
                Parsed::Header(h) => crc_ok(&h, &bad),
                _ => false,
            };
            assert!(!ok, "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn control_batches_carry_data_and_no_records() {
        let mut buf = Vec::new();
        let s = Stamp {
            kind: Kind::ConfChange,
            ..stamp(9, 3, 1)
        };
        encode_with_payload(&mut buf, &s, 0, b"conf");
        let Parsed::Header(h) = parse_header(&buf) else {
            panic!("no header")
        };
        assert!(crc_ok(&h, &buf));
        assert_eq!(
            (h.kind, h.record_count, h.next_offset()),
            (Kind::ConfChange, 0, 9)
        );
        assert_eq!((h.raft_index, h.commit_index), (12, 10));
        let b = Bytes::from(buf);
        assert_eq!(&payload(&b)[..], b"conf");
        assert_eq!(decode_records(&h, &b), Some(Vec::new()));
        // A control batch never claims records, a data batch always does.
        let mut bad = b.to_vec();
        bad[48] = 1;
        assert!(matches!(parse_header(&bad), Parsed::Invalid(_)));
    }

    #[test]
    fn crc_combines_over_header_then_payload() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &stamp(5, 2, 7), &recs(3));
        let Parsed::Header(h) = parse_header(&buf) else {
            panic!()
        };
        let head = crc32c::crc32c(&buf[..OFF_CRC]);
        let body = crc32c::crc32c(&buf[HEADER_LEN..]);
        let combined = crc32c::crc32c_combine(head, body, buf.len() - HEADER_LEN);
        assert_eq!(combined, h.crc);
    }

    #[test]
    fn version_one_is_named_not_misread() {
        // A version-1 header: magic, version 1, flags, header_len 48, then fields.
        let mut v1 = Vec::new();
        v1.extend_from_slice(&MAGIC.to_le_bytes());
        v1.push(1);
        v1.push(0);
        v1.extend_from_slice(&48u16.to_le_bytes());
        v1.resize(48, 7);
        assert_eq!(parse_header(&v1), Parsed::Unsupported(1));
        assert_eq!(parse_header(&v1[..6]), Parsed::Unsupported(1));
    }

    #[test]
    fn zeros_are_the_end() {
        assert_eq!(parse_header(&[0u8; HEADER_LEN]), Parsed::End);
        assert!(matches!(
            parse_header(&[1u8; HEADER_LEN]),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse_header(&[0u8; 10]), Parsed::Invalid(_)));
    }

    #[test]
    fn truncate_keeps_a_prefix() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &stamp(10, 2, 5), &recs(4));
        let Parsed::Header(h) = parse_header(&buf) else {
            panic!()
        };
        let cut = truncate_batch(&h, &Bytes::from(buf), 2).expect("cut");
        let Parsed::Header(h2) = parse_header(&cut) else {
            panic!()
        };
        assert!(crc_ok(&h2, &cut));
        assert_eq!((h2.base_offset, h2.record_count, h2.term), (10, 2, 2));
    }
}
