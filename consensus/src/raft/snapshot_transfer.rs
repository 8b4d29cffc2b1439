//! Snapshot transfer over the peer channel: a follower behind its leader's retained log
//! downloads the leader's segment files on a connection of its own, so that the Raft
//! connection's heartbeats and appends never wait behind a transfer.
//!
//! The Raft message (`MsgSnapshot`) carries only metadata: the snapshot's index, term and
//! configuration, and the partition's offset mapping ([`SnapshotData`]: first retained index
//! and offset, the snapshot's index, the offset after it). The follower's Ready loop turns it
//! into a [`SnapshotJob`]; the driver runs [`download`] beside the loop:
//!
//! 1. connect to the leader's peer channel (`0x01`, mutual TLS when configured) and send
//!    `SNAP_REQUEST` (group, snapshot index and term, first index, where to resume);
//! 2. the leader answers `SNAP_MANIFEST` (each data file's base offset and length), then
//!    `SNAP_CHUNK`s of at most [`CHUNK_BYTES`] (file, position, CRC32C, bytes) read from the
//!    files one at a time, then `SNAP_END`; TCP's flow control paces it, and each side holds
//!    one chunk in memory;
//! 3. each chunk is checked (its CRC, its place) and written into `<partition>.install`; a
//!    connection lost midway is resumed where the written bytes end (up to
//!    [`RESUME_ATTEMPTS`] times), a malformed frame or a bad CRC ends the transfer;
//! 4. the files are verified as a log (every batch's CRC, offsets and indexes continuous,
//!    ending at the snapshot's point, indexes rebuilt: `engine::log::Staging::verify`), the
//!    message is stepped into raft-rs, and the Ready that follows swaps the directory in
//!    atomically;
//! 5. the follower sends `SNAP_STATUS` (installed or not) and closes; the leader's session
//!    reports it to raft-rs (`report_snapshot`), `Failure` when the connection ends without it;
//!    that report reaches the group's shard even when its queue is full (`deliver_report`).
//!
//! The leader serves at most [`MAX_SERVING`] transfers at once (others get `SNAP_ERROR`), one
//! per group (raft-rs's `snapshot()` answers `SnapshotTemporarilyUnavailable` meanwhile). A
//! malformed or oversized frame from either side closes the connection and is counted. Frame
//! layouts: `docs/format.md`, "Snapshot transfer".

use super::group::{SnapshotJob, SnapshotProgress};
use super::logger::GroupName;
use super::storage::SnapshotData;
use super::transport::{Peers, RaftPeerHandler};
use engine::log::{SnapshotFile, Staging};
use engine::LogConfig;
use futures_channel::oneshot;
use net::peer::{self, PeerConn, PeerIo};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Follower -> leader: "send me this snapshot's files, from here".
pub const SNAP_REQUEST: u8 = 0x30;
/// Leader -> follower: the data files (base offset, length).
pub const SNAP_MANIFEST: u8 = 0x31;
/// Leader -> follower: bytes of one file.
pub const SNAP_CHUNK: u8 = 0x32;
/// Leader -> follower: every file sent.
pub const SNAP_END: u8 = 0x33;
/// Either way: why the transfer cannot go on (UTF-8).
pub const SNAP_ERROR: u8 = 0x34;
/// Follower -> leader: installed (0) or not (1, then why in UTF-8).
pub const SNAP_STATUS: u8 = 0x35;

