//! Content negotiation: one handler builds one data value, and this module renders it as
//! an HTML page or as JSON, as the request asks (STYLE §7).

use std::convert::Infallible;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use serde::Serialize;

/// How a response is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// A server-rendered page (browsers).
    Html,
    /// The same data as JSON (scripts, the page's own live updates, `/api/*`).
    Json,
}

impl Format {
    /// The format a request asks for: JSON for `/api/*`, or when its `Accept` header
    /// prefers `application/json` over `text/html`; HTML otherwise.
    ///
    /// Browsers' navigation `Accept` headers name `text/html` and never
    /// `application/json`, and `*/*` gets HTML, so only clients that ask get JSON.
    pub(crate) fn of(headers: &HeaderMap, path: &str) -> Self {
        if path == "/api" || path.starts_with("/api/") {
            return Self::Json;
        }
        let (mut json_q, mut html_q) = (0.0f32, 0.0f32);
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for range in value.split(',') {
                let (media, q) = media_range(range);
                if media.eq_ignore_ascii_case("application/json") {
                    json_q = json_q.max(q);
                } else if media.eq_ignore_ascii_case("text/html") || media.eq_ignore_ascii_case("application/xhtml+xml") {
                    html_q = html_q.max(q);
                }
            }
        }
        if json_q > 0.0 && json_q > html_q {
            Self::Json
        } else {
            Self::Html
        }
    }
}

/// One `Accept` entry as (media type, quality); RFC 9110 §12.5.1. A missing or malformed
/// `q` counts as 1, the default.
fn media_range(range: &str) -> (&str, f32) {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or("").trim();
    let q = parts
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
        .and_then(|(_, v)| v.trim().parse::<f32>().ok())
        .filter(|q| (0.0..=1.0).contains(q))
        .unwrap_or(1.0);
    (media, q)
}

impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.headers, parts.uri.path()))
    }
}

/// Renders `data` in `format`: as JSON directly, or as HTML through the template `html`
/// builds from it. Both carry `status`, and `Vary: Accept` so no cache mixes them up.
pub(crate) fn respond<'a, T, H>(format: Format, status: StatusCode, data: &'a T, html: impl FnOnce(&'a T) -> H) -> Response
where
    T: Serialize,
    H: Template,
{
    let mut response = match format {
        Format::Json => (status, Json(data)).into_response(),
        Format::Html => match html(data).render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering a console page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error: page rendering failed").into_response()
            }
        },
    };
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_table() {
        let cases: &[(Option<&str>, &str, Format)] = &[
            (None, "/", Format::Html),
            (Some("*/*"), "/", Format::Html),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                "/",
                Format::Html,
            ),
            (Some("application/json"), "/", Format::Json),
            (Some("application/json, text/plain, */*"), "/moves/1", Format::Json),
            (Some("text/html;q=0.5, application/json"), "/", Format::Json),
            (Some("application/json;q=0.5, text/html"), "/", Format::Html),
            (Some("application/json, text/html"), "/", Format::Html),
            (Some("application/json;q=0"), "/", Format::Html),
            (Some("APPLICATION/JSON"), "/", Format::Json),
            (None, "/api/overview", Format::Json),
            (Some("text/html"), "/api/overview", Format::Json),
            (None, "/apiary", Format::Html),
        ];
        for (accept, path, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                headers.insert(header::ACCEPT, HeaderValue::from_str(a).unwrap());
            }
            assert_eq!(Format::of(&headers, path), *want, "{accept:?} {path}");
        }
    }
}
