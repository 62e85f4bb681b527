//! Disk serial numbers: the string a disk reports about itself (ATA
//! IDENTIFY, SCSI VPD page 0x80, virtio-blk `GET_ID`, NVMe Identify), which
//! a Linux guest puts in `/dev/disk/by-id/ata-…_<serial>`,
//! `virtio-<serial>`, `scsi-…` and `nvme-…` names that fstab, LVM filters
//! and Windows volume tools can depend on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DiskBus;

/// The longest serial QEMU takes on any disk device: `scsi-hd`'s
/// `MAX_SERIAL_LEN` (QEMU 10.0 refuses longer ones with "The serial number
/// can't be longer than 36 characters").
pub const MAX_SERIAL_BYTES: usize = 36;

/// The longest serial an ATA/IDE disk (IDENTIFY words 10–19), a virtio-blk
/// disk (`VIRTIO_BLK_ID_BYTES`) or an NVMe controller (Identify `SN`)
/// carries. QEMU cuts longer ones silently for these devices; a profile
/// refuses them instead, so the guest never sees a different name.
pub const MAX_SERIAL_BYTES_SHORT: usize = 20;

/// A disk serial number: 1 to [`MAX_SERIAL_BYTES`] printable ASCII
/// characters (space to `~`), without leading or trailing spaces (the
/// guest trims them, so they could not survive the move). A `,` is fine:
/// hv doubles it on QEMU's command line.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskSerial(String);

/// Why a serial string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSerialError {
    /// Empty or only spaces.
    #[error("empty disk serial: remove the serial or give its value")]
    Empty,
    /// Longer than any QEMU disk device takes.
    #[error(
        "disk serial {value:?} is {len} bytes long; QEMU disks carry at most {MAX_SERIAL_BYTES} (20 on ide, sata, virtio-blk and nvme)"
    )]
    TooLong {
        /// The string.
        value: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A byte outside printable ASCII, or spaces at either end.
    #[error("disk serial {0:?} has characters a disk cannot report: use printable ASCII (space to ~) without spaces at either end")]
    Chars(String),
}

impl DiskSerial {
    /// The serial as QEMU's `serial=` takes it (before option escaping).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its length in bytes (= characters, being ASCII).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a serial has at least one character); for clippy's
    /// `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a disk on `bus` can carry this serial whole.
    pub fn fits(&self, bus: DiskBus) -> bool {
        self.len() <= max_serial_bytes(bus)
    }
}

/// The longest serial a disk on `bus` reports whole: [`MAX_SERIAL_BYTES`]
/// on the SCSI buses (VPD page 0x80), [`MAX_SERIAL_BYTES_SHORT`] elsewhere.
pub fn max_serial_bytes(bus: DiskBus) -> usize {
    match bus {
        DiskBus::Ide | DiskBus::Sata | DiskBus::VirtioBlk | DiskBus::Nvme => MAX_SERIAL_BYTES_SHORT,
        DiskBus::Scsi | DiskBus::Lsisas1068 | DiskBus::Megasas | DiskBus::Pvscsi | DiskBus::VirtioScsi | DiskBus::Buslogic => {
            MAX_SERIAL_BYTES
        }
    }
}

impl FromStr for DiskSerial {
    type Err = DiskSerialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(DiskSerialError::Empty);
        }
        if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) || s.starts_with(' ') || s.ends_with(' ') {
            return Err(DiskSerialError::Chars(s.to_string()));
        }
        if s.len() > MAX_SERIAL_BYTES {
            return Err(DiskSerialError::TooLong {
                value: s.to_string(),
                len: s.len(),
            });
        }
        Ok(DiskSerial(s.to_string()))
    }
}

impl fmt::Display for DiskSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DiskSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for DiskSerial {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DiskSerial {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_disks_report() {
        for s in ["S3Z9NB0K123456A", "WD-WCC4N1234567", "QM00001", "a,b", "x", "with inner space"] {
            assert_eq!(s.parse::<DiskSerial>().unwrap().as_str(), s);
        }
        let max = "A".repeat(MAX_SERIAL_BYTES);
        assert_eq!(max.parse::<DiskSerial>().unwrap().len(), MAX_SERIAL_BYTES);
        let s: DiskSerial = serde_json::from_str(r#""SN-1,2""#).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""SN-1,2""#);
    }

    #[test]
    fn refuses_what_no_disk_carries() {
        assert_eq!("".parse::<DiskSerial>(), Err(DiskSerialError::Empty));
        assert_eq!("   ".parse::<DiskSerial>(), Err(DiskSerialError::Empty));
        for s in [" lead", "trail ", "tab\there", "nl\n", "é", "nul\0"] {
            assert!(matches!(s.parse::<DiskSerial>(), Err(DiskSerialError::Chars(_))), "{s:?}");
        }
        let long = "A".repeat(MAX_SERIAL_BYTES + 1);
        let e = long.parse::<DiskSerial>().unwrap_err();
        assert!(matches!(e, DiskSerialError::TooLong { len: 37, .. }), "{e}");
        assert!(serde_json::from_str::<DiskSerial>(&format!("\"{long}\"")).is_err());
    }

    #[test]
    fn bus_limits() {
        let s20: DiskSerial = "A".repeat(20).parse().unwrap();
        let s21: DiskSerial = "A".repeat(21).parse().unwrap();
        for bus in [DiskBus::Ide, DiskBus::Sata, DiskBus::VirtioBlk, DiskBus::Nvme] {
            assert!(s20.fits(bus) && !s21.fits(bus), "{bus:?}");
        }
        for bus in [
            DiskBus::Scsi,
            DiskBus::Lsisas1068,
            DiskBus::Megasas,
            DiskBus::Pvscsi,
            DiskBus::VirtioScsi,
        ] {
            assert!(s21.fits(bus), "{bus:?}");
        }
    }
}