/// Bytes of file data per chunk.
pub const CHUNK_BYTES: usize = 256 << 10;
/// The largest snapshot frame read (kind + payload): a chunk and its 16-byte head.
pub const MAX_FRAME_BYTES: usize = CHUNK_BYTES + 1 + CHUNK_HEAD;
/// Transfers a node serves at once.
pub const MAX_SERVING: usize = 4;
/// Reconnections of one download after a lost connection.
pub const RESUME_ATTEMPTS: u32 = 5;
/// Files a manifest may list.
const MAX_FILES: usize = 1 << 16;
const CHUNK_HEAD: usize = 4 + 8 + 4;
const REQUEST_LEN: usize = 7 * 8 + 4;
/// Longest wait for the next frame of a transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, once every file is sent, for the follower to say how its install went.
const STATUS_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of a node's snapshot transfers (all shards), for metrics and tests.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Transfers served to the end and reported installed by the follower.
    pub sent: AtomicU64,
    /// Transfers served that ended otherwise (error, lost connection, install failed).
    pub send_failures: AtomicU64,
    /// Downloads completed and verified.
    pub received: AtomicU64,
    /// Downloads that failed (connection, malformed frame, bad CRC, verification).
    pub receive_failures: AtomicU64,
    /// Snapshots swapped in.
    pub installed: AtomicU64,
    /// Verified snapshots whose install failed or that raft-rs did not take.
    pub install_failures: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Downloads resumed on a new connection.
    pub resumed: AtomicU64,
    /// Connections closed for a malformed or oversized snapshot frame.
    pub malformed: AtomicU64,
    /// Requests turned away: too many transfers, unknown group, not a known member.
    pub refused: AtomicU64,
}

impl SnapshotStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Every counter: its name (in `proglog_raft_snapshot_<name>_total`), what it counts,
    /// its value.
    pub fn rows(&self) -> [(&'static str, &'static str, u64); 11] {
        let g = Self::get;
        [
            (
                "sent",
                "Snapshots served and reported installed by the follower.",
                g(&self.sent),
            ),
            (
                "send_failures",
                "Snapshot transfers served that failed.",
                g(&self.send_failures),
            ),
            (
                "received",
                "Snapshots downloaded and verified.",
                g(&self.received),
            ),
            (
                "receive_failures",
                "Snapshot downloads that failed.",
                g(&self.receive_failures),
            ),
            ("installed", "Snapshots installed.", g(&self.installed)),
            (
                "install_failures",
                "Verified snapshots not installed.",
                g(&self.install_failures),
            ),
            (
                "bytes_sent",
                "Snapshot file bytes sent.",
                g(&self.bytes_sent),
            ),
            (
                "bytes_received",
                "Snapshot file bytes received.",
                g(&self.bytes_received),
            ),
            (
                "resumed",
                "Snapshot downloads resumed on a new connection.",
                g(&self.resumed),
            ),
            (
                "malformed",
                "Snapshot connections closed for a malformed frame.",
                g(&self.malformed),
            ),
            ("refused", "Snapshot requests refused.", g(&self.refused)),
        ]
    }
}

/// What every shard of a node shares for snapshot transfers.
#[derive(Debug, Default)]
pub struct SnapshotShared {
    pub stats: SnapshotStats,
    serving: AtomicUsize,
    /// Bytes per second each transfer this node serves may send (0: no limit).
    rate: AtomicU64,
}

impl SnapshotShared {
    /// Limits each transfer this node serves to `bytes_per_sec` (0: no limit), so that a
    /// snapshot does not take the whole disk or network from the partitions' own traffic
    /// (Kafka's replication throttle): the server's `--snapshot-rate-limit`.
    pub fn set_rate_limit(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The limit [`set_rate_limit`](Self::set_rate_limit) set (0: none).
    pub fn rate_limit(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }
}

/// Shard message: the data files of group `group` for a snapshot of `[first_index,
/// last_index]`, from the shard that owns its log.
pub struct FilesRequest {
    pub group: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub reply: oneshot::Sender<Result<Vec<SnapshotFile>, String>>,
}

/// Shard message: how the transfer of a snapshot of `group` to node `to` is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressReport {
    pub group: u64,
    pub to: u64,
    /// The snapshot's point (the index in the follower's SNAP_REQUEST).
    pub index: u64,
    pub progress: SnapshotProgress,
}

/// A `SNAP_REQUEST` (60 bytes, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub from: u64,
    pub to: u64,
    pub group: u64,
    pub index: u64,
    pub term: u64,
    pub first_index: u64,
    /// Resume at byte `pos` of file number `file`.
    pub pos: u64,
    pub file: u32,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_LEN);
        for x in [
            self.from,
            self.to,
            self.group,
            self.index,
            self.term,
            self.first_index,
            self.pos,
        ] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&self.file.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<Request, String> {
        if b.len() != REQUEST_LEN {
            return Err(format!("snapshot request of {} bytes", b.len()));
        }
        let w = |i: usize| u64::from_le_bytes(word(&b[8 * i..8 * i + 8]));
        Ok(Request {
            from: w(0),
            to: w(1),
            group: w(2),
            index: w(3),
            term: w(4),
            first_index: w(5),
            pos: w(6),
            file: u32::from_le_bytes(half(&b[56..60])),
        })
    }
}

