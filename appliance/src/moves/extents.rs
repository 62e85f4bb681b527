//! Which parts of a disk image hold data, and its guest-visible content.
//!
//! Raw images: `SEEK_DATA`/`SEEK_HOLE` on the file. Other formats (qcow2,
//! VMDK, …): `qemu-img map --output=json` lists the allocated extents, and the
//! guest-visible content is read through QEMU's own block layer: a
//! `qemu-storage-daemon` opens the image read-only (shared) and exports it
//! over NBD on a private socket under the work directory
//! ([`hv::storage_daemon`]); qcow2 clusters may be compressed or sit in a
//! backing file, so the file's bytes are not the disk's. (Converting the
//! image to a raw copy first cost a full extra pass over the disk before the
//! first block could leave.) Images are read with `-U` (force share): a
//! pre-copy reads the disk of a source that still runs; what it reads may be
//! torn, which the copy after the stop repairs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hv::storage_daemon::{Access, EncryptedDisk};

use proto::transfer::BLOCK_SIZE;
use serde::Deserialize;

/// Errors reading a source disk.
#[derive(Debug, thiserror::Error)]
pub enum ExtentError {
    /// qemu-img failed or is missing.
    #[error("qemu-img {what} on {path} failed: {detail}. Is qemu-utils installed and the image readable?")]
    QemuImg {
        /// Sub-command.
        what: &'static str,
        /// Image.
        path: PathBuf,
        /// Its message.
        detail: String,
    },
    /// File I/O.
    #[error("cannot read disk {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

#[derive(Deserialize)]
struct Info {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

#[derive(Deserialize)]
struct MapEntry {
    start: u64,
    length: u64,
    data: bool,
}

/// Where the guest-visible bytes come from.
#[derive(Debug)]
enum Content {
    /// A raw image: the file itself.
    Raw(File),
    /// Any other format: QEMU's block layer over NBD.
    Nbd(Box<Mutex<EncryptedDisk>>),
}

/// The guest-visible content of a disk, with its allocated extents.
#[derive(Debug)]
pub struct GuestView {
    /// Guest-visible size.
    pub size: u64,
    /// Allocated extents (start, length), ascending, merged.
    pub extents: Vec<(u64, u64)>,
    /// Image format as qemu-img reports it.
    pub format: String,
    content: Content,
}

/// Numbers the storage daemons' directories of this process.
static DAEMONS: AtomicU64 = AtomicU64::new(0);

fn qemu_img(what: &'static str, path: &Path, args: &[&str]) -> Result<Vec<u8>, ExtentError> {
    let out = Command::new("qemu-img").args(args).output().map_err(|e| ExtentError::QemuImg {
        what,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ExtentError::QemuImg {
            what,
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

impl GuestView {
    /// Opens `path`; a non-raw image is converted to a sparse raw file under
    /// `work_dir` first.
    pub fn open(path: &Path, work_dir: &Path) -> Result<GuestView, ExtentError> {
        let p = path.to_string_lossy();
        let info: Info =
            serde_json::from_slice(&qemu_img("info", path, &["info", "-U", "--output=json", &p])?).map_err(|e| ExtentError::QemuImg {
                what: "info",
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let io = |e| ExtentError::Io(path.to_path_buf(), e);
        if info.format == "raw" {
            let raw = File::open(path).map_err(io)?;
            let extents = seek_data_extents(&raw, info.virtual_size).map_err(io)?;
            return Ok(GuestView {
                size: info.virtual_size,
                extents,
                format: info.format,
                content: Content::Raw(raw),
            });
        }
        let map: Vec<MapEntry> =
            serde_json::from_slice(&qemu_img("map", path, &["map", "-U", "--output=json", &p])?).map_err(|e| ExtentError::QemuImg {
                what: "map",
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let extents = merge(map.iter().filter(|m| m.data).map(|m| (m.start, m.length)));
        reap_earlier_daemons(work_dir);
        let n = DAEMONS.fetch_add(1, Ordering::Relaxed);
        let dir = work_dir.join(format!(".sd-{}-{n}", std::process::id()));
        let disk = EncryptedDisk::open_plain(path, &info.format, &dir, Access::ReadShared).map_err(|e| ExtentError::QemuImg {
            what: "storage daemon",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(GuestView {
            size: info.virtual_size,
            extents,
            format: info.format,
            content: Content::Nbd(Box::new(Mutex::new(disk))),
        })
    }

    /// Bytes in allocated extents.
    pub fn allocated(&self) -> u64 {
        self.extents.iter().map(|e| e.1).sum()
    }

    /// Indices of blocks that overlap an allocated extent, ascending.
    pub fn candidate_blocks(&self) -> Vec<u64> {
        blocks_of(&self.extents)
    }

    /// Reads block `index` (the last one may be short) into `buf`.
    pub fn read_block(&self, index: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let len = proto::transfer::block_len(self.size, index) as usize;
        buf.resize(len, 0);
        match &self.content {
            Content::Raw(f) => f.read_exact_at(buf, index * BLOCK_SIZE),
            Content::Nbd(d) => d
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_at(buf, index * BLOCK_SIZE)
                .map_err(std::io::Error::other),
        }
    }
}

/// Stops the storage daemons an appliance process that is gone (killed
/// while it read a disk) left under `work_dir` (`.sd-<pid>-<n>`); those of
/// live processes (this one, or `isthmus stage` beside `isthmus serve`) stay.
fn reap_earlier_daemons(work_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(work_dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".sd-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            hv::storage_daemon::reap(&e.path());
        }
    }
}

/// Merges adjacent/overlapping extents.
fn merge(it: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = it.filter(|e| e.1 > 0).collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in v {
        match out.last_mut() {
            Some((ls, ll)) if *ls + *ll >= s => *ll = (*ll).max(s + l - *ls),
            _ => out.push((s, l)),
        }
    }
    out
}

/// Block indices covered by extents.
fn blocks_of(extents: &[(u64, u64)]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &(s, l) in extents {
        let first = s / BLOCK_SIZE;
        let last = (s + l - 1) / BLOCK_SIZE;
        for b in first..=last {
            if out.last() != Some(&b) {
                out.push(b);
            }
        }
    }
    out
}

/// Data extents of a raw file by `SEEK_DATA`/`SEEK_HOLE`.
fn seek_data_extents(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            // A file system without SEEK_DATA: everything is data.
            Err(nix::errno::Errno::EINVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(fd, data, Whence::SeekHole).map_err(std::io::Error::from)?.min(end);
        if hole > data {
            out.push((data as u64, (hole - data) as u64));
        }
        pos = hole;
    }
    Ok(merge(out.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn blocks_and_merging() {
        assert_eq!(merge([(10, 5), (0, 10), (100, 0)].into_iter()), vec![(0, 15)]);
        assert_eq!(
            blocks_of(&[(0, 1), (BLOCK_SIZE - 1, 2), (5 * BLOCK_SIZE, BLOCK_SIZE)]),
            vec![0, 1, 5]
        );
    }

    #[test]
    fn raw_holes_and_qcow2_map_give_the_same_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        let mut f = File::create(&raw).unwrap();
        f.set_len(8 * BLOCK_SIZE).unwrap();
        for b in [1u64, 5] {
            f.write_all_at(&[0xab; 4096], b * BLOCK_SIZE + 8192).unwrap();
        }
        f.flush().unwrap();
        let v = GuestView::open(&raw, dir.path()).unwrap();
        assert_eq!(v.format, "raw");
        assert_eq!(v.candidate_blocks(), vec![1, 5]);
        let q = dir.path().join("d.qcow2");
        let status = Command::new("qemu-img")
            .args(["convert", "-O", "qcow2", "-c"])
            .arg(&raw)
            .arg(&q)
            .status()
            .unwrap();
        assert!(status.success());
        let v = GuestView::open(&q, &dir.path().join("work")).unwrap();
        assert_eq!(v.format, "qcow2");
        assert_eq!(v.candidate_blocks(), vec![1, 5]);
        let mut buf = vec![];
        v.read_block(5, &mut buf).unwrap();
        assert_eq!(&buf[8192..8192 + 4096], &[0xab; 4096][..]);
        drop(v);
        assert_eq!(
            std::fs::read_dir(dir.path().join("work")).unwrap().count(),
            0,
            "daemon directory removed"
        );
    }
}
