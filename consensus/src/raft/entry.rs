//! One Raft entry is one engine batch (format version 2). This module maps an entry to the
//! batch that stores it and back, and defines what a proposal's data holds.
//!
//! Entry data of a normal entry (what a proposal carries), little-endian:
//!
//! ```text
//! empty                                  no-op (a new leader's first entry)  -> kind 1
//! 0  u8 tag 0, 1 i64 timestamp_ms, 9 u32 record_count, 13 records    data  -> kind 0
//! 0  u8 tag 1, 1 command bytes                                   controller -> kind 3
//! ```
//!
//! A controller command may also be stored as a data entry of one record whose type is
//! [`CONTROLLER_RECORD_TYPE`] and whose value is the command ([`controller_record_proposal`]):
//! it then takes one offset, which lets the controller's segments roll (a segment is named by
//! its base offset, so one holding no record never rolls). The controller proposes its
//! checkpoints so; only the controller's group reads such a record as a command
//! ([`controller_record`]).
//!
//! The records of a data entry are in the batch payload's encoding, so a data batch's payload
//! is the entry data after its 13-byte prefix, byte for byte. A configuration-change entry
//! (kind 2) keeps its entry type, its context and its data: payload = u8 entry type, u32
//! context length, context, data. The timestamp is the proposer's, so every replica stores
//! the same bytes; the base offset and the commit index are each replica's own.

use super::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use engine::batch::{self, Header, Kind, NewRecord, Stamp};
use raft::eraftpb::{Entry, EntryType};

/// A data entry's tag: the first byte of `engine::seam::entry_prefix`, which lays out the
/// prefix for every data entry (the server's batches are built behind it).
const TAG_DATA: u8 = 0;
const TAG_CONTROLLER: u8 = 1;
const DATA_PREFIX: usize = engine::seam::ENTRY_PREFIX_BYTES;

/// Entry data for a proposal of `records`, stamped with the proposer's clock.
pub fn data_proposal(records: &[NewRecord], timestamp_ms: i64) -> Bytes {
    let mut out = Vec::with_capacity(batch::encoded_len(records) - batch::HEADER_LEN + DATA_PREFIX);
    out.extend_from_slice(&engine::seam::entry_prefix(
        timestamp_ms,
        records.len() as u32,
    ));
    batch::encode_payload_into(&mut out, records);
    Bytes::from(out)
}

/// Entry data for a proposal of records already laid out as a batch payload stores them
/// (`engine::seam::EncodedBatch`), stamped with the proposer's clock.
pub fn data_proposal_encoded(payload: &[u8], records: u32, timestamp_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + DATA_PREFIX);
    out.extend_from_slice(&engine::seam::entry_prefix(timestamp_ms, records));
    out.extend_from_slice(payload);
    out
}

/// Entry data for a controller command.
pub fn controller_proposal(command: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(command.len() + 1);
    out.push(TAG_CONTROLLER);
    out.extend_from_slice(command);
    Bytes::from(out)
}

/// Type of the one record of a data entry that carries a controller command (the bytes
/// `C T L 1`, little-endian). Only the controller's group reads it so.
pub const CONTROLLER_RECORD_TYPE: u32 = u32::from_le_bytes(*b"CTL1");

/// Bytes [`controller_record_proposal`] adds to a command: the data prefix, and the record's
/// length and type. What raft-rs counts of such an entry (its data) is the command's size
/// plus this.
pub const CONTROLLER_RECORD_OVERHEAD: usize = DATA_PREFIX + 8;

/// Entry data for a controller command stored as a data entry of one record (it takes one
/// offset), stamped with the proposer's clock.
pub fn controller_record_proposal(command: &[u8], timestamp_ms: i64) -> Bytes {
    let record = NewRecord {
        value: Bytes::copy_from_slice(command),
        rtype: CONTROLLER_RECORD_TYPE,
    };
    data_proposal(std::slice::from_ref(&record), timestamp_ms)
}

