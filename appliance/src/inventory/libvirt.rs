//! libvirt domain XML (`virsh dumpxml`, `virt-install --print-xml`).
//!
//! Disks take their controller from `<address type='drive' controller= bus= unit=>`
//! when present, else from the target name as libvirt assigns it (`hda`..`hdd`
//! = IDE channel 0/1 master/slave; `sdX` = unit X on controller 0; `vdX` =
//! virtio-blk). Defaults where libvirt's QEMU driver fills them in:
//! - SCSI `<controller>` without `model`: `lsilogic` (libvirt's x86 default).
//! - `<interface>` without `<model>`: QEMU's default NIC, `e1000` on `pc`
//!   and `e1000e` on `q35`.
//! - no `<mac>`: `null` (libvirt generates one under 52:54:00).
//! - firmware: `efi` when `<os firmware='efi'>` or a pflash/OVMF `<loader>`.

use std::path::{Path, PathBuf};

use proto::{Machine, Wwn};
use roxmltree::Node;

use super::model::{
    ensure_controller, parse_mac, ControllerModel, Disk, DiskKind, Import, ImportFirmware, ImportedServer, Nic, NicModel, Note,
};
use super::xml::{self, attr, child, child_text, children, XmlError};

/// Why a libvirt domain was refused.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// XML-level problem.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The root is not `<domain>`.
    #[error("{path}: the root element is <{found}>, not a libvirt <domain>")]
    NotDomain {
        /// File.
        path: PathBuf,
        /// Root element.
        found: String,
    },
    /// A number is not a number.
    #[error("{at}: <{element}> = {value:?} is not a number")]
    Number {
        /// `file:line`.
        at: String,
        /// Element.
        element: String,
        /// Value.
        value: String,
    },
}

/// Multiplier of a libvirt memory `unit` (default KiB; `b`, `k`, `KiB`, `MB`, …).
fn mem_unit(u: Option<&str>) -> Option<u64> {
    Some(match u.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    })
}

/// Index of a target name's letters: `a` = 0, `z` = 25, `aa` = 26.
fn letters_index(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 3 {
        return None;
    }
    let mut n: u32 = 0;
    for c in s.bytes() {
        if !c.is_ascii_lowercase() {
            return None;
        }
        n = n * 26 + u32::from(c - b'a') + 1;
    }
    Some(n - 1)
}

