//! Sends a disk to a cloud node block by block ([`proto::transfer`]).
//!
//! 1. Read the allocated blocks of the guest-visible disk ([`GuestView`]),
//!    skip all-zero ones, hash the rest (SHA-256) and compute the whole-disk
//!    digest. Meanwhile the node makes the disk's encrypted image (it needs
//!    only the size, known first).
//! 2. Tell the node the manifest; it answers which blocks it lacks (it keeps
//!    what an earlier attempt delivered and copies what its block index holds).
//! 3. Send the missing blocks zstd-compressed over several parallel HTTPS
//!    streams (mutual TLS). A broken stream is not fatal: begin again, and the
//!    node asks only for what did not arrive.
//! 4. Ask the node to finish: it re-reads the disk and compares digests.
//!
//! Protocol 3 ([`chunked`], the default) overlaps steps 1 to 3: the manifest
//! goes in chunks as they are hashed, the node answers each with the blocks
//! it needs, and those blocks are on the wire while the next chunk is read
//! and hashed. A node before protocol 3 gets the whole manifest (protocol 2).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::transfer::{encode_frame, encode_frame_auto, hex, sha256, BlockEntry, DiskDigest, TransferBegin, TransferDone, BLOCK_SIZE};

use crate::cloud::{CloudClient, CloudError};
use crate::moves::extents::{ExtentError, GuestView};

mod chunked;

