//! Windows guests: the SYSTEM registry hive read from an NTFS volume (crate
//! `ntfs`) and parsed with our own hive reader ([`super::regf`]): host name, per-adapter TCP/IP settings
//! bound to the adapter's instance GUID, and the start type of the boot
//! storage drivers, which decides which disk controllers Windows can boot
//! from. Every size and count comes from hostile bytes: the hive is read
//! only up to [`MAX_HIVE`], and both readers bounds-check their structures
//! (`ntfs` through the copy in `vendor/ntfs`, patched where fuzzing found it
//! overflowing on a hostile index record: see its `ISTHMUS-PATCH.md`).

use std::io::{self, Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::sync::Arc;

use proto::facts::{Binding, NetConfig, Risk};
use proto::mac::MacAddr;

use super::image::DiskImage;
use super::regf::{Hive, Key};

/// Largest SYSTEM hive read (real ones are 10–40 MiB).
pub const MAX_HIVE: u64 = 256 << 20;
/// Where the SYSTEM hive lives on the system volume.
const SYSTEM_HIVE: [&str; 4] = ["Windows", "System32", "config", "SYSTEM"];
/// Device class of network adapters.
const NET_CLASS: &str = "{4d36e972-e325-11ce-bfc1-08002be10318}";
/// Boot storage drivers and the controller model (import vocabulary) each serves.
const BOOT_DRIVERS: [(&str, &str); 12] = [
    ("atapi", "ide"),
    ("intelide", "ide"),
    ("pciide", "ide"),
    ("storahci", "ahci"),
    ("msahci", "ahci"),
    ("iaStorV", "ahci"),
    ("LSI_SCSI", "lsilogic"),
    ("LSI_SAS", "lsisas1068"),
    ("pvscsi", "pvscsi"),
    ("stornvme", "nvme"),
    ("viostor", "virtio-blk"),
    ("vioscsi", "virtio-scsi"),
];

/// What the SYSTEM hive says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowsSystem {
    /// DNS host name (`Tcpip\Parameters\Hostname`), else the NetBIOS `ComputerName`.
    pub hostname: Option<String>,
    /// Control set in use (`Select\Current`), e.g. `ControlSet001`.
    pub control_set: String,
    /// TCP/IP settings per network adapter.
    pub network: Vec<NetConfig>,
    /// Adapter description per instance GUID (upper case), from the Net device class.
    pub adapters: Vec<(String, String)>,
    /// Boot storage drivers present: (service name, controller model, `Start`).
    pub boot_drivers: Vec<(String, String, u32)>,
}

/// A `Read + Seek` view of a byte range of a disk image (one partition).
///
/// It never fails a read: past the end, or where the image cannot be read,
/// it yields zeros and remembers the failure ([`RangeReader::failed`]). The
/// `ntfs` crate panics (`unreachable!`) on an I/O error inside one of its
/// structures, so a truncated or damaged volume must reach it as zeros,
/// which its own checks then refuse.
pub struct RangeReader {
    img: Arc<dyn DiskImage>,
    start: u64,
    size: u64,
    pos: u64,
    failed: bool,
}

impl RangeReader {
    /// Reader of `size` bytes at `start`.
    pub fn new(img: Arc<dyn DiskImage>, start: u64, size: u64) -> Self {
        RangeReader {
            img,
            start,
            size,
            pos: 0,
            failed: false,
        }
    }

    /// Whether a read went past the end or hit an unreadable part of the image.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            self.failed |= !buf.is_empty();
            buf.fill(0);
            self.pos = self.pos.saturating_add(buf.len() as u64);
            return Ok(buf.len());
        }
        let ok = self
            .start
            .checked_add(self.pos)
            .is_some_and(|at| self.img.read_at(&mut buf[..n], at).is_ok());
        if !ok {
            self.failed = true;
            buf[..n].fill(0);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the partition start"))?;
        Ok(self.pos)
    }
}

