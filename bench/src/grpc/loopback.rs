//! Loopback TCP bandwidth: the ceiling for any server on this machine reached over
//! 127.0.0.1, measured in the same run so figures can be quoted as ratios to it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

#[derive(Debug, Clone, Copy)]
pub struct Loopback {
    pub bytes: u64,
    pub secs: f64,
}

impl Loopback {
    pub fn mb_per_s(&self) -> f64 {
        crate::mb_per_s(self.bytes, self.secs)
    }
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
}

/// One writer thread blasts 256 KiB writes at one reader thread over 127.0.0.1 for `dur`.
/// Plain blocking sockets with default buffer sizes, like an untuned client would have.
pub fn measure(dur: Duration) -> Result<Loopback> {
    let listener = TcpListener::bind("127.0.0.1:0").context("loopback: bind 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::Builder::new()
        .name("loopback-rx".into())
        .spawn(move || -> Result<(u64, f64)> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            let mut first: Option<Instant> = None;
            loop {
                let r = s.read(&mut buf)?;
                if r == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                n += r as u64;
            }
            let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            Ok((n, secs))
        })?;
    let mut s = TcpStream::connect(addr).context("loopback: connect")?;
    let buf = vec![0x5au8; 256 * 1024];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        s.write_all(&buf).context("loopback: write")?;
    }
    drop(s);
    let (bytes, secs) = reader
        .join()
        .map_err(|_| anyhow!("loopback reader thread panicked"))??;
    if secs <= 0.0 {
        return Err(anyhow!("loopback: nothing was received"));
    }
    Ok(Loopback { bytes, secs })
}
