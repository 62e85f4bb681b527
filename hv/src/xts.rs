//! Which XTS code encrypts LUKS sectors in the QEMU processes hv starts.
//!
//! Debian's QEMU encrypts each LUKS sector with nettle's generic
//! `nettle_xts_encrypt_message`/`nettle_xts_decrypt_message`, which hand AES
//! one 16-byte block at a time (≈ 0.4–0.5 GiB/s per core here, against
//! 4–6 GiB/s for nettle's AES-NI over a whole sector; `hv/README.md`
//! "Benchmark"). `preload/xts-batch.c` (built by `build.rs` into
//! `libisthmus-xts.so`) defines the same two symbols in nettle's version node
//! and runs tweaks, XOR and AES in one pass (`preload/xts-fast.c`: AVX-512
//! VAES or AES-NI, picked by CPU at run time, ≈ 5 GiB/s per core on 512-byte
//! sectors here), or else calls the cipher once per sector: the same bytes,
//! checked against nettle by `tests/xts_preload.rs`. Its constructor also
//! keeps qcow2's per-request bounce buffers in the malloc heap (`mallopt`),
//! which halves QEMU's CPU per encrypted GiB. hv puts it in `LD_PRELOAD` of
//! the child's environment only (a path, not a secret) for `qemu-system-*`,
//! `qemu-storage-daemon` and `qemu-img`.
//!
//! Where the library is looked for, first hit wins:
//! 1. `$ISTHMUS_XTS_PRELOAD`: a path, or `off` to keep nettle's own XTS;
//! 2. `libisthmus-xts.so` next to the running executable (how an image
//!    installs it beside `appliance`/`csc`);
//! 3. `/usr/lib/isthmus/libisthmus-xts.so`;
//! 4. the copy this build of hv made (`target/…/build/hv-*/out/`).
//!
//! A file that is group/other-writable or owned by another user than root or
//! us is refused (QEMU holds the LUKS master key in memory), and QEMU keeps
//! nettle's XTS.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Environment variable that overrides where the library is found (`off`
/// disables it).
pub const PRELOAD_ENV: &str = "ISTHMUS_XTS_PRELOAD";
/// File name of the batched-XTS library.
pub const LIBRARY_NAME: &str = "libisthmus-xts.so";
/// Where an installed system keeps it.
pub const INSTALLED_PATH: &str = "/usr/lib/isthmus/libisthmus-xts.so";
/// Where this build of hv put it (`build.rs`).
const BUILT_PATH: &str = env!("ISTHMUS_XTS_BUILT");

/// The XTS code a QEMU process runs for LUKS (in `proto`: a guest's
/// status carries it).
pub use proto::api::XtsImpl;

/// The library this build of hv compiled (`build.rs`), whether or not it
/// is the one [`preload_library`] picks: for tests and packaging.
pub fn built_library() -> &'static Path {
    Path::new(BUILT_PATH)
}

/// The library hv preloads, found once per process (and logged once), or
/// `None` when QEMU keeps nettle's XTS.
pub fn preload_library() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
            let (found, why) = find(std::env::var_os(PRELOAD_ENV).as_deref(), exe_dir.as_deref());
            match &found {
                Some(p) => tracing::info!(xts = %XtsImpl::BatchedPreload, library = %p.display(), "QEMU's LUKS XTS: batched, one cipher call per sector"),
                None => tracing::info!(xts = %XtsImpl::Nettle, reason = %why, "QEMU's LUKS XTS: nettle's (16 bytes per cipher call); set {PRELOAD_ENV} to a built {LIBRARY_NAME} to batch it"),
            }
            found
        })
        .as_deref()
}

/// Looks the library up as the module docs say; the string says why none
/// was taken.
fn find(env: Option<&std::ffi::OsStr>, exe_dir: Option<&Path>) -> (Option<PathBuf>, String) {
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        if v == "off" {
            return (None, format!("{PRELOAD_ENV}=off"));
        }
        let p = PathBuf::from(v);
        return match usable(&p) {
            Ok(()) => (Some(p), String::new()),
            Err(why) => (None, format!("{PRELOAD_ENV}={}: {why}", p.display())),
        };
    }
    let mut candidates: Vec<PathBuf> = exe_dir.map(|d| d.join(LIBRARY_NAME)).into_iter().collect();
    candidates.push(INSTALLED_PATH.into());
    candidates.push(BUILT_PATH.into());
    let mut refused = Vec::new();
    for p in candidates {
        match usable(&p) {
            Ok(()) => return (Some(p), String::new()),
            Err(why) if p.exists() => refused.push(format!("{}: {why}", p.display())),
            Err(_) => {}
        }
    }
    if refused.is_empty() {
        (
            None,
            format!("no {LIBRARY_NAME} next to the executable, in {INSTALLED_PATH} or in this build"),
        )
    } else {
        (None, refused.join("; "))
    }
}