/// The command of a data entry of exactly one record of type [`CONTROLLER_RECORD_TYPE`],
/// if `e` is one. Only for the controller's group: elsewhere such a record is a client's.
pub fn controller_record(e: &Entry) -> Option<&[u8]> {
    // A data entry (any other counts none) of exactly one record.
    if record_count(e).ok()? != 1 {
        return None;
    }
    let record = e.data.get(DATA_PREFIX..)?;
    let len = record.get(0..4)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let rtype = record.get(4..8)?;
    if u32::from_le_bytes([rtype[0], rtype[1], rtype[2], rtype[3]]) != CONTROLLER_RECORD_TYPE {
        return None;
    }
    let end = batch::RECORD_OVERHEAD.checked_add(len)?;
    (end == record.len()).then(|| &record[batch::RECORD_OVERHEAD..])
}

/// The command of a controller entry, if `e` is one.
pub fn controller_command(e: &Entry) -> Option<&[u8]> {
    match (e.entry_type, e.data.split_first()) {
        (EntryType::EntryNormal, Some((&TAG_CONTROLLER, rest))) => Some(rest),
        _ => None,
    }
}

/// Records an entry adds to the log (0 for every entry but data).
pub fn record_count(e: &Entry) -> Result<u32> {
    match (e.entry_type, e.data.first()) {
        (EntryType::EntryNormal, Some(&TAG_DATA)) => {
            let count = e
                .data
                .get(9..13)
                .ok_or_else(|| malformed(e, "data entry shorter than its prefix"))?;
            Ok(u32::from_le_bytes([count[0], count[1], count[2], count[3]]))
        }
        _ => Ok(0),
    }
}

fn malformed(e: &Entry, why: &str) -> Error {
    Error::Malformed {
        what: "entry",
        why: format!("index {} term {}: {why}", e.index, e.term),
    }
}

/// Bytes [`encode`] appends for `e` at most (the batch header, and the entry's data and
/// context with a configuration change's 5 bytes of framing), so a caller sizes its buffer once.
pub fn encoded_len(e: &Entry) -> usize {
    batch::HEADER_LEN + 5 + e.data.len() + e.context.len()
}

/// Encodes `e` as a batch at `base_offset`, stamped with the commit index the writer knows,
/// appended to `out`. Returns the offset after it.
pub fn encode(e: &Entry, base_offset: u64, commit_index: u64, out: &mut Vec<u8>) -> Result<u64> {
    encode_known(e, base_offset, commit_index, None, out)
}

/// [`encode`], given the CRC32C of a data entry's payload (the records after its prefix) when
/// it is known already: the leader computed it when it built the batch it proposed, and need
/// not pass over the payload again.
pub fn encode_known(
    e: &Entry,
    base_offset: u64,
    commit_index: u64,
    payload_crc: Option<u32>,
    out: &mut Vec<u8>,
) -> Result<u64> {
    let (stamped, next) = stamp(e, base_offset, commit_index, payload_crc)?;
    let parts = stamped.parts(e);
    out.reserve(parts.header.len() + parts.payload.len());
    out.extend_from_slice(parts.header);
    out.extend_from_slice(parts.payload);
    Ok(next)
}

/// The payload an entry other than data stores, and its batch kind.
fn other_payload(e: &Entry) -> Result<(Kind, Vec<u8>)> {
    match e.entry_type {
        EntryType::EntryNormal => match e.data.first() {
            None => Ok((Kind::NoOp, Vec::new())),
            Some(&TAG_CONTROLLER) => Ok((Kind::Controller, e.data[1..].to_vec())),
            Some(tag) => Err(malformed(e, &format!("unknown data tag {tag}"))),
        },
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
            let mut payload = Vec::with_capacity(5 + e.context.len() + e.data.len());
            payload.push(e.entry_type as u8);
            payload.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
            payload.extend_from_slice(&e.context);
            payload.extend_from_slice(&e.data);
            Ok((Kind::ConfChange, payload))
        }
    }
}

