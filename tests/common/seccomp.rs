//! Seccomp filters for black-box tests, installed in a child just before it execs the server,
//! as a container runtime does: a profile in the runtimes' JSON format (the one Kubernetes'
//! `Localhost` profiles and `docker --security-opt seccomp=` take) compiled to classic BPF.
//!
//! Only the subset our profile uses is compiled, and anything else is refused rather than
//! approximated: `defaultAction` and per-rule `action` of ALLOW, ERRNO (with `errnoRet` /
//! `defaultErrnoRet`, EPERM when absent), KILL, KILL_PROCESS or KILL_THREAD; `args` with
//! `SCMP_CMP_EQ` or `SCMP_CMP_MASKED_EQ` (`value` is the mask, `valueTwo` the expected value,
//! as in libseccomp), several conditions on a rule meaning all of them. No `architectures`
//! key means the native architecture only; another architecture, and x86-64's x32 ABI, are
//! killed (libseccomp's bad-architecture action). Syscall names are resolved from the kernel
//! headers (`asm/unistd_64.h`); a name they do not know fails the compile, so a typo in the
//! profile fails the test instead of being skipped silently as runtimes skip it.

// Shared by the test binaries, which each use part of it.
#![allow(dead_code)]

use std::collections::HashMap;

// Classic BPF opcodes (linux/bpf_common.h), class | size/op | source.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD 0x00 | BPF_W 0x00 | BPF_ABS 0x20
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP 0x05 | BPF_JEQ 0x10 | BPF_K 0x00
const BPF_JSET_K: u16 = 0x45; // BPF_JMP 0x05 | BPF_JSET 0x40 | BPF_K 0x00
const BPF_AND_K: u16 = 0x54; // BPF_ALU 0x04 | BPF_AND 0x50 | BPF_K 0x00
const BPF_RET_K: u16 = 0x06; // BPF_RET 0x06 | BPF_K 0x00

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
#[cfg(not(target_arch = "x86_64"))]
const AUDIT_ARCH_NATIVE: u32 = 0;
#[cfg(target_arch = "x86_64")]
const UNISTD_HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A compiled filter, ready to install in a child after fork.
pub struct Filter {
    prog: Vec<libc::sock_filter>,
}

