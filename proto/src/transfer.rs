//! Block transfer of disks between the appliance and a cloud node.
//!
//! A disk travels as its guest-visible (raw) content cut into fixed blocks of
//! [`BLOCK_SIZE`]. Only blocks that hold data go over the wire: unallocated
//! and all-zero blocks are holes at the target. Every block carries its
//! SHA-256, is zstd-compressed, and is verified by the node before it is
//! written; at the end both sides compare a whole-disk digest
//! ([`DiskDigest`]) that the node computes by re-reading what it stored.
//!
//! Routes (mutual TLS), in order of a transfer:
//! - `POST /v1/transfers/{id}/prepare` [`TransferPrepare`] → 204 (optional,
//!   since protocol 2): the disk's size only, sent as soon as the sender knows
//!   it, so the node makes the encrypted image (seconds of key derivation)
//!   while the sender still reads and hashes the disk. A node without the
//!   route answers 404 and makes the image at begin, as before.
//! - `POST /v1/transfers/{id}` [`TransferBegin`] → [`TransferPlan`]: the node
//!   answers which blocks it still needs: blocks it already holds from an
//!   earlier, interrupted attempt and blocks whose content it finds in its
//!   content-addressed block index (base images, earlier moves) are not sent.
//! - `PUT /v1/transfers/{id}/blocks` body: a sequence of frames
//!   ([`encode_frame`], parsed by [`FrameDecoder`]) → [`BlocksReceived`].
//!   Several such requests may run in parallel.
//! - `POST /v1/transfers/{id}/finish` [`TransferFinish`] → [`TransferDone`].
//! - `GET /v1/transfers` → [`TransferStats`] (node-wide counters).
//! - `PUT /v1/disks/{id}/key` [`DiskKeyGrant`] → 204: the disk's encryption
//!   key, made and kept by the appliance; the node holds it only in memory
//!   and stores the disk as a LUKS qcow2 unlocked by it. Sent before every
//!   transfer begin and every guest start. `DELETE /v1/disks/{id}/key` → 204
//!   makes the node forget it.
//!
//! Frame (all integers big-endian):
//! `"IXB1" | index u64 | sha256 [32] | raw_len u32 | zstd_len u32 | zstd bytes`,
//! or, for a block zstd would not shrink (protocol 2, only to a node whose
//! [`TransferPlan::raw_frames`] says it reads them):
//! `"IXR1" | index u64 | sha256 [32] | raw_len u32 | raw_len u32 | raw bytes`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Size of a transfer block (the last block of a disk may be shorter).
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Magic at the start of each frame.
pub const FRAME_MAGIC: [u8; 4] = *b"IXB1";

/// Magic of a frame whose payload is the block itself, not compressed.
pub const FRAME_MAGIC_RAW: [u8; 4] = *b"IXR1";

/// Bytes of each sample [`encode_frame_auto`] compresses to judge a block.
const SAMPLE: usize = 8 << 10;

/// Samples a block must shrink to at most this fraction (in 1/64ths) for
/// [`encode_frame_auto`] to compress it whole.
const SAMPLE_GAIN_64THS: usize = 61;

/// Bytes of a frame before its payload.
pub const FRAME_HEADER: usize = 4 + 8 + 32 + 4 + 4;

/// Largest compressed payload accepted (zstd's worst case for one block plus slack).
pub const MAX_PAYLOAD: usize = BLOCK_SIZE as usize + (BLOCK_SIZE as usize >> 7) + 1024;

/// Largest disk a transfer accepts: 64 GiB.
pub const MAX_TRANSFER_BYTES: u64 = 64 << 30;

/// zstd level the sender uses (fast; the link, not the CPU, should be the limit).
pub const ZSTD_LEVEL: i32 = 1;

/// A block's SHA-256.
pub type BlockHash = [u8; 32];

