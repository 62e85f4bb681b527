//! The overview page (`GET /`) and its JSON twin (`GET /api/overview`).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use crate::auth::Principal;
use crate::chrome::Chrome;
use crate::negotiate::{respond, Format};
use crate::problem::Problem;
use crate::service::Overview;
use crate::state::AppState;
use crate::topology::{layout, Topology};

/// Summary figures shown above the tables.
struct Counts {
    in_dc: usize,
    in_clouds: usize,
    moves_running: usize,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage<'a> {
    chrome: Chrome,
    o: &'a Overview,
    counts: Counts,
    topology: Topology,
}

impl<'a> OverviewPage<'a> {
    fn new(chrome: Chrome, o: &'a Overview) -> Self {
        let in_dc = o.servers.iter().filter(|s| s.location == "dc").count();
        Self {
            chrome,
            counts: Counts {
                in_dc,
                in_clouds: o.servers.len() - in_dc,
                moves_running: o.moves.iter().filter(|m| m.state == "running").count(),
            },
            topology: layout(o),
            o,
        }
    }
}

/// `GET /`: servers, clouds and moves, as a page or (with `Accept: application/json`) as
/// the [`Overview`] JSON.
pub(crate) async fn page(State(state): State<AppState>, format: Format, Extension(principal): Extension<Principal>) -> Response {
    let overview = match state.call(|svc| svc.overview()).await {
        Ok(o) => o,
        Err(e) => return Problem::Service(e).respond(format),
    };
    respond(format, StatusCode::OK, &overview, |o| {
        let mut chrome = principal.chrome(Some(&o.appliance.version));
        chrome.ca_fingerprint.clone_from(&o.appliance.ca_fingerprint);
        OverviewPage::new(chrome, o)
    })
}

/// `GET /api/overview`: the same data, always JSON.
pub(crate) async fn api(state: State<AppState>, principal: Extension<Principal>) -> Response {
    page(state, Format::Json, principal).await
}
