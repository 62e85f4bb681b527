//! LAN safety: what keeps an L2 extension from hurting the LAN it joins.
//! A pure state machine (time passed in); the bridge shell asks it about
//! every frame at the LAN edge and sends the probes it returns.
//!
//! - **Loops** (like a switch's loop-protect / BPDU guard): every
//!   [`PROBE_INTERVAL`] the LCG sends a probe frame (broadcast, EtherType
//!   0x88B5 "local experimental", a per-bridge random nonce) on its LAN port
//!   and into the tunnel. Seeing our own probe come back — on the LAN, or out
//!   of the tunnel — means a second path joins the two sides. A frame we put
//!   on the LAN that comes back in on the LAN (same bytes, within
//!   [`ECHO_WINDOW`]) is the same proof. Either blocks flooding for
//!   [`LOOP_HOLD`] after the last sighting: broadcast/multicast frames do not
//!   cross between the LAN and the tunnel (the storm cannot circulate), known
//!   unicast to carried MACs keeps flowing; echoes are always dropped.
//! - **Duplicate MACs**: a carried MAC (it lives behind the tunnel) seen as a
//!   source on the LAN, and not as an echo of our own frame, means the
//!   source server and its moved copy are both alive (or a MAC conflict).
//!   The MAC is put in alarm and its frames are refused both ways until
//!   [`LanGuard::clear_duplicate`] (or it stops being carried), so the two
//!   never answer at once.
//! - **Storms**: broadcast/multicast frames entering the tunnel, and leaving
//!   it, pass a token bucket each ([`STORM_PPS`], burst [`STORM_BURST`]).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use proto::MacAddr;

use crate::ratelimit::TokenBucket;

/// How often a probe goes out.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long flooding stays blocked after the last sign of a loop.
pub const LOOP_HOLD: Duration = Duration::from_secs(10);
/// How long a frame we put on the LAN is remembered to recognise its echo.
pub const ECHO_WINDOW: Duration = Duration::from_secs(2);
/// Broadcast/multicast frames per second allowed each way through the tunnel.
pub const STORM_PPS: u32 = 2000;
/// Burst of the storm-control bucket.
pub const STORM_BURST: u32 = 4000;
/// EtherType of probes (IEEE 802 local experimental).
pub const PROBE_ETHERTYPE: u16 = 0x88b5;
/// Bytes that open a probe's payload.
const PROBE_MAGIC: &[u8; 8] = b"ISTHMUSL";
/// Remembered frames put on the LAN (a ring).
const ECHO_SLOTS: usize = 256;
/// Bytes of a frame hashed for echo recognition.
const ECHO_BYTES: usize = 96;

/// What to do with a frame at the LAN edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (the switch decides where).
    Pass,
    /// Our own probe or an echo of our frame: a loop. Dropped.
    Loop,
    /// Flooding blocked while a loop is suspected.
    LoopBlocked,
    /// The frame's MAC is in duplicate-MAC alarm.
    Duplicate(MacAddr),
    /// Over the storm-control rate.
    Storm,
}

/// Counters of the guard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Loops detected (probe or echo seen).
    pub loops_detected: u64,
    /// Frames dropped as loop echoes/probes or while flooding was blocked.
    pub loop_drops: u64,
    /// Frames refused because their MAC is in alarm.
    pub duplicate_drops: u64,
    /// Frames over the storm rate.
    pub storm_drops: u64,
    /// Probes sent.
    pub probes_sent: u64,
}

/// The LAN-safety state of one bridge.
#[derive(Debug)]
pub struct LanGuard {
    probe: [u8; 60],
    nonce: [u8; 8],
    next_probe: Option<Instant>,
    blocked_until: Option<Instant>,
    echoes: Vec<(u64, Instant)>,
    echo_next: usize,
    duplicates: HashSet<MacAddr>,
    storm_in: TokenBucket,
    storm_out: TokenBucket,
    stats: GuardStats,
}

fn is_group(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 1)
}

fn mac_at(frame: &[u8], at: usize) -> Option<MacAddr> {
    let b: [u8; 6] = frame.get(at..at + 6)?.try_into().ok()?;
    Some(MacAddr(b))
}

fn fingerprint(frame: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    frame.len().hash(&mut h);
    frame[..frame.len().min(ECHO_BYTES)].hash(&mut h);
    h.finish()
}

