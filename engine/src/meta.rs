//! Small metadata files replaced atomically: the catalog and, later, Raft's hard state.
//!
//! Byte layout of a `.meta` file (little-endian), documented in `docs/format.md`:
//!
//! ```text
//!  0  u32  magic        0x4154454D ("META")
//!  4  u32  version      1
//!  8  u32  payload_len
//! 12  u32  crc32c       of the payload
//! 16  payload_len bytes
//! ```
//!
//! Replacement: write `<name>.tmp`, fsync it, rename over `<name>`, fsync the directory. A crash
//! leaves either the old or the new file, and perhaps a stray `.tmp`: a partition directory's
//! are removed when its log opens, others are replaced by the next write of that file.

use crate::error::{Error, Result};
use crate::limits::MAX_META_PAYLOAD_BYTES;
use std::io::Write;
use std::path::Path;

const MAGIC: u32 = 0x4154_454D;
const VERSION: u32 = 1;
const HEADER: usize = 16;

/// Writes `payload` to `dir/name` atomically and durably.
pub fn write(dir: &Path, name: &str, payload: &[u8]) -> Result<()> {
    replace(dir, name, payload, false)
}

/// As [`write`], for a secret: the file is readable and writable by its owner only (mode
/// 0600) from its creation, so that no moment (and no crash) leaves it readable by others.
pub fn write_private(dir: &Path, name: &str, payload: &[u8]) -> Result<()> {
    replace(dir, name, payload, true)
}

fn replace(dir: &Path, name: &str, payload: &[u8], private: bool) -> Result<()> {
    if payload.len() > MAX_META_PAYLOAD_BYTES {
        return Err(Error::InvalidArgument(format!(
            "metadata {name} of {} bytes exceeds {MAX_META_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = encode(payload);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        // A leftover `.tmp` keeps the mode it was made with: made afresh.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &tmp, e)),
        }
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut f = options
        .open(&tmp)
        .map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(&bytes)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming into place", &path, e))?;
    sync_dir(dir)
}

/// The bytes of a metadata file holding `payload` (at most [`MAX_META_PAYLOAD_BYTES`]).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&MAGIC.to_le_bytes());
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Reads `dir/name`: `Ok(None)` when absent, an error naming the file when damaged.
pub fn read(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let path = dir.join(name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    // Never more than the largest valid file, whatever the file's size says: a damaged or
    // foreign file of gigabytes is refused after reading one byte past that bound.
    let most = (HEADER + MAX_META_PAYLOAD_BYTES) as u64;
    let mut bytes = Vec::new();
    file.take(most + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading", &path, e))?;
    if bytes.len() as u64 > most {
        return Err(Error::corrupt(
            &path,
            8,
            format!("larger than any metadata file (over {most} bytes)"),
        ));
    }
    decode(&path, &bytes).map(|p| Some(p.to_vec()))
}

/// The payload of the metadata file `path` whose bytes are `bytes`, checked; an error naming
/// the file when it is damaged.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8]> {
    let field = |at: usize| -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    if bytes.len() < HEADER {
        return Err(Error::corrupt(
            path,
            0,
            "metadata file shorter than its header",
        ));
    }
    if field(0) != MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a proglog metadata file (bad magic)",
        ));
    }
    if field(4) != VERSION {
        return Err(Error::corrupt(
            path,
            4,
            format!("unknown metadata version {}", field(4)),
        ));
    }
    let len = field(8) as usize;
    if len > MAX_META_PAYLOAD_BYTES || HEADER + len != bytes.len() {
        return Err(Error::corrupt(
            path,
            8,
            format!("payload length {len} does not match the file"),
        ));
    }
    let payload = &bytes[HEADER..];
    if crc32c::crc32c(payload) != field(12) {
        return Err(Error::corrupt(path, 12, "checksum mismatch"));
    }
    Ok(payload)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path(), "hs.meta").expect("read"), None);
        write(dir.path(), "hs.meta", b"one").expect("write");
        write(dir.path(), "hs.meta", b"two").expect("write");
        assert_eq!(
            read(dir.path(), "hs.meta").expect("read").as_deref(),
            Some(&b"two"[..])
        );
        assert!(!dir.path().join("hs.meta.tmp").exists());
    }

    #[test]
    fn damage_is_reported_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "x.meta", b"payload").expect("write");
        let path = dir.path().join("x.meta");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let err = read(dir.path(), "x.meta").expect_err("must fail");
        assert!(err.to_string().contains("x.meta"), "{err}");
        std::fs::write(&path, b"garbage").expect("write");
        assert!(read(dir.path(), "x.meta").is_err());
    }

    /// A huge file (sparse: gigabytes of nothing) is refused without reading it whole.
    #[test]
    fn a_file_larger_than_any_metadata_is_refused_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "x.meta", b"payload").expect("write");
        let path = dir.path().join("x.meta");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(8 << 30).expect("sparse 8 GiB");
        let err = read(dir.path(), "x.meta").expect_err("must fail");
        assert!(
            err.to_string().contains("larger than any metadata file"),
            "{err}"
        );
    }
}
