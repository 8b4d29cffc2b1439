//! TLS, mutual TLS and ACL authorization against the real binary, with certificates made by
//! `proglog cert` and, separately, by the openssl CLI (tests/fixtures/openssl-certs.sh).
//! Every rejection is followed by a check that the server still serves.

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use net::blocking::BlockingChannel;
use net::client::ClientConfig;
use net::tls::ClientTlsOptions;
use net::{Code, Status};
use proto::health::v1::{paths as hpaths, HealthCheckRequest, HealthCheckResponse};
use proto::log::v1::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn cli(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().expect("run proglog");
    assert!(
        out.status.success(),
        "proglog {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (of the default name), a server certificate for localhost/127.0.0.1 and client
/// certificates for `cns`, made by `proglog cert`.
fn cli_certs(dir: &Path, cns: &[&str]) {
    let d = dir.to_str().expect("utf-8 path");
    cli(&["cert", "ca", "--dir", d]);
    cli(&["cert", "server", "--dir", d, "localhost", "127.0.0.1"]);
    for cn in cns {
        cli(&["cert", "client", "--dir", d, cn]);
    }
}

/// `proglog cert` refuses what cannot make a working certificate, with a message and no
/// files: a validity that overflows a date, a host that is no DNS name nor IP address, an
/// empty client subject. (`--days 0`, an expired certificate, is allowed with a warning:
/// tests of expiry make them.)
#[test]
fn cert_refuses_certificates_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().expect("utf-8 path");
    cli(&["cert", "ca", "--dir", d]);
    for (args, says) in [
        (&["ca", "--days", "99999999", "--force"][..], "36500"),
        (
            &["server", "not a host!"],
            "neither an IP address nor a DNS name",
        ),
        (
            &["server", "bad-.example"],
            "neither an IP address nor a DNS name",
        ),
        (&["client", ""], "Common Name"),
    ] {
        let out = Command::new(BIN)
            .arg("cert")
            .args(args)
            .args(["--dir", d])
            .output()
            .expect("run proglog");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if says == "36500" { 2 } else { 1 }),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["ca-key.pem", "ca.pem"]);
    cli(&[
        "cert",
        "server",
        "--dir",
        d,
        "*.example.com",
        "node-1",
        "::1",
    ]);
}

/// The same set made by openssl; `None` (the caller skips) only when openssl is missing.
fn openssl_certs(dir: &Path) -> Option<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: the openssl CLI is not installed; openssl-made certificates untested");
        return None;
    }
    let st = Command::new("bash")
        .arg(format!("{FIXTURES}/openssl-certs.sh"))
        .arg(dir)
        .status()
        .expect("run openssl-certs.sh");
    assert!(st.success(), "openssl-certs.sh failed");
    Some(())
}

fn client(dir: &Path, cn: Option<&str>) -> ClientConfig {
    client_named(dir, cn, None)
}

