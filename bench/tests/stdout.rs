//! The bench binaries' reports on a standard output that cannot be written (`/dev/full`: a
//! full disk under a redirect) end with the cause and a failing exit code; `print!` panicked.
//! A reader that went away early (`| head`) is not an error.

use std::process::{Command, Output, Stdio};

const BENCH: &str = env!("CARGO_BIN_EXE_proglog-bench");
const ENGINE_BENCH: &str = env!("CARGO_BIN_EXE_proglog-engine-bench");
const CHAOS: &str = env!("CARGO_BIN_EXE_proglog-chaos");

fn to_dev_full(cmd: &mut Command) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    cmd.stdout(full).output().expect("run")
}

fn assert_reported(out: &Output, program: &str, code: i32) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(&format!(
            "{program}: writing standard output: No space left on device"
        )),
        "{err}"
    );
}

#[test]
fn bench_report_that_cannot_be_written_is_an_error_not_a_panic() {
    let out = to_dev_full(Command::new(BENCH).args([
        "-w",
        "none",
        "--measure-loopback",
        "--loopback-duration",
        "100ms",
        "-q",
    ]));
    assert_reported(&out, "proglog-bench", 1);
}

#[test]
fn engine_bench_output_that_cannot_be_written_is_an_error_not_a_panic() {
    let out = to_dev_full(Command::new(ENGINE_BENCH).arg("--help"));
    assert_reported(&out, "proglog-engine-bench", 1);
}

/// A history of one run with no operations: the checker finds nothing, and says so.
fn empty_history() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(
        &mut f,
        br#"{"type":"run","partitions":1,"nodes":["node-1"],"end_ms":1.0}"#,
    )
    .expect("write");
    f
}

#[test]
fn chaos_output_that_cannot_be_written_is_an_error_not_a_panic() {
    let h = empty_history();
    let out = to_dev_full(Command::new(CHAOS).arg("--check-history").arg(h.path()));
    assert_reported(&out, "proglog-chaos", 2);
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    let h = empty_history();
    let mut child = Command::new(CHAOS)
        .arg("--check-history")
        .arg(h.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    // Close the read end before the report is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
