//! Software segmentation of TCP super-frames.
//!
//! A packet socket sees frames as the kernel holds them, and the kernel
//! holds TCP data in super-frames of up to 64 KiB when offloads are on: GRO
//! merges a physical NIC's received segments, a veth passes its sender's
//! TSO/GSO frames through unsegmented, and QEMU may hand a TAP TSO frames.
//! With PACKET_VNET_HDR the kernel tells us the segment size (`gso_size`),
//! and we cut the frame back into the segments a wire would have carried,
//! as the kernel's own software GSO does (`tcp_gso_segment`): same headers,
//! sequence numbers advanced, IPv4 IDs incremented, FIN/PSH only on the
//! last segment, CWR only on the first, lengths and checksums recomputed.

use super::csum;

/// What kind of super-frame it is (virtio `gso_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
    TcpV4,
    /// TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
    TcpV6,
    /// Anything else (UDP fragmentation offload, UDP segmentation): not
    /// segmented; such frames are dropped if too large.
    Other(u8),
}

impl GsoKind {
    /// From the virtio header's `gso_type` (the ECN bit is ignored).
    pub fn from_virtio(gso_type: u8) -> Option<GsoKind> {
        match gso_type & !0x80 {
            0 => None,
            1 => Some(GsoKind::TcpV4),
            4 => Some(GsoKind::TcpV6),
            other => Some(GsoKind::Other(other)),
        }
    }
}

