//! The node's TLS identity: its key, the self-signed bootstrap certificate the
//! appliance pins by fingerprint, the CSR it sends at enrolment, and the two
//! rustls server configurations (bootstrap: no client auth; enrolled: client
//! certificate required, issued by the appliance's CA and nothing else).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

pub use proto::identity::{Fingerprint, PinnedServerCert};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Errors building the node's TLS identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not generate or serialise a key, certificate or CSR.
    #[error("cannot {what}: {source}")]
    Rcgen {
        /// The operation.
        what: &'static str,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM document held no certificate.
    #[error("{what} is not a PEM certificate: {detail}")]
    Pem {
        /// Which document.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// rustls refused a configuration (key does not match certificate, …).
    #[error("cannot build the TLS configuration for {what}: {source}")]
    Rustls {
        /// Which configuration.
        what: &'static str,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The client verifier could not be built from the CA.
    #[error("the appliance CA certificate cannot verify clients: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The issued certificate does not fit this node.
    #[error("the issued certificate is not valid for this node as {name}: {source}")]
    IssuedCert {
        /// The subject name it was checked for.
        name: String,
        /// Why webpki refused it.
        #[source]
        source: rustls::Error,
    },
    /// No subject name to put into certificates.
    #[error(
        "no address or name for the node's certificate: the listen address is unspecified \
         (0.0.0.0 or ::); pass --san with the IP or DNS name the appliance connects to"
    )]
    NoSubjectName,
    /// A `--san` value is neither an IP address nor a DNS name.
    #[error("{0:?} is neither an IP address nor a DNS name")]
    BadSubjectName(String),
}

/// The cryptography every TLS configuration of the node uses: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A name the node is reached by, as it appears in its certificates'
/// subjectAltName.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectName {
    /// An IP address SAN.
    Ip(IpAddr),
    /// A DNS name SAN.
    Dns(String),
}

impl FromStr for SubjectName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(SubjectName::Ip(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok {
            Ok(SubjectName::Dns(s.to_ascii_lowercase()))
        } else {
            Err(Error::BadSubjectName(s.to_string()))
        }
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectName::Ip(ip) => write!(f, "{ip}"),
            SubjectName::Dns(d) => f.write_str(d),
        }
    }
}

impl SubjectName {
    fn to_san(&self) -> Result<SanType, Error> {
        Ok(match self {
            SubjectName::Ip(ip) => SanType::IpAddress(*ip),
            SubjectName::Dns(d) => SanType::DnsName(d.clone().try_into().map_err(|source| Error::Rcgen {
                what: "encode a DNS name",
                source,
            })?),
        })
    }

    fn to_server_name(&self) -> Result<ServerName<'static>, Error> {
        match self {
            SubjectName::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
            SubjectName::Dns(d) => ServerName::try_from(d.clone()).map_err(|_| Error::BadSubjectName(d.clone())),
        }
    }
}

/// The subject names for the node's certificates: the listen IP unless it is
/// unspecified, then the extras, without duplicates. Fails when that leaves
/// nothing.
pub fn subject_names(listen: IpAddr, extra: &[SubjectName]) -> Result<Vec<SubjectName>, Error> {
    let mut out = Vec::new();
    if !listen.is_unspecified() {
        out.push(SubjectName::Ip(listen));
    }
    for n in extra {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::NoSubjectName);
    }
    Ok(out)
}

/// Generates the node's TLS key: ECDSA P-256.
pub fn generate_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Rcgen {
        what: "generate the TLS key",
        source,
    })
}

/// Parses the node's TLS key from its PKCS#8 PEM file content.
pub fn parse_key(pem: &str) -> Result<KeyPair, Error> {
    KeyPair::from_pem(pem).map_err(|source| Error::Rcgen {
        what: "parse the TLS key",
        source,
    })
}

/// SHA-256 fingerprint of a DER certificate: lowercase hex, no colons. This
/// is what the node prints and the appliance pins.
pub fn fingerprint(cert_der: &[u8]) -> String {
    Fingerprint::of(cert_der).hex()
}

/// Creates the self-signed bootstrap certificate for `key`; returns its PEM.
pub fn bootstrap_cert(key: &KeyPair, names: &[SubjectName]) -> Result<String, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "isthmus-node bootstrap");
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(SubjectName::to_san).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // The appliance pins the fingerprint and ignores validity; the dates are
    // only there because X.509 needs some.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * 20);
    let cert = params.self_signed(key).map_err(|source| Error::Rcgen {
        what: "create the bootstrap certificate",
        source,
    })?;
    Ok(cert.pem())
}

/// The PKCS#10 CSR (PEM) for the node's key: CN = `name`, SANs = `names`.
pub fn csr_pem(key: &KeyPair, name: &str, names: &[SubjectName]) -> Result<String, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(SubjectName::to_san).collect::<Result<_, _>>()?;
    let csr = params.serialize_request(key).map_err(|source| Error::Rcgen {
        what: "create the CSR",
        source,
    })?;
    csr.pem().map_err(|source| Error::Rcgen {
        what: "encode the CSR",
        source,
    })
}

/// Parses the first certificate of a PEM document.
pub fn parse_cert_pem(what: &'static str, pem: &str) -> Result<CertificateDer<'static>, Error> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Pem {
        what,
        detail: e.to_string(),
    })
}

