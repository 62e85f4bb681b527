//! Transfer protocol 3 on the node ([`proto::transfer_chunk`]): the
//! manifest arrives in chunks, each answered with the blocks of its range
//! the node still needs, so blocks flow while the sender hashes the rest.
//!
//! The node keeps the invariant of protocol 2 — only blocks of the stored
//! manifest may hold data in the image — with a chunk log instead of a
//! whole manifest: `disks/.transfers/id.chunks` holds a header (`"IXM3"`,
//! the disk size) and records (`start`, `end`, count, the data block
//! indices of `[start, end)`, all u64/u32 big-endian), each appended and
//! synced before its chunk is answered. Folding the records (each replaces
//! its range) gives the blocks that may hold data; hashes are not needed
//! there, since a resumed block counts as held only after its content,
//! read back from the image, hashes to the new manifest's hash. Blocks of
//! an earlier attempt that a chunk says are zeros are cleared (and flushed)
//! before its record is written.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proto::transfer::{block_count, block_len, sha256, BlockHash, BLOCK_SIZE};
use proto::transfer_chunk::{CheckedChunk, ChunkPlan, TransferChunk};

use super::{io_err, lock, BlockStore, Error, Manifest, Prior, Transfer};
use crate::disks::DiskId;
use crate::state_dir::{self, SECRET_MODE};

/// Magic at the start of a chunk log.
const LOG_MAGIC: [u8; 4] = *b"IXM3";

/// What a block of a chunk's range held before the chunk.
enum Was {
    /// A block of the manifest the node holds, with this hash.
    Held(BlockHash),
    /// A block that may hold other data.
    Dirty,
    /// A block the journal of an earlier attempt names.
    Journaled,
}

impl BlockStore {
    /// Takes one chunk of the manifest of the transfer of `id` (blocking
    /// I/O: call from a blocking thread). A chunk starting at block 0 opens
    /// the transfer, or resumes it (in memory, or from what an earlier
    /// attempt left on disk); the others extend the manifest or describe a
    /// range again. Answers which of the chunk's blocks to send.
    pub fn chunk(&self, id: DiskId, req: TransferChunk) -> Result<ChunkPlan, Error> {
        let c = req.checked().map_err(|e| Error::BadManifest(e.0))?;
        let t = if c.start == 0 {
            self.open_chunked(&id, c.size)?
        } else {
            self.get(&id)?
        };
        if t.size != c.size {
            return Err(Error::BadManifest(format!(
                "chunk of a disk of {} bytes, the open transfer of {id} is of {}; send the chunks again from block 0",
                c.size, t.size
            )));
        }
        let _one = lock(&t.chunking);
        let (resumed, zeroed) = reconcile(&t, &c)?;
        if zeroed {
            t.with_data(|d| d.flush())?;
        }
        if let Err(e) = self.log_chunk(&t, &c) {
            // The log no longer matches memory: the next chunk 0 reopens from disk.
            lock(&self.open).remove(&id);
            return Err(e);
        }
        let deduped = self.dedup(&t, t.missing_in(c.start, c.end))?;
        if deduped > 0 {
            // Copied blocks durable and journaled before the answer; no
            // flush otherwise (the image's flush is the costly part of a
            // chunk, and blocks of earlier chunks may be arriving).
            t.commit()?;
        }
        self.manifest_chunks.fetch_add(1, Ordering::Relaxed);
        Ok(ChunkPlan {
            id: id.to_string(),
            need: t.missing_in(c.start, c.end),
            resumed,
            deduped,
            raw_frames: true,
        })
    }

