//! Disk images the appliance uploads: streamed to `disks/<id>.part` while the
//! SHA-256 is computed on the way, compared with the sender's digest, then
//! fsynced and renamed to `disks/<id>.img`. Nothing is buffered beyond a few
//! chunks; a failed or mismatching upload leaves no file behind.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use proto::api::DiskReceived;
use sha2::{Digest, Sha256};

use crate::state_dir::{self, SECRET_MODE};

/// Largest disk accepted in one upload: 64 GiB.
pub const MAX_DISK_BYTES: u64 = 64 << 30;

/// Chunks queued between the network and the writer thread.
const QUEUE_CHUNKS: usize = 16;

/// Errors receiving a disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id is not `[a-z0-9-]{1,64}`.
    #[error("disk id {0:?} is not usable: use 1 to 64 characters of a-z 0-9 -")]
    BadId(String),
    /// The digest header is not 64 hex digits.
    #[error("{header} must be the hex SHA-256 (64 hex digits) of the upload, got {value:?}")]
    BadDigest {
        /// Header name.
        header: &'static str,
        /// What was sent.
        value: String,
    },
    /// The upload is larger than [`MAX_DISK_BYTES`].
    #[error("disk upload is larger than the limit of {MAX_DISK_BYTES} bytes (64 GiB)")]
    TooLarge,
    /// Not enough free space for the announced size.
    #[error("disk upload of {needed} bytes does not fit: {available} bytes free under {dir}")]
    NoSpace {
        /// Bytes announced.
        needed: u64,
        /// Bytes free.
        available: u64,
        /// The disks directory.
        dir: PathBuf,
    },
    /// Another upload of the same id is running.
    #[error("an upload of disk {0} is already in progress")]
    Busy(String),
    /// The body stream failed (client went away, bad framing).
    #[error("disk upload was interrupted after {received} bytes: {detail}")]
    Body {
        /// Bytes received before the failure.
        received: u64,
        /// What went wrong.
        detail: String,
    },
    /// Received bytes do not hash to the sender's digest.
    #[error("disk {id}: received {bytes} bytes with SHA-256 {actual}, but the sender said {expected}; the upload was discarded")]
    DigestMismatch {
        /// Disk id.
        id: String,
        /// Bytes received.
        bytes: u64,
        /// The sender's digest.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// Writing the file failed.
    #[error("cannot write disk file {0}")]
    Write(PathBuf, #[source] io::Error),
    /// The writer thread died.
    #[error("disk writer task failed: {0}")]
    Task(String),
}

impl Error {
    /// True when the failure is the node's disk being full.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Write(_, e) => e.kind() == io::ErrorKind::StorageFull,
            _ => false,
        }
    }
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

/// A SHA-256 digest as sent in [`proto::api::SHA256_HEADER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Parses 64 hex digits (either case).
    pub fn parse_header(value: &str) -> Result<Self, Error> {
        let bad = || Error::BadDigest {
            header: proto::api::SHA256_HEADER,
            value: value.chars().take(80).collect(),
        };
        let mut out = [0u8; 32];
        hex::decode_to_slice(value.trim(), &mut out).map_err(|_| bad())?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The node's disk images.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    uploading: Arc<Mutex<HashSet<DiskId>>>,
    blocks: Arc<crate::blocks::BlockStore>,
}

impl DiskStore {
    /// Disks under `dir` (which exists).
    pub fn new(dir: PathBuf) -> Self {
        DiskStore {
            blocks: Arc::new(crate::blocks::BlockStore::new(dir.clone())),
            dir,
            uploading: Arc::default(),
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

    fn part_path(&self, id: &DiskId) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    /// True when a verified image of this disk is stored.
    pub fn exists(&self, id: &DiskId) -> bool {
        self.image_path(id).is_file()
    }

    /// True while an upload of this disk runs.
    pub fn is_uploading(&self, id: &DiskId) -> bool {
        lock(&self.uploading).contains(id)
    }

    /// Removes `.part` files a crash left behind.
    pub fn clean_partial(&self) -> Result<(), Error> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::Write(self.dir.clone(), e))?;
        for ent in rd.flatten() {
            let p = ent.path();
            if p.extension().is_some_and(|e| e == "part") {
                tracing::info!(path = %p.display(), "removing a partial disk upload left by an earlier run");
                state_dir::remove_if_exists(&p).map_err(|e| Error::Write(p.clone(), io::Error::other(e.to_string())))?;
            }
        }
        Ok(())
    }

