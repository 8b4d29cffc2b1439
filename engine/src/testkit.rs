//! Helpers for tests of this crate and of the crates above it (the `testkit` feature): what a
//! test needs of the machine, kept in one place.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted on a directory (a log's, or a node's data directory),
/// unmounted when dropped: a small volume to fill up. Needs root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (after saying why) when it cannot be mounted: not root, or no tmpfs here.
    pub fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status();
        match st {
            Ok(st) if st.success() => Some(Tmpfs(dir.to_owned())),
            other => {
                println!(
                    "SKIPPED: cannot mount a tmpfs on {} (needs root): {other:?}",
                    dir.display()
                );
                None
            }
        }
    }

    /// Gives the volume a new size, keeping what it holds.
    pub fn resize(&self, bytes: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(st.success(), "remount: {st}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: files a failed test (or an executor still running) holds must not keep it
        // mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
