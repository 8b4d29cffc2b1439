//! Black-box harness: starts the real `proglog` binary on a free port with its own data
//! directory, waits until gRPC health says SERVING, and kills it when dropped.

#![allow(dead_code)]

pub mod cluster;
pub mod ports;
pub mod seccomp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::blocking::BlockingChannel;
use net::client::{CallOptions, ClientConfig};
use net::Status;
use proto::health::v1::health_check_response::ServingStatus;
use proto::health::v1::{paths as hpaths, HealthCheckRequest, HealthCheckResponse};
use proto::log::v1::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_proglog");

pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    extra: Vec<String>,
    /// How the harness itself connects (TLS settings for a TLS server).
    pub client: ClientConfig,
    /// Start-up waits for gRPC health SERVING; without it (a node that joins a cluster
    /// which may never admit it is NOT_SERVING until admitted), for any health answer.
    until_serving: bool,
    // Held so the directory outlives the server; `None` when the caller owns the directory.
    _tmp: Option<tempfile::TempDir>,
}

pub use ports::free_port;

pub fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

impl TestServer {
    /// A server on a fresh temporary directory, two shards.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// A server that is to join a cluster through `extra`'s flags and may never be admitted
    /// (another CA, no peer TLS): running once its gRPC port answers health at all.
    pub fn start_not_admitted(extra: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in_until(&dir, extra, ClientConfig::default(), false);
        s._tmp = Some(tmp);
        s
    }