/// Syscall name -> number for this machine, from the kernel headers.
#[cfg(target_arch = "x86_64")]
pub fn syscall_table() -> Result<HashMap<String, u32>, String> {
    let text = std::fs::read_to_string(UNISTD_HEADER).map_err(|e| {
        format!("{UNISTD_HEADER}: {e} (the kernel headers come with libc6-dev/linux-libc-dev)")
    })?;
    let mut t = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (w.next(), w.next(), w.next()) {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse()) {
                t.insert(name.to_owned(), nr);
            }
        }
    }
    if t.len() < 300 {
        return Err(format!(
            "{UNISTD_HEADER}: only {} syscalls found, not a syscall table",
            t.len()
        ));
    }
    Ok(t)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn syscall_table() -> Result<HashMap<String, u32>, String> {
    Err("the seccomp emulation of the tests supports x86-64 only".into())
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn action(v: &serde_json::Value, errno_key: &str, rule: &serde_json::Value) -> Result<u32, String> {
    let errno = rule
        .get(errno_key)
        .and_then(|e| e.as_u64())
        .unwrap_or(libc::EPERM as u64) as u32;
    match v.as_str() {
        Some("SCMP_ACT_ALLOW") => Ok(RET_ALLOW),
        Some("SCMP_ACT_ERRNO") => Ok(RET_ERRNO | (errno & 0xffff)),
        Some("SCMP_ACT_KILL") | Some("SCMP_ACT_KILL_THREAD") => Ok(RET_KILL_THREAD),
        Some("SCMP_ACT_KILL_PROCESS") => Ok(RET_KILL_PROCESS),
        other => Err(format!(
            "action {other:?} is not supported by the test's compiler"
        )),
    }
}

/// One argument condition as (arg index, mask, expected value), 64-bit.
fn condition(c: &serde_json::Value) -> Result<(u32, u64, u64), String> {
    let index = c["index"]
        .as_u64()
        .filter(|i| *i < 6)
        .ok_or("bad args index")? as u32;
    let value = c["value"].as_u64().ok_or("args value must be a number")?;
    let two = c.get("valueTwo").and_then(|v| v.as_u64()).unwrap_or(0);
    match c["op"].as_str() {
        Some("SCMP_CMP_EQ") => Ok((index, u64::MAX, value)),
        Some("SCMP_CMP_MASKED_EQ") => Ok((index, value, two)),
        other => Err(format!(
            "args op {other:?} is not supported by the test's compiler"
        )),
    }
}

impl Filter {
    /// Compiles a profile (see the module doc for the subset).
    pub fn from_profile(json: &str, table: &HashMap<String, u32>) -> Result<Filter, String> {
        let p: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("profile is not JSON: {e}"))?;
        for key in p.as_object().ok_or("profile is not an object")?.keys() {
            if !["defaultAction", "defaultErrnoRet", "syscalls"].contains(&key.as_str()) {
                return Err(format!(
                    "profile key {key:?} is not supported by the test's compiler"
                ));
            }
        }
        let default = action(&p["defaultAction"], "defaultErrnoRet", &p)?;
        let mut prog = Self::prologue();
        for rule in p["syscalls"].as_array().ok_or("syscalls must be a list")? {
            for key in rule.as_object().ok_or("a rule is not an object")?.keys() {
                if !["names", "action", "args", "errnoRet", "comment"].contains(&key.as_str()) {
                    return Err(format!(
                        "rule key {key:?} is not supported by the test's compiler"
                    ));
                }
            }
            let ret = action(&rule["action"], "errnoRet", rule)?;
            let conds = match rule.get("args") {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(a) => a
                    .as_array()
                    .ok_or("args must be a list")?
                    .iter()
                    .map(condition)
                    .collect::<Result<Vec<_>, _>>()?,
            };
            for name in rule["names"].as_array().ok_or("names must be a list")? {
                let name = name.as_str().ok_or("a syscall name is not a string")?;
                let nr = *table
                    .get(name)
                    .ok_or_else(|| format!("syscall {name:?} is unknown on this machine"))?;
                Self::rule(&mut prog, nr, &conds, ret);
            }
        }
        prog.push(stmt(BPF_RET_K, default));
        Self::checked(prog)
    }

    /// A filter that fails one syscall with `errno` and allows everything else.
    pub fn deny(nr: u32, errno: i32) -> Filter {
        let mut prog = Self::prologue();
        Self::rule(&mut prog, nr, &[], RET_ERRNO | errno as u32);
        prog.push(stmt(BPF_RET_K, RET_ALLOW));
        Filter { prog }
    }

    /// Kills another architecture or the x32 ABI; leaves the syscall number loaded.
    fn prologue() -> Vec<libc::sock_filter> {
        vec![
            stmt(BPF_LD_W_ABS, OFF_ARCH),
            jump(BPF_JEQ_K, AUDIT_ARCH_NATIVE, 1, 0),
            stmt(BPF_RET_K, RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, OFF_NR),
            jump(BPF_JSET_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, RET_KILL_PROCESS),
        ]
    }

    /// `nr` (and every condition) -> `ret`; otherwise on to the next rule. Each rule reloads
    /// the number, since a condition overwrites the accumulator.
    fn rule(prog: &mut Vec<libc::sock_filter>, nr: u32, conds: &[(u32, u64, u64)], ret: u32) {
        // Per condition: two halves of (load, and, compare) = 6 instructions.
        let body = conds.len() * 6;
        prog.push(stmt(BPF_LD_W_ABS, OFF_NR));
        prog.push(jump(BPF_JEQ_K, nr, 0, (body + 1) as u8));
        for (i, &(index, mask, want)) in conds.iter().enumerate() {
            let left = body - i * 6;
            for (half, off) in [(0u32, 0u32), (1, 4)] {
                let shift = 32 * half;
                let to_next = (left - 3 - 3 * half as usize + 1) as u8;
                prog.push(stmt(BPF_LD_W_ABS, OFF_ARGS + 8 * index + off));
                prog.push(stmt(BPF_AND_K, (mask >> shift) as u32));
                prog.push(jump(BPF_JEQ_K, (want >> shift) as u32, 0, to_next));
            }
        }
        prog.push(stmt(BPF_RET_K, ret));
    }

    fn checked(prog: Vec<libc::sock_filter>) -> Result<Filter, String> {
        if prog.len() > 4096 {
            return Err(format!(
                "{} BPF instructions: over the kernel's 4096",
                prog.len()
            ));
        }
        Ok(Filter { prog })
    }

    /// Sets no_new_privs and installs the filter on the calling thread.
    ///
    /// # Safety
    /// Meant for `Command::pre_exec`: it only makes two prctl(2) calls on a program built
    /// beforehand, so it neither allocates nor takes locks.
    pub unsafe fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.prog.len() as u16,
            filter: self.prog.as_ptr() as *mut libc::sock_filter,
        };
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