impl LanGuard {
    /// A guard whose probes carry `nonce` from source MAC `probe_src`
    /// (both random per bridge; a locally administered unicast MAC).
    pub fn new(nonce: [u8; 8], probe_src: MacAddr, now: Instant) -> Self {
        let mut probe = [0u8; 60];
        probe[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
        probe[6..12].copy_from_slice(&probe_src.0);
        probe[12..14].copy_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
        probe[14..22].copy_from_slice(PROBE_MAGIC);
        probe[22..30].copy_from_slice(&nonce);
        LanGuard {
            probe,
            nonce,
            next_probe: None,
            blocked_until: None,
            echoes: vec![(0, now); ECHO_SLOTS],
            echo_next: 0,
            duplicates: HashSet::new(),
            storm_in: TokenBucket::new(STORM_PPS, STORM_BURST, now),
            storm_out: TokenBucket::new(STORM_PPS, STORM_BURST, now),
            stats: GuardStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> GuardStats {
        self.stats
    }

    /// MACs in duplicate alarm, sorted.
    pub fn duplicates(&self) -> Vec<MacAddr> {
        let mut v: Vec<MacAddr> = self.duplicates.iter().copied().collect();
        v.sort_by_key(|m| m.0);
        v
    }

    /// True while flooding between the LAN and the tunnel is blocked.
    pub fn loop_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|t| now < t)
    }

    /// Clears the alarm of `mac` (the operator resolved it; also called when
    /// the MAC stops being carried).
    pub fn clear_duplicate(&mut self, mac: MacAddr) -> bool {
        self.duplicates.remove(&mac)
    }

    /// The probe frame, when one is due (send it on LAN ports and into the tunnel).
    pub fn probe_due(&mut self, now: Instant) -> Option<[u8; 60]> {
        if self.next_probe.is_some_and(|t| now < t) {
            return None;
        }
        self.next_probe = Some(now + PROBE_INTERVAL);
        self.stats.probes_sent += 1;
        Some(self.probe)
    }

    fn is_our_probe(&self, frame: &[u8]) -> bool {
        frame.len() >= 30 && frame[12..14] == PROBE_ETHERTYPE.to_be_bytes() && &frame[14..22] == PROBE_MAGIC && frame[22..30] == self.nonce
    }

    fn loop_seen(&mut self, now: Instant) -> Verdict {
        if !self.loop_blocked(now) {
            tracing::error!("L2 loop detected: our frames come back; flooding between LAN and tunnel blocked");
        }
        self.stats.loops_detected += 1;
        self.stats.loop_drops += 1;
        self.blocked_until = Some(now + LOOP_HOLD);
        Verdict::Loop
    }

    fn counted(&mut self, v: Verdict) -> Verdict {
        match v {
            Verdict::Pass => {}
            Verdict::Loop | Verdict::LoopBlocked => self.stats.loop_drops += 1,
            Verdict::Duplicate(_) => self.stats.duplicate_drops += 1,
            Verdict::Storm => self.stats.storm_drops += 1,
        }
        v
    }

    /// A frame read from the LAN port. `src_carried`/`dst_carried`: whether
    /// its source/destination MAC is carried.
    pub fn lan_ingress(&mut self, frame: &[u8], src_carried: bool, dst_carried: bool, now: Instant) -> Verdict {
        let (Some(dst), Some(src)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
            return Verdict::Pass;
        };
        if self.is_our_probe(frame) {
            return self.loop_seen(now);
        }
        if src_carried {
            let fp = fingerprint(frame);
            let echo = self
                .echoes
                .iter()
                .any(|&(f, t)| f == fp && now.saturating_duration_since(t) < ECHO_WINDOW);
            if echo {
                return self.loop_seen(now);
            }
            if self.duplicates.insert(src) {
                tracing::error!(mac = %src, "DUPLICATE MAC: a carried MAC is alive on the LAN; its frames are refused until the alarm is cleared");
            }
            return self.counted(Verdict::Duplicate(src));
        }
        if dst_carried && self.duplicates.contains(&dst) {
            return self.counted(Verdict::Duplicate(dst));
        }
        if is_group(frame) {
            if self.loop_blocked(now) {
                return self.counted(Verdict::LoopBlocked);
            }
            if !self.storm_in.take(now) {
                return self.counted(Verdict::Storm);
            }
        }
        Verdict::Pass
    }

    /// A frame from local guest ports about to enter the tunnel (cloud side,
    /// or guests on the appliance): storm control only.
    pub fn into_tunnel(&mut self, frame: &[u8], now: Instant) -> Verdict {
        if is_group(frame) && !self.storm_in.take(now) {
            return self.counted(Verdict::Storm);
        }
        Verdict::Pass
    }

    /// A frame out of the tunnel, before switching: our probe coming back
    /// means a loop; group frames pass storm control (and the loop block
    /// when they would reach the LAN: `to_lan`).
    pub fn from_tunnel(&mut self, frame: &[u8], to_lan: bool, now: Instant) -> Verdict {
        if self.is_our_probe(frame) {
            return self.loop_seen(now);
        }
        if let Some(src) = mac_at(frame, 6) {
            if to_lan && self.duplicates.contains(&src) {
                return self.counted(Verdict::Duplicate(src));
            }
        }
        if is_group(frame) {
            if to_lan && self.loop_blocked(now) {
                return self.counted(Verdict::LoopBlocked);
            }
            if !self.storm_out.take(now) {
                return self.counted(Verdict::Storm);
            }
        }
        Verdict::Pass
    }

    /// Remembers a frame we are putting on the LAN, to recognise its echo.
    pub fn put_on_lan(&mut self, frame: &[u8], now: Instant) {
        self.echoes[self.echo_next] = (fingerprint(frame), now);
        self.echo_next = (self.echo_next + 1) % ECHO_SLOTS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

    fn frame(dst: MacAddr, src: MacAddr, tag: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x00, tag]);
        f.resize(64, 0);
        f
    }

