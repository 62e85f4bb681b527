//! Identities both sides check: certificate fingerprints, and the pinned
//! verifier the appliance uses to reach a cloud node before it is enrolled
//! (the admin copies the node's bootstrap fingerprint, like an SSH host key).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// SHA-256 over a DER certificate; written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// A fingerprint string that is not `sha256:` + 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fingerprint {0:?} is not `sha256:` followed by 64 hex digits; copy it from the cloud node's `bootstrap fingerprint:` line")]
pub struct FingerprintParseError(pub String);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The 64 lowercase hex digits, without prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintParseError(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix("sha256:").unwrap_or(t).replace(':', "");
        if t.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(t.get(2 * i..2 * i + 2).ok_or_else(err)?, 16).map_err(|_| err())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Accepts exactly one server certificate, by fingerprint; names and dates
/// are not checked (the pin is the identity), handshake signatures are.
#[derive(Debug)]
pub struct PinnedServerCert {
    pin: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedServerCert {
    /// A verifier for `pin`.
    pub fn new(pin: Fingerprint) -> Self {
        PinnedServerCert {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// A client config using this verifier and no client certificate.
    pub fn client_config(self) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = self.provider.clone();
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        let s = format!("sha256:{}", "ab".repeat(32));
        let f: Fingerprint = s.parse().unwrap();
        assert_eq!(f.0, [0xab; 32]);
        assert_eq!(f.to_string(), s);
        let colons: Fingerprint = ("AB:".repeat(31) + "AB").parse().unwrap();
        assert_eq!(colons, f);
        for bad in ["sha256:abcd", "zz", "", &format!("sha256:{}", "zz".repeat(32)), &"é".repeat(32)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pin() {
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![1u8, 2, 4]);
        let v = PinnedServerCert::new(Fingerprint::of(&[1, 2, 3]));
        let name = ServerName::try_from("node").unwrap();
        assert!(v.verify_server_cert(&a, &[], &name, &[], UnixTime::now()).is_ok());
        assert!(v.verify_server_cert(&b, &[], &name, &[], UnixTime::now()).is_err());
    }
}
