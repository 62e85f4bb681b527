//! What of a source disk's identity (its WWN and serial number) the
//! hardware profile can keep, and a sentence for each part it cannot: the
//! guest names disks by them (`/dev/disk/by-id/wwn-0x…`, `ata-…_<serial>`,
//! `virtio-<serial>`), so each one dropped is reported, never silent.

use std::collections::HashSet;

use proto::disk_serial::max_serial_bytes;
use proto::{DiskBus, DiskSerial, Wwn};

/// Checks disk identities one disk at a time, remembering what the profile
/// needs unique or shared across disks.
#[derive(Default)]
pub(crate) struct IdentityCheck {
    wwns: HashSet<Wwn>,
    nvme_serial: Option<DiskSerial>,
}

impl IdentityCheck {
    /// The WWN and serial disk `i` on controller `ctrl` (profile bus `bus`)
    /// keeps; for each one it cannot keep, a sentence in `lost`.
    pub(crate) fn keep(
        &mut self,
        i: usize,
        ctrl: &str,
        bus: DiskBus,
        wwn: Option<Wwn>,
        serial: Option<&str>,
        lost: &mut Vec<String>,
    ) -> (Option<Wwn>, Option<DiskSerial>) {
        let wwn = wwn.filter(|w| {
            if matches!(bus, DiskBus::VirtioBlk | DiskBus::Nvme) {
                lost.push(format!(
                    "disk {i} on {ctrl}: WWN {w}: {bus:?} disks carry no WWN; the guest will not see it"
                ));
                false
            } else if !self.wwns.insert(*w) {
                lost.push(format!(
                    "disk {i} on {ctrl}: WWN {w} is another disk's too; only the first keeps it"
                ));
                false
            } else {
                true
            }
        });
        let serial = serial.and_then(|raw| match raw.parse::<DiskSerial>() {
            Err(e) => {
                lost.push(format!("disk {i} on {ctrl}: {e}; the disk keeps no serial"));
                None
            }
            Ok(s) if !s.fits(bus) => {
                lost.push(format!(
                    "disk {i} on {ctrl}: serial {raw:?} is {} bytes, but {bus:?} disks carry at most {}; the disk keeps no serial (the guest's by-id name changes)",
                    s.len(),
                    max_serial_bytes(bus)
                ));
                None
            }
            Ok(s) if bus == DiskBus::Nvme => match &self.nvme_serial {
                Some(first) if *first != s => {
                    lost.push(format!(
                        "disk {i} on {ctrl}: serial {raw:?} differs from {first}, the serial of the NVMe controller all NVMe disks share; the disk keeps {first}"
                    ));
                    None
                }
                _ => {
                    self.nvme_serial = Some(s.clone());
                    Some(s)
                }
            },
            Ok(s) => Some(s),
        });
        (wwn, serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_and_says_what_does_not() {
        let mut c = IdentityCheck::default();
        let mut lost = Vec::new();
        let w: Wwn = "0x5000c500a1b2c3d4".parse().unwrap();
        let (kw, ks) = c.keep(0, "sata0", DiskBus::Sata, Some(w), Some("WD-WCC4N1234567"), &mut lost);
        assert_eq!((kw, ks.as_ref().map(DiskSerial::as_str)), (Some(w), Some("WD-WCC4N1234567")));
        assert!(lost.is_empty(), "{lost:?}");

        // Same WWN again; a serial too long for SATA (fine on SCSI).
        let long = "6000c29a1b2c3d4e5f60718293a4b5c6";
        let (kw, ks) = c.keep(1, "sata0", DiskBus::Sata, Some(w), Some(long), &mut lost);
        assert_eq!((kw, ks), (None, None));
        assert!(lost[0].contains("disk 1 on sata0") && lost[0].contains("another disk"), "{lost:?}");
        assert!(lost[1].contains("disk 1 on sata0") && lost[1].contains("at most 20"), "{lost:?}");
        let (_, ks) = c.keep(2, "scsi0", DiskBus::Scsi, None, Some(long), &mut lost);
        assert_eq!(ks.unwrap().as_str(), long);

        // Not printable; a WWN on virtio-blk.
        lost.clear();
        let (kw, ks) = c.keep(3, "virtio0", DiskBus::VirtioBlk, Some(w), Some("bad\u{7}"), &mut lost);
        assert_eq!((kw, ks), (None, None));
        assert!(
            lost[0].contains("disk 3 on virtio0") && lost[0].contains("carry no WWN"),
            "{lost:?}"
        );
        assert!(lost[1].contains("printable ASCII"), "{lost:?}");

        // NVMe disks share the controller's serial.
        lost.clear();
        assert!(c.keep(4, "nvme0", DiskBus::Nvme, None, Some("NV-A"), &mut lost).1.is_some());
        assert!(c.keep(5, "nvme0", DiskBus::Nvme, None, Some("NV-A"), &mut lost).1.is_some());
        assert!(c.keep(6, "nvme0", DiskBus::Nvme, None, Some("NV-B"), &mut lost).1.is_none());
        assert!(
            lost.len() == 1 && lost[0].contains("disk 6") && lost[0].contains("NV-A"),
            "{lost:?}"
        );
    }
}
