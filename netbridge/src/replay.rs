//! Sliding anti-replay window (RFC 6479: a ring of 64-bit blocks, cleared a
//! whole block at a time as the window moves, so advancing costs O(blocks
//! skipped) and checking costs O(1)). The same shape WireGuard uses.

/// Number of 64-bit blocks in the ring.
const BLOCKS: usize = 64;
/// Bits per block.
const BLOCK_BITS: u64 = 64;
/// How far behind the highest accepted counter a counter may be and still be
/// accepted: one block of the ring is kept as the block being cleared
/// (RFC 6479 §2), so the usable window is 63 × 64 = 4032 counters.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Anti-replay state of one receiving session.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    bitmap: [u64; BLOCKS],
    /// Highest counter accepted so far (0 before any).
    last: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is still acceptable once.
    pub fn new() -> Self {
        ReplayWindow {
            bitmap: [0; BLOCKS],
            last: 0,
        }
    }

    /// Would `counter` be accepted? Does not change the window: used before
    /// spending an AEAD open on a datagram that would be rejected anyway.
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.last {
            return true;
        }
        // counter <= last here, so the subtraction cannot wrap.
        if self.last - counter >= WINDOW {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] & bit == 0
    }

    /// Accepts `counter` (returns true) if it is new and not too old, and
    /// records it; returns false for a replay or a counter below the window.
    /// Call only after the datagram authenticated.
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter > self.last {
            let current = self.last / BLOCK_BITS;
            let index = counter / BLOCK_BITS;
            let skip = (index - current).min(BLOCKS as u64);
            for i in 1..=skip {
                // `(current + i) % BLOCKS` < BLOCKS: in range.
                self.bitmap[((current + i) % BLOCKS as u64) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter >= WINDOW {
            return false;
        }
        let (block, bit) = Self::position(counter);
        if self.bitmap[block] & bit != 0 {
            return false;
        }
        self.bitmap[block] |= bit;
        true
    }

    fn position(counter: u64) -> (usize, u64) {
        (((counter / BLOCK_BITS) % BLOCKS as u64) as usize, 1u64 << (counter % BLOCK_BITS))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn window_is_large_enough() {
        const { assert!(WINDOW >= 2048) };
    }

    #[test]
    fn in_order_then_replays() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000 {
            assert!(w.check(c));
            assert!(w.accept(c), "{c}");
            assert!(!w.check(c));
            assert!(!w.accept(c), "{c} twice");
        }
    }

    #[test]
    fn table() {
        // (counter, accepted?) applied in sequence to one window.
        let steps: &[(u64, bool)] = &[
            (0, true),
            (0, false),
            (1, true),
            (5, true),
            (3, true),
            (3, false),
            (2, true),
            (5, false),
            (WINDOW + 5, true),
            (5, false), // exactly WINDOW behind: too old
            (6, true),  // WINDOW - 1 behind: still inside
            (6, false),
            (4, false),          // older than the window
            (WINDOW + 4, true),  // in window, not yet seen
            (10 * WINDOW, true), // big jump clears the ring
            (WINDOW + 6, false), // far behind now
            (10 * WINDOW - 1, true),
            (10 * WINDOW - WINDOW + 1, true),
            (10 * WINDOW - WINDOW, false),
            (u64::MAX - 1, true),
            (u64::MAX - 1, false),
            (u64::MAX, true),
            (u64::MAX, false),
        ];
        let mut w = ReplayWindow::new();
        for &(c, ok) in steps {
            assert_eq!(w.check(c), ok, "check {c}");
            assert_eq!(w.accept(c), ok, "accept {c}");
        }
    }

    #[test]
    fn block_boundaries_do_not_alias() {
        // Counters exactly one ring apart share a bit position: the older must
        // be out of the window by the time the newer is accepted.
        let mut w = ReplayWindow::new();
        let ring = BLOCKS as u64 * BLOCK_BITS;
        assert!(w.accept(100));
        assert!(w.accept(100 + ring));
        assert!(!w.accept(100));
        assert!(w.accept(100 + ring - WINDOW + 1));
    }

    proptest::proptest! {
        /// The window agrees with a model that remembers everything: a counter
        /// is accepted iff it was never accepted and is less than WINDOW
        /// behind the highest accepted counter.
        #[test]
        fn matches_model(
            start in 0u64..(u64::MAX / 2),
            deltas in proptest::collection::vec(0u64..3 * WINDOW, 1..600),
        ) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut max: Option<u64> = None;
            for d in deltas {
                let c = start + d;
                let expect = !seen.contains(&c) && max.is_none_or(|m| c + WINDOW > m);
                proptest::prop_assert_eq!(w.check(c), expect);
                proptest::prop_assert_eq!(w.accept(c), expect);
                if expect {
                    seen.insert(c);
                    max = Some(max.map_or(c, |m| m.max(c)));
                }
            }
        }

        /// Never accepts a counter twice, whatever the order.
        #[test]
        fn never_twice(counters in proptest::collection::vec(0u64..20_000, 1..2000)) {
            let mut w = ReplayWindow::new();
            let mut accepted = BTreeSet::new();
            for c in counters {
                if w.accept(c) {
                    proptest::prop_assert!(accepted.insert(c), "accepted {} twice", c);
                }
            }
        }

        /// Accepts every counter of an increasing sequence.
        #[test]
        fn in_order_accepted(start in 0u64..u64::MAX / 2, gaps in proptest::collection::vec(1u64..10_000, 1..500)) {
            let mut w = ReplayWindow::new();
            let mut c = start;
            for g in gaps {
                proptest::prop_assert!(w.accept(c));
                c += g;
            }
        }
    }
}