/// Errors sending a disk.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading the source disk failed.
    #[error(transparent)]
    Source(#[from] ExtentError),
    /// Reading a block failed.
    #[error("cannot read block {index} of {path}: {source}")]
    Read {
        /// Image.
        path: String,
        /// Block.
        index: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The node refused or could not be reached, after all retries.
    #[error("{0} (gave up after {1} attempts; run the move again to resume, the node keeps the blocks that arrived)")]
    Cloud(#[source] CloudError, u32),
    /// The node stored another digest than ours.
    #[error("disk {id}: the node's digest {theirs} differs from ours {ours}; the copy was not used")]
    Digest {
        /// Disk id.
        id: String,
        /// Ours.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// A worker thread died.
    #[error("transfer worker failed: {0}")]
    Task(String),
}

/// How a transfer runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Parallel HTTPS streams.
    pub streams: usize,
    /// Attempts (begin + send) before giving up.
    pub attempts: u32,
    /// Test hook: the first attempt's streams break after this many frames
    /// each (a cut link, seen by the node as an interrupted body).
    pub break_after_frames: Option<u64>,
    /// Ask the node to make the encrypted image while the disk is hashed
    /// (`POST /v1/transfers/{id}/prepare`).
    pub prepare: bool,
    /// Send blocks zstd does not shrink uncompressed, when the node takes them.
    pub raw_frames: bool,
    /// Send the manifest in chunks while hashing (protocol 3), when the node
    /// takes them; else hash the whole disk first (protocol 2).
    pub chunked: bool,
}

/// Environment variable that makes the sender behave as before protocol 2
/// (no prepare, zstd frames only): for A/B runs of `make bench-move`.
pub const PROTOCOL1_ENV: &str = "ISTHMUS_TRANSFER_PROTOCOL1";

/// Environment variable choosing the sender's protocol for A/B runs of
/// `make bench-move`: `1` (as [`PROTOCOL1_ENV`]), `2` (whole manifest
/// first) or `3` (chunked manifest, the default).
pub const PROTOCOL_ENV: &str = "ISTHMUS_TRANSFER_PROTOCOL";

impl Default for Options {
    fn default() -> Self {
        let protocol = match std::env::var(PROTOCOL_ENV).ok().as_deref().map(str::trim) {
            _ if std::env::var_os(PROTOCOL1_ENV).is_some_and(|v| v != "0") => 1,
            Some("1") => 1,
            Some("2") => 2,
            _ => 3,
        };
        Options {
            streams: 4,
            attempts: 6,
            break_after_frames: None,
            prepare: protocol >= 2,
            raw_frames: protocol >= 2,
            chunked: protocol >= 3,
        }
    }
}

/// What a transfer did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sent {
    /// The node's report.
    pub done: TransferDone,
    /// Bytes of allocated extents at the source.
    pub allocated: u64,
    /// Bytes of the data blocks (allocated, non-zero).
    pub data_bytes: u64,
    /// Attempts it took.
    pub attempts: u32,
    /// Image format of the source.
    pub format: String,
    /// Seconds reading and hashing the source (the manifest); with
    /// protocol 3 the send runs meanwhile.
    pub scan_s: f64,
    /// Seconds from the first begin (protocol 3: the first chunk) to the
    /// last block delivered.
    pub send_s: f64,
    /// Seconds of the node's verification (finish).
    pub finish_s: f64,
}

/// Progress: (bytes of data blocks at the node, bytes of data blocks in all).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

struct Scan {
    view: Arc<GuestView>,
    begin: TransferBegin,
    digest: String,
    data_bytes: u64,
}

fn scan(path: &Path, work: &Path) -> Result<Scan, TransferError> {
    scan_view(GuestView::open(path, work)?, path)
}

fn scan_view(view: GuestView, path: &Path) -> Result<Scan, TransferError> {
    let hashes = hash_blocks(&view, &view.candidate_blocks(), path)?;
    let mut digest = DiskDigest::new(view.size);
    let mut blocks = Vec::new();
    let mut data_bytes = 0;
    let mut next = 0;
    for (index, hash) in hashes {
        while next < index {
            digest.add(next, None);
            next += 1;
        }
        digest.add(index, hash.as_ref());
        if let Some(h) = hash {
            data_bytes += proto::transfer::block_len(view.size, index);
            blocks.push(BlockEntry { index, sha256: hex(&h) });
        }
        next = index + 1;
    }
    let begin = TransferBegin {
        size: view.size,
        block_size: BLOCK_SIZE,
        blocks,
    };
    Ok(Scan {
        digest: digest.finish(),
        view: Arc::new(view),
        begin,
        data_bytes,
    })
}

/// A block index and its hash (`None`: all zeros).
pub(crate) type Hashed = (u64, Option<proto::transfer::BlockHash>);

/// Reads and hashes the `candidates` blocks of `view` on one thread per core
/// (SHA-256 is the cost; reads of the same file or export interleave):
/// `(index, None)` for an all-zero block, ascending.
pub(crate) fn hash_blocks(view: &GuestView, candidates: &[u64], path: &Path) -> Result<Vec<Hashed>, TransferError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let parts: Vec<Result<Vec<Hashed>, TransferError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
                    let mut out = Vec::with_capacity(candidates.len() / threads + 1);
                    for &index in candidates.iter().skip(t).step_by(threads) {
                        view.read_block(index, &mut buf).map_err(|source| TransferError::Read {
                            path: path.display().to_string(),
                            index,
                            source,
                        })?;
                        out.push((index, (!buf.iter().all(|&b| b == 0)).then(|| sha256(&buf))));
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(TransferError::Task("a hashing thread panicked".into())))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(candidates.len());
    for p in parts {
        all.extend(p?);
    }
    all.sort_unstable_by_key(|e| e.0);
    Ok(all)
}

/// The whole-disk digest ([`DiskDigest`]) of the image at `path`, as a
/// transfer computes it (`work` holds a temporary raw copy of non-raw images).
pub fn disk_digest(path: &Path, work: &Path) -> Result<String, TransferError> {
    Ok(scan(path, work)?.digest)
}

