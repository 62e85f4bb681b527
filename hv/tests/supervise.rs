//! Lifecycle beyond start/stop, on the real test server, one boot chain:
//! a LUKS root disk, QEMU under its own uid with pvpanic; suspend to disk
//! keeps a file and the shell's memory across the resume (state file sealed
//! by hv: 0600, no guest memory in it, only its decryption holds the shell's
//! marker; a wrong key is refused and keeps the file; deleted on resume; the
//! LUKS disk never holds that memory in the clear); a kernel panic (sysrq-c on the
//! serial console) reaches us as GUEST_PANICKED and the supervisor restarts
//! the guest per policy; a guest power-off ends supervision under OnCrash.
//! Then isolation: two guests at once, each its own QEMU, TAP, uid, cgroup
//! limits and seccomp filter, read back from /proc.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hv::{
    create_encrypted_image, DiskKey, Ending, Guest, GuestEvent, ImageSource, LaunchOptions, Limits, PanicDevice, RestartMode,
    RestartPolicy, Restore, RunAs, Supervisor, SupervisorEvent,
};
use support::{ide_e1000_spec, in_fresh_netns, overlay, test_server_dir, unique_tap, QemuReaper, TapGuard};

const KEY_HEX: &str = "7d1c9e0a7c21d8e56f0b1a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f99";

fn key() -> DiskKey {
    DiskKey::from_bytes(hex::decode(KEY_HEX).unwrap()).unwrap()
}

/// A temp dir QEMU can traverse after dropping root (0711).
fn traversable_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    t
}

fn status_field(pid: u32, field: &str) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let hay = std::fs::read(path).unwrap();
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn suspend_resume_then_panic_restarts_per_policy() {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let tmp = traversable_tempdir();
        let tap = TapGuard::create(&unique_tap());
        let run_dir = tmp.path().join("run");
        let _reaper = QemuReaper(run_dir.clone());
        let disk = tmp.path().join("root-luks.qcow2");
        create_encrypted_image(&disk, &ImageSource::Copy(server.join("disk.qcow2")), &key()).unwrap();
        let spec = ide_e1000_spec("hvtest-super", disk.clone(), &tap.0, &run_dir, 256);
        let opts = LaunchOptions {
            panic_device: Some(PanicDevice::Pci),
            run_as: Some(RunAs { uid: 64101, gid: 64101 }),
            ..Default::default()
        };

        let g = Guest::launch_with(&spec, &[Some(key())], &opts).unwrap();
        assert_eq!(status_field(g.pid(), "Uid:"), "64101\t64101\t64101\t64101");
        g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(180)).unwrap();
        let mut con = g.serial_console(Duration::from_secs(5)).unwrap();
        con.send(b"\n").unwrap();
        let r = con
            .run("echo kept > /root/keep; sync; cat /root/keep", Duration::from_secs(30))
            .unwrap();
        assert_eq!(r.output, "kept");

        // Panic → GUEST_PANICKED → restart (fresh QEMU, key handed again).
        let policy = RestartPolicy {
            mode: RestartMode::OnCrash,
            max_restarts: 2,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
        };
        let t = Instant::now();
        let mut sup = Supervisor::new(g, policy, || Guest::launch_with(&spec, &[Some(key())], &opts));
        // Console log level 1: only the panic's emergency line, not the
        // register and stack dump, goes through the polled 8250 console.
        con.send(b"dmesg -n 1; echo c > /proc/sysrq-trigger\n").unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        while !seen.iter().any(|e| matches!(e, SupervisorEvent::Restarted { .. })) {
            assert!(Instant::now() < deadline, "no restart after the panic: {seen:?}");
            // Keep the console drained while we wait.
            let _ = con.read_until("\u{1}", Duration::from_millis(100));
            let evs = sup.step(Duration::from_secs(1)).unwrap();
            if !evs.is_empty() {
                eprintln!("{:.1} s: {evs:?}", t.elapsed().as_secs_f64());
            }
            seen.extend(evs);
        }
        drop(con);
        assert!(
            seen.contains(&SupervisorEvent::Guest(GuestEvent::Panicked { action: "pause".into() })),
            "{seen:?}"
        );
        assert!(
            seen.contains(&SupervisorEvent::Restarted {
                ending: Ending::Panicked,
                count: 1
            }),
            "{seen:?}"
        );
        sup.guest().wait_for_serial("ISTHMUS-READY", Duration::from_secs(180)).unwrap();
        eprintln!("panic → restarted → ready: {:.1} s", t.elapsed().as_secs_f64());

        // The marker lives only in the shell's memory (built from two parts,
        // so the typed command line does not hold it whole).
        let mut con = sup.guest().serial_console(Duration::from_secs(5)).unwrap();
        con.send(b"\n").unwrap();
        let r = con
            .run("cat /root/keep; M=isthmus-mem-; M=${M}7f3a; echo $M", Duration::from_secs(30))
            .unwrap();
        assert_eq!(r.output, "kept\nisthmus-mem-7f3a", "the disk survived the panic");
        drop(con);

        // Suspend to disk: QEMU ends; the supervisor sees a host stop and
        // leaves it down.
        let t = Instant::now();
        let state_key = DiskKey::generate().unwrap();
        sup.guest().suspend_to_disk(&state_key).unwrap();
        let suspend = t.elapsed();
        assert!(!sup.guest().is_running());
        let ended = sup.step(Duration::from_secs(1)).unwrap();
        assert!(
            ended.iter().any(|e| matches!(
                e,
                SupervisorEvent::Ended {
                    ending: Ending::HostStop,
                    ..
                }
            )),
            "{ended:?}"
        );
        assert_eq!(sup.restarts(), 1);
        assert!(
            !file_contains(&disk, b"isthmus-mem-7f3a"),
            "guest memory in the clear in the provider file"
        );
        let state = run_dir.join("suspend.vmstate");
        let meta = std::fs::metadata(&state).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read(&state).unwrap().starts_with(hv::vmstate::MAGIC));
        assert!(
            !file_contains(&state, b"isthmus-mem-7f3a"),
            "guest memory in the clear in the suspend state file"
        );
        let mut plain = Vec::new();
        hv::vmstate::open(std::fs::File::open(&state).unwrap(), &mut plain, &state_key).unwrap();
        assert!(
            plain.windows(16).any(|w| w == b"isthmus-mem-7f3a"),
            "control: the decrypted state holds the shell's memory"
        );
        drop(plain);

        // Without a key, or with the wrong one: refused, the state kept.
        let resumed = LaunchOptions {
            restore: Some(Restore::Suspended),
            ..opts.clone()
        };
        let e = Guest::launch_with(&spec, &[Some(key())], &resumed).unwrap_err();
        assert!(e.to_string().contains("resume_from_disk"), "{e}");
        let wrong = DiskKey::generate().unwrap();
        let e = Guest::resume_from_disk(&spec, &[Some(key())], &opts, &wrong).unwrap_err();
        assert!(e.to_string().contains("does not open with this key"), "{e}");
        assert!(state.exists(), "a refused resume keeps the state");
        assert!(hv::guest::running_pid(&run_dir).is_none(), "no QEMU left after a refused resume");

        let t = Instant::now();
        let g = Guest::resume_from_disk(&spec, &[Some(key())], &opts, &state_key).unwrap();
        let resume = t.elapsed();
        let mut con = g.serial_console(Duration::from_secs(5)).unwrap();
        con.send(b"\n").unwrap();
        let r = con.run("cat /root/keep; echo $M", Duration::from_secs(30)).unwrap();
        assert_eq!(r.output, "kept\nisthmus-mem-7f3a", "resume keeps disk and memory");
        assert!(!state.exists(), "the suspend state is deleted once resumed");
        let objects = g.execute("qom-list", Some(serde_json::json!({"path": "/objects"}))).unwrap();
        assert!(!objects.to_string().contains("key-disk"), "no secret left after resume: {objects}");
        eprintln!(
            "suspend {:.0} ms, resume {:.0} ms",
            suspend.as_secs_f64() * 1e3,
            resume.as_secs_f64() * 1e3
        );
        drop(con);
        g.kill().unwrap();
    });
}

