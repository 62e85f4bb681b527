//! The console's routes and the layers around them.

use std::sync::Arc;

use axum::http::Uri;
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::negotiate::Format;
use crate::problem::Problem;
use crate::service::ConsoleService;
use crate::state::AppState;
use crate::{assets, auth, clouds, hardening, login, moves, overview, servers};

/// The console's routes around `svc`, ready for [`crate::serve_https`].
///
/// | route | who | what |
/// |---|---|---|
/// | `GET /login` | anyone | the login form |
/// | `POST /login` | anyone | form fields `user`, `password`; sets the `isthmus_session` cookie and redirects to `/` (401 if wrong, 429 after 5 failures in a minute) |
/// | `GET /static/console.js` | anyone | the live-update script |
/// | `POST /logout` | logged in | ends the session |
/// | `GET /` | logged in | servers, topology, moves, clouds; JSON [`crate::Overview`] with `Accept: application/json` |
/// | `GET /moves/{id}` | logged in | one move and its timeline; JSON [`crate::MoveRow`] with `Accept: application/json` |
/// | `GET /api/overview` | logged in | JSON [`crate::Overview`] |
/// | `POST /api/clouds` | logged in | JSON [`crate::EnrollCloud`] (`Content-Type: application/json`); enrols a cloud node: 200 [`crate::CloudRow`], 400 bad body, 502 enrolment failed |
/// | `POST /api/servers` | logged in | JSON server description (the appliance's inventory schema); adds a data-center server: 200 [`crate::ServerRow`], 400 refused, 409 it runs in a cloud |
/// | `POST /api/moves` | logged in | JSON [`crate::StartMove`]; starts a move: 200 [`crate::MoveRow`], 400 bad body, 404 unknown server or cloud, 409 there already |
///
/// "Logged in" means a live session cookie or `Authorization: Bearer <token>` accepted by
/// [`ConsoleService::verify_api_token`]. Without either, browsers are redirected (303) to
/// `/login` and JSON callers get 401 `{"error":"login required","hint":…}`.
///
/// Sessions live in this router's memory: build one router per process and clone it.
pub fn router(svc: Arc<dyn ConsoleService>) -> Router {
    let state = AppState::new(svc);
    let logged_in = Router::new()
        .route("/", get(overview::page))
        .route("/api/overview", get(overview::api))
        .route("/api/clouds", post(clouds::enroll))
        .route("/api/servers", post(servers::add))
        .route("/api/moves", post(moves::start))
        .route("/moves/{id}", get(moves::page))
        .route("/logout", post(login::logout))
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), auth::require_login));
    Router::new()
        .route("/login", get(login::form).post(login::submit))
        .route("/static/console.js", get(assets::console_js))
        .merge(logged_in)
        .layer(from_fn(auth::refuse_cross_site))
        .layer(map_response(hardening::security_headers))
        .with_state(state)
}

