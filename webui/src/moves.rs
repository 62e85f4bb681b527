//! One move's page (`GET /moves/{id}`): its facts and event timeline, or the same as JSON.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use crate::auth::Principal;
use crate::chrome::Chrome;
use crate::negotiate::{respond, Format};
use crate::problem::Problem;
use crate::service::MoveRow;
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
