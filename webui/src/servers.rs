//! Adding a data-center server over the API (`POST /api/servers`), so an appliance without
//! a shell can be given its inventory over HTTPS.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::negotiate::Format;
use crate::problem::Problem;
use crate::service::Refusal;
use crate::state::AppState;

/// `POST /api/servers`: hands the JSON description to the service.
///
/// 200 with the new [`crate::ServerRow`]; 400 for a body that is not JSON or a description
/// the service refuses; 409 for a server that runs in a cloud now (it cannot be redefined
/// there).
pub(crate) async fn add(State(state): State<AppState>, body: Result<Json<serde_json::Value>, JsonRejection>) -> Response {
    let description = match body {
        Ok(Json(d)) => d,
        Err(e) => return Problem::Refused(Refusal::Invalid(e.body_text())).respond(Format::Json),
    };
    if !description.is_object() {
        return Problem::Refused(Refusal::Invalid("the server description must be a JSON object".into())).respond(Format::Json);
    }
    match state.call(move |svc| svc.add_server(description)).await {
        Ok(Ok(row)) => {
            tracing::info!(server = %row.name, "server added from the console");
            (StatusCode::OK, Json(row)).into_response()
        }
        Ok(Err(r)) => Problem::Refused(r).respond(Format::Json),
        Err(e) => Problem::Service(e).respond(Format::Json),
    }
}
