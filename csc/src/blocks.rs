//! Block transfers ([`proto::transfer`]) and the node's content-addressed
//! block index.
//!
//! Disks are stored encrypted: every disk is a LUKS qcow2 written and read
//! only through [`hv::storage_daemon::EncryptedDisk`] (a `qemu-storage-daemon`
//! that got the disk's key over QMP, spoken to over NBD on a private unix
//! socket), so no plaintext block ever reaches a file on this node. Each
//! disk's key comes from the appliance (`PUT /v1/disks/{id}/key`, before
//! every transfer and guest start) and is held only in memory
//! ([`BlockStore::grant_key`]); without it a disk can be neither written,
//! read for dedup, nor started.
//!
//! A transfer of disk `id` lives under `disks/.transfers/` until it is
//! finished: `id.manifest` (the sender's [`TransferBegin`]), `id.data` (the
//! encrypted qcow2 being assembled) and `id.journal` (indices of the blocks
//! written and flushed, 8 bytes each: the image is flushed every
//! [`JOURNAL_EVERY`] blocks and at the end of each request, so the journal
//! never names a block the image could lose in a crash). A broken link or a restart of either side loses
//! nothing: the next [`BlockStore::begin`] re-reads the journal, re-hashes
//! those blocks from `id.data` and asks only for the others (and clears any
//! block of the earlier manifest that the new one says is zeros). Every data
//! block is read back from the image after the flush that made it durable,
//! by a verifier thread of the transfer while later blocks still arrive
//! ([`Transfer::commit`]); at [`BlockStore::finish`] the node reads back what
//! is left, computes the whole-disk digest from the read-back hashes (of what
//! is on disk, not of what arrived), compares it with the sender's, renames it to `disks/id.img` and adds
//! its blocks to the index (`disks/.block-index`, append-only records of
//! hash → disk id + block; hashes only, never block content). The index is a hint: every block taken from it is
//! hashed again before use, so a disk changed by its guest since cannot
//! corrupt a transfer.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hv::storage_daemon::{Access, EncryptedDisk, StorageError};
use hv::DiskKey;
use proto::transfer::{
    block_count, block_len, sha256, BlockHash, BlocksReceived, DiskDigest, Frame, FrameDecoder, FrameError, TransferBegin, TransferDone,
    TransferPlan, TransferStats, BLOCK_SIZE,
};
use zeroize::Zeroizing;

use crate::disks::DiskId;
use crate::state_dir::{self, SECRET_MODE};

mod chunked;

/// Frames queued between the network and the verifying writer.
const QUEUE_FRAMES: usize = 8;

/// Blocks written between two flushes of the image (then journaled).
const JOURNAL_EVERY: usize = 64;

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
    /// The node holds no key for the disk.
    #[error("no key for disk {0} on this node (keys live only in memory): the appliance sends it with PUT /v1/disks/{0}/key before a transfer or a start")]
    NoKey(String),
    /// A key that is not 16 to 1024 bytes of hex.
    #[error("disk key for {0} refused: send 16 to 1024 bytes as hex")]
    BadKey(String),
    /// The encrypted disk could not be opened, read or written.
    #[error("encrypted disk {0}")]
    Disk(PathBuf, #[source] StorageError),
    /// A worker thread died.
    #[error("block writer task failed: {0}")]
    Task(String),
    /// A chunk of the manifest (protocol 3) starts past what the node holds.
    #[error("disk {id}: manifest chunk starts at block {start}, but the node's manifest ends at block {covered}")]
    ChunkOrder {
        /// Disk id.
        id: String,
        /// Where the chunk starts.
        start: u64,
        /// Where the node's manifest ends.
        covered: u64,
    },
    /// `finish` came before the manifest's chunks covered the whole disk.
    #[error("disk {id}: the manifest's chunks describe blocks up to {covered} of {blocks}")]
    ManifestIncomplete {
        /// Disk id.
        id: String,
        /// Blocks described.
        covered: u64,
        /// Blocks of the disk.
        blocks: u64,
    },
}

impl Error {
    /// True when the node's disk is full.
    pub fn is_no_space(&self) -> bool {
        use hv::nbd::NbdError;
        match self {
            Error::Io(_, e) => e.kind() == io::ErrorKind::StorageFull,
            Error::Disk(_, StorageError::Nbd(NbdError::Request { errno, .. })) => *errno == libc::ENOSPC as u32,
            _ => false,
        }
    }
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::Io(p.to_path_buf(), e)
}