fn word(b: &[u8]) -> [u8; 8] {
    let mut x = [0u8; 8];
    x.copy_from_slice(b);
    x
}

fn half(b: &[u8]) -> [u8; 4] {
    let mut x = [0u8; 4];
    x.copy_from_slice(b);
    x
}

/// A manifest: u32 count, then per file u64 base offset, u64 length.
pub fn encode_manifest(files: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 16 * files.len());
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (base, len) in files {
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

pub fn decode_manifest(b: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    if b.len() < 4 {
        return Err("manifest shorter than its count".into());
    }
    let n = u32::from_le_bytes(half(&b[..4])) as usize;
    if n > MAX_FILES || b.len() != 4 + 16 * n {
        return Err(format!("manifest of {} bytes for {n} files", b.len()));
    }
    let files: Vec<(u64, u64)> = (0..n)
        .map(|i| {
            let at = 4 + 16 * i;
            (
                u64::from_le_bytes(word(&b[at..at + 8])),
                u64::from_le_bytes(word(&b[at + 8..at + 16])),
            )
        })
        .collect();
    for w in files.windows(2) {
        if w[1].0 <= w[0].0 {
            return Err("manifest files out of order".into());
        }
    }
    if files.iter().any(|&(_, len)| len == 0) {
        return Err("manifest lists an empty file".into());
    }
    // No segment is larger: the download would write whatever length it was told.
    if let Some(&(base, len)) = files
        .iter()
        .find(|&&(_, len)| len > engine::limits::MAX_SEGMENT_BYTES)
    {
        return Err(format!(
            "manifest lists file {base} of {len} bytes, larger than a segment can be ({} bytes)",
            engine::limits::MAX_SEGMENT_BYTES
        ));
    }
    Ok(files)
}

/// A chunk: u32 file, u64 position, u32 CRC32C of the data, the data.
pub fn encode_chunk(file: u32, pos: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEAD + data.len());
    out.extend_from_slice(&file.to_le_bytes());
    out.extend_from_slice(&pos.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The chunk's file, position and data, its CRC checked.
pub fn decode_chunk(b: &[u8]) -> Result<(u32, u64, &[u8]), String> {
    if b.len() <= CHUNK_HEAD || b.len() > CHUNK_HEAD + CHUNK_BYTES {
        return Err(format!("chunk of {} bytes", b.len()));
    }
    let file = u32::from_le_bytes(half(&b[..4]));
    let pos = u64::from_le_bytes(word(&b[4..12]));
    let crc = u32::from_le_bytes(half(&b[12..16]));
    let data = &b[CHUNK_HEAD..];
    if crc32c::crc32c(data) != crc {
        return Err(format!("chunk of file {file} at {pos}: CRC mismatch"));
    }
    Ok((file, pos, data))
}

/// Reads one snapshot frame within [`FRAME_TIMEOUT`]: `Err(true)` for a malformed or
/// oversized frame, `Err(false)` for a lost connection.
async fn read_frame(io: &mut Box<dyn PeerIo>) -> Result<(u8, Vec<u8>), (bool, String)> {
    let r = glommio::timer::timeout(FRAME_TIMEOUT, async {
        Ok(peer::read_frame(io, MAX_FRAME_BYTES).await)
    })
    .await;
    match r {
        Ok(Ok(Some(f))) => Ok((f.kind, f.payload)),
        Ok(Ok(None)) => Err((false, "connection closed".into())),
        Ok(Err(peer::FrameError::Io(e))) => Err((false, e.to_string())),
        Ok(Err(e @ peer::FrameError::Truncated)) => Err((false, e.to_string())),
        Ok(Err(e)) => Err((true, e.to_string())),
        Err(_) => Err((false, "no frame in time".into())),
    }
}

/// Serves one snapshot transfer (the leader's side) on a connection whose first frame header
/// (`SNAP_REQUEST`, `len` bytes with the kind) the caller read.
pub async fn serve(h: &RaftPeerHandler, mut conn: PeerConn, len: usize) {
    let shared = Arc::clone(&h.peers.snapshots);
    let stats = &shared.stats;
    if conn.tls.is_none() && !conn.peer.is_some_and(|a| h.peers.knows_ip(a.ip())) {
        add(stats, &stats.refused);
        net::conn_log!(
            log::Level::Warn,
            "snapshot-refused",
            "snapshot transfer: connection from {:?} refused: no peer TLS, and not a known \
             member's address",
            conn.peer
        );
        return;
    }
    let req = if len != REQUEST_LEN + 1 {
        Err(format!("snapshot request frame of {len} bytes"))
    } else {
        match peer::read_payload(&mut conn.stream, len).await {
            Ok(p) => Request::decode(&p),
            Err(e) => Err(e.to_string()),
        }
    };
    // A joining node learns its Raft id late.
    let me = match h.node_id {
        0 => h.peers.self_id.load(Ordering::Relaxed),
        id => id,
    };
    let req = match req {
        Ok(r) if r.to == me => r,
        Ok(r) => {
            add(stats, &stats.malformed);
            log::warn!(
                "snapshot transfer: request from {:?} for node {}, this is node {}; closing",
                conn.peer,
                r.to,
                me
            );
            return;
        }
        Err(why) => {
            add(stats, &stats.malformed);
            net::conn_log!(
                log::Level::Warn,
                "snapshot-malformed",
                "snapshot transfer: closing connection from {:?}: {why}",
                conn.peer
            );
            return;
        }
    };
    let Some(shard) = h.peers.directory.shard_of(req.group) else {
        add(stats, &stats.refused);
        refuse(&mut conn.stream, "this node holds no such group").await;
        return;
    };
    if shared.serving.fetch_add(1, Ordering::AcqRel) >= MAX_SERVING {
        shared.serving.fetch_sub(1, Ordering::AcqRel);
        add(stats, &stats.refused);
        refuse(&mut conn.stream, "too many snapshot transfers at once").await;
        report(h, shard, &req, SnapshotProgress::Failed).await;
        return;
    }
    report(h, shard, &req, SnapshotProgress::Started).await;
    let outcome = serve_files(h, shard, &req, &mut conn.stream).await;
    shared.serving.fetch_sub(1, Ordering::AcqRel);
    let progress = match outcome {
        Ok(()) => {
            add(stats, &stats.sent);
            log::info!(
                "{}: snapshot at {} installed by node {}",
                GroupName(req.group),
                req.index,
                req.from
            );
            SnapshotProgress::Finished
        }
        Err((malformed, why)) => {
            if malformed {
                add(stats, &stats.malformed);
            }
            add(stats, &stats.send_failures);
            log::warn!(
                "{}: snapshot at {} to node {} failed: {why}",
                GroupName(req.group),
                req.index,
                req.from
            );
            SnapshotProgress::Failed
        }
    };
    report(h, shard, &req, progress).await;
}

fn add(_: &SnapshotStats, c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Tells the group's shard how the transfer goes (see [`deliver_report`]).
async fn report(h: &RaftPeerHandler, shard: usize, req: &Request, progress: SnapshotProgress) {
    let r = ProgressReport {
        group: req.group,
        to: req.from,
        index: req.index,
        progress,
    };
    deliver_report(|r| h.engine.deliver(shard, Box::new(r)), r, shard).await;
}

/// First wait before a final report refused by a full shard queue is offered again.
const REPORT_RETRY_FIRST: Duration = Duration::from_millis(1);
/// Longest wait between two offers of a final report.
const REPORT_RETRY_MAX: Duration = Duration::from_millis(100);

/// Hands `r` to the group's shard through `deliver` (`EngineHandle::deliver`, whose bounded
/// queue refuses a message with `Overloaded` when full). `Started` is offered once: lost,
/// the group's 300-tick timer is still armed and counts the snapshot failed. The end of a
/// transfer (`Finished`, `Failed`) is the only news the group gets once `Started` switched
/// that timer off, and without it the group would wait for it forever (no more snapshots
/// sent, the follower held in raft-rs's `Snapshot` state): it is offered again, after 1 ms
/// doubling to 100 ms, until the shard takes it or the engine stops. The transfer's own task
/// holds it meanwhile: one report per transfer, nothing queued anywhere else. True when
/// delivered.
async fn deliver_report<F>(mut deliver: F, r: ProgressReport, shard: usize) -> bool
where
    F: FnMut(ProgressReport) -> engine::Result<()>,
{
    let mut wait = REPORT_RETRY_FIRST;
    let mut refused = 0u32;
    loop {
        match deliver(r) {
            Ok(()) => {
                if refused > 0 {
                    log::info!(
                        "{}: the snapshot report for node {} reached shard {shard} after \
                         {refused} refusals",
                        GroupName(r.group),
                        r.to
                    );
                }
                return true;
            }
            Err(engine::Error::Overloaded { .. }) if r.progress != SnapshotProgress::Started => {
                if refused == 0 {
                    log::warn!(
                        "{}: shard {shard} is full; offering the snapshot report for \
                         node {} ({:?}) again until it is taken",
                        GroupName(r.group),
                        r.to,
                        r.progress
                    );
                }
                refused = refused.saturating_add(1);
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(REPORT_RETRY_MAX);
            }
            Err(e) => {
                log::warn!(
                    "{}: the snapshot report for node {} ({:?}) could not reach shard \
                     {shard}: {e}",
                    GroupName(r.group),
                    r.to,
                    r.progress
                );
                return false;
            }
        }
    }
}

async fn refuse(io: &mut Box<dyn PeerIo>, why: &str) {
    let _ = write(io, SNAP_ERROR, why.as_bytes()).await;
}

/// Writes one frame within [`FRAME_TIMEOUT`]: a peer that stops reading ends the transfer
/// instead of holding it (and its file handles) forever.
async fn write(io: &mut Box<dyn PeerIo>, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    glommio::timer::timeout(FRAME_TIMEOUT, async {
        Ok(peer::write_frame(io, kind, payload).await)
    })
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer read nothing in time",
        ))
    })
}

