//! The LAN port's receive rings (TPACKET_V2 frame slots and TPACKET_V3
//! blocks) against a real kernel: frames injected on one end of a veth pair
//! (in a namespace made by the test, MTU 9000) come out of the ring on the
//! other end byte for byte and in order — 60- and 1514-byte frames,
//! 802.1Q-tagged frames whose tag the kernel moved into `tp_vlan_tci` and
//! the ring walk puts back, and a 4000-byte frame, which does not fit a V2
//! slot and is read whole from the receive queue (`TP_STATUS_COPY`).

mod common;

use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{enter, must, root_or_skip, veth, Lab};
use netbridge::port::packet::{PacketSocket, HEADROOM};
use netbridge::port::ring::RxRing;
use netbridge::port::PORT_FRAME_MAX;
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
fn frame_ring_delivers_small_full_size_tagged_and_oversize_frames_intact() -> Result<()> {
    ring_test(
        "frame_ring_delivers_small_full_size_tagged_and_oversize_frames_intact",
        "TPACKET_V2",
        |i| Ok(PacketSocket::open_with_frame_ring(i, HEADROOM + PORT_FRAME_MAX)?),
    )
}

#[test]
fn block_ring_delivers_small_full_size_tagged_and_oversize_frames_intact() -> Result<()> {
    ring_test(
        "block_ring_delivers_small_full_size_tagged_and_oversize_frames_intact",
        "TPACKET_V3",
        |i| Ok(PacketSocket::open_with_rx_ring(i)?),
    )
}

fn ring_test(name: &str, kind: &'static str, open: fn(&str) -> Result<PacketSocket>) -> Result<()> {
    if !root_or_skip(name) {
        return Ok(());
    }
    let mut lab = Lab::new(format!("nbr{}{}-", std::process::id(), &kind[kind.len() - 1..]));
    let [ns] = lab.add_namespaces(["r"])?;
    veth(&ns, "rtx", &ns, "rrx")?;
    for dev in ["rtx", "rrx"] {
        must(&["ip", "-n", &ns, "link", "set", dev, "mtu", "9000"])?;
    }
    let want = vec![
        frame(60, None, 1),
        frame(1514, None, 2),
        frame(4000, None, 5),
        frame(64, Some(42), 3),
        frame(1518, Some(4094), 4),
        frame(60, None, 6),
    ];
    let sent = want.clone();
    let got = thread::spawn(move || -> Result<Vec<Vec<u8>>> {
        enter(&ns)?;
        let mut rx = open("rrx")?;
        if !rx.has_ring() {
            bail!("no {kind} ring on this kernel (see the warning above); the ring path is not tested");
        }
        let tx = PacketSocket::open("rtx")?;
        for f in &sent {
            tx.send(f).context("inject frame")?;
        }
        let mut ring = rx.take_ring().context("ring")?;
        let mut got = Vec::new();
        // Only ours: a veth also carries IPv6 autoconfiguration.
        let keep = |got: &mut Vec<Vec<u8>>, f: &[u8]| {
            if f.len() >= 12 && f[6..12] == SRC {
                got.push(f.to_vec());
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            {
                let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            let w = ring.walk(16, |buf, info| {
                assert!(!info.truncated);
                keep(&mut got, &buf[info.start..info.start + info.len]);
            });
            assert_eq!(w.malformed, 0, "the kernel's ring headers failed the checks");
            if let (RxRing::Frames(frames), true) = (&mut ring, w.copy_pending) {
                let (buf, info) = frames.recv_copy(&rx)?.context("the kernel queued no copy of an oversize frame")?;
                assert!(!info.truncated);
                keep(&mut got, &buf[info.start..info.start + info.len]);
            }
            if got.len() >= sent.len() {
                break;
            }
        }
        rx.put_ring(ring);
        Ok(got)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("ring thread panicked"))??;
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        want.iter().map(Vec::len).collect::<Vec<_>>(),
        "frames lost or reordered"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {i} ({} bytes) did not come out of the ring intact", w.len());
    }
    drop(lab);
    Ok(())
}
