//! The one mapping from a hardware profile to QEMU devices (STYLE §7).
//!
//! [`build`] is pure: it takes the spec, the inspected disk images and the
//! host facts and returns typed [`Arg`]s. Device order matters to QEMU and
//! to the guest, so it is fixed here:
//! 1. NICs with a fixed PCI address (function 0 of a slot first), so that no
//!    automatically placed device can take their slot;
//! 2. the VGA, which then takes the lowest free slot (02.0 on a default `pc`,
//!    as on a QEMU machine without a profile);
//! 3. NICs without a fixed address, in profile order;
//! 4. disk controllers and disks, by bus and unit, so `vda`, `vdb`, ... follow
//!    the units.

use std::collections::BTreeSet;

use proto::api::AccelKind;
use proto::profile::DiskMedia;
use proto::{DiskBus, DiskSpec, Firmware, Machine, PciSlot};

use super::args::{Arg, CacheMode, Device, Drive, NetdevTap, Nic, RootBus, ScsiModel, SmbiosType1};
use super::host::{HostFacts, OVMF_DIR};
use super::image::{DiskImage, Encryption};
use crate::run_dir::RunDir;
use crate::GuestSpec;

/// A valid profile that still cannot run here, or with QEMU.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// UEFI asked for but OVMF absent: this node does not fit the server.
    #[error("guest {name}: the profile needs UEFI firmware but OVMF is not installed here ({OVMF_DIR}/OVMF_CODE.fd and OVMF_VARS.fd missing); install Debian's `ovmf` package on this node or place the server on a node that has it")]
    OvmfMissing {
        /// Guest name.
        name: String,
    },
    /// Secure Boot asked for but the OVMF Secure Boot build or the
    /// Microsoft-enrolled variable store is absent.
    #[error("guest {name}: the source had Secure Boot but this node lacks {OVMF_DIR}/OVMF_CODE_4M.secboot.fd or OVMF_VARS_4M.ms.fd; install Debian's `ovmf` package (bookworm or later) on this node")]
    OvmfSecureMissing {
        /// Guest name.
        name: String,
    },
    /// Secure Boot on `pc`: OVMF's Secure Boot build needs SMM, which QEMU
    /// offers on q35.
    #[error("guest {name}: Secure Boot needs machine = \"q35\" (OVMF's Secure Boot build needs SMM); a UEFI source with Secure Boot is q35-like: set machine = \"q35\"")]
    SecureBootNeedsQ35 {
        /// Guest name.
        name: String,
    },
    /// IDE disks on a q35 machine, which has no PATA controller.
    #[error("guest {name}: IDE disk unit {unit} on a q35 machine, which has no IDE controller; a q35 source had its disks on SATA: set bus = \"sata\" for that disk, or machine = \"pc\"")]
    IdeOnQ35 {
        /// Guest name.
        name: String,
        /// The disk's unit.
        unit: u8,
    },
    /// A disk controller QEMU has no emulation for.
    #[error("guest {name}: disk unit {unit} is on a {device} controller, which QEMU cannot emulate; change the source's controller to {suggest} before the move (its driver ships with Linux and Windows) or place the server elsewhere")]
    Unemulated {
        /// Guest name.
        name: String,
        /// The disk's unit.
        unit: u8,
        /// The controller, as a person knows it.
        device: &'static str,
        /// What to use instead, with its profile name.
        suggest: &'static str,
    },
    /// A CD-ROM on a bus without CD-ROM drives (caught by profile
    /// validation too; kept for specs built without it).
    #[error("guest {name}: a CD-ROM at unit {unit} on {bus:?}, which carries only hard disks; put it on ide, sata or a SCSI bus")]
    CdromBus {
        /// Guest name.
        name: String,
        /// The bus.
        bus: DiskBus,
        /// The disk's unit.
        unit: u8,
    },
    /// A NIC at function N > 0 with nothing at function 0 of its slot.
    #[error("guest {name}: a NIC is at PCI {slot} but nothing is at function 0 of slot {slot_only:02x}; guests only scan a slot whose function 0 exists: give one NIC address {slot_only:02x}.0")]
    PciFunctionZero {
        /// Guest name.
        name: String,
        /// The address asked for.
        slot: PciSlot,
        /// Its slot number.
        slot_only: u8,
    },
    /// An SMBIOS string QEMU or the guest could not take.
    #[error("guest {name}: SMBIOS {field} {value:?} contains control characters; remove them from the profile")]
    SmbiosValue {
        /// Guest name.
        name: String,
        /// Field name.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// An SMBIOS UUID that is not in canonical form.
    #[error(
        "guest {name}: SMBIOS uuid {value:?} is not a UUID; write it as 8-4-4-4-12 hex digits, like 4c4c4544-0042-3510-8052-b4c04f4e3232"
    )]
    Uuid {
        /// Guest name.
        name: String,
        /// The value.
        value: String,
    },
}

/// Maps a spec (already [`GuestSpec::validate`]d) plus its inspected disk
/// images (same order as `spec.disks`) and the host facts to QEMU arguments.
pub fn build(spec: &GuestSpec, disks: &[DiskImage], host: &HostFacts) -> Result<Vec<Arg>, MapError> {
    let p = &spec.profile;
    let run = RunDir::new(&spec.run_dir);
    let name = || spec.name.clone();
    let mut args = vec![Arg::Name(spec.name.clone()), Arg::Machine(p.machine), Arg::Accel(spec.accel)];
    if spec.accel == AccelKind::Kvm {
        args.push(Arg::CpuHost);
    }
    args.extend([Arg::Smp(p.cpus), Arg::MemoryMib(p.memory_mib), Arg::NoDefaults]);

    // Firmware: SeaBIOS is QEMU's default; UEFI is OVMF in two pflash chips.
    if p.firmware != Firmware::Bios {
        let secure = p.firmware == Firmware::EfiSecureBoot;
        if secure && p.machine != Machine::Q35 {
            return Err(MapError::SecureBootNeedsQ35 { name: name() });
        }
        let ovmf = host.ovmf_for(p.firmware).ok_or_else(|| {
            if secure {
                MapError::OvmfSecureMissing { name: name() }
            } else {
                MapError::OvmfMissing { name: name() }
            }
        })?;
        if secure {
            args.push(Arg::SecureBootSmm);
        }
        args.push(Arg::Drive(Drive::Pflash {
            unit: 0,
            file: ovmf.code.clone(),
            readonly: true,
        }));
        args.push(Arg::Drive(Drive::Pflash {
            unit: 1,
            file: run.efi_vars(),
            readonly: false,
        }));
    }

    if let Some(smbios) = smbios(spec)? {
        if let Some(uuid) = &smbios.uuid {
            args.push(Arg::Uuid(uuid.clone()));
        }
        args.push(Arg::SmbiosType1(smbios));
    }

    nics(spec, &mut args)?;
    disk_devices(spec, disks, &mut args)?;

    if disks.iter().any(|d| d.encryption == Encryption::Luks) {
        args.push(Arg::Preconfig);
    }
    args.extend([
        Arg::DisplayNone,
        Arg::VncUnix(run.vnc_socket()),
        Arg::SerialSocket {
            socket: run.serial_socket(),
            log: run.serial_log(),
        },
        Arg::QmpUnix(run.qmp_socket()),
        Arg::Pidfile(run.pidfile()),
        Arg::Daemonize,
    ]);
    if host.sandbox {
        args.push(Arg::Sandbox);
    }
    Ok(args)
}

