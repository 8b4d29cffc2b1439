//! Batches encoded on the caller's core: records laid out as the data file stores them
//! (`docs/format.md`: u32 value length, u32 type, value), with the CRC32C of that payload,
//! so that the partition's owner only stamps a header on them.

use super::error::{Error, Result};
use crate::batch::{self, Kind, NewRecord, Stamp, RECORD_OVERHEAD};
use bytes::Bytes;

/// Bytes a replication layer puts before a data batch's payload to make it a log entry's data:
/// u8 tag 0, i64 timestamp in milliseconds, u32 record count, little-endian (the layout of
/// `consensus::raft::entry`'s data entries, which checks that it matches). A batch built here
/// is built behind that prefix ([`EncodedBatch::entry_data`]), so proposing it copies nothing:
/// the partition's core would otherwise copy every payload into a new entry.
pub const ENTRY_PREFIX_BYTES: usize = 13;

/// The entry prefix of a data batch of `record_count` records stamped `timestamp_ms` (see
/// [`ENTRY_PREFIX_BYTES`]): the one place its layout is written.
pub fn entry_prefix(timestamp_ms: i64, record_count: u32) -> [u8; ENTRY_PREFIX_BYTES] {
    let mut p = [0u8; ENTRY_PREFIX_BYTES];
    p[1..9].copy_from_slice(&timestamp_ms.to_le_bytes());
    p[9..].copy_from_slice(&record_count.to_le_bytes());
    p
}

/// Bytes one record takes in a stored batch, beyond the batch header.
pub fn encoded_record_len(value_len: usize) -> usize {
    RECORD_OVERHEAD + value_len
}

/// A non-empty batch of records in the stored payload layout, ready for the owner.
///
/// Invariant: `payload` holds exactly `record_count >= 1` records in the payload layout, the
/// longest value has `max_value_len` bytes, `payload_crc == crc32c(payload)`, and every
/// length fits in a u32; `entry_data`, when there is one, is the payload's prefix
/// ([`ENTRY_PREFIX_BYTES`]) followed by `payload` itself (the same bytes, `payload` a slice of
/// it). Two batches are equal when their records are (the prefix's timestamp aside).
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    payload: Bytes,
    record_count: u32,
    payload_crc: u32,
    max_value_len: u32,
    entry_data: Option<Bytes>,
}

impl PartialEq for EncodedBatch {
    fn eq(&self, other: &Self) -> bool {
        self.payload == other.payload
            && self.record_count == other.record_count
            && self.payload_crc == other.payload_crc
            && self.max_value_len == other.max_value_len
    }
}

impl Eq for EncodedBatch {}

impl EncodedBatch {
    /// Encodes `records` as one batch; fails on an empty batch.
    pub fn encode(records: &[NewRecord]) -> Result<EncodedBatch> {
        let len: usize = records
            .iter()
            .map(|r| encoded_record_len(r.value.len()))
            .sum();
        let mut b = BatchBuilder::with_capacity(len);
        for r in records {
            b.push(&r.value, r.rtype)?;
        }
        b.finish()
    }

    /// A batch from a payload in the stored layout that came from elsewhere (another node
    /// forwarding an append): every record's length is walked, the count and the CRC32C
    /// checked against what the sender said, so a batch built here keeps the type's
    /// invariant whatever the bytes were.
    pub fn from_payload(
        payload: Bytes,
        record_count: u32,
        payload_crc: u32,
    ) -> Result<EncodedBatch> {
        let bad = |why: String| Error::InvalidArgument(format!("malformed batch payload: {why}"));
        if record_count == 0 {
            return Err(bad("no records".into()));
        }
        if payload.len() > u32::MAX as usize {
            return Err(bad(format!("{} bytes", payload.len())));
        }
        let (mut pos, mut count, mut max_value_len) = (0usize, 0u32, 0u32);
        while pos < payload.len() {
            let head = payload
                .get(pos..pos + RECORD_OVERHEAD)
                .ok_or_else(|| bad(format!("a record header cut at byte {pos}")))?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let end = (pos + RECORD_OVERHEAD)
                .checked_add(len as usize)
                .filter(|&e| e <= payload.len())
                .ok_or_else(|| bad(format!("record {count} overruns the payload")))?;
            count = count
                .checked_add(1)
                .ok_or_else(|| bad("too many records".into()))?;
            max_value_len = max_value_len.max(len);
            pos = end;
        }
        if count != record_count {
            return Err(bad(format!("{count} records, {record_count} announced")));
        }
        let crc = crc32c::crc32c(&payload);
        if crc != payload_crc {
            return Err(bad(format!(
                "CRC32C {crc:#010x}, {payload_crc:#010x} announced"
            )));
        }
        Ok(EncodedBatch {
            payload,
            record_count,
            payload_crc,
            max_value_len,
            entry_data: None,
        })
    }

