//! The hardware profile of a server: what the guest sees as its machine.
//!
//! A profile is what Isthmus preserves across a move. It is parsed once from
//! outside input (inventory descriptions, API bodies) with `deny_unknown_fields`
//! and checked by [`HardwareProfile::validate`]; `hv` maps it to QEMU devices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::disk_serial::max_serial_bytes;
use crate::{DiskSerial, MacAddr, Wwn};

/// Firmware the guest boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS in QEMU).
    #[default]
    Bios,
    /// UEFI (OVMF in QEMU).
    Efi,
    /// UEFI with Secure Boot enforced and Microsoft's keys enrolled, as on a
    /// source that had Secure Boot on (OVMF's `secboot` build with SMM and
    /// the MS-enrolled variable store; needs `machine = "q35"`).
    #[serde(rename = "efi-secure-boot")]
    EfiSecureBoot,
}

/// Chipset / machine type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// Intel 440FX + PIIX (QEMU `pc`), what most hypervisors emulate.
    #[default]
    Pc,
    /// Intel Q35 + ICH9 (QEMU `q35`).
    Q35,
}

/// The bus a disk hangs off; it decides the guest's device name
/// (IDE, SATA and the SCSI/SAS/RAID controllers give `/dev/sdX`, virtio-blk
/// gives `/dev/vdX`, NVMe gives `/dev/nvme0nN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBus {
    /// Parallel ATA (PIIX IDE on `pc`).
    Ide,
    /// AHCI SATA controller.
    Sata,
    /// LSI Logic 53c895a parallel SCSI.
    Scsi,
    /// virtio-scsi.
    VirtioScsi,
    /// virtio-blk.
    VirtioBlk,
    /// LSI Logic SAS 1068 (VMware `lsisas1068`; QEMU `mptsas1068`).
    Lsisas1068,
    /// LSI MegaRAID SAS (QEMU `megasas-gen2`).
    Megasas,
    /// VMware paravirtual SCSI (QEMU `pvscsi`).
    Pvscsi,
    /// NVMe: one controller, unit N is namespace N+1 (`/dev/nvme0n<N+1>`).
    Nvme,
    /// BusLogic BT-958 (VMware `buslogic`). QEMU cannot emulate it: mapping
    /// such a disk is a fit error that suggests LSI Logic.
    Buslogic,
}

impl DiskBus {
    /// How many units a controller of this bus takes (IDE: 2 buses × 2).
    pub fn max_units(self) -> u8 {
        match self {
            DiskBus::Ide => 4,
            DiskBus::Sata => 6,
            DiskBus::Scsi => 7,
            DiskBus::VirtioScsi => 255,
            DiskBus::VirtioBlk => 28,
            // QEMU mptsas1068: 8 SAS ports.
            DiskBus::Lsisas1068 => 8,
            // QEMU megasas: MFI_MAX_LD logical drives; pvscsi: PVSCSI_MAX_DEVS.
            DiskBus::Megasas => 64,
            DiskBus::Pvscsi => 64,
            DiskBus::Nvme => 32,
            // BT-958: 16 targets (wide SCSI); only used to validate units.
            DiskBus::Buslogic => 16,
        }
    }

    /// Whether the bus can carry a CD-ROM drive (ATAPI or SCSI MMC);
    /// virtio-blk and NVMe cannot.
    pub fn takes_cdrom(self) -> bool {
        !matches!(self, DiskBus::VirtioBlk | DiskBus::Nvme)
    }
}

/// What kind of drive a disk is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMedia {
    /// A hard disk (read-write).
    #[default]
    Disk,
    /// A CD/DVD drive (read-only medium; QEMU `ide-cd` / `scsi-cd`).
    Cdrom,
}

impl DiskMedia {
    fn is_default(&self) -> bool {
        *self == DiskMedia::Disk
    }
}

/// Emulated NIC model; guests bind drivers (and often their IP config) to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicModel {
    /// Intel 82540EM (VMware `e1000`).
    E1000,
    /// Intel 82574L (VMware `e1000e`).
    E1000e,
    /// Realtek RTL8139.
    Rtl8139,
    /// VMware vmxnet3.
    Vmxnet3,
    /// AMD PCnet (VMware `vlance`).
    Pcnet,
    /// virtio-net.
    VirtioNet,
}

/// A PCI slot and function on the root bus, written `SS.F` in hex (`03.0`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PciSlot {
    /// Device number, 0..=31.
    pub slot: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Why a PCI slot string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid PCI slot {0:?}: expected SS.F in hex with slot 00..1f and function 0..7, like 03.0")]
