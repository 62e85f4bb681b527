//! Keeping guests on one host apart: each QEMU runs under its own user and
//! group ids (`-run-with user=uid:gid`, after it opened its TAP and sockets),
//! under QEMU's seccomp filter, and in its own cgroup with a CPU quota and a
//! memory limit.
//!
//! Cgroups: v2 (`/sys/fs/cgroup/cgroup.controllers` exists) gets
//! `isthmus/<guest>/` with `cpu.max` and `memory.max`; on a host still on v1
//! (like this project's CI machine) the same limits go to
//! `cpu/isthmus/<guest>/cpu.cfs_quota_us` and
//! `memory/isthmus/<guest>/memory.limit_in_bytes`. Moving QEMU's pid into
//! `cgroup.procs` moves all its threads.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Our sub-tree under each hierarchy.
const SUBTREE: &str = "isthmus";
/// CPU quota period (µs), the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

/// Unprivileged ids QEMU runs under. Give each guest its own pair, so one
/// compromised QEMU cannot open another guest's disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id (not 0).
    pub uid: u32,
    /// Group id (not 0).
    pub gid: u32,
}

/// Resource limits for one guest's QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per 100 ms period, in percent of one CPU (100 = one full
    /// CPU; 150 = one and a half).
    pub cpu_percent: u32,
    /// Memory limit for the whole QEMU process (guest RAM + QEMU's own).
    pub memory_mib: u64,
}

/// Isolating a guest failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// Root ids would defeat the point.
    #[error("guest {name}: run_as uid/gid 0 is root; give each guest its own unprivileged uid:gid")]
    Root {
        /// Guest name.
        name: String,
    },
    /// A limit out of range.
    #[error("guest {name}: limits cpu_percent={cpu_percent} memory_mib={memory_mib}: use 1..=25500 % and at least the guest's memory + 64 MiB ({min_mib} MiB)")]
    Limits {
        /// Guest name.
        name: String,
        /// Asked CPU.
        cpu_percent: u32,
        /// Asked memory.
        memory_mib: u64,
        /// Least memory that can work.
        min_mib: u64,
    },
    /// No usable cgroup hierarchy.
    #[error("no cgroup v2 controllers and no v1 cpu + memory hierarchies under {CGROUP_ROOT}; mount cgroup2 (systemd does) or run without limits")]
    NoCgroups,
    /// Writing a cgroup file failed.
    #[error("cannot write {value:?} to {path}: {source}; is {CGROUP_ROOT} writable (root, not a read-only container mount)?")]
    Cgroup {
        /// File.
        path: PathBuf,
        /// What we wrote.
        value: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// Handing a file to the guest's ids failed.
    #[error("cannot give {path} to uid {uid} gid {gid}: {source}")]
    Chown {
        /// File.
        path: PathBuf,
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

impl RunAs {
    /// Refuses root ids.
    pub fn check(&self, name: &str) -> Result<(), IsolationError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(IsolationError::Root { name: name.into() });
        }
        Ok(())
    }

    /// Makes `paths` (disk images, the UEFI variable store) owned by these
    /// ids, so QEMU can still open them after dropping root (LUKS disks are
    /// opened after the drop, during `-preconfig`).
    pub fn grant(&self, paths: &[&Path]) -> Result<(), IsolationError> {
        for p in paths {
            chown(p, Some(self.uid), Some(self.gid)).map_err(|source| IsolationError::Chown {
                path: p.to_path_buf(),
                uid: self.uid,
                gid: self.gid,
                source,
            })?;
        }
        Ok(())
    }
}

impl Limits {
    /// Checks the limits against the guest's memory size.
    pub fn check(&self, name: &str, guest_memory_mib: u32) -> Result<(), IsolationError> {
        let min_mib = u64::from(guest_memory_mib) + 64;
        if !(1..=25_500).contains(&self.cpu_percent) || self.memory_mib < min_mib {
            return Err(IsolationError::Limits {
                name: name.into(),
                cpu_percent: self.cpu_percent,
                memory_mib: self.memory_mib,
                min_mib,
            });
        }
        Ok(())
    }

    fn quota_us(&self) -> u64 {
        CPU_PERIOD_US * u64::from(self.cpu_percent) / 100
    }
}

/// The cgroup(s) of one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestCgroup {
    /// cgroup v2: one directory.
    V2(PathBuf),
    /// cgroup v1: the cpu and the memory directories.
    V1 {
        /// `cpu/isthmus/<guest>`.
        cpu: PathBuf,
        /// `memory/isthmus/<guest>`.
        memory: PathBuf,
    },
}