/// An entry stamped as a stored batch, in two pieces written back to back: its header, and
/// its payload. A data entry's payload is its records where the entry holds them (they are
/// copied once, into the log's buffer); other kinds, small, are encoded apart.
pub enum Stamped {
    Data {
        header: [u8; batch::HEADER_LEN],
    },
    Other {
        header: [u8; batch::HEADER_LEN],
        payload: Vec<u8>,
    },
}

impl Stamped {
    /// The batch's two pieces; `e` is the entry it was stamped from.
    pub fn parts<'a>(&'a self, e: &'a Entry) -> engine::log::FreshBatch<'a> {
        match self {
            Stamped::Data { header } => engine::log::FreshBatch {
                header,
                // `stamp` checked that the entry holds its prefix.
                payload: e.data.get(DATA_PREFIX..).unwrap_or_default(),
            },
            Stamped::Other { header, payload } => engine::log::FreshBatch { header, payload },
        }
    }
}

/// `e` stamped as a batch at `base_offset` without copying a data entry's records
/// ([`Stamped::parts`] gives its pieces; [`encode_known`] writes them out), with the commit
/// index the writer knows and, for a data entry, its payload's CRC32C when known. Returns
/// the offset after it.
pub fn stamp(
    e: &Entry,
    base_offset: u64,
    commit_index: u64,
    payload_crc: Option<u32>,
) -> Result<(Stamped, u64)> {
    let mut stamp = Stamp {
        kind: Kind::NoOp,
        base_offset,
        term: e.term,
        raft_index: e.index,
        commit_index: commit_index.min(e.index),
        timestamp_ms: 0,
    };
    if e.entry_type == EntryType::EntryNormal && e.data.first() == Some(&TAG_DATA) {
        let count = record_count(e)?;
        let ts = e
            .data
            .get(1..9)
            .ok_or_else(|| malformed(e, "no timestamp"))?;
        let mut t = [0u8; 8];
        t.copy_from_slice(ts);
        let payload = e
            .data
            .get(DATA_PREFIX..)
            .ok_or_else(|| malformed(e, "data entry shorter than its prefix"))?;
        check_records(e, payload, count)?;
        let crc = match payload_crc {
            Some(crc) => {
                debug_assert_eq!(crc, crc32c::crc32c(payload), "entry {}", e.index);
                crc
            }
            None => crc32c::crc32c(payload),
        };
        stamp.kind = Kind::Data;
        stamp.timestamp_ms = i64::from_le_bytes(t);
        let header = batch::header_bytes(&stamp, count, payload.len() as u32, crc);
        return Ok((Stamped::Data { header }, base_offset + u64::from(count)));
    }
    let (kind, payload) = other_payload(e)?;
    stamp.kind = kind;
    let header = batch::header_bytes(&stamp, 0, payload.len() as u32, crc32c::crc32c(&payload));
    Ok((Stamped::Other { header, payload }, base_offset))
}

/// Checks that `payload` holds exactly `count` records, so a batch never claims records its
/// bytes do not hold (bytes from a leader are not trusted with a panic either).
fn check_records(e: &Entry, payload: &[u8], count: u32) -> Result<()> {
    if count == 0 {
        return Err(malformed(e, "a data entry without records"));
    }
    let mut pos = 0usize;
    for _ in 0..count {
        let len = payload
            .get(pos..pos + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| malformed(e, "records end early"))?;
        pos = pos
            .checked_add(batch::RECORD_OVERHEAD + len)
            .filter(|&p| p <= payload.len())
            .ok_or_else(|| malformed(e, "record runs past the entry"))?;
    }
    if pos != payload.len() {
        return Err(malformed(e, "bytes after the last record"));
    }
    Ok(())
}

