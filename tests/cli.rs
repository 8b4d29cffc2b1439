//! The command-line client against a real server.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn produce_and_consume_round_trip() {
    let s = TestServer::start();
    let (ok, out, err) = s.cli(&["produce", "one", "two"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "0\n1\n");
    let (ok, out, err) = s.cli(&["produce"], Some("three\nfour\n"));
    assert!(ok, "{err}");
    assert_eq!(out, "2\n3\n");
    let (ok, out, err) = s.cli(&["produce", "--batch", "--json"], Some("five\nsix\n"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"base_offset":4,"count":2,"last_offset":5}"#);
    // The word after a bare --batch is its N: a value there is refused, saying how to send
    // it, and nothing is appended; after `--` the values are records.
    let (ok, _, err) = s.cli(&["produce", "--batch", "seven", "eight"], None);
    assert!(
        !ok && err.contains("--batch 1000 seven") && err.contains("--batch -- seven"),
        "{err}"
    );
    let (ok, _, err) = s.cli(&["produce", "--batch", "0", "seven"], None);
    assert!(!ok && err.contains("at least 1 record"), "{err}");
    // (`--addr` before `--`: `s.cli` would add it after, as two more values.)
    let out = Command::new(BIN)
        .args(["produce", "--addr", &s.addr.to_string(), "--batch", "--"])
        .args(["seven", "eight"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "6\n7\n");

    let (ok, out, err) = s.cli(&["consume"], None);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "0\tone\n1\ttwo\n2\tthree\n3\tfour\n4\tfive\n5\tsix\n6\tseven\n7\teight\n"
    );
    let (ok, out, err) = s.cli(&["consume", "--from", "1", "--count", "2", "--json"], None);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[0]["value"], "two");
    assert_eq!(lines[1]["value"], "three");
    let (ok, out, _) = s.cli(&["consume", "--from", "4", "--to", "5"], None);
    assert!(ok);
    assert_eq!(out, "4\tfive\n");
    // Past the end: the error says what the partition holds.
    let (ok, _, err) = s.cli(&["consume", "--from", "100"], None);
    assert!(!ok);
    assert!(
        err.contains("OUT_OF_RANGE") && err.contains("default/0 holds offsets 0 to 7"),
        "{err}"
    );

    // A bare --batch (1000 records a call) of records that do not fit one 4 MiB message
    // together: each call takes what fits (it failed with the message limit before).
    let line = "b".repeat(900 * 1024);
    let lines = format!("{line}\n").repeat(5);
    let (ok, out, err) = s.cli(&["produce", "--batch", "--json"], Some(&lines));
    assert!(ok, "{err}");
    let calls: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 2, "{out}");
    assert_eq!(
        (&calls[0]["base_offset"], &calls[0]["count"]),
        (&8.into(), &4.into())
    );
    assert_eq!(
        (&calls[1]["base_offset"], &calls[1]["count"]),
        (&12.into(), &1.into())
    );
    // A record the server refuses ends the command saying what became of its batch.
    let big = "x".repeat(2 << 20);
    let (ok, _, err) = s.cli(
        &["produce", "--batch", "3"],
        Some(&format!("a\n{big}\nc\n")),
    );
    assert!(!ok);
    assert!(
        err.contains("RESOURCE_EXHAUSTED")
            && err
                .contains("the batch of 3 record(s) after the last offset printed were not stored")
            && err.contains("no input after it was sent"),
        "{err}"
    );
}

