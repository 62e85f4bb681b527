//! Enrolling a cloud node over the API (`POST /api/clouds`), so an appliance without a
//! shell can be driven over HTTPS.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::identity::Fingerprint;

use crate::negotiate::Format;
use crate::problem::Problem;
use crate::service::EnrollCloud;
use crate::state::AppState;

/// `POST /api/clouds`: checks the body, then asks the service to enrol the node.
///
/// 200 with the new [`crate::CloudRow`]; 400 for a body the console cannot use; 502 with
/// the service's message when the enrolment itself fails. The token is never logged.
pub(crate) async fn enroll(State(state): State<AppState>, body: Result<Json<EnrollCloud>, JsonRejection>) -> Response {
    // The rejection text may quote the body, so it goes back to the caller only.
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => return Problem::BadRequest(e.body_text()).respond(Format::Json),
    };
    if let Err(e) = check(&req) {
        return Problem::BadRequest(e).respond(Format::Json);
    }
    let name = req.name.clone();
    match state.call(move |svc| svc.enroll_cloud(req)).await {
        Ok(Ok(row)) => {
            tracing::info!(cloud = %row.name, endpoint = %row.endpoint, "cloud enrolled from the console");
            (StatusCode::OK, Json(row)).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(cloud = %name, "console enrolment failed: {e}");
            Problem::Upstream(e).respond(Format::Json)
        }
        Err(e) => Problem::Service(e).respond(Format::Json),
    }
}

/// Checks made at the boundary; the service checks the rest (name rules, duplicates).
fn check(req: &EnrollCloud) -> Result<(), String> {
    for (field, value) in [
        ("name", &req.name),
        ("url", &req.url),
        ("fingerprint", &req.fingerprint),
        ("token", &req.token),
    ] {
        if value.trim().is_empty() {
            return Err(format!("{field} is empty"));
        }
    }
    if !req.url.starts_with("https://") {
        return Err(format!("url {:?} must start with https://", req.url));
    }
    req.fingerprint.parse::<Fingerprint>().map_err(|e| e.to_string())?;
    Ok(())
}
