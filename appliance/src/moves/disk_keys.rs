//! The keys that encrypt moved disks at rest on cloud nodes.
//!
//! One random 32-byte key per node disk id, made by the appliance the first
//! time that disk is sent and kept in its data directory
//! (`<data dir>/disk-keys/<id>.key`, mode 0600, directory 0700: data-center
//! side). A node gets a disk's key over mutual TLS before every transfer
//! and every guest start (`PUT /v1/disks/{id}/key`) and keeps it only in
//! memory; the node's files hold only the LUKS-encrypted image.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proto::transfer::WireKey;
use zeroize::Zeroizing;

/// Bytes of a new key.
pub const KEY_LEN: usize = 32;

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum DiskKeyError {
    /// The id cannot name a key file.
    #[error("disk id {0:?} cannot name a key: use [a-z0-9-], 1 to 64 characters")]
    BadId(String),
    /// File I/O failed.
    #[error("disk key store {path}: {source}. Check that the data directory belongs to the user running isthmus")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A key file of the wrong length (damaged).
    #[error("disk key {0} is damaged (not {KEY_LEN} bytes); the disk it encrypts cannot be opened without the original")]
    Damaged(PathBuf),
}

/// The appliance's disk keys.
#[derive(Clone, Debug)]
pub struct DiskKeys {
    dir: PathBuf,
}

impl DiskKeys {
    /// The key store under `data_dir`.
    pub fn new(data_dir: &Path) -> DiskKeys {
        DiskKeys {
            dir: data_dir.join("disk-keys"),
        }
    }

    fn path(&self, id: &str) -> Result<PathBuf, DiskKeyError> {
        let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok || id.starts_with('-') {
            return Err(DiskKeyError::BadId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.key")))
    }

    /// The key of disk `id`, if one was made.
    pub fn get(&self, id: &str) -> Result<Option<WireKey>, DiskKeyError> {
        let path = self.path(id)?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN));
        match std::fs::File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(|source| DiskKeyError::Io {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DiskKeyError::Io { path, source }),
        };
        if bytes.len() != KEY_LEN {
            return Err(DiskKeyError::Damaged(path));
        }
        Ok(Some(WireKey::from_bytes(&bytes)))
    }

    /// The key of disk `id`, made now if there is none. Two callers racing
    /// get the same key: the file is created with a link, which fails if it
    /// already exists.
    pub fn get_or_create(&self, id: &str) -> Result<WireKey, DiskKeyError> {
        if let Some(k) = self.get(id)? {
            return Ok(k);
        }
        let path = self.path(id)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DiskKeyError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key[..])
            .map_err(|_| io(&path)(std::io::Error::other("the OS random source failed")))?;
        let tmp = self.dir.join(format!(".{id}.{}.tmp", std::process::id()));
        crate::pki::write_secret(&tmp, &key[..]).map_err(|e| io(&tmp)(std::io::Error::other(e.to_string())))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&path)(e)),
        }
        self.get(id)?.ok_or_else(|| io(&path)(std::io::ErrorKind::NotFound.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DiskKeys::new(dir.path());
        assert!(keys.get("d1").unwrap().is_none());
        let a = keys.get_or_create("d1").unwrap();
        assert_eq!(keys.get_or_create("d1").unwrap(), a);
        assert_ne!(keys.get_or_create("d2").unwrap(), a);
        assert_eq!(a.to_bytes().unwrap().len(), KEY_LEN);
        let meta = std::fs::metadata(dir.path().join("disk-keys/d1.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let meta = std::fs::metadata(dir.path().join("disk-keys")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::read_dir(dir.path().join("disk-keys")).unwrap().count(),
            2,
            "no temp files left"
        );
        assert!(matches!(keys.get("../x"), Err(DiskKeyError::BadId(_))));
    }
}
