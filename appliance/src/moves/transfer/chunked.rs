//! Transfer protocol 3 ([`proto::transfer_chunk`]): the scan and the send
//! overlap.
//!
//! A scanner thread reads and hashes the allocated blocks in order, a chunk
//! of [`CHUNK_BLOCKS`] candidate blocks at a time (the first one smaller, so
//! the first blocks leave early), and hands each chunk over as soon as it is
//! hashed; it also computes the whole-disk digest, which needs every block
//! in order. The sender posts each chunk (`POST /v1/transfers/{id}/chunks`)
//! and queues the blocks the node asks for; stream threads take blocks from
//! that one queue, read, frame and send them over parallel `PUT .../blocks`
//! requests that stay open for the whole attempt. A broken stream ends the
//! attempt: the others stop, and the next attempt sends the chunks hashed so
//! far again from block 0 (the node answers only what it still lacks) and
//! goes on with the rest.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::transfer::{block_count, block_len, hex, BlockEntry, BlockHash, DiskDigest, TransferBegin, BLOCK_SIZE};
use proto::transfer_chunk::TransferChunk;

use super::{frame_block, hash_blocks, wait_prepared, Options, Preparing, Progress, Scan, Sent, TransferError};
use crate::cloud::{CloudClient, CloudError};
use crate::moves::extents::GuestView;

/// Candidate blocks per chunk (32 MiB: a third of a second at 1 Gbit/s,
/// against a chunk's round trip of a few milliseconds).
const CHUNK_BLOCKS: usize = 32;

/// Candidate blocks of the first chunk.
const FIRST_CHUNK_BLOCKS: usize = 8;

/// One hashed chunk: blocks `[start, end)` and its data blocks.
struct Hashed {
    start: u64,
    end: u64,
    blocks: Vec<(u64, BlockHash)>,
    /// Bytes of its data blocks.
    bytes: u64,
    /// Bytes of the candidate blocks after it (not hashed yet).
    rest: u64,
}

/// What the scanner hands over.
enum Scanned {
    /// The next chunk.
    Chunk(Arc<Hashed>),
    /// The end: the whole-disk digest, data bytes, seconds since the start.
    Done { digest: String, data_bytes: u64, scan_s: f64 },
}

/// How a protocol 3 send ended.
pub(super) enum Outcome {
    /// The disk is on the node.
    Sent(Sent),
    /// The node does not take chunks: the whole scan and its seconds, to
    /// send with protocol 2.
    OldNode(Scan, f64),
}

/// Reads and hashes `view` chunk by chunk on a thread of its own.
fn start_scanner(view: Arc<GuestView>, path: &Path, t0: Instant) -> tokio::sync::mpsc::UnboundedReceiver<Result<Scanned, TransferError>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let candidates = view.candidate_blocks();
        let n = block_count(view.size);
        let mut rest: u64 = candidates.iter().map(|&i| block_len(view.size, i)).sum();
        let mut digest = DiskDigest::new(view.size);
        let mut data_bytes = 0;
        let mut at = 0;
        let mut start = 0;
        loop {
            let take = if at == 0 { FIRST_CHUNK_BLOCKS } else { CHUNK_BLOCKS };
            let part = &candidates[at..(at + take).min(candidates.len())];
            at += part.len();
            rest -= part.iter().map(|&i| block_len(view.size, i)).sum::<u64>();
            let end = candidates.get(at).copied().unwrap_or(n);
            let hashed = match hash_blocks(&view, part, &path) {
                Ok(h) => h,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut blocks = Vec::with_capacity(hashed.len());
            let mut bytes = 0;
            let mut next = start;
            for (index, hash) in hashed {
                while next < index {
                    digest.add(next, None);
                    next += 1;
                }
                digest.add(index, hash.as_ref());
                next = index + 1;
                if let Some(h) = hash {
                    bytes += block_len(view.size, index);
                    blocks.push((index, h));
                }
            }
            while next < end {
                digest.add(next, None);
                next += 1;
            }
            data_bytes += bytes;
            let chunk = Hashed {
                start,
                end,
                blocks,
                bytes,
                rest,
            };
            if tx.send(Ok(Scanned::Chunk(Arc::new(chunk)))).is_err() {
                return; // the sender gave up
            }
            start = end;
            if end >= n {
                break;
            }
        }
        let _ = tx.send(Ok(Scanned::Done {
            digest: digest.finish(),
            data_bytes,
            scan_s: t0.elapsed().as_secs_f64(),
        }));
    });
    rx
}

fn wire(size: u64, c: &Hashed) -> TransferChunk {
    TransferChunk {
        size,
        block_size: BLOCK_SIZE,
        start: c.start,
        end: c.end,
        blocks: c
            .blocks
            .iter()
            .map(|(index, h)| BlockEntry {
                index: *index,
                sha256: hex(h),
            })
            .collect(),
    }
}

