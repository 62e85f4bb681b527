//! Response headers that make the browser a stricter client of the console.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;

/// Content Security Policy: our own script file only (no inline script, no `eval`),
/// fetches to ourselves only, the inline stylesheet of the base template, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                   style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response. Pages show live state, so nothing is
/// cached unless the handler said otherwise (static assets do).
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it browsers send `Origin: null` on same-origin form
        // POSTs (Fetch §3.2.5 "serializing a request origin"), which the CSRF check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}
