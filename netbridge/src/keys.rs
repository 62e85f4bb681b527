//! Static X25519 keys for the Noise IKpsk2 handshake.

/// A static X25519 key pair. The private half never leaves memory except in a
/// 0600 key file written by its owner.
#[derive(Clone)]
pub struct StaticKeypair {
    /// Private key.
    pub private: [u8; 32],
    /// Public key.
    pub public: [u8; 32],
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair").field("public", &self.public).finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// Generates a fresh key pair.
    pub fn generate() -> Self {
        let kp = snow::Builder::new(crate::NOISE_PARAMS.parse().expect("static params"))
            .generate_keypair()
            .expect("keypair generation");
        let mut private = [0u8; 32];
        let mut public = [0u8; 32];
        private.copy_from_slice(&kp.private);
        public.copy_from_slice(&kp.public);
        StaticKeypair { private, public }
    }
}
