//! Fragmentation inside the tunnel: a frame too large for one datagram goes
//! as two data datagrams with consecutive counters, and the receiver joins
//! them again in a small bounded table with a timeout.
//!
//! Both halves are authenticated datagrams of the same session, so the pair
//! is identified by (session index, counter of the first half) and cannot be
//! forged or mixed across sessions. The table holds at most [`SLOTS`] halves;
//! the oldest is evicted when it is full.

use std::time::{Duration, Instant};

use crate::wire::{Fragment, MAX_FRAGMENT_PAYLOAD, MAX_FRAME};

/// How many lone halves wait for their partner at most.
pub const SLOTS: usize = 32;
/// How long a lone half waits for its partner.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// How a frame of a given length is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// In one datagram.
    Whole,
    /// In two datagrams; the first carries this many bytes, the second the rest.
    Two {
        /// Bytes in the first half.
        first: usize,
    },
    /// Larger than [`MAX_FRAME`]: not carried.
    TooLarge,
}

/// Decides how to send a frame of `len` bytes.
pub fn plan(len: usize) -> Plan {
    if len <= MAX_FRAGMENT_PAYLOAD {
        Plan::Whole
    } else if len <= MAX_FRAME {
        // Halves of (nearly) equal size: both datagrams stay well below the
        // underlay MTU, and the smaller one does not stand out.
        Plan::Two { first: len - len / 2 }
    } else {
        Plan::TooLarge
    }
}

/// What became of an inserted fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The frame is whole again.
    Complete(&'a [u8]),
    /// Stored; waiting for the other half.
    Pending,
    /// Not a valid fragment (a second half at counter 0, or a whole frame).
    Invalid,
}

/// Counters of the reassembly table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Halves evicted because the table was full.
    pub evicted: u64,
    /// Halves whose partner did not arrive within [`TIMEOUT`].
    pub expired: u64,
}

#[derive(Clone)]
struct Slot {
    used: bool,
    session: u32,
    /// Counter of the first half of the pair.
    first_counter: u64,
    /// Which half is held.
    held: Fragment,
    len: usize,
    stored_at: Instant,
    data: Box<[u8; MAX_FRAGMENT_PAYLOAD]>,
}

/// The reassembly table.
pub struct Reassembly {
    slots: Vec<Slot>,
    frame: Box<[u8; MAX_FRAME]>,
    stats: FragStats,
}

