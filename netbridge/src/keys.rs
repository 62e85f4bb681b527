//! Static X25519 keys for the Noise IKpsk2 handshake.

use base64::Engine;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// A static X25519 key pair. The private half never leaves memory except in a
/// 0600 key file written by its owner, and is never logged (see `Debug`).
#[derive(Clone)]
pub struct StaticKeypair {
    /// Private key.
    pub private: [u8; 32],
    /// Public key.
    pub public: [u8; 32],
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// Generates a fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        let mut private = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut private)
            // The kernel's getrandom(2) does not fail once the pool is initialised;
            // a machine where it does cannot run a tunnel anyway.
            .expect("system random source");
        Self::from_private(private)
    }

    /// Rebuilds a key pair from its private half (e.g. read from a key file),
    /// deriving the public key (X25519 scalar multiplication of the base point,
    /// with the RFC 7748 §5 clamping applied by the curve implementation).
    pub fn from_private(private: [u8; 32]) -> Self {
        let public = derive_public(&private);
        StaticKeypair { private, public }
    }
}

/// Why a key string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64.
    #[error("key is not valid base64 ({0}); expected 44 characters like WireGuard keys")]
    Base64(String),
    /// Decoded to the wrong length.
    #[error("key decodes to {0} bytes, expected 32")]
    Length(usize),
}

/// Encodes a 32-byte key (public, private or PSK) as standard base64, the
/// form WireGuard tools use, for config files and the control API.
pub fn encode(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Decodes a key written by [`encode`] (surrounding whitespace ignored).
pub fn decode(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    bytes.as_slice().try_into().map_err(|_| KeyError::Length(bytes.len()))
}

/// X25519(private, 9): the public key that belongs to `private`.
fn derive_public(private: &[u8; 32]) -> [u8; 32] {
    // snow's own Curve25519 implementation (curve25519-dalek) is the one the
    // handshake uses, so the derived key is by construction the one it expects.
    let mut public = [0u8; 32];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
        dh.set(private);
        public.copy_from_slice(&dh.pubkey()[..32]);
    }
    public
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_private_matches_generated_public() {
        for _ in 0..8 {
            let kp = StaticKeypair::generate();
            let again = StaticKeypair::from_private(kp.private);
            assert_eq!(again.public, kp.public);
            assert_ne!(kp.public, [0u8; 32]);
        }
    }

    #[test]
    fn matches_snow_generated_keypair() {
        let kp = snow::Builder::new(crate::NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap();
        let mut private = [0u8; 32];
        private.copy_from_slice(&kp.private);
        assert_eq!(StaticKeypair::from_private(private).public.as_slice(), kp.public.as_slice());
    }

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let private = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(StaticKeypair::from_private(private).public, public);
    }

    #[test]
    fn base64_roundtrip_and_errors() {
        let kp = StaticKeypair::from_private([7u8; 32]);
        let s = encode(&kp.public);
        assert_eq!(s.len(), 44);
        assert_eq!(decode(&format!(" {s}\n")), Ok(kp.public));
        assert!(matches!(decode("not base64!"), Err(KeyError::Base64(_))));
        assert_eq!(decode("AAAA"), Err(KeyError::Length(3)));
    }

    #[test]
    fn debug_hides_private() {
        let kp = StaticKeypair::from_private([7u8; 32]);
        let s = format!("{kp:?}");
        assert!(!s.contains("private"), "{s}");
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
