//! The follower's side of a snapshot transfer against a scripted leader on a real socket: a
//! connection lost in the middle is resumed where the written bytes end (the second request
//! names that file and byte) and the download verifies; a chunk whose CRC does not match, or
//! a frame of a kind out of place, ends the transfer, is counted and closes the connection.
//! The scripted leader serves real segment files of an engine log.

use bytes::Bytes;
use consensus::raft::snapshot_transfer::{
    download, encode_chunk, encode_manifest, Request, SnapshotStats, SNAP_CHUNK, SNAP_END,
    SNAP_MANIFEST, SNAP_REQUEST, SNAP_STATUS,
};
use consensus::raft::transport::{PeerAddr, Peers};
use consensus::raft::{SnapshotData, SnapshotJob};
use engine::batch::{self, Kind, NewRecord, Stamp};
use engine::{FileBudget, Log, LogConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

const CHUNK: usize = 256 << 10;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        max_record_bytes: 16 * 1024,
        max_batch_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// A source log of `n` entries of four 8 KiB records each; its snapshot files (base, bytes)
/// for `[1, n]` and descriptor.
async fn source(dir: &Path, n: u64) -> (Vec<(u64, Vec<u8>)>, SnapshotData) {
    let log: Rc<Log> = Log::open(dir, config(), FileBudget::new(8))
        .await
        .expect("open");
    for i in 0..n {
        let stamp = Stamp {
            kind: Kind::Data,
            base_offset: log.next_offset(),
            term: 1,
            raft_index: log.next_index(),
            commit_index: log.next_index().saturating_sub(1),
            timestamp_ms: i as i64,
        };
        let records: Vec<NewRecord> = (0..4)
            .map(|k| NewRecord::new(Bytes::from(vec![(i * 4 + k) as u8; 8192])))
            .collect();
        let mut b = Vec::new();
        batch::encode_into(&mut b, &stamp, &records);
        log.append_buffered(&b).await.expect("append");
    }
    log.sync().await.expect("sync");
    let files = log.snapshot_files(1, n).await.expect("files");
    let out = files
        .iter()
        .map(|f| {
            let mut buf = vec![0u8; f.len as usize];
            f.file.read_exact_at(&mut buf, 0).expect("read");
            (f.base, buf)
        })
        .collect();
    let data = SnapshotData {
        first_index: 1,
        first_offset: 0,
        last_index: n,
        next_offset: log.next_offset(),
    };
    log.close().await.expect("close");
    (out, data)
}

fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut body = vec![0u8; len - 1];
    s.read_exact(&mut body).ok()?;
    Some((head[4], body))
}

fn write_frame(s: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    f.push(kind);
    f.extend_from_slice(payload);
    s.write_all(&f)
}

/// Accepts a connection and reads its mark and request.
fn accept(l: &TcpListener) -> (TcpStream, Request) {
    let (mut s, _) = l.accept().expect("accept");
    let mut mark = [0u8; 1];
    s.read_exact(&mut mark).expect("mark");
    assert_eq!(mark[0], 0x01);
    let (kind, body) = read_frame(&mut s).expect("request");
    assert_eq!(kind, SNAP_REQUEST);
    (s, Request::decode(&body).expect("decodes"))
}

/// Every chunk of `files` from file `file`, byte `pos`.
fn chunks(files: &[(u64, Vec<u8>)], file: usize, pos: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, (_, bytes)) in files.iter().enumerate().skip(file) {
        let mut at = if i == file { pos as usize } else { 0 };
        while at < bytes.len() {
            let end = (at + CHUNK).min(bytes.len());
            out.push(encode_chunk(i as u32, at as u64, &bytes[at..end]));
            at = end;
        }
    }
    out
}

fn job(data: SnapshotData) -> SnapshotJob {
    SnapshotJob {
        group: 9,
        from: 1,
        index: data.last_index,
        term: 1,
        data,
        message: raft::eraftpb::Message::default(),
    }
}

fn peers(addr: std::net::SocketAddr) -> Peers {
    let p = Peers::default();
    p.book.write().expect("book").insert(
        1,
        PeerAddr {
            addr,
            server_name: "127.0.0.1".into(),
        },
    );
    p
}

