//! An index on a volume with no block left: every block of an index file is allocated
//! before the file is mapped for writing, so a full disk is an error from `Index::open`,
//! never a SIGBUS on the first store into a page of a sparse file (which kills the process:
//! the kernel has no way to return ENOSPC from a store to memory).
//!
//! Needs root (to mount a small ext4 volume); CI runs as root. Not root: the test says so
//! and passes.

use engine::index::{Entry, Index};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop-mounted ext4 volume, unmounted and removed when dropped. Names start with `pgh-`.
struct Volume {
    image: PathBuf,
    mount: PathBuf,
}

impl Volume {
    fn create(mib: u64) -> Volume {
        let base = std::env::temp_dir().join(format!("pgh-index-{}", std::process::id()));
        let v = Volume {
            image: base.with_extension("img"),
            mount: base.with_extension("mnt"),
        };
        std::fs::File::create(&v.image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image file");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&v.image));
        std::fs::create_dir_all(&v.mount).expect("mount point");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&v.image)
            .arg(&v.mount));
        v
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("run");
    assert!(st.success(), "{cmd:?}: {st}");
}

/// Writes `path` until the volume refuses more.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("fill file");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    while f.write(&chunk).is_ok_and(|n| n > 0) {
        written += chunk.len();
        if written.is_multiple_of(1 << 20) && f.sync_data().is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

#[test]
fn an_index_on_a_full_volume_is_refused_not_a_signal() {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED an_index_on_a_full_volume_is_refused_not_a_signal: it needs root to loop-mount an ext4 volume (CI runs as root)"
        );
        return;
    }
    let vol = Volume::create(16);
    // Opened while there is room: all its blocks are allocated now.
    let mut before = Index::open(&vol.mount.join("before.index"), 4096).expect("open");
    fill(&vol.mount.join("pgh-fill"));

    // Stores into every page of the earlier index need no block: no signal.
    for i in 0..4096u32 {
        let e = Entry {
            relative_offset: i,
            position: i * 8,
            term: 1,
            raft_index: u64::from(i) + 1,
        };
        assert!(before.push(e), "entry {i}");
    }
    before.flush().expect("msync of allocated pages");

    // A new index cannot get its blocks: an error, which the log reports as a full disk.
    match Index::open(&vol.mount.join("after.index"), 4096) {
        Err(e) => assert!(e.is_out_of_space(), "expected ENOSPC, got {e}"),
        Ok(_) => panic!("an index was mapped on a full volume without its blocks"),
    }
}
