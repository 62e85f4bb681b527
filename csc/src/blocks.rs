//! Block transfers ([`proto::transfer`]) and the node's content-addressed
//! block index.
//!
//! A transfer of disk `id` lives under `disks/.transfers/` until it is
//! finished: `id.manifest` (the sender's [`TransferBegin`]), `id.data` (the
//! sparse raw disk being assembled) and `id.journal` (indices of the blocks
//! written, 8 bytes each). A broken link or a restart of either side loses
//! nothing: the next [`BlockStore::begin`] re-reads the journal, re-hashes
//! those blocks from `id.data` and asks only for the others. At
//! [`BlockStore::finish`] the node re-reads the whole disk, compares the
//! whole-disk digest with the sender's, renames it to `disks/id.img` and adds
//! its blocks to the index (`disks/.block-index`, append-only records of
//! hash → disk id + block). The index is a hint: every block taken from it is
//! hashed again before use, so a disk changed by its guest since cannot
//! corrupt a transfer.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use proto::transfer::{
    block_count, block_len, sha256, BlockHash, BlocksReceived, DiskDigest, Frame, FrameDecoder, FrameError, TransferBegin, TransferDone,
    TransferPlan, TransferStats, BLOCK_SIZE,
};

use crate::disks::DiskId;
use crate::state_dir::{self, SECRET_MODE};

/// Frames queued between the network and the verifying writer.
const QUEUE_FRAMES: usize = 8;

/// How long a new attempt waits for the block requests of the previous one.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors of block transfers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The begin request is malformed.
    #[error("transfer manifest refused: {0}")]
    BadManifest(String),
    /// No transfer of this disk is open.
    #[error("no transfer of disk {0} is open: POST /v1/transfers/{0} first")]
    NotStarted(String),
    /// A frame names a block the manifest does not have, or another hash.
    #[error("block {index} of disk {id} is not the one the manifest announced")]
    NotInManifest {
        /// Disk id.
        id: String,
        /// Block index.
        index: u64,
    },
    /// A frame is malformed or its content does not match its hash.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The body stream failed.
    #[error("block stream interrupted after {received} bytes: {detail}")]
    Body {
        /// Bytes received before the failure.
        received: u64,
        /// What went wrong.
        detail: String,
    },
    /// `finish` came before every block arrived.
    #[error("disk {id}: {missing} block(s) have not arrived yet; begin the transfer again to learn which")]
    Incomplete {
        /// Disk id.
        id: String,
        /// Blocks missing.
        missing: u64,
    },
    /// The stored disk's digest is not the sender's.
    #[error("disk {id}: the assembled disk has digest {actual}, the sender's is {expected}; the transfer was discarded")]
    DigestMismatch {
        /// Disk id.
        id: String,
        /// Sender's digest.
        expected: String,
        /// What the node stored.
        actual: String,
    },
    /// File I/O failed.
    #[error("cannot use {0}")]
    Io(PathBuf, #[source] io::Error),
    /// A worker thread died.
    #[error("block writer task failed: {0}")]
    Task(String),
}

impl Error {
    /// True when the node's disk is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io(_, e) if e.kind() == io::ErrorKind::StorageFull)
    }
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::Io(p.to_path_buf(), e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open transfer.
struct Transfer {
    id: DiskId,
    size: u64,
    manifest: HashMap<u64, BlockHash>,
    held: Mutex<HashSet<u64>>,
    data_path: PathBuf,
    data: File,
    journal: Mutex<File>,
    journal_path: PathBuf,
    wire_bytes: AtomicU64,
    /// Block requests of this transfer still running.
    receiving: AtomicU64,
    sent: AtomicU64,
    deduped: AtomicU64,
    resumed: AtomicU64,
}

impl Transfer {
    fn write_block(&self, index: u64, raw: &[u8]) -> Result<(), Error> {
        self.data.write_all_at(raw, index * BLOCK_SIZE).map_err(io_err(&self.data_path))?;
        self.mark(index)
    }

    /// Journals block `index` as held.
    fn mark(&self, index: u64) -> Result<(), Error> {
        lock(&self.journal)
            .write_all(&index.to_be_bytes())
            .map_err(io_err(&self.journal_path))?;
        lock(&self.held).insert(index);
        Ok(())
    }

    fn read_block(&self, index: u64) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; block_len(self.size, index) as usize];
        self.data
            .read_exact_at(&mut buf, index * BLOCK_SIZE)
            .map_err(io_err(&self.data_path))?;
        Ok(buf)
    }

    fn missing(&self) -> Vec<u64> {
        let held = lock(&self.held);
        let mut v: Vec<u64> = self.manifest.keys().filter(|i| !held.contains(i)).copied().collect();
        v.sort_unstable();
        v
    }
}

