//! Feeds arbitrary frames, at arbitrary times, through the LAN guard (loop
//! probes, echo and duplicate-MAC detection, storm control) at each of its
//! edges, and through the HA control-frame parser: nothing may panic; a
//! control frame that parses re-encodes to the same bytes; our own probe is
//! always recognised as a loop.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netbridge::guard::{LanGuard, Verdict};
use netbridge::ha::{self, Control};
use proto::MacAddr;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut g = LanGuard::new([7; 8], MacAddr([0x02, 0x99, 0, 0, 0, 1]), t0);
    let mut rest = data;
    while let Some((&sel, tail)) = rest.split_first() {
        let n = ((sel >> 3) as usize * 3).min(tail.len());
        let frame = &tail[..n];
        rest = &tail[n..];
        now += Duration::from_millis(u64::from(sel & 7) * 150);
        if let Some(c) = Control::parse(frame) {
            assert!(ha::is_control(frame));
            assert_eq!(&c.encode()[..], frame);
        }
        match sel & 7 {
            0 => {
                let _ = g.lan_ingress(frame, false, false, now);
            }
            1 => {
                let _ = g.lan_ingress(frame, true, false, now);
            }
            2 => {
                let _ = g.lan_ingress(frame, false, true, now);
            }
            3 => {
                let _ = g.into_tunnel(frame, now);
            }
            4 => {
                let _ = g.from_tunnel(frame, sel & 8 != 0, now);
            }
            5 => g.put_on_lan(frame, now),
            6 => {
                if let Some(p) = g.probe_due(now) {
                    assert_eq!(g.lan_ingress(&p, false, false, now), Verdict::Loop);
                }
            }
            _ => {
                if let Some(m) = g.duplicates().first() {
                    assert!(g.clear_duplicate(*m));
                }
            }
        }
    }
});
