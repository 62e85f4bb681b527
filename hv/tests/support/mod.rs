//! Shared parts of hv's integration tests: network namespaces, TAPs, the
//! cached test-server image, and a guard that never leaves QEMU behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;

/// Runs `f` on a new thread that first moved into a fresh network namespace
/// (`unshare(CLONE_NEWNET)` affects only the calling thread); QEMU processes
/// it starts inherit that namespace. Panics propagate.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) failed: these tests need root (CAP_SYS_ADMIN)");
        f()
    });
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A TAP name unique to this process and call ("hvt<pid><n>", ≤ 15 chars).
pub fn unique_tap() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("hvt{}x{}", std::process::id() % 1_000_000, N.fetch_add(1, Ordering::Relaxed))
}

/// Creates a TAP and deletes it on drop (in the namespace of the thread that
/// drops it, which must be the one that created it).
pub struct TapGuard(pub String);

impl TapGuard {
    /// Creates the TAP.
    pub fn create(name: &str) -> TapGuard {
        hv::create_tap(name).unwrap_or_else(|e| panic!("create_tap({name}): {e}"));
        TapGuard(name.to_string())
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Err(e) = hv::delete_tap(&self.0) {
            eprintln!("cleanup: delete_tap({}): {e}", self.0);
        }
    }
}

/// Kills the QEMU of a run directory on drop if it still runs, so a failed
/// assertion never leaves a guest behind.
pub struct QemuReaper(pub PathBuf);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        let pidfile = self.0.join("qemu.pid");
        let Ok(pid) = std::fs::read_to_string(&pidfile) else { return };
        let Ok(pid) = pid.trim().parse::<i32>() else { return };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*pidfile.to_string_lossy()))
            .unwrap_or(false);
        if ours {
            eprintln!("cleanup: killing QEMU {pid}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// The cached test-server image directory (`vmlinuz`, `initrd.img`,
/// `disk.qcow2`): `$ISTHMUS_TEST_SERVER_DIR`, or what
/// `image-build/test-server/build.sh` prints last. Panics with what to do
/// when neither works: these tests must not pass without a guest.
pub fn test_server_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ISTHMUS_TEST_SERVER_DIR") {
        let d = PathBuf::from(d);
        assert!(
            d.join("disk.qcow2").is_file(),
            "ISTHMUS_TEST_SERVER_DIR={} has no disk.qcow2; unset it or point it at a build of image-build/test-server",
            d.display()
        );
        return d;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("image-build/test-server/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").trim().to_string();
    assert!(
        out.status.success() && Path::new(&last).join("disk.qcow2").is_file(),
        "no test-server image: `bash {}` failed ({}) and ISTHMUS_TEST_SERVER_DIR is unset.\n\
         Build it (needs root, mmdebstrap, grub-pc-bin: tests/setup/deps.sh) or set ISTHMUS_TEST_SERVER_DIR.\n\
         stdout: {stdout}\nstderr (tail): {}",
        script.display(),
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 20)
    );
    PathBuf::from(last)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A qcow2 overlay on `base` in `dir`, so the cached image is never written.
pub fn overlay(base: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("overlay.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(base)
        .args(["-F", "qcow2"])
        .arg(&out)
        .status()
        .expect("qemu-img not found: install qemu-utils");
    assert!(st.success(), "qemu-img create overlay on {} failed", base.display());
    out
}

/// The plain test guest: `pc`, BIOS, one IDE disk, one e1000 at 03.0 on `tap`.
pub fn ide_e1000_spec(name: &str, disk: PathBuf, tap: &str, run_dir: &Path, memory_mib: u32) -> hv::GuestSpec {
    use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec, Smbios};
    hv::GuestSpec {
        name: name.into(),
        profile: HardwareProfile {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            cpus: 1,
            memory_mib,
            disks: vec![DiskSpec::new(DiskBus::Ide, 0, true)],
            nics: vec![NicSpec {
                model: NicModel::E1000,
                mac: "52:54:00:12:34:56".parse().unwrap(),
                pci_slot: Some("03.0".parse().unwrap()),
            }],
            smbios: Smbios::default(),
        },
        disks: vec![disk],
        taps: vec![tap.into()],
        run_dir: run_dir.into(),
        accel: proto::api::AccelKind::Tcg,
    }
}

/// A started plain test guest (IDE/e1000, on an overlay of the cached image)
/// with what it needs kept alive: its temp dir, TAP and reaper.
pub struct PlainGuest {
    /// The guest.
    pub guest: hv::Guest,
    // Fields drop in this order: QEMU killed, then its TAP, then the files
    // (the reaper needs the pid file in the run directory).
    _reaper: QemuReaper,
    /// Its TAP.
    pub tap: TapGuard,
    /// Temp dir holding the overlay and the run directory.
    pub tmp: tempfile::TempDir,
}

impl PlainGuest {
    /// Starts guest `name` (256 MiB) on an overlay of `server`'s disk, in the
    /// calling thread's network namespace.
    pub fn launch(name: &str, server: &Path) -> PlainGuest {
        let tmp = tempfile::tempdir().unwrap();
        let tap = TapGuard::create(&unique_tap());
        let run_dir = tmp.path().join("run");
        let reaper = QemuReaper(run_dir.clone());
        let spec = ide_e1000_spec(name, overlay(&server.join("disk.qcow2"), tmp.path()), &tap.0, &run_dir, 256);
        let guest = hv::Guest::launch(&spec).unwrap();
        PlainGuest {
            guest,
            _reaper: reaper,
            tap,
            tmp,
        }
    }
}
