//! LUKS1 headers and key material, built in memory (no I/O).
//!
//! Why this exists: QEMU's LUKS creation measures PBKDF2 until one run takes
//! more than 500 ms of CPU, twice (master-key digest, then key slot), whatever
//! `encrypt.iter-time` asks for, so `qemu-img create` of a LUKS qcow2 costs
//! ≈ 2.35 CPU-seconds per disk on our hosts, and every later open pays the
//! slot's PBKDF2 again. [`super::luks_template`] instead copies a cached empty
//! LUKS qcow2 and replaces its whole LUKS region with one built here.
//!
//! Why a low, fixed PBKDF2 iteration count ([`ITERATIONS`]) is safe here:
//! PBKDF2 stretches a *guessable* passphrase so that each guess costs an
//! attacker time. Our passphrases are not guessable: each is the base64 form
//! of a 256-bit random key made by the appliance ([`crate::DiskKey`]), so a
//! search over passphrases is a search over 2^256 keys, and 1000 or a million
//! HMAC rounds per guess change nothing about that. The master key is itself
//! 512 random bits (AES-256-XTS), and the master-key digest only lets a holder
//! of the header check a candidate master key, which is as hard to find as
//! the key itself. What the iteration count does change is the CPU spent at
//! every creation and every open of a disk. 1000 is cryptsetup's floor for
//! LUKS1, so the disks stay openable by `cryptsetup` too.
//!
//! Layout (LUKS1 on-disk format specification, version 1.2.3; all integers
//! big-endian): a 592-byte header (magic, version, cipher name/mode, hash,
//! payload offset, key bytes, master-key digest + salt + iterations, UUID,
//! eight 48-byte key slots), then each slot's key material at its sector
//! offset: the master key AF-split into [`STRIPES`] stripes (SHA-256
//! diffusion), encrypted with AES-256-XTS under the PBKDF2-HMAC-SHA256 of the
//! passphrase, plain64 IVs counted in 512-byte sectors from the material's
//! first sector. Only `aes` / `xts-plain64` / `sha256` with 64-byte keys, as
//! QEMU makes by default, is built or read.

use std::num::NonZeroU32;

use aes::cipher::KeyInit;
use aes::Aes256;
use ring::rand::SecureRandom;
use ring::{digest, pbkdf2};
use xts_mode::{get_tweak_default, Xts128};
use zeroize::Zeroizing;

/// The LUKS magic, `"LUKS\xba\xbe"`.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Length of a LUKS1 header (`struct luks_phdr`).
pub const HEADER_LEN: usize = 592;
/// LUKS sectors are 512 bytes (offsets in the header count these).
pub const SECTOR: usize = 512;
/// Number of key slots.
pub const SLOTS: usize = 8;
/// Anti-forensic stripes per key slot (LUKS1 and QEMU use 4000; QEMU refuses
/// any other count).
pub const STRIPES: u32 = 4000;
/// Master key length: AES-256-XTS takes two 256-bit keys.
pub const KEY_BYTES: usize = 64;
/// Length of the master-key digest (LUKS1: 20 bytes).
pub const DIGEST_LEN: usize = 20;
/// Length of the digest and slot salts.
pub const SALT_LEN: usize = 32;
/// PBKDF2 iterations for the key slot and the master-key digest (see the
/// module doc for why a low fixed count is safe with random keys).
pub const ITERATIONS: u32 = 1000;
/// Key slot `active` value of a slot in use.
pub const SLOT_ENABLED: u32 = 0x00AC_71F3;
/// Key slot `active` value of an empty slot.
pub const SLOT_DISABLED: u32 = 0x0000_DEAD;

const CIPHER_NAME: &str = "aes";
const CIPHER_MODE: &str = "xts-plain64";
const HASH_SPEC: &str = "sha256";

