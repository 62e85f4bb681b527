//! VMware `.vmx` configuration files (Workstation, Fusion, ESXi).
//!
//! A VMX file is lines of `key = "value"`. VMware reads keys
//! case-insensitively, lets the last of duplicate keys win, writes `#`
//! comments, and escapes special characters inside values as `|XX` (hex,
//! e.g. `|22` for `"`). We do the same; a line that is neither blank, a comment
//! nor `key = value` is refused with its line number, because VMware would
//! refuse to open the machine too.
//!
//! Defaults when a key is absent — VMware's documented behaviour, so the import
//! describes the machine VMware would actually run:
//! - `numvcpus` absent: 1 vCPU (VMware's default for a new VM without the key).
//! - `memsize` absent: unknown (`memory_mib: null`): the default depends on the
//!   product and guest OS, so we do not guess.
//! - `firmware` absent: `bios` (VMware boots BIOS unless `firmware = "efi"`).
//! - `guestOS` absent: `other` (what VMware shows for a VM without the key).
//! - `scsiN.virtualDev` absent: `buslogic` (VMware's legacy default adapter
//!   when the key is missing; newer products always write the key).
//! - `ethernetN.virtualDev` absent: `vlance` (the PCnet32 "flexible" adapter,
//!   VMware's default when the key is missing).
//! - `<dev>.present` absent: the device is not there (VMware ignores devices
//!   not marked present); IDE channels `ide0`/`ide1` always exist.
//! - `<disk>.deviceType` absent: a hard disk.
//! - `ethernetN.addressType` absent: `generated`. The MAC is then
//!   `generatedAddress` if VMware already wrote it, else `null` (VMware will
//!   generate one at power-on); `static` takes `ethernetN.address`; `vpx`
//!   (vCenter-assigned) behaves like `generated`.
//! - `serialNumber` absent: VMware derives the SMBIOS serial from `uuid.bios`
//!   as `VMware-` followed by its bytes, and so do we.
//! - `ethernetN.networkName` absent: the network is `vnet` (custom) or else
//!   `connectionType` (`nat`, `bridged`, `hostonly`), as Workstation writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::{
    ensure_controller, parse_mac, ControllerModel, Disk, DiskKind, Import, ImportFirmware, ImportedServer, Nic, NicModel, Note,
};

/// Why a VMX file was refused.
#[derive(Debug, thiserror::Error)]
pub enum VmxError {
    /// A line is not `key = value`.
    #[error("{path}:{line}: expected `key = \"value\"`, found {found:?}; fix the line or comment it out with #")]
    Syntax {
        /// File.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// The line (shortened).
        found: String,
    },
    /// A quoted value does not end.
    #[error("{path}:{line}: the value of {key} opens a quote that does not close; add the closing \"")]
    Unterminated {
        /// File.
        path: PathBuf,
        /// Line.
        line: usize,
        /// Key.
        key: String,
    },
    /// A number is not a number.
    #[error("{path}:{line}: {key} = {value:?} is not a number")]
    Number {
        /// File.
        path: PathBuf,
        /// Line.
        line: usize,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Nothing in the file looks like a VMware configuration.
    #[error("{0}: no VMware configuration keys (config.version, virtualHW.version, displayName, memsize, …); is this a .vmx file?")]
    NotVmx(PathBuf),
}

struct Entry {
    value: String,
    line: usize,
    used: bool,
}

/// The key/value pairs of a VMX file, keys lower-cased.
struct Keys {
    map: BTreeMap<String, Entry>,
    path: PathBuf,
}

impl Keys {
    fn get(&mut self, key: &str) -> Option<String> {
        let e = self.map.get_mut(&key.to_ascii_lowercase())?;
        e.used = true;
        Some(e.value.clone())
    }
    fn line(&self, key: &str) -> usize {
        self.map.get(&key.to_ascii_lowercase()).map_or(0, |e| e.line)
    }
    fn truthy(&mut self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1" | "on"))
    }
    fn number(&mut self, key: &str) -> Result<Option<u64>, VmxError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.trim().parse::<u64>().map(Some).map_err(|_| VmxError::Number {
            path: self.path.clone(),
            line: self.line(key),
            key: key.to_string(),
            value: v,
        })
    }
}

