//! The local API: the CLI talks to the running `isthmus serve` through a
//! unix socket in the data directory (mode 0600: only root reaches it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::app::{App, AppError, EnrollRequest};
use crate::inventory::ServerDescription;

/// `POST /v1/moves` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Server to move.
    pub server: String,
    /// Cloud to move it to.
    pub to: String,
    /// Only rehearse: boot a copy on an isolated segment, keep the source running.
    #[serde(default)]
    pub rehearse: bool,
}

/// `PUT /v1/admin/password` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// New password (at least 12 characters).
    pub password: String,
}

/// Error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::Invalid(_) | AppError::Inventory(_) | AppError::Pki(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Cloud(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

type Shared = State<(Arc<App>, tokio::runtime::Handle)>;

/// The local API's routes.
pub fn router(app: Arc<App>, rt: tokio::runtime::Handle) -> Router {
    Router::new()
        .route("/v1/status", get(|State((app, _)): Shared| async move { app.status().map(Json) }))
        .route(
            "/v1/servers",
            post(|State((app, _)): Shared, Json(d): Json<ServerDescription>| async move { app.add_server(d).map(Json) }),
        )
        .route(
            "/v1/servers/{name}/start",
            post(|State((app, _)): Shared, UrlPath(name): UrlPath<String>| async move {
                let pid = tokio::task::spawn_blocking(move || app.start_server(&name))
                    .await
                    .map_err(|e| AppError::Invalid(e.to_string()))??;
                Ok::<_, AppError>(Json(serde_json::json!({ "pid": pid })))
            }),
        )
        .route(
            "/v1/clouds",
            post(|State((app, _)): Shared, Json(r): Json<EnrollRequest>| async move { app.enroll(r).await.map(Json) }),
        )
        .route(
            "/v1/moves",
            post(|State((app, rt)): Shared, Json(r): Json<MoveRequest>| async move {
                let mv = app.create_move(&r.server, &r.to, r.rehearse)?;
                crate::daemon::drive_in_background(app.clone(), rt, mv.id.clone());
                Ok::<_, AppError>(Json(mv))
            }),
        )
        .route(
            "/v1/moves/{id}",
            get(|State((app, _)): Shared, UrlPath(id): UrlPath<String>| async move { app.move_detail(&id).map(Json) }),
        )
        .route(
            "/v1/admin/password",
            put(|State((app, _)): Shared, Json(r): Json<PasswordRequest>| async move {
                if r.password.chars().count() < 12 {
                    return Err(AppError::Invalid("the admin password needs at least 12 characters".into()));
                }
                crate::auth::set_password(&app.store, &r.password)?;
                Ok(StatusCode::NO_CONTENT)
            }),
        )
        .merge(crate::lcg_api::routes())
        .merge(crate::cloud_removal::routes())
        .merge(crate::dr::api::routes())
        .with_state((app, rt))
}

/// Errors of the CLI's client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens.
    #[error("cannot reach the appliance at {path}: {source}. Start it with `isthmus serve` (same --data-dir)")]
    Connect {
        /// Socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failure.
    #[error("local API: {0}")]
    Http(String),
    /// The appliance refused.
    #[error("{0}")]
    Refused(String),
}

/// A client of the local API.
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// Client for the socket in `data_dir`.
    pub fn new(data_dir: &Path) -> Client {
        Client {
            path: data_dir.join("api.sock"),
        }
    }

    /// Sends a request; `body` is JSON when given.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, uri: &str, body: Option<serde_json::Value>) -> Result<T, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json")).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "isthmus")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused(msg));
        }
        let body = if body.is_empty() {
            bytes::Bytes::from_static(b"null")
        } else {
            body
        };
        serde_json::from_slice(&body).map_err(|e| ClientError::Http(format!("unreadable answer: {e}")))
    }
}