/// A regular file, not writable by group/others, owned by root or by us.
fn usable(p: &Path) -> Result<(), String> {
    let m = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!("mode {:o} is group/other-writable; chmod go-w it", m.mode() & 0o7777));
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != me {
        return Err(format!("owned by uid {}, not root or uid {me}", m.uid()));
    }
    Ok(())
}

/// Adds the library (when found) to `cmd`'s `LD_PRELOAD`, in front of any
/// `LD_PRELOAD` this process already passes on, and says which XTS the
/// child will run.
pub fn apply(cmd: &mut Command) -> XtsImpl {
    apply_library(cmd, preload_library())
}

fn apply_library(cmd: &mut Command, lib: Option<&Path>) -> XtsImpl {
    let Some(lib) = lib else {
        return XtsImpl::Nettle;
    };
    let mut value = lib.as_os_str().to_os_string();
    if let Some(prev) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(prev);
    }
    cmd.env("LD_PRELOAD", value);
    XtsImpl::BatchedPreload
}

/// Which XTS the live process `pid` runs: the batched one when
/// `libisthmus-xts.so` is mapped into it (`/proc/PID/maps`), else nettle's.
/// `None` when the process is gone or its maps are not readable.
pub fn in_process(pid: u32) -> Option<XtsImpl> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    // A rebuilt or reinstalled library shows as "… (deleted)" in a QEMU
    // that mapped the old file: it still runs the batched code.
    let suffix = format!("/{LIBRARY_NAME}");
    let loaded = maps.lines().any(|l| l.trim_end_matches(" (deleted)").ends_with(&suffix));
    Some(if loaded { XtsImpl::BatchedPreload } else { XtsImpl::Nettle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn env_off_and_bad_paths_keep_nettle() {
        let (p, why) = find(Some("off".as_ref()), None);
        assert!(p.is_none() && why.contains("off"));
        let (p, why) = find(Some("/nonexistent/libisthmus-xts.so".as_ref()), None);
        assert!(p.is_none() && why.contains("/nonexistent"), "{why}");
    }

    #[test]
    fn next_to_executable_wins_and_writable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join(LIBRARY_NAME);
        std::fs::write(&lib, b"x").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(find(None, Some(dir.path())).0.as_deref(), Some(lib.as_path()));
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (p, _) = find(None, Some(dir.path()));
        assert_ne!(p.as_deref(), Some(lib.as_path()));
        let (p, why) = find(Some(lib.as_os_str()), None);
        assert!(p.is_none() && why.contains("go-w"), "{why}");
    }

    #[test]
    fn the_built_library_is_found() {
        assert!(Path::new(BUILT_PATH).is_file(), "build.rs did not build {BUILT_PATH}");
        assert!(usable(Path::new(BUILT_PATH)).is_ok());
    }

    #[test]
    fn apply_sets_ld_preload_only_with_a_library() {
        let mut cmd = Command::new("true");
        assert_eq!(apply_library(&mut cmd, None), XtsImpl::Nettle);
        assert!(cmd.get_envs().all(|(k, _)| k != "LD_PRELOAD"));
        let lib = Path::new("/usr/lib/isthmus/libisthmus-xts.so");
        assert_eq!(apply_library(&mut cmd, Some(lib)), XtsImpl::BatchedPreload);
        let v = cmd.get_envs().find(|(k, _)| *k == "LD_PRELOAD").and_then(|(_, v)| v).unwrap();
        assert!(v.to_string_lossy().starts_with(lib.to_str().unwrap()));
        assert_eq!(serde_json::to_value(XtsImpl::BatchedPreload).unwrap(), "batched-preload");
    }
}