/// Reads `\Windows\System32\config\SYSTEM` from the NTFS volume in `fs`
/// (`volume_size` bytes). `Ok(None)` when the volume holds no such file (a
/// data volume). Give it a reader that never fails (see [`RangeReader`]).
pub fn read_system_hive<T: Read + Seek>(fs: &mut T, volume_size: u64) -> Result<Option<Vec<u8>>, String> {
    let mut ntfs = ntfs::Ntfs::new(fs).map_err(|e| format!("NTFS: {e}"))?;
    ntfs.read_upcase_table(fs).map_err(|e| format!("NTFS $UpCase: {e}"))?;
    let mut file = ntfs.root_directory(fs).map_err(|e| format!("NTFS root directory: {e}"))?;
    for name in SYSTEM_HIVE {
        let index = match file.directory_index(fs) {
            Ok(i) => i,
            Err(_) => return Ok(None),
        };
        let mut finder = index.finder();
        let entry = match ntfs::indexes::NtfsFileNameIndex::find(&mut finder, &ntfs, fs, name) {
            Some(e) => e.map_err(|e| format!("NTFS index lookup of {name}: {e}"))?,
            None => return Ok(None),
        };
        file = entry.to_file(&ntfs, fs).map_err(|e| format!("NTFS file {name}: {e}"))?;
    }
    let item = match file.data(fs, "") {
        Some(i) => i.map_err(|e| format!("NTFS SYSTEM data: {e}"))?,
        None => return Ok(None),
    };
    let attr = item.to_attribute().map_err(|e| format!("NTFS SYSTEM data: {e}"))?;
    let len = attr.value_length();
    if len > MAX_HIVE.min(volume_size) {
        return Err(format!(
            "SYSTEM hive of {len} bytes is larger than {} (limit or volume size)",
            MAX_HIVE.min(volume_size)
        ));
    }
    let value = attr.value(fs).map_err(|e| format!("NTFS SYSTEM data: {e}"))?;
    let mut out = Vec::with_capacity(len as usize);
    value
        .attach(fs)
        .take(len)
        .read_to_end(&mut out)
        .map_err(|e| format!("reading the SYSTEM hive: {e}"))?;
    Ok(Some(out))
}

fn sub<'h, 'a>(k: &Key<'h, 'a>, path: &str) -> Option<Key<'h, 'a>> {
    k.subpath(path)
}

fn string(k: &Key<'_, '_>, name: &str) -> Option<String> {
    k.value(name)?.string().filter(|s| !s.is_empty())
}

fn dword(k: &Key<'_, '_>, name: &str) -> Option<u32> {
    k.value(name)?.dword()
}

fn multi(k: &Key<'_, '_>, name: &str) -> Vec<String> {
    let Some(v) = k.value(name) else {
        return vec![];
    };
    // Some tools write a single address as REG_SZ.
    v.multi()
        .or_else(|| v.string().filter(|s| !s.is_empty()).map(|s| vec![s]))
        .unwrap_or_default()
}

fn subkeys<'h, 'a>(k: &Key<'h, 'a>) -> Vec<(String, Key<'h, 'a>)> {
    k.subkeys().into_iter().map(|n| (n.name(), n)).collect()
}

fn prefix_len(mask: &str) -> Option<u32> {
    let m = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    (m.leading_ones() + m.trailing_zeros() == 32).then(|| m.leading_ones())
}

/// A `NetworkAddress` override (`005056AB0C01`, with or without separators).
fn mac_override(s: &str) -> Option<MacAddr> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if hex.len() != 12 {
        return None;
    }
    let colon: Vec<String> = (0..6).map(|i| hex[i * 2..i * 2 + 2].to_ascii_lowercase()).collect();
    colon.join(":").parse().ok()
}