/// Field offsets in the header (LUKS1 spec, "phdr").
mod off {
    pub const VERSION: usize = 6;
    pub const CIPHER_NAME: usize = 8;
    pub const CIPHER_MODE: usize = 40;
    pub const HASH_SPEC: usize = 72;
    pub const PAYLOAD_OFFSET: usize = 104;
    pub const KEY_BYTES: usize = 108;
    pub const MK_DIGEST: usize = 112;
    pub const MK_DIGEST_SALT: usize = 132;
    pub const MK_DIGEST_ITER: usize = 164;
    pub const UUID: usize = 168;
    pub const SLOTS: usize = 208;
    pub const SLOT_LEN: usize = 48;
    // Within a slot.
    pub const SLOT_ITER: usize = 4;
    pub const SLOT_SALT: usize = 8;
    pub const SLOT_KEY_OFFSET: usize = 40;
    pub const SLOT_STRIPES: usize = 44;
}

/// Bytes of one slot's key material (`KEY_BYTES × STRIPES`).
pub const KEY_MATERIAL_LEN: usize = KEY_BYTES * STRIPES as usize;

/// A LUKS header or region that cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum LuksHeaderError {
    /// Shorter than a header, or the magic/version is wrong.
    #[error("not a LUKS1 header (magic or version wrong, or shorter than {HEADER_LEN} bytes)")]
    NotLuks1,
    /// A cipher, mode, hash or key size other than QEMU's default.
    #[error("LUKS header uses {cipher}-{mode}/{hash} with {key_bytes}-byte keys; only aes-xts-plain64/sha256 with 64-byte keys is supported, make the template with QEMU's defaults")]
    Unsupported {
        /// Cipher name.
        cipher: String,
        /// Cipher mode.
        mode: String,
        /// Hash spec.
        hash: String,
        /// Key bytes.
        key_bytes: u32,
    },
    /// A key slot's material lies outside the region or overlaps the header
    /// or another slot.
    #[error("LUKS key slot {slot} (sector {sector}, {stripes} stripes) does not fit the {region_len}-byte LUKS region")]
    BadSlot {
        /// Slot index.
        slot: usize,
        /// Key material offset in sectors.
        sector: u32,
        /// Stripes.
        stripes: u32,
        /// Region length.
        region_len: usize,
    },
    /// No enabled key slot accepts the passphrase.
    #[error("no LUKS key slot accepts this passphrase (wrong disk key?)")]
    WrongPassphrase,
    /// An iteration count of 0.
    #[error("PBKDF2 iteration count must be at least 1")]
    ZeroIterations,
    /// The OS random source failed.
    #[error("cannot read random bytes for a LUKS header")]
    Random,
}

/// One key slot as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlot {
    /// In use.
    pub enabled: bool,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Where its key material starts, in 512-byte sectors from the header.
    pub key_offset: u32,
    /// AF stripes.
    pub stripes: u32,
}

/// A parsed LUKS1 header (aes-xts-plain64/sha256 only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Where the payload starts, in sectors (for qcow2, also the length of
    /// the LUKS region).
    pub payload_offset: u32,
    /// PBKDF2-HMAC-SHA256 of the master key.
    pub mk_digest: [u8; DIGEST_LEN],
    /// Salt of that digest.
    pub mk_digest_salt: [u8; SALT_LEN],
    /// Its iterations.
    pub mk_digest_iter: u32,
    /// The volume UUID (text form).
    pub uuid: String,
    /// The eight slots.
    pub slots: [KeySlot; SLOTS],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A NUL-padded text field.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_text(b: &mut [u8], at: usize, s: &str) {
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
}

