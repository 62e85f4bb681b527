//! Static assets compiled into the binary (the appliance is offline: no CDN).

use axum::http::header;
use axum::response::IntoResponse;

/// The console's only script: polls the page's JSON twin every 2 s and updates progress,
/// steps and states in place.
const CONSOLE_JS: &str = include_str!("../static/console.js");

/// `GET /static/console.js`.
pub(crate) async fn console_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Revalidate on every load, so an upgraded appliance never runs a stale script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CONSOLE_JS,
    )
}