fn smbios(spec: &GuestSpec) -> Result<Option<SmbiosType1>, MapError> {
    let s = &spec.profile.smbios;
    let check = |field: &'static str, v: &Option<String>| -> Result<Option<String>, MapError> {
        match v {
            Some(value) if value.chars().any(char::is_control) => Err(MapError::SmbiosValue {
                name: spec.name.clone(),
                field,
                value: value.clone(),
            }),
            v => Ok(v.clone()),
        }
    };
    let t1 = SmbiosType1 {
        manufacturer: check("manufacturer", &s.manufacturer)?,
        product: check("product", &s.product)?,
        serial: check("serial", &s.serial)?,
        uuid: match &s.uuid {
            Some(u) if !is_uuid(u) => {
                return Err(MapError::Uuid {
                    name: spec.name.clone(),
                    value: u.clone(),
                })
            }
            u => u.clone(),
        },
    };
    Ok((!t1.is_empty()).then_some(t1))
}

/// Canonical 8-4-4-4-12 hex UUID.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn nics(spec: &GuestSpec, args: &mut Vec<Arg>) -> Result<(), MapError> {
    let p = &spec.profile;
    let bus = RootBus::of(p.machine);
    // Slots where a function other than 0 is used: function 0 must exist and
    // say multifunction=on, or neither QEMU nor the guest sees the others.
    let multi: BTreeSet<u8> = p
        .nics
        .iter()
        .filter_map(|n| n.pci_slot)
        .filter(|s| s.function != 0)
        .map(|s| s.slot)
        .collect();
    for s in p.nics.iter().filter_map(|n| n.pci_slot).filter(|s| s.function != 0) {
        if !p.nics.iter().any(|n| n.pci_slot == Some(PciSlot { slot: s.slot, function: 0 })) {
            return Err(MapError::PciFunctionZero {
                name: spec.name.clone(),
                slot: s,
                slot_only: s.slot,
            });
        }
    }
    let mut fixed = Vec::new();
    let mut floating = Vec::new();
    for (i, (n, tap)) in p.nics.iter().zip(&spec.taps).enumerate() {
        let netdev = format!("n{i}");
        args.push(Arg::NetdevTap(NetdevTap {
            id: netdev.clone(),
            ifname: tap.clone(),
        }));
        let nic = Nic {
            model: n.model,
            netdev,
            mac: n.mac,
            bus,
            addr: n.pci_slot,
            multifunction: n.pci_slot.is_some_and(|s| s.function == 0 && multi.contains(&s.slot)),
        };
        match n.pci_slot {
            Some(s) => fixed.push((s.slot, s.function, nic)),
            None => floating.push(nic),
        }
    }
    fixed.sort_by_key(|(slot, function, _)| (*slot, *function));
    args.extend(fixed.into_iter().map(|(_, _, n)| Arg::Device(Device::Nic(n))));
    args.push(Arg::Device(Device::StdVga { bus }));
    args.extend(floating.into_iter().map(|n| Arg::Device(Device::Nic(n))));
    Ok(())
}

fn bus_rank(b: DiskBus) -> u8 {
    match b {
        DiskBus::Ide => 0,
        DiskBus::Sata => 1,
        DiskBus::Scsi => 2,
        DiskBus::Lsisas1068 => 3,
        DiskBus::Megasas => 4,
        DiskBus::Pvscsi => 5,
        DiskBus::Buslogic => 6,
        DiskBus::VirtioScsi => 7,
        DiskBus::VirtioBlk => 8,
        DiskBus::Nvme => 9,
    }
}

/// The SCSI adapter (and its controller id) behind a SCSI-like bus.
fn scsi_hba(b: DiskBus) -> Option<(ScsiModel, &'static str)> {
    Some(match b {
        DiskBus::Scsi => (ScsiModel::Lsi53c895a, "scsi0"),
        DiskBus::Lsisas1068 => (ScsiModel::Mptsas1068, "sas0"),
        DiskBus::Megasas => (ScsiModel::MegasasGen2, "megasas0"),
        DiskBus::Pvscsi => (ScsiModel::Pvscsi, "pvscsi0"),
        DiskBus::VirtioScsi => (ScsiModel::VirtioScsi, "vscsi0"),
        DiskBus::Ide | DiskBus::Sata | DiskBus::VirtioBlk | DiskBus::Nvme | DiskBus::Buslogic => return None,
    })
}

/// Controller id of the one NVMe controller; its namespaces hang off it.
const NVME: &str = "nvme0";
/// The I/O thread of the virtio disk controllers.
const IOTHREAD: &str = "io0";