/// The entry a checked batch stores.
pub fn decode(header: &Header, bytes: &Bytes) -> Result<Entry> {
    let payload = batch::payload(bytes);
    let mut e = Entry::default();
    e.term = header.term;
    e.index = header.raft_index;
    match header.kind {
        Kind::NoOp => {}
        Kind::Data => {
            let mut data = BytesMut::with_capacity(DATA_PREFIX + payload.len());
            data.extend_from_slice(&[TAG_DATA]);
            data.extend_from_slice(&header.timestamp_ms.to_le_bytes());
            data.extend_from_slice(&header.record_count.to_le_bytes());
            data.extend_from_slice(&payload);
            e.data = data.freeze();
        }
        Kind::Controller => {
            let mut data = BytesMut::with_capacity(1 + payload.len());
            data.extend_from_slice(&[TAG_CONTROLLER]);
            data.extend_from_slice(&payload);
            e.data = data.freeze();
        }
        Kind::ConfChange => {
            let bad = || Error::Malformed {
                what: "configuration-change batch",
                why: format!("Raft index {}", header.raft_index),
            };
            let ty = *payload.first().ok_or_else(bad)?;
            e.entry_type = match ty {
                1 => EntryType::EntryConfChange,
                2 => EntryType::EntryConfChangeV2,
                _ => return Err(bad()),
            };
            let len = payload
                .get(1..5)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(bad)?;
            let end = 5usize
                .checked_add(len)
                .filter(|&x| x <= payload.len())
                .ok_or_else(bad)?;
            e.context = payload.slice(5..end);
            e.data = payload.slice(end..);
        }
    }
    Ok(e)
}