fn client_named(dir: &Path, cn: Option<&str>, server_name: Option<&str>) -> ClientConfig {
    let tls = ClientTlsOptions {
        ca_file: Some(dir.join("ca.pem")),
        cert_file: cn.map(|cn| dir.join(format!("{cn}-client.pem"))),
        key_file: cn.map(|cn| dir.join(format!("{cn}-client-key.pem"))),
        server_name: server_name.map(str::to_owned),
    }
    .load()
    .expect("client TLS settings");
    ClientConfig {
        tls,
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn p(path: PathBuf) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// Server flags for TLS (mutual with `mutual`) and, with `policy`, the book's ACL.
fn server_args(certs: &Path, mutual: bool, policy: Option<&Path>) -> Vec<String> {
    let mut a = vec![
        "--server-tls-cert-file".into(),
        p(certs.join("server.pem")),
        "--server-tls-key-file".into(),
        p(certs.join("server-key.pem")),
    ];
    if mutual {
        a.extend(["--server-tls-ca-file".into(), p(certs.join("ca.pem"))]);
    }
    if let Some(policy) = policy {
        a.extend([
            "--acl-model-file".into(),
            format!("{FIXTURES}/model.conf"),
            "--acl-policy-file".into(),
            p(policy.to_owned()),
        ]);
    }
    a
}

fn start(args: &[String], harness: ClientConfig) -> TestServer {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_with_client(&a, harness)
}

fn connect(s: &TestServer, cfg: ClientConfig) -> Result<BlockingChannel, net::Error> {
    BlockingChannel::connect(s.addr, cfg)
}

fn health(ch: &BlockingChannel) -> Result<HealthCheckResponse, Status> {
    ch.unary_prost(hpaths::CHECK, &HealthCheckRequest::default(), opts())
}

/// A connection or its first call fails: with TLS 1.3 a client learns that the server
/// refused its certificate only when it reads after the handshake.
/// A client whose certificate the server refuses: the server's alert arrives on the first
/// call (TLS 1.3 ends the client's side of the handshake first), UNAUTHENTICATED with what
/// to do.
fn refused(s: &TestServer, cfg: ClientConfig) -> String {
    match connect(s, cfg) {
        Err(e) => e.to_string(),
        Ok(ch) => match health(&ch) {
            Err(st) => {
                assert_eq!(st.code, Code::Unauthenticated, "{st:?}");
                st.to_string()
            }
            Ok(r) => panic!("connection was accepted: {r:?}"),
        },
    }
}

fn wait_for_log(s: &TestServer, needle: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while !s.log().contains(needle) {
        assert!(
            Instant::now() < until,
            "log never said {needle:?}:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn produce_consume_as_root_and_nobody(certs: &Path) {
    let s = start(
        &server_args(certs, true, Some(&Path::new(FIXTURES).join("policy.csv"))),
        client(certs, Some("root")),
    );
    let root = connect(&s, client(certs, Some("root"))).expect("root connects");
    let off = produce(&root, "", 0, "hello").expect("root produces");
    assert_eq!(
        consume(&root, "", 0, off).expect("root consumes").value,
        "hello"
    );

    let nobody = connect(&s, client(certs, Some("nobody"))).expect("nobody connects");
    let e = produce(&nobody, "", 0, "x").unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied, "{e:?}");
    assert_eq!(e.message, "nobody not permitted to produce to *");
    let e = consume(&nobody, "", 0, off).unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied, "{e:?}");
    assert_eq!(e.message, "nobody not permitted to consume to *");
    // Health stays open to every authenticated client, and GetServers as in the reference.
    health(&nobody).expect("health for nobody");
    let _: GetServersResponse = nobody
        .unary_prost(paths::GET_SERVERS, &GetServersRequest {}, opts())
        .expect("GetServers for nobody");
    // Reflection describes the API to any authenticated client, over TLS, with no grant.
    let listed = reflect(
        s.addr,
        client(certs, Some("nobody")),
        proto::reflection::v1::paths::INFO,
        vec![list_services()],
    )
    .expect("reflection for nobody");
    assert_eq!(listed.len(), 1);
    // The book's policy grants no admin.
    let e = create_topic(&root, "t", 1).unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied, "{e:?}");
    assert_eq!(e.message, "root not permitted to admin to t");
}

#[test]
fn mutual_tls_and_acl_with_cli_certificates() {
    let dir = tempfile::tempdir().unwrap();
    cli_certs(dir.path(), &["root", "nobody"]);
    produce_consume_as_root_and_nobody(dir.path());
}

#[test]
fn mutual_tls_and_acl_with_openssl_certificates() {
    let dir = tempfile::tempdir().unwrap();
    if openssl_certs(dir.path()).is_none() {
        return;
    }
    produce_consume_as_root_and_nobody(dir.path());
}

#[test]
fn tls_without_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    cli_certs(dir.path(), &[]);
    let s = start(
        &server_args(dir.path(), false, None),
        client(dir.path(), None),
    );
    let ch = s.channel();
    let off = produce(&ch, "", 0, "over tls").unwrap();
    assert_eq!(consume(&ch, "", 0, off).unwrap().value, "over tls");
    // The CLI speaks TLS too.
    let addr = s.addr.to_string();
    let ca = p(dir.path().join("ca.pem"));
    let (ok, out, err) = run_cli_raw(&["produce", "--addr", &addr, "--tls-ca-file", &ca, "v"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), (off + 1).to_string());

    // A connection handed from the shard that accepted it to one serving fewer does its TLS
    // handshake there: open connections, each kept open (so the shards' counts differ) and
    // used, until one has moved.
    let moved = || {
        let (_, body) = http_get(s.admin_addr(), "/metrics").expect("scrape");
        body.lines()
            .find_map(|l| l.strip_prefix("proglog_connections_moved_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("proglog_connections_moved_total in the metrics")
    };
    let before = moved();
    let mut held = vec![ch];
    for i in 0..40 {
        let c = s.channel();
        produce(&c, "", 0, &format!("over tls {i}")).expect("produce on a new connection");
        held.push(c);
        if moved() > before {
            break;
        }
    }
    assert!(
        moved() > before,
        "no connection moved between shards in {} connections",
        held.len() - 1
    );
}

fn run_cli_raw(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rejected_connections_leave_the_server_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    cli_certs(certs, &["root"]);
    // An unknown CA with a client certificate of the same CN, and an expired certificate
    // from the right CA. Both CAs are made without --cn: each gets a name of its own, so a
    // certificate of the other is from an unknown issuer (two CAs named "proglog CA" made it
    // a bad signature of this one).
    let other = certs.join("other");
    cli_certs(&other, &["root"]);
    let d = p(certs.to_owned());
    cli(&[
        "cert",
        "client",
        "--dir",
        &d,
        "--days",
        "0",
        "--name",
        "expired-client",
        "root",
    ]);
    std::thread::sleep(Duration::from_millis(1100));

    let s = start(
        &server_args(certs, true, Some(&Path::new(FIXTURES).join("policy.csv"))),
        client(certs, Some("root")),
    );

    // The client is told why: the server's alert, not a broken pipe.
    let e = refused(&s, client(certs, None));
    assert!(
        e.contains("the server requires a client certificate (mutual TLS), and none was given"),
        "{e}"
    );
    wait_for_log(&s, "peer sent no certificates");

    let unknown = ClientTlsOptions {
        ca_file: Some(certs.join("ca.pem")),
        cert_file: Some(other.join("root-client.pem")),
        key_file: Some(other.join("root-client-key.pem")),
        server_name: None,
    };
    let e = refused(
        &s,
        ClientConfig {
            tls: unknown.load().unwrap(),
            ..ClientConfig::default()
        },
    );
    assert!(
        e.contains("the server refused this client's certificate"),
        "{e}"
    );
    wait_for_log(&s, "UnknownIssuer");

    let e = refused(&s, client(certs, Some("expired")));
    assert!(
        e.contains("the server refused this client's certificate"),
        "{e}"
    );
    wait_for_log(&s, "certificate expired");

    // A client that trusts another CA refuses the server itself.
    let e = connect(&s, client(&other, Some("root")))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // The CLI says so at once: a refused handshake is not retried until --timeout as a
    // refused connection is (no "trying again" warning), and the error names the cause.
    let other_ca = other.join("ca.pem");
    let (ok, _, err) = run_cli(
        s.addr,
        &["health", "--tls-ca-file", &other_ca.to_string_lossy()],
        None,
    );
    assert!(!ok && err.contains("invalid peer certificate"), "{err}");
    assert!(!err.contains("trying again"), "{err}");
    // A server name the certificate does not carry.
    let e = connect(&s, client_named(certs, Some("root"), Some("wrong.example")))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // Plaintext gRPC to the TLS port: told why, then closed.
    let plain = connect(&s, ClientConfig::default()).expect("TCP connect");
    let st = health(&plain).unwrap_err();
    assert_eq!(st.code, Code::Unauthenticated, "{st:?}");
    assert!(st.message.contains("requires TLS"), "{st:?}");
    wait_for_log(&s, "plaintext connection from");

    // Not even HTTP/2, and the byte reserved for replication: closed.
    for bytes in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x01, 0, 0, 0][..]] {
        let mut tcp = std::net::TcpStream::connect(s.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(bytes).unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf);
    }
    wait_for_log(&s, "peer connection from");

    let root = connect(&s, client(certs, Some("root"))).expect("root still connects");
    produce(&root, "", 0, "still serving").expect("server unharmed");
    let mut s = s;
    assert!(s.is_running());
}

