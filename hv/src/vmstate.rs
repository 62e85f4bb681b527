//! The suspend state file, encrypted: guest memory never reaches the node's
//! disk in the clear.
//!
//! QEMU streams its machine state over a unix socket (QMP `migrate` to
//! `unix:`); hv seals it in chunks and writes the file. On resume hv opens
//! the chunks and streams the plaintext into QEMU's `migrate-incoming`
//! socket. The key is the caller's (like disk keys: from the appliance, in
//! memory only); each file gets its own AES-256-GCM key derived with
//! HKDF-SHA256 from that key and a random 32-byte salt in the file header,
//! so nonces (a chunk counter) never repeat under one key.
//!
//! Layout: `MAGIC` (16 bytes) ‖ salt (32) ‖ chunks. A chunk is a 5-byte
//! header (plaintext length, u32 big-endian; flag byte, 1 on the last
//! chunk) ‖ ciphertext ‖ 16-byte tag. The chunk header is the AEAD's
//! associated data and the nonce is the chunk's index, so a dropped,
//! reordered, altered or truncated chunk (or a missing last chunk) fails.

use std::io::{ErrorKind, Read, Write};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::DiskKey;

/// File magic, version 1.
pub const MAGIC: &[u8; 16] = b"ISTHMUS-VMSTATE1";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const SALT_LEN: usize = 32;
const TAG_LEN: usize = 16;
const CHUNK_HEADER: usize = 5;
const INFO: &[u8] = b"isthmus hv suspend state v1";

/// Sealing or opening a state stream failed.
#[derive(Debug, thiserror::Error)]
pub enum VmstateError {
    /// Reading or writing the stream failed.
    #[error("suspend state stream: {0}")]
    Io(#[source] std::io::Error),
    /// Not a state file of this version.
    #[error("not an Isthmus suspend state file (bad magic); it may be from an older hv or damaged")]
    Magic,
    /// The first chunk does not open: the key is not the one the state was
    /// saved with (or the file was altered).
    #[error("the suspend state does not open with this key; pass the key it was saved with")]
    WrongKey,
    /// A later chunk does not open: the file was altered or damaged.
    #[error("suspend state chunk {index} is damaged or was altered; the state cannot be resumed")]
    Damaged {
        /// Chunk index.
        index: u64,
    },
    /// The stream ends before its last chunk.
    #[error("suspend state is truncated after {chunks} chunk(s); the state cannot be resumed")]
    Truncated {
        /// Chunks read.
        chunks: u64,
    },
    /// A chunk header is impossible.
    #[error("suspend state chunk {index} claims {len} bytes (at most {CHUNK})")]
    BadLength {
        /// Chunk index.
        index: u64,
        /// Claimed length.
        len: usize,
    },
    /// Bytes follow the last chunk.
    #[error("suspend state has data after its last chunk; the file was altered")]
    Trailing,
    /// The OS random source failed.
    #[error("cannot read random bytes for the suspend state salt")]
    Random,
}

fn file_key(key: &DiskKey, salt: &[u8]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, salt).extract(key.expose());
    let info = [INFO];
    // expand fails only when the output is longer than 255 hash blocks; 32 bytes never is.
    let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF output of 32 bytes");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn chunk_header(len: usize, last: bool) -> [u8; CHUNK_HEADER] {
    let mut h = [0u8; CHUNK_HEADER];
    // len <= CHUNK < 2^32.
    h[..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4] = u8::from(last);
    h
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals everything `input` yields (until EOF) into `out`; returns the
/// plaintext byte count.
pub fn seal(mut input: impl Read, mut out: impl Write, key: &DiskKey) -> Result<u64, VmstateError> {
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new().fill(&mut salt).map_err(|_| VmstateError::Random)?;
    let k = file_key(key, &salt);
    out.write_all(MAGIC).map_err(VmstateError::Io)?;
    out.write_all(&salt).map_err(VmstateError::Io)?;
    let mut buf = Zeroizing::new(vec![0u8; CHUNK + TAG_LEN]);
    let mut index = 0u64;
    let mut total = 0u64;
    // A chunk is sealed once the next read shows whether it was the last.
    let mut have = read_full(&mut input, &mut buf[..CHUNK]).map_err(VmstateError::Io)?;
    let mut next = Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let more = if have == CHUNK {
            read_full(&mut input, &mut next).map_err(VmstateError::Io)?
        } else {
            0
        };
        let last = more == 0;
        let h = chunk_header(have, last);
        let mut sealed = buf[..have].to_vec();
        k.seal_in_place_append_tag(nonce(index), Aad::from(h), &mut sealed)
            .map_err(|_| VmstateError::Random)?;
        out.write_all(&h).map_err(VmstateError::Io)?;
        out.write_all(&sealed).map_err(VmstateError::Io)?;
        total += have as u64;
        index += 1;
        if last {
            break;
        }
        buf[..more].copy_from_slice(&next[..more]);
        have = more;
    }
    out.flush().map_err(VmstateError::Io)?;
    Ok(total)
}

