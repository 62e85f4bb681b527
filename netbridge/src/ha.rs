//! High availability: two (or more) LCGs for one LAN segment, of which only
//! one forwards at any time. Pure state machines with time passed in; the
//! bridge shell carries their messages inside the tunnel and asks them about
//! every frame.
//!
//! The cloud node arbitrates ([`Arbiter`]): it grants a **lease** of
//! [`LEASE`] to one member and renews it while that member keeps asking
//! (every [`REQUEST_INTERVAL`]). Each change of holder increments the
//! **epoch**, the fencing token. Another member is denied until the lease
//! has expired *at the arbiter*; then the next request takes it over.
//!
//! Fencing, so that two LCGs never carry a MAC at the same time:
//! - a member ([`Member`]) counts its lease from the moment it *sent* the
//!   request that was granted, and gives it up [`MEMBER_MARGIN`] early, so its
//!   own view always ends before the arbiter's (which starts when the request
//!   arrived): the old holder has stopped before the next one may start;
//! - the arbiter forwards frames only for the holder's tunnel
//!   ([`Arbiter::may_forward`]): a member that lost its lease but still sends
//!   is not believed;
//! - an arbiter that (re)starts grants nothing for one [`LEASE`]: a member that
//!   held a lease from its previous life has let it lapse by then.
//!
//! **One lease per cloud.** An LCG has one tunnel per cloud node, and each
//! cloud node arbitrates its own lease ([`Members`] keeps one [`Member`] per
//! tunnel). The LCG forwards a frame into, or out of, a tunnel only while it
//! holds that tunnel's lease; an LCG that holds none forwards nothing. Two
//! LCGs may hold the leases of different clouds (a partition between one LCG
//! and one cloud moves only that cloud): each cloud still hears one LCG.
//!
//! **Members are known by their key.** The arbiter names a member by the
//! static Noise public key of its tunnel ([`MemberId`]), so one arbiter can
//! serve the member tunnels of one bridge or of several.
//!
//! **Engaged on first request.** Until some member has asked for a lease,
//! an arbiter lets every tunnel forward ([`Arbiter::is_engaged`]): a cloud
//! node can always run one, and an LCG without HA keeps working. The first
//! request engages it for the rest of its life (it never disengages).
//!
//! The standby keeps its session up (handshakes, keepalives, lease requests)
//! but forwards nothing either way and does not probe or raise alarms on the
//! LAN; when it is granted the lease it announces the carried MACs
//! (gratuitous ARP / unsolicited NA) so the LAN's switches relearn at once.
//!
//! Messages ride inside the encrypted tunnel as 60-byte control frames
//! ([`Control`]; `PROTOCOL.md`, "HA control frames"); the shell never lets a
//! frame that looks like one in from a local port.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::filter::PeerId;

/// How long a grant lasts at the arbiter.
pub const LEASE: Duration = Duration::from_millis(1500);
/// How often a member asks for (or renews) the lease.
pub const REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// How much earlier than the arbiter a member gives its lease up.
pub const MEMBER_MARGIN: Duration = Duration::from_millis(200);
/// Length of a control frame.
pub const CONTROL_LEN: usize = 60;
/// EtherType of control frames (IEEE 802 local experimental, as the probes).
pub const CONTROL_ETHERTYPE: u16 = 0x88b5;
/// Bytes that open a control frame's payload.
const CONTROL_MAGIC: &[u8; 8] = b"ISTHMUSH";
/// Outstanding requests remembered (to find a grant's send time).
const PENDING: usize = 16;

/// Identifies a member at an arbiter: the static Noise public key of the
/// member's tunnel (authenticated by the handshake).
pub type MemberId = [u8; 32];