impl Header {
    /// Parses and checks a header: magic, version 1, QEMU's default cipher,
    /// and every slot's material inside `region_len` bytes, after the header
    /// and not overlapping another slot (the checks QEMU makes on open).
    pub fn parse(bytes: &[u8], region_len: usize) -> Result<Header, LuksHeaderError> {
        if bytes.len() < HEADER_LEN || bytes[..6] != MAGIC || u16::from_be_bytes([bytes[6], bytes[7]]) != 1 {
            return Err(LuksHeaderError::NotLuks1);
        }
        let cipher = text(&bytes[off::CIPHER_NAME..off::CIPHER_MODE]);
        let mode = text(&bytes[off::CIPHER_MODE..off::HASH_SPEC]);
        let hash = text(&bytes[off::HASH_SPEC..off::PAYLOAD_OFFSET]);
        let key_bytes = be32(bytes, off::KEY_BYTES);
        if cipher != CIPHER_NAME || mode != CIPHER_MODE || hash != HASH_SPEC || key_bytes as usize != KEY_BYTES {
            return Err(LuksHeaderError::Unsupported {
                cipher,
                mode,
                hash,
                key_bytes,
            });
        }
        let slots: [KeySlot; SLOTS] = std::array::from_fn(|i| {
            let s = &bytes[off::SLOTS + i * off::SLOT_LEN..][..off::SLOT_LEN];
            KeySlot {
                enabled: be32(s, 0) == SLOT_ENABLED,
                iterations: be32(s, off::SLOT_ITER),
                salt: s[off::SLOT_SALT..off::SLOT_SALT + SALT_LEN].try_into().unwrap_or([0; SALT_LEN]),
                key_offset: be32(s, off::SLOT_KEY_OFFSET),
                stripes: be32(s, off::SLOT_STRIPES),
            }
        });
        let span = |s: &KeySlot| {
            let start = s.key_offset as u64 * SECTOR as u64;
            (start, start + KEY_BYTES as u64 * s.stripes as u64)
        };
        for (i, s) in slots.iter().enumerate() {
            let (start, end) = span(s);
            let overlaps = slots.iter().enumerate().any(|(j, t)| {
                let (a, b) = span(t);
                j != i && start < b && a < end
            });
            if s.stripes != STRIPES || start < HEADER_LEN as u64 || end > region_len as u64 || overlaps {
                return Err(LuksHeaderError::BadSlot {
                    slot: i,
                    sector: s.key_offset,
                    stripes: s.stripes,
                    region_len,
                });
            }
        }
        Ok(Header {
            payload_offset: be32(bytes, off::PAYLOAD_OFFSET),
            mk_digest: bytes[off::MK_DIGEST..off::MK_DIGEST + DIGEST_LEN]
                .try_into()
                .unwrap_or([0; DIGEST_LEN]),
            mk_digest_salt: bytes[off::MK_DIGEST_SALT..off::MK_DIGEST_SALT + SALT_LEN]
                .try_into()
                .unwrap_or([0; SALT_LEN]),
            mk_digest_iter: be32(bytes, off::MK_DIGEST_ITER),
            uuid: text(&bytes[off::UUID..off::SLOTS]),
            slots,
        })
    }

    /// The 592 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..6].copy_from_slice(&MAGIC);
        b[off::VERSION..off::VERSION + 2].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut b, off::CIPHER_NAME, CIPHER_NAME);
        put_text(&mut b, off::CIPHER_MODE, CIPHER_MODE);
        put_text(&mut b, off::HASH_SPEC, HASH_SPEC);
        put32(&mut b, off::PAYLOAD_OFFSET, self.payload_offset);
        put32(&mut b, off::KEY_BYTES, KEY_BYTES as u32);
        b[off::MK_DIGEST..off::MK_DIGEST + DIGEST_LEN].copy_from_slice(&self.mk_digest);
        b[off::MK_DIGEST_SALT..off::MK_DIGEST_SALT + SALT_LEN].copy_from_slice(&self.mk_digest_salt);
        put32(&mut b, off::MK_DIGEST_ITER, self.mk_digest_iter);
        let uuid = self.uuid.as_bytes();
        let n = uuid.len().min(off::SLOTS - off::UUID - 1);
        b[off::UUID..off::UUID + n].copy_from_slice(&uuid[..n]);
        for (i, s) in self.slots.iter().enumerate() {
            let at = off::SLOTS + i * off::SLOT_LEN;
            put32(&mut b, at, if s.enabled { SLOT_ENABLED } else { SLOT_DISABLED });
            put32(&mut b, at + off::SLOT_ITER, s.iterations);
            b[at + off::SLOT_SALT..at + off::SLOT_SALT + SALT_LEN].copy_from_slice(&s.salt);
            put32(&mut b, at + off::SLOT_KEY_OFFSET, s.key_offset);
            put32(&mut b, at + off::SLOT_STRIPES, s.stripes);
        }
        b
    }
}

fn pbkdf2_sha256(iterations: u32, salt: &[u8], secret: &[u8], out: &mut [u8]) -> Result<(), LuksHeaderError> {
    let n = NonZeroU32::new(iterations).ok_or(LuksHeaderError::ZeroIterations)?;
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, salt, secret, out);
    Ok(())
}