    /// The open transfer of `id` of `size` bytes, or a new one (on the
    /// earlier attempt's image when one of this size is on disk).
    fn open_chunked(&self, id: &DiskId, size: u64) -> Result<Arc<Transfer>, Error> {
        self.drain(id);
        let mut open = lock(&self.open);
        if let Some(t) = open.get(id) {
            if t.size == size {
                t.resumed.store(0, Ordering::Relaxed);
                self.start_log(t)?;
                return Ok(t.clone());
            }
            open.remove(id);
        }
        let (data, earlier) = self.open_image(id, size)?;
        let mut manifest = Manifest::default();
        let fresh = earlier.is_none();
        if let Some((maybe, journaled)) = earlier {
            manifest.earlier = maybe.into_iter().map(|i| (i, Prior::Dirty)).collect();
            for i in journaled.into_iter().filter(|&i| i < block_count(size)) {
                manifest.earlier.insert(i, Prior::Journaled);
            }
        }
        // The journal of an attempt being resumed goes on: blocks of later
        // chunks are checked against it when their chunk comes.
        let (t, verify_rx) = self.new_transfer(id, size, manifest, data, fresh)?;
        self.start_log(&t)?;
        let t = Arc::new(t);
        Transfer::start_verifier(&t, verify_rx);
        open.insert(id.clone(), t.clone());
        Ok(t)
    }

    /// Starts the chunk log of `t` unless it has one: a header and a record
    /// of every block that may hold data now; it replaces a whole manifest.
    fn start_log(&self, t: &Transfer) -> Result<(), Error> {
        let mut log = lock(&t.chunk_log);
        if log.is_some() {
            return Ok(());
        }
        let path = self.chunks_path(&t.id);
        let mut maybe: Vec<u64> = lock(&t.manifest).maybe_data().into_iter().collect();
        maybe.sort_unstable();
        let mut body = Vec::with_capacity(12 + 20 + 8 * maybe.len());
        body.extend_from_slice(&LOG_MAGIC);
        body.extend_from_slice(&t.size.to_be_bytes());
        record(&mut body, 0, block_count(t.size), &maybe);
        state_dir::write_atomic(&path, &body, SECRET_MODE).map_err(|e| Error::Io(path.clone(), io::Error::other(e.to_string())))?;
        let (mpath, _, _) = self.paths(&t.id);
        let _ = state_dir::remove_if_exists(&mpath);
        *log = Some(OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?);
        Ok(())
    }

    /// Appends the record of chunk `c` to the log of `t` and syncs it.
    fn log_chunk(&self, t: &Transfer, c: &CheckedChunk) -> Result<(), Error> {
        let path = self.chunks_path(&t.id);
        let mut log = lock(&t.chunk_log);
        let f: &mut File = log.as_mut().ok_or_else(|| Error::NotStarted(t.id.to_string()))?;
        let idx: Vec<u64> = c.blocks.iter().map(|b| b.0).collect();
        let mut out = Vec::with_capacity(20 + 8 * idx.len());
        record(&mut out, c.start, c.end, &idx);
        f.write_all(&out).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))
    }
}