/// The manifest and the chunks from where the request resumes, then the follower's status.
async fn serve_files(
    h: &RaftPeerHandler,
    shard: usize,
    req: &Request,
    io: &mut Box<dyn PeerIo>,
) -> Result<(), (bool, String)> {
    let lost = |e: std::io::Error| (false, e.to_string());
    let (tx, rx) = oneshot::channel();
    let ask = FilesRequest {
        group: req.group,
        first_index: req.first_index,
        last_index: req.index,
        reply: tx,
    };
    if h.engine.deliver(shard, Box::new(ask)).is_err() {
        refuse(io, "the group's shard is busy").await;
        return Err((false, "the group's shard is busy".into()));
    }
    let files = match rx.await {
        Ok(Ok(f)) => Arc::new(f),
        Ok(Err(why)) => {
            refuse(io, &why).await;
            return Err((false, why));
        }
        Err(_) => {
            refuse(io, "the group closed").await;
            return Err((false, "the group closed".into()));
        }
    };
    let decl: Vec<(u64, u64)> = files.iter().map(|f| (f.base, f.len)).collect();
    write(io, SNAP_MANIFEST, &encode_manifest(&decl))
        .await
        .map_err(lost)?;
    let stats = &h.peers.snapshots.stats;
    let started = std::time::Instant::now();
    let mut session_bytes = 0u64;
    let first = req.file as usize;
    if first > decl.len() || (first < decl.len() && req.pos > decl[first].1) {
        return Err((true, format!("resume at file {first} byte {}", req.pos)));
    }
    for i in first..decl.len() {
        let mut pos = if i == first { req.pos } else { 0 };
        let len = decl[i].1;
        while pos < len {
            let n = (len - pos).min(CHUNK_BYTES as u64) as usize;
            let files = Arc::clone(&files);
            let read = glommio::executor()
                .spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    files[i].file.read_exact_at(&mut buf, pos).map(|()| buf)
                })
                .await;
            let buf = read.map_err(|e| (false, format!("reading file {i}: {e}")))?;
            write(io, SNAP_CHUNK, &encode_chunk(i as u32, pos, &buf))
                .await
                .map_err(lost)?;
            stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            pos += n as u64;
            session_bytes += n as u64;
            let rate = h.peers.snapshots.rate.load(Ordering::Relaxed);
            if rate > 0 {
                let due = Duration::from_secs_f64(session_bytes as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    glommio::timer::sleep(wait).await;
                }
            }
        }
    }
    write(io, SNAP_END, &[]).await.map_err(lost)?;
    let status = glommio::timer::timeout(STATUS_TIMEOUT, async {
        Ok(peer::read_frame(io, 4096).await)
    })
    .await;
    match status {
        Ok(Ok(Some(f))) if f.kind == SNAP_STATUS && f.payload.first() == Some(&0) => Ok(()),
        Ok(Ok(Some(f))) if f.kind == SNAP_STATUS && !f.payload.is_empty() => Err((
            false,
            format!(
                "not installed: {}",
                String::from_utf8_lossy(&f.payload[1..])
            ),
        )),
        Ok(Ok(Some(f))) => Err((
            true,
            format!("a frame of kind {:#04x} for a status", f.kind),
        )),
        Ok(Ok(None)) => Err((false, "closed without a status".into())),
        Ok(Err(e)) => Err((!matches!(e, peer::FrameError::Io(_)), e.to_string())),
        Err(_) => Err((false, "no status in time".into())),
    }
}

