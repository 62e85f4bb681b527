//! Making LUKS-encrypted qcow2 images for the cloud side.
//!
//! `qemu-img` needs the passphrase as a `secret` object. We give it
//! `file=/dev/stdin` and write the key into a pipe on its standard input:
//! a pipe is neither a file on disk nor part of a command line or the
//! environment, and it is gone once `qemu-img` has read it. (The alternative,
//! a helper QEMU with QMP `blockdev-create` + a secret object, needs a second
//! process and a copy job for the data; `qemu-img convert` already copies
//! only allocated extents.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::args::ImageFormat;
use super::image::{DiskImage, ImageError};
use crate::disk_key::DiskKey;

/// The `qemu-img` binary (from `qemu-utils`).
pub const QEMU_IMG: &str = "qemu-img";

/// PBKDF2 time for a LUKS key slot. Keys are random bytes from the appliance
/// (≥ 128 bits), so key stretching adds no strength, only start latency
/// (QEMU's default, 2000 ms, is per disk at every start).
const LUKS_ITER_TIME_MS: u32 = 100;

/// Id of the secret object inside `qemu-img` (never the key itself).
const SECRET_ID: &str = "isthmus-key";

/// What the encrypted image starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// Copy (allocated extents of) an existing plain raw or qcow2 image.
    Copy(PathBuf),
    /// A blank disk of this many bytes.
    Blank {
        /// Virtual size in bytes.
        size_bytes: u64,
    },
}

/// An encrypted image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    /// The source image could not be inspected.
    #[error(transparent)]
    Source(#[from] ImageError),
    /// The source is itself encrypted.
    #[error("source image {0} is already encrypted; copy from a plain image")]
    SourceEncrypted(PathBuf),
    /// The destination exists (never overwrite a disk).
    #[error("encrypted image {0} already exists; remove it first or pick another path")]
    Exists(PathBuf),
    /// `qemu-img` could not be run.
    #[error("cannot run {QEMU_IMG}: {0}; install qemu-utils (tests/setup/deps.sh)")]
    Spawn(#[source] std::io::Error),
    /// Handing the key over the pipe failed.
    #[error("cannot pass the disk key to {QEMU_IMG} over its standard input: {0}")]
    Pipe(#[source] std::io::Error),
    /// `qemu-img` failed.
    #[error("{QEMU_IMG} could not create the encrypted image {path}: {stderr}")]
    Failed {
        /// Destination.
        path: PathBuf,
        /// What it printed.
        stderr: String,
    },
}

/// Creates `dst` as a qcow2 image with a LUKS payload (AES-256-XTS, QEMU's
/// default cipher) unlocked by `key`, from `source`.
pub fn create_encrypted_image(dst: &Path, source: &ImageSource, key: &DiskKey) -> Result<(), LuksError> {
    if dst.exists() {
        return Err(LuksError::Exists(dst.to_path_buf()));
    }
    let create_opts = format!("encrypt.format=luks,encrypt.key-secret={SECRET_ID},encrypt.iter-time={LUKS_ITER_TIME_MS}");
    let secret = format!("secret,id={SECRET_ID},file=/dev/stdin,format=raw");
    let mut cmd = Command::new(QEMU_IMG);
    // `convert` encrypts the whole source: batch its XTS too.
    crate::xts::apply(&mut cmd);
    match source {
        ImageSource::Copy(src) => {
            let img = DiskImage::inspect(src)?;
            if img.encryption != super::image::Encryption::None {
                return Err(LuksError::SourceEncrypted(src.clone()));
            }
            let fmt = match img.format {
                ImageFormat::Qcow2 => "qcow2",
                ImageFormat::Raw => "raw",
            };
            cmd.args(["convert", "-q", "--object", &secret, "-f", fmt, "-O", "qcow2", "-o", &create_opts])
                .arg(src)
                .arg(dst);
        }
        ImageSource::Blank { size_bytes } => {
            cmd.args(["create", "-q", "--object", &secret, "-f", "qcow2", "-o", &create_opts])
                .arg(dst)
                .arg(size_bytes.to_string());
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LuksError::Spawn)?;
    // The key fits the pipe buffer (≤ 1 KiB), so this write cannot block on
    // a child that has not started reading yet; dropping stdin sends EOF.
    let written = child.stdin.take().map(|mut pipe| pipe.write_all(&key.passphrase()));
    let out = child.wait_with_output().map_err(LuksError::Spawn)?;
    if let Some(Err(e)) = written {
        let _ = std::fs::remove_file(dst);
        return Err(LuksError::Pipe(e));
    }
    if !out.status.success() {
        let _ = std::fs::remove_file(dst);
        return Err(LuksError::Failed {
            path: dst.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