/// LUKS1 `diffuse`: each SHA-256-sized chunk `j` of `buf` becomes the first
/// bytes of `SHA-256(be32(j) ‖ chunk)`.
fn diffuse(buf: &mut [u8]) {
    for (j, chunk) in buf.chunks_mut(digest::SHA256_OUTPUT_LEN).enumerate() {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&(j as u32).to_be_bytes());
        ctx.update(chunk);
        let d = ctx.finish();
        let n = chunk.len();
        chunk.copy_from_slice(&d.as_ref()[..n]);
    }
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// AF-splits `key` into `stripes` stripes: all but the last are `random`
/// (its length is `(stripes - 1) × key.len()`), the last is what makes
/// [`af_merge`] return `key`.
pub fn af_split(key: &[u8], random: &[u8], stripes: usize) -> Zeroizing<Vec<u8>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for i in 0..stripes - 1 {
        let s = &random[i * n..(i + 1) * n];
        out[i * n..(i + 1) * n].copy_from_slice(s);
        xor_into(&mut acc, s);
        diffuse(&mut acc);
    }
    xor_into(&mut acc, key);
    out[(stripes - 1) * n..].copy_from_slice(&acc);
    out
}

/// AF-merges `stripes` stripes of `n` bytes back into the key.
pub fn af_merge(material: &[u8], n: usize, stripes: usize) -> Zeroizing<Vec<u8>> {
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for i in 0..stripes - 1 {
        xor_into(&mut acc, &material[i * n..(i + 1) * n]);
        diffuse(&mut acc);
    }
    xor_into(&mut acc, &material[(stripes - 1) * n..stripes * n]);
    acc
}

/// The AES-256-XTS (plain64) cipher of a key slot, keyed by the PBKDF2 of
/// the passphrase.
fn slot_cipher(passphrase: &[u8], slot: &KeySlot) -> Result<Xts128<Aes256>, LuksHeaderError> {
    let mut k = Zeroizing::new([0u8; KEY_BYTES]);
    pbkdf2_sha256(slot.iterations, &slot.salt, passphrase, &mut k[..])?;
    // Data key first, tweak key second (nettle's and dm-crypt's order).
    Ok(Xts128::new(Aes256::new(k[..32].into()), Aes256::new(k[32..].into())))
}

fn mk_digest(master: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; DIGEST_LEN], LuksHeaderError> {
    let mut d = [0u8; DIGEST_LEN];
    pbkdf2_sha256(iterations, salt, master, &mut d)?;
    Ok(d)
}

