//! LUKS-encrypted qcow2 images opened outside a guest: a
//! `qemu-storage-daemon` per image, its key handed over QMP as a `secret`
//! object (never argv, environment or a file; deleted once the LUKS header
//! is open), the decrypted disk exported over NBD on a unix socket in a
//! private directory, and an [`NbdClient`] on it. The cloud node writes moved
//! disks through this, so their plaintext exists only in the memory of the
//! node and of the daemon, never in a file.
//!
//! The daemon is a child of this process. If this process is killed, the
//! daemon lingers with the image locked; [`EncryptedDisk::open`] kills a
//! daemon left in the same directory first, and [`reap_stale`] clears a
//! whole directory of them (call it at start).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::disk_key::DiskKey;
use crate::nbd::{NbdClient, NbdError};
use crate::qemu::luks::{create_encrypted_image, ImageSource, LuksError};
use crate::qemu::qmp::{Qmp, QmpError};

/// The daemon binary (Debian: qemu-utils).
pub const STORAGE_DAEMON: &str = "qemu-storage-daemon";

const SECRET_ID: &str = "isthmus-key";
const NODE: &str = "disk";
const PIDFILE: &str = "pid";
const QMP_SOCKET: &str = "qmp.sock";
const NBD_SOCKET: &str = "nbd.sock";
const START_PATIENCE: Duration = Duration::from_secs(20);
const QUIT_PATIENCE: Duration = Duration::from_secs(10);

/// How the image is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and write; takes the image's write lock.
    ReadWrite,
    /// Read only, sharing the image with a writer (a running guest): reads
    /// may see a state being changed, so check what is read.
    ReadShared,
}