fn disk_err(p: &Path) -> impl FnOnce(StorageError) -> Error + '_ {
    move |e| Error::Disk(p.to_path_buf(), e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open transfer.
struct Transfer {
    id: DiskId,
    size: u64,
    manifest: Mutex<Manifest>,
    held: Mutex<HashSet<u64>>,
    /// Blocks copied from the block index (not counted as resumed).
    deduped_blocks: Mutex<HashSet<u64>>,
    /// The manifest's chunk log (`id.chunks`, protocol 3), once opened.
    chunk_log: Mutex<Option<File>>,
    /// One manifest chunk at a time.
    chunking: Mutex<()>,
    /// Stored disks opened to copy blocks from (`None`: no key), kept for
    /// the chunks to come (each open unlocks a LUKS image).
    readers: Mutex<HashMap<String, Option<EncryptedDisk>>>,
    data_path: PathBuf,
    /// The encrypted disk being assembled (`None` once closed by finish).
    data: Mutex<Option<EncryptedDisk>>,
    journal: Mutex<File>,
    journal_path: PathBuf,
    /// Blocks written but not yet flushed and journaled.
    unjournaled: Mutex<Vec<u64>>,
    /// SHA-256 of each data block as read back from the image after its
    /// last write was flushed: the node's side of the whole-disk digest.
    readback: Mutex<HashMap<u64, BlockHash>>,
    /// Batches of flushed blocks for the read-back thread (`None` once
    /// finish closed it).
    verify_tx: Mutex<Option<std::sync::mpsc::Sender<Vec<u64>>>>,
    /// The read-back thread.
    verifier: Mutex<Option<std::thread::JoinHandle<Result<(), Error>>>>,
    wire_bytes: AtomicU64,
    /// Block requests of this transfer still running.
    receiving: AtomicU64,
    sent: AtomicU64,
    deduped: AtomicU64,
    resumed: AtomicU64,
}

impl Transfer {
    /// Runs `f` on the open encrypted disk.
    fn with_data<T>(&self, f: impl FnOnce(&mut EncryptedDisk) -> Result<T, StorageError>) -> Result<T, Error> {
        let mut d = lock(&self.data);
        let d = d.as_mut().ok_or_else(|| Error::NotStarted(self.id.to_string()))?;
        f(d).map_err(disk_err(&self.data_path))
    }

    fn write_block(&self, index: u64, raw: &[u8]) -> Result<(), Error> {
        self.with_data(|d| d.write_at(raw, index * BLOCK_SIZE))?;
        lock(&self.held).insert(index);
        let due = {
            let mut u = lock(&self.unjournaled);
            u.push(index);
            u.len() >= JOURNAL_EVERY
        };
        if due {
            self.commit()?;
        }
        Ok(())
    }

    /// Flushes the image, journals the blocks written before the flush and
    /// hands them to the read-back thread.
    fn commit(&self) -> Result<(), Error> {
        let blocks = std::mem::take(&mut *lock(&self.unjournaled));
        if blocks.is_empty() {
            return Ok(());
        }
        self.with_data(|d| d.flush())?;
        let mut out = Vec::with_capacity(blocks.len() * 8);
        for i in &blocks {
            out.extend_from_slice(&i.to_be_bytes());
        }
        lock(&self.journal).write_all(&out).map_err(io_err(&self.journal_path))?;
        match lock(&self.verify_tx).as_ref() {
            // A send fails only when the thread ended on an error, which
            // finish reports; the blocks are then read back there.
            Some(tx) => drop(tx.send(blocks)),
            None => self.read_back(&blocks)?,
        }
        Ok(())
    }

    /// Reads `blocks` back from the image and keeps their hashes.
    fn read_back(&self, blocks: &[u64]) -> Result<(), Error> {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for &index in blocks {
            let b = &mut buf[..block_len(self.size, index) as usize];
            self.with_data(|d| d.read_at(b, index * BLOCK_SIZE))?;
            let h = sha256(b);
            lock(&self.readback).insert(index, h);
        }
        Ok(())
    }

    /// Starts the read-back thread of `t`. It holds the transfer only
    /// weakly, so a transfer that is dropped (replaced) ends it.
    fn start_verifier(t: &Arc<Transfer>, rx: std::sync::mpsc::Receiver<Vec<u64>>) {
        let weak = Arc::downgrade(t);
        let handle = std::thread::Builder::new().name("block-readback".into()).spawn(move || {
            while let Ok(batch) = rx.recv() {
                let Some(t) = weak.upgrade() else { break };
                t.read_back(&batch)?;
            }
            Ok(())
        });
        match handle {
            Ok(h) => *lock(&t.verifier) = Some(h),
            // No thread: commit reads back inline.
            Err(e) => {
                tracing::warn!(disk = %t.id, error = %e, "no read-back thread; blocks are read back as they are journaled");
                lock(&t.verify_tx).take();
            }
        }
    }

    /// Ends the read-back thread after it has read every batch it was
    /// given; its error, if it failed.
    fn stop_verifier(&self) -> Result<(), Error> {
        lock(&self.verify_tx).take();
        match lock(&self.verifier).take() {
            Some(h) => h.join().map_err(|_| Error::Task("the block read-back thread panicked".into()))?,
            None => Ok(()),
        }
    }

    /// Journals block `index` as held (it is durable in the image already).
    fn mark(&self, index: u64) -> Result<(), Error> {
        lock(&self.journal)
            .write_all(&index.to_be_bytes())
            .map_err(io_err(&self.journal_path))?;
        lock(&self.held).insert(index);
        Ok(())
    }

    fn read_block(&self, index: u64) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; block_len(self.size, index) as usize];
        self.with_data(|d| d.read_at(&mut buf, index * BLOCK_SIZE))?;
        Ok(buf)
    }

    fn missing(&self) -> Vec<u64> {
        self.missing_in(0, u64::MAX)
    }

    /// Data blocks of `[start, end)` the node does not hold yet, ascending.
    fn missing_in(&self, start: u64, end: u64) -> Vec<u64> {
        let m = lock(&self.manifest);
        let held = lock(&self.held);
        let mut v: Vec<u64> = m
            .blocks
            .keys()
            .filter(|&&i| i >= start && i < end && !held.contains(&i))
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// The manifest's hash of block `index` (`None`: zeros or not described yet).
    fn hash_of(&self, index: u64) -> Option<BlockHash> {
        lock(&self.manifest).blocks.get(&index).copied()
    }
}

