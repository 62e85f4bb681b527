//! VMDK: text descriptor, monolithic sparse (hosted sparse extent, `KDMV`),
//! streamOptimized (deflate-compressed grains with markers, what OVAs carry;
//! grain directory in the header or in the footer) and flat extents, after
//! VMware's "Virtual Disk Format 5.0" paper. Every
//! offset and count read from the file is checked before use; extent file
//! names must be plain names in the descriptor's directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::image::{check_range, DiskImage, RawImage};
use super::InspectError;

const SECTOR: u64 = 512;
/// Largest virtual disk accepted (64 TiB), in sectors.
const MAX_SECTORS: u64 = (64u64 << 40) / SECTOR;
/// Largest grain directory read into memory (entries).
const MAX_GD_ENTRIES: u64 = 1 << 22;
/// Largest embedded or separate descriptor read.
const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Most extents in one descriptor.
const MAX_EXTENTS: usize = 4096;
/// Grain directory offset meaning "in the footer" (stream-written files).
const GD_AT_END: u64 = u64::MAX;
/// Header flag: grains are compressed.
const FLAG_COMPRESSED: u32 = 1 << 16;
/// Decompressed grains kept for reuse (ext reads are small and clustered).
const GRAIN_CACHE: usize = 32;

/// An extent line of a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// `RW`, `RDONLY` or `NOACCESS`.
    pub access: String,
    /// Size in sectors.
    pub sectors: u64,
    /// `FLAT`, `SPARSE`, `ZERO`, `VMFS`, …
    pub kind: String,
    /// File name as written (absent for `ZERO`).
    pub file: Option<String>,
    /// Offset in sectors inside a flat file.
    pub offset: u64,
}

/// The parts of a descriptor the reader needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType`.
    pub create_type: Option<String>,
    /// Extents in disk order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.adapterType` (`ide`, `lsilogic`, `buslogic`, `legacyESX`).
    pub adapter_type: Option<String>,
    /// `parentFileNameHint`, when the disk is a delta of another.
    pub parent: Option<String>,
}

/// Whether these first bytes look like a text descriptor.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let t = String::from_utf8_lossy(head);
    t.trim_start().starts_with("# Disk DescriptorFile") || (t.contains("createType") && t.contains("version="))
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s)
}

/// Parses a descriptor; `Err` says which line is wrong.
pub fn parse_descriptor(text: &str) -> Result<Descriptor, String> {
    let mut d = Descriptor::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim().trim_end_matches('\0');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            if d.extents.len() >= MAX_EXTENTS {
                return Err(format!("line {}: more than {MAX_EXTENTS} extents", i + 1));
            }
            d.extents.push(parse_extent(line).map_err(|e| format!("line {}: {e}", i + 1))?);
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = unquote(v).to_string();
            match k.trim() {
                "createType" => d.create_type = Some(v),
                "ddb.adapterType" => d.adapter_type = Some(v),
                "parentFileNameHint" => d.parent = Some(v),
                _ => {}
            }
        }
    }
    if d.extents.is_empty() {
        return Err("no extent lines (RW <sectors> FLAT|SPARSE \"file\")".into());
    }
    Ok(d)
}

fn parse_extent(line: &str) -> Result<ExtentLine, String> {
    // RW 4192256 SPARSE "name with spaces.vmdk" 0
    let mut rest = line;
    let mut next = || -> Option<String> {
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"')?;
            let tok = r[..end].to_string();
            rest = &r[end + 1..];
            Some(tok)
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let tok = rest[..end].to_string();
            rest = &rest[end..];
            Some(tok)
        }
    };
    let access = next().ok_or("empty extent line")?;
    let sectors: u64 = next()
        .ok_or("extent line without a size")?
        .parse()
        .map_err(|_| "extent size is not a number".to_string())?;
    let kind = next().ok_or("extent line without a type")?.to_ascii_uppercase();
    let file = next();
    let offset = match next() {
        Some(o) => o.parse().map_err(|_| "extent offset is not a number".to_string())?,
        None => 0,
    };
    if kind != "ZERO" && file.is_none() {
        return Err(format!("{kind} extent without a file name"));
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

/// The header of a hosted sparse extent (`KDMV`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// Flags (bit 16: compressed grains, bit 17: markers).
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Embedded descriptor: offset and size in sectors.
    pub descriptor: (u64, u64),
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Grain directory offset in sectors.
    pub gd_offset: u64,
    /// Compression algorithm (0 none, 1 deflate).
    pub compress: u16,
}