/// `proglog consume --follow --count N` against the server, its output piped.
fn tail(s: &TestServer, count: u32) -> std::process::Child {
    Command::new(BIN)
        .args(["consume", "--follow", "--count", &count.to_string()])
        .args(["--addr", &s.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a [`tail`] printed, once it ended successfully.
fn tail_output(t: std::process::Child) -> String {
    let out = t.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn consume_follow_prints_later_records() {
    let s = TestServer::start();
    s.cli(&["produce", "first"], None);
    let follower = tail(&s, 3);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = s.cli(&["produce", "second", "third"], None);
    assert!(ok, "{err}");
    assert_eq!(tail_output(follower), "0\tfirst\n1\tsecond\n2\tthird\n");
}

/// A tail that waited longer than its retry budget (10 s) without a record, then lost its
/// server, opens again when the server returns: the budget counts from the break, not from
/// the last record (it gave up at once).
#[test]
fn an_idle_tail_whose_server_restarts_goes_on() {
    let mut s = TestServer::start();
    s.cli(&["produce", "first"], None);
    let follower = tail(&s, 2);
    std::thread::sleep(Duration::from_secs(11));
    s.kill();
    s.spawn();
    assert!(s.wait_serving(Duration::from_secs(20)), "{}", s.log());
    let (ok, _, err) = s.cli(&["produce", "second"], None);
    assert!(ok, "{err}");
    assert_eq!(tail_output(follower), "0\tfirst\n1\tsecond\n");
}

#[test]
fn topics_servers_and_health() {
    let s = TestServer::start();
    let (ok, out, err) = s.cli(
        &[
            "topics",
            "create",
            "logs",
            "--partitions",
            "2",
            "--durability",
            "interval:50",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("topic logs: 2 partition(s), replication factor 1, durability interval:50"),
        "{out}"
    );
    // A small segment caps the topic's record size rather than refusing the topic.
    let (ok, out, err) = s.cli(
        &["topics", "create", "small", "--segment-bytes", "64KiB"],
        None,
    );
    assert!(ok && out.contains("segment-bytes 65536"), "{out}{err}");
    let (ok, _, err) = s.cli(&["produce", "--topic", "small", &"x".repeat(70_000)], None);
    assert!(
        !ok && err.contains("exceeds the limit of 65472 bytes"),
        "{err}"
    );
    let (ok, _, err) = s.cli(&["topics", "create", "tiny", "--segment-bytes", "10"], None);
    assert!(
        !ok && err.contains("segment_bytes 10 (the segment size) is outside 64 KiB to 2 GiB"),
        "{err}"
    );
    let (ok, _, err) = s.cli(&["topics", "delete", "small"], None);
    assert!(ok, "{err}");
    // Values that cannot mean anything are refused, not read as a default.
    let (ok, _, err) = s.cli(&["topics", "create", "none", "--partitions", "0"], None);
    assert!(
        !ok && err.contains("invalid value '0' for '--partitions"),
        "{err}"
    );
    let (ok, _, err) = s.cli(&["consume", "--from", "3", "--to", "1"], None);
    assert!(!ok && err.contains("--to 1 is before --from 3"), "{err}");
    let (ok, out, _) = s.cli(&["topics", "list"], None);
    assert!(ok);
    assert_eq!(out, "default\nlogs\n");
    s.cli(
        &["produce", "--topic", "logs", "--partition", "1", "x"],
        None,
    );
    let (ok, out, _) = s.cli(&["topics", "describe", "logs", "--json"], None);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["partition_stats"][1]["next_offset"], 1);
    let (ok, _, err) = s.cli(&["topics", "create", "logs"], None);
    assert!(!ok && err.contains("ALREADY_EXISTS"), "{err}");
    let (ok, out, _) = s.cli(&["topics", "delete", "logs"], None);
    assert!(ok && out.contains("deleted logs"));
    // The topic clients that name none use is not deleted.
    let (ok, _, err) = s.cli(&["topics", "delete", "default"], None);
    assert!(
        !ok && err.contains("INVALID_ARGUMENT") && err.contains("serves the clients"),
        "{err}"
    );
    let (ok, _, err) = s.cli(&["consume", "--topic", "logs"], None);
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");

    let (ok, out, _) = s.cli(&["servers"], None);
    assert!(ok);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let addr = s.addr.to_string();
    assert_eq!(
        rows,
        [
            vec!["ID", "RPC_ADDR", "ROLE"],
            vec!["test-node", &addr, "leader"]
        ],
        "{out}"
    );
    let (ok, out, _) = s.cli(&["health"], None);
    assert!(ok);
    assert_eq!(out, "SERVING\n");
}

/// `topics alter`: a live topic's retention limits change, each alone; the partitions apply
/// them at once (no wait for the periodic pass), and a restart keeps them.
#[test]
fn topics_alter_changes_retention_at_once_and_for_good() {
    let mut s = TestServer::start();
    let (ok, _, err) = s.cli(&["topics", "create", "t", "--segment-bytes", "64KiB"], None);
    assert!(ok, "{err}");
    let line = "x".repeat(1000);
    let lines = format!("{line}\n").repeat(1000);
    let (ok, _, err) = s.cli(&["produce", "--topic", "t", "--batch", "20"], Some(&lines));
    assert!(ok, "{err}");
    let describe = |s: &TestServer| -> serde_json::Value {
        let (ok, out, err) = s.cli(&["topics", "describe", "t", "--json"], None);
        assert!(ok, "{err}");
        serde_json::from_str(out.trim()).unwrap()
    };
    let before = describe(&s);
    assert_eq!(before["partition_stats"][0]["lowest_offset"], 0);
    assert!(before["partition_stats"][0]["size_bytes"].as_u64().unwrap() > 1_000_000);

    let (ok, out, err) = s.cli(
        &[
            "topics",
            "alter",
            "t",
            "--retention-bytes",
            "256KiB",
            "--json",
        ],
        None,
    );
    assert!(ok, "{err}");
    let after: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(after["retention_bytes"], 256 * 1024);
    assert_eq!(after["retention_ms"], 0);
    assert_eq!(after["segment_bytes"], 65536, "the other settings stay");
    let lowest = after["partition_stats"][0]["lowest_offset"]
        .as_u64()
        .unwrap();
    let size = after["partition_stats"][0]["size_bytes"].as_u64().unwrap();
    assert!(
        lowest > 0 && size <= 256 * 1024 + 65536,
        "applied before the answer: {after}"
    );
    // What is left reads back from the new lowest offset; before it is out of range.
    let (ok, out, err) = s.cli(
        &[
            "consume",
            "--topic",
            "t",
            "--from",
            &lowest.to_string(),
            "--count",
            "1",
        ],
        None,
    );
    assert!(ok && out.starts_with(&format!("{lowest}\t{line}")), "{err}");
    let (ok, _, err) = s.cli(
        &["consume", "--topic", "t", "--from", "0", "--count", "1"],
        None,
    );
    assert!(!ok && err.contains("OUT_OF_RANGE"), "{err}");

    // One limit alone: the other stays.
    let (ok, out, err) = s.cli(
        &["topics", "alter", "t", "--retention-ms", "86400000"],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("retention-bytes 262144, retention-ms 86400000"),
        "{out}"
    );
    // Nothing to change, a bad value, an unknown topic: refused, saying why.
    let (ok, _, err) = s.cli(&["topics", "alter", "t"], None);
    assert!(!ok && err.contains("--retention-bytes"), "{err}");
    let (ok, _, err) = s.cli(&["topics", "alter", "t", "--retention-ms", "soon"], None);
    assert!(!ok && err.contains("not a number of milliseconds"), "{err}");
    let (ok, _, err) = s.cli(
        &["topics", "alter", "nope", "--retention-bytes", "1MiB"],
        None,
    );
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");

    s.restart();
    let kept = describe(&s);
    assert_eq!(kept["retention_bytes"], 256 * 1024, "{kept}");
    assert_eq!(kept["retention_ms"], 86_400_000, "{kept}");
    assert_eq!(kept["partition_stats"][0]["lowest_offset"], lowest);
    let (ok, out, err) = s.cli(
        &[
            "topics",
            "alter",
            "t",
            "--retention-bytes",
            "unlimited",
            "--retention-ms",
            "forever",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("retention-bytes unlimited, retention-ms forever"),
        "{out}"
    );
}

#[test]
fn cli_reports_an_unreachable_server() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // A refused connection is retried until `--timeout` (10 s by default), kept short here.
    let (ok, _, err) = run_cli(addr, &["health", "--timeout", "1"], None);
    assert!(!ok);
    // Said once, then the final error; the waiting is not silent.
    let refused = format!("connect to {addr}: Connection refused");
    assert_eq!(err.matches(&refused).count(), 2, "{err}");
    assert!(
        err.starts_with("proglog: warning: no server reachable")
            && err.contains("trying again for up to 1 s"),
        "{err}"
    );
    assert!(
        err.contains("proglog: UNAVAILABLE: no connection available"),
        "{err}"
    );
}

/// The server address (and the TLS files) may come from the environment, as etcdctl's
/// ETCDCTL_ENDPOINTS do; a flag still wins.
#[test]
fn the_address_may_come_from_the_environment() {
    let s = TestServer::start();
    let out = Command::new(BIN)
        .args(["produce", "from-env"])
        .env("PROGLOG_ADDR", s.addr.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    let out = Command::new(BIN)
        .args(["consume", "--addr", &s.addr.to_string()])
        .env("PROGLOG_ADDR", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\tfrom-env\n");
}

/// A node that takes connections and never answers (paused, wedged) first in `--addr`: calls
/// any node answers, and the discovery of a partition's leader, go on to the next address
/// instead of waiting out the deadline there.
#[test]
fn calls_any_node_answers_pass_a_node_that_never_answers() {
    let s = TestServer::start();
    // Its kernel completes TCP handshakes; nothing ever reads or writes.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = format!("{},{}", hung.local_addr().unwrap(), s.addr);
    for args in [
        &["servers"][..],
        &["health"],
        &["topics", "list"],
        &["topics", "describe", "default"],
        // Produce and consume find the partition's leader: discovery moves on too.
        &["produce", "one"],
        &["produce", "--batch", "1", "two"],
        &["consume", "--from", "0", "--count", "2"],
    ] {
        // Without going on, each ends DEADLINE_EXCEEDED at the hung node after 8 s.
        let out = Command::new(BIN)
            .args(args)
            .args(["--addr", &addrs, "--timeout", "8"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
    }
}

/// Waits for `child` to exit, killing it and failing the test if it has not within `cap`
/// (far past the deadline under test: only a hang gets there).
fn finish_within(mut child: std::process::Child, cap: Duration) -> std::process::Output {
    let until = std::time::Instant::now() + cap;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("still running {cap:?} after it started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A produce stream whose server stops answering mid-stream (a paused process) ends once
/// `--timeout` passes with a record unanswered, saying its outcome is unknown, instead of
/// waiting for ever.
#[test]
fn a_produce_stream_its_server_stops_answering_ends_at_the_timeout() {
    use std::io::{BufRead, Write};
    let s = TestServer::start();
    let mut child = Command::new(BIN)
        .args(["produce", "--addr", &s.addr.to_string(), "--timeout", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(b"answered\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "0\n");
    s.pause();
    stdin.write_all(b"unanswered\n").unwrap();
    let out = finish_within(child, Duration::from_secs(60));
    s.resume();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("DEADLINE_EXCEEDED")
            && err.contains("1 record(s)")
            && err.contains("unknown outcome"),
        "{err}"
    );
}

/// `--timeout` bounds a produce or consume whose only node takes connections and never
/// answers (paused): finding the partition's leader uses the time, and no call is started
/// after it with none left (which took a second `--timeout`). Nothing was sent.
#[test]
fn a_paused_node_costs_one_timeout_not_two() {
    let s = TestServer::start();
    s.pause();
    let timeout = 4.0;
    for args in [
        &["produce", "never-sent"][..],
        &["produce", "--batch", "1", "never-sent"],
        &["consume", "--from", "0"],
    ] {
        let started = std::time::Instant::now();
        let child = Command::new(BIN)
            .args(args)
            .args([
                "--addr",
                &s.addr.to_string(),
                "--timeout",
                &timeout.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = finish_within(child, Duration::from_secs(60));
        let took = started.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains("DEADLINE_EXCEEDED"), "{args:?}: {err}");
        assert!(!err.contains("unknown outcome"), "{args:?}: {err}");
        // A deadline is a contract, not a speed: one --timeout and the process's start and
        // exit, never a second --timeout.
        assert!(
            took < 1.75 * timeout,
            "{args:?} took {took:.1} s with --timeout {timeout}: {err}"
        );
    }
    s.resume();
    // Nothing reached the log: the next record is the first.
    let (ok, out, err) = s.cli(&["produce", "first"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "0\n");
}

/// `proglog produce` against the server, reading records from a pipe.
fn producer(s: &TestServer) -> std::process::Child {
    Command::new(BIN)
        .args(["produce", "--addr", &s.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cli")
}

/// Standard input is read as lines of bytes: a value need not be UTF-8, and "\r\n" ends a
/// line as "\n" does.
#[test]
fn produce_takes_lines_of_bytes() {
    use std::io::Write;
    let s = TestServer::start();
    let mut child = producer(&s);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"\xff\xfe\x00bin\ncrlf\r\nplain\n")
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n1\n2\n");
    let (ok, out, err) = s.cli(&["consume", "--json"], None);
    assert!(ok, "{err}");
    let values: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Not UTF-8: base64 of ff fe 00 62 69 6e.
    assert_eq!(values[0]["value_base64"], "//4AYmlu", "{out}");
    assert_eq!(values[1]["value"], "crlf", "{out}");
    assert_eq!(values[2]["value"], "plain", "{out}");
}

/// An address that is not HOST:PORT is refused before anything is tried.
#[test]
fn cli_refuses_an_address_without_a_port() {
    let out = Command::new(BIN)
        .args(["health", "--addr", "127.0.0.9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("INVALID_ARGUMENT: server address \"127.0.0.9\" is not HOST:PORT"),
        "{err}"
    );
}

/// Standard output that cannot be written is the command's error, never a panic: a full
/// disk under a redirect (here /dev/full) fails the command with a message, and a reader
/// that went away (`| head -1`) ends it quietly and successfully.
#[test]
fn cli_output_that_cannot_be_written_is_an_error_not_a_panic() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let s = TestServer::start();
    let values: String = (0..2000).map(|i| format!("value-{i}\n")).collect();
    let (ok, _, err) = s.cli(&["produce"], Some(&values));
    assert!(ok, "{err}");

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(BIN)
        .args(["consume", "--from", "0", "--addr", &s.addr.to_string()])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("run consume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("writing standard output: No space left on device"),
        "{err}"
    );

    // A reader that takes one line and goes: the next writes meet a closed pipe.
    let mut child = Command::new(BIN)
        .args(["consume", "--from", "0", "--addr", &s.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consume");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 8];
    stdout.read_exact(&mut first).expect("first bytes");
    drop(stdout);
    let out = child.wait_with_output().expect("consume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(&first, b"0\tvalue-", "the first record came through");
}

/// A line of standard input too large for one message (over the client's 4 MiB, so it
/// cannot even be sent) ends `proglog produce` with an error saying so, after the server has
/// answered the records before it; nothing after it is sent. It used to wait forever: the
/// client refused to send the message and then waited for the server, which had nothing to
/// answer.
/// A record over the server's record limit (but within one message): the server refuses it
/// and ends the stream, and the CLI says what became of it and of what followed it.
#[test]
fn a_refused_record_ends_produce_saying_what_was_not_stored() {
    let s = TestServer::start();
    let big = "a".repeat((1 << 20) + 24);
    let input = format!("small1\n{big}\nsmall2\n");
    let (ok, out, err) = s.cli(&["produce"], Some(&input));
    assert!(!ok, "{out}{err}");
    assert_eq!(out, "0\n", "{err}");
    assert!(
        err.contains("RESOURCE_EXHAUSTED")
            && err.contains("were not stored (the refused record and those sent after it)"),
        "{err}"
    );
    let (ok, out, err) = s.cli(&["consume"], None);
    assert!(ok && out == "0\tsmall1\n", "{out}{err}");
}

#[test]
fn a_record_too_large_for_a_message_ends_produce_with_an_error() {
    use std::io::Write;
    use std::time::Instant;
    let s = TestServer::start();
    let mut input = b"before\n".to_vec();
    input.extend(std::iter::repeat_n(b'q', 5 << 20));
    input.extend_from_slice(b"\nafter\n");
    let mut child = producer(&s);
    let mut stdin = child.stdin.take().expect("stdin");
    // The client may stop reading once it has refused the line: a failed write is fine.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("proglog produce still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let _ = writer.join();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout} {stderr}");
    assert_eq!(
        stdout, "0\n",
        "the record before it is acknowledged: {stderr}"
    );
    assert!(
        stderr.contains("RESOURCE_EXHAUSTED") && stderr.contains("does not fit in one message"),
        "{stderr}"
    );
    let (ok, out, err) = s.cli(&["consume"], None);
    assert!(ok, "{err}");
    assert_eq!(
        out, "0\tbefore\n",
        "nothing after the refused line was sent"
    );
}

/// The cluster's own topic gets one answer whatever the call (it was NOT_FOUND for some,
/// INVALID_ARGUMENT for others), and no topic name is `default` for the admin calls too, as
/// for the Log calls.
#[test]
fn the_controller_topic_and_no_topic_name_get_one_answer_each() {
    let s = TestServer::start();
    for args in [
        &["topics", "describe", "__cluster"][..],
        &["topics", "alter", "__cluster", "--retention-ms", "1"],
        &["topics", "delete", "__cluster"],
        &["produce", "--topic", "__cluster", "x"],
        &["consume", "--topic", "__cluster"],
    ] {
        let (ok, _, err) = s.cli(args, None);
        assert!(
            !ok && err.contains("INVALID_ARGUMENT") && err.contains("is the cluster's own"),
            "{args:?}: {err}"
        );
    }
    let (ok, out, err) = s.cli(&["topics", "describe", "", "--json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["name"], "default", "{out}");
    let (ok, _, err) = s.cli(&["topics", "delete", ""], None);
    assert!(
        !ok && err.contains("INVALID_ARGUMENT") && err.contains("default"),
        "{err}"
    );
}
