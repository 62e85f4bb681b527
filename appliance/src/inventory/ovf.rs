//! OVF descriptors, versions 1.x and 2.x (DMTF DSP0243), as VMware (ovftool,
//! vCenter) and VirtualBox write them.
//!
//! Each `VirtualSystem` (also inside `VirtualSystemCollection`s) becomes one
//! server. Its first `VirtualHardwareSection` lists RASD items (OVF 2 also
//! `EthernetPortItem`/`StorageItem`) whose `ResourceType` (CIM_ResourceAllocationSettingData)
//! says what they are: 3 CPU, 4 memory, 5 IDE controller, 6 parallel SCSI HBA,
//! 10 Ethernet adapter, 15/16 CD/DVD drive, 17 disk drive, 20 other storage
//! controller (SATA/AHCI, NVMe by `ResourceSubType`). Devices name their
//! controller by `Parent` (the controller's `InstanceID`) and their unit by
//! `AddressOnParent`; disk capacities come from the `DiskSection` in
//! `ovf:capacityAllocationUnits` (DSP0004 programmatic units, `byte * 2^30`).
//! VMware's `vmw:Config` (firmware) and `vmw:osType`, and VirtualBox's
//! `vbox:Machine` (firmware, adapter MACs) fill facts the standard leaves out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use roxmltree::{Document, Node};

use super::model::{
    ensure_controller, parse_mac, ControllerModel, Disk, DiskKind, Import, ImportFirmware, ImportedServer, Nic, NicModel, Note,
};
use super::xml::{self, attr, child, child_text, children, XmlError};

/// Why an OVF descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    /// XML-level problem.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The root is not an OVF `Envelope`.
    #[error("{path}: the root element is <{found}>, not an OVF <Envelope>; is this an OVF descriptor?")]
    NotOvf {
        /// File.
        path: PathBuf,
        /// Root element.
        found: String,
    },
    /// No virtual system at all.
    #[error("{path}: the envelope has no <VirtualSystem>; nothing to import")]
    NoVirtualSystem {
        /// File.
        path: PathBuf,
    },
    /// A value that must be a number is not.
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

/// Multiplier of a DSP0004 programmatic unit (`byte * 2^30`, `byte*1024`,
/// `MegaBytes`, `GB`). Binary multiples for the named units, as VMware and
/// VirtualBox mean them.
pub fn unit_multiplier(unit: &str) -> Option<u64> {
    let u: String = unit.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    match u.as_str() {
        "" | "byte" | "bytes" | "b" => return Some(1),
        "kilobytes" | "kb" | "kib" => return Some(1 << 10),
        "megabytes" | "mb" | "mib" => return Some(1 << 20),
        "gigabytes" | "gb" | "gib" => return Some(1 << 30),
        "terabytes" | "tb" | "tib" => return Some(1 << 40),
        _ => {}
    }
    let mut m: u64 = 1;
    for f in u.split('*') {
        let v = if f == "byte" || f == "bytes" {
            1
        } else if let Some((b, e)) = f.split_once('^') {
            let b: u64 = b.parse().ok()?;
            let e: u32 = e.parse().ok()?;
            b.checked_pow(e)?
        } else {
            f.parse().ok()?
        };
        m = m.checked_mul(v)?;
    }
    Some(m)
}

struct DiskInfo {
    capacity: Option<u64>,
    file: Option<String>,
}

struct Item<'a, 'i> {
    node: Node<'a, 'i>,
    rtype: u32,
    subtype: Option<String>,
    instance: Option<String>,
    parent: Option<String>,
    address_on_parent: Option<u32>,
    address: Option<String>,
}

fn item<'a, 'i>(n: Node<'a, 'i>) -> Item<'a, 'i> {
    Item {
        node: n,
        rtype: child_text(n, "ResourceType").and_then(|t| t.parse().ok()).unwrap_or(0),
        subtype: child_text(n, "ResourceSubType"),
        instance: child_text(n, "InstanceID"),
        parent: child_text(n, "Parent"),
        address_on_parent: child_text(n, "AddressOnParent").and_then(|t| t.parse().ok()),
        address: child_text(n, "Address"),
    }
}

