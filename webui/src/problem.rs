//! What can go wrong in a request, and how it is shown: a JSON `{"error", "hint"}` body or
//! an error page with the same two fields.

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;

use crate::chrome::Chrome;
use crate::negotiate::{respond, Format};
use crate::service::Refusal;

/// A request the console cannot answer with the page asked for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Problem {
    /// No session cookie and no bearer token.
    #[error("login required")]
    LoginRequired,
    /// An `Authorization: Bearer` token the service rejected.
    #[error("invalid API token")]
    BadApiToken,
    /// `/moves/{id}` for an id the service does not know.
    #[error("no move with id {0:?}")]
    MoveNotFound(String),
    /// A path no route serves.
    #[error("no page at {0}")]
    NotFound(String),
    /// A form POST whose `Origin` is another site.
    #[error("cross-site form submission refused")]
    CrossSite,
    /// A request body the console cannot use; says what is wrong with it.
    #[error("{0}")]
    BadRequest(String),
    /// The service (or the node it talked to) refused or failed the request.
    #[error("{0}")]
    Upstream(String),
    /// The service refused an inventory or move request.
    #[error("{0}")]
    Refused(crate::service::Refusal),
    /// The service call panicked or was cancelled.
    #[error("the console service failed")]
    Service(#[source] tokio::task::JoinError),
}

/// The body both renderings show.
#[derive(Serialize, Debug)]
pub(crate) struct ProblemBody {
    /// What went wrong.
    pub(crate) error: String,
    /// What to do about it.
    pub(crate) hint: &'static str,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    status: u16,
    body: &'a ProblemBody,
}

impl Problem {
    fn status(&self) -> StatusCode {
        match self {
            Self::LoginRequired | Self::BadApiToken => StatusCode::UNAUTHORIZED,
            Self::MoveNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::CrossSite => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Refused(r) => match r {
                Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                Refusal::NotFound(_) => StatusCode::NOT_FOUND,
                Refusal::Conflict(_) => StatusCode::CONFLICT,
                Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                Refusal::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            },
            Self::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            Self::LoginRequired => "POST /login with user and password",
            Self::BadApiToken => "check the token, or POST /login with user and password",
            Self::MoveNotFound(_) => "GET / lists the moves",
            Self::NotFound(_) => "GET / is the console's start page",
            Self::CrossSite => "submit the form from the console's own pages",
            Self::BadRequest(_) => {
                r#"send Content-Type: application/json with {"name", "url": "https://IP:PORT", "fingerprint": "sha256:<64 hex>", "token"} from the node's bootstrap output"#
            }
            Self::Upstream(_) => "check the node's URL, fingerprint and token (tokens are one-time); see the appliance log",
            Self::Refused(_) => {
                "GET / (Accept: application/json) lists the servers, clouds and moves; change the request as the error says"
            }
            Self::Service(_) => "retry; if it persists, see the appliance log",
        }
    }

    /// Renders the problem in `format`. Unauthorized answers carry `WWW-Authenticate`
    /// (RFC 9110 §11.6.1) naming the bearer scheme scripts can use.
    pub(crate) fn respond(self, format: Format) -> Response {
        if let Self::Service(e) = &self {
            tracing::error!(error = %e, "console service call failed");
        }
        let status = self.status();
        let body = ProblemBody {
            error: self.to_string(),
            hint: self.hint(),
        };
        let mut response = respond(format, status, &body, |body| ErrorPage {
            chrome: Chrome::default(),
            status: status.as_u16(),
            body,
        });
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"isthmus\""));
        }
        response
    }
}