/// A member's key, short, for logs.
fn short(m: &MemberId) -> String {
    m[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A lease message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Member → arbiter: grant me (or renew) the lease. `epoch`: the epoch
    /// the member believes it holds (0: none); `seq`: echoed in the answer.
    Request {
        /// Epoch held, 0 if none.
        epoch: u64,
        /// Request number.
        seq: u64,
    },
    /// Arbiter → member: the lease is yours for `lease_ms`, counted from
    /// when request `seq` arrived, under fencing token `epoch`.
    Grant {
        /// Fencing token.
        epoch: u64,
        /// The request answered.
        seq: u64,
        /// Lease length in milliseconds.
        lease_ms: u32,
    },
    /// Arbiter → member: another member holds the lease (`epoch`), or the
    /// arbiter is in its start-up grace period.
    Deny {
        /// Current epoch.
        epoch: u64,
        /// The request answered.
        seq: u64,
    },
}

/// Does `frame` look like a control frame (EtherType and magic)? Used to
/// refuse such frames from local ports, whatever the rest says.
pub fn is_control(frame: &[u8]) -> bool {
    frame.len() >= 22 && frame[12..14] == CONTROL_ETHERTYPE.to_be_bytes() && &frame[14..22] == CONTROL_MAGIC
}

impl Control {
    /// The 60-byte frame: destination and source all-zero (it never leaves
    /// a bridge), EtherType 0x88B5, `ISTHMUSH`, kind, 3 zero bytes, epoch
    /// (u64 LE), seq (u64 LE), lease_ms (u32 LE), zero padding.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut f = [0u8; CONTROL_LEN];
        f[12..14].copy_from_slice(&CONTROL_ETHERTYPE.to_be_bytes());
        f[14..22].copy_from_slice(CONTROL_MAGIC);
        let (kind, epoch, seq, lease_ms) = match *self {
            Control::Request { epoch, seq } => (1u8, epoch, seq, 0u32),
            Control::Grant { epoch, seq, lease_ms } => (2, epoch, seq, lease_ms),
            Control::Deny { epoch, seq } => (3, epoch, seq, 0),
        };
        f[22] = kind;
        f[26..34].copy_from_slice(&epoch.to_le_bytes());
        f[34..42].copy_from_slice(&seq.to_le_bytes());
        f[42..46].copy_from_slice(&lease_ms.to_le_bytes());
        f
    }

    /// Parses a control frame; `None` if `frame` is not one or is malformed
    /// (wrong length, unknown kind, non-zero reserved bytes).
    pub fn parse(frame: &[u8]) -> Option<Control> {
        if frame.len() != CONTROL_LEN || !is_control(frame) || frame[23..26] != [0, 0, 0] {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(frame[at..at + 8].try_into().unwrap_or([0; 8]));
        let (epoch, seq) = (u64_at(26), u64_at(34));
        let lease_ms = u32::from_le_bytes(frame[42..46].try_into().unwrap_or([0; 4]));
        match frame[22] {
            1 if lease_ms == 0 => Some(Control::Request { epoch, seq }),
            2 => Some(Control::Grant { epoch, seq, lease_ms }),
            3 if lease_ms == 0 => Some(Control::Deny { epoch, seq }),
            _ => None,
        }
    }
}

/// What a message did to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing visible changed.
    None,
    /// The member just became active (announce the carried MACs).
    BecameActive {
        /// The new fencing token.
        epoch: u64,
    },
    /// The arbiter said someone else holds the lease: stop at once.
    Fenced,
}

/// Counters of a member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Requests sent.
    pub requests: u64,
    /// Grants received (incl. renewals).
    pub grants: u64,
    /// Denials received.
    pub denials: u64,
    /// Times this member went from standby to active.
    pub takeovers: u64,
    /// Grants that matched no outstanding request (late or unknown).
    pub stale_grants: u64,
}

/// One LCG of an HA pair.
#[derive(Debug)]
pub struct Member {
    epoch: u64,
    valid_until: Option<Instant>,
    next_request: Option<Instant>,
    seq: u64,
    pending: [(u64, Option<Instant>); PENDING],
    stats: MemberStats,
}

impl Default for Member {
    fn default() -> Self {
        Self::new()
    }
}

impl Member {
    /// A member in standby.
    pub fn new() -> Self {
        Member {
            epoch: 0,
            valid_until: None,
            next_request: None,
            seq: 0,
            pending: [(0, None); PENDING],
            stats: MemberStats::default(),
        }
    }