/// Errors of frame parsing and block decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame does not start with [`FRAME_MAGIC`].
    #[error("block frame does not start with the magic \"IXB1\" (got {0:02x?}): the sender speaks another protocol")]
    Magic([u8; 4]),
    /// An uncompressed frame whose payload length is not its raw length.
    #[error("uncompressed block frame carries {payload} bytes for a block of {raw}")]
    RawPayload {
        /// Raw length announced.
        raw: u32,
        /// Payload length announced.
        payload: u32,
    },
    /// Raw length 0 or above [`BLOCK_SIZE`].
    #[error("block frame announces {0} raw bytes; a block holds 1 to {BLOCK_SIZE}")]
    RawLen(u32),
    /// Payload larger than [`MAX_PAYLOAD`].
    #[error("block frame announces a payload of {0} bytes, above the limit of {MAX_PAYLOAD}")]
    PayloadLen(u32),
    /// The stream ended inside a frame.
    #[error("the block stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// zstd could not decode the payload, or it decoded to another length.
    #[error("block {index}: the compressed payload is corrupt ({detail})")]
    Decompress {
        /// Block index.
        index: u64,
        /// zstd's message or the length mismatch.
        detail: String,
    },
    /// The decoded block does not hash to the frame's hash.
    #[error("block {index}: content does not match its SHA-256 (changed in transit)")]
    Hash {
        /// Block index.
        index: u64,
    },
}

/// One parsed frame (payload still compressed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Block index (byte offset / [`BLOCK_SIZE`]).
    pub index: u64,
    /// SHA-256 of the raw block.
    pub sha256: BlockHash,
    /// Length of the raw block.
    pub raw_len: u32,
    /// True for an [`FRAME_MAGIC_RAW`] frame: the payload is the block.
    pub uncompressed: bool,
    /// zstd-compressed block (or the block itself when `uncompressed`).
    pub payload: Vec<u8>,
}

impl Frame {
    /// Decompresses and checks the hash; returns the raw block.
    pub fn decode(&self) -> Result<Vec<u8>, FrameError> {
        self.clone().into_block()
    }

    /// Like [`Frame::decode`], without copying an uncompressed payload.
    pub fn into_block(self) -> Result<Vec<u8>, FrameError> {
        let raw = if self.uncompressed {
            self.payload
        } else {
            zstd::bulk::decompress(&self.payload, self.raw_len as usize).map_err(|e| FrameError::Decompress {
                index: self.index,
                detail: e.to_string(),
            })?
        };
        if raw.len() != self.raw_len as usize {
            return Err(FrameError::Decompress {
                index: self.index,
                detail: format!("decoded {} bytes, frame says {}", raw.len(), self.raw_len),
            });
        }
        if sha256(&raw) != self.sha256 {
            return Err(FrameError::Hash { index: self.index });
        }
        Ok(raw)
    }
}

/// SHA-256 of a block.
pub fn sha256(data: &[u8]) -> BlockHash {
    Sha256::digest(data).into()
}

/// Compresses `raw` (one block) into a frame.
pub fn encode_frame(index: u64, raw: &[u8], sha: &BlockHash, out: &mut Vec<u8>) {
    let payload = zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd compresses a block held in memory");
    put_frame(FRAME_MAGIC, index, raw.len(), sha, &payload, out);
}

/// Frames `raw` (one block) compressed when that makes it smaller, else as
/// an uncompressed frame (for a node whose plan allows them). Four samples
/// of [`SAMPLE`] bytes across the block are compressed first: when none of
/// them shrinks, the block (random data, media, encrypted or already
/// compressed files) goes as it is, which spares the sender compressing a
/// megabyte for nothing (zstd level 1 runs at ≈ 0.5 GB/s on such data, a
/// third of a core at link rate). Returns true when the frame is compressed.
pub fn encode_frame_auto(index: u64, raw: &[u8], sha: &BlockHash, out: &mut Vec<u8>) -> bool {
    // One zstd context for the samples and the block.
    let mut z = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd makes a compression context");
    if raw.len() >= 4 * SAMPLE && !samples_shrink(&mut z, raw) {
        put_frame(FRAME_MAGIC_RAW, index, raw.len(), sha, raw, out);
        return false;
    }
    let payload = z.compress(raw).expect("zstd compresses a block held in memory");
    if payload.len() >= raw.len() {
        put_frame(FRAME_MAGIC_RAW, index, raw.len(), sha, raw, out);
        return false;
    }
    put_frame(FRAME_MAGIC, index, raw.len(), sha, &payload, out);
    true
}

