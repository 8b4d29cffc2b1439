//! Start-up, graceful stop, restart and crash: the process as an operator sees it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use net::client::ClientConfig;
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
    let (ok, err) = run(&["--bootstrap"]);
    assert!(!ok && err.contains("Raft"), "{err}");
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
