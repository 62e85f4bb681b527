//! The signed update image: a magic line, one JSON header line, then the raw
//! root filesystem written as-is into the inactive slot.
//!
//! ```text
//! ISTHMUS-UPDATE-1\n
//! {"version":"…","root_size":N,"root_sha256":"<64 hex>","signature":"<128 hex>"}\n
//! <root_size bytes: ext4 image of the root partition>
//! ```
//! The Ed25519 signature covers [`signed_message`] (version, size and digest),
//! so a verified header pins every byte of the payload. The signing key stays
//! with whoever builds the images (`image-build/common/sign-update.sh`); the
//! appliance only holds the 32-byte public key (`/etc/isthmus/update-key.pub`).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::UpdateError;

/// First line of every update image.
pub const MAGIC: &[u8] = b"ISTHMUS-UPDATE-1\n";
/// The header line (after the magic) is at most this long.
pub const MAX_HEADER: usize = 4096;

/// What the header of an update image says about its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Version of the image (the build's recipe hash, or a release name).
    pub version: String,
    /// Length of the root filesystem payload in bytes.
    pub root_size: u64,
    /// SHA-256 of the payload, lower-case hex.
    pub root_sha256: String,
    /// Ed25519 signature of [`signed_message`], lower-case hex.
    pub signature: String,
}

/// The bytes the signature covers.
pub fn signed_message(h: &Header) -> Vec<u8> {
    format!("isthmus-update-v1\n{}\n{}\n{}\n", h.version, h.root_size, h.root_sha256).into_bytes()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses the start of an update image; returns the header and the offset
/// of the payload. `buf` needs at most `MAGIC.len() + MAX_HEADER` bytes.
pub fn parse_header(buf: &[u8]) -> Result<(Header, u64), UpdateError> {
    let rest = buf.strip_prefix(MAGIC).ok_or(UpdateError::NotAnUpdate)?;
    let end = rest
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(|| UpdateError::BadHeader(format!("no header line within {MAX_HEADER} bytes")))?;
    let h: Header = serde_json::from_slice(&rest[..end]).map_err(|e| UpdateError::BadHeader(format!("header JSON: {e}")))?;
    let version_ok =
        !h.version.is_empty() && h.version.len() <= 64 && h.version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !version_ok {
        return Err(UpdateError::BadHeader(format!(
            "version {:?} (want 1-64 of A-Z a-z 0-9 . _ -)",
            h.version
        )));
    }
    if h.root_size == 0 {
        return Err(UpdateError::BadHeader("root_size is 0".into()));
    }
    if !is_hex(&h.root_sha256, 64) {
        return Err(UpdateError::BadHeader("root_sha256 is not 64 lower-case hex digits".into()));
    }
    if !is_hex(&h.signature, 128) {
        return Err(UpdateError::BadHeader("signature is not 128 lower-case hex digits".into()));
    }
    Ok((h, (MAGIC.len() + end + 1) as u64))
}

/// Checks the header's signature against the appliance's public key.
pub fn check_signature(h: &Header, public_key: &[u8]) -> Result<(), UpdateError> {
    let sig = hex::decode(&h.signature).map_err(|_| UpdateError::BadSignature)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&signed_message(h), &sig)
        .map_err(|_| UpdateError::BadSignature)
}

/// SHA-256 of `len` bytes read from `r`; `progress` gets the bytes done so far.
pub fn digest_of(r: &mut impl Read, len: u64, progress: &mut dyn FnMut(u64)) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("ended after {done} of {len} bytes"),
            ));
        }
        ctx.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// An update image whose signature and payload digest were checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its header.
    pub header: Header,
    /// Where the payload starts in the file.
    pub payload_offset: u64,
}

