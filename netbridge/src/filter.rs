//! Which frames cross, and where they go: a small learning switch whose
//! ports are the local ports plus the tunnel, with the LAN port's MAC filter
//! at its edge.
//!
//! Rules (the appliance's LAN port must not leak the data center into the
//! cloud, and must not let the cloud speak for MACs that were not moved):
//! - LAN ingress: a frame enters the switch only if its destination is a
//!   carried MAC, or it is broadcast/multicast and at least one MAC is
//!   carried; a frame whose *source* is a carried MAC is dropped (that MAC
//!   lives behind the tunnel: seeing it on the LAN is a loop or a conflict).
//! - LAN egress: a frame leaves on the LAN only if its source is a carried MAC.
//! - Guest ports: unfiltered.
//! - Switching: destinations are learned from source MACs; a known unicast
//!   destination goes to the one place it was learned, anything else floods
//!   to every other port and the tunnel. A frame never goes back where it
//!   came from.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proto::MacAddr;

/// Identifies a local port for the life of the bridge (never reused).
pub type PortId = u32;

/// Learned entries older than this are forgotten.
pub const LEARN_AGE: Duration = Duration::from_secs(300);
/// At most this many learned MACs.
pub const LEARN_MAX: usize = 4096;

/// How a local port is filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// The appliance's LAN port: carried-MAC filter applies.
    Lan,
    /// A guest's TAP: everything crosses.
    Guest,
}

/// Where a frame entered the switch, or where a MAC was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A local port.
    Port(PortId),
    /// The encrypted tunnel.
    Tunnel,
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
    /// Frame from the tunnel whose source is not carried, towards the LAN only.
    #[error("source not carried")]
    SourceNotCarried,
    /// Destination was learned where the frame came from.
    #[error("destination is behind the ingress port")]
    Hairpin,
    /// No place to send it (e.g. no ports).
    #[error("no destination")]
    NoDestination,
}

/// Where a frame goes. Reused between frames to avoid allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Into the tunnel.
    pub tunnel: bool,
    /// Out of these local ports.
    pub ports: Vec<PortId>,
}

impl Decision {
    fn clear(&mut self) {
        self.tunnel = false;
        self.ports.clear();
    }
}

#[derive(Clone, Copy, Debug)]
struct Learned {
    at: Place,
    seen: Instant,
}

/// The switch.
#[derive(Debug, Default)]
pub struct Switch {
    carried: HashSet<MacAddr>,
    ports: Vec<(PortId, PortKind)>,
    table: HashMap<MacAddr, Learned>,
}

fn mac(b: &[u8]) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    MacAddr(m)
}

impl Switch {
    /// A switch with no ports and nothing carried.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts carrying `m` across the LAN filter.
    pub fn carry(&mut self, m: MacAddr) {
        self.carried.insert(m);
    }

    /// Stops carrying `m`.
    pub fn uncarry(&mut self, m: MacAddr) {
        self.carried.remove(&m);
    }