fn controller_model(rtype: u32, sub: Option<&str>) -> ControllerModel {
    let s = sub.unwrap_or("").trim().to_ascii_lowercase();
    match rtype {
        5 => ControllerModel::Ide,
        6 => match s.as_str() {
            "lsilogic" => ControllerModel::Lsilogic,
            "lsilogicsas" | "lsisas1068" => ControllerModel::Lsisas1068,
            "virtualscsi" | "pvscsi" => ControllerModel::Pvscsi,
            "buslogic" => ControllerModel::Buslogic,
            "virtioscsi" | "virtio-scsi" => ControllerModel::VirtioScsi,
            // DSP0243 gives no default; VMware's ovftool assumes lsilogic.
            "" => ControllerModel::Lsilogic,
            _ => ControllerModel::Other(s),
        },
        _ => match s.as_str() {
            "ahci" | "vmware.sata.ahci" | "sata" => ControllerModel::Ahci,
            "vmware.nvme.controller" | "nvme" => ControllerModel::Nvme,
            "virtioscsi" | "virtio-scsi" => ControllerModel::VirtioScsi,
            _ => ControllerModel::Other(if s.is_empty() { format!("resourcetype-{rtype}") } else { s }),
        },
    }
}

/// Parses an OVF descriptor's text. `path` names it in errors and notes.
pub fn parse(text: &str, path: &Path) -> Result<Import, OvfError> {
    let doc = xml::parse(text, path)?;
    let root = doc.root_element();
    if !root.tag_name().name().eq_ignore_ascii_case("Envelope") {
        return Err(OvfError::NotOvf {
            path: path.to_path_buf(),
            found: root.tag_name().name().to_string(),
        });
    }
    let mut notes = Vec::new();
    // References: file id -> href.
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    if let Some(r) = child(root, "References") {
        for f in children(r, "File") {
            if let (Some(id), Some(href)) = (attr(f, "id"), attr(f, "href")) {
                files.insert(id.to_string(), href.to_string());
            }
        }
    }
    // DiskSection: disk id -> capacity and file.
    let mut disks: BTreeMap<String, DiskInfo> = BTreeMap::new();
    for sec in root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name().eq_ignore_ascii_case("DiskSection"))
    {
        for d in children(sec, "Disk") {
            let Some(id) = attr(d, "diskId") else { continue };
            let capacity = match attr(d, "capacity") {
                Some(c) => match c.trim().parse::<u64>() {
                    Ok(v) => {
                        let unit = attr(d, "capacityAllocationUnits").unwrap_or("byte");
                        match unit_multiplier(unit) {
                            Some(m) => v.checked_mul(m),
                            None => {
                                notes.push(Note {
                                    at: xml::at(&doc, d, path),
                                    message: format!("disk {id}: unit {unit:?} not understood; capacity unknown"),
                                });
                                None
                            }
                        }
                    }
                    Err(_) => {
                        notes.push(Note {
                            at: xml::at(&doc, d, path),
                            message: format!("disk {id}: capacity {c:?} is not a number (an OVF property?); capacity unknown"),
                        });
                        None
                    }
                },
                None => None,
            };
            let file = attr(d, "fileRef").and_then(|r| files.get(r).cloned());
            disks.insert(id.to_string(), DiskInfo { capacity, file });
        }
    }
    let systems: Vec<Node> = root
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name().eq_ignore_ascii_case("VirtualSystem"))
        .collect();
    if systems.is_empty() {
        return Err(OvfError::NoVirtualSystem { path: path.to_path_buf() });
    }
    let mut servers = Vec::new();
    for vs in systems {
        servers.push(system(&doc, vs, path, &files, &disks, &mut notes)?);
    }
    Ok(Import { servers, notes })
}