/// Decodes VMware's `|XX` escapes inside a quoted value.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'|' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lex(text: &str, path: &Path, notes: &mut Vec<Note>) -> Result<Keys, VmxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut map: BTreeMap<String, Entry> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r').trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            return Err(VmxError::Syntax {
                path: path.to_path_buf(),
                line,
                found: l.chars().take(60).collect(),
            });
        };
        let key = k.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(VmxError::Syntax {
                path: path.to_path_buf(),
                line,
                found: l.chars().take(60).collect(),
            });
        }
        let v = v.trim();
        let value = if let Some(rest) = v.strip_prefix('"') {
            let Some(end) = rest.find('"') else {
                return Err(VmxError::Unterminated {
                    path: path.to_path_buf(),
                    line,
                    key: key.to_string(),
                });
            };
            unescape(&rest[..end])
        } else {
            // Unquoted (hand-edited files): up to a trailing comment.
            v.split(" #").next().unwrap_or("").trim().to_string()
        };
        let lk = key.to_ascii_lowercase();
        if let Some(prev) = map.get(&lk) {
            notes.push(Note {
                at: format!("{}:{line}", path.display()),
                message: format!("{key} repeats line {}; the last value wins, as in VMware", prev.line),
            });
        }
        map.insert(lk, Entry { value, line, used: false });
    }
    Ok(Keys {
        map,
        path: path.to_path_buf(),
    })
}

/// Maps a VMX `scsiN.virtualDev` to the model vocabulary.
fn scsi_model(v: Option<&str>) -> ControllerModel {
    match v.map(|s| s.trim().to_ascii_lowercase()) {
        None => ControllerModel::Buslogic,
        Some(s) => match s.as_str() {
            "lsilogic" => ControllerModel::Lsilogic,
            "lsisas1068" | "lsilogicsas" => ControllerModel::Lsisas1068,
            "pvscsi" | "virtualscsi" => ControllerModel::Pvscsi,
            "buslogic" => ControllerModel::Buslogic,
            _ => ControllerModel::Other(s),
        },
    }
}