impl SparseHeader {
    /// Whether grains are deflate-compressed (streamOptimized).
    pub fn compressed(&self) -> bool {
        self.compress == 1
    }

    /// Number of grain directory entries this header implies.
    pub fn gd_entries(&self) -> u64 {
        let grains = self.capacity.div_ceil(self.grain_size);
        grains.div_ceil(self.gtes_per_gt as u64)
    }
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

/// Parses and checks a sparse extent header (the first 512 bytes).
pub fn parse_sparse_header(b: &[u8]) -> Result<SparseHeader, String> {
    if b.len() < 512 || &b[0..4] != b"KDMV" {
        return Err("not a VMDK sparse extent (no KDMV magic)".into());
    }
    let h = SparseHeader {
        version: le32(b, 4),
        flags: le32(b, 8),
        capacity: le64(b, 12),
        grain_size: le64(b, 20),
        descriptor: (le64(b, 28), le64(b, 36)),
        gtes_per_gt: le32(b, 44),
        gd_offset: le64(b, 56),
        compress: u16::from_le_bytes([b[77], b[78]]),
    };
    if !(1..=3).contains(&h.version) {
        return Err(format!("sparse extent version {} is not 1, 2 or 3", h.version));
    }
    if h.capacity == 0 || h.capacity > MAX_SECTORS {
        return Err(format!("capacity of {} sectors is out of range", h.capacity));
    }
    if !h.grain_size.is_power_of_two() || !(1..=2048).contains(&h.grain_size) {
        return Err(format!("grain size of {} sectors is not a power of two up to 1 MiB", h.grain_size));
    }
    if !(1..=65536).contains(&h.gtes_per_gt) {
        return Err(format!("{} grain table entries per table is out of range", h.gtes_per_gt));
    }
    match (h.flags & FLAG_COMPRESSED != 0, h.compress) {
        (false, 0) | (true, 1) => {}
        (true, 0) | (false, 1) => return Err("header flags and compression algorithm disagree (compressed grains need deflate)".into()),
        (_, c) => {
            return Err(format!(
                "compression algorithm {c} is not deflate; convert the disk: qemu-img convert -O qcow2 IN OUT"
            ))
        }
    }
    if h.gd_offset == 0 {
        return Err("grain directory offset is 0".into());
    }
    if h.gd_entries() > MAX_GD_ENTRIES {
        return Err(format!("grain directory of {} entries is too large", h.gd_entries()));
    }
    Ok(h)
}

/// Reads grains of a sparse extent through its grain directory and tables.
pub struct SparseExtent {
    file: Box<dyn DiskImage>,
    file_len: u64,
    header: SparseHeader,
    gd: Vec<u32>,
    /// Decompressed grains by grain number (compressed extents only).
    cache: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl SparseExtent {
    /// Opens a sparse extent held in `file` (a raw view of the extent file).
    pub fn open(file: Box<dyn DiskImage>) -> Result<Self, String> {
        let file_len = file.size();
        let mut hb = [0u8; 512];
        file.read_at(&mut hb, 0).map_err(|e| format!("header: {e}"))?;
        let mut header = parse_sparse_header(&hb)?;
        if header.gd_offset == GD_AT_END {
            // Stream-written: the real header is the footer, 1024 bytes
            // before the end (then the end-of-stream marker).
            let at = file_len
                .checked_sub(1024)
                .ok_or("grain directory is in a footer the file is too short to hold")?;
            file.read_at(&mut hb, at).map_err(|e| format!("footer: {e}"))?;
            let footer = parse_sparse_header(&hb).map_err(|e| format!("footer: {e}"))?;
            if footer.gd_offset == GD_AT_END || footer.capacity != header.capacity || footer.grain_size != header.grain_size {
                return Err("footer does not match the header or has no grain directory".into());
            }
            header = footer;
        }
        let n = header.gd_entries();
        let off = header
            .gd_offset
            .checked_mul(SECTOR)
            .filter(|o| o.saturating_add(n * 4) <= file_len)
            .ok_or("grain directory lies outside the file")?;
        let mut raw = vec![0u8; (n * 4) as usize];
        file.read_at(&mut raw, off).map_err(|e| format!("grain directory: {e}"))?;
        let gd = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        Ok(SparseExtent {
            file,
            file_len,
            header,
            gd,
            cache: Mutex::new(Vec::new()),
        })
    }

    /// Fills `now` from compressed grain `grain` (its marker at sector
    /// `gte`), starting `within` bytes into the grain.
    fn read_compressed(&self, now: &mut [u8], grain: u64, gte: u64, within: u64) -> io::Result<()> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let grain_bytes = self.header.grain_size * SECTOR;
        let copy = |data: &[u8], now: &mut [u8]| {
            // A last grain may decompress short of a full grain: zeros after it.
            let from = (within as usize).min(data.len());
            let n = (data.len() - from).min(now.len());
            now[..n].copy_from_slice(&data[from..from + n]);
            now[n..].fill(0);
        };
        if let Ok(cache) = self.cache.lock() {
            if let Some((_, data)) = cache.iter().find(|(g, _)| *g == grain) {
                copy(data, now);
                return Ok(());
            }
        }
        // Grain marker: virtual sector (u64), compressed size (u32), data.
        let at = gte * SECTOR;
        let mut m = [0u8; 12];
        if at.checked_add(12).is_none_or(|end| end > self.file_len) {
            return Err(bad(format!("grain marker at sector {gte} lies outside the file")));
        }
        self.file.read_at(&mut m, at)?;
        let (lba, size) = (le64(&m, 0), le32(&m, 8) as u64);
        if lba != grain * self.header.grain_size {
            return Err(bad(format!(
                "grain marker at sector {gte} is for sector {lba}, the grain table says {}",
                grain * self.header.grain_size
            )));
        }
        if size == 0 || size > 2 * grain_bytes + 1024 || at + 12 + size > self.file_len {
            return Err(bad(format!("compressed grain at sector {gte} of {size} bytes is out of bounds")));
        }
        let mut z = vec![0u8; size as usize];
        self.file.read_at(&mut z, at + 12)?;
        let data = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&z, grain_bytes as usize)
            .map_err(|e| bad(format!("compressed grain at sector {gte} does not inflate: {e}")))?;
        copy(&data, now);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= GRAIN_CACHE {
                cache.remove(0);
            }
            cache.push((grain, data));
        }
        Ok(())
    }

    /// The header.
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The embedded descriptor text, if any.
    pub fn embedded_descriptor(&self) -> Option<String> {
        let (off, len) = self.header.descriptor;
        let (o, l) = (off.checked_mul(SECTOR)?, len.checked_mul(SECTOR)?.min(MAX_DESCRIPTOR));
        if off == 0 || l == 0 || o.checked_add(l)? > self.file_len {
            return None;
        }
        let mut b = vec![0u8; l as usize];
        self.file.read_at(&mut b, o).ok()?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Some(String::from_utf8_lossy(&b[..end]).into_owned())
    }

    /// Size of the disk this extent holds.
    pub fn size(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    /// Reads within this extent (offset relative to its start).
    pub fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size())?;
        let grain_bytes = self.header.grain_size * SECTOR;
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        while !buf.is_empty() {
            let grain = offset / grain_bytes;
            let within = offset % grain_bytes;
            let n = ((grain_bytes - within) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            let gpt = self.header.gtes_per_gt as u64;
            let gt_sector = self.gd.get((grain / gpt) as usize).copied().unwrap_or(0) as u64;
            let gte = if gt_sector == 0 {
                0
            } else {
                let at = gt_sector * SECTOR + (grain % gpt) * 4;
                if at + 4 > self.file_len {
                    return Err(bad(format!("grain table at sector {gt_sector} lies outside the file")));
                }
                let mut e = [0u8; 4];
                self.file.read_at(&mut e, at)?;
                u32::from_le_bytes(e) as u64
            };
            if gte <= 1 {
                // 0: never written; 1: zeroed grain (version 2+).
                now.fill(0);
            } else if self.header.compressed() {
                self.read_compressed(now, grain, gte, within)?;
            } else {
                let at = gte * SECTOR + within;
                if at + n as u64 > self.file_len {
                    return Err(bad(format!("grain at sector {gte} lies outside the file")));
                }
                self.file.read_at(now, at)?;
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }
}

enum Backing {
    Flat { file: File, offset: u64, len: u64 },
    Sparse(SparseExtent),
    Zero,
}

struct Extent {
    start: u64,
    len: u64,
    backing: Backing,
}

/// A VMDK disk: one or more extents in order.
pub struct VmdkImage {
    extents: Vec<Extent>,
    size: u64,
    format: &'static str,
    /// The descriptor that described it.
    pub descriptor: Descriptor,
}

fn extent_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." || name == "." {
        return Err(format!(
            "extent file name {name:?} is not a plain file name; keep the extents beside the descriptor"
        ));
    }
    Ok(dir.join(name))
}

