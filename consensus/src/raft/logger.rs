//! raft-rs logs through `slog`; this drain forwards its records to the `log` crate (target
//! `raft`), formatting nothing unless the level is enabled, so a busy Ready loop pays no
//! formatting cost for silenced debug lines.

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// A `slog` drain that writes to `log`.
pub struct LogDrain;

impl Drain for LogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => log::Level::Error,
            Level::Warning => log::Level::Warn,
            Level::Info => log::Level::Info,
            Level::Debug => log::Level::Debug,
            Level::Trace => log::Level::Trace,
        };
        if !log::log_enabled!(target: "raft", level) {
            return Ok(());
        }
        let mut kv = KvString(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        log::log!(target: "raft", level, "{}{}", record.msg(), kv.0);
        Ok(())
    }
}

/// Collects key-value pairs as ` key=value` text.
struct KvString(String);

impl slog::Serializer for KvString {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// A logger for raft-rs tagged with the node and group it belongs to.
pub fn logger(node: u64, group: u64) -> slog::Logger {
    slog::Logger::root(LogDrain.fuse(), slog::o!("node" => node, "group" => group))
}