fn system(
    doc: &Document<'_>,
    vs: Node<'_, '_>,
    path: &Path,
    files: &BTreeMap<String, String>,
    disks: &BTreeMap<String, DiskInfo>,
    notes: &mut Vec<Note>,
) -> Result<ImportedServer, OvfError> {
    let name = child_text(vs, "Name")
        .or_else(|| attr(vs, "id").map(str::to_string))
        .unwrap_or_else(|| "unnamed".into());
    let mut s = ImportedServer::named(name);
    if let Some(os) = child(vs, "OperatingSystemSection") {
        s.guest_os = attr(os, "osType")
            .map(str::to_string)
            .or_else(|| child_text(os, "OSType"))
            .or_else(|| child_text(os, "Description"))
            .or_else(|| attr(os, "id").map(str::to_string));
    }
    let Some(hw) = child(vs, "VirtualHardwareSection") else {
        notes.push(Note {
            at: xml::at(doc, vs, path),
            message: format!("virtual system {} has no VirtualHardwareSection", s.name),
        });
        return Ok(s);
    };
    if let Some(t) = child(hw, "System").and_then(|sys| child_text(sys, "VirtualSystemType")) {
        s.extras.hardware.insert("VirtualSystemType".into(), t);
    }
    for c in children(hw, "Config") {
        let (Some(k), Some(v)) = (attr(c, "key"), attr(c, "value")) else {
            continue;
        };
        match k {
            "firmware" if v.eq_ignore_ascii_case("efi") => s.firmware = ImportFirmware::Efi,
            "firmware" => s.firmware = ImportFirmware::Bios,
            _ => {
                s.extras.hardware.insert(format!("vmw:{k}"), v.to_string());
            }
        }
    }
    let items: Vec<Item> = hw
        .children()
        .filter(|c| {
            c.is_element()
                && matches!(
                    c.tag_name().name().to_ascii_lowercase().as_str(),
                    "item" | "ethernetportitem" | "storageitem"
                )
        })
        .map(item)
        .collect();
    // Controllers first, so that devices listed before them still find them.
    let mut ctrl_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut counters: BTreeMap<&str, u32> = BTreeMap::new();
    for it in items.iter().filter(|i| matches!(i.rtype, 5..=9 | 20)) {
        let model = controller_model(it.rtype, it.subtype.as_deref());
        let prefix = model.id_prefix();
        let wanted = it.address.as_deref().and_then(|a| a.trim().parse::<u32>().ok());
        let n = match wanted {
            Some(a) if !s.disk_controllers.iter().any(|c| c.id == format!("{prefix}{a}")) => a,
            _ => {
                let c = counters.entry(prefix).or_insert(0);
                while s.disk_controllers.iter().any(|x| x.id == format!("{prefix}{}", *c)) {
                    *c += 1;
                }
                *c
            }
        };
        let id = format!("{prefix}{n}");
        ensure_controller(&mut s, &id, model);
        if let Some(inst) = &it.instance {
            ctrl_ids.insert(inst.clone(), id);
        }
    }
    let mut nic_n = 0u32;
    for it in &items {
        match it.rtype {
            3 => s.cpus = number(doc, it.node, "VirtualQuantity", path)?.map_or(1, |v| u32::try_from(v).unwrap_or(u32::MAX)),
            4 => {
                let q = number(doc, it.node, "VirtualQuantity", path)?;
                let unit = child_text(it.node, "AllocationUnits");
                let m = match unit.as_deref() {
                    Some(u) => unit_multiplier(u),
                    None => {
                        notes.push(Note {
                            at: xml::at(doc, it.node, path),
                            message: "memory item without AllocationUnits: taken as MiB".into(),
                        });
                        Some(1 << 20)
                    }
                };
                s.memory_mib = match (q, m) {
                    (Some(q), Some(m)) => q.checked_mul(m).map(|b| b / (1 << 20)),
                    _ => None,
                };
            }
            10 => {
                let mut mac = it.address.as_deref().and_then(parse_mac);
                if mac.is_none() && it.address.is_some() {
                    notes.push(Note {
                        at: xml::at(doc, it.node, path),
                        message: format!("NIC address {:?} is not a MAC; treated as generated", it.address),
                    });
                    mac = None;
                }
                for c in children(it.node, "Config") {
                    if let (Some(k), Some(v)) = (attr(c, "key"), attr(c, "value")) {
                        s.extras.hardware.insert(format!("nic{nic_n}.{k}"), v.to_string());
                    }
                }
                let model = match &it.subtype {
                    Some(t) => NicModel::parse(t),
                    None => {
                        notes.push(Note {
                            at: xml::at(doc, it.node, path),
                            message: "NIC without ResourceSubType: model unknown".into(),
                        });
                        NicModel::Other("unknown".into())
                    }
                };
                s.nics.push(Nic {
                    slot: nic_n,
                    model,
                    mac,
                    network: child_text(it.node, "Connection"),
                });
                nic_n += 1;
            }
            15..=17 => {
                let kind = if it.rtype == 17 { DiskKind::Disk } else { DiskKind::Cdrom };
                let Some(ctrl) = it.parent.as_ref().and_then(|p| ctrl_ids.get(p)).cloned() else {
                    notes.push(Note {
                        at: xml::at(doc, it.node, path),
                        message: format!("drive has Parent {:?}, which is no controller of this system; skipped", it.parent),
                    });
                    continue;
                };
                let mut slot = it.address_on_parent.unwrap_or(0);
                let mut ctrl = ctrl;
                // One IDE controller holding units 2 and 3 (VirtualBox): its second channel.
                if let Some(ch) = ctrl.strip_prefix("ide").and_then(|c| c.parse::<u32>().ok()) {
                    if slot >= 2 {
                        ctrl = format!("ide{}", ch + slot / 2);
                        slot %= 2;
                        ensure_controller(&mut s, &ctrl, ControllerModel::Ide);
                    }
                }
                let host = child_text(it.node, "HostResource").unwrap_or_default();
                let (capacity_bytes, file) = if let Some(id) = host.strip_prefix("ovf:/disk/").or_else(|| host.strip_prefix("/disk/")) {
                    match disks.get(id) {
                        Some(d) => (d.capacity, d.file.clone()),
                        None => {
                            notes.push(Note {
                                at: xml::at(doc, it.node, path),
                                message: format!("HostResource {host} names no disk of the DiskSection"),
                            });
                            (None, None)
                        }
                    }
                } else if let Some(id) = host.strip_prefix("ovf:/file/").or_else(|| host.strip_prefix("/file/")) {
                    (None, files.get(id).cloned())
                } else {
                    (None, None)
                };
                s.disks.push(Disk {
                    controller: ctrl,
                    slot,
                    kind,
                    capacity_bytes,
                    file,
                    wwn: None,
                    serial: None,
                });
            }
            0 => {
                notes.push(Note {
                    at: xml::at(doc, it.node, path),
                    message: "item without ResourceType; kept as unknown".into(),
                });
                s.extras.unknown.insert(
                    format!("item{}", it.instance.clone().unwrap_or_default()),
                    child_text(it.node, "ElementName").unwrap_or_default(),
                );
            }
            5..=9 | 20 => {}
            other => {
                s.extras.unknown.insert(
                    format!("ResourceType {other} ({})", it.instance.clone().unwrap_or_default()),
                    child_text(it.node, "ElementName").unwrap_or_default(),
                );
            }
        }
    }
    vbox_machine(vs, &mut s);
    s.sort_devices();
    Ok(s)
}

