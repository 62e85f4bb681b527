//! QEMU: typed arguments, the profile → device mapping, host facts, disk
//! image inspection and the QMP client.

pub mod args;
pub mod devices;
pub mod host;
pub mod image;
pub mod qmp;

use crate::{Error, GuestSpec};

/// Renders the QEMU command line (without the binary) for a spec: validates
/// it, inspects the disk images (format, O_DIRECT) and the host's QEMU, then
/// maps the profile with [`devices::build`].
pub fn qemu_args(spec: &GuestSpec) -> Result<Vec<String>, Error> {
    spec.validate()?;
    let disks = spec
        .disks
        .iter()
        .map(|p| image::DiskImage::inspect(p))
        .collect::<Result<Vec<_>, _>>()?;
    let facts = host::host_facts()?;
    Ok(args::render(&devices::build(spec, &disks, facts)?))
}
