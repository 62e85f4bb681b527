//! The HTTPS accept loop. Each accepted TCP connection is handshaken with the
//! TLS configuration current at that moment ([`crate::node::TlsSwitch`]) and
//! then served by the router of that mode (HTTP/1.1, see `pki` for why). So the
//! switch to mutual TLS at enrolment needs no restart, and a connection that
//! began in bootstrap mode stays limited to enrolment.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::node::{Node, TlsMode};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// An HTTP/1 request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listen address failed.
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The bound socket has no address.
    #[error("cannot read the listening socket's address")]
    LocalAddr(#[source] std::io::Error),
}

/// Binds the control API's TCP listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|e| Error::Bind(addr, e))
}

/// Serves `node`'s API on `listener` until `shutdown` completes. Connections
/// still open then are left to finish on their own tasks.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let local = listener.local_addr().map_err(Error::LocalAddr)?;
    tracing::info!(%local, enrolled = node.is_enrolled(), "control API listening");
    let bootstrap = api::bootstrap_router(node.clone());
    let enrolled = api::enrolled_router(node.clone());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (cfg, mode) = node.tls().current();
        let router = match mode {
            TlsMode::Bootstrap => bootstrap.clone(),
            TlsMode::Enrolled => enrolled.clone(),
        };
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(cfg);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, ?mode, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, ?mode, "TLS handshake timed out");
                    return;
                }
            };
            if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                tracing::debug!(%peer, client = %crate::pki::fingerprint(cert), "client certificate accepted");
            }
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let service = TowerToHyperService::new(router);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