/// Parses a VMX file's text. `path` names it in errors and notes, and gives the
/// server its name when `displayName` is absent.
pub fn parse(text: &str, path: &Path) -> Result<Import, VmxError> {
    let mut notes = Vec::new();
    let mut k = lex(text, path, &mut notes)?;
    let markers = [
        "config.version",
        "virtualhw.version",
        "displayname",
        "memsize",
        "guestos",
        "numvcpus",
    ];
    if !markers.iter().any(|m| k.map.contains_key(*m)) {
        return Err(VmxError::NotVmx(path.to_path_buf()));
    }
    let at = |line: usize| format!("{}:{line}", path.display());
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut s = ImportedServer::named(k.get("displayName").unwrap_or(stem));
    s.guest_os = Some(k.get("guestOS").unwrap_or_else(|| "other".into()));
    s.firmware = match k.get("firmware").map(|f| f.trim().to_ascii_lowercase()) {
        Some(f) if f == "efi" => ImportFirmware::Efi,
        _ => ImportFirmware::Bios,
    };
    s.cpus = match k.number("numvcpus")? {
        Some(0) | None => 1,
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
    };
    s.memory_mib = k.number("memsize")?;
    if s.memory_mib.is_none() {
        notes.push(Note {
            at: path.display().to_string(),
            message: "memsize is absent: memory size unknown".into(),
        });
    }
    for hw in [
        "virtualHW.version",
        "cpuid.coresPerSocket",
        "config.version",
        "chipset.motherboardLayout",
    ] {
        if let Some(v) = k.get(hw) {
            s.extras.hardware.insert(hw.to_string(), v);
        }
    }
    if let Some(u) = k.get("uuid.bios") {
        let hex: String = u.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_lowercase();
        if hex.len() == 32 {
            s.extras.smbios.uuid = Some(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ));
            s.extras.smbios.serial = Some(format!("VMware-{}", u.trim()));
        } else {
            notes.push(Note {
                at: at(k.line("uuid.bios")),
                message: format!("uuid.bios {u:?} is not 16 hex bytes; ignored"),
            });
        }
    }
    if let Some(sn) = k.get("serialNumber") {
        s.extras.smbios.serial = Some(sn);
    }
    s.extras.smbios.manufacturer = Some("VMware, Inc.".into());

    // Devices: collect `<bus><n>:<m>.<field>` and `ethernet<n>.<field>` keys in file order.
    let mut lines: Vec<(usize, String)> = k.map.iter().map(|(key, e)| (e.line, key.clone())).collect();
    lines.sort();
    let mut ctrl_order: Vec<(String, u32)> = Vec::new();
    let mut devices: Vec<(String, u32, u32)> = Vec::new();
    let mut nic_ids: Vec<u32> = Vec::new();
    for (_, key) in &lines {
        let (head, _) = key.split_once('.').unwrap_or((key, ""));
        if let Some(n) = head.strip_prefix("ethernet").and_then(|n| n.parse::<u32>().ok()) {
            if !nic_ids.contains(&n) {
                nic_ids.push(n);
            }
            continue;
        }
        for bus in ["ide", "sata", "scsi", "nvme"] {
            let Some(rest) = head.strip_prefix(bus) else { continue };
            let (c, unit) = match rest.split_once(':') {
                Some((c, u)) => (c.parse::<u32>().ok(), u.parse::<u32>().ok()),
                None => (rest.parse::<u32>().ok(), None),
            };
            let Some(c) = c else { continue };
            if !ctrl_order.iter().any(|(b, n)| b == bus && *n == c) {
                ctrl_order.push((bus.to_string(), c));
            }
            if let Some(u) = unit {
                if !devices.iter().any(|(b, n, m)| b == bus && *n == c && *m == u) {
                    devices.push((bus.to_string(), c, u));
                }
            }
        }
    }
    for (bus, c) in &ctrl_order {
        let id = format!("{bus}{c}");
        let present = k.truthy(&format!("{id}.present"));
        let has_device = devices
            .iter()
            .any(|(b, n, m)| b == bus && n == c && k.map.get(&format!("{id}:{m}.present")).is_some_and(|e| is_true(&e.value)));
        let declared = match bus.as_str() {
            "ide" => present != Some(false) && has_device,
            _ => present == Some(true),
        };
        if !declared && !has_device {
            continue;
        }
        if !declared {
            notes.push(Note {
                at: path.display().to_string(),
                message: format!("{id}.present is not TRUE but devices on it are; kept the controller"),
            });
        }
        let model = match bus.as_str() {
            "ide" => ControllerModel::Ide,
            "sata" => ControllerModel::Ahci,
            "nvme" => ControllerModel::Nvme,
            _ => {
                let v = k.get(&format!("{id}.virtualDev"));
                if v.is_none() {
                    notes.push(Note {
                        at: path.display().to_string(),
                        message: format!("{id}.virtualDev is absent: VMware's default is buslogic"),
                    });
                }
                scsi_model(v.as_deref())
            }
        };
        if let Some(p) = k.get(&format!("{id}.pciSlotNumber")) {
            s.extras.hardware.insert(format!("{id}.pciSlotNumber"), p);
        }
        ensure_controller(&mut s, &id, model);
    }
    for (bus, c, m) in &devices {
        let dev = format!("{bus}{c}:{m}");
        if k.truthy(&format!("{dev}.present")) != Some(true) {
            continue;
        }
        let dtype = k.get(&format!("{dev}.deviceType")).map(|t| t.trim().to_ascii_lowercase());
        let kind = match dtype.as_deref() {
            None | Some("disk" | "scsi-harddisk" | "ata-harddisk" | "plaindisk" | "rawdisk" | "nvme-harddisk") => DiskKind::Disk,
            Some("cdrom-image" | "cdrom-raw" | "atapi-cdrom" | "scsi-cdrom") => DiskKind::Cdrom,
            Some(other) => {
                notes.push(Note {
                    at: at(k.line(&format!("{dev}.deviceType"))),
                    message: format!("{dev}.deviceType = {other:?} is not a disk or CD drive; skipped"),
                });
                continue;
            }
        };
        let file = k.get(&format!("{dev}.fileName"));
        let id = format!("{bus}{c}");
        ensure_controller(
            &mut s,
            &id,
            match bus.as_str() {
                "ide" => ControllerModel::Ide,
                "sata" => ControllerModel::Ahci,
                "nvme" => ControllerModel::Nvme,
                _ => ControllerModel::Buslogic,
            },
        );
        s.disks.push(Disk {
            controller: id,
            slot: *m,
            kind,
            capacity_bytes: None,
            file,
            wwn: None,
            serial: None,
        });
    }
    nic_ids.sort_unstable();
    for n in nic_ids {
        let e = format!("ethernet{n}");
        if k.truthy(&format!("{e}.present")) != Some(true) {
            continue;
        }
        let model = match k.get(&format!("{e}.virtualDev")) {
            Some(v) => NicModel::parse(&v),
            None => {
                notes.push(Note {
                    at: path.display().to_string(),
                    message: format!("{e}.virtualDev is absent: VMware's default is vlance"),
                });
                NicModel::Vlance
            }
        };
        let atype = k.get(&format!("{e}.addressType")).map(|t| t.trim().to_ascii_lowercase());
        let static_addr = k.get(&format!("{e}.address"));
        let generated = k.get(&format!("{e}.generatedAddress"));
        let raw = match atype.as_deref() {
            Some("static") => static_addr,
            _ => generated.or(static_addr),
        };
        let mac = match raw {
            Some(r) => {
                let m = parse_mac(&r);
                if m.is_none() {
                    notes.push(Note {
                        at: path.display().to_string(),
                        message: format!("{e}: MAC {r:?} is not a MAC address; treated as generated"),
                    });
                }
                m
            }
            None => None,
        };
        let network = k
            .get(&format!("{e}.networkName"))
            .or_else(|| k.get(&format!("{e}.vnet")))
            .or_else(|| k.get(&format!("{e}.connectionType")));
        if let Some(p) = k.get(&format!("{e}.pciSlotNumber")) {
            s.extras.hardware.insert(format!("{e}.pciSlotNumber"), p);
        }
        s.nics.push(Nic {
            slot: n,
            model,
            mac,
            network,
        });
    }
    s.sort_devices();
    let unknown: Vec<(String, String)> = k
        .map
        .iter()
        .filter(|(_, e)| !e.used)
        .map(|(key, e)| (key.clone(), e.value.clone()))
        .collect();
    s.extras.unknown.extend(unknown);
    Ok(Import { servers: vec![s], notes })
}

fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1" | "on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esxi_style_file() {
        let t = "#!/usr/bin/vmware\r\n.encoding = \"UTF-8\"\r\nconfig.version = \"8\"\r\nvirtualHW.version = \"19\"\r\n\
displayName = \"db|22one|22\"\r\nguestOS = \"ubuntu-64\"\r\nnumvcpus = \"4\"\r\nmemSize = \"8192\"\r\nfirmware = \"efi\"\r\n\
scsi0.virtualDev = \"pvscsi\"\r\nscsi0.present = \"TRUE\"\r\nscsi0:1.fileName = \"db_1.vmdk\"\r\nscsi0:1.present = \"TRUE\"\r\n\
scsi0:0.fileName = \"db.vmdk\"\r\nscsi0:0.present = \"TRUE\"\r\nsata0.present = \"TRUE\"\r\nsata0:0.deviceType = \"cdrom-image\"\r\n\
sata0:0.fileName = \"/iso/x.iso\"\r\nsata0:0.present = \"TRUE\"\r\nethernet0.virtualDev = \"vmxnet3\"\r\nethernet0.present = \"TRUE\"\r\n\
ethernet0.addressType = \"static\"\r\nethernet0.address = \"00:50:56:AA:00:01\"\r\nethernet0.networkName = \"VM Network\"\r\n\
ethernet1.present = \"TRUE\"\r\nethernet1.addressType = \"generated\"\r\nMEMSIZE = \"4096\"\r\nuuid.bios = \"56 4d 9b 1c 2d 3e 4f 50-61 72 83 94 a5 b6 c7 d8\"\r\n";
        let imp = parse(t, Path::new("db.vmx")).unwrap();
        let s = &imp.servers[0];
        assert_eq!(s.name, "db\"one\"");
        assert_eq!(s.memory_mib, Some(4096));
        assert!(imp.notes.iter().any(|n| n.message.contains("last value wins")));
        assert_eq!(s.firmware, ImportFirmware::Efi);
        assert_eq!(s.disk_controllers.len(), 2);
        assert_eq!(s.disks[0].file.as_deref(), Some("db.vmdk"));
        assert_eq!(s.disks[2].kind, DiskKind::Cdrom);
        assert_eq!(s.nics[0].mac.unwrap().to_string(), "00:50:56:aa:00:01");
        assert_eq!(s.nics[1].model, NicModel::Vlance);
        assert_eq!(s.nics[1].mac, None);
        assert_eq!(s.extras.smbios.uuid.as_deref(), Some("564d9b1c-2d3e-4f50-6172-8394a5b6c7d8"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = parse("config.version = \"8\"\nthis is wrong\n", Path::new("a.vmx")).unwrap_err();
        assert!(e.to_string().starts_with("a.vmx:2:"), "{e}");
        let e = parse("displayName = \"x\nmemsize = \"1\"", Path::new("a.vmx")).unwrap_err();
        assert!(e.to_string().contains("a.vmx:1"), "{e}");
        assert!(matches!(parse("", Path::new("a.vmx")), Err(VmxError::NotVmx(_))));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s, Path::new("x.vmx"));
            let _ = parse(&format!("config.version = \"8\"\n{s}"), Path::new("x.vmx"));
        }
    }
}
