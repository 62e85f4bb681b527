//! Completing TCP/UDP checksums of frames captured before the "hardware"
//! filled them in.
//!
//! A local stack with checksum offload (a veth, a TAP with offloads on)
//! hands frames to the device with only the pseudo-header sum in the
//! checksum field (CHECKSUM_PARTIAL); packet(7) reports such frames with
//! TP_STATUS_CSUMNOTREADY. Carried as-is, the far side would drop them as
//! corrupt. We compute the checksum in full (RFC 1071, pseudo-headers from
//! RFC 793 §3.1 / RFC 768 / RFC 8200 §8.1) before the frame enters the tunnel.

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// One's-complement sum of 16-bit big-endian words (odd byte padded).
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Completes a checksum the way a NIC does for CHECKSUM_PARTIAL (virtio
/// `NEEDS_CSUM`): the field at `start + offset` already holds the
/// pseudo-header sum; sum everything from `start` to the end, fold,
/// complement, store. Returns false if the offsets do not fit the frame.
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else { return false };
    if field + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let c = !fold(sum(&frame[start..], 0));
    // As the kernel's skb_checksum_help: a zero result is sent as 0xffff
    // (the same value in one's complement; for UDP zero would mean "none").
    let c = if c == 0 { 0xffff } else { c };
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Recomputes the IPv4 header checksum of the header at `ip` (RFC 791).
pub fn ipv4_header(frame: &mut [u8], ip: usize) -> bool {
    let Some(&vihl) = frame.get(ip) else { return false };
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < 20 || ip + ihl > frame.len() {
        return false;
    }
    frame[ip + 10..ip + 12].fill(0);
    let c = !fold(sum(&frame[ip..ip + ihl], 0));
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    true
}

/// Offset of the IP header and the EtherType behind up to two VLAN tags.
pub fn l3(frame: &[u8]) -> Option<(usize, u16)> {
    let mut off = 12;
    let mut ethertype = be16(frame, off)?;
    for _ in 0..2 {
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            off += 4;
            ethertype = be16(frame, off)?;
        }
    }
    Some((off + 2, ethertype))
}

