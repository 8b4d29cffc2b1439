//! The types a setting's value can have: how each is read from text, shown back, and turned
//! into the type [`Settings`](super::Settings) holds.
//!
//! A flag, a `PROGLOG_*` variable and a config-file value are all read by the same
//! [`SettingValue::parse`], so a value means the same wherever it is written. What `Settings`
//! holds may differ from what is written (`ByteSize` -> `usize`, `AdminAddr` ->
//! `Option<SocketAddr>`): [`Land`] makes that step, and its `Err` is reported like a bad value.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::ValueParser;
use clap::ArgMatches;
use engine::Durability;

use crate::observe::logging::LogFormat;

/// A type a setting's value can have.
pub trait SettingValue: Clone + Send + Sync + 'static {
    /// Whether the value is a list: the config file may give a YAML/TOML list (its items are
    /// joined with commas before [`parse`](Self::parse)) and the flag may be repeated.
    const LIST: bool = false;
    /// What a flag given without a value stands for (`--bootstrap` = `--bootstrap true`);
    /// `None`: the flag needs a value.
    const FLAG_ALONE: Option<&'static str> = None;

    /// Reads a value from the text of a flag, an environment variable or the config file.
    /// `Err` is the reason only: the caller adds the key, the text and where it came from.
    fn parse(text: &str) -> Result<Self, String>;

    /// The value as an operator would write it: for errors, `--help` and the start-up line.
    fn show(&self) -> String;

    /// How clap reads the flag: [`parse`](Self::parse), unless clap's own parser for the
    /// type says more (possible values, ranges) in `--help` and its errors.
    fn clap_parser() -> ValueParser {
        ValueParser::new(Self::parse)
    }

    /// The flag's value from clap's matches (every occurrence, for a list).
    fn from_matches(m: &ArgMatches, id: &str) -> Option<Self> {
        m.get_one::<Self>(id).cloned()
    }
}

/// Types read with their `FromStr`, shown with their `Display`, and given to clap through
/// `value_parser!`, exactly as clap's derive would (so `--rpc-port 70000` still says
/// "70000 is not in 0..=65535" and `--bootstrap` lists true and false).
macro_rules! from_str_values {
    ($($t:ty),* $(,)?) => {$(
        impl SettingValue for $t {
            fn parse(text: &str) -> Result<Self, String> {
                <$t as FromStr>::from_str(text).map_err(|e| e.to_string())
            }
            fn show(&self) -> String {
                self.to_string()
            }
            fn clap_parser() -> ValueParser {
                clap::value_parser!($t).into()
            }
        }
    )*};
}

from_str_values!(String, u16, u32, usize, SocketAddr, Durability, LogFormat);

impl SettingValue for bool {
    const FLAG_ALONE: Option<&'static str> = Some("true");

    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|e: std::str::ParseBoolError| e.to_string())
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn clap_parser() -> ValueParser {
        clap::value_parser!(bool)
    }
}

impl SettingValue for PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
    fn clap_parser() -> ValueParser {
        clap::value_parser!(PathBuf)
    }
}

/// The admin HTTP address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl FromStr for AdminAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<AdminAddr, String> {
        match s.trim() {
            "" | "off" | "none" => Ok(AdminAddr(None)),
            a => a
                .parse()
                .map(|a| AdminAddr(Some(a)))
                .map_err(|e| format!("{a:?} is not an address (e.g. 127.0.0.1:9400) or off: {e}")),
        }
    }
}

impl SettingValue for AdminAddr {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    fn show(&self) -> String {
        self.0.map_or_else(|| "off".to_owned(), |a| a.to_string())
    }
}

/// A duration written with a unit (`250us`, `500ms`, `20s`, `2m`, `1h`) or as plain seconds (`20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

