//! Writing the Prometheus text exposition format (version 0.0.4).
//!
//! Every family is written whole (HELP, TYPE, then its samples) so that no family is split,
//! which the format forbids; label values are escaped (`\\`, `\"`, `\n`).

use std::fmt::Write;

use engine::metrics::HistogramSnapshot;

/// The `Content-Type` of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label(v, out);
        out.push('"');
    }
    out.push('}');
}

/// Formats a float the way Prometheus parsers accept (`+Inf`, no exponent surprises).
fn write_value(out: &mut String, v: f64) {
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family. `help` is one line of plain text.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A family whose samples differ by one label: `label` = each of `samples`' names.
    pub fn by_label(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: &[(&str, f64)],
    ) -> &mut Self {
        self.family(name, kind, help);
        for (v, value) in samples {
            self.sample(name, &[(label, v)], *value);
        }
        self
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series; bounds and sum
    /// are divided by `scale` (1e9 turns nanoseconds into the seconds Prometheus expects).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
        scale: f64,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, count) in h.cumulative() {
            le.clear();
            match bound {
                Some(b) => write_value(&mut le, b as f64 / scale),
                None => le.push_str("+Inf"),
            }
            self.out.push_str(&bucket);
            write_labels(&mut self.out, labels, Some(("le", &le)));
            self.out.push(' ');
            write_value(&mut self.out, count as f64);
            self.out.push('\n');
        }
        self.sample(&format!("{name}_sum"), labels, h.sum as f64 / scale);
        self.sample(&format!("{name}_count"), labels, h.count as f64)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::metrics::{Histogram, COUNT_BOUNDS};

    #[test]
    fn labels_are_escaped_and_histograms_cumulative() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "a \\ help\nline")
            .sample("x_total", &[("a", "q\"b\\c\nd")], 3.0);
        let h = Histogram::new(COUNT_BOUNDS);
        h.observe(1);
        h.observe(3);
        e.family("y", Kind::Histogram, "h")
            .histogram("y", &[("m", "p")], &h.snapshot(), 1.0);
        let text = e.finish();
        assert!(text.contains("# HELP x_total a \\\\ help\\nline\n"));
        assert!(text.contains("x_total{a=\"q\\\"b\\\\c\\nd\"} 3\n"));
        assert!(text.contains("y_bucket{m=\"p\",le=\"1\"} 1\n"));
        assert!(text.contains("y_bucket{m=\"p\",le=\"2\"} 1\n"));
        assert!(text.contains("y_bucket{m=\"p\",le=\"4\"} 2\n"));
        assert!(text.contains("y_bucket{m=\"p\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("y_sum{m=\"p\"} 4\n"));
        assert!(text.contains("y_count{m=\"p\"} 2\n"));
    }

    #[test]
    fn values() {
        let mut s = String::new();
        write_value(&mut s, 0.000025);
        assert_eq!(s, "0.000025");
        s.clear();
        write_value(&mut s, 12.0);
        assert_eq!(s, "12");
    }
}
