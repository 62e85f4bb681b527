//! The manifest of a disk at a point (hash of each non-zero block) and how
//! a round brings it up to date: by reading every allocated block (a full
//! scan), or only the blocks a dirty bitmap marks since the manifest's point.

use std::collections::BTreeMap;
use std::path::Path;

use proto::transfer::{block_count, block_len, hex, parse_hash, BlockEntry, BlockHash, DiskDigest, TransferBegin, BLOCK_SIZE};

use crate::moves::extents::GuestView;
use crate::moves::transfer::TransferError;

/// Non-zero blocks of a disk of `size` bytes, by index.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Guest-visible size.
    pub size: u64,
    blocks: BTreeMap<u64, BlockHash>,
}

impl Manifest {
    /// An empty (all-zero) disk of `size` bytes.
    pub fn zeros(size: u64) -> Manifest {
        Manifest {
            size,
            blocks: BTreeMap::new(),
        }
    }

    /// The manifest a transfer sent (`None` if it is malformed).
    pub fn from_begin(b: &TransferBegin) -> Option<Manifest> {
        let mut blocks = BTreeMap::new();
        for e in &b.blocks {
            blocks.insert(e.index, parse_hash(&e.sha256)?);
        }
        (b.block_size == BLOCK_SIZE).then_some(Manifest { size: b.size, blocks })
    }

    /// As the transfer protocol's manifest.
    pub fn to_begin(&self) -> TransferBegin {
        TransferBegin {
            size: self.size,
            block_size: BLOCK_SIZE,
            blocks: self.blocks.iter().map(|(&index, h)| BlockEntry { index, sha256: hex(h) }).collect(),
        }
    }

    /// Sets block `index` (`None`: all zeros).
    pub fn set(&mut self, index: u64, hash: Option<BlockHash>) {
        match hash {
            Some(h) => self.blocks.insert(index, h),
            None => self.blocks.remove(&index),
        };
    }

    /// The hash of block `index`, if it is not all zeros.
    pub fn get(&self, index: u64) -> Option<&BlockHash> {
        self.blocks.get(&index)
    }

    /// Bytes of the non-zero blocks.
    pub fn data_bytes(&self) -> u64 {
        self.blocks.keys().map(|&i| block_len(self.size, i)).sum()
    }

    /// The whole-disk digest ([`DiskDigest`]) the node must arrive at.
    pub fn digest(&self) -> String {
        let mut d = DiskDigest::new(self.size);
        for i in 0..block_count(self.size) {
            d.add(i, self.blocks.get(&i));
        }
        d.finish()
    }

    /// Reads `blocks` of `view` (on up to four threads: SHA-256 is the cost)
    /// and records their hashes. Returns the bytes read.
    pub fn rescan(&mut self, view: &GuestView, path: &Path, blocks: &[u64]) -> Result<u64, TransferError> {
        let mut read = 0;
        for (index, hash) in crate::moves::transfer::hash_blocks(view, blocks, path)? {
            read += block_len(view.size, index);
            self.set(index, hash);
        }
        Ok(read)
    }
}

/// Block indices (of a disk of `size` bytes) that overlap `extents`
/// (start, length), ascending, each once.
pub fn blocks_in(extents: &[(u64, u64)], size: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &(start, len) in extents.iter().filter(|e| e.1 > 0 && e.0 < size) {
        let last = (start + len).min(size) - 1;
        for b in start / BLOCK_SIZE..=last / BLOCK_SIZE {
            if out.last().is_none_or(|&l| l < b) {
                out.push(b);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::transfer::sha256;

    #[test]
    fn blocks_of_dirty_extents() {
        let mib = BLOCK_SIZE;
        assert_eq!(blocks_in(&[], 10 * mib), Vec::<u64>::new());
        assert_eq!(blocks_in(&[(3 * mib, 65536), (20 * mib, 2 * mib)], 64 * mib), vec![3, 20, 21]);
        // An extent across a block boundary, one past the end, overlapping ones.
        assert_eq!(
            blocks_in(&[(mib - 1, 2), (5 * mib, mib), (5 * mib + 10, 1), (9 * mib, 4 * mib)], 10 * mib),
            vec![0, 1, 5, 9]
        );
    }

    #[test]
    fn round_trips_through_the_transfer_manifest_and_digests_like_a_scan() {
        let mut m = Manifest::zeros(3 * BLOCK_SIZE + 512);
        m.set(1, Some(sha256(b"one")));
        m.set(3, Some(sha256(&[7u8; 512])));
        m.set(2, None);
        let b = m.to_begin();
        assert_eq!(b.blocks.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(Manifest::from_begin(&b).as_ref(), Some(&m));
        assert_eq!(m.data_bytes(), BLOCK_SIZE + 512);
        let mut d = DiskDigest::new(m.size);
        d.add(0, None);
        d.add(1, Some(&sha256(b"one")));
        d.add(2, None);
        d.add(3, Some(&sha256(&[7u8; 512])));
        assert_eq!(m.digest(), d.finish());
        m.set(1, None);
        assert_ne!(m.digest(), Manifest::from_begin(&b).unwrap().digest());
    }
}
