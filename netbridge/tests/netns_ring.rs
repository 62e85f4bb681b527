//! The LAN port's TPACKET_V3 receive ring against a real kernel: frames
//! injected on one end of a veth pair (in a namespace made by the test) come
//! out of the ring on the other end byte for byte — a 60-byte frame, a
//! 1514-byte frame, and an 802.1Q-tagged frame whose tag the kernel moved
//! into `tp_vlan_tci` and the ring walk puts back.

mod common;

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{enter, root_or_skip, veth, Lab};
use netbridge::port::packet::PacketSocket;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const SRC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
const DST: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

/// A frame of `len` bytes from SRC to DST, EtherType 0x88b5 (local
/// experimental), optionally with an 802.1Q tag (VID `vid`, priority 3), and
/// a payload that says which frame it is.
fn frame(len: usize, vid: Option<u16>, tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&DST);
    f.extend_from_slice(&SRC);
    if let Some(vid) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&((3 << 13) | vid).to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5]);
    let mut i = 0u8;
    while f.len() < len {
        f.push(tag ^ i);
        i = i.wrapping_add(1);
    }
    f
}

#[test]
fn ring_delivers_small_full_size_and_tagged_frames_intact() -> Result<()> {
    if !root_or_skip("ring_delivers_small_full_size_and_tagged_frames_intact") {
        return Ok(());
    }
    let mut lab = Lab::new(format!("nbr{}-", std::process::id()));
    let [ns] = lab.add_namespaces(["r"])?;
    veth(&ns, "rtx", &ns, "rrx")?;
    let want = vec![
        frame(60, None, 1),
        frame(1514, None, 2),
        frame(64, Some(42), 3),
        frame(1518, Some(4094), 4),
    ];
    let sent = want.clone();
    let got = thread::spawn(move || -> Result<Vec<Vec<u8>>> {
        enter(&ns)?;
        let mut rx = PacketSocket::open_with_rx_ring("rrx")?;
        if !rx.has_ring() {
            bail!("no TPACKET_V3 ring on this kernel (see the warning above); the ring path is not tested");
        }
        let tx = PacketSocket::open("rtx")?;
        for f in &sent {
            tx.send(f).context("inject frame")?;
        }
        let mut ring = rx.take_ring().context("ring")?;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() && Instant::now() < deadline {
            {
                let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            let w = ring.walk(16, |buf, info| {
                let f = &buf[info.start..info.start + info.len];
                assert!(!info.truncated);
                // Only ours: a veth also carries IPv6 autoconfiguration.
                if f.len() >= 12 && f[6..12] == SRC {
                    got.push(f.to_vec());
                }
            });
            assert_eq!(w.malformed, 0, "the kernel's ring headers failed the checks");
        }
        rx.put_ring(ring);
        Ok(got)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("ring thread panicked"))??;
    let got_set: HashSet<_> = got.iter().collect();
    for (i, f) in want.iter().enumerate() {
        assert!(
            got_set.contains(f),
            "frame {i} ({} bytes) did not come out of the ring intact; got lengths {:?}",
            f.len(),
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    drop(lab);
    Ok(())
}
