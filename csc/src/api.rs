//! The control API (routes and messages in [`proto::api`]) as two axum
//! routers: the one bootstrap connections get (enrolment only) and the one
//! mutual-TLS connections get (everything else). Which one serves a
//! connection is decided when it is accepted ([`crate::server`]), so a
//! connection opened before enrolment never reaches the operational routes.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use proto::api::{ApiError, EnrollBegin, EnrollCsr, EnrollDone, EnrollFinish, GuestInfo, GuestStats, NodeInfo, StartGuest};
use proto::lcg_members::{LcgMemberPorts, SetLcgMembers};

use crate::bridge_members;
use crate::disks;
use crate::enroll;
use crate::guests;
use crate::node::{self, Node};

/// A non-2xx answer: status plus an [`ApiError`] body.
#[derive(Debug)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: ApiError,
}

impl Failure {
    /// A failure with a message and no hint.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Failure {
            status,
            body: ApiError {
                error: error.into(),
                hint: None,
            },
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.body.hint = Some(hint.into());
        self
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.body.error, "request failed");
        } else {
            tracing::info!(status = %self.status, error = %self.body.error, "request refused");
        }
        (self.status, Json(self.body)).into_response()
    }
}

/// Full error chain of an error, for the message a person reads.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

fn not_enrolled() -> Failure {
    Failure::new(StatusCode::FORBIDDEN, "node is not enrolled").hint(
        "enrol it from the appliance first (POST /v1/enroll/csr, then /v1/enroll/finish, pinning the \
         node's bootstrap fingerprint); if it is enrolled, reconnect with a client certificate from the appliance CA",
    )
}