fn get(p: &Peers, f: impl Fn(&SnapshotStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    SnapshotStats::get(f(&p.snapshots.stats))
}

#[test]
fn a_lost_connection_is_resumed_where_the_written_bytes_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(tmp.path(), move || async move {
        let (files, data) = source(&root.join("src"), 40).await;
        assert!(files.len() >= 2, "several segment files");
        let total: usize = files.iter().map(|(_, b)| b.len()).sum();
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let served = files.clone();
        let leader = std::thread::spawn(move || {
            let decl: Vec<(u64, u64)> = served.iter().map(|(b, v)| (*b, v.len() as u64)).collect();
            // First connection: the manifest and three chunks, then it drops.
            let (mut s, r) = accept(&l);
            assert_eq!((r.file, r.pos, r.group, r.index), (0, 0, 9, 40));
            write_frame(&mut s, SNAP_MANIFEST, &encode_manifest(&decl)).expect("manifest");
            let all = chunks(&served, 0, 0);
            for c in &all[..3] {
                write_frame(&mut s, SNAP_CHUNK, c).expect("chunk");
            }
            drop(s);
            // Second: it resumes after the third chunk.
            let (mut s, r) = accept(&l);
            // Where the three chunks ended.
            let (mut file, mut pos) = (0usize, 0u64);
            for c in &all[..3] {
                let f = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
                let at = u64::from_le_bytes(c[4..12].try_into().expect("pos"));
                (file, pos) = (f, at + (c.len() - 16) as u64);
            }
            if pos == decl[file].1 {
                (file, pos) = (file + 1, 0);
            }
            assert_eq!(
                (r.file as usize, r.pos),
                (file, pos),
                "resumes where it stopped"
            );
            write_frame(&mut s, SNAP_MANIFEST, &encode_manifest(&decl)).expect("manifest");
            for c in chunks(&served, file, pos) {
                write_frame(&mut s, SNAP_CHUNK, &c).expect("chunk");
            }
            write_frame(&mut s, SNAP_END, &[]).expect("end");
            let (kind, body) = read_frame(&mut s).expect("status");
            (kind, body)
        });
        let p = peers(addr);
        let dir = root.join("dst");
        let (staged, done) = download(&p, 3, &job(data), &dir, &config()).await;
        let staged = staged.expect("downloaded and verified");
        assert_eq!(get(&p, |s| &s.resumed), 1);
        assert_eq!(get(&p, |s| &s.received), 1);
        assert_eq!(get(&p, |s| &s.bytes_received), total as u64);
        for (base, bytes) in &files {
            let got = std::fs::read(staged.dir().join(format!("{base:020}.log"))).expect("file");
            assert!(&got == bytes, "file {base} arrived byte for byte");
        }
        done.finish(Ok(40)).await;
        let (kind, body) = leader.join().expect("leader");
        assert_eq!((kind, body), (SNAP_STATUS, vec![0]));
        drop(staged);
        assert!(!engine::log::staging_path(&dir).exists());
    })
    .expect("executor");
}

#[test]
fn a_bad_chunk_or_an_unexpected_frame_ends_the_transfer_and_is_counted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    engine::run_local(tmp.path(), move || async move {
        let (files, data) = source(&root.join("src"), 12).await;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let served = files.clone();
        let leader = std::thread::spawn(move || {
            let decl: Vec<(u64, u64)> = served.iter().map(|(b, v)| (*b, v.len() as u64)).collect();
            let mut closed = Vec::new();
            for bad in 0..2 {
                let (mut s, _) = accept(&l);
                write_frame(&mut s, SNAP_MANIFEST, &encode_manifest(&decl)).expect("manifest");
                let mut c = chunks(&served, 0, 0).remove(0);
                if bad == 0 {
                    // One flipped bit in the data: the CRC does not match.
                    let last = c.len() - 1;
                    c[last] ^= 0x10;
                    write_frame(&mut s, SNAP_CHUNK, &c).expect("chunk");
                } else {
                    // A status frame where chunks are expected.
                    write_frame(&mut s, SNAP_STATUS, &[0]).expect("frame");
                }
                // The follower closes the connection without a word.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                closed.push(rest.len());
            }
            closed
        });
        let p = peers(addr);
        let dir = root.join("dst");
        for _ in 0..2 {
            let (staged, done) = download(&p, 3, &job(data), &dir, &config()).await;
            assert!(staged.is_err());
            done.finish(Err("not downloaded".into())).await;
        }
        let closed = leader.join().expect("leader");
        assert_eq!(closed, vec![0, 0]);
        assert_eq!(get(&p, |s| &s.malformed), 2);
        assert_eq!(get(&p, |s| &s.receive_failures), 2);
        assert_eq!(get(&p, |s| &s.resumed), 0, "malformed input is not retried");
        assert!(
            !engine::log::staging_path(&dir).exists(),
            "nothing left behind"
        );
    })
    .expect("executor");
}
