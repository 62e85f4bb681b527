//! Server descriptions: what `isthmus inventory add FILE` reads.
//!
//! A description is TOML (or JSON, when the file starts with `{` or ends in
//! `.json`) with the server's name, the IP clients use, its hardware profile
//! and how the appliance reaches it in the data center:
//!
//! ```toml
//! name = "web1"
//! ip = "10.77.0.10"
//! check_ports = [80]
//!
//! [profile]
//! cpus = 1
//! memory_mib = 256
//! disks = [{ bus = "ide", unit = 0, boot = true }]
//! nics = [{ model = "e1000", mac = "52:54:00:12:34:56", pci_slot = "03.0" }]
//! smbios = { serial = "WEB1-0001" }
//!
//! [source]
//! kind = "local-qemu"
//! disks = ["/var/lib/isthmus/web1.qcow2"]
//! taps = ["tap-web1"]
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use proto::profile::ProfileError;
use proto::HardwareProfile;
use serde::{Deserialize, Serialize};

use crate::model::{Location, ServerRecord, Source};

/// A server description as written by an admin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDescription {
    /// Unique name: letters, digits, `-`, `_`, 1..=32 characters.
    pub name: String,
    /// IPv4 address clients reach it at.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// TCP ports whose answer proves the service runs (default: none).
    #[serde(default)]
    pub check_ports: Vec<u16>,
    /// Hardware.
    pub profile: HardwareProfile,
    /// How the appliance reaches it.
    pub source: Source,
}

/// Why a description was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// File unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or schema error (message carries line and column).
    #[error("{path}: {message}")]
    Syntax {
        /// File.
        path: PathBuf,
        /// Parser's message, with position.
        message: String,
    },
    /// Bad name.
    #[error("server name {0:?} is invalid: use 1 to 32 letters, digits, '-' or '_'")]
    Name(String),
    /// Profile does not describe a machine.
    #[error("server {name}: {source}")]
    Profile {
        /// Server.
        name: String,
        /// Cause.
        #[source]
        source: ProfileError,
    },
    /// Source does not match the profile.
    #[error("server {name}: source lists {got} {what} but the profile has {want}; give one per profile entry, in the same order")]
    SourceCount {
        /// Server.
        name: String,
        /// "disks" or "taps".
        what: &'static str,
        /// How many given.
        got: usize,
        /// How many needed.
        want: usize,
    },
}

/// True if `name` is usable as a server or cloud name (also in paths).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ServerDescription {
    /// Parses a description from text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ServerDescription, InventoryError> {
        let text = text.trim_start_matches('\u{feff}');
        let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        let d: ServerDescription = if json {
            serde_json::from_str(text).map_err(|e| InventoryError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(text).map_err(|e| InventoryError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        d.validate()?;
        Ok(d)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<ServerDescription, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks the description's invariants.
    pub fn validate(&self) -> Result<(), InventoryError> {
        if !valid_name(&self.name) {
            return Err(InventoryError::Name(self.name.clone()));
        }
        self.profile.validate().map_err(|source| InventoryError::Profile {
            name: self.name.clone(),
            source,
        })?;
        let Source::LocalQemu { disks, taps } = &self.source;
        for (what, got, want) in [
            ("disks", disks.len(), self.profile.disks.len()),
            ("taps", taps.len(), self.profile.nics.len()),
        ] {
            if got != want {
                return Err(InventoryError::SourceCount {
                    name: self.name.clone(),
                    what,
                    got,
                    want,
                });
            }
        }
        Ok(())
    }

    /// The inventory record of a new server (it starts in the data center).
    pub fn into_record(self) -> ServerRecord {
        ServerRecord {
            name: self.name,
            ip: self.ip,
            check_ports: self.check_ports,
            profile: self.profile,
            source: self.source,
            location: Location::Dc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "web1"
ip = "10.77.0.10"
check_ports = [80]

[profile]
cpus = 1
memory_mib = 256
disks = [{ bus = "ide", unit = 0, boot = true }]
nics = [{ model = "e1000", mac = "52:54:00:12:34:56", pci_slot = "03.0" }]
smbios = { serial = "WEB1-0001" }

[source]
kind = "local-qemu"
disks = ["/var/lib/isthmus/web1.qcow2"]
taps = ["tap-web1"]
"#;

    #[test]
    fn parses_toml_and_json() {
        let d = ServerDescription::parse(GOOD, Path::new("web1.toml")).unwrap();
        assert_eq!(d.name, "web1");
        assert_eq!(d.profile.nics[0].mac.to_string(), "52:54:00:12:34:56");
        let j = serde_json::to_string(&d).unwrap();
        let back = ServerDescription::parse(&j, Path::new("web1.json")).unwrap();
        assert_eq!(back.profile, d.profile);
        // A UTF-8 BOM (Windows editors) is accepted.
        ServerDescription::parse(&format!("\u{feff}{GOOD}"), Path::new("x.toml")).unwrap();
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = ServerDescription::parse(&GOOD.replace("e1000", "e9999"), Path::new("w.toml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("w.toml") && s.contains("e9999") && s.contains("line"), "{s}");
        let e = ServerDescription::parse(&GOOD.replace("taps = [\"tap-web1\"]", "taps = []"), Path::new("w.toml")).unwrap_err();
        assert!(e.to_string().contains("source lists 0 taps"), "{e}");
        let e = ServerDescription::parse(&GOOD.replace("\"web1\"", "\"../etc\""), Path::new("w.toml")).unwrap_err();
        assert!(matches!(e, InventoryError::Name(_)));
        let e = ServerDescription::parse(&GOOD.replace("cpus = 1", "cpus = 0"), Path::new("w.toml")).unwrap_err();
        assert!(e.to_string().contains("cpus = 0"), "{e}");
        let e = ServerDescription::parse(&format!("{GOOD}\ncolour = 1\n"), Path::new("w.toml")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(s in "\\PC{0,300}") {
            let _ = ServerDescription::parse(&s, Path::new("x.toml"));
            let _ = ServerDescription::parse(&s, Path::new("x.json"));
        }
    }
}
