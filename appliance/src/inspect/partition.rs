//! MBR (with extended/logical partitions) and GPT partition tables, read with
//! bounds checks from any [`DiskImage`]. Sectors are 512 bytes.

use super::image::DiskImage;

const SECTOR: u64 = 512;
/// Most logical partitions followed in an extended partition chain.
const MAX_LOGICAL: usize = 128;
/// Most GPT entries read.
const MAX_GPT_ENTRIES: u32 = 1024;

/// Which table the disk has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// DOS/MBR.
    Mbr,
    /// GUID partition table.
    Gpt,
    /// No table.
    None,
}

impl TableKind {
    /// Name as in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
            TableKind::None => "none",
        }
    }
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Number as Linux names it (1-4 primary, 5+ logical for MBR; entry number + 1 for GPT).
    pub index: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// `0x83` style MBR type or GPT type GUID.
    pub type_id: String,
    /// PARTUUID as Linux forms it.
    pub partuuid: String,
}

/// A read partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Kind.
    pub kind: TableKind,
    /// Partitions in number order.
    pub partitions: Vec<Partition>,
    /// Problems worth telling (bad CRC, entries past the end, loops).
    pub warnings: Vec<String>,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    (le32(b, o) as u64) | ((le32(b, o + 4) as u64) << 32)
}

/// CRC-32 (IEEE, reflected) as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Formats a GPT GUID (mixed endian) as text.
pub fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn read_sector(img: &dyn DiskImage, lba: u64) -> Option<[u8; 512]> {
    let mut b = [0u8; 512];
    img.read_at(&mut b, lba.checked_mul(SECTOR)?).ok()?;
    Some(b)
}

/// Reads the partition table of a disk; `Table { kind: None }` when there is none.
pub fn read(img: &dyn DiskImage) -> Table {
    let none = Table {
        kind: TableKind::None,
        partitions: vec![],
        warnings: vec![],
    };
    let Some(mbr) = read_sector(img, 0) else {
        return none;
    };
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return none;
    }
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + 16 * i + 4]).collect();
    if types.contains(&0xee) {
        if let Some(t) = read_gpt(img) {
            return t;
        }
    }
    read_mbr(img, &mbr)
}

fn in_disk(img: &dyn DiskImage, start: u64, size: u64, what: &str, warnings: &mut Vec<String>) -> bool {
    match start.checked_add(size) {
        Some(end) if end <= img.size() && size > 0 => true,
        _ => {
            warnings.push(format!("{what} lies past the end of the disk; skipped"));
            false
        }
    }
}

fn read_mbr(img: &dyn DiskImage, mbr: &[u8; 512]) -> Table {
    let sig = le32(mbr, 440);
    let mut t = Table {
        kind: TableKind::Mbr,
        partitions: vec![],
        warnings: vec![],
    };
    let mut extended = None;
    for i in 0..4 {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        let ty = e[4];
        let (lba, n) = (le32(e, 8) as u64, le32(e, 12) as u64);
        if ty == 0 || n == 0 {
            continue;
        }
        if matches!(ty, 0x05 | 0x0f | 0x85) {
            extended = Some((lba, n));
            continue;
        }
        let (start, size) = (lba * SECTOR, n * SECTOR);
        if in_disk(img, start, size, &format!("partition {}", i + 1), &mut t.warnings) {
            t.partitions.push(Partition {
                index: i as u32 + 1,
                start,
                size,
                type_id: format!("0x{ty:02x}"),
                partuuid: format!("{sig:08x}-{:02x}", i + 1),
            });
        }
    }
    if let Some((ext_lba, ext_n)) = extended {
        // Logical partitions: a chain of EBRs, each link relative to the extended start.
        let mut ebr = ext_lba;
        let mut seen = std::collections::HashSet::new();
        let mut index = 5u32;
        while t.partitions.len() < 4 + MAX_LOGICAL {
            if !seen.insert(ebr) {
                t.warnings.push("extended partition chain loops; stopped".into());
                break;
            }
            let Some(s) = read_sector(img, ebr) else {
                t.warnings.push(format!("EBR at sector {ebr} unreadable"));
                break;
            };
            if s[510] != 0x55 || s[511] != 0xaa {
                break;
            }
            let (e1, e2) = (&s[446..462], &s[462..478]);
            if e1[4] != 0 && le32(e1, 12) != 0 {
                let start = ebr.saturating_add(le32(e1, 8) as u64).saturating_mul(SECTOR);
                let size = le32(e1, 12) as u64 * SECTOR;
                if in_disk(img, start, size, &format!("partition {index}"), &mut t.warnings) {
                    t.partitions.push(Partition {
                        index,
                        start,
                        size,
                        type_id: format!("0x{:02x}", e1[4]),
                        partuuid: format!("{sig:08x}-{index:02x}"),
                    });
                }
                index += 1;
            }
            let next = le32(e2, 8) as u64;
            if e2[4] == 0 || next == 0 || next >= ext_n {
                break;
            }
            ebr = ext_lba + next;
        }
    }
    t.partitions.sort_by_key(|p| p.index);
    t
}