impl From<enroll::Error> for Failure {
    fn from(e: enroll::Error) -> Self {
        use enroll::Error as E;
        let status = match &e {
            E::BadToken => StatusCode::FORBIDDEN,
            E::AlreadyEnrolled => StatusCode::CONFLICT,
            E::NoPendingCsr => StatusCode::CONFLICT,
            E::BadName(_) => StatusCode::BAD_REQUEST,
            E::NoToken | E::TokenFile(..) | E::TokenTooShort(_) | E::State(_) | E::Record(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let f = Failure::new(status, chain(&e));
        match e {
            E::BadToken => f.hint("use the token the node was started with (its --token-file)"),
            E::AlreadyEnrolled => f.hint(
                "talk to the node over mutual TLS with the appliance's client certificate; to enrol it again, \
                 stop it, remove enrolled.json from its state directory and start it with a new token",
            ),
            _ => f,
        }
    }
}

impl From<node::Error> for Failure {
    fn from(e: node::Error) -> Self {
        use node::Error as E;
        match e {
            E::Enroll(e) => e.into(),
            E::IssuedCert(_) => Failure::new(StatusCode::UNPROCESSABLE_ENTITY, chain(&e)).hint(
                "issue the certificate from this node's CSR, with its subject names, the serverAuth and \
                 clientAuth extended key usages and a validity that has begun",
            ),
            E::BadKey(_) => Failure::new(StatusCode::BAD_REQUEST, chain(&e)),
            other => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, chain(&other)),
        }
    }
}

impl From<disks::Error> for Failure {
    fn from(e: disks::Error) -> Self {
        let status = match &e {
            disks::Error::BadId(_) => StatusCode::BAD_REQUEST,
            disks::Error::Clean(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, chain(&e))
    }
}

impl From<guests::Error> for Failure {
    fn from(e: guests::Error) -> Self {
        use guests::Error as E;
        let status = match &e {
            E::BadName(_) | E::Profile(_) | E::DiskCount { .. } | E::DiskId(_) => StatusCode::BAD_REQUEST,
            E::MissingDisk(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::NoDiskKey(_) => StatusCode::PRECONDITION_REQUIRED,
            E::DiskInUse { .. } | E::Exists(_) | E::TapCollision { .. } => StatusCode::CONFLICT,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::NotRunning(_) => StatusCode::CONFLICT,
            E::Bridge(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Hv { .. } | E::State(_) | E::Corrupt(..) | E::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let f = Failure::new(status, chain(&e));
        match e {
            E::NoDiskKey(id) => f.hint(format!(
                "send the disk key with PUT /v1/disks/{id}/key — the appliance does this on start"
            )),
            _ => f,
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s too.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(Failure::new(r.status(), r.body_text())),
        }
    }
}

type AppState = Arc<Node>;

/// Routes for connections accepted in bootstrap mode: enrolment, and 403 for
/// everything else.
pub fn bootstrap_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/enroll/csr", post(enroll_csr))
        .route("/v1/enroll/finish", post(enroll_finish))
        .fallback(|| async { not_enrolled() })
        .layer(middleware::from_fn(log_request))
        .with_state(node)
}

/// Routes for connections accepted in enrolled mode (client certificate
/// verified against the appliance CA).
pub fn enrolled_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/enroll/csr", post(enroll_csr))
        .route("/v1/enroll/finish", post(enroll_finish))
        .route("/v1/node", get(node_info))
        .route("/v1/disks/{id}", put(plain_upload_gone))
        .merge(crate::transfer_api::routes())
        .merge(crate::export_api::routes())
        .route("/v1/guests", post(start_guest))
        .route("/v1/guests/{name}", get(get_guest).delete(delete_guest))
        .route("/v1/guests/{name}/stop", post(stop_guest))
        .route("/v1/guests/{name}/stats", get(guest_stats))
        .route("/v1/bridge/lcgs", get(get_lcg_members).post(set_lcg_members))
        .fallback(|| async { Failure::new(StatusCode::NOT_FOUND, "no such route").hint("see proto::api for the routes") })
        .layer(middleware::from_fn(log_request))
        .with_state(node)
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    tracing::debug!(%method, %path, status = %resp.status(), "request");
    resp
}

async fn enroll_csr(State(node): State<AppState>, ApiJson(req): ApiJson<EnrollBegin>) -> Result<Json<EnrollCsr>, Failure> {
    Ok(Json(node.enroll_csr(req).await?))
}

async fn enroll_finish(State(node): State<AppState>, ApiJson(req): ApiJson<EnrollFinish>) -> Result<Json<EnrollDone>, Failure> {
    Ok(Json(node.enroll_finish(req).await?))
}

async fn node_info(State(node): State<AppState>) -> Json<NodeInfo> {
    Json(node.info())
}

/// `PUT /v1/disks/{id}`, the plain upload of earlier versions: refused
/// before its body is read (it would put a plaintext disk on the
/// provider's storage). Disks arrive only by encrypted block transfer.
async fn plain_upload_gone(Path(id): Path<String>) -> Failure {
    Failure::new(
        StatusCode::GONE,
        format!("plain disk upload (PUT /v1/disks/{id}) is no longer accepted: it would store the disk unencrypted"),
    )
    .hint(format!(
        "send the disk as an encrypted block transfer (PUT /v1/disks/{id}/key, then POST /v1/transfers/{id}); \
         `isthmus stage` and `isthmus move` do this"
    ))
}

/// `GET /v1/bridge/lcgs`: the further LCG members (standby appliances) and their ports.
async fn get_lcg_members(State(node): State<AppState>) -> Result<Json<LcgMemberPorts>, Failure> {
    let (node2, listen) = (node.clone(), node.config().bridge_listen);
    let r = tokio::task::spawn_blocking(move || bridge_members::get(node2.state(), listen)).await;
    Ok(Json(
        r.map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??,
    ))
}

/// `POST /v1/bridge/lcgs`: the primary appliance sets the further LCG members.
async fn set_lcg_members(State(node): State<AppState>, ApiJson(req): ApiJson<SetLcgMembers>) -> Result<Json<LcgMemberPorts>, Failure> {
    let listen = node.config().bridge_listen;
    let r = tokio::task::spawn_blocking(move || bridge_members::set(node.state(), node.bridge(), listen, &req)).await;
    Ok(Json(
        r.map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??,
    ))
}

impl From<bridge_members::Error> for Failure {
    fn from(e: bridge_members::Error) -> Self {
        let status = match &e {
            bridge_members::Error::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, chain(&e))
    }
}

async fn start_guest(State(node): State<AppState>, ApiJson(req): ApiJson<StartGuest>) -> Result<Json<GuestInfo>, Failure> {
    let accel = node.accel_ready().await;
    Ok(Json(node.guests().start(req, accel.kind, node.disks(), node.bridge()).await?))
}

async fn get_guest(State(node): State<AppState>, Path(name): Path<String>) -> Result<Json<GuestInfo>, Failure> {
    Ok(Json(node.guests().get(&name).await?))
}

/// `GET /v1/guests/{name}/stats`: the running guest's counters from below it.
async fn guest_stats(State(node): State<AppState>, Path(name): Path<String>) -> Result<Json<GuestStats>, Failure> {
    Ok(Json(node.guests().stats(&name).await?))
}

async fn stop_guest(State(node): State<AppState>, Path(name): Path<String>) -> Result<Json<GuestInfo>, Failure> {
    Ok(Json(node.guests().stop(&name).await?))
}

async fn delete_guest(State(node): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, Failure> {
    node.guests().delete(&name, node.bridge()).await?;
    Ok(StatusCode::NO_CONTENT)
}