    /// True while this member holds the lease: it may forward.
    pub fn is_active(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|t| now < t)
    }

    /// The epoch of the lease held (or last held).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The counters.
    pub fn stats(&self) -> MemberStats {
        self.stats
    }

    /// A request to send into the tunnel, when one is due.
    pub fn request_due(&mut self, now: Instant) -> Option<Control> {
        if self.next_request.is_some_and(|t| now < t) {
            return None;
        }
        self.next_request = Some(now + REQUEST_INTERVAL);
        self.seq += 1;
        self.pending[(self.seq % PENDING as u64) as usize] = (self.seq, Some(now));
        self.stats.requests += 1;
        let epoch = if self.is_active(now) { self.epoch } else { 0 };
        Some(Control::Request { epoch, seq: self.seq })
    }

    /// A message from the arbiter.
    pub fn on_message(&mut self, msg: Control, now: Instant) -> Change {
        match msg {
            Control::Request { .. } => Change::None,
            Control::Deny { epoch, .. } => {
                self.stats.denials += 1;
                let was = self.is_active(now);
                self.valid_until = None;
                if epoch > self.epoch {
                    self.epoch = epoch;
                }
                if was {
                    Change::Fenced
                } else {
                    Change::None
                }
            }
            Control::Grant { epoch, seq, lease_ms } => {
                let slot = self.pending[(seq % PENDING as u64) as usize];
                let Some(sent) = slot.1.filter(|_| slot.0 == seq) else {
                    self.stats.stale_grants += 1;
                    return Change::None;
                };
                // A lower epoch answering one of our own recent requests
                // while we hold nothing: the arbiter restarted (its epochs
                // begin again at 1; it granted nothing for one LEASE, so
                // our old lease has lapsed). Refused only while we hold one.
                if epoch < self.epoch && self.is_active(now) {
                    self.stats.stale_grants += 1;
                    return Change::None;
                }
                self.stats.grants += 1;
                let lease = Duration::from_millis(u64::from(lease_ms));
                let until = sent + lease.saturating_sub(MEMBER_MARGIN);
                let was = self.is_active(now) && epoch == self.epoch;
                self.epoch = epoch;
                if until <= now {
                    return Change::None;
                }
                // A late grant never shortens a newer one.
                if self.valid_until.is_none_or(|t| t < until) || !was {
                    self.valid_until = Some(until);
                }
                if was {
                    Change::None
                } else {
                    self.stats.takeovers += 1;
                    Change::BecameActive { epoch }
                }
            }
        }
    }
}

/// What a member knows about one tunnel's lease (for status pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The tunnel.
    pub peer: PeerId,
    /// True while the lease is held: frames cross this tunnel.
    pub held: bool,
    /// The epoch of the lease held (or last seen).
    pub epoch: u64,
    /// Times this member took this tunnel's lease over.
    pub takeovers: u64,
}

/// An LCG's leases, one [`Member`] per tunnel (one per cloud node, each
/// arbitrating its own lease). Time is passed in; the bridge shell sends
/// the requests it returns into the named tunnel.
#[derive(Debug, Default)]
pub struct Members {
    /// Per tunnel: the member and whether it was active when last looked at.
    peers: BTreeMap<PeerId, (Member, bool)>,
}

impl Members {
    /// No tunnels.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new tunnel, in standby (no lease).
    pub fn add(&mut self, peer: PeerId) {
        self.peers.entry(peer).or_insert_with(|| (Member::new(), false));
    }

