//! What the engine's black-box tests share: a small topic configuration and an engine of two
//! unpinned shards.

use bytes::Bytes;
use engine::{Engine, EngineConfig, LogConfig, NewRecord};
use std::path::{Path, PathBuf};

/// Small segments, records and batches, so that tests roll segments quickly.
pub fn topic_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_record_bytes: 4096,
        max_batch_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// Two unpinned shards in `dir`, topics made with [`topic_config`] by default.
pub fn engine_config(dir: &Path) -> EngineConfig {
    EngineConfig {
        shards: 2,
        pin: false,
        default_log: topic_config(),
        ..EngineConfig::new(dir)
    }
}

/// `n` records of 100 bytes, the i-th filled with the byte `i + 1`.
pub fn records_of_100_bytes(n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| NewRecord::new(Bytes::from(vec![i as u8 + 1; 100])))
        .collect()
}

/// The directory of partition `p` of topic `t` in the data directory `dir`.
pub fn t_partition_dir(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("topics/t/{p}"))
}

/// Runs `f` on an executor of the engine's kind (`engine::run_local`) with a fresh log
/// directory, `<a temporary directory>/log`, removed afterwards.
pub fn with_log_dir<F, Fut>(f: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    engine::run_local(tmp.path(), move || f(dir)).expect("executor");
}

/// The files of `dir` whose names end with `suffix` (`.log`: the segment data files),
/// sorted (oldest segment first).
pub fn segment_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// An engine started with [`engine_config`].
pub fn start(dir: &Path) -> Engine {
    Engine::start(engine_config(dir)).unwrap_or_else(|e| panic!("start: {e}"))
}

/// The name by which libtest knows test `test` of the caller's module: `module::test` (the
/// caller passes `module_path!()`, which starts with the crate's name; libtest's names do
/// not). For tests that re-execute this binary to run one test alone (`--exact`).
pub fn test_name(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    }
}

/// Copies the files of directory `from` into `to`, made afresh (a copy of a log to damage or
/// open as a crash left it).
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}