fn disk_devices(spec: &GuestSpec, images: &[DiskImage], args: &mut Vec<Arg>) -> Result<(), MapError> {
    let p = &spec.profile;
    const AHCI: &str = "ahci0";
    let has = |b: DiskBus| p.disks.iter().any(|d| d.bus == b);
    // Refuse what QEMU cannot run before emitting anything.
    for d in &p.disks {
        if d.bus == DiskBus::Buslogic {
            return Err(MapError::Unemulated {
                name: spec.name.clone(),
                unit: d.unit,
                device: "BusLogic BT-958 SCSI (buslogic)",
                suggest: "LSI Logic (bus = \"scsi\", VMware `lsilogic`)",
            });
        }
        if d.media == DiskMedia::Cdrom && !d.bus.takes_cdrom() {
            return Err(MapError::CdromBus {
                name: spec.name.clone(),
                bus: d.bus,
                unit: d.unit,
            });
        }
    }
    // On q35 SATA disks sit on the chipset's own ICH9 AHCI (buses ide.0..5),
    // as on a real Q35 board; on pc we add one AHCI controller.
    if has(DiskBus::Sata) && p.machine == Machine::Pc {
        args.push(Arg::Device(Device::Ahci { id: AHCI.into() }));
    }
    // Controllers in bus-rank order, so their auto-assigned PCI slots are
    // the same for the same profile.
    let mut buses: Vec<DiskBus> = p.disks.iter().map(|d| d.bus).collect();
    buses.sort_by_key(|b| bus_rank(*b));
    buses.dedup();
    // One I/O thread for the virtio controllers: their I/O, and the LUKS
    // cipher work of encrypted disks, leave the main loop (and the big QEMU
    // lock the vCPUs take on every device access).
    if buses.iter().any(|b| matches!(b, DiskBus::VirtioBlk | DiskBus::VirtioScsi)) {
        args.push(Arg::IoThread(IOTHREAD.into()));
    }
    let iothread = |b: DiskBus| matches!(b, DiskBus::VirtioBlk | DiskBus::VirtioScsi).then(|| IOTHREAD.to_string());
    for b in buses {
        if let Some((model, id)) = scsi_hba(b) {
            args.push(Arg::Device(Device::ScsiHba {
                model,
                id: id.into(),
                iothread: iothread(b),
            }));
        }
        if b == DiskBus::Nvme {
            // QEMU requires a serial; the guest shows it in
            // /sys/class/nvme/nvme0/serial and /dev/disk/by-id names. The
            // source's, when an NVMe disk has one (validation made them
            // agree: it is the controller's).
            let serial = p
                .disks
                .iter()
                .filter(|d| d.bus == DiskBus::Nvme)
                .find_map(disk_serial)
                .unwrap_or_else(|| NVME_DEFAULT_SERIAL.into());
            args.push(Arg::Device(Device::Nvme { id: NVME.into(), serial }));
        }
    }

    // Boot order: disks flagged boot, in profile order; none flagged → the first.
    let mut boot_order = p
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.boot)
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    if boot_order.is_empty() {
        boot_order.push(0);
    }
    let bootindex = |i: usize| boot_order.iter().position(|&b| b == i).and_then(|pos| u32::try_from(pos).ok());

    let mut order: Vec<usize> = (0..p.disks.len().min(images.len())).collect();
    order.sort_by_key(|&i| (bus_rank(p.disks[i].bus), p.disks[i].unit));
    for i in order {
        let (d, img) = (&p.disks[i], &images[i]);
        let drive = format!("disk{i}");
        // An encrypted disk is opened over QMP before devices exist
        // ([`qmp_blockdevs`]); its device refers to that node by the same id.
        if img.encryption == Encryption::None {
            args.push(Arg::Drive(Drive::Disk {
                id: drive.clone(),
                file: img.path.clone(),
                format: img.format,
                cache: img.cache,
                readonly: d.media == DiskMedia::Cdrom,
            }));
        }
        let bootindex = bootindex(i);
        let media = d.media;
        let dev = match (d.bus, p.machine) {
            // PIIX IDE: two buses, master (0) and slave (1) on each.
            (DiskBus::Ide, Machine::Pc) => Device::IdeHd {
                drive,
                bus: format!("ide.{}", d.unit / 2),
                unit: Some(d.unit % 2),
                bootindex,
                media,
                wwn: disk_wwn(d),
                serial: disk_serial(d),
            },
            (DiskBus::Ide, Machine::Q35) => {
                return Err(MapError::IdeOnQ35 {
                    name: spec.name.clone(),
                    unit: d.unit,
                })
            }
            (DiskBus::Sata, Machine::Pc) => Device::IdeHd {
                drive,
                bus: format!("{AHCI}.{}", d.unit),
                unit: None,
                bootindex,
                media,
                wwn: disk_wwn(d),
                serial: disk_serial(d),
            },
            (DiskBus::Sata, Machine::Q35) => Device::IdeHd {
                drive,
                bus: format!("ide.{}", d.unit),
                unit: None,
                bootindex,
                media,
                wwn: disk_wwn(d),
                serial: disk_serial(d),
            },
            (DiskBus::Scsi | DiskBus::Lsisas1068 | DiskBus::Megasas | DiskBus::Pvscsi | DiskBus::VirtioScsi | DiskBus::Buslogic, _) => {
                let Some((_, hba)) = scsi_hba(d.bus) else {
                    // Buslogic was refused above.
                    continue;
                };
                Device::ScsiHd {
                    drive,
                    bus: format!("{hba}.0"),
                    scsi_id: d.unit,
                    bootindex,
                    media,
                    wwn: disk_wwn(d),
                    serial: disk_serial(d),
                }
            }
            (DiskBus::VirtioBlk, _) => Device::VirtioBlk {
                drive,
                bootindex,
                iothread: iothread(DiskBus::VirtioBlk),
                serial: disk_serial(d),
            },
            (DiskBus::Nvme, _) => Device::NvmeNs {
                drive,
                bus: NVME.into(),
                nsid: u32::from(d.unit) + 1,
                bootindex,
            },
        };
        args.push(Arg::Device(dev));
    }
    Ok(())
}

/// The WWN a disk's device gets: the source's own from the profile, else on
/// the LSI SAS 1068 the derived [`sas_address`] (a SAS disk needs one), else
/// none (QEMU's default).
fn disk_wwn(d: &DiskSpec) -> Option<u64> {
    d.wwn
        .map(proto::Wwn::get)
        .or_else(|| (d.bus == DiskBus::Lsisas1068).then(|| sas_address(d.unit)))
}

/// The serial a disk's device reports: the source's, from the profile
/// (whose validation checked that its bus carries it whole).
fn disk_serial(d: &DiskSpec) -> Option<String> {
    d.serial.as_ref().map(|s| s.as_str().to_string())
}

/// The NVMe controller's serial when no NVMe disk of the profile has one.
const NVME_DEFAULT_SERIAL: &str = "ISTHMUS-NVME0";

