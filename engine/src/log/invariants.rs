//! The log's invariants (stated in the module doc of `log`), checked in debug builds after
//! every change of its state: every mutable borrow of the state goes through
//! [`Log::state_mut`], whose guard calls [`check_invariants`] when the borrow ends.

use super::{Log, State, Visibility};
use crate::segment::BLOCK;
use std::cell::RefMut;
use std::ops::{Deref, DerefMut};

impl Log {
    /// Borrows the state to change it; the invariants are checked when the borrow ends.
    pub(super) fn state_mut(&self) -> StateMut<'_> {
        StateMut(self.state.borrow_mut())
    }
}

/// A mutable borrow of a log's state that checks the invariants when it ends.
pub(super) struct StateMut<'a>(RefMut<'a, State>);

impl Deref for StateMut<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl DerefMut for StateMut<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Drop for StateMut<'_> {
    fn drop(&mut self) {
        // A panic already under way is the report; a second one would abort.
        if !std::thread::panicking() {
            check_invariants(&self.0);
        }
    }
}

/// Panics (in debug builds) if `st` breaks an invariant.
pub(super) fn check_invariants(st: &State) {
    debug_assert_eq!(broken_invariant(st), None, "log invariant broken");
}

/// The first invariant `st` breaks, if any, in words.
fn broken_invariant(st: &State) -> Option<String> {
    if st.durable_next > st.written_next || st.written_next > st.next {
        return Some(format!(
            "durable_next {} <= written_next {} <= next {} does not hold",
            st.durable_next, st.written_next, st.next
        ));
    }
    if st.durable_index > st.next_index {
        return Some(format!(
            "durable_index {} is past next_index {}",
            st.durable_index, st.next_index
        ));
    }
    if st.visibility == Visibility::Owner && st.visible > st.next {
        return Some(format!("visible {} is past next {}", st.visible, st.next));
    }
    let segs = &st.segments;
    for (i, pair) in segs.windows(2).enumerate() {
        if pair[0].base >= pair[1].base || pair[0].next != pair[1].base {
            return Some(format!(
                "segment {i} [{}, {}) is not followed by segment {} at {}",
                pair[0].base,
                pair[0].next,
                i + 1,
                pair[1].base
            ));
        }
    }
    for (i, s) in segs.iter().enumerate() {
        if s.next < s.base {
            return Some(format!(
                "segment {i} ends at {} before its base {}",
                s.next, s.base
            ));
        }
        let Some(w) = &s.writer else { continue };
        if i + 1 != segs.len() {
            return Some(format!("segment {i} has a writer but is not the last"));
        }
        let buf_end = w.buf_pos + w.buf.len() as u64;
        if w.buf_pos % BLOCK != 0
            || buf_end != s.size
            || w.buf_pos > w.written
            || w.written > s.size
        {
            return Some(format!(
                "active segment: buffer [{}, {buf_end}), written {}, size {}",
                w.buf_pos, w.written, s.size
            ));
        }
        // The tail cache holds bytes the file holds, ending where the buffer begins; the
        // zero-filled window starts at a block boundary at or after what was written.
        if w.cache.end().is_some_and(|e| e != w.buf_pos) {
            return Some(format!(
                "active segment: tail cache ends at {:?}, buffer starts at {}",
                w.cache.end(),
                w.buf_pos
            ));
        }
        if w.alloc_end % BLOCK != 0 || w.alloc_end < w.buf_pos {
            return Some(format!(
                "active segment: written blocks end at {}, buffer starts at {}",
                w.alloc_end, w.buf_pos
            ));
        }
    }
    // A roll, truncation or reset rebuilding the active segment, or one that failed and
    // latched the log, may leave it without segments, without a writer, or with `next` past
    // the last segment.
    let rebuilding = st.exclusive || st.latched.is_some() || st.disk_full.is_some();
    let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
        return (!rebuilding).then(|| "no segments".to_string());
    };
    if st.lowest != first.base {
        return Some(format!(
            "lowest {} is not the first segment's base {}",
            st.lowest, first.base
        ));
    }
    if rebuilding {
        return None;
    }
    if st.next != last.next {
        return Some(format!(
            "next {} is not the last segment's end {}",
            st.next, last.next
        ));
    }
    if last.writer.is_none() && !st.closed {
        return Some("the last segment of an open log has no writer".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::FileBudget;
    use crate::config::LogConfig;
    use crate::log::space::DiskFull;
    use crate::segment::Segment;
    use std::time::SystemTime;

    /// Changes a healthy state.
    type Breaker = fn(&mut State);

    /// Opens a log with a few records over three segments, breaks its state with `f`, and
    /// returns what the checker says.
    fn broken_after(f: Breaker) -> Option<String> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        let config = LogConfig {
            segment_bytes: 64 * 1024,
            max_record_bytes: 32 * 1024,
            max_batch_bytes: 32 * 1024,
            write_behind_bytes: 64 * 1024,
            ..LogConfig::default()
        };
        crate::run_local(tmp.path(), move || async move {
            let log = Log::open(&dir, config, FileBudget::new(4))
                .await
                .expect("open");
            let value = bytes::Bytes::from(vec![7u8; 30 * 1024]);
            for _ in 0..5 {
                log.append(&[crate::NewRecord::new(value.clone())])
                    .await
                    .expect("append");
            }
            let mut st = log.state.borrow_mut();
            assert!(st.segments.len() >= 3, "the test wants sealed segments");
            assert_eq!(broken_invariant(&st), None, "a healthy log");
            f(&mut st);
            broken_invariant(&st)
        })
        .expect("executor")
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let cases: &[(&str, Breaker)] = &[
            ("durable_next", |st| st.durable_next = st.next + 1),
            ("durable_index", |st| st.durable_index = st.next_index + 1),
            ("visible", |st| {
                st.visibility = Visibility::Owner;
                st.visible = st.next + 1;
            }),
            ("written_next", |st| st.written_next = st.next + 1),
            ("written_next", |st| {
                st.durable_next = st.next;
                st.written_next = st.next - 1;
            }),
            ("not followed", |st| st.segments[0].next += 1),
            ("not followed", |st| st.segments.swap(0, 1)),
            ("has a writer", |st| {
                let w = st.segments.last_mut().and_then(|s| s.writer.take());
                st.segments[0].writer = w;
            }),
            ("buffer", |st| {
                if let Some(w) = st.segments.last_mut().and_then(|s| s.writer.as_mut()) {
                    w.buf.push(0);
                }
            }),
            ("buffer", |st| {
                if let Some(w) = st.segments.last_mut().and_then(|s| s.writer.as_mut()) {
                    w.written += 1;
                }
            }),
            ("lowest", |st| st.lowest += 1),
            ("last segment's end", |st| {
                st.next -= 1;
                st.durable_next = st.durable_next.min(st.next);
                st.written_next = st.written_next.min(st.next);
            }),
            ("no writer", |st| {
                st.segments.last_mut().map(|s| s.writer.take());
            }),
            ("no segments", |st| st.segments.clear()),
        ];
        for (want, f) in cases {
            let got = broken_after(*f);
            assert!(
                got.as_deref().is_some_and(|g| g.contains(want)),
                "expected a broken invariant naming {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn a_latched_or_rebuilding_log_may_have_no_segments_nor_writer() {
        let tolerated: &[Breaker] = &[
            |st| {
                st.latched = Some("failed".into());
                st.segments.clear();
            },
            |st| {
                st.exclusive = true;
                st.segments.clear();
            },
            |st| {
                st.latched = Some("failed".into());
                st.segments.last_mut().map(|s| s.writer.take());
                st.next += 10;
            },
            |st| {
                st.closed = true;
                st.segments.last_mut().map(|s| s.writer.take());
            },
            // A roll cut short by a full disk: sealed, no writer, waiting for space.
            |st| {
                st.disk_full = Some(DiskFull::for_tests());
                st.segments.last_mut().map(|s| s.writer.take());
            },
        ];
        for f in tolerated {
            assert_eq!(broken_after(*f), None);
        }
        // What holds whatever the condition.
        let broken: &[Breaker] = &[
            |st| {
                st.latched = Some("failed".into());
                st.lowest += 1;
            },
            |st| {
                st.exclusive = true;
                st.durable_next = st.next + 1;
            },
            |st| {
                st.latched = Some("failed".into());
                let dir = st.segments[0].data_path.parent().map(|p| p.to_owned());
                let dir = dir.unwrap_or_default();
                st.segments
                    .push(Segment::new_sealed(&dir, u64::MAX, 0, SystemTime::now()));
            },
        ];
        for f in broken {
            assert!(broken_after(*f).is_some());
        }
    }
}