fn write(path: &Path, value: &str) -> Result<(), IsolationError> {
    std::fs::write(path, value).map_err(|source| IsolationError::Cgroup {
        path: path.to_path_buf(),
        value: value.into(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), IsolationError> {
    std::fs::create_dir_all(path).map_err(|source| IsolationError::Cgroup {
        path: path.to_path_buf(),
        value: "(mkdir)".into(),
        source,
    })
}

impl GuestCgroup {
    /// Creates (or reuses) the guest's cgroup under `root` and sets its limits.
    pub fn create(root: &Path, guest: &str, limits: &Limits) -> Result<GuestCgroup, IsolationError> {
        let mem_bytes = (limits.memory_mib << 20).to_string();
        if root.join("cgroup.controllers").is_file() {
            let parent = root.join(SUBTREE);
            mkdir(&parent)?;
            // Controllers must be enabled on the way down.
            write(&root.join("cgroup.subtree_control"), "+cpu +memory")?;
            write(&parent.join("cgroup.subtree_control"), "+cpu +memory")?;
            let dir = parent.join(guest);
            mkdir(&dir)?;
            write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", limits.quota_us()))?;
            write(&dir.join("memory.max"), &mem_bytes)?;
            return Ok(GuestCgroup::V2(dir));
        }
        let (cpu_root, mem_root) = (root.join("cpu"), root.join("memory"));
        if !cpu_root.join("cpu.cfs_quota_us").is_file() || !mem_root.join("memory.limit_in_bytes").is_file() {
            return Err(IsolationError::NoCgroups);
        }
        let cpu = cpu_root.join(SUBTREE).join(guest);
        let memory = mem_root.join(SUBTREE).join(guest);
        mkdir(&cpu)?;
        mkdir(&memory)?;
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &limits.quota_us().to_string())?;
        write(&memory.join("memory.limit_in_bytes"), &mem_bytes)?;
        Ok(GuestCgroup::V1 { cpu, memory })
    }

    /// Moves process `pid` (with all its threads) into the cgroup(s).
    pub fn add(&self, pid: u32) -> Result<(), IsolationError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The directories.
    pub fn dirs(&self) -> Vec<&Path> {
        match self {
            GuestCgroup::V2(d) => vec![d.as_path()],
            GuestCgroup::V1 { cpu, memory } => vec![cpu.as_path(), memory.as_path()],
        }
    }

    /// Removes the (empty) cgroup directories; a cgroup with live processes
    /// stays (the kernel refuses with EBUSY).
    pub fn remove(&self) {
        for d in self.dirs() {
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::debug!(dir = %d.display(), error = %e, "cgroup not removed");
            }
        }
    }
}

/// Removes guest `guest`'s (empty) cgroup directories under `root`, v1 or
/// v2, once its QEMU is gone. Missing ones are fine.
pub fn remove_cgroup(root: &Path, guest: &str) {
    for d in [
        root.join(SUBTREE).join(guest),
        root.join("cpu").join(SUBTREE).join(guest),
        root.join("memory").join(SUBTREE).join(guest),
    ] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cgroup not removed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert!(RunAs { uid: 0, gid: 5 }.check("g").is_err());
        assert!(RunAs { uid: 5, gid: 5 }.check("g").is_ok());
        let l = Limits {
            cpu_percent: 150,
            memory_mib: 400,
        };
        assert!(l.check("g", 256).is_ok());
        assert_eq!(l.quota_us(), 150_000);
        assert!(l.check("g", 512).unwrap_err().to_string().contains("576 MiB"));
        assert!(Limits { cpu_percent: 0, ..l }.check("g", 64).is_err());
    }

    #[test]
    fn v2_and_v1_layouts_in_a_fake_root() {
        let l = Limits {
            cpu_percent: 50,
            memory_mib: 300,
        };
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let cg = GuestCgroup::create(v2.path(), "web1", &l).unwrap();
        let d = v2.path().join("isthmus/web1");
        assert_eq!(cg, GuestCgroup::V2(d.clone()));
        assert_eq!(std::fs::read_to_string(d.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(std::fs::read_to_string(d.join("memory.max")).unwrap(), (300u64 << 20).to_string());

        let v1 = tempfile::tempdir().unwrap();
        assert!(matches!(GuestCgroup::create(v1.path(), "web1", &l), Err(IsolationError::NoCgroups)));
        for (h, f) in [("cpu", "cpu.cfs_quota_us"), ("memory", "memory.limit_in_bytes")] {
            std::fs::create_dir(v1.path().join(h)).unwrap();
            std::fs::write(v1.path().join(h).join(f), "-1").unwrap();
        }
        let cg = GuestCgroup::create(v1.path(), "web1", &l).unwrap();
        let GuestCgroup::V1 { cpu, memory } = &cg else { panic!("{cg:?}") };
        assert_eq!(std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(), "50000");
        assert_eq!(
            std::fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap(),
            (300u64 << 20).to_string()
        );
    }
}
