//! What the kubelet and the container runtime do for a pod, done with the kernel's own
//! pieces so that the real `proglog` binary runs as it would in the cluster:
//!
//! - a network namespace per pod on a bridge (kept in a namespace of its own, so the root
//!   namespace never routes test addresses), its hosts file in `/etc/netns/NAME/hosts`
//!   standing in for cluster DNS;
//! - per container, in the child before exec: the pod's network namespace, new mount and
//!   UTS namespaces, the image's root (an unpacked tarball, or the host's userland read-only
//!   for the busybox image) with the volumes, /proc, /sys (read-only), a minimal /dev and the
//!   hosts file mounted in, the pod's host name, `chroot`, the groups and user of the
//!   securityContext (fsGroup as a supplementary group), no capabilities, no_new_privs, and
//!   the seccomp filter;
//! - `kubectl exec`: the same, entering a running container's namespaces and root.
//!
//! Everything is named `pgd-*` (namespaces) and removed at the start and at the end.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::manifest::Security;
use crate::seccomp::Filter;

pub const PREFIX: &str = "pgd-";
const BRIDGE_NS: &str = "pgd-br";

pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Removes every `pgd-*` namespace and hosts directory (leftovers of an earlier run too).
pub fn cleanup() {
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(PREFIX) {
                let _ = sh(&["ip", "netns", "del", name]);
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

/// The bridge and the namespaces on it.
pub struct Network {
    ports: usize,
}

impl Network {
    pub fn new() -> Result<Network, String> {
        cleanup();
        sh(&["ip", "netns", "add", BRIDGE_NS])?;
        in_ns(BRIDGE_NS, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(BRIDGE_NS, &["ip", "link", "set", "br0", "up"])?;
        Ok(Network { ports: 0 })
    }

    /// A namespace with `ip`/16 on eth0, attached to the bridge, and an empty hosts file.
    pub fn add(&mut self, ns: &str, ip: &str) -> Result<(), String> {
        assert!(ns.starts_with(PREFIX));
        self.ports += 1;
        let port = format!("v{}", self.ports);
        sh(&["ip", "netns", "add", ns])?;
        in_ns(
            BRIDGE_NS,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        in_ns(
            BRIDGE_NS,
            &["ip", "link", "set", &port, "master", "br0", "up"],
        )?;
        in_ns(
            ns,
            &["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"],
        )?;
        in_ns(ns, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(format!("/etc/netns/{ns}")).map_err(|e| e.to_string())?;
        write_in_place(&hosts_path(ns), "127.0.0.1 localhost\n");
        Ok(())
    }

    /// Deletes a namespace (its veth pair goes with it); the hosts file stays for reuse.
    pub fn remove(&mut self, ns: &str) -> Result<(), String> {
        sh(&["ip", "netns", "del", ns]).map(|_| ())
    }

    /// Runs `args` inside `ns` (a client, nft).
    pub fn run(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        in_ns(ns, args)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        cleanup();
    }
}

pub fn hosts_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/etc/netns/{ns}/hosts"))
}

/// Rewrites a file keeping its inode, so that bind mounts of it (a running container's
/// /etc/hosts) see the new content, as a DNS answer would change. One write from the start,
/// then the length: never an empty file for a reader in between. Unchanged content is not
/// written at all.
pub fn write_in_place(path: &Path, text: &str) {
    use std::os::unix::fs::FileExt;
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all_at(text.as_bytes(), 0).unwrap();
    f.set_len(text.len() as u64).unwrap();
}

/// Runs `f` on a thread inside network namespace `ns` (a kubelet probe, a test client).
pub fn from_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on an open namespace file; it moves only this thread, which
        // ends after `f`.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// An HTTP GET as the kubelet's probe makes it: the status code, or None when the
/// connection fails or `timeout` passes.
pub fn http_get(ns: &str, ip: &str, port: u16, path: &str, timeout: Duration) -> Option<u16> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let path = path.to_owned();
    from_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.32\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace().nth(1)?.parse().ok()
    })
}

/// A path to mount inside the container's root.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute, inside the container.
    pub target: String,
    pub read_only: bool,
}

/// One container to start.
pub struct Launch {
    pub netns: String,
    pub hostname: String,
    /// The image's root directory on this machine.
    pub root: PathBuf,
    /// For the busybox image: the host's userland, mounted read-only into `root`.
    pub host_userland: bool,
    pub binds: Vec<Bind>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub security: Security,
    pub filter: Option<Arc<Filter>>,
    pub log: PathBuf,
}