/// Applies chunk `c` to the manifest of `t`: blocks the chunk says are
/// zeros are cleared, blocks held with another hash are no longer held,
/// journaled blocks of an earlier attempt whose content matches are held.
/// Returns (blocks of the chunk kept from earlier, whether any was cleared).
fn reconcile(t: &Transfer, c: &CheckedChunk) -> Result<(u64, bool), Error> {
    let mut m = lock(&t.manifest);
    if c.start > m.covered {
        return Err(Error::ChunkOrder {
            id: t.id.to_string(),
            start: c.start,
            covered: m.covered,
        });
    }
    let new: HashMap<u64, BlockHash> = c.blocks.iter().copied().collect();
    let mut held = lock(&t.held);
    let mut deduped = lock(&t.deduped_blocks);
    let (mut kept, mut zeroed) = (0, false);
    for index in c.start..c.end {
        let was = if index < m.covered {
            m.blocks
                .get(&index)
                .map(|h| if held.contains(&index) { Was::Held(*h) } else { Was::Dirty })
        } else {
            m.earlier.remove(&index).map(|p| match p {
                Prior::Dirty => Was::Dirty,
                Prior::Journaled => Was::Journaled,
            })
        };
        let want = new.get(&index).copied();
        match (was, want) {
            (None, None) => {}
            (Some(_), None) => {
                t.with_data(|d| d.write_zeroes(index * BLOCK_SIZE, block_len(t.size, index) as usize))?;
                m.blocks.remove(&index);
                held.remove(&index);
                deduped.remove(&index);
                lock(&t.readback).remove(&index);
                zeroed = true;
            }
            (Some(Was::Held(h0)), Some(h)) if h0 == h => {
                if !deduped.contains(&index) {
                    kept += 1;
                }
            }
            (Some(Was::Journaled), Some(h)) => {
                // Read back from the image: this hash is also the block's
                // read-back for the final digest.
                let got = sha256(&t.read_block(index)?);
                lock(&t.readback).insert(index, got);
                if got == h {
                    lock(&t.journal).write_all(&index.to_be_bytes()).map_err(io_err(&t.journal_path))?;
                    held.insert(index);
                    kept += 1;
                }
            }
            (Some(_), Some(_)) => {
                held.remove(&index);
                deduped.remove(&index);
                lock(&t.readback).remove(&index);
            }
            (None, Some(_)) => {}
        }
        if let Some(h) = want {
            m.blocks.insert(index, h);
        }
    }
    m.covered = m.covered.max(c.end);
    t.resumed.fetch_add(kept, Ordering::Relaxed);
    Ok((kept, zeroed))
}

/// Appends a log record.
fn record(out: &mut Vec<u8>, start: u64, end: u64, blocks: &[u64]) {
    out.extend_from_slice(&start.to_be_bytes());
    out.extend_from_slice(&end.to_be_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_be_bytes());
    for i in blocks {
        out.extend_from_slice(&i.to_be_bytes());
    }
}

/// The disk size and the blocks that may hold data, from a chunk log; a
/// torn last record (a crash while it was appended) is ignored: its chunk
/// was never answered. `None` without a readable log.
pub(super) fn read_log(path: &Path) -> Option<(u64, HashSet<u64>)> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 12 || b[..4] != LOG_MAGIC {
        return None;
    }
    let size = u64::from_be_bytes(b[4..12].try_into().ok()?);
    let mut set = HashSet::new();
    let mut rest = &b[12..];
    while rest.len() >= 20 {
        let start = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let end = u64::from_be_bytes(rest[8..16].try_into().ok()?);
        let n = u32::from_be_bytes(rest[16..20].try_into().ok()?) as usize;
        let Some(list) = n.checked_mul(8).and_then(|l| rest.get(20..20 + l)) else {
            break;
        };
        set.retain(|&i| i < start || i >= end);
        set.extend(list.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))));
        rest = &rest[20 + 8 * n..];
    }
    Some((size, set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_folds_ranges_and_ignores_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.chunks");
        let mut b = LOG_MAGIC.to_vec();
        b.extend_from_slice(&(5 * BLOCK_SIZE).to_be_bytes());
        record(&mut b, 0, 5, &[0, 2, 4]);
        record(&mut b, 0, 3, &[1]);
        let whole = b.len();
        record(&mut b, 3, 5, &[3]);
        std::fs::write(&p, &b[..b.len() - 3]).unwrap();
        let (size, set) = read_log(&p).unwrap();
        assert_eq!(size, 5 * BLOCK_SIZE);
        assert_eq!(set, HashSet::from([1, 4]));
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read_log(&p).unwrap().1, HashSet::from([1, 3]));
        std::fs::write(&p, &b[..whole]).unwrap();
        assert_eq!(read_log(&p).unwrap().1, HashSet::from([1, 4]));
        std::fs::write(&p, b"IXM2\0\0\0\0\0\0\0\0").unwrap();
        assert!(read_log(&p).is_none());
    }
}
