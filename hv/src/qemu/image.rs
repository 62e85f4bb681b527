//! What QEMU needs to know about a disk image file before it opens it:
//! its format (by magic bytes, never by name) and whether its file system
//! takes O_DIRECT (`cache=none`).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::args::{CacheMode, ImageFormat};

/// qcow2 header magic (qcow2 spec, "Header": `QFI\xfb`).
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// qcow2 header field `crypt_method` (offset 32, u32 big-endian):
/// 0 none, 1 legacy AES-CBC, 2 LUKS (qcow2 spec, "Header").
const QCOW2_CRYPT_METHOD_OFFSET: usize = 32;

/// How a disk image is encrypted at rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Plain image.
    None,
    /// qcow2 with a LUKS payload (`encrypt.format=luks`): opened with a
    /// key handed to QEMU over QMP.
    Luks,
}

/// A disk image as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// Cache mode its file system supports.
    pub cache: CacheMode,
    /// Encryption at rest, from the qcow2 header.
    pub encryption: Encryption,
}

/// A disk image that could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Opening or reading the file failed.
    #[error("cannot read disk image {path}: {source}; check that the file exists and is readable and writable by this process")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A directory, device node or other non-file.
    #[error("disk image {0} is not a regular file; give the path of a qcow2 or raw image file")]
    NotAFile(PathBuf),
    /// qcow2's legacy AES-CBC encryption, which QEMU refuses to run and
    /// which is weak.
    #[error("disk image {0} uses qcow2's legacy AES encryption (crypt_method 1), which QEMU no longer runs; re-encrypt it as LUKS (hv::create_encrypted_image)")]
    LegacyAes(PathBuf),
    /// A qcow2 encryption method this code does not know.
    #[error("disk image {path} has unknown qcow2 crypt_method {method}; it is not an image QEMU 10 writes")]
    UnknownEncryption {
        /// The file.
        path: PathBuf,
        /// The header value.
        method: u32,
    },
}

impl DiskImage {
    /// Inspects `path`: format by magic bytes, cache mode by trying O_DIRECT.
    pub fn inspect(path: &Path) -> Result<DiskImage, ImageError> {
        let read_err = |source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::open(path).map_err(read_err)?;
        if !f.metadata().map_err(read_err)?.is_file() {
            return Err(ImageError::NotAFile(path.to_path_buf()));
        }
        let mut header = Vec::with_capacity(QCOW2_CRYPT_METHOD_OFFSET + 4);
        (&mut f)
            .take(QCOW2_CRYPT_METHOD_OFFSET as u64 + 4)
            .read_to_end(&mut header)
            .map_err(read_err)?;
        // Shorter than 4 bytes: not qcow2; QEMU will take it as raw.
        let format = if header.starts_with(&QCOW2_MAGIC) {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        };
        let encryption = match (format, header.get(QCOW2_CRYPT_METHOD_OFFSET..)) {
            (ImageFormat::Qcow2, Some(m)) if m.len() == 4 => match u32::from_be_bytes([m[0], m[1], m[2], m[3]]) {
                0 => Encryption::None,
                1 => return Err(ImageError::LegacyAes(path.to_path_buf())),
                2 => Encryption::Luks,
                method => {
                    return Err(ImageError::UnknownEncryption {
                        path: path.to_path_buf(),
                        method,
                    })
                }
            },
            // A truncated qcow2 header: QEMU will say what is wrong.
            _ => Encryption::None,
        };
        // tmpfs and some FUSE file systems refuse O_DIRECT; QEMU would then
        // fail to open the disk with cache=none.
        let cache = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(_) => CacheMode::None,
            Err(_) => CacheMode::Writeback,
        };
        Ok(DiskImage {
            path: path.to_path_buf(),
            format,
            cache,
            encryption,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_format_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("disk.img");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        assert_eq!(DiskImage::inspect(&q).unwrap().format, ImageFormat::Qcow2);
        let r = dir.path().join("disk.qcow2");
        std::fs::write(&r, [0u8; 512]).unwrap();
        assert_eq!(DiskImage::inspect(&r).unwrap().format, ImageFormat::Raw);
        let mut luks = b"QFI\xfb\0\0\0\x03".to_vec();
        luks.resize(32, 0);
        luks.extend_from_slice(&2u32.to_be_bytes());
        std::fs::write(&q, &luks).unwrap();
        assert_eq!(DiskImage::inspect(&q).unwrap().encryption, Encryption::Luks);
        luks[35] = 1;
        std::fs::write(&q, &luks).unwrap();
        assert!(matches!(DiskImage::inspect(&q), Err(ImageError::LegacyAes(_))));
        luks[35] = 9;
        std::fs::write(&q, &luks).unwrap();
        assert!(matches!(
            DiskImage::inspect(&q),
            Err(ImageError::UnknownEncryption { method: 9, .. })
        ));
        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, b"Q").unwrap();
        assert_eq!(DiskImage::inspect(&tiny).unwrap().format, ImageFormat::Raw);
    }

    #[test]
    fn missing_and_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = DiskImage::inspect(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(matches!(DiskImage::inspect(dir.path()), Err(ImageError::NotAFile(_))));
    }
}
