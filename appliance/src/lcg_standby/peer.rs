//! The appliance's identity towards its HA peer appliance, and the TLS
//! configurations built on it.
//!
//! Each appliance has a self-signed *peer certificate* (ECDSA P-256, made at
//! first start, key 0600 in `pki/`), printed as `peer fingerprint:` when
//! `isthmus serve` runs with `--peer-listen`. The two appliances of a pair
//! pin each other's fingerprint, both ways, on every connection: the primary
//! pins the standby's (the admin copies it into `isthmus lcg standby add`),
//! the standby learns the primary's from the pairing call that carried the
//! one-time token. The peer certificate is not issued by the appliance's CA,
//! so a standby's certificate is never accepted by the primary's cloud nodes.

use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName as TlsName, SignatureScheme};

use crate::pki::{certs, key, write_secret, Fingerprint, PinnedServerCert, PkiError};

/// This appliance's peer certificate and key.
pub struct PeerIdentity {
    cert_pem: String,
    key_pem: String,
    /// SHA-256 of the certificate: what the other appliance pins.
    pub fingerprint: Fingerprint,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerIdentity {
    /// Loads the identity from `pki_dir` (`peer.key`, `peer.pem`), making it
    /// on first use; the fingerprint stays the same across restarts.
    pub fn load_or_create(pki_dir: &Path) -> Result<PeerIdentity, PkiError> {
        let (key_p, cert_p) = (pki_dir.join("peer.key"), pki_dir.join("peer.pem"));
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Io {
                op: "read",
                path: p.to_path_buf(),
                source,
            })
        };
        if !key_p.exists() || !cert_p.exists() {
            let k = KeyPair::generate().map_err(|source| PkiError::Cert {
                op: "generate peer key",
                source,
            })?;
            let mut params = CertificateParams::new(vec!["isthmus-peer".to_string()]).map_err(|source| PkiError::Cert {
                op: "peer certificate",
                source,
            })?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Isthmus appliance peer");
            params.distinguished_name = dn;
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2049, 12, 31);
            let cert = params.self_signed(&k).map_err(|source| PkiError::Cert {
                op: "self-sign peer certificate",
                source,
            })?;
            write_secret(&key_p, k.serialize_pem().as_bytes())?;
            write_secret(&cert_p, cert.pem().as_bytes())?;
        }
        let cert_pem = read(&cert_p)?;
        let key_pem = read(&key_p)?;
        let der = certs(&cert_pem)?.remove(0);
        Ok(PeerIdentity {
            fingerprint: Fingerprint::of(der.as_ref()),
            cert_pem,
            key_pem,
        })
    }

    /// Server side of the peer API: presents the peer certificate and
    /// requires one from the client, whatever its issuer (handshake
    /// signatures are checked; who it is, the routes decide by fingerprint).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let p = provider();
        Ok(rustls::ServerConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(AnyClientCert(p)))
            .with_single_cert(certs(&self.cert_pem)?, key(&self.key_pem)?)?)
    }

    /// Client side: accepts only the server certificate `pin` and presents
    /// this appliance's peer certificate.
    pub fn client_config(&self, pin: Fingerprint) -> Result<rustls::ClientConfig, PkiError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(pin)))
            .with_client_auth_cert(certs(&self.cert_pem)?, key(&self.key_pem)?)?)
    }
}

/// Requires a client certificate and checks that the client holds its key;
/// does not judge the certificate itself (pinning by fingerprint does).
#[derive(Debug)]
struct AnyClientCert(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[TlsName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_made_once_and_its_key_is_private() {
        let d = tempfile::tempdir().unwrap();
        let a = PeerIdentity::load_or_create(d.path()).unwrap();
        let b = PeerIdentity::load_or_create(d.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("peer.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        a.server_config().unwrap();
        a.client_config(b.fingerprint).unwrap();
    }
}
