//! The protocol core of one tunnel: handshakes, session rotation, timers,
//! fragmentation and the data path, as a state machine without sockets.
//!
//! The shell feeds it datagrams ([`Tunnel::receive`]), frames
//! ([`Tunnel::send_frame`]) and the passing of time ([`Tunnel::tick`]), each
//! with the current `Instant`, and sends what it returns. Nothing in here
//! blocks, reads a clock or touches the network, so every rule below is
//! tested by driving two tunnels against each other in memory.
//!
//! Sessions (like WireGuard): `current` sends and receives; `previous` (the
//! one before the last handshake) only receives, so datagrams in flight
//! during a rekey are not lost; on the responder, `next` is a session made
//! by a handshake whose initiator has not yet proven it holds the keys (its
//! first data datagram on it promotes it to `current`). Only the initiator
//! starts handshakes: when it has no session, when its session is
//! [`REKEY_AFTER_TIME`] old or has sent [`REKEY_AFTER_MESSAGES`], or when
//! it has heard nothing for [`DEAD_PEER_TIMEOUT`]; it repeats the
//! initiation every [`REKEY_TIMEOUT`] until answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::frag::{self, FragStats, Outcome, Plan, Reassembly};
use crate::noise::{self, Identity, Initiation};
use crate::ratelimit::TokenBucket;
use crate::session::{self, Session};
pub use crate::session::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME};
use crate::wire::{self, Fragment, Message, DATA_HEADER_LEN, INIT_LEN, INIT_NOISE_LEN, MAX_DATAGRAM, RESPONSE_LEN, RESPONSE_NOISE_LEN};

/// The initiator repeats an unanswered initiation after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(1);
/// A keepalive goes out after this long without sending anything.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// The initiator re-handshakes after hearing nothing for this long
/// (two missed keepalives and some slack): the responder may have restarted.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(25);
/// Handshake messages processed per second (sustained)…
pub const HANDSHAKES_PER_SECOND: u32 = 50;
/// …and in a burst.
pub const HANDSHAKE_BURST: u32 = 50;

/// Why a datagram or frame was dropped (each has a counter in [`TunnelStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The datagram did not parse.
    Malformed,
    /// Data for a session index we do not have.
    UnknownIndex,
    /// Data that failed authentication.
    Auth,
    /// Data with a replayed or too old counter.
    Replay,
    /// Data for an expired session.
    Expired,
    /// A handshake from a static key that is not our peer.
    WrongPeer,
    /// A handshake initiation that is not newer than the last accepted one.
    StaleInitiation,
    /// A handshake message that failed Noise processing (wrong PSK, forged).
    HandshakeRejected,
    /// A handshake message we did not expect (wrong role, unknown index).
    UnexpectedHandshake,
    /// Over the handshake rate limit.
    RateLimited,
    /// A fragment that does not fit the rules.
    BadFragment,
    /// A frame with no session to send it on (handshake pending).
    NoSession,
    /// A frame with no known peer endpoint (responder before the first handshake).
    NoEndpoint,
    /// A frame larger than [`wire::MAX_FRAME`].
    TooLarge,
    /// The session cannot send any more (counter exhausted).
    Exhausted,
}

/// Counters of the protocol core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Frames sealed and handed out for sending.
    pub tx_frames: u64,
    /// Frames received whole (after reassembly).
    pub rx_frames: u64,
    /// Data datagrams sent (frames, fragments, keepalives).
    pub tx_datagrams: u64,
    /// Data datagrams that authenticated.
    pub rx_datagrams: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// Keepalives received.
    pub keepalives_received: u64,
    /// Handshake initiations sent.
    pub handshake_inits_sent: u64,
    /// Handshake responses sent.
    pub handshake_responses_sent: u64,
    /// Handshakes completed (initiator: response accepted; responder: session confirmed).
    pub handshakes_completed: u64,
    /// Datagrams that did not parse.
    pub rx_malformed: u64,
    /// Data datagrams for unknown session indices.
    pub rx_unknown_index: u64,
    /// Data datagrams that failed authentication.
    pub rx_auth_failed: u64,
    /// Data datagrams rejected by the replay window.
    pub rx_replay: u64,
    /// Data datagrams for expired sessions.
    pub rx_expired: u64,
    /// Handshakes from a static key other than the configured peer.
    pub handshake_wrong_peer: u64,
    /// Replayed (stale) initiations.
    pub handshake_stale: u64,
    /// Handshake messages that failed Noise processing.
    pub handshake_rejected: u64,
    /// Handshake messages out of place.
    pub handshake_unexpected: u64,
    /// Handshake messages over the rate limit.
    pub handshake_rate_limited: u64,
    /// Invalid fragments.
    pub rx_bad_fragment: u64,
    /// Frames dropped for want of a session.
    pub tx_no_session: u64,
    /// Frames dropped for want of a peer endpoint.
    pub tx_no_endpoint: u64,
    /// Frames too large for the tunnel.
    pub tx_too_large: u64,
    /// Frames dropped because the session's counter ran out.
    pub tx_exhausted: u64,
    /// Reassembly counters.
    pub frag: FragStats,
}

