//! Disk encryption keys: held only in memory, wiped on drop, never printed.
//!
//! A key comes from the appliance when a guest starts and goes to QEMU as a
//! QMP `secret` object over the monitor socket (see [`crate::Guest::launch_with_keys`]);
//! it is never written to a command line, the environment, a file or a log.

use std::fmt;

use zeroize::Zeroizing;

/// Shortest key we accept (bytes). LUKS stretches the passphrase with a KDF,
/// but a short key is still a guessable one.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key we accept (bytes).
pub const MAX_KEY_LEN: usize = 1024;

/// A disk's key; its LUKS passphrase is the key's base64 form. Its bytes are zeroed when it is dropped; its
/// `Debug` shows only the length. Deliberately not `Clone`, `Display` or
/// `Serialize`.
pub struct DiskKey(Zeroizing<Vec<u8>>);

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskKeyError {
    /// Too short or too long.
    #[error("disk key of {len} bytes: a key needs {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes (the appliance generates 32)")]
    Length {
        /// Its length.
        len: usize,
    },
    /// The OS random source failed.
    #[error("cannot read random bytes for a new disk key: {0}")]
    Random(#[source] std::io::Error),
}

impl DiskKey {
    /// Takes ownership of key bytes (wiped on drop, also when refused).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<DiskKey, DiskKeyError> {
        let bytes = Zeroizing::new(bytes);
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(DiskKeyError::Length { len: bytes.len() });
        }
        Ok(DiskKey(bytes))
    }

    /// A new random 32-byte key from the OS (`getrandom(2)` via `/dev/urandom`).
    pub fn generate() -> Result<DiskKey, DiskKeyError> {
        use std::io::Read;
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(DiskKeyError::Random)?;
        Ok(DiskKey(bytes))
    }

    /// The key bytes (for hv's own ciphers, e.g. the suspend state file).
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The LUKS passphrase QEMU gets: the key's standard base64 encoding.
    /// QEMU takes only UTF-8 passphrases ("Data from secret ... is not valid
    /// UTF-8"), and the appliance's keys are raw random bytes.
    pub(crate) fn passphrase(&self) -> Zeroizing<Vec<u8>> {
        use base64::Engine as _;
        let mut out = Zeroizing::new(vec![0u8; self.0.len().div_ceil(3) * 4]);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.0[..], &mut out[..])
            .unwrap_or(0);
        out.truncate(n);
        out
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty key is refused at construction.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The keys given for a guest do not fit its disks.
#[derive(Debug, thiserror::Error)]
pub enum KeyMatchError {
    /// Not one key slot per disk.
    #[error("guest {name}: {keys} disk key slot(s) for {disks} disk(s); pass one Option<DiskKey> per disk (None for plain disks), or none at all")]
    Count {
        /// Guest name.
        name: String,
        /// Key slots given.
        keys: usize,
        /// Disks.
        disks: usize,
    },
    /// An encrypted disk without its key.
    #[error(
        "guest {name}: disk {disk} ({path}) is LUKS-encrypted but no key was given for it; the appliance must hand over its key at start"
    )]
    Missing {
        /// Guest name.
        name: String,
        /// Disk index.
        disk: usize,
        /// Image file.
        path: std::path::PathBuf,
    },
    /// A key for a plain disk: refused, so that a disk someone expects to be
    /// encrypted is never silently run in the clear.
    #[error("guest {name}: a key was given for disk {disk} ({path}), but that image is not encrypted; encrypt it first (hv::create_encrypted_image) or drop the key")]
    NotEncrypted {
        /// Guest name.
        name: String,
        /// Disk index.
        disk: usize,
        /// Image file.
        path: std::path::PathBuf,
    },
}

impl fmt::Debug for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskKey(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let k = DiskKey::from_bytes(b"super-secret-key-material".to_vec()).unwrap();
        let d = format!("{k:?} {:?}", Some(&k));
        assert!(!d.contains("secret"), "{d}");
        assert!(d.contains("25 bytes"), "{d}");
    }

    #[test]
    fn lengths_and_generation() {
        assert!(matches!(DiskKey::from_bytes(vec![1; 15]), Err(DiskKeyError::Length { len: 15 })));
        assert!(DiskKey::from_bytes(vec![1; 16]).is_ok());
        assert!(DiskKey::from_bytes(vec![1; MAX_KEY_LEN + 1]).is_err());
        let (a, b) = (DiskKey::generate().unwrap(), DiskKey::generate().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a.expose(), b.expose());
        let k = DiskKey::from_bytes(vec![0xff; 16]).unwrap();
        assert_eq!(&k.passphrase()[..], b"/////////////////////w==");
    }
}
