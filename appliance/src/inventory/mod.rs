//! Inventory: what the appliance knows about each source server.
//!
//! - [`description`]: the TOML/JSON server description `isthmus inventory add` reads.
//! - Importers of the descriptors admins already have, into one [`model`]:
//!   [`vmx`] (VMware), [`ovf`] and [`ova`] (DMTF OVF 1.x/2.x), [`libvirt`]
//!   (domain XML) and [`csv`] (CMDB exports). [`import_file`] picks the right
//!   one by extension, or by content when the extension says nothing.

pub mod csv;
pub mod description;
mod disk_identity;
pub mod libvirt;
pub mod model;
pub mod ova;
pub mod ovf;
pub mod vmx;
pub mod xml;

use std::path::{Path, PathBuf};

pub use description::{valid_name, InventoryError, ServerDescription};
pub use model::{Import, ImportedServer};

/// Largest text descriptor read (OVAs are streamed and bounded separately).
pub const MAX_DESCRIPTOR_BYTES: u64 = 64 << 20;

/// Descriptor formats [`import_file`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// VMware `.vmx`.
    Vmx,
    /// OVF descriptor.
    Ovf,
    /// OVA archive.
    Ova,
    /// libvirt domain XML.
    Libvirt,
    /// CSV inventory.
    Csv,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large to be a descriptor.
    #[error("{path}: {size} bytes is too large for a descriptor (limit {MAX_DESCRIPTOR_BYTES}); is this a disk image? Use `isthmus inspect` for disks")]
    TooLarge {
        /// File.
        path: PathBuf,
        /// Size.
        size: u64,
    },
    /// The format could not be told.
    #[error("{0}: cannot tell the format; name the file .vmx, .ovf, .ova, .xml (libvirt) or .csv")]
    Unknown(PathBuf),
    /// Text is not UTF-8.
    #[error("{path}: not UTF-8 text (byte {offset}); save the file as UTF-8")]
    Encoding {
        /// File.
        path: PathBuf,
        /// Offset of the first bad byte.
        offset: usize,
    },
    /// VMX error.
    #[error(transparent)]
    Vmx(#[from] vmx::VmxError),
    /// OVF error.
    #[error(transparent)]
    Ovf(#[from] ovf::OvfError),
    /// OVA error.
    #[error(transparent)]
    Ova(#[from] ova::OvaError),
    /// libvirt error.
    #[error(transparent)]
    Libvirt(#[from] libvirt::LibvirtError),
    /// CSV error.
    #[error(transparent)]
    Csv(#[from] csv::CsvError),
}

/// Tells the format from the file name, else from the first bytes.
pub fn detect(path: &Path, head: &[u8]) -> Option<Format> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("vmx") => return Some(Format::Vmx),
        Some("ovf") => return Some(Format::Ovf),
        Some("ova") => return Some(Format::Ova),
        Some("csv") => return Some(Format::Csv),
        _ => {}
    }
    if head.len() > 262 && &head[257..262] == b"ustar" {
        return Some(Format::Ova);
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with('<') {
        // The root element decides: <Envelope> is OVF, <domain> is libvirt.
        let lower = t.to_ascii_lowercase();
        let env = lower.find("envelope");
        let dom = lower.find("<domain");
        return match (env, dom) {
            (Some(e), Some(d)) => Some(if e < d { Format::Ovf } else { Format::Libvirt }),
            (Some(_), None) => Some(Format::Ovf),
            (None, Some(_)) => Some(Format::Libvirt),
            (None, None) => None,
        };
    }
    let lower = t.to_ascii_lowercase();
    if lower.contains("config.version") || lower.contains("virtualhw.version") || lower.contains(".encoding") {
        return Some(Format::Vmx);
    }
    if ext.as_deref() == Some("xml") {
        return Some(Format::Libvirt);
    }
    None
}

/// Imports a descriptor of any supported format.
pub fn import_file(path: &Path) -> Result<Import, ImportError> {
    let read = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mut head = vec![0u8; 4096];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(read)?;
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..]).map_err(read)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    };
    head.truncate(n);
    let format = detect(path, &head).ok_or_else(|| ImportError::Unknown(path.to_path_buf()))?;
    if format == Format::Ova {
        return Ok(ova::read(path)?);
    }
    if meta.len() > MAX_DESCRIPTOR_BYTES {
        return Err(ImportError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    import_bytes(format, &bytes, path)
}

/// Imports a descriptor already in memory; `path` names it in messages.
pub fn import_bytes(format: Format, bytes: &[u8], path: &Path) -> Result<Import, ImportError> {
    let text = || {
        std::str::from_utf8(bytes).map_err(|e| ImportError::Encoding {
            path: path.to_path_buf(),
            offset: e.valid_up_to(),
        })
    };
    Ok(match format {
        Format::Ova => ova::read_from(bytes, bytes.len() as u64, path)?,
        Format::Vmx => vmx::parse(text()?, path)?,
        Format::Ovf => ovf::parse(text()?, path)?,
        Format::Libvirt => libvirt::parse(text()?, path)?,
        Format::Csv => csv::parse(text()?, path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect(Path::new("a.VMX"), b""), Some(Format::Vmx));
        assert_eq!(
            detect(Path::new("a"), b"\xef\xbb\xbf<?xml version='1.0'?><domain type='kvm'>"),
            Some(Format::Libvirt)
        );
        assert_eq!(detect(Path::new("a.xml"), b"<ovf:Envelope>"), Some(Format::Ovf));
        assert_eq!(detect(Path::new("a.txt"), b".encoding = \"UTF-8\""), Some(Format::Vmx));
        assert_eq!(detect(Path::new("a.txt"), b"hello"), None);
    }
}