    /// A tunnel that went away: its lease (if any) is given up with it.
    pub fn remove(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// Does this LCG hold `peer`'s lease now (may frames cross that tunnel)?
    pub fn holds(&self, peer: PeerId, now: Instant) -> bool {
        self.peers.get(&peer).is_some_and(|(m, _)| m.is_active(now))
    }

    /// Does it hold any lease (may it touch the LAN at all)?
    pub fn holds_any(&self, now: Instant) -> bool {
        self.peers.values().any(|(m, _)| m.is_active(now))
    }

    /// A request to send into `peer`'s tunnel, when one is due.
    pub fn request_due(&mut self, peer: PeerId, now: Instant) -> Option<Control> {
        self.peers.get_mut(&peer)?.0.request_due(now)
    }

    /// A message out of `peer`'s tunnel.
    pub fn on_message(&mut self, peer: PeerId, msg: Control, now: Instant) -> Change {
        let Some((m, was)) = self.peers.get_mut(&peer) else {
            return Change::None;
        };
        let change = m.on_message(msg, now);
        *was = m.is_active(now);
        change
    }

    /// Tunnels whose lease ran out by time since the last call (a renewal
    /// went unanswered): the shell logs them.
    pub fn lapsed(&mut self, now: Instant) -> Vec<PeerId> {
        let mut out = Vec::new();
        for (peer, (m, was)) in &mut self.peers {
            let active = m.is_active(now);
            if *was && !active {
                out.push(*peer);
            }
            *was = active;
        }
        out
    }

    /// Each tunnel's lease.
    pub fn leases(&self, now: Instant) -> Vec<LeaseView> {
        self.peers
            .iter()
            .map(|(peer, (m, _))| LeaseView {
                peer: *peer,
                held: m.is_active(now),
                epoch: m.epoch(),
                takeovers: m.stats().takeovers,
            })
            .collect()
    }

    /// The highest epoch held or seen over the tunnels.
    pub fn max_epoch(&self) -> u64 {
        self.peers.values().map(|(m, _)| m.epoch()).max().unwrap_or(0)
    }

    /// Takeovers over all tunnels.
    pub fn takeovers(&self) -> u64 {
        self.peers.values().map(|(m, _)| m.stats().takeovers).sum()
    }
}

/// Counters of an arbiter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArbiterStats {
    /// Leases granted to a new holder (epoch changes).
    pub handovers: u64,
    /// Renewals.
    pub renewals: u64,
    /// Requests denied.
    pub denials: u64,
}

/// The cloud node's lease arbiter for one segment.
#[derive(Debug)]
pub struct Arbiter {
    engaged: bool,
    holder: Option<MemberId>,
    epoch: u64,
    expires: Instant,
    not_before: Instant,
    stats: ArbiterStats,
}

/// An arbiter shared by the bridges (one per member) of one segment.
pub type SharedArbiter = Arc<Mutex<Arbiter>>;

impl Arbiter {
    /// An arbiter that grants nothing for one [`LEASE`] after `now` (a member
    /// may still hold a lease from this arbiter's previous life).
    pub fn new(now: Instant) -> Self {
        Arbiter {
            engaged: false,
            holder: None,
            epoch: 0,
            expires: now,
            not_before: now + LEASE,
            stats: ArbiterStats::default(),
        }
    }

    /// A new arbiter to share between bridges.
    pub fn shared(now: Instant) -> SharedArbiter {
        Arc::new(Mutex::new(Arbiter::new(now)))
    }

    /// The holder whose lease has not expired.
    pub fn holder(&self, now: Instant) -> Option<MemberId> {
        self.holder.filter(|_| now < self.expires)
    }

    /// The current epoch (fencing token).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The counters.
    pub fn stats(&self) -> ArbiterStats {
        self.stats
    }

    /// Has any member asked for a lease yet? Before that, no member of this
    /// segment runs HA and every tunnel may forward.
    pub fn is_engaged(&self) -> bool {
        self.engaged
    }

    /// May frames of `member`'s tunnel cross (either way)? Once engaged,
    /// only the holder's.
    pub fn may_forward(&self, member: &MemberId, now: Instant) -> bool {
        !self.engaged || self.holder(now).as_ref() == Some(member)
    }

