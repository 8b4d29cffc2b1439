//! proglog-bench against a real proglog server: every workload, open loop, verification
//! (and that it catches injected faults), TLS, loopback, idle streams and bad arguments.

mod common;

use common::{assert_sane, bench, bench_json, Server};
use serde_json::Value;

fn workload<'a>(j: &'a Value, kind: &str) -> &'a Value {
    j["workloads"]
        .as_array()
        .and_then(|a| a.iter().find(|w| w["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {j:#}"))
}

#[test]
fn every_workload_at_once_with_verification() {
    let s = Server::start(&[]);
    let r = bench_json(
        &s,
        &[
            "-w",
            "produce,produce-stream:2,produce-batch,consume,consume-stream,end-to-end",
            "--verify",
            "--window",
            "16",
            "--batch",
            "8",
            "--prefill",
            "3000",
            "--record-size",
            "32..300",
            "--cores",
            "2",
        ],
    );
    assert_eq!(r.code, 0, "stderr:\n{}\nstdout:\n{}", r.stderr, r.stdout);
    let j = r.json();
    for kind in [
        "produce",
        "produce-stream",
        "produce-batch",
        "consume",
        "consume-stream",
        "end-to-end",
    ] {
        assert_sane(workload(&j, kind));
    }
    let ps = workload(&j, "produce-stream");
    assert_eq!(ps["connections"], 2);
    let b = workload(&j, "produce-batch");
    assert_eq!(b["records"].as_u64(), b["requests"].as_u64().map(|n| n * 8));
    let e2e = workload(&j, "end-to-end");
    assert!(e2e["received_records"].as_u64().unwrap_or(0) > 0, "{e2e:#}");
    assert!(
        e2e["e2e_latency_us"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0,
        "{e2e:#}"
    );
    let v = &j["verify"];
    assert_eq!(v["passed"], true, "{v:#}");
    assert!(v["acked"].as_u64().unwrap_or(0) > 3000, "{v:#}");
    assert_eq!(v["acked"], v["read_back_ok"], "{v:#}");
    let cpu = j["bench_cpu"]["cores_used"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=2.5).contains(&cpu), "bench cpu {cpu}");
}

