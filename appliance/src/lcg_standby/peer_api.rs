//! The peer API (`isthmus serve --peer-listen`): HTTPS between the two
//! appliances of a pair, each pinning the other's peer certificate
//! ([`super::peer`]); a client without a certificate fails the handshake.
//!
//! - `POST /v1/peer/pair` (on the standby, only while it waits with a
//!   `--standby-token-file`): the primary proves the one-time token; the
//!   standby records the primary's certificate and address.
//! - `GET /v1/peer/state` (on the primary): a paired standby, known by its
//!   certificate, pulls what it must be able to carry. Any other
//!   certificate gets 401.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};

use super::peer::PeerIdentity;
use super::{PairRequest, PairResponse, PeerState, PrimaryRecord, StandbyError, PRIMARY, PRIMARY_KEY};
use crate::app::App;
use crate::model::now_rfc3339;
use crate::pki::Fingerprint;

/// Shortest pairing token accepted (as for a node's enrolment token).
pub const MIN_TOKEN_LEN: usize = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The standby's one-time pairing token, kept as its SHA-256 only.
pub struct PairingToken {
    digest: [u8; 32],
    file: PathBuf,
}

impl PairingToken {
    /// Reads the token (surrounding whitespace ignored) from `path`.
    pub fn read(path: &Path) -> Result<PairingToken, StandbyError> {
        let bad = |m: String| StandbyError::TokenFile(path.to_path_buf(), m);
        let raw = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(path = %path.display(), "the pairing token file is readable by other users; chmod 600 it");
        }
        let t = raw.trim();
        if t.chars().count() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "shorter than {MIN_TOKEN_LEN} characters; use a random one, e.g. `head -c 32 /dev/urandom | base64`"
            )));
        }
        Ok(PairingToken {
            digest: Sha256::digest(t.as_bytes()).into(),
            file: path.to_path_buf(),
        })
    }

    /// Constant-time comparison of digests (leaks neither content nor length).
    fn matches(&self, candidate: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        d.iter().zip(self.digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    remote: SocketAddr,
    client: Fingerprint,
}

struct Shared {
    app: Arc<App>,
    pairing: Mutex<Option<PairingToken>>,
}

type St = State<Arc<Shared>>;

impl IntoResponse for StandbyError {
    fn into_response(self) -> Response {
        let status = match &self {
            StandbyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            StandbyError::Invalid(_) => StatusCode::BAD_REQUEST,
            StandbyError::Conflict(_) => StatusCode::CONFLICT,
            StandbyError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::info!(%status, "peer API: {self}");
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

async fn pair(State(s): St, Extension(conn): Extension<Conn>, Json(req): Json<PairRequest>) -> Result<Response, StandbyError> {
    let file = {
        let mut guard = s.pairing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(token) = guard.as_ref() else {
            return Err(StandbyError::Conflict(
                "this appliance is not waiting to be paired (paired already, or started without --standby-token-file)".into(),
            ));
        };
        if !token.matches(&req.token) {
            tracing::warn!(remote = %conn.remote, "standby pairing refused: wrong token");
            return Ok((
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({ "error": "pairing token does not match; use the token this standby was started with (its --standby-token-file)" })),
            )
                .into_response());
        }
        if !crate::inventory::valid_name(&req.name) {
            return Err(StandbyError::Invalid(format!("standby name {:?} is invalid", req.name)));
        }
        guard.take().map(|t| t.file)
    };
    let rec = PrimaryRecord {
        name: req.name.clone(),
        url: format!("https://{}", SocketAddr::new(conn.remote.ip(), req.primary_port)),
        fingerprint: conn.client.to_string(),
        paired_at: now_rfc3339(),
    };
    s.app.store.put(&PRIMARY, PRIMARY_KEY, &rec)?;
    if let Some(f) = file {
        if let Err(e) = std::fs::remove_file(&f) {
            tracing::warn!(path = %f.display(), "cannot delete the used pairing token file: {e}; delete it by hand");
        }
    }
    tracing::info!(primary = %rec.url, name = %rec.name, "paired as the standby LCG");
    let app = s.app.clone();
    super::blocking(move || Ok(app.lcg.set_ha(true)?)).await?;
    super::sync::spawn(s.app.clone());
    Ok(Json(PairResponse {
        noise_public: B64.encode(s.app.lcg.public_key()),
    })
    .into_response())
}

async fn state(State(s): St, Extension(conn): Extension<Conn>) -> Result<Json<PeerState>, StandbyError> {
    super::state_for(&s.app, conn.client).await.map(Json)
}

/// Binds the peer API and serves it on a task; returns the bound address and
/// this appliance's peer fingerprint.
pub async fn spawn(
    app: Arc<App>,
    identity: PeerIdentity,
    listen: SocketAddr,
    pairing: Option<PairingToken>,
) -> Result<(SocketAddr, Fingerprint), StandbyError> {
    let cfg = Arc::new(identity.server_config()?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| StandbyError::Listen(listen, e))?;
    let bound = listener.local_addr().map_err(|e| StandbyError::Listen(listen, e))?;
    let shared = Arc::new(Shared {
        app,
        pairing: Mutex::new(pairing),
    });
    let router = Router::new()
        .route("/v1/peer/pair", post(pair))
        .route("/v1/peer/state", get(state))
        .with_state(shared);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "peer API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (cfg, router) = (cfg.clone(), router.clone());
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "peer API: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let Some(client) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                    return;
                };
                let conn = Conn {
                    remote,
                    client: Fingerprint::of(client.as_ref()),
                };
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                let service = TowerToHyperService::new(router.layer(Extension(conn)));
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%remote, error = %e, "peer API: connection ended with an error");
                }
            });
        }
    });
    Ok((bound, identity.fingerprint))
}

/// A client of the other appliance's peer API.
pub struct PeerClient {
    base: String,
    http: reqwest::Client,
}

impl PeerClient {
    /// A client for `base` (`https://IP:PORT`) that accepts only the server
    /// certificate `pin` and presents `identity`.
    pub fn new(base: &str, identity: &PeerIdentity, pin: Fingerprint) -> Result<PeerClient, StandbyError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(identity.client_config(pin)?)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| StandbyError::Transport {
                url: base.to_string(),
                source,
            })?;
        Ok(PeerClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, what: &'static str, req: reqwest::RequestBuilder) -> Result<T, StandbyError> {
        let transport = |source| StandbyError::Transport {
            url: self.base.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(StandbyError::Refused {
                what,
                status: status.as_u16(),
                body,
            });
        }
        resp.json().await.map_err(transport)
    }

    /// `POST /v1/peer/pair`.
    pub async fn pair(&self, req: &PairRequest) -> Result<PairResponse, StandbyError> {
        self.send("pairing", self.http.post(format!("{}/v1/peer/pair", self.base)).json(req))
            .await
    }

    /// `GET /v1/peer/state`.
    pub async fn state(&self) -> Result<PeerState, StandbyError> {
        self.send("the state pull", self.http.get(format!("{}/v1/peer/state", self.base)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_whole_and_short_ones_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(PairingToken::read(&p), Err(StandbyError::TokenFile(..))));
        std::fs::write(&p, " 0123456789abcdef0123\n").unwrap();
        let t = PairingToken::read(&p).unwrap();
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches(""));
    }
}
