//! Which accelerator guests get here: KVM when it boots a real Linux kernel
//! to user space, otherwise TCG, with the reason in words.
//!
//! A `/dev/kvm` that opens is not enough (BASELINES.md): under a paravirtual
//! KVM (PVM) tiny real-mode guests run while stock Linux hangs or fails with
//! MSR and emulation errors. So the probe boots the kernel the caller gives
//! for a few seconds and watches the serial console for user space.
//!
//! The result is kept for the process and cached on disk, keyed by the QEMU
//! version, the host kernel release and the probe kernel's SHA-256, so that a
//! restarted node does not wait for the probe again.
// One `unsafe`: `pre_exec` to tie the probe QEMU's life to ours.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::api::AccelKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::qemu::args::{render, Arg};
use crate::qemu::host::{qemu_version, QEMU_BINARY};

/// Where the probe result is cached across processes.
pub const CACHE_FILE: &str = "/var/cache/isthmus/accel-probe.json";

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// How long the probe guest gets to reach user space.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Serial-console lines that show the kernel finished booting and is about
/// to start (or started) user space (init/main.c: free_initmem, run_init_process).
const USER_SPACE_MARKERS: [&str; 2] = ["as init process", "Freeing unused kernel"];

/// The last non-empty line of console output, cleaned ([`clean_console`]).
pub fn last_console_line(text: &str) -> Option<String> {
    text.rsplit(['\n', '\r'])
        .map(|l| clean_console(l).trim().to_string())
        .find(|l| !l.is_empty())
}

/// True when a serial-console line shows the kernel reached user space.
pub fn line_reached_user_space(line: &str) -> bool {
    USER_SPACE_MARKERS.iter().any(|m| line.contains(m))
}

/// Result of the accelerator probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelProbe {
    /// What to use.
    pub accel: AccelKind,
    /// Why, in words for logs and the UI.
    pub reason: String,
}

/// Knobs of [`probe_accel_with`]; [`ProbeOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Linux kernel image to boot.
    pub kernel: PathBuf,
    /// Its initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// KVM device node ([`KVM_DEVICE`]).
    pub kvm_device: PathBuf,
    /// On-disk cache ([`CACHE_FILE`]); `None` disables it.
    pub cache_file: Option<PathBuf>,
    /// Time the guest gets ([`PROBE_TIMEOUT`]).
    pub timeout: Duration,
}

impl ProbeOptions {
    /// Defaults for probing with `kernel` (and `initrd`).
    pub fn new(kernel: &Path, initrd: Option<&Path>) -> ProbeOptions {
        ProbeOptions {
            kernel: kernel.to_path_buf(),
            initrd: initrd.map(Path::to_path_buf),
            kvm_device: KVM_DEVICE.into(),
            cache_file: Some(CACHE_FILE.into()),
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// Probes once per process whether KVM boots the given Linux kernel to user
/// space here; TCG otherwise. Later calls return the first answer whatever
/// kernel they pass. Takes up to [`PROBE_TIMEOUT`] the first time on a host
/// whose KVM cannot boot Linux (unless the on-disk cache already knows).
pub fn probe_accel(kernel: &Path, initrd: Option<&Path>) -> AccelProbe {
    static PROBE: OnceLock<AccelProbe> = OnceLock::new();
    PROBE.get_or_init(|| probe_accel_with(&ProbeOptions::new(kernel, initrd))).clone()
}

/// The probe itself, without the per-process memo.
pub fn probe_accel_with(opts: &ProbeOptions) -> AccelProbe {
    let tcg = |reason: String| {
        tracing::warn!(%reason, "accelerator: TCG");
        AccelProbe {
            accel: AccelKind::Tcg,
            reason,
        }
    };
    if let Err(e) = OpenOptions::new().read(true).write(true).open(&opts.kvm_device) {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist (this machine exposes no hardware virtualisation)".to_string()
        } else {
            format!("cannot be opened: {e}")
        };
        return tcg(format!("{} {why}; using TCG", opts.kvm_device.display()));
    }
    let key = match CacheKey::for_host(&opts.kernel) {
        Ok(k) => k,
        Err(e) => {
            return tcg(format!(
                "KVM probe not run: {e}; cannot tell whether KVM boots Linux here; using TCG"
            ))
        }
    };
    if let Some(path) = &opts.cache_file {
        if let Some(hit) = read_cache(path, &key) {
            tracing::info!(accel = %hit.accel, reason = %hit.reason, "accelerator (cached probe)");
            return hit;
        }
    }
    let probe = boot_probe(opts);
    match probe.accel {
        AccelKind::Kvm => tracing::info!(reason = %probe.reason, "accelerator: KVM"),
        AccelKind::Tcg => tracing::warn!(reason = %probe.reason, "accelerator: TCG"),
    }
    if let Some(path) = &opts.cache_file {
        if let Err(e) = write_cache(path, &key, &probe) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the accelerator probe; the next process probes again");
        }
    }
    probe
}

/// What a cached result depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CacheKey {
    qemu_version: String,
    host_kernel: String,
    kernel_sha256: String,
}

