//! Suspend to disk and resume, with the machine state encrypted
//! ([`crate::vmstate`]): QEMU never writes guest memory to a file itself.
//!
//! Suspend: hv listens on `vmstate.sock` in the guest's private run
//! directory, QEMU (paused) migrates to `unix:` that socket, hv seals the
//! stream into `suspend.vmstate` (0600, root's) and QEMU quits. Resume: QEMU
//! starts with `-incoming defer`, hv checks the key against the file's first
//! chunk (a wrong key is refused before QEMU is fed anything), QEMU listens
//! via `migrate-incoming unix:`, hv opens the chunks into that socket, the
//! guest runs and the file is deleted.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::lifecycle::SNAPSHOT_TIMEOUT;
use crate::run_dir::RunDir;
use crate::vmstate::VmstateError;
use crate::{DiskKey, Error, Guest};

/// How long QEMU may take to connect to, or open, the state socket.
const SOCKET_PATIENCE: Duration = Duration::from_secs(30);

/// Suspending or resuming failed outside QMP.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The state file or socket could not be made, read or written.
    #[error("guest {name}: suspend state {path}: {source}")]
    Io {
        /// Guest name.
        name: String,
        /// File or socket.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not connect to (or offer) the state socket in time.
    #[error("guest {name}: QEMU did not {what} {path} within {secs} s")]
    SocketTimeout {
        /// Guest name.
        name: String,
        /// Connect to / listen on.
        what: &'static str,
        /// Socket.
        path: PathBuf,
        /// Seconds waited.
        secs: u64,
    },
    /// Sealing or opening the state failed (wrong key, damaged file).
    #[error("guest {name}: {source}")]
    State {
        /// Guest name.
        name: String,
        /// What failed.
        #[source]
        source: VmstateError,
    },
    /// A resume from disk was asked for without the state key.
    #[error("guest {0}: resuming a suspended guest needs the key its state was saved with; use Guest::resume_from_disk")]
    KeyMissing(String),
}

