//! Small loop-mounted ext4 volumes, one per node, that a ballast file fills up.
//!
//! The image is a sparse file named `pgc-<node>.img` in the run's directory (only what is
//! written takes disk space), formatted with no blocks reserved for root (the node runs as
//! root and would otherwise write into them), attached to a loop device and mounted in the
//! run's directory. Teardown finds leftover devices by their image's name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::sys::{sh, PREFIX};

const BALLAST: &str = "ballast";

/// One mounted volume.
#[derive(Debug)]
pub struct Volume {
    pub image: PathBuf,
    pub device: String,
    pub mount: PathBuf,
}

impl Volume {
    /// A new volume of `mib` MiB for `name`, mounted at `dir/<name>-vol`.
    pub fn create(dir: &Path, name: &str, mib: u64) -> Result<Volume> {
        let image = dir.join(format!("{PREFIX}{name}.img"));
        let mount = dir.join(format!("{name}-vol"));
        let f = std::fs::File::create(&image).with_context(|| format!("{}", image.display()))?;
        f.set_len(mib << 20)?;
        drop(f);
        let img = image.to_string_lossy().into_owned();
        sh(&["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", &img])?;
        let device = sh(&["losetup", "--find", "--show", &img])?
            .trim()
            .to_owned();
        std::fs::create_dir_all(&mount)?;
        let v = Volume {
            image,
            device,
            mount,
        };
        sh(&["mount", &v.device, &v.mount.to_string_lossy()])?;
        Ok(v)
    }

    /// Fills every free block with a ballast file. Returns its size.
    pub fn fill(&self) -> Result<u64> {
        let path = self.mount.join(BALLAST);
        let free = free_bytes(&self.mount)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        // fallocate of everything free may fail for the last few blocks (metadata needs
        // some); then take what is left in smaller steps.
        let mut want = free;
        let mut len = f.metadata()?.len();
        while want >= 4096 {
            // SAFETY: fallocate(2) on a descriptor we own; extends the file.
            let r = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    len as libc::off_t,
                    want as libc::off_t,
                )
            };
            if r == 0 {
                len += want;
            } else {
                want /= 2;
            }
        }
        f.sync_all()?;
        Ok(len)
    }

    /// Removes the ballast.
    pub fn free(&self) -> Result<()> {
        match std::fs::remove_file(self.mount.join(BALLAST)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Unmounts and detaches; removes the image unless `keep`.
    pub fn destroy(&self, keep: bool) {
        let m = self.mount.to_string_lossy();
        if sh(&["umount", &m]).is_err() {
            let _ = sh(&["umount", "-l", &m]);
        }
        let _ = sh(&["losetup", "-d", &self.device]);
        if !keep {
            let _ = std::fs::remove_file(&self.image);
            let _ = std::fs::remove_dir(&self.mount);
        }
    }
}

/// Bytes a root-owned writer can still allocate on the file system of `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs is plain old data; all zeroes is valid and statvfs(2) fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct that live for the call.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        anyhow::bail!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bfree * st.f_frsize)
}

/// Unmounts and detaches every loop device whose image is named `pgc-*`.
pub fn cleanup_leftovers() {
    let Ok(list) = sh(&[
        "losetup",
        "--list",
        "--noheadings",
        "--output",
        "NAME,BACK-FILE",
    ]) else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in list.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(back)) = (f.next(), f.next()) else {
            continue;
        };
        let is_ours = Path::new(back)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX));
        if !is_ours {
            continue;
        }
        for m in mounts.lines() {
            let mut parts = m.split_whitespace();
            if parts.next() == Some(dev) {
                if let Some(point) = parts.next() {
                    if sh(&["umount", point]).is_err() {
                        let _ = sh(&["umount", "-l", point]);
                    }
                }
            }
        }
        if let Err(e) = sh(&["losetup", "-d", dev]) {
            eprintln!("warning: {e}");
        }
    }
}
