//! The node's state directory: every file the cloud node keeps, their names,
//! their modes and how they are written.
//!
//! ```text
//! STATE_DIR/                     0700
//!   lock                         flock(2) held while a node serves this dir
//!   node-key.pem          0600   ECDSA P-256 TLS key (PKCS#8 PEM), server + client
//!   noise-key             0600   X25519 static private key of the data plane (32 raw bytes)
//!   noise-key.pub                its public half, base64
//!   bootstrap-cert.pem           self-signed certificate served until enrolment
//!   bootstrap-fingerprint        hex SHA-256 of that certificate's DER (not a secret)
//!   node-cert.pem                certificate the appliance issued (after enrolment)
//!   ca.pem                       the appliance's CA: the only issuer clients may come from
//!   appliance-noise.pub          the appliance's static Noise public key, base64
//!   bridge-psk            0600   Noise psk2 pre-shared key (32 raw bytes)
//!   enrolled.json                name + time; written LAST, its presence means "enrolled"
//!   guests.json                  guests this node runs (re-attached after a restart)
//!   disks/<id>.img               disk images: LUKS qcow2 written only by block transfers
//!   disks/.transfers/            transfers in progress (encrypted qcow2, block journal, manifest)
//!   guests/<name>/               QEMU run directories (QMP socket, serial log, pid)
//! ```
//!
//! The node's private keys live on its own disk in 0600 files, readable only
//! by the user the node runs as (root). The cloud image is meant to keep this
//! directory on an encrypted data partition; until then, anyone with the
//! provider's view of the root disk can read them.
//!
//! Every file is replaced atomically (write `*.tmp`, fsync, rename, fsync the
//! directory), so a crash leaves either the old or the new content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Mode of files holding private keys.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of files anyone on the node may read.
pub const PUBLIC_MODE: u32 = 0o644;

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory could not be created.
    #[error("cannot create directory {0}")]
    CreateDir(PathBuf, #[source] io::Error),
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// A file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    /// A file could not be removed.
    #[error("cannot remove {0}")]
    Remove(PathBuf, #[source] io::Error),
    /// Another process holds the directory.
    #[error("state directory {0} is in use by another isthmus-node process; stop it first")]
    Locked(PathBuf),
    /// The lock could not be taken for another reason.
    #[error("cannot lock state directory {0}: {1}")]
    Lock(PathBuf, nix::errno::Errno),
    /// A file's content is not what the node wrote.
    #[error("{path} is damaged: {what}; restore it from a backup or re-enrol the node")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

/// The state directory of one cloud node. Holding a value means holding the
/// directory's lock: no second node process serves the same directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: Option<Flock<File>>,
}

impl StateDir {
    /// Creates (0700) and locks the directory, with its `disks/` and
    /// `guests/` subdirectories.
    pub fn open(root: &Path) -> Result<Self, Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::CreateDir(root.to_path_buf(), e))?;
        let lock_path = root.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(SECRET_MODE)
            .open(&lock_path)
            .map_err(|e| Error::Write(lock_path.clone(), e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::Locked(root.to_path_buf())
            } else {
                Error::Lock(root.to_path_buf(), errno)
            }
        })?;
        let dir = StateDir {
            root: root.to_path_buf(),
            _lock: Some(lock),
        };
        for sub in [dir.disks_dir(), dir.guests_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sub)
                .map_err(|e| Error::CreateDir(sub.clone(), e))?;
        }
        Ok(dir)
    }

    /// Opens the directory for reading only, without the lock (for `status`).
    pub fn inspect(root: &Path) -> Self {
        StateDir {
            root: root.to_path_buf(),
            _lock: None,
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The TLS private key (PKCS#8 PEM).
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node-key.pem")
    }
    /// The data-plane static private key (32 raw bytes).
    pub fn noise_key(&self) -> PathBuf {
        self.root.join("noise-key")
    }
    /// The data-plane static public key (base64).
    pub fn noise_public(&self) -> PathBuf {
        self.root.join("noise-key.pub")
    }
    /// The self-signed bootstrap certificate (PEM).
    pub fn bootstrap_cert(&self) -> PathBuf {
        self.root.join("bootstrap-cert.pem")
    }
    /// The bootstrap certificate's fingerprint (hex).
    pub fn bootstrap_fingerprint(&self) -> PathBuf {
        self.root.join("bootstrap-fingerprint")
    }
    /// The certificate the appliance issued (PEM).
    pub fn node_cert(&self) -> PathBuf {
        self.root.join("node-cert.pem")
    }
    /// The appliance's CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The appliance's static Noise public key (base64).
    pub fn appliance_noise(&self) -> PathBuf {
        self.root.join("appliance-noise.pub")
    }
    /// The Noise pre-shared key (32 raw bytes).
    pub fn bridge_psk(&self) -> PathBuf {
        self.root.join("bridge-psk")
    }
    /// The enrolment record; its presence means the node is enrolled.
    pub fn enrolled(&self) -> PathBuf {
        self.root.join("enrolled.json")
    }
    /// The persisted guest list.
    pub fn guests_file(&self) -> PathBuf {
        self.root.join("guests.json")
    }
    /// Where uploaded disks live.
    pub fn disks_dir(&self) -> PathBuf {
        self.root.join("disks")
    }
    /// Where guests' run directories live.
    pub fn guests_dir(&self) -> PathBuf {
        self.root.join("guests")
    }

    /// Reads a whole file; `Ok(None)` when it does not exist.
    pub fn read_optional(&self, path: &Path) -> Result<Option<Vec<u8>>, Error> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Read(path.to_path_buf(), e)),
        }
    }

    /// Reads a whole file that must exist.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, Error> {
        fs::read(path).map_err(|e| Error::Read(path.to_path_buf(), e))
    }

    /// Reads a UTF-8 file that must exist.
    pub fn read_string(&self, path: &Path) -> Result<String, Error> {
        String::from_utf8(self.read(path)?).map_err(|_| Error::Corrupt {
            path: path.to_path_buf(),
            what: "not UTF-8 text".into(),
        })
    }

    /// Reads a file that holds exactly 32 raw bytes (a key).
    pub fn read_key32(&self, path: &Path) -> Result<[u8; 32], Error> {
        let bytes = self.read(path)?;
        bytes.as_slice().try_into().map_err(|_| Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("holds {} bytes, a key has 32", bytes.len()),
        })
    }

    /// Replaces `path` atomically with `data`, created with `mode`.
    pub fn write_atomic(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
        write_atomic(path, data, mode)
    }

    /// True once enrolment finished.
    pub fn is_enrolled(&self) -> bool {
        self.enrolled().exists()
    }
}

/// Replaces `path` atomically with `data`: write `path.tmp` with `mode`,
/// fsync it, rename it over `path`, fsync the parent directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let werr = |e| Error::Write(path.to_path_buf(), e);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A stale tmp file from a crash may carry a wider mode: start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Remove(tmp, e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    // The umask may have narrowed the mode further; a public file must stay readable.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    drop(f);
    fs::rename(&tmp, path).map_err(werr)?;
    sync_parent(path).map_err(werr)
}

/// fsyncs the directory holding `path`, making a rename or unlink durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Removes a file; a missing file is not an error.
pub fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Remove(path.to_path_buf(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_atomic(&p, b"one", SECRET_MODE).unwrap();
        write_atomic(&p, b"two", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!d.path().join("k.tmp").exists());
    }

    #[test]
    fn second_open_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = StateDir::open(d.path()).unwrap();
        match StateDir::open(d.path()) {
            Err(Error::Locked(_)) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn key32_rejects_wrong_length() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        s.write_atomic(&s.bridge_psk(), &[1u8; 31], SECRET_MODE).unwrap();
        assert!(matches!(s.read_key32(&s.bridge_psk()), Err(Error::Corrupt { .. })));
    }
}
