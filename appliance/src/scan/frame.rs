//! Frames the scanner sends and the replies it reads: ARP (RFC 826) over
//! Ethernet and ICMP echo (RFC 792) in IPv4 (RFC 791).
//!
//! Replies are outside input: the parsers take any bytes, return `None` for
//! anything that is not a well-formed reply, and never panic (fuzz target
//! `scan_arp`).

use std::net::Ipv4Addr;

/// EtherType of ARP.
const ETH_ARP: u16 = 0x0806;
/// EtherType of IPv4.
const ETH_IPV4: u16 = 0x0800;
/// EtherType of an 802.1Q tag.
const ETH_VLAN: u16 = 0x8100;
/// Ethernet broadcast.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP packet for IPv4 over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// An ICMP echo reply seen in an IPv4 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoReply {
    /// Ethernet source.
    pub mac: [u8; 6],
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// Echo identifier.
    pub id: u16,
    /// Echo sequence number.
    pub seq: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// EtherType and payload of an Ethernet frame (one 802.1Q tag skipped).
fn ethernet(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut ty = be16(frame, 12)?;
    let mut at = 14;
    if ty == ETH_VLAN {
        ty = be16(frame, 16)?;
        at = 18;
    }
    Some((ty, frame.get(at..)?))
}

/// Parses an Ethernet frame holding an ARP packet for IPv4 over Ethernet
/// (htype 1, ptype 0x0800, hlen 6, plen 4); `None` for anything else.
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let (ty, p) = ethernet(frame)?;
    if ty != ETH_ARP || be16(p, 0)? != 1 || be16(p, 2)? != ETH_IPV4 || p.get(4..6)? != [6, 4] {
        return None;
    }
    Some(Arp {
        op: be16(p, 6)?,
        sha: mac_at(p, 8)?,
        spa: ip_at(p, 14)?,
        tha: mac_at(p, 18)?,
        tpa: ip_at(p, 24)?,
    })
}

/// A broadcast ARP request "who has `target`? tell `ip` (`mac`)".
pub fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

/// The Internet checksum (RFC 1071) of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from `src` (`mac`) to `dst` (`dst_mac`).
pub fn echo_request(mac: [u8; 6], src: Ipv4Addr, dst_mac: [u8; 6], dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let payload = b"isthmus-scan";
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&seq.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_IPV4.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f.resize(f.len().max(60), 0);
    f
}

/// Parses an Ethernet frame holding an ICMP echo reply in IPv4; `None` for
/// anything else (other protocols, fragments, bad header lengths).
pub fn parse_echo_reply(frame: &[u8]) -> Option<EchoReply> {
    let (ty, p) = ethernet(frame)?;
    let ver_ihl = *p.first()?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ty != ETH_IPV4 || ver_ihl >> 4 != 4 || ihl < 20 || *p.get(9)? != 1 {
        return None;
    }
    // Fragments other than the first carry no ICMP header.
    if be16(p, 6)? & 0x1fff != 0 {
        return None;
    }
    let icmp = p.get(ihl..)?;
    if *icmp.first()? != 0 || *icmp.get(1)? != 0 {
        return None;
    }
    Some(EchoReply {
        mac: mac_at(frame, 6)?,
        src: ip_at(p, 12)?,
        dst: ip_at(p, 16)?,
        id: be16(icmp, 4)?,
        seq: be16(icmp, 6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn arp_request_round_trips() {
        let f = arp_request(ME, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(f.len(), 60);
        let a = parse_arp(&f).unwrap();
        assert_eq!(a.op, 1);
        assert_eq!(a.sha, ME);
        assert_eq!(a.tpa, Ipv4Addr::new(10, 0, 0, 9));
        // Tagged: same packet behind an 802.1Q tag.
        let mut t = f[..12].to_vec();
        t.extend_from_slice(&[0x81, 0, 0, 7]);
        t.extend_from_slice(&f[12..]);
        assert_eq!(parse_arp(&t), Some(a));
    }

    #[test]
    fn short_or_foreign_frames_are_none() {
        let f = arp_request(ME, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9));
        for n in 0..42 {
            assert_eq!(parse_arp(&f[..n]), None, "cut at {n}");
        }
        let mut g = f.clone();
        g[19] = 8; // hlen 8
        assert_eq!(parse_arp(&g), None);
        assert_eq!(parse_echo_reply(&f), None);
    }

    #[test]
    fn echo_request_is_valid_and_reply_parses() {
        let peer = [2, 0, 0, 0, 0, 2];
        let mut f = echo_request(ME, Ipv4Addr::new(10, 0, 0, 1), peer, Ipv4Addr::new(10, 0, 0, 2), 77, 5);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(checksum(&f[34..54]), 0, "ICMP checksum");
        assert_eq!(parse_echo_reply(&f), None, "a request is not a reply");
        // Turn it into the reply the peer would send.
        f[34] = 0;
        f[6..12].copy_from_slice(&peer);
        let r = parse_echo_reply(&f).unwrap();
        assert_eq!((r.mac, r.id, r.seq), (peer, 77, 5));
        assert_eq!(r.src, Ipv4Addr::new(10, 0, 0, 1));
    }
}