/// What a finished download leaves for the status: the connection to answer on.
pub struct Downloaded {
    conn: Option<Box<dyn PeerIo>>,
    shared: Arc<SnapshotShared>,
}

/// Downloads the files of `job`'s snapshot from its sender into `<log_dir>.install` and
/// verifies them (the follower's side; see the module doc). The returned [`Downloaded`]
/// sends the install's outcome to the sender ([`Downloaded::finish`]).
pub async fn download(
    peers: &Peers,
    node_id: u64,
    job: &SnapshotJob,
    log_dir: &Path,
    config: &LogConfig,
) -> (Result<Staging, String>, Downloaded) {
    let shared = Arc::clone(&peers.snapshots);
    let mut done = Downloaded {
        conn: None,
        shared: Arc::clone(&shared),
    };
    let r = download_inner(peers, node_id, job, log_dir, config, &mut done).await;
    let stats = &shared.stats;
    match &r {
        Ok(_) => {
            add(stats, &stats.received);
            log::info!(
                "{}: snapshot at {} downloaded from node {} and verified",
                GroupName(job.group),
                job.index,
                job.from
            );
        }
        Err((malformed, why)) => {
            if *malformed {
                add(stats, &stats.malformed);
            }
            add(stats, &stats.receive_failures);
            log::warn!(
                "{}: snapshot at {} from node {} failed: {why}",
                GroupName(job.group),
                job.index,
                job.from
            );
            if let Some(io) = done.conn.as_mut() {
                let mut status = vec![1u8];
                status.extend_from_slice(why.as_bytes());
                let _ = write(io, SNAP_STATUS, &status).await;
            }
            done.conn = None;
        }
    }
    (r.map_err(|(_, why)| why), done)
}

