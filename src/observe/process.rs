//! The process's own resource use, read from /proc at scrape time.

use std::path::Path;

/// What a scrape reports about the process. Fields are `None` where /proc did not say
/// (another OS, or a hardened /proc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub resident_max_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// `VmRSS:   1234 kB` -> bytes.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let rest = line[key.len()..].trim_start_matches(':').trim();
    let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

fn status_num(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim_start_matches(':')
        .trim()
        .parse()
        .ok()
}

/// utime + stime from /proc/self/stat, fields 14 and 15 (after the parenthesised name).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let max_fds = max_fds();
        let open_fds = match std::fs::read_dir(Path::new("/proc/self/fd")) {
            Ok(d) => Some(d.count() as u64),
            // Listing them takes a descriptor: none left means every one is open, which is
            // when the figure matters most (the series vanished exactly then).
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => max_fds,
            Err(_) => None,
        };
        ProcessStats {
            resident_bytes: status_kib(&status, "VmRSS"),
            resident_max_bytes: status_kib(&status, "VmHWM"),
            virtual_bytes: status_kib(&status, "VmSize"),
            threads: status_num(&status, "Threads"),
            open_fds,
            max_fds,
            cpu_seconds: cpu_seconds(&stat),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tproglog\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\nThreads:\t7\n";
        assert_eq!(status_kib(s, "VmRSS"), Some(1024 * 1024));
        assert_eq!(status_kib(s, "VmHWM"), Some(2048 * 1024));
        assert_eq!(status_num(s, "Threads"), Some(7));
        assert_eq!(status_kib(s, "VmSize"), None);
    }

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read();
        assert!(p.resident_bytes.is_some_and(|b| b > 0));
        assert!(p.open_fds.is_some_and(|n| n > 0));
        assert!(p.cpu_seconds.is_some());
    }
}