    /// A server on `data_dir` (kept after the server stops, for restarts).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::start_in_with_client(data_dir, extra, ClientConfig::default())
    }

    /// A server on a fresh temporary directory that the harness reaches with `client`
    /// (e.g. a TLS client with a certificate the server's ACL lets check health).
    pub fn start_with_client(extra: &[&str], client: ClientConfig) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in_with_client(&dir, extra, client);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in_with_client(
        data_dir: &Path,
        extra: &[&str],
        client: ClientConfig,
    ) -> TestServer {
        Self::start_in_until(data_dir, extra, client, true)
    }

    fn start_in_until(
        data_dir: &Path,
        extra: &[&str],
        client: ClientConfig,
        until_serving: bool,
    ) -> TestServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut s = TestServer {
                child: None,
                addr,
                data_dir: data_dir.to_owned(),
                log_path: data_dir.with_extension(format!("{}.log", addr.port())),
                extra: extra.clone(),
                client: client.clone(),
                until_serving,
                _tmp: None,
            };
            s.spawn();
            if s.wait_serving(Duration::from_secs(20)) {
                return s;
            }
            last_log = s.log();
            s.kill();
        }
        panic!("server did not become SERVING; its log:\n{last_log}");
    }

    pub fn spawn(&mut self) {
        // Appended, so that the log of a run survives the restart after it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(["--shards", "2", "--node-name", "test-node"])
            .args(&self.extra)
            .args(self.defaults())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn proglog");
        self.child = Some(child);
    }

    /// Flags a test may set itself, else these. Servers run side by side: unless a test
    /// picks the admin address, each takes a port of its own (`admin_addr` reads which from
    /// the log).
    fn defaults(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, value) in [("--log-level", "info"), ("--admin-addr", "127.0.0.1:0")] {
            if !self.extra.iter().any(|a| a.starts_with(flag)) {
                out.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        out
    }

    /// The admin HTTP address of the running server, from its log.
    pub fn admin_addr(&self) -> SocketAddr {
        admin_addr_in(&self.log()).expect("the server logs its admin address")
    }

    /// Stops the server with SIGTERM (graceful) and starts it again on the same directory
    /// and port.
    pub fn restart(&mut self) {
        let status = self.sigterm();
        assert!(
            status.success(),
            "graceful stop failed: {status:?}\n{}",
            self.log()
        );
        self.spawn();
        assert!(
            self.wait_serving(Duration::from_secs(20)),
            "server did not come back; log:\n{}",
            self.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running server").id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        !self.exited()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    pub fn wait_serving(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.exited() {
                return false;
            }
            if let Ok(ch) = BlockingChannel::connect(self.addr, self.client.clone()) {
                let r: Result<HealthCheckResponse, Status> = ch.unary_prost(
                    hpaths::CHECK,
                    &HealthCheckRequest::default(),
                    CallOptions::timeout(Duration::from_secs(2)),
                );
                if r.is_ok_and(|r| r.status == ServingStatus::Serving as i32 || !self.until_serving)
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn channel(&self) -> BlockingChannel {
        BlockingChannel::connect(self.addr, self.client.clone()).expect("connect")
    }

    /// Stops the process (SIGSTOP): it keeps its sockets, and the kernel keeps completing
    /// TCP handshakes, but nothing is read or answered until [`Self::resume`].
    pub fn pause(&self) {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet, so it is ours.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGSTOP) };
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGCONT) };
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn signal(&mut self, sig: i32) -> ExitStatus {
        let child = self.child.as_mut().expect("running server");
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet, so it is ours.
        unsafe { libc::kill(pid, sig) };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < until,
                "server did not exit after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// User + system CPU time the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("running server").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name, from `state`; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this server; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        run_cli(self.addr, args, stdin)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

pub fn run_cli(addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--addr")
        .arg(addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn cli");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("cli output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `proglog cert ARGS --dir DIR` (certificates for a test), failing the test with its
/// error output if it fails.
pub fn cert(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("cert")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("running proglog cert");
    assert!(
        out.status.success(),
        "proglog cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last admin address a server log announces.
pub fn admin_addr_in(log: &str) -> Option<SocketAddr> {
    const MARK: &str = "admin HTTP on http://";
    let at = log.rfind(MARK)? + MARK.len();
    log[at..].split_whitespace().next()?.parse().ok()
}

/// A GET on the admin port: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Runs an async test body on its own glommio executor thread.
pub fn run_async<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("executor")
        .join()
        .expect("executor thread")
}

pub fn record(v: impl Into<Bytes>) -> Option<Record> {
    Some(Record {
        value: v.into(),
        ..Default::default()
    })
}

pub fn produce(ch: &BlockingChannel, topic: &str, partition: u32, v: &str) -> Result<u64, Status> {
    let r: ProduceResponse = ch.unary_prost(
        paths::PRODUCE,
        &ProduceRequest {
            record: record(v.to_owned()),
            topic: topic.into(),
            partition,
        },
        opts(),
    )?;
    Ok(r.offset)
}

pub fn consume(
    ch: &BlockingChannel,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<Record, Status> {
    let r: ConsumeResponse = ch.unary_prost(
        paths::CONSUME,
        &ConsumeRequest {
            offset,
            topic: topic.into(),
            partition,
        },
        opts(),
    )?;
    r.record.ok_or_else(|| Status::internal("no record"))
}

pub fn create_topic(
    ch: &BlockingChannel,
    name: &str,
    partitions: u32,
) -> Result<TopicDescription, Status> {
    let r: CreateTopicResponse = ch.unary_prost(
        paths::CREATE_TOPIC,
        &CreateTopicRequest {
            name: name.into(),
            config: Some(TopicConfig {
                partitions,
                ..Default::default()
            }),
        },
        opts(),
    )?;
    r.topic.ok_or_else(|| Status::internal("no topic"))
}

/// Sends `n` ProduceStream requests (values `<prefix><i>`), every one before any response is
/// read, so all are in flight at once; returns the offsets in the order they were answered.
/// The call must end with OK after the half-close (not the reference's Unknown "EOF").
pub fn produce_stream(addr: SocketAddr, n: usize, prefix: &'static str) -> Vec<u64> {
    run_async(move || async move {
        let ch = net::client::Channel::connect(addr, ClientConfig::default())
            .await
            .unwrap();
        let (mut tx, mut rx) = ch
            .streaming(
                paths::PRODUCE_STREAM,
                CallOptions::timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        let send = async move {
            for i in 0..n {
                tx.send_message(&ProduceRequest {
                    record: record(format!("{prefix}{i}")),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            tx.finish().unwrap();
        };
        let recv = async move {
            let mut got = Vec::new();
            while let Some(r) = rx.message_as::<ProduceResponse>().await.unwrap() {
                got.push(r.offset);
            }
            got
        };
        futures_lite::future::zip(send, recv).await.1
    })
}

/// Asks `questions` on one reflection stream at `path` (v1 or v1alpha) and returns the
/// answers, or the status the call ended with.
pub fn reflect(
    addr: SocketAddr,
    client: ClientConfig,
    path: &'static str,
    questions: Vec<proto::reflection::v1::ServerReflectionRequest>,
) -> Result<Vec<proto::reflection::v1::ServerReflectionResponse>, Status> {
    run_async(move || async move {
        let ch = net::client::Channel::connect(addr, client)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (mut tx, mut rx) = ch.streaming(path, opts()).await?;
        let mut answers = Vec::new();
        // One question at a time, each answered before the next, as tools ask.
        for q in questions {
            tx.send_message(&q).await?;
            match rx.message_as().await? {
                Some(a) => answers.push(a),
                None => return Err(Status::internal("stream ended before the answer")),
            }
        }
        tx.finish()?;
        match rx.message().await? {
            None => Ok(answers),
            Some(_) => Err(Status::internal("an answer nobody asked for")),
        }
    })
}

/// Polls `f` every 5 ms until it returns `Some`, for at most `within`.
pub fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A child process's descriptor limit (RLIMIT_NOFILE), lowered under its feet and given back.
pub struct NofileLimit {
    pid: libc::pid_t,
    was: libc::rlimit,
}

impl NofileLimit {
    /// The limit of `pid` (a child of this process) as it is now.
    pub fn of(pid: u32) -> NofileLimit {
        let pid = pid as libc::pid_t;
        let mut was = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit with no new limit only writes the process's current one into `was`.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut was) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        NofileLimit { pid, was }
    }

    /// Descriptors the process has open.
    pub fn open_now(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    }

    /// Sets the soft limit to `n` (at most the hard one).
    pub fn set(&self, n: u64) {
        let lim = libc::rlimit {
            rlim_cur: n.min(self.was.rlim_max),
            rlim_max: self.was.rlim_max,
        };
        // SAFETY: prlimit reads `lim` and writes nothing back (null old limit); the pid is a
        // child of this process.
        let rc =
            unsafe { libc::prlimit(self.pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Gives the limit back as it was.
    pub fn restore(&self) {
        self.set(self.was.rlim_cur);
    }
}
