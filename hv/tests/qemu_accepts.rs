//! The real QEMU accepts the mapping of every machine × disk bus × NIC
//! model: each combination is started (TCG, blank disks), and QMP shows the
//! NIC at the profile's PCI slot and both disks attached to a device.

mod support;

use std::time::Instant;

use hv::{Guest, GuestSpec};
use proto::api::AccelKind;
use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec};
use support::{in_fresh_netns, unique_tap, QemuReaper, TapGuard};

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

#[test]
fn every_bus_and_nic_starts_with_devices_where_the_profile_says() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let disks: Vec<_> = (0..2)
            .map(|i| {
                let p = tmp.path().join(format!("d{i}.raw"));
                std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
                p
            })
            .collect();
        let tap = TapGuard::create(&unique_tap());
        let t0 = Instant::now();
        let mut n = 0;
        for machine in [Machine::Pc, Machine::Q35] {
            for bus in BUSES {
                if machine == Machine::Q35 && bus == DiskBus::Ide {
                    continue; // refused by the mapping (no IDE on q35), unit-tested there
                }
                for nic in NICS {
                    let ctx = format!("{machine:?}/{bus:?}/{nic:?}");
                    let run_dir = tmp.path().join(format!("run-{n}"));
                    let _reaper = QemuReaper(run_dir.clone());
                    let spec = GuestSpec {
                        name: format!("accept{n}"),
                        profile: HardwareProfile {
                            firmware: Firmware::Bios,
                            machine,
                            cpus: 1,
                            memory_mib: 64,
                            disks: vec![
                                DiskSpec::new(bus, 0, false),
                                DiskSpec {
                                    bus,
                                    unit: 1,
                                    boot: true,
                                    media: Default::default(),
                                    // A source WWN, on every bus that has one.
                                    wwn: (!matches!(bus, DiskBus::VirtioBlk | DiskBus::Nvme))
                                        .then(|| "0x5000c50000000001".parse().unwrap()),
                                    // A source serial as long as the bus carries, with a
                                    // comma (doubled on the command line); on SCSI one
                                    // beyond 20 bytes, which needs its own device_id.
                                    serial: Some(
                                        if proto::disk_serial::max_serial_bytes(bus) > 20 {
                                            "6000c29a,1b2c3d4e5f60718293a4b5c6"
                                        } else {
                                            "WD-WCC4N,1234567890A"
                                        }
                                        .parse()
                                        .unwrap(),
                                    ),
                                },
                            ],
                            nics: vec![NicSpec {
                                model: nic,
                                mac: "52:54:00:aa:bb:01".parse().unwrap(),
                                pci_slot: Some("07.0".parse().unwrap()),
                            }],
                            smbios: Default::default(),
                        },
                        disks: disks.clone(),
                        taps: vec![tap.0.clone()],
                        run_dir,
                        accel: AccelKind::Tcg,
                    };
                    let g = Guest::launch(&spec).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    check_nic_slot(&g, &ctx);
                    check_disks_attached(&g, &ctx);
                    if n == 0 {
                        lifecycle_without_an_os(&g, &spec);
                    } else {
                        g.kill().unwrap();
                    }
                    assert!(!g.is_running(), "{ctx}: QEMU survived");
                    n += 1;
                }
            }
        }
        eprintln!("{n} combinations started and checked in {:.1} s", t0.elapsed().as_secs_f64());
    });
}

fn check_nic_slot(g: &Guest, ctx: &str) {
    let pci = g.execute("query-pci", None).unwrap();
    let devices = pci[0]["devices"].as_array().cloned().unwrap_or_default();
    let at = |slot: u64| devices.iter().find(|d| d["slot"] == slot && d["function"] == 0);
    let nic = at(7).unwrap_or_else(|| panic!("{ctx}: nothing at 00:07.0: {pci}"));
    // PCI class 0x0200: Ethernet controller.
    assert_eq!(nic["class_info"]["class"], 0x0200, "{ctx}: 00:07.0 is not a NIC: {nic}");
}

fn check_disks_attached(g: &Guest, ctx: &str) {
    let blocks = g.execute("query-block", None).unwrap();
    for id in ["disk0", "disk1"] {
        let b = blocks
            .as_array()
            .and_then(|a| a.iter().find(|b| b["device"] == id))
            .unwrap_or_else(|| panic!("{ctx}: no drive {id}: {blocks}"));
        assert!(b["qdev"].as_str().is_some_and(|q| !q.is_empty()), "{ctx}: {id} not attached: {b}");
        assert!(b["inserted"].is_object(), "{ctx}: {id} has no medium: {b}");
    }
}

/// A guest with no OS: the power button is ignored, so powerdown must stop
/// QEMU itself and say so; a second launch from the same run directory is
/// refused while the first runs.
fn lifecycle_without_an_os(g: &Guest, spec: &GuestSpec) {
    assert_eq!(g.status().unwrap(), proto::api::GuestState::Running);
    let e = Guest::launch(spec).unwrap_err();
    assert!(matches!(e, hv::Error::Guest(hv::guest::GuestError::AlreadyRunning { .. })), "{e}");
    let t = Instant::now();
    assert!(
        !g.powerdown(std::time::Duration::from_millis(500)).unwrap(),
        "SeaBIOS cannot power off by itself"
    );
    assert!(t.elapsed().as_secs() < 10, "hard stop took {:?}", t.elapsed());
    assert_eq!(g.status().unwrap(), proto::api::GuestState::Stopped);
    assert!(!g.powerdown(std::time::Duration::from_secs(1)).unwrap(), "nothing to power down");
    g.kill().expect("kill of a stopped guest is fine");
}
