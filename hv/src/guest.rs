//! A QEMU process running one guest: start it detached, find it again after
//! our own restart, watch its console, ask it to power off, stop it hard.
//!
//! QEMU runs with `-daemonize`, so it is not our child: it outlives the CSL
//! process and is reaped by init. We know it by the PID in its pid file and
//! check it is still the same process by its command line (which names that
//! pid file), so a recycled PID is never mistaken for the guest.

use std::collections::VecDeque;
use std::fs::DirBuilder;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::api::GuestState;
use proto::Firmware;

use crate::disk_key::{DiskKey, KeyMatchError};
use crate::isolation::{GuestCgroup, CGROUP_ROOT};
use crate::qemu::host::{host_facts, QEMU_BINARY};
use crate::qemu::qmp::{Qmp, QmpError};
use crate::qemu::Plan;
use crate::run_dir::RunDir;
use crate::{Error, GuestSpec, LaunchOptions};

/// How long QEMU may take to initialise before `-daemonize` returns.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we retry connecting to QMP after start or on attach.
pub const QMP_PATIENCE: Duration = Duration::from_secs(5);
/// How long a hard stop may take.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long QEMU gets to exit after QMP `quit`.
const QUIT_WAIT: Duration = Duration::from_secs(3);
/// Serial-log lines kept for error messages.
const TAIL_LINES: usize = 12;

