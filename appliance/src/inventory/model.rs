//! The import model: one description of a source server, whatever tool wrote
//! the descriptor (VMX, OVF/OVA, libvirt XML, CSV).
//!
//! Its JSON form is what `isthmus import FILE --json` prints and the README's
//! "Import schema" section documents; [`ImportedServer`] serializes to exactly
//! that schema. Facts the schema has no field for (PCI slot numbers, SMBIOS
//! identity, unknown descriptor keys) ride along in [`Extras`], which is not
//! serialized, and feed [`ImportedServer::to_profile`].

use std::collections::BTreeMap;
use std::fmt;

use proto::profile::{DiskBus, DiskMedia, Firmware, NicModel as ProfileNic};
use proto::{DiskSpec, HardwareProfile, MacAddr, Machine, NicSpec, Smbios, Wwn};
use serde::{Serialize, Serializer};

use super::disk_identity::IdentityCheck;

/// Firmware as the schema spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImportFirmware {
    /// Legacy BIOS.
    #[default]
    Bios,
    /// UEFI.
    Efi,
}

/// A disk controller model, in the one vocabulary all importers share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ControllerModel {
    /// PIIX IDE channel.
    Ide,
    /// AHCI SATA.
    Ahci,
    /// LSI Logic 53c1030 parallel SCSI.
    Lsilogic,
    /// LSI Logic SAS 1068.
    Lsisas1068,
    /// VMware paravirtual SCSI.
    Pvscsi,
    /// BusLogic BT-958.
    Buslogic,
    /// NVMe.
    Nvme,
    /// virtio-scsi.
    VirtioScsi,
    /// virtio-blk (each disk its own PCI device; grouped under one id).
    VirtioBlk,
    /// A model outside the vocabulary, kept as the descriptor wrote it (lower case).
    Other(String),
}

impl ControllerModel {
    /// The schema's name of the model.
    pub fn as_str(&self) -> &str {
        match self {
            ControllerModel::Ide => "ide",
            ControllerModel::Ahci => "ahci",
            ControllerModel::Lsilogic => "lsilogic",
            ControllerModel::Lsisas1068 => "lsisas1068",
            ControllerModel::Pvscsi => "pvscsi",
            ControllerModel::Buslogic => "buslogic",
            ControllerModel::Nvme => "nvme",
            ControllerModel::VirtioScsi => "virtio-scsi",
            ControllerModel::VirtioBlk => "virtio-blk",
            ControllerModel::Other(s) => s,
        }
    }

    /// Parses a vocabulary name (case-insensitive); anything else is `Other`.
    pub fn from_vocab(s: &str) -> ControllerModel {
        let l = s.trim().to_ascii_lowercase();
        match l.as_str() {
            "ide" => ControllerModel::Ide,
            "ahci" | "sata" => ControllerModel::Ahci,
            "lsilogic" => ControllerModel::Lsilogic,
            "lsisas1068" => ControllerModel::Lsisas1068,
            "pvscsi" => ControllerModel::Pvscsi,
            "buslogic" => ControllerModel::Buslogic,
            "nvme" => ControllerModel::Nvme,
            "virtio-scsi" => ControllerModel::VirtioScsi,
            "virtio-blk" | "virtio" => ControllerModel::VirtioBlk,
            _ => ControllerModel::Other(l),
        }
    }

    /// The prefix of controller ids of this model (`scsi0`, `sata1`, …).
    pub fn id_prefix(&self) -> &'static str {
        match self {
            ControllerModel::Ide => "ide",
            ControllerModel::Ahci => "sata",
            ControllerModel::Nvme => "nvme",
            ControllerModel::VirtioBlk => "virtio",
            _ => "scsi",
        }
    }
}

impl Serialize for ControllerModel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ControllerModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NIC model, in the one vocabulary all importers share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NicModel {
    /// Intel 82545EM/82540EM.
    E1000,
    /// Intel 82574L.
    E1000e,
    /// VMware vmxnet3.
    Vmxnet3,
    /// AMD PCnet32 (VMware "vlance", VirtualBox "PCNet32"/"Am79C970A").
    Vlance,
    /// virtio-net.
    Virtio,
    /// Realtek RTL8139.
    Rtl8139,
    /// A model outside the vocabulary, kept as written (lower case).
    Other(String),
}