pub struct PciSlotParseError(pub String);

impl FromStr for PciSlot {
    type Err = PciSlotParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PciSlotParseError(s.to_string());
        let t = s.trim().trim_start_matches("0x");
        let (sl, f) = t.split_once('.').unwrap_or((t, "0"));
        let slot = u8::from_str_radix(sl, 16).map_err(|_| err())?;
        let function = u8::from_str_radix(f, 16).map_err(|_| err())?;
        if slot > 31 || function > 7 {
            return Err(err());
        }
        Ok(PciSlot { slot, function })
    }
}

impl fmt::Display for PciSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{}", self.slot, self.function)
    }
}

impl Serialize for PciSlot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciSlot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One disk as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Controller type.
    pub bus: DiskBus,
    /// Unit on that controller (IDE: 0 = primary master, 1 = primary slave, …).
    #[serde(default)]
    pub unit: u8,
    /// Boot from this disk first.
    #[serde(default)]
    pub boot: bool,
    /// Hard disk (default) or CD-ROM drive.
    #[serde(default, skip_serializing_if = "DiskMedia::is_default")]
    pub media: DiskMedia,
    /// The disk's World Wide Name at its source, kept so that the guest
    /// sees the same name after the move: its SAS address on `lsisas1068`,
    /// the WWN a SCSI, SATA or IDE disk reports (`/dev/disk/by-id/wwn-0x…`).
    /// Absent: no WWN, except on `lsisas1068`, whose disks need a SAS
    /// address and get a stable one derived from the unit. Not on
    /// `virtio-blk` or `nvme`, which carry no WWN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<Wwn>,
    /// The disk's serial number at its source, kept so that the guest's
    /// `/dev/disk/by-id` names (`ata-…_<serial>`, `virtio-<serial>`,
    /// `scsi-…`) stay the same. At most 20 bytes on ide, sata, virtio-blk
    /// and nvme, 36 on the SCSI buses. On nvme it is the controller's
    /// serial, which all NVMe disks of a profile share. Absent: QEMU's
    /// default (none; `ISTHMUS-NVME0` on nvme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<DiskSerial>,
}

impl DiskSpec {
    /// A hard disk at `unit` on `bus`, with no WWN and no serial (what a
    /// profile gets when the source says nothing more about the disk).
    pub fn new(bus: DiskBus, unit: u8, boot: bool) -> DiskSpec {
        DiskSpec {
            bus,
            unit,
            boot,
            media: DiskMedia::Disk,
            wwn: None,
            serial: None,
        }
    }
}

/// One NIC as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Emulated model.
    pub model: NicModel,
    /// The MAC the guest's network config is bound to.
    pub mac: MacAddr,
    /// PCI address; interface names (`enp0s3`) derive from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_slot: Option<PciSlot>,
}

/// SMBIOS identity (types 1/2/3) that licences and asset tools read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smbios {
    /// System manufacturer (type 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// System product name (type 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// System serial number (type 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// System UUID (type 1), canonical 8-4-4-4-12 form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// Everything about a server's virtual hardware that a move must keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    /// Firmware.
    #[serde(default)]
    pub firmware: Firmware,
    /// Machine type.
    #[serde(default)]
    pub machine: Machine,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Disks, in the order the source has them.
    pub disks: Vec<DiskSpec>,
    /// NICs, in the order the source has them.
    pub nics: Vec<NicSpec>,
    /// SMBIOS identity.
    #[serde(default)]
    pub smbios: Smbios,
}

