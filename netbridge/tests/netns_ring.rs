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

/// Namespace `suffix` of `lab` with a veth pair `a`–`b` in it, MTU 9000.
fn jumbo_veth(lab: &mut Lab, suffix: &str, a: &str, b: &str) -> Result<String> {
    let [ns] = lab.add_namespaces([suffix])?;
    veth(&ns, a, &ns, b)?;
    for dev in [a, b] {
        must(&["ip", "-n", &ns, "link", "set", dev, "mtu", "9000"])?;
    }
    Ok(ns)
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
    let ns = jumbo_veth(&mut lab, "r", "rtx", "rrx")?;
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

/// The guest port's transmit ring (TPACKET_V2 `PACKET_TX_RING`): frames
/// sent in batches as the bridge sends them come out of the far end of a
/// veth byte for byte and in order — small, full-size and tagged frames
/// through the ring, frames too large for a slot (6000 and 8000 bytes at MTU
/// 9000) on the plain socket between them, and a burst of 600 frames that
/// wraps the 256-slot ring more than twice before the receiver reads any.
#[test]
fn tx_ring_sends_small_full_size_tagged_and_oversize_frames_intact_and_in_order() -> Result<()> {
    let name = "tx_ring_sends_small_full_size_tagged_and_oversize_frames_intact_and_in_order";
    if !root_or_skip(name) {
        return Ok(());
    }
    let mut lab = Lab::new(format!("nbt{}-", std::process::id()));
    let ns = jumbo_veth(&mut lab, "t", "ttx", "trx")?;
    let mut want = vec![
        frame(60, None, 1),
        frame(1514, None, 2),
        frame(6000, None, 5),
        frame(64, Some(42), 3),
        frame(1518, Some(4094), 4),
        frame(4000, None, 7),
        frame(8000, None, 8),
        frame(60, None, 6),
    ];
    for i in 0..600u32 {
        let mut f = frame(64 + (i as usize % 3) * 700, None, 9);
        f[14..18].copy_from_slice(&i.to_be_bytes());
        want.push(f);
    }
    let sent = want.clone();
    let (got, ring_after) = thread::spawn(move || -> Result<(Vec<Vec<u8>>, bool)> {
        enter(&ns)?;
        let rx = PacketSocket::open("trx")?;
        let mut tx = PacketSocket::open_with_tx_ring("ttx")?;
        if !tx.has_tx_ring() {
            bail!("no TPACKET_V2 transmit ring on this kernel (see the warning above); the ring path is not tested");
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; HEADROOM + PORT_FRAME_MAX];
        let mut drain = |got: &mut Vec<Vec<u8>>| -> Result<()> {
            while let Some(info) = rx.recv(&mut buf)? {
                let f = &buf[info.start..info.start + info.len];
                // Only ours: a veth also carries IPv6 autoconfiguration.
                if !info.truncated && f.len() >= 12 && f[6..12] == SRC {
                    got.push(f.to_vec());
                }
            }
            Ok(())
        };
        // As Port::flush sends: batches of up to 32.
        for chunk in sent.chunks(32) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let (n, e) = tx.send_batch(&refs);
            if let Some(e) = e {
                bail!("send_batch: {n} of {} sent: {e}", refs.len());
            }
            assert_eq!(n, refs.len());
        }
        // Read only now: every slot has been reused while the receiver still
        // held the frame it carried before (the kernel must have copied it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() && Instant::now() < deadline {
            {
                let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            drain(&mut got)?;
        }
        Ok((got, tx.has_tx_ring()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("transmit thread panicked"))??;
    assert!(ring_after, "the transmit ring was dropped during the test (a frame refused)");
    udp_through_tx_ring(&mut lab)?;
    assert_eq!(got.len(), want.len(), "frames lost");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {i} ({} bytes) did not arrive intact and in order", w.len());
    }
    drop(lab);
    Ok(())
}

/// An IPv4/UDP frame from 10.77.0.1:4000 to 10.77.0.2:5000 (DST's MAC)
/// whose payload is `n` repeated.
fn udp_frame(n: u32, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST);
    f.extend_from_slice(&SRC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload_len) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    // UDP checksum 0: none (IPv4).
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    for _ in 0..payload_len / 4 {
        f.extend_from_slice(&n.to_be_bytes());
    }
    f
}

/// Datagrams into the far host's own stack, which lets go of each packet
/// (marking its slot free) as soon as IP receives it, long before the socket
/// is read: 400 datagrams wrap the ring before any is read, and each must
/// still carry its own payload. (Without the whole-frame copy the kernel
/// would keep the payload in the ring's pages, and later frames would
/// overwrite it.)
fn udp_through_tx_ring(lab: &mut Lab) -> Result<()> {
    let ns = lab.ns("t");
    must(&["ip", "-n", &ns, "link", "set", "trx", "address", "02:00:5e:10:00:02", "up"])?;
    must(&["ip", "-n", &ns, "addr", "add", "10.77.0.2/24", "dev", "trx"])?;
    const N: u32 = 400;
    const PAYLOAD: usize = 1000;
    let got = thread::spawn(move || -> Result<Vec<Vec<u8>>> {
        enter(&ns)?;
        let sock = std::net::UdpSocket::bind("10.77.0.2:5000")?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(4 << 20))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut tx = PacketSocket::open_with_tx_ring("ttx")?;
        let frames: Vec<Vec<u8>> = (0..N).map(|n| udp_frame(n, PAYLOAD)).collect();
        for chunk in frames.chunks(32) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let (n, e) = tx.send_batch(&refs);
            if let Some(e) = e {
                bail!("send_batch: {n} of {} sent: {e}", refs.len());
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        Ok(got)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("UDP thread panicked"))??;
    assert_eq!(got.len(), N as usize, "datagrams lost");
    for (i, d) in got.iter().enumerate() {
        let want: Vec<u8> = (0..PAYLOAD / 4).flat_map(|_| (i as u32).to_be_bytes()).collect();
        assert!(
            *d == want,
            "datagram {i} arrived with another frame's payload (first word {:?})",
            &d[..4]
        );
    }
    Ok(())
}

/// A transmit ring whose frames the kernel refuses (interface down) is
/// dropped: the batch is reported failed, the port sends with `sendmmsg`
/// (failing too while the link is down), and once the link is back a new
/// ring is set up after the retry interval and frames flow through it.
#[test]
fn tx_ring_refused_by_a_down_interface_is_dropped_and_set_up_again() -> Result<()> {
    let name = "tx_ring_refused_by_a_down_interface_is_dropped_and_set_up_again";
    if !root_or_skip(name) {
        return Ok(());
    }
    let mut lab = Lab::new(format!("nbd{}-", std::process::id()));
    let ns = jumbo_veth(&mut lab, "d", "dtx", "drx")?;
    let ns2 = ns.clone();
    let link = move |state: &str| must(&["ip", "-n", &ns2, "link", "set", "dtx", state]);
    let (rx_ready, go) = (std::sync::mpsc::channel::<()>(), std::sync::mpsc::channel::<()>());
    let worker = thread::spawn(move || -> Result<usize> {
        enter(&ns)?;
        let rx = PacketSocket::open("drx")?;
        let mut tx = PacketSocket::open_with_tx_ring("dtx")?;
        if !tx.has_tx_ring() {
            bail!("no TPACKET_V2 transmit ring on this kernel; the ring path is not tested");
        }
        let frames = [frame(60, None, 1), frame(1514, None, 2), frame(60, None, 3)];
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        rx_ready.0.send(())?; // the caller takes the link down
        go.1.recv()?;
        let (n, e) = tx.send_batch(&refs);
        assert_eq!(n, 0, "frames sent on a down interface");
        assert!(e.is_some(), "no error from a down interface");
        assert!(!tx.has_tx_ring(), "the refused ring was kept");
        rx_ready.0.send(())?; // the caller brings the link back up
        go.1.recv()?;
        // Within the retry interval: sendmmsg. The socket still holds the
        // ENETDOWN of the link's down event, which the first send reports.
        let (mut n, mut e) = tx.send_batch(&refs);
        if e.as_ref().and_then(std::io::Error::raw_os_error) == Some(libc::ENETDOWN) {
            (n, e) = tx.send_batch(&refs);
        }
        assert_eq!((n, e.map(|e| e.to_string())), (3, None));
        assert!(!tx.has_tx_ring());
        thread::sleep(Duration::from_millis(1100));
        let (n, e) = tx.send_batch(&refs);
        assert_eq!((n, e.map(|e| e.to_string())), (3, None));
        assert!(tx.has_tx_ring(), "no new ring after the retry interval");
        let mut buf = vec![0u8; HEADROOM + PORT_FRAME_MAX];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while got < 6 && Instant::now() < deadline {
            match rx.recv(&mut buf)? {
                Some(info) if buf[info.start + 6..info.start + 12] == SRC => got += 1,
                Some(_) => {}
                None => thread::sleep(Duration::from_millis(10)),
            }
        }
        Ok(got)
    });
    rx_ready.1.recv()?;
    link("down")?;
    go.0.send(())?;
    rx_ready.1.recv()?;
    link("up")?;
    // A veth is only up (and carries frames) once its peer is up too: both are.
    go.0.send(())?;
    let got = worker.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    assert_eq!(got, 6, "frames sent after the link came back did not all arrive");
    drop(lab);
    Ok(())
}