/// True when any of four samples spread over `raw` compresses.
fn samples_shrink(z: &mut zstd::bulk::Compressor<'_>, raw: &[u8]) -> bool {
    let step = (raw.len() - SAMPLE) / 3;
    (0..4).any(|k| {
        let s = &raw[k * step..k * step + SAMPLE];
        z.compress(s).map_or(true, |c| c.len() * 64 <= SAMPLE * SAMPLE_GAIN_64THS)
    })
}

fn put_frame(magic: [u8; 4], index: u64, raw_len: usize, sha: &BlockHash, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(FRAME_HEADER + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(sha);
    out.extend_from_slice(&(raw_len as u32).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Incremental parser of a frame stream: push bytes as they arrive, take
/// frames as they complete. Refuses bad lengths before buffering a payload,
/// so a peer cannot make it hold more than one frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let known = |m: &[u8]| m == FRAME_MAGIC || m == FRAME_MAGIC_RAW;
        if self.buf.len() < FRAME_HEADER {
            if self.buf.len() >= 4 && !known(&self.buf[..4]) {
                return Err(FrameError::Magic(self.buf[..4].try_into().expect("4 bytes")));
            }
            return Ok(None);
        }
        let h = &self.buf[..FRAME_HEADER];
        let magic: [u8; 4] = h[..4].try_into().expect("4 bytes");
        if !known(&magic) {
            return Err(FrameError::Magic(magic));
        }
        let uncompressed = magic == FRAME_MAGIC_RAW;
        let index = u64::from_be_bytes(h[4..12].try_into().expect("8 bytes"));
        let sha256: BlockHash = h[12..44].try_into().expect("32 bytes");
        let raw_len = u32::from_be_bytes(h[44..48].try_into().expect("4 bytes"));
        let plen = u32::from_be_bytes(h[48..52].try_into().expect("4 bytes"));
        if raw_len == 0 || u64::from(raw_len) > BLOCK_SIZE {
            return Err(FrameError::RawLen(raw_len));
        }
        if plen as usize > MAX_PAYLOAD {
            return Err(FrameError::PayloadLen(plen));
        }
        if uncompressed && plen != raw_len {
            return Err(FrameError::RawPayload {
                raw: raw_len,
                payload: plen,
            });
        }
        let end = FRAME_HEADER + plen as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let payload = self.buf[FRAME_HEADER..end].to_vec();
        self.buf.drain(..end);
        Ok(Some(Frame {
            index,
            sha256,
            raw_len,
            uncompressed,
            payload,
        }))
    }

    /// Call at the end of the stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

/// Number of blocks of a disk of `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// Length of block `index` of a disk of `size` bytes.
pub fn block_len(size: u64, index: u64) -> u64 {
    (size - index * BLOCK_SIZE).min(BLOCK_SIZE)
}

/// The whole-disk digest: SHA-256 over a domain tag, the disk size and the
/// SHA-256 of every block in order (holes hash as zeros). Both sides compute
/// it from the content they hold, so it checks the disk end to end while
/// costing one pass of block hashes.
pub struct DiskDigest {
    size: u64,
    next: u64,
    h: Sha256,
    zero_full: BlockHash,
}

impl DiskDigest {
    /// A digest of a disk of `size` bytes; feed every block in order.
    pub fn new(size: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"isthmus-disk-digest-v1");
        h.update(size.to_le_bytes());
        DiskDigest {
            size,
            next: 0,
            h,
            zero_full: sha256(&vec![0u8; BLOCK_SIZE as usize]),
        }
    }

    /// The hash of an all-zero block `index`.
    pub fn zero_hash(&self, index: u64) -> BlockHash {
        let len = block_len(self.size, index);
        if len == BLOCK_SIZE {
            self.zero_full
        } else {
            sha256(&vec![0u8; len as usize])
        }
    }

    /// Adds block `index` with hash `hash`, or zeros when `None`. Blocks
    /// must come in order, each once.
    pub fn add(&mut self, index: u64, hash: Option<&BlockHash>) {
        assert_eq!(index, self.next, "disk digest blocks must come in order");
        let z;
        let hash = match hash {
            Some(h) => h,
            None => {
                z = self.zero_hash(index);
                &z
            }
        };
        self.h.update(hash);
        self.next += 1;
    }

    /// The digest (hex). Missing trailing blocks count as zeros.
    pub fn finish(mut self) -> String {
        while self.next < block_count(self.size) {
            self.add(self.next, None);
        }
        hex(&self.h.finalize())
    }
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Parses 64 hex digits into a hash.
pub fn parse_hash(s: &str) -> Option<BlockHash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// One block of the manifest: a block that holds data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Block index.
    pub index: u64,
    /// Hex SHA-256 of the block.
    pub sha256: String,
}

/// Starts (or resumes) a transfer: the disk's size and its data blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBegin {
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Must be [`BLOCK_SIZE`].
    pub block_size: u64,
    /// Blocks that hold data, ascending by index; every other block is zeros.
    pub blocks: Vec<BlockEntry>,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("transfer manifest refused: {0}")]