/// A mount(2) call prepared before fork.
struct MountOp {
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Create the target as an empty file first (device nodes on the fresh /dev tmpfs).
    create_file: bool,
    /// Remount read-only afterwards.
    read_only: bool,
}

fn cstr(p: impl AsRef<std::ffi::OsStr>) -> CString {
    CString::new(p.as_ref().as_bytes()).expect("no NUL in paths")
}

fn inside(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

/// Creates the mount point for `source` at `target` (a directory or an empty file).
fn mount_point(source: &Path, target: &Path) {
    if source.is_dir() {
        std::fs::create_dir_all(target).unwrap();
    } else if std::fs::symlink_metadata(target).is_err() {
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        File::create(target).unwrap();
    }
}

fn bind_op(source: &Path, target: &Path, read_only: bool) -> MountOp {
    MountOp {
        source: Some(cstr(source)),
        target: cstr(target),
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC,
        data: None,
        create_file: false,
        read_only,
    }
}

/// The host's top-level userland directories (or their symlinks, on merged-/usr systems).
const USERLAND: [&str; 6] = ["usr", "bin", "sbin", "lib", "lib64", "etc"];

/// Everything the child needs, built before fork: the child only makes system calls.
struct Prepared {
    netns: File,
    mounts: Vec<MountOp>,
    root: CString,
    read_only_root: bool,
    hostname: Vec<u8>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    drop_caps: bool,
    no_new_privs: bool,
    filter: Option<Arc<Filter>>,
}

fn prepare(l: &Launch) -> Prepared {
    let root = &l.root;
    let mut mounts = vec![bind_op(root, root, false)];
    if l.host_userland {
        for d in USERLAND {
            let host = Path::new("/").join(d);
            let there = root.join(d);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    if std::fs::symlink_metadata(&there).is_err() {
                        std::os::unix::fs::symlink(std::fs::read_link(&host).unwrap(), &there)
                            .unwrap();
                    }
                }
                Ok(_) => {
                    std::fs::create_dir_all(&there).unwrap();
                    mounts.push(bind_op(&host, &there, true));
                }
                Err(_) => {}
            }
        }
    }
    for b in &l.binds {
        let target = inside(root, &b.target);
        mount_point(&b.source, &target);
        mounts.push(bind_op(&b.source, &target, b.read_only));
    }
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    mounts.push(MountOp {
        source: Some(cstr("proc")),
        target: cstr(root.join("proc")),
        fstype: Some(cstr("proc")),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
        create_file: false,
        read_only: false,
    });
    mounts.push(bind_op(Path::new("/sys"), &root.join("sys"), true));
    mounts.push(MountOp {
        source: Some(cstr("tmpfs")),
        target: cstr(root.join("dev")),
        fstype: Some(cstr("tmpfs")),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(cstr("mode=755,size=64k")),
        create_file: false,
        read_only: false,
    });
    for dev in ["null", "zero", "full", "random", "urandom"] {
        let mut op = bind_op(
            &Path::new("/dev").join(dev),
            &root.join("dev").join(dev),
            false,
        );
        op.flags = libc::MS_BIND;
        op.create_file = true;
        mounts.push(op);
    }
    // The pod's hosts file, as the kubelet mounts its own.
    let hosts = hosts_path(&l.netns);
    mount_point(&hosts, &root.join("etc/hosts"));
    mounts.push(bind_op(&hosts, &root.join("etc/hosts"), true));

    let s = &l.security;
    let mut groups = vec![s.run_as_group];
    groups.extend(s.fs_group);
    Prepared {
        netns: File::open(format!("/var/run/netns/{}", l.netns)).expect("the pod's netns"),
        mounts,
        root: cstr(root),
        read_only_root: s.read_only_root,
        hostname: l.hostname.as_bytes().to_vec(),
        groups,
        uid: s.run_as_user,
        gid: s.run_as_group,
        drop_caps: s.drop_all_caps,
        no_new_privs: s.no_new_privs,
        filter: l.filter.clone(),
    }
}

/// Returns the error of the call that just failed, after writing `step` to stderr (the
/// container's log): the only report a child can make without allocating.
fn failed(step: &'static str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    // SAFETY: write(2) of a static buffer to the child's stderr.
    unsafe { libc::write(2, step.as_ptr() as *const libc::c_void, step.len()) };
    e
}

