//! Which frames cross, and where they go: a small VLAN-aware learning switch
//! whose ports are the local ports plus one tunnel per peer (cloud node),
//! with the LAN port's MAC filter at its edge. Pure: time is passed in.
//!
//! Rules (the appliance's LAN port must not leak the data center into the
//! cloud, and must not let a cloud node speak for MACs that were not moved
//! to it):
//! - **Static entries**: a carried MAC (a moved server) lives behind one peer
//!   ([`Switch::carry_via`]; [`Switch::carry`] means peer 0). Unicast to it
//!   goes to that peer only, whatever was learned.
//! - LAN ingress: a frame enters the switch only if its destination is a
//!   carried MAC, or it is broadcast/multicast and at least one MAC is
//!   carried; a frame whose *source* is a carried MAC is dropped (that MAC
//!   lives behind a tunnel: seeing it on the LAN is a loop or a conflict).
//! - LAN egress: a frame leaves on the LAN only if its source is carried —
//!   and, coming from a peer, carried *via that peer*.
//! - Guest ports: unfiltered.
//! - Learning: source MACs are learned per VLAN (`(VID, MAC)`, VID 0 for
//!   untagged frames) with ageing ([`LEARN_AGE`]) and a size bound
//!   ([`LEARN_MAX`]). A known unicast destination goes to the one place it
//!   lives; broadcast, multicast and unknown unicast flood to every other
//!   port and to the peers that need them: on a bridge with a LAN port (the
//!   LCG), the peers that carry at least one MAC; on one without (a cloud
//!   node), every peer. A frame never goes back where it came from.
//! - **VLANs**: 802.1Q (and 802.1ad outer) tags travel untouched by default.
//!   Per peer ([`PeerVlans`]) a set of allowed VIDs limits what it gets and
//!   sends, and a map rewrites LAN VIDs to the peer's VIDs and back; the
//!   switch works in LAN VIDs and says which VID each destination wants
//!   ([`Decision`]); the shell rewrites the tag ([`set_vid`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::MacAddr;

/// Identifies a local port for the life of the bridge (never reused).
pub type PortId = u32;
/// Identifies a peer (tunnel) of the bridge; the configured peer is 0.
pub type PeerId = u32;

/// Learned entries older than this are forgotten.
pub const LEARN_AGE: Duration = Duration::from_secs(300);
/// At most this many learned MACs.
pub const LEARN_MAX: usize = 4096;
/// The VID of untagged (and priority-tagged) frames.
pub const UNTAGGED: u16 = 0;

/// How a local port is filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// The appliance's LAN port: carried-MAC filter applies.
    Lan,
    /// A guest's TAP: everything crosses.
    Guest,
}

/// Where a frame entered the switch, or where a MAC was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// A local port.
    Port(PortId),
    /// The tunnel to a peer.
    Peer(PeerId),
}

impl Place {
    /// The tunnel to the configured (first) peer.
    pub const TUNNEL: Place = Place::Peer(0);
}

/// Why a frame went nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Filtered {
    /// Shorter than an Ethernet header.
    #[error("runt frame")]
    Runt,
    /// LAN frame for a MAC we do not carry (the normal case for LAN traffic).
    #[error("destination not carried")]
    NotCarried,
    /// LAN frame whose source is a carried MAC.
    #[error("carried source MAC seen on the LAN")]
    CarriedSourceOnLan,
    /// Frame from a tunnel whose source is not carried (via that peer),
    /// towards the LAN only.
    #[error("source not carried")]
    SourceNotCarried,
    /// Destination was learned where the frame came from.
    #[error("destination is behind the ingress port")]
    Hairpin,
    /// No place to send it (e.g. no ports).
    #[error("no destination")]
    NoDestination,
    /// The frame's VLAN is not allowed for the peer it came from or would go to.
    #[error("VLAN not allowed for the peer")]
    VlanNotAllowed,
}