impl TunnelStats {
    /// Adds `o`'s counters to these (totals over several tunnels).
    pub fn add(&mut self, o: &TunnelStats) {
        self.tx_frames += o.tx_frames;
        self.rx_frames += o.rx_frames;
        self.tx_datagrams += o.tx_datagrams;
        self.rx_datagrams += o.rx_datagrams;
        self.keepalives_sent += o.keepalives_sent;
        self.keepalives_received += o.keepalives_received;
        self.handshake_inits_sent += o.handshake_inits_sent;
        self.handshake_responses_sent += o.handshake_responses_sent;
        self.handshakes_completed += o.handshakes_completed;
        self.rx_malformed += o.rx_malformed;
        self.rx_unknown_index += o.rx_unknown_index;
        self.rx_auth_failed += o.rx_auth_failed;
        self.rx_replay += o.rx_replay;
        self.rx_expired += o.rx_expired;
        self.handshake_wrong_peer += o.handshake_wrong_peer;
        self.handshake_stale += o.handshake_stale;
        self.handshake_rejected += o.handshake_rejected;
        self.handshake_unexpected += o.handshake_unexpected;
        self.handshake_rate_limited += o.handshake_rate_limited;
        self.rx_bad_fragment += o.rx_bad_fragment;
        self.tx_no_session += o.tx_no_session;
        self.tx_no_endpoint += o.tx_no_endpoint;
        self.tx_too_large += o.tx_too_large;
        self.tx_exhausted += o.tx_exhausted;
        self.frag.evicted += o.frag.evicted;
        self.frag.expired += o.frag.expired;
    }

    /// Received datagrams dropped for any reason.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_malformed
            + self.rx_unknown_index
            + self.rx_auth_failed
            + self.rx_replay
            + self.rx_expired
            + self.handshake_wrong_peer
            + self.handshake_stale
            + self.handshake_rejected
            + self.handshake_unexpected
            + self.handshake_rate_limited
            + self.rx_bad_fragment
    }

    fn count(&mut self, d: Dropped) {
        let c = match d {
            Dropped::Malformed => &mut self.rx_malformed,
            Dropped::UnknownIndex => &mut self.rx_unknown_index,
            Dropped::Auth => &mut self.rx_auth_failed,
            Dropped::Replay => &mut self.rx_replay,
            Dropped::Expired => &mut self.rx_expired,
            Dropped::WrongPeer => &mut self.handshake_wrong_peer,
            Dropped::StaleInitiation => &mut self.handshake_stale,
            Dropped::HandshakeRejected => &mut self.handshake_rejected,
            Dropped::UnexpectedHandshake => &mut self.handshake_unexpected,
            Dropped::RateLimited => &mut self.handshake_rate_limited,
            Dropped::BadFragment => &mut self.rx_bad_fragment,
            Dropped::NoSession => &mut self.tx_no_session,
            Dropped::NoEndpoint => &mut self.tx_no_endpoint,
            Dropped::TooLarge => &mut self.tx_too_large,
            Dropped::Exhausted => &mut self.tx_exhausted,
        };
        *c += 1;
    }
}

/// One or two datagrams to send to one address.
#[derive(Debug, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// Destination.
    pub to: SocketAddr,
    /// First (often only) datagram.
    pub first: &'a [u8],
    /// Second fragment, if the frame was split.
    pub second: Option<&'a [u8]>,
}

impl<'a> Outgoing<'a> {
    /// The datagrams in order.
    pub fn datagrams(&self) -> impl Iterator<Item = &'a [u8]> {
        std::iter::once(self.first).chain(self.second)
    }
}

