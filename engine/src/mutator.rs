//! Mutations of valid encodings, from one printed seed: what the seeded mutation tests of
//! every crate feed their decoders (each crate's `mutation` module). A decoder returns an
//! error or a value, never panics.
//!
//! The seed is printed and `PROGLOG_SEED=<n>` replays it. `PROGLOG_FUZZ_ITERS=<n>` runs `n`
//! mutations per decoder, `PROGLOG_FUZZ_ITERS=<k>x` `k` times the default. Compiled for this
//! crate's tests and, with the `mutation` feature, for other crates' tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Mutations of valid inputs, from one seed.
pub struct Mutator {
    pub rng: StdRng,
}

pub fn seed() -> u64 {
    let s = std::env::var("PROGLOG_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("PROGLOG_SEED must be a u64"))
        .unwrap_or_else(|| rand::random::<u64>() >> 1);
    eprintln!("seed {s} (replay with PROGLOG_SEED={s})");
    s
}

/// Mutations per decoder: `default`, or what `PROGLOG_FUZZ_ITERS` says.
pub fn iterations(default: usize) -> usize {
    match std::env::var("PROGLOG_FUZZ_ITERS") {
        Ok(v) => {
            let v = v.trim();
            match v.strip_suffix('x') {
                Some(k) => default * k.parse::<usize>().expect("PROGLOG_FUZZ_ITERS: <n> or <k>x"),
                None => v.parse().expect("PROGLOG_FUZZ_ITERS: <n> or <k>x"),
            }
        }
        Err(_) => default,
    }
}

const HUGE_U32: [u32; 6] = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, u32::MAX];
const HUGE_U64: [u64; 6] = [0, 1, i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX];

impl Default for Mutator {
    fn default() -> Self {
        Self::new()
    }
}

impl Mutator {
    /// A mutator seeded from `PROGLOG_SEED`, or at random (the seed is printed).
    pub fn new() -> Mutator {
        Mutator {
            rng: StdRng::seed_from_u64(seed()),
        }
    }

    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.random_range(0..=max);
        (0..n).map(|_| self.rng.random()).collect()
    }

    /// One to four mutations of `valid`, `other` (another valid input) for splices.
    pub fn mutate(&mut self, valid: &[u8], other: &[u8]) -> Vec<u8> {
        let mut b = valid.to_vec();
        for _ in 0..self.rng.random_range(1..=4) {
            self.once(&mut b, other);
        }
        b
    }

    fn at(&mut self, b: &[u8], width: usize) -> Option<usize> {
        (b.len() >= width).then(|| self.rng.random_range(0..=b.len() - width))
    }

    fn once(&mut self, b: &mut Vec<u8>, other: &[u8]) {
        let r = &mut self.rng;
        match r.random_range(0..11) {
            0 => {
                if let Some(i) = self.at(b, 1) {
                    b[i] ^= 1 << self.rng.random_range(0..8);
                }
            }
            1 => {
                if let Some(i) = self.at(b, 1) {
                    b[i] = [0x00, 0xFF, self.rng.random()][self.rng.random_range(0..3)];
                }
            }
            2 => {
                let n = r.random_range(0..=b.len());
                b.truncate(n);
            }
            3 => {
                let g = self.bytes(32);
                b.extend_from_slice(&g);
            }
            4 | 5 => {
                // A length or count field: a u32 at a random place (little- or big-endian).
                if let Some(i) = self.at(b, 4) {
                    let v = HUGE_U32[self.rng.random_range(0..HUGE_U32.len())];
                    let v = if self.rng.random() { v } else { v.swap_bytes() };
                    b[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            6 => {
                if let Some(i) = self.at(b, 8) {
                    let v = HUGE_U64[self.rng.random_range(0..HUGE_U64.len())];
                    b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            7 => {
                // Splice: a prefix of this one, a suffix of the other.
                let i = r.random_range(0..=b.len());
                let j = r.random_range(0..=other.len());
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            8 => {
                // Remove a range.
                let i = r.random_range(0..=b.len());
                let j = r.random_range(i..=b.len().min(i + 16));
                b.drain(i..j);
            }
            9 => {
                // Insert random bytes.
                let i = r.random_range(0..=b.len());
                let g = self.bytes(8);
                b.splice(i..i, g);
            }
            _ => {
                // Duplicate a range.
                let i = r.random_range(0..=b.len());
                let j = r.random_range(i..=b.len().min(i + 32));
                let dup = b[i..j].to_vec();
                b.splice(j..j, dup);
            }
        }
    }

    /// Runs `check` on: every truncation of every (small) input of `corpus`, `iterations`
    /// mutations of them, and `iterations / 4` random inputs. A panic names the input.
    pub fn run(
        &mut self,
        name: &str,
        corpus: &[Vec<u8>],
        iterations: usize,
        mut check: impl FnMut(&[u8]),
    ) {
        assert!(!corpus.is_empty());
        let start = std::time::Instant::now();
        let mut try_one = |input: &[u8], what: &str| {
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(input))) {
                eprintln!("{name}: panicked on {what} input {input:02x?}");
                std::panic::resume_unwind(e);
            }
        };
        for valid in corpus {
            try_one(valid, "valid");
            if valid.len() <= 512 {
                for n in 0..valid.len() {
                    try_one(&valid[..n], "truncated");
                }
            }
        }
        for _ in 0..iterations {
            let a = &corpus[self.rng.random_range(0..corpus.len())];
            let b = &corpus[self.rng.random_range(0..corpus.len())];
            let m = self.mutate(a, b);
            try_one(&m, "mutated");
        }
        for _ in 0..iterations / 4 {
            let n = [8, 64, 512][self.rng.random_range(0..3)];
            let r = self.bytes(n);
            try_one(&r, "random");
        }
        eprintln!(
            "{name}: {} inputs, {} mutations, {} random in {:?}",
            corpus.len(),
            iterations,
            iterations / 4,
            start.elapsed()
        );
    }
}
