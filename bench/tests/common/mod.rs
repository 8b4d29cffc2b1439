//! Test harness: a real `proglog` server per test, and `proglog-bench` runs against it.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BENCH: &str = env!("CARGO_BIN_EXE_proglog-bench");

/// Finds the `proglog` server binary. Cargo gives a test the paths of its own package's
/// binaries only, so: `$PROGLOG_BIN`, else `proglog` in the profile directory this test
/// binary was built into (`<target>/<profile>/deps/<test>` -> `<target>/<profile>/proglog`),
/// built there with cargo if it is missing (CI builds it before testing, so normally it
/// exists).
pub fn proglog_bin() -> PathBuf {
    static FOUND: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = found.as_ref() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("PROGLOG_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PROGLOG_BIN={} is not a file", p.display());
        *found = Some(p.clone());
        return p;
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_owned();
    let bin = profile_dir.join("proglog");
    if !bin.is_file() {
        let target_dir = profile_dir.parent().expect("<target> directory");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&workspace)
            .args(["build", "-p", "proglog", "--bin", "proglog"])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p proglog");
        assert!(st.success(), "cargo build -p proglog --bin proglog failed");
        assert!(
            bin.is_file(),
            "{} still missing after cargo build",
            bin.display()
        );
    }
    *found = Some(bin.clone());
    bin
}

/// A port nobody listens on right now. The server binds it explicitly (binding port 0 with
/// SO_REUSEPORT on several shards would give each shard a different port).
#[path = "../../../tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
    extra: Vec<String>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("bench-test-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp data dir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = dir.path().join("server.log");
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let child = spawn(addr, dir.path(), &log, &extra);
        let mut s = Server {
            addr,
            child,
            _dir: dir,
            log,
            extra,
        };
        s.wait_listening();
        s
    }

    /// Kills the server (SIGKILL) and starts it again on the same data directory and port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.addr, self._dir.path(), &self.log, &self.extra);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let (addr, s) = (self.addr, self);
        let until = Instant::now() + Duration::from_secs(30);
        // A connection to itself does not count: connecting to a free port in the ephemeral
        // range can pick that same port as its source and succeed with no server there.
        let listening = |addr: SocketAddr| {
            TcpStream::connect(addr)
                .ok()
                .is_some_and(|c| c.local_addr().ok() != c.peer_addr().ok())
        };
        while !listening(addr) {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("proglog exited with {st} before listening:\n{}", s.log());
            }
            assert!(
                Instant::now() < until,
                "proglog did not listen on {addr}:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `proglog` on `addr` with its data in `dir`, appending its output to `log`.
fn spawn(addr: SocketAddr, dir: &Path, log: &Path, extra: &[String]) -> Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("server log");
    Command::new(proglog_bin())
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--shards", "1", "--log-level", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log fd"))
        .stderr(logf)
        .spawn()
        .expect("start proglog")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn bench(args: &[&str]) -> Run {
    let out: Output = Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run proglog-bench");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `bench` against `s` with JSON output, short timings and no progress lines.
pub fn bench_json(s: &Server, args: &[&str]) -> Run {
    let addr = s.addr.to_string();
    let mut a = vec!["--addr", &addr, "--json", "-q"];
    for (flag, default) in [("--duration", "1s"), ("--warmup", "200ms")] {
        if !args.contains(&flag) {
            a.extend([flag, default]);
        }
    }
    a.extend_from_slice(args);
    bench(&a)
}

/// Checks one workload's figures are sane: something completed, no errors, and the
/// latency percentiles are ordered.
pub fn assert_sane(w: &Value) {
    let kind = w["kind"].as_str().unwrap_or("?");
    assert!(
        w["records_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{kind}: no records: {w:#}"
    );
    assert!(
        w["mb_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{kind}: no bytes: {w:#}"
    );
    assert_eq!(w["errors"], serde_json::json!({}), "{kind}: errors: {w:#}");
    let l = &w["latency_us"];
    let get = |k: &str| l[k].as_f64().unwrap_or(-1.0);
    assert!(get("p50_us") > 0.0, "{kind}: p50 {l}");
    assert!(get("p50_us") <= get("p90_us"), "{kind}: {l}");
    assert!(get("p90_us") <= get("p99_us"), "{kind}: {l}");
    assert!(get("p99_us") <= get("p99_9_us"), "{kind}: {l}");
    assert!(get("p99_9_us") <= get("max_us"), "{kind}: {l}");
    assert!(get("max_us") < 30e6, "{kind}: max latency over 30 s: {l}");
}
