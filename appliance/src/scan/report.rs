//! What a scan found, joined with the inventory: JSON (`--json`, schema in
//! the README, "Scan schema"), a table, and topology observations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::known::{InventoryInfo, Known};

/// Packets sent, per kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sent {
    /// ARP requests.
    pub arp: usize,
    /// ICMP echo requests.
    pub icmp: usize,
    /// TCP connects.
    pub tcp: usize,
}

/// One (IP, MAC) that answered ARP.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// MAC (lower-case, colon form).
    pub mac: String,
    /// Answered an ICMP echo sent to this MAC.
    pub icmp: bool,
    /// TCP ports that accepted a connection at this IP.
    pub open_ports: Vec<u16>,
    /// The inventory's server with this MAC.
    pub server: Option<String>,
    /// No server in the inventory has this MAC.
    pub unknown: bool,
    /// Part of a conflict (see `conflicts`).
    pub conflict: bool,
}

/// Something the inventory or the wire says cannot be right.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conflict {
    /// Several MACs answered ARP for one IP.
    IpConflict {
        /// The address.
        ip: Ipv4Addr,
        /// The MACs that claimed it.
        macs: Vec<String>,
    },
    /// A known server's MAC answered at another IP than the inventory's.
    MacMoved {
        /// The MAC.
        mac: String,
        /// Its server.
        server: String,
        /// The inventory's IP for it.
        expected_ip: Ipv4Addr,
        /// Where it answered.
        seen_ip: Ipv4Addr,
    },
}

/// The result of a scan.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Interface scanned.
    pub iface: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Its MAC.
    pub mac: String,
    /// Start (RFC 3339).
    pub started_at: String,
    /// Duration.
    pub duration_ms: u64,
    /// False if `--max-time` cut the scan short.
    pub complete: bool,
    /// Packets per second.
    pub rate: u32,
    /// TCP ports probed.
    pub ports: Vec<u16>,
    /// Packets sent.
    pub sent: Sent,
    /// Every (IP, MAC) that answered, by IP then MAC.
    pub hosts: Vec<Host>,
    /// Conflicts found.
    pub conflicts: Vec<Conflict>,
    /// What the inventory contributed.
    pub inventory: InventoryInfo,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(m: &[u8; 6]) -> String {
    proto::mac::MacAddr(*m).to_string()
}