pub struct ManifestError(pub String);

impl TransferBegin {
    /// Checks the manifest (block size, disk size limit, indices ascending
    /// and inside the disk, hashes of 64 hex digits); returns index → hash.
    pub fn checked_blocks(&self) -> Result<std::collections::HashMap<u64, BlockHash>, ManifestError> {
        let bad = |m: String| Err(ManifestError(m));
        let n = checked_geometry(self.size, self.block_size)?;
        let mut m = std::collections::HashMap::with_capacity(self.blocks.len());
        let mut last = None;
        for b in &self.blocks {
            if b.index >= n {
                return bad(format!("block {} is beyond the disk's {n} blocks", b.index));
            }
            if last.is_some_and(|l| b.index <= l) {
                return bad(format!("block {} is out of order or repeated", b.index));
            }
            last = Some(b.index);
            let Some(h) = parse_hash(&b.sha256) else {
                return bad(format!("block {}: sha256 is not 64 hex digits", b.index));
            };
            m.insert(b.index, h);
        }
        Ok(m)
    }
}

/// Checks a manifest's block size and disk size; returns the disk's block count.
pub(crate) fn checked_geometry(size: u64, block_size: u64) -> Result<u64, ManifestError> {
    if block_size != BLOCK_SIZE {
        return Err(ManifestError(format!("block size {block_size} is not {BLOCK_SIZE}")));
    }
    if size > MAX_TRANSFER_BYTES {
        return Err(ManifestError(format!(
            "disk of {size} bytes is above the limit of {MAX_TRANSFER_BYTES}"
        )));
    }
    Ok(block_count(size))
}

/// `POST /v1/transfers/{id}/prepare`: the node may make the empty encrypted
/// image of a disk of this size ahead of [`TransferBegin`] (which uses it
/// when the sizes agree and no earlier attempt is to be resumed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferPrepare {
    /// Guest-visible size in bytes (at most [`MAX_TRANSFER_BYTES`]).
    pub size: u64,
}

impl TransferPrepare {
    /// Checks the size against [`MAX_TRANSFER_BYTES`].
    pub fn checked_size(&self) -> Result<u64, ManifestError> {
        if self.size == 0 || self.size > MAX_TRANSFER_BYTES {
            return Err(ManifestError(format!(
                "disk of {} bytes: a transfer holds 1 to {MAX_TRANSFER_BYTES} bytes",
                self.size
            )));
        }
        Ok(self.size)
    }
}

/// The node's answer to [`TransferBegin`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPlan {
    /// Disk id.
    pub id: String,
    /// Indices of the blocks to send.
    pub need: Vec<u64>,
    /// Blocks already held from an earlier attempt of this transfer.
    pub resumed: u64,
    /// Blocks found in the node's block index and copied locally.
    pub deduped: u64,
    /// The node reads uncompressed frames ([`FRAME_MAGIC_RAW`]); nodes
    /// before protocol 2 leave it out (false): send only zstd frames.
    #[serde(default)]
    pub raw_frames: bool,
}

/// Answer to one `PUT .../blocks` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksReceived {
    /// Blocks verified and written.
    pub blocks: u64,
    /// Bytes of the request body.
    pub wire_bytes: u64,
}

/// Ends a transfer: the sender's whole-disk digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferFinish {
    /// [`DiskDigest`] of the source disk (hex).
    pub digest: String,
}