/// Starting, watching or stopping the QEMU process failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The run directory could not be made or secured.
    #[error("cannot prepare run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A QEMU already runs from this run directory.
    #[error("guest {name} already runs from {run_dir} (QEMU pid {pid}); attach to it or stop it first")]
    AlreadyRunning {
        /// Guest name.
        name: String,
        /// Its PID.
        pid: u32,
        /// Run directory.
        run_dir: PathBuf,
    },
    /// The UEFI variable store could not be created.
    #[error("cannot create the UEFI variable store {to} from {from}: {source}")]
    EfiVars {
        /// Template.
        from: PathBuf,
        /// Per-guest copy.
        to: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started at all.
    #[error("cannot start {QEMU_BINARY}: {0}; install QEMU 10 (tests/setup/deps.sh)")]
    Spawn(#[source] std::io::Error),
    /// QEMU exited with an error during initialisation.
    #[error("QEMU refused the profile of guest {name} ({status}): {stderr}")]
    Refused {
        /// Guest name.
        name: String,
        /// QEMU's exit status.
        status: ExitStatus,
        /// What QEMU printed.
        stderr: String,
    },
    /// QEMU did not finish initialising in time.
    #[error("QEMU for guest {name} did not finish starting within {secs} s; it was killed")]
    StartTimeout {
        /// Guest name.
        name: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The pid file is missing or unreadable after start.
    #[error("cannot read QEMU's pid file {path}: {detail}")]
    Pidfile {
        /// The pid file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Sending a signal failed.
    #[error("cannot signal QEMU pid {pid}: {source}")]
    Signal {
        /// PID.
        pid: u32,
        /// What the kernel said.
        #[source]
        source: nix::Error,
    },
    /// QEMU survived SIGKILL (stuck in the kernel, e.g. on I/O).
    #[error("QEMU pid {pid} still runs {secs} s after SIGKILL; it is stuck in the kernel (look at /proc/{pid}/stack)")]
    StillRunning {
        /// PID.
        pid: u32,
        /// Seconds waited.
        secs: u64,
    },
    /// The serial log could not be read.
    #[error("cannot read serial log {path}: {source}")]
    SerialRead {
        /// Log file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// No matching serial line in time.
    #[error("guest {name}: no line containing {pattern:?} in {path} within {secs} s; last lines:\n{tail}")]
    SerialTimeout {
        /// Guest name.
        name: String,
        /// What we looked for.
        pattern: String,
        /// Log file.
        path: PathBuf,
        /// Seconds waited.
        secs: u64,
        /// The last lines of the log.
        tail: String,
    },
    /// QEMU could not open an encrypted disk with the key given (wrong key,
    /// or a damaged LUKS header). QEMU was stopped; the disk is untouched.
    #[error("guest {name}: QEMU could not open encrypted disk {disk} ({path}): {detail}; check that the appliance sent this disk's key")]
    Unlock {
        /// Guest name.
        name: String,
        /// Disk index.
        disk: usize,
        /// Image file.
        path: PathBuf,
        /// What QEMU said.
        detail: String,
    },
    /// QEMU refused to create the devices after the disks were opened.
    #[error("guest {name}: QEMU refused to start the machine after opening its disks: {detail}")]
    Preconfig {
        /// Guest name.
        name: String,
        /// What QEMU said.
        detail: String,
    },
    /// QEMU exited while we waited for a serial line.
    #[error("guest {name}: QEMU exited before a line containing {pattern:?} appeared in {path}; last lines:\n{tail}")]
    ExitedWaiting {
        /// Guest name.
        name: String,
        /// What we looked for.
        pattern: String,
        /// Log file.
        path: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
}

/// A QEMU process running a guest.
#[derive(Debug)]
pub struct Guest {
    name: String,
    run: RunDir,
    pid: u32,
    qmp: Mutex<Option<Qmp>>,
}

impl Guest {
    /// Starts QEMU detached (`-daemonize`: own session, outlives our process)
    /// and connects to its QMP socket. For a guest with encrypted disks use
    /// [`Guest::launch_with_keys`].
    pub fn launch(spec: &GuestSpec) -> Result<Guest, Error> {
        Guest::launch_with_keys(spec, &[])
    }

    /// Like [`Guest::launch`], with one key slot per disk (`None` for a plain
    /// disk; an empty slice when no disk is encrypted). A LUKS qcow2 disk is
    /// opened over QMP while QEMU waits in `-preconfig`: its key goes over
    /// the monitor socket as a `secret` object, which is deleted again as
    /// soon as the disk is open (QEMU keeps only the LUKS master key, in
    /// memory). A wrong key stops QEMU and returns [`GuestError::Unlock`].
    pub fn launch_with_keys(spec: &GuestSpec, keys: &[Option<DiskKey>]) -> Result<Guest, Error> {
        Guest::launch_with(spec, keys, &LaunchOptions::default())
    }

    /// Like [`Guest::launch_with_keys`], with [`LaunchOptions`]: a panic
    /// device, unprivileged ids and cgroup limits (QEMU joins its cgroup
    /// before it executes, so it never runs outside it), or a start from saved
    /// state (QEMU starts with `-S`, loads the snapshot, then runs).
    /// A resume from disk ([`crate::Restore::Suspended`]) needs the state
    /// key: use [`Guest::resume_from_disk`].
    pub fn launch_with(spec: &GuestSpec, keys: &[Option<DiskKey>], opts: &LaunchOptions) -> Result<Guest, Error> {
        Guest::launch_inner(spec, keys, opts, None)
    }

    /// [`Guest::launch_with`], plus the key of a suspend state to resume.
    pub(crate) fn launch_inner(
        spec: &GuestSpec,
        keys: &[Option<DiskKey>],
        opts: &LaunchOptions,
        state_key: Option<&DiskKey>,
    ) -> Result<Guest, Error> {
        if opts.restore == Some(crate::Restore::Suspended) && state_key.is_none() {
            return Err(crate::suspend::SuspendError::KeyMissing(spec.name.clone()).into());
        }
        let plan = crate::qemu::plan_with(spec, opts)?;
        if let Some(r) = &opts.run_as {
            r.check(&spec.name)?;
        }
        let cgroup = match &opts.limits {
            Some(l) => {
                l.check(&spec.name, spec.profile.memory_mib)?;
                Some(GuestCgroup::create(Path::new(CGROUP_ROOT), &spec.name, l)?)
            }
            None => None,
        };
        check_keys(spec, &plan, keys)?;
        let argv = &plan.argv;
        let run = RunDir::new(&spec.run_dir);
        prepare_run_dir(run.root())?;
        if let Some(pid) = live_pid(&run) {
            return Err(GuestError::AlreadyRunning {
                name: spec.name.clone(),
                pid,
                run_dir: run.root().into(),
            }
            .into());
        }
        for stale in [
            run.qmp_socket(),
            run.pidfile(),
            run.serial_socket(),
            run.vnc_socket(),
            run.agent_socket(),
        ] {
            match std::fs::remove_file(&stale) {
                Ok(()) => tracing::debug!(path = %stale.display(), "removed stale file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(GuestError::RunDir { path: stale, source }.into()),
            }
        }
        if spec.profile.firmware != Firmware::Bios {
            // qemu_args already refused EFI without OVMF.
            if let Some(ovmf) = host_facts()?.ovmf_for(spec.profile.firmware) {
                let to = run.efi_vars();
                if !to.exists() {
                    std::fs::copy(&ovmf.vars_template, &to).map_err(|source| GuestError::EfiVars {
                        from: ovmf.vars_template.clone(),
                        to: to.clone(),
                        source,
                    })?;
                }
            }
        }

        if let Some(r) = &opts.run_as {
            // The run directory too (still 0700): QEMU writes the suspend
            // state there after dropping root.
            let mut files: Vec<&Path> = spec.disks.iter().map(PathBuf::as_path).collect();
            files.push(run.root());
            let vars = run.efi_vars();
            if vars.exists() {
                files.push(&vars);
            }
            r.grant(&files)?;
        }

        let started = Instant::now();
        tracing::info!(guest = %spec.name, accel = %spec.accel, args = ?argv, "starting QEMU");
        let procs: Vec<PathBuf> = cgroup.iter().flat_map(|c| c.dirs()).map(|d| d.join("cgroup.procs")).collect();
        run_daemonizing(&spec.name, argv, &procs)?;
        let pid = read_pidfile(&run.pidfile())?.ok_or_else(|| GuestError::Pidfile {
            path: run.pidfile(),
            detail: "QEMU started but wrote no pid file".into(),
        })?;
        let guest = Guest {
            name: spec.name.clone(),
            run,
            pid,
            qmp: Mutex::new(None),
        };
        match Qmp::connect_retry(&guest.run.qmp_socket(), QMP_PATIENCE) {
            Ok(q) => *guest.lock_qmp() = Some(q),
            Err(e) => {
                // A QEMU we cannot control must not linger.
                let _ = guest.kill();
                return Err(e.into());
            }
        }
        // An incoming migration re-opens the disks when it activates them
        // (at `cont`), which needs the secrets once more: they are deleted
        // only after the restore.
        let incoming = opts.restore == Some(crate::Restore::Suspended);
        if !plan.blockdevs.is_empty() {
            if let Err(e) = guest.open_encrypted_disks(&plan, keys, incoming) {
                let _ = guest.kill();
                return Err(e);
            }
        }
        if let Some(restore) = &opts.restore {
            let restored = guest.restore(restore, state_key);
            let deleted = if incoming {
                plan.blockdevs.iter().try_for_each(|b| {
                    guest
                        .with_qmp(|q| q.execute("object-del", Some(serde_json::json!({ "id": b.secret_id }))))
                        .map(drop)
                })
            } else {
                Ok(())
            };
            if let Err(e) = restored.and(deleted.map_err(Error::from)) {
                let _ = guest.kill();
                return Err(e);
            }
        }
        tracing::info!(guest = %guest.name, pid, ms = started.elapsed().as_millis() as u64, "QEMU started");
        Ok(guest)
    }

    /// Re-attaches to a guest started earlier from `run_dir`, if its QEMU
    /// still runs; `Ok(None)` when it does not.
    pub fn attach(run_dir: &Path) -> Result<Option<Guest>, Error> {
        let run = RunDir::new(run_dir);
        let Some(pid) = live_pid(&run) else {
            return Ok(None);
        };
        let name = cmdline(pid)
            .and_then(|args| {
                let i = args.iter().position(|a| a == "-name")?;
                Some(args.get(i + 1)?.split(',').next()?.to_string())
            })
            .or_else(|| run_dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let qmp = Qmp::connect_retry(&run.qmp_socket(), QMP_PATIENCE)?;
        Ok(Some(Guest {
            name,
            run,
            pid,
            qmp: Mutex::new(Some(qmp)),
        }))
    }

    /// Opens each LUKS disk with its key, then lets QEMU create the devices.
    fn open_encrypted_disks(&self, plan: &Plan, keys: &[Option<DiskKey>], keep_secrets: bool) -> Result<(), Error> {
        for b in &plan.blockdevs {
            // check_keys made sure each encrypted disk has a key.
            let Some(Some(key)) = keys.get(b.disk) else {
                return Err(KeyMatchError::Missing {
                    name: self.name.clone(),
                    disk: b.disk,
                    path: b.path.clone(),
                }
                .into());
            };
            self.with_qmp(|q| q.add_secret(&b.secret_id, &key.passphrase()))?;
            let opened = self.with_qmp(|q| q.execute("blockdev-add", Some(b.arguments.clone())));
            // The passphrase is not needed once the LUKS header is open.
            let deleted = if keep_secrets {
                Ok(serde_json::Value::Null)
            } else {
                self.with_qmp(|q| q.execute("object-del", Some(serde_json::json!({ "id": b.secret_id }))))
            };
            match opened {
                Ok(_) => {}
                Err(QmpError::Command { desc, .. }) => {
                    return Err(GuestError::Unlock {
                        name: self.name.clone(),
                        disk: b.disk,
                        path: b.path.clone(),
                        detail: desc,
                    }
                    .into())
                }
                Err(e) => return Err(e.into()),
            }
            deleted?;
            tracing::info!(guest = %self.name, disk = b.disk, path = %b.path.display(), "encrypted disk opened");
        }
        match self.with_qmp(|q| q.execute("x-exit-preconfig", None)) {
            Ok(_) => Ok(()),
            Err(QmpError::Command { desc, .. }) => Err(GuestError::Preconfig {
                name: self.name.clone(),
                detail: desc,
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        self.run.root()
    }

    /// Which XTS code encrypts this guest's LUKS disks: the batched
    /// preload when QEMU has `libisthmus-xts.so` mapped, else nettle's.
    /// `None` once QEMU is gone. See [`crate::xts`].
    pub fn xts(&self) -> Option<crate::xts::XtsImpl> {
        crate::xts::in_process(self.pid)
    }

    /// True while the QEMU process lives.
    pub fn is_running(&self) -> bool {
        is_our_qemu(self.pid, &self.run)
    }

    /// QEMU's view of the guest (`query-status`); `Stopped` once QEMU is gone.
    pub fn status(&self) -> Result<GuestState, Error> {
        if !self.is_running() {
            return Ok(GuestState::Stopped);
        }
        match self.with_qmp(|q| q.query_status()) {
            Ok(st) => Ok(match st.status.as_str() {
                "running" => GuestState::Running,
                "shutdown" => GuestState::Stopped,
                // paused, prelaunch, suspended, inmigrate, io-error, guest-panicked, ...
                _ => GuestState::Paused,
            }),
            Err(_) if !self.is_running() => Ok(GuestState::Stopped),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs any QMP command (snapshots, device queries, ...) and returns its
    /// `return` value.
    pub fn execute(&self, command: &str, arguments: Option<serde_json::Value>) -> Result<serde_json::Value, Error> {
        Ok(self.with_qmp(|q| q.execute(command, arguments))?)
    }

    /// ACPI power button, wait up to `timeout` for the guest to power off,
    /// then stop QEMU hard (QMP `quit`, then SIGKILL). Returns true when the
    /// guest shut down by itself; false when it had to be stopped or QEMU was
    /// not running when called.
    pub fn powerdown(&self, timeout: Duration) -> Result<bool, Error> {
        if !self.is_running() {
            return Ok(false);
        }
        match self.with_qmp(|q| q.system_powerdown()) {
            Ok(()) => {
                if self.wait_exit(timeout) {
                    tracing::info!(guest = %self.name, "guest powered off");
                    return Ok(true);
                }
                tracing::warn!(guest = %self.name, secs = timeout.as_secs(), "guest ignored the power button; stopping QEMU");
            }
            Err(e) => tracing::warn!(guest = %self.name, error = %e, "system_powerdown failed; stopping QEMU"),
        }
        if let Err(e) = self.with_qmp(|q| q.quit()) {
            tracing::warn!(guest = %self.name, error = %e, "QMP quit failed; sending SIGKILL");
        }
        if !self.wait_exit(QUIT_WAIT) {
            self.kill()?;
        }
        Ok(false)
    }

    /// Stops QEMU at once (SIGKILL) and waits until it is gone.
    pub fn kill(&self) -> Result<(), Error> {
        *self.lock_qmp() = None;
        if !self.is_running() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).map_err(|_| GuestError::Signal {
            pid: self.pid,
            source: nix::Error::EINVAL,
        })?;
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(source) => return Err(GuestError::Signal { pid: self.pid, source }.into()),
        }
        if !self.wait_exit(KILL_WAIT) {
            return Err(GuestError::StillRunning {
                pid: self.pid,
                secs: KILL_WAIT.as_secs(),
            }
            .into());
        }
        Ok(())
    }

    /// Connects to the guest's serial console socket (one client at a time).
    pub fn serial_console(&self, patience: Duration) -> Result<crate::SerialConsole, Error> {
        Ok(crate::SerialConsole::connect(&self.run.serial_socket(), patience)?)
    }

    /// Path of the VNC socket (the VGA console, RFB protocol).
    pub fn vnc_socket(&self) -> PathBuf {
        self.run.vnc_socket()
    }

    /// Path of the serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.run.serial_log()
    }

    /// Waits up to `timeout` for a complete line of the serial log (from its
    /// start, i.e. since this QEMU started) that contains `pattern`, and
    /// returns it without its line ending.
    pub fn wait_for_serial(&self, pattern: &str, timeout: Duration) -> Result<String, Error> {
        let path = self.serial_log();
        let deadline = Instant::now() + timeout;
        let mut log = SerialTail::default();
        loop {
            let alive = self.is_running();
            // Read after the liveness check, so the last output is seen.
            if let Some(line) = log.read_more(&path, pattern, !alive)? {
                return Ok(line);
            }
            if !alive {
                return Err(GuestError::ExitedWaiting {
                    name: self.name.clone(),
                    pattern: pattern.to_string(),
                    path,
                    tail: log.tail(),
                }
                .into());
            }
            if Instant::now() >= deadline {
                return Err(GuestError::SerialTimeout {
                    name: self.name.clone(),
                    pattern: pattern.to_string(),
                    path,
                    secs: timeout.as_secs(),
                    tail: log.tail(),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn lock_qmp(&self) -> MutexGuard<'_, Option<Qmp>> {
        // A panic while holding the lock leaves at worst a half-read QMP
        // stream; the next error drops the connection and we reconnect.
        self.qmp.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the QMP connection, (re)connecting as needed; a failed
    /// connection is dropped so the next call starts afresh.
    pub(crate) fn with_qmp<T>(&self, f: impl FnOnce(&mut Qmp) -> Result<T, QmpError>) -> Result<T, QmpError> {
        let mut slot = self.lock_qmp();
        let q = match slot.as_mut() {
            Some(q) => q,
            None => slot.insert(Qmp::connect_retry(&self.run.qmp_socket(), QMP_PATIENCE)?),
        };
        let r = f(q);
        if matches!(
            r,
            Err(QmpError::Io { .. } | QmpError::Closed { .. } | QmpError::Timeout { .. } | QmpError::Protocol { .. })
        ) {
            *slot = None;
        }
        r
    }

    /// Waits until QEMU is gone, including its other threads: the main
    /// thread turns zombie first, and until the last thread exits the
    /// process still holds its files (the TAP, the disk images), so a new
    /// QEMU on the same TAP would get EBUSY.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() && threads_gone(self.pid) {
                // QEMU is gone: its cgroup (if it had limits) is empty now.
                crate::isolation::remove_cgroup(Path::new(CGROUP_ROOT), &self.name);
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Each LUKS disk needs a key and each key an encrypted disk.
fn check_keys(spec: &GuestSpec, plan: &Plan, keys: &[Option<DiskKey>]) -> Result<(), KeyMatchError> {
    let name = || spec.name.clone();
    let encrypted = |i: usize| plan.blockdevs.iter().any(|b| b.disk == i);
    if !keys.is_empty() && keys.len() != spec.disks.len() {
        return Err(KeyMatchError::Count {
            name: name(),
            keys: keys.len(),
            disks: spec.disks.len(),
        });
    }
    for (i, path) in spec.disks.iter().enumerate() {
        let has_key = keys.get(i).is_some_and(Option::is_some);
        match (encrypted(i), has_key) {
            (true, false) => {
                return Err(KeyMatchError::Missing {
                    name: name(),
                    disk: i,
                    path: path.clone(),
                })
            }
            (false, true) => {
                return Err(KeyMatchError::NotEncrypted {
                    name: name(),
                    disk: i,
                    path: path.clone(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates the run directory (and parents) and makes it private (0700).
fn prepare_run_dir(dir: &Path) -> Result<(), GuestError> {
    let err = |source| GuestError::RunDir {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// The QEMU binary that runs guests: `$ISTHMUS_QEMU` when set (an operator
/// may point at a wrapper or a newer build), else `qemu-system-x86_64` from
/// `PATH`. The accelerator probe and version checks always use the latter.
pub fn guest_qemu_binary() -> std::ffi::OsString {
    std::env::var_os("ISTHMUS_QEMU")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| QEMU_BINARY.into())
}

/// The PID of the guest QEMU started from `run_dir`, if it still runs.
/// Cheap (pid file + /proc), no QMP connection: QEMU serves one QMP client at
/// a time, so status displays must not hold the monitor.
pub fn running_pid(run_dir: &Path) -> Option<u32> {
    live_pid(&RunDir::new(run_dir))
}

/// Runs QEMU with `-daemonize` and waits for the foreground process, which
/// exits once the daemon finished initialising (0) or failed (1, reason on
/// stderr).
fn run_daemonizing(name: &str, argv: &[String], cgroup_procs: &[PathBuf]) -> Result<(), GuestError> {
    let mut cmd = Command::new(guest_qemu_binary());
    if !cgroup_procs.is_empty() {
        let paths: Vec<std::ffi::CString> = cgroup_procs
            .iter()
            .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| GuestError::Spawn(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        #[allow(unsafe_code)] // the one pre_exec of guest start
        // SAFETY: runs in the forked child before exec; it only calls
        // open/write/close (async-signal-safe) on buffers made before the
        // fork, and allocates nothing. Writing "0" to cgroup.procs moves the
        // writing process, so QEMU (and its threads) start inside the cgroup.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                for p in &paths {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
    }
    crate::xts::apply(&mut cmd);
    let mut child = cmd
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuestError::Spawn)?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]);
            }
        })
    })
    .collect();
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GuestError::StartTimeout {
                    name: name.to_string(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
        }
    };
    // The daemon closes the inherited pipes once it is set up; don't hang if
    // it does not.
    let grace = Instant::now() + Duration::from_secs(2);
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = String::from_utf8_lossy(&out.lock().unwrap_or_else(|p| p.into_inner()))
        .trim()
        .to_string();
    if !status.success() {
        return Err(GuestError::Refused {
            name: name.to_string(),
            status,
            stderr: text,
        });
    }
    if !text.is_empty() {
        tracing::warn!(guest = name, qemu = %text, "QEMU printed warnings at start");
    }
    Ok(())
}

/// PID from a pid file; `None` when the file does not exist.
fn read_pidfile(path: &Path) -> Result<Option<u32>, GuestError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u32>().map(Some).map_err(|_| GuestError::Pidfile {
            path: path.to_path_buf(),
            detail: format!("{:?} is not a PID", s.trim()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GuestError::Pidfile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// The PID in `run`'s pid file, if that process is our QEMU and alive.
fn live_pid(run: &RunDir) -> Option<u32> {
    let pid = read_pidfile(&run.pidfile()).ok().flatten()?;
    is_our_qemu(pid, run).then_some(pid)
}

/// True when no thread of `pid` is alive (all gone, or zombies).
fn threads_gone(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            matches!(state, None | Some("Z") | Some("X"))
        })
    })
}

/// Arguments of a process, from /proc.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// True when `pid` lives (not a zombie) and is the QEMU of `run` (its
/// command line names `run`'s pid file), so a recycled PID does not count.
fn is_our_qemu(pid: u32, run: &RunDir) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 3, after the parenthesised command name (which may hold spaces).
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return false;
    }
    let pidfile = run.pidfile();
    cmdline(pid).is_some_and(|args| args.iter().any(|a| Path::new(a) == pidfile))
}

/// Incremental reader of the serial log.
#[derive(Default)]
struct SerialTail {
    offset: u64,
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

impl SerialTail {
    /// Reads what was appended since the last call; returns the first
    /// complete line containing `pattern`. With `flush`, an unterminated
    /// last line counts as complete (QEMU is gone, nothing more will come).
    fn read_more(&mut self, path: &Path, pattern: &str, flush: bool) -> Result<Option<String>, GuestError> {
        let err = |source| GuestError::SerialRead {
            path: path.to_path_buf(),
            source,
        };
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let len = f.metadata().map_err(err)?.len();
        if len < self.offset {
            // Truncated: a new QEMU started with this log.
            *self = SerialTail::default();
        }
        f.seek(SeekFrom::Start(self.offset)).map_err(err)?;
        let mut buf = Vec::new();
        let n = f.read_to_end(&mut buf).map_err(err)?;
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=pos).collect();
            if let Some(hit) = self.take_line(&raw, pattern) {
                return Ok(Some(hit));
            }
        }
        if flush && !self.partial.is_empty() {
            let raw = std::mem::take(&mut self.partial);
            return Ok(self.take_line(&raw, pattern));
        }
        Ok(None)
    }

    fn take_line(&mut self, raw: &[u8], pattern: &str) -> Option<String> {
        let line = String::from_utf8_lossy(raw).trim_end_matches(['\r', '\n']).to_string();
        if line.contains(pattern) {
            return Some(line);
        }
        if !line.trim().is_empty() {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line);
        }
        None
    }

    fn tail(&self) -> String {
        self.tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn serial_tail_matches_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut t = SerialTail::default();
        assert_eq!(t.read_more(&path, "READY", false).unwrap(), None);
        f.write_all(b"boot\r\nISTHMUS-READY par").unwrap();
        assert_eq!(t.read_more(&path, "READY", false).unwrap(), None, "partial line must wait");
        f.write_all(b"tial\r\nmore\r\n").unwrap();
        assert_eq!(
            t.read_more(&path, "READY", false).unwrap().as_deref(),
            Some("ISTHMUS-READY partial")
        );
        f.write_all(b"last words").unwrap();
        assert_eq!(t.read_more(&path, "words", true).unwrap().as_deref(), Some("last words"));
        assert!(t.tail().contains("boot"), "{}", t.tail());
    }

    #[test]
    fn attach_to_nothing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Guest::attach(dir.path()).unwrap().is_none());
        // A pid file naming a process that is not our QEMU (this test).
        std::fs::write(dir.path().join("qemu.pid"), std::process::id().to_string()).unwrap();
        assert!(Guest::attach(dir.path()).unwrap().is_none());
    }

    #[test]
    fn refused_profile_reports_qemu_stderr() {
        use proto::api::AccelKind;
        use proto::{DiskBus, DiskSpec, HardwareProfile};
        let dir = tempfile::tempdir().unwrap();
        // qcow2 magic followed by zeros: QEMU refuses "version 0".
        let disk = dir.path().join("d.qcow2");
        let mut bytes = b"QFI\xfb".to_vec();
        bytes.resize(1 << 16, 0);
        std::fs::write(&disk, bytes).unwrap();
        let spec = GuestSpec {
            name: "refused".into(),
            profile: HardwareProfile {
                firmware: Firmware::Bios,
                machine: proto::Machine::Pc,
                cpus: 1,
                memory_mib: 64,
                disks: vec![DiskSpec::new(DiskBus::Ide, 0, true)],
                nics: vec![],
                smbios: Default::default(),
            },
            disks: vec![disk],
            taps: vec![],
            run_dir: dir.path().join("run"),
            accel: AccelKind::Tcg,
        };
        let e = Guest::launch(&spec).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("QEMU refused the profile of guest refused"), "{msg}");
        assert!(msg.contains("qcow2"), "{msg}");
        let mode = std::fs::metadata(dir.path().join("run")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