/// A profile that cannot describe a machine QEMU can run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    /// CPU count out of range.
    #[error("cpus = {0}: a server needs between 1 and 255 CPUs")]
    Cpus(u32),
    /// Memory out of range.
    #[error("memory_mib = {0}: a server needs between 16 MiB and 4 TiB of memory")]
    Memory(u32),
    /// No disk at all.
    #[error("the profile has no disk: add one [[disks]] entry with its bus (ide, sata, scsi, lsisas1068, megasas, pvscsi, virtio-scsi, virtio-blk, nvme)")]
    NoDisk,
    /// Unit number beyond the controller.
    #[error("disk on {bus:?} has unit {unit}, but that bus has only units 0..{max}")]
    Unit {
        /// The bus.
        bus: DiskBus,
        /// The unit asked for.
        unit: u8,
        /// Units available.
        max: u8,
    },
    /// Two disks on the same bus and unit.
    #[error("two disks on {bus:?} unit {unit}: give each disk its own unit")]
    DuplicateUnit {
        /// The bus.
        bus: DiskBus,
        /// The unit.
        unit: u8,
    },
    /// A CD-ROM on a bus that has no CD-ROM drives.
    #[error("disk on {bus:?} unit {unit} is a CD-ROM, but {bus:?} carries only hard disks; put the CD-ROM on ide, sata or a SCSI bus")]
    CdromBus {
        /// The bus.
        bus: DiskBus,
        /// The unit.
        unit: u8,
    },
    /// A WWN on a bus whose disks have none.
    #[error("disk on {bus:?} unit {unit} has a wwn, but {bus:?} disks carry no WWN; remove the wwn or put the disk on a SCSI, SAS, SATA or IDE bus")]
    WwnBus {
        /// The bus.
        bus: DiskBus,
        /// The unit.
        unit: u8,
    },
    /// A serial longer than the disk's bus carries.
    #[error("disk on {bus:?} unit {unit} has serial {serial:?} ({len} bytes), but {bus:?} disks carry at most {max}; QEMU would cut it and the guest's /dev/disk/by-id names would change: shorten it at the source or put the disk on a SCSI bus (36 bytes)")]
    SerialBus {
        /// The bus.
        bus: DiskBus,
        /// The unit.
        unit: u8,
        /// The serial.
        serial: String,
        /// Its length in bytes.
        len: usize,
        /// What the bus carries.
        max: usize,
    },
    /// NVMe disks with different serials (the serial is the controller's).
    #[error("NVMe disks have serials {0:?} and {1:?}, but all NVMe disks sit on one controller whose serial they share; give them the same serial or none")]
    NvmeSerials(String, String),
    /// Two disks with one WWN.
    #[error("two disks share WWN {0}: each disk needs its own WWN")]
    DuplicateWwn(Wwn),
    /// Two NICs with one MAC.
    #[error("two NICs share MAC {0}: each NIC needs its own MAC")]
    DuplicateMac(MacAddr),
    /// A multicast MAC on a NIC.
    #[error("NIC MAC {0} is a multicast address (lowest bit of the first byte set); use a unicast MAC")]
    MulticastMac(MacAddr),
    /// Two devices in one PCI slot.
    #[error("two NICs ask for PCI slot {0}")]
    DuplicateSlot(PciSlot),
    /// A PCI slot the chipset owns.
    #[error("PCI slot {0} is taken by the chipset (slots 00 and 01 on pc, 00 and 1f on q35); pick 02..1e")]
    ReservedSlot(PciSlot),
}

