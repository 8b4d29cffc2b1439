//! `segments.meta`: the log's record of the segment files it holds (the first and last base
//! offsets, how many there are, and how many bytes the sealed ones hold), so that segment
//! files deleted from under a log whose directory stays, or sealed ones cut short, are found
//! at open, where nothing else could show it: a log without its newest segments reads as a
//! shorter valid log, one without its oldest as a log that retention cut, one without a
//! middle segment (or with a sealed one cut) as a valid log until a read reaches the gap.
//!
//! Every segment but the newest is sealed: written, cut to its length and synced before the
//! next one is made, and never written again (a truncation that reaches into it makes it the
//! newest first). So the sealed segments' total length only changes when the set does.
//!
//! The record only ever names segments whose files are durable: it is written after a new
//! segment's files and directory are synced, and changed before anything deletes a segment
//! (a truncation lowers its last, retention raises its first, a reset removes it until the
//! new segment exists). So a segment in the recorded range found missing at open was deleted
//! by something else, and what it held, perhaps acknowledged, is gone.

use crate::error::{Error, Result};
use crate::meta;
use std::path::Path;

/// The metadata file holding a log's [`Span`] (docs/format.md).
pub const SEGMENTS_META: &str = "segments.meta";

/// Version 2 adds the sealed segments' length; version 1 (25 bytes, without it) is read and
/// replaced at open.
const VERSION: u8 = 2;
const LEN: usize = 33;
const LEN_V1: usize = 25;

/// The segments a log holds: base offsets `first..=last`, `count` files, the sealed ones
/// (all but the newest) `sealed_bytes` long together (unknown in a version 1 record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub sealed_bytes: Option<u64>,
}

impl Span {
    /// The span of the segments `(base offset, length)`, oldest first (none: no span).
    pub(super) fn of(segments: &[(u64, u64)]) -> Option<Span> {
        let (&(first, _), &(last, _)) = (segments.first()?, segments.last()?);
        let sealed = &segments[..segments.len() - 1];
        Some(Span {
            first,
            last,
            count: segments.len() as u64,
            sealed_bytes: Some(sealed.iter().map(|&(_, len)| len).sum()),
        })
    }

    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[1..9].copy_from_slice(&self.first.to_le_bytes());
        b[9..17].copy_from_slice(&self.last.to_le_bytes());
        b[17..25].copy_from_slice(&self.count.to_le_bytes());
        b[25..33].copy_from_slice(&self.sealed_bytes.unwrap_or(0).to_le_bytes());
        b
    }

    fn decode(dir: &Path, b: &[u8]) -> Result<Span> {
        let bad = |why: &str| Error::corrupt(dir.join(SEGMENTS_META), 16, why.to_owned());
        let version = b.first().copied().unwrap_or(0);
        let expected = match version {
            1 => LEN_V1,
            VERSION => LEN,
            v => return Err(bad(&format!("version {v}, 1 or {VERSION} expected"))),
        };
        if b.len() != expected {
            return Err(bad(&format!(
                "{} bytes of payload, {expected} expected for version {version}",
                b.len()
            )));
        }
        let u = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let span = Span {
            first: u(1),
            last: u(9),
            count: u(17),
            sealed_bytes: (version >= 2).then(|| u(25)),
        };
        if span.count == 0 || span.first > span.last {
            return Err(bad("an empty or inverted range"));
        }
        Ok(span)
    }
}

/// `(base offset, length)` of `segments`, oldest first: what the record is made from.
pub(super) fn extents(segments: &[crate::segment::Segment]) -> Vec<(u64, u64)> {
    segments.iter().map(|s| (s.base, s.size)).collect()
}

/// Records, durably, that the log in `dir` holds the segments `span`.
pub(super) fn write(dir: &Path, span: Span) -> Result<()> {
    meta::write(dir, SEGMENTS_META, &span.encode())
}

/// What [`write`] last recorded in `dir`, if anything.
pub(super) fn read(dir: &Path) -> Result<Option<Span>> {
    meta::read(dir, SEGMENTS_META)?
        .map(|b| Span::decode(dir, &b))
        .transpose()
}

/// Removes the record, durably: before a reset deletes every segment (a crash before the
/// new one is made must not look like a deletion).
pub(super) fn forget(dir: &Path) -> Result<()> {
    let path = dir.join(SEGMENTS_META);
    match std::fs::remove_file(&path) {
        Ok(()) => meta::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", &path, e)),
    }
}