/// Errors opening or using an encrypted image.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The private directory could not be prepared.
    #[error("cannot prepare {path} for the storage daemon: {source}")]
    Dir {
        /// Directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not be started.
    #[error("cannot start {STORAGE_DAEMON}: {0}; install qemu-utils (tests/setup/deps.sh)")]
    Spawn(#[source] std::io::Error),
    /// Its monitor failed.
    #[error("{STORAGE_DAEMON} for {path}: {source}")]
    Qmp {
        /// Image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: QmpError,
    },
    /// The key does not open the image (or the image is not LUKS qcow2).
    #[error("cannot open encrypted image {path}: {detail}; is it the disk's own key from the appliance?")]
    Unlock {
        /// Image.
        path: PathBuf,
        /// QEMU's message.
        detail: String,
    },
    /// The image could not be created.
    #[error(transparent)]
    Create(#[from] LuksError),
    /// Block I/O over NBD failed.
    #[error(transparent)]
    Nbd(#[from] NbdError),
}

/// An encrypted image opened by a storage daemon, read and written in plaintext
/// through NBD.
#[derive(Debug)]
pub struct EncryptedDisk {
    path: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    qmp: Option<Qmp>,
    nbd: Option<NbdClient>,
}

impl EncryptedDisk {
    /// Creates `path` as an empty LUKS qcow2 of `size` bytes unlocked by
    /// `key` and opens it read-write; `dir` is the daemon's private directory.
    pub fn create(path: &Path, size: u64, key: &DiskKey, dir: &Path) -> Result<EncryptedDisk, StorageError> {
        create_encrypted_image(path, &ImageSource::Blank { size_bytes: size }, key)?;
        EncryptedDisk::open(path, key, dir, Access::ReadWrite)
    }

    /// Opens the LUKS qcow2 at `path` with `key`; `dir` (created 0700) holds
    /// the daemon's sockets and pid file. A daemon left in `dir` by an
    /// earlier process is killed first.
    pub fn open(path: &Path, key: &DiskKey, dir: &Path, access: Access) -> Result<EncryptedDisk, StorageError> {
        EncryptedDisk::spawn(path, Some(key), "qcow2", dir, access)
    }

    /// Opens a plain (unencrypted) image of QEMU block driver `format`
    /// (`qcow2`, `vmdk`, `raw`, …) the same way, e.g. to read a source disk's
    /// guest-visible content without converting it to a raw copy first.
    pub fn open_plain(path: &Path, format: &str, dir: &Path, access: Access) -> Result<EncryptedDisk, StorageError> {
        EncryptedDisk::spawn(path, None, format, dir, access)
    }

    fn spawn(path: &Path, key: Option<&DiskKey>, format: &str, dir: &Path, access: Access) -> Result<EncryptedDisk, StorageError> {
        prepare_dir(dir)?;
        kill_stale(dir);
        let qmp_sock = dir.join(QMP_SOCKET);
        let nbd_sock = dir.join(NBD_SOCKET);
        for f in [&qmp_sock, &nbd_sock] {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StorageError::Dir { path: f.clone(), source }),
            }
        }
        let mut cmd = Command::new(STORAGE_DAEMON);
        crate::xts::apply(&mut cmd);
        let child = cmd
            .arg("--chardev")
            .arg(format!("socket,id=m0,path={},server=on,wait=off", qmp_sock.display()))
            .args(["--monitor", "chardev=m0"])
            .arg("--pidfile")
            .arg(dir.join(PIDFILE))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(StorageError::Spawn)?;
        let mut d = EncryptedDisk {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            child: Some(child),
            qmp: None,
            nbd: None,
        };
        d.start(key, format, access, &qmp_sock, &nbd_sock)?;
        Ok(d)
    }

    fn start(&mut self, key: Option<&DiskKey>, format: &str, access: Access, qmp_sock: &Path, nbd_sock: &Path) -> Result<(), StorageError> {
        let qmp_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Qmp { path, source }
        };
        let mut q = Qmp::connect_retry(qmp_sock, START_PATIENCE).map_err(qmp_err(&self.path))?;
        if let Some(key) = key {
            q.add_secret(SECRET_ID, &key.passphrase()).map_err(qmp_err(&self.path))?;
        }
        let ro = access == Access::ReadShared;
        let mut file = json!({ "driver": "file", "filename": self.path.to_string_lossy() });
        let mut args = json!({ "driver": format, "node-name": NODE });
        if key.is_some() {
            args["encrypt"] = json!({ "format": "luks", "key-secret": SECRET_ID });
        }
        if ro {
            for o in [&mut file, &mut args] {
                o["read-only"] = json!(true);
                o["force-share"] = json!(true);
            }
        }
        args["file"] = file;
        let opened = q.execute("blockdev-add", Some(args));
        // The passphrase is not needed once the LUKS header is open.
        let deleted = match key {
            Some(_) => q.execute("object-del", Some(json!({ "id": SECRET_ID }))),
            None => Ok(serde_json::Value::Null),
        };
        match opened {
            Ok(_) => {}
            Err(QmpError::Command { desc, .. }) => {
                return Err(StorageError::Unlock {
                    path: self.path.clone(),
                    detail: desc,
                })
            }
            Err(e) => return Err(qmp_err(&self.path)(e)),
        }
        deleted.map_err(qmp_err(&self.path))?;
        q.execute(
            "nbd-server-start",
            Some(json!({ "addr": { "type": "unix", "data": { "path": nbd_sock.to_string_lossy() } } })),
        )
        .map_err(qmp_err(&self.path))?;
        q.execute(
            "block-export-add",
            Some(json!({ "type": "nbd", "id": "export0", "node-name": NODE, "name": NODE, "writable": !ro })),
        )
        .map_err(qmp_err(&self.path))?;
        self.qmp = Some(q);
        self.nbd = Some(NbdClient::connect(nbd_sock, NODE)?);
        Ok(())
    }

    fn nbd(&mut self) -> &mut NbdClient {
        self.nbd.as_mut().expect("open() connects NBD before returning")
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Guest-visible size in bytes.
    pub fn size(&self) -> u64 {
        self.nbd.as_ref().map_or(0, NbdClient::size)
    }

    /// Which XTS code the daemon encrypts with (see [`crate::xts`]); `None`
    /// once it is gone.
    pub fn xts(&self) -> Option<crate::xts::XtsImpl> {
        self.child.as_ref().and_then(|c| crate::xts::in_process(c.id()))
    }

    /// Reads plaintext at `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), StorageError> {
        Ok(self.nbd().read_at(buf, offset)?)
    }

    /// Writes plaintext at `offset` (encrypted by the daemon).
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), StorageError> {
        Ok(self.nbd().write_at(data, offset)?)
    }

    /// Makes `len` bytes at `offset` read as zeros.
    pub fn write_zeroes(&mut self, offset: u64, len: usize) -> Result<(), StorageError> {
        Ok(self.nbd().write_zeroes(offset, len)?)
    }

    /// Makes every write so far durable (qcow2 metadata and data).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        Ok(self.nbd().flush()?)
    }

    /// Flushes and stops the daemon; the image is closed cleanly.
    pub fn close(mut self) -> Result<(), StorageError> {
        let flushed = match self.nbd.as_mut() {
            Some(n) if !n.read_only() => n.flush(),
            _ => Ok(()),
        };
        self.shutdown();
        Ok(flushed?)
    }

    fn shutdown(&mut self) {
        self.nbd = None;
        if let Some(mut q) = self.qmp.take() {
            let _ = q.quit();
        }
        if let Some(mut child) = self.child.take() {
            let t0 = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if t0.elapsed() < QUIT_PATIENCE => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        for f in [QMP_SOCKET, NBD_SOCKET, PIDFILE] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for EncryptedDisk {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StorageError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Kills a storage daemon an earlier process left in `dir` (its pid file
/// names a live `qemu-storage-daemon` whose command line names `dir`).
fn kill_stale(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join(PIDFILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let c = String::from_utf8_lossy(&c);
        c.contains(STORAGE_DAEMON) && c.contains(&*dir.to_string_lossy())
    });
    if !ours {
        return;
    }
    tracing::warn!(pid, dir = %dir.display(), "killing a storage daemon left by an earlier run");
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists() && t0.elapsed() < QUIT_PATIENCE {
        // Our own child would stay a zombie; an orphan is reaped by init.
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every storage daemon left in the subdirectories of `root` by an
/// earlier process and removes those directories.
pub fn reap_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            reap(&p);
        }
    }
}

/// Kills the storage daemon an earlier process left in `dir` (if any) and
/// removes the directory.
pub fn reap(dir: &Path) {
    kill_stale(dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_encrypted_at_rest_and_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.qcow2");
        let key = DiskKey::from_bytes(vec![0x5a; 32]).unwrap();
        let pattern: Vec<u8> = b"ISTHMUS-PLAINTEXT-MARKER-".iter().copied().cycle().take(1 << 20).collect();
        let mut d = EncryptedDisk::create(&img, 8 << 20, &key, &dir.path().join("sd")).unwrap();
        assert_eq!(d.size(), 8 << 20);
        d.write_at(&pattern, 3 << 20).unwrap();
        d.write_zeroes(3 << 20, 4096).unwrap();
        let mut back = vec![0u8; 1 << 20];
        d.read_at(&mut back, 3 << 20).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert_eq!(&back[4096..], &pattern[4096..]);
        d.close().unwrap();
        assert!(!dir.path().join("sd").exists(), "private dir removed");
        let file = std::fs::read(&img).unwrap();
        assert!(
            !file.windows(25).any(|w| w == b"ISTHMUS-PLAINTEXT-MARKER-"),
            "plaintext in the image file"
        );

        // Shared read-only open while a writer holds the image.
        let mut w = EncryptedDisk::open(&img, &key, &dir.path().join("w"), Access::ReadWrite).unwrap();
        let mut r = EncryptedDisk::open(&img, &key, &dir.path().join("r"), Access::ReadShared).unwrap();
        r.read_at(&mut back, 3 << 20).unwrap();
        assert_eq!(&back[4096..], &pattern[4096..]);
        assert!(r.write_at(&back, 0).is_err());
        drop((r, w.flush()));
        drop(w);

        let wrong = DiskKey::from_bytes(vec![0xa5; 32]).unwrap();
        let e = EncryptedDisk::open(&img, &wrong, &dir.path().join("x"), Access::ReadWrite).unwrap_err();
        assert!(matches!(e, StorageError::Unlock { .. }), "{e}");
    }

    #[test]
    fn a_daemon_left_behind_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("p.qcow2");
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&img)
            .arg("1M")
            .status()
            .unwrap();
        assert!(ok.success());
        let sd = dir.path().join("sd");
        let mut d = EncryptedDisk::open_plain(&img, "qcow2", &sd, Access::ReadShared).unwrap();
        let mut b = [1u8; 512];
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 512]);
        // As if this process had been killed: the daemon outlives the handle.
        let mut child = d.child.take().unwrap();
        d.qmp = None;
        std::mem::forget(d);
        let pid = child.id();
        reap(&sd);
        let _ = child.wait();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists(),
            "daemon {pid} still runs"
        );
        assert!(!sd.exists());
    }
}
