//! Segments a cut takes out of a log (retention of a prefix, truncation of a suffix, a reset)
//! give their open files back to the shard's budget of open sealed segments even when
//! deleting their files fails midway: a segment dropped with its files in its budget slot
//! stayed counted open for good, and every other log of the shard got that much less of the
//! budget (it closed their files sooner, down to none).
//!
//! Deleting fails here because the first doomed segment's data file is made immutable
//! (`chattr +i`: not even root may unlink it). After the failed cut the log is closed, which
//! gives back every file it holds: the budget must then count nothing open.

use bytes::Bytes;
use engine::{Durability, FileBudget, Log, LogConfig, NewRecord};
use std::path::{Path, PathBuf};
use std::process::Command;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_bytes: 64 * 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 16 * 1024,
        write_behind_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// A file made immutable until this is dropped.
struct Immutable(PathBuf);

impl Immutable {
    /// `None` (after saying why) where the file system has no such attribute.
    fn set(path: &Path) -> Option<Immutable> {
        let st = Command::new("chattr").arg("+i").arg(path).status();
        match st {
            Ok(st) if st.success() => Some(Immutable(path.to_owned())),
            other => {
                println!(
                    "SKIPPED: cannot make {} immutable: {other:?}",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    /// `truncate_prefix` to the fourth segment's base: the first three go.
    Prefix,
    /// `truncate_suffix` inside the third segment: every segment after it goes.
    Suffix,
    /// `reset`: every segment goes.
    Reset,
}

/// The segment files' base offsets, oldest first.
fn bases(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn segments_cut_out_give_their_files_back_when_deleting_them_fails() {
    for cut in [Cut::Prefix, Cut::Suffix, Cut::Reset] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("log");
        let skipped = engine::run_local(tmp.path(), move || async move {
            let budget = FileBudget::new(64);
            let log = Log::open(&dir, config(), std::rc::Rc::clone(&budget))
                .await
                .expect("open");
            let value = Bytes::from(vec![7u8; 4000]);
            while log.stats().segments < 8 {
                log.append(&[NewRecord::new(value.clone())])
                    .await
                    .expect("append");
            }
            // Every sealed segment's files open in the budget: read one record of each.
            let bases = bases(&dir);
            for &b in &bases[..bases.len() - 1] {
                log.read(b).await.expect("read a sealed segment");
            }
            let open = budget.open_segments();
            assert!(open >= 6, "{cut:?}: {open} sealed segments open");
            let doomed_first = match cut {
                Cut::Prefix | Cut::Reset => bases[0],
                Cut::Suffix => bases[3],
            };
            let Some(_guard) = Immutable::set(&dir.join(format!("{doomed_first:020}.log"))) else {
                return true;
            };
            let r = match cut {
                Cut::Prefix => log.truncate_prefix(bases[3]).await.map(|_| ()),
                Cut::Suffix => log.truncate_suffix(bases[2] + 1).await,
                Cut::Reset => log.reset(log.next_offset() + 10).await,
            };
            let e = r.expect_err("a cut whose file deletion fails reports it");
            println!("{cut:?}: {e}");
            let _ = log.close().await;
            assert_eq!(
                budget.open_segments(),
                0,
                "{cut:?}: files counted open after the log closed ({open} were open before the cut)"
            );
            false
        })
        .expect("executor");
        if skipped {
            return;
        }
    }
}
