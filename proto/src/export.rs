//! Reading a disk back from a cloud node: what moves out of a cloud (cloud →
//! data center, cloud A → cloud B) pull, over the same mutual TLS as
//! [`crate::transfer`] and with the same block frames.
//!
//! Routes (mTLS):
//! - `GET  /v1/disks/{id}/manifest` → [`DiskManifest`] (refused while a
//!   running guest uses the disk: its blocks would change under the reader)
//! - `POST /v1/disks/{id}/read` [`ReadBlocks`] → `application/octet-stream`:
//!   one [`crate::transfer::encode_frame`] frame per asked block, in order.

use serde::{Deserialize, Serialize};

use crate::transfer::{BlockEntry, ManifestError, TransferBegin, BLOCK_SIZE};

/// Most blocks one read request may ask for (64 GiB of 1 MiB blocks, the
/// transfer limit).
pub const MAX_READ_BLOCKS: usize = 65_536;

/// What a node holds for one disk: its size, the SHA-256 of each non-zero
/// block and the whole-disk digest ([`crate::transfer::DiskDigest`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskManifest {
    /// Disk id on the node.
    pub id: String,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Block size (always [`BLOCK_SIZE`]).
    pub block_size: u64,
    /// The non-zero blocks, ascending.
    pub blocks: Vec<BlockEntry>,
    /// Whole-disk digest, hex.
    pub digest: String,
}

impl DiskManifest {
    /// The same blocks as a transfer manifest, e.g. to send them on to
    /// another node or to validate them with [`TransferBegin::checked_blocks`].
    pub fn as_begin(&self) -> TransferBegin {
        TransferBegin {
            size: self.size,
            block_size: self.block_size,
            blocks: self.blocks.clone(),
        }
    }

    /// Checks a manifest that came from the network: block size, indices in
    /// range and ascending, hashes well formed, digest 64 hex digits.
    pub fn checked_blocks(&self) -> Result<std::collections::HashMap<u64, crate::transfer::BlockHash>, ManifestError> {
        if self.block_size != BLOCK_SIZE {
            return Err(ManifestError(format!(
                "block size {} (this version reads {BLOCK_SIZE})",
                self.block_size
            )));
        }
        if crate::transfer::parse_hash(&self.digest).is_none() {
            return Err(ManifestError(format!("digest {:?} is not 64 hex digits", self.digest)));
        }
        self.as_begin().checked_blocks()
    }
}

/// Which blocks to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBlocks {
    /// Block indices (each in the manifest), at most [`MAX_READ_BLOCKS`].
    pub blocks: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::{hex, sha256};

    fn manifest() -> DiskManifest {
        DiskManifest {
            id: "d".into(),
            size: 3 * BLOCK_SIZE,
            block_size: BLOCK_SIZE,
            blocks: vec![BlockEntry {
                index: 1,
                sha256: hex(&sha256(b"x")),
            }],
            digest: hex(&sha256(b"whole")),
        }
    }

    #[test]
    fn a_good_manifest_passes_and_bad_ones_say_why() {
        assert_eq!(manifest().checked_blocks().unwrap().len(), 1);
        let mut m = manifest();
        m.block_size = 4096;
        assert!(m.checked_blocks().unwrap_err().0.contains("block size"));
        let mut m = manifest();
        m.digest = "zz".into();
        assert!(m.checked_blocks().unwrap_err().0.contains("digest"));
        let mut m = manifest();
        m.blocks[0].index = 3;
        assert!(m.checked_blocks().is_err(), "index past the end");
    }
}
