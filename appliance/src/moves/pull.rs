//! Pulls a disk out of a cloud node into a local sparse raw file
//! ([`proto::export`]): the first half of moves out of a cloud (to the data
//! center, or relayed on to another cloud by [`crate::moves::transfer`]).
//!
//! 1. Ask the node for the disk's manifest (hash of each non-zero block, the
//!    whole-disk digest).
//! 2. Compare with what the local file already holds (hash by hash): only
//!    differing blocks are fetched, so a pull that broke off, or a pull into
//!    an earlier copy of the same disk, resumes instead of starting over.
//! 3. Fetch them zstd-compressed over several parallel mutual-TLS streams;
//!    each frame is checked against its hash and the manifest's.
//! 4. Re-read the local file and compare the whole-disk digest.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use proto::transfer::{block_count, block_len, sha256, BlockHash, DiskDigest, FrameDecoder, FrameError, BLOCK_SIZE};

use crate::cloud::{CloudClient, CloudError};
use crate::moves::transfer::Progress;

/// Errors pulling a disk.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The node refused or could not be reached, after all attempts.
    #[error("pulling disk {id}: {source} (gave up after {attempts} attempts; run the move again: blocks that arrived are kept)")]
    Cloud {
        /// Disk id.
        id: String,
        /// Attempts made.
        attempts: u32,
        /// Cause.
        #[source]
        source: CloudError,
    },
    /// The node's manifest cannot be used.
    #[error("disk {id}: the node's manifest is unusable: {detail}")]
    Manifest {
        /// Disk id.
        id: String,
        /// Why.
        detail: String,
    },
    /// A frame was malformed, changed in transit, or not the block asked for.
    #[error("disk {id}: {detail}")]
    Frame {
        /// Disk id.
        id: String,
        /// Why.
        detail: String,
    },
    /// The local file could not be used.
    #[error("cannot use {0}: {1}; check the free space and permissions of the appliance's data directory")]
    Io(PathBuf, #[source] std::io::Error),
    /// The assembled file is not the node's disk.
    #[error("disk {id}: the pulled copy has digest {ours}, the node's is {theirs}; the copy was not used")]
    Digest {
        /// Disk id.
        id: String,
        /// Ours.
        ours: String,
        /// The node's.
        theirs: String,
    },
    /// A worker task died.
    #[error("pull worker failed: {0}")]
    Task(String),
}

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pulled {
    /// Whole-disk digest, equal to the node's.
    pub digest: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Non-zero blocks of the disk.
    pub blocks: u64,
    /// Blocks fetched over the link.
    pub fetched: u64,
    /// Blocks the local file already held.
    pub kept: u64,
    /// Compressed bytes received.
    pub wire_bytes: u64,
    /// Attempts it took.
    pub attempts: u32,
}

/// How many times a broken pull is begun again.
const ATTEMPTS: u32 = 4;

/// Pulls disk `id` of the node behind `client` into `dest` (created sparse,
/// mode 0600; an existing file is brought up to date). `streams` parallel
/// requests; `progress` gets (bytes of data blocks in place, bytes in all).
pub async fn pull_disk(client: &CloudClient, id: &str, dest: &Path, streams: usize, progress: Progress) -> Result<Pulled, PullError> {
    let mut attempt = 1;
    loop {
        match pull_once(client, id, dest, streams, progress.clone(), attempt).await {
            // A refusal (no such disk, guest running) stays a refusal.
            Err(PullError::Cloud { source, .. }) if attempt < ATTEMPTS && !matches!(source, CloudError::Refused { .. }) => {
                tracing::warn!(disk = id, attempt, error = %source, "disk pull interrupted; resuming");
            }
            Err(PullError::Frame { detail, .. }) if attempt < ATTEMPTS => {
                tracing::warn!(disk = id, attempt, error = %detail, "disk pull got a bad frame; resuming");
            }
            r => return r,
        }
        attempt += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(attempt))).await;
    }
}