/// Parses a SYSTEM hive.
pub fn parse_system(bytes: &[u8]) -> Result<WindowsSystem, String> {
    let hive = Hive::new(bytes).map_err(|e| format!("SYSTEM hive: {e}"))?;
    let root = hive.root().map_err(|e| format!("SYSTEM hive root key: {e}"))?;
    let current = sub(&root, "Select").and_then(|s| dword(&s, "Current")).unwrap_or(1);
    if !(1..=999).contains(&current) {
        return Err(format!("Select\\Current = {current} is not a control set number"));
    }
    let control_set = format!("ControlSet{current:03}");
    let cs = sub(&root, &control_set).ok_or_else(|| format!("SYSTEM hive has no {control_set}"))?;
    let mut out = WindowsSystem {
        control_set: control_set.clone(),
        ..Default::default()
    };
    let tcpip = sub(&cs, "Services\\Tcpip\\Parameters");
    out.hostname = tcpip
        .as_ref()
        .and_then(|t| string(t, "Hostname").or_else(|| string(t, "NV Hostname")))
        .or_else(|| sub(&cs, "Control\\ComputerName\\ComputerName").and_then(|k| string(&k, "ComputerName")));

    let mut macs = vec![];
    if let Some(class) = sub(&cs, &format!("Control\\Class\\{NET_CLASS}")) {
        for (_, k) in subkeys(&class) {
            if let Some(guid) = string(&k, "NetCfgInstanceId") {
                let guid = guid.to_ascii_uppercase();
                out.adapters.push((guid.clone(), string(&k, "DriverDesc").unwrap_or_default()));
                if let Some(m) = string(&k, "NetworkAddress").and_then(|s| mac_override(&s)) {
                    macs.push((guid, m));
                }
            }
        }
    }
    if let Some(ifs) = tcpip.as_ref().and_then(|t| sub(t, "Interfaces")) {
        for (guid, k) in subkeys(&ifs) {
            let guid = guid.to_ascii_uppercase();
            let dhcp = dword(&k, "EnableDHCP") == Some(1);
            let masks = multi(&k, "SubnetMask");
            let addresses: Vec<String> = multi(&k, "IPAddress")
                .into_iter()
                .filter(|a| a != "0.0.0.0")
                .enumerate()
                .map(|(i, a)| match masks.get(i).and_then(|m| prefix_len(m)) {
                    Some(p) => format!("{a}/{p}"),
                    None => a,
                })
                .collect();
            let known = out.adapters.iter().any(|(g, _)| *g == guid);
            if !known && addresses.is_empty() {
                continue;
            }
            let mac = macs.iter().find(|(g, _)| *g == guid).map(|(_, m)| *m);
            out.network.push(NetConfig {
                source: "windows-registry".into(),
                file: format!("HKLM\\SYSTEM\\{control_set}\\Services\\Tcpip\\Parameters\\Interfaces\\{guid}"),
                interface: Some(guid),
                mac,
                binding: if mac.is_some() { Binding::Mac } else { Binding::InterfaceName },
                addresses,
                dhcp,
            });
        }
    }
    for (svc, model) in BOOT_DRIVERS {
        if let Some(start) = sub(&cs, &format!("Services\\{svc}")).and_then(|k| dword(&k, "Start")) {
            out.boot_drivers.push((svc.to_string(), model.to_string(), start));
        }
    }
    Ok(out)
}

