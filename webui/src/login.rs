//! Logging in and out: the login form, its submission (rate-limited) and logout.

use std::net::SocketAddr;
use std::time::Instant;

use askama::Template;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use crate::chrome::Chrome;
use crate::negotiate::{respond, Format};
use crate::problem::{Problem, ProblemBody};
use crate::session::SessionToken;
use crate::state::AppState;

/// The login form's fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
}

impl std::fmt::Debug for LoginForm {
    // Never print the password, even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm").field("user", &self.user).finish_non_exhaustive()
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    chrome: Chrome,
    message: Option<&'a str>,
    user: &'a str,
}

/// `GET /login`: the form.
pub(crate) async fn form() -> Response {
    let page = LoginPage {
        chrome: Chrome::default(),
        message: None,
        user: "",
    };
    respond(Format::Html, StatusCode::OK, &(), |_| page)
}

/// `POST /login`: checks the credentials; on success starts a session and redirects to
/// `/`, otherwise shows the form again with 401, or 429 while the limiter refuses logins.
pub(crate) async fn submit(
    State(state): State<AppState>,
    format: Format,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let attempt = match state.limiter.begin(Instant::now()) {
        Ok(attempt) => attempt,
        Err(retry_after) => {
            let secs = retry_after.as_secs().max(1);
            tracing::warn!(user = ?form.user, ?peer, "console login refused: too many failures");
            let message = format!("too many failed logins; try again in {secs} s");
            let mut response = refuse(format, StatusCode::TOO_MANY_REQUESTS, message, &form.user);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return response;
        }
    };

    let user = form.user.clone();
    let ok = match state.call(move |svc| svc.verify_login(&user, &form.password)).await {
        Ok(ok) => ok,
        Err(e) => return Problem::Service(e).respond(format),
    };
    if !ok {
        tracing::warn!(user = ?form.user, ?peer, "console login failed");
        let message = "wrong user name or password".to_owned();
        return refuse(format, StatusCode::UNAUTHORIZED, message, &form.user);
    }

    state.limiter.succeeded(attempt);
    if let Some(old) = SessionToken::from_headers(&headers) {
        state.sessions.remove(&old);
    }
    let token = state.sessions.create(&form.user, Instant::now());
    tracing::info!(user = ?form.user, ?peer, "console login");
    ([(header::SET_COOKIE, token.set_cookie())], Redirect::to("/")).into_response()
}

/// The form again with `message`, or the same message as JSON.
fn refuse(format: Format, status: StatusCode, message: String, user: &str) -> Response {
    let body = ProblemBody {
        error: message,
        hint: "POST /login with user and password",
    };
    respond(format, status, &body, |body| LoginPage {
        chrome: Chrome::default(),
        message: Some(&body.error),
        user,
    })
}

/// `POST /logout`: ends the session and clears the cookie.
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = SessionToken::from_headers(&headers) {
        state.sessions.remove(&token);
    }
    ([(header::SET_COOKIE, SessionToken::clear_cookie())], Redirect::to("/login")).into_response()
}