impl Downloaded {
    /// Tells the sender how the install went, and closes the connection.
    pub async fn finish(mut self, outcome: Result<u64, String>) {
        let stats = &self.shared.stats;
        let mut status = Vec::new();
        match &outcome {
            Ok(_) => {
                add(stats, &stats.installed);
                status.push(0);
            }
            Err(why) => {
                add(stats, &stats.install_failures);
                status.push(1);
                status.extend_from_slice(why.as_bytes());
            }
        }
        if let Some(io) = self.conn.as_mut() {
            let _ = write(io, SNAP_STATUS, &status).await;
        }
    }
}

async fn download_inner(
    peers: &Peers,
    node_id: u64,
    job: &SnapshotJob,
    log_dir: &Path,
    config: &LogConfig,
    done: &mut Downloaded,
) -> Result<Staging, (bool, String)> {
    let stats = &peers.snapshots.stats;
    let data: SnapshotData = job.data;
    let mut staging: Option<Staging> = None;
    // Where the written bytes end: file number, byte in it.
    let (mut file, mut pos) = (0usize, 0u64);
    let mut writer: Option<Arc<std::fs::File>> = None;
    let mut attempts = 0u32;
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        if attempts > 0 {
            if attempts > RESUME_ATTEMPTS {
                return Err((false, "the connection was lost too many times".into()));
            }
            add(stats, &stats.resumed);
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        attempts += 1;
        let at = peers
            .addr_of(job.from)
            .ok_or_else(|| (false, format!("no address for node {}", job.from)))?;
        let mut io = match peer::connect(
            at.addr,
            peers.tls.as_ref(),
            &at.server_name,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(io) => io,
            Err(e) => {
                log::info!("snapshot transfer: node {}: {e}", job.from);
                continue 'connect;
            }
        };
        let req = Request {
            from: node_id,
            to: job.from,
            group: job.group,
            index: job.index,
            term: job.term,
            first_index: data.first_index,
            pos,
            file: file as u32,
        };
        if write(&mut io, SNAP_REQUEST, &req.encode()).await.is_err() {
            continue 'connect;
        }
        loop {
            let (kind, payload) = match read_frame(&mut io).await {
                Ok(f) => f,
                Err((true, why)) => return Err((true, why)),
                Err((false, why)) => {
                    log::info!(
                        "{}: snapshot transfer from node {} interrupted ({why}); resuming",
                        GroupName(job.group),
                        job.from
                    );
                    continue 'connect;
                }
            };
            match kind {
                SNAP_MANIFEST => {
                    let files = decode_manifest(&payload).map_err(|w| (true, w))?;
                    match &mut staging {
                        Some(s) if s.files() == files.as_slice() => {}
                        Some(_) => return Err((false, "the sender's files changed".into())),
                        None => {
                            let mut s =
                                Staging::create(log_dir).map_err(|e| (false, e.to_string()))?;
                            s.set_files(&files).map_err(|e| (false, e.to_string()))?;
                            staging = Some(s);
                        }
                    }
                }
                SNAP_CHUNK => {
                    let s = staging
                        .as_ref()
                        .ok_or_else(|| (true, "a chunk before the manifest".to_string()))?;
                    let (f, p, bytes) = decode_chunk(&payload).map_err(|w| (true, w))?;
                    let files = s.files();
                    if f as usize != file || p != pos || file >= files.len() {
                        return Err((
                            true,
                            format!("chunk of file {f} at {p}: {file}/{pos} expected"),
                        ));
                    }
                    if p + bytes.len() as u64 > files[file].1 {
                        return Err((true, format!("chunk of file {f} at {p} runs past its end")));
                    }
                    if writer.is_none() {
                        writer = Some(Arc::new(
                            s.open_file(file).map_err(|e| (false, e.to_string()))?,
                        ));
                    }
                    let w = writer
                        .clone()
                        .ok_or_else(|| (false, "no file".to_string()))?;
                    let buf = bytes.to_vec();
                    let n = buf.len() as u64;
                    glommio::executor()
                        .spawn_blocking(move || {
                            use std::os::unix::fs::FileExt;
                            w.write_all_at(&buf, p)
                        })
                        .await
                        .map_err(|e| (false, format!("writing the snapshot: {e}")))?;
                    add_bytes(&stats.bytes_received, n);
                    pos += n;
                    if pos == files[file].1 {
                        file += 1;
                        pos = 0;
                        writer = None;
                    }
                }
                SNAP_END => {
                    let s = staging
                        .as_mut()
                        .ok_or_else(|| (true, "the end before the manifest".to_string()))?;
                    if file != s.files().len() {
                        return Err((
                            true,
                            format!("the end after {file} of {} files", s.files().len()),
                        ));
                    }
                    // The sender hears how verification and install went on this connection.
                    done.conn = Some(io);
                    s.verify(
                        data.first_index,
                        data.first_offset,
                        data.last_index,
                        data.next_offset,
                        config,
                    )
                    .await
                    .map_err(|e| (false, e.to_string()))?;
                    return staging.ok_or_else(|| (false, "no staging".to_string()));
                }
                SNAP_ERROR => {
                    return Err((
                        false,
                        format!(
                            "node {} refused: {}",
                            job.from,
                            String::from_utf8_lossy(&payload)
                        ),
                    ))
                }
                k => {
                    return Err((
                        true,
                        format!("a frame of kind {k:#04x} in a snapshot transfer"),
                    ))
                }
            }
        }
    }
}

