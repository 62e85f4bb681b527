//! Inside-the-guest fidelity: for a set of (machine × disk bus × NIC model)
//! combinations the test server boots with a profile, and its own root shell
//! (over the serial console socket) reports what it sees: block device
//! names, the MAC, the PCI vendor:device at the profile's slot, the disk
//! controller's PCI ids, the SMBIOS serial and UUID, and the firmware kind.
//! The busybox guest has no udev, so `/dev/disk/by-path` does not exist;
//! the checks read `/sys` instead (what `lsblk`/`lspci`/`dmidecode` read).

mod support;

use std::time::Duration;

use hv::{Guest, GuestSpec, SerialConsole};
use proto::api::AccelKind;
use proto::profile::DiskMedia;
use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec, Smbios};
use support::{in_fresh_netns, overlay, test_server_dir, unique_tap, QemuReaper, TapGuard};

const MAC: &str = "52:54:00:12:34:56";

struct Case {
    label: &'static str,
    machine: Machine,
    bus: DiskBus,
    nic: NicModel,
    slot: &'static str,
    /// PCI vendor:device of the NIC (Linux sysfs form, `0x8086:0x100e`).
    nic_ids: &'static str,
    /// PCI vendor:device of the disk controller, when it is a PCI device
    /// of its own.
    controller_ids: Option<&'static str>,
    /// Block device of the root disk in the guest.
    root_disk: &'static str,
    /// Add an IDE CD-ROM (secondary master), seen as `sr0`.
    cdrom: bool,
    /// Add a small virtio-blk data disk with a source serial
    /// ([`VIRTIO_SERIAL`]), seen as `vda`.
    virtio_data: bool,
}

/// The serial the virtio-blk data disk had at its source.
const VIRTIO_SERIAL: &str = "VIO,DATA-0001";

/// The serial the root disk had at its source: one per case, with a comma
/// (which hv doubles on QEMU's command line) and at most 20 bytes.
fn root_serial(c: &Case) -> String {
    format!("SN,{}-0001", c.label.to_ascii_uppercase())
}

/// The SAS address the LSI SAS 1068 case's disk had at its source (a
/// Seagate-style NAA 5 WWN): the guest must read this one, not the
/// address hv derives when a profile has none.
const SOURCE_SAS_ADDRESS: &str = "0x5000c500a1b2c3d4";

fn profile(c: &Case, n: u32) -> HardwareProfile {
    let mut disks = vec![DiskSpec {
        bus: c.bus,
        unit: 0,
        boot: true,
        media: DiskMedia::Disk,
        wwn: (c.bus == DiskBus::Lsisas1068).then(|| SOURCE_SAS_ADDRESS.parse().unwrap()),
        serial: Some(root_serial(c).parse().unwrap()),
    }];
    if c.cdrom {
        disks.push(DiskSpec {
            media: DiskMedia::Cdrom,
            ..DiskSpec::new(DiskBus::Ide, 2, false)
        });
    }
    if c.virtio_data {
        disks.push(DiskSpec {
            serial: Some(VIRTIO_SERIAL.parse().unwrap()),
            ..DiskSpec::new(DiskBus::VirtioBlk, 0, false)
        });
    }
    HardwareProfile {
        firmware: Firmware::Bios,
        machine: c.machine,
        cpus: 1,
        memory_mib: 256,
        disks,
        nics: vec![NicSpec {
            model: c.nic,
            mac: MAC.parse().unwrap(),
            pci_slot: Some(c.slot.parse().unwrap()),
        }],
        smbios: Smbios {
            manufacturer: Some("Isthmus Test".into()),
            product: Some("Fidelity".into()),
            serial: Some(format!("FID-{n}-{}", c.label)),
            uuid: Some(format!("4c4c4544-0042-3510-8052-b4c04f4e32{n:02}")),
        },
    }
}