/// Fills in the TCP or UDP checksum of an Ethernet frame carrying IPv4 or
/// IPv6 (without extension headers), behind up to two VLAN tags. Returns
/// false (frame untouched) if the frame is not such a packet.
pub fn complete(frame: &mut [u8]) -> bool {
    let Some((ip, ethertype)) = l3(frame) else { return false };
    let (proto, l4_start, l4_end, pseudo) = match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(&vihl) = frame.get(ip) else { return false };
            let ihl = (vihl & 0x0f) as usize * 4;
            let Some(total) = be16(frame, ip + 2) else { return false };
            let Some(flags_frag) = be16(frame, ip + 6) else { return false };
            // A fragment's checksum covers the whole datagram: not ours to compute.
            if vihl >> 4 != 4 || ihl < 20 || flags_frag & 0x3fff != 0 {
                return false;
            }
            let end = ip + total as usize;
            if end > frame.len() || ip + ihl > end {
                return false;
            }
            let proto = frame[ip + 9];
            let l4_len = end - (ip + ihl);
            let mut acc = sum(&frame[ip + 12..ip + 20], 0);
            acc += proto as u64 + l4_len as u64;
            (proto, ip + ihl, end, acc)
        }
        ETHERTYPE_IPV6 => {
            let Some(plen) = be16(frame, ip + 4) else { return false };
            let Some(&next) = frame.get(ip + 6) else { return false };
            let start = ip + 40;
            let end = start + plen as usize;
            if end > frame.len() || frame[ip] >> 4 != 6 {
                return false;
            }
            let mut acc = sum(&frame[ip + 8..ip + 40], 0);
            acc += next as u64 + plen as u64;
            (next, start, end, acc)
        }
        _ => return false,
    };
    let field = match proto {
        PROTO_TCP if l4_end - l4_start >= 20 => l4_start + 16,
        PROTO_UDP if l4_end - l4_start >= 8 => l4_start + 6,
        _ => return false,
    };
    frame[field..field + 2].fill(0);
    let mut c = !fold(sum(&frame[l4_start..l4_end], pseudo));
    if proto == PROTO_UDP && c == 0 {
        // RFC 768: a computed zero is sent as all ones (zero means "none").
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + UDP "hello" with a zero checksum field.
    fn ipv4_udp() -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00, // ethernet
            0x45, 0x00, 0x00, 0x21, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // ipv4 (hdr csum not checked)
            10, 99, 0, 1, 10, 99, 0, 2, // addresses
            0x30, 0x39, 0x00, 0x35, 0x00, 0x0d, 0x00, 0x00, // udp 12345 -> 53, len 13
        ];
        f.extend_from_slice(b"hello");
        f
    }

    /// Verifies like a receiver: the sum over pseudo-header and segment is 0xffff.
    fn verifies(f: &[u8], v6: bool) -> bool {
        let ip = 14;
        let (proto, start, end, mut acc) = if v6 {
            let plen = u16::from_be_bytes([f[ip + 4], f[ip + 5]]) as usize;
            (f[ip + 6], ip + 40, ip + 40 + plen, sum(&f[ip + 8..ip + 40], 0))
        } else {
            let ihl = (f[ip] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) as usize;
            (f[ip + 9], ip + ihl, ip + total, sum(&f[ip + 12..ip + 20], 0))
        };
        acc += proto as u64 + (end - start) as u64;
        fold(sum(&f[start..end], acc)) == 0xffff
    }

    #[test]
    fn ipv4_udp_known_value() {
        let mut f = ipv4_udp();
        assert!(complete(&mut f));
        // RFC 1071 by hand: pseudo-header 0a63+0001+0a63+0002+0011+000d,
        // UDP header 3039+0035+000d+0000, data 6865+6c6c+6f00; folded and
        // complemented: 0x76cb.
        assert_eq!(&f[40..42], &[0x76, 0xcb]);
        assert!(verifies(&f, false));
    }

    #[test]
    fn ipv4_tcp_with_vlan_and_partial_field() {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x81, 0x00, 0x00, 0x64, 0x08, 0x00];
        let ip = vec![0x45, 0, 0, 40 + 3, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2];
        let mut tcp = vec![0u8; 20];
        tcp[12] = 0x50;
        tcp[16] = 0xab; // junk pseudo-header sum left by the stack
        f.extend(ip);
        f.extend(tcp);
        f.extend_from_slice(b"abc");
        assert!(complete(&mut f));
        // Verify without the tag.
        let mut untagged = f[..12].to_vec();
        untagged.extend_from_slice(&f[16..]);
        assert!(verifies(&untagged, false));
    }

    #[test]
    fn ipv6_udp() {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x86, 0xdd];
        let payload = b"ipv6 payload!";
        let plen = 8 + payload.len();
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, plen as u8, 17, 64]);
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, plen as u8, 0, 0]);
        f.extend_from_slice(payload);
        assert!(complete(&mut f));
        assert!(verifies(&f, true));
    }

    #[test]
    fn leaves_other_frames_alone() {
        let arp = vec![0xffu8; 12]
            .into_iter()
            .chain([0x08, 0x06])
            .chain([0u8; 28])
            .collect::<Vec<_>>();
        let mut f = arp.clone();
        assert!(!complete(&mut f));
        assert_eq!(f, arp);
        let mut frag = ipv4_udp();
        frag[14 + 6] = 0x20; // more fragments
        assert!(!complete(&mut frag));
        let mut short = ipv4_udp();
        short.truncate(30);
        assert!(!complete(&mut short));
        let mut icmp = ipv4_udp();
        icmp[14 + 9] = 1;
        assert!(!complete(&mut icmp));
    }

    #[test]
    fn partial_completion_matches_full_computation() {
        let mut full = ipv4_udp();
        assert!(complete(&mut full));
        // What a stack with offload leaves: the pseudo-header sum, not complemented.
        let mut partial = ipv4_udp();
        let pseudo = fold(sum(&[10, 99, 0, 1, 10, 99, 0, 2], 0) + 17 + 13);
        partial[40..42].copy_from_slice(&pseudo.to_be_bytes());
        assert!(complete_partial(&mut partial, 34, 6));
        assert_eq!(partial, full);
        assert!(!complete_partial(&mut partial, 34, 100));
        assert!(!complete_partial(&mut partial, usize::MAX, 6));
    }

    #[test]
    fn ipv4_header_checksum() {
        // RFC 1071 worked example style: a header whose checksum is known.
        let mut f = vec![0u8; 14];
        f.extend_from_slice(&[
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ]);
        assert!(ipv4_header(&mut f, 14));
        assert_eq!(&f[24..26], &[0xb8, 0x61]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(mut f in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = complete(&mut f);
            let _ = complete_partial(&mut f, 14, 6);
            let _ = ipv4_header(&mut f, 14);
        }

        #[test]
        fn udp_payloads_verify(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let mut f = ipv4_udp();
            f.truncate(42);
            f.extend_from_slice(&payload);
            let total = (20 + 8 + payload.len()) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[38..40].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
            proptest::prop_assert!(complete(&mut f));
            proptest::prop_assert!(verifies(&f, false));
        }
    }
}