fn add_bytes(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let r = Request {
            from: 3,
            to: 1,
            group: 77,
            index: 120,
            term: 4,
            first_index: 90,
            pos: 4096,
            file: 2,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let files = vec![(0, 65_000), (1000, 12)];
        assert_eq!(decode_manifest(&encode_manifest(&files)), Ok(files));
        let c = encode_chunk(1, 8, b"bytes");
        assert_eq!(decode_chunk(&c), Ok((1, 8, &b"bytes"[..])));
    }

    const FULL: engine::Error = engine::Error::Overloaded {
        shard: 1,
        depth: 4096,
    };

    /// Offers `r` to a shard queue that answers with `answers` in turn (`FULL` as under
    /// load), then takes it: what the shard took, how many offers were made, the result.
    fn offer(r: ProgressReport, answers: Vec<engine::Error>) -> (Vec<ProgressReport>, usize, bool) {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor");
        ex.run(async move {
            let mut answers = answers.into_iter();
            let (mut taken, mut offers) = (Vec::new(), 0usize);
            let ok = deliver_report(
                |r| {
                    offers += 1;
                    match answers.next() {
                        Some(e) => Err(e),
                        None => {
                            taken.push(r);
                            Ok(())
                        }
                    }
                },
                r,
                1,
            )
            .await;
            (taken, offers, ok)
        })
    }

    #[test]
    fn the_end_of_a_transfer_reaches_a_full_shard() {
        for progress in [SnapshotProgress::Finished, SnapshotProgress::Failed] {
            let r = ProgressReport {
                group: 7,
                to: 3,
                index: 40,
                progress,
            };
            // Refused 8 times (0.23 s of backoff), taken on the 9th offer, once.
            let (taken, offers, ok) = offer(r, vec![FULL; 8]);
            assert!(ok, "{progress:?} not delivered");
            assert_eq!(
                taken,
                vec![r],
                "{progress:?} reaches the shard exactly once"
            );
            assert_eq!(offers, 9);
            // A stopping engine ends the offers: nobody is left to hear it.
            let (taken, offers, ok) = offer(r, vec![FULL, FULL, engine::Error::ShutDown]);
            assert!(!ok && taken.is_empty());
            assert_eq!(offers, 3);
        }
        // `Started` is offered once: lost, the group's timer is still armed.
        let started = ProgressReport {
            group: 7,
            to: 3,
            index: 40,
            progress: SnapshotProgress::Started,
        };
        let (taken, offers, ok) = offer(started, vec![FULL]);
        assert!(!ok && taken.is_empty());
        assert_eq!(offers, 1);
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(Request::decode(&[0u8; 59]).is_err());
        assert!(decode_manifest(&[]).is_err());
        // A count larger than the frame.
        assert!(decode_manifest(&7u32.to_le_bytes()).is_err());
        // Files out of order, or empty.
        assert!(decode_manifest(&encode_manifest(&[(5, 1), (5, 1)])).is_err());
        assert!(decode_manifest(&encode_manifest(&[(0, 0)])).is_err());
        let huge = decode_manifest(&encode_manifest(&[(0, 10), (10, (1 << 31) + 1)]));
        assert!(huge.is_err_and(|e| e.contains("larger than a segment")));
        assert!(decode_manifest(&encode_manifest(&[(0, 1 << 31)])).is_ok());
        let mut c = encode_chunk(0, 0, b"payload");
        let last = c.len() - 1;
        c[last] ^= 1;
        assert!(decode_chunk(&c).is_err(), "a flipped bit fails the CRC");
        assert!(decode_chunk(&c[..CHUNK_HEAD]).is_err(), "no data");
        let big = vec![0u8; CHUNK_HEAD + CHUNK_BYTES + 1];
        assert!(decode_chunk(&big).is_err(), "oversized");
    }
}