/// Text form of a random (version 4) UUID.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Builds a whole LUKS region of `region_len` bytes for `passphrase`: a new
/// header with a fresh random master key, salts and UUID, slot 0 enabled
/// with `iterations` PBKDF2 rounds and its key material at `layout`'s slot-0
/// offset; the other seven slots disabled, and every other byte of the
/// region zero. `layout` gives the slot offsets and payload offset to keep
/// (those of the header being replaced), so the region fits where the old
/// one was.
pub fn build_region(
    passphrase: &[u8],
    layout: &Header,
    region_len: usize,
    iterations: u32,
    rng: &dyn SecureRandom,
) -> Result<Zeroizing<Vec<u8>>, LuksHeaderError> {
    let fill = |buf: &mut [u8]| rng.fill(buf).map_err(|_| LuksHeaderError::Random);
    let mut master = Zeroizing::new([0u8; KEY_BYTES]);
    fill(&mut master[..])?;
    let mut mk_salt = [0u8; SALT_LEN];
    fill(&mut mk_salt)?;
    let mut uuid = [0u8; 16];
    fill(&mut uuid)?;
    let mut slots = layout.slots.clone();
    for (i, s) in slots.iter_mut().enumerate() {
        s.enabled = i == 0;
        s.iterations = if i == 0 { iterations } else { 0 };
        s.salt = [0; SALT_LEN];
        if i == 0 {
            fill(&mut s.salt)?;
        }
    }
    let header = Header {
        payload_offset: layout.payload_offset,
        mk_digest: mk_digest(&master[..], &mk_salt, iterations)?,
        mk_digest_salt: mk_salt,
        mk_digest_iter: iterations,
        uuid: uuid_v4(uuid),
        slots,
    };
    // Same checks as on open, against the new region length.
    Header::parse(&header.to_bytes(), region_len)?;

    let mut stripes = Zeroizing::new(vec![0u8; KEY_MATERIAL_LEN - KEY_BYTES]);
    fill(&mut stripes)?;
    let mut material = af_split(&master[..], &stripes, STRIPES as usize);
    slot_cipher(passphrase, &header.slots[0])?.encrypt_area(&mut material, SECTOR, 0, get_tweak_default);

    let mut region = Zeroizing::new(vec![0u8; region_len]);
    region[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    let at = header.slots[0].key_offset as usize * SECTOR;
    region[at..at + KEY_MATERIAL_LEN].copy_from_slice(&material);
    Ok(region)
}

/// Recovers the master key of a LUKS region with `passphrase` (as QEMU does
/// on open: each enabled slot's PBKDF2, XTS decryption, AF merge, then the
/// master-key digest must match).
pub fn unlock(region: &[u8], passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, LuksHeaderError> {
    let header = Header::parse(region, region.len())?;
    for slot in header.slots.iter().filter(|s| s.enabled) {
        let at = slot.key_offset as usize * SECTOR;
        let mut material = Zeroizing::new(region[at..at + KEY_MATERIAL_LEN].to_vec());
        slot_cipher(passphrase, slot)?.decrypt_area(&mut material, SECTOR, 0, get_tweak_default);
        let master = af_merge(&material, KEY_BYTES, STRIPES as usize);
        if mk_digest(&master, &header.mk_digest_salt, header.mk_digest_iter)? == header.mk_digest {
            return Ok(master);
        }
    }
    Err(LuksHeaderError::WrongPassphrase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    /// QEMU 10's layout for aes-256-xts: header sectors 8, each slot's
    /// 256000 bytes rounded up to 4 KiB (504 sectors), payload after slot 7.
    fn qemu_layout() -> (Header, usize) {
        let slots = std::array::from_fn(|i| KeySlot {
            enabled: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_offset: 8 + 504 * i as u32,
            stripes: STRIPES,
        });
        let payload = 8 + 504 * 8;
        let h = Header {
            payload_offset: payload,
            mk_digest: [0; DIGEST_LEN],
            mk_digest_salt: [0; SALT_LEN],
            mk_digest_iter: 0,
            uuid: String::new(),
            slots,
        };
        (h, payload as usize * SECTOR)
    }

    #[test]
    fn header_fields_sit_at_the_spec_offsets() {
        let (layout, len) = qemu_layout();
        let region = build_region(b"pass", &layout, len, 1000, &SystemRandom::new()).unwrap();
        let h = &region[..HEADER_LEN];
        assert_eq!(&h[..6], b"LUKS\xba\xbe");
        assert_eq!(&h[6..8], &[0, 1]);
        assert_eq!(&h[8..12], b"aes\0");
        assert_eq!(&h[40..52], b"xts-plain64\0");
        assert_eq!(&h[72..79], b"sha256\0");
        assert_eq!(be32(h, 104), 4040);
        assert_eq!(be32(h, 108), 64);
        assert_eq!(be32(h, 164), 1000);
        assert_eq!(h[168 + 8], b'-');
        assert_eq!(h[168 + 14], b'4', "version-4 UUID");
        assert_eq!(h[168 + 36], 0);
        // Slot 0 enabled, the rest disabled, all with 4000 stripes.
        assert_eq!(be32(h, 208), SLOT_ENABLED);
        assert_eq!(be32(h, 212), 1000);
        assert_eq!(be32(h, 248), 8);
        assert_eq!(be32(h, 252), 4000);
        for i in 1..SLOTS {
            let s = 208 + 48 * i;
            assert_eq!(be32(h, s), SLOT_DISABLED);
            assert_eq!(be32(h, s + 40), 8 + 504 * i as u32);
            assert_eq!(be32(h, s + 44), 4000);
            assert!(h[s + 8..s + 40].iter().all(|&b| b == 0));
        }
        // Only the header and slot 0's material are non-zero.
        assert!(region[HEADER_LEN..8 * SECTOR].iter().all(|&b| b == 0));
        assert!(region[8 * SECTOR + KEY_MATERIAL_LEN..].iter().all(|&b| b == 0));
        assert_eq!(Header::parse(&region, len).unwrap().to_bytes()[..], h[..]);
    }

    #[test]
    fn af_split_and_merge_round_trip() {
        let rng = SystemRandom::new();
        for (n, stripes) in [(64usize, 4000usize), (32, 4000), (20, 3), (64, 1)] {
            let mut key = vec![0u8; n];
            rng.fill(&mut key).unwrap();
            let mut random = vec![0u8; n * (stripes - 1)];
            rng.fill(&mut random).unwrap();
            let split = af_split(&key, &random, stripes);
            assert_eq!(split.len(), n * stripes);
            assert_eq!(&af_merge(&split, n, stripes)[..], &key[..]);
            if stripes > 1 {
                let mut broken = split.clone();
                broken[0] ^= 1;
                assert_ne!(&af_merge(&broken, n, stripes)[..], &key[..]);
            }
        }
    }

    #[test]
    fn diffuse_matches_the_luks1_definition() {
        // 64 bytes = two SHA-256 chunks, each hashed with its big-endian index.
        let mut buf: Vec<u8> = (0..64).collect();
        diffuse(&mut buf);
        for j in 0..2u32 {
            let mut input = j.to_be_bytes().to_vec();
            input.extend((j as u8 * 32..j as u8 * 32 + 32).collect::<Vec<u8>>());
            assert_eq!(&buf[j as usize * 32..][..32], digest::digest(&digest::SHA256, &input).as_ref());
        }
    }

    #[test]
    fn unlocks_with_the_passphrase_only_and_every_region_is_new() {
        let (layout, len) = qemu_layout();
        let rng = SystemRandom::new();
        let a = build_region(b"right", &layout, len, 1000, &rng).unwrap();
        let b = build_region(b"right", &layout, len, 1000, &rng).unwrap();
        let ka = unlock(&a, b"right").unwrap();
        let kb = unlock(&b, b"right").unwrap();
        assert_eq!(ka.len(), KEY_BYTES);
        assert_ne!(ka, kb);
        assert!(matches!(unlock(&a, b"wrong"), Err(LuksHeaderError::WrongPassphrase)));
        let (ha, hb) = (Header::parse(&a, len).unwrap(), Header::parse(&b, len).unwrap());
        assert_ne!(ha.uuid, hb.uuid);
        assert_ne!(ha.mk_digest_salt, hb.mk_digest_salt);
        assert_ne!(ha.slots[0].salt, hb.slots[0].salt);
        // The key material is not the AF-split key in the clear.
        assert!(!a.windows(KEY_BYTES).any(|w| w == &ka[..]));
    }

    #[test]
    fn refuses_what_qemu_would_refuse() {
        let (layout, len) = qemu_layout();
        let region = build_region(b"p", &layout, len, 1000, &SystemRandom::new()).unwrap();
        assert!(matches!(Header::parse(&region[..100], len), Err(LuksHeaderError::NotLuks1)));
        let slot7_end = (8 + 504 * 7) * SECTOR + KEY_MATERIAL_LEN;
        assert!(Header::parse(&region, slot7_end).is_ok());
        assert!(matches!(
            Header::parse(&region, slot7_end - 1),
            Err(LuksHeaderError::BadSlot { slot: 7, .. })
        ));
        let mut bad = region.to_vec();
        bad[40..52].copy_from_slice(b"cbc-essiv:sh");
        assert!(matches!(Header::parse(&bad, len), Err(LuksHeaderError::Unsupported { .. })));
        let mut overlap = region.to_vec();
        put32(&mut overlap, 208 + 48 + 40, 9);
        assert!(matches!(Header::parse(&overlap, len), Err(LuksHeaderError::BadSlot { .. })));
        let mut stripes = region.to_vec();
        put32(&mut stripes, 208 + 44, 3999);
        assert!(matches!(
            Header::parse(&stripes, len),
            Err(LuksHeaderError::BadSlot { slot: 0, .. })
        ));
        assert!(matches!(
            build_region(b"p", &layout, len, 0, &SystemRandom::new()),
            Err(LuksHeaderError::ZeroIterations)
        ));
    }
}
