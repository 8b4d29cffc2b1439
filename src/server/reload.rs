//! Reloading certificates and the ACL without a restart: on SIGHUP, and when a file's
//! modification time, size or inode changes (polled, so it works on every file system and
//! with the rename-into-place that secret managers do).
//!
//! A new file that does not load is logged and ignored: the settings in force stay until a
//! good file replaces it. Certificates and ACL reload independently, so a broken policy does
//! not hold back a renewed certificate.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use net::tls::{ServerTls, ServerTlsFiles};

use super::acl::{AclFiles, Authorizer};

/// How often file metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: Kubernetes swaps a `..data` symlink under mounted secrets.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Files watched for one part (TLS or ACL), with the stamps last seen.
struct Watched {
    files: Vec<PathBuf>,
    seen: Vec<Option<Stamp>>,
}

impl Watched {
    fn new(files: Vec<PathBuf>) -> Watched {
        let seen = files.iter().map(|f| stamp(f)).collect();
        Watched { files, seen }
    }

    /// True once per change. The stamps are updated even if the reload that follows fails,
    /// so a bad file is reported once, not every poll.
    fn changed(&mut self) -> bool {
        let now: Vec<Option<Stamp>> = self.files.iter().map(|f| stamp(f)).collect();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

pub struct Reloader {
    tls: Option<(ServerTlsFiles, Arc<ServerTls>, Watched)>,
    acl: Option<(AclFiles, Arc<Authorizer>, Watched)>,
}

impl Reloader {
    pub fn new(
        tls: Option<(ServerTlsFiles, Arc<ServerTls>)>,
        acl: Option<(AclFiles, Arc<Authorizer>)>,
    ) -> Reloader {
        Reloader {
            tls: tls.map(|(files, live)| {
                let mut watch = vec![files.cert_file.clone(), files.key_file.clone()];
                watch.extend(files.client_ca_file.clone());
                (files, live, Watched::new(watch))
            }),
            acl: acl.map(|(files, live)| {
                let watch = vec![files.model_file.clone(), files.policy_file.clone()];
                (files, live, Watched::new(watch))
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tls.is_none() && self.acl.is_none()
    }

    /// Reloads every part (`all`, for SIGHUP) or only those whose files changed.
    pub fn reload(&mut self, all: bool, why: &str) {
        if let Some((files, live, watched)) = &mut self.tls {
            if watched.changed() || all {
                match files.load() {
                    Ok(config) => {
                        live.replace(config);
                        log::info!(
                            "reloaded TLS certificate {} ({why}); new connections use it",
                            files.cert_file.display()
                        );
                    }
                    Err(e) => log::error!(
                        "reloading TLS settings ({why}) failed, keeping the previous ones: {e}"
                    ),
                }
            }
        }
        if let Some((files, live, watched)) = &mut self.acl {
            if watched.changed() || all {
                match files.load() {
                    Ok(acl) => {
                        let n = acl.len();
                        live.replace(acl);
                        log::info!(
                            "reloaded ACL policy {} ({why}): {n} grants",
                            files.policy_file.display()
                        );
                    }
                    Err(e) => log::error!(
                        "reloading the ACL ({why}) failed, keeping the previous one: {e}"
                    ),
                }
            }
        }
    }

    /// Runs until `hup` disconnects: a message on it is a SIGHUP.
    pub fn run(mut self, hup: Receiver<()>) {
        loop {
            match hup.recv_timeout(POLL_INTERVAL) {
                Ok(()) => {
                    if self.is_empty() {
                        log::info!("SIGHUP: no TLS or ACL files configured, nothing to reload");
                    } else {
                        self.reload(true, "SIGHUP");
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.reload(false, "file changed"),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