impl Report {
    /// Names known hosts and flags unknown ones and conflicts.
    pub fn join(&mut self, known: &Known) {
        let mut by_ip: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
        for h in &self.hosts {
            by_ip.entry(h.ip).or_default().insert(h.mac.clone());
        }
        for (ip, macs) in by_ip.into_iter().filter(|(_, m)| m.len() > 1) {
            self.conflicts.push(Conflict::IpConflict {
                ip,
                macs: macs.into_iter().collect(),
            });
        }
        for h in &mut self.hosts {
            if let Some(k) = known.by_mac.get(&h.mac) {
                h.server = Some(k.server.clone());
                h.unknown = false;
                if let Some(expected) = k.ip.filter(|e| *e != h.ip) {
                    self.conflicts.push(Conflict::MacMoved {
                        mac: h.mac.clone(),
                        server: k.server.clone(),
                        expected_ip: expected,
                        seen_ip: h.ip,
                    });
                }
            }
        }
        for h in &mut self.hosts {
            h.conflict = self.conflicts.iter().any(|c| match c {
                Conflict::IpConflict { ip, .. } => *ip == h.ip,
                Conflict::MacMoved { mac, seen_ip, .. } => *mac == h.mac && *seen_ip == h.ip,
            });
        }
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scan of {} ({}/{}, {}): {} host(s) in {:.1} s{}",
            self.iface,
            self.ip,
            self.prefix,
            self.mac,
            self.hosts.len(),
            self.duration_ms as f64 / 1000.0,
            if self.complete { "" } else { " (cut short by --max-time)" }
        );
        let _ = writeln!(
            s,
            "{:<16} {:<18} {:<5} {:<20} {:<22} FLAGS",
            "IP", "MAC", "ICMP", "SERVER", "OPEN PORTS"
        );
        for h in &self.hosts {
            let ports = h.open_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let mut flags = vec![];
            if h.unknown {
                flags.push("unknown");
            }
            if h.conflict {
                flags.push("CONFLICT");
            }
            let _ = writeln!(
                s,
                "{:<16} {:<18} {:<5} {:<20} {:<22} {}",
                h.ip.to_string(),
                h.mac,
                if h.icmp { "yes" } else { "no" },
                h.server.as_deref().unwrap_or("-"),
                if ports.is_empty() { "-".into() } else { ports },
                flags.join(" ")
            );
        }
        for c in &self.conflicts {
            let _ = match c {
                Conflict::IpConflict { ip, macs } => writeln!(s, "conflict: {ip} answered by {} MACs: {}", macs.len(), macs.join(", ")),
                Conflict::MacMoved {
                    mac,
                    server,
                    expected_ip,
                    seen_ip,
                } => writeln!(
                    s,
                    "conflict: {server}'s MAC {mac} answered at {seen_ip}, the inventory says {expected_ip}"
                ),
            };
        }
        for n in &self.inventory.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// Facts per topology server: known hosts under their server's name,
    /// unknown ones as `unknown-<mac with dashes>`; keys `scan.*`.
    pub fn facts(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for h in &self.hosts {
            let name = h.server.clone().unwrap_or_else(|| format!("unknown-{}", h.mac.replace(':', "-")));
            let f = out.entry(name).or_default();
            let n = f.keys().filter(|k| k.ends_with(".ip")).count();
            let p = format!("scan.{n}");
            f.insert(format!("{p}.ip"), h.ip.to_string());
            f.insert(format!("{p}.mac"), h.mac.clone());
            f.insert(format!("{p}.icmp"), h.icmp.to_string());
            let ports = h.open_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            f.insert(format!("{p}.open_ports"), ports);
            if h.conflict {
                f.insert(format!("{p}.conflict"), "true".into());
            }
            f.insert("scan.iface".into(), self.iface.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::known::KnownNic;

    fn host(ip: [u8; 4], mac: &str) -> Host {
        Host {
            ip: ip.into(),
            mac: mac.into(),
            icmp: true,
            open_ports: vec![],
            server: None,
            unknown: true,
            conflict: false,
        }
    }

    #[test]
    fn join_names_flags_and_finds_conflicts() {
        let mut known = Known::default();
        known.by_mac.insert(
            "02:00:00:00:00:01".into(),
            KnownNic {
                server: "web1".into(),
                ip: Some([10, 0, 0, 5].into()),
            },
        );
        known.by_mac.insert(
            "02:00:00:00:00:02".into(),
            KnownNic {
                server: "db1".into(),
                ip: Some([10, 0, 0, 2].into()),
            },
        );
        let mut r = Report {
            iface: "x".into(),
            ip: [10, 0, 0, 1].into(),
            prefix: 24,
            mac: "02:00:00:00:00:ff".into(),
            started_at: String::new(),
            duration_ms: 0,
            complete: true,
            rate: 1,
            ports: vec![],
            sent: Sent::default(),
            hosts: vec![
                host([10, 0, 0, 2], "02:00:00:00:00:02"),
                host([10, 0, 0, 3], "02:00:00:00:00:01"),
                host([10, 0, 0, 9], "02:00:00:00:00:09"),
                host([10, 0, 0, 9], "02:00:00:00:00:0a"),
            ],
            conflicts: vec![],
            inventory: InventoryInfo::default(),
        };
        r.join(&known);
        assert_eq!(r.hosts[0].server.as_deref(), Some("db1"));
        assert!(!r.hosts[0].unknown && !r.hosts[0].conflict);
        assert!(r.hosts[1].conflict, "web1's MAC at .3, not .5");
        assert!(r.hosts[2].unknown && r.hosts[2].conflict && r.hosts[3].conflict);
        assert_eq!(
            r.conflicts,
            vec![
                Conflict::IpConflict {
                    ip: [10, 0, 0, 9].into(),
                    macs: vec!["02:00:00:00:00:09".into(), "02:00:00:00:00:0a".into()],
                },
                Conflict::MacMoved {
                    mac: "02:00:00:00:00:01".into(),
                    server: "web1".into(),
                    expected_ip: [10, 0, 0, 5].into(),
                    seen_ip: [10, 0, 0, 3].into(),
                },
            ]
        );
        let t = r.to_table();
        assert!(t.contains("10.0.0.9 answered by 2 MACs"), "{t}");
        assert_eq!(r.facts()["db1"]["scan.0.ip"], "10.0.0.2");
        assert!(r.facts().contains_key("unknown-02-00-00-00-00-09"));
    }
}
