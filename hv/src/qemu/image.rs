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

/// A disk image as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// Cache mode its file system supports.
    pub cache: CacheMode,
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
        let mut magic = [0u8; 4];
        let format = match f.read_exact(&mut magic) {
            Ok(()) if magic == QCOW2_MAGIC => ImageFormat::Qcow2,
            Ok(()) => ImageFormat::Raw,
            // Shorter than 4 bytes: not qcow2; QEMU will take it as raw.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => ImageFormat::Raw,
            Err(e) => return Err(read_err(e)),
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
