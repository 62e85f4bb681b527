//! How to start a guest beyond its spec: the panic device, isolation
//! (ids, cgroup limits) and what state to start from.

use crate::isolation::{Limits, RunAs};
use crate::qemu::args::Arg;

/// The pvpanic device a source had (QEMU/KVM sources; VMware has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicDevice {
    /// ISA `pvpanic` at I/O port 0x505 (libvirt `<panic model='isa'/>`).
    Isa,
    /// PCI `pvpanic-pci` (1b36:0011).
    Pci,
}

/// State to start from instead of a cold boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restore {
    /// Resume what [`crate::Guest::suspend_to_disk`] saved (QEMU starts
    /// with `-incoming defer`); the state file is deleted once loaded. Needs
    /// the state key: start with [`crate::Guest::resume_from_disk`].
    Suspended,
    /// Start from internal snapshot `tag` (e.g. the last known good one);
    /// the snapshot is kept.
    Snapshot(String),
}

/// Options of [`crate::Guest::launch_with`]; the default is what
/// [`crate::Guest::launch`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Give the guest this panic device (only when its source had one: it is
    /// guest-visible hardware). Panics then arrive as
    /// [`crate::GuestEvent::Panicked`] with the vCPUs stopped.
    pub panic_device: Option<PanicDevice>,
    /// Run QEMU under these ids (`-run-with user=uid:gid`); disk files are
    /// handed to them.
    pub run_as: Option<RunAs>,
    /// Put QEMU in its own cgroup with these limits.
    pub limits: Option<Limits>,
    /// Start from saved state.
    pub restore: Option<Restore>,
    /// Give the guest a guest-agent channel (virtio-serial port
    /// `org.qemu.guest_agent.0`, socket `qga.sock` in the run directory),
    /// used by [`crate::AliveWatch`]. Only when the source had one (libvirt
    /// guests usually do): the virtio-serial controller is guest-visible.
    pub guest_agent: bool,
}

impl LaunchOptions {
    /// QEMU arguments these options add to the profile's.
    pub(crate) fn args(&self, run: &crate::run_dir::RunDir) -> Vec<Arg> {
        let mut a = Vec::new();
        match self.panic_device {
            Some(PanicDevice::Pci) => a.push(Arg::PvpanicPci),
            Some(PanicDevice::Isa) => a.push(Arg::PvpanicIsa),
            None => {}
        }
        if let Some(r) = self.run_as {
            a.push(Arg::RunWith { uid: r.uid, gid: r.gid });
        }
        if self.guest_agent {
            a.push(Arg::GuestAgent(run.agent_socket()));
        }
        match self.restore {
            Some(Restore::Suspended) => a.push(Arg::IncomingDefer),
            Some(Restore::Snapshot(_)) => a.push(Arg::StartStopped),
            None => {}
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::args::render;

    #[test]
    fn option_args() {
        let run = crate::run_dir::RunDir::new("/run/isthmus/g1");
        assert!(LaunchOptions::default().args(&run).is_empty());
        let o = LaunchOptions {
            panic_device: Some(PanicDevice::Pci),
            run_as: Some(RunAs { uid: 64001, gid: 64002 }),
            limits: None,
            restore: Some(Restore::Suspended),
            guest_agent: true,
        };
        assert_eq!(
            render(&o.args(&run)),
            [
                "-device",
                "pvpanic-pci",
                "-action",
                "panic=pause",
                "-run-with",
                "user=64001:64002",
                "-chardev",
                "socket,id=qga0,path=/run/isthmus/g1/qga.sock,server=on,wait=off",
                "-device",
                "virtio-serial-pci,id=qgaserial0",
                "-device",
                "virtserialport,bus=qgaserial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
                "-incoming",
                "defer"
            ]
        );
        let o = LaunchOptions {
            restore: Some(Restore::Snapshot("lkg".into())),
            ..Default::default()
        };
        assert_eq!(render(&o.args(&run)), ["-S"]);
    }
}
