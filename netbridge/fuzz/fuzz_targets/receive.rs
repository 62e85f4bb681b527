//! Feeds arbitrary datagrams into the protocol core's receive path, both as
//! raw bytes (parser, handshake processing) and as bit-flips of genuine
//! data datagrams (to get past the parser into the AEAD, the replay window
//! and reassembly). Nothing may panic, and nothing forged may come out as a
//! frame.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use netbridge::keys::StaticKeypair;
use netbridge::noise::Identity;
use netbridge::tunnel::{Received, Tunnel};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

/// An initiator and a responder with a completed handshake.
fn established(now: Instant) -> (Tunnel, Tunnel) {
    let a = StaticKeypair::from_private([1; 32]);
    let b = StaticKeypair::from_private([2; 32]);
    let psk = [3; 32];
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut i = Tunnel::new(
        Identity::new(a.clone(), b.public, psk).unwrap(),
        Some(addr("192.0.2.2:1")),
        now,
        wall,
    );
    let mut r = Tunnel::new(Identity::new(b, a.public, psk).unwrap(), None, now, wall);
    let init = i.tick(now).expect("initiation").first.to_vec();
    let mut buf = init.clone();
    let resp = match r.receive(addr("192.0.2.1:1"), &mut buf, now) {
        Received::Reply(o) => o.first.to_vec(),
        other => panic!("no response: {other:?}"),
    };
    let mut buf = resp;
    let ka = match i.receive(addr("192.0.2.2:1"), &mut buf, now) {
        Received::Reply(o) => o.first.to_vec(),
        other => panic!("no keepalive: {other:?}"),
    };
    let mut buf = ka;
    assert_eq!(r.receive(addr("192.0.2.1:1"), &mut buf, now), Received::Nothing);
    (i, r)
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let (mut i, mut r) = established(now);
    let Some((&mode, rest)) = data.split_first() else { return };
    // Genuine datagrams to mutate: one whole frame and a fragmented one.
    let mut genuine: Vec<Vec<u8>> = Vec::new();
    for len in [60usize, 1514] {
        let frame = vec![0x5a; len];
        let out = i.send_frame(&frame, now).expect("sealed");
        genuine.extend(out.datagrams().map(|d| d.to_vec()));
    }
    // Split the input into datagrams with one-byte length prefixes.
    let mut chunks = Vec::new();
    let mut rest = rest;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize * 8).min(tail.len());
        chunks.push(&tail[..n]);
        rest = &tail[n..];
    }
    for (k, chunk) in chunks.iter().enumerate() {
        let mut d = if mode & 1 == 1 && !genuine.is_empty() {
            // XOR the chunk over a genuine datagram.
            let mut g = genuine[k % genuine.len()].clone();
            for (b, x) in g.iter_mut().zip(chunk.iter()) {
                *b ^= x;
            }
            let changed = chunk.iter().take(g.len()).any(|&x| x != 0);
            if !changed {
                continue; // an unchanged genuine datagram is legitimately accepted
            }
            g
        } else {
            chunk.to_vec()
        };
        let target = if mode & 2 == 2 { &mut i } else { &mut r };
        let t = now + Duration::from_millis(k as u64 * 100);
        if let Received::Frame(f) = target.receive(addr("203.0.113.1:9"), &mut d, t) {
            // Only a frame made of genuine halves may appear: a forged
            // datagram never authenticates.
            assert!(f.iter().all(|&b| b == 0x5a), "forged frame delivered");
        }
        let _ = target.tick(t);
    }
});
