//! Feeds arbitrary Ethernet frames from arbitrary places through checksum
//! completion, super-frame segmentation and the switch: nothing may panic,
//! and the LAN filter must hold whatever the bytes are.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use netbridge::filter::{Decision, PeerVlans, Place, PortKind, Switch};
use netbridge::port::{csum, gso};
use proto::MacAddr;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut sw = Switch::new();
    sw.add_port(1, PortKind::Lan);
    sw.add_port(2, PortKind::Guest);
    sw.add_port(3, PortKind::Guest);
    sw.add_peer(0, PeerVlans::default());
    let carried = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
    sw.carry(carried);
    let mut d = Decision::default();
    let mut rest = data;
    while let Some((&sel, tail)) = rest.split_first() {
        let n = ((sel >> 2) as usize * 4).min(tail.len());
        let mut frame = tail[..n].to_vec();
        rest = &tail[n..];
        let _ = csum::complete(&mut frame);
        let _ = csum::complete_partial(&mut frame, (sel as usize) * 2, 6);
        if let Some(kind) = gso::GsoKind::from_virtio(sel & 0x87) {
            let mut out = [0u8; 2048];
            let _ = gso::segment(&frame, kind, u16::from(sel) * 4, &mut out, |seg| {
                assert!(seg.len() <= 2048);
            });
        }
        let from = match sel & 3 {
            0 => Place::TUNNEL,
            k => Place::Port(k as u32),
        };
        if sw.forward(from, &frame, now, &mut d).is_ok() && d.ports.contains(&1) {
            // Nothing reaches the LAN unless its source is carried.
            assert_eq!(&frame[6..12], &carried.0);
        }
    }
});
