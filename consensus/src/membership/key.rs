//! The cluster's gossip key: 32 random bytes that authenticate every gossip packet
//! (HMAC-SHA256) when peer TLS is configured.
//!
//! The node started without `--start-join-addrs` creates it; every other node fetches it once
//! over the peer channel (mutual TLS with a certificate from the peer CA, see [`super::peer`])
//! and keeps it in its data directory, so only holders of a peer certificate ever gossip.
//! Stored as the `.meta` file `gossip-key.meta` (layout in docs/format.md), mode 0600.

use std::path::Path;

use ring::hmac;

use super::MembershipError;

/// Bytes of key material.
pub const KEY_BYTES: usize = 32;
/// File name in the data directory.
pub const KEY_FILE: &str = "gossip-key.meta";

/// A gossip key and what is derived from it.
#[derive(Clone)]
pub struct GossipKey {
    bytes: [u8; KEY_BYTES],
    id: u32,
    hmac: hmac::Key,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GossipKey(id {:08x})", self.id)
    }
}

impl GossipKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> GossipKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let d = digest.as_ref();
        // Never 0: key id 0 marks a packet without authentication.
        let id = u32::from_le_bytes([d[0], d[1], d[2], d[3]]).max(1);
        GossipKey {
            bytes,
            id,
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        }
    }

    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<GossipKey, MembershipError> {
        let bytes: [u8; KEY_BYTES] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .map_err(|_| MembershipError::Random)?
            .expose();
        Ok(GossipKey::from_bytes(bytes))
    }

    /// Names the key in every packet without revealing it (first 4 bytes of its SHA-256),
    /// so that a packet of another cluster is told apart from a forged one.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }

    pub(crate) fn sign(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.hmac, data)
    }

    /// Constant-time check of a (truncated) tag over `data`.
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let full = self.sign(data);
        let full = full.as_ref();
        // Every byte is compared whatever the earlier ones were: no timing oracle for
        // forging a tag byte by byte.
        (16..=full.len()).contains(&tag.len())
            && full.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Reads the key from `dir`: `Ok(None)` when there is none yet. A key file others may
    /// read (written by a version that made it so for a moment, or changed since) is made
    /// its owner's only.
    pub fn load(dir: &Path) -> Result<Option<GossipKey>, MembershipError> {
        let Some(payload) = engine::meta::read(dir, KEY_FILE)? else {
            return Ok(None);
        };
        let path = dir.join(KEY_FILE);
        if readable_by_others(&path) {
            log::warn!(
                "{}: the gossip key was readable by others; now by its owner only",
                path.display()
            );
            restrict(&path)?;
        }
        let bytes: [u8; KEY_BYTES] =
            payload
                .as_slice()
                .try_into()
                .map_err(|_| MembershipError::BadFile {
                    path: dir.join(KEY_FILE),
                    reason: format!("a gossip key is {KEY_BYTES} bytes, not {}", payload.len()),
                })?;
        Ok(Some(GossipKey::from_bytes(bytes)))
    }

    /// Writes the key to `dir` atomically and durably, readable by its owner only from the
    /// file's creation on.
    pub fn store(&self, dir: &Path) -> Result<(), MembershipError> {
        engine::meta::write_private(dir, KEY_FILE, &self.bytes)?;
        Ok(())
    }
}

#[cfg(unix)]
fn restrict(path: &Path) -> Result<(), MembershipError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        MembershipError::Io {
            op: "restricting the permissions of",
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn restrict(_path: &Path) -> Result<(), MembershipError> {
    Ok(())
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        assert!(GossipKey::load(dir.path()).unwrap().is_none());
        let k = GossipKey::generate().unwrap();
        k.store(dir.path()).unwrap();
        let back = GossipKey::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.bytes(), k.bytes());
        assert_eq!(back.id(), k.id());
        let tag = k.sign(b"hello");
        assert!(back.verify(b"hello", &tag.as_ref()[..16]));
        assert!(!back.verify(b"hellO", &tag.as_ref()[..16]));
        assert!(!GossipKey::generate()
            .unwrap()
            .verify(b"hello", &tag.as_ref()[..16]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// The key file is its owner's alone from its creation (no chmod after the rename that a
    /// crash could skip), a leftover `.tmp` made by someone else's mode included; one found
    /// readable by others is tightened at load.
    #[cfg(unix)]
    #[test]
    fn the_key_file_is_never_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let path = dir.path().join(KEY_FILE);
        let tmp = dir.path().join(format!("{KEY_FILE}.tmp"));
        std::fs::write(&tmp, b"leftover").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        let k = GossipKey::generate().unwrap();
        k.store(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(!tmp.exists());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let back = GossipKey::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.bytes(), k.bytes());
        assert_eq!(mode(&path), 0o600);
    }
}