impl NicModel {
    /// The schema's name of the model.
    pub fn as_str(&self) -> &str {
        match self {
            NicModel::E1000 => "e1000",
            NicModel::E1000e => "e1000e",
            NicModel::Vmxnet3 => "vmxnet3",
            NicModel::Vlance => "vlance",
            NicModel::Virtio => "virtio",
            NicModel::Rtl8139 => "rtl8139",
            NicModel::Other(s) => s,
        }
    }

    /// Parses a name any of the supported tools writes (case-insensitive).
    pub fn parse(s: &str) -> NicModel {
        let l = s.trim().to_ascii_lowercase();
        match l.as_str() {
            "e1000"
            | "82545em"
            | "82540em"
            | "i82540em"
            | "i82545em"
            | "intelpro1000mtserver"
            | "intelpro1000mtdesktop"
            | "intelpro1000tserver" => NicModel::E1000,
            "e1000e" | "82574l" => NicModel::E1000e,
            "vmxnet3" => NicModel::Vmxnet3,
            "vlance" | "pcnet" | "pcnet32" | "pcnetfast" | "pcnetfast3" | "am79c970a" | "am79c973" | "pcnet-pci" => NicModel::Vlance,
            "virtio" | "virtio-net" | "virtio-net-pci" | "virtionet" | "virtio_net" => NicModel::Virtio,
            "rtl8139" => NicModel::Rtl8139,
            _ => NicModel::Other(l),
        }
    }
}

impl Serialize for NicModel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for NicModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a disk slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// A hard disk.
    Disk,
    /// A CD/DVD drive (with or without media).
    Cdrom,
}

/// One disk controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Controller {
    /// Id disks refer to: `<ide|sata|scsi|nvme|virtio><n>` (see README).
    pub id: String,
    /// Model.
    pub model: ControllerModel,
}

/// One disk or CD drive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Id of its controller.
    pub controller: String,
    /// Unit on that controller (IDE: 0 master, 1 slave on its channel).
    pub slot: u32,
    /// Disk or CD drive.
    pub kind: DiskKind,
    /// Capacity when the descriptor says it.
    pub capacity_bytes: Option<u64>,
    /// Backing file as the descriptor names it.
    pub file: Option<String>,
    /// The disk's World Wide Name when the descriptor says it (libvirt
    /// `<wwn>`); not written when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wwn: Option<Wwn>,
    /// The disk's serial number as the descriptor writes it (libvirt
    /// `<serial>`); checked against its bus when the profile is made. Not
    /// written when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// One NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// Ordinal of the NIC in the source (VMX `ethernetN`, document order elsewhere).
    pub slot: u32,
    /// Model.
    pub model: NicModel,
    /// MAC, or `None` when the hypervisor will generate it.
    #[serde(serialize_with = "ser_mac")]
    pub mac: Option<MacAddr>,
    /// Network (port group, libvirt network or bridge) it is attached to.
    pub network: Option<String>,
}

fn ser_mac<S: Serializer>(m: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.collect_str(m),
        None => s.serialize_none(),
    }
}

/// Facts outside the JSON schema, kept for the profile and for people.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// Machine type when the descriptor says (`q35`).
    pub machine: Option<Machine>,
    /// PCI slot of each NIC, by NIC index, when given as a real PCI address.
    pub nic_pci: BTreeMap<u32, proto::PciSlot>,
    /// SMBIOS identity (VMX `uuid.bios`/`serialNumber`, libvirt `<uuid>`, OVF `vmw:uuid`).
    pub smbios: Smbios,
    /// Hardware facts with no field of their own (`virtualHW.version`,
    /// `cpuid.coresPerSocket`, `ethernet0.pciSlotNumber`, …), by descriptor key.
    pub hardware: BTreeMap<String, String>,
    /// Keys or elements the importer did not use, by key, last value.
    pub unknown: BTreeMap<String, String>,
}