#[test]
fn two_guests_isolated_at_once() {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let mut guests = Vec::new();
        let mut keep = Vec::new();
        for (i, uid) in [64201u32, 64202].into_iter().enumerate() {
            let tmp = traversable_tempdir();
            let tap = TapGuard::create(&unique_tap());
            let run_dir = tmp.path().join("run");
            let reaper = QemuReaper(run_dir.clone());
            let name = format!("hvtest-iso{i}-{}", std::process::id());
            let s = ide_e1000_spec(&name, overlay(&server.join("disk.qcow2"), tmp.path()), &tap.0, &run_dir, 192);
            let limits = Limits {
                cpu_percent: 80,
                memory_mib: 768,
            };
            let opts = LaunchOptions {
                run_as: Some(RunAs { uid, gid: uid }),
                limits: Some(limits),
                ..Default::default()
            };
            let g = Guest::launch_with(&s, &[], &opts).unwrap();
            guests.push((g, uid, name));
            keep.push((tmp, tap, reaper));
        }
        for (g, uid, name) in &guests {
            let pid = g.pid();
            assert_eq!(status_field(pid, "Uid:"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
            assert_eq!(status_field(pid, "Gid:"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
            assert_eq!(status_field(pid, "Seccomp:"), "2", "QEMU runs under its seccomp filter");
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            let want = format!("/isthmus/{name}");
            let lines: Vec<&str> = cg.lines().filter(|l| l.ends_with(&want)).collect();
            let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
            if v2 {
                assert_eq!(lines.len(), 1, "{cg}");
                let dir = Path::new("/sys/fs/cgroup/isthmus").join(name);
                assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap().trim(), "80000 100000");
                assert_eq!(
                    std::fs::read_to_string(dir.join("memory.max")).unwrap().trim(),
                    (768u64 << 20).to_string()
                );
            } else {
                assert!(lines.iter().any(|l| l.contains(":cpu") || l.contains(",cpu")), "{cg}");
                assert!(lines.iter().any(|l| l.contains(":memory:")), "{cg}");
                let cpu = Path::new("/sys/fs/cgroup/cpu/isthmus").join(name);
                let mem = Path::new("/sys/fs/cgroup/memory/isthmus").join(name);
                assert_eq!(std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap().trim(), "80000");
                assert_eq!(
                    std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap().trim(),
                    (768u64 << 20).to_string()
                );
                // Every QEMU thread is in it, not only the main one.
                let procs = std::fs::read_to_string(cpu.join("tasks")).unwrap();
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
                assert!(procs.lines().count() >= tasks, "{procs} vs {tasks} tasks");
            }
        }
        for (g, _, _) in &guests {
            g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(240)).unwrap();
        }
        assert!(guests.iter().all(|(g, _, _)| g.is_running()), "both run at once");
        assert_ne!(guests[0].0.pid(), guests[1].0.pid());
        for (g, _, name) in &guests {
            g.kill().unwrap();
            // A stopped guest leaves no cgroup behind.
            for d in [
                Path::new("/sys/fs/cgroup/isthmus").join(name),
                Path::new("/sys/fs/cgroup/cpu/isthmus").join(name),
                Path::new("/sys/fs/cgroup/memory/isthmus").join(name),
            ] {
                assert!(!d.exists(), "{} left behind after the guest stopped", d.display());
            }
        }
    });
}