/// What a received datagram produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Consumed; nothing to do (keepalive, first half of a frame).
    Nothing,
    /// An Ethernet frame to deliver to local ports.
    Frame(&'a [u8]),
    /// A datagram to send back (handshake response, confirming keepalive).
    Reply(Outgoing<'a>),
    /// Dropped, and counted.
    Dropped(Dropped),
}

/// The protocol state of one tunnel to one peer.
pub struct Tunnel {
    id: Identity,
    /// Set on the initiator: where initiations go.
    initiate_to: Option<SocketAddr>,
    endpoint: Option<SocketAddr>,
    current: Option<Session>,
    previous: Option<Session>,
    next: Option<Session>,
    pending: Option<Initiation>,
    /// Responder: newest accepted initiation timestamp.
    last_timestamp: Option<u64>,
    /// Initiator: newest timestamp sent (timestamps strictly increase).
    last_timestamp_sent: u64,
    wall_base: (Instant, u64),
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    last_handshake: Option<Instant>,
    bucket: TokenBucket,
    reassembly: Reassembly,
    out: Box<[u8; 2 * MAX_DATAGRAM]>,
    stats: TunnelStats,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("initiator", &self.initiate_to.is_some())
            .field("endpoint", &self.endpoint)
            .field("current", &self.current)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

impl Tunnel {
    /// A tunnel that initiates handshakes towards `peer`, or (with `None`)
    /// answers them. `wall` is the wall-clock time at `now`: initiation
    /// timestamps are derived from it and must grow across restarts.
    pub fn new(id: Identity, initiate_to: Option<SocketAddr>, now: Instant, wall: SystemTime) -> Self {
        Tunnel {
            id,
            initiate_to,
            endpoint: initiate_to,
            current: None,
            previous: None,
            next: None,
            pending: None,
            last_timestamp: None,
            last_timestamp_sent: 0,
            wall_base: (now, nanos_since_epoch(wall)),
            last_sent: None,
            last_received: None,
            last_handshake: None,
            bucket: TokenBucket::new(HANDSHAKES_PER_SECOND, HANDSHAKE_BURST, now),
            reassembly: Reassembly::new(now),
            out: Box::new([0u8; 2 * MAX_DATAGRAM]),
            stats: TunnelStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> TunnelStats {
        TunnelStats {
            frag: self.reassembly.stats(),
            ..self.stats
        }
    }

    /// True while a session can carry frames.
    pub fn is_established(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| !s.expired(now))
    }

    /// When the last handshake completed.
    pub fn last_handshake(&self) -> Option<Instant> {
        self.last_handshake
    }

    /// Where datagrams go now.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    fn is_initiator(&self) -> bool {
        self.initiate_to.is_some()
    }

    fn fresh_index(&self) -> u32 {
        loop {
            let i: u32 = rand::random();
            let taken = [&self.current, &self.previous, &self.next]
                .iter()
                .any(|s| s.as_ref().is_some_and(|s| s.local_index() == i))
                || self.pending.as_ref().is_some_and(|p| p.local_index() == i);
            if !taken {
                return i;
            }
        }
    }

    fn retire(&mut self, s: Option<Session>) {
        if let Some(s) = s {
            self.reassembly.forget_session(s.local_index());
        }
    }

    /// Processes one received datagram from `src`. Decrypts in place.
    pub fn receive<'a>(&'a mut self, src: SocketAddr, datagram: &'a mut [u8], now: Instant) -> Received<'a> {
        let msg = match wire::parse(datagram) {
            Ok(m) => m,
            Err(e) => {
                tracing::trace!(%src, error = %e, "malformed datagram");
                return self.drop_rx(Dropped::Malformed);
            }
        };
        match msg {
            Message::Init { sender, noise } => {
                let mut n = [0u8; INIT_NOISE_LEN];
                n.copy_from_slice(noise);
                self.on_init(src, sender, &n, now)
            }
            Message::Response { sender, receiver, noise } => {
                let mut n = [0u8; RESPONSE_NOISE_LEN];
                n.copy_from_slice(noise);
                self.on_response(sender, receiver, &n, now)
            }
            Message::Data(header) => self.on_data(src, header, datagram, now),
        }
    }

    fn drop_rx<'a>(&mut self, d: Dropped) -> Received<'a> {
        self.stats.count(d);
        Received::Dropped(d)
    }

    fn on_init<'a>(&'a mut self, src: SocketAddr, sender: u32, noise: &[u8; INIT_NOISE_LEN], now: Instant) -> Received<'a> {
        if self.is_initiator() {
            return self.drop_rx(Dropped::UnexpectedHandshake);
        }
        if !self.bucket.take(now) {
            return self.drop_rx(Dropped::RateLimited);
        }
        let index = self.fresh_index();
        let mut reply = [0u8; RESPONSE_NOISE_LEN];
        match noise::respond(&self.id, sender, noise, self.last_timestamp, index, now, &mut reply) {
            Ok(r) => {
                self.last_timestamp = Some(r.timestamp);
                let old = self.next.replace(r.session);
                self.retire(old);
                let mut msg = [0u8; RESPONSE_LEN];
                let n = wire::write_response(&mut msg, index, sender, &reply);
                self.out[..n].copy_from_slice(&msg);
                self.stats.handshake_responses_sent += 1;
                tracing::debug!(%src, "answered handshake initiation");
                Received::Reply(Outgoing {
                    to: src,
                    first: &self.out[..n],
                    second: None,
                })
            }
            Err(e) => {
                let d = match e {
                    noise::Error::WrongPeer => Dropped::WrongPeer,
                    noise::Error::Stale { .. } => Dropped::StaleInitiation,
                    _ => Dropped::HandshakeRejected,
                };
                tracing::debug!(%src, error = %e, "handshake initiation dropped");
                self.drop_rx(d)
            }
        }
    }

    fn on_response<'a>(&'a mut self, sender: u32, receiver: u32, noise: &[u8; RESPONSE_NOISE_LEN], now: Instant) -> Received<'a> {
        if self.pending.as_ref().is_none_or(|p| p.local_index() != receiver) {
            return self.drop_rx(Dropped::UnexpectedHandshake);
        }
        if !self.bucket.take(now) {
            return self.drop_rx(Dropped::RateLimited);
        }
        let Some(pending) = self.pending.as_mut() else {
            return self.drop_rx(Dropped::UnexpectedHandshake);
        };
        match pending.complete(sender, noise, now) {
            Ok(session) => {
                self.pending = None;
                let old_prev = self.previous.take();
                self.retire(old_prev);
                self.previous = self.current.replace(session);
                self.last_handshake = Some(now);
                self.stats.handshakes_completed += 1;
                tracing::info!(endpoint = ?self.endpoint, "handshake complete (initiator)");
                // Confirm the session to the responder right away: it sends
                // on the new session only after hearing from us on it.
                match self.seal_keepalive(now) {
                    Some(out) => Received::Reply(out),
                    None => Received::Nothing,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "handshake response rejected");
                self.drop_rx(Dropped::HandshakeRejected)
            }
        }
    }

    fn on_data<'a>(&'a mut self, src: SocketAddr, header: wire::DataHeader, datagram: &'a mut [u8], now: Instant) -> Received<'a> {
        let idx = header.receiver;
        let which = if self.current.as_ref().is_some_and(|s| s.local_index() == idx) {
            0
        } else if self.previous.as_ref().is_some_and(|s| s.local_index() == idx) {
            1
        } else if self.next.as_ref().is_some_and(|s| s.local_index() == idx) {
            2
        } else {
            return self.drop_rx(Dropped::UnknownIndex);
        };
        let slot = match which {
            0 => &mut self.current,
            1 => &mut self.previous,
            _ => &mut self.next,
        };
        let Some(session) = slot.as_mut() else {
            return self.drop_rx(Dropped::UnknownIndex);
        };
        let plain = match session.open(now, &header, datagram) {
            Ok(p) => p,
            Err(e) => {
                let d = match e {
                    session::Error::Replay(_) => Dropped::Replay,
                    session::Error::Expired => Dropped::Expired,
                    _ => Dropped::Auth,
                };
                self.stats.count(d);
                return Received::Dropped(d);
            }
        };
        self.stats.rx_datagrams += 1;
        self.last_received = Some(now);
        if !self.is_initiator() && self.endpoint != Some(src) {
            // Roaming: answer where the peer's authenticated datagrams come from.
            tracing::info!(%src, "peer endpoint changed");
            self.endpoint = Some(src);
        }
        if which == 2 {
            let old_prev = self.previous.take();
            self.retire(old_prev);
            self.previous = self.current.take();
            self.current = self.next.take();
            self.last_handshake = Some(now);
            self.stats.handshakes_completed += 1;
            tracing::info!(%src, "handshake complete (responder)");
        }
        match header.fragment {
            Fragment::Whole if plain.is_empty() => {
                self.stats.keepalives_received += 1;
                Received::Nothing
            }
            Fragment::Whole => {
                self.stats.rx_frames += 1;
                Received::Frame(plain)
            }
            f => match self.reassembly.insert(idx, header.counter, f, plain, now) {
                Outcome::Complete(frame) => {
                    self.stats.rx_frames += 1;
                    Received::Frame(frame)
                }
                Outcome::Pending => Received::Nothing,
                Outcome::Invalid => {
                    self.stats.count(Dropped::BadFragment);
                    Received::Dropped(Dropped::BadFragment)
                }
            },
        }
    }

    fn seal_keepalive(&mut self, now: Instant) -> Option<Outgoing<'_>> {
        let to = self.endpoint?;
        let s = self.current.as_mut()?;
        let n = s.seal(now, Fragment::Whole, &mut self.out[..], 0).ok()?;
        self.last_sent = Some(now);
        self.stats.keepalives_sent += 1;
        self.stats.tx_datagrams += 1;
        Some(Outgoing {
            to,
            first: &self.out[..n],
            second: None,
        })
    }

    /// Encrypts an Ethernet frame for the peer (one or two datagrams).
    pub fn send_frame(&mut self, frame: &[u8], now: Instant) -> Result<Outgoing<'_>, Dropped> {
        let result = self.seal_frame(frame, now);
        if let Err(d) = result {
            self.stats.count(d);
        }
        result.map(|(to, a, b)| {
            let (first, rest) = self.out.split_at(MAX_DATAGRAM);
            Outgoing {
                to,
                first: &first[..a],
                second: b.map(|b| &rest[..b]),
            }
        })
    }

    fn seal_frame(&mut self, frame: &[u8], now: Instant) -> Result<(SocketAddr, usize, Option<usize>), Dropped> {
        let plan = frag::plan(frame.len());
        if plan == Plan::TooLarge {
            return Err(Dropped::TooLarge);
        }
        let Some(s) = self.current.as_mut().filter(|s| !s.expired(now)) else {
            return Err(Dropped::NoSession);
        };
        let Some(to) = self.endpoint else {
            return Err(Dropped::NoEndpoint);
        };
        let err = |e: session::Error| match e {
            session::Error::Expired => Dropped::NoSession,
            _ => Dropped::Exhausted,
        };
        let (first_buf, second_buf) = self.out.split_at_mut(MAX_DATAGRAM);
        let lens = match plan {
            Plan::Whole | Plan::TooLarge => {
                first_buf[DATA_HEADER_LEN..DATA_HEADER_LEN + frame.len()].copy_from_slice(frame);
                (s.seal(now, Fragment::Whole, first_buf, frame.len()).map_err(err)?, None)
            }
            Plan::Two { first } => {
                let (a, b) = frame.split_at(first);
                first_buf[DATA_HEADER_LEN..DATA_HEADER_LEN + a.len()].copy_from_slice(a);
                second_buf[DATA_HEADER_LEN..DATA_HEADER_LEN + b.len()].copy_from_slice(b);
                // Consecutive counters, taken together (another worker may
                // seal on this session meanwhile): the receiver pairs the
                // halves by them.
                let c = s.reserve(2).map_err(err)?;
                let na = s.seal_with(c, Fragment::First, first_buf, a.len()).map_err(err)?;
                let nb = s.seal_with(c + 1, Fragment::Second, second_buf, b.len()).map_err(err)?;
                self.stats.tx_datagrams += 1;
                (na, Some(nb))
            }
        };
        self.stats.tx_datagrams += 1;
        self.stats.tx_frames += 1;
        self.last_sent = Some(now);
        Ok((to, lens.0, lens.1))
    }

    /// Runs the timers: expires sessions and fragments, and returns the next
    /// datagram that is due (initiation, keepalive), if any. Call it until it
    /// returns `None` whenever time has passed.
    pub fn tick(&mut self, now: Instant) -> Option<Outgoing<'_>> {
        self.reassembly.expire(now);
        if self.current.as_ref().is_some_and(|s| s.expired(now)) {
            tracing::info!("session expired");
            let s = self.current.take();
            self.retire(s);
        }
        if self.previous.as_ref().is_some_and(|s| s.expired(now)) {
            let s = self.previous.take();
            self.retire(s);
        }
        if self.next.as_ref().is_some_and(|s| s.expired(now)) {
            let s = self.next.take();
            self.retire(s);
        }
        if let Some(peer) = self.initiate_to {
            if self.needs_handshake(now)
                && self
                    .pending
                    .as_ref()
                    .is_none_or(|p| now.saturating_duration_since(p.sent_at()) >= REKEY_TIMEOUT)
            {
                return self.start_handshake(peer, now);
            }
        }
        let idle = self.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= KEEPALIVE);
        let since_created = self.current.as_ref().map(|s| now.saturating_duration_since(s.created()));
        if since_created.is_some_and(|c| c >= KEEPALIVE) && idle {
            return self.seal_keepalive(now);
        }
        None
    }

    fn needs_handshake(&self, now: Instant) -> bool {
        match &self.current {
            None => true,
            Some(s) => {
                let heard = self.last_received.map_or(s.created(), |r| r.max(s.created()));
                s.wants_rekey(now) || now.saturating_duration_since(heard) >= DEAD_PEER_TIMEOUT
            }
        }
    }

    fn start_handshake(&mut self, peer: SocketAddr, now: Instant) -> Option<Outgoing<'_>> {
        let index = self.fresh_index();
        let wall = self
            .wall_base
            .1
            .saturating_add(now.saturating_duration_since(self.wall_base.0).as_nanos().min(u64::MAX as u128) as u64);
        let timestamp = wall.max(self.last_timestamp_sent + 1);
        let mut noise = [0u8; INIT_NOISE_LEN];
        match noise::initiate(&self.id, index, timestamp, now, &mut noise) {
            Ok(ini) => {
                self.pending = Some(ini);
                self.last_timestamp_sent = timestamp;
                let mut msg = [0u8; INIT_LEN];
                let n = wire::write_init(&mut msg, index, &noise);
                self.out[..n].copy_from_slice(&msg);
                self.stats.handshake_inits_sent += 1;
                tracing::debug!(%peer, "sent handshake initiation");
                Some(Outgoing {
                    to: peer,
                    first: &self.out[..n],
                    second: None,
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start handshake");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticKeypair;

    const I_ADDR: &str = "192.0.2.1:5000";
    const R_ADDR: &str = "192.0.2.2:6000";

    struct Pair {
        i: Tunnel,
        r: Tunnel,
        now: Instant,
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn identities(psk_r: [u8; 32]) -> (Identity, Identity) {
        let a = StaticKeypair::generate();
        let b = StaticKeypair::generate();
        (
            Identity::new(a.clone(), b.public, [1; 32]).unwrap(),
            Identity::new(b, a.public, psk_r).unwrap(),
        )
    }

    fn pair() -> Pair {
        let (ia, ib) = identities([1; 32]);
        let now = Instant::now();
        let wall = SystemTime::now();
        Pair {
            i: Tunnel::new(ia, Some(addr(R_ADDR)), now, wall),
            r: Tunnel::new(ib, None, now, wall),
            now,
        }
    }

    fn owned(o: Outgoing<'_>) -> (SocketAddr, Vec<Vec<u8>>) {
        (o.to, o.datagrams().map(|d| d.to_vec()).collect())
    }

    /// What one delivery produced, owned.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Nothing,
        Frame(Vec<u8>),
        Reply(SocketAddr, Vec<Vec<u8>>),
        Dropped(Dropped),
    }

    fn deliver(t: &mut Tunnel, src: &str, d: &[u8], now: Instant) -> Got {
        let mut buf = d.to_vec();
        match t.receive(addr(src), &mut buf, now) {
            Received::Nothing => Got::Nothing,
            Received::Frame(f) => Got::Frame(f.to_vec()),
            Received::Reply(o) => {
                let (to, ds) = owned(o);
                Got::Reply(to, ds)
            }
            Received::Dropped(d) => Got::Dropped(d),
        }
    }

    /// Runs the handshake to completion; returns the initiation datagram.
    fn establish(p: &mut Pair) -> Vec<u8> {
        let (to, init) = owned(p.i.tick(p.now).expect("initiation"));
        assert_eq!(to, addr(R_ADDR));
        assert_eq!(init[0].len(), INIT_LEN);
        let Got::Reply(to, resp) = deliver(&mut p.r, I_ADDR, &init[0], p.now) else {
            panic!("no response")
        };
        assert_eq!(to, addr(I_ADDR));
        let Got::Reply(to, ka) = deliver(&mut p.i, R_ADDR, &resp[0], p.now) else {
            panic!("no keepalive")
        };
        assert_eq!(to, addr(R_ADDR));
        assert!(p.i.is_established(p.now));
        assert!(p.r.next.is_some(), "responder waits for confirmation");
        assert_eq!(deliver(&mut p.r, I_ADDR, &ka[0], p.now), Got::Nothing);
        assert!(p.r.next.is_none());
        assert!(p.r.is_established(p.now));
        init[0].clone()
    }

    fn send(t: &mut Tunnel, frame: &[u8], now: Instant) -> Vec<Vec<u8>> {
        owned(t.send_frame(frame, now).expect("sealed")).1
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn handshake_then_frames_both_ways() {
        let mut p = pair();
        establish(&mut p);
        let f = frame(60, 1);
        let d = send(&mut p.i, &f, p.now);
        assert_eq!(d.len(), 1);
        assert_eq!(deliver(&mut p.r, I_ADDR, &d[0], p.now), Got::Frame(f.clone()));
        let d = send(&mut p.r, &f, p.now);
        assert_eq!(deliver(&mut p.i, R_ADDR, &d[0], p.now), Got::Frame(f));
        let (si, sr) = (p.i.stats(), p.r.stats());
        assert_eq!((si.handshakes_completed, sr.handshakes_completed), (1, 1));
        assert_eq!((si.tx_frames, si.rx_frames, sr.tx_frames, sr.rx_frames), (1, 1, 1, 1));
        assert_eq!(si.rx_dropped() + sr.rx_dropped(), 0);
    }

    #[test]
    fn large_frames_are_fragmented_and_reassembled() {
        let mut p = pair();
        establish(&mut p);
        for len in [1420, 1421, 1514, 1518, wire::MAX_FRAME] {
            let f = frame(len, 7);
            let d = send(&mut p.i, &f, p.now);
            assert_eq!(d.len(), if len > 1420 { 2 } else { 1 }, "{len}");
            assert!(d.iter().all(|d| d.len() <= MAX_DATAGRAM));
            // Deliver in reverse order: still one frame.
            let mut got = vec![];
            for dg in d.iter().rev() {
                match deliver(&mut p.r, I_ADDR, dg, p.now) {
                    Got::Nothing => {}
                    Got::Frame(x) => got.push(x),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, vec![f], "{len}");
        }
        assert_eq!(
            p.i.send_frame(&frame(wire::MAX_FRAME + 1, 0), p.now).unwrap_err(),
            Dropped::TooLarge
        );
        assert_eq!(p.i.stats().tx_too_large, 1);
    }

    #[test]
    fn replayed_and_tampered_data_rejected() {
        let mut p = pair();
        establish(&mut p);
        let f = frame(100, 3);
        let d = send(&mut p.i, &f, p.now);
        let mut tampered = d[0].clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert_eq!(deliver(&mut p.r, I_ADDR, &tampered, p.now), Got::Dropped(Dropped::Auth));
        assert_eq!(deliver(&mut p.r, I_ADDR, &d[0], p.now), Got::Frame(f));
        assert_eq!(deliver(&mut p.r, I_ADDR, &d[0], p.now), Got::Dropped(Dropped::Replay));
        let mut wrong_index = d[0].clone();
        wrong_index[4] ^= 0xff;
        assert_eq!(deliver(&mut p.r, I_ADDR, &wrong_index, p.now), Got::Dropped(Dropped::UnknownIndex));
        assert_eq!(deliver(&mut p.r, I_ADDR, b"garbage", p.now), Got::Dropped(Dropped::Malformed));
        let s = p.r.stats();
        assert_eq!((s.rx_auth_failed, s.rx_replay, s.rx_unknown_index, s.rx_malformed), (1, 1, 1, 1));
        assert_eq!(s.rx_dropped(), 4);
    }

    #[test]
    fn wrong_static_key_learns_nothing() {
        let mut p = pair();
        // An intruder who knows the responder's public key and PSK but is not the peer.
        let intruder = StaticKeypair::generate();
        let r_public = *p.i.id.peer_public();
        let mut bad = Tunnel::new(
            Identity::new(intruder, r_public, [1; 32]).unwrap(),
            Some(addr(R_ADDR)),
            p.now,
            SystemTime::now(),
        );
        let (_, init) = owned(bad.tick(p.now).unwrap());
        assert_eq!(
            deliver(&mut p.r, "203.0.113.9:1", &init[0], p.now),
            Got::Dropped(Dropped::WrongPeer)
        );
        assert_eq!(p.r.stats().handshake_wrong_peer, 1);
        assert_eq!(p.r.endpoint(), None);
        assert!(p.r.next.is_none() && p.r.last_timestamp.is_none());
        // The genuine peer still gets through.
        establish(&mut p);
    }

    #[test]
    fn wrong_psk_never_establishes() {
        let (ia, ib) = identities([2; 32]);
        let now = Instant::now();
        let mut i = Tunnel::new(ia, Some(addr(R_ADDR)), now, SystemTime::now());
        let mut r = Tunnel::new(ib, None, now, SystemTime::now());
        let (_, init) = owned(i.tick(now).unwrap());
        let Got::Reply(_, resp) = deliver(&mut r, I_ADDR, &init[0], now) else {
            panic!()
        };
        assert_eq!(deliver(&mut i, R_ADDR, &resp[0], now), Got::Dropped(Dropped::HandshakeRejected));
        assert!(!i.is_established(now) && !r.is_established(now));
        assert_eq!(i.send_frame(&[0u8; 60], now).unwrap_err(), Dropped::NoSession);
        assert_eq!(i.stats().handshake_rejected, 1);
    }

    #[test]
    fn replayed_initiation_is_dropped() {
        let mut p = pair();
        let init = establish(&mut p);
        assert_eq!(deliver(&mut p.r, I_ADDR, &init, p.now), Got::Dropped(Dropped::StaleInitiation));
        assert!(p.r.is_established(p.now), "replay did not disturb the session");
    }

    #[test]
    fn initiation_is_retransmitted_until_answered() {
        let mut p = pair();
        let t0 = p.now;
        assert!(p.i.tick(t0).is_some());
        assert!(p.i.tick(t0).is_none());
        assert!(p.i.tick(t0 + Duration::from_millis(999)).is_none());
        // The responder "starts later": earlier initiations are lost.
        for k in 1..5u64 {
            let t = t0 + REKEY_TIMEOUT * k as u32;
            assert!(p.i.tick(t).is_some(), "retry {k}");
        }
        assert_eq!(p.i.stats().handshake_inits_sent, 5);
        p.now = t0 + Duration::from_secs(6);
        establish(&mut p);
        // An answer to an old initiation is no longer expected.
    }

    #[test]
    fn stale_response_is_unexpected() {
        let mut p = pair();
        let (_, init1) = owned(p.i.tick(p.now).unwrap());
        let Got::Reply(_, resp1) = deliver(&mut p.r, I_ADDR, &init1[0], p.now) else {
            panic!()
        };
        let later = p.now + REKEY_TIMEOUT;
        let (_, init2) = owned(p.i.tick(later).unwrap());
        assert_eq!(
            deliver(&mut p.i, R_ADDR, &resp1[0], later),
            Got::Dropped(Dropped::UnexpectedHandshake)
        );
        let Got::Reply(_, resp2) = deliver(&mut p.r, I_ADDR, &init2[0], later) else {
            panic!()
        };
        assert!(matches!(deliver(&mut p.i, R_ADDR, &resp2[0], later), Got::Reply(..)));
    }

    #[test]
    fn keepalive_after_silence() {
        let mut p = pair();
        establish(&mut p);
        let t = p.now + KEEPALIVE - Duration::from_millis(1);
        assert!(p.i.tick(t).is_none());
        assert!(p.r.tick(t).is_none());
        let t = p.now + KEEPALIVE;
        let (_, ka_i) = owned(p.i.tick(t).expect("initiator keepalive"));
        let (_, ka_r) = owned(p.r.tick(t).expect("responder keepalive"));
        assert_eq!(ka_i[0].len(), wire::DATA_OVERHEAD);
        assert!(p.i.tick(t).is_none());
        assert_eq!(deliver(&mut p.r, I_ADDR, &ka_i[0], t), Got::Nothing);
        assert_eq!(deliver(&mut p.i, R_ADDR, &ka_r[0], t), Got::Nothing);
        // One confirmed the handshake, one was this keepalive.
        assert_eq!(p.r.stats().keepalives_received, 2);
    }

    #[test]
    fn rekey_keeps_traffic_flowing() {
        let mut p = pair();
        establish(&mut p);
        let old_index = p.i.current.as_ref().unwrap().local_index();
        // Keep the peer alive with keepalives until rekey time.
        let t = p.now + REKEY_AFTER_TIME;
        let f = frame(80, 9);
        // A frame sealed on the old session, still in flight during the rekey.
        let in_flight = send(&mut p.r, &f, t);
        p.i.last_received = Some(t);
        p.now = t;
        establish(&mut p);
        assert_ne!(p.i.current.as_ref().unwrap().local_index(), old_index);
        // The previous session still receives.
        assert_eq!(deliver(&mut p.i, R_ADDR, &in_flight[0], t), Got::Frame(f.clone()));
        // New traffic uses the new session both ways.
        let d = send(&mut p.i, &f, t);
        assert_eq!(deliver(&mut p.r, I_ADDR, &d[0], t), Got::Frame(f.clone()));
        let d = send(&mut p.r, &f, t);
        assert_eq!(deliver(&mut p.i, R_ADDR, &d[0], t), Got::Frame(f));
        assert_eq!(p.i.stats().handshakes_completed, 2);
    }

    #[test]
    fn responder_keeps_old_session_until_confirmed() {
        let mut p = pair();
        establish(&mut p);
        let t = p.now + Duration::from_secs(1);
        // Force a new handshake (e.g. initiator restart is similar).
        p.i.current = None;
        let (_, init) = owned(p.i.tick(t).unwrap());
        let Got::Reply(_, resp) = deliver(&mut p.r, I_ADDR, &init[0], t) else {
            panic!()
        };
        assert!(p.r.next.is_some());
        let r_cur = p.r.current.as_ref().unwrap().local_index();
        // Before confirmation the responder still sends on the old session.
        let d = send(&mut p.r, &frame(60, 1), t);
        assert_eq!(
            u32::from_le_bytes(d[0][4..8].try_into().unwrap()),
            p.r.current.as_ref().unwrap().remote_index()
        );
        assert_eq!(p.r.current.as_ref().unwrap().local_index(), r_cur);
        let Got::Reply(_, ka) = deliver(&mut p.i, R_ADDR, &resp[0], t) else {
            panic!()
        };
        assert_eq!(deliver(&mut p.r, I_ADDR, &ka[0], t), Got::Nothing);
        assert_ne!(p.r.current.as_ref().unwrap().local_index(), r_cur);
    }

    #[test]
    fn sessions_expire_and_initiator_rehandshakes() {
        let mut p = pair();
        establish(&mut p);
        let t = p.now + REJECT_AFTER_TIME;
        assert!(p.r.tick(t).is_none());
        assert!(!p.r.is_established(t));
        assert_eq!(p.r.send_frame(&frame(60, 0), t).unwrap_err(), Dropped::NoSession);
        let (_, d) = owned(p.i.tick(t).expect("new initiation"));
        assert_eq!(d[0].len(), INIT_LEN);
        assert!(!p.i.is_established(t));
    }

    #[test]
    fn dead_peer_triggers_handshake() {
        let mut p = pair();
        establish(&mut p);
        // Keepalives flow out but nothing comes back (responder restarted).
        let t = p.now + DEAD_PEER_TIMEOUT;
        let mut saw_init = false;
        while let Some(o) = p.i.tick(t) {
            if o.first.len() == INIT_LEN {
                saw_init = true;
            }
        }
        assert!(saw_init);
    }

    #[test]
    fn restarts_on_either_side_recover() {
        let mut p = pair();
        establish(&mut p);
        // Initiator restarts: a fresh state machine with the same keys and a
        // later wall clock; the responder accepts its newer initiation.
        let later = p.now + Duration::from_secs(3);
        let id_i = p.i.id.clone();
        p.i = Tunnel::new(id_i, Some(addr(R_ADDR)), later, SystemTime::now() + Duration::from_secs(3));
        p.now = later;
        establish(&mut p);
        // Responder restarts: it knows no sessions; the initiator's data is
        // dropped until the dead-peer timer makes it handshake again.
        let id_r = p.r.id.clone();
        p.r = Tunnel::new(id_r, None, p.now, SystemTime::now());
        let d = send(&mut p.i, &frame(60, 1), p.now);
        assert_eq!(deliver(&mut p.r, I_ADDR, &d[0], p.now), Got::Dropped(Dropped::UnknownIndex));
        p.now += DEAD_PEER_TIMEOUT;
        establish(&mut p);
        let f = frame(70, 2);
        let d = send(&mut p.i, &f, p.now);
        assert_eq!(deliver(&mut p.r, I_ADDR, &d[0], p.now), Got::Frame(f));
    }

    #[test]
    fn responder_roams_to_last_authenticated_source() {
        let mut p = pair();
        establish(&mut p);
        assert_eq!(p.r.endpoint(), Some(addr(I_ADDR)));
        let f = frame(60, 2);
        let d = send(&mut p.i, &f, p.now);
        // A forged datagram from elsewhere does not move the endpoint...
        let mut forged = d[0].clone();
        forged[20] ^= 1;
        deliver(&mut p.r, "198.51.100.1:9", &forged, p.now);
        assert_eq!(p.r.endpoint(), Some(addr(I_ADDR)));
        // ...an authenticated one does.
        assert_eq!(deliver(&mut p.r, "198.51.100.7:4444", &d[0], p.now), Got::Frame(f.clone()));
        assert_eq!(p.r.endpoint(), Some(addr("198.51.100.7:4444")));
        let o = p.r.send_frame(&f, p.now).unwrap();
        assert_eq!(o.to, addr("198.51.100.7:4444"));
    }

    #[test]
    fn handshake_flood_is_rate_limited() {
        let mut p = pair();
        let mut limited = 0;
        for _ in 0..(HANDSHAKE_BURST + 20) {
            let mut junk = vec![0u8; INIT_LEN];
            junk[0] = wire::VERSION;
            junk[1] = 1;
            if deliver(&mut p.r, I_ADDR, &junk, p.now) == Got::Dropped(Dropped::RateLimited) {
                limited += 1;
            }
        }
        assert_eq!(limited, 20);
        assert_eq!(p.r.stats().handshake_rate_limited, 20);
        // After a second, handshakes are processed again.
        p.now += Duration::from_secs(1);
        establish(&mut p);
    }

    #[test]
    fn unexpected_handshakes() {
        let mut p = pair();
        let init = establish(&mut p);
        // The initiator does not answer initiations.
        assert_eq!(deliver(&mut p.i, R_ADDR, &init, p.now), Got::Dropped(Dropped::UnexpectedHandshake));
        // The responder does not take responses.
        let mut resp = vec![0u8; RESPONSE_LEN];
        resp[0] = wire::VERSION;
        resp[1] = 2;
        assert_eq!(deliver(&mut p.r, I_ADDR, &resp, p.now), Got::Dropped(Dropped::UnexpectedHandshake));
    }

    #[test]
    fn responder_without_peer_cannot_send() {
        let p = pair();
        let mut r = p.r;
        assert_eq!(r.send_frame(&frame(60, 0), p.now).unwrap_err(), Dropped::NoSession);
        assert!(r.tick(p.now + Duration::from_secs(100)).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Arbitrary datagrams never panic, never produce frames, and are counted.
        #[test]
        fn garbage_never_delivers(datagrams in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 1..20)) {
            let mut p = pair();
            establish(&mut p);
            for d in datagrams {
                let got = deliver(&mut p.r, I_ADDR, &d, p.now);
                proptest::prop_assert!(!matches!(got, Got::Frame(_)));
            }
        }
    }
}
