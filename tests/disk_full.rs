//! A full disk, as an operating condition: the whole sequence against the real binary on a
//! small loop-mounted ext4 volume. Fill it until produce fails; the failure is
//! RESOURCE_EXHAUSTED naming the partition and the free space, reads are still served,
//! `/readyz` stays ready, the metric and DescribeTopic say the partition cannot take
//! writes, and the other topics' partitions (one created on the full disk) are refused or
//! served instead of killing the process (index files are allocated before they are
//! mapped: no SIGBUS; `engine/tests/full_volume.rs` shows the signal a sparse index gets
//! on a full volume). Free space: produce
//! works again without a restart (under `always` and under `never`), what is produced then is
//! visible at once, every acknowledged record reads back, and the log has one line per state
//! change and no retried background flush.
//!
//! Needs root (to mount the volume); CI runs as root. Not root: the test says so and passes.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use net::blocking::BlockingChannel;
use net::{Code, Status};
use proto::log::v1::*;

const VOLUME_MIB: u64 = 64;
const RECORD_BYTES: usize = 8 * 1024;

/// A loop-mounted ext4 volume, unmounted and removed when dropped. Names start with `pgh-`.
struct Volume {
    image: PathBuf,
    mount: PathBuf,
}

impl Volume {
    fn create(mib: u64) -> Volume {
        Volume::try_create("diskfull", mib, &[], "loop").expect("mount the volume")
    }

