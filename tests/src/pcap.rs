//! Just enough of the classic pcap format (tcpdump -w) to count what crossed
//! the "internet" link: so the no-plaintext check knows it looked at real
//! bridge traffic, not at an empty capture.

/// One captured IPv4 TCP or UDP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// 6 = TCP, 17 = UDP.
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Captured bytes of the whole frame.
    pub len: usize,
}

/// Parses a pcap file of Ethernet frames; stops quietly at a truncated record.
pub fn packets(data: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    if data.len() < 24 {
        return out;
    }
    let le = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return out,
    };
    let u32at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    if u32at(data, 20) != 1 {
        return out; // not Ethernet
    }
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32at(data, off + 8) as usize;
        let start = off + 16;
        let Some(frame) = data.get(start..start + incl) else { break };
        off = start + incl;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let proto = ip[9];
        if (proto == 6 || proto == 17) && ip.len() >= ihl + 4 {
            let l4 = &ip[ihl..];
            out.push(Packet {
                proto,
                sport: u16::from_be_bytes([l4[0], l4[1]]),
                dport: u16::from_be_bytes([l4[2], l4[3]]),
                len: frame.len(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_udp_record_and_survives_garbage() {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        f.extend([0u8; 8]);
        f.extend(65535u32.to_le_bytes());
        f.extend(1u32.to_le_bytes());
        let mut frame = vec![0u8; 12];
        frame.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
        ip.extend([0xca, 0x6c, 0xca, 0x6d, 0, 8, 0, 0]);
        frame.extend(ip);
        f.extend([0u8; 8]);
        f.extend((frame.len() as u32).to_le_bytes());
        f.extend((frame.len() as u32).to_le_bytes());
        f.extend(&frame);
        let p = packets(&f);
        assert_eq!(
            p,
            vec![Packet {
                proto: 17,
                sport: 51820,
                dport: 51821,
                len: frame.len()
            }]
        );
        assert!(packets(&f[..f.len() - 3]).is_empty());
        assert!(packets(b"not a pcap file at all, just text").is_empty());
    }
}