/// One server as imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImportedServer {
    /// Name (VMX `displayName`, OVF `Name`/`ovf:id`, libvirt `<name>`, CSV `name`).
    pub name: String,
    /// Guest OS as the tool names it (VMX `guestOS`, OVF `vmw:osType` or section
    /// description, libvirt libosinfo id).
    pub guest_os: Option<String>,
    /// Firmware.
    pub firmware: ImportFirmware,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB, when the descriptor says.
    pub memory_mib: Option<u64>,
    /// Controllers in device order.
    pub disk_controllers: Vec<Controller>,
    /// Disks in device order (controller order, then slot).
    pub disks: Vec<Disk>,
    /// NICs in device order.
    pub nics: Vec<Nic>,
    /// Facts outside the schema.
    #[serde(skip)]
    pub extras: Extras,
}

/// Something the importer wants a person to know: a default it applied, a
/// duplicate key, an unknown key it kept, a fact it could not read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    /// Where: `file:line` or `file: element`.
    pub at: String,
    /// What.
    pub message: String,
}

/// The result of importing one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// Servers, in file order.
    pub servers: Vec<ImportedServer>,
    /// Notes for the person importing.
    pub notes: Vec<Note>,
}

impl Import {
    /// A table for people: one block per server, then the notes.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        for s in &self.servers {
            let _ = writeln!(
                o,
                "{}  os={}  firmware={}  cpus={}  memory={} MiB",
                s.name,
                dash(s.guest_os.clone()),
                match s.firmware {
                    ImportFirmware::Bios => "bios",
                    ImportFirmware::Efi => "efi",
                },
                s.cpus,
                dash(s.memory_mib.map(|m| m.to_string()))
            );
            let _ = writeln!(
                o,
                "  {:<10} {:<12} {:>4} {:<6} {:>14}  FILE",
                "CONTROLLER", "MODEL", "SLOT", "KIND", "CAPACITY"
            );
            for d in &s.disks {
                let model = s
                    .disk_controllers
                    .iter()
                    .find(|c| c.id == d.controller)
                    .map_or("?", |c| c.model.as_str());
                let kind = match d.kind {
                    DiskKind::Disk => "disk",
                    DiskKind::Cdrom => "cdrom",
                };
                let cap = d.capacity_bytes.map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64));
                let _ = writeln!(
                    o,
                    "  {:<10} {:<12} {:>4} {:<6} {:>14}  {}",
                    d.controller,
                    model,
                    d.slot,
                    kind,
                    dash(cap),
                    dash(d.file.clone())
                );
            }
            let _ = writeln!(o, "  {:<4} {:<10} {:<18} NETWORK", "NIC", "MODEL", "MAC");
            for n in &s.nics {
                let mac = n.mac.map_or_else(|| "(generated)".to_string(), |m| m.to_string());
                let _ = writeln!(o, "  {:<4} {:<10} {:<18} {}", n.slot, n.model, mac, dash(n.network.clone()));
            }
            let lost = s.to_profile().lost;
            for l in lost {
                let _ = writeln!(o, "  ! profile: {l}");
            }
            o.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(o, "note: {}: {}", n.at, n.message);
        }
        o
    }
}

impl ImportedServer {
    /// An empty server with the given name.
    pub fn named(name: impl Into<String>) -> ImportedServer {
        ImportedServer {
            name: name.into(),
            guest_os: None,
            firmware: ImportFirmware::Bios,
            cpus: 1,
            memory_mib: None,
            disk_controllers: Vec::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            extras: Extras::default(),
        }
    }

    /// Sorts disks into device order: controllers as listed, then slot.
    pub fn sort_devices(&mut self) {
        let pos = |id: &str| self.disk_controllers.iter().position(|c| c.id == id).unwrap_or(usize::MAX);
        let mut keyed: Vec<(usize, Disk)> = self.disks.drain(..).map(|d| (pos(&d.controller), d)).collect();
        keyed.sort_by_key(|(c, d)| (*c, d.slot));
        self.disks = keyed.into_iter().map(|(_, d)| d).collect();
        self.nics.sort_by_key(|n| n.slot);
    }