/// Parses a libvirt domain's XML. `path` names it in errors and notes.
pub fn parse(text: &str, path: &Path) -> Result<Import, LibvirtError> {
    let doc = xml::parse(text, path)?;
    let d = doc.root_element();
    if !d.tag_name().name().eq_ignore_ascii_case("domain") {
        return Err(LibvirtError::NotDomain {
            path: path.to_path_buf(),
            found: d.tag_name().name().to_string(),
        });
    }
    let mut notes = Vec::new();
    let num = |n: Node<'_, '_>| -> Result<Option<u64>, LibvirtError> {
        let Some(t) = n.text().map(str::trim) else { return Ok(None) };
        t.parse().map(Some).map_err(|_| LibvirtError::Number {
            at: xml::at(&doc, n, path),
            element: n.tag_name().name().to_string(),
            value: t.to_string(),
        })
    };
    let mut s = ImportedServer::named(child_text(d, "name").unwrap_or_else(|| "unnamed".into()));
    if let Some(u) = child_text(d, "uuid") {
        s.extras.smbios.uuid = Some(u.to_ascii_lowercase());
    }
    if let Some(m) = child(d, "memory") {
        s.memory_mib = match (num(m)?, mem_unit(attr(m, "unit"))) {
            (Some(v), Some(mul)) => v.checked_mul(mul).map(|b| b / (1 << 20)),
            _ => None,
        };
    }
    if let Some(v) = child(d, "vcpu") {
        s.cpus = num(v)?.map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    }
    s.guest_os = child(d, "metadata")
        .and_then(|m| m.descendants().find(|n| n.is_element() && n.tag_name().name() == "os"))
        .and_then(|o| attr(o, "id"))
        .map(str::to_string);
    if let Some(os) = child(d, "os") {
        let loader = child(os, "loader");
        let efi = attr(os, "firmware").is_some_and(|f| f.eq_ignore_ascii_case("efi"))
            || loader.is_some_and(|l| {
                attr(l, "type") == Some("pflash")
                    || l.text().is_some_and(|t| {
                        let t = t.to_ascii_lowercase();
                        t.contains("ovmf") || t.contains("edk2") || t.contains("aavmf")
                    })
            });
        if efi {
            s.firmware = ImportFirmware::Efi;
        }
        if let Some(m) = child(os, "type").and_then(|t| attr(t, "machine")) {
            s.extras.hardware.insert("machine".into(), m.to_string());
            if m.contains("q35") {
                s.extras.machine = Some(Machine::Q35);
            } else if m.starts_with("pc") {
                s.extras.machine = Some(Machine::Pc);
            }
        }
    }
    if let Some(sys) = child(d, "sysinfo").and_then(|si| child(si, "system")) {
        for e in children(sys, "entry") {
            let v = e.text().map(|t| t.trim().to_string());
            match attr(e, "name") {
                Some("serial") => s.extras.smbios.serial = v,
                Some("manufacturer") => s.extras.smbios.manufacturer = v,
                Some("product") => s.extras.smbios.product = v,
                _ => {}
            }
        }
    }
    let Some(dev) = child(d, "devices") else {
        notes.push(Note {
            at: xml::at(&doc, d, path),
            message: "no <devices>: no disks or NICs".into(),
        });
        return Ok(Import { servers: vec![s], notes });
    };
    // Controllers, in document order, but after implicit ones named by disks.
    let mut declared: Vec<(String, ControllerModel)> = Vec::new();
    for c in children(dev, "controller") {
        let idx = attr(c, "index").and_then(|i| i.parse::<u32>().ok()).unwrap_or(0);
        let model = attr(c, "model").map(|m| m.to_ascii_lowercase());
        let m = match attr(c, "type").unwrap_or("") {
            "ide" => ControllerModel::Ide,
            "sata" => ControllerModel::Ahci,
            "nvme" => ControllerModel::Nvme,
            "scsi" => match model.as_deref() {
                None | Some("lsilogic") | Some("auto") => ControllerModel::Lsilogic,
                Some("lsisas1068") => ControllerModel::Lsisas1068,
                Some("vmpvscsi") => ControllerModel::Pvscsi,
                Some("buslogic") => ControllerModel::Buslogic,
                Some(m) if m.starts_with("virtio") => ControllerModel::VirtioScsi,
                Some(other) => ControllerModel::Other(other.to_string()),
            },
            _ => continue,
        };
        let id = match m {
            ControllerModel::Ide => format!("ide{}", idx * 2),
            _ => format!("{}{idx}", m.id_prefix()),
        };
        declared.push((id, m));
    }
    let model_of = |id: &str, fallback: ControllerModel| -> ControllerModel {
        declared.iter().find(|(i, _)| i == id).map(|(_, m)| m.clone()).unwrap_or(fallback)
    };
    for dk in children(dev, "disk") {
        let kind = match attr(dk, "device").unwrap_or("disk") {
            "disk" => DiskKind::Disk,
            "cdrom" => DiskKind::Cdrom,
            other => {
                notes.push(Note {
                    at: xml::at(&doc, dk, path),
                    message: format!("<disk device='{other}'> is not a disk or CD drive; skipped"),
                });
                continue;
            }
        };
        let target = child(dk, "target");
        let tdev = target.and_then(|t| attr(t, "dev")).unwrap_or("");
        let bus = target.and_then(|t| attr(t, "bus")).map(str::to_string).unwrap_or_else(|| {
            match tdev.get(..2) {
                Some("hd") => "ide",
                Some("vd") => "virtio",
                _ => "scsi",
            }
            .to_string()
        });
        let idx = letters_index(tdev.get(2..).unwrap_or(""));
        let addr = child(dk, "address").filter(|a| attr(*a, "type") == Some("drive"));
        let an = |name: &str| addr.and_then(|a| attr(a, name)).and_then(|v| v.parse::<u32>().ok());
        let (ctrl, slot, fallback) = match bus.as_str() {
            "ide" => {
                let (c, b, u) = match addr {
                    Some(_) => (an("controller").unwrap_or(0), an("bus").unwrap_or(0), an("unit").unwrap_or(0)),
                    None => {
                        let i = idx.unwrap_or(0);
                        (i / 4, (i / 2) % 2, i % 2)
                    }
                };
                (format!("ide{}", c * 2 + b), u, ControllerModel::Ide)
            }
            "sata" => {
                let (c, u) = match addr {
                    Some(_) => (an("controller").unwrap_or(0), an("unit").unwrap_or(0)),
                    None => (idx.unwrap_or(0) / 6, idx.unwrap_or(0) % 6),
                };
                (format!("sata{c}"), u, ControllerModel::Ahci)
            }
            "virtio" => ("virtio0".to_string(), idx.unwrap_or(0), ControllerModel::VirtioBlk),
            "nvme" => ("nvme0".to_string(), idx.unwrap_or(0), ControllerModel::Nvme),
            "scsi" => {
                let (c, u) = match addr {
                    Some(_) => (an("controller").unwrap_or(0), an("unit").unwrap_or(0)),
                    None => (0, idx.unwrap_or(0)),
                };
                (format!("scsi{c}"), u, ControllerModel::Lsilogic)
            }
            other => {
                notes.push(Note {
                    at: xml::at(&doc, dk, path),
                    message: format!("disk on bus {other:?} ({tdev}) has no controller in the model; skipped"),
                });
                continue;
            }
        };
        let model = model_of(&ctrl, fallback);
        ensure_controller(&mut s, &ctrl, model);
        let file = child(dk, "source").and_then(|src| {
            attr(src, "file")
                .or_else(|| attr(src, "dev"))
                .or_else(|| attr(src, "volume"))
                .or_else(|| attr(src, "name"))
                .map(str::to_string)
        });
        // The disk's identity the guest names it by. libvirt writes `<wwn>`
        // as 16 hex digits and `<serial>` as a string; a WWN that does not
        // parse is noted and the disk kept without it.
        let wwn = child_text(dk, "wwn").and_then(|w| match w.parse::<Wwn>() {
            Ok(w) => Some(w),
            Err(e) => {
                notes.push(Note {
                    at: xml::at(&doc, dk, path),
                    message: format!("disk {tdev}: {e}; the disk is kept without its WWN"),
                });
                None
            }
        });
        let serial = child_text(dk, "serial");
        s.disks.push(Disk {
            controller: ctrl,
            slot,
            kind,
            capacity_bytes: None,
            file,
            wwn,
            serial,
        });
    }
    for (id, m) in &declared {
        // Declared but unused controllers are hardware the guest sees too
        // (IDE channels appear only when a drive uses them).
        if *m != ControllerModel::Ide {
            ensure_controller(&mut s, id, m.clone());
        }
    }
    let q35 = s.extras.machine == Some(Machine::Q35);
    for (n, i) in children(dev, "interface").enumerate() {
        let slot = n as u32;
        let model = match child(i, "model").and_then(|m| attr(m, "type")) {
            Some(t) => NicModel::parse(t),
            None if q35 => NicModel::E1000e,
            None => NicModel::E1000,
        };
        let mac = child(i, "mac").and_then(|m| attr(m, "address")).and_then(parse_mac);
        let network = child(i, "source").and_then(|src| {
            attr(src, "network")
                .or_else(|| attr(src, "bridge"))
                .or_else(|| attr(src, "dev"))
                .or_else(|| attr(src, "portgroup"))
                .map(str::to_string)
        });
        if let Some(a) = child(i, "address").filter(|a| attr(*a, "type") == Some("pci")) {
            let hex = |k: &str| attr(a, k).and_then(|v| u8::from_str_radix(v.trim_start_matches("0x"), 16).ok());
            if let (Some(0), Some(sl), f) = (hex("bus"), hex("slot"), hex("function").unwrap_or(0)) {
                if sl < 32 && f < 8 {
                    s.extras.nic_pci.insert(slot, proto::PciSlot { slot: sl, function: f });
                }
            }
        }
        s.nics.push(Nic { slot, model, mac, network });
    }
    s.sort_devices();
    Ok(Import { servers: vec![s], notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::DiskBus;

    #[test]
    fn target_letters() {
        assert_eq!(letters_index("a"), Some(0));
        assert_eq!(letters_index("z"), Some(25));
        assert_eq!(letters_index("aa"), Some(26));
        assert_eq!(letters_index("A"), None);
    }

    #[test]
    fn minimal_domain() {
        let x = "<domain type='kvm'><name>w</name><memory unit='GiB'>2</memory><vcpu>2</vcpu>\
<os><type machine='pc-q35-7.2'>hvm</type></os><devices><disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>\
<interface type='network'><source network='default'/></interface></devices></domain>";
        let s = &parse(x, Path::new("w.xml")).unwrap().servers[0];
        assert_eq!(s.memory_mib, Some(2048));
        assert_eq!(s.disks[0].controller, "ide1");
        assert_eq!(s.nics[0].model, NicModel::E1000e);
    }

    #[test]
    fn disk_wwn_and_serial_reach_the_profile() {
        let x = "<domain><name>db</name><memory unit='MiB'>512</memory><devices>\
<disk type='file' device='disk'><target dev='sda' bus='sata'/><wwn>5000c500a1b2c3d4</wwn><serial>WD-WCC4N,1234567</serial></disk>\
<disk type='file' device='disk'><target dev='vda' bus='virtio'/><serial>VIO-0001</serial></disk>\
<disk type='file' device='disk'><target dev='sdb' bus='sata'/><wwn>not-a-wwn</wwn><serial>this-serial-is-too-long-for-sata</serial></disk>\
<disk type='file' device='disk'><target dev='sdc' bus='sata'/><wwn>6000c29a1b2c3d4e</wwn></disk>\
</devices></domain>";
        let imp = parse(x, Path::new("db.xml")).unwrap();
        let s = &imp.servers[0];
        let wwn: Wwn = "0x5000c500a1b2c3d4".parse().unwrap();
        let by_file = |ctrl: &str, slot: u32| s.disks.iter().find(|d| d.controller == ctrl && d.slot == slot).unwrap();
        assert_eq!(by_file("sata0", 0).wwn, Some(wwn));
        assert_eq!(by_file("sata0", 0).serial.as_deref(), Some("WD-WCC4N,1234567"));
        assert_eq!(by_file("virtio0", 0).serial.as_deref(), Some("VIO-0001"));
        // Bad WWNs: one note each, naming the disk; the disks stay.
        assert_eq!(by_file("sata0", 1).wwn, None);
        assert_eq!(by_file("sata0", 2).wwn, None);
        assert_eq!(imp.notes.len(), 2, "{:?}", imp.notes);
        assert!(
            imp.notes[0].message.contains("disk sdb") && imp.notes[0].message.contains("16 hex digits"),
            "{:?}",
            imp.notes
        );
        assert!(imp.notes[0].at.starts_with("db.xml:"), "{:?}", imp.notes);
        assert!(
            imp.notes[1].message.contains("disk sdc") && imp.notes[1].message.contains("NAA"),
            "{:?}",
            imp.notes
        );
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["disks"][0]["wwn"], "0x5000c500a1b2c3d4", "{json}");

        let c = s.to_profile();
        let p = c.profile.unwrap();
        assert_eq!(p.disks.len(), 4, "no disk dropped for its identity");
        let sda = p.disks.iter().find(|d| d.bus == DiskBus::Sata && d.unit == 0).unwrap();
        assert_eq!(
            (sda.wwn, sda.serial.as_ref().map(|s| s.as_str())),
            (Some(wwn), Some("WD-WCC4N,1234567"))
        );
        let vda = p.disks.iter().find(|d| d.bus == DiskBus::VirtioBlk).unwrap();
        assert_eq!(vda.serial.as_ref().map(|s| s.as_str()), Some("VIO-0001"));
        // The long serial is a lost entry naming the disk and its bus.
        assert_eq!(c.lost.len(), 1, "{:?}", c.lost);
        assert!(
            c.lost[0].contains("on sata0") && c.lost[0].contains("Sata disks carry at most 20"),
            "{:?}",
            c.lost
        );
        p.validate().unwrap();
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s, Path::new("x.xml"));
            let _ = parse(&format!("<domain><devices>{s}</devices></domain>"), Path::new("x.xml"));
        }
    }
}