    /// The payload behind its entry prefix (see [`ENTRY_PREFIX_BYTES`]), stamped when the
    /// batch was built here; `None` for a batch made [`from_payload`](Self::from_payload),
    /// whose proposer lays out the entry itself.
    pub fn entry_data(&self) -> Option<&Bytes> {
        self.entry_data.as_ref()
    }

    /// The records in the stored payload layout.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// CRC32C of the payload alone.
    pub fn payload_crc(&self) -> u32 {
        self.payload_crc
    }

    /// The length of the longest value: the owner checks the record limit with it.
    pub fn max_value_len(&self) -> u32 {
        self.max_value_len
    }

    /// The stored batch's header as `stamp` says (its kind is always data), CRC included:
    /// combined from the payload's CRC, so stamping costs no pass over the payload.
    pub fn header(&self, stamp: &Stamp) -> [u8; batch::HEADER_LEN] {
        let stamp = Stamp {
            kind: Kind::Data,
            ..*stamp
        };
        batch::header_bytes(
            &stamp,
            self.record_count,
            self.payload.len() as u32,
            self.payload_crc,
        )
    }

    /// The whole stored batch (header and payload) as `stamp` says.
    pub fn stored(&self, stamp: &Stamp) -> Bytes {
        let mut v = Vec::with_capacity(batch::HEADER_LEN + self.payload.len());
        v.extend_from_slice(&self.header(stamp));
        v.extend_from_slice(&self.payload);
        Bytes::from(v)
    }
}

/// Builds an [`EncodedBatch`] one record at a time (a stream's requests as they arrive),
/// behind room for its entry prefix.
#[derive(Debug)]
pub struct BatchBuilder {
    /// The entry prefix's room ([`ENTRY_PREFIX_BYTES`], filled in by `finish`), then the
    /// payload.
    buf: Vec<u8>,
    record_count: u32,
    max_value_len: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::with_capacity(0)
    }
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// A builder with room for `payload_bytes` of encoded records.
    pub fn with_capacity(payload_bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(ENTRY_PREFIX_BYTES + payload_bytes);
        buf.resize(ENTRY_PREFIX_BYTES, 0);
        BatchBuilder {
            buf,
            record_count: 0,
            max_value_len: 0,
        }
    }

    /// Adds a record. Fails only where the format's u32 lengths end.
    pub fn push(&mut self, value: &[u8], rtype: u32) -> Result<()> {
        let too_large = |what, size| Error::TooLarge {
            what,
            size,
            limit: u32::MAX as usize,
            unit: "bytes",
        };
        let value_len = u32::try_from(value.len()).map_err(|_| too_large("record", value.len()))?;
        let after = self.payload_len() + encoded_record_len(value.len());
        if after > u32::MAX as usize {
            return Err(too_large("batch", after));
        }
        if self.record_count == u32::MAX {
            return Err(Error::TooLarge {
                what: "batch",
                size: self.record_count as usize + 1,
                limit: u32::MAX as usize,
                unit: "records",
            });
        }
        batch::push_record(&mut self.buf, value, rtype);
        self.record_count += 1;
        self.max_value_len = self.max_value_len.max(value_len);
        Ok(())
    }

    /// Payload bytes so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - ENTRY_PREFIX_BYTES
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// The batch, with its payload's CRC; an empty batch is invalid.
    pub fn finish(self) -> Result<EncodedBatch> {
        if self.record_count == 0 {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        let mut buf = self.buf;
        let payload_crc = crc32c::crc32c(&buf[ENTRY_PREFIX_BYTES..]);
        buf[..ENTRY_PREFIX_BYTES]
            .copy_from_slice(&entry_prefix(batch::now_ms(), self.record_count));
        let entry_data = Bytes::from(buf);
        Ok(EncodedBatch {
            payload: entry_data.slice(ENTRY_PREFIX_BYTES..),
            record_count: self.record_count,
            payload_crc,
            max_value_len: self.max_value_len,
            entry_data: Some(entry_data),
        })
    }
}