fn sh(con: &mut SerialConsole, cmd: &str) -> String {
    let r = con.run(cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_eq!(r.status, 0, "{cmd}: {r:?}");
    r.output
}

fn check(c: Case, n: u32) {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let tmp = tempfile::tempdir().unwrap();
        let mut disks = vec![overlay(&server.join("disk.qcow2"), tmp.path())];
        if c.cdrom {
            let iso = tmp.path().join("cd.iso");
            std::fs::write(&iso, vec![0u8; 2 << 20]).unwrap();
            disks.push(iso);
        }
        if c.virtio_data {
            let data = tmp.path().join("data.img");
            std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
            disks.push(data);
        }
        let tap = TapGuard::create(&unique_tap());
        let run_dir = tmp.path().join("run");
        let _reaper = QemuReaper(run_dir.clone());
        let p = profile(&c, n);
        let spec = GuestSpec {
            name: format!("hvfid-{}", c.label),
            profile: p.clone(),
            disks,
            taps: vec![tap.0.clone()],
            run_dir,
            accel: AccelKind::Tcg,
        };
        let g = Guest::launch(&spec).unwrap_or_else(|e| panic!("{}: {e}", c.label));
        if c.root_disk == "sda" {
            g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(180))
                .unwrap_or_else(|e| panic!("{}: {e}", c.label));
        } else {
            // fstab names /dev/sda1, as on the source: a server whose root
            // was on NVMe would name nvme0n1p1. The guest says so and keeps
            // its console shell, which is what this test reads.
            let l = g
                .wait_for_serial("ISTHMUS-FAILED", Duration::from_secs(180))
                .unwrap_or_else(|e| panic!("{}: {e}", c.label));
            assert!(l.contains(&format!("root_dev=/dev/{}p1", c.root_disk)), "{}: {l}", c.label);
        }
        let mut con = g.serial_console(Duration::from_secs(5)).unwrap();
        con.send(b"\n").unwrap();
        if c.root_disk != "sda" {
            // rcS stopped before loading the NIC drivers; load them by hand.
            sh(
                &mut con,
                "cat /sys/bus/pci/devices/*/modalias | sort -u | xargs modprobe -qa 2>/dev/null; true",
            );
        }

        let blocks = sh(&mut con, "ls /sys/block");
        let blocks: Vec<&str> = blocks.split_whitespace().collect();
        assert!(blocks.contains(&c.root_disk), "{}: /sys/block = {blocks:?}", c.label);
        assert_eq!(c.cdrom, blocks.contains(&"sr0"), "{}: CD-ROM as sr0: {blocks:?}", c.label);

        let links = sh(&mut con, "ip link");
        assert!(links.contains(&format!("link/ether {MAC}")), "{}: {links}", c.label);

        let dev = format!("/sys/bus/pci/devices/0000:00:{}", c.slot);
        let ids = sh(
            &mut con,
            &format!("echo $(cat {dev}/vendor):$(cat {dev}/device) $(cat {dev}/class)"),
        );
        let (got_ids, class) = ids.split_once(' ').unwrap_or((&ids, ""));
        assert_eq!(got_ids, c.nic_ids, "{}: PCI ids at {}", c.label, c.slot);
        assert!(
            class.starts_with("0x0200"),
            "{}: class {class} at {} is not Ethernet",
            c.label,
            c.slot
        );

        if let Some(ctrl) = c.controller_ids {
            let all = sh(
                &mut con,
                "for d in /sys/bus/pci/devices/*; do echo $(cat $d/vendor):$(cat $d/device); done",
            );
            assert!(all.lines().any(|l| l.trim() == ctrl), "{}: no controller {ctrl} in {all}", c.label);
        }

        if c.bus == DiskBus::Lsisas1068 {
            // The SAS transport's view (what mptsas attached by) and the
            // disk's own device identification page (udev's wwn-0x… link).
            let addr = sh(&mut con, "cat /sys/class/sas_device/end_device-*/sas_address");
            assert_eq!(addr.trim(), SOURCE_SAS_ADDRESS, "{}: SAS address", c.label);
            let wwid = sh(&mut con, &format!("cat /sys/block/{}/device/wwid", c.root_disk));
            let naa = SOURCE_SAS_ADDRESS.trim_start_matches("0x");
            assert_eq!(wwid.trim(), format!("naa.{naa}"), "{}: WWID", c.label);
        }

        // The disks' serials, from the sysfs files udev's by-id rules read
        // (the busybox guest has no udev): ATA and SCSI disks' unit serial
        // number VPD page (0x80; libata translates ATA IDENTIFY words
        // 10-19 into it) → ata-…_<serial> / scsi-…; the NVMe controller's
        // serial → nvme-…_<serial>; virtio-blk's id → virtio-<serial>.
        let want = root_serial(&c);
        let got = if c.root_disk.starts_with("nvme") {
            sh(&mut con, "cat /sys/class/nvme/nvme0/serial")
        } else {
            sh(&mut con, &format!("tail -c +5 /sys/block/{}/device/vpd_pg80; echo", c.root_disk))
        };
        assert_eq!(got.trim(), want, "{}: root disk serial", c.label);
        let mut serials = vec![format!("{}={}", c.root_disk, got.trim())];
        if c.virtio_data {
            let got = sh(&mut con, "cat /sys/block/vda/serial; echo");
            assert_eq!(got.trim(), VIRTIO_SERIAL, "{}: virtio-blk serial", c.label);
            serials.push(format!("vda={}", got.trim()));
        }

        let serial = sh(&mut con, "cat /sys/class/dmi/id/product_serial");
        assert_eq!(Some(serial.trim()), p.smbios.serial.as_deref(), "{}", c.label);
        let uuid = sh(&mut con, "cat /sys/class/dmi/id/product_uuid");
        assert_eq!(Some(uuid.trim()), p.smbios.uuid.as_deref(), "{}", c.label);
        let vendor = sh(&mut con, "cat /sys/class/dmi/id/sys_vendor /sys/class/dmi/id/product_name");
        assert_eq!(
            vendor.lines().map(str::trim).collect::<Vec<_>>(),
            ["Isthmus Test", "Fidelity"],
            "{}",
            c.label
        );
        let fw = sh(&mut con, "[ -d /sys/firmware/efi ] && echo efi || echo bios");
        assert_eq!(fw.trim(), "bios", "{}", c.label);
        eprintln!("{}: ok ({blocks:?}, nic {got_ids} at {}, serials {serials:?})", c.label, c.slot);
        drop(con);
        g.kill().unwrap();
    });
}

