//! The HA fencing rule under an arbitrary schedule: two members ask an
//! arbiter for the lease at arbitrary times; requests and answers are
//! delayed, lost, duplicated and reordered arbitrarily (but never arrive
//! before they were sent); forged requests and denials are injected too
//! (grants come only from the arbiter: the tunnel authenticates them). Invariant: at no instant are both members active, and a member
//! is active only while the arbiter lets its tunnel forward.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netbridge::ha::{Arbiter, Control, Member, MemberId};

/// A message in flight: deliver at `at` to `to` (0: arbiter from member
/// `from`, a member key; 1/2: member).
struct InFlight {
    at: Instant,
    to: u8,
    from: MemberId,
    msg: Control,
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut arb = Arbiter::new(t0);
    let mut members = [Member::new(), Member::new()];
    let mut flight: Vec<InFlight> = Vec::new();
    let mut bytes = data.chunks_exact(2);
    for pair in &mut bytes {
        let (op, arg) = (pair[0], pair[1]);
        now += Duration::from_millis(u64::from(op >> 4) * 40);
        let delay = Duration::from_millis(u64::from(arg) * 8);
        match op & 3 {
            // A member asks (if due); its request arrives after `delay` (or is lost).
            0 | 1 => {
                let i = usize::from(op & 1);
                if let Some(req) = members[i].request_due(now) {
                    if arg != 255 {
                        flight.push(InFlight { at: now + delay, to: 0, from: [i as u8 + 1; 32], msg: req });
                    }
                }
            }
            // Deliver due messages, in an order picked by `arg`, maybe twice.
            2 => {
                let mut due: Vec<InFlight> = Vec::new();
                let mut k = 0;
                while k < flight.len() {
                    if flight[k].at <= now {
                        due.push(flight.swap_remove(k));
                    } else {
                        k += 1;
                    }
                }
                if arg & 1 == 1 {
                    due.reverse();
                }
                for m in due {
                    let times = if arg & 2 == 2 { 2 } else { 1 };
                    for _ in 0..times {
                        if m.to == 0 {
                            if let Some(ans) = arb.on_message(&m.from, m.msg, now) {
                                flight.push(InFlight {
                                    at: now + delay,
                                    to: m.from[0],
                                    from: [0; 32],
                                    msg: ans,
                                });
                            }
                        } else {
                            let _ = members[usize::from(m.to - 1)].on_message(m.msg, now);
                        }
                    }
                }
            }
            // Arbitrary control bytes to a member.
            _ => {
                let mut f = Control::Request { epoch: 0, seq: 0 }.encode();
                f[22] = arg % 4;
                f[26] = op;
                f[34] = arg;
                f[42..44].copy_from_slice(&[arg, op]);
                // Grants are only ever made by the arbiter (the tunnel
                // authenticates them); requests and denials may come from
                // anywhere in this model.
                match Control::parse(&f) {
                    Some(Control::Grant { .. }) | None => {}
                    Some(c) => {
                        let _ = members[usize::from(arg & 1)].on_message(c, now);
                    }
                }
            }
        }
        let (a, b) = (members[0].is_active(now), members[1].is_active(now));
        assert!(!(a && b), "both members active");
        if a {
            assert!(arb.may_forward(&[1; 32], now), "member 1 active without the arbiter's lease");
        }
        if b {
            assert!(arb.may_forward(&[2; 32], now), "member 2 active without the arbiter's lease");
        }
    }
});