    fn guard(now: Instant) -> LanGuard {
        LanGuard::new([9; 8], MacAddr([0x02, 0x99, 0, 0, 0, 1]), now)
    }

    #[test]
    fn own_probe_back_on_lan_or_from_tunnel_is_a_loop_and_blocks_flooding_for_a_while() {
        let t0 = Instant::now();
        let mut g = guard(t0);
        let probe = g.probe_due(t0).unwrap().to_vec();
        assert_eq!(probe.len(), 60);
        assert!(g.probe_due(t0 + Duration::from_millis(500)).is_none());
        assert!(g.probe_due(t0 + PROBE_INTERVAL).is_some());
        // Another bridge's probe is just a frame.
        let mut other = probe.clone();
        other[29] ^= 1;
        assert_eq!(g.lan_ingress(&other, false, false, t0), Verdict::Pass);
        assert_eq!(g.lan_ingress(&probe, false, false, t0), Verdict::Loop);
        assert!(g.loop_blocked(t0));
        // Broadcast from the LAN is not flooded while blocked; unicast to a carried MAC is.
        assert_eq!(
            g.lan_ingress(&frame(MacAddr::BROADCAST, A, 0), false, false, t0),
            Verdict::LoopBlocked
        );
        assert_eq!(g.lan_ingress(&frame(B, A, 0), false, true, t0), Verdict::Pass);
        assert_eq!(g.from_tunnel(&frame(MacAddr::BROADCAST, B, 0), true, t0), Verdict::LoopBlocked);
        // Towards guests (cloud side) flooding is not blocked.
        assert_eq!(g.from_tunnel(&frame(MacAddr::BROADCAST, B, 0), false, t0), Verdict::Pass);
        let later = t0 + LOOP_HOLD;
        assert!(!g.loop_blocked(later));
        assert_eq!(g.lan_ingress(&frame(MacAddr::BROADCAST, A, 0), false, false, later), Verdict::Pass);
        assert_eq!(g.from_tunnel(&probe, true, later), Verdict::Loop);
        assert_eq!(g.stats().loops_detected, 2);
        assert_eq!(g.stats().loop_drops, 4);
    }

    #[test]
    fn echo_of_our_frame_is_a_loop_not_a_duplicate() {
        let t0 = Instant::now();
        let mut g = guard(t0);
        let f = frame(A, B, 1);
        g.put_on_lan(&f, t0);
        assert_eq!(g.lan_ingress(&f, true, false, t0 + Duration::from_millis(10)), Verdict::Loop);
        assert!(g.duplicates().is_empty());
        // The same bytes long after: not an echo any more.
        assert_eq!(g.lan_ingress(&f, true, false, t0 + ECHO_WINDOW), Verdict::Duplicate(B));
    }

    #[test]
    fn carried_source_on_lan_raises_alarm_and_refuses_both_ways_until_cleared() {
        let t0 = Instant::now();
        let mut g = guard(t0);
        assert_eq!(g.lan_ingress(&frame(A, B, 1), true, false, t0), Verdict::Duplicate(B));
        assert_eq!(g.duplicates(), vec![B]);
        // To B from the LAN, and from B towards the LAN: refused.
        assert_eq!(g.lan_ingress(&frame(B, A, 2), false, true, t0), Verdict::Duplicate(B));
        assert_eq!(g.from_tunnel(&frame(A, B, 3), true, t0), Verdict::Duplicate(B));
        assert_eq!(g.stats().duplicate_drops, 3);
        assert!(g.clear_duplicate(B));
        assert_eq!(g.lan_ingress(&frame(B, A, 2), false, true, t0), Verdict::Pass);
        assert_eq!(g.from_tunnel(&frame(A, B, 3), true, t0), Verdict::Pass);
    }

    #[test]
    fn storm_control_limits_group_frames_each_way() {
        let t0 = Instant::now();
        let mut g = guard(t0);
        let bcast = frame(MacAddr::BROADCAST, A, 0);
        let passed = (0..STORM_BURST + 500)
            .filter(|_| g.lan_ingress(&bcast, false, false, t0) == Verdict::Pass)
            .count();
        assert_eq!(passed, STORM_BURST as usize);
        assert_eq!(g.stats().storm_drops, 500);
        // Unicast is never storm-limited.
        assert_eq!(g.lan_ingress(&frame(B, A, 0), false, true, t0), Verdict::Pass);
        // The other direction has its own bucket.
        assert_eq!(g.from_tunnel(&bcast, true, t0), Verdict::Pass);
        // Refilled after a second.
        assert_eq!(g.lan_ingress(&bcast, false, false, t0 + Duration::from_secs(1)), Verdict::Pass);
    }

    #[test]
    fn runts_pass_to_the_switch_which_drops_them() {
        let mut g = guard(Instant::now());
        assert_eq!(g.lan_ingress(&[1, 2, 3], false, false, Instant::now()), Verdict::Pass);
    }
}
