//! Sends a disk whose manifest the caller already holds ([`Manifest`]):
//! the transfer protocol of [`crate::moves::transfer`] (begin with the
//! manifest, the node answers which blocks it lacks, those blocks travel as
//! frames over parallel mutual-TLS streams, the node verifies the
//! whole-disk digest), without the full read and hash of the disk that
//! [`crate::moves::transfer::send_disk`] starts with. Only the blocks the
//! node asks for are read again.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::transfer::{block_len, encode_frame, encode_frame_auto, sha256, BLOCK_SIZE};

use crate::cloud::{CloudClient, CloudError};
use crate::moves::dirty::manifest::Manifest;
use crate::moves::extents::GuestView;
use crate::moves::transfer::{retry_or_give_up, Options, Progress, TransferError};

/// What [`send_manifest`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Delivered {
    /// The node's report.
    pub done: proto::transfer::TransferDone,
    /// Bytes in the allocated extents of the source.
    pub allocated: u64,
    /// Attempts it took.
    pub attempts: u32,
    /// Seconds from the first begin to the last block delivered.
    pub send_s: f64,
    /// Seconds of the node's verification (finish).
    pub finish_s: f64,
}

/// Sends `view` (read from `path`), whose content `manifest` describes, as
/// disk `id` of the node behind `client`.
pub async fn send_manifest(
    client: &CloudClient,
    id: &str,
    view: Arc<GuestView>,
    path: &Path,
    manifest: &Manifest,
    opts: &Options,
    progress: Progress,
) -> Result<Delivered, TransferError> {
    let begin = manifest.to_begin();
    let digest = manifest.digest();
    let total = manifest.data_bytes();
    let t1 = Instant::now();
    let mut attempt = 1;
    let retry = |e: CloudError, attempt: &mut u32| retry_or_give_up(opts, id, e, attempt);
    loop {
        let plan = match client.transfer_begin(id, &begin).await {
            Ok(p) => p,
            Err(e) => {
                retry(e, &mut attempt)?;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                continue;
            }
        };
        let need_bytes: u64 = plan.need.iter().map(|&i| block_len(manifest.size, i)).sum();
        let done = Arc::new(AtomicU64::new(total.saturating_sub(need_bytes)));
        progress(done.load(Ordering::Relaxed), total);
        let streams = opts.streams.max(1);
        let raw = plan.raw_frames && opts.raw_frames;
        let mut tasks = Vec::new();
        for s in 0..streams {
            let part: Vec<(u64, Option<proto::transfer::BlockHash>)> = plan
                .need
                .iter()
                .skip(s)
                .step_by(streams)
                .map(|&i| (i, manifest.get(i).copied()))
                .collect();
            if part.is_empty() {
                continue;
            }
            let frames = Frames {
                view: view.clone(),
                path: path.display().to_string(),
                raw,
                done: done.clone(),
                total,
                progress: progress.clone(),
            };
            let (client, id) = (client.clone(), id.to_string());
            tasks.push(tokio::spawn(async move { client.transfer_blocks(&id, frames.body(part)).await }));
        }
        if let Some(e) = crate::moves::transfer::await_streams(tasks).await? {
            // Begin again: the node tells what is still missing.
            retry(e, &mut attempt)?;
            continue;
        }
        let send_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let finished = client.transfer_finish(id, &digest).await;
        let finish_s = t2.elapsed().as_secs_f64();
        match crate::moves::transfer::check_finish(id, &digest, finished)? {
            Ok(d) => {
                return Ok(Delivered {
                    done: d,
                    allocated: view.allocated(),
                    attempts: attempt,
                    send_s,
                    finish_s,
                })
            }
            Err(e) => retry(e, &mut attempt)?,
        }
    }
}

/// What a stream of frames reads its blocks from and reports to.
struct Frames {
    view: Arc<GuestView>,
    path: String,
    raw: bool,
    done: Arc<AtomicU64>,
    total: u64,
    progress: Progress,
}

impl Frames {
    /// A request body of frames for `blocks` (index, manifest hash), read
    /// and framed one at a time on a blocking thread. A block whose content
    /// is no longer its manifest hash still travels with the manifest's
    /// hash: the node refuses it, and the round fails instead of storing a
    /// disk its digest does not describe.
    fn body(self, blocks: Vec<(u64, Option<proto::transfer::BlockHash>)>) -> reqwest::Body {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
            for (index, want) in blocks {
                let item = self
                    .view
                    .read_block(index, &mut buf)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("reading block {index} of {}: {e}", self.path)))
                    .map(|()| {
                        let h = want.unwrap_or_else(|| sha256(&buf));
                        let mut out = Vec::with_capacity(buf.len() + proto::transfer::FRAME_HEADER);
                        if self.raw {
                            encode_frame_auto(index, &buf, &h, &mut out);
                        } else {
                            encode_frame(index, &buf, &h, &mut out);
                        }
                        Bytes::from(out)
                    });
                let len = buf.len() as u64;
                if tx.blocking_send(item).is_err() {
                    return;
                }
                (self.progress)(self.done.fetch_add(len, Ordering::Relaxed) + len, self.total);
            }
        });
        reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
