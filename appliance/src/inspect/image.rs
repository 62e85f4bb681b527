//! Disk images as a flat array of bytes: raw files, qcow2 (through imago) and
//! VMDK (our own reader in [`super::vmdk`]). Everything above this module
//! reads a guest disk through [`DiskImage::read_at`] only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::vmdk;
use super::InspectError;

/// A virtual disk read by offset.
pub trait DiskImage: Send + Sync {
    /// Size of the virtual disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; an error when the range passes the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Container format name (`raw`, `qcow2`, `vmdk-sparse`, `vmdk-stream`, `vmdk-flat`).
    fn format(&self) -> &'static str;
}

/// Checks that `len` bytes at `offset` lie within `size`.
pub fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at {offset} passes the end of the disk ({size} bytes)"),
        )),
    }
}

/// A raw image file (also a VMDK flat extent).
pub struct RawImage {
    file: File,
    size: u64,
}

impl RawImage {
    /// Opens a raw file read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(RawImage { file, size })
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size)?;
        self.file.read_exact_at(buf, offset)
    }
    fn format(&self) -> &'static str {
        "raw"
    }
}

/// An image held in memory (fuzzing, tests).
pub struct MemImage(pub Vec<u8>);

impl DiskImage for MemImage {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size())?;
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn format(&self) -> &'static str {
        "raw"
    }
}

/// A qcow2 image read through imago. Backing files are refused: an image
/// must not make the inspector open other host files it names.
pub struct Qcow2Image {
    inner: imago::FormatAccess<imago::file::File>,
}

impl Qcow2Image {
    /// Opens a qcow2 file read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        use imago::{FormatDriverBuilder, Storage};
        // The file is opened here, explicitly; the gate then refuses any
        // file the image itself names (backing or external data files).
        let storage = imago::file::File::open(imago::StorageOpenOptions::new().filename(path).write(false))?;
        let q = imago::qcow2::Qcow2::<imago::file::File>::builder(storage)
            .write(false)
            .open(imago::DenyImplicitOpenGate::default())?;
        Ok(Qcow2Image {
            inner: imago::FormatAccess::new(q),
        })
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size())?;
        self.inner.read(buf, offset)
    }
    fn format(&self) -> &'static str {
        "qcow2"
    }
}

/// The qcow2 compression type from a header (qcow2 spec: version 3,
/// incompatible feature bit 3, byte 104): `None` when the header does not
/// set one (zlib), `Some(1)` for zstd.
pub fn qcow2_compression(head: &[u8]) -> Option<u8> {
    let be32 = |o: usize| head.get(o..o + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    let be64 = |o: usize| head.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    if be32(4)? < 3 || be64(72)? & (1 << 3) == 0 || be32(100)? <= 104 {
        return None;
    }
    head.get(104).copied()
}

/// Opens an image, telling the format from its first bytes (qcow2 `QFI\xfb`,
/// VMDK sparse `KDMV`, a VMDK text descriptor) and else taking it as raw.
pub fn open(path: &Path) -> Result<Box<dyn DiskImage>, InspectError> {
    let io_err = |source| InspectError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut head = vec![0u8; len.min(1024) as usize];
    file.read_exact_at(&mut head, 0).map_err(io_err)?;
    if head.starts_with(b"QFI\xfb") {
        if qcow2_compression(&head) == Some(1) {
            return Err(InspectError::Format {
                path: path.to_path_buf(),
                message: "qcow2 with zstd-compressed clusters (compression_type=zstd) is not read here \
                          (the qcow2 reader, imago, reads zlib only); convert it: \
                          qemu-img convert -O qcow2 -c -o compression_type=zlib IN OUT \
                          (or without -c for an uncompressed copy)"
                    .into(),
            });
        }
        let img = Qcow2Image::open(path).map_err(|e| InspectError::Format {
            path: path.to_path_buf(),
            message: format!(
                "qcow2: {e}. Images with a backing file or an external data file cannot be read here; \
                 flatten first: qemu-img convert -O qcow2 IN OUT"
            ),
        })?;
        return Ok(Box::new(img));
    }
    if head.starts_with(b"KDMV") || vmdk::looks_like_descriptor(&head) {
        return vmdk::open(path).map(|v| Box::new(v) as Box<dyn DiskImage>);
    }
    Ok(Box::new(RawImage::open(path).map_err(io_err)?))
}
