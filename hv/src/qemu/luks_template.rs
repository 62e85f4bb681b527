//! Blank LUKS qcow2 images in milliseconds: a cached empty template with a
//! fresh LUKS region per disk.
//!
//! `qemu-img create -o encrypt.format=luks` spends ≈ 2.35 CPU-seconds per
//! disk benchmarking PBKDF2 (see [`super::luks_header`]). Instead, once per
//! host (per `qemu-img` version), `qemu-img` makes an empty (0-byte) LUKS
//! qcow2 under a random passphrase that is dropped at once: the *template*.
//! A new disk is the template's bytes with its whole LUKS region (the qcow2
//! `crypt_header` extension's clusters: header and all eight key slots'
//! material) replaced by [`super::luks_header::build_region`] for the disk's
//! passphrase: new master key, salts and UUID, slot 0 only, 1000 PBKDF2
//! rounds, every other byte zero. So nothing of the template's key material
//! survives into a disk, and the template never held data (no data clusters
//! at size 0). `qemu-img resize`, opening the disk with its key over a stdin
//! pipe, then grows it to the wanted size: that also proves QEMU accepts the
//! new header before anyone uses the disk.
//!
//! The template lives in [`TEMPLATE_DIR`] (or `$ISTHMUS_LUKS_TEMPLATE_DIR`),
//! named by a hash of `qemu-img --version` and the recipe; when that
//! directory cannot be made, in a private directory under the system temp
//! directory. It holds no secret: its only key slot is locked by a passphrase
//! nobody kept. It and its directory must belong to root or us and not be
//! group/other-writable, and its virtual size must be 0.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use ring::rand::{SecureRandom, SystemRandom};
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::luks::{run_with_secret, LuksError, QEMU_IMG};
use super::luks_header::{self, Header};

/// Where the template is cached (one file per `qemu-img` version).
pub const TEMPLATE_DIR: &str = "/var/cache/isthmus/luks-template";
/// Overrides [`TEMPLATE_DIR`].
pub const TEMPLATE_DIR_ENV: &str = "ISTHMUS_LUKS_TEMPLATE_DIR";

/// How the template is made (part of its cache key).
const RECIPE: &str = "qcow2 0 encrypt.format=luks encrypt.iter-time=10 v1";

/// qcow2 header extension type of the LUKS header (qcow2 spec, "Full disk
/// encryption header pointer").
const QCOW2_EXT_CRYPT_HEADER: u32 = 0x0537_be77;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Offset and length of the LUKS region of a qcow2 image from its header
/// (`buf` starts at the file's first byte): the payload of the
/// `crypt_header` extension. `None` if the header is not qcow2 or has none.
pub fn crypt_header_extension(buf: &[u8]) -> Option<(u64, u64)> {
    if buf.get(..4)? != b"QFI\xfb" {
        return None;
    }
    let mut at = match be32(buf, 4)? {
        2 => 72usize,
        3 => be32(buf, 100)? as usize,
        _ => return None,
    };
    // Extensions end with type 0; each is padded to 8 bytes.
    while at < buf.len() {
        let (kind, len) = (be32(buf, at)?, be32(buf, at + 4)? as usize);
        match kind {
            0 => return None,
            QCOW2_EXT_CRYPT_HEADER if len >= 16 => return Some((be64(buf, at + 8)?, be64(buf, at + 16)?)),
            _ => at = at.checked_add(8)?.checked_add(len.checked_next_multiple_of(8)?)?,
        }
    }
    None
}

/// The template's path, made on first use by this process if missing.
pub fn template() -> Result<PathBuf, LuksError> {
    static VERSION: OnceLock<String> = OnceLock::new();
    let version = VERSION.get_or_init(|| {
        Command::new(QEMU_IMG)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_default()
    });
    let digest = sha2::Sha256::digest(format!("{version}\n{RECIPE}").as_bytes());
    let name = format!("luks-{}.qcow2", &hex::encode(digest)[..16]);
    let dir = template_dir()?;
    let path = dir.join(name);
    // One maker per process (a concurrent warm-up and first disk would
    // otherwise both pay the PBKDF2 benchmark).
    static MAKING: Mutex<()> = Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() {
        make_template(&dir, &path)?;
    }
    trusted(&path)?;
    Ok(path)
}

/// Makes the template now if it is missing (e.g. at node start, so the first
/// disk does not wait for it).
pub fn warm_up() -> Result<PathBuf, LuksError> {
    template()
}

/// A template or its directory must belong to root or us and not be
/// writable by group or others: whoever could swap the template could choose
/// the layout and the clusters every new disk starts from.
fn trusted(path: &Path) -> Result<(), LuksError> {
    let me = nix::unistd::geteuid().as_raw();
    for p in [path, path.parent().unwrap_or(Path::new("/"))] {
        let md = std::fs::symlink_metadata(p).map_err(|source| LuksError::Template {
            path: p.to_path_buf(),
            source,
        })?;
        if (md.uid() != 0 && md.uid() != me) || md.mode() & 0o022 != 0 || md.file_type().is_symlink() {
            return Err(LuksError::BadTemplate {
                path: p.to_path_buf(),
                why: format!(
                    "owned by uid {} with mode {:o}; it must be a file or directory of root or uid {me}, not group/other-writable",
                    md.uid(),
                    md.mode() & 0o7777
                ),
            });
        }
    }
    Ok(())
}

