//! The config file: YAML, or TOML for a name ending in `.toml`, one key per setting.
//!
//! Values are read as plain text, the same text a flag or a `PROGLOG_*` variable would carry
//! (`rpc-port: 9000` and `rpc-port: "9000"` are the same), so that one parser per setting
//! serves every origin. A list is allowed where the setting takes one; an empty value (`key:`
//! or `~`) leaves the setting unset. Unknown and repeated keys are errors, so that a typo never
//! falls back to a default silently.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::ConfigError;

/// A value as the file writes it, before the setting's own parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileValue {
    /// Present but empty: the setting stays unset.
    Empty,
    /// A scalar (text, number or boolean) as text.
    Text(String),
    List(Vec<String>),
}

/// A loaded config file.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// In file order, each key once.
    entries: Vec<(String, FileValue)>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: path.to_owned(),
            reason: e,
        })?;
        let parse_err = |reason: String| ConfigError::ParseFile {
            path: path.to_owned(),
            reason,
        };
        let entries = if text.trim().is_empty() {
            Entries::default()
        } else if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        } else {
            yaml_serde::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        };
        Ok(ConfigFile {
            path: path.to_owned(),
            entries: entries.0,
        })
    }

    /// Refuses the first key that is not one of `known`, naming it (and the key it was
    /// probably meant to be).
    pub fn check_keys(&self, known: &[String]) -> Result<(), ConfigError> {
        let Some(unknown) = self
            .entries
            .iter()
            .map(|(k, _)| k)
            .find(|k| !known.contains(k))
        else {
            return Ok(());
        };
        let spelled = unknown.trim().replace('_', "-").to_ascii_lowercase();
        let hint = if known.contains(&spelled) {
            format!("did you mean `{spelled}`?")
        } else {
            format!("the keys are the flag names: {}", known.join(", "))
        };
        Err(ConfigError::ParseFile {
            path: self.path.clone(),
            reason: format!("unknown key `{unknown}` ({hint})"),
        })
    }

    pub fn get(&self, key: &str) -> Option<&FileValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// The file's top-level map, keys in file order.
#[derive(Default)]
struct Entries(Vec<(String, FileValue)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        d.deserialize_any(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of settings (key: value)")
    }

    /// A YAML file holding only `~` or `---`.
    fn visit_unit<E: de::Error>(self) -> Result<Entries, E> {
        Ok(Entries::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries: Vec<(String, FileValue)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

impl<'de> Deserialize<'de> for FileValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FileValue, D::Error> {
        d.deserialize_any(ValueVisitor { in_list: false })
    }
}

/// Reads scalars as text; `in_list` refuses lists of lists.
struct ValueVisitor {
    in_list: bool,
}

/// One item of a list: a scalar only.
struct Item(String);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
        match d.deserialize_any(ValueVisitor { in_list: true })? {
            FileValue::Text(t) => Ok(Item(t)),
            _ => Err(de::Error::custom("a list item must be a plain value")),
        }
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = FileValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a plain value (text, number or true/false) or a list of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<FileValue, E> {
        Ok(FileValue::Text(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileValue, E> {
        Ok(FileValue::Text(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileValue, E> {
        Ok(FileValue::Text(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<FileValue, E> {
        Ok(FileValue::Text(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FileValue, E> {
        Ok(FileValue::Text(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<FileValue, E> {
        Ok(FileValue::Empty)
    }

    fn visit_none<E: de::Error>(self) -> Result<FileValue, E> {
        Ok(FileValue::Empty)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<FileValue, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FileValue, A::Error> {
        if self.in_list {
            return Err(de::Error::custom("a list item must be a plain value"));
        }
        let mut items = Vec::new();
        while let Some(Item(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(FileValue::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<FileValue, A::Error> {
        Err(de::Error::custom(
            "a setting's value is plain (text, number or true/false) or a list, not a map or table",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Result<ConfigFile, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        ConfigFile::load(&path)
    }

    #[test]
    fn scalars_read_as_text_in_both_formats() {
        let yaml = load(
            "c.yaml",
            "rpc-port: 9000\nnode-name: 123\nbootstrap: true\nlisten: \"a:1\"\ndata-dir:\nx: [a, 2]\n",
        )
        .unwrap();
        let toml = load(
            "c.toml",
            "rpc-port = 9000\nnode-name = \"123\"\nbootstrap = true\nlisten = \"a:1\"\nx = [\"a\", 2]\n",
        )
        .unwrap();
        for f in [&yaml, &toml] {
            assert_eq!(f.get("rpc-port"), Some(&FileValue::Text("9000".into())));
            assert_eq!(f.get("node-name"), Some(&FileValue::Text("123".into())));
            assert_eq!(f.get("bootstrap"), Some(&FileValue::Text("true".into())));
            assert_eq!(f.get("listen"), Some(&FileValue::Text("a:1".into())));
            assert_eq!(
                f.get("x"),
                Some(&FileValue::List(vec!["a".into(), "2".into()]))
            );
        }
        assert_eq!(yaml.get("data-dir"), Some(&FileValue::Empty));
        assert!(load("c.yaml", "\n").unwrap().entries.is_empty());
        assert!(load("c.yaml", "~\n").unwrap().entries.is_empty());
    }

    #[test]
    fn bad_shapes_are_refused_with_the_file_name() {
        for (name, text, needle) in [
            (
                "c.yaml",
                "rpc-port: 1\nrpc-port: 2\n",
                "duplicate key `rpc-port`",
            ),
            ("c.yaml", "- a\n- b\n", "a map of settings"),
            ("c.yaml", "listen: {a: 1}\n", "not a map"),
            ("c.yaml", "x: [[a]]\n", "list item"),
            ("c.yaml", "data-dir: [x\n", "c.yaml"),
            ("c.toml", "[table]\nx = 1\n", "not a map"),
        ] {
            let e = load(name, text).unwrap_err();
            assert!(matches!(e, ConfigError::ParseFile { .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains(needle) && e.contains(name), "{text:?}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let known = vec!["data-dir".to_owned(), "rpc-port".to_owned()];
        let f = load("c.yaml", "rpc-port: 1\ndata_dir: x\n").unwrap();
        let e = f.check_keys(&known).unwrap_err().to_string();
        assert!(
            e.contains("unknown key `data_dir`") && e.contains("`data-dir`?"),
            "{e}"
        );
        let f = load("c.yaml", "colour: blue\n").unwrap();
        let e = f.check_keys(&known).unwrap_err().to_string();
        assert!(
            e.contains("`colour`") && e.contains("data-dir, rpc-port"),
            "{e}"
        );
        load("c.yaml", "rpc-port: 1\n")
            .unwrap()
            .check_keys(&known)
            .unwrap();
    }
}