/// LSI SAS 1068 as VMware's `lsisas1068` (with its usual e1000): the disk
/// appears only because each SAS disk gets a non-zero SAS address
/// (`scsi-hd wwn=`); here the profile carries the source's own address
/// ([`SOURCE_SAS_ADDRESS`]) and the guest's SAS transport and the disk's
/// WWID show it.
#[test]
fn lsisas1068_e1000_on_pc() {
    check(
        Case {
            label: "lsisas",
            machine: Machine::Pc,
            bus: DiskBus::Lsisas1068,
            nic: NicModel::E1000,
            slot: "05.0",
            nic_ids: "0x8086:0x100e",
            controller_ids: Some("0x1000:0x0054"),
            root_disk: "sda",
            cdrom: false,
            virtio_data: false,
        },
        8,
    );
}

/// SATA root disk plus a virtio-blk data disk, both with their source's
/// serial numbers, which the guest reads back.
#[test]
fn sata_rtl8139_on_pc() {
    check(
        Case {
            label: "sata",
            machine: Machine::Pc,
            bus: DiskBus::Sata,
            nic: NicModel::Rtl8139,
            slot: "04.0",
            nic_ids: "0x10ec:0x8139",
            controller_ids: Some("0x8086:0x2922"),
            root_disk: "sda",
            cdrom: false,
            virtio_data: true,
        },
        1,
    );
}

#[test]
fn megasas_e1000_on_pc() {
    check(
        Case {
            label: "megasas",
            machine: Machine::Pc,
            bus: DiskBus::Megasas,
            nic: NicModel::E1000,
            slot: "05.0",
            nic_ids: "0x8086:0x100e",
            controller_ids: Some("0x1000:0x0079"),
            root_disk: "sda",
            cdrom: false,
            virtio_data: false,
        },
        2,
    );
}

#[test]
fn pvscsi_vmxnet3_on_q35() {
    check(
        Case {
            label: "pvscsi",
            machine: Machine::Q35,
            bus: DiskBus::Pvscsi,
            nic: NicModel::Vmxnet3,
            slot: "06.0",
            nic_ids: "0x15ad:0x07b0",
            controller_ids: Some("0x15ad:0x07c0"),
            root_disk: "sda",
            cdrom: false,
            virtio_data: false,
        },
        3,
    );
}

#[test]
fn nvme_e1000e_on_pc() {
    check(
        Case {
            label: "nvme",
            machine: Machine::Pc,
            bus: DiskBus::Nvme,
            nic: NicModel::E1000e,
            slot: "07.0",
            nic_ids: "0x8086:0x10d3",
            controller_ids: Some("0x1b36:0x0010"),
            root_disk: "nvme0n1",
            cdrom: false,
            virtio_data: false,
        },
        4,
    );
}

#[test]
fn virtio_scsi_virtio_net_on_pc() {
    check(
        Case {
            label: "vscsi",
            machine: Machine::Pc,
            bus: DiskBus::VirtioScsi,
            nic: NicModel::VirtioNet,
            slot: "08.0",
            nic_ids: "0x1af4:0x1000",
            controller_ids: Some("0x1af4:0x1004"),
            root_disk: "sda",
            cdrom: false,
            virtio_data: false,
        },
        5,
    );
}