/// Where a frame goes. Reused between frames to avoid allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Into these tunnels, each with the VID the frame must carry there
    /// (the frame's own unless that peer's VLAN map rewrites it).
    pub peers: Vec<(PeerId, u16)>,
    /// Out of these local ports.
    pub ports: Vec<PortId>,
    /// The frame's VID on the LAN side (what local ports get).
    pub vid: u16,
}

impl Decision {
    fn clear(&mut self) {
        self.peers.clear();
        self.ports.clear();
        self.vid = UNTAGGED;
    }

    /// Does the frame go into the tunnel to peer 0?
    pub fn tunnel(&self) -> bool {
        self.peers.iter().any(|(p, _)| *p == 0)
    }
}

/// VLAN handling for one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerVlans {
    /// LAN-side VIDs this peer gets and may send ([`UNTAGGED`] for untagged
    /// frames); `None`: all.
    pub allowed: Option<Vec<u16>>,
    /// `(LAN VID, peer VID)` pairs, both 1..=4094: a frame tagged with the LAN
    /// VID is re-tagged with the peer VID on its way to the peer, and back.
    pub map: Vec<(u16, u16)>,
}

impl PeerVlans {
    /// The VID a frame of LAN VID `lan` carries to this peer; `None` if the
    /// peer does not get that VLAN.
    pub fn to_peer(&self, lan: u16) -> Option<u16> {
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&lan)) {
            return None;
        }
        Some(self.map.iter().find(|(l, _)| *l == lan).map_or(lan, |(_, p)| *p))
    }

    /// The LAN VID of a frame tagged `peer` by this peer; `None` if not allowed
    /// (a peer VID that a mapped LAN VID hides is not allowed either).
    pub fn from_peer(&self, peer: u16) -> Option<u16> {
        let lan = match self.map.iter().find(|(_, p)| *p == peer) {
            Some((l, _)) => *l,
            None if self.map.iter().any(|(l, _)| *l == peer && peer != UNTAGGED) => return None,
            None => peer,
        };
        (self.to_peer(lan).is_some()).then_some(lan)
    }
}

/// The VID of a frame: of its 802.1Q tag, or the outer 802.1ad tag;
/// [`UNTAGGED`] for an untagged (or priority-tagged) frame.
pub fn vid(frame: &[u8]) -> u16 {
    match (frame.get(12..14), frame.get(14..16)) {
        (Some([0x81, 0x00] | [0x88, 0xa8]), Some(tci)) => u16::from_be_bytes([tci[0], tci[1]]) & 0x0fff,
        _ => UNTAGGED,
    }
}

/// Rewrites the VID of a tagged frame (keeps priority and DEI); false if the
/// frame has no tag to rewrite.
pub fn set_vid(frame: &mut [u8], vid: u16) -> bool {
    if !matches!(frame.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8])) || frame.len() < 16 {
        return false;
    }
    let tci = u16::from_be_bytes([frame[14], frame[15]]);
    let tci = (tci & 0xf000) | (vid & 0x0fff);
    frame[14..16].copy_from_slice(&tci.to_be_bytes());
    true
}

#[derive(Clone, Copy, Debug)]
struct Learned {
    at: Place,
    seen: Instant,
}

#[derive(Clone, Debug)]
struct Peer {
    id: PeerId,
    vlans: PeerVlans,
    /// How many MACs are carried via this peer.
    carries: usize,
}

/// The switch.
#[derive(Debug, Default)]
pub struct Switch {
    carried: HashMap<MacAddr, PeerId>,
    ports: Vec<(PortId, PortKind)>,
    peers: Vec<Peer>,
    table: HashMap<(u16, MacAddr), Learned>,
}

fn mac(b: &[u8]) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    MacAddr(m)
}

impl Switch {
    /// A switch with no ports, no peers and nothing carried.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts carrying `m` via peer 0.
    pub fn carry(&mut self, m: MacAddr) {
        self.carry_via(m, 0);
    }

    /// Starts carrying `m` via `peer` (a static entry: the moved server lives
    /// behind that peer); moves it if it was carried via another peer.
    pub fn carry_via(&mut self, m: MacAddr, peer: PeerId) {
        if let Some(old) = self.carried.insert(m, peer) {
            self.count(old, -1);
        }
        self.count(peer, 1);
    }

