//! The CSL: runs a server under QEMU with the hardware profile it had at its
//! source, and drives it over QMP.
//!
//! - [`GuestSpec`] + [`qemu_args`]: the one typed profile → QEMU mapping
//!   ([`qemu::devices`] builds typed [`qemu::args::Arg`] values, rendered once).
//! - [`Guest::launch`] / [`Guest::attach`]: start QEMU detached, or re-attach
//!   to a running one after our own process restarted.
//! - [`Guest::launch_with_keys`]: the same with LUKS-encrypted qcow2 disks,
//!   whose keys ([`DiskKey`]) reach QEMU only as QMP secret objects;
//!   [`create_encrypted_image`] makes such disks.
//! - [`Guest::powerdown`]: ACPI power button, wait, then hard stop.
//! - [`SerialConsole`]: the guest's ttyS0 over its unix socket.
//! - [`lifecycle`]: pause/resume, reset, snapshots,
//!   block/process/TAP counters; [`events`]: the typed event stream;
//!   [`stats`]: `query-stats` (VM/vCPU) and all counters in one
//!   `GuestStats` ([`Guest::stats`]).
//! - [`Guest::launch_with`] + [`LaunchOptions`]: pvpanic, unprivileged ids,
//!   cgroup limits ([`isolation`]), start from saved state.
//! - [`AliveWatch`]: is the guest alive? Guest agent ping, else serial
//!   console / disk activity; reports the alive → hung transition.
//! - [`Guest::suspend_to_disk`] / [`Guest::resume_from_disk`]: machine
//!   state sealed by hv ([`vmstate`]), never plaintext on the node's disk.
//! - [`restart`]: restart-on-crash policy and the [`Supervisor`] applying it.
//! - [`probe_accel`]: does KVM boot a real Linux guest here? Otherwise TCG.
//! - [`storage_daemon::EncryptedDisk`]: a LUKS qcow2 opened by
//!   `qemu-storage-daemon` (key over QMP) and read/written over NBD ([`nbd`]).
//! - [`create_tap`] / [`delete_tap`]: persistent TAP devices the guest's NICs
//!   use (QEMU opens them by name, netbridge attaches to them).

pub mod accel;
pub mod agent;
pub mod alive;
pub mod console;
pub mod disk_key;
pub mod events;
pub mod guest;
pub mod isolation;
pub mod lifecycle;
pub mod nbd;
pub mod options;
pub mod qemu;
pub mod restart;
pub mod run_dir;
pub mod spec;
pub mod stats;
pub mod storage_daemon;
pub mod suspend;
pub mod tap;
pub mod vmstate;
pub mod xts;

pub use accel::{probe_accel, probe_accel_with, AccelProbe, ProbeOptions};
pub use alive::{AliveChange, AliveConfig, AliveSource, AliveStatus, AliveWatch};
pub use console::SerialConsole;
pub use disk_key::DiskKey;
pub use events::GuestEvent;
pub use guest::Guest;
pub use isolation::{GuestCgroup, Limits, RunAs};
pub use lifecycle::{tap_stats, SnapshotInfo};
pub use options::{LaunchOptions, PanicDevice, Restore};
pub use qemu::luks::{create_encrypted_image, ImageSource};
pub use qemu::qemu_args;
pub use restart::{Decision, Ending, RestartMode, RestartPolicy, Supervisor, SupervisorEvent};
pub use spec::GuestSpec;
pub use tap::{create_tap, delete_tap};

/// Errors of the CSL. Each variant carries the error of the module that
/// failed; those say what failed, where, and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest spec cannot describe a machine (bad name, counts, profile).
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The profile needs something this host lacks, or a value QEMU cannot take.
    #[error(transparent)]
    Map(#[from] qemu::devices::MapError),
    /// A disk image could not be inspected.
    #[error(transparent)]
    Image(#[from] qemu::image::ImageError),
    /// The QEMU binary could not be run or inspected.
    #[error(transparent)]
    Host(#[from] qemu::host::HostError),
    /// Talking to QEMU's monitor failed.
    #[error(transparent)]
    Qmp(#[from] qemu::qmp::QmpError),
    /// Starting, watching or stopping the QEMU process failed.
    #[error(transparent)]
    Guest(#[from] guest::GuestError),
    /// Disk keys do not match the disks.
    #[error(transparent)]
    DiskKey(#[from] disk_key::KeyMatchError),
    /// An encrypted image could not be made.
    #[error(transparent)]
    Luks(#[from] qemu::luks::LuksError),
    /// A lifecycle or monitoring operation failed.
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    /// The serial console failed.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    /// Isolating the guest (ids, cgroup) failed.
    #[error(transparent)]
    Isolation(#[from] isolation::IsolationError),
    /// Suspending to disk or resuming failed (state file, socket, key).
    #[error(transparent)]
    Suspend(#[from] suspend::SuspendError),
    /// Creating or deleting a TAP device failed.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
}