/// Bytes an entry counts for in caches and size limits (raft-rs counts data and context).
pub fn size(e: &Entry) -> u64 {
    (e.data.len() + e.context.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::batch::Parsed;

    /// A batch built behind its entry prefix (what the server's handlers build) is, byte for
    /// byte, the entry this module lays out for its payload, its count and its timestamp: it
    /// is proposed as it is, so the two layouts must not drift apart.
    #[test]
    fn a_built_batch_is_its_own_entry_data() {
        assert_eq!(engine::seam::entry_prefix(7, 3)[0], TAG_DATA);
        for values in [vec![0usize], vec![3], vec![100, 0, 7], vec![4096; 9]] {
            let mut b = engine::seam::BatchBuilder::new();
            for (i, len) in values.iter().enumerate() {
                b.push(&vec![i as u8; *len], i as u32).expect("push");
            }
            let batch = b.finish().expect("finish");
            let data = batch.entry_data().expect("built behind a prefix");
            let ts = i64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
            let laid_out = data_proposal_encoded(batch.payload(), batch.record_count(), ts);
            assert_eq!(&data[..], &laid_out[..], "{values:?}");
            let e = Entry {
                entry_type: EntryType::EntryNormal,
                data: data.clone(),
                index: 5,
                term: 2,
                ..Default::default()
            };
            assert_eq!(
                record_count(&e).expect("a data entry"),
                batch.record_count()
            );
            let (header, back) = round_trip(&e, 40);
            assert_eq!(header.record_count, batch.record_count());
            assert_eq!(back.data, e.data);
        }
    }

    fn round_trip(e: &Entry, base: u64) -> (Header, Entry) {
        let mut buf = Vec::new();
        encode(e, base, e.index.saturating_sub(1), &mut buf).expect("encodes");
        assert!(
            buf.len() <= encoded_len(e),
            "{} > {}",
            buf.len(),
            encoded_len(e)
        );
        let Parsed::Header(h) = batch::parse_header(&buf) else {
            panic!("no header")
        };
        let bytes = Bytes::from(buf);
        assert!(batch::crc_ok(&h, &bytes));
        (h, decode(&h, &bytes).expect("decodes"))
    }

    #[test]
    fn every_kind_round_trips() {
        let mut noop = Entry::default();
        (noop.term, noop.index) = (3, 7);
        let (h, back) = round_trip(&noop, 10);
        assert_eq!((h.kind, h.base_offset, h.commit_index), (Kind::NoOp, 10, 6));
        assert_eq!(back, noop);

        let mut data = noop.clone();
        data.data = data_proposal(&[NewRecord::new(&b"ab"[..]), NewRecord::new(&b""[..])], 42);
        let (h, back) = round_trip(&data, 10);
        assert_eq!(
            (h.kind, h.record_count, h.timestamp_ms),
            (Kind::Data, 2, 42)
        );
        assert_eq!(back, data);
        assert_eq!(record_count(&data).expect("count"), 2);

        let mut ctl = noop.clone();
        ctl.data = controller_proposal(b"create topic");
        let (h, back) = round_trip(&ctl, 10);
        assert_eq!(h.kind, Kind::Controller);
        assert_eq!(back, ctl);

        let mut rec = noop.clone();
        rec.data = controller_record_proposal(b"{\"op\":\"checkpoint\"}", 42);
        let (h, back) = round_trip(&rec, 10);
        assert_eq!((h.kind, h.record_count), (Kind::Data, 1));
        assert_eq!(back, rec);
        assert_eq!(
            controller_record(&back),
            Some(&b"{\"op\":\"checkpoint\"}"[..])
        );
        assert_eq!(controller_command(&back), None);
        // A client's records are not commands, whatever their count or type.
        assert_eq!(controller_record(&data), None);
        assert_eq!(controller_record(&ctl), None);
        let mut typed = noop.clone();
        typed.data = data_proposal(
            &[
                NewRecord {
                    value: Bytes::from_static(b"a"),
                    rtype: CONTROLLER_RECORD_TYPE,
                },
                NewRecord::new(&b"b"[..]),
            ],
            1,
        );
        assert_eq!(controller_record(&typed), None);

        let mut cc = noop.clone();
        cc.entry_type = EntryType::EntryConfChangeV2;
        cc.data = Bytes::from_static(b"\x12\x02\x08\x02");
        cc.context = Bytes::from_static(b"ctx");
        let (h, back) = round_trip(&cc, 10);
        assert_eq!((h.kind, h.base_offset), (Kind::ConfChange, 10));
        assert_eq!(back, cc);
    }

    /// The framing docs/format.md shows for a checkpoint proposed as a record.
    #[test]
    fn a_command_as_a_record_is_framed_as_docs_format_md_shows() {
        let data = controller_record_proposal(b"{}", 7);
        let mut want = vec![0u8];
        want.extend_from_slice(&7i64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(b"CTL1");
        want.extend_from_slice(b"{}");
        assert_eq!(&data[..], &want[..]);
        assert_eq!(CONTROLLER_RECORD_TYPE, 0x314C_5443);
        assert_eq!(data.len(), 2 + CONTROLLER_RECORD_OVERHEAD);
    }

    #[test]
    fn a_known_payload_crc_encodes_the_same_batch() {
        let mut e = Entry::default();
        (e.term, e.index) = (2, 5);
        e.data = data_proposal(
            &[NewRecord::new(&b"abc"[..]), NewRecord::new(&b"de"[..])],
            9,
        );
        let crc = crc32c::crc32c(&e.data[DATA_PREFIX..]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode(&e, 3, 4, &mut a).expect("encodes");
        encode_known(&e, 3, 4, Some(crc), &mut b).expect("encodes");
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_data_is_an_error_not_a_panic() {
        let mut e = Entry::default();
        (e.term, e.index) = (1, 1);
        for data in [
            &b"\x00"[..],
            &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00"[..],
            &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00x"[..],
            &b"\x07junk"[..],
        ] {
            e.data = Bytes::copy_from_slice(data);
            assert!(encode(&e, 0, 0, &mut Vec::new()).is_err(), "{data:?}");
        }
    }
}
