//! Serving the console over HTTPS: rustls through tokio-rustls, HTTP/1.1 and HTTP/2 through
//! hyper-util's automatic connection builder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1 client that has not sent a full request head by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the HTTPS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate chain PEM could not be read.
    #[error("reading the console's TLS certificate chain (PEM)")]
    CertificatePem(#[source] pem::Error),
    /// The certificate chain PEM holds no certificate.
    #[error(
        "the console's TLS certificate chain has no certificate; \
         expected `-----BEGIN CERTIFICATE-----` blocks, leaf first"
    )]
    NoCertificate,
    /// The private key PEM holds no usable key.
    #[error(
        "reading the console's TLS private key (PEM); \
         expected one PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key"
    )]
    PrivateKeyPem(#[source] pem::Error),
    /// rustls refused the certificate and key (e.g. the key does not match the certificate).
    #[error("the console's TLS certificate and key do not form a valid server configuration")]
    TlsConfig(#[source] rustls::Error),
}

/// Serves `router` over HTTPS on `listener` with the given certificate chain (PEM, leaf
/// first) and private key (PEM).
///
/// Speaks HTTP/1.1 and HTTP/2 (negotiated by ALPN), with TLS 1.2 and 1.3 from rustls'
/// `ring` provider. Each request carries the peer address as
/// `axum::extract::ConnectInfo<SocketAddr>` (the console logs it with failed logins).
///
/// Returns an error only if the certificate or key is unusable; otherwise it runs until
/// the future is dropped (e.g. its task is aborted), which also closes every open
/// connection. Errors on one connection or on `accept` are logged and do not stop it.
pub async fn serve_https(router: Router, listener: TcpListener, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(cert_chain_pem, key_pem)?));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "web console listening (HTTPS)");
    }

    // Owning the connection tasks here means dropping this future aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(acceptor.clone(), router.clone(), tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "web console: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The rustls configuration for `cert_chain_pem` and `key_pem`.
fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, Error> {
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::CertificatePem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(Error::PrivateKeyPem)?;
    // Name the provider rather than rely on the process default, which is ambiguous when
    // more than one rustls provider is compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::TlsConfig)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(Error::TlsConfig)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Runs one connection: TLS handshake, then HTTP until the client goes away.
async fn serve_connection(acceptor: TlsAcceptor, router: Router, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "web console: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "web console: TLS handshake timed out");
            return;
        }
    };
    let service = router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(service))
        .await
    {
        tracing::debug!(%peer, error = %e, "web console: connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[test]
    fn empty_pem_is_a_clear_error() {
        assert!(matches!(server_config(b"", b""), Err(Error::NoCertificate)));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let err = server_config(cert.cert.pem().as_bytes(), b"not a key").unwrap_err();
        assert!(matches!(err, Error::PrivateKeyPem(_)), "{err:?}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let err = server_config(a.cert.pem().as_bytes(), b.key_pair.serialize_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, Error::TlsConfig(_)), "{err:?}");
    }

    #[tokio::test]
    async fn serves_over_https_and_stops_when_dropped() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = cert.cert.pem();
        let key_pem = cert.key_pair.serialize_pem();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "hello over TLS" }));
        let server = tokio::spawn(async move { serve_https(app, listener, cert_pem.as_bytes(), key_pem.as_bytes()).await });

        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
            .resolve("localhost", addr)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/", addr.port());
        let body = client.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "hello over TLS");

        server.abort();
        assert!(server.await.unwrap_err().is_cancelled());
        // A fresh client (no pooled connection) can no longer connect.
        let fresh = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
            .resolve("localhost", addr)
            .build()
            .unwrap();
        assert!(fresh.get(&url).send().await.is_err());
    }
}