fn read_gpt(img: &dyn DiskImage) -> Option<Table> {
    let h = read_sector(img, 1)?;
    if &h[0..8] != b"EFI PART" {
        return None;
    }
    let mut warnings = vec![];
    let hsize = le32(&h, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return None;
    }
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32(&hc) != le32(&h, 16) {
        warnings.push("GPT header CRC does not match; read anyway".into());
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let esize = le32(&h, 84) as usize;
    if count == 0 || count > MAX_GPT_ENTRIES || !(128..=4096).contains(&esize) || !esize.is_multiple_of(8) {
        return None;
    }
    let total = count as usize * esize;
    let mut raw = vec![0u8; total];
    img.read_at(&mut raw, entries_lba.checked_mul(SECTOR)?).ok()?;
    if crc32(&raw) != le32(&h, 88) {
        warnings.push("GPT partition array CRC does not match; read anyway".into());
    }
    let mut parts = vec![];
    for (i, e) in raw.chunks_exact(esize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            warnings.push(format!("GPT entry {} ends before it starts; skipped", i + 1));
            continue;
        }
        let (Some(start), Some(size)) = (first.checked_mul(SECTOR), (last - first + 1).checked_mul(SECTOR)) else {
            continue;
        };
        if in_disk(img, start, size, &format!("partition {}", i + 1), &mut warnings) {
            parts.push(Partition {
                index: i as u32 + 1,
                start,
                size,
                type_id: guid(&e[0..16]),
                partuuid: guid(&e[16..32]),
            });
        }
    }
    Some(Table {
        kind: TableKind::Gpt,
        partitions: parts,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::super::image::MemImage;
    use super::*;

    #[test]
    fn crc_and_guid() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let b = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
        ];
        assert_eq!(guid(&b), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn mbr_with_logical_loop_and_overrun() {
        let mut d = vec![0u8; 64 * 512];
        d[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        let put = |d: &mut Vec<u8>, at: usize, ty: u8, lba: u32, n: u32| {
            d[at + 4] = ty;
            d[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
            d[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
        };
        put(&mut d, 446, 0x83, 2, 10);
        put(&mut d, 462, 0x83, 60, 100); // past the end
        put(&mut d, 478, 0x05, 20, 40);
        d[510] = 0x55;
        d[511] = 0xaa;
        // EBR at 20: logical at 21..25, next link points back to itself.
        let e = 20 * 512;
        put(&mut d, e + 446, 0x82, 1, 4);
        put(&mut d, e + 462, 0x05, 0, 1);
        d[e + 510] = 0x55;
        d[e + 511] = 0xaa;
        let t = read(&MemImage(d));
        assert_eq!(t.kind, TableKind::Mbr);
        let idx: Vec<u32> = t.partitions.iter().map(|p| p.index).collect();
        assert_eq!(idx, vec![1, 5]);
        assert_eq!(t.partitions[0].partuuid, "12345678-01");
        assert_eq!(t.partitions[1].start, 21 * 512);
        assert_eq!(t.partitions[1].type_id, "0x82");
        assert!(t.warnings.iter().any(|w| w.contains("partition 2")));
    }
}
