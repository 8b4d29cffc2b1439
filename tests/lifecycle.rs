//! Start-up, graceful stop, restart and crash: the process as an operator sees it.

use crate::common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use net::blocking::BlockingChannel;
use net::client::ClientConfig;
use net::Code;
use proto::log::v1::*;

#[test]
fn sigterm_exits_zero_and_restart_keeps_acknowledged_data() {
    let mut s = TestServer::start();
    create_topic(&s.channel(), "keep", 2).unwrap();
    assert_eq!(
        produce_stream(s.addr, 200, "a"),
        (0..200).collect::<Vec<u64>>()
    );
    produce(&s.channel(), "keep", 1, "k").unwrap();

    s.restart(); // asserts exit status 0 on SIGTERM
    let log = s.log();
    assert!(log.contains("SIGTERM received"), "{log}");

    let ch = s.channel();
    for i in [0u64, 100, 199] {
        assert_eq!(
            consume(&ch, "", 0, i).unwrap().value,
            format!("a{i}").into_bytes()
        );
    }
    assert_eq!(&consume(&ch, "keep", 1, 0).unwrap().value[..], b"k");
    // Offsets continue where they stopped.
    assert_eq!(produce(&ch, "", 0, "after").unwrap(), 200);
}

#[test]
fn sigkill_keeps_acknowledged_data_with_durability_always() {
    let mut s = TestServer::start();
    let offsets = produce_stream(s.addr, 300, "b");
    assert_eq!(offsets.len(), 300);
    // A crash, not a stop: only what was acknowledged (fsynced) must survive.
    s.signal(libc::SIGKILL);
    let dir = s.data_dir.clone();
    let s2 = TestServer::start_in(&dir, &[]);
    let ch = s2.channel();
    assert_eq!(&consume(&ch, "", 0, 299).unwrap().value[..], b"b299");
    assert_eq!(produce(&ch, "", 0, "next").unwrap(), 300);
}

