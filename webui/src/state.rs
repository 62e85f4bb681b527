//! The state every handler shares: the service, the session table and the login limiter.

use std::sync::Arc;

use crate::rate_limit::LoginLimiter;
use crate::service::ConsoleService;
use crate::session::SessionStore;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    svc: Arc<dyn ConsoleService>,
    /// Logged-in browser sessions.
    pub(crate) sessions: Arc<SessionStore>,
    /// The global failed-login limiter.
    pub(crate) limiter: Arc<LoginLimiter>,
}

impl AppState {
    /// State around `svc` with an empty session table and a fresh limiter.
    pub(crate) fn new(svc: Arc<dyn ConsoleService>) -> Self {
        Self {
            svc,
            sessions: Arc::new(SessionStore::default()),
            limiter: Arc::new(LoginLimiter::default()),
        }
    }

    /// Runs `f` against the service on the blocking pool.
    ///
    /// Service methods may hash passwords or read the store; running them here keeps the
    /// async workers free. Fails only if `f` panicked.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R, tokio::task::JoinError>
    where
        F: FnOnce(&dyn ConsoleService) -> R + Send + 'static,
        R: Send + 'static,
    {
        let svc = Arc::clone(&self.svc);
        tokio::task::spawn_blocking(move || f(svc.as_ref())).await
    }
}