/// A disk assembled, verified and stored as `disks/{id}.img`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferDone {
    /// Disk id.
    pub id: String,
    /// Guest-visible size.
    pub size: u64,
    /// [`DiskDigest`] of what the node stored; equals the sender's.
    pub digest: String,
    /// Data blocks of the disk.
    pub blocks: u64,
    /// Of those, blocks that crossed the link.
    pub blocks_sent: u64,
    /// Blocks copied from the node's block index.
    pub blocks_deduped: u64,
    /// Blocks kept from an earlier, interrupted attempt.
    pub blocks_resumed: u64,
    /// Compressed bytes received for this disk, over all attempts.
    pub wire_bytes: u64,
}

/// A disk's encryption key on the wire: hex of its bytes. Its `Debug` shows
/// only the length and its buffer is wiped on drop; it is never logged or
/// written to a file by either side.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireKey(String);

impl WireKey {
    /// The key `bytes` as sent.
    pub fn from_bytes(bytes: &[u8]) -> WireKey {
        WireKey(hex(bytes))
    }

    /// The key's bytes; `None` when the text is not even-length hex.
    pub fn to_bytes(&self) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let b = self.0.as_bytes();
        if !b.len().is_multiple_of(2) {
            return None;
        }
        let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(b.len() / 2));
        for pair in b.chunks_exact(2) {
            out.push((nib(pair[0])? << 4) | nib(pair[1])?);
        }
        Some(out)
    }
}

impl std::fmt::Debug for WireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireKey(<{} bytes redacted>)", self.0.len() / 2)
    }
}

impl Drop for WireKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// `PUT /v1/disks/{id}/key`: the key that encrypts disk `id` at rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskKeyGrant {
    /// The key (the appliance makes 32 random bytes per disk).
    pub key: WireKey,
}

