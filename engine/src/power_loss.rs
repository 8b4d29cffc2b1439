//! TEST-ONLY: a journal of what each completed fdatasync made durable, so that a fault
//! harness can play a power loss after `kill -9`.
//!
//! A process killed on a shared kernel loses nothing the kernel already has: every byte
//! written survives, synced or not, so `kill -9` alone never tests that an acknowledgement
//! waited for fdatasync. With this hook on, the engine appends one line per change to
//! `<dir>/synced-lengths`: `LENGTH<TAB>PATH`, the bytes of segment data file PATH that the
//! last completed fdatasync covered. After killing the node, the harness calls
//! [`simulate_power_loss`], which cuts every data file back to that length (zero-padding the
//! active segment's last block, as it was on the device when that sync completed); the node
//! then restarts on exactly what a power cut could have left.
//!
//! Why a journal and not a change to the write path: nothing the engine writes or acknowledges
//! changes, only what the harness is told. The line is written (one `write(2)` on an
//! O_APPEND file, which survives `kill -9`) after fdatasync returns and before any waiter
//! is woken, so an acknowledgement can never be sent for bytes the journal does not cover.
//!
//! Off unless the environment variable [`ENV`] names a directory that already holds the
//! marker file [`MARKER`], which nothing in proglog creates. Set without the marker, the
//! engine refuses to start ([`check`]), so a stray variable cannot slow a production node
//! silently or fill its disk with a journal. It is not a flag and not a config-file key.
//! When on, the engine logs a warning at start. If a journal line cannot be written the
//! process aborts: a harness reading an incomplete journal would drop acknowledged data and
//! report a loss the engine never caused.
//!
//! What it models: the contents of segment data files (the engine's only files written in
//! place). Not modelled: index files (the active segment's index is rebuilt from its data on
//! open; a sealed one is synced when sealed), metadata files (replaced by write, fsync,
//! rename, directory fsync: atomic either way), directory entries (created and synced with
//! the segment; removals are not undone).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::segment;

/// The environment variable that turns the hook on: a directory holding [`MARKER`].
pub const ENV: &str = "PROGLOG_TEST_POWER_LOSS_DIR";
/// The file that must exist in that directory, put there by the harness.
pub const MARKER: &str = "POWER-LOSS-TEST-ONLY";
/// The journal's file name in that directory.
pub const JOURNAL: &str = "synced-lengths";

struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    /// Lengths recorded by this process: a raise is written only when it raises, so
    /// pipelined syncs that complete out of order never move a file's length back.
    lengths: HashMap<PathBuf, u64>,
}

static STATE: OnceLock<std::result::Result<Option<Journal>, String>> = OnceLock::new();

fn state() -> &'static std::result::Result<Option<Journal>, String> {
    STATE.get_or_init(|| {
        let Some(dir) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let dir = PathBuf::from(dir);
        if !dir.join(MARKER).is_file() {
            return Err(format!(
                "{ENV} is set to {} but {MARKER} is not there: this test-only power-loss hook \
                 is never for production; unset {ENV}",
                dir.display()
            ));
        }
        let path = dir.join(JOURNAL);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        log::warn!(
            "TEST-ONLY power-loss journal on ({}): every fdatasync is recorded; never run \
             production with {ENV} set",
            path.display()
        );
        Ok(Some(Journal {
            dir,
            inner: Mutex::new(Inner {
                file,
                lengths: HashMap::new(),
            }),
        }))
    })
}

/// Whether the hook is on (`Ok(Some(dir))`), off (`Ok(None)`), or misconfigured (an error
/// the engine refuses to start with).
pub fn check() -> Result<Option<PathBuf>> {
    match state() {
        Ok(j) => Ok(j.as_ref().map(|j| j.dir.clone())),
        Err(e) => Err(Error::InvalidArgument(e.clone())),
    }
}

/// Whether the hook is on. Cheap after the first call.
pub fn enabled() -> bool {
    matches!(state(), Ok(Some(_)))
}

/// A completed fdatasync of `path` covered at least its first `len` bytes.
pub(crate) fn synced_at_least(path: &Path, len: u64) {
    record(path, len, false);
}

/// `path` was cut to `len` bytes and synced (a sealed segment, a repaired or truncated
/// tail, a new empty file).
pub(crate) fn synced_exactly(path: &Path, len: u64) {
    record(path, len, true);
}

fn record(path: &Path, len: u64, exact: bool) {
    let Ok(Some(j)) = state() else {
        return;
    };
    let mut inner = j.inner.lock().unwrap_or_else(|e| e.into_inner());
    let current = inner.lengths.get(path).copied();
    let new = match current {
        Some(c) if !exact => c.max(len),
        _ => len,
    };
    if current == Some(new) {
        return;
    }
    inner.lengths.insert(path.to_owned(), new);
    let line = format!("{new}\t{}\n", path.display());
    if let Err(e) = inner.file.write_all(line.as_bytes()) {
        log::error!(
            "TEST-ONLY power-loss journal in {}: {e}; aborting, since a harness would drop \
             durable data",
            j.dir.display()
        );
        std::process::abort();
    }
}

/// The last length the journal in `dir` records for each file.
pub fn read_journal(dir: &Path) -> std::io::Result<HashMap<PathBuf, u64>> {
    let text = match std::fs::read_to_string(dir.join(JOURNAL)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut out = HashMap::new();
    // A line cut short (the process died inside the write) has no newline: ignored.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let Some((len, path)) = line.trim_end_matches('\n').split_once('\t') else {
            continue;
        };
        if let Ok(len) = len.parse::<u64>() {
            out.insert(PathBuf::from(path), len);
        }
    }
    Ok(out)
}