/// Parses every certificate of a PEM document (leaf first).
pub fn parse_cert_chain_pem(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::Pem {
            what,
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

fn private_key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// HTTP/1.1 only. Disk uploads are the bulk of this API: over HTTP/2 they
/// would be paced by the stream flow-control window (about one window per
/// round trip) instead of TCP's auto-tuned one, and a request refused before
/// its body is read ends in a stream reset that clients report as an error
/// rather than the JSON answer.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"http/1.1".to_vec()]
}

/// TLS for bootstrap mode: the bootstrap certificate, no client auth.
/// TLS 1.3 only: both ends are ours.
pub fn bootstrap_server_config(cert_pem: &str, key: &KeyPair) -> Result<Arc<ServerConfig>, Error> {
    let cert = parse_cert_pem("the bootstrap certificate", cert_pem)?;
    let what = "bootstrap mode";
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Rustls { what, source })?
        .with_no_client_auth()
        .with_single_cert(vec![cert], private_key_der(key))
        .map_err(|source| Error::Rustls { what, source })?;
    cfg.alpn_protocols = alpn();
    Ok(Arc::new(cfg))
}

fn ca_roots(ca_pem: &str) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for ca in parse_cert_chain_pem("the appliance CA", ca_pem)? {
        roots.add(ca).map_err(|source| Error::Rustls {
            what: "the appliance CA",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// TLS for enrolled mode: the issued certificate (chain as given), and a
/// client certificate REQUIRED, chaining to the appliance CA only.
pub fn enrolled_server_config(cert_pem: &str, ca_pem: &str, key: &KeyPair) -> Result<Arc<ServerConfig>, Error> {
    let chain = parse_cert_chain_pem("the node certificate", cert_pem)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(ca_roots(ca_pem)?, provider()).build()?;
    let what = "enrolled mode";
    // with_single_cert checks that the certificate's public key is ours.
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Rustls { what, source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key_der(key))
        .map_err(|source| Error::Rustls { what, source })?;
    cfg.alpn_protocols = alpn();
    Ok(Arc::new(cfg))
}

/// Checks, as the appliance will, that `cert_pem` chains to `ca_pem` and is a
/// valid server certificate for every one of `names` right now.
pub fn verify_issued_cert(cert_pem: &str, ca_pem: &str, names: &[SubjectName]) -> Result<(), Error> {
    let chain = parse_cert_chain_pem("the node certificate", cert_pem)?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(ca_roots(ca_pem)?, provider())
        .build()
        .map_err(|e| Error::Pem {
            what: "the appliance CA",
            detail: e.to_string(),
        })?;
    let (leaf, intermediates) = chain.split_first().ok_or(Error::Pem {
        what: "the node certificate",
        detail: "empty".into(),
    })?;
    for n in names {
        verifier
            .verify_server_cert(leaf, intermediates, &n.to_server_name()?, &[], UnixTime::now())
            .map_err(|source| Error::IssuedCert {
                name: n.to_string(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_skip_unspecified_and_dedup() {
        let extra = vec!["10.0.0.5".parse().unwrap(), "node1.example.com".parse().unwrap()];
        let n = subject_names("0.0.0.0".parse().unwrap(), &extra).unwrap();
        assert_eq!(n, extra);
        let n = subject_names("10.0.0.5".parse().unwrap(), &extra).unwrap();
        assert_eq!(n.len(), 2);
        assert!(matches!(subject_names("::".parse().unwrap(), &[]), Err(Error::NoSubjectName)));
    }

    #[test]
    fn subject_name_parsing() {
        assert_eq!(
            "Node1.Example.com".parse::<SubjectName>().unwrap(),
            SubjectName::Dns("node1.example.com".into())
        );
        for bad in ["", "a..b", "-a.b", "a_b", "a b", "x/y"] {
            assert!(bad.parse::<SubjectName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bootstrap_cert_serves_and_fingerprint_is_hex_of_der() {
        let key = generate_key().unwrap();
        let pem = bootstrap_cert(&key, &[SubjectName::Ip("127.0.0.1".parse().unwrap())]).unwrap();
        let der = parse_cert_pem("test", &pem).unwrap();
        let fp = fingerprint(&der);
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        bootstrap_server_config(&pem, &key).unwrap();
        // A different key must not pair with this certificate.
        assert!(bootstrap_server_config(&pem, &generate_key().unwrap()).is_err());
    }

    #[test]
    fn pinned_verifier_accepts_only_its_cert() {
        let key = generate_key().unwrap();
        let names = [SubjectName::Ip("127.0.0.1".parse().unwrap())];
        let a = parse_cert_pem("a", &bootstrap_cert(&key, &names).unwrap()).unwrap();
        let other = generate_key().unwrap();
        let b = parse_cert_pem("b", &bootstrap_cert(&other, &names).unwrap()).unwrap();
        let v = PinnedServerCert::new(format!("sha256:{}", fingerprint(&a).to_uppercase()).parse().unwrap());
        let sn = ServerName::try_from("x.invalid").unwrap();
        assert!(v.verify_server_cert(&a, &[], &sn, &[], UnixTime::now()).is_ok());
        assert!(v.verify_server_cert(&b, &[], &sn, &[], UnixTime::now()).is_err());
    }
}
