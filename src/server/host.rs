//! What the host must give the engine, checked before it starts: an io_uring that neither a
//! seccomp profile nor a sysctl blocks, and enough locked memory.
//!
//! Without these checks glommio fails inside its executor threads, and what reaches the
//! operator is "engine is shut down". Both causes are common in containers (runtimes' default
//! seccomp profiles block io_uring; Kubernetes has no rlimit field, so the locked-memory limit
//! is whatever the container runtime passes on), so each error here names the cause it found
//! and the fix, and points at deploy/README.md.

use std::fmt;

/// glommio's own minimum (`Reactor::new` refuses to build an executor below it).
pub const MIN_MEMLOCK_BYTES: u64 = 512 * 1024;

/// What the start-up checks found wrong with the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "RLIMIT_MEMLOCK is {} KiB, below the {} KiB the io_uring engine needs (glommio \
         refuses to start below it): raise it with `ulimit -l`, LimitMEMLOCK= in a systemd \
         unit, or the container runtime's default ulimits (deploy/README.md, \"Locked memory\")",
        .soft_bytes / 1024,
        MIN_MEMLOCK_BYTES / 1024
    )]
    MemlockTooLow { soft_bytes: u64 },
    #[error(
        "io_uring is not usable: io_uring_setup failed with {errno}: {cause} \
         (deploy/README.md, \"io_uring\")"
    )]
    IoUring { errno: Errno, cause: String },
}

/// An errno with its symbolic name, as operators search for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            libc::EPERM => "EPERM",
            libc::EACCES => "EACCES",
            libc::ENOSYS => "ENOSYS",
            libc::ENOMEM => "ENOMEM",
            libc::EINVAL => "EINVAL",
            libc::EMFILE => "EMFILE",
            _ => return write!(f, "errno {}", self.0),
        };
        write!(f, "{name} ({})", std::io::Error::from_raw_os_error(self.0))
    }
}