/// The SAS address a disk on the LSI SAS 1068 gets when the profile has
/// none from its source: NAA 5 with QEMU's OUI 52:54:00 and the unit
/// number, so it is never 0 and stays the same on every start of the
/// profile. (QEMU's `mptsas1068` reports the `wwn` of each `scsi-hd` as its
/// SAS address, 0 by default, and Linux' `mptsas` ignores attached devices
/// with address 0: the controller came up and the disk never appeared.)
pub fn sas_address(unit: u8) -> u64 {
    (0x5 << 60) | (0x52_5400 << 36) | u64::from(unit)
}

/// A disk that QEMU opens over QMP during `-preconfig`, after its key was
/// handed over as a `secret` object: a LUKS qcow2 cannot be named on the
/// command line, because QEMU opens `-drive`s before the monitor accepts
/// commands and the secret must exist by then.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpBlockdev {
    /// Index in the profile's disks (and in the keys).
    pub disk: usize,
    /// Node name, the `drive=` of its device (`disk<N>`).
    pub node: String,
    /// Id of the secret object that must exist during `blockdev-add`.
    pub secret_id: String,
    /// The image file.
    pub path: std::path::PathBuf,
    /// Arguments of QMP `blockdev-add`.
    pub arguments: serde_json::Value,
}