/// Any other path (only reached when logged in).
async fn not_found(format: Format, uri: Uri) -> Response {
    Problem::NotFound(uri.path().to_owned()).respond(format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ApplianceInfo, CloudRow, EnrollCloud, MoveEvent, MoveRow, Overview, Refusal, ServerRow, StartMove};
    use axum::body::Body;
    use axum::http::{header, HeaderValue, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A service with fixed data, user `admin` / `correct horse`, API token `tok-123`.
    struct Fake;

    impl ConsoleService for Fake {
        fn overview(&self) -> Overview {
            Overview {
                servers: vec![
                    ServerRow {
                        name: "web-01".into(),
                        ip: Some("10.0.0.11".into()),
                        mac: Some("52:54:00:12:34:56".into()),
                        location: "dc".into(),
                        state: "running".into(),
                        nic_model: "e1000".into(),
                        disk_bus: "scsi-lsi".into(),
                    },
                    ServerRow {
                        name: "<script>alert(1)</script>".into(),
                        ip: None,
                        mac: None,
                        location: "aws-eu".into(),
                        state: "moving".into(),
                        nic_model: "vmxnet3".into(),
                        disk_bus: "ide".into(),
                    },
                ],
                clouds: vec![CloudRow {
                    name: "aws-eu".into(),
                    endpoint: "https://csc.aws-eu.example:8443".into(),
                    accel: None,
                    enrolled_at: "2025-05-01T10:00:00Z".into(),
                }],
                moves: vec![MoveRow {
                    id: "mv-7".into(),
                    server: "web-01".into(),
                    to: "aws-eu".into(),
                    step: "copy-disks".into(),
                    state: "running".into(),
                    progress_pct: 42,
                    started_at: "2025-05-02T09:00:00Z".into(),
                    events: vec![MoveEvent {
                        at: "2025-05-02T09:00:01Z".into(),
                        step: "plan".into(),
                        message: "planned <b>move</b>".into(),
                    }],
                }],
                appliance: ApplianceInfo {
                    version: "0.1.0-test".into(),
                    lan_iface: Some("eth1".into()),
                    ca_fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
                    accel: Some("kvm: /dev/kvm usable".into()),
                },
            }
        }

        fn verify_login(&self, user: &str, password: &str) -> bool {
            crate::constant_time_eq(user.as_bytes(), b"admin") & crate::constant_time_eq(password.as_bytes(), b"correct horse")
        }

        fn verify_api_token(&self, token: &str) -> bool {
            crate::constant_time_eq(token.as_bytes(), b"tok-123")
        }

        /// Enrols `lab`; any other name fails the way a refusing node would.
        fn enroll_cloud(&self, req: EnrollCloud) -> Result<CloudRow, String> {
            if req.name != "lab" {
                return Err(format!("node at {} refused the token", req.url));
            }
            Ok(CloudRow {
                name: req.name,
                endpoint: req.url,
                accel: Some("kvm".into()),
                enrolled_at: "2025-05-03T08:00:00Z".into(),
            })
        }

        /// Adds any named server except `aws-only`, which "runs in a cloud".
        fn add_server(&self, d: serde_json::Value) -> Result<ServerRow, Refusal> {
            let Some(name) = d["name"].as_str() else {
                return Err(Refusal::Invalid("missing field `name`".into()));
            };
            if name == "aws-only" {
                return Err(Refusal::Conflict(format!("server {name} runs in aws-eu now")));
            }
            Ok(ServerRow {
                name: name.into(),
                ip: None,
                mac: None,
                location: "dc".into(),
                state: "stopped".into(),
                nic_model: "e1000".into(),
                disk_bus: "ide".into(),
            })
        }

        /// Moves `web-01` anywhere but `dc` (where it is); knows no other server.
        fn start_move(&self, req: StartMove) -> Result<MoveRow, Refusal> {
            if req.server != "web-01" {
                return Err(Refusal::NotFound(format!("no server {}", req.server)));
            }
            if req.to == "dc" {
                return Err(Refusal::Conflict("server web-01 runs in dc already".into()));
            }
            Ok(MoveRow {
                id: "mv-8".into(),
                server: req.server,
                to: req.to,
                step: "plan".into(),
                state: "running".into(),
                progress_pct: 0,
                started_at: "2025-05-04T09:00:00Z".into(),
                events: vec![],
            })
        }
    }

    fn app() -> Router {
        router(Arc::new(Fake))
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn login_req(user: &str, password: &str) -> Request<Body> {
        let body = format!("user={user}&password={}", password.replace(' ', "+"));
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    }

    async fn body_text(resp: Response) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Logs in and returns the `Cookie` header value to send back.
    async fn login(app: &Router) -> String {
        let resp = app.clone().oneshot(login_req("admin", "correct horse")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let set = resp.headers()[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn unauthenticated_page_redirects_to_login() {
        for path in ["/", "/moves/mv-7", "/no/such/page"] {
            let resp = app().oneshot(get(path)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{path}");
            assert_eq!(resp.headers()[header::LOCATION], "/login", "{path}");
        }
    }

    #[tokio::test]
    async fn unauthenticated_api_gets_401_json() {
        let resp = app().oneshot(get("/api/overview")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "login required", "hint": "POST /login with user and password"})
        );

        // The same for a page asked for as JSON.
        let req = Request::get("/")
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn login_page_is_public() {
        let resp = app().oneshot(get("/login")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let html = body_text(resp).await;
        assert!(html.contains(r#"<form class="login" method="post" action="/login">"#));
        let resp = app().oneshot(get("/static/console.js")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn bad_login_is_401_with_message() {
        let resp = app().oneshot(login_req("admin", "wrong")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(!resp.headers().contains_key(header::SET_COOKIE));
        let html = body_text(resp).await;
        assert!(html.contains("wrong user name or password"));
        assert!(html.contains(r#"value="admin""#), "keeps the user name");
    }

    #[tokio::test]
    async fn good_login_sets_cookie_and_opens_the_console() {
        let app = app();
        let resp = app.clone().oneshot(login_req("admin", "correct horse")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[header::LOCATION], "/");
        let set = resp.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
        let (pair, attrs) = set.split_once(';').unwrap();
        let (name, token) = pair.split_once('=').unwrap();
        assert_eq!(name, "isthmus_session");
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(attrs.contains(attr), "{set}");
        }

        let req = Request::get("/").header(header::COOKIE, pair).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let html = body_text(resp).await;
        assert!(html.contains("web-01"));
        assert!(html.contains("<svg class=\"topology\""));
        assert!(html.contains(r#"<progress max="100" value="42""#));
        assert!(html.contains("0.1.0-test"));
        assert!(html.contains(&format!("CA sha256:{}", "ab".repeat(32))), "shows the CA fingerprint");
        assert!(html.contains(">admin<"), "shows who is logged in");

        // The move page with its timeline.
        let req = Request::get("/moves/mv-7")
            .header(header::COOKIE, pair)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let html = body_text(resp).await;
        assert!(html.contains(r#"<ol class="timeline""#));
        assert!(html.contains("planned &#60;b&#62;move&#60;/b&#62;"));
    }

    #[tokio::test]
    async fn same_handler_answers_json_when_asked() {
        let app = app();
        let cookie = login(&app).await;
        let req = Request::get("/")
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[header::VARY], "Accept");
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["servers"][0]["name"], "web-01");
        assert_eq!(v["servers"][0]["nic_model"], "e1000");
        assert_eq!(v["moves"][0]["progress_pct"], 42);
        assert_eq!(v["appliance"]["version"], "0.1.0-test");

        let req = Request::get("/moves/mv-7")
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body_text(app.clone().oneshot(req).await.unwrap()).await).unwrap();
        assert_eq!(v["id"], "mv-7");
        assert_eq!(v["events"][0]["step"], "plan");

        let req = Request::get("/moves/nope")
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["error"], "no move with id \"nope\"");
    }

    #[tokio::test]
    async fn names_are_escaped_in_html() {
        let app = app();
        let cookie = login(&app).await;
        let req = Request::get("/").header(header::COOKIE, &cookie).body(Body::empty()).unwrap();
        let html = body_text(app.oneshot(req).await.unwrap()).await;
        assert!(!html.contains("<script>alert"), "raw script tag in page");
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        // The page's only script is our own file.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script src="/static/console.js"></script>"#));
    }

    #[tokio::test]
    async fn five_failures_then_429_even_for_the_right_password() {
        let app = app();
        for _ in 0..5 {
            let resp = app.clone().oneshot(login_req("admin", "guess")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        let resp = app.clone().oneshot(login_req("admin", "correct horse")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
        assert!(!resp.headers().contains_key(header::SET_COOKIE));
        assert!(body_text(resp).await.contains("too many failed logins"));
    }

    #[tokio::test]
    async fn bearer_token_opens_the_api() {
        let with = |token: &str| {
            Request::get("/api/overview")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let resp = app().oneshot(with("tok-123")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["clouds"][0]["name"], "aws-eu");

        let resp = app().oneshot(with("tok-999")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["error"], "invalid API token");
    }

    #[tokio::test]
    async fn default_verify_api_token_refuses_everything() {
        struct NoTokens;
        impl ConsoleService for NoTokens {
            fn overview(&self) -> Overview {
                Fake.overview()
            }
            fn verify_login(&self, _: &str, _: &str) -> bool {
                false
            }
        }
        let req = Request::get("/api/overview")
            .header(header::AUTHORIZATION, "Bearer anything")
            .body(Body::empty())
            .unwrap();
        let resp = router(Arc::new(NoTokens)).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn logout_ends_the_session() {
        let app = app();
        let cookie = login(&app).await;
        let req = Request::post("/logout")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert!(resp.headers()[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
        let req = Request::get("/").header(header::COOKIE, &cookie).body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    }

    #[tokio::test]
    async fn forged_cookie_is_not_a_session() {
        let req = Request::get("/api/overview")
            .header(header::COOKIE, format!("isthmus_session={}", "ab".repeat(32)))
            .body(Body::empty())
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn cross_site_login_post_is_refused() {
        let mut req = login_req("admin", "correct horse");
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("console.lan"));
        req.headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);

        let mut req = login_req("admin", "correct horse");
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("console.lan"));
        req.headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static("https://console.lan"));
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    }

    const FP: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn enroll_req(auth: Option<(header::HeaderName, &str)>, body: &str) -> Request<Body> {
        let mut b = Request::post("/api/clouds").header(header::CONTENT_TYPE, "application/json");
        if let Some((name, value)) = auth {
            b = b.header(name, value);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    fn enroll_body(name: &str, url: &str, fingerprint: &str) -> String {
        serde_json::json!({"name": name, "url": url, "fingerprint": fingerprint, "token": "one-time"}).to_string()
    }

    #[tokio::test]
    async fn enroll_cloud_needs_login() {
        let resp = app()
            .oneshot(enroll_req(None, &enroll_body("lab", "https://10.0.0.9:8443", FP)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body_text(resp).await).unwrap()["error"],
            "login required"
        );
        let resp = app()
            .oneshot(enroll_req(
                Some((header::AUTHORIZATION, "Bearer wrong")),
                &enroll_body("lab", "https://10.0.0.9:8443", FP),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn enroll_cloud_maps_results_to_statuses() {
        let app = app();
        let cookie = login(&app).await;
        let bearer = (header::AUTHORIZATION, "Bearer tok-123");
        let bad_json = r#"{"name":"lab","url":"https://10.0.0.9:8443"}"#;
        let extra = serde_json::json!({"name": "lab", "url": "https://10.0.0.9:8443", "fingerprint": FP, "token": "t", "x": 1}).to_string();
        // (auth, body, status, what the error or row must contain)
        let table: Vec<(header::HeaderName, &str, String, StatusCode, &str)> = vec![
            (
                header::COOKIE,
                &cookie,
                enroll_body("lab", "https://10.0.0.9:8443", FP),
                StatusCode::OK,
                "lab",
            ),
            (
                bearer.0.clone(),
                bearer.1,
                enroll_body("lab", "https://10.0.0.9:8443", FP),
                StatusCode::OK,
                "lab",
            ),
            (
                bearer.0.clone(),
                bearer.1,
                enroll_body("lab", "http://10.0.0.9:8443", FP),
                StatusCode::BAD_REQUEST,
                "https://",
            ),
            (
                bearer.0.clone(),
                bearer.1,
                enroll_body("lab", "https://10.0.0.9:8443", "sha256:12"),
                StatusCode::BAD_REQUEST,
                "64 hex",
            ),
            (
                bearer.0.clone(),
                bearer.1,
                enroll_body("", "https://10.0.0.9:8443", FP),
                StatusCode::BAD_REQUEST,
                "name is empty",
            ),
            (
                bearer.0.clone(),
                bearer.1,
                bad_json.to_owned(),
                StatusCode::BAD_REQUEST,
                "fingerprint",
            ),
            (bearer.0.clone(), bearer.1, extra, StatusCode::BAD_REQUEST, "unknown field"),
            (bearer.0.clone(), bearer.1, "not json".to_owned(), StatusCode::BAD_REQUEST, ""),
            (
                bearer.0.clone(),
                bearer.1,
                enroll_body("other", "https://10.0.0.9:8443", FP),
                StatusCode::BAD_GATEWAY,
                "refused the token",
            ),
        ];
        for (name, value, body, status, needle) in table {
            let resp = app.clone().oneshot(enroll_req(Some((name, value)), &body)).await.unwrap();
            assert_eq!(resp.status(), status, "{body}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json", "{body}");
            let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
            if status == StatusCode::OK {
                assert_eq!(v["name"], needle);
                assert_eq!(v["endpoint"], "https://10.0.0.9:8443");
            } else {
                assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
                assert!(v["hint"].as_str().is_some_and(|h| !h.is_empty()), "{body}: {v}");
            }
        }

        // Not JSON: a cross-site form cannot send application/json.
        let req = Request::post("/api/clouds")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookie)
            .body(Body::from("name=lab"))
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::BAD_REQUEST);

        // Cross-site POSTs are refused before the handler.
        let mut req = enroll_req(Some((header::COOKIE, &cookie)), &enroll_body("lab", "https://10.0.0.9:8443", FP));
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("console.lan"));
        req.headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);
    }

    /// A service with only the required methods (API token `t`): every default applies.
    struct Plain;

    impl ConsoleService for Plain {
        fn overview(&self) -> Overview {
            Fake.overview()
        }
        fn verify_login(&self, _: &str, _: &str) -> bool {
            false
        }
        fn verify_api_token(&self, token: &str) -> bool {
            token == "t"
        }
    }

    #[tokio::test]
    async fn enroll_cloud_default_is_not_supported() {
        let req = enroll_req(
            Some((header::AUTHORIZATION, "Bearer t")),
            &enroll_body("lab", "https://10.0.0.9:8443", FP),
        );
        let resp = router(Arc::new(Plain)).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["error"], "not supported");
    }

    fn json_post(uri: &str, auth: Option<(header::HeaderName, &str)>, body: &str) -> Request<Body> {
        let mut b = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some((name, value)) = auth {
            b = b.header(name, value);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn servers_and_moves_api_map_refusals_to_statuses() {
        let app = app();
        let cookie = login(&app).await;
        // (uri, body, status, what the error or row must contain)
        let table = [
            ("/api/servers", r#"{"name":"web-02","profile":{}}"#, StatusCode::OK, "web-02"),
            ("/api/servers", r#"{"profile":{}}"#, StatusCode::BAD_REQUEST, "missing field `name`"),
            ("/api/servers", r#"["web-02"]"#, StatusCode::BAD_REQUEST, "must be a JSON object"),
            ("/api/servers", "{not json", StatusCode::BAD_REQUEST, "JSON"),
            ("/api/servers", r#"{"name":"aws-only"}"#, StatusCode::CONFLICT, "runs in aws-eu"),
            ("/api/moves", r#"{"server":"web-01","to":"aws-eu"}"#, StatusCode::OK, "mv-8"),
            (
                "/api/moves",
                r#"{"server":"nope","to":"aws-eu"}"#,
                StatusCode::NOT_FOUND,
                "no server nope",
            ),
            ("/api/moves", r#"{"server":"web-01","to":"dc"}"#, StatusCode::CONFLICT, "already"),
            (
                "/api/moves",
                r#"{"server":"web-01","to":"aws-eu","x":1}"#,
                StatusCode::BAD_REQUEST,
                "unknown field",
            ),
        ];
        for (uri, body, status, want) in table {
            let resp = app
                .clone()
                .oneshot(json_post(uri, Some((header::COOKIE, &cookie)), body))
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{uri} {body}");
            let text = body_text(resp).await;
            assert!(text.contains(want), "{uri} {body}: {text}");
            if status != StatusCode::OK {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(v["hint"].as_str().unwrap().contains("GET /"), "{text}");
            }
        }
        // The bearer token works too; nothing works without login.
        let ok = r#"{"server":"web-01","to":"aws-eu"}"#;
        let resp = app
            .clone()
            .oneshot(json_post("/api/moves", Some((header::AUTHORIZATION, "Bearer tok-123")), ok))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        for uri in ["/api/servers", "/api/moves"] {
            let resp = app.clone().oneshot(json_post(uri, None, ok)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri}");
        }
    }

    #[tokio::test]
    async fn servers_and_moves_default_is_not_implemented() {
        for (uri, body) in [
            ("/api/servers", r#"{"name":"web-02"}"#),
            ("/api/moves", r#"{"server":"web-01","to":"aws-eu"}"#),
        ] {
            let resp = router(Arc::new(Plain))
                .oneshot(json_post(uri, Some((header::AUTHORIZATION, "Bearer t")), body))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED, "{uri}");
            assert!(body_text(resp).await.contains("not supported"), "{uri}");
        }
    }

    #[test]
    fn enroll_cloud_debug_hides_the_token() {
        let req: EnrollCloud = serde_json::from_str(&enroll_body("lab", "https://10.0.0.9:8443", FP)).unwrap();
        let shown = format!("{req:?}");
        assert!(!shown.contains("one-time"), "{shown}");
        assert!(shown.contains("lab"));
    }

    #[tokio::test]
    async fn console_over_https() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (c, k) = (cert_pem.clone(), key_pem.clone());
        let server = tokio::spawn(async move { crate::serve_https(app(), listener, c.as_bytes(), k.as_bytes()).await });

        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
            .resolve("localhost", addr)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let base = format!("https://localhost:{}", addr.port());

        let resp = client.get(format!("{base}/login")).send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert!(resp.text().await.unwrap().contains("Log in"));

        let resp = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()["location"], "/login");

        // The whole flow over TLS: log in, then the overview as JSON.
        let resp = client
            .post(format!("{base}/login"))
            .form(&[("user", "admin"), ("password", "correct horse")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::SEE_OTHER);
        let cookie = resp.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let resp = client
            .get(format!("{base}/api/overview"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);

        server.abort();
    }
}
