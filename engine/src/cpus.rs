//! Which CPUs the shards run on: the process's affinity mask, and CPU lists (`0-3,6`) as
//! Linux writes them (`Cpus_allowed_list`, cpuset's `cpuset.cpus`, `taskset -c`).

/// The CPUs this process may run on, ascending. Not "CPU 0 to n-1": in a container with a
/// cpuset (Kubernetes' static CPU manager gives a Guaranteed pod exclusive CPUs such as 4
/// and 5) pinning to CPU 0 fails or, under a mere affinity mask (taskset), escapes it. Empty
/// when the mask cannot be read.
pub fn allowed() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity(2) writes at most size_of::<cpu_set_t>() bytes into `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..MAX_CPUS)
        // SAFETY: CPU_ISSET reads bit `cpu` of `set`, and `cpu` < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// CPU numbers an affinity mask can hold (`CPU_SETSIZE`).
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Reads a CPU list: comma-separated CPUs and inclusive ranges (`0-3,6`), in any order, a
/// CPU given twice counting once. Returns the CPUs ascending; `Err` says why not.
pub fn parse_list(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty: give CPUs such as 0-3,6".into());
    }
    let cpu = |s: &str| -> Result<usize, String> {
        let s = s.trim();
        let n: usize = s
            .parse()
            .map_err(|_| format!("{s:?} is not a CPU number (a list looks like 0-3,6)"))?;
        if n >= MAX_CPUS {
            return Err(format!(
                "CPU {n} is beyond the largest CPU number, {}",
                MAX_CPUS - 1
            ));
        }
        Ok(n)
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (cpu(lo)?, cpu(hi)?);
                if lo > hi {
                    return Err(format!("the range {} runs backwards", item.trim()));
                }
                out.extend(lo..=hi);
            }
            None => out.push(cpu(item)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Writes CPUs (ascending) as a list with ranges: `[0, 1, 2, 3, 6]` is `0-3,6`.
pub fn show_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Whether shards may be pinned to `cpuset` in a process that may run on `allowed` (its
/// affinity mask; empty when it could not be read, and then only emptiness is checked).
pub fn check(cpuset: &[usize], allowed: &[usize]) -> Result<(), String> {
    if cpuset.is_empty() {
        return Err("no CPUs".into());
    }
    if allowed.is_empty() {
        return Ok(());
    }
    match cpuset.iter().find(|c| !allowed.contains(c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "CPU {c} is not one this process may run on (its affinity mask is {})",
            show_list(allowed)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_and_write_back() {
        assert_eq!(parse_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_list(" 1 ").unwrap(), vec![1]);
        assert_eq!(parse_list("6, 2-3,2").unwrap(), vec![2, 3, 6]);
        assert_eq!(show_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(show_list(&[1]), "1");
        assert_eq!(show_list(&[0, 2, 3]), "0,2-3");
        assert_eq!(show_list(&[]), "");
        for bad in [
            "", "a", "1,,2", "1,", "-1", "3-1", "0-", "1.5", "1024", "0-99999",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_list("3-1").unwrap_err().contains("backwards"));
        assert!(parse_list("1024")
            .unwrap_err()
            .contains("largest CPU number, 1023"));
    }

    #[test]
    fn a_cpuset_must_lie_inside_the_affinity_mask() {
        assert!(check(&[1], &[0, 1]).is_ok());
        assert!(check(&[4, 5], &[4, 5, 6]).is_ok());
        let e = check(&[1, 2], &[0, 1]).unwrap_err();
        assert!(e.contains("CPU 2") && e.contains("mask is 0-1"), "{e}");
        assert!(check(&[], &[0]).is_err());
        // An unreadable mask checks nothing more.
        assert!(check(&[7], &[]).is_ok());
        // The real mask holds what it lists, and nothing above its largest CPU.
        let real = allowed();
        assert!(!real.is_empty());
        assert!(check(&real, &real).is_ok());
        let above = real[real.len() - 1] + 1;
        assert!(check(&[above], &real).is_err());
    }
}