    /// Is `m` carried?
    pub fn is_carried(&self, m: &MacAddr) -> bool {
        self.carried.contains(m)
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

    /// Where `m` was last seen as a source, if recently.
    pub fn lookup(&self, m: &MacAddr, now: Instant) -> Option<Place> {
        self.table
            .get(m)
            .filter(|l| now.saturating_duration_since(l.seen) < LEARN_AGE)
            .map(|l| l.at)
    }

    fn kind(&self, id: PortId) -> Option<PortKind> {
        self.ports.iter().find(|(p, _)| *p == id).map(|(_, k)| *k)
    }

    fn learn(&mut self, src: MacAddr, at: Place, now: Instant) {
        if src.is_multicast() {
            return;
        }
        if self.table.len() >= LEARN_MAX && !self.table.contains_key(&src) {
            self.table.retain(|_, l| now.saturating_duration_since(l.seen) < LEARN_AGE);
            if self.table.len() >= LEARN_MAX {
                return;
            }
        }
        self.table.insert(src, Learned { at, seen: now });
    }

    /// Decides where a frame that entered at `from` goes; fills `out`.
    pub fn forward(&mut self, from: Place, frame: &[u8], now: Instant, out: &mut Decision) -> Result<(), Filtered> {
        out.clear();
        if frame.len() < 14 {
            return Err(Filtered::Runt);
        }
        let dst = mac(&frame[0..6]);
        let src = mac(&frame[6..12]);
        // Ingress filter.
        if let Place::Port(id) = from {
            if self.kind(id) == Some(PortKind::Lan) {
                if self.carried.contains(&src) {
                    return Err(Filtered::CarriedSourceOnLan);
                }
                let wanted = self.carried.contains(&dst) || (dst.is_multicast() && !self.carried.is_empty());
                if !wanted {
                    return Err(Filtered::NotCarried);
                }
            }
        }
        self.learn(src, from, now);
        let src_carried = self.carried.contains(&src);
        let egress_ok = |kind: PortKind| kind == PortKind::Guest || src_carried;
        let known = if dst.is_multicast() { None } else { self.lookup(&dst, now) };
        match known {
            Some(at) if at == from => return Err(Filtered::Hairpin),
            Some(Place::Tunnel) => out.tunnel = true,
            Some(Place::Port(id)) => match self.kind(id) {
                Some(kind) if egress_ok(kind) => out.ports.push(id),
                Some(_) => return Err(Filtered::SourceNotCarried),
                None => return Err(Filtered::NoDestination),
            },
            None => {
                out.tunnel = from != Place::Tunnel;
                let mut egress_filtered = false;
                for &(id, kind) in &self.ports {
                    if Place::Port(id) == from {
                        continue;
                    }
                    if egress_ok(kind) {
                        out.ports.push(id);
                    } else {
                        egress_filtered = true;
                    }
                }
                if !out.tunnel && out.ports.is_empty() {
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
            tunnel: true,
            ports: vec![],
        }
    }

    fn ports(p: &[PortId]) -> Decision {
        Decision {
            tunnel: false,
            ports: p.to_vec(),
        }
    }

    const LAN: Place = Place::Port(1);

    fn lan_switch() -> Switch {
        let mut sw = Switch::new();
        sw.add_port(1, PortKind::Lan);
        sw
    }

    #[test]
    fn lan_with_nothing_carried_passes_nothing() {
        let mut sw = lan_switch();
        for dst in [MOVED_B, MacAddr::BROADCAST, MCAST] {
            assert_eq!(fwd(&mut sw, LAN, dst, HOST_A), Err(Filtered::NotCarried), "{dst}");
        }
        for dst in [HOST_A, MacAddr::BROADCAST] {
            assert_eq!(fwd(&mut sw, Place::Tunnel, dst, MOVED_B), Err(Filtered::SourceNotCarried), "{dst}");
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
            (Place::Tunnel, HOST_A, MOVED_B, Ok(ports(&[1]))),
            (Place::Tunnel, MacAddr::BROADCAST, MOVED_B, Ok(ports(&[1]))),
            (Place::Tunnel, HOST_C, MOVED_D, Err(Filtered::SourceNotCarried)),
            (Place::Tunnel, MacAddr::BROADCAST, MOVED_D, Err(Filtered::SourceNotCarried)),
            // B was learned behind the tunnel: a frame "to B from the tunnel" would hairpin.
            (Place::Tunnel, MOVED_B, MOVED_D, Err(Filtered::Hairpin)),
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
        assert!(fwd(&mut sw, Place::Tunnel, HOST_A, MOVED_B).is_ok());
        sw.uncarry(MOVED_B);
        assert_eq!(fwd(&mut sw, LAN, MOVED_B, HOST_A), Err(Filtered::NotCarried));
        assert_eq!(fwd(&mut sw, Place::Tunnel, HOST_A, MOVED_B), Err(Filtered::SourceNotCarried));
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
        sw.add_port(1, PortKind::Guest);
        sw.add_port(2, PortKind::Guest);
        // Unknown destination from the tunnel: flood to every guest port.
        assert_eq!(fwd(&mut sw, Place::Tunnel, MOVED_B, HOST_A), Ok(ports(&[1, 2])));
        // B speaks on port 1, D on port 2: learned.
        assert_eq!(fwd(&mut sw, Place::Port(1), HOST_A, MOVED_B), Ok(tunnel_only()));
        assert_eq!(
            fwd(&mut sw, Place::Port(2), MacAddr::BROADCAST, MOVED_D),
            Ok(Decision {
                tunnel: true,
                ports: vec![1]
            })
        );
        assert_eq!(fwd(&mut sw, Place::Tunnel, MOVED_B, HOST_A), Ok(ports(&[1])));
        assert_eq!(fwd(&mut sw, Place::Tunnel, MOVED_D, HOST_A), Ok(ports(&[2])));
        // Broadcast from the tunnel reaches all guests, never back into the tunnel.
        assert_eq!(fwd(&mut sw, Place::Tunnel, MacAddr::BROADCAST, HOST_A), Ok(ports(&[1, 2])));
        // Guest to guest stays local; guest to a LAN host goes into the tunnel.
        assert_eq!(fwd(&mut sw, Place::Port(1), MOVED_D, MOVED_B), Ok(ports(&[2])));
        assert_eq!(fwd(&mut sw, Place::Port(1), HOST_A, MOVED_B), Ok(tunnel_only()));
        // Never back out of the ingress port.
        assert_eq!(fwd(&mut sw, Place::Port(1), MOVED_B, MOVED_D), Err(Filtered::Hairpin));
        // Removing a port forgets what it learned: back to flooding.
        sw.remove_port(2);
        assert_eq!(fwd(&mut sw, Place::Tunnel, MOVED_D, HOST_A), Ok(ports(&[1])));
    }

    #[test]
    fn no_ports_no_destination() {
        let mut sw = Switch::new();
        assert_eq!(fwd(&mut sw, Place::Tunnel, MOVED_B, HOST_A), Err(Filtered::NoDestination));
    }

    #[test]
    fn learning_ages_out_and_is_bounded() {
        let mut sw = Switch::new();
        sw.add_port(1, PortKind::Guest);
        sw.add_port(2, PortKind::Guest);
        let t0 = Instant::now();
        let mut d = Decision::default();
        sw.forward(Place::Port(1), &frame(HOST_A, MOVED_B), t0, &mut d).unwrap();
        assert_eq!(sw.lookup(&MOVED_B, t0), Some(Place::Port(1)));
        assert_eq!(sw.lookup(&MOVED_B, t0 + LEARN_AGE), None);
        for i in 0..(LEARN_MAX + 10) {
            let src = MacAddr([0x02, 0x10, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            sw.forward(Place::Port(2), &frame(HOST_A, src), t0, &mut d).unwrap();
        }
        assert!(sw.table.len() <= LEARN_MAX);
    }
}