/// Why a super-frame could not be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not TCP over IPv4/IPv6 as the GSO type claims, or headers cut short.
    #[error("super-frame headers do not parse as {0:?}")]
    Headers(GsoKind),
    /// Zero segment size.
    #[error("segment size 0")]
    ZeroSize,
    /// A segment would not fit the output buffer.
    #[error("segment of {0} bytes does not fit the buffer")]
    TooLarge(usize),
    /// Not a kind we segment.
    #[error("cannot segment {0:?} super-frames")]
    Unsupported(GsoKind),
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Cuts `frame` into segments of at most `mss` payload bytes; each segment
/// is built in `out` and passed to `emit`. Returns the number of segments.
pub fn segment(frame: &[u8], kind: GsoKind, mss: u16, out: &mut [u8], mut emit: impl FnMut(&mut [u8])) -> Result<usize, Error> {
    if mss == 0 {
        return Err(Error::ZeroSize);
    }
    let bad = Error::Headers(kind);
    let (ip, ethertype) = csum::l3(frame).ok_or(bad)?;
    let (l4, v4) = match (kind, ethertype) {
        (GsoKind::TcpV4, csum::ETHERTYPE_IPV4) => {
            let vihl = *frame.get(ip).ok_or(bad)?;
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 || frame.get(ip + 9) != Some(&6) {
                return Err(bad);
            }
            (ip + ihl, true)
        }
        // Extension headers are not followed: the kernel does not TSO them either.
        (GsoKind::TcpV6, csum::ETHERTYPE_IPV6) => {
            if frame.get(ip).map(|b| b >> 4) != Some(6) || frame.get(ip + 6) != Some(&6) {
                return Err(bad);
            }
            (ip + 40, false)
        }
        (GsoKind::Other(_), _) => return Err(Error::Unsupported(kind)),
        _ => return Err(bad),
    };
    let doff = *frame.get(l4 + 12).ok_or(bad)? as usize >> 4;
    let hdr = l4 + doff * 4;
    if doff < 5 || hdr > frame.len() {
        return Err(bad);
    }
    let mss = mss as usize;
    if hdr + mss.min(frame.len() - hdr) > out.len() {
        return Err(Error::TooLarge(hdr + mss));
    }
    let payload = &frame[hdr..];
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = if v4 {
        u16::from_be_bytes([frame[ip + 4], frame[ip + 5]])
    } else {
        0
    };
    let flags = frame[l4 + 13];
    let count = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload
        .chunks(mss)
        .chain(std::iter::once(&[][..]).take(usize::from(payload.is_empty())))
        .enumerate()
    {
        let len = hdr + chunk.len();
        let seg = &mut out[..len];
        seg[..hdr].copy_from_slice(&frame[..hdr]);
        seg[hdr..].copy_from_slice(chunk);
        if v4 {
            let total = (len - ip) as u16;
            seg[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
            seg[ip + 4..ip + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            csum::ipv4_header(seg, ip);
        } else {
            let plen = (len - ip - 40) as u16;
            seg[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[l4 + 13] = f;
        csum::complete(seg);
        emit(seg);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00];
        let total = (20 + 32 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2]);
        // TCP: ports, seq 0xfffffff0 (wraps), ack, doff 8 (12 bytes of options), flags.
        f.extend_from_slice(&[
            0x30, 0x39, 0x13, 0x89, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1, 0x80, flags, 0x01, 0x00, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend_from_slice(payload);
        f
    }

    fn tcp_v6(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd];
        let plen = (20 + payload.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[
            0x30, 0x39, 0x13, 0x89, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, flags, 0x01, 0x00, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(payload);
        f
    }

    fn segments(frame: &[u8], kind: GsoKind, mss: u16) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 2048];
        let mut segs = vec![];
        let n = segment(frame, kind, mss, &mut out, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, segs.len());
        segs
    }

    fn checksum_ok(seg: &[u8]) -> bool {
        let mut again = seg.to_vec();
        csum::complete(&mut again);
        again == seg
    }

    #[test]
    fn tcp_v4_super_frame() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let f = tcp_v4(&payload, 0x18 | TCP_FIN | TCP_CWR); // PSH ACK FIN CWR
        let segs = segments(&f, GsoKind::TcpV4, 1400);
        assert_eq!(segs.len(), 3);
        let hdr = 14 + 20 + 32;
        let mut joined = vec![];
        for (i, s) in segs.iter().enumerate() {
            let data = &s[hdr..];
            assert_eq!(data.len(), if i < 2 { 1400 } else { 200 });
            joined.extend_from_slice(data);
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14, "total length");
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16, "IP id");
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1400 * i as u32));
            let flags = s[47];
            assert_eq!(flags & TCP_FIN != 0, i == 2, "FIN only last");
            assert_eq!(flags & TCP_PSH != 0, i == 2, "PSH only last");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only first");
            assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
            assert!(checksum_ok(s), "TCP checksum of segment {i}");
            let mut h = s.clone();
            csum::ipv4_header(&mut h, 14);
            assert_eq!(h, *s, "IPv4 header checksum of segment {i}");
            assert_eq!(&s[54..66], &f[54..66], "options copied");
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn tcp_v6_super_frame() {
        let payload = vec![0xab; 2500];
        let segs = segments(&tcp_v6(&payload, 0x10), GsoKind::TcpV6, 1440);
        assert_eq!(segs.len(), 2);
        for s in &segs {
            assert_eq!(u16::from_be_bytes([s[18], s[19]]) as usize, s.len() - 14 - 40);
            assert!(checksum_ok(s));
        }
        assert_eq!(segs[1].len(), 14 + 40 + 20 + 1060);
    }

    #[test]
    fn rejects_what_it_cannot_segment() {
        let f = tcp_v4(&[0; 100], 0x10);
        let mut out = vec![0u8; 2048];
        assert_eq!(segment(&f, GsoKind::TcpV4, 0, &mut out, |_| {}), Err(Error::ZeroSize));
        assert_eq!(
            segment(&f, GsoKind::TcpV6, 50, &mut out, |_| {}),
            Err(Error::Headers(GsoKind::TcpV6))
        );
        assert_eq!(
            segment(&f, GsoKind::Other(5), 50, &mut out, |_| {}),
            Err(Error::Unsupported(GsoKind::Other(5)))
        );
        assert_eq!(
            segment(&f[..40], GsoKind::TcpV4, 50, &mut out, |_| {}),
            Err(Error::Headers(GsoKind::TcpV4))
        );
        let mut small = vec![0u8; 60];
        assert!(matches!(
            segment(&f, GsoKind::TcpV4, 50, &mut small, |_| {}),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(GsoKind::from_virtio(0), None);
        assert_eq!(GsoKind::from_virtio(0x81), Some(GsoKind::TcpV4));
        assert_eq!(GsoKind::from_virtio(5), Some(GsoKind::Other(5)));
    }

    #[test]
    fn payload_smaller_than_mss_is_one_segment() {
        let f = tcp_v4(b"tiny", 0x18);
        let segs = segments(&f, GsoKind::TcpV4, 1400);
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].len(), f.len());
        let segs = segments(&tcp_v4(b"", 0x10), GsoKind::TcpV4, 1400);
        assert_eq!(segs.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(mut f in proptest::collection::vec(proptest::num::u8::ANY, 0..300), mss in 0u16..200, kind in 0u8..6) {
            if f.len() > 13 {
                f[12] = 0x08;
                f[13] = 0x00;
            }
            let mut out = vec![0u8; 512];
            if let Some(k) = GsoKind::from_virtio(kind) {
                let _ = segment(&f, k, mss, &mut out, |_| {});
            }
        }

        #[test]
        fn segments_rejoin(len in 0usize..5000, mss in 500u16..1500) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let f = tcp_v4(&payload, 0x18);
            let segs = segments(&f, GsoKind::TcpV4, mss);
            let joined: Vec<u8> = segs.iter().flat_map(|s| s[66..].to_vec()).collect();
            proptest::prop_assert_eq!(joined, payload);
            proptest::prop_assert!(segs.iter().all(|s| s.len() <= 66 + mss as usize));
        }
    }
}