async fn pull_once(
    client: &CloudClient,
    id: &str,
    dest: &Path,
    streams: usize,
    progress: Progress,
    attempt: u32,
) -> Result<Pulled, PullError> {
    let cloud = |source| PullError::Cloud {
        id: id.into(),
        attempts: attempt,
        source,
    };
    let manifest = client.disk_manifest(id).await.map_err(cloud)?;
    let hashes = Arc::new(manifest.checked_blocks().map_err(|e| PullError::Manifest {
        id: id.into(),
        detail: e.0,
    })?);
    let size = manifest.size;
    let file = Arc::new(open_dest(dest, size)?);
    let need = {
        let (f, h, d) = (file.clone(), hashes.clone(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || compare(&f, &d, size, &h))
            .await
            .map_err(|e| PullError::Task(e.to_string()))??
    };
    let total: u64 = hashes.keys().map(|&i| block_len(size, i)).sum();
    let need_bytes: u64 = need.iter().map(|&i| block_len(size, i)).sum();
    let done = Arc::new(AtomicU64::new(total - need_bytes));
    let wire = Arc::new(AtomicU64::new(0));
    progress(done.load(Ordering::Relaxed), total);
    let streams = streams.max(1);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let part: Vec<u64> = need.iter().skip(s).step_by(streams).copied().collect();
        if part.is_empty() {
            continue;
        }
        let fetch = Fetch {
            client: client.clone(),
            id: id.to_string(),
            dest: dest.to_path_buf(),
            file: file.clone(),
            hashes: hashes.clone(),
            size,
            done: done.clone(),
            wire: wire.clone(),
            total,
            progress: progress.clone(),
            attempt,
        };
        tasks.push(tokio::spawn(fetch.run(part)));
    }
    let mut failed = None;
    for t in tasks {
        if let Err(e) = t.await.map_err(|e| PullError::Task(e.to_string()))? {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let ours = {
        let (f, d) = (file.clone(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || {
            f.sync_all().map_err(|e| PullError::Io(d.clone(), e))?;
            digest_of(&f, &d, size)
        })
        .await
        .map_err(|e| PullError::Task(e.to_string()))??
    };
    if !ours.eq_ignore_ascii_case(&manifest.digest) {
        return Err(PullError::Digest {
            id: id.into(),
            ours,
            theirs: manifest.digest,
        });
    }
    Ok(Pulled {
        digest: ours,
        size,
        blocks: hashes.len() as u64,
        fetched: need.len() as u64,
        kept: (hashes.len() - need.len()) as u64,
        wire_bytes: wire.load(Ordering::Relaxed),
        attempts: attempt,
    })
}

fn open_dest(dest: &Path, size: u64) -> Result<File, PullError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| PullError::Io(dir.to_path_buf(), e))?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dest)
        .map_err(|e| PullError::Io(dest.to_path_buf(), e))?;
    f.set_len(size).map_err(|e| PullError::Io(dest.to_path_buf(), e))?;
    Ok(f)
}

/// Blocks the local file lacks (hash differs); blocks that must be zeros
/// and are not are cleared here.
fn compare(f: &File, path: &Path, size: u64, hashes: &HashMap<u64, BlockHash>) -> Result<Vec<u64>, PullError> {
    let io = |e| PullError::Io(path.to_path_buf(), e);
    let mut need = Vec::new();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for index in 0..block_count(size) {
        let b = &mut buf[..block_len(size, index) as usize];
        f.read_exact_at(b, index * BLOCK_SIZE).map_err(io)?;
        match hashes.get(&index) {
            Some(want) if sha256(b) != *want => need.push(index),
            Some(_) => {}
            None if b.iter().any(|&x| x != 0) => {
                b.fill(0);
                f.write_all_at(b, index * BLOCK_SIZE).map_err(io)?;
            }
            None => {}
        }
    }
    Ok(need)
}

/// The whole-disk digest of the local file.
pub fn digest_of(f: &File, path: &Path, size: u64) -> Result<String, PullError> {
    let mut digest = DiskDigest::new(size);
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for index in 0..block_count(size) {
        let b = &mut buf[..block_len(size, index) as usize];
        f.read_exact_at(b, index * BLOCK_SIZE)
            .map_err(|e| PullError::Io(path.to_path_buf(), e))?;
        if b.iter().all(|&x| x == 0) {
            digest.add(index, None);
        } else {
            digest.add(index, Some(&sha256(b)));
        }
    }
    Ok(digest.finish())
}

/// One stream of a pull.
struct Fetch {
    client: CloudClient,
    id: String,
    dest: PathBuf,
    file: Arc<File>,
    hashes: Arc<HashMap<u64, BlockHash>>,
    size: u64,
    done: Arc<AtomicU64>,
    wire: Arc<AtomicU64>,
    total: u64,
    progress: Progress,
    attempt: u32,
}

impl Fetch {
    fn frame_err(&self, detail: String) -> PullError {
        PullError::Frame {
            id: self.id.clone(),
            detail,
        }
    }

    async fn run(self, part: Vec<u64>) -> Result<(), PullError> {
        let cloud = |source| PullError::Cloud {
            id: self.id.clone(),
            attempts: self.attempt,
            source,
        };
        let mut expect = part.iter().copied();
        let resp = self.client.read_blocks(&self.id, part.clone()).await.map_err(cloud)?;
        let mut body = resp.bytes_stream();
        let mut dec = FrameDecoder::new();
        let fe = |e: FrameError| self.frame_err(e.to_string());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.frame_err(format!("block stream broke: {e}")))?;
            self.wire.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            dec.push(&chunk);
            while let Some(frame) = dec.next_frame().map_err(fe)? {
                let want = expect.next();
                if want != Some(frame.index) || self.hashes.get(&frame.index) != Some(&frame.sha256) {
                    return Err(self.frame_err(format!(
                        "the node sent block {} where block {want:?} of the manifest was expected",
                        frame.index
                    )));
                }
                let raw = frame.decode().map_err(fe)?;
                if raw.len() as u64 != block_len(self.size, frame.index) {
                    return Err(self.frame_err(format!("block {} has the wrong length", frame.index)));
                }
                self.file
                    .write_all_at(&raw, frame.index * BLOCK_SIZE)
                    .map_err(|e| PullError::Io(self.dest.clone(), e))?;
                let len = raw.len() as u64;
                (self.progress)(self.done.fetch_add(len, Ordering::Relaxed) + len, self.total);
            }
        }
        dec.finish().map_err(fe)?;
        if let Some(missing) = expect.next() {
            return Err(self.frame_err(format!("the block stream ended before block {missing}")));
        }
        Ok(())
    }
}
