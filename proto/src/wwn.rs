//! World Wide Names of disks: the 64-bit NAA name a SCSI, SAS or ATA disk
//! reports about itself (the SAS address on a SAS HBA, `wwn-0x…` in a Linux
//! guest's `/dev/disk/by-id`, a device-identification VPD entry in Windows).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 64-bit NAA World Wide Name, as written `0x5000c500a1b2c3d4`.
///
/// Its first hex digit is the NAA format; the 64-bit formats are 1 (IEEE
/// 48-bit), 2 (IEEE extended), 3 (locally assigned) and 5 (IEEE registered,
/// what SAS addresses and most disk WWNs are). NAA 6 names are 128 bits long
/// (VMware's virtual disks report such names) and do not fit QEMU's 64-bit
/// `wwn`; they are refused rather than cut.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Wwn(u64);

/// Why a WWN string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WwnParseError {
    /// Not 16 hex digits.
    #[error("invalid WWN {0:?}: expected 16 hex digits like 0x5000c500a1b2c3d4 (`:`, `-` or spaces between bytes are accepted)")]
    Syntax(String),
    /// A NAA format that has no 64-bit form.
    #[error("WWN {value:?} has NAA format {naa}; only the 64-bit NAA formats 1, 2, 3 and 5 fit (a 128-bit NAA 6 name cannot be given to the guest's disk)")]
    Naa {
        /// The string.
        value: String,
        /// Its first hex digit.
        naa: u8,
    },
}

impl Wwn {
    /// The name as a number (QEMU's `wwn=` property).
    pub fn get(self) -> u64 {
        self.0
    }

    /// Its NAA format (the top four bits).
    pub fn naa(self) -> u8 {
        (self.0 >> 60) as u8
    }

    /// Checks the NAA format of `value`.
    pub fn new(value: u64) -> Result<Wwn, WwnParseError> {
        let w = Wwn(value);
        match w.naa() {
            1 | 2 | 3 | 5 => Ok(w),
            naa => Err(WwnParseError::Naa { value: w.to_string(), naa }),
        }
    }
}

impl FromStr for Wwn {
    type Err = WwnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
        let digits: String = t.chars().filter(|c| !matches!(c, ':' | '-' | ' ')).collect();
        if digits.len() != 16 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(WwnParseError::Syntax(s.to_string()));
        }
        let value = u64::from_str_radix(&digits, 16).map_err(|_| WwnParseError::Syntax(s.to_string()))?;
        Wwn::new(value).map_err(|e| match e {
            WwnParseError::Naa { naa, .. } => WwnParseError::Naa { value: s.to_string(), naa },
            other => other,
        })
    }
}

impl fmt::Display for Wwn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

impl fmt::Debug for Wwn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Wwn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Wwn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ways_tools_write_it() {
        let want = Wwn(0x5000_c500_a1b2_c3d4);
        for s in [
            "0x5000c500a1b2c3d4",
            "5000C500A1B2C3D4",
            "50:00:c5:00:a1:b2:c3:d4",
            "50 00 c5 00 a1 b2 c3 d4",
            " 0X5000c500a1b2c3d4 ",
        ] {
            assert_eq!(s.parse::<Wwn>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "0x5000c500a1b2c3d4");
        assert_eq!(want.naa(), 5);
        assert_eq!(serde_json::to_string(&want).unwrap(), r#""0x5000c500a1b2c3d4""#);
        assert_eq!(serde_json::from_str::<Wwn>(r#""0x5000c500a1b2c3d4""#).unwrap(), want);
    }

    #[test]
    fn refuses_wrong_length_digits_and_naa() {
        for s in [
            "",
            "0x",
            "5000c500a1b2c3",
            "5000c500a1b2c3d4ff",
            "5000c500a1b2c3dg",
            "0x0x5000c500a1b2c3d4",
            "+5000c500a1b2c3d",
        ] {
            assert!(matches!(s.parse::<Wwn>(), Err(WwnParseError::Syntax(_))), "{s}");
        }
        // 0 (QEMU's "no WWN"; Linux' mptsas ignores such a SAS disk), NAA 6
        // (a cut 128-bit name), and reserved formats.
        for (s, naa) in [("0000000000000000", 0), ("6000c29a1b2c3d4e", 6), ("f000000000000001", 15)] {
            assert!(
                matches!(s.parse::<Wwn>(), Err(WwnParseError::Naa { naa: n, .. }) if n == naa),
                "{s}"
            );
        }
        assert!(serde_json::from_str::<Wwn>(r#""6000c29a1b2c3d4e""#)
            .unwrap_err()
            .to_string()
            .contains("NAA 6"));
    }
}
