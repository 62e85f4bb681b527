//! One move's page (`GET /moves/{id}`): its facts and event timeline, or the same as JSON;
//! and starting a move over the API (`POST /api/moves`).

use askama::Template;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::auth::Principal;
use crate::chrome::Chrome;
use crate::negotiate::{respond, Format};
use crate::problem::Problem;
use crate::service::{MoveRow, Refusal, StartMove};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "move.html")]
struct MovePage<'a> {
    chrome: Chrome,
    mv: &'a MoveRow,
}

/// `GET /moves/{id}`: the move as a page with a vertical timeline, or as a
/// [`MoveRow`] JSON object; 404 if the service knows no such move.
pub(crate) async fn page(
    State(state): State<AppState>,
    format: Format,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let wanted = id.clone();
    let found = match state.call(move |svc| svc.find_move(&wanted)).await {
        Ok(found) => found,
        Err(e) => return Problem::Service(e).respond(format),
    };
    let Some(mv) = found else {
        return Problem::MoveNotFound(id).respond(format);
    };
    respond(format, StatusCode::OK, &mv, |mv| MovePage {
        chrome: principal.chrome(None),
        mv,
    })
}

/// `POST /api/moves`: JSON [`StartMove`]; starts the move and answers 200 with its
/// [`MoveRow`] (poll `GET /moves/{id}` for the rest), 400 for a bad body, 404 for an
/// unknown server or cloud, 409 when the server is there already or moving.
pub(crate) async fn start(State(state): State<AppState>, body: Result<Json<StartMove>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => return Problem::Refused(Refusal::Invalid(e.body_text())).respond(Format::Json),
    };
    let what = format!("{} to {}", req.server, req.to);
    match state.call(move |svc| svc.start_move(req)).await {
        Ok(Ok(row)) => {
            tracing::info!(id = %row.id, "move of {what} started from the console");
            (StatusCode::OK, Json(row)).into_response()
        }
        Ok(Err(r)) => Problem::Refused(r).respond(Format::Json),
        Err(e) => Problem::Service(e).respond(Format::Json),
    }
}