#[test]
fn lsi_scsi_pcnet_and_ide_cdrom_on_pc() {
    check(
        Case {
            label: "lsi",
            machine: Machine::Pc,
            bus: DiskBus::Scsi,
            nic: NicModel::Pcnet,
            slot: "0a.0",
            nic_ids: "0x1022:0x2000",
            controller_ids: Some("0x1000:0x0012"),
            root_disk: "sda",
            cdrom: true,
            virtio_data: false,
        },
        6,
    );
}

/// The test image is BIOS-only (GRUB i386-pc), so a UEFI guest cannot boot
/// its OS; what is checked is that QEMU runs OVMF from pflash with the
/// guest's own variable store, and that OVMF itself runs (it writes to the
/// serial console).
#[test]
fn efi_profile_runs_ovmf() {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let tmp = tempfile::tempdir().unwrap();
        let tap = TapGuard::create(&unique_tap());
        let run_dir = tmp.path().join("run");
        let _reaper = QemuReaper(run_dir.clone());
        let c = Case {
            label: "efi",
            machine: Machine::Q35,
            bus: DiskBus::Sata,
            nic: NicModel::Rtl8139,
            slot: "03.0",
            nic_ids: "",
            controller_ids: None,
            root_disk: "sda",
            cdrom: false,
            virtio_data: false,
        };
        let mut p = profile(&c, 7);
        p.firmware = Firmware::Efi;
        let spec = GuestSpec {
            name: "hvfid-efi".into(),
            profile: p,
            disks: vec![overlay(&server.join("disk.qcow2"), tmp.path())],
            taps: vec![tap.0.clone()],
            run_dir: run_dir.clone(),
            accel: AccelKind::Tcg,
        };
        assert!(
            std::path::Path::new("/usr/share/OVMF/OVMF_CODE.fd").is_file(),
            "OVMF missing: run tests/setup/deps.sh (installs ovmf)"
        );
        let g = Guest::launch(&spec).unwrap();
        let blocks = g.execute("query-block", None).unwrap().to_string();
        assert!(blocks.contains("OVMF_CODE.fd"), "no OVMF code in pflash: {blocks}");
        assert!(blocks.contains("efi-vars.fd"), "no per-guest variable store: {blocks}");
        assert!(run_dir.join("efi-vars.fd").is_file());
        let line = g.wait_for_serial("BdsDxe", Duration::from_secs(120)).unwrap();
        eprintln!("efi: OVMF ran: {line}");
        g.kill().unwrap();
    });
}

/// A source that had Secure Boot: OVMF's Secure Boot build with SMM and the
/// Microsoft-enrolled variable store. The BIOS-only test image has nothing
/// signed to boot, so the check is on the firmware side: with these vars
/// OVMF refuses to start its own unsigned UEFI shell ("Security Violation"
/// on the serial console).
#[test]
fn secure_boot_profile_enforces_signatures() {
    let server = test_server_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let _reaper = QemuReaper(run_dir.clone());
    let c = Case {
        label: "secure-boot",
        machine: Machine::Q35,
        bus: DiskBus::Sata,
        nic: NicModel::E1000e,
        slot: "03.0",
        nic_ids: "",
        controller_ids: None,
        root_disk: "sda",
        cdrom: false,
        virtio_data: false,
    };
    let mut p = profile(&c, 8);
    p.firmware = Firmware::EfiSecureBoot;
    // No NIC: OVMF would try PXE first and take its time.
    p.nics.clear();
    let spec = GuestSpec {
        name: "hvfid-sb".into(),
        profile: p,
        disks: vec![overlay(&server.join("disk.qcow2"), tmp.path())],
        taps: vec![],
        run_dir: run_dir.clone(),
        accel: AccelKind::Tcg,
    };
    assert!(
        std::path::Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").is_file(),
        "OVMF Secure Boot files missing: run tests/setup/deps.sh (installs ovmf)"
    );
    let g = Guest::launch(&spec).unwrap();
    let blocks = g.execute("query-block", None).unwrap().to_string();
    assert!(
        blocks.contains("OVMF_CODE_4M.secboot.fd"),
        "no Secure Boot OVMF in pflash: {blocks}"
    );
    let vars = std::fs::read(run_dir.join("efi-vars.fd")).unwrap();
    let template = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").unwrap();
    assert_eq!(vars.len(), template.len(), "per-guest vars copied from the MS-enrolled template");
    let line = g.wait_for_serial("Security Violation", Duration::from_secs(180)).unwrap();
    eprintln!("secure boot: {line}");
    g.kill().unwrap();
}
