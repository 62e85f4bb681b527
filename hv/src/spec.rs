//! What to run: a server's name, its hardware profile and the host resources
//! (disk files, TAP devices, run directory) that back it.

use std::path::PathBuf;

use proto::api::AccelKind;
use proto::profile::ProfileError;
use proto::HardwareProfile;

use crate::tap;

/// Longest server name we accept (it becomes part of paths and of QEMU's
/// `-name`; the kernel keeps 15 bytes of a process name anyway).
pub const MAX_NAME_LEN: usize = 64;

/// Everything needed to run one guest.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Server name (QEMU `-name`, log prefix). 1..=64 of `[A-Za-z0-9_.-]`,
    /// not starting with `.` or `-`.
    pub name: String,
    /// Hardware to present.
    pub profile: HardwareProfile,
    /// Disk image files (qcow2 or raw, detected), one per `profile.disks`.
    pub disks: Vec<PathBuf>,
    /// TAP device names, one per `profile.nics` (must exist: see [`crate::create_tap`]).
    pub taps: Vec<String>,
    /// Directory for the QMP socket, serial log and pid file.
    pub run_dir: PathBuf,
    /// Accelerator.
    pub accel: AccelKind,
}

/// A spec that cannot describe a guest.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The name would be unsafe in a path or in QEMU's option syntax.
    #[error("guest name {0:?} is not usable: use 1 to 64 characters of A-Z a-z 0-9 _ . -, not starting with . or -")]
    Name(String),
    /// Not one disk file per profile disk.
    #[error("guest {name}: the profile has {profile} disk(s) but {files} disk file(s) were given; pass one file per [[disks]] entry, in the same order")]
    DiskCount {
        /// Guest name.
        name: String,
        /// Disks in the profile.
        profile: usize,
        /// Files given.
        files: usize,
    },
    /// Not one TAP per profile NIC.
    #[error("guest {name}: the profile has {profile} NIC(s) but {taps} TAP device(s) were given; pass one TAP per [[nics]] entry, in the same order")]
    TapCount {
        /// Guest name.
        name: String,
        /// NICs in the profile.
        profile: usize,
        /// TAPs given.
        taps: usize,
    },
    /// A TAP name the kernel would refuse.
    #[error("guest {name}: TAP name {tap:?} is not usable: use 1 to 15 characters of A-Z a-z 0-9 _ -")]
    TapName {
        /// Guest name.
        name: String,
        /// The TAP name.
        tap: String,
    },
    /// The run directory is not an absolute path QEMU can take.
    #[error("guest {name}: run directory {path:?} must be an absolute path without control characters")]
    RunDir {
        /// Guest name.
        name: String,
        /// The path.
        path: PathBuf,
    },
    /// The hardware profile itself is inconsistent.
    #[error("guest {name}: invalid hardware profile: {source}")]
    Profile {
        /// Guest name.
        name: String,
        /// What `HardwareProfile::validate` found.
        #[source]
        source: ProfileError,
    },
}

impl GuestSpec {
    /// Checks everything that can be checked without touching the host:
    /// name, counts, TAP names, run directory and the profile's invariants.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !name_is_safe(&self.name) {
            return Err(SpecError::Name(self.name.clone()));
        }
        let name = || self.name.clone();
        self.profile
            .validate()
            .map_err(|source| SpecError::Profile { name: name(), source })?;
        if self.disks.len() != self.profile.disks.len() {
            return Err(SpecError::DiskCount {
                name: name(),
                profile: self.profile.disks.len(),
                files: self.disks.len(),
            });
        }
        if self.taps.len() != self.profile.nics.len() {
            return Err(SpecError::TapCount {
                name: name(),
                profile: self.profile.nics.len(),
                taps: self.taps.len(),
            });
        }
        if let Some(bad) = self.taps.iter().find(|t| !tap::name_is_valid(t)) {
            return Err(SpecError::TapName {
                name: name(),
                tap: bad.clone(),
            });
        }
        let run_dir_ok = self.run_dir.is_absolute() && self.run_dir.to_str().is_some_and(|s| !s.chars().any(char::is_control));
        if !run_dir_ok {
            return Err(SpecError::RunDir {
                name: name(),
                path: self.run_dir.clone(),
            });
        }
        Ok(())
    }
}

/// True for names safe as a path component and inside QEMU options
/// (no `,`, `=`, `/`, whitespace; no leading `.` or `-`).
pub fn name_is_safe(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web01", "db_2", "a", "srv-1.example", &"x".repeat(64)] {
            assert!(name_is_safe(ok), "{ok} refused");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a,b", "a b", "a=b", "..", "é", &"x".repeat(65)] {
            assert!(!name_is_safe(bad), "{bad} accepted");
        }
    }
}
