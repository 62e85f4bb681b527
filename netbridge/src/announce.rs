//! Announcements put on the LAN when a MAC starts being carried, so the LAN's
//! switches move the MAC to the appliance's port and neighbours refresh
//! their caches within a second: gratuitous ARP (RFC 5227 §3: an ARP request
//! with sender and target IP both the announced address) and IPv6 unsolicited
//! neighbour advertisements (RFC 4861 §7.2.6: to all-nodes, Override set,
//! with the target link-layer address option).

use std::net::{Ipv4Addr, Ipv6Addr};

use proto::MacAddr;

/// Length of a gratuitous ARP frame (padded to the Ethernet minimum).
pub const GARP_LEN: usize = 60;
/// Length of an unsolicited NA frame: 14 + 40 (IPv6) + 32 (NA + option).
pub const NA_LEN: usize = 86;

/// A gratuitous ARP request announcing `ip` at `mac`, broadcast.
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut f = [0u8; GARP_LEN];
    f[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // RFC 826: htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address zero, target IP = sender IP.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    acc
}

/// An unsolicited neighbour advertisement for `ip` at `mac`, to ff02::1.
pub fn unsolicited_na(mac: MacAddr, ip: Ipv6Addr) -> [u8; NA_LEN] {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = [0u8; NA_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip6 = &mut f[14..54];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&32u16.to_be_bytes()); // payload length
    ip6[6] = 58; // ICMPv6
    ip6[7] = 255; // hop limit (RFC 4861 §7.1.2)
    ip6[8..24].copy_from_slice(&ip.octets());
    ip6[24..40].copy_from_slice(&all_nodes.octets());
    let na = &mut f[54..86];
    na[0] = 136; // neighbour advertisement
    na[4] = 0x20; // Override; not Router, not Solicited
    na[8..24].copy_from_slice(&ip.octets());
    na[24] = 2; // option: target link-layer address
    na[25] = 1; // length in units of 8 bytes
    na[26..32].copy_from_slice(&mac.0);
    // ICMPv6 checksum over the pseudo-header (RFC 8200 §8.1).
    let mut acc = ones_sum(&ip.octets(), 0);
    acc = ones_sum(&all_nodes.octets(), acc);
    acc += 32 + 58;
    acc = ones_sum(&f[54..86], acc);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let ck = !(acc as u16);
    f[56..58].copy_from_slice(&ck.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    #[test]
    fn garp_layout() {
        let f = gratuitous_arp(M, Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &M.0);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[10, 77, 0, 10]);
        assert_eq!(&f[38..42], &[10, 77, 0, 10]);
        assert_eq!(&f[32..38], &[0; 6]);
    }

    #[test]
    fn na_checksum_verifies() {
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = unsolicited_na(M, ip);
        // Summing everything including the checksum gives 0xffff.
        let mut acc = ones_sum(&ip.octets(), 0);
        acc = ones_sum(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets(), acc);
        acc += 32 + 58;
        acc = ones_sum(&f[54..86], acc);
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        assert_eq!(acc, 0xffff);
        assert_eq!(f[54], 136);
        assert_eq!(&f[80..86], &M.0);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    }
}