    /// A volume made with extra `mkfs.ext4` arguments and mount options; `None` (after
    /// saying why) when this kernel does not take the options.
    fn try_create(name: &str, mib: u64, mkfs: &[&str], options: &str) -> Option<Volume> {
        let base = std::env::temp_dir().join(format!("pgh-{name}-{}", std::process::id()));
        let image = base.with_extension("img");
        let mount = base.with_extension("mnt");
        let file = std::fs::File::create(&image).expect("image file");
        file.set_len(mib << 20).expect("size image");
        drop(file);
        let mut args = vec!["-q", "-F"];
        args.extend_from_slice(mkfs);
        args.push(image.to_str().expect("utf-8 path"));
        run("mkfs.ext4", &args);
        std::fs::create_dir_all(&mount).expect("mount point");
        let v = Volume { image, mount };
        let st = Command::new("mount")
            .args(["-o", options])
            .arg(&v.image)
            .arg(&v.mount)
            .status()
            .expect("mount");
        if !st.success() {
            eprintln!("cannot mount an ext4 volume with -o {options}: {st}");
            return None;
        }
        Some(v)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

fn value(i: u64) -> Bytes {
    let mut v = vec![(i % 251) as u8; RECORD_BYTES];
    v[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(v)
}

fn produce_batch(
    ch: &BlockingChannel,
    topic: &str,
    partition: u32,
    first: u64,
    n: u64,
) -> Result<u64, Status> {
    let r: ProduceBatchResponse = ch.unary_prost(
        paths::PRODUCE_BATCH,
        &ProduceBatchRequest {
            topic: topic.into(),
            partition,
            records: (first..first + n)
                .map(|i| Record {
                    value: value(i),
                    ..Default::default()
                })
                .collect(),
        },
        opts(),
    )?;
    Ok(r.base_offset)
}

fn describe_state(ch: &BlockingChannel, topic: &str, partition: u32) -> i32 {
    let r: DescribeTopicResponse = ch
        .unary_prost(
            paths::DESCRIBE_TOPIC,
            &DescribeTopicRequest { name: topic.into() },
            opts(),
        )
        .expect("describe");
    r.topic.expect("topic").partitions[partition as usize].write_state
}

fn metric_line(s: &TestServer, name: &str, topic: &str, partition: u32) -> Option<String> {
    let (_, body) = http_get(s.admin_addr(), "/metrics").ok()?;
    let labels = format!("partition=\"{partition}\"");
    body.lines()
        .find(|l| {
            l.starts_with(name) && l.contains(&format!("topic=\"{topic}\"")) && l.contains(&labels)
        })
        .map(str::to_owned)
}

/// Writes `path` until the volume refuses more (as root, into the blocks reserved for
/// root too); returns the bytes it took.
fn hog(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("hog file");
    let mut total = 0u64;
    // Large pieces, then single blocks for what the last large one did not fit in.
    for size in [64 * 1024, 4096] {
        let chunk = vec![0u8; size];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
            // Buffered writes succeed until the kernel has to find blocks: make it find them.
            if total % (1 << 20) == 0 && f.sync_data().is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }
    total
}

/// What the client learns when the disk fills under its appends: the append that was being
/// written may fail with its outcome unknown (UNAVAILABLE: it may be on disk, and committed
/// once space returns); the next one is refused before it is taken (RESOURCE_EXHAUSTED),
/// which is returned. A first failure that is already the refusal is returned as it is.
fn refusal(first: Status, next: impl FnOnce() -> Result<u64, Status>) -> (Status, Option<Status>) {
    if first.code != Code::Unavailable {
        return (first, None);
    }
    assert!(
        first.message.contains("outcome unknown") && first.message.contains("disk filled up"),
        "{first}"
    );
    let refused = next().expect_err("the next append on the full disk is refused");
    (refused, Some(first))
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_full_disk_is_an_operating_condition() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_full_disk_is_an_operating_condition: it needs root to loop-mount an ext4 volume (CI runs as root)"
        );
        return;
    }
    let vol = Volume::create(VOLUME_MIB);
    // Something to delete later, to free space.
    let filler = vol.mount.join("pgh-filler");
    std::fs::write(&filler, vec![0u8; 16 << 20]).expect("filler");
    let data = vol.mount.join("data");
    let mut s = TestServer::start_in(&data, &["--segment-bytes", "4MiB"]);
    let ch = s.channel();
    // `never`: appends there are acknowledged (and shown to readers) once written, so the
    // recovery is also seen through the write-completion path; `default` is `always`.
    let _: CreateTopicResponse = ch
        .unary_prost(
            paths::CREATE_TOPIC,
            &CreateTopicRequest {
                name: "two".into(),
                config: Some(TopicConfig {
                    partitions: 2,
                    durability: Durability::Never as i32,
                    ..Default::default()
                }),
            },
            opts(),
        )
        .expect("create topic");
    let mut saw = Vec::new();

    // 1. Fill the volume through `default` until produce fails.
    let mut acked: Vec<u64> = Vec::new();
    let per_batch = 64;
    let full = loop {
        let first = acked.len() as u64;
        match produce_batch(&ch, "", 0, first, per_batch) {
            Ok(base) => {
                assert_eq!(base, first, "offsets are dense");
                acked.extend(first..first + per_batch);
            }
            Err(st) => break st,
        }
        assert!(
            acked.len() < ((VOLUME_MIB as usize) << 20) / RECORD_BYTES,
            "the volume never filled"
        );
    };
    let first = acked.len() as u64;
    let (full, unknown) = refusal(full, || produce_batch(&ch, "", 0, first, per_batch));
    if let Some(u) = unknown {
        saw.push(format!(
            "the append being written: {:?}: {}",
            u.code, u.message
        ));
    }
    saw.push(format!(
        "fill: {} records of 8 KiB acknowledged, then {:?}: {}",
        acked.len(),
        full.code,
        full.message
    ));
    assert_eq!(full.code, Code::ResourceExhausted, "{full}");
    assert!(
        full.message.contains("default/0") && full.message.contains("bytes free"),
        "the message names the partition and the free space: {full}"
    );

    // 2. Take what space is left (the server's writes stop short of it: root's reserve),
    // then write to the other topic: two/0 is refused, and two/1's first append stores its
    // first index entry through the index's mapping on a disk with no block left. With a
    // sparse index that store raised SIGBUS and the process died; now it is refused or
    // served, and the process lives.
    let hogged = hog(&vol.mount.join("pgh-hog"));
    saw.push(format!(
        "the test takes the last {} KiB of the volume",
        hogged >> 10
    ));
    // A topic created on the full disk: its index files cannot be allocated, so creating it
    // fails (RESOURCE_EXHAUSTED) or, if the catalog and files still fit, it works.
    let created = create_topic(&ch, "three", 1);
    saw.push(format!(
        "create topic three: {}",
        match &created {
            Ok(_) => "OK".to_owned(),
            Err(e) => format!("{:?}: {}", e.code, e.message),
        }
    ));
    // Or, when the controller's own write of it met the full disk, its outcome is unknown.
    let unknown = |e: &Status| e.code == Code::Unavailable && e.message.contains("outcome unknown");
    if let Err(e) = &created {
        assert!(e.code == Code::ResourceExhausted || unknown(e), "{e}");
    }
    assert!(s.is_running(), "the server died: {}", s.log());
    for (topic, p) in [("two", 0u32), ("two", 1), ("three", 0)] {
        let r = produce(&ch, topic, p, "one more");
        saw.push(format!(
            "produce to {topic}/{p}: {}",
            match &r {
                Ok(off) => format!("OK, offset {off}"),
                Err(e) => format!("{:?}: {}", e.code, e.message),
            }
        ));
        if let Err(e) = &r {
            // A topic whose creation failed is not there (one whose outcome is unknown may be).
            match &created {
                Err(c) if topic == "three" && unknown(c) => assert!(
                    matches!(e.code, Code::NotFound | Code::ResourceExhausted),
                    "{e}"
                ),
                Err(_) if topic == "three" => assert_eq!(e.code, Code::NotFound, "{e}"),
                _ => assert_eq!(e.code, Code::ResourceExhausted, "{e}"),
            }
        }
        assert!(s.is_running(), "the server died: {}", s.log());
    }

    // 3. Reads are served; the node stays ready; metric and admin API say why writes fail.
    let last = *acked.last().expect("something was acknowledged");
    for off in [0, last / 2, last] {
        let r = consume(&ch, "", 0, off).expect("read while full");
        assert_eq!(r.value, value(off), "offset {off}");
    }
    saw.push(format!("consume offsets 0, {}, {last}: OK", last / 2));
    // At the end: out of range, as on a disk with room (a reader reading until then, the
    // book's way, and a tail waiting there, must not take the disk's error for its end).
    let end: DescribeTopicResponse = ch
        .unary_prost(
            paths::DESCRIBE_TOPIC,
            &DescribeTopicRequest {
                name: "default".into(),
            },
            opts(),
        )
        .expect("describe");
    let end = end.topic.expect("topic").partitions[0].next_offset;
    let past = consume(&ch, "", 0, end).expect_err("nothing at the end");
    assert_eq!(past.code, Code::OutOfRange, "{past}");
    saw.push(format!("consume offset {end} (the end): {:?}", past.code));
    let (code, body) = http_get(s.admin_addr(), "/readyz").expect("readyz");
    assert_eq!(code, 200, "{body}");
    saw.push(format!("/readyz: {code} {}", body.trim()));
    let m = metric_line(&s, "proglog_partition_disk_full", "default", 0).expect("metric");
    assert!(m.ends_with(" 1"), "{m}");
    saw.push(format!("metric: {m}"));
    assert_eq!(
        describe_state(&ch, "default", 0),
        PartitionWriteState::DiskFull as i32
    );
    saw.push("DescribeTopic default/0: PARTITION_WRITE_STATE_DISK_FULL".into());
    // Still full a while later: the state holds and nothing is retried in a loop.
    std::thread::sleep(Duration::from_secs(2));
    let again = produce(&ch, "", 0, "x").expect_err("still full");
    assert_eq!(again.code, Code::ResourceExhausted);

    // 4. Free space: writes resume without a restart.
    std::fs::remove_file(&filler).expect("free space");
    let until = Instant::now() + Duration::from_secs(30);
    let resumed_at = loop {
        let first = acked.len() as u64;
        match produce_batch(&ch, "", 0, first, 1) {
            Ok(base) => break base,
            Err(st) => {
                assert_eq!(st.code, Code::ResourceExhausted, "{st}");
                assert!(
                    Instant::now() < until,
                    "writes did not resume after space was freed:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    saw.push(format!(
        "space freed (16 MiB file deleted): produce OK again at offset {resumed_at}, no restart"
    ));
    assert!(
        resumed_at > last,
        "a new record took an acknowledged offset"
    );
    let until = Instant::now() + Duration::from_secs(30);
    for p in 0..2u32 {
        // Each partition finds the space on its own next check.
        let at = loop {
            match produce(&ch, "two", p, "after") {
                Ok(at) => break at,
                Err(e) => {
                    assert_eq!(e.code, Code::ResourceExhausted, "{e}");
                    assert!(Instant::now() < until, "two/{p} did not resume");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        // The partition's owner shows what it acknowledges, after a recovery too.
        assert_eq!(
            &consume(&ch, "two", p, at).expect("read").value[..],
            b"after"
        );
    }
    assert_eq!(
        consume(&ch, "", 0, resumed_at).expect("read").value,
        value(acked.len() as u64),
        "the first record after the recovery is visible"
    );
    assert_eq!(
        describe_state(&ch, "default", 0),
        PartitionWriteState::Writable as i32
    );
    // Every acknowledged record is there, byte for byte.
    for &off in acked.iter().step_by(97).chain([last].iter()) {
        assert_eq!(consume(&ch, "", 0, off).expect("read").value, value(off));
    }
    assert!(s.is_running());

    // 5. One log line per state change, no retry storm.
    let log = s.log();
    assert_eq!(count(&log, "partition default/0: disk full"), 1, "{log}");
    assert_eq!(
        count(&log, "partition default/0: space is back"),
        1,
        "{log}"
    );
    assert_eq!(count(&log, "background flush"), 0, "{log}");
    assert_eq!(count(&log, "latching"), 0, "{log}");
    saw.push("log: one `disk full` line and one `space is back` line for default/0".into());

    // A restart finds everything (and nothing a failed append wrote).
    s.restart();
    let ch = s.channel();
    assert_eq!(consume(&ch, "", 0, last).expect("read").value, value(last));
    assert_eq!(
        consume(&ch, "", 0, resumed_at).expect("read").value,
        value(acked.len() as u64)
    );
    println!("the disk-full sequence, as the client saw it:");
    for (i, line) in saw.iter().enumerate() {
        println!("  {}. {line}", i + 1);
    }
    drop(s);
    let _ = Path::new(&vol.mount);
}

/// A file system can keep its reserved blocks from root too (ext4 `resuid=` gives them to
/// another user; `resv_strict` refuses them to root, as on the root file system of the
/// machines this project is tested on). The free space a full partition reports and waits
/// for is then the space it can use (`df`'s Avail), not the free blocks: counted with the
/// reserve, the message said tens of MiB free on a full disk, and the partition "recovered"
/// on every probe, took writes into a disk with no room, and filled again.
#[test]
fn a_reserve_kept_from_root_is_not_free_space() {
    if !is_root() {
        eprintln!("SKIPPED a_reserve_kept_from_root_is_not_free_space: it needs root");
        return;
    }
    // Half the blocks reserved, for a user who is not us, and never for root.
    let Some(vol) = Volume::try_create(
        "reserve",
        96,
        &["-m", "50"],
        "loop,resuid=65534,resv_strict",
    ) else {
        eprintln!("SKIPPED a_reserve_kept_from_root_is_not_free_space: no resv_strict here");
        return;
    };
    let filler = vol.mount.join("pgh-filler");
    std::fs::write(&filler, vec![0u8; 16 << 20]).expect("filler");
    let data = vol.mount.join("data");
    let s = TestServer::start_in(&data, &["--segment-bytes", "4MiB"]);
    let ch = s.channel();

    let mut acked = 0u64;
    let full = loop {
        match produce_batch(&ch, "", 0, acked, 64) {
            Ok(base) => {
                assert_eq!(base, acked, "offsets are dense");
                acked += 64;
            }
            Err(st) => break st,
        }
        assert!(
            acked < (96 << 20) / RECORD_BYTES as u64,
            "the volume never filled"
        );
    };
    let (full, _) = refusal(full, || produce_batch(&ch, "", 0, acked, 64));
    assert_eq!(full.code, Code::ResourceExhausted, "{full}");
    let free: u64 = full
        .message
        .split(" bytes free")
        .next()
        .and_then(|m| m.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no free space in the message: {full}"));
    eprintln!(
        "full after {acked} records: {:?}: {}",
        full.code, full.message
    );
    assert!(
        free < 4 << 20,
        "a full volume is said to have {free} bytes free (its reserve counted): {full}"
    );

    // Three probes later: still full, and it never tried to resume.
    std::thread::sleep(Duration::from_millis(3500));
    let again = produce(&ch, "", 0, "x").expect_err("still full");
    assert_eq!(again.code, Code::ResourceExhausted, "{again}");
    let log = s.log();
    assert_eq!(
        count(&log, "space is back"),
        0,
        "it resumed on a full disk:\n{log}"
    );
    assert_eq!(
        count(&log, "disk full ("),
        1,
        "one line per state change:\n{log}"
    );

    // Room it can use: writes resume, after the last acknowledged record.
    std::fs::remove_file(&filler).expect("free space");
    let until = Instant::now() + Duration::from_secs(30);
    let at = loop {
        match produce(&ch, "", 0, "after") {
            Ok(at) => break at,
            Err(e) => {
                assert_eq!(e.code, Code::ResourceExhausted, "{e}");
                assert!(
                    Instant::now() < until,
                    "writes did not resume:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(at, acked, "the first record after the full disk");
    for off in [0, acked / 2, acked - 1] {
        let r = consume(&ch, "", 0, off).expect("read");
        assert_eq!(r.value, value(off), "offset {off}");
    }
    eprintln!("space freed: produce OK at offset {at}; reads intact");
}

/// A server started on a disk with no room left fails at once with the reason, not with a
/// hint about io_uring, memlock limits and seccomp profiles, which sent its reader looking
/// in the wrong place.
#[test]
fn a_server_started_on_a_full_disk_says_so() {
    if !is_root() {
        eprintln!("SKIPPED a_server_started_on_a_full_disk_says_so: it needs root");
        return;
    }
    // Root may not use the reserve (as on the reserve test's volume), so the hog leaves
    // no block the server could write.
    let Some(vol) = Volume::try_create(
        "startfull",
        32,
        &["-m", "50"],
        "loop,resuid=65534,resv_strict",
    ) else {
        eprintln!("SKIPPED a_server_started_on_a_full_disk_says_so: no resv_strict here");
        return;
    };
    hog(&vol.mount.join("pgh-hog"));
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(vol.mount.join("data"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-addr",
            "off",
        ])
        .output()
        .expect("run the server");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(!out.status.success(), "it started on a full disk: {err}");
    let error = err
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(error.contains("No space left on device"), "{error}");
    assert!(!error.contains("seccomp"), "a misleading hint: {error}");
}