/// Units a duration is written in, largest first, in microseconds.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1000),
    ("us", 1),
];

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<DurationArg, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. 20s, 500ms, 2m)"))?;
        let us = match unit.trim() {
            "" => 1_000_000,
            "µs" => 1,
            unit => match DURATION_UNITS.iter().find(|(name, _)| *name == unit) {
                Some((_, us)) => *us,
                None => {
                    return Err(format!(
                        "unknown unit {unit:?} in {s:?}; use us, ms, s, m or h"
                    ))
                }
            },
        };
        n.checked_mul(us)
            .map(|us| DurationArg(Duration::from_micros(us)))
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl SettingValue for DurationArg {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    /// In the largest unit that writes it exactly: `20s`, `1500ms`.
    fn show(&self) -> String {
        let us = self.0.as_micros();
        if us == 0 {
            return "0".to_owned();
        }
        let (name, size) = DURATION_UNITS
            .iter()
            .find(|(_, size)| us % u128::from(*size) == 0)
            .unwrap_or(&("us", 1));
        format!("{}{name}", us / u128::from(*size))
    }
}

/// A byte count written as a number or with a unit: `1048576`, `1MiB`, `64KiB`, `2GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Binary units a byte count is shown in, largest first.
const BINARY_UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{s:?} is not a byte count"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            other => return Err(format!("unknown unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl SettingValue for ByteSize {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    /// In the largest binary unit that writes it exactly: `256MiB`, `1000`.
    fn show(&self) -> String {
        BINARY_UNITS
            .iter()
            .find(|(_, size)| self.0 >= *size && self.0 % size == 0)
            .map_or_else(
                || self.0.to_string(),
                |(name, size)| format!("{}{name}", self.0 / size),
            )
    }
}

/// The CPUs shards are pinned to: a CPU list (`0-3,6`), or `none` (not pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpuset {
    /// Ascending.
    Cpus(Vec<usize>),
    Unpinned,
}

impl SettingValue for Cpuset {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(Cpuset::Unpinned);
        }
        engine::cpus::parse_list(text)
            .map(Cpuset::Cpus)
            .map_err(|e| format!("{e}; give a CPU list such as 0-3,6 or none"))
    }
    fn show(&self) -> String {
        match self {
            Cpuset::Cpus(cpus) => engine::cpus::show_list(cpus),
            Cpuset::Unpinned => "none".to_owned(),
        }
    }
}

/// Given, it is one.
impl Land<Option<Cpuset>> for Cpuset {
    fn land(self) -> Result<Option<Cpuset>, String> {
        Ok(Some(self))
    }
}

/// `host:port` addresses, written as a comma-separated list (or a list in the config file);
/// empty items are skipped, so an empty value clears the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrList(pub Vec<String>);

impl SettingValue for AddrList {
    const LIST: bool = true;