/// True when the node answered as one before protocol 3 (no such route).
fn old_node(e: &CloudError) -> bool {
    matches!(e, CloudError::Refused { status: 404 | 405, .. })
}

/// Sends the disk behind `view` with protocol 3 (see the module docs);
/// `t0`: when the send began (for `scan_s`), `prepared`: the node making
/// the image, awaited before the first chunk.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    client: &CloudClient,
    id: &str,
    view: Arc<GuestView>,
    path: &Path,
    opts: &Options,
    progress: Progress,
    t0: Instant,
    prepared: Preparing,
) -> Result<Outcome, TransferError> {
    let size = view.size;
    let mut scanner = start_scanner(view.clone(), path, t0);
    wait_prepared(id, prepared).await;
    let t1 = Instant::now();
    let mut chunks: Vec<Arc<Hashed>> = Vec::new();
    let mut end: Option<(String, u64, f64)> = None;
    // The progress total: bytes of the data blocks hashed so far and of the
    // candidate blocks still to hash (some will be zeros), so it shrinks to
    // the data bytes as the scan goes.
    let mut hashed_bytes = 0;
    let known = Arc::new(AtomicU64::new(0));
    let mut attempt = 1;
    let retry = |e: CloudError, attempt: &mut u32| super::retry_or_give_up(opts, id, e, attempt);
    loop {
        let done = Arc::new(AtomicU64::new(0));
        let mut streams: Option<Streams> = None;
        let mut next = 0;
        let posted: Result<(), CloudError> = loop {
            if streams.as_ref().is_some_and(|s| s.abort.load(Ordering::Acquire)) {
                break Ok(()); // a stream broke: its error ends the attempt
            }
            let chunk = match chunks.get(next) {
                Some(c) => c.clone(),
                None if end.is_some() => break Ok(()),
                None => match scanner.recv().await {
                    Some(Ok(Scanned::Chunk(c))) => {
                        hashed_bytes += c.bytes;
                        known.store(hashed_bytes + c.rest, Ordering::Relaxed);
                        chunks.push(c.clone());
                        c
                    }
                    Some(Ok(Scanned::Done {
                        digest,
                        data_bytes,
                        scan_s,
                    })) => {
                        end = Some((digest, data_bytes, scan_s));
                        continue;
                    }
                    Some(Err(e)) => {
                        if let Some(s) = streams.take() {
                            s.stop().await;
                        }
                        return Err(e);
                    }
                    None => return Err(TransferError::Task("the scanning thread ended early".into())),
                },
            };
            let plan = match client.transfer_chunk(id, &wire(size, &chunk)).await {
                Ok(p) => p,
                Err(e) if attempt == 1 && next == 0 && old_node(&e) => {
                    tracing::info!(
                        disk = id,
                        "the node does not take manifest chunks; sending the whole manifest (protocol 2)"
                    );
                    return old_protocol(view, scanner, chunks, end, size)
                        .await
                        .map(|(s, secs)| Outcome::OldNode(s, secs));
                }
                Err(e) => break Err(e),
            };
            next += 1;
            let need_bytes: u64 = plan.need.iter().map(|&i| block_len(size, i)).sum();
            done.fetch_add(chunk.bytes.saturating_sub(need_bytes), Ordering::Relaxed);
            progress(done.load(Ordering::Relaxed), known.load(Ordering::Relaxed));
            if plan.need.is_empty() {
                continue;
            }
            let s = streams.get_or_insert_with(|| {
                let brk = if attempt == 1 { opts.break_after_frames } else { None };
                let raw = plan.raw_frames && opts.raw_frames;
                Streams::start(
                    client,
                    id,
                    &view,
                    opts.streams.max(1),
                    raw,
                    brk,
                    done.clone(),
                    known.clone(),
                    progress.clone(),
                )
            });
            let hashes: std::collections::HashMap<u64, BlockHash> = chunk.blocks.iter().copied().collect();
            for i in plan.need {
                if let Some(h) = hashes.get(&i) {
                    // Fails only when every stream ended; their errors say why.
                    let _ = s.queue.send((i, *h));
                }
            }
        };
        let streamed = match streams {
            Some(s) => s.finish().await?,
            None => Ok(()),
        };
        if let Err(e) = posted.and(streamed) {
            retry(e, &mut attempt)?;
            continue;
        }
        let Some((digest, data_bytes, scan_s)) = end.clone() else {
            return Err(TransferError::Task("the scan ended without a digest".into()));
        };
        let send_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let finished = client.transfer_finish(id, &digest).await;
        let finish_s = t2.elapsed().as_secs_f64();
        tracing::info!(disk = id, scan_s, send_s, finish_s, chunks = chunks.len(), "disk sent (protocol 3)");
        match super::check_finish(id, &digest, finished)? {
            Ok(d) => {
                return Ok(Outcome::Sent(Sent {
                    done: d,
                    allocated: view.allocated(),
                    data_bytes,
                    attempts: attempt,
                    format: view.format.clone(),
                    scan_s,
                    send_s,
                    finish_s,
                }))
            }
            Err(e) => retry(e, &mut attempt)?,
        }
    }
}

