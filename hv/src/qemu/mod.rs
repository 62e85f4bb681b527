//! QEMU: typed arguments, the profile → device mapping, host facts, disk
//! image inspection and the QMP client.

pub mod args;
pub mod devices;
pub mod host;
pub mod image;
pub mod luks;
pub mod luks_header;
pub mod luks_template;
pub mod qmp;

use crate::{Error, GuestSpec};

/// Renders the QEMU command line (without the binary) for a spec: validates
/// it, inspects the disk images (format, O_DIRECT) and the host's QEMU, then
/// maps the profile with [`devices::build`].
pub fn qemu_args(spec: &GuestSpec) -> Result<Vec<String>, Error> {
    Ok(plan(spec)?.argv)
}

/// What starting a guest takes: QEMU's command line and the disks to open
/// over QMP before devices are created (the LUKS ones).
#[derive(Clone, Debug)]
pub struct Plan {
    /// `argv` without the binary.
    pub argv: Vec<String>,
    /// Encrypted disks, opened with their keys during `-preconfig`.
    pub blockdevs: Vec<devices::QmpBlockdev>,
}

/// Validates the spec, inspects its disk images and the host, and maps it.
pub fn plan(spec: &GuestSpec) -> Result<Plan, Error> {
    plan_with(spec, &crate::LaunchOptions::default())
}

/// [`plan`] plus the arguments of launch options (panic device, ids, `-S`).
pub fn plan_with(spec: &GuestSpec, opts: &crate::LaunchOptions) -> Result<Plan, Error> {
    spec.validate()?;
    let disks = spec
        .disks
        .iter()
        .map(|p| image::DiskImage::inspect(p))
        .collect::<Result<Vec<_>, _>>()?;
    let facts = host::host_facts()?;
    Ok(Plan {
        argv: args::render(
            &[
                devices::build(spec, &disks, facts)?,
                opts.args(&crate::run_dir::RunDir::new(&spec.run_dir)),
            ]
            .concat(),
        ),
        blockdevs: devices::qmp_blockdevs(spec, &disks),
    })
}