fn ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Drops the user to the container's, with no capabilities, no_new_privs and the filter:
/// the last steps before exec, shared by start and exec.
///
/// # Safety
/// Runs in the child after fork: system calls only.
unsafe fn become_container_user(p: &Prepared) -> std::io::Result<()> {
    if libc::setgroups(p.groups.len(), p.groups.as_ptr()) != 0 {
        return Err(failed("container: setgroups failed\n"));
    }
    if libc::setgid(p.gid) != 0 {
        return Err(failed("container: setgid failed\n"));
    }
    if libc::setuid(p.uid) != 0 {
        return Err(failed("container: setuid failed\n"));
    }
    // A non-root user lost every capability with setuid; root must drop them itself.
    if p.drop_caps && p.uid == 0 {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(failed("container: capset failed\n"));
        }
    }
    if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        return Err(failed("container: no_new_privs failed\n"));
    }
    if let Some(f) = &p.filter {
        if let Err(e) = f.install() {
            failed("container: installing the seccomp filter failed\n");
            return Err(e);
        }
    }
    Ok(())
}

/// Starts a container; its stdout and stderr are appended to `l.log`.
pub fn start(l: &Launch) -> Child {
    let p = prepare(l);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)
        .unwrap();
    let mut cmd = Command::new(&l.argv[0]);
    cmd.args(&l.argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOSTNAME", &l.hostname)
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: the closure makes system calls only, on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(p.netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(failed("container: setns(net) failed\n"));
            }
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                return Err(failed("container: unshare failed\n"));
            }
            let slash = c"/";
            // Nothing mounted here reaches the host's namespace.
            if libc::mount(
                std::ptr::null(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(failed("container: making / private failed\n"));
            }
            for m in &p.mounts {
                if m.create_file {
                    let fd = libc::open(
                        m.target.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        return Err(failed("container: creating a mount point failed\n"));
                    }
                    libc::close(fd);
                }
                if libc::mount(
                    ptr(&m.source),
                    m.target.as_ptr(),
                    ptr(&m.fstype),
                    m.flags,
                    ptr(&m.data) as *const libc::c_void,
                ) != 0
                {
                    return Err(failed("container: a mount failed\n"));
                }
                if m.read_only
                    && libc::mount(
                        std::ptr::null(),
                        m.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(failed("container: a read-only remount failed\n"));
                }
            }
            if p.read_only_root
                && libc::mount(
                    std::ptr::null(),
                    p.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ) != 0
            {
                return Err(failed("container: the read-only root failed\n"));
            }
            if libc::sethostname(p.hostname.as_ptr() as *const libc::c_char, p.hostname.len()) != 0
            {
                return Err(failed("container: sethostname failed\n"));
            }
            if libc::chroot(p.root.as_ptr()) != 0 || libc::chdir(slash.as_ptr()) != 0 {
                return Err(failed("container: chroot failed\n"));
            }
            become_container_user(&p)
        })
    };
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}; see {}", l.argv, l.log.display()))
}

/// `kubectl exec`: runs `argv` in the running container `pid` (its namespaces, root, user
/// and seccomp filter) and returns its output.
pub fn exec(pid: u32, l: &Launch, argv: &[&str]) -> Output {
    let ns =
        |kind: &str| File::open(format!("/proc/{pid}/ns/{kind}")).expect("container namespaces");
    let (net, uts, mnt) = (ns("net"), ns("uts"), ns("mnt"));
    let s = &l.security;
    let mut groups = vec![s.run_as_group];
    groups.extend(s.fs_group);
    let p = Prepared {
        netns: net,
        mounts: Vec::new(),
        root: cstr(&l.root),
        read_only_root: false,
        hostname: Vec::new(),
        groups,
        uid: s.run_as_user,
        gid: s.run_as_group,
        drop_caps: s.drop_all_caps,
        no_new_privs: s.no_new_privs,
        filter: l.filter.clone(),
    };
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    // SAFETY: the closure makes system calls only, on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(p.netns.as_raw_fd(), libc::CLONE_NEWNET) != 0
                || libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS) != 0
                || libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) != 0
            {
                return Err(failed("exec: setns failed\n"));
            }
            if libc::chroot(p.root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(failed("exec: chroot failed\n"));
            }
            become_container_user(&p)
        })
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"))
}

/// The kubelet's stop, once SIGTERM is sent: SIGKILL when the grace period is over.
/// Returns the exit status and whether SIGKILL was needed.
pub fn wait_or_kill(child: &mut Child, grace: Duration) -> (ExitStatus, bool) {
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
