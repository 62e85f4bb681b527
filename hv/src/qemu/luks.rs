//! Making LUKS-encrypted qcow2 images for the cloud side.
//!
//! `qemu-img` needs the passphrase as a `secret` object. We give it
//! `file=/dev/stdin` and write the key into a pipe on its standard input:
//! a pipe is neither a file on disk nor part of a command line or the
//! environment, and it is gone once `qemu-img` has read it. (The alternative,
//! a helper QEMU with QMP `blockdev-create` + a secret object, needs a second
//! process and a copy job for the data; `qemu-img convert` already copies
//! only allocated extents.)
//!
//! The LUKS header itself is not made by `qemu-img` unless
//! `ISTHMUS_LUKS_HEADER=qemu` ([`HEADER_ENV`]; for comparison): QEMU spends
//! ≈ 2.35 CPU-seconds per image benchmarking PBKDF2. A blank image is a copy
//! of a cached empty LUKS qcow2 with a fresh LUKS region
//! ([`super::luks_template`], [`super::luks_header`]), grown by
//! `qemu-img resize`; a copy is such a blank image of the source's size
//! filled by `qemu-img convert -n --target-is-zero` (still only allocated
//! extents).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::args::ImageFormat;
use super::image::{DiskImage, ImageError};
use crate::disk_key::DiskKey;

/// The `qemu-img` binary (from `qemu-utils`).
pub const QEMU_IMG: &str = "qemu-img";

/// PBKDF2 time for a LUKS key slot on the `qemu-img` path. Keys are random
/// bytes from the appliance (≥ 128 bits), so key stretching adds no
/// strength, only start latency (QEMU's default, 2000 ms, is per disk at
/// every start).
const LUKS_ITER_TIME_MS: u32 = 100;

/// Environment variable choosing who writes the LUKS header: `qemu` for
/// `qemu-img create|convert -o encrypt.format=luks` (2.35 CPU-s per image);
/// unset or anything else for hv's own header on a cached template.
pub const HEADER_ENV: &str = "ISTHMUS_LUKS_HEADER";

/// Id of the secret object inside `qemu-img` (never the key itself).
pub(crate) const SECRET_ID: &str = "isthmus-key";
/// The secret object: read from the standard input pipe.
pub(crate) const SECRET_OBJECT: &str = "secret,id=isthmus-key,file=/dev/stdin,format=raw";

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
    /// The cached template could not be made or read.
    #[error(
        "cannot make or read the LUKS template {path}: {source}; check that its directory is writable (or set ISTHMUS_LUKS_TEMPLATE_DIR)"
    )]
    Template {
        /// The template or its directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The cached template is not an empty LUKS qcow2 as expected.
    #[error("LUKS template {path} is unusable ({why}); delete it and it is made again")]
    BadTemplate {
        /// The template.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A LUKS header could not be built.
    #[error("cannot build a LUKS header: {0}")]
    Header(#[from] super::luks_header::LuksHeaderError),
    /// Writing the new image failed.
    #[error("cannot write the encrypted image {path}: {source}; check free space and permissions")]
    Write {
        /// Destination.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
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
    if std::env::var(HEADER_ENV).is_ok_and(|v| v == "qemu") {
        return create_with_qemu_header(dst, source, key);
    }
    let passphrase = key.passphrase();
    match source {
        ImageSource::Blank { size_bytes } => super::luks_template::create_blank(dst, *size_bytes, &passphrase),
        ImageSource::Copy(src) => {
            let (fmt, size) = plain_source(src)?;
            super::luks_template::create_blank(dst, size, &passphrase)?;
            let mut cmd = Command::new(QEMU_IMG);
            // `convert` encrypts the whole source: batch its XTS too.
            crate::xts::apply(&mut cmd);
            cmd.args(["convert", "-q", "-n", "--target-is-zero", "--object", SECRET_OBJECT, "-f", fmt])
                .arg(src)
                .arg("--target-image-opts")
                .arg(image_opts(dst));
            run_with_secret(cmd, &passphrase, dst)
        }
    }
}

/// Format name and virtual size of a plain source image (refuses an
/// encrypted one).
fn plain_source(src: &Path) -> Result<(&'static str, u64), LuksError> {
    let img = DiskImage::inspect(src)?;
    if img.encryption != super::image::Encryption::None {
        return Err(LuksError::SourceEncrypted(src.to_path_buf()));
    }
    let read_err = |source| ImageError::Read {
        path: src.to_path_buf(),
        source,
    };
    Ok(match img.format {
        ImageFormat::Qcow2 => {
            // qcow2 header: virtual size, u64 big-endian at offset 24.
            let mut head = [0u8; 32];
            std::fs::File::open(src)
                .and_then(|mut f| f.read_exact(&mut head))
                .map_err(read_err)?;
            ("qcow2", u64::from_be_bytes(head[24..32].try_into().unwrap_or_default()))
        }
        ImageFormat::Raw => ("raw", std::fs::metadata(src).map_err(read_err)?.len()),
    })
}

/// `--image-opts` for the qcow2 at `path` opened with the piped secret
/// (commas in the path doubled, QEMU's option escaping).
pub(crate) fn image_opts(path: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret={SECRET_ID}",
        path.to_string_lossy().replace(',', ",,")
    )
}

/// The `qemu-img` path: QEMU writes the LUKS header (and benchmarks PBKDF2).
fn create_with_qemu_header(dst: &Path, source: &ImageSource, key: &DiskKey) -> Result<(), LuksError> {
    let create_opts = format!("encrypt.format=luks,encrypt.key-secret={SECRET_ID},encrypt.iter-time={LUKS_ITER_TIME_MS}");
    let mut cmd = Command::new(QEMU_IMG);
    // `convert` encrypts the whole source: batch its XTS too.
    crate::xts::apply(&mut cmd);
    match source {
        ImageSource::Copy(src) => {
            let (fmt, _) = plain_source(src)?;
            cmd.args([
                "convert",
                "-q",
                "--object",
                SECRET_OBJECT,
                "-f",
                fmt,
                "-O",
                "qcow2",
                "-o",
                &create_opts,
            ])
            .arg(src)
            .arg(dst);
        }
        ImageSource::Blank { size_bytes } => {
            cmd.args(["create", "-q", "--object", SECRET_OBJECT, "-f", "qcow2", "-o", &create_opts])
                .arg(dst)
                .arg(size_bytes.to_string());
        }
    }
    run_with_secret(cmd, &key.passphrase(), dst)
}

/// Runs a `qemu-img` command whose secret object reads `/dev/stdin`, writing
/// `secret` into its standard input pipe; on failure removes `dst`.
pub(crate) fn run_with_secret(mut cmd: Command, secret: &[u8], dst: &Path) -> Result<(), LuksError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LuksError::Spawn)?;
    // The key fits the pipe buffer (≤ 1 KiB), so this write cannot block on
    // a child that has not started reading yet; dropping stdin sends EOF.
    let written = child.stdin.take().map(|mut pipe| pipe.write_all(secret));
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