impl CacheKey {
    fn for_host(kernel: &Path) -> Result<CacheKey, String> {
        let qemu_version = qemu_version().map_err(|e| e.to_string())?;
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(|e| format!("cannot read /proc/sys/kernel/osrelease: {e}"))?
            .trim()
            .to_string();
        let kernel_sha256 = sha256_file(kernel).map_err(|e| format!("cannot read probe kernel {}: {e}", kernel.display()))?;
        Ok(CacheKey {
            qemu_version,
            host_kernel,
            kernel_sha256,
        })
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    #[serde(flatten)]
    key: CacheKey,
    probed_at_unix: u64,
    #[serde(flatten)]
    probe: AccelProbe,
}

fn read_cache(path: &Path, key: &CacheKey) -> Option<AccelProbe> {
    let bytes = std::fs::read(path).ok()?;
    let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
    (entry.key == *key).then(|| AccelProbe {
        accel: entry.probe.accel,
        reason: format!("{} (cached in {})", entry.probe.reason, path.display()),
    })
}

fn write_cache(path: &Path, key: &CacheKey, probe: &AccelProbe) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let entry = CacheEntry {
        key: key.clone(),
        probed_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        probe: probe.clone(),
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Boots the kernel under KVM and watches the console.
fn boot_probe(opts: &ProbeOptions) -> AccelProbe {
    let mut args = vec![
        Arg::Accel(AccelKind::Kvm),
        Arg::CpuHost,
        Arg::MemoryMib(256),
        Arg::NoGraphic,
        Arg::NoReboot,
        Arg::Kernel(opts.kernel.clone()),
    ];
    if let Some(i) = &opts.initrd {
        args.push(Arg::Initrd(i.clone()));
    }
    args.push(Arg::Append("console=ttyS0 panic=-1".into()));
    let started = Instant::now();
    let mut cmd = Command::new(QEMU_BINARY);
    cmd.args(render(&args))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // If we die mid-probe, the probe QEMU (spinning a vCPU) must die too.
    // SAFETY: the closure runs in the forked child before exec and only makes
    // one prctl(2) system call, which is async-signal-safe; it touches no
    // memory shared with the parent and allocates nothing.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from));
    }
    let child = cmd.spawn();
    let mut child = match child {
        Ok(c) => KillOnDrop(c),
        Err(e) => {
            return AccelProbe {
                accel: AccelKind::Tcg,
                reason: format!("KVM probe: cannot start {QEMU_BINARY}: {e}; using TCG"),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Line>();
    spawn_reader(child.0.stdout.take(), tx.clone(), Line::Console);
    spawn_reader(child.0.stderr.take(), tx, Line::Qemu);

    let deadline = started + opts.timeout;
    let mut last_console = String::new();
    let mut qemu_said: Vec<String> = Vec::new();
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(Line::Console(l)) => {
                if line_reached_user_space(&l) {
                    break Ok(());
                }
                if !l.trim().is_empty() {
                    last_console = l;
                }
            }
            Ok(Line::Qemu(l)) => {
                if qemu_said.len() < 5 && !l.trim().is_empty() {
                    qemu_said.push(l.trim().to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(match child.0.wait() {
                    Ok(st) => format!("QEMU exited ({st}) before the guest kernel reached user space"),
                    Err(e) => format!("QEMU vanished before the guest kernel reached user space ({e})"),
                });
            }
        }
        if Instant::now() >= deadline {
            break Err(format!("guest kernel did not reach user space within {} s", opts.timeout.as_secs()));
        }
    };
    let took = started.elapsed();
    drop(child); // kills and reaps QEMU by PID
    match outcome {
        Ok(()) => AccelProbe {
            accel: AccelKind::Kvm,
            reason: format!(
                "KVM probe: guest kernel reached user space in {:.1} s; using KVM",
                took.as_secs_f64()
            ),
        },
        Err(what) => {
            let said = if qemu_said.is_empty() {
                "nothing".to_string()
            } else {
                qemu_said.join(" / ")
            };
            let last = clean_console(&last_console);
            AccelProbe {
                accel: AccelKind::Tcg,
                reason: format!(
                    "KVM probe: {what} (qemu said: {said}; last console line: {}); using TCG",
                    if last.is_empty() { "none" } else { &last }
                ),
            }
        }
    }
}

enum Line {
    Console(String),
    Qemu(String),
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    let Some(pipe) = pipe else { return };
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 || tx.send(wrap(String::from_utf8_lossy(&buf).into_owned())).is_err() {
                break;
            }
            buf.clear();
        }
    });
}

/// Drops terminal escape sequences and control characters SeaBIOS and the
/// kernel print, keeping the text.
pub fn clean_console(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    let out = out.trim();
    out.chars().take(160).collect()
}

/// Kills (SIGKILL, by PID) and reaps the probe QEMU whatever happens.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kvm: &Path, cache: Option<PathBuf>) -> ProbeOptions {
        ProbeOptions {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: None,
            kvm_device: kvm.to_path_buf(),
            cache_file: cache,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn missing_kvm_device_means_tcg_with_reason() {
        let p = probe_accel_with(&opts(Path::new("/nonexistent/kvm"), None));
        assert_eq!(p.accel, AccelKind::Tcg);
        assert!(p.reason.contains("/nonexistent/kvm does not exist"), "{}", p.reason);
    }

    #[test]
    fn unopenable_kvm_device_means_tcg_with_reason() {
        // A directory cannot be opened read-write, even by root.
        let dir = tempfile::tempdir().unwrap();
        let p = probe_accel_with(&opts(dir.path(), None));
        assert_eq!(p.accel, AccelKind::Tcg);
        assert!(p.reason.contains("cannot be opened"), "{}", p.reason);
    }

    #[test]
    fn unreadable_kernel_means_tcg_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let fake_kvm = dir.path().join("kvm");
        std::fs::write(&fake_kvm, b"").unwrap();
        let p = probe_accel_with(&opts(&fake_kvm, None));
        assert_eq!(p.accel, AccelKind::Tcg);
        assert!(p.reason.contains("/nonexistent/vmlinuz"), "{}", p.reason);
    }

    #[test]
    fn cache_roundtrip_is_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/accel.json");
        let key = CacheKey {
            qemu_version: "Q 10".into(),
            host_kernel: "6.18".into(),
            kernel_sha256: "ab".into(),
        };
        let probe = AccelProbe {
            accel: AccelKind::Kvm,
            reason: "booted".into(),
        };
        write_cache(&path, &key, &probe).unwrap();
        let hit = read_cache(&path, &key).unwrap();
        assert_eq!(hit.accel, AccelKind::Kvm);
        assert!(hit.reason.starts_with("booted (cached in "), "{}", hit.reason);
        let other = CacheKey {
            host_kernel: "6.19".into(),
            ..key
        };
        assert_eq!(read_cache(&path, &other), None);
    }

    #[test]
    fn console_cleanup() {
        assert_eq!(clean_console("\u{1b}[2J\u{1b}[0mBooting from ROM...\r\n"), "Booting from ROM...");
    }
}
