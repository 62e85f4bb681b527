//! The Isthmus web console and its JSON API: a library the appliance binary mounts.
//!
//! The appliance implements [`ConsoleService`] over its service layer, builds the routes
//! with [`router`] and serves them with [`serve_https`]. Pages are rendered on the server
//! (askama templates in `templates/`, HTML-escaped); each page's handler builds one data
//! value and renders it as HTML or, for `Accept: application/json`, as JSON. A small
//! script of our own (`static/console.js`, no external JavaScript) polls that JSON every
//! 2 s to keep progress and states current.
//!
//! Security model, in short:
//! - Every route except `/login` and `/static/*` needs a session cookie
//!   (`isthmus_session`: 32 random bytes as hex; `HttpOnly; Secure; SameSite=Strict`;
//!   forgotten after 8 hours idle; in memory, so a restart logs everyone out) or an
//!   `Authorization: Bearer` token accepted by [`ConsoleService::verify_api_token`].
//! - After 5 failed logins (from anyone) within a minute, logins answer 429 for the rest
//!   of that minute.
//! - CSRF: the `SameSite=Strict` cookie is never sent on cross-site requests, which
//!   protects the POST forms; POSTs whose `Origin` names another site are refused too.
//!   JSON POSTs (`POST /api/clouds`) also need `Content-Type: application/json`, which a
//!   cross-site form cannot send.
//! - Responses carry a strict Content Security Policy (no inline script), `nosniff`,
//!   `X-Frame-Options: DENY` and `Cache-Control: no-store`.

mod assets;
mod auth;
mod chrome;
mod clouds;
mod hardening;
mod login;
mod moves;
mod negotiate;
mod overview;
mod problem;
mod rate_limit;
mod router;
mod servers;
mod service;
mod session;
mod state;
mod tls;
mod topology;

pub use router::router;
pub use service::{ApplianceInfo, CloudRow, ConsoleService, EnrollCloud, MoveEvent, MoveRow, Overview, Refusal, ServerRow, StartMove};
pub use tls::{serve_https, Error};

/// Compares two secrets in time that depends only on their lengths, not their contents,
/// for [`ConsoleService`] implementations checking passwords or API tokens.
///
/// Prefer comparing fixed-length digests (e.g. SHA-256 of the token) so that even the
/// length does not leak.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_table() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
        assert!(super::constant_time_eq(b"", b""));
    }
}
