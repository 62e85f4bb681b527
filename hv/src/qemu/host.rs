//! Facts about this host's QEMU that the mapping depends on: its version,
//! whether it was built with seccomp (`-sandbox`), and where OVMF lives.
//! Looked up once per process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The QEMU binary we run (looked up in `PATH`).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Where Debian's `ovmf` package puts the UEFI firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// UEFI firmware: read-only code plus a template for the per-guest
/// variable store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovmf {
    /// `OVMF_CODE.fd`.
    pub code: PathBuf,
    /// `OVMF_VARS.fd` (copied into each guest's run directory).
    pub vars_template: PathBuf,
}

impl Ovmf {
    /// Finds the 2 MiB non-secure-boot OVMF pair in `dir`, if installed.
    pub fn find_in(dir: &Path) -> Option<Ovmf> {
        let code = dir.join("OVMF_CODE.fd");
        let vars_template = dir.join("OVMF_VARS.fd");
        (code.is_file() && vars_template.is_file()).then_some(Ovmf { code, vars_template })
    }

    /// Finds the 4 MiB Secure Boot build (needs SMM) and the variable store
    /// template with Microsoft's keys enrolled (Debian `ovmf`:
    /// `OVMF_CODE_4M.secboot.fd`, `OVMF_VARS_4M.ms.fd`).
    pub fn find_secure_in(dir: &Path) -> Option<Ovmf> {
        let code = dir.join("OVMF_CODE_4M.secboot.fd");
        let vars_template = dir.join("OVMF_VARS_4M.ms.fd");
        (code.is_file() && vars_template.is_file()).then_some(Ovmf { code, vars_template })
    }
}

/// What the mapping needs to know about the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// First line of `qemu-system-x86_64 --version`.
    pub qemu_version: String,
    /// QEMU takes `-sandbox on`.
    pub sandbox: bool,
    /// UEFI firmware, when installed.
    pub ovmf: Option<Ovmf>,
    /// UEFI firmware with Secure Boot and Microsoft's keys, when installed.
    pub ovmf_secure: Option<Ovmf>,
}

impl HostFacts {
    /// The OVMF pair for a firmware kind (`None` for BIOS or when missing).
    pub fn ovmf_for(&self, firmware: proto::Firmware) -> Option<&Ovmf> {
        match firmware {
            proto::Firmware::Bios => None,
            proto::Firmware::Efi => self.ovmf.as_ref(),
            proto::Firmware::EfiSecureBoot => self.ovmf_secure.as_ref(),
        }
    }
}

/// QEMU could not be run or inspected.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The binary is missing or not executable.
    #[error("cannot run {QEMU_BINARY}: {0}; install QEMU 10 (tests/setup/deps.sh does: apt-get install -t bookworm-backports qemu-system-x86 qemu-utils)")]
    Missing(#[source] std::io::Error),
    /// `--version` failed.
    #[error("{QEMU_BINARY} --version failed: {0}")]
    Version(String),
}

/// Host facts, looked up on first use and kept for the process.
pub fn host_facts() -> Result<&'static HostFacts, HostError> {
    static FACTS: OnceLock<HostFacts> = OnceLock::new();
    if let Some(f) = FACTS.get() {
        return Ok(f);
    }
    let facts = HostFacts {
        qemu_version: qemu_version()?,
        sandbox: supports_sandbox(),
        ovmf: Ovmf::find_in(Path::new(OVMF_DIR)),
        ovmf_secure: Ovmf::find_secure_in(Path::new(OVMF_DIR)),
    };
    Ok(FACTS.get_or_init(|| facts))
}

/// First line of `qemu-system-x86_64 --version`.
pub fn qemu_version() -> Result<String, HostError> {
    let out = Command::new(QEMU_BINARY)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(HostError::Missing)?;
    if !out.status.success() {
        return Err(HostError::Version(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// QEMU parses options in order and exits at `-version`; a build without
/// seccomp has no `sandbox` option group and exits 1 at `-sandbox` first
/// (softmmu/vl.c, QEMU_OPTION_sandbox).
fn supports_sandbox() -> bool {
    Command::new(QEMU_BINARY)
        .args(["-sandbox", "on", "-version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
