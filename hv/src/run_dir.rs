//! The per-guest run directory: where QEMU's control socket, pid file,
//! serial log and UEFI variable store live. One layout, used by the argument
//! mapping and by the process lifecycle.

use std::path::{Path, PathBuf};

/// Paths inside a guest's run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// Wraps a run directory path.
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir(root.into())
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// QMP control socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
    /// Serial console log (the guest's ttyS0).
    pub fn serial_log(&self) -> PathBuf {
        self.0.join("serial.log")
    }
    /// Serial console socket (ttyS0 as a byte stream).
    pub fn serial_socket(&self) -> PathBuf {
        self.0.join("serial.sock")
    }
    /// VNC socket (the VGA console).
    pub fn vnc_socket(&self) -> PathBuf {
        self.0.join("vnc.sock")
    }
    /// Guest agent channel (the guest's `org.qemu.guest_agent.0` port).
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("qga.sock")
    }
    /// QEMU's pid file.
    pub fn pidfile(&self) -> PathBuf {
        self.0.join("qemu.pid")
    }
    /// Machine state written by a suspend to disk, sealed by hv (deleted on
    /// resume).
    pub fn suspend_state(&self) -> PathBuf {
        self.0.join("suspend.vmstate")
    }
    /// Unix socket the machine state streams through on suspend and resume
    /// (hv encrypts/decrypts it; QEMU never writes the state file).
    pub fn vmstate_socket(&self) -> PathBuf {
        self.0.join("vmstate.sock")
    }
    /// The guest's own UEFI variable store (copied from the OVMF template).
    pub fn efi_vars(&self) -> PathBuf {
        self.0.join("efi-vars.fd")
    }
}