/// Sends the disk image at `path` as disk `id` of the node behind `client`.
/// `work` holds a temporary raw copy of non-raw images.
pub async fn send_disk(
    client: &CloudClient,
    id: &str,
    path: &Path,
    work: &Path,
    opts: &Options,
    progress: Progress,
) -> Result<Sent, TransferError> {
    let (p, w) = (path.to_path_buf(), work.to_path_buf());
    let t0 = std::time::Instant::now();
    let view = tokio::task::spawn_blocking(move || GuestView::open(&p, &w))
        .await
        .map_err(|e| TransferError::Task(e.to_string()))??;
    // The node makes the encrypted image (seconds of LUKS key derivation)
    // while we read and hash.
    let prepared = (opts.prepare && view.size > 0).then(|| {
        let (client, id, size) = (client.clone(), id.to_string(), view.size);
        tokio::spawn(async move { client.transfer_prepare(&id, size).await })
    });
    let (scan, scan_s) = if opts.chunked {
        match chunked::send(client, id, Arc::new(view), path, opts, progress.clone(), t0, prepared).await? {
            chunked::Outcome::Sent(s) => return Ok(s),
            // A node before protocol 3: the whole manifest, as protocol 2.
            chunked::Outcome::OldNode(scan, scan_s) => (Arc::new(scan), scan_s),
        }
    } else {
        let p = path.to_path_buf();
        let scan = tokio::task::spawn_blocking(move || scan_view(view, &p))
            .await
            .map_err(|e| TransferError::Task(e.to_string()))??;
        let scan_s = t0.elapsed().as_secs_f64();
        wait_prepared(id, prepared).await;
        (Arc::new(scan), scan_s)
    };
    send_whole(client, id, scan, scan_s, opts, progress).await
}

/// After an interrupted attempt (`e`): counts the next one, or gives up
/// after [`Options::attempts`].
pub(crate) fn retry_or_give_up(opts: &Options, id: &str, e: CloudError, attempt: &mut u32) -> Result<(), TransferError> {
    if *attempt >= opts.attempts {
        return Err(TransferError::Cloud(e, *attempt));
    }
    tracing::warn!(disk = id, attempt = *attempt, error = %e, "block transfer interrupted; resuming");
    *attempt += 1;
    Ok(())
}

/// The node's answer to finish: its report when its digest is `ours`, an
/// error when the digests differ, or (inner `Err`) a failure to retry.
pub(crate) fn check_finish(
    id: &str,
    ours: &str,
    finished: Result<TransferDone, CloudError>,
) -> Result<Result<TransferDone, CloudError>, TransferError> {
    match finished {
        Ok(d) if d.digest == ours => Ok(Ok(d)),
        Ok(d) => Err(TransferError::Digest {
            id: id.into(),
            ours: ours.into(),
            theirs: d.digest,
        }),
        Err(e) => Ok(Err(e)),
    }
}

/// Waits for every block stream of one attempt; the last upload error, if
/// any (the attempt then begins again), or a fatal error when a stream task
/// itself failed.
pub(crate) async fn await_streams(
    tasks: Vec<tokio::task::JoinHandle<Result<proto::transfer::BlocksReceived, CloudError>>>,
) -> Result<Option<CloudError>, TransferError> {
    let mut failed = None;
    for t in tasks {
        if let Err(e) = t.await.map_err(|e| TransferError::Task(e.to_string()))? {
            failed = Some(e);
        }
    }
    Ok(failed)
}

/// `POST /v1/transfers/{id}/prepare` running (see [`Options::prepare`]).
type Preparing = Option<tokio::task::JoinHandle<Result<(), CloudError>>>;

/// Waits for the node's answer to prepare; never fatal: the begin makes
/// the image (older nodes have no prepare).
async fn wait_prepared(id: &str, prepared: Preparing) {
    if let Some(p) = prepared {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::info!(disk = id, error = %e, "the node did not prepare the image; it makes it at begin"),
            Err(e) => tracing::info!(disk = id, error = %e, "prepare task failed; the node makes the image at begin"),
        }
    }
}

