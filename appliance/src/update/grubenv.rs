//! GRUB's environment block (`grubenv`, read by `load_env`, written by
//! `save_env` in the boot loader and by us): exactly 1024 bytes, the line
//! `# GRUB Environment Block`, `name=value` lines, `#` padding. We rewrite
//! it in place (same file, same blocks) so that GRUB's `save_env`, which
//! writes through the file's block list, keeps working.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::UpdateError;

const HEADER: &str = "# GRUB Environment Block\n";
/// Size of the block.
pub const SIZE: usize = 1024;

/// The variables of a GRUB environment block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv(pub BTreeMap<String, String>);

impl GrubEnv {
    /// Parses a block (GRUB escapes `\` and newlines with a backslash).
    pub fn parse(block: &[u8]) -> Result<Self, UpdateError> {
        if block.len() != SIZE {
            return Err(UpdateError::Env(format!("{} bytes, want {SIZE}", block.len())));
        }
        let text = std::str::from_utf8(block).map_err(|_| UpdateError::Env("not UTF-8".into()))?;
        let body = text
            .strip_prefix(HEADER)
            .ok_or_else(|| UpdateError::Env("no '# GRUB Environment Block' line".into()))?;
        let mut vars = BTreeMap::new();
        let mut line = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => line.extend(chars.next()),
                '\n' => {
                    if let Some((k, v)) = line.split_once('=') {
                        if !k.is_empty() && !k.starts_with('#') {
                            vars.insert(k.to_string(), v.to_string());
                        }
                    }
                    line.clear();
                }
                _ => line.push(c),
            }
        }
        Ok(GrubEnv(vars))
    }

    /// The 1024-byte block.
    pub fn to_block(&self) -> Result<Vec<u8>, UpdateError> {
        let mut out = String::from(HEADER);
        for (k, v) in &self.0 {
            let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok(k) {
                return Err(UpdateError::Env(format!("variable name {k:?}")));
            }
            out.push_str(k);
            out.push('=');
            for c in v.chars() {
                if c == '\\' || c == '\n' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\n');
        }
        if out.len() > SIZE {
            return Err(UpdateError::Env(format!("{} bytes of variables do not fit {SIZE}", out.len())));
        }
        let mut b = out.into_bytes();
        b.resize(SIZE, b'#');
        Ok(b)
    }

    /// A variable, `None` when unset or empty (GRUB's `[ -z ]`).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Sets a variable (empty string = unset for the boot script).
    pub fn set(&mut self, k: &str, v: &str) {
        self.0.insert(k.to_string(), v.to_string());
    }
}

/// Reads the block from a file.
pub fn read(path: &Path) -> Result<GrubEnv, UpdateError> {
    let mut b = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut b))
        .map_err(|source| UpdateError::Io {
            what: format!("read the boot loader environment {}", path.display()),
            source,
        })?;
    GrubEnv::parse(&b)
}

/// Rewrites the block in place and flushes it to the disk.
pub fn write(path: &Path, env: &GrubEnv) -> Result<(), UpdateError> {
    let block = env.to_block()?;
    let io = |source| UpdateError::Io {
        what: format!("write the boot loader environment {}", path.display()),
        source,
    };
    let mut f = OpenOptions::new().write(true).open(path).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&block).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_grub_format() {
        let mut e = GrubEnv::default();
        e.set("slot", "a");
        e.set("trial", "b");
        e.set("odd", "x\\y\nz");
        let b = e.to_block().unwrap();
        assert_eq!(b.len(), SIZE);
        assert!(b.starts_with(b"# GRUB Environment Block\nodd=x\\\\y\\\nz\nslot=a\ntrial=b\n#"));
        assert_eq!(GrubEnv::parse(&b).unwrap(), e);
        assert_eq!(e.get("nope"), None);
        e.set("trial", "");
        assert_eq!(e.get("trial"), None);
    }

    #[test]
    fn rejects_bad_blocks() {
        assert!(GrubEnv::parse(b"short").is_err());
        assert!(GrubEnv::parse(&[b'#'; SIZE]).is_err());
        let mut e = GrubEnv::default();
        e.set("bad name", "x");
        assert!(e.to_block().is_err());
        let mut e = GrubEnv::default();
        e.set("big", &"x".repeat(SIZE));
        assert!(e.to_block().is_err());
    }

    #[test]
    fn written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grubenv");
        std::fs::write(&p, GrubEnv::default().to_block().unwrap()).unwrap();
        let mut e = read(&p).unwrap();
        e.set("slot", "b");
        write(&p, &e).unwrap();
        assert_eq!(read(&p).unwrap().get("slot"), Some("b"));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), SIZE as u64);
    }
}