/// Runs every check; the first failure stops start-up.
pub fn check() -> Result<(), HostError> {
    let memlock = memlock_soft_limit();
    check_memlock(memlock)?;
    check_io_uring()?;
    // Logged because in a container there is no other easy way to see it: below about 9 MiB
    // (8 MiB is the usual default) glommio cannot register its I/O buffers and logs
    // "registering buffers ... Skipping" per shard, then works with unregistered ones.
    if memlock == u64::MAX {
        log::info!("host: io_uring available, RLIMIT_MEMLOCK unlimited");
    } else {
        log::info!(
            "host: io_uring available, RLIMIT_MEMLOCK {} KiB",
            memlock / 1024
        );
    }
    Ok(())
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` for unlimited).
pub fn memlock_soft_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        // Unknown: let glommio decide, as it did before this check existed.
        return u64::MAX;
    }
    lim.rlim_cur
}

fn check_memlock(soft_bytes: u64) -> Result<(), HostError> {
    if soft_bytes < MIN_MEMLOCK_BYTES {
        return Err(HostError::MemlockTooLow { soft_bytes });
    }
    Ok(())
}

/// Sets up (and closes) a one-entry ring: the same call glommio makes first.
fn check_io_uring() -> Result<(), HostError> {
    // struct io_uring_params is 120 bytes; all zero asks for the defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes only the params struct, which is large
    // enough; on success it returns a new descriptor that we own and close.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1u32,
            params.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned to us and is closed once.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let errno = Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    Err(HostError::IoUring {
        errno,
        cause: io_uring_cause(errno, &Facts::read()),
    })
}

/// What the process can learn about why io_uring_setup failed.
#[derive(Debug, Default)]
struct Facts {
    /// `/proc/sys/kernel/io_uring_disabled` (Linux 6.6+): 0, 1 or 2.
    io_uring_disabled: Option<u8>,
    /// `/proc/sys/kernel/io_uring_group`.
    io_uring_group: Option<String>,
    /// `Seccomp:` of /proc/self/status: 2 when a filter is installed.
    seccomp_mode: Option<u8>,
    /// The kernel release (uname -r).
    kernel: String,
}

impl Facts {
    fn read() -> Facts {
        let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        let seccomp_mode = read("/proc/self/status").and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .and_then(|v| v.trim().parse().ok())
        });
        Facts {
            io_uring_disabled: read("/proc/sys/kernel/io_uring_disabled")
                .and_then(|v| v.parse().ok()),
            io_uring_group: read("/proc/sys/kernel/io_uring_group"),
            seccomp_mode,
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        }
    }
}

const SECCOMP_FIX: &str = "container runtimes' default seccomp profiles (Docker 25+, \
     containerd and CRI-O's RuntimeDefault) block io_uring_setup, io_uring_enter and \
     io_uring_register; run with a profile that allows them (deploy/k8s/base/seccomp/proglog.json; \
     Docker: --security-opt seccomp=proglog.json)";

fn io_uring_cause(errno: Errno, f: &Facts) -> String {
    let filtered = f.seccomp_mode == Some(2);
    match errno.0 {
        libc::EPERM | libc::EACCES => match f.io_uring_disabled {
            Some(2) => "the sysctl kernel.io_uring_disabled is 2, which turns io_uring off for \
                        every process: set it to 0"
                .into(),
            Some(1) if !filtered => format!(
                "the sysctl kernel.io_uring_disabled is 1: only processes with CAP_SYS_ADMIN or \
                 in the group kernel.io_uring_group ({}) may use io_uring; set it to 0 or run \
                 the server in that group",
                f.io_uring_group.as_deref().unwrap_or("unknown")
            ),
            _ if filtered => {
                format!("this process runs under a seccomp filter that denies it: {SECCOMP_FIX}")
            }
            _ => "no seccomp filter or sysctl explains it: a security module (SELinux, \
                  AppArmor) may deny io_uring"
                .into(),
        },
        libc::ENOSYS if filtered => format!(
            "this process runs under a seccomp filter that reports the call as missing: \
             {SECCOMP_FIX}"
        ),
        libc::ENOSYS => format!(
            "this kernel ({}) has no io_uring: Linux 5.8 or later, built with CONFIG_IO_URING, \
             is needed",
            f.kernel
        ),
        libc::ENOMEM => "the ring's memory could not be locked: on Linux before 5.12 it counts \
                         against RLIMIT_MEMLOCK, so raise that limit"
            .into(),
        libc::EMFILE => "the process is out of file descriptors (RLIMIT_NOFILE)".into(),
        _ => format!("unexpected on kernel {}", f.kernel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_below_glommio_minimum_is_refused_with_both_numbers() {
        let e = check_memlock(64 * 1024).unwrap_err().to_string();
        assert!(e.contains("RLIMIT_MEMLOCK is 64 KiB"), "{e}");
        assert!(e.contains("512 KiB"), "{e}");
        assert!(check_memlock(MIN_MEMLOCK_BYTES).is_ok());
        assert!(check_memlock(u64::MAX).is_ok());
    }

    #[test]
    fn each_cause_names_its_fix() {
        let facts = |disabled, seccomp| Facts {
            io_uring_disabled: disabled,
            io_uring_group: Some("-1".into()),
            seccomp_mode: seccomp,
            kernel: "6.1.0".into(),
        };
        let eperm = Errno(libc::EPERM);
        assert!(io_uring_cause(eperm, &facts(Some(2), Some(2))).contains("io_uring_disabled is 2"));
        assert!(io_uring_cause(eperm, &facts(Some(1), None)).contains("io_uring_group (-1)"));
        assert!(io_uring_cause(eperm, &facts(Some(0), Some(2))).contains("seccomp filter"));
        assert!(io_uring_cause(eperm, &facts(None, Some(0))).contains("security module"));
        let enosys = Errno(libc::ENOSYS);
        assert!(io_uring_cause(enosys, &facts(None, Some(2))).contains("seccomp"));
        assert!(io_uring_cause(enosys, &facts(None, None)).contains("6.1.0"));
        assert_eq!(
            Errno(libc::EPERM).to_string(),
            format!("EPERM ({})", std::io::Error::from_raw_os_error(libc::EPERM))
        );
    }

    #[test]
    fn this_machine_passes() {
        // The suite runs the engine on this machine, so the checks must let it through.
        check().unwrap();
    }
}
