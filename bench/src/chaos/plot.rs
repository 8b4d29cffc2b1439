//! The run's timeline as one PNG, in the manner of Jepsen's plots: produce throughput by
//! outcome (ok, fail, unknown) per time bucket above, every produce's latency as a point
//! (log scale) below, the fault windows shaded across both, each labelled with its number
//! and kind.
//!
//! Drawn on a plain RGB raster with the `font8x8` glyphs and encoded with `png`: no system
//! fonts, no C libraries.

use std::path::Path;

use anyhow::Result;
use font8x8::legacy::BASIC_LEGACY;

use super::history::{History, Outcome};

const W: usize = 1400;
const H: usize = 860;
const LEFT: usize = 90;
const RIGHT: usize = W - 40;
/// (top, bottom) of the throughput and the latency panels.
const TPUT: (usize, usize) = (70, 380);
const LAT: (usize, usize) = (440, 770);

type Rgb = [u8; 3];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
const OK: Rgb = [31, 119, 180];
const FAIL: Rgb = [214, 39, 40];
const UNKNOWN: Rgb = [255, 140, 0];

fn kind_color(kind: &str) -> Rgb {
    match kind {
        "kill" => [255, 120, 120],
        "pause" => [120, 170, 255],
        "partition" => [250, 200, 80],
        "loss" => [190, 140, 255],
        "delay" => [110, 210, 200],
        "membership" => [170, 220, 110],
        "disk" => [200, 170, 130],
        "power" => [255, 110, 200],
        _ => [180, 180, 180],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: usize, y: usize, c: Rgb) {
        if x < W && y < H {
            let i = (y * W + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Blends `c` over what is there with opacity `a` (0..=255).
    fn blend(&mut self, x: usize, y: usize, c: Rgb, a: u16) {
        if x < W && y < H {
            let i = (y * W + x) * 3;
            for (px, ck) in self.px[i..i + 3].iter_mut().zip(c) {
                let old = u16::from(*px);
                *px = ((old * (255 - a) + u16::from(ck) * a) / 255) as u8;
            }
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: Rgb, a: u16) {
        for y in y0..y1.min(H) {
            for x in x0..x1.min(W) {
                self.blend(x, y, c, a);
            }
        }
    }

    fn hline(&mut self, x0: usize, x1: usize, y: usize, c: Rgb) {
        for x in x0..=x1 {
            self.set(x, y, c);
        }
    }

    fn vline(&mut self, x: usize, y0: usize, y1: usize, c: Rgb) {
        for y in y0..=y1 {
            self.set(x, y, c);
        }
    }

    /// A line (Bresenham), two pixels thick.
    fn line(&mut self, a: (i64, i64), b: (i64, i64), c: Rgb) {
        let (mut x, mut y) = a;
        let (dx, dy) = ((b.0 - a.0).abs(), -(b.1 - a.1).abs());
        let (sx, sy) = (
            if a.0 < b.0 { 1 } else { -1 },
            if a.1 < b.1 { 1 } else { -1 },
        );
        let mut err = dx + dy;
        loop {
            for (ox, oy) in [(0, 0), (0, 1)] {
                if x + ox >= 0 && y + oy >= 0 {
                    self.set((x + ox) as usize, (y + oy) as usize, c);
                }
            }
            if x == b.0 && y == b.1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text at (x, y) (top left), `scale` pixels per glyph pixel.
    fn text(&mut self, x: usize, y: usize, s: &str, c: Rgb, scale: usize) {
        for (k, ch) in s.chars().enumerate() {
            let glyph = BASIC_LEGACY
                .get(ch as usize)
                .copied()
                .unwrap_or(BASIC_LEGACY[b'?' as usize]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (k * 8 + col) * scale + dx, y + row * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    fn text_right(&mut self, x_right: usize, y: usize, s: &str, c: Rgb) {
        let w = s.chars().count() * 8;
        self.text(x_right.saturating_sub(w), y, s, c, 1);
    }

    fn save(&self, path: &Path) -> Result<()> {
        let f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut enc = png::Encoder::new(f, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.px)?;
        w.finish()?;
        Ok(())
    }
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// Draws the timeline of `h` to `path`. `title` is the first line (seed, nodes, nemeses).
pub fn timeline(h: &History, title: &str, verdict: &str, path: &Path) -> Result<()> {
    let mut c = Canvas::new();
    let end_s = (h.end_ms / 1000.0).max(1.0);
    let x_of = |t_ms: f64| -> usize {
        let f = (t_ms / 1000.0 / end_s).clamp(0.0, 1.0);
        LEFT + (f * (RIGHT - LEFT) as f64) as usize
    };

    // Throughput per bucket, by outcome.
    let bucket_s = (end_s / 300.0).ceil().max(1.0);
    let buckets = (end_s / bucket_s).ceil() as usize + 1;
    let mut counts = vec![[0u64; 3]; buckets];
    for o in &h.ops {
        let b = ((o.complete_ms / 1000.0) / bucket_s) as usize;
        let k = match o.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Unknown => 2,
        };
        if let Some(slot) = counts.get_mut(b) {
            slot[k] += 1;
        }
    }
    let max_rate = counts
        .iter()
        .flat_map(|b| b.iter())
        .map(|&n| n as f64 / bucket_s)
        .fold(1.0, f64::max);
    let rate_step = nice_step(max_rate, 5.0);
    let rate_top = (max_rate / rate_step).ceil() * rate_step;

    // Fault windows under everything else.
    for f in &h.faults {
        let (x0, x1) = (x_of(f.start_ms), x_of(f.end_ms).max(x_of(f.start_ms) + 2));
        let col = kind_color(&f.kind);
        c.rect(x0, TPUT.0, x1, TPUT.1, col, 90);
        c.rect(x0, LAT.0, x1, LAT.1, col, 90);
        let label = format!("#{} {}", f.id, f.kind);
        if x1 - x0 >= label.len() * 8 + 2 {
            c.text(x0 + 2, TPUT.0 + 3, &label, BLACK, 1);
        } else if x1 - x0 >= 10 {
            c.text(x0 + 1, TPUT.0 + 3, &format!("{}", f.id), BLACK, 1);
        }
    }

    // Grids and axes.
    let t_step = nice_step(end_s, 10.0);
    let mut t = 0.0;
    while t <= end_s + 1e-9 {
        let x = x_of(t * 1000.0);
        for (top, bottom) in [TPUT, LAT] {
            c.vline(x, top, bottom, GRID);
            c.vline(x, bottom, bottom + 4, BLACK);
        }
        let label = format!("{t:.0}");
        c.text(
            x.saturating_sub(label.len() * 4),
            LAT.1 + 8,
            &label,
            BLACK,
            1,
        );
        c.text(
            x.saturating_sub(label.len() * 4),
            TPUT.1 + 8,
            &label,
            BLACK,
            1,
        );
        t += t_step;
    }
    let y_rate =
        |r: f64| TPUT.1 - ((r / rate_top).clamp(0.0, 1.0) * (TPUT.1 - TPUT.0) as f64) as usize;
    let mut r = 0.0;
    while r <= rate_top + 1e-9 {
        let y = y_rate(r);
        c.hline(LEFT, RIGHT, y, GRID);
        c.text_right(LEFT - 6, y.saturating_sub(4), &format!("{r:.0}"), BLACK);
        r += rate_step;
    }
    // Latency: 0.1 ms .. 10 s, log scale.
    let (lo, hi) = (-1.0f64, 4.0f64);
    let y_lat = |ms: f64| {
        let l = ms.max(1e-3).log10().clamp(lo, hi);
        LAT.1 - (((l - lo) / (hi - lo)) * (LAT.1 - LAT.0) as f64) as usize
    };
    for (e, label) in [
        (-1, "0.1ms"),
        (0, "1ms"),
        (1, "10ms"),
        (2, "100ms"),
        (3, "1s"),
        (4, "10s"),
    ] {
        let y = y_lat(10f64.powi(e));
        c.hline(LEFT, RIGHT, y, GRID);
        c.text_right(LEFT - 6, y.saturating_sub(4), label, BLACK);
    }
    for (top, bottom) in [TPUT, LAT] {
        c.hline(LEFT, RIGHT, top, BLACK);
        c.hline(LEFT, RIGHT, bottom, BLACK);
        c.vline(LEFT, top, bottom, BLACK);
        c.vline(RIGHT, top, bottom, BLACK);
    }

    // Throughput lines.
    for (k, col) in [(2, UNKNOWN), (1, FAIL), (0, OK)] {
        let pts: Vec<(i64, i64)> = counts
            .iter()
            .enumerate()
            .map(|(b, n)| {
                let x = x_of((b as f64 + 0.5) * bucket_s * 1000.0) as i64;
                (x, y_rate(n[k] as f64 / bucket_s) as i64)
            })
            .collect();
        for w in pts.windows(2) {
            c.line(w[0], w[1], col);
        }
    }
    // Latency points: unknown and fail first, so the ok cloud stays visible.
    for (want, col) in [
        (Outcome::Unknown, UNKNOWN),
        (Outcome::Fail, FAIL),
        (Outcome::Ok, OK),
    ] {
        for o in h.ops.iter().filter(|o| o.outcome == want) {
            let (x, y) = (x_of(o.invoke_ms), y_lat(o.latency_ms()));
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                c.set(x + dx, y + dy, col);
            }
        }
    }

    // Titles and legend.
    c.text(LEFT, 8, title, BLACK, 2);
    c.text(LEFT, 32, verdict, BLACK, 1);
    c.text(
        LEFT,
        TPUT.0 - 14,
        &format!("produce throughput (ops/s, {bucket_s:.0} s buckets)"),
        BLACK,
        1,
    );
    c.text(
        LEFT,
        LAT.0 - 14,
        "produce latency (each operation, from its invocation)",
        BLACK,
        1,
    );
    c.text(RIGHT - 120, LAT.1 + 22, "time (s)", BLACK, 1);
    let mut x = LEFT;
    let y = H - 40;
    for (label, col) in [("ok", OK), ("fail", FAIL), ("unknown", UNKNOWN)] {
        c.rect(x, y, x + 14, y + 10, col, 255);
        c.text(x + 18, y + 1, label, BLACK, 1);
        x += 18 + label.len() * 8 + 20;
    }
    x += 20;
    let mut kinds: Vec<&str> = h.faults.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    for k in kinds {
        c.rect(x, y, x + 14, y + 10, kind_color(k), 140);
        c.text(x + 18, y + 1, k, BLACK, 1);
        x += 18 + k.len() * 8 + 20;
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Api, Fault, Op};

    #[test]
    fn draws_a_png() {
        let mut h = History {
            partitions: 1,
            end_ms: 20_000.0,
            ..Default::default()
        };
        for i in 0..2000u64 {
            let t = i as f64 * 10.0;
            h.ops.push(Op {
                id: i,
                client: "p0".into(),
                api: Api::Produce,
                node: "node-1".into(),
                partition: 0,
                value: format!("v{i}"),
                invoke_ms: t,
                complete_ms: t + 1.0 + (i % 7) as f64,
                outcome: match i % 50 {
                    0 => Outcome::Unknown,
                    1 => Outcome::Fail,
                    _ => Outcome::Ok,
                },
                offset: Some(i),
                error: None,
            });
        }
        h.faults.push(Fault {
            id: 0,
            kind: "pause".into(),
            detail: String::new(),
            nodes: vec![],
            start_ms: 5000.0,
            end_ms: 9000.0,
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.png");
        timeline(&h, "title", "no anomalies", &p).expect("draw");
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(nice_step(60.0, 10.0), 10.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
    }
}
