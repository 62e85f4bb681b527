//! Risks: what inside the guest depends on something a move could change.

use proto::facts::{Binding, DeviceRef, FstabEntry, NetConfig, Risk};

use super::fstab::device_bus;

fn risk(code: &str, message: String) -> Risk {
    Risk {
        code: code.into(),
        message,
    }
}

/// Risks of fstab entries, kernel `root=` values and network bindings.
pub fn assess(fstab: &[FstabEntry], kernel_roots: &[String], network: &[NetConfig]) -> Vec<Risk> {
    let mut out = vec![];
    for e in fstab.iter().filter(|e| e.refers_by == DeviceRef::Device) {
        let bus = device_bus(&e.spec).unwrap_or("the same");
        out.push(risk(
            "fstab-device-path",
            format!(
                "fstab names {} for {}; target bus must stay {bus} and the disk order must stay the same",
                e.spec, e.mount_point
            ),
        ));
    }
    for r in kernel_roots {
        if let Some(bus) = device_bus(r) {
            out.push(risk(
                "kernel-cmdline-device",
                format!("boot loader passes root={r}; target bus must stay {bus} and the disk order must stay the same"),
            ));
        }
    }
    for n in network {
        let what = n
            .interface
            .as_deref()
            .map(|i| format!("{i} config"))
            .unwrap_or_else(|| "network config".into());
        match (n.binding, n.mac) {
            (Binding::Mac, Some(m)) => {
                let code = if n.source == "udev" || n.source == "systemd-link" {
                    "udev-persistent-net"
                } else {
                    "net-bound-to-mac"
                };
                out.push(risk(code, format!("{what} ({}) bound to MAC {m}; the MAC must be kept", n.file)));
            }
            (Binding::InterfaceName, _) => {
                let name = n.interface.as_deref().unwrap_or("?");
                out.push(risk(
                    "net-bound-to-name",
                    format!(
                        "{what} ({}) bound to interface name {name}; keep the NIC model, PCI slot and order so the guest still calls it {name}",
                        n.file
                    ),
                ));
            }
            _ => {}
        }
    }
    out
}
