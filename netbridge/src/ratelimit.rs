//! A token bucket that bounds how many handshake messages per second get the
//! expensive treatment (each costs several X25519 operations). Cookies as in
//! WireGuard §5.4.7 would also bind the limit to the sender's address; this
//! is the simple first line of defence.

use std::time::{Duration, Instant};

/// Token bucket with whole tokens, refilled continuously.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    per_second: u32,
    burst: u32,
    /// Tokens scaled by 1e9 (token-nanoseconds), to refill without floats.
    level: u128,
    last: Instant,
}

const SCALE: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second`.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            per_second,
            burst,
            level: burst as u128 * SCALE,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed: Duration = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let refill = elapsed.as_nanos().saturating_mul(self.per_second as u128);
        self.level = (self.level.saturating_add(refill)).min(self.burst as u128 * SCALE);
        if self.level >= SCALE {
            self.level -= SCALE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 5);
        // 100 ms later: one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(t1));
        assert!(!b.take(t1));
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(t2)).count(), 5);
        // Time going backwards never adds tokens.
        assert!(!b.take(t0));
    }
}