/// Opens a VMDK by its descriptor file or monolithic sparse file.
pub fn open(path: &Path) -> Result<VmdkImage, InspectError> {
    let fail = |message: String| InspectError::Format {
        path: path.to_path_buf(),
        message: format!("VMDK: {message}"),
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).map_err(|e| fail(e.to_string()))?;
    if &magic == b"KDMV" {
        let raw = RawImage::open(path).map_err(|e| fail(e.to_string()))?;
        let sparse = SparseExtent::open(Box::new(raw)).map_err(fail)?;
        let descriptor = sparse
            .embedded_descriptor()
            .and_then(|t| parse_descriptor(&t).ok())
            .unwrap_or_default();
        if let Some(p) = descriptor.parent.as_deref().filter(|p| !p.is_empty()) {
            return Err(fail(format!("delta disk of {p:?}; inspect the parent or a consolidated copy")));
        }
        let size = sparse.size();
        let format = if sparse.header().compressed() {
            "vmdk-stream"
        } else {
            "vmdk-sparse"
        };
        return Ok(VmdkImage {
            extents: vec![Extent {
                start: 0,
                len: size,
                backing: Backing::Sparse(sparse),
            }],
            size,
            format,
            descriptor,
        });
    }
    let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    if len > MAX_DESCRIPTOR {
        return Err(fail("descriptor larger than 1 MiB".into()));
    }
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let descriptor = parse_descriptor(&String::from_utf8_lossy(&text)).map_err(fail)?;
    if let Some(p) = descriptor.parent.as_deref().filter(|p| !p.is_empty()) {
        return Err(fail(format!("delta disk of {p:?}; inspect the parent or a consolidated copy")));
    }
    let mut extents = Vec::new();
    let mut start = 0u64;
    let mut all_flat = true;
    for e in &descriptor.extents {
        let len = e
            .sectors
            .checked_mul(SECTOR)
            .filter(|_| e.sectors <= MAX_SECTORS)
            .ok_or_else(|| fail(format!("extent of {} sectors is too large", e.sectors)))?;
        let backing = match e.kind.as_str() {
            "ZERO" => Backing::Zero,
            "FLAT" | "VMFS" => {
                let p = extent_path(dir, e.file.as_deref().unwrap_or("")).map_err(fail)?;
                let f = File::open(&p).map_err(|err| fail(format!("extent {}: {err}", p.display())))?;
                let flen = f.metadata().map_err(|err| fail(err.to_string()))?.len();
                let offset = e.offset.checked_mul(SECTOR).ok_or_else(|| fail("extent offset too large".into()))?;
                if offset.checked_add(len).is_none_or(|end| end > flen) {
                    return Err(fail(format!(
                        "flat extent {} holds {flen} bytes, the descriptor needs {}",
                        p.display(),
                        offset.saturating_add(len)
                    )));
                }
                Backing::Flat { file: f, offset, len }
            }
            "SPARSE" | "VMFSSPARSE" => {
                all_flat = false;
                let p = extent_path(dir, e.file.as_deref().unwrap_or("")).map_err(fail)?;
                let f = RawImage::open(&p).map_err(|err| fail(format!("extent {}: {err}", p.display())))?;
                let s = SparseExtent::open(Box::new(f)).map_err(|m| fail(format!("extent {}: {m}", p.display())))?;
                if s.size() < len {
                    return Err(fail(format!("sparse extent {} is smaller than the descriptor says", p.display())));
                }
                Backing::Sparse(s)
            }
            k => return Err(fail(format!("extent type {k} is not supported (FLAT, SPARSE, ZERO are)"))),
        };
        extents.push(Extent { start, len, backing });
        start = start.checked_add(len).ok_or_else(|| fail("disk too large".into()))?;
        if start > MAX_SECTORS * SECTOR {
            return Err(fail("disk larger than 64 TiB".into()));
        }
    }
    Ok(VmdkImage {
        extents,
        size: start,
        format: if all_flat { "vmdk-flat" } else { "vmdk-sparse" },
        descriptor,
    })
}