    /// Answers a message from `member` (only requests get an answer).
    pub fn on_message(&mut self, member: &MemberId, msg: Control, now: Instant) -> Option<Control> {
        let Control::Request { seq, .. } = msg else { return None };
        if !self.engaged {
            self.engaged = true;
            tracing::info!(member = %short(member), "HA engaged: from now on only the lease holder's tunnel forwards");
        }
        let member = *member;
        let lease_ms = u32::try_from(LEASE.as_millis()).unwrap_or(u32::MAX);
        match self.holder(now) {
            Some(h) if h == member => {
                self.expires = now + LEASE;
                self.stats.renewals += 1;
                Some(Control::Grant {
                    epoch: self.epoch,
                    seq,
                    lease_ms,
                })
            }
            Some(_) => {
                self.stats.denials += 1;
                Some(Control::Deny { epoch: self.epoch, seq })
            }
            None if now < self.not_before => {
                self.stats.denials += 1;
                Some(Control::Deny { epoch: self.epoch, seq })
            }
            None => {
                self.epoch += 1;
                self.holder = Some(member);
                self.expires = now + LEASE;
                self.stats.handovers += 1;
                tracing::info!(member = %short(&member), epoch = self.epoch, "HA lease granted to a new holder");
                Some(Control::Grant {
                    epoch: self.epoch,
                    seq,
                    lease_ms,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: MemberId = [1; 32];
    const K2: MemberId = [2; 32];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn control_frames_round_trip_and_malformed_ones_are_refused() {
        for c in [
            Control::Request { epoch: 0, seq: 1 },
            Control::Request { epoch: 7, seq: u64::MAX },
            Control::Grant {
                epoch: 3,
                seq: 9,
                lease_ms: 1500,
            },
            Control::Deny { epoch: 4, seq: 2 },
        ] {
            let f = c.encode();
            assert!(is_control(&f));
            assert_eq!(Control::parse(&f), Some(c));
        }
        let good = Control::Deny { epoch: 4, seq: 2 }.encode();
        assert_eq!(Control::parse(&good[..59]), None);
        let mut bad = good;
        bad[22] = 9;
        assert_eq!(Control::parse(&bad), None);
        let mut bad = good;
        bad[24] = 1;
        assert_eq!(Control::parse(&bad), None);
        let mut bad = good;
        bad[14] = b'X';
        assert!(!is_control(&bad));
        assert_eq!(Control::parse(&bad), None);
        assert_eq!(Control::parse(&[]), None);
    }

    /// Member `m` asks at `t`; the arbiter answers at `t + delay`.
    fn exchange(m: &mut Member, a: &mut Arbiter, id: MemberId, t: Instant, delay: Duration) -> Change {
        let Some(req) = m.request_due(t) else { return Change::None };
        let Some(ans) = a.on_message(&id, req, t + delay) else {
            return Change::None;
        };
        m.on_message(ans, t + delay + delay)
    }

    #[test]
    fn after_the_arbiter_restarts_a_member_that_held_a_higher_epoch_is_granted_again() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let mut m = Member::new();
        let mut t = t0 + LEASE;
        // Lapses in the old arbiter's life: each new grant is a new epoch.
        for epoch in 1..=3 {
            assert_eq!(exchange(&mut m, &mut a, K1, t, ms(1)), Change::BecameActive { epoch });
            t += LEASE + LEASE;
        }
        // The node restarts: a new arbiter, epochs from 1 again.
        let mut b = Arbiter::new(t);
        t += LEASE + REQUEST_INTERVAL;
        let before = m.epoch();
        assert_eq!(before, 3);
        assert!(!m.is_active(t));
        assert_eq!(exchange(&mut m, &mut b, K1, t, ms(1)), Change::BecameActive { epoch: 1 });
        assert!(m.is_active(t + ms(3)) && b.may_forward(&K1, t + ms(3)));
    }

    #[test]
    fn first_member_gets_the_lease_after_the_grace_period_and_the_second_is_denied() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let (mut m1, mut m2) = (Member::new(), Member::new());
        // Grace period: nobody.
        assert_eq!(exchange(&mut m1, &mut a, K1, t0, ms(1)), Change::None);
        assert!(!m1.is_active(t0 + ms(2)));
        let t = t0 + LEASE;
        assert_eq!(exchange(&mut m1, &mut a, K1, t, ms(1)), Change::BecameActive { epoch: 1 });
        assert!(m1.is_active(t + ms(2)));
        assert!(a.may_forward(&K1, t + ms(2)));
        assert_eq!(exchange(&mut m2, &mut a, K2, t + ms(10), ms(1)), Change::None);
        assert!(!m2.is_active(t + ms(20)));
        assert!(!a.may_forward(&K2, t + ms(20)));
        assert_eq!(m2.stats().denials, 1);
        // Renewals keep m1 active, epoch unchanged.
        let mut now = t;
        for _ in 0..20 {
            now += REQUEST_INTERVAL;
            assert_eq!(exchange(&mut m1, &mut a, K1, now, ms(1)), Change::None);
            assert_eq!(exchange(&mut m2, &mut a, K2, now, ms(1)), Change::None);
            assert!(m1.is_active(now + ms(2)) && !m2.is_active(now + ms(2)));
        }
        assert_eq!(a.epoch(), 1);
    }

    #[test]
    fn when_the_holder_goes_silent_the_standby_takes_over_only_after_the_old_lease_ended_everywhere() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        let (mut m1, mut m2) = (Member::new(), Member::new());
        let t = t0 + LEASE;
        assert_eq!(exchange(&mut m1, &mut a, K1, t, ms(5)), Change::BecameActive { epoch: 1 });
        // m1 dies now (no more requests). m2 asks every interval.
        let mut now = t;
        let took_over = loop {
            now += REQUEST_INTERVAL;
            if let Change::BecameActive { epoch } = exchange(&mut m2, &mut a, K2, now, ms(5)) {
                break (now, epoch);
            }
            assert!(now < t + ms(5000), "no takeover");
        };
        assert_eq!(took_over.1, 2);
        // Never both: m1 (had it not died) stopped before m2's lease started.
        let m1_end = t + LEASE - MEMBER_MARGIN;
        assert!(!m1.is_active(m1_end));
        assert!(took_over.0 >= t + LEASE);
        // Takeover within a lease plus one request interval.
        assert!(took_over.0 - t <= LEASE + REQUEST_INTERVAL);
        // The arbiter now refuses m1's tunnel, and m1 coming back is fenced.
        assert!(!a.may_forward(&K1, took_over.0 + ms(10)));
        // m1's own view lapsed; a fresh request is denied.
        assert_eq!(exchange(&mut m1, &mut a, K1, took_over.0 + ms(20), ms(1)), Change::None);
        assert!(!m1.is_active(took_over.0 + ms(30)));
    }

    #[test]
    fn an_active_member_that_is_denied_stops_at_once() {
        let t0 = Instant::now();
        let mut m = Member::new();
        let Some(Control::Request { seq, .. }) = m.request_due(t0) else {
            panic!()
        };
        let g = Control::Grant {
            epoch: 5,
            seq,
            lease_ms: 1500,
        };
        assert_eq!(m.on_message(g, t0 + ms(1)), Change::BecameActive { epoch: 5 });
        assert_eq!(m.on_message(Control::Deny { epoch: 6, seq }, t0 + ms(2)), Change::Fenced);
        assert!(!m.is_active(t0 + ms(3)));
        assert_eq!(m.epoch(), 6);
    }

    #[test]
    fn grants_for_unknown_or_very_late_requests_do_not_activate() {
        let t0 = Instant::now();
        let mut m = Member::new();
        let stray = Control::Grant {
            epoch: 1,
            seq: 42,
            lease_ms: 1500,
        };
        assert_eq!(m.on_message(stray, t0), Change::None);
        assert_eq!(m.stats().stale_grants, 1);
        let Some(Control::Request { seq, .. }) = m.request_due(t0) else {
            panic!()
        };
        // Arrives after the lease it describes would already have ended.
        let late = Control::Grant {
            epoch: 1,
            seq,
            lease_ms: 1500,
        };
        assert_eq!(m.on_message(late, t0 + ms(2000)), Change::None);
        assert!(!m.is_active(t0 + ms(2000)));
        // The member's lease ends before the arbiter's (counted from sending).
        let Some(Control::Request { seq, .. }) = m.request_due(t0 + ms(3000)) else {
            panic!()
        };
        let g = Control::Grant {
            epoch: 2,
            seq,
            lease_ms: 1500,
        };
        assert_eq!(m.on_message(g, t0 + ms(3100)), Change::BecameActive { epoch: 2 });
        assert!(m.is_active(t0 + ms(3000) + LEASE - MEMBER_MARGIN - ms(1)));
        assert!(!m.is_active(t0 + ms(3000) + LEASE - MEMBER_MARGIN));
    }

    #[test]
    fn requests_are_paced() {
        let t0 = Instant::now();
        let mut m = Member::new();
        assert!(m.request_due(t0).is_some());
        assert!(m.request_due(t0 + ms(100)).is_none());
        assert!(m.request_due(t0 + REQUEST_INTERVAL).is_some());
        assert_eq!(m.stats().requests, 2);
    }

    #[test]
    fn an_arbiter_lets_every_tunnel_forward_until_the_first_request_engages_it() {
        let t0 = Instant::now();
        let mut a = Arbiter::new(t0);
        // No member runs HA (an LCG without HA): its tunnel forwards.
        assert!(!a.is_engaged());
        assert!(a.may_forward(&K1, t0) && a.may_forward(&K2, t0 + ms(5000)));
        // The first request engages it for good: grace period, nobody forwards.
        let t = t0 + ms(5000);
        assert!(matches!(
            a.on_message(&K2, Control::Request { epoch: 0, seq: 1 }, t),
            Some(Control::Grant { epoch: 1, .. })
        ));
        assert!(a.is_engaged());
        assert!(a.may_forward(&K2, t) && !a.may_forward(&K1, t));
        // Engaged for good: after the holder lapses, nobody forwards.
        assert!(!a.may_forward(&K2, t + LEASE) && !a.may_forward(&K1, t + LEASE));
        // A fresh arbiter that hears a request during its grace denies it.
        let mut b = Arbiter::new(t0);
        assert!(matches!(
            b.on_message(&K1, Control::Request { epoch: 0, seq: 1 }, t0 + ms(10)),
            Some(Control::Deny { .. })
        ));
        assert!(!b.may_forward(&K1, t0 + ms(10)));
    }

    /// Two LCGs ([`Members`], keys `K1`/`K2`), each with a tunnel (peer 0,
    /// peer 1) to each of two clouds (an arbiter each), stepped every 50 ms;
    /// requests and answers take `delay` each way. `up(lcg, cloud, t)`: is
    /// that tunnel (and the LCG) alive at `t`? Returns, per step, who holds
    /// which cloud, after checking at every step that no cloud is held by
    /// both LCGs and that a holder is believed by its cloud.
    fn simulate(until: Duration, up: impl Fn(usize, usize, Duration) -> bool) -> Vec<(Duration, [[bool; 2]; 2])> {
        let t0 = Instant::now();
        let delay = ms(5);
        let mut arbiters = [Arbiter::new(t0), Arbiter::new(t0)];
        let mut lcgs = [Members::new(), Members::new()];
        let keys = [K1, K2];
        for l in &mut lcgs {
            l.add(0);
            l.add(1);
        }
        let mut out = Vec::new();
        let mut at = Duration::ZERO;
        while at <= until {
            let now = t0 + at;
            for (l, lcg) in lcgs.iter_mut().enumerate() {
                for (c, arbiter) in arbiters.iter_mut().enumerate() {
                    if !up(l, c, at) {
                        continue;
                    }
                    let peer = c as PeerId;
                    let Some(req) = lcg.request_due(peer, now) else { continue };
                    if let Some(ans) = arbiter.on_message(&keys[l], req, now + delay) {
                        lcg.on_message(peer, ans, now + delay + delay);
                    }
                }
            }
            let check = now + delay + delay;
            let mut held = [[false; 2]; 2];
            for (l, lcg) in lcgs.iter().enumerate() {
                for (c, arbiter) in arbiters.iter().enumerate() {
                    held[l][c] = up(l, c, at) && lcg.holds(c as PeerId, check);
                    if lcg.holds(c as PeerId, check) {
                        assert!(
                            arbiter.may_forward(&keys[l], check),
                            "LCG {l} holds cloud {c} unknown to it at {at:?}"
                        );
                    }
                }
            }
            for c in 0..2 {
                assert!(
                    !(lcgs[0].holds(c as PeerId, check) && lcgs[1].holds(c as PeerId, check)),
                    "both LCGs hold cloud {c} at {at:?}"
                );
            }
            out.push((at, held));
            at += ms(50);
        }
        out
    }

    /// The first step at or after `from` where `pred` holds.
    fn first(steps: &[(Duration, [[bool; 2]; 2])], from: Duration, pred: impl Fn(&[[bool; 2]; 2]) -> bool) -> Option<Duration> {
        steps.iter().find(|(at, h)| *at >= from && pred(h)).map(|(at, _)| *at)
    }

    #[test]
    fn one_lease_per_cloud_the_standby_takes_every_cloud_over_when_the_active_lcg_dies() {
        let kill = ms(4000);
        // LCG 1 starts first; LCG 2 100 ms later; LCG 1 dies at `kill`.
        let steps = simulate(ms(8000), |l, _, at| if l == 0 { at < kill } else { at >= ms(100) });
        let both_1 = first(&steps, Duration::ZERO, |h| h[0] == [true, true]).expect("LCG 1 never held both clouds");
        assert!(both_1 <= LEASE + REQUEST_INTERVAL, "grace period too long: {both_1:?}");
        // Until the kill the standby holds nothing.
        assert!(steps.iter().filter(|(at, _)| *at < kill).all(|(_, h)| h[1] == [false, false]));
        let took = first(&steps, kill, |h| h[1] == [true, true]).expect("LCG 2 never took both clouds over");
        assert!(took - kill <= LEASE + REQUEST_INTERVAL, "failover took {:?}", took - kill);
        assert!(took - kill < ms(3000));
    }

    #[test]
    fn losing_one_cloud_moves_only_that_clouds_lease() {
        // LCG 1's tunnel to cloud 1 goes down at 4 s; everything else stays.
        let cut = ms(4000);
        let steps = simulate(ms(8000), |l, c, at| !(l == 0 && c == 1 && at >= cut) && (l == 0 || at >= ms(100)));
        let split = first(&steps, cut, |h| h[0] == [true, false] && h[1] == [false, true]).expect("cloud 1 did not move to LCG 2");
        assert!(split - cut <= LEASE + REQUEST_INTERVAL);
        // Cloud 0 stayed with LCG 1 the whole time after its first grant.
        let got = first(&steps, Duration::ZERO, |h| h[0][0]).expect("LCG 1 never held cloud 0");
        assert!(steps.iter().filter(|(at, _)| *at >= got).all(|(_, h)| h[0][0] && !h[1][0]));
    }

    #[test]
    fn members_track_each_tunnel_and_report_lapses() {
        let t0 = Instant::now();
        let mut m = Members::new();
        m.add(0);
        m.add(3);
        assert!(!m.holds_any(t0));
        let Some(Control::Request { seq, .. }) = m.request_due(3, t0) else {
            panic!()
        };
        assert!(m.request_due(7, t0).is_none(), "no tunnel 7");
        let g = Control::Grant {
            epoch: 4,
            seq,
            lease_ms: 1500,
        };
        // A grant for tunnel 3 says nothing about tunnel 0.
        assert_eq!(m.on_message(0, g, t0 + ms(1)), Change::None);
        assert_eq!(m.on_message(3, g, t0 + ms(1)), Change::BecameActive { epoch: 4 });
        assert!(m.holds(3, t0 + ms(2)) && !m.holds(0, t0 + ms(2)) && m.holds_any(t0 + ms(2)));
        assert_eq!(m.lapsed(t0 + ms(2)), Vec::<PeerId>::new());
        let end = t0 + LEASE - MEMBER_MARGIN;
        assert_eq!(m.lapsed(end), vec![3]);
        assert_eq!(m.lapsed(end + ms(1)), Vec::<PeerId>::new());
        assert_eq!(
            m.leases(end),
            vec![
                LeaseView {
                    peer: 0,
                    held: false,
                    epoch: 0,
                    takeovers: 0
                },
                LeaseView {
                    peer: 3,
                    held: false,
                    epoch: 4,
                    takeovers: 1
                }
            ]
        );
        assert_eq!((m.max_epoch(), m.takeovers()), (4, 1));
        m.remove(3);
        assert!(!m.holds(3, t0 + ms(2)));
        assert_eq!(m.leases(t0).len(), 1);
    }
}