fn template_dir() -> Result<PathBuf, LuksError> {
    let mk = |d: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map(|()| d.to_path_buf())
    };
    if let Some(d) = std::env::var_os(TEMPLATE_DIR_ENV) {
        let d = PathBuf::from(d);
        return mk(&d).map_err(|source| LuksError::Template { path: d, source });
    }
    mk(Path::new(TEMPLATE_DIR)).or_else(|_| {
        let d = std::env::temp_dir().join(format!("isthmus-luks-template-{}", nix::unistd::geteuid()));
        mk(&d).map_err(|source| LuksError::Template { path: d, source })
    })
}

/// `qemu-img create` of the empty template under a throw-away passphrase,
/// into a temporary name renamed into place (concurrent makers both win).
fn make_template(dir: &Path, path: &Path) -> Result<(), LuksError> {
    let tmp = dir.join(format!(
        ".tmp-{}-{}.qcow2",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut raw = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut raw[..])
        .map_err(|_| LuksError::Header(luks_header::LuksHeaderError::Random))?;
    let passphrase = Zeroizing::new(hex::encode(&raw[..]).into_bytes());
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["create", "-q", "--object", super::luks::SECRET_OBJECT, "-f", "qcow2", "-o"])
        .arg(format!(
            "encrypt.format=luks,encrypt.key-secret={},encrypt.iter-time=10",
            super::luks::SECRET_ID
        ))
        .arg(&tmp)
        .arg("0");
    run_with_secret(cmd, &passphrase, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        LuksError::Template {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Creates `dst` (must not exist) as a blank LUKS qcow2 of `size_bytes`
/// (rounded up to 512) unlocked by `passphrase`, from the template.
pub fn create_blank(dst: &Path, size_bytes: u64, passphrase: &[u8]) -> Result<(), LuksError> {
    let tpl = template()?;
    let tpl_err = |source| LuksError::Template { path: tpl.clone(), source };
    let mut image = Vec::new();
    File::open(&tpl).and_then(|mut f| f.read_to_end(&mut image)).map_err(tpl_err)?;
    let bad_template = |why: String| LuksError::BadTemplate { path: tpl.clone(), why };
    let (offset, len) = crypt_header_extension(&image).ok_or_else(|| bad_template("no qcow2 crypt_header extension".into()))?;
    let region = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(o, l)| Some(o..o.checked_add(l)?))
        .filter(|r| r.end <= image.len())
        .ok_or_else(|| bad_template(format!("LUKS region {offset}+{len} lies outside the file")))?;
    // Virtual size 0 (qcow2 header offset 24): no guest data clusters.
    if be64(&image, 24) != Some(0) {
        return Err(bad_template("virtual size is not 0".into()));
    }
    let layout = Header::parse(&image[region.clone()], region.len()).map_err(|e| bad_template(e.to_string()))?;
    let fresh = luks_header::build_region(passphrase, &layout, region.len(), luks_header::ITERATIONS, &SystemRandom::new())?;
    image[region].copy_from_slice(&fresh);
    drop(fresh);
    let write_err = |source| LuksError::Write {
        path: dst.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(dst).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            LuksError::Exists(dst.to_path_buf())
        } else {
            write_err(e)
        }
    })?;
    if let Err(e) = f.write_all(&image) {
        let _ = std::fs::remove_file(dst);
        return Err(write_err(e));
    }
    drop(f);
    let size = size_bytes.next_multiple_of(luks_header::SECTOR as u64);
    if size > 0 {
        let mut cmd = Command::new(QEMU_IMG);
        cmd.args(["resize", "-q", "--object", super::luks::SECRET_OBJECT, "--image-opts"])
            .arg(super::luks::image_opts(dst))
            .arg(size.to_string());
        run_with_secret(cmd, passphrase, dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_template_others_could_swap() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("luks-x.qcow2");
        std::fs::write(&t, b"QFI\xfb").unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        mode(dir.path(), 0o700);
        mode(&t, 0o644);
        trusted(&t).unwrap();
        mode(&t, 0o664);
        assert!(matches!(trusted(&t), Err(LuksError::BadTemplate { .. })));
        mode(&t, 0o644);
        mode(dir.path(), 0o777);
        let e = trusted(&t).unwrap_err();
        assert!(e.to_string().contains("not group/other-writable"), "{e}");
        mode(dir.path(), 0o700);
    }

    #[test]
    fn finds_the_crypt_header_extension() {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        // A feature-name table (type 0x6803f857, 5 bytes padded to 8), then
        // the crypt header, then the end marker.
        h.extend_from_slice(&0x6803_f857u32.to_be_bytes());
        h.extend_from_slice(&5u32.to_be_bytes());
        h.extend_from_slice(b"abcde\0\0\0");
        h.extend_from_slice(&QCOW2_EXT_CRYPT_HEADER.to_be_bytes());
        h.extend_from_slice(&16u32.to_be_bytes());
        h.extend_from_slice(&0x30000u64.to_be_bytes());
        h.extend_from_slice(&0x1f9000u64.to_be_bytes());
        h.extend_from_slice(&[0; 8]);
        assert_eq!(crypt_header_extension(&h), Some((0x30000, 0x1f9000)));
        assert_eq!(crypt_header_extension(&h[..140]), None);
        let mut none = h[..112].to_vec();
        none.extend_from_slice(&[0; 8]);
        assert_eq!(crypt_header_extension(&none), None);
        assert_eq!(crypt_header_extension(b"QFI"), None);
        let mut huge = h.clone();
        huge[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(crypt_header_extension(&huge), None);
    }
}