#[test]
fn authorization_without_tls_is_unauthenticated() {
    let s = TestServer::start_with(&[
        "--acl-model-file",
        &format!("{FIXTURES}/model.conf"),
        "--acl-policy-file",
        &format!("{FIXTURES}/policy.csv"),
    ]);
    let ch = s.channel();
    let e = produce(&ch, "", 0, "x").unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated, "{e:?}");
    assert_eq!(e.message, "no transport security being used");
    health(&ch).expect("health stays open");
    // Reflection needs an identity under ACLs, like everything but health and GetServers.
    let e = reflect(
        s.addr,
        s.client.clone(),
        proto::reflection::v1alpha::paths::INFO,
        vec![list_services()],
    )
    .unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated, "{e:?}");
}

fn list_services() -> proto::reflection::v1::ServerReflectionRequest {
    proto::reflection::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            proto::reflection::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    }
}

#[test]
fn per_topic_grants() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    cli_certs(certs, &["root", "alice", "bob"]);
    let policy = certs.join("policy.csv");
    std::fs::write(
        &policy,
        "p, root, *, admin\np, alice, orders, produce\np, bob, orders, consume\np, bob, *, produce\n",
    )
    .unwrap();
    let s = start(
        &server_args(certs, true, Some(&policy)),
        client(certs, Some("root")),
    );
    let root = connect(&s, client(certs, Some("root"))).unwrap();
    create_topic(&root, "orders", 1).unwrap();
    create_topic(&root, "audit", 1).unwrap();
    let alice = connect(&s, client(certs, Some("alice"))).unwrap();
    let bob = connect(&s, client(certs, Some("bob"))).unwrap();

    let off = produce(&alice, "orders", 0, "o1").expect("alice produces to orders");
    let e = produce(&alice, "audit", 0, "a").unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            Code::PermissionDenied,
            "alice not permitted to produce to audit"
        )
    );
    let e = consume(&alice, "orders", 0, off).unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    assert_eq!(consume(&bob, "orders", 0, off).unwrap().value, "o1");
    let e = consume(&bob, "audit", 0, 0).unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    // `*` covers every topic, named or not.
    produce(&bob, "audit", 0, "b").unwrap();
    produce(&bob, "", 0, "b").unwrap();
    let e = create_topic(&alice, "x", 1).unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);

    // A stream is checked per message: the denied one ends it with its status.
    let addr = s.addr;
    let alice_cfg = client(certs, Some("alice"));
    let r: Result<Vec<u64>, Status> = run_async(move || async move {
        let ch = net::client::Channel::connect(addr, alice_cfg)
            .await
            .unwrap();
        let (mut tx, mut rx) = ch.streaming(paths::PRODUCE_STREAM, opts()).await?;
        for topic in ["orders", "orders", "audit"] {
            tx.send_message(&ProduceRequest {
                record: record("s"),
                topic: topic.into(),
                partition: 0,
            })
            .await?;
        }
        tx.finish()?;
        let mut got = Vec::new();
        while let Some(m) = rx.message().await? {
            let r: ProduceResponse = net::decode(m)?;
            got.push(r.offset);
        }
        Ok(got)
    });
    let e = r.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            Code::PermissionDenied,
            "alice not permitted to produce to audit"
        )
    );
}

