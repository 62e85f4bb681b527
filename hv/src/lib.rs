//! The CSL: runs a server under QEMU with the hardware profile it had at its
//! source, and drives it over QMP.
//!
//! - [`GuestSpec`] + [`qemu_args`]: the one typed profile → QEMU mapping
//!   ([`qemu::devices`] builds typed [`qemu::args::Arg`] values, rendered once).
//! - [`Guest::launch`] / [`Guest::attach`]: start QEMU detached, or re-attach
//!   to a running one after our own process restarted.
//! - [`Guest::powerdown`]: ACPI power button, wait, then hard stop.
//! - [`probe_accel`]: does KVM boot a real Linux guest here? Otherwise TCG.
//! - [`create_tap`] / [`delete_tap`]: persistent TAP devices the guest's NICs
//!   use (QEMU opens them by name, netbridge attaches to them).

pub mod accel;
pub mod guest;
pub mod qemu;
pub mod run_dir;
pub mod spec;
pub mod tap;

pub use accel::{probe_accel, probe_accel_with, AccelProbe, ProbeOptions};
pub use guest::Guest;
pub use qemu::qemu_args;
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
    /// Creating or deleting a TAP device failed.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
}
