//! The CSL: runs a server under QEMU with the hardware profile it had at its
//! source, and drives it over QMP.
//!
//! CONTRACT (agreed between crates; implementation in progress):
//! - [`GuestSpec`] + [`qemu_args`]: the one typed profile → QEMU mapping.
//! - [`Guest::launch`] / [`Guest::attach`]: start QEMU detached, or re-attach
//!   to a running one after our own process restarted.
//! - [`Guest::powerdown`]: ACPI power button, wait, then hard stop.
//! - [`probe_accel`]: does KVM boot a real guest here? Otherwise TCG.

use std::path::PathBuf;
use std::time::Duration;

use proto::api::AccelKind;
use proto::HardwareProfile;

/// Errors of the CSL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the implementation lands.
    #[error("{0}")]
    Other(String),
}

/// Everything needed to run one guest.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Server name (QEMU `-name`, log prefix).
    pub name: String,
    /// Hardware to present.
    pub profile: HardwareProfile,
    /// Disk image files (qcow2 or raw, detected), one per `profile.disks`.
    pub disks: Vec<PathBuf>,
    /// TAP device names, one per `profile.nics` (must exist or be creatable).
    pub taps: Vec<String>,
    /// Directory for the QMP socket, serial log and pid file.
    pub run_dir: PathBuf,
    /// Accelerator.
    pub accel: AccelKind,
}

/// Result of the accelerator probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelProbe {
    /// What to use.
    pub accel: AccelKind,
    /// Why, in words for logs and the UI.
    pub reason: String,
}

/// Renders the QEMU command line (without the binary) for a spec.
pub fn qemu_args(_spec: &GuestSpec) -> Result<Vec<String>, Error> {
    Err(Error::Other("not implemented yet".into()))
}

/// Probes once per process whether KVM can boot a Linux guest here.
pub fn probe_accel() -> AccelProbe {
    AccelProbe { accel: AccelKind::Tcg, reason: "not implemented yet".into() }
}

/// A QEMU process running a guest.
#[derive(Debug)]
pub struct Guest;

impl Guest {
    /// Starts QEMU detached (own session) so it outlives our process.
    pub fn launch(_spec: &GuestSpec) -> Result<Guest, Error> {
        Err(Error::Other("not implemented yet".into()))
    }
    /// Re-attaches to a guest started earlier in `run_dir`, if it still runs.
    pub fn attach(_run_dir: &std::path::Path) -> Result<Option<Guest>, Error> {
        Ok(None)
    }
    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        0
    }
    /// True while the QEMU process lives.
    pub fn is_running(&self) -> bool {
        false
    }
    /// ACPI power button, wait up to `timeout` for the guest to power off,
    /// then stop QEMU hard. Returns true when the guest shut down by itself.
    pub fn powerdown(&self, _timeout: Duration) -> Result<bool, Error> {
        Ok(false)
    }
    /// Stops QEMU at once.
    pub fn kill(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Path of the serial console log.
    pub fn serial_log(&self) -> PathBuf {
        PathBuf::new()
    }
}
