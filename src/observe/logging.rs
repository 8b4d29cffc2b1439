//! The `log` backend: env_logger with our own line format.
//!
//! - Levels per module from the filter (`info,proglog::rpc=debug,engine=warn`), which
//!   comes from `--log-level`, `PROGLOG_LOG_LEVEL`, the config file or `RUST_LOG`.
//! - `human` (default): `2026-01-02T03:04:05.678Z INFO  target: message key=value ...`.
//! - `json`: one object per line with `ts`, `level`, `target`, `msg`, and the record's
//!   key-values as fields (numbers stay numbers).
//! - A line written while a gRPC call's task is being polled carries the call's
//!   `trace_id` and `span_id` (see `net::observe`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;

use log::kv::{Key, Value, VisitSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}; use human or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

/// A key-value of a record, as the formats need it.
enum Field {
    Num(String),
    Text(String),
}

struct Collect(Vec<(String, Field)>);

impl<'kvs> VisitSource<'kvs> for Collect {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let field = if let Some(n) = value.to_u64() {
            Field::Num(n.to_string())
        } else if let Some(n) = value.to_i64() {
            Field::Num(n.to_string())
        } else if let Some(f) = value.to_f64().filter(|f| f.is_finite()) {
            Field::Num(f.to_string())
        } else {
            Field::Text(value.to_string())
        };
        self.0.push((key.as_str().to_owned(), field));
        Ok(())
    }
}

fn fields(record: &log::Record<'_>) -> Vec<(String, Field)> {
    let mut c = Collect(Vec::new());
    let _ = record.key_values().visit(&mut c);
    // The call's trace, unless the record names one itself.
    if !c.0.iter().any(|(k, _)| k == "trace_id") {
        if let Some((t, s)) =
            net::observe::with_current(|c| (c.trace_id.clone(), c.span_id.clone()))
        {
            c.0.push(("trace_id".into(), Field::Text(t)));
            c.0.push(("span_id".into(), Field::Text(s)));
        }
    }
    c.0
}

/// One human line (without the newline).
pub fn human_line(ts: &str, record: &log::Record<'_>) -> String {
    let mut line = format!(
        "{ts} {:<5} {}: {}",
        record.level(),
        record.target(),
        record.args()
    );
    for (k, v) in fields(record) {
        match v {
            Field::Num(n) => {
                let _ = write!(line, " {k}={n}");
            }
            Field::Text(t) if t.is_empty() => {}
            Field::Text(t) if t.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') => {
                let _ = write!(line, " {k}={t:?}");
            }
            Field::Text(t) => {
                let _ = write!(line, " {k}={t}");
            }
        }
    }
    line
}

/// One JSON object (without the newline).
pub fn json_line(ts: &str, record: &log::Record<'_>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), ts.into());
    obj.insert("level".into(), record.level().as_str().into());
    obj.insert("target".into(), record.target().into());
    obj.insert("msg".into(), record.args().to_string().into());
    for (k, v) in fields(record) {
        let v = match v {
            Field::Num(n) => serde_json::from_str(&n).unwrap_or(serde_json::Value::String(n)),
            Field::Text(t) => serde_json::Value::String(t),
        };
        // Record fields never replace the fixed ones.
        obj.entry(k).or_insert(v);
    }
    serde_json::Value::Object(obj).to_string()
}

/// Installs the process's logger. `filter` is env_logger syntax.
pub fn init(filter: &str, format: LogFormat) -> Result<(), log::SetLoggerError> {
    env_logger::Builder::new()
        .parse_filters(filter)
        .format(move |buf, record| {
            let ts = buf.timestamp_millis().to_string();
            let line = match format {
                LogFormat::Human => human_line(&ts, record),
                LogFormat::Json => json_line(&ts, record),
            };
            writeln!(buf, "{line}")
        })
        .try_init()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_record<R>(f: impl FnOnce(&log::Record<'_>) -> R) -> R {
        let kvs: [(&str, Value<'_>); 3] = [
            ("method", Value::from("/log.v1.Log/Produce")),
            ("bytes_in", Value::from(42u64)),
            ("peer", Value::from("127.0.0.1:5 x")),
        ];
        let args = format_args!("done \"x\"");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Info)
            .target("proglog::rpc")
            .key_values(&kvs)
            .build();
        f(&record)
    }

    #[test]
    fn human_lines_show_fields() {
        let line = with_record(|r| human_line("T", r));
        assert_eq!(
            line,
            "T INFO  proglog::rpc: done \"x\" method=/log.v1.Log/Produce bytes_in=42 peer=\"127.0.0.1:5 x\""
        );
    }

    #[test]
    fn json_lines_parse_and_keep_numbers() {
        let line = with_record(|r| json_line("T", r));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["msg"], "done \"x\"");
        assert_eq!(v["bytes_in"], 42);
        assert_eq!(v["method"], "/log.v1.Log/Produce");
        assert!(v.get("trace_id").is_none());
    }

    #[test]
    fn formats_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
