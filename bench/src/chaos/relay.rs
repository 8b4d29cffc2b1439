//! The delay relay: this kernel has no `netem` qdisc, so delayed packets take a detour
//! through a process of ours.
//!
//! In the namespace `pgc-relay` a TUN device (`pgcdly0`) takes every packet that arrives on
//! eth0 for another host (policy routing: `iif eth0 lookup 100`, table 100's default route
//! is the TUN device). A thread reads each packet, holds it for the delay (plus a random
//! jitter, so packets may be reordered, as netem does), and writes it back into the TUN
//! device; the kernel then forwards it out of eth0 to its destination, addresses untouched.
//! Which hosts' packets come here is decided by routes (`Network::route_through_relay`); the
//! relay forwards whatever it is given.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::net::RELAY_NS;
use super::sys::{enter_ns, in_ns};

const TUN: &str = "pgcdly0";
/// Packets held at once; beyond it the relay drops (as a full queue would).
const MAX_HELD: usize = 100_000;

/// A running relay.
pub struct Relay {
    stop: Arc<AtomicBool>,
    delay_us: Arc<AtomicU64>,
    jitter_us: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Creates the TUN device in the relay namespace, routes the namespace's forwarded
    /// traffic into it, and starts the thread.
    pub fn start(seed: u64) -> Result<Relay> {
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let delay_us = Arc::new(AtomicU64::new(0));
        let jitter_us = Arc::new(AtomicU64::new(0));
        let relayed = Arc::new(AtomicU64::new(0));
        let (s, d, j, n) = (
            stop.clone(),
            delay_us.clone(),
            jitter_us.clone(),
            relayed.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("delay-relay".into())
            .spawn(move || {
                let fd = match enter_ns(RELAY_NS).and_then(|_| open_tun()) {
                    Ok(fd) => {
                        let _ = tx.send(Ok(()));
                        fd
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if let Err(e) = run(&fd, &s, &d, &j, &n, seed) {
                    eprintln!("proglog-chaos: delay relay stopped: {e:#}");
                }
            })?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the relay thread ended before it opened its device"))??;
        in_ns(RELAY_NS, &["ip", "link", "set", TUN, "up"])?;
        in_ns(
            RELAY_NS,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{TUN}.rp_filter=0"),
            ],
        )?;
        in_ns(
            RELAY_NS,
            &[
                "ip", "rule", "add", "iif", "eth0", "lookup", "100", "priority", "100",
            ],
        )?;
        in_ns(
            RELAY_NS,
            &["ip", "route", "add", "default", "dev", TUN, "table", "100"],
        )?;
        Ok(Relay {
            stop,
            delay_us,
            jitter_us,
            relayed,
            thread: Some(thread),
        })
    }

    /// Every packet from now on waits `delay` plus up to `jitter`.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
        self.jitter_us
            .store(jitter.as_micros() as u64, Ordering::SeqCst);
    }

    /// Packets relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens `/dev/net/tun` and creates the TUN device in the calling thread's namespace.
fn open_tun() -> Result<OwnedFd> {
    // SAFETY: open(2) of a fixed path; the descriptor is owned below.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        bail!("opening /dev/net/tun: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(TUN.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq, which lives for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        bail!("TUNSETIFF {TUN}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn run(
    fd: &OwnedFd,
    stop: &AtomicBool,
    delay_us: &AtomicU64,
    jitter_us: &AtomicU64,
    relayed: &AtomicU64,
    seed: u64,
) -> Result<()> {
    let mut rng = crate::Rng::new(seed);
    // (release time, arrival sequence, packet): a min-heap on the time.
    let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            if let Some(Reverse((_, _, p))) = held.pop() {
                // SAFETY: write(2) of an initialized buffer to our TUN descriptor.
                let w = unsafe { libc::write(fd.as_raw_fd(), p.as_ptr().cast(), p.len()) };
                if w >= 0 {
                    relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let wait_ms = held
            .peek()
            .map(|Reverse((t, _, _))| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up, so that a packet due in half a millisecond does not spin the loop.
        let timeout = wait_ms.as_micros().div_ceil(1000) as i32;
        // SAFETY: poll(2) on one valid pollfd that lives for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {e}");
        }
        loop {
            // SAFETY: read(2) into a buffer we own, at most its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            if held.len() >= MAX_HELD {
                continue;
            }
            let jitter = jitter_us.load(Ordering::Relaxed);
            let extra = if jitter > 0 { rng.below(jitter + 1) } else { 0 };
            let at =
                Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed) + extra);
            seq += 1;
            held.push(Reverse((at, seq, buf[..n as usize].to_vec())));
        }
    }
    Ok(())
}