/// Risks a move would hit: static addresses tied to the adapter instance,
/// and which controller models Windows can boot from.
pub fn risks(w: &WindowsSystem) -> Vec<Risk> {
    let mut out = vec![];
    for n in &w.network {
        let guid = n.interface.as_deref().unwrap_or("?");
        let desc = w
            .adapters
            .iter()
            .find(|(g, _)| g == guid)
            .map(|(_, d)| format!(" ({d})"))
            .unwrap_or_default();
        match n.mac {
            Some(m) => out.push(Risk {
                code: "net-bound-to-mac".into(),
                message: format!("adapter {guid}{desc} sets its MAC to {m} (NetworkAddress); the MAC must be kept"),
            }),
            None if !n.addresses.is_empty() && !n.dhcp => out.push(Risk {
                code: "net-bound-to-name".into(),
                message: format!(
                    "static address {} is bound to adapter instance {guid}{desc}; a NIC of another model or PCI slot is a new instance and starts without it: keep the NIC model and slot, or set the address again after the move",
                    n.addresses.join(", ")
                ),
            }),
            None => {}
        }
    }
    let boot: Vec<&(String, String, u32)> = w.boot_drivers.iter().filter(|d| d.2 == 0).collect();
    let off: Vec<&(String, String, u32)> = w.boot_drivers.iter().filter(|d| d.2 != 0).collect();
    if !boot.is_empty() || !off.is_empty() {
        let list = |v: &[&(String, String, u32)]| {
            v.iter()
                .map(|(s, m, st)| format!("{m} ({s}, Start={st})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(Risk {
            code: "windows-boot-driver".into(),
            message: format!(
                "Windows starts these storage drivers at boot: {}; the boot disk's target controller must be one of them. Not started at boot: {} (a boot disk there stops with INACCESSIBLE_BOOT_DEVICE unless its Start is set to 0 before the move)",
                if boot.is_empty() { "none known".to_string() } else { list(&boot) },
                if off.is_empty() { "none".to_string() } else { list(&off) }
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parsers() {
        assert_eq!(prefix_len("255.255.255.0"), Some(24));
        assert_eq!(prefix_len("255.0.255.0"), None);
        assert_eq!(
            mac_override("00-50-56-AB-0C-01").map(|m| m.to_string()).as_deref(),
            Some("00:50:56:ab:0c:01")
        );
        assert_eq!(mac_override("0050"), None);
        assert!(parse_system(b"regf but not a hive").is_err());
        assert!(parse_system(&[0u8; 8192]).is_err());
    }

    /// Found by the fuzzer (`inspect_windows`): a hive with a cell whose size
    /// field is 0 (it underflowed inside the `nt-hive` crate we used before
    /// our own reader). Refused with a note naming the hive, no panic (this
    /// test runs with overflow checks on).
    #[test]
    fn hive_with_a_zero_size_cell_is_refused_without_panic() {
        let hive = include_bytes!("testdata/hive-cell-size-zero.bin");
        let err = parse_system(hive).expect_err("hostile hive accepted");
        assert!(err.contains("SYSTEM hive") || err.contains("ControlSet"), "{err}");
        eprintln!("hostile hive: {err}");
    }

    /// Found by the fuzzer (`inspect_windows`, after 357 k runs): an NTFS
    /// directory index record whose allocated size is near `u32::MAX`
    /// overflowed `24 + size` inside `ntfs` 0.4.0 (patched copy in
    /// `vendor/ntfs`). The lookup of `\Windows\System32\config\SYSTEM`
    /// now ends in an error naming NTFS, no panic (tests run with overflow
    /// checks on).
    /// The second find: an index entry whose length field is shorter than
    /// the entry header (slice indexing past the end, in any build).
    #[test]
    fn hostile_ntfs_indexes_are_refused_without_panic() {
        use super::super::image::MemImage;
        for data in [
            &include_bytes!("testdata/ntfs-index-size-overflow.bin")[..],
            &include_bytes!("testdata/ntfs-index-entry-too-short.bin")[..],
        ] {
            let len = data.len() as u64;
            let mut r = RangeReader::new(Arc::new(MemImage(data.to_vec())), 0, len);
            match read_system_hive(&mut r, len) {
                Err(e) => assert!(e.starts_with("NTFS"), "{e}"),
                Ok(found) => panic!("hostile volume accepted: {:?} bytes", found.map(|h| h.len())),
            }
        }
    }

    /// Found by the fuzzer: the `ntfs` crate panicked on a short read; the
    /// reader now yields zeros there and the volume is refused.
    #[test]
    fn short_or_empty_volume_is_refused_without_panic() {
        use super::super::image::MemImage;
        let mut boot = vec![0u8; 600];
        boot[3..11].copy_from_slice(b"NTFS    ");
        for data in [vec![], boot] {
            let len = data.len() as u64;
            let mut r = RangeReader::new(Arc::new(MemImage(data)), 0, len);
            assert!(read_system_hive(&mut r, len).is_err());
            assert!(r.failed() || len > 0);
        }
    }
}
