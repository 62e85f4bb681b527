//! Filesystem signatures (what a partition holds, its UUID and label) and an
//! adapter that lets `ext4-view` read an ext2/3/4 filesystem from a
//! partition of a [`DiskImage`].

use std::sync::Arc;

use super::image::DiskImage;

/// What a probe found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// `ext2`, `ext3`, `ext4`, `ntfs`, `vfat`, `xfs`, `btrfs`, `swap`, `lvm2`.
    pub fs: Option<&'static str>,
    /// UUID as blkid prints it.
    pub uuid: Option<String>,
    /// Label.
    pub label: Option<String>,
}

fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn uuid(b: &[u8]) -> Option<String> {
    if b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Bytes of a partition's start that [`probe_bytes`] looks at.
pub const PROBE_LEN: usize = 0x10100;

/// Reads the start of a partition and tells its filesystem.
pub fn probe(img: &dyn DiskImage, start: u64, size: u64) -> Probe {
    let n = (size.min(PROBE_LEN as u64)) as usize;
    let mut b = vec![0u8; n];
    if img.read_at(&mut b, start).is_err() {
        return Probe::default();
    }
    probe_bytes(&b)
}

/// Tells a filesystem from the first bytes of a partition.
pub fn probe_bytes(b: &[u8]) -> Probe {
    let at = |o: usize, m: &[u8]| b.len() >= o + m.len() && &b[o..o + m.len()] == m;
    if b.len() >= 2048 && at(1024 + 56, &[0x53, 0xef]) {
        let sb = &b[1024..2048];
        let compat = u32::from_le_bytes([sb[92], sb[93], sb[94], sb[95]]);
        let incompat = u32::from_le_bytes([sb[96], sb[97], sb[98], sb[99]]);
        let ro = u32::from_le_bytes([sb[100], sb[101], sb[102], sb[103]]);
        // extents, 64bit, flex_bg, huge_file/dir_nlink/extra_isize/metadata_csum.
        let fs = if incompat & (0x40 | 0x80 | 0x200) != 0 || ro & (0x8 | 0x20 | 0x40 | 0x400) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return Probe {
            fs: Some(fs),
            uuid: uuid(&sb[104..120]),
            label: text(&sb[120..136]),
        };
    }
    if at(3, b"NTFS    ") && b.len() >= 0x50 {
        let serial = u64::from_le_bytes(b[0x48..0x50].try_into().unwrap_or([0; 8]));
        return Probe {
            fs: Some("ntfs"),
            uuid: Some(format!("{serial:016X}")),
            label: None,
        };
    }
    if at(82, b"FAT32   ") || at(54, b"FAT16   ") || at(54, b"FAT12   ") {
        let (id, lab) = if at(82, b"FAT32   ") { (67, 71) } else { (39, 43) };
        let v = u32::from_le_bytes([b[id], b[id + 1], b[id + 2], b[id + 3]]);
        return Probe {
            fs: Some("vfat"),
            uuid: Some(format!("{:04X}-{:04X}", v >> 16, v & 0xffff)),
            label: text(&b[lab..lab + 11]).filter(|l| l != "NO NAME"),
        };
    }
    if at(0, b"XFSB") && b.len() >= 120 {
        return Probe {
            fs: Some("xfs"),
            uuid: uuid(&b[32..48]),
            label: text(&b[108..120]),
        };
    }
    if at(0x10040, b"_BHRfS_M") {
        return Probe {
            fs: Some("btrfs"),
            uuid: uuid(&b[0x10020..0x10030]),
            label: text(&b[0x1012b..0x1012b.min(b.len())]),
        };
    }
    if at(4096 - 10, b"SWAPSPACE2") || at(4096 - 10, b"SWAP-SPACE") {
        return Probe {
            fs: Some("swap"),
            uuid: uuid(&b[1024 + 12..1024 + 28]),
            label: text(&b[1024 + 28..1024 + 44]),
        };
    }
    if at(512, b"LABELONE") && at(512 + 24, b"LVM2 001") {
        return Probe {
            fs: Some("lvm2"),
            uuid: None,
            label: None,
        };
    }
    Probe::default()
}

/// A partition of an image as `ext4-view` wants to read it.
pub struct PartReader {
    img: Arc<dyn DiskImage>,
    start: u64,
    size: u64,
}

impl PartReader {
    /// Reader of `size` bytes at `start`.
    pub fn new(img: Arc<dyn DiskImage>, start: u64, size: u64) -> Self {
        PartReader { img, start, size }
    }
}

impl ext4_view::Ext4Read for PartReader {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        super::image::check_range(start_byte, dst.len(), self.size)?;
        self.img.read_at(dst, self.start + start_byte)?;
        Ok(())
    }
}
