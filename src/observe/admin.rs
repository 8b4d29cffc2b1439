//! The admin HTTP port: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (ready).
//!
//! A small HTTP/1.1 server on ordinary threads, apart from the shards' executors on
//! purpose: it must answer while the engine is still recovering (the shards do not exist
//! yet) and while it drains, and a scrape must not compete with calls on a shard's task
//! queue for more than the one job per shard that collects partition numbers.
//!
//! Bounded everywhere: GET and HEAD only; a request head of at most 8 KiB, read within 5 s
//! of the accept, and the response written within 5 s; at most [`ADMIN_MAX_CONNECTIONS`]
//! connections at once: at the limit the one reading its head the longest is closed for the
//! new one (a probe sends its head at once), and only when every slot is writing a response
//! is the new one answered 503 and closed; one request per connection (`Connection: close`), which Prometheus and probes
//! handle fine and which leaves no idle connection to time out.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{prom, Observability};
use crate::limits::{
    ADMIN_IO_TIMEOUT, ADMIN_LINGER, ADMIN_LINGER_MAX_BYTES, ADMIN_MAX_CONNECTIONS,
    ADMIN_MAX_REQUEST_HEAD_BYTES,
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the admin thread: {0}")]
    Thread(std::io::Error),
}

/// A running admin server; [`stop`](Self::stop) ends it.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks one; see [`local_addr`](Self::local_addr)) and serves on
    /// a thread of its own.
    pub fn start(addr: SocketAddr, obs: Arc<Observability>) -> Result<AdminServer, AdminError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("proglog-admin".into())
            .spawn(move || accept_loop(listener, obs, stop2))
            .map_err(AdminError::Thread)?;
        log::info!("admin HTTP on http://{local} (/metrics, /healthz, /readyz)");
        Ok(AdminServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    #[allow(dead_code)] // the server logs the address; tests ask for it
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the accept thread; requests in progress finish on
    /// their own threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // accept() has no timeout: a connection of our own wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn wake_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(lo, addr.port())
    } else {
        addr
    }
}

/// The connections being served, so that a new one can take the slot of one still reading
/// its head.
#[derive(Default)]
struct Slots {
    open: Mutex<Vec<Open>>,
    next: AtomicU64,
}

struct Open {
    id: u64,
    accepted: Instant,
    /// Still reading its request head (a probe or scraper sends it at once).
    reading: Arc<AtomicBool>,
    /// To close it from here.
    stream: TcpStream,
}

/// A connection's slot, given back when it drops.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    reading: Arc<AtomicBool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            open.retain(|o| o.id != self.id);
        }
    }
}