/// What the node knows of a transfer's manifest: all of it at once
/// (protocol 2) or the chunks that arrived so far (protocol 3).
#[derive(Debug, Default)]
struct Manifest {
    /// Data blocks of `[0, covered)` and their hashes.
    blocks: HashMap<u64, BlockHash>,
    /// Blocks `[0, covered)` are described.
    covered: u64,
    /// Blocks past `covered` that an earlier attempt's manifest listed (they
    /// may hold its data), by what the node knows of their content.
    earlier: HashMap<u64, Prior>,
}

/// A block of an earlier attempt's manifest not yet described again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prior {
    /// May hold data of the earlier manifest, in any state.
    Dirty,
    /// The journal names it: written and flushed (its hash is checked before it counts).
    Journaled,
}

impl Manifest {
    /// A whole manifest of a disk of `size` bytes.
    fn whole(blocks: HashMap<u64, BlockHash>, size: u64) -> Self {
        Manifest {
            blocks,
            covered: block_count(size),
            earlier: HashMap::new(),
        }
    }

    /// Blocks that may hold data: the manifest's and the earlier ones.
    fn maybe_data(&self) -> HashSet<u64> {
        self.blocks.keys().chain(self.earlier.keys()).copied().collect()
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

/// An empty encrypted image made ahead of a transfer's begin
/// ([`BlockStore::prepare`]), at `.transfers/{id}.prepared`.
struct Prepared {
    size: u64,
    disk: EncryptedDisk,
}

/// A prepare in progress or done: begin locks it, so it waits for a
/// creation still running.
type PreparedSlot = Arc<Mutex<Option<Prepared>>>;

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
    /// Private directories of the storage daemons.
    daemons_dir: PathBuf,
    daemon_seq: AtomicU64,
    /// Disk keys from the appliance, in memory only.
    keys: Mutex<HashMap<String, Zeroizing<Vec<u8>>>>,
    index_path: PathBuf,
    index: Mutex<HashMap<BlockHash, Location>>,
    open: Mutex<HashMap<DiskId, Arc<Transfer>>>,
    /// Images made ahead of a begin, by disk.
    prepared: Mutex<HashMap<DiskId, PreparedSlot>>,
    wire_bytes: AtomicU64,
    blocks_received: AtomicU64,
    blocks_deduped: AtomicU64,
    images_prepared: AtomicU64,
    manifest_chunks: AtomicU64,
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
        let daemons_dir = disks_dir.join(".sd");
        // Daemons an earlier run of the node left behind hold images locked.
        hv::storage_daemon::reap_stale(&daemons_dir);
        // Images prepared for a begin that never came (empty; no data).
        if let Ok(rd) = std::fs::read_dir(&xfer_dir) {
            for e in rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "prepared")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
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
            daemons_dir,
            daemon_seq: AtomicU64::new(0),
            keys: Mutex::default(),
            index_path,
            index: Mutex::new(index),
            open: Mutex::default(),
            prepared: Mutex::default(),
            wire_bytes: AtomicU64::new(0),
            blocks_received: AtomicU64::new(0),
            blocks_deduped: AtomicU64::new(0),
            images_prepared: AtomicU64::new(0),
            manifest_chunks: AtomicU64::new(0),
        }
    }

    /// Node-wide counters.
    pub fn stats(&self) -> TransferStats {
        TransferStats {
            wire_bytes_received: self.wire_bytes.load(Ordering::Relaxed),
            blocks_received: self.blocks_received.load(Ordering::Relaxed),
            blocks_deduped: self.blocks_deduped.load(Ordering::Relaxed),
            index_blocks: lock(&self.index).len() as u64,
            images_prepared: self.images_prepared.load(Ordering::Relaxed),
            manifest_chunks: self.manifest_chunks.load(Ordering::Relaxed),
        }
    }

    /// Keeps the key of disk `id` (in memory only), replacing an earlier one.
    pub fn grant_key(&self, id: &DiskId, key: Zeroizing<Vec<u8>>) -> Result<(), Error> {
        if !(hv::disk_key::MIN_KEY_LEN..=hv::disk_key::MAX_KEY_LEN).contains(&key.len()) {
            return Err(Error::BadKey(id.to_string()));
        }
        lock(&self.keys).insert(id.to_string(), key);
        Ok(())
    }

    /// Forgets the key of disk `id`; true when one was held.
    pub fn forget_key(&self, id: &DiskId) -> bool {
        lock(&self.keys).remove(id.as_str()).is_some()
    }

    /// The key of disk `id`, if the appliance sent it since the node started.
    pub fn key(&self, id: &str) -> Option<DiskKey> {
        let k = lock(&self.keys).get(id).map(|k| k.to_vec())?;
        DiskKey::from_bytes(k).ok()
    }

    /// A fresh private directory for one storage daemon (short: socket paths
    /// are limited to 108 bytes).
    fn daemon_dir(&self, what: &str) -> PathBuf {
        let n = self.daemon_seq.fetch_add(1, Ordering::Relaxed);
        self.daemons_dir.join(format!("{what}{n}"))
    }

    /// Opens the stored disk `id` read-only (shared with a guest that may run
    /// on it), with its key. `Ok(None)` when the node has no key for it or
    /// the disk is gone.
    pub fn open_stored(&self, id: &str) -> Result<Option<EncryptedDisk>, Error> {
        let path = self.disks_dir.join(format!("{id}.img"));
        let Some(key) = self.key(id) else { return Ok(None) };
        if !path.is_file() {
            return Ok(None);
        }
        EncryptedDisk::open(&path, &key, &self.daemon_dir("r"), Access::ReadShared)
            .map(Some)
            .map_err(disk_err(&path))
    }

    fn prepared_path(&self, id: &DiskId) -> PathBuf {
        self.xfer_dir.join(format!("{id}.prepared"))
    }

    /// Makes the empty encrypted image of a coming transfer of `id` of
    /// `size` bytes (blocking: seconds of LUKS key derivation; call from a
    /// blocking thread), so that [`BlockStore::begin`] finds it ready while
    /// the sender was still hashing its disk. Nothing is made when a
    /// transfer of `id` is open or can be resumed (its manifest is on disk):
    /// begin keeps what it holds. Returns whether an image was made.
    pub fn prepare(&self, id: DiskId, size: u64) -> Result<bool, Error> {
        let size = proto::transfer::TransferPrepare { size }
            .checked_size()
            .map_err(|e| Error::BadManifest(e.0))?;
        let (mpath, _, _) = self.paths(&id);
        let resumable = || mpath.is_file() || self.chunks_path(&id).is_file();
        if resumable() {
            return Ok(false);
        }
        let key = self.key(id.as_str()).ok_or_else(|| Error::NoKey(id.to_string()))?;
        let slot: PreparedSlot = Arc::default();
        let mut mine = lock(&slot);
        let earlier = lock(&self.prepared).insert(id.clone(), slot.clone());
        if let Some(earlier) = earlier {
            // Waits for an earlier prepare of the same disk still running.
            discard(lock(&earlier).take());
        }
        std::fs::create_dir_all(&self.xfer_dir).map_err(io_err(&self.xfer_dir))?;
        let ppath = self.prepared_path(&id);
        state_dir::remove_if_exists(&ppath).map_err(|e| Error::Io(ppath.clone(), io::Error::other(e.to_string())))?;
        let disk = EncryptedDisk::create(&ppath, size, &key, &self.daemon_dir("p")).map_err(disk_err(&ppath))?;
        let p = Prepared { size, disk };
        if resumable() {
            // A begin overtook this prepare and made its own image.
            discard(Some(p));
            return Ok(false);
        }
        *mine = Some(p);
        Ok(true)
    }

    /// The image prepared for `id`, if one was made for `size` bytes
    /// (waits for a prepare still running); any other is discarded.
    fn take_prepared(&self, id: &DiskId, size: u64) -> Option<EncryptedDisk> {
        let slot = lock(&self.prepared).remove(id)?;
        let p = lock(&slot).take();
        match p {
            Some(p) if p.size == size => Some(p.disk),
            other => {
                discard(other);
                None
            }
        }
    }

    /// The chunk log of a protocol 3 transfer ([`chunked`]).
    fn chunks_path(&self, id: &DiskId) -> PathBuf {
        self.xfer_dir.join(format!("{id}.chunks"))
    }

    /// What an earlier attempt of a transfer of `size` bytes left on disk:
    /// the blocks its manifest (whole, or its chunk log) lists, which may
    /// hold data, and the blocks its journal names. `None` when there is no
    /// earlier manifest of this size.
    fn earlier_on_disk(&self, id: &DiskId) -> Option<(u64, HashSet<u64>, Vec<u64>)> {
        let (mpath, _, jpath) = self.paths(id);
        let whole = std::fs::read(&mpath)
            .ok()
            .and_then(|b| serde_json::from_slice::<TransferBegin>(&b).ok())
            .map(|m| (m.size, validate(&m).unwrap_or_default().into_keys().collect::<HashSet<u64>>()));
        let logged = chunked::read_log(&self.chunks_path(id));
        let (size, mut blocks) = match (whole, logged) {
            (Some((a, mut x)), Some((b, y))) if a == b => {
                x.extend(y);
                (a, x)
            }
            // Two sizes: a crash between writing one and removing the other;
            // the image is of neither for sure, so nothing is resumed.
            (Some(_), Some(_)) => return None,
            (Some(w), None) | (None, Some(w)) => w,
            (None, None) => return None,
        };
        blocks.retain(|&i| i < block_count(size));
        Some((size, blocks, read_journal(&jpath)))
    }

    /// The encrypted image of a transfer of `id` of `size` bytes that (re)opens:
    /// the earlier attempt's when one of this size can be resumed, with
    /// the blocks that may hold its data and the blocks its journal names;
    /// else an image prepared ahead, else a new one.
    #[allow(clippy::type_complexity)]
    fn open_image(&self, id: &DiskId, size: u64) -> Result<(EncryptedDisk, Option<(HashSet<u64>, Vec<u64>)>), Error> {
        std::fs::create_dir_all(&self.xfer_dir).map_err(io_err(&self.xfer_dir))?;
        let (_, dpath, _) = self.paths(id);
        let earlier = self.earlier_on_disk(id).filter(|(s, _, _)| *s == size).map(|(_, b, j)| (b, j));
        let key = self.key(id.as_str()).ok_or_else(|| Error::NoKey(id.to_string()))?;
        let dir = self.daemon_dir("w");
        let reopened = match earlier {
            Some(_) if dpath.is_file() => match EncryptedDisk::open(&dpath, &key, &dir, Access::ReadWrite) {
                // qcow2 sizes are whole sectors.
                Ok(d) if d.size() == size.next_multiple_of(512) => Some(d),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(disk = %id, error = %e, "cannot reopen the earlier attempt's disk; starting over");
                    None
                }
            },
            _ => None,
        };
        let earlier = if reopened.is_some() { earlier } else { None };
        // An image prepared ahead serves only a fresh start.
        let prepared = self.take_prepared(id, size);
        let data = match (reopened, prepared) {
            (Some(d), prepared) => {
                discard(prepared.map(|disk| Prepared { size, disk }));
                d
            }
            (None, prepared) => {
                state_dir::remove_if_exists(&dpath).map_err(|e| Error::Io(dpath.clone(), io::Error::other(e.to_string())))?;
                match prepared {
                    // The daemon keeps its open file across the rename.
                    Some(d) => {
                        std::fs::rename(self.prepared_path(id), &dpath).map_err(io_err(&dpath))?;
                        self.images_prepared.fetch_add(1, Ordering::Relaxed);
                        d
                    }
                    None => EncryptedDisk::create(&dpath, size, &key, &dir).map_err(disk_err(&dpath))?,
                }
            }
        };
        Ok((data, earlier))
    }

    /// A transfer of `id` on `data`; its journal is started afresh
    /// (`truncate`) or continued.
    fn new_transfer(
        &self,
        id: &DiskId,
        size: u64,
        manifest: Manifest,
        data: EncryptedDisk,
        truncate: bool,
    ) -> Result<(Transfer, std::sync::mpsc::Receiver<Vec<u64>>), Error> {
        let (_, dpath, jpath) = self.paths(id);
        let (verify_tx, verify_rx) = std::sync::mpsc::channel();
        let journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(truncate)
            .append(!truncate)
            .mode(SECRET_MODE)
            .open(&jpath)
            .map_err(io_err(&jpath))?;
        let t = Transfer {
            id: id.clone(),
            size,
            manifest: Mutex::new(manifest),
            held: Mutex::default(),
            deduped_blocks: Mutex::default(),
            chunk_log: Mutex::default(),
            chunking: Mutex::default(),
            readers: Mutex::default(),
            data_path: dpath,
            data: Mutex::new(Some(data)),
            journal: Mutex::new(journal),
            journal_path: jpath,
            unjournaled: Mutex::default(),
            readback: Mutex::default(),
            verify_tx: Mutex::new(Some(verify_tx)),
            verifier: Mutex::default(),
            wire_bytes: AtomicU64::new(0),
            receiving: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            deduped: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        };
        Ok((t, verify_rx))
    }

    /// Waits (up to [`DRAIN_WAIT`]) for the block requests of an open
    /// transfer of `id` to end: a sender that saw its link break begins
    /// again at once, while this node may still be writing what arrived
    /// before the break, and those blocks should count as held.
    fn drain(&self, id: &DiskId) {
        if let Some(t) = lock(&self.open).get(id).cloned() {
            let t0 = std::time::Instant::now();
            while t.receiving.load(Ordering::Acquire) > 0 && t0.elapsed() < DRAIN_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
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
        self.drain(&id);
        let mut open = lock(&self.open);
        if let Some(t) = open.get(&id) {
            let same = {
                let m = lock(&t.manifest);
                m.covered == block_count(req.size) && m.earlier.is_empty() && m.blocks == manifest
            };
            if t.size == req.size && same {
                // Another attempt over a new connection: what arrived counts as resumed.
                let held = lock(&t.held).len() as u64;
                t.resumed.store(held - t.deduped.load(Ordering::Relaxed), Ordering::Relaxed);
                return Ok(self.plan(t));
            }
            open.remove(&id);
        }
        let (mpath, _, _) = self.paths(&id);
        let (data, earlier) = self.open_image(&id, req.size)?;
        let (t, verify_rx) = self.new_transfer(&id, req.size, Manifest::whole(manifest.clone(), req.size), data, true)?;
        if let Some((before, written)) = earlier {
            // Invariant: only blocks of the stored manifest may hold data.
            // Those the new manifest says are zeros are cleared (journaled
            // or not: a crash may have kept unjournaled writes), before the
            // new manifest replaces the old one.
            for &index in before.iter().filter(|i| !manifest.contains_key(i)) {
                t.with_data(|d| d.write_zeroes(index * BLOCK_SIZE, block_len(t.size, index) as usize))?;
            }
            t.with_data(|d| d.flush())?;
            for index in written.into_iter().collect::<HashSet<_>>() {
                let Some(want) = manifest.get(&index) else { continue };
                // Read back from the image: this hash is also the block's
                // read-back for the final digest.
                let h = sha256(&t.read_block(index)?);
                lock(&t.readback).insert(index, h);
                if h == *want {
                    t.mark(index)?;
                    t.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let body = serde_json::to_vec(&req).map_err(|e| Error::BadManifest(e.to_string()))?;
        state_dir::write_atomic(&mpath, &body, SECRET_MODE).map_err(|e| Error::Io(mpath.clone(), io::Error::other(e.to_string())))?;
        // The whole manifest replaces a chunk log of an earlier attempt.
        let _ = state_dir::remove_if_exists(&self.chunks_path(&id));
        self.dedup(&t, t.missing())?;
        t.commit()?;
        let t = Arc::new(t);
        Transfer::start_verifier(&t, verify_rx);
        let plan = self.plan(&t);
        open.insert(id, t);
        Ok(plan)
    }

    /// Copies the blocks of `missing` that the index (or this same disk)
    /// already has; returns how many.
    fn dedup(&self, t: &Transfer, missing: Vec<u64>) -> Result<u64, Error> {
        let wanted: Vec<(u64, BlockHash)> = {
            let m = lock(&t.manifest);
            missing.iter().filter_map(|i| m.blocks.get(i).map(|h| (*i, *h))).collect()
        };
        if wanted.is_empty() {
            return Ok(0);
        }
        let mut by_hash: HashMap<BlockHash, u64> = HashMap::new();
        {
            let hashes: HashSet<BlockHash> = wanted.iter().map(|w| w.1).collect();
            let m = lock(&t.manifest);
            for i in lock(&t.held).iter() {
                if let Some(h) = m.blocks.get(i).filter(|h| hashes.contains(*h)) {
                    by_hash.insert(*h, *i);
                }
            }
        }
        let mut readers = lock(&t.readers);
        let mut copied = 0;
        for (index, want) in wanted {
            let found = match by_hash.get(&want) {
                Some(&i) => Some(t.read_block(i)?),
                None => self.indexed_block(&want, block_len(t.size, index) as usize, &mut readers)?,
            };
            if let Some(raw) = found.filter(|raw| raw.len() as u64 == block_len(t.size, index)) {
                t.write_block(index, &raw)?;
                lock(&t.deduped_blocks).insert(index);
                t.deduped.fetch_add(1, Ordering::Relaxed);
                self.blocks_deduped.fetch_add(1, Ordering::Relaxed);
                by_hash.insert(want, index);
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// A block of `len` bytes with this hash from a stored disk, checked, if
    /// the index knows one and the node holds that disk's key.
    fn indexed_block(
        &self,
        want: &BlockHash,
        len: usize,
        readers: &mut HashMap<String, Option<EncryptedDisk>>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(loc) = lock(&self.index).get(want).cloned() else {
            return Ok(None);
        };
        let reader = match readers.get_mut(&loc.disk) {
            Some(r) => r,
            None => {
                let r = match self.open_stored(&loc.disk) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(disk = %loc.disk, error = %e, "cannot open a stored disk for dedup; its blocks will be sent");
                        None
                    }
                };
                readers.entry(loc.disk.clone()).or_insert(r)
            }
        };
        let Some(r) = reader else {
            if !self.disks_dir.join(format!("{}.img", loc.disk)).is_file() {
                lock(&self.index).remove(want);
            }
            return Ok(None);
        };
        if loc.index * BLOCK_SIZE + len as u64 > r.size() {
            lock(&self.index).remove(want);
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        let path = r.path().to_path_buf();
        r.read_at(&mut buf, loc.index * BLOCK_SIZE).map_err(disk_err(&path))?;
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
            raw_frames: true,
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
            tokio::task::spawn_blocking(move || {
                let written = me.write_frames(&t, rx);
                // Journal what arrived, also when the stream broke.
                let committed = t.commit();
                written.and_then(|n| committed.map(|()| n))
            })
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
            if t.hash_of(f.index) != Some(f.sha256) || u64::from(f.raw_len) != block_len(t.size, f.index) {
                return Err(Error::NotInManifest {
                    id: t.id.to_string(),
                    index: f.index,
                });
            }
            let index = f.index;
            let raw = f.into_block()?;
            t.write_block(index, &raw)?;
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
        let covered = lock(&t.manifest).covered;
        if covered < block_count(t.size) {
            return Err(Error::ManifestIncomplete {
                id: id.to_string(),
                covered,
                blocks: block_count(t.size),
            });
        }
        let manifest = lock(&t.manifest).blocks.clone();
        // Stops the storage daemons dedup read from.
        lock(&t.readers).clear();
        let missing = t.missing().len() as u64;
        if missing > 0 {
            return Err(Error::Incomplete {
                id: id.to_string(),
                missing,
            });
        }
        t.commit()?;
        // Only manifest blocks can hold data (the image starts blank, and
        // begin clears every other block an earlier attempt may have
        // written); the rest count as zeros. Each manifest block was read
        // back after the flush that followed its last write (the read-back
        // thread, resume, or here for any the thread did not get to).
        let stopped = t.stop_verifier();
        if let Err(e) = &stopped {
            tracing::warn!(disk = %id, error = %e, "block read-back thread failed; reading back the rest now");
        }
        let unread: Vec<u64> = {
            let rb = lock(&t.readback);
            let mut v: Vec<u64> = manifest.keys().filter(|i| !rb.contains_key(i)).copied().collect();
            v.sort_unstable();
            v
        };
        t.read_back(&unread)?;
        let mut digest = DiskDigest::new(t.size);
        {
            let rb = lock(&t.readback);
            for index in 0..block_count(t.size) {
                // An all-zero block's hash is the digest's zero hash.
                digest.add(index, manifest.get(&index).and(rb.get(&index)));
            }
        }
        let actual = digest.finish();
        // Close the image cleanly before it moves (or is discarded).
        if let Some(d) = lock(&t.data).take() {
            d.close().map_err(disk_err(&t.data_path))?;
        }
        let (mpath, dpath, jpath) = self.paths(id);
        let cpath = self.chunks_path(id);
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            lock(&self.open).remove(id);
            for p in [&mpath, &dpath, &jpath, &cpath] {
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
        self.add_to_index(id, &manifest)?;
        lock(&self.open).remove(id);
        for p in [&mpath, &jpath, &cpath] {
            let _ = state_dir::remove_if_exists(p);
        }
        Ok(TransferDone {
            id: id.to_string(),
            size: t.size,
            digest: actual,
            blocks: manifest.len() as u64,
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

/// Closes a prepared image that will not be used and deletes its file.
fn discard(p: Option<Prepared>) {
    if let Some(p) = p {
        let path = p.disk.path().to_path_buf();
        let _ = p.disk.close();
        let _ = std::fs::remove_file(path);
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

    fn key(store: &BlockStore, id: &DiskId, byte: u8) {
        store.grant_key(id, Zeroizing::new(vec![byte; 32])).unwrap();
    }

    /// The first `len` bytes of stored disk `id`, read through its key (the
    /// image is whole sectors; the rest reads as zeros).
    fn stored(store: &BlockStore, id: &str, len: usize) -> Vec<u8> {
        let mut d = store.open_stored(id).unwrap().expect("key and disk");
        let mut buf = vec![0u8; d.size() as usize];
        d.read_at(&mut buf, 0).unwrap();
        assert!(buf[len..].iter().all(|&b| b == 0));
        buf.truncate(len);
        buf
    }

    #[tokio::test]
    async fn interrupted_transfer_resumes_and_dedups_a_second_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(1, 6);
        let (m, digest) = manifest(&a);
        let id: DiskId = "a".parse().unwrap();
        assert!(matches!(store.begin(id.clone(), m.clone()), Err(Error::NoKey(_))));
        key(&store, &id, 1);
        let plan = store.begin(id.clone(), m.clone()).unwrap();
        assert_eq!(plan.need, vec![0, 2, 3, 5, 6]);
        // Two blocks arrive, then the link breaks.
        let mut body = frames(&a, &plan.need[..2]);
        body.push(Err("connection reset".into()));
        let e = store.receive(&id, futures_util::stream::iter(body)).await.unwrap_err();
        assert!(matches!(e, Error::Body { .. }), "{e}");
        assert!(matches!(store.finish(&id, &digest), Err(Error::Incomplete { missing: 3, .. })));
        // A restarted node resumes from the journal, once it has the key again.
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        key(&store, &id, 1);
        let plan = store.begin(id.clone(), m.clone()).unwrap();
        assert_eq!((plan.need.clone(), plan.resumed), (vec![3, 5, 6], 2));
        store
            .receive(&id, futures_util::stream::iter(frames(&a, &plan.need)))
            .await
            .unwrap();
        let done = store.finish(&id, &digest).unwrap();
        assert_eq!((done.blocks, done.blocks_sent, done.blocks_resumed), (5, 3, 2));
        assert!(stored(&store, "a", a.len()) == a);
        // At rest the image holds none of the plaintext blocks.
        let file = std::fs::read(dir.path().join("a.img")).unwrap();
        assert!(!file.windows(64).any(|w| w == &a[..64]), "plaintext block at rest");

        // A second disk sharing most blocks: only the changed one is needed.
        let mut b = a.clone();
        b[(3 * BLOCK_SIZE) as usize + 7] ^= 0xff;
        let (m, digest) = manifest(&b);
        let id: DiskId = "b".parse().unwrap();
        key(&store, &id, 2);
        let plan = store.begin(id.clone(), m).unwrap();
        assert_eq!((plan.need.clone(), plan.deduped), (vec![3], 4));
        store
            .receive(&id, futures_util::stream::iter(frames(&b, &plan.need)))
            .await
            .unwrap();
        store.finish(&id, &digest).unwrap();
        assert!(stored(&store, "b", b.len()) == b);
        assert_eq!(store.stats().blocks_deduped, 4);
    }

    /// Blocks `[start, end)` of manifest `m` as a protocol 3 chunk.
    fn chunk_of(m: &TransferBegin, start: u64, end: u64) -> proto::transfer_chunk::TransferChunk {
        proto::transfer_chunk::TransferChunk {
            size: m.size,
            block_size: BLOCK_SIZE,
            start,
            end,
            blocks: m.blocks.iter().filter(|b| b.index >= start && b.index < end).cloned().collect(),
        }
    }

    #[tokio::test]
    async fn a_chunked_manifest_resumes_after_a_cut_and_a_restart_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(3, 9); // data in blocks 0 2 3 5 6 8 9 (9: 100 bytes)
        let (m, digest) = manifest(&a);
        let id: DiskId = "k".parse().unwrap();
        key(&store, &id, 7);
        // Only a chunk from block 0 opens a transfer.
        assert!(matches!(store.chunk(id.clone(), chunk_of(&m, 4, 7)), Err(Error::NotStarted(_))));
        let p = store.chunk(id.clone(), chunk_of(&m, 0, 4)).unwrap();
        assert_eq!((p.need.clone(), p.resumed, p.deduped), (vec![0, 2, 3], 0, 0));
        let e = store.chunk(id.clone(), chunk_of(&m, 5, 8)).unwrap_err();
        assert!(matches!(e, Error::ChunkOrder { start: 5, covered: 4, .. }), "{e}");
        // Blocks of the first chunk flow while the next chunk comes.
        store.receive(&id, futures_util::stream::iter(frames(&a, &[0, 2]))).await.unwrap();
        let p = store.chunk(id.clone(), chunk_of(&m, 4, 7)).unwrap();
        assert_eq!(p.need, vec![5, 6]);
        // Finish before the manifest covers the disk: refused.
        let e = store.finish(&id, &digest).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ManifestIncomplete {
                    covered: 7,
                    blocks: 10,
                    ..
                }
            ),
            "{e}"
        );
        // The link breaks after block 5.
        let mut body = frames(&a, &[5]);
        body.push(Err("connection reset".into()));
        assert!(store.receive(&id, futures_util::stream::iter(body)).await.is_err());
        // The node restarts: the sender starts again at block 0 and is
        // asked only for what did not arrive.
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        key(&store, &id, 7);
        let p = store.chunk(id.clone(), chunk_of(&m, 0, 4)).unwrap();
        assert_eq!((p.need.clone(), p.resumed), (vec![3], 2));
        let p = store.chunk(id.clone(), chunk_of(&m, 4, 10)).unwrap();
        assert_eq!((p.need.clone(), p.resumed), (vec![6, 8, 9], 1));
        store
            .receive(&id, futures_util::stream::iter(frames(&a, &[3, 6, 8, 9])))
            .await
            .unwrap();
        let done = store.finish(&id, &digest).unwrap();
        assert_eq!((done.blocks, done.blocks_sent, done.blocks_resumed), (7, 4, 3));
        assert!(stored(&store, "k", a.len()) == a);
        assert!(!dir.path().join(".transfers/k.chunks").exists());

        // A second disk with one block changed, in chunks: only that block travels.
        let mut b = a.clone();
        b[(6 * BLOCK_SIZE) as usize + 9] ^= 0x11;
        let (m, digest) = manifest(&b);
        let id: DiskId = "l".parse().unwrap();
        key(&store, &id, 8);
        let p = store.chunk(id.clone(), chunk_of(&m, 0, 6)).unwrap();
        assert_eq!((p.need.clone(), p.deduped), (vec![], 4));
        let p = store.chunk(id.clone(), chunk_of(&m, 6, 10)).unwrap();
        assert_eq!((p.need.clone(), p.deduped), (vec![6], 2));
        store.receive(&id, futures_util::stream::iter(frames(&b, &[6]))).await.unwrap();
        let done = store.finish(&id, &digest).unwrap();
        assert_eq!((done.blocks_sent, done.blocks_deduped, done.blocks_resumed), (1, 6, 0));
        assert!(stored(&store, "l", b.len()) == b);
    }

    #[tokio::test]
    async fn a_new_manifest_clears_what_an_interrupted_chunked_attempt_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(5, 6);
        let (m, _) = manifest(&a);
        let id: DiskId = "z".parse().unwrap();
        key(&store, &id, 9);
        let p = store.chunk(id.clone(), chunk_of(&m, 0, 7)).unwrap();
        store.receive(&id, futures_util::stream::iter(frames(&a, &p.need))).await.unwrap();
        // The source changed (a pre-copy round scans again): block 2 is now
        // zeros, block 3 differs. The node restarted in between.
        let mut b = a.clone();
        b[(2 * BLOCK_SIZE) as usize..][..BLOCK_SIZE as usize].fill(0);
        b[(3 * BLOCK_SIZE) as usize] ^= 1;
        let (m2, digest2) = manifest(&b);
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        key(&store, &id, 9);
        // In chunks (protocol 3) ...
        let p = store.chunk(id.clone(), chunk_of(&m2, 0, 4)).unwrap();
        assert_eq!((p.need.clone(), p.resumed), (vec![3], 1));
        // ... then the sender falls back to a whole manifest (protocol 2):
        // the chunk log counts as the earlier manifest.
        let plan = store.begin(id.clone(), m2.clone()).unwrap();
        assert_eq!(plan.need, vec![3]);
        store
            .receive(&id, futures_util::stream::iter(frames(&b, &plan.need)))
            .await
            .unwrap();
        store.finish(&id, &digest2).unwrap();
        assert!(stored(&store, "z", b.len()) == b, "block 2 was cleared");
    }

    #[tokio::test]
    async fn the_digest_is_of_what_was_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(4, 3);
        let (m, digest) = manifest(&a);
        let id: DiskId = "r".parse().unwrap();
        key(&store, &id, 5);
        let plan = store.begin(id.clone(), m).unwrap();
        store
            .receive(&id, futures_util::stream::iter(frames(&a, &plan.need)))
            .await
            .unwrap();
        // A write that did not come through a checked frame (as a fault in
        // the storage path would) changes what is on disk after the block
        // arrived and was verified: the read-back sees it.
        let t = store.get(&id).unwrap();
        t.write_block(0, &vec![0x5a; BLOCK_SIZE as usize]).unwrap();
        drop(t);
        let e = store.finish(&id, &digest).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    }

    #[tokio::test]
    async fn wrong_blocks_and_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::new(dir.path().to_path_buf()));
        let a = disk(9, 2);
        let (m, _) = manifest(&a);
        let id: DiskId = "c".parse().unwrap();
        key(&store, &id, 3);
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