/// Reads and checks an update image: header, signature, payload size and digest.
/// `progress` gets (bytes hashed, payload size).
pub fn verify(path: &Path, public_key: &[u8], progress: &mut dyn FnMut(u64, u64)) -> Result<Verified, UpdateError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| UpdateError::Io { what, source }
    };
    let mut f = File::open(path).map_err(io("open"))?;
    let mut head = Vec::with_capacity(MAGIC.len() + MAX_HEADER);
    (&mut f)
        .take((MAGIC.len() + MAX_HEADER) as u64)
        .read_to_end(&mut head)
        .map_err(io("read"))?;
    let (header, payload_offset) = parse_header(&head)?;
    check_signature(&header, public_key)?;
    let file_len = f.metadata().map_err(io("stat"))?.len();
    if file_len != payload_offset + header.root_size {
        return Err(UpdateError::Size {
            got: file_len.saturating_sub(payload_offset),
            want: header.root_size,
        });
    }
    f.seek(SeekFrom::Start(payload_offset)).map_err(io("seek"))?;
    let total = header.root_size;
    let got = digest_of(&mut BufReader::new(f), total, &mut |d| progress(d, total)).map_err(io("read"))?;
    if got != header.root_sha256 {
        return Err(UpdateError::Digest {
            got,
            want: header.root_sha256,
        });
    }
    Ok(Verified { header, payload_offset })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn signed(version: &str, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
        let mut h = Header {
            version: version.into(),
            root_size: payload.len() as u64,
            root_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, payload)),
            signature: String::new(),
        };
        h.signature = hex::encode(kp.sign(&signed_message(&h)).as_ref());
        let mut img = MAGIC.to_vec();
        img.extend(serde_json::to_vec(&h).unwrap());
        img.push(b'\n');
        img.extend(payload);
        (img, kp.public_key().as_ref().to_vec())
    }

    #[test]
    fn good_image_verifies_and_tampering_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.img");
        let (img, pk) = signed("v2", &[7u8; 5000]);
        std::fs::write(&p, &img).unwrap();
        let v = verify(&p, &pk, &mut |_, _| {}).unwrap();
        assert_eq!(v.header.version, "v2");
        assert_eq!(v.payload_offset as usize, img.len() - 5000);

        let mut bad = img.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(verify(&p, &pk, &mut |_, _| {}), Err(UpdateError::Digest { .. })));

        std::fs::write(&p, &img[..img.len() - 1]).unwrap();
        assert!(matches!(verify(&p, &pk, &mut |_, _| {}), Err(UpdateError::Size { .. })));

        let (_, other_key) = signed("v2", b"x");
        std::fs::write(&p, &img).unwrap();
        assert!(matches!(verify(&p, &other_key, &mut |_, _| {}), Err(UpdateError::BadSignature)));

        // A changed version invalidates the signature.
        let text = String::from_utf8_lossy(&img[..200]).replace("\"v2\"", "\"v3\"");
        let mut forged = text.into_bytes();
        forged.extend(&img[200..]);
        std::fs::write(&p, &forged).unwrap();
        assert!(matches!(verify(&p, &pk, &mut |_, _| {}), Err(UpdateError::BadSignature)));
    }

    #[test]
    fn headers_are_checked() {
        for (input, ok) in [
            (&b"garbage"[..], false),
            (b"ISTHMUS-UPDATE-1\n{\"version\":\"a\"}\n", false),
            (b"ISTHMUS-UPDATE-1\n{\"version\":\"a b\",\"root_size\":1,\"root_sha256\":\"", false),
        ] {
            assert_eq!(parse_header(input).is_ok(), ok, "{}", String::from_utf8_lossy(input));
        }
        let sha = "a".repeat(64);
        let sig = "b".repeat(128);
        let line = |v: &str, n: u64| {
            format!("ISTHMUS-UPDATE-1\n{{\"version\":\"{v}\",\"root_size\":{n},\"root_sha256\":\"{sha}\",\"signature\":\"{sig}\"}}\n")
        };
        assert!(parse_header(line("1.2-x_y", 9).as_bytes()).is_ok());
        assert!(parse_header(line("../x", 9).as_bytes()).is_err());
        assert!(parse_header(line("", 9).as_bytes()).is_err());
        assert!(parse_header(line("v", 0).as_bytes()).is_err());
        let long = format!("ISTHMUS-UPDATE-1\n{}", " ".repeat(MAX_HEADER + 10));
        assert!(parse_header(long.as_bytes()).is_err());
    }
}
