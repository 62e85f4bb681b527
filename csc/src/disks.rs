//! The node's stored disks: `disks/<id>.img`, each a LUKS qcow2 that only a
//! block transfer ([`crate::blocks`]) writes, through `qemu-storage-daemon`
//! with the disk's key. There is no other way for a disk to arrive: the old
//! plain upload (`PUT /v1/disks/{id}` with raw bytes) is gone, so no plaintext
//! disk reaches the provider's storage by any route.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::state_dir;

/// Errors about stored disks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id is not `[a-z0-9-]{1,64}`.
    #[error("disk id {0:?} is not usable: use 1 to 64 characters of a-z 0-9 -")]
    BadId(String),
    /// The disks directory could not be read or cleaned.
    #[error("cannot clean up {0}")]
    Clean(PathBuf, #[source] io::Error),
}

/// A disk id: 1..=64 of `[a-z0-9-]`. Safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskId(String);

impl FromStr for DiskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(DiskId(s.to_string()))
        } else {
            Err(Error::BadId(s.to_string()))
        }
    }
}

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl DiskId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The node's disk images.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    blocks: Arc<crate::blocks::BlockStore>,
}

impl DiskStore {
    /// Disks under `dir` (which exists).
    pub fn new(dir: PathBuf) -> Self {
        DiskStore {
            blocks: Arc::new(crate::blocks::BlockStore::new(dir.clone())),
            dir,
        }
    }

    /// Block transfers into this store and its block index.
    pub fn blocks(&self) -> &Arc<crate::blocks::BlockStore> {
        &self.blocks
    }

    /// The image file of a disk (whether or not it exists).
    pub fn image_path(&self, id: &DiskId) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    /// True when a finished (verified, encrypted) image of this disk is stored.
    pub fn exists(&self, id: &DiskId) -> bool {
        self.image_path(id).is_file()
    }

    /// Removes the `<id>.part` files that the plain upload of earlier
    /// versions left behind when it was interrupted: plaintext that nothing
    /// reads any more.
    pub fn clean_partial(&self) -> Result<(), Error> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::Clean(self.dir.clone(), e))?;
        for ent in rd.flatten() {
            let p = ent.path();
            if p.extension().is_some_and(|e| e == "part") {
                tracing::info!(path = %p.display(), "removing a partial plain disk upload left by an earlier version");
                state_dir::remove_if_exists(&p).map_err(|e| Error::Clean(p.clone(), io::Error::other(e.to_string())))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["d0", "web1-disk-0", &"a".repeat(64)] {
            assert!(ok.parse::<DiskId>().is_ok(), "{ok}");
        }
        for bad in ["", "../x", "A", "a_b", "a.img", &"a".repeat(65), "a/b"] {
            assert!(bad.parse::<DiskId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn clean_partial_removes_leftover_uploads_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("old.part"), b"plain bytes").unwrap();
        std::fs::write(d.path().join("kept.img"), b"x").unwrap();
        let store = DiskStore::new(d.path().to_path_buf());
        store.clean_partial().unwrap();
        assert!(!d.path().join("old.part").exists());
        assert!(store.exists(&"kept".parse().unwrap()));
    }
}