/// Why a log that recorded `recorded` and holds segment files `found` (`(base offset,
/// length)`, sorted) lost records, if it did: fewer files in the recorded range than
/// recorded, or sealed ones shorter than recorded. Files outside the range are not a loss (a
/// crash between a segment's making and its record, or inside a truncation or retention),
/// nor is no record (a directory of a version that kept none, or a crash inside a reset).
/// The newest recorded segment's length is not compared: it was being written.
pub(super) fn missing(recorded: Option<Span>, found: &[(u64, u64)]) -> Option<String> {
    let r = recorded?;
    let in_range: Vec<(u64, u64)> = found
        .iter()
        .copied()
        .filter(|&(b, _)| (r.first..=r.last).contains(&b))
        .collect();
    let present = in_range.len() as u64;
    if present >= r.count {
        let sealed: u64 = in_range
            .iter()
            .filter(|&&(b, _)| b < r.last)
            .map(|&(_, len)| len)
            .sum();
        return match r.sealed_bytes {
            Some(want) if sealed < want => Some(format!(
                "its sealed segment files (base offsets {} to below {}) hold {sealed} bytes, \
                 {want} recorded: {} bytes were cut from them, and the records they held, \
                 acknowledged perhaps, are gone",
                r.first,
                r.last,
                want - sealed
            )),
            _ => None,
        };
    }
    let bases: Vec<u64> = found.iter().map(|&(b, _)| b).collect();
    let which = if present == 0 {
        ", every one of them".to_owned()
    } else {
        let mut ends = Vec::new();
        if !bases.contains(&r.last) {
            ends.push("its newest segment");
        }
        if !bases.contains(&r.first) {
            ends.push("its oldest segment");
        }
        if ends.is_empty() {
            String::new()
        } else {
            format!(", {} among them", ends.join(" and "))
        }
    };
    Some(format!(
        "{} of the {} segment files it recorded (base offsets {} to {}) are gone{which}: \
         the records it held in them, acknowledged perhaps, are gone",
        r.count - present,
        r.count,
        r.first,
        r.last
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `segments.meta` and `start.meta` payloads, mutated (see `crate::mutation`).
    #[test]
    fn mutated_segment_records_and_start_indexes_never_panic() {
        use crate::mutation::{iterations, Mutator};
        use rand::Rng;
        let dir = Path::new("/nonexistent");
        let mut m = Mutator::new();
        let mut corpus: Vec<Vec<u8>> = (0..6)
            .map(|_| {
                let first = m.rng.random_range(0..1000u64);
                Span {
                    first,
                    last: first + m.rng.random_range(0..1000),
                    count: m.rng.random_range(1..20),
                    sealed_bytes: Some(m.rng.random()),
                }
                .encode()
                .to_vec()
            })
            .collect();
        let mut v1 = corpus[0][..LEN_V1].to_vec();
        v1[0] = 1;
        corpus.push(v1);
        m.run("segments.meta", &corpus, iterations(300_000), |b| {
            if let Ok(span) = Span::decode(dir, b) {
                if span.sealed_bytes.is_some() {
                    assert_eq!(Span::decode(dir, &span.encode()).ok(), Some(span));
                }
            }
        });
        let corpus = vec![
            42u64.to_le_bytes().to_vec(),
            u64::MAX.to_le_bytes().to_vec(),
        ];
        m.run("start.meta", &corpus, iterations(100_000), |b| {
            if let Ok(i) = super::super::recovery::decode_start(dir, b) {
                assert_eq!(b.get(..8), Some(&i.to_le_bytes()[..]));
            }
        });
    }

    /// Segments at these base offsets, each 1,000 bytes long.
    fn segs(bases: &[u64]) -> Vec<(u64, u64)> {
        bases.iter().map(|&b| (b, 1000)).collect()
    }

    #[test]
    fn a_span_round_trips_and_a_bad_one_is_refused() {
        let dir = Path::new("/nonexistent");
        let s = Span {
            first: 7,
            last: 1 << 40,
            count: 3,
            sealed_bytes: Some(5 << 32),
        };
        assert_eq!(Span::decode(dir, &s.encode()).expect("decode"), s);
        let mut b = s.encode();
        b[0] = 3;
        assert!(Span::decode(dir, &b).is_err());
        assert!(Span::decode(dir, &s.encode()[..32]).is_err());
        assert!(Span::decode(dir, &[]).is_err());
        let inverted = Span {
            first: 9,
            last: 8,
            count: 1,
            sealed_bytes: Some(0),
        };
        assert!(Span::decode(dir, &inverted.encode()).is_err());
    }

    #[test]
    fn a_version_1_record_is_read_without_the_sealed_length() {
        let dir = Path::new("/nonexistent");
        let mut v1 = vec![1u8];
        for x in [7u64, 9, 2] {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        let s = Span::decode(dir, &v1).expect("version 1");
        assert_eq!(
            s,
            Span {
                first: 7,
                last: 9,
                count: 2,
                sealed_bytes: None
            }
        );
        // Nothing to compare a length with: only deletions are found.
        assert_eq!(missing(Some(s), &[(7, 0), (9, 0)]), None);
        assert!(missing(Some(s), &[(9, 0)]).is_some());
        // Version 1 with version 2's length, or the reverse, is refused.
        let mut long = v1.clone();
        long.extend_from_slice(&0u64.to_le_bytes());
        assert!(Span::decode(dir, &long).is_err());
    }

    #[test]
    fn the_sealed_length_leaves_out_the_newest_segment() {
        let s = Span::of(&[(0, 4096), (100, 5000), (200, 77)]).expect("span");
        assert_eq!((s.first, s.last, s.count), (0, 200, 3));
        assert_eq!(s.sealed_bytes, Some(9096));
        assert_eq!(Span::of(&[(5, 123)]).and_then(|s| s.sealed_bytes), Some(0));
        assert_eq!(Span::of(&[]), None);
    }

    #[test]
    fn only_files_missing_from_the_recorded_range_are_a_loss() {
        let r = Span::of(&segs(&[0, 100, 200]));
        assert_eq!(missing(None, &[]), None);
        assert_eq!(missing(r, &segs(&[0, 100, 200])), None);
        // Made and not yet recorded, or cut and not yet deleted: more files, no loss.
        assert_eq!(missing(r, &segs(&[0, 100, 200, 300])), None);
        assert_eq!(
            missing(Span::of(&segs(&[100, 200])), &segs(&[0, 100, 200])),
            None
        );
        let newest = missing(r, &segs(&[0, 100])).expect("newest gone");
        assert!(
            newest.contains("1 of the 3") && newest.contains("newest"),
            "{newest}"
        );
        let oldest = missing(r, &segs(&[100, 200])).expect("oldest gone");
        assert!(oldest.contains("oldest"), "{oldest}");
        let middle = missing(r, &segs(&[0, 200])).expect("middle gone");
        assert!(
            middle.contains("1 of the 3") && !middle.contains("among"),
            "{middle}"
        );
        let all = missing(r, &[]).expect("all gone");
        assert!(all.contains("every one"), "{all}");
        // A file outside the range does not stand in for one inside it.
        assert!(missing(r, &segs(&[0, 100, 300])).is_some());
    }

    #[test]
    fn a_sealed_segment_cut_short_is_a_loss_and_the_newest_is_not_compared() {
        let r = Span::of(&segs(&[0, 100, 200]));
        let cut = missing(r, &[(0, 1000), (100, 999), (200, 1000)]).expect("cut");
        assert!(
            cut.contains("hold 1999 bytes, 2000 recorded") && cut.contains("1 bytes were cut"),
            "{cut}"
        );
        assert!(missing(r, &[(0, 10), (100, 1000), (200, 1000)]).is_some());
        // The newest was being written (a crash cuts its unsynced tail, recovery its torn one).
        assert_eq!(missing(r, &[(0, 1000), (100, 1000), (200, 3)]), None);
        // Sealed since the record (a crash before the next segment's record): not compared.
        assert_eq!(
            missing(r, &[(0, 1000), (100, 1000), (200, 1), (300, 0)]),
            None
        );
        // Longer is not a loss (what it holds is checked when read).
        assert_eq!(missing(r, &[(0, 1000), (100, 4096), (200, 0)]), None);
        // Outside the range (retention's or a truncation's leftovers): not counted.
        let kept = Span::of(&[(100, 1000), (200, 0)]);
        assert_eq!(missing(kept, &[(0, 1), (100, 1000), (200, 0)]), None);
    }
}
