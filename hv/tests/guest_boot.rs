//! Boots the real test-server image under QEMU (TCG) with a preserved
//! hardware profile, and checks what the guest itself reports: its MAC, its
//! root disk name and its SMBIOS serial. Each boot takes ~10 s under TCG.

mod support;

use std::time::{Duration, Instant};

use hv::{Guest, GuestSpec};
use proto::api::{AccelKind, GuestState};
use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec, Smbios};
use support::{in_fresh_netns, overlay, test_server_dir, unique_tap, QemuReaper, TapGuard};

const MAC: &str = "52:54:00:12:34:56";

struct Case {
    label: &'static str,
    machine: Machine,
    bus: DiskBus,
    nic: NicModel,
    slot: &'static str,
    serial: &'static str,
}

fn boot(case: Case) {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let tmp = tempfile::tempdir().unwrap();
        let disk = overlay(&server.join("disk.qcow2"), tmp.path());
        let tap = TapGuard::create(&unique_tap());
        let run_dir = tmp.path().join("run");
        let _reaper = QemuReaper(run_dir.clone());
        let spec = GuestSpec {
            name: format!("hvtest-{}", case.label),
            profile: HardwareProfile {
                firmware: Firmware::Bios,
                machine: case.machine,
                cpus: 1,
                memory_mib: 256,
                disks: vec![DiskSpec::new(case.bus, 0, true)],
                nics: vec![NicSpec {
                    model: case.nic,
                    mac: MAC.parse().unwrap(),
                    pci_slot: Some(case.slot.parse().unwrap()),
                }],
                smbios: Smbios {
                    serial: Some(case.serial.into()),
                    ..Default::default()
                },
            },
            disks: vec![disk],
            taps: vec![tap.0.clone()],
            run_dir: run_dir.clone(),
            accel: AccelKind::Tcg,
        };

        let t0 = Instant::now();
        let guest = Guest::launch(&spec).unwrap_or_else(|e| panic!("{}: launch: {e}", case.label));
        let started = t0.elapsed();
        assert!(guest.is_running());
        assert_eq!(guest.status().unwrap(), GuestState::Running);

        // Our process restarting must find the guest again: drop the handle
        // (QEMU keeps running, detached) and attach.
        let pid = guest.pid();
        drop(guest);
        let guest = Guest::attach(&run_dir).unwrap().expect("attach finds the running guest");
        assert_eq!(guest.pid(), pid);
        assert_eq!(guest.name(), spec.name);

        let facts = guest
            .wait_for_serial("ISTHMUS-FACTS", Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{}: {e}", case.label));
        let booted = t0.elapsed();
        for want in [format!("mac={MAC}"), "root_disk=sda".to_string(), format!("serial={}", case.serial)] {
            assert!(
                facts.split_whitespace().any(|kv| kv == want),
                "{}: {want} missing in {facts:?}",
                case.label
            );
        }
        guest.wait_for_serial("ISTHMUS-READY", Duration::from_secs(30)).unwrap();

        let t1 = Instant::now();
        let clean = guest.powerdown(Duration::from_secs(30)).unwrap();
        let stopped = t1.elapsed();
        assert!(
            clean,
            "{}: guest did not power off by itself; serial log:\n{}",
            case.label,
            log(&guest)
        );
        assert!(!guest.is_running());
        // Gone, not just a zombie: init reaps the detached QEMU shortly after.
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let reap_deadline = Instant::now() + Duration::from_secs(5);
        while proc_dir.exists() && Instant::now() < reap_deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!proc_dir.exists(), "QEMU {pid} still exists");
        assert_eq!(guest.status().unwrap(), GuestState::Stopped);
        guest.wait_for_serial("ISTHMUS-POWERDOWN", Duration::ZERO).unwrap();
        eprintln!(
            "{}: QEMU up in {:.2} s, ISTHMUS-FACTS after {:.1} s, powerdown took {:.1} s; facts: {facts}",
            case.label,
            started.as_secs_f64(),
            booted.as_secs_f64(),
            stopped.as_secs_f64()
        );
    });
}

fn log(g: &Guest) -> String {
    std::fs::read_to_string(g.serial_log()).unwrap_or_default()
}

#[test]
fn ide_e1000_on_pc_keeps_mac_disk_name_and_serial() {
    boot(Case {
        label: "ide",
        machine: Machine::Pc,
        bus: DiskBus::Ide,
        nic: NicModel::E1000,
        slot: "03.0",
        serial: "HV-TEST-1",
    });
}

#[test]
fn sata_e1000e_on_q35_keeps_mac_disk_name_and_serial() {
    boot(Case {
        label: "sata",
        machine: Machine::Q35,
        bus: DiskBus::Sata,
        nic: NicModel::E1000e,
        slot: "05.0",
        serial: "HV-TEST-2",
    });
}
