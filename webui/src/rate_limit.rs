//! The failed-login limiter: after 5 failures from anyone within a minute, every login
//! attempt is refused (HTTP 429) for the rest of that minute.
//!
//! It is global rather than per client address on purpose: the console has a handful of
//! administrators, and a per-address limit is defeated by an attacker with many addresses.
//! The price is that an attacker can lock the administrators out for a minute at a time;
//! the appliance's local console and CLI stay usable.
//!
//! An attempt is counted as a failure when it *starts* and refunded if it succeeds, so
//! many attempts sent in parallel cannot slip past the limit while a slow password hash
//! runs. Time is an argument, so the window is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed in one window.
pub(crate) const MAX_FAILURES: u32 = 5;

/// Length of a window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The current window: when it opened and how many attempts failed (or are running) in it.
#[derive(Debug, Default)]
struct Window {
    opened: Option<Instant>,
    failures: u32,
}

/// Counts failed logins in fixed one-minute windows; the first failure opens a window.
#[derive(Debug)]
pub(crate) struct LoginLimiter {
    window: Mutex<Window>,
    max_failures: u32,
    length: Duration,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(MAX_FAILURES, WINDOW)
    }
}

/// A login attempt the limiter let through, counted as a failure until
/// [`LoginLimiter::succeeded`] refunds it.
#[must_use = "call LoginLimiter::succeeded when the login succeeds"]
#[derive(Debug)]
pub(crate) struct Attempt {
    window_opened: Instant,
}

impl LoginLimiter {
    /// A limiter allowing `max_failures` per window of `length`.
    pub(crate) fn new(max_failures: u32, length: Duration) -> Self {
        Self {
            window: Mutex::new(Window::default()),
            max_failures,
            length,
        }
    }

    /// Lets an attempt start at `now`, or says how long until attempts are allowed again.
    pub(crate) fn begin(&self, now: Instant) -> Result<Attempt, Duration> {
        let mut w = self.lock();
        let opened = match w.opened {
            Some(opened) if now.saturating_duration_since(opened) < self.length => opened,
            _ => {
                *w = Window {
                    opened: Some(now),
                    failures: 0,
                };
                now
            }
        };
        if w.failures >= self.max_failures {
            return Err(self.length.saturating_sub(now.saturating_duration_since(opened)));
        }
        w.failures += 1;
        Ok(Attempt { window_opened: opened })
    }

    /// Refunds an attempt that turned out to be a successful login.
    pub(crate) fn succeeded(&self, attempt: Attempt) {
        let mut w = self.lock();
        if w.opened == Some(attempt.window_opened) {
            w.failures = w.failures.saturating_sub(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Every update is a plain assignment, so a poisoned lock holds a consistent value.
        self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn five_failures_then_refused_for_rest_of_minute() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..5 {
            let _failed = l.begin(t0 + secs(i)).expect("allowed");
        }
        assert_eq!(l.begin(t0 + secs(10)).unwrap_err(), secs(50));
        assert_eq!(l.begin(t0 + secs(59)).unwrap_err(), secs(1));
        // A new minute opens a new window.
        assert!(l.begin(t0 + secs(60)).is_ok());
    }

    #[test]
    fn successes_do_not_count() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..20 {
            let a = l.begin(t0).expect("allowed");
            l.succeeded(a);
        }
        assert!(l.begin(t0).is_ok());
    }

    #[test]
    fn failures_spread_over_windows_do_not_add_up() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..4 {
            let _failed = l.begin(t0 + secs(i)).expect("allowed");
        }
        for i in 0..4 {
            let _failed = l.begin(t0 + secs(61 + i)).expect("allowed in the next window");
        }
    }

    #[test]
    fn refund_from_an_old_window_is_ignored() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let slow = l.begin(t0).expect("allowed");
        for i in 0..5 {
            let _failed = l.begin(t0 + secs(61 + i)).expect("allowed");
        }
        l.succeeded(slow);
        assert!(l.begin(t0 + secs(70)).is_err());
    }
}