/// The QMP-opened disks of a spec (its LUKS images), in disk order.
pub fn qmp_blockdevs(spec: &GuestSpec, images: &[DiskImage]) -> Vec<QmpBlockdev> {
    spec.profile
        .disks
        .iter()
        .zip(images)
        .enumerate()
        .filter(|(_, (_, img))| img.encryption == Encryption::Luks)
        .map(|(i, (d, img))| {
            let node = format!("disk{i}");
            let secret_id = format!("key-disk{i}");
            let read_only = d.media == DiskMedia::Cdrom;
            // QEMU docs, BlockdevOptionsQcow2 / QCryptoBlockOptionsLUKS; the
            // cache and aio settings are those `-drive cache=..,aio=threads` give.
            let arguments = serde_json::json!({
                "node-name": node,
                "driver": "qcow2",
                "read-only": read_only,
                "cache": { "direct": img.cache == CacheMode::None, "no-flush": false },
                "encrypt": { "format": "luks", "key-secret": secret_id },
                "file": {
                    "driver": "file",
                    "filename": img.path.to_string_lossy(),
                    "aio": "threads",
                    "read-only": read_only,
                    "cache": { "direct": img.cache == CacheMode::None, "no-flush": false },
                },
            });
            QmpBlockdev {
                disk: i,
                node,
                secret_id,
                path: img.path.clone(),
                arguments,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use proto::{DiskSpec, HardwareProfile, NicModel, NicSpec, Smbios};

    use super::*;
    use crate::qemu::args::{render, ImageFormat};
    use crate::qemu::host::Ovmf;

    const BUSES: [DiskBus; 9] = [
        DiskBus::Ide,
        DiskBus::Sata,
        DiskBus::Scsi,
        DiskBus::Lsisas1068,
        DiskBus::Megasas,
        DiskBus::Pvscsi,
        DiskBus::VirtioScsi,
        DiskBus::VirtioBlk,
        DiskBus::Nvme,
    ];
    const NICS: [NicModel; 6] = [
        NicModel::E1000,
        NicModel::E1000e,
        NicModel::Rtl8139,
        NicModel::Vmxnet3,
        NicModel::Pcnet,
        NicModel::VirtioNet,
    ];

    fn spec(machine: Machine, firmware: Firmware, bus: DiskBus, nic: NicModel) -> GuestSpec {
        GuestSpec {
            name: "web01".into(),
            profile: HardwareProfile {
                firmware,
                machine,
                cpus: 2,
                memory_mib: 512,
                disks: vec![disk(bus, 0, false), disk(bus, 1, true)],
                nics: vec![NicSpec {
                    model: nic,
                    mac: "52:54:00:12:34:56".parse().unwrap(),
                    pci_slot: Some("03.0".parse().unwrap()),
                }],
                smbios: Smbios {
                    manufacturer: Some("Dell Inc.".into()),
                    product: Some("PowerEdge R640".into()),
                    serial: Some("SRV,0001".into()),
                    uuid: Some("4c4c4544-0042-3510-8052-b4c04f4e3232".into()),
                },
            },
            disks: vec!["/srv/d0.qcow2".into(), "/srv/d1.img".into()],
            taps: vec!["tap-web01-0".into()],
            run_dir: "/run/isthmus/web01".into(),
            accel: AccelKind::Tcg,
        }
    }

    fn disk(bus: DiskBus, unit: u8, boot: bool) -> DiskSpec {
        DiskSpec::new(bus, unit, boot)
    }

    fn images(s: &GuestSpec) -> Vec<DiskImage> {
        s.disks
            .iter()
            .enumerate()
            .map(|(i, p)| DiskImage {
                path: p.clone(),
                format: if i == 0 { ImageFormat::Qcow2 } else { ImageFormat::Raw },
                cache: if i == 0 { CacheMode::None } else { CacheMode::Writeback },
                encryption: Encryption::None,
            })
            .collect()
    }

    fn host(ovmf: bool) -> HostFacts {
        HostFacts {
            qemu_version: "QEMU emulator version 10.0.2".into(),
            sandbox: true,
            ovmf: ovmf.then(|| Ovmf {
                code: PathBuf::from("/usr/share/OVMF/OVMF_CODE.fd"),
                vars_template: PathBuf::from("/usr/share/OVMF/OVMF_VARS.fd"),
            }),
            ovmf_secure: ovmf.then(|| Ovmf {
                code: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
                vars_template: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
            }),
        }
    }

    #[test]
    fn secure_boot_uses_the_secboot_build_with_smm_on_q35_only() {
        let mut s = spec(Machine::Q35, Firmware::EfiSecureBoot, DiskBus::Sata, NicModel::E1000e);
        let a = map(&s, &host(true)).unwrap();
        expect(
            &a,
            "-drive",
            &["if=pflash", "unit=0", "file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "readonly=on"],
        );
        expect(&a, "-drive", &["if=pflash", "unit=1", "file=/run/isthmus/web01/efi-vars.fd"]);
        expect(&a, "-machine", &["smm=on"]);
        expect(&a, "-global", &["driver=cfi.pflash01", "property=secure", "value=on"]);
        let e = map(&s, &host(false)).unwrap_err();
        assert!(e.to_string().contains("OVMF_VARS_4M.ms.fd"), "{e}");
        s.profile.machine = Machine::Pc;
        s.profile.disks[0].bus = DiskBus::Ide;
        let e = map(&s, &host(true)).unwrap_err();
        assert!(e.to_string().contains("q35"), "{e}");
        let plain = map(&spec(Machine::Q35, Firmware::Efi, DiskBus::Sata, NicModel::E1000e), &host(true)).unwrap();
        assert!(find(&plain, "-global", &["property=secure"]).is_none());
    }

    fn map(s: &GuestSpec, h: &HostFacts) -> Result<Vec<String>, MapError> {
        s.validate().unwrap();
        build(s, &images(s), h).map(|a| render(&a))
    }

    /// Index of the value that follows option `opt` and contains all `parts`.
    fn find(args: &[String], opt: &str, parts: &[&str]) -> Option<usize> {
        args.windows(2)
            .position(|w| w[0] == opt && parts.iter().all(|p| w[1].split(',').any(|kv| kv == *p)))
    }

    fn expect(args: &[String], opt: &str, parts: &[&str]) -> usize {
        find(args, opt, parts).unwrap_or_else(|| panic!("no {opt} with {parts:?} in {args:?}"))
    }

    /// Every bus × NIC × firmware × machine, with the devices each must give.
    #[test]
    fn table_bus_nic_firmware_machine() {
        for machine in [Machine::Pc, Machine::Q35] {
            for firmware in [Firmware::Bios, Firmware::Efi] {
                for bus in BUSES {
                    for nic in NICS {
                        let s = spec(machine, firmware, bus, nic);
                        let ctx = format!("{machine:?}/{firmware:?}/{bus:?}/{nic:?}");
                        if bus == DiskBus::Ide && machine == Machine::Q35 {
                            let e = map(&s, &host(true)).unwrap_err();
                            assert!(matches!(e, MapError::IdeOnQ35 { .. }), "{ctx}: {e}");
                            continue;
                        }
                        if firmware == Firmware::Efi {
                            let e = map(&s, &host(false)).unwrap_err();
                            assert!(matches!(e, MapError::OvmfMissing { .. }), "{ctx}: {e}");
                            assert!(e.to_string().contains("ovmf"), "{e}");
                        }
                        let a = map(&s, &host(true)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        check_common(&a, machine, firmware);
                        check_disks(&a, machine, bus);
                        check_nic(&a, machine, nic);
                    }
                }
            }
        }
    }

    fn check_common(a: &[String], machine: Machine, firmware: Firmware) {
        let m = match machine {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        };
        expect(a, "-machine", &[m]);
        expect(a, "-accel", &["tcg"]);
        assert!(find(a, "-cpu", &["host"]).is_none(), "-cpu host without KVM: {a:?}");
        expect(a, "-smp", &["2"]);
        expect(a, "-m", &["512M"]);
        assert!(a.iter().any(|x| x == "-nodefaults"));
        expect(a, "-name", &["web01", "process=isthmus-web01"]);
        expect(a, "-uuid", &["4c4c4544-0042-3510-8052-b4c04f4e3232"]);
        let i = expect(a, "-smbios", &["type=1", "manufacturer=Dell Inc.", "product=PowerEdge R640"]);
        assert!(a[i + 1].contains("serial=SRV,,0001"), "comma not doubled: {}", a[i + 1]);
        assert!(a[i + 1].contains("uuid=4c4c4544-0042-3510-8052-b4c04f4e3232"));
        expect(a, "-display", &["none"]);
        expect(
            a,
            "-chardev",
            &[
                "socket",
                "id=serial0",
                "path=/run/isthmus/web01/serial.sock",
                "server=on",
                "wait=off",
                "logfile=/run/isthmus/web01/serial.log",
                "logappend=off",
            ],
        );
        expect(a, "-serial", &["chardev:serial0"]);
        expect(a, "-vnc", &["unix:/run/isthmus/web01/vnc.sock"]);
        assert!(!a.iter().any(|x| x == "-preconfig"), "plain disks need no preconfig");
        expect(a, "-qmp", &["unix:/run/isthmus/web01/qmp.sock", "server=on", "wait=off"]);
        expect(a, "-pidfile", &["/run/isthmus/web01/qemu.pid"]);
        expect(a, "-sandbox", &["on", "obsolete=deny", "resourcecontrol=deny"]);
        assert!(a.iter().any(|x| x == "-daemonize"));
        match firmware {
            Firmware::Bios => assert!(find(a, "-drive", &["if=pflash"]).is_none()),
            Firmware::Efi => {
                expect(
                    a,
                    "-drive",
                    &["if=pflash", "unit=0", "file=/usr/share/OVMF/OVMF_CODE.fd", "readonly=on"],
                );
                expect(a, "-drive", &["if=pflash", "unit=1", "file=/run/isthmus/web01/efi-vars.fd"]);
            }
            Firmware::EfiSecureBoot => unreachable!("the table has no Secure Boot row"),
        }
    }

    fn check_disks(a: &[String], machine: Machine, bus: DiskBus) {
        expect(
            a,
            "-drive",
            &[
                "if=none",
                "id=disk0",
                "file=/srv/d0.qcow2",
                "format=qcow2",
                "cache=none",
                "aio=threads",
            ],
        );
        expect(
            a,
            "-drive",
            &["if=none", "id=disk1", "file=/srv/d1.img", "format=raw", "cache=writeback"],
        );
        // disk1 is flagged boot, disk0 is not.
        let (d0, d1) = match (bus, machine) {
            (DiskBus::Ide, _) => {
                assert!(find(a, "-device", &["ahci"]).is_none());
                (
                    expect(a, "-device", &["ide-hd", "drive=disk0", "bus=ide.0", "unit=0"]),
                    expect(a, "-device", &["ide-hd", "drive=disk1", "bus=ide.0", "unit=1", "bootindex=0"]),
                )
            }
            (DiskBus::Sata, Machine::Pc) => {
                expect(a, "-device", &["ahci", "id=ahci0"]);
                assert_eq!(a.iter().filter(|x| x.starts_with("ahci,")).count(), 1, "one AHCI controller");
                (
                    expect(a, "-device", &["ide-hd", "drive=disk0", "bus=ahci0.0"]),
                    expect(a, "-device", &["ide-hd", "drive=disk1", "bus=ahci0.1", "bootindex=0"]),
                )
            }
            (DiskBus::Sata, Machine::Q35) => {
                assert!(find(a, "-device", &["ahci"]).is_none(), "q35 uses its ICH9 AHCI");
                (
                    expect(a, "-device", &["ide-hd", "drive=disk0", "bus=ide.0"]),
                    expect(a, "-device", &["ide-hd", "drive=disk1", "bus=ide.1", "bootindex=0"]),
                )
            }
            (DiskBus::Scsi | DiskBus::Lsisas1068 | DiskBus::Megasas | DiskBus::Pvscsi | DiskBus::VirtioScsi, _) => {
                let (driver, id) = match bus {
                    DiskBus::Scsi => ("lsi53c895a", "scsi0"),
                    DiskBus::Lsisas1068 => ("mptsas1068", "sas0"),
                    DiskBus::Megasas => ("megasas-gen2", "megasas0"),
                    DiskBus::Pvscsi => ("pvscsi", "pvscsi0"),
                    _ => ("virtio-scsi-pci", "vscsi0"),
                };
                expect(a, "-device", &[driver, &format!("id={id}")]);
                assert_eq!(a.iter().filter(|x| x.starts_with(driver)).count(), 1, "one {driver}");
                let b = format!("bus={id}.0");
                let d = (
                    expect(a, "-device", &["scsi-hd", "drive=disk0", &b, "scsi-id=0", "lun=0"]),
                    expect(a, "-device", &["scsi-hd", "drive=disk1", &b, "scsi-id=1", "bootindex=0"]),
                );
                // Only SAS disks carry an address, and never 0.
                let sas = bus == DiskBus::Lsisas1068;
                assert_eq!(a[d.0 + 1].contains("wwn=0x5525400000000000"), sas, "{}", a[d.0 + 1]);
                assert_eq!(a[d.1 + 1].contains("wwn=0x5525400000000001"), sas, "{}", a[d.1 + 1]);
                assert_eq!(a[d.1 + 1].contains("wwn="), sas, "{}", a[d.1 + 1]);
                d
            }
            (DiskBus::Nvme, _) => {
                expect(a, "-device", &["nvme", "id=nvme0", "serial=ISTHMUS-NVME0"]);
                assert_eq!(a.iter().filter(|x| x.starts_with("nvme,")).count(), 1, "one NVMe controller");
                (
                    expect(a, "-device", &["nvme-ns", "drive=disk0", "bus=nvme0", "nsid=1"]),
                    expect(a, "-device", &["nvme-ns", "drive=disk1", "bus=nvme0", "nsid=2", "bootindex=0"]),
                )
            }
            (DiskBus::Buslogic, _) => unreachable!("not in BUSES"),
            (DiskBus::VirtioBlk, _) => (
                expect(a, "-device", &["virtio-blk-pci", "drive=disk0"]),
                expect(a, "-device", &["virtio-blk-pci", "drive=disk1", "bootindex=0"]),
            ),
        };
        assert!(!a[d0 + 1].contains("bootindex"), "disk0 must not boot: {}", a[d0 + 1]);
        assert!(d0 < d1, "units in order");
    }

    fn check_nic(a: &[String], machine: Machine, nic: NicModel) {
        let driver = crate::qemu::args::nic_driver(nic);
        let bus = match machine {
            Machine::Pc => "bus=pci.0",
            Machine::Q35 => "bus=pcie.0",
        };
        expect(a, "-netdev", &["tap", "id=n0", "ifname=tap-web01-0", "script=no", "downscript=no"]);
        let n = expect(a, "-device", &[driver, "netdev=n0", "mac=52:54:00:12:34:56", bus, "addr=0x03.0"]);
        let vga = expect(a, "-device", &["VGA", bus]);
        assert!(n < vga, "fixed-slot NIC before the auto-placed VGA: {a:?}");
    }

    #[test]
    fn buslogic_is_a_fit_error_that_suggests_lsilogic() {
        let s = spec(Machine::Pc, Firmware::Bios, DiskBus::Buslogic, NicModel::E1000);
        let e = map(&s, &host(false)).unwrap_err();
        assert!(matches!(e, MapError::Unemulated { unit: 0, .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("BusLogic") && m.contains("buslogic") && m.contains("LSI Logic"), "{m}");
    }

    /// A source WWN in the profile reaches the drive on every bus that
    /// has one, and replaces the derived SAS address on `lsisas1068`.
    #[test]
    fn source_wwn_is_kept() {
        let wwn: proto::Wwn = "0x5000c500a1b2c3d4".parse().unwrap();
        for (machine, bus, driver) in [
            (Machine::Pc, DiskBus::Lsisas1068, "scsi-hd"),
            (Machine::Pc, DiskBus::Megasas, "scsi-hd"),
            (Machine::Q35, DiskBus::VirtioScsi, "scsi-hd"),
            (Machine::Pc, DiskBus::Ide, "ide-hd"),
            (Machine::Q35, DiskBus::Sata, "ide-hd"),
        ] {
            let mut s = spec(machine, Firmware::Bios, bus, NicModel::E1000);
            s.profile.disks[0].wwn = Some(wwn);
            s.profile.validate().unwrap();
            let a = map(&s, &host(false)).unwrap();
            let d0 = expect(&a, "-device", &[driver, "drive=disk0", "wwn=0x5000c500a1b2c3d4"]);
            assert!(!a[d0 + 1].contains("wwn=0x55254"), "{}", a[d0 + 1]);
            // The second disk has no source WWN: derived on SAS, none elsewhere.
            let d1 = expect(&a, "-device", &[driver, "drive=disk1"]);
            assert_eq!(
                a[d1 + 1].contains("wwn=0x5525400000000001"),
                bus == DiskBus::Lsisas1068,
                "{}",
                a[d1 + 1]
            );
            assert_eq!(a[d1 + 1].contains("wwn="), bus == DiskBus::Lsisas1068, "{}", a[d1 + 1]);
        }
    }

    /// A source serial reaches the drive on every bus, commas doubled; a
    /// SCSI serial beyond 20 bytes is given as `device_id` too; on NVMe it
    /// is the controller's.
    #[test]
    fn source_serial_is_kept() {
        let serial = |v: &str| Some(v.parse::<proto::DiskSerial>().unwrap());
        for (machine, bus, driver) in [
            (Machine::Pc, DiskBus::Ide, "ide-hd"),
            (Machine::Pc, DiskBus::Sata, "ide-hd"),
            (Machine::Q35, DiskBus::Sata, "ide-hd"),
            (Machine::Pc, DiskBus::Scsi, "scsi-hd"),
            (Machine::Pc, DiskBus::Lsisas1068, "scsi-hd"),
            (Machine::Q35, DiskBus::VirtioScsi, "scsi-hd"),
            (Machine::Q35, DiskBus::VirtioBlk, "virtio-blk-pci"),
        ] {
            let mut s = spec(machine, Firmware::Bios, bus, NicModel::E1000);
            s.profile.disks[0].serial = serial("SN,0001");
            s.profile.validate().unwrap();
            let a = map(&s, &host(false)).unwrap();
            let d0 = expect(&a, "-device", &[driver, "drive=disk0"]);
            assert!(
                a[d0 + 1].ends_with(",serial=SN,,0001") || a[d0 + 1].contains(",serial=SN,,0001,"),
                "{}",
                a[d0 + 1]
            );
            assert!(!a[d0 + 1].contains("device_id"), "{}", a[d0 + 1]);
            let d1 = expect(&a, "-device", &[driver, "drive=disk1"]);
            assert!(!a[d1 + 1].contains("serial="), "no source serial, none given: {}", a[d1 + 1]);
        }
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::Pvscsi, NicModel::E1000);
        s.profile.disks[0].serial = serial("6000c29a1b2c3d4e5f60718293a4b5c6");
        s.profile.disks[0].media = DiskMedia::Cdrom;
        s.profile.validate().unwrap();
        let a = map(&s, &host(false)).unwrap();
        expect(
            &a,
            "-device",
            &[
                "scsi-cd",
                "drive=disk0",
                "serial=6000c29a1b2c3d4e5f60718293a4b5c6",
                "device_id=6000c29a1b2c3d4e5f60718293a4b5c6",
            ],
        );
        // The second NVMe disk's serial: the controller takes it.
        let mut s = spec(Machine::Q35, Firmware::Bios, DiskBus::Nvme, NicModel::E1000);
        s.profile.disks[1].serial = serial("S4EWNX0R123456");
        s.profile.validate().unwrap();
        let a = map(&s, &host(false)).unwrap();
        expect(&a, "-device", &["nvme", "id=nvme0", "serial=S4EWNX0R123456"]);
    }

    #[test]
    fn cdroms_and_mixed_buses() {
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::Ide, NicModel::E1000);
        s.profile.disks = vec![
            disk(DiskBus::Pvscsi, 0, true),
            DiskSpec {
                media: DiskMedia::Cdrom,
                ..disk(DiskBus::Ide, 2, false)
            },
            DiskSpec {
                media: DiskMedia::Cdrom,
                ..disk(DiskBus::Lsisas1068, 3, false)
            },
            disk(DiskBus::Nvme, 0, false),
            DiskSpec {
                media: DiskMedia::Cdrom,
                ..disk(DiskBus::Sata, 1, false)
            },
        ];
        s.disks = (0..5).map(|i| PathBuf::from(format!("/srv/d{i}"))).collect();
        let a = map(&s, &host(false)).unwrap();
        expect(
            &a,
            "-device",
            &["scsi-hd", "drive=disk0", "bus=pvscsi0.0", "scsi-id=0", "bootindex=0"],
        );
        expect(&a, "-device", &["ide-cd", "drive=disk1", "bus=ide.1", "unit=0"]);
        expect(&a, "-drive", &["id=disk1", "readonly=on"]);
        expect(&a, "-device", &["scsi-cd", "drive=disk2", "bus=sas0.0", "scsi-id=3"]);
        expect(&a, "-device", &["nvme-ns", "drive=disk3", "bus=nvme0", "nsid=1"]);
        expect(&a, "-device", &["ide-cd", "drive=disk4", "bus=ahci0.1"]);
        assert!(
            find(&a, "-drive", &["id=disk0", "readonly=on"]).is_none(),
            "hard disks stay writable"
        );
        // Controllers in a fixed order: AHCI, LSI SAS, pvscsi, NVMe.
        let pos = |d: &str| a.iter().position(|x| x.starts_with(d)).unwrap();
        assert!(pos("ahci,") < pos("mptsas1068,") && pos("mptsas1068,") < pos("pvscsi,") && pos("pvscsi,") < pos("nvme,"));
        // Boot order: only the flagged disk.
        assert_eq!(a.iter().filter(|x| x.contains("bootindex")).count(), 1);

        // A CD-ROM on NVMe is refused (profile validation catches it first).
        s.profile.disks[3].media = DiskMedia::Cdrom;
        assert!(matches!(s.validate(), Err(crate::spec::SpecError::Profile { .. })));
        let e = build(&s, &images(&s), &host(false)).unwrap_err();
        assert!(matches!(e, MapError::CdromBus { bus: DiskBus::Nvme, .. }), "{e}");
    }

    /// A LUKS disk has no `-drive` (QEMU would open it before the key
    /// exists): QEMU waits in preconfig and the disk is a QMP blockdev whose
    /// node the device names; the key itself appears nowhere.
    #[test]
    fn luks_disks_are_opened_over_qmp() {
        let s = spec(Machine::Pc, Firmware::Bios, DiskBus::Sata, NicModel::E1000);
        let mut imgs = images(&s);
        imgs[1].encryption = Encryption::Luks;
        s.validate().unwrap();
        let a = render(&build(&s, &imgs, &host(false)).unwrap());
        expect(&a, "-drive", &["id=disk0", "file=/srv/d0.qcow2"]);
        assert!(find(&a, "-drive", &["id=disk1"]).is_none(), "{a:?}");
        expect(&a, "-device", &["ide-hd", "drive=disk1", "bus=ahci0.1", "bootindex=0"]);
        assert!(a.iter().any(|x| x == "-preconfig"));
        assert!(!a.iter().any(|x| x.contains("secret")), "{a:?}");
        let b = qmp_blockdevs(&s, &imgs);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].disk, b[0].node.as_str(), b[0].secret_id.as_str()), (1, "disk1", "key-disk1"));
        let v = &b[0].arguments;
        assert_eq!(v["node-name"], "disk1");
        assert_eq!(v["encrypt"]["format"], "luks");
        assert_eq!(v["encrypt"]["key-secret"], "key-disk1");
        assert_eq!(v["file"]["filename"], "/srv/d1.img");
        assert_eq!(v["file"]["cache"]["direct"], false, "d1 is on a writeback file system");
    }

    #[test]
    fn kvm_adds_cpu_host() {
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::Ide, NicModel::E1000);
        s.accel = AccelKind::Kvm;
        let a = map(&s, &host(false)).unwrap();
        expect(&a, "-accel", &["kvm"]);
        expect(&a, "-cpu", &["host"]);
    }

    #[test]
    fn ide_units_spread_over_two_buses() {
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::Ide, NicModel::E1000);
        s.profile.disks = (0..4).map(|unit| disk(DiskBus::Ide, unit, unit == 0)).collect();
        s.disks = (0..4).map(|i| PathBuf::from(format!("/srv/d{i}"))).collect();
        let a = map(&s, &host(false)).unwrap();
        expect(&a, "-device", &["ide-hd", "drive=disk0", "bus=ide.0", "unit=0", "bootindex=0"]);
        expect(&a, "-device", &["ide-hd", "drive=disk1", "bus=ide.0", "unit=1"]);
        expect(&a, "-device", &["ide-hd", "drive=disk2", "bus=ide.1", "unit=0"]);
        expect(&a, "-device", &["ide-hd", "drive=disk3", "bus=ide.1", "unit=1"]);
    }

    #[test]
    fn no_boot_flag_boots_first_disk_and_no_smbios_when_empty() {
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::VirtioBlk, NicModel::VirtioNet);
        s.profile.disks.iter_mut().for_each(|d| d.boot = false);
        s.profile.smbios = Smbios::default();
        let a = map(&s, &host(false)).unwrap();
        expect(&a, "-device", &["virtio-blk-pci", "drive=disk0", "bootindex=0"]);
        assert!(!a.iter().any(|x| x == "-smbios" || x == "-uuid"), "{a:?}");
        assert!(!a.iter().any(|x| x == "-sandbox") || host(false).sandbox);
    }

    #[test]
    fn multifunction_slots() {
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::Ide, NicModel::E1000);
        s.profile.nics.push(NicSpec {
            model: NicModel::E1000,
            mac: "52:54:00:12:34:57".parse().unwrap(),
            pci_slot: Some("03.1".parse().unwrap()),
        });
        s.profile.nics.push(NicSpec {
            model: NicModel::Rtl8139,
            mac: "52:54:00:12:34:58".parse().unwrap(),
            pci_slot: None,
        });
        s.taps = vec!["t0".into(), "t1".into(), "t2".into()];
        let a = map(&s, &host(false)).unwrap();
        let f0 = expect(&a, "-device", &["e1000", "netdev=n0", "addr=0x03.0", "multifunction=on"]);
        let f1 = expect(&a, "-device", &["e1000", "netdev=n1", "addr=0x03.1"]);
        let vga = expect(&a, "-device", &["VGA"]);
        let floating = expect(&a, "-device", &["rtl8139", "netdev=n2"]);
        assert!(f0 < f1 && f1 < vga && vga < floating, "{a:?}");
        assert!(!a[floating + 1].contains("addr="));

        s.profile.nics[0].pci_slot = Some("04.0".parse().unwrap());
        let e = map(&s, &host(false)).unwrap_err();
        assert!(matches!(e, MapError::PciFunctionZero { .. }), "{e}");
        assert!(e.to_string().contains("03.1"), "{e}");
    }

    #[test]
    fn bad_smbios_values() {
        let mut s = spec(Machine::Pc, Firmware::Bios, DiskBus::Ide, NicModel::E1000);
        s.profile.smbios.uuid = Some("not-a-uuid".into());
        assert!(matches!(map(&s, &host(false)), Err(MapError::Uuid { .. })));
        s.profile.smbios.uuid = None;
        s.profile.smbios.serial = Some("a\nb".into());
        assert!(matches!(map(&s, &host(false)), Err(MapError::SmbiosValue { field: "serial", .. })));
    }

    #[test]
    fn spec_errors_come_before_mapping() {
        let s = spec(Machine::Pc, Firmware::Bios, DiskBus::Ide, NicModel::E1000);
        let mut bad = s.clone();
        bad.disks.pop();
        assert!(matches!(
            bad.validate(),
            Err(crate::spec::SpecError::DiskCount { profile: 2, files: 1, .. })
        ));
        let mut bad = s.clone();
        bad.taps.push("extra".into());
        assert!(matches!(bad.validate(), Err(crate::spec::SpecError::TapCount { .. })));
        let mut bad = s.clone();
        bad.name = "../etc".into();
        assert!(matches!(bad.validate(), Err(crate::spec::SpecError::Name(_))));
        let mut bad = s.clone();
        bad.profile.cpus = 0;
        assert!(matches!(bad.validate(), Err(crate::spec::SpecError::Profile { .. })));
        let mut bad = s.clone();
        bad.run_dir = Path::new("relative").into();
        assert!(matches!(bad.validate(), Err(crate::spec::SpecError::RunDir { .. })));
        let mut bad = s;
        bad.taps = vec!["much-too-long-tap-name".into()];
        assert!(matches!(bad.validate(), Err(crate::spec::SpecError::TapName { .. })));
    }

    /// The public entry point, on real files: EFI works when OVMF is
    /// installed on this host, else it is the fit error.
    #[test]
    fn qemu_args_on_real_files() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d0");
        std::fs::write(&disk, b"QFI\xfb").unwrap();
        let mut s = spec(Machine::Pc, Firmware::Efi, DiskBus::Ide, NicModel::E1000);
        s.profile.disks.truncate(1);
        s.profile.disks[0].boot = true;
        s.disks = vec![disk.clone()];
        let r = crate::qemu_args(&s);
        if Ovmf::find_in(Path::new(OVMF_DIR)).is_some() {
            let a = r.unwrap();
            expect(&a, "-drive", &["if=pflash", "unit=0", "readonly=on"]);
        } else {
            let e = r.unwrap_err();
            assert!(matches!(e, crate::Error::Map(MapError::OvmfMissing { .. })), "{e}");
        }
        s.profile.firmware = Firmware::Bios;
        let a = crate::qemu_args(&s).unwrap();
        let file = format!("file={}", disk.display());
        expect(&a, "-drive", &["id=disk0", &file, "format=qcow2"]);
        expect(&a, "-device", &["ide-hd", "drive=disk0", "bus=ide.0", "unit=0", "bootindex=0"]);
    }
}
