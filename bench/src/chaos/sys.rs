//! Commands, namespaces and the teardown that must happen whatever way the run ends.
//!
//! Every process the harness starts is registered here; [`teardown`] kills them (after a
//! SIGCONT, so a paused node dies too), then removes every `pgc-*` network namespace, its
//! hosts file, every loop volume whose image is named `pgc-*`. It runs at the end of a run, on
//! SIGINT/SIGTERM (from a signal thread) and from a guard while a panic unwinds; it is
//! idempotent and prefix-based, so the next run's start cleans what a `kill -9` of the
//! harness left.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Every name the harness creates starts with this.
pub const PREFIX: &str = "pgc-";

/// Runs a command; its stdout on success, its stderr in the error.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// Runs a command inside network namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Runs a command with `input` on its standard input (nft -f -).
pub fn in_ns_stdin(ns: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {args:?} in {ns}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{args:?} in {ns} failed: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns` (only this thread: sockets it
/// opens afterwards live there).
pub fn enter_ns(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) with a valid namespace descriptor; it changes only the calling
    // thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn from_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_owned();
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            enter_ns(&ns)?;
            f()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in a namespace panicked"))?
}

/// Whether the command exists on PATH.
pub fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Processes to kill at teardown.
static PIDS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static TORN_DOWN: AtomicBool = AtomicBool::new(false);
static TEARDOWN: Mutex<()> = Mutex::new(());

pub fn register_pid(pid: u32) {
    PIDS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid as i32);
}

pub fn forget_pid(pid: u32) {
    PIDS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(pid as i32));
}

/// Sends `sig` to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we started; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Kills every registered process and removes every `pgc-*` namespace, hosts file and loop
/// volume. Safe to call more than once and from any thread.
pub fn teardown() {
    let _g = TEARDOWN.lock().unwrap_or_else(|e| e.into_inner());
    let pids: Vec<i32> = std::mem::take(&mut *PIDS.lock().unwrap_or_else(|e| e.into_inner()))
        .into_iter()
        .collect();
    for &pid in &pids {
        // SAFETY: kill(2) on processes this harness started; SIGCONT first so that a paused
        // process takes its SIGKILL at once.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for &pid in &pids {
        let mut status = 0;
        // SAFETY: waitpid(2) on our own children, so they do not stay zombies holding the
        // loop volumes' mounts busy.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    cleanup_leftovers();
    TORN_DOWN.store(true, Ordering::SeqCst);
}

/// Removes `pgc-*` namespaces, hosts files and loop volumes, from this run or an earlier one.
pub fn cleanup_leftovers() {
    super::disk::cleanup_leftovers();
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(PREFIX) {
                if let Err(e) = sh(&["ip", "netns", "del", name]) {
                    eprintln!("warning: {e}");
                }
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/etc/netns") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Tears down when dropped: during a panic's unwinding too.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("proglog-chaos: panicked; removing everything the run created");
        }
        teardown();
    }
}

/// Set by the signal thread; the run checks it between steps and stops early.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// On the first SIGINT/SIGTERM the run is asked to stop (it heals, tears down and exits
/// 130); on a second one, or if it has not finished 20 s later, everything is torn down
/// here and the process exits.
pub fn handle_signals() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first = true;
            for sig in signals.forever() {
                if first {
                    first = false;
                    eprintln!("proglog-chaos: signal {sig}: stopping, healing and cleaning up");
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    std::thread::spawn(|| {
                        std::thread::sleep(std::time::Duration::from_secs(20));
                        eprintln!(
                            "proglog-chaos: still running 20 s after the signal; tearing down"
                        );
                        teardown();
                        std::process::exit(130);
                    });
                } else {
                    eprintln!("proglog-chaos: second signal: tearing down now");
                    teardown();
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}

/// The machine-wide lock of the `pgc-*` names.
pub const LOCK_PATH: &str = "/run/lock/proglog-chaos.lock";

/// Takes an exclusive flock on [`LOCK_PATH`] (waiting, and saying so, while another run
/// holds it) and returns the open file, which holds the lock until it is dropped or the
/// process dies. Every run removes `pgc-*` leftovers at start: two runs on one machine
/// (or a run and `--cleanup`) would tear down each other's namespaces without it.
pub fn machine_lock() -> Result<File> {
    let path = if std::path::Path::new("/run/lock").is_dir() {
        LOCK_PATH.to_string()
    } else {
        format!("{}/proglog-chaos.lock", std::env::temp_dir().display())
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    // SAFETY: flock(2) on a descriptor this function owns and returns open.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            bail!("flock {path}: {e}");
        }
        eprintln!("proglog-chaos: another run holds {path}; waiting for it to end");
        // SAFETY: as above.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            bail!("flock {path}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(f)
}
