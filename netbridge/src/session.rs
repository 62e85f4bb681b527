//! One transport session: the two AES-256-GCM keys a handshake produced, the
//! send counter, the receive replay window and the session's age.
//!
//! Sealing takes `&self`: the send counter is an atomic that hands every
//! datagram its own counter (nonce), so several workers may seal on one
//! session at once without ever reusing a nonce (`ring`'s `LessSafeKey` is
//! `Sync`). Opening takes `&mut self` (the replay window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::replay::ReplayWindow;
use crate::wire::{DataHeader, Fragment, DATA_HEADER_LEN, TAG_LEN};

/// The initiator starts a new handshake once its session is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old neither sends nor receives.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// The initiator starts a new handshake after this many sent datagrams.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 40;
/// No datagram is sent or accepted with a counter at or above this (the
/// nonce must never wrap; WireGuard's limit).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Why a session could not seal or open a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The AEAD rejected the datagram (wrong key, tampered, truncated).
    #[error("datagram failed authentication")]
    Auth,
    /// The counter was seen before or is below the replay window.
    #[error("replayed or too old counter {0}")]
    Replay(u64),
    /// The session is older than REJECT_AFTER_TIME.
    #[error("session expired")]
    Expired,
    /// The counter space is used up; a new handshake is needed.
    #[error("session counter exhausted")]
    Exhausted,
    /// The output buffer is too small for the datagram.
    #[error("buffer of {have} bytes too small for {need}")]
    Buffer {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Raw transport keys out of the Noise split.
pub struct TransportKeys {
    /// Key for datagrams we send.
    pub send: [u8; 32],
    /// Key for datagrams we receive.
    pub recv: [u8; 32],
}

impl Drop for TransportKeys {
    fn drop(&mut self) {
        // Best effort: do not leave key copies on the stack or heap.
        self.send.fill(0);
        self.recv.fill(0);
    }
}

/// A transport session.
pub struct Session {
    local_index: u32,
    remote_index: u32,
    send_key: LessSafeKey,
    recv_key: LessSafeKey,
    send_counter: AtomicU64,
    replay: ReplayWindow,
    created: Instant,
    initiator: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("send_counter", &self.sent())
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    // PROTOCOL.md: nonce = 4 zero bytes || 64-bit little-endian counter.
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aead_key(raw: &[u8; 32]) -> LessSafeKey {
    // AES_256_GCM takes exactly 32-byte keys, which `raw` is by type.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).expect("32-byte AES-256 key"))
}

impl Session {
    /// A session from a completed handshake.
    pub fn new(local_index: u32, remote_index: u32, keys: TransportKeys, created: Instant, initiator: bool) -> Self {
        Session {
            local_index,
            remote_index,
            send_key: aead_key(&keys.send),
            recv_key: aead_key(&keys.recv),
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::new(),
            created,
            initiator,
        }
    }

    /// Our index: peers put it in datagrams they send to us.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The peer's index: we put it in datagrams we send.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// Datagrams sent so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// True if we started the handshake that made this session.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// When the handshake completed.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// True once the session may neither send nor receive.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= REJECT_AFTER_TIME
    }

    /// True once the initiator should start the next handshake.
    pub fn wants_rekey(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= REKEY_AFTER_TIME || self.sent() >= REKEY_AFTER_MESSAGES
    }

    /// Seals `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]` in place: writes
    /// the header in front and the tag behind. Returns the datagram length.
    pub fn seal(&self, now: Instant, fragment: Fragment, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        if self.expired(now) {
            return Err(Error::Expired);
        }
        let total = DATA_HEADER_LEN + len + TAG_LEN;
        if buf.len() < total {
            return Err(Error::Buffer {
                need: total,
                have: buf.len(),
            });
        }
        let counter = self.reserve(1)?;
        self.seal_with(counter, fragment, buf, len)
    }

    /// Takes `n` consecutive counters (the two halves of a fragmented frame
    /// must have consecutive ones) and returns the first; seal with
    /// [`Session::seal_with`]. Atomic: concurrent callers get disjoint
    /// counters, and none at or above [`REJECT_AFTER_MESSAGES`].
    pub fn reserve(&self, n: u64) -> Result<u64, Error> {
        self.send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(n).filter(|&end| end <= REJECT_AFTER_MESSAGES)
            })
            .map_err(|_| Error::Exhausted)
    }

    /// Seals `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]` in place with a
    /// counter from [`Session::reserve`] (each used once). Returns the
    /// datagram length.
    pub fn seal_with(&self, counter: u64, fragment: Fragment, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let total = DATA_HEADER_LEN + len + TAG_LEN;
        if buf.len() < total {
            return Err(Error::Buffer {
                need: total,
                have: buf.len(),
            });
        }
        let header = DataHeader {
            receiver: self.remote_index,
            counter,
            fragment,
        }
        .encode();
        buf[..DATA_HEADER_LEN].copy_from_slice(&header);
        let (body, tag_out) = buf[DATA_HEADER_LEN..total].split_at_mut(len);
        let tag = self
            .send_key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&header), body)
            // ring fails only for inputs beyond GCM's 2^36-byte limit.
            .map_err(|_| Error::Buffer { need: total, have: total })?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Authenticates and decrypts a data datagram in place, then records its
    /// counter in the replay window. Returns the plaintext.
    pub fn open<'a>(&mut self, now: Instant, header: &DataHeader, datagram: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        if self.expired(now) {
            return Err(Error::Expired);
        }
        let counter = header.counter;
        if counter >= REJECT_AFTER_MESSAGES || !self.replay.check(counter) {
            return Err(Error::Replay(counter));
        }
        if datagram.len() < DATA_HEADER_LEN + TAG_LEN {
            return Err(Error::Auth);
        }
        let (aad, body) = datagram.split_at_mut(DATA_HEADER_LEN);
        let plain = self
            .recv_key
            .open_in_place(nonce(counter), Aad::from(&*aad), body)
            .map_err(|_| Error::Auth)?;
        // Only an authenticated counter moves the window (RFC 6479 §3).
        if !self.replay.accept(counter) {
            return Err(Error::Replay(counter));
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse, Message};

    fn pair(now: Instant) -> (Session, Session) {
        let a = Session::new(
            1,
            2,
            TransportKeys {
                send: [1; 32],
                recv: [2; 32],
            },
            now,
            true,
        );
        let b = Session::new(
            2,
            1,
            TransportKeys {
                send: [2; 32],
                recv: [1; 32],
            },
            now,
            false,
        );
        (a, b)
    }

    fn seal(s: &Session, now: Instant, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; msg.len() + 32];
        buf[16..16 + msg.len()].copy_from_slice(msg);
        let n = s.seal(now, Fragment::Whole, &mut buf, msg.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn open(s: &mut Session, now: Instant, d: &mut [u8]) -> Result<Vec<u8>, Error> {
        let Ok(Message::Data(h)) = parse(d) else { panic!("not data") };
        s.open(now, &h, d).map(|p| p.to_vec())
    }

    #[test]
    fn roundtrip_and_replay() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let d = seal(&a, now, b"hello");
        assert_eq!(d.len(), 5 + 32);
        assert!(!d.windows(5).any(|w| w == b"hello"), "plaintext on the wire");
        assert_eq!(open(&mut b, now, &mut d.clone()).unwrap(), b"hello");
        assert_eq!(open(&mut b, now, &mut d.clone()), Err(Error::Replay(0)));
        let d2 = seal(&b, now, b"back");
        assert_eq!(open(&mut a, now, &mut d2.clone()).unwrap(), b"back");
    }

    #[test]
    fn tampering_is_rejected_and_does_not_burn_the_counter() {
        let now = Instant::now();
        let (a, mut b) = pair(now);
        let d = seal(&a, now, b"payload bytes");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x40;
            // A flip that breaks the header is rejected before the AEAD.
            if let Ok(Message::Data(_)) = parse(&t) {
                assert!(open(&mut b, now, &mut t).is_err(), "byte {i} flip accepted");
            }
        }
        // The genuine datagram still opens: failed opens did not mark counter 0.
        assert_eq!(open(&mut b, now, &mut d.clone()).unwrap(), b"payload bytes");
    }

    #[test]
    fn expiry_and_rekey_timers() {
        let t0 = Instant::now();
        let (a, mut b) = pair(t0);
        assert!(!a.wants_rekey(t0 + REKEY_AFTER_TIME - Duration::from_millis(1)));
        assert!(a.wants_rekey(t0 + REKEY_AFTER_TIME));
        let late = t0 + REJECT_AFTER_TIME;
        let mut buf = [0u8; 64];
        assert_eq!(a.seal(late, Fragment::Whole, &mut buf, 0), Err(Error::Expired));
        let mut d = seal(&a, t0, b"x");
        assert_eq!(open(&mut b, late, &mut d), Err(Error::Expired));
    }

    #[test]
    fn counter_limits() {
        let now = Instant::now();
        let (a, _) = pair(now);
        a.send_counter.store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        assert_eq!(a.seal(now, Fragment::Whole, &mut buf, 0), Err(Error::Exhausted));
        // Exhaustion never wraps the counter, however often it is asked.
        assert_eq!(a.reserve(2), Err(Error::Exhausted));
        assert_eq!(a.sent(), REJECT_AFTER_MESSAGES);
        a.send_counter.store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        assert_eq!(a.reserve(2), Err(Error::Exhausted));
        assert_eq!(a.reserve(1), Ok(REJECT_AFTER_MESSAGES - 1));
        a.send_counter.store(REKEY_AFTER_MESSAGES, Ordering::Relaxed);
        assert!(a.wants_rekey(now));
    }

    #[test]
    fn small_buffer() {
        let now = Instant::now();
        let (a, _) = pair(now);
        let mut buf = [0u8; 40];
        assert_eq!(
            a.seal(now, Fragment::Whole, &mut buf, 10),
            Err(Error::Buffer { need: 42, have: 40 })
        );
    }

    #[test]
    fn two_workers_sealing_on_one_session_never_reuse_a_nonce() {
        use std::collections::HashSet;
        let now = Instant::now();
        let (a, mut b) = pair(now);
        let a = std::sync::Arc::new(a);
        const PER_WORKER: usize = 20_000;
        let workers: Vec<_> = (0..2u8)
            .map(|w| {
                let a = std::sync::Arc::clone(&a);
                std::thread::spawn(move || {
                    let mut out = Vec::with_capacity(PER_WORKER);
                    for i in 0..PER_WORKER {
                        // Alternate single datagrams and fragment pairs, as
                        // the tunnel does for small and full-size frames.
                        if i % 3 == 0 {
                            let c = a.reserve(2).unwrap();
                            for (k, frag) in [Fragment::First, Fragment::Second].into_iter().enumerate() {
                                let mut buf = [0u8; 64];
                                buf[16] = w;
                                let n = a.seal_with(c + k as u64, frag, &mut buf, 1).unwrap();
                                out.push(buf[..n].to_vec());
                            }
                        } else {
                            out.push(seal(&a, now, &[w]));
                        }
                    }
                    out
                })
            })
            .collect();
        let all: Vec<Vec<u8>> = workers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let mut seen = HashSet::new();
        for d in &all {
            let Ok(Message::Data(h)) = parse(d) else { panic!("not data") };
            assert!(seen.insert(h.counter), "counter {} used twice", h.counter);
        }
        assert_eq!(a.sent(), all.len() as u64, "every counter handed out was used once");
        // And every datagram opens at the receiver (taken in counter order,
        // so the replay window sees no gap wider than itself).
        let mut all = all;
        all.sort_by_key(|d| match parse(d) {
            Ok(Message::Data(h)) => h.counter,
            _ => u64::MAX,
        });
        let mut opened = 0;
        for d in &all {
            if open(&mut b, now, &mut d.clone()).is_ok() {
                opened += 1;
            }
        }
        assert_eq!(opened, all.len());
    }
}