    /// Receives one disk from `body`. `announced` is the Content-Length, when
    /// the sender gave one. On any failure nothing is left on disk and an
    /// earlier image of the same id stays as it was.
    pub async fn receive<S, E>(&self, id: DiskId, expected: Sha256Digest, announced: Option<u64>, body: S) -> Result<DiskReceived, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: fmt::Display,
    {
        if announced.is_some_and(|n| n > MAX_DISK_BYTES) {
            return Err(Error::TooLarge);
        }
        let _busy = UploadGuard::claim(&self.uploading, &id)?;
        if let Some(needed) = announced {
            if let Some(available) = free_bytes(&self.dir) {
                if needed > available {
                    return Err(Error::NoSpace {
                        needed,
                        available,
                        dir: self.dir.clone(),
                    });
                }
            }
        }
        let part = self.part_path(&id);
        let mut cleanup = RemoveOnDrop(Some(part.clone()));
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        let writer = {
            let part = part.clone();
            tokio::task::spawn_blocking(move || write_part(&part, rx))
        };
        let pumped = pump(body, &tx).await;
        drop(tx);
        let written = writer.await.map_err(|e| Error::Task(e.to_string()))?;
        // A network error explains a writer error (the writer saw the channel
        // close early), so report the body's first.
        pumped?;
        let (bytes, digest) = written?;
        let actual = Sha256Digest(digest);
        if actual != expected {
            return Err(Error::DigestMismatch {
                id: id.to_string(),
                bytes,
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        let img = self.image_path(&id);
        std::fs::rename(&part, &img).map_err(|e| Error::Write(img.clone(), e))?;
        cleanup.0 = None;
        state_dir::sync_parent(&img).map_err(|e| Error::Write(img.clone(), e))?;
        Ok(DiskReceived {
            id: id.to_string(),
            bytes,
            sha256: actual.to_string(),
        })
    }
}

/// Moves chunks from the body to the writer, enforcing the size limit.
async fn pump<S, E>(mut body: S, tx: &tokio::sync::mpsc::Sender<Bytes>) -> Result<u64, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: fmt::Display,
{
    let mut received: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::Body {
            received,
            detail: e.to_string(),
        })?;
        received = received.saturating_add(chunk.len() as u64);
        if received > MAX_DISK_BYTES {
            return Err(Error::TooLarge);
        }
        if tx.send(chunk).await.is_err() {
            // The writer stopped: its own error says why.
            break;
        }
    }
    Ok(received)
}

/// Writer thread: hashes and writes every chunk, then fsyncs.
fn write_part(part: &Path, mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Result<(u64, [u8; 32]), Error> {
    let werr = |e| Error::Write(part.to_path_buf(), e);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(SECRET_MODE)
        .open(part)
        .map_err(werr)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        f.write_all(&chunk).map_err(werr)?;
        bytes += chunk.len() as u64;
    }
    f.sync_all().map_err(werr)?;
    Ok((bytes, hasher.finalize().into()))
}

/// Free bytes for an unprivileged writer under `dir`, when statvfs works.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks an id as being uploaded for as long as it lives.
struct UploadGuard {
    set: Arc<Mutex<HashSet<DiskId>>>,
    id: DiskId,
}

impl UploadGuard {
    fn claim(set: &Arc<Mutex<HashSet<DiskId>>>, id: &DiskId) -> Result<Self, Error> {
        if !lock(set).insert(id.clone()) {
            return Err(Error::Busy(id.to_string()));
        }
        Ok(UploadGuard {
            set: set.clone(),
            id: id.clone(),
        })
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

/// Deletes a partial file unless disarmed, also when the request future is
/// dropped mid-upload (client gone).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = state_dir::remove_if_exists(&p) {
                tracing::warn!(error = %e, "cannot remove partial disk upload");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: Vec<Result<Bytes, String>>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(chunks)
    }

    fn digest(b: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(b).into())
    }

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
    fn digest_header() {
        let d = digest(b"x");
        assert_eq!(Sha256Digest::parse_header(&d.to_string().to_uppercase()).unwrap(), d);
        assert!(Sha256Digest::parse_header("abc").is_err());
        assert!(Sha256Digest::parse_header(&"g".repeat(64)).is_err());
    }

    #[tokio::test]
    async fn receive_verifies_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let store = DiskStore::new(d.path().to_path_buf());
        let id: DiskId = "d1".parse().unwrap();
        let data = vec![Ok(Bytes::from_static(b"hello ")), Ok(Bytes::from_static(b"world"))];
        let got = store
            .receive(id.clone(), digest(b"hello world"), Some(11), stream(data))
            .await
            .unwrap();
        assert_eq!(got.bytes, 11);
        assert_eq!(std::fs::read(store.image_path(&id)).unwrap(), b"hello world");

        // Wrong digest: error, the earlier image stays, no .part.
        let data = vec![Ok(Bytes::from_static(b"other"))];
        let e = store.receive(id.clone(), digest(b"nope"), None, stream(data)).await.unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert_eq!(std::fs::read(store.image_path(&id)).unwrap(), b"hello world");
        assert!(!store.part_path(&id).exists());

        // Interrupted body: error, no .part.
        let id2: DiskId = "d2".parse().unwrap();
        let data = vec![Ok(Bytes::from_static(b"abc")), Err("reset".to_string())];
        let e = store.receive(id2.clone(), digest(b"abc"), None, stream(data)).await.unwrap_err();
        assert!(matches!(e, Error::Body { received: 3, .. }), "{e}");
        assert!(!store.part_path(&id2).exists());
        assert!(!store.exists(&id2));
        assert!(!store.is_uploading(&id2));
    }

    #[tokio::test]
    async fn too_large_announced_is_refused_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let store = DiskStore::new(d.path().to_path_buf());
        let e = store
            .receive("d".parse().unwrap(), digest(b""), Some(MAX_DISK_BYTES + 1), stream(vec![]))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::TooLarge));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