/// VirtualBox's `<vbox:Machine>`: firmware and the adapters' MACs, which the
/// standard part of a VirtualBox export leaves out.
fn vbox_machine(vs: Node<'_, '_>, s: &mut ImportedServer) {
    let Some(m) = child(vs, "Machine") else { return };
    let Some(hw) = child(m, "Hardware") else { return };
    if let Some(fw) = child(hw, "Firmware").and_then(|f| attr(f, "type")) {
        if fw.to_ascii_uppercase().starts_with("EFI") {
            s.firmware = ImportFirmware::Efi;
        }
    }
    let Some(net) = child(hw, "Network") else { return };
    let macs: Vec<_> = children(net, "Adapter")
        .filter(|a| attr(*a, "enabled").is_some_and(|e| e.eq_ignore_ascii_case("true")))
        .map(|a| attr(a, "MACAddress").and_then(parse_mac))
        .collect();
    for (nic, mac) in s.nics.iter_mut().zip(macs) {
        if nic.mac.is_none() {
            nic.mac = mac;
        }
    }
}

fn number(doc: &Document<'_>, n: Node<'_, '_>, element: &str, path: &Path) -> Result<Option<u64>, OvfError> {
    let Some(t) = child_text(n, element) else { return Ok(None) };
    t.parse().map(Some).map_err(|_| OvfError::Number {
        at: xml::at(doc, n, path),
        element: element.to_string(),
        value: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(unit_multiplier("byte * 2^30"), Some(1 << 30));
        assert_eq!(unit_multiplier("byte*2^20"), Some(1 << 20));
        assert_eq!(unit_multiplier("MegaBytes"), Some(1 << 20));
        assert_eq!(unit_multiplier("byte * 10^9"), Some(1_000_000_000));
        assert_eq!(unit_multiplier("byte * 1024"), Some(1024));
        assert_eq!(unit_multiplier("byte * 2^99"), None);
        assert_eq!(unit_multiplier("furlongs"), None);
    }

    #[test]
    fn refuses_non_ovf() {
        let e = parse("<domain/>", Path::new("d.ovf")).unwrap_err();
        assert!(e.to_string().contains("not an OVF"), "{e}");
        let e = parse("<Envelope/>", Path::new("d.ovf")).unwrap_err();
        assert!(e.to_string().contains("no <VirtualSystem>"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s, Path::new("x.ovf"));
            let _ = parse(&format!("<Envelope><VirtualSystem><VirtualHardwareSection>{s}</VirtualHardwareSection></VirtualSystem></Envelope>"), Path::new("x.ovf"));
        }
    }
}
