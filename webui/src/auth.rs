//! Who may see what: every route except the login page and static assets needs a live
//! session cookie or an API token, and form POSTs must come from the console's own pages.
//!
//! CSRF: the session cookie is `SameSite=Strict`, so a browser never sends it with a
//! request started by another site; that alone protects the state-changing POST forms.
//! As a second layer, a POST whose `Origin` header names another site is refused (this
//! also covers the login form, which has no cookie yet).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::chrome::Chrome;
use crate::negotiate::Format;
use crate::problem::Problem;
use crate::session::SessionToken;
use crate::state::AppState;

/// Who made a request that passed [`require_login`]; handlers read it as an extension.
#[derive(Clone, Debug)]
pub(crate) enum Principal {
    /// A browser with a session of this user.
    User(String),
    /// A script with a valid `Authorization: Bearer` token.
    ApiToken,
}

impl Principal {
    /// The page frame for this caller; `version` is shown only to logged-in callers.
    pub(crate) fn chrome(&self, version: Option<&str>) -> Chrome {
        Chrome {
            user: match self {
                Self::User(u) => Some(u.clone()),
                Self::ApiToken => None,
            },
            version: version.map(str::to_owned),
            ca_fingerprint: None,
            signed_in: true,
        }
    }
}

/// Lets a request through with its [`Principal`] attached, or answers it: 401 JSON for
/// JSON callers (and for a rejected bearer token), 303 to `/login` for browsers.
pub(crate) async fn require_login(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let format = Format::of(req.headers(), req.uri().path());

    if let Some(token) = bearer_token(req.headers()) {
        let token = token.to_owned();
        return match state.call(move |svc| svc.verify_api_token(&token)).await {
            Ok(true) => {
                req.extensions_mut().insert(Principal::ApiToken);
                next.run(req).await
            }
            // A caller that sends a bearer token is a script: answer in JSON.
            Ok(false) => Problem::BadApiToken.respond(Format::Json),
            Err(e) => Problem::Service(e).respond(format),
        };
    }

    if let Some(token) = SessionToken::from_headers(req.headers()) {
        if let Some(user) = state.sessions.touch(&token, Instant::now()) {
            req.extensions_mut().insert(Principal::User(user));
            return next.run(req).await;
        }
    }

    match format {
        Format::Json => Problem::LoginRequired.respond(Format::Json),
        Format::Html => Redirect::to("/login").into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1; the scheme
/// name is case-insensitive). Other schemes are ignored.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Refuses a POST whose `Origin` is not this console's own origin.
///
/// Requests without `Origin` (curl, scripts, old browsers) pass: they cannot be forged
/// cross-site by a browser, which always sends `Origin` on a POST. `Origin: null` (a
/// sandboxed frame, or a page with a `no-referrer` policy) is refused; the console's own
/// pages use `Referrer-Policy: same-origin` so they send their real origin.
pub(crate) async fn refuse_cross_site(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !same_origin(&req) {
        let format = Format::of(req.headers(), req.uri().path());
        tracing::warn!(origin = ?req.headers().get(header::ORIGIN), "refused cross-site POST");
        return Problem::CrossSite.respond(format);
    }
    next.run(req).await
}

/// Whether the request's `Origin` (if any) has the authority the request was sent to.
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    // HTTP/1.1 carries the authority in `Host`; HTTP/2 in the `:authority` pseudo-header,
    // which hyper exposes as the URI's authority.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin_authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    match (origin_authority, host) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_table() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Basic YWRtaW46eA==", None),
            ("Bearer ", None),
            ("Bearer", None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_token(&h), want, "{value:?}");
        }
    }

    #[test]
    fn origin_table() {
        let cases = [
            (None, Some("console.lan:8443"), true),
            (Some("https://console.lan:8443"), Some("console.lan:8443"), true),
            (Some("https://CONSOLE.lan:8443"), Some("console.lan:8443"), true),
            (Some("https://evil.example"), Some("console.lan:8443"), false),
            (Some("https://console.lan:8443"), Some("console.lan"), false),
            (Some("null"), Some("console.lan:8443"), false),
            (Some("https://console.lan"), None, false),
        ];
        for (origin, host, want) in cases {
            let mut b = Request::builder().method(Method::POST).uri("/login");
            if let Some(o) = origin {
                b = b.header(header::ORIGIN, o);
            }
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            let req = b.body(axum::body::Body::empty()).unwrap();
            assert_eq!(same_origin(&req), want, "{origin:?} {host:?}");
        }
    }
}