#[test]
fn policy_reload_good_and_bad() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    cli_certs(certs, &["root", "nobody"]);
    let policy = certs.join("policy.csv");
    std::fs::write(&policy, "p, root, *, produce\np, root, *, consume\n").unwrap();
    let mut s = start(
        &server_args(certs, true, Some(&policy)),
        client(certs, Some("root")),
    );
    let nobody = connect(&s, client(certs, Some("nobody"))).unwrap();
    assert_eq!(
        produce(&nobody, "", 0, "x").unwrap_err().code,
        Code::PermissionDenied
    );

    // A good change is picked up by the file watcher, without a signal.
    std::fs::write(&policy, "p, root, *, produce\np, nobody, *, produce\n").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while produce(&nobody, "", 0, "x").is_err() {
        assert!(Instant::now() < until, "policy not reloaded:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_log(&s, "reloaded ACL policy");

    // A bad one is refused, loudly, and the previous policy stays in force.
    std::fs::write(&policy, "p, nobody, *, produce\np, nobody, *\n").unwrap();
    wait_for_log(&s, "keeping the previous one");
    produce(&nobody, "", 0, "still allowed").expect("old policy in force");

    // SIGHUP reloads too (the file is unchanged, so only the signal can trigger it).
    std::fs::write(&policy, "p, root, *, produce\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = unsafe_sighup(&s);
    let until = Instant::now() + Duration::from_secs(10);
    while produce(&nobody, "", 0, "x").is_ok() {
        assert!(Instant::now() < until, "policy not reloaded:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.is_running());
}

fn unsafe_sighup(s: &TestServer) -> i32 {
    let pid = s.pid() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child the harness has not reaped, so it is ours.
    unsafe { libc::kill(pid, libc::SIGHUP) }
}

#[test]
fn unsupported_model_and_bad_files_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.conf");
    std::fs::write(
        &model,
        std::fs::read_to_string(format!("{FIXTURES}/model.conf"))
            .unwrap()
            .replace("[matchers]", "[role_definition]\ng = _, _\n\n[matchers]"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--data-dir", &p(dir.path().join("d")), "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--acl-model-file", &p(model)])
        .args(["--acl-policy-file", &format!("{FIXTURES}/policy.csv")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Supported is the book's model"), "{err}");

    let out = Command::new(BIN)
        .args(["--data-dir", &p(dir.path().join("d")), "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--server-tls-cert-file", &format!("{FIXTURES}/model.conf")])
        .args(["--server-tls-key-file", &format!("{FIXTURES}/model.conf")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

#[test]
fn tls_to_a_plaintext_port_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    cli_certs(dir.path(), &["root"]);
    let s = TestServer::start();
    let e = match connect(&s, client(dir.path(), Some("root"))) {
        Err(e) => e.to_string(),
        Ok(ch) => health(&ch).unwrap_err().to_string(),
    };
    // Said as what it likely is, not as rustls's "tls handshake eof".
    assert!(
        e.contains("it may not serve TLS on this port (a plaintext server: connect without TLS)"),
        "{e}"
    );
    wait_for_log(&s, "TLS connection from");
    produce(&s.channel(), "", 0, "plaintext still works").unwrap();
}
