//! Test harness: a server on its own glommio executor thread, a port
//! picker, and a way to run client code on a glommio executor.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use net::server::{Response, Router, Server, ServerConfig};
use net::{Shutdown, Status};

/// A port reserved for this process until dropped.
pub struct Port {
    pub port: u16,
    _lock: std::fs::File,
}

/// Picks a port nothing listens on. SO_REUSEPORT listeners would share a
/// port-0 pick, and two test processes whose bind checks race could both
/// bind the same explicit port (SO_REUSEPORT lets them), so each port is
/// also claimed with an exclusive file lock, released when the process ends.
pub fn free_port() -> Port {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + ((std::process::id() as u64 * 7919) % 30_000) as u16;
    let _ = NEXT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    let dir = std::env::temp_dir().join("net-test-ports");
    std::fs::create_dir_all(&dir).expect("create port lock dir");
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = if p >= 60_000 { 20_000 + p % 30_000 } else { p };
        let Ok(lock) = std::fs::File::create(dir.join(p.to_string())) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Port {
                port: p,
                _lock: lock,
            };
        }
    }
}

pub fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        // Tests do no file I/O: skip most of the registered buffer.
        .io_memory(64 * 1024)
        .make()
        .expect("make executor")
}

/// Runs client code on a fresh executor on this thread.
pub fn run<F: Future + 'static>(f: F) -> F::Output {
    executor().run(f)
}

/// Observations the test service makes, shared across threads.
#[derive(Default)]
pub struct Probes {
    /// Messages the Count stream has handed to its sink.
    pub emitted: AtomicUsize,
    /// Set when a Sleep handler was dropped before finishing.
    pub sleep_dropped: AtomicBool,
    pub sleep_started: AtomicUsize,
    pub sleep_finished: AtomicUsize,
    /// Connections the server counts now, as its observer hears of them.
    pub connections_open: AtomicI64,
}

/// Keeps the connection count the way a metrics observer would.
struct ConnCounter(Arc<Probes>);

impl net::observe::CallObserver for ConnCounter {
    fn connection_opened(&self, _peer: Option<SocketAddr>) {
        self.0.connections_open.fetch_add(1, Ordering::SeqCst);
    }
    fn connection_closed(&self, _peer: Option<SocketAddr>) {
        self.0.connections_open.fetch_sub(1, Ordering::SeqCst);
    }
    fn call_finished(&self, _call: &net::observe::CallInfo, _status: &Status) {}
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub probes: Arc<Probes>,
    _port: Port,
    thread: Option<JoinHandle<Result<(), net::Error>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with_config(ServerConfig::default())
    }

    pub fn with_config(config: ServerConfig) -> TestServer {
        let _ = env_logger::builder().is_test(true).try_init();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{}", port.port).parse().unwrap();
        let shutdown = Shutdown::new();
        let probes = Arc::new(Probes::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let (sd, pr) = (shutdown.clone(), probes.clone());
        let thread = std::thread::spawn(move || {
            executor().run(async move {
                let listener = glommio::net::TcpListener::bind(addr).expect("bind");
                ready_tx.send(()).unwrap();
                let observer = std::rc::Rc::new(ConnCounter(pr.clone()));
                Server::new(config, router(pr))
                    .with_observer(observer)
                    .serve_listener(listener, sd)
                    .await
            })
        });
        ready_rx.recv().expect("server thread started");
        TestServer {
            addr,
            shutdown,
            probes,
            _port: port,
            thread: Some(thread),
        }
    }

    /// Triggers shutdown and waits for the server to stop.
    pub fn stop(mut self) -> Result<(), net::Error> {
        self.shutdown.trigger();
        self.thread.take().unwrap().join().expect("server thread")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_u64(b: &[u8]) -> Result<u64, Status> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Status::invalid_argument("not a number"))
}

struct DropFlag(Arc<Probes>, bool);
impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.sleep_dropped.store(true, Ordering::SeqCst);
        }
    }
}

pub const ERROR_MESSAGE: &str = "bad input: 100% wrong ✗\nsecond line";

pub fn router(probes: Arc<Probes>) -> Router {
    let p1 = probes.clone();
    let p2 = probes.clone();
    Router::new()
        .unary("/test.Echo/Unary", |req| async move {
            match &req.message[..] {
                b"error" => Err(Status::invalid_argument(ERROR_MESSAGE)
                    .with_details(Bytes::from_static(b"\x00\xffopaque-details"))),
                b"big-reply" => Ok(Response::new(Bytes::from(vec![7u8; 300 * 1024]))),
                _ => {
                    let mut resp = Response::new(req.message);
                    resp.metadata.insert("x-echo", "1".parse().unwrap());
                    Ok(resp)
                }
            }
        })
        .unary("/test.Echo/Sleep", move |req| {
            let probes = p1.clone();
            async move {
                let ms = parse_u64(&req.message)?;
                probes.sleep_started.fetch_add(1, Ordering::SeqCst);
                let mut flag = DropFlag(probes.clone(), false);
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                flag.1 = true;
                probes.sleep_finished.fetch_add(1, Ordering::SeqCst);
                Ok(Response::new(Bytes::from_static(b"slept")))
            }
        })
        .server_streaming("/test.Echo/Count", move |req, sink| {
            let probes = p2.clone();
            async move {
                // "N" or "N:size"
                let s = std::str::from_utf8(&req.message).unwrap_or("0").to_owned();
                let (n, size) = match s.split_once(':') {
                    Some((n, sz)) => (parse_u64(n.as_bytes())?, parse_u64(sz.as_bytes())?),
                    None => (parse_u64(s.as_bytes())?, 0),
                };
                for i in 0..n {
                    let mut m = i.to_string().into_bytes();
                    m.resize((size as usize).max(m.len()), b'.');
                    sink.send(Bytes::from(m)).await?;
                    probes.emitted.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        })
        .client_streaming("/test.Echo/Sum", |mut req| async move {
            let mut sum = 0u64;
            while let Some(m) = req.message.message().await? {
                sum += parse_u64(&m)?;
            }
            Ok(Response::new(Bytes::from(sum.to_string())))
        })
        .bidi_streaming("/test.Echo/Chat", |mut req, sink| async move {
            while let Some(m) = req.message.message().await? {
                if &m[..] == b"fail" {
                    return Err(Status::aborted("asked to fail"));
                }
                sink.send(m).await?;
            }
            Ok(())
        })
}
