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
const MAX_KINDS: usize = 256;

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

/// Writes a connection's log line at `level` unless another of the same `kind` was written
/// on this executor in the last [`WINDOW`]; the next line written says how many were not.
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
pub(crate) use conn_log;

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
}
