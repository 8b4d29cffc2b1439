//! `segments.meta`: the log's record of the segment files it holds (the first and last base
//! offsets and how many there are), so that segment files deleted from under a log whose
//! directory stays are found at open, where nothing else could show it: a log without its
//! newest segments reads as a shorter valid log, one without its oldest as a log that
//! retention cut, one without a middle segment as a valid log until a read reaches the gap.
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

const VERSION: u8 = 1;
const LEN: usize = 25;

/// The segments a log holds: base offsets `first..=last`, `count` files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

impl Span {
    /// The span of segments with these base offsets, oldest first (none: no span).
    pub(super) fn of(bases: &[u64]) -> Option<Span> {
        Some(Span {
            first: *bases.first()?,
            last: *bases.last()?,
            count: bases.len() as u64,
        })
    }

    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[1..9].copy_from_slice(&self.first.to_le_bytes());
        b[9..17].copy_from_slice(&self.last.to_le_bytes());
        b[17..25].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    fn decode(dir: &Path, b: &[u8]) -> Result<Span> {
        let bad = |why: &str| Error::corrupt(dir.join(SEGMENTS_META), 16, why.to_owned());
        if b.len() != LEN {
            return Err(bad(&format!(
                "{} bytes of payload, {LEN} expected",
                b.len()
            )));
        }
        if b[0] != VERSION {
            return Err(bad(&format!("version {}, {VERSION} expected", b[0])));
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
        };
        if span.count == 0 || span.first > span.last {
            return Err(bad("an empty or inverted range"));
        }
        Ok(span)
    }
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

/// Why a log that recorded `recorded` and holds segment files with base offsets `bases`
/// (sorted) lost records, if it did: fewer files in the recorded range than recorded. Files
/// outside it are not a loss (a crash between a segment's making and its record, or inside
/// a truncation or retention), nor is no record (a directory of a version that kept none,
/// or a crash inside a reset).
pub(super) fn missing(recorded: Option<Span>, bases: &[u64]) -> Option<String> {
    let r = recorded?;
    let present = bases
        .iter()
        .filter(|&&b| (r.first..=r.last).contains(&b))
        .count() as u64;
    if present >= r.count {
        return None;
    }
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

    #[test]
    fn a_span_round_trips_and_a_bad_one_is_refused() {
        let dir = Path::new("/nonexistent");
        let s = Span {
            first: 7,
            last: 1 << 40,
            count: 3,
        };
        assert_eq!(Span::decode(dir, &s.encode()).expect("decode"), s);
        let mut b = s.encode();
        b[0] = 2;
        assert!(Span::decode(dir, &b).is_err());
        assert!(Span::decode(dir, &b[..24]).is_err());
        let inverted = Span {
            first: 9,
            last: 8,
            count: 1,
        };
        assert!(Span::decode(dir, &inverted.encode()).is_err());
    }

    #[test]
    fn only_files_missing_from_the_recorded_range_are_a_loss() {
        let r = Span::of(&[0, 100, 200]);
        assert_eq!(missing(None, &[]), None);
        assert_eq!(missing(r, &[0, 100, 200]), None);
        // Made and not yet recorded, or cut and not yet deleted: more files, no loss.
        assert_eq!(missing(r, &[0, 100, 200, 300]), None);
        assert_eq!(missing(Span::of(&[100, 200]), &[0, 100, 200]), None);
        let newest = missing(r, &[0, 100]).expect("newest gone");
        assert!(
            newest.contains("1 of the 3") && newest.contains("newest"),
            "{newest}"
        );
        let oldest = missing(r, &[100, 200]).expect("oldest gone");
        assert!(oldest.contains("oldest"), "{oldest}");
        let middle = missing(r, &[0, 200]).expect("middle gone");
        assert!(
            middle.contains("1 of the 3") && !middle.contains("among"),
            "{middle}"
        );
        let all = missing(r, &[]).expect("all gone");
        assert!(all.contains("every one"), "{all}");
        // A file outside the range does not stand in for one inside it.
        assert!(missing(r, &[0, 100, 300]).is_some());
    }
}
