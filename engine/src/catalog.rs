//! The catalog: which topics exist and their settings, in `<data_dir>/catalog.meta` (a JSON
//! payload in the atomically replaced metadata format of `meta.rs`).

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::limits::MAX_TOPIC_NAME_BYTES;
use crate::meta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const FILE: &str = "catalog.meta";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    pub topics: BTreeMap<String, TopicEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicEntry {
    pub partitions: u32,
    pub config: LogConfig,
}

/// A topic as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub config: LogConfig,
}

pub fn load(dir: &Path) -> Result<Catalog> {
    let Some(bytes) = meta::read(dir, FILE)? else {
        return Ok(Catalog {
            version: 1,
            topics: BTreeMap::new(),
        });
    };
    let cat: Catalog = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(dir.join(FILE), 16, format!("catalog does not parse: {e}")))?;
    if cat.version != 1 {
        return Err(Error::corrupt(
            dir.join(FILE),
            16,
            format!("unknown catalog version {}", cat.version),
        ));
    }
    for (name, t) in &cat.topics {
        check_topic_name(name)?;
        t.config
            .validate()
            .map_err(|e| Error::corrupt(dir.join(FILE), 16, format!("topic {name}: {e}")))?;
    }
    Ok(cat)
}

pub fn save(dir: &Path, cat: &Catalog) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(cat).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    meta::write(dir, FILE, &bytes)
}

/// Topic names become directory names: 1 to `MAX_TOPIC_NAME_BYTES` of `[A-Za-z0-9._-]`, not
/// `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "topic name {} must be 1 to {MAX_TOPIC_NAME_BYTES} characters of letters, digits, '.', '_' or '-'",
            crate::error::shorten(name)
        )))
    }
}
