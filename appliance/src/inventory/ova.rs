//! OVA archives: a tar of an OVF descriptor, an optional manifest (`.mf`),
//! an optional certificate and the disk files (DSP0243 §5.3).
//!
//! The archive is read as a stream and never extracted: every member is
//! hashed (SHA-1 and SHA-256, whichever the manifest uses) as it passes, only
//! the descriptor and the manifest are kept in memory, each bounded. Members
//! must be plain files with plain names: `..`, absolute paths, links and
//! devices are refused, as is a member that declares more bytes than the
//! archive has left. With a manifest, every member must be listed and match,
//! and every listed file must be present.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::model::{Import, Note};
use super::ovf::{self, OvfError};

/// Largest descriptor or manifest we keep in memory.
pub const MAX_TEXT_MEMBER: u64 = 32 << 20;
/// Most members an OVA may have.
pub const MAX_MEMBERS: usize = 10_000;

/// Why an OVA was refused.
#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a tar archive, or a damaged one.
    #[error("{path}: not a readable tar archive ({message}); an OVA is a tar of the .ovf, .mf and disk files")]
    Tar {
        /// File.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// A member's name escapes the archive or is not a plain file name.
    #[error("{path}: member {member:?} has a path that is not a plain file name (absolute or with ..); refusing the archive")]
    Traversal {
        /// File.
        path: PathBuf,
        /// Member name.
        member: String,
    },
    /// A member is a link or device.
    #[error("{path}: member {member:?} is a {kind}, not a regular file; OVAs hold regular files only")]
    NotAFile {
        /// File.
        path: PathBuf,
        /// Member.
        member: String,
        /// Entry type.
        kind: String,
    },
    /// A member declares more bytes than allowed or than the archive holds.
    #[error("{path}: member {member:?} declares {size} bytes, more than {limit} allowed here; the archive is damaged or hostile")]
    TooLarge {
        /// File.
        path: PathBuf,
        /// Member.
        member: String,
        /// Declared size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Too many members.
    #[error("{path}: more than {MAX_MEMBERS} members; not an OVA")]
    TooManyMembers {
        /// File.
        path: PathBuf,
    },
    /// No descriptor inside.
    #[error("{path}: no .ovf descriptor in the archive")]
    NoDescriptor {
        /// File.
        path: PathBuf,
    },
    /// The manifest cannot be read.
    #[error("{path}: manifest {manifest} line {line}: expected `SHA256(file)= hex` or `SHA1(file)= hex`")]
    Manifest {
        /// File.
        path: PathBuf,
        /// Manifest member.
        manifest: String,
        /// Line.
        line: usize,
    },
    /// A digest differs.
    #[error("{path}: {member} has {algo} {actual}, but the manifest says {expected}; the file was changed or damaged in transit — fetch the OVA again")]
    Digest {
        /// File.
        path: PathBuf,
        /// Member.
        member: String,
        /// SHA1 or SHA256.
        algo: String,
        /// Manifest digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// The manifest lists a file the archive does not have.
    #[error("{path}: the manifest lists {member}, which is not in the archive")]
    Missing {
        /// File.
        path: PathBuf,
        /// Member.
        member: String,
    },
    /// A member the manifest does not cover.
    #[error("{path}: member {member} is not covered by the manifest; an attacker could have added it — refusing")]
    Unlisted {
        /// File.
        path: PathBuf,
        /// Member.
        member: String,
    },
    /// A digest algorithm we do not know.
    #[error("{path}: manifest uses {algo}; SHA1 and SHA256 are supported")]
    Algo {
        /// File.
        path: PathBuf,
        /// Algorithm.
        algo: String,
    },
    /// The descriptor inside is bad.
    #[error(transparent)]
    Ovf(#[from] OvfError),
}

/// Reads an OVA file.
pub fn read(path: &Path) -> Result<Import, OvaError> {
    let io = |source| OvaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    read_from(std::io::BufReader::new(f), len, path)
}

struct Member {
    sha1: String,
    sha256: String,
}

/// Reads an OVA from a stream of `len` bytes; `path` names it in messages.
pub fn read_from<R: Read>(reader: R, len: u64, path: &Path) -> Result<Import, OvaError> {
    let tar_err = |e: std::io::Error| OvaError::Tar {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut ar = tar::Archive::new(reader);
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut descriptor: Option<(String, String)> = None;
    let mut manifest: Option<(String, String)> = None;
    let mut notes = Vec::new();
    for e in ar.entries().map_err(tar_err)? {
        let mut e = e.map_err(tar_err)?;
        if members.len() >= MAX_MEMBERS {
            return Err(OvaError::TooManyMembers { path: path.to_path_buf() });
        }
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let name = raw.strip_prefix("./").unwrap_or(&raw).to_string();
        let kind = e.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if name.is_empty() || name.starts_with('/') || name.split(['/', '\\']).any(|c| c == ".." || c.is_empty()) || name.contains('/') {
            return Err(OvaError::Traversal {
                path: path.to_path_buf(),
                member: raw,
            });
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(OvaError::NotAFile {
                path: path.to_path_buf(),
                member: name,
                kind: format!("{kind:?}"),
            });
        }
        let size = e.size();
        let remaining = len.saturating_sub(e.raw_file_position());
        let lower = name.to_ascii_lowercase();
        let is_text = lower.ends_with(".ovf") || lower.ends_with(".mf");
        let limit = if is_text { MAX_TEXT_MEMBER.min(remaining) } else { remaining };
        if size > limit {
            return Err(OvaError::TooLarge {
                path: path.to_path_buf(),
                member: name,
                size,
                limit,
            });
        }
        let mut h1 = Sha1::new();
        let mut h256 = Sha256::new();
        let mut keep = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut r = (&mut e).take(size);
        loop {
            let n = r.read(&mut buf).map_err(tar_err)?;
            if n == 0 {
                break;
            }
            h1.update(&buf[..n]);
            h256.update(&buf[..n]);
            if is_text {
                keep.extend_from_slice(&buf[..n]);
            }
        }
        if is_text {
            let text = String::from_utf8_lossy(&keep).into_owned();
            if lower.ends_with(".ovf") {
                if descriptor.is_none() {
                    descriptor = Some((name.clone(), text));
                } else {
                    notes.push(Note {
                        at: format!("{}/{name}", path.display()),
                        message: "a second .ovf in the archive; the first one is the descriptor".into(),
                    });
                }
            } else if manifest.is_none() {
                manifest = Some((name.clone(), text));
            }
        }
        order.push(name.clone());
        members.insert(
            name,
            Member {
                sha1: hex::encode(h1.finalize()),
                sha256: hex::encode(h256.finalize()),
            },
        );
    }
    let (dname, dtext) = descriptor.ok_or_else(|| OvaError::NoDescriptor { path: path.to_path_buf() })?;
    match &manifest {
        Some((mname, mtext)) => check_manifest(path, mname, mtext, &members)?,
        None => notes.push(Note {
            at: path.display().to_string(),
            message: "no manifest (.mf): file integrity not checked".into(),
        }),
    }
    let inner = path.join(&dname);
    let mut imp = ovf::parse(&dtext, &inner)?;
    imp.notes.splice(0..0, notes);
    Ok(imp)
}

fn check_manifest(path: &Path, mname: &str, text: &str, members: &BTreeMap<String, Member>) -> Result<(), OvaError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut listed = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        let bad = || OvaError::Manifest {
            path: path.to_path_buf(),
            manifest: mname.to_string(),
            line: i + 1,
        };
        let (lhs, digest) = l.rsplit_once('=').ok_or_else(bad)?;
        let open = lhs.find('(').ok_or_else(bad)?;
        let close = lhs.rfind(')').filter(|c| *c > open).ok_or_else(bad)?;
        let algo = lhs[..open].trim().to_ascii_uppercase();
        let file = lhs[open + 1..close].trim().to_string();
        let digest = digest.trim().to_ascii_lowercase();
        let m = members.get(&file).ok_or_else(|| OvaError::Missing {
            path: path.to_path_buf(),
            member: file.clone(),
        })?;
        let actual = match algo.as_str() {
            "SHA1" => &m.sha1,
            "SHA256" => &m.sha256,
            _ => {
                return Err(OvaError::Algo {
                    path: path.to_path_buf(),
                    algo,
                })
            }
        };
        if *actual != digest {
            return Err(OvaError::Digest {
                path: path.to_path_buf(),
                member: file,
                algo,
                expected: digest,
                actual: actual.clone(),
            });
        }
        listed.insert(file, ());
    }
    for name in members.keys() {
        let l = name.to_ascii_lowercase();
        if name == mname || l.ends_with(".cert") {
            continue;
        }
        if !listed.contains_key(name) {
            return Err(OvaError::Unlisted {
                path: path.to_path_buf(),
                member: name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &str = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystem id="a"><VirtualHardwareSection/></VirtualSystem></Envelope>"#;

    fn ova(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (n, d) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses "..": write the raw name like a hostile tool would.
            h.as_old_mut().name[..n.len()].copy_from_slice(n.as_bytes());
            h.set_cksum();
            b.append(&h, *d).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(bytes: &[u8]) -> Result<Import, OvaError> {
        read_from(bytes, bytes.len() as u64, Path::new("t.ova"))
    }

    #[test]
    fn manifest_checked() {
        let d = b"disk bytes";
        let mf = format!(
            "SHA256(a.ovf)= {}\nSHA1(a-disk1.vmdk)= {}\n",
            hex::encode(Sha256::digest(OVF)),
            hex::encode(Sha1::digest(d))
        );
        let ok = ova(&[("a.ovf", OVF.as_bytes()), ("a.mf", mf.as_bytes()), ("a-disk1.vmdk", d)]);
        assert_eq!(run(&ok).unwrap().servers[0].name, "a");
        let bad = ova(&[("a.ovf", OVF.as_bytes()), ("a.mf", mf.as_bytes()), ("a-disk1.vmdk", b"disk bytez")]);
        let e = run(&bad).unwrap_err();
        assert!(
            matches!(e, OvaError::Digest { .. }) && e.to_string().contains("a-disk1.vmdk"),
            "{e}"
        );
        let extra = ova(&[
            ("a.ovf", OVF.as_bytes()),
            ("a.mf", mf.as_bytes()),
            ("a-disk1.vmdk", d),
            ("evil.sh", b"x"),
        ]);
        assert!(matches!(run(&extra), Err(OvaError::Unlisted { .. })));
        let missing = ova(&[("a.ovf", OVF.as_bytes()), ("a.mf", mf.as_bytes())]);
        assert!(matches!(run(&missing), Err(OvaError::Missing { .. })));
    }

    #[test]
    fn hostile_archives_refused() {
        let t = ova(&[("../../etc/cron.d/x", b"x"), ("a.ovf", OVF.as_bytes())]);
        assert!(matches!(run(&t), Err(OvaError::Traversal { .. })));
        let t = ova(&[("/etc/passwd", b"x")]);
        assert!(matches!(run(&t), Err(OvaError::Traversal { .. })));
        // A header that declares 1 TiB in a tiny archive.
        let mut t = ova(&[("a.ovf", OVF.as_bytes())]);
        let mut h = tar::Header::new_ustar();
        h.set_size(1 << 40);
        h.set_path("big.vmdk").unwrap();
        h.set_cksum();
        t.splice(0..0, h.as_bytes().iter().copied());
        let e = run(&t).unwrap_err();
        assert!(matches!(e, OvaError::TooLarge { .. }), "{e}");
        assert!(matches!(
            run(b"not a tar at all, just text"),
            Err(OvaError::Tar { .. } | OvaError::NoDescriptor { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(v in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = run(&v);
        }
    }
}