impl Slots {
    /// A slot for `stream`: a free one, else the one that has been reading its request
    /// head the longest, whose connection is shut down (a client trickling its head a byte
    /// at a time held a slot for ever; 16 of them kept every probe and scrape out). `None`
    /// when every slot is writing a response.
    fn take(self: &Arc<Self>, stream: &TcpStream) -> Option<Slot> {
        let clone = stream.try_clone().ok()?;
        let mut open = self.open.lock().ok()?;
        if open.len() >= ADMIN_MAX_CONNECTIONS {
            let oldest = open
                .iter()
                .enumerate()
                .filter(|(_, o)| o.reading.load(Ordering::SeqCst))
                .min_by_key(|(_, o)| o.accepted)
                .map(|(i, _)| i)?;
            let evicted = open.swap_remove(oldest);
            let _ = evicted.stream.shutdown(Shutdown::Both);
            log::debug!(
                "admin: closing {:?}, still reading its request after {:?}, for a new connection",
                evicted.stream.peer_addr().ok(),
                evicted.accepted.elapsed()
            );
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let reading = Arc::new(AtomicBool::new(true));
        open.push(Open {
            id,
            accepted: Instant::now(),
            reading: reading.clone(),
            stream: clone,
        });
        Some(Slot {
            slots: self.clone(),
            id,
            reading,
        })
    }
}

fn accept_loop(listener: TcpListener, obs: Arc<Observability>, stop: Arc<AtomicBool>) {
    let slots = Arc::new(Slots::default());
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or memory: transient; back off instead of spinning.
                log::warn!("admin: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let deadline = Instant::now() + ADMIN_IO_TIMEOUT;
        let Some(slot) = slots.take(&stream) else {
            let _ = respond(
                &mut stream,
                503,
                "text/plain",
                b"too many admin connections\n",
                false,
                deadline,
            );
            continue;
        };
        let obs = obs.clone();
        let spawned = std::thread::Builder::new()
            .name("proglog-admin-conn".into())
            .spawn(move || serve(stream, &obs, &slot, deadline));
        if let Err(e) = spawned {
            log::warn!("admin: cannot start a connection thread: {e}");
        }
    }
}

/// Sets `stream`'s timeouts to what is left until `deadline`; `false` once it has passed.
fn until(stream: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let _ = stream.set_read_timeout(Some(left));
    let _ = stream.set_write_timeout(Some(left));
    true
}

/// A request line we answer: method and path (query string dropped).
#[derive(Debug, PartialEq, Eq)]
struct RequestLine {
    head_only: bool,
    path: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    Incomplete,
    Done(Result<RequestLine, (u16, &'static str)>),
}

/// Parses a request head once it is complete (ends with an empty line).
fn parse_head(buf: &[u8]) -> Parse {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Tolerate bare-LF clients (netcat, hand-written probes).
        buf.windows(2).position(|w| w == b"\n\n")
    }) else {
        return Parse::Incomplete;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Parse::Done(Err((400, "malformed request line\n")));
    };
    if !version.starts_with("HTTP/1.") {
        return Parse::Done(Err((505, "HTTP/1.x only\n")));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Parse::Done(Err((405, "GET or HEAD only\n"))),
    };
    let path = target.split('?').next().unwrap_or("").to_owned();
    Parse::Done(Ok(RequestLine { head_only, path }))
}

/// The request head, read by `deadline` as a whole (a per-read timeout let a client that
/// sends a byte every few seconds hold its slot for ever).
fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<RequestLine, (u16, &'static str)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        match parse_head(&buf) {
            Parse::Done(r) => return r,
            Parse::Incomplete if buf.len() >= ADMIN_MAX_REQUEST_HEAD_BYTES => {
                return Err((431, "request head too large\n"))
            }
            Parse::Incomplete => {}
        }
        if !until(stream, deadline) {
            return Err((408, "request timed out\n"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err((400, "request ended early\n")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err((408, "request timed out\n")),
        }
    }
}

fn serve(mut stream: TcpStream, obs: &Observability, slot: &Slot, deadline: Instant) {
    let head = read_head(&mut stream, deadline);
    slot.reading.store(false, Ordering::SeqCst);
    // The response has a deadline of its own: a scrape's body is written however long the
    // head took.
    let deadline = Instant::now() + ADMIN_IO_TIMEOUT;
    let req = match head {
        Ok(r) => r,
        Err((code, why)) => {
            let _ = respond(
                &mut stream,
                code,
                "text/plain",
                why.as_bytes(),
                false,
                deadline,
            );
            return;
        }
    };
    let (code, ctype, body): (u16, &str, Vec<u8>) = match req.path.as_str() {
        "/metrics" => (200, prom::CONTENT_TYPE, obs.render().into_bytes()),
        "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        "/readyz" => {
            let (code, body) = match obs.not_ready() {
                None => (200, obs.phase().as_str().to_owned()),
                Some(why) => (503, why),
            };
            (code, "text/plain", format!("{body}\n").into_bytes())
        }
        "/" => (
            200,
            "text/plain",
            b"proglog admin: /metrics /healthz /readyz\n".to_vec(),
        ),
        _ => (404, "text/plain", b"not found\n".to_vec()),
    };
    if let Err(e) = respond(&mut stream, code, ctype, &body, req.head_only, deadline) {
        log::debug!(
            "admin: writing the response to {:?}: {e}",
            stream.peer_addr().ok()
        );
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes the response by `deadline` as a whole, then closes lingering.
fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
    deadline: Instant,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    let mut out: &[u8] = head.as_bytes();
    let mut parts = [out, if head_only { &[][..] } else { body }];
    for part in &mut parts {
        out = part;
        while !out.is_empty() {
            if !until(stream, deadline) {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            match stream.write(out) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => out = &out[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    stream.flush()?;
    // Lingering close: half-close, then read what the client still sends (a rejected
    // request's rest) for a moment, so that closing with unread bytes does not reset the
    // connection before the client has read the response. A moment in all, not per read.
    let _ = stream.shutdown(Shutdown::Write);
    let linger = Instant::now() + ADMIN_LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < ADMIN_LINGER_MAX_BYTES && until(stream, linger) {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Parse::Incomplete
        );
        assert_eq!(
            parse_head(b"GET /readyz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parse::Done(Ok(RequestLine {
                head_only: false,
                path: "/readyz".into()
            }))
        );
        assert!(matches!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Parse::Done(Err((405, _)))
        ));
        assert!(matches!(
            parse_head(b"garbage\r\n\r\n"),
            Parse::Done(Err((400, _)))
        ));
    }

    #[test]
    fn serves_health_readiness_and_metrics() {
        let obs = Arc::new(Observability::new());
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), obs.clone()).unwrap();
        let addr = server.local_addr();
        let r = get(addr, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let r = get(addr, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 503 ") && r.ends_with("starting\n"),
            "{r}"
        );
        obs.set_phase(super::super::Phase::Serving);
        let r = get(addr, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(r.contains("proglog_ready 1\n"), "{r}");
        assert!(r.contains("process_resident_memory_bytes"), "{r}");
        let r = get(addr, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let big = format!("GET /{} HTTP/1.1\r\n", "x".repeat(10_000));
        let r = get(addr, &big);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        server.stop();
    }
}