/// Counts a running block request for as long as it lives.
struct Receiving(Arc<Transfer>);

impl Receiving {
    fn new(t: Arc<Transfer>) -> Self {
        t.receiving.fetch_add(1, Ordering::AcqRel);
        Receiving(t)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the index found a block.
#[derive(Clone, Debug)]
struct Location {
    disk: String,
    index: u64,
}

/// Block transfers and the block index of one node.
pub struct BlockStore {
    disks_dir: PathBuf,
    xfer_dir: PathBuf,
    index_path: PathBuf,
    index: Mutex<HashMap<BlockHash, Location>>,
    open: Mutex<HashMap<DiskId, Arc<Transfer>>>,
    wire_bytes: AtomicU64,
    blocks_received: AtomicU64,
    blocks_deduped: AtomicU64,
}

impl std::fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStore")
            .field("disks_dir", &self.disks_dir)
            .finish_non_exhaustive()
    }
}

impl BlockStore {
    /// The block store of the disks under `disks_dir`; loads the index.
    pub fn new(disks_dir: PathBuf) -> Self {
        let xfer_dir = disks_dir.join(".transfers");
        let index_path = disks_dir.join(".block-index");
        let index = match load_index(&index_path) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "block index unreadable; starting with an empty one (dedup only)");
                HashMap::new()
            }
        };
        BlockStore {
            disks_dir,
            xfer_dir,
            index_path,
            index: Mutex::new(index),
            open: Mutex::default(),
            wire_bytes: AtomicU64::new(0),
            blocks_received: AtomicU64::new(0),
            blocks_deduped: AtomicU64::new(0),
        }
    }

    /// Node-wide counters.
    pub fn stats(&self) -> TransferStats {
        TransferStats {
            wire_bytes_received: self.wire_bytes.load(Ordering::Relaxed),
            blocks_received: self.blocks_received.load(Ordering::Relaxed),
            blocks_deduped: self.blocks_deduped.load(Ordering::Relaxed),
            index_blocks: lock(&self.index).len() as u64,
        }
    }

    fn paths(&self, id: &DiskId) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.xfer_dir.join(format!("{id}.manifest")),
            self.xfer_dir.join(format!("{id}.data")),
            self.xfer_dir.join(format!("{id}.journal")),
        )
    }

    /// Opens or resumes the transfer of `id` (blocking I/O: call from a
    /// blocking thread). Answers which blocks the sender must still send.
    pub fn begin(&self, id: DiskId, req: TransferBegin) -> Result<TransferPlan, Error> {
        let manifest = validate(&req)?;
        // A sender that saw its link break begins again at once, while this
        // node may still be writing what arrived before the break: wait for
        // those requests to end, so that their blocks count as held.
        if let Some(t) = lock(&self.open).get(&id).cloned() {
            let t0 = std::time::Instant::now();
            while t.receiving.load(Ordering::Acquire) > 0 && t0.elapsed() < DRAIN_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let mut open = lock(&self.open);
        if let Some(t) = open.get(&id) {
            if t.size == req.size && t.manifest == manifest {
                // Another attempt over a new connection: what arrived counts as resumed.
                let held = lock(&t.held).len() as u64;
                t.resumed.store(held - t.deduped.load(Ordering::Relaxed), Ordering::Relaxed);
                return Ok(self.plan(t));
            }
            open.remove(&id);
        }
        std::fs::create_dir_all(&self.xfer_dir).map_err(io_err(&self.xfer_dir))?;
        let (mpath, dpath, jpath) = self.paths(&id);
        // What an earlier attempt left: its manifest and journal.
        let earlier: Option<(TransferBegin, Vec<u64>)> = std::fs::read(&mpath)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|m: &TransferBegin| m.size == req.size)
            .map(|m| (m, read_journal(&jpath)));
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(earlier.is_none())
            .mode(SECRET_MODE)
            .open(&dpath)
            .map_err(io_err(&dpath))?;
        data.set_len(req.size).map_err(io_err(&dpath))?;
        let body = serde_json::to_vec(&req).map_err(|e| Error::BadManifest(e.to_string()))?;
        state_dir::write_atomic(&mpath, &body, SECRET_MODE).map_err(|e| Error::Io(mpath.clone(), io::Error::other(e.to_string())))?;
        let t = Transfer {
            id: id.clone(),
            size: req.size,
            manifest,
            held: Mutex::default(),
            data_path: dpath,
            data,
            journal: Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(SECRET_MODE)
                    .open(&jpath)
                    .map_err(io_err(&jpath))?,
            ),
            journal_path: jpath,
            wire_bytes: AtomicU64::new(0),
            receiving: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            deduped: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        };
        if let Some((_, written)) = earlier {
            let zeros = vec![0u8; BLOCK_SIZE as usize];
            for index in written.into_iter().collect::<HashSet<_>>() {
                if index >= block_count(t.size) {
                    continue;
                }
                match t.manifest.get(&index) {
                    Some(want) if sha256(&t.read_block(index)?) == *want => {
                        t.mark(index)?;
                        t.resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    // Zeros now: clear what the earlier attempt wrote.
                    None => t
                        .data
                        .write_all_at(&zeros[..block_len(t.size, index) as usize], index * BLOCK_SIZE)
                        .map_err(io_err(&t.data_path))?,
                }
            }
        }
        self.dedup(&t)?;
        let t = Arc::new(t);
        let plan = self.plan(&t);
        open.insert(id, t);
        Ok(plan)
    }

    /// Copies blocks the index (or this same disk) already has.
    fn dedup(&self, t: &Transfer) -> Result<(), Error> {
        let mut by_hash: HashMap<BlockHash, u64> = HashMap::new();
        for i in lock(&t.held).iter() {
            by_hash.insert(t.manifest[i], *i);
        }
        for index in t.missing() {
            let want = t.manifest[&index];
            let found = match by_hash.get(&want) {
                Some(&i) => Some(t.read_block(i)?),
                None => self.indexed_block(&want)?,
            };
            if let Some(raw) = found.filter(|raw| raw.len() as u64 == block_len(t.size, index)) {
                t.write_block(index, &raw)?;
                t.deduped.fetch_add(1, Ordering::Relaxed);
                self.blocks_deduped.fetch_add(1, Ordering::Relaxed);
                by_hash.insert(want, index);
            }
        }
        Ok(())
    }

    /// A block with this hash from a stored disk, checked, if the index knows one.
    fn indexed_block(&self, want: &BlockHash) -> Result<Option<Vec<u8>>, Error> {
        let Some(loc) = lock(&self.index).get(want).cloned() else {
            return Ok(None);
        };
        let path = self.disks_dir.join(format!("{}.img", loc.disk));
        let Ok(f) = File::open(&path) else {
            lock(&self.index).remove(want);
            return Ok(None);
        };
        let len = f.metadata().map_err(io_err(&path))?.len();
        if loc.index * BLOCK_SIZE >= len {
            lock(&self.index).remove(want);
            return Ok(None);
        }
        let mut buf = vec![0u8; block_len(len, loc.index) as usize];
        f.read_exact_at(&mut buf, loc.index * BLOCK_SIZE).map_err(io_err(&path))?;
        if sha256(&buf) != *want {
            // The disk changed since (its guest wrote to it): forget the entry.
            lock(&self.index).remove(want);
            return Ok(None);
        }
        Ok(Some(buf))
    }

    fn plan(&self, t: &Transfer) -> TransferPlan {
        TransferPlan {
            id: t.id.to_string(),
            need: t.missing(),
            resumed: t.resumed.load(Ordering::Relaxed),
            deduped: t.deduped.load(Ordering::Relaxed),
        }
    }

    fn get(&self, id: &DiskId) -> Result<Arc<Transfer>, Error> {
        lock(&self.open).get(id).cloned().ok_or_else(|| Error::NotStarted(id.to_string()))
    }

    /// Receives a stream of frames for the open transfer of `id`: each block
    /// is decompressed, checked against its hash and the manifest, written
    /// and journaled. Blocks written before an error stay written.
    pub async fn receive<S, E>(self: &Arc<Self>, id: &DiskId, mut body: S) -> Result<BlocksReceived, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let t = self.get(id)?;
        let _receiving = Receiving::new(t.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(QUEUE_FRAMES);
        let writer = {
            let t = t.clone();
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.write_frames(&t, rx))
        };
        let mut dec = FrameDecoder::new();
        let mut wire = 0u64;
        let pumped: Result<(), Error> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::Body {
                    received: wire,
                    detail: e.to_string(),
                })?;
                wire += chunk.len() as u64;
                t.wire_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.wire_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                dec.push(&chunk);
                while let Some(f) = dec.next_frame()? {
                    if tx.send(f).await.is_err() {
                        return Ok(()); // the writer failed; its error says why
                    }
                }
            }
            dec.finish()?;
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer.await.map_err(|e| Error::Task(e.to_string()))?;
        pumped?;
        Ok(BlocksReceived {
            blocks: written?,
            wire_bytes: wire,
        })
    }

    fn write_frames(&self, t: &Transfer, mut rx: tokio::sync::mpsc::Receiver<Frame>) -> Result<u64, Error> {
        let mut n = 0;
        while let Some(f) = rx.blocking_recv() {
            if t.manifest.get(&f.index) != Some(&f.sha256) || u64::from(f.raw_len) != block_len(t.size, f.index) {
                return Err(Error::NotInManifest {
                    id: t.id.to_string(),
                    index: f.index,
                });
            }
            let raw = f.decode()?;
            t.write_block(f.index, &raw)?;
            t.sent.fetch_add(1, Ordering::Relaxed);
            self.blocks_received.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        Ok(n)
    }

    /// Ends the transfer of `id` (blocking I/O): checks every block arrived,
    /// re-reads the disk for its digest, compares it with the sender's,
    /// stores it as `disks/id.img` and indexes its blocks.
    pub fn finish(&self, id: &DiskId, expected: &str) -> Result<TransferDone, Error> {
        let t = self.get(id)?;
        let missing = t.missing().len() as u64;
        if missing > 0 {
            return Err(Error::Incomplete {
                id: id.to_string(),
                missing,
            });
        }
        t.data.sync_all().map_err(io_err(&t.data_path))?;
        let mut digest = DiskDigest::new(t.size);
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for index in 0..block_count(t.size) {
            let b = &mut buf[..block_len(t.size, index) as usize];
            t.data.read_exact_at(b, index * BLOCK_SIZE).map_err(io_err(&t.data_path))?;
            if b.iter().all(|&x| x == 0) {
                digest.add(index, None);
            } else {
                digest.add(index, Some(&sha256(b)));
            }
        }
        let actual = digest.finish();
        let (mpath, dpath, jpath) = self.paths(id);
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            lock(&self.open).remove(id);
            for p in [&mpath, &dpath, &jpath] {
                let _ = state_dir::remove_if_exists(p);
            }
            return Err(Error::DigestMismatch {
                id: id.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        let img = self.disks_dir.join(format!("{id}.img"));
        std::fs::rename(&dpath, &img).map_err(io_err(&img))?;
        state_dir::sync_parent(&img).map_err(io_err(&img))?;
        self.add_to_index(id, &t.manifest)?;
        lock(&self.open).remove(id);
        for p in [&mpath, &jpath] {
            let _ = state_dir::remove_if_exists(p);
        }
        Ok(TransferDone {
            id: id.to_string(),
            size: t.size,
            digest: actual,
            blocks: t.manifest.len() as u64,
            blocks_sent: t.sent.load(Ordering::Relaxed),
            blocks_deduped: t.deduped.load(Ordering::Relaxed),
            blocks_resumed: t.resumed.load(Ordering::Relaxed),
            wire_bytes: t.wire_bytes.load(Ordering::Relaxed),
        })
    }

    fn add_to_index(&self, id: &DiskId, manifest: &HashMap<u64, BlockHash>) -> Result<(), Error> {
        let mut out = Vec::with_capacity(manifest.len() * (41 + id.as_str().len()));
        let mut index = lock(&self.index);
        for (i, h) in manifest {
            out.extend_from_slice(h);
            out.extend_from_slice(&i.to_be_bytes());
            out.push(id.as_str().len() as u8);
            out.extend_from_slice(id.as_str().as_bytes());
            index.insert(
                *h,
                Location {
                    disk: id.to_string(),
                    index: *i,
                },
            );
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(SECRET_MODE)
            .open(&self.index_path)
            .map_err(io_err(&self.index_path))?;
        f.write_all(&out).map_err(io_err(&self.index_path))?;
        f.sync_data().map_err(io_err(&self.index_path))
    }
}

/// Checks a manifest from the network; returns index → hash.
pub fn validate(req: &TransferBegin) -> Result<HashMap<u64, BlockHash>, Error> {
    req.checked_blocks().map_err(|e| Error::BadManifest(e.0))
}

fn read_journal(p: &Path) -> Vec<u64> {
    let mut b = Vec::new();
    if File::open(p).and_then(|mut f| f.read_to_end(&mut b)).is_err() {
        return vec![];
    }
    b.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn load_index(p: &Path) -> io::Result<HashMap<BlockHash, Location>> {
    let b = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut m = HashMap::new();
    let mut rest = &b[..];
    while rest.len() >= 41 {
        let hash: BlockHash = rest[..32].try_into().expect("32 bytes");
        let index = u64::from_be_bytes(rest[32..40].try_into().expect("8 bytes"));
        let n = rest[40] as usize;
        let Some(name) = rest.get(41..41 + n) else { break };
        if let Ok(Ok(id)) = std::str::from_utf8(name).map(str::parse::<DiskId>) {
            m.insert(
                hash,
                Location {
                    disk: id.to_string(),
                    index,
                },
            );
        }
        rest = &rest[41 + n..];
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::transfer::{encode_frame, hex, BlockEntry};

    fn disk(seed: u8, blocks: u64) -> Vec<u8> {
        let mut d = vec![0u8; (blocks * BLOCK_SIZE) as usize + 100];
        for (i, c) in d.chunks_mut(BLOCK_SIZE as usize).enumerate() {
            if i % 3 != 1 {
                c[..64].fill(seed.wrapping_add(i as u8));
            }
        }
        d
    }

    fn manifest(d: &[u8]) -> (TransferBegin, String) {
        let size = d.len() as u64;
        let mut dig = DiskDigest::new(size);
        let mut blocks = vec![];
        for (i, c) in d.chunks(BLOCK_SIZE as usize).enumerate() {
            if c.iter().all(|&x| x == 0) {
                dig.add(i as u64, None);
            } else {
                let h = sha256(c);
                dig.add(i as u64, Some(&h));
                blocks.push(BlockEntry {
                    index: i as u64,
                    sha256: hex(&h),
                });
            }
        }
        (
            TransferBegin {
                size,
                block_size: BLOCK_SIZE,
                blocks,
            },
            dig.finish(),
        )
    }

    fn frames(d: &[u8], need: &[u64]) -> Vec<Result<Bytes, String>> {
        need.iter()
            .map(|&i| {
                let c = &d[(i * BLOCK_SIZE) as usize..][..block_len(d.len() as u64, i) as usize];
                let mut out = vec![];
                encode_frame(i, c, &sha256(c), &mut out);
                Ok(Bytes::from(out))
            })
            .collect()
    }

    #[tokio::test]
    async fn interrupted_transfer_resumes_and_dedups_a_second_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(1, 6);
        let (m, digest) = manifest(&a);
        let id: DiskId = "a".parse().unwrap();
        let plan = store.begin(id.clone(), m.clone()).unwrap();
        assert_eq!(plan.need, vec![0, 2, 3, 5, 6]);
        // Two blocks arrive, then the link breaks.
        let mut body = frames(&a, &plan.need[..2]);
        body.push(Err("connection reset".into()));
        let e = store.receive(&id, futures_util::stream::iter(body)).await.unwrap_err();
        assert!(matches!(e, Error::Body { .. }), "{e}");
        assert!(matches!(store.finish(&id, &digest), Err(Error::Incomplete { missing: 3, .. })));
        // A restarted node resumes from the journal.
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let plan = store.begin(id.clone(), m.clone()).unwrap();
        assert_eq!((plan.need.clone(), plan.resumed), (vec![3, 5, 6], 2));
        store
            .receive(&id, futures_util::stream::iter(frames(&a, &plan.need)))
            .await
            .unwrap();
        let done = store.finish(&id, &digest).unwrap();
        assert_eq!((done.blocks, done.blocks_sent, done.blocks_resumed), (5, 3, 2));
        let stored = std::fs::read(dir.path().join("a.img")).unwrap();
        assert!(stored == a);

        // A second disk sharing most blocks: only the changed one is needed.
        let mut b = a.clone();
        b[(3 * BLOCK_SIZE) as usize + 7] ^= 0xff;
        let (m, digest) = manifest(&b);
        let id: DiskId = "b".parse().unwrap();
        let plan = store.begin(id.clone(), m).unwrap();
        assert_eq!((plan.need.clone(), plan.deduped), (vec![3], 4));
        store
            .receive(&id, futures_util::stream::iter(frames(&b, &plan.need)))
            .await
            .unwrap();
        store.finish(&id, &digest).unwrap();
        assert!(std::fs::read(dir.path().join("b.img")).unwrap() == b);
        assert_eq!(store.stats().blocks_deduped, 4);
    }

    #[tokio::test]
    async fn wrong_blocks_and_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(9, 2);
        let (m, _) = manifest(&a);
        let id: DiskId = "c".parse().unwrap();
        store.begin(id.clone(), m).unwrap();
        // A block the manifest does not list (block 1 is zeros).
        let mut wire = vec![];
        encode_frame(1, b"evil", &sha256(b"evil"), &mut wire);
        let e = store
            .receive(&id, futures_util::stream::iter(vec![Ok::<_, String>(Bytes::from(wire))]))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotInManifest { index: 1, .. }), "{e}");
        store.receive(&id, futures_util::stream::iter(frames(&a, &[0, 2]))).await.unwrap();
        let e = store.finish(&id, &"0".repeat(64)).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert!(!dir.path().join("c.img").exists());
        let bad = TransferBegin {
            size: 10,
            block_size: 4096,
            blocks: vec![],
        };
        assert!(matches!(store.begin(id, bad), Err(Error::BadManifest(_))));
    }
}
