//! The appliance's certificate authority and the TLS configurations built on it.
//!
//! At first start the appliance creates its CA (ECDSA P-256). It issues:
//! its own client certificate (to talk to cloud nodes over mutual TLS), the
//! web console's server certificate, and, at enrolment, the certificate of
//! each cloud node from the CSR the node sends. Key files are 0600 in the data
//! directory and never logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use proto::identity::{Fingerprint, PinnedServerCert};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A key or certificate file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused an operation.
    #[error("certificate operation failed ({op}): {source}")]
    Cert {
        /// What we were doing.
        op: &'static str,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused a configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM blob held no usable item.
    #[error("{0}: no usable PEM item found")]
    Pem(&'static str),
    /// A fingerprint string is malformed.
    #[error(transparent)]
    Fingerprint(#[from] proto::identity::FingerprintParseError),
}

fn cert_err(op: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { op, source }
}

/// The CA plus the appliance's own client identity.
pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    /// CA certificate PEM as stored (what peers trust).
    pub ca_pem: String,
    /// The appliance's client certificate chain (PEM).
    pub client_cert_pem: String,
    client_key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Writes a file with mode 0600, atomically (temp + fsync + rename).
pub fn write_secret(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let io = |op| {
        move |source| PkiError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create"))?;
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io("chmod"))?;
    f.write_all(data).map_err(io("write"))?;
    f.sync_all().map_err(io("fsync"))?;
    fs::rename(&tmp, path).map_err(io("rename"))?;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

impl Ca {
    /// Loads the CA from `dir`, creating it (and the appliance's client
    /// certificate) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let (key_p, cert_p) = (dir.join("ca.key"), dir.join("ca.pem"));
        let (ckey_p, ccert_p) = (dir.join("appliance.key"), dir.join("appliance.pem"));
        if !key_p.exists() {
            let key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Isthmus appliance CA");
            dn.push(DnType::OrganizationName, "Isthmus");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2049, 12, 31);
            let cert = params.self_signed(&key).map_err(cert_err("self-sign CA"))?;
            write_secret(&key_p, key.serialize_pem().as_bytes())?;
            write_secret(&cert_p, cert.pem().as_bytes())?;
        }
        let key = KeyPair::from_pem(&read(&key_p)?).map_err(cert_err("read CA key"))?;
        let ca_pem = read(&cert_p)?;
        // The issuer object only needs the CA's name and key: rebuild it from
        // the stored certificate's parameters.
        let cert = CertificateParams::from_ca_cert_pem(&ca_pem)
            .map_err(cert_err("parse CA certificate"))?
            .self_signed(&key)
            .map_err(cert_err("rebuild CA issuer"))?;
        let mut ca = Ca {
            key,
            cert,
            ca_pem,
            client_cert_pem: String::new(),
            client_key_pem: String::new(),
        };
        if !ckey_p.exists() {
            let (cert_pem, key_pem) = ca.issue("isthmus-appliance", &[], &[ExtendedKeyUsagePurpose::ClientAuth])?;
            write_secret(&ckey_p, key_pem.as_bytes())?;
            write_secret(&ccert_p, cert_pem.as_bytes())?;
        }
        ca.client_cert_pem = read(&ccert_p)?;
        ca.client_key_pem = read(&ckey_p)?;
        Ok(ca)
    }

    /// Issues a certificate with a fresh key: returns (cert PEM, key PEM).
    pub fn issue(&self, cn: &str, sans: &[String], ekus: &[ExtendedKeyUsagePurpose]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(cert_err("generate key"))?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(cert_err("certificate SANs"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = ekus.to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 12, 31);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(cert_err("sign certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a cloud node's CSR: the certificate serves its API (serverAuth
    /// only). The CN is forced to the name the appliance gave the node.
    pub fn sign_node_csr(&self, csr_pem: &str, name: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_err("parse CSR"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        csr.params.distinguished_name = dn;
        csr.params.is_ca = IsCa::NoCa;
        // serverAuth only: a node certificate must not pass as the appliance (clientAuth) at another node.
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        csr.params.not_after = rcgen::date_time_ymd(2036, 12, 31);
        csr.params
            .subject_alt_names
            .retain(|s| matches!(s, SanType::IpAddress(_) | SanType::DnsName(_)));
        let cert = csr.signed_by(&self.cert, &self.key).map_err(cert_err("sign CSR"))?;
        Ok(cert.pem())
    }

    /// rustls client config for mutual TLS to enrolled nodes: trusts only our
    /// CA and presents the appliance's client certificate.
    pub fn mtls_client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca_pem)? {
            roots.add(c)?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&self.client_cert_pem)?, key(&self.client_key_pem)?)?;
        Ok(cfg)
    }
}

/// Parses all certificates of a PEM blob.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let v: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes()).filter_map(Result::ok).collect();
    if v.is_empty() {
        return Err(PkiError::Pem("certificate"));
    }
    Ok(v)
}

/// Parses the first private key of a PEM blob.
pub fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(PkiError::Pem("private key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem, "second start must reuse the CA");
        for f in ["ca.key", "appliance.key", "ca.pem"] {
            let mode = fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        a.mtls_client_config().unwrap();
    }

    #[test]
    fn signs_a_node_csr_with_our_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let node_key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["198.51.100.2".into()]).unwrap();
        let csr = params.serialize_request(&node_key).unwrap().pem().unwrap();
        let pem = ca.sign_node_csr(&csr, "cloud1").unwrap();
        let der = certs(&pem).unwrap().remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert!(x.subject().to_string().contains("cloud1"));
        assert!(x.issuer().to_string().contains("Isthmus appliance CA"));
        assert!(ca.sign_node_csr("garbage", "x").is_err());
    }
}