impl DiskImage for VmdkImage {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size)?;
        while !buf.is_empty() {
            let i = self.extents.partition_point(|e| e.start + e.len <= offset);
            let e = &self.extents[i];
            let within = offset - e.start;
            let n = ((e.len - within) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match &e.backing {
                Backing::Zero => now.fill(0),
                Backing::Flat { file, offset: base, len } => {
                    check_range(within, n, *len)?;
                    file.read_exact_at(now, base + within)?
                }
                Backing::Sparse(s) => s.read_at(now, within)?,
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }
    fn format(&self) -> &'static str {
        self.format
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_lines() {
        let d = parse_descriptor(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
             # Extent description\nRW 2048 FLAT \"my disk-flat.vmdk\" 0\nRW 8 ZERO\n\nddb.adapterType = \"lsilogic\"\n",
        )
        .unwrap();
        assert_eq!(d.create_type.as_deref(), Some("monolithicFlat"));
        assert_eq!(d.adapter_type.as_deref(), Some("lsilogic"));
        assert_eq!(d.extents.len(), 2);
        assert_eq!(d.extents[0].file.as_deref(), Some("my disk-flat.vmdk"));
        assert_eq!(d.extents[0].sectors, 2048);
        assert_eq!(d.extents[1].kind, "ZERO");
        assert!(parse_descriptor("RW x FLAT \"a\"").unwrap_err().contains("line 1"));
        assert!(extent_path(Path::new("/d"), "../etc/passwd").is_err());
        assert!(extent_path(Path::new("/d"), "/etc/passwd").is_err());
    }

    /// A stream-written file as VMware writes it: grain directory in the
    /// footer, grain 1 of 2 present and compressed, grain 0 never written.
    fn stream_file(grain1: &[u8], marker_lba: u64) -> Vec<u8> {
        let header = |gd: u64| {
            let mut h = vec![0u8; 512];
            h[0..4].copy_from_slice(b"KDMV");
            h[4..8].copy_from_slice(&3u32.to_le_bytes());
            h[8..12].copy_from_slice(&(FLAG_COMPRESSED | 1 << 17 | 3).to_le_bytes());
            h[12..20].copy_from_slice(&256u64.to_le_bytes());
            h[20..28].copy_from_slice(&128u64.to_le_bytes());
            h[44..48].copy_from_slice(&512u32.to_le_bytes());
            h[56..64].copy_from_slice(&gd.to_le_bytes());
            h[77..79].copy_from_slice(&1u16.to_le_bytes());
            h
        };
        let mut f = header(GD_AT_END);
        // Sector 1 is left free: a grain table entry of 1 means "zeroed grain".
        f.extend([0u8; 512]);
        let z = miniz_oxide::deflate::compress_to_vec_zlib(grain1, 6);
        f.extend(marker_lba.to_le_bytes());
        f.extend((z.len() as u32).to_le_bytes());
        f.extend(&z);
        f.resize(f.len().div_ceil(512) * 512, 0);
        let gt_sector = (f.len() / 512) as u32;
        let mut gt = vec![0u8; 2048];
        gt[4..8].copy_from_slice(&2u32.to_le_bytes());
        f.extend(gt);
        let gd_sector = (f.len() / 512) as u64;
        let mut gd = vec![0u8; 512];
        gd[0..4].copy_from_slice(&gt_sector.to_le_bytes());
        f.extend(gd);
        f.extend([0u8; 512]); // footer marker
        f.extend(header(gd_sector));
        f.extend([0u8; 512]); // end-of-stream marker
        f
    }

    #[test]
    fn stream_optimized_footer_and_compressed_grains() {
        use super::super::image::MemImage;
        let grain1: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let s = SparseExtent::open(Box::new(MemImage(stream_file(&grain1, 128)))).unwrap();
        assert!(s.header().compressed());
        assert_eq!(s.size(), 256 * 512);
        let mut buf = vec![0xffu8; 1000];
        s.read_at(&mut buf, 65536 - 500).unwrap();
        assert!(buf[..500].iter().all(|&b| b == 0));
        assert_eq!(&buf[500..], &grain1[..500]);
        // Again from the cache, at the end of the grain.
        s.read_at(&mut buf[..10], 131072 - 10).unwrap();
        assert_eq!(&buf[..10], &grain1[65526..]);
        // A marker for another sector than the grain table says is refused.
        let s = SparseExtent::open(Box::new(MemImage(stream_file(&grain1, 0)))).unwrap();
        let e = s.read_at(&mut buf, 65536).unwrap_err().to_string();
        assert!(e.contains("is for sector 0"), "{e}");
        // A grain that inflates past a grain's size is refused.
        let big = vec![7u8; 70000];
        let s = SparseExtent::open(Box::new(MemImage(stream_file(&big, 128)))).unwrap();
        assert!(s.read_at(&mut buf, 65536).is_err());
    }

    #[test]
    fn header_bounds() {
        let mut h = [0u8; 512];
        h[0..4].copy_from_slice(b"KDMV");
        h[4] = 1;
        h[12..20].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(parse_sparse_header(&h).unwrap_err().contains("capacity"));
        h[12..20].copy_from_slice(&2048u64.to_le_bytes());
        h[20..28].copy_from_slice(&3u64.to_le_bytes());
        assert!(parse_sparse_header(&h).unwrap_err().contains("grain size"));
    }
}
