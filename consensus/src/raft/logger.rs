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
            // raft-rs narrates every step at info (a group's creation, each election
            // stage): seven lines per partition at every start. What an operator needs of it
            // is logged by us at info (a leader change, a stop, a snapshot), naming the
            // partition; the narration is there at debug (`--log-level info,raft=debug`).
            Level::Info => log::Level::Debug,
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

/// The partitions that group ids stand for, as far as this process has met them. A group id
/// is a hash of its partition's name ([`replica::group_id`](super::replica::group_id)), the
/// same on every node, so one table serves every node a process runs.
fn names() -> &'static std::sync::RwLock<std::collections::HashMap<u64, Box<str>>> {
    static NAMES: std::sync::OnceLock<std::sync::RwLock<std::collections::HashMap<u64, Box<str>>>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// Remembers which partition group `id` replicates, for [`GroupName`]. Cheap when known.
pub fn name_group(id: u64, partition: impl std::fmt::Display) {
    let known = names().read().map(|n| n.contains_key(&id)).unwrap_or(true);
    if !known {
        if let Ok(mut n) = names().write() {
            n.entry(id)
                .or_insert_with(|| partition.to_string().into_boxed_str());
        }
    }
}

/// A group as logs name it: `partition default/0 (group 9766...)`, `the controller (group
/// 0)`, or `group N` when this process has not met its partition.
pub struct GroupName(pub u64);

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("the controller (group 0)");
        }
        match names().read().ok().and_then(|n| n.get(&self.0).cloned()) {
            Some(p) => write!(f, "partition {p} (group {})", self.0),
            None => write!(f, "group {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_named_by_its_partition_once_met() {
        let id = crate::raft::replica::group_id(&engine::seam::PartitionId::new("orders", 3), 0);
        assert_eq!(GroupName(id).to_string(), format!("group {id}"));
        name_group(id, "orders/3");
        name_group(id, "ignored: the first name stays");
        assert_eq!(
            GroupName(id).to_string(),
            format!("partition orders/3 (group {id})")
        );
        assert_eq!(GroupName(0).to_string(), "the controller (group 0)");
    }
}