    fn parse(text: &str) -> Result<Self, String> {
        Ok(AddrList(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
    fn show(&self) -> String {
        self.0.join(",")
    }
    /// `--start-join-addrs a,b --start-join-addrs c` is the list a, b, c.
    fn from_matches(m: &ArgMatches, id: &str) -> Option<Self> {
        let all = m.get_many::<AddrList>(id)?;
        Some(AddrList(all.flat_map(|l| l.0.iter().cloned()).collect()))
    }
}

/// `host:port` where the host is a name (resolved when the setting lands, or at every use)
/// or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort(pub String);

impl SettingValue for HostPort {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
        if host.trim_matches(|c| c == '[' || c == ']').is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        port.parse::<u16>()
            .map_err(|_| format!("{port:?} is not a port"))?;
        Ok(HostPort(text.to_owned()))
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

impl HostPort {
    /// The first address the name resolves to now.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        self.0
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", self.0))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.0))
    }
}

/// Resolved once, at start (`--bind-addr`: the node binds it).
impl Land<Option<SocketAddr>> for HostPort {
    fn land(self) -> Result<Option<SocketAddr>, String> {
        self.resolve().map(Some)
    }
}

/// Empty is unset.
impl Land<Option<String>> for String {
    fn land(self) -> Result<Option<String>, String> {
        Ok(Some(self).filter(|s| !s.trim().is_empty()))
    }
}

/// How a setting's value lands in [`Settings`](super::Settings): the identity unless the
/// table says `Value => Landed`. `Err` is a reason, reported with the key, value and origin.
pub trait Land<T> {
    fn land(self) -> Result<T, String>;
}

impl<T> Land<T> for T {
    fn land(self) -> Result<T, String> {
        Ok(self)
    }
}

impl Land<u64> for ByteSize {
    fn land(self) -> Result<u64, String> {
        Ok(self.0)
    }
}

/// Sizes of in-memory things (records, messages) are `usize`.
impl Land<usize> for ByteSize {
    fn land(self) -> Result<usize, String> {
        usize::try_from(self.0).map_err(|_| "too large for this platform".to_owned())
    }
}

impl Land<Duration> for DurationArg {
    fn land(self) -> Result<Duration, String> {
        Ok(self.0)
    }
}

/// A duration that may be turned off: 0 is off (`None`).
impl Land<Option<Duration>> for DurationArg {
    fn land(self) -> Result<Option<Duration>, String> {
        Ok(Some(self.0).filter(|d| !d.is_zero()))
    }
}

impl Land<Option<SocketAddr>> for AdminAddr {
    fn land(self) -> Result<Option<SocketAddr>, String> {
        Ok(self.0)
    }
}

/// An optional file: an empty path is no file, so that an environment variable can clear
/// what the config file sets.
impl Land<Option<PathBuf>> for PathBuf {
    fn land(self) -> Result<Option<PathBuf>, String> {
        Ok(Some(self).filter(|p| !p.as_os_str().is_empty()))
    }
}

impl Land<Vec<String>> for AddrList {
    fn land(self) -> Result<Vec<String>, String> {
        Ok(self.0)
    }
}

/// What a setting without a default holds when nothing sets it. Only types with an obvious
/// "nothing" have one, so that forgetting a default on a number does not compile.
pub trait Unset {
    fn unset() -> Self;
}

impl<T> Unset for Option<T> {
    fn unset() -> Self {
        None
    }
}

impl Unset for bool {
    fn unset() -> Self {
        false
    }
}

impl<T> Unset for Vec<T> {
    fn unset() -> Self {
        Vec::new()
    }
}

/// A default as the table writes it: a value of the setting's type, or its text (parsed as a
/// flag would be; a unit test parses every default).
pub trait DefaultValue<V> {
    fn into_value(self) -> Result<V, String>;
}

impl<V: SettingValue> DefaultValue<V> for V {
    fn into_value(self) -> Result<V, String> {
        Ok(self)
    }
}

impl<V: SettingValue> DefaultValue<V> for &str {
    fn into_value(self) -> Result<V, String> {
        V::parse(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_show_as_they_are_written() {
        for text in ["256MiB", "1000", "0", "3GiB", "64KiB"] {
            assert_eq!(ByteSize::parse(text).unwrap().show(), text);
        }
        assert_eq!(ByteSize::parse("1_048_576").unwrap().show(), "1MiB");
        for text in ["20s", "1500ms", "250us", "2m", "1h", "0"] {
            assert_eq!(DurationArg::parse(text).unwrap().show(), text);
        }
        assert_eq!(DurationArg::parse("90").unwrap().show(), "90s");
        assert_eq!(AdminAddr::parse("none").unwrap().show(), "off");
        assert_eq!(AddrList::parse(" a:1, ,b:2").unwrap().show(), "a:1,b:2");
    }

    #[test]
    fn landing_turns_nothing_into_none() {
        let off: Option<Duration> = DurationArg(Duration::ZERO).land().unwrap();
        assert_eq!(off, None);
        let no_file: Option<PathBuf> = PathBuf::new().land().unwrap();
        assert_eq!(no_file, None);
        let n: usize = ByteSize(4096).land().unwrap();
        assert_eq!(n, 4096);
    }
}
