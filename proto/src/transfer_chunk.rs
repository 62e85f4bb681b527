//! Transfer protocol 3: the manifest travels in chunks, so that blocks cross
//! the link while the sender still reads and hashes the rest of the disk.
//!
//! `POST /v1/transfers/{id}/chunks` [`TransferChunk`] → [`ChunkPlan`]: a
//! chunk describes the blocks `[start, end)` of the disk (the data blocks
//! listed with their SHA-256, every other block of the range is zeros) and
//! the node answers which of its data blocks it still needs (it keeps what
//! an earlier attempt delivered and copies what its block index holds, as
//! for a whole manifest, [`crate::transfer::TransferBegin`]). Chunks come in
//! order: the first starts at block 0 and (re)opens the transfer (a node
//! that restarted, or a sender that lost its link, starts again at 0 and the
//! node asks only for what it lacks); each next one starts where the node's
//! manifest ends, or earlier (a range sent again). Blocks travel as in
//! protocol 2 (`PUT /v1/transfers/{id}/blocks`), and
//! `POST /v1/transfers/{id}/finish` needs chunks up to the last block.
//! A node without the route answers 404 to the first chunk: the sender then
//! sends the whole manifest at once (protocol 2).

use serde::{Deserialize, Serialize};

use crate::transfer::{checked_geometry, parse_hash, BlockEntry, BlockHash, ManifestError};

/// Largest number of data blocks one chunk may list (the sender sends far fewer).
pub const MAX_CHUNK_BLOCKS: usize = 16 * 1024;

/// `POST /v1/transfers/{id}/chunks`: part of a disk's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferChunk {
    /// Guest-visible size of the whole disk in bytes (the same in every chunk).
    pub size: u64,
    /// Must be [`BLOCK_SIZE`].
    pub block_size: u64,
    /// First block the chunk describes.
    pub start: u64,
    /// One past the last block it describes.
    pub end: u64,
    /// The data blocks of `[start, end)`, ascending; the others are zeros.
    pub blocks: Vec<BlockEntry>,
}

/// A chunk that passed [`TransferChunk::checked`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedChunk {
    /// Disk size in bytes.
    pub size: u64,
    /// First block described.
    pub start: u64,
    /// One past the last block described.
    pub end: u64,
    /// Data blocks of the range, ascending.
    pub blocks: Vec<(u64, BlockHash)>,
}

impl TransferChunk {
    /// Checks the chunk (block size, disk size limit, a range inside the
    /// disk, indices ascending and inside the range, hashes of 64 hex digits).
    pub fn checked(&self) -> Result<CheckedChunk, ManifestError> {
        let bad = |m: String| Err(ManifestError(m));
        let n = checked_geometry(self.size, self.block_size)?;
        if self.start > self.end || self.end > n {
            return bad(format!(
                "chunk of blocks {}..{} does not fit the disk's {n} blocks",
                self.start, self.end
            ));
        }
        if self.blocks.len() > MAX_CHUNK_BLOCKS {
            return bad(format!("chunk lists {} blocks; at most {MAX_CHUNK_BLOCKS}", self.blocks.len()));
        }
        let mut out = Vec::with_capacity(self.blocks.len());
        let mut last = None;
        for b in &self.blocks {
            if b.index < self.start || b.index >= self.end {
                return bad(format!("block {} is outside the chunk {}..{}", b.index, self.start, self.end));
            }
            if last.is_some_and(|l| b.index <= l) {
                return bad(format!("block {} is out of order or repeated", b.index));
            }
            last = Some(b.index);
            let Some(h) = parse_hash(&b.sha256) else {
                return bad(format!("block {}: sha256 is not 64 hex digits", b.index));
            };
            out.push((b.index, h));
        }
        Ok(CheckedChunk {
            size: self.size,
            start: self.start,
            end: self.end,
            blocks: out,
        })
    }
}

/// The node's answer to a [`TransferChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlan {
    /// Disk id.
    pub id: String,
    /// Indices of the chunk's blocks to send.
    pub need: Vec<u64>,
    /// Blocks of the chunk already held from an earlier attempt.
    pub resumed: u64,
    /// Blocks of the chunk found in the node's block index and copied locally.
    pub deduped: u64,
    /// The node reads uncompressed frames (`IXR1`).
    pub raw_frames: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::{hex, sha256, BLOCK_SIZE, MAX_TRANSFER_BYTES};

    fn chunk(start: u64, end: u64, idx: &[u64]) -> TransferChunk {
        TransferChunk {
            size: 10 * BLOCK_SIZE + 1,
            block_size: BLOCK_SIZE,
            start,
            end,
            blocks: idx
                .iter()
                .map(|&index| BlockEntry {
                    index,
                    sha256: hex(&sha256(&index.to_be_bytes())),
                })
                .collect(),
        }
    }

    #[test]
    fn chunks_are_checked() {
        let c = chunk(2, 6, &[2, 5]).checked().unwrap();
        assert_eq!((c.start, c.end, c.blocks.len()), (2, 6, 2));
        assert_eq!(c.blocks[1].1, sha256(&5u64.to_be_bytes()));
        // The last block (of one byte) is inside the disk; 12 is not.
        assert!(chunk(0, 11, &[10]).checked().is_ok());
        for (bad, why) in [
            (chunk(0, 12, &[]), "beyond the disk"),
            (chunk(5, 4, &[]), "backwards"),
            (chunk(2, 6, &[6]), "outside the range"),
            (chunk(2, 6, &[1]), "before the range"),
            (chunk(2, 6, &[4, 3]), "out of order"),
            (chunk(2, 6, &[3, 3]), "repeated"),
        ] {
            assert!(bad.checked().is_err(), "{why}");
        }
        let mut c = chunk(0, 1, &[0]);
        c.blocks[0].sha256 = "zz".into();
        assert!(c.checked().is_err());
        let mut c = chunk(0, 1, &[]);
        c.block_size = 4096;
        assert!(c.checked().is_err());
        c.block_size = BLOCK_SIZE;
        c.size = MAX_TRANSFER_BYTES + 1;
        assert!(c.checked().is_err());
        let json = r#"{"size":1,"block_size":1048576,"start":0,"end":1,"blocks":[],"x":1}"#;
        assert!(serde_json::from_str::<TransferChunk>(json).is_err(), "unknown fields are refused");
    }
}