/// Opens a sealed stream from `input` and writes the plaintext to `out`,
/// chunk by chunk (nothing unauthenticated is ever written). Returns the
/// plaintext byte count.
pub fn open(mut input: impl Read, mut out: impl Write, key: &DiskKey) -> Result<u64, VmstateError> {
    let mut head = [0u8; MAGIC.len() + SALT_LEN];
    if read_full(&mut input, &mut head).map_err(VmstateError::Io)? < head.len() || &head[..MAGIC.len()] != MAGIC {
        return Err(VmstateError::Magic);
    }
    let k = file_key(key, &head[MAGIC.len()..]);
    // Grown to the chunk length each time (small states stay small); wiped
    // over its whole capacity on drop.
    let mut buf = Zeroizing::new(Vec::new());
    let mut index = 0u64;
    let mut total = 0u64;
    loop {
        let mut h = [0u8; CHUNK_HEADER];
        if read_full(&mut input, &mut h).map_err(VmstateError::Io)? < CHUNK_HEADER {
            return Err(VmstateError::Truncated { chunks: index });
        }
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > CHUNK || h[4] > 1 {
            return Err(VmstateError::BadLength { index, len });
        }
        let last = h[4] == 1;
        buf.resize(len + TAG_LEN, 0);
        if read_full(&mut input, &mut buf[..len + TAG_LEN]).map_err(VmstateError::Io)? < len + TAG_LEN {
            return Err(VmstateError::Truncated { chunks: index });
        }
        let plain = k
            .open_in_place(nonce(index), Aad::from(h), &mut buf[..len + TAG_LEN])
            .map_err(|_| {
                if index == 0 {
                    VmstateError::WrongKey
                } else {
                    VmstateError::Damaged { index }
                }
            })?;
        out.write_all(plain).map_err(VmstateError::Io)?;
        total += len as u64;
        index += 1;
        if last {
            break;
        }
    }
    let mut extra = [0u8; 1];
    if read_full(&mut input, &mut extra).map_err(VmstateError::Io)? != 0 {
        return Err(VmstateError::Trailing);
    }
    out.flush().map_err(VmstateError::Io)?;
    Ok(total)
}

/// Checks that the state opens with `key` (its first chunk), without
/// writing anything: a wrong key is refused before QEMU is fed.
pub fn check_key(mut input: impl Read, key: &DiskKey) -> Result<(), VmstateError> {
    struct FirstChunkOnly;
    impl Write for FirstChunkOnly {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other(format!("stop after {} bytes", buf.len())))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    match open(&mut input, FirstChunkOnly, key) {
        Ok(_) | Err(VmstateError::Io(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DiskKey {
        DiskKey::from_bytes(vec![b; 32]).unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 977) as u8).collect()
    }

    fn sealed(plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(seal(plain, &mut out, &key(1)).unwrap(), plain.len() as u64);
        out
    }

    #[test]
    fn round_trips_at_chunk_edges() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let plain = data(n);
            let s = sealed(&plain);
            let mut back = Vec::new();
            assert_eq!(open(&s[..], &mut back, &key(1)).unwrap(), n as u64);
            assert_eq!(back, plain, "n={n}");
        }
    }

    #[test]
    fn holds_no_plaintext_and_salts_every_file() {
        let plain = b"ISTHMUS-SECRET-PATTERN ".repeat(50_000);
        let a = sealed(&plain);
        let b = sealed(&plain);
        assert!(!a.windows(22).any(|w| w == &b"ISTHMUS-SECRET-PATTERN"[..]));
        assert_ne!(a[16..48], b[16..48], "salt");
        assert_ne!(a[48..], b[48..], "same key and plaintext must not give the same file");
    }

    #[test]
    fn wrong_key_damage_truncation_and_trailing_bytes_are_refused() {
        let plain = data(2 * CHUNK + 100);
        let s = sealed(&plain);
        let mut sink = Vec::new();
        assert!(matches!(open(&s[..], &mut sink, &key(2)), Err(VmstateError::WrongKey)));
        assert!(sink.is_empty(), "nothing unauthenticated is written");
        assert!(matches!(check_key(&s[..], &key(2)), Err(VmstateError::WrongKey)));
        check_key(&s[..], &key(1)).unwrap();

        let mut bad = s.clone();
        let second = 48 + CHUNK_HEADER + CHUNK + TAG_LEN + CHUNK_HEADER + 10;
        bad[second] ^= 1;
        assert!(matches!(
            open(&bad[..], &mut Vec::new(), &key(1)),
            Err(VmstateError::Damaged { index: 1 })
        ));

        let cut = &s[..48 + CHUNK_HEADER + CHUNK + TAG_LEN];
        assert!(matches!(
            open(cut, &mut Vec::new(), &key(1)),
            Err(VmstateError::Truncated { chunks: 1 })
        ));

        let mut longer = s.clone();
        longer.push(0);
        assert!(matches!(open(&longer[..], &mut Vec::new(), &key(1)), Err(VmstateError::Trailing)));

        let mut magic = s.clone();
        magic[0] ^= 1;
        assert!(matches!(open(&magic[..], &mut Vec::new(), &key(1)), Err(VmstateError::Magic)));

        // Chunk 0 and 1 swapped: both full-size, so lengths match.
        let c = CHUNK_HEADER + CHUNK + TAG_LEN;
        let mut swapped = s[..48].to_vec();
        swapped.extend_from_slice(&s[48 + c..48 + 2 * c]);
        swapped.extend_from_slice(&s[48..48 + c]);
        swapped.extend_from_slice(&s[48 + 2 * c..]);
        assert!(open(&swapped[..], &mut Vec::new(), &key(1)).is_err());
    }
}
