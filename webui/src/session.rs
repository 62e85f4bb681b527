//! Browser sessions: random tokens in an `HttpOnly; Secure; SameSite=Strict` cookie,
//! held in memory and forgotten after 8 hours without use.
//!
//! Time is an argument (`now: Instant`) so expiry is tested without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub(crate) const COOKIE_NAME: &str = "isthmus_session";

/// A session unused for this long is forgotten.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 60 * 60);

/// At most this many sessions are kept; past it the least recently used one is dropped,
/// so a script that logs in in a loop cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;

/// Bytes of randomness in a token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// A session token: 32 random bytes from the operating system, as lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionToken(String);

impl SessionToken {
    /// A fresh token from the OS random generator.
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// Accepts only the shape [`SessionToken::generate`] makes; anything else is not a token.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let well_formed = s.len() == TOKEN_BYTES * 2 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| Self(s.to_owned()))
    }

    /// The token found in the request's `Cookie` headers, if any is well formed.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE_NAME)
            .find_map(|(_, value)| Self::parse(value.trim()))
    }

    /// The `Set-Cookie` value that hands this token to the browser.
    ///
    /// No `Max-Age`: the cookie ends with the browser session, and the server forgets the
    /// session after [`IDLE_TIMEOUT`] anyway. `SameSite=Strict` is the console's CSRF
    /// defence for its POST forms.
    pub(crate) fn set_cookie(&self) -> String {
        format!("{COOKIE_NAME}={}; HttpOnly; Secure; SameSite=Strict; Path=/", self.0)
    }

    /// The `Set-Cookie` value that makes the browser drop the cookie.
    pub(crate) fn clear_cookie() -> String {
        format!("{COOKIE_NAME}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
    }

    /// The table key: a SHA-256 of the token.
    ///
    /// Keying by a hash means the map's (not constant-time) key comparison can leak at
    /// most something about the hash of an attacker's guess, never about a real token,
    /// and a dump of the table holds no usable cookie.
    fn key(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// One logged-in browser.
#[derive(Debug)]
struct Session {
    user: String,
    last_seen: Instant,
}

/// All live sessions, in memory (a restart of the appliance logs everyone out).
#[derive(Debug)]
pub(crate) struct SessionStore {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    idle_timeout: Duration,
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::with_idle_timeout(IDLE_TIMEOUT)
    }
}

impl SessionStore {
    /// A store whose sessions expire after `idle_timeout` without use.
    pub(crate) fn with_idle_timeout(idle_timeout: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// Starts a session for `user` and returns its new token.
    pub(crate) fn create(&self, user: &str, now: Instant) -> SessionToken {
        let token = SessionToken::generate();
        let mut sessions = self.lock();
        sessions.retain(|_, s| now.saturating_duration_since(s.last_seen) < self.idle_timeout);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            token.key(),
            Session {
                user: user.to_owned(),
                last_seen: now,
            },
        );
        token
    }

    /// The user of a live session, marking it used at `now`; `None` if the token is
    /// unknown or the session idled out (it is then forgotten).
    pub(crate) fn touch(&self, token: &SessionToken, now: Instant) -> Option<String> {
        let key = token.key();
        let mut sessions = self.lock();
        let session = sessions.get_mut(&key)?;
        if now.saturating_duration_since(session.last_seen) >= self.idle_timeout {
            sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.user.clone())
    }

    /// Ends a session (logout). Unknown tokens are ignored.
    pub(crate) fn remove(&self, token: &SessionToken) {
        self.lock().remove(&token.key());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // mutation is a single HashMap call), so a poisoned lock is safe to keep using.
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_is_64_lowercase_hex_and_random() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_eq!(a.as_str().len(), 64);
        assert!(SessionToken::parse(a.as_str()).is_some());
        assert_ne!(a, b);
    }

    #[test]
    fn parse_rejects_other_shapes() {
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            assert!(SessionToken::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn finds_cookie_among_others() {
        let token = SessionToken::generate();
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        let v = format!("a=1; {COOKIE_NAME}={}; b=2", token.as_str());
        headers.append(header::COOKIE, HeaderValue::from_str(&v).unwrap());
        assert_eq!(SessionToken::from_headers(&headers), Some(token));
    }

    #[test]
    fn cookie_attributes() {
        let c = SessionToken::generate().set_cookie();
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(attr), "{c}");
        }
    }

    #[test]
    fn session_lives_while_used_and_dies_when_idle() {
        let store = SessionStore::with_idle_timeout(Duration::from_secs(10));
        let t0 = Instant::now();
        let token = store.create("admin", t0);
        assert_eq!(store.touch(&token, t0 + Duration::from_secs(9)).as_deref(), Some("admin"));
        // Used at 9 s, so still alive at 18 s.
        assert!(store.touch(&token, t0 + Duration::from_secs(18)).is_some());
        assert!(store.touch(&token, t0 + Duration::from_secs(28)).is_none());
        // And forgotten, even if the clock went backwards.
        assert!(store.touch(&token, t0).is_none());
    }

    #[test]
    fn logout_forgets_session() {
        let store = SessionStore::default();
        let now = Instant::now();
        let token = store.create("admin", now);
        store.remove(&token);
        assert!(store.touch(&token, now).is_none());
    }

    #[test]
    fn unknown_token_is_rejected() {
        let store = SessionStore::default();
        let now = Instant::now();
        store.create("admin", now);
        assert!(store.touch(&SessionToken::generate(), now).is_none());
    }
}