/// Protocol 2: the whole manifest, then the blocks the node needs.
async fn send_whole(
    client: &CloudClient,
    id: &str,
    scan: Arc<Scan>,
    scan_s: f64,
    opts: &Options,
    progress: Progress,
) -> Result<Sent, TransferError> {
    let total = scan.data_bytes;
    let t1 = std::time::Instant::now();
    let size_of = |i: u64| proto::transfer::block_len(scan.view.size, i);
    // Attempts = 1 + interrupted rounds.
    let mut attempt = 1;
    let retry = |e: CloudError, attempt: &mut u32| retry_or_give_up(opts, id, e, attempt);
    loop {
        let plan = match client.transfer_begin(id, &scan.begin).await {
            Ok(p) => p,
            Err(e) => {
                retry(e, &mut attempt)?;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                continue;
            }
        };
        let need_bytes: u64 = plan.need.iter().map(|&i| size_of(i)).sum();
        let done = Arc::new(AtomicU64::new(total - need_bytes));
        progress(done.load(Ordering::Relaxed), total);
        let streams = opts.streams.max(1);
        let mut tasks = Vec::new();
        for s in 0..streams {
            let part: Vec<u64> = plan.need.iter().skip(s).step_by(streams).copied().collect();
            if part.is_empty() {
                continue;
            }
            let brk = if attempt == 1 { opts.break_after_frames } else { None };
            let raw = plan.raw_frames && opts.raw_frames;
            let body = frame_stream(scan.clone(), part, raw, brk, done.clone(), total, progress.clone());
            let client = client.clone();
            let id = id.to_string();
            tasks.push(tokio::spawn(async move { client.transfer_blocks(&id, body).await }));
        }
        if let Some(e) = await_streams(tasks).await? {
            // Begin again: the node tells what is still missing.
            retry(e, &mut attempt)?;
            continue;
        }
        let send_s = t1.elapsed().as_secs_f64();
        let t2 = std::time::Instant::now();
        let finished = client.transfer_finish(id, &scan.digest).await;
        let finish_s = t2.elapsed().as_secs_f64();
        tracing::info!(disk = id, scan_s, send_s, finish_s, "disk sent");
        match check_finish(id, &scan.digest, finished)? {
            Ok(d) => {
                return Ok(Sent {
                    scan_s,
                    send_s,
                    finish_s,
                    done: d,
                    allocated: scan.view.allocated(),
                    data_bytes: total,
                    attempts: attempt,
                    format: scan.view.format.clone(),
                })
            }
            Err(e) => retry(e, &mut attempt)?,
        }
    }
}

/// A request body of frames for `blocks`, produced by a blocking thread that
/// reads, compresses and frames one block at a time (`raw_frames`: the node
/// takes blocks zstd does not shrink uncompressed).
fn frame_stream(
    scan: Arc<Scan>,
    blocks: Vec<u64>,
    raw_frames: bool,
    break_after: Option<u64>,
    done: Arc<AtomicU64>,
    total: u64,
    progress: Progress,
) -> reqwest::Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
        let hashes: std::collections::HashMap<u64, &str> = scan.begin.blocks.iter().map(|b| (b.index, b.sha256.as_str())).collect();
        for (n, index) in blocks.into_iter().enumerate() {
            if break_after.is_some_and(|b| n as u64 >= b) {
                let _ = tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "link cut (test hook)",
                )));
                return;
            }
            let h = hashes.get(&index).and_then(|h| proto::transfer::parse_hash(h));
            let item = frame_block(&scan.view, index, h, raw_frames, &mut buf);
            let len = buf.len() as u64;
            if tx.blocking_send(item).is_err() {
                return;
            }
            progress(done.fetch_add(len, Ordering::Relaxed) + len, total);
        }
    });
    reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Reads block `index` of `view` into `buf` and frames it with its hash
/// from the manifest (`None`: hashed here).
fn frame_block(
    view: &GuestView,
    index: u64,
    hash: Option<proto::transfer::BlockHash>,
    raw_frames: bool,
    buf: &mut Vec<u8>,
) -> std::io::Result<Bytes> {
    view.read_block(index, buf)?;
    let h = hash.unwrap_or_else(|| sha256(buf));
    let mut out = Vec::with_capacity(buf.len() + proto::transfer::FRAME_HEADER);
    if raw_frames {
        encode_frame_auto(index, buf, &h, &mut out);
    } else {
        encode_frame(index, buf, &h, &mut out);
    }
    Ok(Bytes::from(out))
}