impl std::fmt::Debug for Reassembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembly")
            .field("pending", &self.pending())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Reassembly {
    /// An empty table; allocates all its buffers now, none later.
    pub fn new(now: Instant) -> Self {
        let slot = Slot {
            used: false,
            session: 0,
            first_counter: 0,
            held: Fragment::First,
            len: 0,
            stored_at: now,
            data: Box::new([0u8; MAX_FRAGMENT_PAYLOAD]),
        };
        Reassembly {
            slots: vec![slot; SLOTS],
            frame: Box::new([0u8; MAX_FRAME]),
            stats: FragStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> FragStats {
        self.stats
    }

    /// Halves currently waiting.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }

    /// Forgets halves older than [`TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        for s in self.slots.iter_mut().filter(|s| s.used) {
            if now.saturating_duration_since(s.stored_at) >= TIMEOUT {
                s.used = false;
                self.stats.expired += 1;
            }
        }
    }

    /// Forgets the halves of a session that is gone.
    pub fn forget_session(&mut self, session: u32) {
        for s in self.slots.iter_mut().filter(|s| s.used && s.session == session) {
            s.used = false;
        }
    }

    /// Inserts an authenticated fragment of `session` sent with `counter`.
    pub fn insert(&mut self, session: u32, counter: u64, fragment: Fragment, data: &[u8], now: Instant) -> Outcome<'_> {
        if data.len() > MAX_FRAGMENT_PAYLOAD {
            return Outcome::Invalid;
        }
        let (first_counter, partner) = match fragment {
            Fragment::Whole => return Outcome::Invalid,
            Fragment::First => (counter, Fragment::Second),
            Fragment::Second => match counter.checked_sub(1) {
                Some(c) => (c, Fragment::First),
                None => return Outcome::Invalid,
            },
        };
        let found = self
            .slots
            .iter()
            .position(|s| s.used && s.session == session && s.first_counter == first_counter && s.held == partner);
        if let Some(i) = found {
            let slot = &mut self.slots[i];
            slot.used = false;
            if now.saturating_duration_since(slot.stored_at) >= TIMEOUT {
                self.stats.expired += 1;
            } else {
                let held = &slot.data[..slot.len];
                let (a, b) = if fragment == Fragment::First { (data, held) } else { (held, data) };
                let total = a.len() + b.len();
                self.frame[..a.len()].copy_from_slice(a);
                self.frame[a.len()..total].copy_from_slice(b);
                return Outcome::Complete(&self.frame[..total]);
            }
        }
        let i = match self.slots.iter().position(|s| !s.used) {
            Some(i) => i,
            None => {
                self.expire(now);
                match self.slots.iter().position(|s| !s.used) {
                    Some(i) => i,
                    None => {
                        let oldest = (0..self.slots.len()).min_by_key(|&i| self.slots[i].stored_at).unwrap_or(0);
                        self.stats.evicted += 1;
                        oldest
                    }
                }
            }
        };
        let slot = &mut self.slots[i];
        slot.used = true;
        slot.session = session;
        slot.first_counter = first_counter;
        slot.held = fragment;
        slot.len = data.len();
        slot.stored_at = now;
        slot.data[..data.len()].copy_from_slice(data);
        Outcome::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn plans() {
        assert_eq!(plan(0), Plan::Whole);
        assert_eq!(plan(60), Plan::Whole);
        assert_eq!(plan(MAX_FRAGMENT_PAYLOAD), Plan::Whole);
        assert_eq!(plan(MAX_FRAGMENT_PAYLOAD + 1), Plan::Two { first: 711 });
        assert_eq!(plan(1514), Plan::Two { first: 757 });
        assert_eq!(plan(1518), Plan::Two { first: 759 });
        assert_eq!(
            plan(MAX_FRAME),
            Plan::Two {
                first: MAX_FRAGMENT_PAYLOAD
            }
        );
        assert_eq!(plan(MAX_FRAME + 1), Plan::TooLarge);
        assert_eq!(plan(65535), Plan::TooLarge);
    }

    #[test]
    fn both_orders_reassemble() {
        let now = Instant::now();
        let f = frame(1514);
        let Plan::Two { first } = plan(f.len()) else { panic!() };
        let (a, b) = f.split_at(first);
        let mut r = Reassembly::new(now);
        assert_eq!(r.insert(1, 10, Fragment::First, a, now), Outcome::Pending);
        assert_eq!(r.insert(1, 11, Fragment::Second, b, now), Outcome::Complete(&f[..]));
        assert_eq!(r.pending(), 0);
        assert_eq!(r.insert(1, 21, Fragment::Second, b, now), Outcome::Pending);
        assert_eq!(r.insert(1, 20, Fragment::First, a, now), Outcome::Complete(&f[..]));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn pairs_do_not_mix() {
        let now = Instant::now();
        let mut r = Reassembly::new(now);
        // Same counters, other session.
        assert_eq!(r.insert(1, 10, Fragment::First, b"aa", now), Outcome::Pending);
        assert_eq!(r.insert(2, 11, Fragment::Second, b"bb", now), Outcome::Pending);
        // Not consecutive.
        assert_eq!(r.insert(1, 12, Fragment::Second, b"cc", now), Outcome::Pending);
        // Two firsts do not pair.
        assert_eq!(r.insert(1, 9, Fragment::First, b"dd", now), Outcome::Pending);
        assert_eq!(r.pending(), 4);
        assert_eq!(r.insert(1, 11, Fragment::Second, b"ee", now), Outcome::Complete(b"aaee"));
        r.forget_session(2);
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn invalid_inputs() {
        let now = Instant::now();
        let mut r = Reassembly::new(now);
        assert_eq!(r.insert(1, 0, Fragment::Second, b"x", now), Outcome::Invalid);
        assert_eq!(r.insert(1, 5, Fragment::Whole, b"x", now), Outcome::Invalid);
        assert_eq!(
            r.insert(1, 5, Fragment::First, &[0u8; MAX_FRAGMENT_PAYLOAD + 1], now),
            Outcome::Invalid
        );
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn timeout() {
        let t0 = Instant::now();
        let mut r = Reassembly::new(t0);
        assert_eq!(r.insert(1, 10, Fragment::First, b"aa", t0), Outcome::Pending);
        // Partner arrives too late: dropped, not joined.
        assert_eq!(r.insert(1, 11, Fragment::Second, b"bb", t0 + TIMEOUT), Outcome::Pending);
        assert_eq!(r.stats().expired, 1);
        r.expire(t0 + TIMEOUT);
        assert_eq!(r.pending(), 1);
        r.expire(t0 + TIMEOUT * 2);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.stats().expired, 2);
    }

    #[test]
    fn bounded_with_eviction_of_oldest() {
        let t0 = Instant::now();
        let mut r = Reassembly::new(t0);
        for i in 0..SLOTS as u64 {
            let t = t0 + Duration::from_millis(i);
            assert_eq!(r.insert(1, 100 + 10 * i, Fragment::First, b"x", t), Outcome::Pending);
        }
        let t = t0 + Duration::from_millis(500);
        assert_eq!(r.insert(1, 5000, Fragment::First, b"y", t), Outcome::Pending);
        assert_eq!(r.pending(), SLOTS);
        assert_eq!(r.stats().evicted, 1);
        // The second oldest is still there, the oldest (counter 100) is gone.
        assert_eq!(r.insert(1, 111, Fragment::Second, b"z", t), Outcome::Complete(b"xz"));
        assert_eq!(r.insert(1, 101, Fragment::Second, b"z", t), Outcome::Pending);
    }

    proptest::proptest! {
        #[test]
        fn split_then_join_is_identity(len in (MAX_FRAGMENT_PAYLOAD + 1)..=MAX_FRAME, second_first: bool) {
            let now = Instant::now();
            let f = frame(len);
            let Plan::Two { first } = plan(len) else { panic!() };
            proptest::prop_assert!(first <= MAX_FRAGMENT_PAYLOAD && len - first <= MAX_FRAGMENT_PAYLOAD);
            let (a, b) = f.split_at(first);
            let mut r = Reassembly::new(now);
            let out = if second_first {
                proptest::prop_assert_eq!(r.insert(3, 8, Fragment::Second, b, now), Outcome::Pending);
                r.insert(3, 7, Fragment::First, a, now)
            } else {
                proptest::prop_assert_eq!(r.insert(3, 7, Fragment::First, a, now), Outcome::Pending);
                r.insert(3, 8, Fragment::Second, b, now)
            };
            proptest::prop_assert_eq!(out, Outcome::Complete(&f[..]));
        }
    }
}