    fn count(&mut self, peer: PeerId, d: isize) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.id == peer) {
            p.carries = p.carries.saturating_add_signed(d);
        }
    }

    /// Stops carrying `m`.
    pub fn uncarry(&mut self, m: MacAddr) {
        if let Some(old) = self.carried.remove(&m) {
            self.count(old, -1);
        }
    }

    /// Is `m` carried (via any peer)?
    pub fn is_carried(&self, m: &MacAddr) -> bool {
        self.carried.contains_key(m)
    }

    /// The peer `m` is carried via.
    pub fn carried_via(&self, m: &MacAddr) -> Option<PeerId> {
        self.carried.get(m).copied()
    }

    /// Adds a port.
    pub fn add_port(&mut self, id: PortId, kind: PortKind) {
        if !self.ports.iter().any(|(p, _)| *p == id) {
            self.ports.push((id, kind));
        }
    }

    /// Removes a port and what was learned on it.
    pub fn remove_port(&mut self, id: PortId) {
        self.ports.retain(|(p, _)| *p != id);
        self.table.retain(|_, l| l.at != Place::Port(id));
    }

    /// Adds a peer (or changes its VLANs).
    pub fn add_peer(&mut self, id: PeerId, vlans: PeerVlans) {
        let carries = self.carried.values().filter(|p| **p == id).count();
        self.peers.retain(|p| p.id != id);
        self.peers.push(Peer { id, vlans, carries });
    }

    /// Removes a peer, what was learned behind it and the MACs carried via it.
    pub fn remove_peer(&mut self, id: PeerId) {
        self.peers.retain(|p| p.id != id);
        self.table.retain(|_, l| l.at != Place::Peer(id));
        self.carried.retain(|_, p| *p != id);
    }

    /// Where `m` was last seen as a source in VLAN `vid`, if recently.
    pub fn lookup(&self, vid: u16, m: &MacAddr, now: Instant) -> Option<Place> {
        self.table
            .get(&(vid, *m))
            .filter(|l| now.saturating_duration_since(l.seen) < LEARN_AGE)
            .map(|l| l.at)
    }

    fn kind(&self, id: PortId) -> Option<PortKind> {
        self.ports.iter().find(|(p, _)| *p == id).map(|(_, k)| *k)
    }

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    fn learn(&mut self, vid: u16, src: MacAddr, at: Place, now: Instant) {
        if src.is_multicast() {
            return;
        }
        let key = (vid, src);
        if self.table.len() >= LEARN_MAX && !self.table.contains_key(&key) {
            self.table.retain(|_, l| now.saturating_duration_since(l.seen) < LEARN_AGE);
            if self.table.len() >= LEARN_MAX {
                return;
            }
        }
        self.table.insert(key, Learned { at, seen: now });
    }

    /// Decides where a frame that entered at `from` goes; fills `out`.
    pub fn forward(&mut self, from: Place, frame: &[u8], now: Instant, out: &mut Decision) -> Result<(), Filtered> {
        out.clear();
        if frame.len() < 14 {
            return Err(Filtered::Runt);
        }
        let dst = mac(&frame[0..6]);
        let src = mac(&frame[6..12]);
        let wire_vid = vid(frame);
        let lan_vid = match from {
            Place::Port(_) => wire_vid,
            Place::Peer(p) => self
                .peer(p)
                .ok_or(Filtered::NoDestination)?
                .vlans
                .from_peer(wire_vid)
                .ok_or(Filtered::VlanNotAllowed)?,
        };
        out.vid = lan_vid;
        // Ingress filter.
        if let Place::Port(id) = from {
            if self.kind(id) == Some(PortKind::Lan) {
                if self.carried.contains_key(&src) {
                    return Err(Filtered::CarriedSourceOnLan);
                }
                let wanted = self.carried.contains_key(&dst) || (dst.is_multicast() && !self.carried.is_empty());
                if !wanted {
                    return Err(Filtered::NotCarried);
                }
            }
        }
        self.learn(lan_vid, src, from, now);
        let src_ok = match from {
            Place::Peer(p) => self.carried.get(&src) == Some(&p),
            Place::Port(_) => self.carried.contains_key(&src),
        };
        let egress_ok = |kind: PortKind| kind == PortKind::Guest || src_ok;
        let known = if dst.is_multicast() {
            None
        } else {
            self.carried
                .get(&dst)
                .map(|p| Place::Peer(*p))
                .or_else(|| self.lookup(lan_vid, &dst, now))
        };
        match known {
            Some(at) if at == from => return Err(Filtered::Hairpin),
            Some(Place::Peer(q)) => {
                let v = self.peer(q).ok_or(Filtered::NoDestination)?.vlans.to_peer(lan_vid);
                out.peers.push((q, v.ok_or(Filtered::VlanNotAllowed)?));
            }
            Some(Place::Port(id)) => match self.kind(id) {
                Some(kind) if egress_ok(kind) => out.ports.push(id),
                Some(_) => return Err(Filtered::SourceNotCarried),
                None => return Err(Filtered::NoDestination),
            },
            None => {
                let mut egress_filtered = false;
                let mut has_lan = false;
                for &(id, kind) in &self.ports {
                    has_lan |= kind == PortKind::Lan;
                    if Place::Port(id) == from {
                        continue;
                    }
                    if egress_ok(kind) {
                        out.ports.push(id);
                    } else {
                        egress_filtered = true;
                    }
                }
                for p in &self.peers {
                    if Place::Peer(p.id) == from || (has_lan && p.carries == 0) {
                        continue;
                    }
                    if let Some(v) = p.vlans.to_peer(lan_vid) {
                        out.peers.push((p.id, v));
                    }
                }
                if out.peers.is_empty() && out.ports.is_empty() {
                    return Err(if egress_filtered {
                        Filtered::SourceNotCarried
                    } else {
                        Filtered::NoDestination
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const HOST_C: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);
    const MOVED_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
    const MOVED_D: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0d]);
    const MCAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    fn fwd(sw: &mut Switch, from: Place, dst: MacAddr, src: MacAddr) -> Result<Decision, Filtered> {
        let mut d = Decision::default();
        sw.forward(from, &frame(dst, src), Instant::now(), &mut d).map(|()| d)
    }

    fn tunnel_only() -> Decision {
        Decision {
            peers: vec![(0, UNTAGGED)],
            ports: vec![],
            vid: UNTAGGED,
        }
    }

    fn ports(p: &[PortId]) -> Decision {
        Decision {
            peers: vec![],
            ports: p.to_vec(),
            vid: UNTAGGED,
        }
    }

    const LAN: Place = Place::Port(1);

    fn lan_switch() -> Switch {
        let mut sw = Switch::new();
        sw.add_port(1, PortKind::Lan);
        sw.add_peer(0, PeerVlans::default());
        sw
    }

    #[test]
    fn lan_with_nothing_carried_passes_nothing() {
        let mut sw = lan_switch();
        for dst in [MOVED_B, MacAddr::BROADCAST, MCAST] {
            assert_eq!(fwd(&mut sw, LAN, dst, HOST_A), Err(Filtered::NotCarried), "{dst}");
        }
        for dst in [HOST_A, MacAddr::BROADCAST] {
            assert_eq!(fwd(&mut sw, Place::TUNNEL, dst, MOVED_B), Err(Filtered::SourceNotCarried), "{dst}");
        }
    }

    #[test]
    fn lan_rules_table() {
        let mut sw = lan_switch();
        sw.carry(MOVED_B);
        // (from, dst, src, expected)
        let table: Vec<(Place, MacAddr, MacAddr, Result<Decision, Filtered>)> = vec![
            (LAN, MOVED_B, HOST_A, Ok(tunnel_only())),
            (LAN, MacAddr::BROADCAST, HOST_A, Ok(tunnel_only())),
            (LAN, MCAST, HOST_A, Ok(tunnel_only())),
            (LAN, HOST_C, HOST_A, Err(Filtered::NotCarried)),
            (LAN, MOVED_D, HOST_A, Err(Filtered::NotCarried)),
            (LAN, MacAddr::BROADCAST, MOVED_B, Err(Filtered::CarriedSourceOnLan)),
            (LAN, HOST_A, MOVED_B, Err(Filtered::CarriedSourceOnLan)),
            (Place::TUNNEL, HOST_A, MOVED_B, Ok(ports(&[1]))),
            (Place::TUNNEL, MacAddr::BROADCAST, MOVED_B, Ok(ports(&[1]))),
            (Place::TUNNEL, HOST_C, MOVED_D, Err(Filtered::SourceNotCarried)),
            (Place::TUNNEL, MacAddr::BROADCAST, MOVED_D, Err(Filtered::SourceNotCarried)),
            // B was learned behind the tunnel: a frame "to B from the tunnel" would hairpin.
            (Place::TUNNEL, MOVED_B, MOVED_D, Err(Filtered::Hairpin)),
        ];
        for (i, (from, dst, src, want)) in table.into_iter().enumerate() {
            assert_eq!(fwd(&mut sw, from, dst, src), want, "row {i}");
        }
    }

    #[test]
    fn drop_mac_stops_both_directions() {
        let mut sw = lan_switch();
        sw.carry(MOVED_B);
        assert!(fwd(&mut sw, LAN, MOVED_B, HOST_A).is_ok());
        assert!(fwd(&mut sw, Place::TUNNEL, HOST_A, MOVED_B).is_ok());
        sw.uncarry(MOVED_B);
        assert_eq!(fwd(&mut sw, LAN, MOVED_B, HOST_A), Err(Filtered::NotCarried));
        assert_eq!(fwd(&mut sw, Place::TUNNEL, HOST_A, MOVED_B), Err(Filtered::SourceNotCarried));
    }

    #[test]
    fn runt() {
        let mut sw = lan_switch();
        let mut d = Decision::default();
        assert_eq!(sw.forward(LAN, &[0u8; 13], Instant::now(), &mut d), Err(Filtered::Runt));
    }

    #[test]
    fn guest_ports_learn_and_flood() {
        let mut sw = Switch::new();
        sw.add_peer(0, PeerVlans::default());
        sw.add_port(1, PortKind::Guest);
        sw.add_port(2, PortKind::Guest);
        // Unknown destination from the tunnel: flood to every guest port.
        assert_eq!(fwd(&mut sw, Place::TUNNEL, MOVED_B, HOST_A), Ok(ports(&[1, 2])));
        // B speaks on port 1, D on port 2: learned.
        assert_eq!(fwd(&mut sw, Place::Port(1), HOST_A, MOVED_B), Ok(tunnel_only()));
        assert_eq!(
            fwd(&mut sw, Place::Port(2), MacAddr::BROADCAST, MOVED_D),
            Ok(Decision {
                peers: vec![(0, UNTAGGED)],
                ports: vec![1],
                vid: UNTAGGED,
            })
        );
        assert_eq!(fwd(&mut sw, Place::TUNNEL, MOVED_B, HOST_A), Ok(ports(&[1])));
        assert_eq!(fwd(&mut sw, Place::TUNNEL, MOVED_D, HOST_A), Ok(ports(&[2])));
        // Broadcast from the tunnel reaches all guests, never back into the tunnel.
        assert_eq!(fwd(&mut sw, Place::TUNNEL, MacAddr::BROADCAST, HOST_A), Ok(ports(&[1, 2])));
        // Guest to guest stays local; guest to a LAN host goes into the tunnel.
        assert_eq!(fwd(&mut sw, Place::Port(1), MOVED_D, MOVED_B), Ok(ports(&[2])));
        assert_eq!(fwd(&mut sw, Place::Port(1), HOST_A, MOVED_B), Ok(tunnel_only()));
        // Never back out of the ingress port.
        assert_eq!(fwd(&mut sw, Place::Port(1), MOVED_B, MOVED_D), Err(Filtered::Hairpin));
        // Removing a port forgets what it learned: back to flooding.
        sw.remove_port(2);
        assert_eq!(fwd(&mut sw, Place::TUNNEL, MOVED_D, HOST_A), Ok(ports(&[1])));
    }

    #[test]
    fn no_ports_no_destination() {
        let mut sw = Switch::new();
        assert_eq!(fwd(&mut sw, Place::TUNNEL, MOVED_B, HOST_A), Err(Filtered::NoDestination));
    }

    #[test]
    fn learning_ages_out_and_is_bounded() {
        let mut sw = Switch::new();
        sw.add_port(1, PortKind::Guest);
        sw.add_port(2, PortKind::Guest);
        let t0 = Instant::now();
        let mut d = Decision::default();
        sw.forward(Place::Port(1), &frame(HOST_A, MOVED_B), t0, &mut d).unwrap();
        assert_eq!(sw.lookup(UNTAGGED, &MOVED_B, t0), Some(Place::Port(1)));
        assert_eq!(sw.lookup(UNTAGGED, &MOVED_B, t0 + LEARN_AGE), None);
        for i in 0..(LEARN_MAX + 10) {
            let src = MacAddr([0x02, 0x10, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            sw.forward(Place::Port(2), &frame(HOST_A, src), t0, &mut d).unwrap();
        }
        assert!(sw.table.len() <= LEARN_MAX);
    }

    fn tagged(dst: MacAddr, src: MacAddr, vid: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(0xa000 | vid).to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    fn fwd_frame(sw: &mut Switch, from: Place, f: &[u8]) -> Result<Decision, Filtered> {
        let mut d = Decision::default();
        sw.forward(from, f, Instant::now(), &mut d).map(|()| d)
    }

    /// One LCG, two cloud nodes: B moved to peer 1, D to peer 2.
    fn two_peers() -> Switch {
        let mut sw = Switch::new();
        sw.add_port(1, PortKind::Lan);
        sw.add_peer(1, PeerVlans::default());
        sw.add_peer(2, PeerVlans::default());
        sw.add_peer(3, PeerVlans::default()); // carries nothing
        sw.carry_via(MOVED_B, 1);
        sw.carry_via(MOVED_D, 2);
        sw
    }

    fn to_peers(p: &[PeerId]) -> Decision {
        Decision {
            peers: p.iter().map(|p| (*p, UNTAGGED)).collect(),
            ports: vec![],
            vid: UNTAGGED,
        }
    }

    #[test]
    fn each_moved_mac_goes_only_to_its_peer_and_floods_reach_only_peers_that_carry() {
        let mut sw = two_peers();
        let table: Vec<(Place, MacAddr, MacAddr, Result<Decision, Filtered>)> = vec![
            (LAN, MOVED_B, HOST_A, Ok(to_peers(&[1]))),
            (LAN, MOVED_D, HOST_A, Ok(to_peers(&[2]))),
            // Broadcast/multicast: the peers that carry something, not peer 3.
            (LAN, MacAddr::BROADCAST, HOST_A, Ok(to_peers(&[1, 2]))),
            (LAN, MCAST, HOST_A, Ok(to_peers(&[1, 2]))),
            (LAN, HOST_C, HOST_A, Err(Filtered::NotCarried)),
            // From a peer: to the LAN only for MACs carried via that peer.
            (Place::Peer(1), HOST_A, MOVED_B, Ok(ports(&[1]))),
            (Place::Peer(2), HOST_A, MOVED_B, Err(Filtered::SourceNotCarried)),
            (Place::Peer(3), HOST_A, MOVED_D, Err(Filtered::SourceNotCarried)),
            // Between moved servers on two cloud nodes: through the LCG.
            (Place::Peer(1), MOVED_D, MOVED_B, Ok(to_peers(&[2]))),
            // A broadcast from peer 1: LAN and the other carrying peer.
            (
                Place::Peer(1),
                MacAddr::BROADCAST,
                MOVED_B,
                Ok(Decision {
                    peers: vec![(2, UNTAGGED)],
                    ports: vec![1],
                    vid: UNTAGGED,
                }),
            ),
            (Place::Peer(1), MOVED_B, MOVED_D, Err(Filtered::Hairpin)),
        ];
        for (i, (from, dst, src, want)) in table.into_iter().enumerate() {
            assert_eq!(fwd(&mut sw, from, dst, src), want, "row {i}");
        }
        // Static entries beat learning: D "seen" behind peer 1 still goes to 2.
        let _ = fwd(&mut sw, Place::Peer(1), HOST_A, MOVED_D);
        assert_eq!(fwd(&mut sw, LAN, MOVED_D, HOST_A), Ok(to_peers(&[2])));
        // Moving B to peer 3.
        sw.carry_via(MOVED_B, 3);
        assert_eq!(fwd(&mut sw, LAN, MOVED_B, HOST_A), Ok(to_peers(&[3])));
        assert_eq!(fwd(&mut sw, LAN, MacAddr::BROADCAST, HOST_A), Ok(to_peers(&[2, 3])));
        // Removing peer 2 forgets D.
        sw.remove_peer(2);
        assert_eq!(fwd(&mut sw, LAN, MOVED_D, HOST_A), Err(Filtered::NotCarried));
        assert!(!sw.is_carried(&MOVED_D));
    }

    #[test]
    fn vlan_tags_are_kept_mapped_or_refused_per_peer() {
        let mut sw = two_peers();
        // Peer 2: LAN VLAN 42 is VLAN 142 there; it gets only VLAN 42 and untagged.
        sw.add_peer(
            2,
            PeerVlans {
                allowed: Some(vec![UNTAGGED, 42]),
                map: vec![(42, 142)],
            },
        );
        let bcast42 = tagged(MacAddr::BROADCAST, HOST_A, 42);
        assert_eq!(vid(&bcast42), 42);
        let d = fwd_frame(&mut sw, LAN, &bcast42).unwrap();
        assert_eq!(d.peers, vec![(1, 42), (2, 142)]);
        assert_eq!(d.vid, 42);
        // VLAN 7: peer 1 only.
        let d = fwd_frame(&mut sw, LAN, &tagged(MacAddr::BROADCAST, HOST_A, 7)).unwrap();
        assert_eq!(d.peers, vec![(1, 7)]);
        assert_eq!(fwd_frame(&mut sw, LAN, &tagged(MOVED_D, HOST_A, 7)), Err(Filtered::VlanNotAllowed));
        // Back from peer 2: 142 is LAN 42; its raw 42 (hidden by the map) and 7 are refused.
        let d = fwd_frame(&mut sw, Place::Peer(2), &tagged(HOST_A, MOVED_D, 142)).unwrap();
        assert_eq!((d.ports.clone(), d.vid), (vec![1], 42));
        assert_eq!(
            fwd_frame(&mut sw, Place::Peer(2), &tagged(HOST_A, MOVED_D, 42)),
            Err(Filtered::VlanNotAllowed)
        );
        assert_eq!(
            fwd_frame(&mut sw, Place::Peer(2), &tagged(HOST_A, MOVED_D, 7)),
            Err(Filtered::VlanNotAllowed)
        );
        // Learning is per VLAN: A learned in VLAN 42 only.
        let now = Instant::now();
        assert_eq!(sw.lookup(42, &HOST_A, now), Some(LAN));
        assert_eq!(sw.lookup(UNTAGGED, &HOST_A, now), None);
    }

    #[test]
    fn vid_parse_and_rewrite() {
        let mut f = tagged(HOST_A, HOST_C, 42);
        assert!(set_vid(&mut f, 142));
        assert_eq!(vid(&f), 142);
        assert_eq!(f[14] >> 4, 0xa, "priority kept");
        let mut plain = frame(HOST_A, HOST_C);
        assert_eq!(vid(&plain), UNTAGGED);
        assert!(!set_vid(&mut plain, 5));
        assert_eq!(vid(&[0x81, 0x00]), UNTAGGED);
        let mut runt = [0u8; 15];
        runt[12] = 0x81;
        assert!(!set_vid(&mut runt, 5));
    }
}