impl HardwareProfile {
    /// Checks the invariants a QEMU machine needs. Call after parsing.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if !(1..=255).contains(&self.cpus) {
            return Err(ProfileError::Cpus(self.cpus));
        }
        if !(16..=4 * 1024 * 1024).contains(&self.memory_mib) {
            return Err(ProfileError::Memory(self.memory_mib));
        }
        if self.disks.is_empty() {
            return Err(ProfileError::NoDisk);
        }
        let mut seen = std::collections::HashSet::new();
        let mut wwns = std::collections::HashSet::new();
        let mut nvme_serial: Option<&DiskSerial> = None;
        for d in &self.disks {
            if d.unit >= d.bus.max_units() {
                return Err(ProfileError::Unit {
                    bus: d.bus,
                    unit: d.unit,
                    max: d.bus.max_units(),
                });
            }
            if d.media == DiskMedia::Cdrom && !d.bus.takes_cdrom() {
                return Err(ProfileError::CdromBus { bus: d.bus, unit: d.unit });
            }
            if !seen.insert((d.bus, d.unit)) {
                return Err(ProfileError::DuplicateUnit { bus: d.bus, unit: d.unit });
            }
            if let Some(w) = d.wwn {
                if matches!(d.bus, DiskBus::VirtioBlk | DiskBus::Nvme) {
                    return Err(ProfileError::WwnBus { bus: d.bus, unit: d.unit });
                }
                if !wwns.insert(w) {
                    return Err(ProfileError::DuplicateWwn(w));
                }
            }
            if let Some(sn) = &d.serial {
                if !sn.fits(d.bus) {
                    return Err(ProfileError::SerialBus {
                        bus: d.bus,
                        unit: d.unit,
                        serial: sn.to_string(),
                        len: sn.len(),
                        max: max_serial_bytes(d.bus),
                    });
                }
                if d.bus == DiskBus::Nvme {
                    match nvme_serial {
                        Some(first) if first != sn => return Err(ProfileError::NvmeSerials(first.to_string(), sn.to_string())),
                        _ => nvme_serial = Some(sn),
                    }
                }
            }
        }
        let mut macs = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        for n in &self.nics {
            if n.mac.is_multicast() {
                return Err(ProfileError::MulticastMac(n.mac));
            }
            if !macs.insert(n.mac) {
                return Err(ProfileError::DuplicateMac(n.mac));
            }
            if let Some(s) = n.pci_slot {
                let reserved = match self.machine {
                    Machine::Pc => s.slot <= 1,
                    Machine::Q35 => s.slot == 0 || s.slot == 0x1f,
                };
                if reserved {
                    return Err(ProfileError::ReservedSlot(s));
                }
                if !slots.insert(s) {
                    return Err(ProfileError::DuplicateSlot(s));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HardwareProfile {
        HardwareProfile {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            cpus: 1,
            memory_mib: 256,
            disks: vec![DiskSpec::new(DiskBus::Ide, 0, true)],
            nics: vec![NicSpec {
                model: NicModel::E1000,
                mac: "52:54:00:12:34:56".parse().unwrap(),
                pci_slot: Some("03.0".parse().unwrap()),
            }],
            smbios: Smbios {
                serial: Some("SRV-0001".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn sample_is_valid_and_roundtrips_json() {
        let p = sample();
        p.validate().unwrap();
        let j = serde_json::to_string(&p).unwrap();
        let back: HardwareProfile = serde_json::from_str(&j).unwrap();
        assert_eq!(back, p);
        assert!(j.contains("\"pci_slot\":\"03.0\""), "{j}");
    }

    #[test]
    fn rejects_bad_profiles() {
        let mut p = sample();
        p.cpus = 0;
        assert_eq!(p.validate(), Err(ProfileError::Cpus(0)));
        let mut p = sample();
        p.disks.clear();
        assert_eq!(p.validate(), Err(ProfileError::NoDisk));
        let mut p = sample();
        p.disks.push(DiskSpec::new(DiskBus::Ide, 0, false));
        assert!(matches!(p.validate(), Err(ProfileError::DuplicateUnit { .. })));
        let mut p = sample();
        p.disks[0].unit = 4;
        assert!(matches!(p.validate(), Err(ProfileError::Unit { .. })));
        let mut p = sample();
        p.nics.push(p.nics[0].clone());
        assert!(matches!(p.validate(), Err(ProfileError::DuplicateMac(_))));
        let mut p = sample();
        p.nics[0].pci_slot = Some("01.0".parse().unwrap());
        assert!(matches!(p.validate(), Err(ProfileError::ReservedSlot(_))));
        let mut p = sample();
        p.nics[0].mac = "01:00:5e:00:00:01".parse().unwrap();
        assert!(matches!(p.validate(), Err(ProfileError::MulticastMac(_))));
    }

    #[test]
    fn new_buses_and_media_in_json() {
        for (name, bus) in [
            ("lsisas1068", DiskBus::Lsisas1068),
            ("megasas", DiskBus::Megasas),
            ("pvscsi", DiskBus::Pvscsi),
            ("nvme", DiskBus::Nvme),
            ("buslogic", DiskBus::Buslogic),
            ("virtio-scsi", DiskBus::VirtioScsi),
        ] {
            let d: DiskSpec = serde_json::from_str(&format!(r#"{{"bus":"{name}","unit":1}}"#)).unwrap();
            assert_eq!(d.bus, bus);
            assert_eq!(d.media, DiskMedia::Disk, "media defaults to disk");
            assert!(!serde_json::to_string(&d).unwrap().contains("media"), "default media not written");
        }
        let d: DiskSpec = serde_json::from_str(r#"{"bus":"sata","media":"cdrom"}"#).unwrap();
        assert_eq!(d.media, DiskMedia::Cdrom);
        assert!(serde_json::to_string(&d).unwrap().contains(r#""media":"cdrom""#));
        assert!(serde_json::from_str::<DiskSpec>(r#"{"bus":"sata","media":"floppy"}"#).is_err());
        let mut p = sample();
        p.disks[0] = DiskSpec {
            media: DiskMedia::Cdrom,
            ..DiskSpec::new(DiskBus::Nvme, 0, true)
        };
        assert!(matches!(p.validate(), Err(ProfileError::CdromBus { .. })));
        p.disks[0].media = DiskMedia::Disk;
        p.validate().unwrap();
    }

    #[test]
    fn disk_wwn_is_typed_and_checked() {
        let d: DiskSpec = serde_json::from_str(r#"{"bus":"lsisas1068","wwn":"50:00:c5:00:a1:b2:c3:d4"}"#).unwrap();
        assert_eq!(d.wwn.map(Wwn::get), Some(0x5000_c500_a1b2_c3d4));
        assert!(serde_json::to_string(&d).unwrap().contains(r#""wwn":"0x5000c500a1b2c3d4""#));
        assert!(
            !serde_json::to_string(&sample().disks[0]).unwrap().contains("wwn"),
            "no wwn, none written"
        );
        let e = serde_json::from_str::<DiskSpec>(r#"{"bus":"sata","wwn":"6000c29a1b2c3d4e"}"#).unwrap_err();
        assert!(e.to_string().contains("NAA"), "{e}");
        let mut p = sample();
        p.disks[0].wwn = d.wwn;
        p.validate().unwrap();
        p.disks.push(DiskSpec {
            unit: 1,
            boot: false,
            ..p.disks[0].clone()
        });
        assert_eq!(p.validate(), Err(ProfileError::DuplicateWwn(d.wwn.unwrap())));
        for bus in [DiskBus::VirtioBlk, DiskBus::Nvme] {
            let mut p = sample();
            p.disks[0].bus = bus;
            p.disks[0].wwn = d.wwn;
            assert_eq!(p.validate(), Err(ProfileError::WwnBus { bus, unit: 0 }));
        }
    }

    #[test]
    fn disk_serial_is_typed_and_fits_its_bus() {
        let d: DiskSpec = serde_json::from_str(r#"{"bus":"sata","serial":"S3Z9NB0K123456A"}"#).unwrap();
        assert_eq!(d.serial.as_ref().map(DiskSerial::as_str), Some("S3Z9NB0K123456A"));
        let j = serde_json::to_string(&d).unwrap();
        assert!(j.contains(r#""serial":"S3Z9NB0K123456A""#), "{j}");
        assert_eq!(serde_json::from_str::<DiskSpec>(&j).unwrap(), d, "round trip");
        assert!(
            !serde_json::to_string(&sample().disks[0]).unwrap().contains("serial"),
            "no serial, none written (older readers keep parsing)"
        );
        let e = serde_json::from_str::<DiskSpec>(r#"{"bus":"sata","serial":"tab\there"}"#).unwrap_err();
        assert!(e.to_string().contains("printable ASCII"), "{e}");
        // 24 bytes: fine on SCSI, a fit error naming disk and bus on SATA.
        let long: DiskSerial = "WD-WCC4N1234567-ABCDEFGH".parse().unwrap();
        let mut p = sample();
        p.disks[0].bus = DiskBus::Scsi;
        p.disks[0].serial = Some(long.clone());
        p.validate().unwrap();
        p.disks[0].bus = DiskBus::Sata;
        p.disks[0].unit = 2;
        let e = p.validate().unwrap_err();
        assert!(
            matches!(
                e,
                ProfileError::SerialBus {
                    bus: DiskBus::Sata,
                    unit: 2,
                    len: 24,
                    max: 20,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("Sata unit 2") && e.to_string().contains("at most 20"), "{e}");
        // NVMe disks share their controller's serial.
        let mut p = sample();
        p.disks[0].bus = DiskBus::Nvme;
        p.disks[0].serial = Some("NV-A".parse().unwrap());
        p.disks.push(DiskSpec {
            unit: 1,
            boot: false,
            ..p.disks[0].clone()
        });
        p.validate().unwrap();
        p.disks[1].serial = Some("NV-B".parse().unwrap());
        assert_eq!(p.validate(), Err(ProfileError::NvmeSerials("NV-A".into(), "NV-B".into())));
        p.disks[1].serial = None;
        p.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let j = r#"{"cpus":1,"memory_mib":64,"disks":[],"nics":[],"colour":"red"}"#;
        let e = serde_json::from_str::<HardwareProfile>(j).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn pci_slot_parsing() {
        assert_eq!("03.0".parse::<PciSlot>().unwrap(), PciSlot { slot: 3, function: 0 });
        assert_eq!("0x1e.7".parse::<PciSlot>().unwrap(), PciSlot { slot: 0x1e, function: 7 });
        assert_eq!("05".parse::<PciSlot>().unwrap(), PciSlot { slot: 5, function: 0 });
        assert!("20.0".parse::<PciSlot>().is_err());
        assert!("03.8".parse::<PciSlot>().is_err());
        assert!("x".parse::<PciSlot>().is_err());
    }
}
