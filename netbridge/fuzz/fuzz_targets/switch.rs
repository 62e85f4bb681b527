//! The many-peer, VLAN-aware switch under arbitrary frames from arbitrary
//! places (LAN port, guest port, three peers with different VLAN rules),
//! interleaved with carry/uncarry/move commands and time passing: nothing
//! panics, and the rules hold whatever the bytes are:
//! - nothing reaches the LAN unless its source is carried (via the peer it
//!   came from, if it came from a peer);
//! - unicast to a carried MAC goes to its peer only;
//! - a frame never goes back where it came from;
//! - a peer only gets VLANs it allows, tagged as its map says;
//! - VID parsing and rewriting agree.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netbridge::filter::{self, Decision, PeerVlans, Place, PortKind, Switch, UNTAGGED};
use proto::MacAddr;

fn peer_vlans(p: u32) -> PeerVlans {
    match p {
        0 => PeerVlans::default(),
        1 => PeerVlans {
            allowed: Some(vec![UNTAGGED, 42, 7]),
            map: vec![(42, 142)],
        },
        _ => PeerVlans {
            allowed: Some(vec![5]),
            map: vec![],
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut sw = Switch::new();
    sw.add_port(1, PortKind::Lan);
    sw.add_port(2, PortKind::Guest);
    for p in 0..3 {
        sw.add_peer(p, peer_vlans(p));
    }
    let mut d = Decision::default();
    let mut rest = data;
    while let Some((&sel, tail)) = rest.split_first() {
        now += Duration::from_secs(u64::from(sel >> 6) * 100);
        if sel & 0x20 != 0 {
            // A command: carry/uncarry the MAC in the next 6 bytes.
            if tail.len() < 6 {
                break;
            }
            let m = MacAddr(tail[..6].try_into().unwrap());
            rest = &tail[6..];
            match sel & 3 {
                3 => sw.uncarry(m),
                p => sw.carry_via(m, u32::from(p)),
            }
            continue;
        }
        let n = ((sel & 0x1f) as usize * 3).min(tail.len());
        let mut frame = tail[..n].to_vec();
        rest = &tail[n..];
        let v = filter::vid(&frame);
        if filter::set_vid(&mut frame, v ^ 0x123) {
            assert_eq!(filter::vid(&frame), (v ^ 0x123) & 0x0fff);
            filter::set_vid(&mut frame, v);
        }
        assert_eq!(filter::vid(&frame), v);
        let from = match sel & 0x1c {
            0 => Place::Port(1),
            4 => Place::Port(2),
            k => Place::Peer(u32::from(k >> 2) % 3),
        };
        if sw.forward(from, &frame, now, &mut d).is_err() {
            continue;
        }
        let dst = MacAddr(frame[0..6].try_into().unwrap());
        let src = MacAddr(frame[6..12].try_into().unwrap());
        if d.ports.contains(&1) {
            match from {
                Place::Peer(p) => assert_eq!(sw.carried_via(&src), Some(p)),
                Place::Port(_) => assert!(sw.is_carried(&src)),
            }
        }
        if let Place::Port(id) = from {
            assert!(!d.ports.contains(&id));
        }
        if let Place::Peer(p) = from {
            assert!(d.peers.iter().all(|(q, _)| *q != p));
        }
        if !dst.is_multicast() {
            if let Some(p) = sw.carried_via(&dst) {
                assert!(d.ports.is_empty() && d.peers.len() == 1 && d.peers[0].0 == p);
            }
        }
        for &(p, vid) in &d.peers {
            assert_eq!(peer_vlans(p).to_peer(d.vid), Some(vid));
        }
    }
});