#[test]
fn open_loop_holds_the_target_rate() {
    let s = Server::start(&[]);
    let r = bench_json(
        &s,
        &[
            "-w",
            "produce-stream",
            "--rate",
            "2000",
            "--streams",
            "2",
            "--duration",
            "1.5s",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let w = workload(&j, "produce-stream");
    assert_sane(w);
    let rate = w["records_per_s"].as_f64().unwrap_or(0.0);
    assert!(
        (1400.0..=2600.0).contains(&rate),
        "asked for 2000/s, got {rate}: {w:#}"
    );
    assert_eq!(j["config"]["open_loop"], true);
}

#[test]
fn verification_catches_loss_corruption_and_duplicates() {
    let s = Server::start(&[]);
    for (fault, field) in [
        ("skip", "lost"),
        ("corrupt", "mismatches"),
        ("duplicate", "duplicates"),
    ] {
        let r = bench_json(
            &s,
            &[
                "-w",
                "produce-stream",
                "--verify",
                "--inject-fault",
                fault,
                "--duration",
                "300ms",
                "--warmup",
                "0s",
            ],
        );
        assert_eq!(r.code, 1, "{fault}: a damaged run must fail\n{}", r.stderr);
        assert!(
            r.stderr.contains("verification failed"),
            "{fault}: {}",
            r.stderr
        );
        let j = r.json();
        let v = &j["verify"];
        assert_eq!(v["passed"], false, "{fault}: {v:#}");
        assert_eq!(v[field], 1, "{fault}: {v:#}");
        for other in ["lost", "mismatches", "duplicates"] {
            if other != field {
                assert_eq!(v[other], 0, "{fault}: {other}: {v:#}");
            }
        }
    }
}

#[test]
fn tls_and_mutual_tls() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cert dir");
    let d = dir.path().to_str().expect("utf-8 path");
    for args in [
        vec!["cert", "ca", "--dir", d],
        vec!["cert", "server", "--dir", d, "localhost", "127.0.0.1"],
        vec!["cert", "client", "--dir", d, "root"],
    ] {
        let st = std::process::Command::new(common::proglog_bin())
            .args(&args)
            .output()
            .expect("proglog cert");
        assert!(
            st.status.success(),
            "proglog {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let f = |n: &str| format!("{d}/{n}");
    let (ca, cert, key) = (f("ca.pem"), f("root-client.pem"), f("root-client-key.pem"));
    let (scert, skey) = (f("server.pem"), f("server-key.pem"));

    // Server-authenticated TLS.
    let s = Server::start(&[
        "--server-tls-cert-file",
        &scert,
        "--server-tls-key-file",
        &skey,
    ]);
    let r = bench_json(
        &s,
        &[
            "-w",
            "produce-stream",
            "--verify",
            "--tls-ca",
            &ca,
            "--duration",
            "500ms",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_sane(workload(&r.json(), "produce-stream"));
    // The certificate names localhost; checking it against another name must fail.
    // (Failed handshakes are retried until `--timeout`, kept short here.) The CA flag as the
    // proglog CLI spells it.
    let r = bench_json(
        &s,
        &[
            "--tls-ca-file",
            &ca,
            "--tls-server-name",
            "example.com",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not valid for name \"example.com\""),
        "{}",
        r.stderr
    );
    drop(s);

    // Mutual TLS: with the client certificate it works, without it the run fails.
    let s = Server::start(&[
        "--server-tls-cert-file",
        &scert,
        "--server-tls-key-file",
        &skey,
        "--server-tls-ca-file",
        &ca,
    ]);
    let r = bench_json(
        &s,
        &[
            "-w",
            "produce,consume-stream",
            "--prefill",
            "500",
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-server-name",
            "localhost",
            "--duration",
            "500ms",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert_sane(workload(&j, "produce"));
    assert_sane(workload(&j, "consume-stream"));
    let r = bench_json(
        &s,
        &["--tls-ca", &ca, "--duration", "500ms", "--timeout", "1s"],
    );
    assert_eq!(r.code, 1, "no client certificate must fail:\n{}", r.stdout);
    // The run's verdict names the cause: the server's alert, said as what it means.
    assert!(
        r.stderr
            .contains("UNAUTHENTICATED: the server requires a client certificate (mutual TLS)"),
        "{}",
        r.stderr
    );
}

#[test]
fn idle_tailing_streams_report_server_cpu() {
    let s = Server::start(&[]);
    let pid = s.pid().to_string();
    let r = bench_json(
        &s,
        &[
            "-w",
            "tail",
            "--connections",
            "2",
            "--streams",
            "8",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let cpu = j["server_cpu"]["cores_used"].as_f64().expect("server cpu");
    assert!(
        (0.0..0.5).contains(&cpu),
        "16 idle streams used {cpu} cores"
    );
    assert_eq!(workload(&j, "tail")["errors"], serde_json::json!({}));
}

#[test]
fn loopback_only() {
    let r = bench(&[
        "-w",
        "none",
        "--measure-loopback",
        "--loopback-duration",
        "300ms",
        "--json",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let mb = j["loopback"]["mb_per_s"].as_f64().unwrap_or(0.0);
    assert!(mb > 50.0, "loopback {mb} MB/s");
    let r = bench(&[
        "-w",
        "none",
        "--measure-loopback",
        "--loopback-duration",
        "200ms",
        "-q",
    ]);
    assert!(r.stdout.contains("loopback TCP:"), "{}", r.stdout);
}

#[test]
fn bad_arguments_give_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["-w", "bogus"], "unknown workload \"bogus\""),
        (&["-w", "produce:0"], "at least 1 connection"),
        (&["--record-size", "0"], "at least 1 byte"),
        (&["--record-size", "9..3"], "MIN is larger than MAX"),
        (&["--record-size", "12XB"], "unknown size unit"),
        (&["--record-size", "10", "--verify"], "at least 32 B"),
        (&["--duration", "ten"], "is not a duration"),
        (&["--window", "0"], "--window must be at least 1"),
        (&["--rate=0"], "--rate"),
        (&["--cores", "2", "--pin-cpus", "0"], "one CPU per executor"),
        (&["--inject-fault", "skip"], "--inject-fault needs --verify"),
        (&["--tls-cert", "c.pem"], "--tls-key"),
        (&["--create-topic"], "--topic"),
    ];
    for (args, needle) in cases {
        let r = bench(args);
        assert_eq!(r.code, 2, "{args:?} should be a usage error:\n{}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{}",
            r.stderr
        );
    }
    // Run-time failures are exit 1 with the cause named.
    let port = common::free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    // Nothing listens there: finding a server is retried until `--timeout` (30 s by
    // default), kept short here.
    let r = bench(&["--addr", &addr, "-q", "--duration", "1s", "--timeout", "1s"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("Connection refused"), "{}", r.stderr);
    let r = bench(&["--addr", &addr, "--tls-ca", "/nonexistent/ca.pem"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/ca.pem"), "{}", r.stderr);
    let r = bench(&["--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "EXAMPLES",
        "--workload",
        "--rate",
        "--verify",
        "--measure-loopback",
        "--tls-ca",
        "coordinated omission",
    ] {
        assert!(r.stdout.contains(needle), "--help lacks {needle:?}");
    }
}

/// A run outlives a restart of its server: each connection is dialled again once it has
/// closed, so records are acknowledged again after the restart (without it the run counted
/// nothing but errors from the kill to its end), and every acknowledged record reads back
/// intact. Unary calls and produce streams alike.
#[test]
fn a_run_dials_again_after_its_server_restarts() {
    for kind in ["produce", "produce-stream"] {
        let mut s = Server::start(&[]);
        let addr = s.addr.to_string();
        let run = std::thread::spawn(move || {
            common::bench(&[
                "--addr",
                &addr,
                "--json",
                "-q",
                "-w",
                kind,
                "--rate",
                "200",
                "--duration",
                "5s",
                "--warmup",
                "0s",
                "--verify",
            ])
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        s.restart();
        let r = run.join().expect("bench thread");
        let j = r.json();
        let w = workload(&j, kind);
        // Errors while the server was away, and acknowledgements after it came back: 200/s
        // for the 3 s or so left is far past the ~300 acknowledged before the kill.
        assert_ne!(w["errors"], serde_json::json!({}), "{kind}: {w:#}");
        let v = &j["verify"];
        assert_eq!(v["passed"], true, "{kind}: {v:#}\n{}", r.stderr);
        let acked = v["acked"].as_u64().unwrap_or(0);
        assert!(
            acked > 600,
            "{kind}: only {acked} acknowledged: {v:#}\n{}",
            r.stderr
        );
    }
}