impl Guest {
    /// Suspends to disk: stops the vCPUs, streams the machine state over a
    /// unix socket in the run directory, seals it with `key` (AES-256-GCM
    /// under a per-file key derived from it) into `suspend.vmstate` (mode
    /// 0600), then ends QEMU. The disks stay as they are (LUKS ones
    /// encrypted). Resume with [`Guest::resume_from_disk`] and the same key.
    /// On failure the guest runs on and no state file is left.
    pub fn suspend_to_disk(&self, key: &DiskKey) -> Result<(), Error> {
        let run = RunDir::new(self.run_dir());
        let state = run.suspend_state();
        let sock = run.vmstate_socket();
        let io = |path: &Path| self.io_error(path);
        remove_if_there(&sock).map_err(io(&sock))?;
        let listener = UnixListener::bind(&sock).map_err(io(&sock))?;
        // QEMU may run under its own uid: it must be able to connect.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(io(&sock))?;
        if let Some((u, g)) = self.process_ids() {
            std::os::unix::fs::chown(&sock, Some(u), Some(g)).map_err(io(&sock))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&state)
            .map_err(io(&state))?;

        self.pause()?;
        let result = std::thread::scope(|s| {
            let sealer = s.spawn(|| -> Result<u64, Error> {
                let stream = accept(&listener, SOCKET_PATIENCE).map_err(|e| match e.kind() {
                    ErrorKind::TimedOut => SuspendError::SocketTimeout {
                        name: self.name().into(),
                        what: "connect to",
                        path: sock.clone(),
                        secs: SOCKET_PATIENCE.as_secs(),
                    },
                    _ => io(&sock)(e),
                })?;
                stream.set_read_timeout(Some(SNAPSHOT_TIMEOUT)).map_err(io(&sock))?;
                let mut out = BufWriter::new(&file);
                let n = crate::vmstate::seal(stream, &mut out, key).map_err(|source| SuspendError::State {
                    name: self.name().into(),
                    source,
                })?;
                drop(out);
                file.sync_all().map_err(io(&state))?;
                Ok(n)
            });
            let migrated = self
                .execute("migrate", Some(json!({ "uri": format!("unix:{}", sock.display()) })))
                .and_then(|_| self.wait_migration("suspend"));
            if migrated.is_err() {
                // Unblock the sealer's accept if QEMU never connected.
                let _ = UnixStream::connect(&sock);
            }
            let sealed = sealer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            migrated.and(sealed)
        });
        let _ = std::fs::remove_file(&sock);
        let bytes = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&state);
                if let Err(r) = self.resume() {
                    tracing::warn!(guest = %self.name(), error = %r, "cannot resume after a failed suspend");
                }
                return Err(e);
            }
        };
        self.with_qmp(|q| q.quit())?;
        if !self.wait_exit(Duration::from_secs(10)) {
            self.kill()?;
        }
        tracing::info!(guest = %self.name(), state = %state.display(), bytes, "suspended to disk (encrypted)");
        Ok(())
    }

    /// Starts the guest from what [`Guest::suspend_to_disk`] saved:
    /// [`Guest::launch_with`] with [`crate::Restore::Suspended`] and the key
    /// the state was sealed with. A wrong key is refused
    /// ([`VmstateError::WrongKey`]) and the state file kept.
    pub fn resume_from_disk(
        spec: &crate::GuestSpec,
        keys: &[Option<DiskKey>],
        opts: &crate::LaunchOptions,
        state_key: &DiskKey,
    ) -> Result<Guest, Error> {
        let opts = crate::LaunchOptions {
            restore: Some(crate::Restore::Suspended),
            ..opts.clone()
        };
        Guest::launch_inner(spec, keys, &opts, Some(state_key))
    }

    /// Feeds the sealed state into a QEMU waiting with `-incoming defer`,
    /// runs the guest and deletes the state file.
    pub(crate) fn resume_state(&self, key: Option<&DiskKey>) -> Result<(), Error> {
        let key = key.ok_or_else(|| SuspendError::KeyMissing(self.name().into()))?;
        let run = RunDir::new(self.run_dir());
        let state = run.suspend_state();
        let sock = run.vmstate_socket();
        let io = |path: &Path| self.io_error(path);
        let state_err = |source| SuspendError::State {
            name: self.name().into(),
            source,
        };
        crate::vmstate::check_key(BufReader::new(File::open(&state).map_err(io(&state))?), key).map_err(state_err)?;
        remove_if_there(&sock).map_err(io(&sock))?;
        self.execute("migrate-incoming", Some(json!({ "uri": format!("unix:{}", sock.display()) })))?;
        let deadline = Instant::now() + SOCKET_PATIENCE;
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) if Instant::now() >= deadline => {
                    return Err(SuspendError::SocketTimeout {
                        name: self.name().into(),
                        what: "listen on",
                        path: sock,
                        secs: SOCKET_PATIENCE.as_secs(),
                    }
                    .into())
                }
                Err(e) => return Err(io(&sock)(e).into()),
            }
        };
        stream.set_write_timeout(Some(SNAPSHOT_TIMEOUT)).map_err(io(&sock))?;
        let input = BufReader::new(File::open(&state).map_err(io(&state))?);
        let fed = crate::vmstate::open(input, &stream, key).map_err(state_err);
        // EOF for QEMU either way: a partial stream fails its load.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        fed?;
        self.wait_migration("resume")?;
        // The memory image must not outlive the resume.
        if let Err(e) = std::fs::remove_file(&state) {
            tracing::warn!(path = %state.display(), error = %e, "cannot remove the suspend state");
        }
        if self.execute("query-status", None)?["running"] != json!(true) {
            self.resume()?;
        }
        Ok(())
    }
}

impl Guest {
    /// Maps an I/O error on `path` to [`SuspendError::Io`] for this guest.
    fn io_error(&self, path: &Path) -> impl FnOnce(std::io::Error) -> SuspendError {
        let path = path.to_path_buf();
        let name = self.name().to_string();
        move |source| SuspendError::Io { name, path, source }
    }
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Accepts one connection within `patience`.
fn accept(listener: &UnixListener, patience: Duration) -> std::io::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + patience;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(ErrorKind::TimedOut.into()),
            Err(e) => return Err(e),
        }
    }
}