    /// Converts to the hardware profile a move keeps, listing what the profile
    /// cannot represent. `profile` is `None` when something essential is
    /// missing (no memory size, no disk).
    pub fn to_profile(&self) -> ProfileConversion {
        let mut lost = Vec::new();
        let firmware = match self.firmware {
            ImportFirmware::Bios => Firmware::Bios,
            ImportFirmware::Efi => Firmware::Efi,
        };
        let mut disks = Vec::new();
        // The profile has one controller per bus: the first of each wins.
        let mut first_of_bus: BTreeMap<String, String> = BTreeMap::new();
        let mut identity = IdentityCheck::default();
        for (i, d) in self.disks.iter().enumerate() {
            let Some(ctrl) = self.disk_controllers.iter().find(|c| c.id == d.controller) else {
                lost.push(format!("disk {i}: controller {} is not declared", d.controller));
                continue;
            };
            let Some(bus) = profile_bus(&ctrl.model) else {
                lost.push(format!(
                    "disk {i} on {} ({}): the hardware profile has no such controller model yet",
                    ctrl.id, ctrl.model
                ));
                continue;
            };
            let unit = match ctrl.model {
                // IDE units count both channels: ide1 slot 0 is unit 2.
                ControllerModel::Ide => {
                    let ch: u32 = ctrl.id.trim_start_matches("ide").parse().unwrap_or(0);
                    ch * 2 + d.slot
                }
                _ => {
                    let bus_key = format!("{bus:?}");
                    let first = first_of_bus.entry(bus_key).or_insert_with(|| ctrl.id.clone());
                    if *first != ctrl.id {
                        lost.push(format!(
                            "disk {i} on {}: the hardware profile has one {} controller; it keeps {} only",
                            ctrl.id, ctrl.model, first
                        ));
                        continue;
                    }
                    d.slot
                }
            };
            let Ok(unit) = u8::try_from(unit) else {
                lost.push(format!("disk {i}: unit {unit} does not fit the profile"));
                continue;
            };
            let media = match d.kind {
                DiskKind::Disk => DiskMedia::Disk,
                DiskKind::Cdrom => DiskMedia::Cdrom,
            };
            let (wwn, serial) = identity.keep(i, &ctrl.id, bus, d.wwn, d.serial.as_deref(), &mut lost);
            disks.push(DiskSpec {
                bus,
                unit,
                boot: disks.is_empty() && d.kind == DiskKind::Disk,
                media,
                wwn,
                serial,
            });
        }
        let mut nics = Vec::new();
        for n in &self.nics {
            let model = match n.model {
                NicModel::E1000 => ProfileNic::E1000,
                NicModel::E1000e => ProfileNic::E1000e,
                NicModel::Vmxnet3 => ProfileNic::Vmxnet3,
                NicModel::Vlance => ProfileNic::Pcnet,
                NicModel::Virtio => ProfileNic::VirtioNet,
                NicModel::Rtl8139 => ProfileNic::Rtl8139,
                NicModel::Other(ref s) => {
                    lost.push(format!("NIC {}: model {s} has no emulation", n.slot));
                    continue;
                }
            };
            let Some(mac) = n.mac else {
                lost.push(format!(
                    "NIC {}: no MAC in the descriptor (the hypervisor generates it); read it from the running server or give one",
                    n.slot
                ));
                continue;
            };
            nics.push(NicSpec {
                model,
                mac,
                pci_slot: self.extras.nic_pci.get(&n.slot).copied(),
            });
        }
        let memory = self.memory_mib.and_then(|m| u32::try_from(m).ok());
        if memory.is_none() {
            lost.push("memory size: not given by the descriptor".into());
        }
        let profile = match memory {
            Some(memory_mib) if !disks.is_empty() => Some(HardwareProfile {
                firmware,
                machine: self.extras.machine.unwrap_or_default(),
                cpus: self.cpus,
                memory_mib,
                disks,
                nics,
                smbios: self.extras.smbios.clone(),
            }),
            _ => {
                if self.disks.is_empty() {
                    lost.push("no disk".into());
                }
                None
            }
        };
        ProfileConversion { profile, lost }
    }
}

