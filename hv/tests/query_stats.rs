//! `Guest::stats` on real QEMU guests: under KVM, QMP `query-stats` gives
//! VM-wide and per-vCPU statistics that grow while the guest runs; under
//! TCG (QEMU has no stats provider for it) those are empty and the vCPU
//! threads' host CPU time is what is there. The guests are diskless in
//! effect (a blank 1 MiB disk: SeaBIOS finds nothing to boot and keeps
//! running its boot retry loop), so the test does not need an OS image and
//! KVM works here even though it cannot boot Linux (BASELINES.md).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use proto::api::{AccelKind, XtsImpl};
use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, Smbios};

/// Kills QEMU when the test ends, pass or fail.
struct Running(hv::Guest);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn launch(name: &str, accel: AccelKind, cpus: u32, dir: &Path) -> Running {
    let disk = dir.join("blank.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("1M")
        .status()
        .expect("qemu-img (tests/setup/deps.sh installs qemu-utils)");
    assert!(st.success());
    let spec = hv::GuestSpec {
        name: name.into(),
        profile: HardwareProfile {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            cpus,
            memory_mib: 64,
            disks: vec![DiskSpec::new(DiskBus::Ide, 0, true)],
            nics: vec![],
            smbios: Smbios::default(),
        },
        disks: vec![disk],
        taps: vec![],
        run_dir: dir.join("run"),
        accel,
    };
    Running(hv::Guest::launch(&spec).unwrap_or_else(|e| panic!("{accel} guest did not start: {e}")))
}

/// Polls `f` until it holds or `patience` runs out (the machine is loaded).
fn eventually(patience: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + patience;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn kvm_guest_reports_vm_and_vcpu_stats_that_grow() {
    if std::fs::File::options().read(true).write(true).open("/dev/kvm").is_err() {
        eprintln!("SKIP: /dev/kvm cannot be opened here; query-stats has no provider without KVM");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let g = launch("stats-kvm", AccelKind::Kvm, 2, tmp.path());
    let first = g.0.stats(AccelKind::Kvm).unwrap();
    assert_eq!(first.name, "stats-kvm");
    assert_eq!(first.accel, AccelKind::Kvm);
    assert!(first.vm.keys().any(|k| k.starts_with("kvm.")), "no KVM VM stats: {:?}", first.vm);
    assert_eq!(first.vcpus.len(), 2, "one stats map per vCPU: {:?}", first.vcpus);
    for v in &first.vcpus {
        assert!(v.contains_key("kvm.exits"), "vCPU stats without kvm.exits: {v:?}");
    }
    assert_eq!(first.vcpu_cpu_ticks.len(), 2, "one vCPU thread time per vCPU (query-cpus-fast)");
    assert!(!first.disks.is_empty(), "query-blockstats lists the disk");
    assert!(first.rss_kib > 0);
    assert_eq!(
        first.xts,
        Some(XtsImpl::BatchedPreload),
        "hv preloads libisthmus-xts into every QEMU it starts"
    );

    // The boot vCPU keeps exiting (port I/O, halts, timer interrupts).
    let exits = |s: &proto::api::GuestStats| s.vcpus[0]["kvm.exits"];
    let mut last = first.clone();
    let grew = eventually(Duration::from_secs(20), || {
        last = g.0.stats(AccelKind::Kvm).unwrap();
        exits(&last) > exits(&first)
    });
    assert!(grew, "kvm.exits of vCPU 0 did not grow: {} then {}", exits(&first), exits(&last));
    for (k, v) in &first.vcpus[0] {
        // Cumulative counters never go back while the same QEMU runs.
        if k.ends_with("exits") {
            assert!(last.vcpus[0][k] >= *v, "{k} went back: {v} then {}", last.vcpus[0][k]);
        }
    }
    assert!(last.cpu_ticks >= first.cpu_ticks);
}

#[test]
fn tcg_guest_has_no_query_stats_but_vcpu_thread_times() {
    let tmp = tempfile::tempdir().unwrap();
    let g = launch("stats-tcg", AccelKind::Tcg, 2, tmp.path());
    let first = g.0.stats(AccelKind::Tcg).unwrap();
    assert!(
        first.vm.is_empty() && first.vcpus.is_empty(),
        "QEMU has no TCG stats provider: {first:?}"
    );
    assert_eq!(first.vcpu_cpu_ticks.len(), 2, "one vCPU thread time per vCPU (query-cpus-fast)");
    // SeaBIOS ran on vCPU 0 under emulation: its thread has used CPU time
    // (it may halt afterwards, so no growth is asserted here).
    let ran = eventually(Duration::from_secs(30), || g.0.stats(AccelKind::Tcg).unwrap().vcpu_cpu_ticks[0] > 0);
    assert!(ran, "the TCG vCPU 0 thread shows no CPU time");
    // The node's JSON (serde) carries the maps even when empty.
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(json["accel"], "tcg");
    assert!(json["vm"].as_object().unwrap().is_empty());
}
