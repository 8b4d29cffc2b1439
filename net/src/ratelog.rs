//! Log lines about single connections (and failed calls), rate-limited per kind.
//!
//! A flood of connections that all fail the same way (15,000 handshake timeouts, a port
//! scanner, clients over the limit) would otherwise write one line each and bury everything
//! else. Each kind of line is written at most once per [`WINDOW`] per executor; the first
//! line written after a window in which some were held back says how many, so the count is
//! never lost. A kind is a name, and for failures that differ by their reason (a TLS
//! handshake refused for an unknown issuer or for an expired certificate) the reason too, so
//! that each reason still shows. State is per executor thread: no lock, and a kind's first
//! line on each shard still shows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one line of each kind per window per executor.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Kinds remembered per executor; past it the memory starts over (a few more lines then).
const MAX_KINDS: usize = 2048;

#[derive(Default)]
struct Kind {
    /// When the current window began (the time of the last line written).
    window_start: Option<Instant>,
    /// Lines held back since.
    suppressed: u64,
}

thread_local! {
    static KINDS: RefCell<HashMap<String, Kind>> = RefCell::new(HashMap::new());
}

/// Whether a line of `kind` may be written now, and how many were held back before it.
/// `None`: hold this one back (it is counted).
pub fn admit(kind: &str, now: Instant) -> Option<u64> {
    KINDS.with(|k| {
        let mut kinds = k.borrow_mut();
        if !kinds.contains_key(kind) && kinds.len() >= MAX_KINDS {
            kinds.clear();
        }
        let state = kinds.entry(kind.to_owned()).or_default();
        match state.window_start {
            Some(start) if now.duration_since(start) < WINDOW => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.window_start = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    })
}

/// A group of kinds: how many of its lines were written in its window.
#[derive(Default)]
struct Group {
    window_start: Option<Instant>,
    lines: u32,
    /// Lines of kinds not yet admitted held back since the group's last line.
    suppressed: u64,
}

thread_local! {
    static GROUPS: RefCell<HashMap<String, Group>> = RefCell::new(HashMap::new());
}

/// [`admit`] for a kind that belongs to a `group` named by the server (a method and a status
/// code), where the kind itself may carry what a client sent (a message quoting its request):
/// at most `per_window` lines of the group per [`WINDOW`] per executor, whatever the kinds,
/// and a kind's lines as [`admit`] allows. Kinds held back because the group's lines are
/// spent are not remembered (a client varying them fills no table) and are counted with the
/// group; the next line of the group says how many were held back, its own kind's included.
/// Without a kind, only the group's bound applies (lines that differ only by what no kind
/// names, such as each slow call).
pub fn admit_in_group(
    group: &str,
    per_window: u32,
    kind: Option<&str>,
    now: Instant,
) -> Option<u64> {
    let held_for_kind = KINDS.with(|k| {
        let mut kinds = k.borrow_mut();
        let Some(kind) = kind else { return Some(0) };
        match kinds.get_mut(kind) {
            Some(state)
                if state
                    .window_start
                    .is_some_and(|s| now.duration_since(s) < WINDOW) =>
            {
                state.suppressed += 1;
                None
            }
            Some(state) => Some(std::mem::take(&mut state.suppressed)),
            None => Some(0),
        }
    })?;
    let held_for_group = GROUPS.with(|g| {
        let mut groups = g.borrow_mut();
        if !groups.contains_key(group) && groups.len() >= MAX_KINDS {
            groups.clear();
        }
        let state = groups.entry(group.to_owned()).or_default();
        if state
            .window_start
            .is_none_or(|s| now.duration_since(s) >= WINDOW)
        {
            state.window_start = Some(now);
            state.lines = 0;
        }
        if state.lines >= per_window {
            state.suppressed += 1;
            return None;
        }
        state.lines += 1;
        Some(std::mem::take(&mut state.suppressed))
    });
    let Some(held_for_group) = held_for_group else {
        // The kind's own count was taken: give it back to the group's.
        GROUPS.with(|g| {
            if let Some(state) = g.borrow_mut().get_mut(group) {
                state.suppressed += held_for_kind;
            }
        });
        return None;
    };
    let Some(kind) = kind else {
        return Some(held_for_group);
    };
    KINDS.with(|k| {
        let mut kinds = k.borrow_mut();
        if !kinds.contains_key(kind) && kinds.len() >= MAX_KINDS {
            kinds.clear();
        }
        kinds.entry(kind.to_owned()).or_default().window_start = Some(now);
    });
    Some(held_for_kind + held_for_group)
}

/// Writes a connection's log line at `level` unless another of the same `kind` was written
/// on this executor in the last [`WINDOW`]; the next line written says how many were not.
/// A kind is named by the server (a constant, or a reason it chose), never made of what the
/// peer sent: a peer varying it would get a line each time.
#[macro_export]
macro_rules! conn_log {
    ($level:expr, $kind:expr, $($arg:tt)+) => {{
        let level: log::Level = $level;
        if log::log_enabled!(level) {
            if let Some(held) = $crate::ratelog::admit($kind, std::time::Instant::now()) {
                if held == 0 {
                    log::log!(level, $($arg)+);
                } else {
                    log::log!(
                        level,
                        "{} ({held} more lines like this in the last {:?} not logged)",
                        format_args!($($arg)+),
                        $crate::ratelog::WINDOW
                    );
                }
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_then_the_count() {
        let t0 = Instant::now();
        assert_eq!(admit("test-kind", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(admit("test-kind", t0 + Duration::from_millis(i)), None);
        }
        // Another kind is independent.
        assert_eq!(admit("other-kind", t0), Some(0));
        assert_eq!(admit("test-kind", t0 + WINDOW), Some(5));
        assert_eq!(admit("test-kind", t0 + WINDOW), None);
        assert_eq!(admit("test-kind", t0 + WINDOW * 2), Some(1));
    }

    #[test]
    fn a_group_writes_a_few_lines_per_window_whatever_the_kinds() {
        let t0 = Instant::now();
        let g = "test-group";
        // Two kinds of the group pass, then it is spent: new kinds are held back (and not
        // remembered), and so is a kind already written.
        assert_eq!(admit_in_group(g, 2, Some("a"), t0), Some(0));
        assert_eq!(admit_in_group(g, 2, Some("b"), t0), Some(0));
        for i in 0..100 {
            assert_eq!(admit_in_group(g, 2, Some(&format!("c{i}")), t0), None);
        }
        assert_eq!(admit_in_group(g, 2, Some("a"), t0), None);
        KINDS.with(|k| assert!(!k.borrow().contains_key("c7")));
        // Another group is independent (its kinds carry its name, as callers' do).
        assert_eq!(
            admit_in_group("other-group", 2, Some("other a"), t0),
            Some(0)
        );
        // Next window: the first line says how many were held back, "a"'s own included.
        assert_eq!(admit_in_group(g, 2, Some("a"), t0 + WINDOW), Some(101));
        assert_eq!(admit_in_group(g, 2, Some("d"), t0 + WINDOW), Some(0));
        assert_eq!(admit_in_group(g, 2, Some("e"), t0 + WINDOW), None);
        assert_eq!(admit_in_group(g, 2, Some("e"), t0 + WINDOW * 2), Some(1));
    }
}