/// What [`simulate_power_loss`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerLoss {
    pub files: usize,
    /// Bytes written after the last completed fdatasync and dropped, over all files: from
    /// the synced length to the last non-zero byte.
    pub bytes_dropped: u64,
    /// Zero bytes after those (space the log allocated ahead and zeroed), dropped too.
    pub zeros_dropped: u64,
    /// Files found shorter than their journal length (left as they are).
    pub shorter: Vec<PathBuf>,
}

/// Cuts every segment data file under `data_dir` back to what the journal in `journal_dir`
/// says its last completed fdatasync covered. A data file the journal does not name was
/// created (empty, durably) and never synced since: it is emptied. The last segment of each
/// log directory is zero-padded to a whole block, as the engine leaves an active segment;
/// earlier (sealed) segments end exactly at their length. Rewrites the journal with the
/// lengths now on disk, so it does not grow without bound over many power losses. The node
/// must not be running.
pub fn simulate_power_loss(journal_dir: &Path, data_dir: &Path) -> std::io::Result<PowerLoss> {
    let journal = read_journal(journal_dir)?;
    let mut logs: BTreeMap<PathBuf, Vec<(u64, PathBuf)>> = BTreeMap::new();
    collect_data_files(data_dir, &mut logs)?;
    let mut out = PowerLoss::default();
    let mut kept = String::new();
    for files in logs.values_mut() {
        files.sort();
        let last = files.len().saturating_sub(1);
        for (i, (_, path)) in files.iter().enumerate() {
            let synced = journal.get(path).copied().unwrap_or(0);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            let len = f.metadata()?.len();
            out.files += 1;
            if len < synced {
                out.shorter.push(path.clone());
                kept.push_str(&format!("{len}\t{}\n", path.display()));
                continue;
            }
            let end = if i == last {
                segment::align_up(synced)
            } else {
                synced
            };
            let written = last_nonzero_end(&f, synced, len)?;
            out.bytes_dropped += written - synced;
            out.zeros_dropped += len - written;
            // Shrink to the synced length, then grow with zeros to the block's end: the
            // bytes after it in that block were zeros when the sync completed.
            f.set_len(synced)?;
            f.set_len(end)?;
            f.sync_all()?;
            kept.push_str(&format!("{synced}\t{}\n", path.display()));
        }
    }
    let tmp = journal_dir.join(format!("{JOURNAL}.tmp"));
    std::fs::write(&tmp, kept)?;
    std::fs::rename(&tmp, journal_dir.join(JOURNAL))?;
    Ok(out)
}

/// The end of the last non-zero byte of `f` in `from..len` (`from` if there is none).
fn last_nonzero_end(f: &std::fs::File, from: u64, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = from;
    let mut pos = from;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let n = ((len - pos) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], pos)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    Ok(end)
}

fn collect_data_files(
    dir: &Path,
    logs: &mut BTreeMap<PathBuf, Vec<(u64, PathBuf)>>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if ty.is_dir() {
            collect_data_files(&path, logs)?;
        } else if ty.is_file() {
            let name = entry.file_name();
            if let Some((base, "log")) = segment::parse_file_name(&name.to_string_lossy()) {
                logs.entry(dir.to_owned()).or_default().push((base, path));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keeps_the_last_complete_line_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(JOURNAL),
            "10\t/a/0.log\n20\t/b/0.log\n5\t/a/0.log\n99\t/b/0.l",
        )
        .expect("write");
        let j = read_journal(dir.path()).expect("read");
        assert_eq!(j.get(Path::new("/a/0.log")), Some(&5));
        assert_eq!(j.get(Path::new("/b/0.log")), Some(&20));
        assert_eq!(j.len(), 2);
    }

    #[test]
    fn cuts_sealed_segments_exactly_and_pads_the_active_one() {
        let journal = tempfile::tempdir().expect("tempdir");
        let data = tempfile::tempdir().expect("tempdir");
        let log = data.path().join("topics/t/0");
        std::fs::create_dir_all(&log).expect("mkdir");
        let sealed = segment::data_path(&log, 0);
        let active = segment::data_path(&log, 100);
        let unnamed = segment::data_path(&data.path().join("topics/t/1"), 0);
        std::fs::create_dir_all(unnamed.parent().expect("parent")).expect("mkdir");
        std::fs::write(&sealed, vec![1u8; 5000]).expect("write");
        let mut written = vec![2u8; 9000];
        written.resize(9000 + 8192, 0);
        std::fs::write(&active, written).expect("write");
        std::fs::write(&unnamed, vec![3u8; 4096]).expect("write");
        std::fs::write(
            journal.path().join(JOURNAL),
            format!("5000\t{}\n100\t{}\n", sealed.display(), active.display()),
        )
        .expect("write");
        let r = simulate_power_loss(journal.path(), data.path()).expect("power loss");
        assert_eq!(r.files, 3);
        assert_eq!(std::fs::read(&sealed).expect("read"), vec![1u8; 5000]);
        let a = std::fs::read(&active).expect("read");
        assert_eq!(a.len(), 4096);
        assert!(a[..100].iter().all(|&b| b == 2) && a[100..].iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(&unnamed).expect("stat").len(), 0);
        assert_eq!(r.bytes_dropped, (9000 - 100) + 4096);
        assert_eq!(r.zeros_dropped, 8192);
        // The journal now says what is on disk.
        let j = read_journal(journal.path()).expect("read");
        assert_eq!(j.get(&active), Some(&100));
        assert_eq!(j.get(&unnamed), Some(&0));
    }
}