fn profile_bus(m: &ControllerModel) -> Option<DiskBus> {
    match m {
        ControllerModel::Ide => Some(DiskBus::Ide),
        ControllerModel::Ahci => Some(DiskBus::Sata),
        ControllerModel::Lsilogic => Some(DiskBus::Scsi),
        ControllerModel::VirtioScsi => Some(DiskBus::VirtioScsi),
        ControllerModel::VirtioBlk => Some(DiskBus::VirtioBlk),
        ControllerModel::Lsisas1068 => Some(DiskBus::Lsisas1068),
        ControllerModel::Pvscsi => Some(DiskBus::Pvscsi),
        ControllerModel::Buslogic => Some(DiskBus::Buslogic),
        ControllerModel::Nvme => Some(DiskBus::Nvme),
        ControllerModel::Other(_) => None,
    }
}

/// A profile and what did not fit in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileConversion {
    /// The profile, when the essentials were there.
    pub profile: Option<HardwareProfile>,
    /// What the profile cannot represent, one sentence each.
    pub lost: Vec<String>,
}

/// Builder helper: the id of the controller of `model` number `n`,
/// declaring it if new (controllers keep first-seen order).
pub(crate) fn ensure_controller(s: &mut ImportedServer, id: &str, model: ControllerModel) {
    if !s.disk_controllers.iter().any(|c| c.id == id) {
        s.disk_controllers.push(Controller { id: id.to_string(), model });
    }
}

/// Parses a MAC in colon, dash or bare-hex (VirtualBox `080027AABBCC`) form.
pub fn parse_mac(s: &str) -> Option<MacAddr> {
    let t = s.trim();
    if t.len() == 12 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        let spaced: Vec<&str> = (0..6).map(|i| &t[i * 2..i * 2 + 2]).collect();
        return spaced.join(":").parse().ok();
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_exactly_the_schema() {
        let mut s = ImportedServer::named("a");
        s.memory_mib = Some(512);
        ensure_controller(&mut s, "scsi0", ControllerModel::Pvscsi);
        s.disks.push(Disk {
            controller: "scsi0".into(),
            slot: 0,
            kind: DiskKind::Disk,
            capacity_bytes: Some(1 << 30),
            file: Some("a.vmdk".into()),
            wwn: None,
            serial: None,
        });
        s.nics.push(Nic {
            slot: 0,
            model: NicModel::Vmxnet3,
            mac: parse_mac("00:50:56:AA:bb:01"),
            network: None,
        });
        s.extras.unknown.insert("x".into(), "y".into());
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"name":"a","guest_os":null,"firmware":"bios","cpus":1,"memory_mib":512,
            "disk_controllers":[{"id":"scsi0","model":"pvscsi"}],
            "disks":[{"controller":"scsi0","slot":0,"kind":"disk","capacity_bytes":1073741824u64,"file":"a.vmdk"}],
            "nics":[{"slot":0,"model":"vmxnet3","mac":"00:50:56:aa:bb:01","network":null}]})
        );
        let c = s.to_profile();
        let p = c.profile.unwrap();
        assert_eq!(p.disks[0].bus, DiskBus::Pvscsi);
    }

    #[test]
    fn macs_in_every_form() {
        assert_eq!(parse_mac("080027AABBCC").unwrap().to_string(), "08:00:27:aa:bb:cc");
        assert_eq!(parse_mac("08-00-27-aa-bb-cc").unwrap().to_string(), "08:00:27:aa:bb:cc");
        assert!(parse_mac("zz").is_none());
    }

    #[test]
    fn profile_from_ide_and_sata() {
        let mut s = ImportedServer::named("b");
        s.memory_mib = Some(256);
        ensure_controller(&mut s, "ide1", ControllerModel::Ide);
        s.disks.push(Disk {
            controller: "ide1".into(),
            slot: 1,
            kind: DiskKind::Disk,
            capacity_bytes: None,
            file: None,
            wwn: None,
            serial: None,
        });
        s.nics.push(Nic {
            slot: 0,
            model: NicModel::E1000,
            mac: None,
            network: None,
        });
        let c = s.to_profile();
        let p = c.profile.unwrap();
        assert_eq!(p.disks[0].unit, 3);
        assert!(p.nics.is_empty() && c.lost[0].contains("no MAC"));
    }
}