/// Node-wide transfer counters since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStats {
    /// Bytes of block frames received.
    pub wire_bytes_received: u64,
    /// Blocks received and verified.
    pub blocks_received: u64,
    /// Blocks served from the block index instead of the link.
    pub blocks_deduped: u64,
    /// Distinct block hashes in the index.
    pub index_blocks: u64,
    /// Transfers that began on an encrypted image made ahead by
    /// `POST /v1/transfers/{id}/prepare` (absent from nodes before protocol 2).
    #[serde(default)]
    pub images_prepared: u64,
    /// Manifest chunks taken (`POST /v1/transfers/{id}/chunks`, protocol 3;
    /// absent from nodes before it).
    #[serde(default)]
    pub manifest_chunks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let a = vec![7u8; 1000];
        let b: Vec<u8> = (0..BLOCK_SIZE as usize).map(|i| (i * 31 % 251) as u8).collect();
        let mut wire = Vec::new();
        encode_frame(3, &a, &sha256(&a), &mut wire);
        encode_frame(9, &b, &sha256(&b), &mut wire);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in wire.chunks(777) {
            d.push(piece);
            while let Some(f) = d.next_frame().unwrap() {
                got.push((f.index, f.decode().unwrap()));
            }
        }
        d.finish().unwrap();
        assert_eq!(got, vec![(3, a), (9, b)]);
    }

    #[test]
    fn bad_frames_are_refused() {
        let a = vec![1u8; 10];
        let mut wire = Vec::new();
        encode_frame(0, &a, &sha256(b"other"), &mut wire);
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.decode(), Err(FrameError::Hash { index: 0 }));

        let mut d = FrameDecoder::new();
        d.push(b"XXXX");
        assert!(matches!(d.next_frame(), Err(FrameError::Magic(_))));

        let mut big = wire.clone();
        big[48..52].copy_from_slice(&(u32::MAX).to_be_bytes());
        let mut d = FrameDecoder::new();
        d.push(&big);
        assert_eq!(d.next_frame(), Err(FrameError::PayloadLen(u32::MAX)));

        let mut d = FrameDecoder::new();
        d.push(&wire[..wire.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.finish().is_err());

        // A payload that decodes to more than raw_len is refused.
        let mut lie = wire.clone();
        lie[44..48].copy_from_slice(&5u32.to_be_bytes());
        let mut d = FrameDecoder::new();
        d.push(&lie);
        assert!(matches!(
            d.next_frame().unwrap().unwrap().decode(),
            Err(FrameError::Decompress { .. })
        ));
    }

    #[test]
    fn incompressible_blocks_travel_uncompressed() {
        let mut x = 0x2545F4914F6CDD1Du64;
        let noise: Vec<u8> = (0..BLOCK_SIZE as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // Mostly zeros with noise at the start: compressible, though its
        // first sample is not.
        let mut mixed = vec![0u8; BLOCK_SIZE as usize];
        mixed[..16 << 10].copy_from_slice(&noise[..16 << 10]);
        let text: Vec<u8> = b"GET /index.html HTTP/1.1 200\n".iter().copied().cycle().take(300_000).collect();
        let mut wire = Vec::new();
        assert!(!encode_frame_auto(1, &noise, &sha256(&noise), &mut wire));
        assert_eq!(wire.len(), FRAME_HEADER + noise.len());
        assert!(encode_frame_auto(2, &mixed, &sha256(&mixed), &mut wire));
        assert!(encode_frame_auto(3, &text, &sha256(&text), &mut wire));
        assert!(!encode_frame_auto(4, &noise[..100], &sha256(&noise[..100]), &mut wire));
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let mut got = vec![];
        while let Some(f) = d.next_frame().unwrap() {
            got.push((
                f.index,
                f.uncompressed,
                f.decode().unwrap() == f.clone().into_block().unwrap(),
                f.into_block().unwrap(),
            ));
        }
        assert_eq!(
            got,
            vec![
                (1, true, true, noise.clone()),
                (2, false, true, mixed),
                (3, false, true, text),
                (4, true, true, noise[..100].to_vec())
            ]
        );
        // An uncompressed frame's payload is its block: other lengths are refused,
        // and its hash is checked like any other.
        let mut bad = Vec::new();
        encode_frame_auto(5, &noise, &sha256(b"other"), &mut bad);
        let mut d = FrameDecoder::new();
        d.push(&bad);
        assert_eq!(d.next_frame().unwrap().unwrap().into_block(), Err(FrameError::Hash { index: 5 }));
        bad[48..52].copy_from_slice(&7u32.to_be_bytes());
        let mut d = FrameDecoder::new();
        d.push(&bad);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::RawPayload {
                raw: BLOCK_SIZE as u32,
                payload: 7
            })
        );
        // Nodes before protocol 2 send plans without the flag.
        let plan: TransferPlan = serde_json::from_str(r#"{"id":"a","need":[1],"resumed":0,"deduped":0}"#).unwrap();
        assert!(!plan.raw_frames);
        assert!(TransferPrepare { size: 0 }.checked_size().is_err());
        assert!(TransferPrepare {
            size: MAX_TRANSFER_BYTES + 1
        }
        .checked_size()
        .is_err());
        assert_eq!(TransferPrepare { size: 5 }.checked_size(), Ok(5));
    }

    #[test]
    fn digest_counts_holes_as_zeros() {
        let size = BLOCK_SIZE * 2 + 5;
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        let mut a = DiskDigest::new(size);
        a.add(0, Some(&sha256(&zeros)));
        a.add(1, None);
        let mut b = DiskDigest::new(size);
        b.add(0, None);
        b.add(1, Some(&sha256(&zeros)));
        b.add(2, Some(&sha256(&[0u8; 5])));
        assert_eq!(a.finish(), b.finish());
        assert_ne!(DiskDigest::new(size).finish(), DiskDigest::new(size + 1).finish());
    }

    #[test]
    fn wire_keys_round_trip_and_stay_hidden() {
        let k = WireKey::from_bytes(&[0xde, 0xad, 0x01]);
        assert_eq!(&k.to_bytes().unwrap()[..], &[0xde, 0xad, 0x01]);
        assert_eq!(format!("{k:?}"), "WireKey(<3 bytes redacted>)");
        let g: DiskKeyGrant = serde_json::from_str(r#"{"key":"DEAD01"}"#).unwrap();
        assert_eq!(&g.key.to_bytes().unwrap()[..], &[0xde, 0xad, 0x01]);
        assert!(!format!("{g:?}").contains("DEAD"));
        for bad in [r#"{"key":"abc"}"#, r#"{"key":"zz"}"#] {
            let g: DiskKeyGrant = serde_json::from_str(bad).unwrap();
            assert!(g.key.to_bytes().is_none(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = sha256(b"x");
        assert_eq!(parse_hash(&hex(&h)), Some(h));
        assert_eq!(parse_hash(&hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_hash("zz"), None);
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(BLOCK_SIZE + 1), 2);
        assert_eq!(block_len(BLOCK_SIZE + 1, 1), 1);
    }
}