#[test]
fn config_file_and_environment_are_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = tmp.path().join("from-file");
    let cfg = tmp.path().join("proglog.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data-dir: {}\nrpc-port: {port}\nbind-addr: 127.0.0.1:8401\nnode-name: from-file\nshards: 1\n",
            data.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config-file")
        .arg(&cfg)
        .env("PROGLOG_NODE_NAME", "from-env")
        .env("PROGLOG_LOG_LEVEL", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut servers = None;
    for _ in 0..200 {
        if let Ok(ch) = net::blocking::BlockingChannel::connect(addr, ClientConfig::default()) {
            if let Ok(r) = ch.unary_prost::<_, GetServersResponse>(
                paths::GET_SERVERS,
                &GetServersRequest {},
                opts(),
            ) {
                servers = Some(r);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    let servers = servers.expect("server from the config file answered");
    // The environment beats the file.
    assert_eq!(servers.servers[0].id, "from-env");
    assert!(
        data.join("catalog.meta").exists(),
        "data-dir from the file is used"
    );
}

#[test]
fn unimplemented_features_and_bad_settings_refuse_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // TLS and ACL files come in pairs (tests/tls.rs covers them working).
    let (ok, err) = run(&["--server-tls-cert-file", "cert.pem"]);
    assert!(
        !ok && err.contains("server-tls-cert-file") && err.contains("server-tls-key-file"),
        "{err}"
    );
    let (ok, err) = run(&["--acl-model-file", "model.conf"]);
    assert!(!ok && err.contains("acl-policy-file"), "{err}");
    // Peer TLS files come in threes, and only with cluster flags (tests/membership.rs covers
    // them working).
    let (ok, err) = run(&["--peer-tls-cert-file", "peer.pem"]);
    assert!(
        !ok && err.contains("peer-tls-cert-file") && err.contains("peer-tls-key-file"),
        "{err}"
    );
    let (ok, err) = run(&["--start-join-addrs", "no-port"]);
    assert!(!ok && err.contains("start-join-addrs"), "{err}");
    let (ok, err) = run(&["--dead-node-timeout", "soon"]);
    assert!(!ok && err.contains("dead-node-timeout"), "{err}");
    let (ok, err) = run(&["--durability", "sometimes"]);
    assert!(!ok && err.contains("durability"), "{err}");

    // A port someone else holds is refused, not shared through SO_REUSEPORT.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let (ok, err) = run(&["--listen", &taken, "--shards", "1"]);
    assert!(!ok && err.contains("not available"), "{err}");
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let s = TestServer::start();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--shards",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another proglog"), "{err}");
}

/// Runs the server with `setup` applied in the child just before exec, and returns its
/// stderr once it exits (it must, within the deadline).
fn start_failure(setup: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> String {
    let tmp = tempfile::tempdir().unwrap();
    start_failure_in(&tmp.path().join("d"), setup)
}

/// [`start_failure`] on the data directory `dir`.
fn start_failure_in(
    dir: &std::path::Path,
    setup: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["--admin-addr", "off", "--shards", "1"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: `setup` makes only async-signal-safe system calls (setrlimit, prctl).
    unsafe { cmd.pre_exec(setup) };
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started although the host cannot run it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn too_little_locked_memory_is_named_at_start() {
    let err = start_failure(|| {
        let lim = libc::rlimit {
            rlim_cur: 64 * 1024,
            rlim_max: 64 * 1024,
        };
        // SAFETY: setrlimit(2) reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    assert!(
        err.contains("RLIMIT_MEMLOCK is 64 KiB, below the 512 KiB"),
        "{err}"
    );
}

/// A descriptor limit too low for the partitions a data directory holds is named at start,
/// with the limit and what takes descriptors, not blamed on io_uring or locked memory.
#[test]
fn too_few_file_descriptors_are_named_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    {
        let mut s = TestServer::start_in(&dir, &[]);
        let (ok, _, err) = s.cli(&["topics", "create", "wide", "--partitions", "100"], None);
        assert!(ok, "{err}");
        s.sigterm();
    }
    let err = start_failure_in(&dir, || {
        let lim = libc::rlimit {
            rlim_cur: 64,
            rlim_max: 64,
        };
        // SAFETY: setrlimit(2) reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    assert!(
        err.contains("this process may have 64 files open at once, RLIMIT_NOFILE"),
        "{err}"
    );
    assert!(err.contains("Too many open files"), "{err}");
    assert!(!err.contains("it needs io_uring"), "{err}");
}

#[test]
fn io_uring_blocked_by_seccomp_is_named_at_start() {
    // What a container runtime's default profile does to io_uring_setup.
    let filter = common::seccomp::Filter::deny(libc::SYS_io_uring_setup as u32, libc::EPERM);
    // SAFETY (of the closure's body): install makes two prctl calls on a prepared program.
    let err = start_failure(move || unsafe { filter.install() });
    assert!(
        err.contains("io_uring is not usable: io_uring_setup failed with EPERM"),
        "{err}"
    );
    assert!(err.contains("seccomp filter"), "{err}");
    assert!(err.contains("io_uring_enter"), "{err}");
}

#[test]
fn shards_are_pinned_inside_the_cpus_the_process_was_given() {
    use std::os::unix::process::CommandExt;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("SKIPPED: needs two CPUs to give the server one that is not CPU 0");
        return;
    }
    // The last CPU only, as a cpuset (a container's exclusive CPUs) or taskset gives.
    let only = cpus - 1;
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--admin-addr", "off", "--shards", "1"])
        .args(["--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure makes one sched_setaffinity(2) call on a set built on its stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(only, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let allowed = shard_0_cpus(&mut child, &listen);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(allowed, only.to_string());
}

/// Waits until the server `child` serves on `listen`, then reads the CPUs its thread
/// `proglog-shard-0` may run on (`Cpus_allowed_list` of /proc/<pid>/task/<tid>/status).
fn shard_0_cpus(child: &mut std::process::Child, listen: &str) -> String {
    let tasks = format!("/proc/{}/task", child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Serving, so the shard's executor has long placed itself.
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited at start: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not serving within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    loop {
        let shard = std::fs::read_dir(&tasks).ok().and_then(|dir| {
            dir.flatten().find_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                if comm.trim() != "proglog-shard-0" {
                    return None;
                }
                let status = std::fs::read_to_string(t.path().join("status")).ok()?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(|v| v.trim().to_owned())
            })
        });
        if let Some(a) = shard {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no shard thread within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPUs this test process may run on, from /proc/self/status (the server inherits them).
fn my_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned();
    list.split(',')
        .flat_map(|item| match item.split_once('-') {
            Some((lo, hi)) => lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap(),
            None => {
                let n = item.parse::<usize>().unwrap();
                n..=n
            }
        })
        .collect()
}

#[test]
fn cpuset_pins_shard_0_to_the_cpu_it_names() {
    // The last CPU this process may use: not CPU 0 where there are two, so that the test
    // fails when the flag is ignored (shard 0 would go to the first CPU of the mask).
    let cpus = my_cpus();
    let last = *cpus.last().unwrap();
    if cpus.len() < 2 {
        eprintln!("NOTE: one CPU only; the flag's CPU is also the default's");
    }
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--admin-addr", "off", "--shards", "1"])
        .args(["--cpuset", &last.to_string()])
        .args(["--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let allowed = shard_0_cpus(&mut child, &listen);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(allowed, last.to_string());
}

#[test]
fn cpuset_outside_the_affinity_mask_refuses_to_start() {
    let outside = my_cpus().last().unwrap() + 1;
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--admin-addr", "off", "--shards", "1"])
        .args(["--cpuset", &format!("0,{outside}")])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // A usage error, as for the flags clap checks itself.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cpuset")
            && err.contains(&format!("CPU {outside} is not one this process may run on")),
        "{err}"
    );
    // A malformed list too, naming the flag.
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--cpuset", "0-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && err.contains("--cpuset"),
        "{err}"
    );
}

/// Every refused setting is a usage error (exit status 2), whether clap or the settings'
/// own checks refuse it, and the message names the flag.
#[test]
fn a_refused_setting_exits_with_the_usage_status_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, names) in [
        // clap's own parse.
        (&["--durability", "interval:abc"][..], "--durability"),
        // The settings' checks.
        (&["--dead-node-timeout", "0"], "dead-node-timeout"),
        (&["--log-level", "warning"], "log-level"),
        (
            &["--max-connections-per-shard", "0"],
            "max-connections-per-shard",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(tmp.path().join("d"))
            .args(["--admin-addr", "off", "--shards", "1"])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(names) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // A config file that cannot be read is not a usage error.
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .arg("--config-file")
        .arg(tmp.path().join("missing.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing.yaml"), "{err}");
}

/// Record `i`'s value in [`produce_numbered`]: 1 KiB that starts with `record <i> `.
fn numbered(i: u64) -> Bytes {
    let mut v = format!("record {i:08} ").into_bytes();
    v.resize(1024, b'.');
    Bytes::from(v)
}

/// Produces `batches` batches of 64 records `numbered(0..)` to `default`/0, from offset 0.
fn produce_numbered(ch: &BlockingChannel, batches: u64) {
    for b in 0..batches {
        let r: ProduceBatchResponse = ch
            .unary_prost(
                paths::PRODUCE_BATCH,
                &ProduceBatchRequest {
                    records: (b * 64..b * 64 + 64)
                        .map(|i| Record {
                            value: numbered(i),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
                opts(),
            )
            .unwrap();
        assert_eq!(r.base_offset, b * 64);
    }
}

/// A byte of a stored record flipped while the server was down, in the active segment: no
/// interrupted write leaves that (a torn write leaves zeros), so recovery cuts the log at the
/// damaged batch as at a torn tail but keeps what it cut in a file beside the segment and marks
/// the log lost: a produce is DATA_LOSS saying what happened and where the bytes are, until
/// the operator deletes `lost.meta`; then the records before it are served and the log goes
/// on from the cut.
#[test]
fn damage_in_the_active_segment_marks_the_log_lost_and_keeps_what_was_cut() {
    let mut s = TestServer::start();
    let ch = s.channel();
    produce_numbered(&ch, 8);
    assert_eq!(s.sigterm().code(), Some(0));
    let dir = s.data_dir.join("topics/default/0");
    let first = dir.join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).expect("the only segment");
    let at = bytes
        .windows(16)
        .position(|w| w == b"record 00000100 ")
        .expect("offset 100's value in the segment");
    bytes[at + 20] ^= 0x01;
    std::fs::write(&first, &bytes).expect("write the damaged segment back");

    let mut s = TestServer::start_in(&s.data_dir.clone(), &[]);
    let ch = s.channel();
    let e = produce(&ch, "", 0, "after the damage").expect_err("a lost log takes no write");
    assert_eq!(e.code, Code::DataLoss, "{e:?}");
    assert!(
        e.message.contains("damage at byte") && e.message.contains(".log.damaged-at-"),
        "{}",
        e.message
    );
    // The refusal comes before anything is written: `proglog produce` says the records
    // were not stored, on a stream and in a batch, rather than calling their outcome unknown.
    for args in [
        &["produce", "after the damage"][..],
        &["produce", "--batch", "2", "after", "the damage"][..],
    ] {
        let (ok, _, err) = s.cli(args, None);
        assert!(
            !ok && err.contains("DATA_LOSS")
                && err.contains("were not stored")
                && !err.contains("unknown outcome"),
            "{args:?}: {err}"
        );
    }
    // Described as taking no writes, not as writable.
    let (ok, out, err) = s.cli(&["topics", "describe", "default"], None);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("0\t"))
        .unwrap_or_else(|| panic!("no row for partition 0: {out}"));
    assert!(row.ends_with("\tlost"), "{out}");
    let (ok, out, err) = s.cli(&["topics", "describe", "default", "--json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["partition_stats"][0]["write_state"], "lost", "{out}");
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".log.damaged-at-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let cut = std::fs::read(&kept[0]).expect("the kept bytes");
    for i in [101u64, 128, 511] {
        let v = numbered(i);
        assert!(
            cut.windows(v.len()).any(|w| w == &v[..]),
            "offset {i} is not in the kept bytes"
        );
    }

    // The operator takes the loss: the log goes on from the cut.
    assert_eq!(s.sigterm().code(), Some(0));
    std::fs::remove_file(dir.join("lost.meta")).expect("remove the lost mark");
    let s = TestServer::start_in(&s.data_dir.clone(), &[]);
    let ch = s.channel();
    assert_eq!(consume(&ch, "", 0, 63).expect("before").value, numbered(63));
    let e = consume(&ch, "", 0, 64).expect_err("the damaged batch was cut");
    assert_eq!(e.code, Code::OutOfRange, "{e:?}");
    assert_eq!(produce(&ch, "", 0, "taken").expect("produce"), 64);
    assert_eq!(consume(&ch, "", 0, 64).expect("read").value, &b"taken"[..]);
    assert!(kept[0].exists(), "the kept bytes stay until removed");
}

/// A byte of a stored record flipped while the server was down, in a sealed segment (a read
/// checks every batch it returns; the active segment's damage is recovery's to cut): a
/// Consume of that record is DATA_LOSS naming the file and the byte, never the data, and
/// the records around it and the server itself go on being served.
#[test]
fn a_damaged_record_is_data_loss_on_the_wire_and_never_served() {
    let args = ["--segment-bytes", "2MiB"];
    let mut s = TestServer::start_with(&args);
    let ch = s.channel();
    // 40 batches of 64 records of 1 KiB: a roll at 2 MiB, so offset 100 is in a sealed
    // segment. Each value names its offset.
    produce_numbered(&ch, 40);
    assert_eq!(s.sigterm().code(), Some(0));
    let dir = s.data_dir.join("topics/default/0");
    let first = dir.join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).expect("the first segment");
    let at = bytes
        .windows(16)
        .position(|w| w == b"record 00000100 ")
        .expect("offset 100's value in the first segment");
    bytes[at + 20] ^= 0x01;
    std::fs::write(&first, &bytes).expect("write the damaged segment back");
    let logs = std::fs::read_dir(&dir)
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .count();
    assert!(
        logs >= 2,
        "{logs} segments: the damage must be in a sealed one"
    );

    let s = TestServer::start_in(&s.data_dir.clone(), &args);
    let ch = s.channel();
    let e = consume(&ch, "", 0, 100).expect_err("a damaged record is never served");
    assert_eq!(e.code, Code::DataLoss, "{e:?}");
    assert!(
        e.message.contains("00000000000000000000.log") && e.message.contains("checksum"),
        "{}",
        e.message
    );
    // Its batch is damaged as a whole; the others are served, and writes go on.
    assert_eq!(consume(&ch, "", 0, 64).map(|r| r.value), Err(e.clone()));
    assert_eq!(consume(&ch, "", 0, 63).expect("before").value, numbered(63));
    assert_eq!(
        consume(&ch, "", 0, 128).expect("after").value,
        numbered(128)
    );
    assert_eq!(
        consume(&ch, "", 0, 2559).expect("newest").value,
        numbered(2559)
    );
    assert_eq!(
        produce(&ch, "", 0, "after the damage").expect("produce"),
        2560
    );
}

/// A data directory whose catalog was deleted is refused at start, naming the file and the
/// partitions it would have lost, and nothing in it is deleted; a damaged catalog is named
/// without a guess about io_uring.
#[test]
fn a_data_directory_without_its_catalog_is_refused_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    {
        let mut s = TestServer::start_in(&dir, &[]);
        let (ok, _, err) = s.cli(&["topics", "create", "t", "--partitions", "2"], None);
        assert!(ok, "{err}");
        let ch = s.channel();
        produce(&ch, "t", 1, "kept").unwrap();
        produce(&ch, "", 0, "kept too").unwrap();
        s.sigterm();
    }
    let files = |p: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let t1 = dir.join("topics/t/1");
    let before = files(&t1);
    std::fs::rename(dir.join("catalog.meta"), tmp.path().join("catalog.meta")).unwrap();
    let err = start_failure_in(&dir, || Ok(()));
    for part in [
        "partition(s) that were opened (",
        "__cluster/0",
        "default/0",
        "t/1",
        "but no catalog.meta",
        "Restore",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    assert!(!err.contains("it needs io_uring"), "{err}");
    assert_eq!(
        files(&t1),
        before,
        "the partition's files are left as they were"
    );
    // Restored, the server starts with every record.
    std::fs::rename(tmp.path().join("catalog.meta"), dir.join("catalog.meta")).unwrap();
    {
        let mut s = TestServer::start_in(&dir, &[]);
        let ch = s.channel();
        assert_eq!(&consume(&ch, "t", 1, 0).unwrap().value[..], b"kept");
        assert_eq!(&consume(&ch, "", 0, 0).unwrap().value[..], b"kept too");
        s.sigterm();
    }
    // A damaged catalog is named, with no guess about the host.
    let path = dir.join("catalog.meta");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = start_failure_in(&dir, || Ok(()));
    assert!(err.contains("catalog.meta"), "{err}");
    assert!(!err.contains("it needs io_uring"), "{err}");
}

/// A data directory that lost `node.meta` or `cluster.meta` (the node's identity in its
/// cluster) is refused at start naming the file, instead of registering a second member or
/// bootstrapping a cluster over the controller's log; restored, it starts as it was.
#[test]
fn a_data_directory_without_its_node_or_cluster_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    {
        let mut s = TestServer::start_in(&dir, &[]);
        produce(&s.channel(), "", 0, "kept").unwrap();
        s.sigterm();
    }
    for (file, says) in [
        (
            "node.meta",
            "missing, while cluster.meta says this data directory's node",
        ),
        ("cluster.meta", "is missing, while"),
    ] {
        let aside = tmp.path().join(file);
        std::fs::rename(dir.join(file), &aside).unwrap();
        let err = start_failure_in(&dir, || Ok(()));
        assert!(err.contains(file) && err.contains(says), "{file}: {err}");
        assert!(!dir.join(file).exists(), "{file} was written again: {err}");
        std::fs::rename(&aside, dir.join(file)).unwrap();
    }
    let mut s = TestServer::start_in(&dir, &[]);
    assert_eq!(&consume(&s.channel(), "", 0, 0).unwrap().value[..], b"kept");
    s.sigterm();
}

/// Topic "t" in a new data directory `dir`, of 64 KiB segments, partition 0 holding records
/// `numbered(0..n)` (one a produce), the server stopped; its segments' base offsets,
/// ascending.
fn segmented_topic(dir: &std::path::Path, n: u64) -> Vec<u64> {
    {
        let mut s = TestServer::start_in(dir, &[]);
        let (ok, _, err) = s.cli(&["topics", "create", "t", "--segment-bytes", "64KiB"], None);
        assert!(ok, "{err}");
        let ch = s.channel();
        for i in 0..n {
            let v = String::from_utf8(numbered(i).to_vec()).unwrap();
            assert_eq!(produce(&ch, "t", 0, &v).unwrap(), i);
        }
        s.sigterm();
    }
    let mut bases: Vec<u64> = std::fs::read_dir(dir.join("topics/t/0"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort();
    bases
}

/// A segment deleted from the middle of a log, the loss accepted: a read of an offset it held
/// names the missing range and where reading can go on, instead of blaming an index.
#[test]
fn a_read_in_the_gap_of_a_deleted_segment_names_the_missing_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let bases = segmented_topic(&dir, 300u64);
    let part = dir.join("topics/t/0");
    assert!(bases.len() >= 4, "{bases:?}");
    let (gone, next) = (bases[1], bases[2]);
    std::fs::remove_file(part.join(format!("{gone:020}.log"))).unwrap();
    std::fs::remove_file(part.join(format!("{gone:020}.index"))).unwrap();
    // Found lost at start; the operator accepts the loss.
    {
        let mut s = TestServer::start_in(&dir, &[]);
        assert_eq!(
            produce(&s.channel(), "t", 0, "x").unwrap_err().code,
            Code::DataLoss
        );
        s.sigterm();
    }
    std::fs::remove_file(part.join("lost.meta")).unwrap();
    let mut s = TestServer::start_in(&dir, &[]);
    let ch = s.channel();
    assert_eq!(
        consume(&ch, "t", 0, gone - 1).unwrap().value,
        numbered(gone - 1)
    );
    let st = consume(&ch, "t", 0, gone + 1).unwrap_err();
    assert_eq!(st.code, Code::DataLoss, "{st}");
    let says = format!(
        "offset {} is in no segment: this one ends at offset {gone} and the next begins at \
         offset {next}, so offsets {gone} to {} are missing",
        gone + 1,
        next - 1
    );
    assert!(st.message.contains(&says), "{st}");
    assert!(
        st.message
            .contains(&format!("reading on from offset {next} works")),
        "{st}"
    );
    assert_eq!(consume(&ch, "t", 0, next).unwrap().value, numbered(next));
    s.sigterm();
}

/// A sealed index entry changed so that it still passes the index's checks but points into
/// the middle of a batch: reads by offset walk the segment from its start and are served,
/// and the index (not the intact data file) is named, once.
#[test]
fn a_damaged_index_entry_is_walked_past_not_blamed_on_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let bases = segmented_topic(&dir, 200u64);
    let part = dir.join("topics/t/0");
    assert!(bases.len() >= 3, "{bases:?}");
    let (sealed, next) = (bases[1], bases[2]);
    let index = part.join(format!("{sealed:020}.index"));
    let mut bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() >= 5 * 24, "{} index bytes", bytes.len());
    // Entry 3's position, one byte on: inside a batch, still between its neighbours.
    let at = 3 * 24 + 4;
    let pos = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    bytes[at..at + 4].copy_from_slice(&(pos + 1).to_le_bytes());
    std::fs::write(&index, bytes).unwrap();
    let mut s = TestServer::start_in(&dir, &[]);
    let ch = s.channel();
    for o in sealed..next {
        assert_eq!(
            consume(&ch, "t", 0, o).unwrap().value,
            numbered(o),
            "offset {o}"
        );
    }
    let log = s.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&format!("{sealed:020}.index")))
        .count();
    assert_eq!(warned, 1, "{log}");
    s.sigterm();
}