/// Finishes the scan and assembles the whole manifest for a node before
/// protocol 3.
async fn old_protocol(
    view: Arc<GuestView>,
    mut scanner: tokio::sync::mpsc::UnboundedReceiver<Result<Scanned, TransferError>>,
    mut chunks: Vec<Arc<Hashed>>,
    mut end: Option<(String, u64, f64)>,
    size: u64,
) -> Result<(Scan, f64), TransferError> {
    while end.is_none() {
        match scanner.recv().await {
            Some(Ok(Scanned::Chunk(c))) => chunks.push(c),
            Some(Ok(Scanned::Done {
                digest,
                data_bytes,
                scan_s,
            })) => end = Some((digest, data_bytes, scan_s)),
            Some(Err(e)) => return Err(e),
            None => return Err(TransferError::Task("the scanning thread ended early".into())),
        }
    }
    let (digest, data_bytes, scan_s) = end.expect("loop ends with the digest");
    let blocks = chunks
        .iter()
        .flat_map(|c| c.blocks.iter())
        .map(|(index, h)| BlockEntry {
            index: *index,
            sha256: hex(h),
        })
        .collect();
    let scan = Scan {
        view,
        begin: TransferBegin {
            size,
            block_size: BLOCK_SIZE,
            blocks,
        },
        digest,
        data_bytes,
    };
    Ok((scan, scan_s))
}

/// The parallel block requests of one attempt, fed from one queue.
struct Streams {
    queue: std::sync::mpsc::Sender<(u64, BlockHash)>,
    /// Set when a stream broke: the others stop after their current block.
    abort: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Result<(), CloudError>>,
}

impl Streams {
    #[allow(clippy::too_many_arguments)]
    fn start(
        client: &CloudClient,
        id: &str,
        view: &Arc<GuestView>,
        streams: usize,
        raw_frames: bool,
        break_after: Option<u64>,
        done: Arc<AtomicU64>,
        known: Arc<AtomicU64>,
        progress: Progress,
    ) -> Streams {
        let (queue, rx) = std::sync::mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let abort = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..streams {
            let body = queue_stream(
                view.clone(),
                rx.clone(),
                raw_frames,
                break_after,
                abort.clone(),
                done.clone(),
                known.clone(),
                progress.clone(),
            );
            let (client, id, abort) = (client.clone(), id.to_string(), abort.clone());
            tasks.spawn(async move {
                let r = client.transfer_blocks(&id, body).await.map(drop);
                if r.is_err() {
                    abort.store(true, Ordering::Release);
                }
                r
            });
        }
        Streams { queue, abort, tasks }
    }

    /// Closes the queue and waits for every request; the first error.
    async fn finish(mut self) -> Result<Result<(), CloudError>, TransferError> {
        drop(self.queue);
        let mut first = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(Err(e)) if first.is_ok() => first = Err(e),
                Ok(_) => {}
                Err(e) => return Err(TransferError::Task(e.to_string())),
            }
        }
        Ok(first)
    }

    /// Stops every stream and waits for them.
    async fn stop(self) {
        self.abort.store(true, Ordering::Release);
        let _ = self.finish().await;
    }
}

/// A request body of frames for blocks taken from `queue` until it closes
/// (or `abort`), made by a blocking thread that reads, compresses and
/// frames one block at a time.
#[allow(clippy::too_many_arguments)]
fn queue_stream(
    view: Arc<GuestView>,
    queue: Arc<Mutex<std::sync::mpsc::Receiver<(u64, BlockHash)>>>,
    raw_frames: bool,
    break_after: Option<u64>,
    abort: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    known: Arc<AtomicU64>,
    progress: Progress,
) -> reqwest::Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
        let mut sent = 0u64;
        loop {
            if abort.load(Ordering::Acquire) {
                return;
            }
            // Wakes now and then to see `abort` while the queue is idle.
            let next = queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv_timeout(Duration::from_millis(200));
            let (index, hash) = match next {
                Ok(b) => b,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if break_after.is_some_and(|b| sent >= b) {
                let _ = tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "link cut (test hook)",
                )));
                return;
            }
            let item = frame_block(&view, index, Some(hash), raw_frames, &mut buf);
            let len = buf.len() as u64;
            if tx.blocking_send(item).is_err() {
                return;
            }
            sent += 1;
            progress(done.fetch_add(len, Ordering::Relaxed) + len, known.load(Ordering::Relaxed));
        }
    });
    reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
