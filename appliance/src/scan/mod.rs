//! Live scan of a LAN segment (`isthmus scan --iface X`): an ARP sweep of
//! the interface's IPv4 subnet, ICMP echo to the hosts that answered, and a
//! TCP connect probe of common ports; all rate limited and bounded in time.
//! The result is joined with the inventory (MAC → server): unknown hosts,
//! one IP answered by several MACs, and a known server's MAC at another IP
//! are flagged.
//!
//! ARP and ICMP go through an AF_PACKET socket
//! ([`netbridge::port::PacketSocket`], the LCG's own); the TCP probe uses
//! the kernel's stack (`connect` with a short timeout).

pub mod frame;
pub mod known;
mod probe;
pub mod report;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netbridge::port::PacketSocket;
use netbridge::ratelimit::TokenBucket;

pub use known::Known;
pub use report::{Conflict, Host, Report};

/// The ports probed when `--ports` is not given.
pub const DEFAULT_PORTS: [u16; 8] = [22, 80, 443, 445, 3389, 5432, 3306, 8080];

/// Subnets larger than this many addresses (a /16) are refused.
const MAX_HOSTS: u32 = 1 << 16;

/// What to scan and how hard.
#[derive(Clone, Debug)]
pub struct Options {
    /// Interface (must have an IPv4 address).
    pub iface: String,
    /// Packets per second (ARP requests, echo requests and TCP SYNs together).
    pub rate: u32,
    /// TCP ports to probe.
    pub ports: Vec<u16>,
    /// How long to wait for replies after the last ARP / echo request.
    pub reply_wait: Duration,
    /// Timeout of one TCP connect.
    pub connect_timeout: Duration,
    /// The whole scan ends after this, with what it has.
    pub max_time: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            iface: String::new(),
            rate: 200,
            ports: DEFAULT_PORTS.to_vec(),
            reply_wait: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(500),
            max_time: Duration::from_secs(120),
        }
    }
}

/// Errors of the scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The interface is missing or has no IPv4 address.
    #[error("interface {iface}: {why}; `ip -4 addr show {iface}` shows what it has")]
    Interface {
        /// Interface.
        iface: String,
        /// What is wrong.
        why: String,
    },
    /// The subnet is too large to sweep.
    #[error("interface {iface} is on a /{prefix}; the scan sweeps at most a /16 (give the interface a narrower address, e.g. a /24)")]
    TooLarge {
        /// Interface.
        iface: String,
        /// Prefix length.
        prefix: u8,
    },
    /// The packet socket could not be opened or used.
    #[error("{0} (the scan needs CAP_NET_RAW: run it as root)")]
    Socket(#[from] netbridge::port::Error),
    /// Sending or receiving failed.
    #[error("packet I/O on {iface} failed: {source}")]
    Io {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The rate is zero.
    #[error("--rate must be at least 1 packet per second")]
    Rate,
}

/// The interface's own addresses.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    /// MAC.
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// Reads `iface`'s MAC and first IPv4 address.
pub fn local(iface: &str) -> Result<Local, ScanError> {
    let err = |why: &str| ScanError::Interface {
        iface: iface.into(),
        why: why.into(),
    };
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| err(&format!("cannot list addresses: {e}")))?;
    let (mut mac, mut v4) = (None, None);
    for a in addrs.filter(|a| a.interface_name == iface) {
        if let Some(l) = a.address.as_ref().and_then(|s| s.as_link_addr()).and_then(|l| l.addr()) {
            mac = Some(l);
        }
        if let (Some(ip), Some(mask), None) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in()),
            v4,
        ) {
            v4 = Some((ip.ip(), u32::from(mask.ip()).count_ones() as u8));
        }
    }
    let mac = mac.ok_or_else(|| err("no such interface, or it has no MAC address"))?;
    let (ip, prefix) = v4.ok_or_else(|| err("it has no IPv4 address to sweep the subnet of"))?;
    Ok(Local { mac, ip, prefix })
}

/// The addresses of `l`'s subnet to sweep: all but its own, the network and
/// broadcast addresses (a /31 has neither).
pub fn targets(iface: &str, l: &Local) -> Result<Vec<Ipv4Addr>, ScanError> {
    if l.prefix < 16 {
        return Err(ScanError::TooLarge {
            iface: iface.into(),
            prefix: l.prefix,
        });
    }
    let size = 1u32 << (32 - u32::from(l.prefix));
    let net = u32::from(l.ip) & !(size - 1);
    let range = if size <= 2 { 0..size } else { 1..size - 1 };
    debug_assert!(size <= MAX_HOSTS);
    Ok(range.map(|i| Ipv4Addr::from(net + i)).filter(|a| *a != l.ip).collect())
}

/// Waits up to `d` for the socket to become readable.
fn wait_readable(sock: &PacketSocket, d: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(d.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

/// Reads every queued frame and hands it to `f`.
fn drain(sock: &PacketSocket, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> Result<(), ScanError> {
    loop {
        match sock.recv(buf) {
            Ok(Some(info)) if !info.outgoing => {
                if let Some(frame) = buf.get(info.start..info.start + info.len) {
                    f(frame);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            // EINVAL: a frame the kernel could not describe; skip it.
            Err(e) if e.raw_os_error() == Some(libc_einval()) => {}
            Err(source) => {
                return Err(ScanError::Io {
                    iface: sock.ifname().into(),
                    source,
                })
            }
        }
    }
}

fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}

/// The packet socket, the shared pace and the time limit of one scan.
struct Wire<'a> {
    sock: PacketSocket,
    bucket: TokenBucket,
    deadline: Instant,
    progress: &'a indicatif::ProgressBar,
    buf: Vec<u8>,
}

impl Wire<'_> {
    /// Sends `frames` at the bucket's pace, reading replies in between and
    /// for `wait` after the last (or until `done` says all answered, or the
    /// deadline). False if the deadline cut it short.
    fn exchange(
        &mut self,
        frames: &[Vec<u8>],
        wait: Duration,
        mut on_frame: impl FnMut(&[u8]),
        done: impl Fn() -> bool,
    ) -> Result<bool, ScanError> {
        for f in frames {
            while !self.bucket.take(Instant::now()) {
                if Instant::now() >= self.deadline {
                    return Ok(false);
                }
                wait_readable(&self.sock, Duration::from_millis(1));
                drain(&self.sock, &mut self.buf, &mut on_frame)?;
            }
            self.sock.send(f).map_err(|source| ScanError::Io {
                iface: self.sock.ifname().into(),
                source,
            })?;
            self.progress.inc(1);
            drain(&self.sock, &mut self.buf, &mut on_frame)?;
        }
        let end = (Instant::now() + wait).min(self.deadline);
        while !done() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            wait_readable(&self.sock, end - now);
            drain(&self.sock, &mut self.buf, &mut on_frame)?;
        }
        Ok(Instant::now() < self.deadline)
    }
}

/// Runs the scan and joins it with `known`. `progress` is advanced per
/// packet sent (its length is set here).
pub fn run(opts: &Options, known: &Known, progress: &indicatif::ProgressBar) -> Result<Report, ScanError> {
    if opts.rate == 0 {
        return Err(ScanError::Rate);
    }
    let started = Instant::now();
    let started_at = crate::model::now_rfc3339();
    let deadline = started + opts.max_time;
    let me = local(&opts.iface)?;
    let targets = targets(&opts.iface, &me)?;
    // A burst of a tenth of a second's worth keeps the pace smooth.
    let mut wire = Wire {
        sock: PacketSocket::open(&opts.iface)?,
        bucket: TokenBucket::new(opts.rate, (opts.rate / 10).max(1), started),
        deadline,
        progress,
        buf: vec![0u8; 2048],
    };
    progress.set_length(targets.len() as u64);
    progress.set_message("ARP sweep");

    // 1. ARP: who answers for which address (several MACs per IP are kept).
    let frames: Vec<Vec<u8>> = targets.iter().map(|t| frame::arp_request(me.mac, me.ip, *t)).collect();
    let mut seen: BTreeMap<(Ipv4Addr, [u8; 6]), bool> = BTreeMap::new();
    let mut complete = wire.exchange(
        &frames,
        opts.reply_wait,
        |f| {
            if let Some(a) = frame::parse_arp(f) {
                if a.op == 2 && a.tpa == me.ip && a.spa != me.ip && targets.binary_search(&a.spa).is_ok() {
                    seen.entry((a.spa, a.sha)).or_insert(false);
                }
            }
        },
        || false,
    )?;
    let arp_sent = frames.len();

    // 2. ICMP echo to every (IP, MAC) that answered, addressed to that MAC.
    let pairs: Vec<(Ipv4Addr, [u8; 6])> = seen.keys().copied().collect();
    let id = (std::process::id() & 0xffff) as u16;
    let frames: Vec<Vec<u8>> = if complete {
        pairs
            .iter()
            .enumerate()
            .map(|(i, (ip, mac))| frame::echo_request(me.mac, me.ip, *mac, *ip, id, i as u16))
            .collect()
    } else {
        vec![]
    };
    progress.inc_length(frames.len() as u64);
    progress.set_message("ICMP echo");
    if complete && !frames.is_empty() {
        let answered = std::cell::Cell::new(0usize);
        complete = wire.exchange(
            &frames,
            opts.reply_wait,
            |f| {
                if let Some(r) = frame::parse_echo_reply(f) {
                    if r.id == id && r.dst == me.ip {
                        if let Some(v) = seen.get_mut(&(r.src, r.mac)).filter(|v| !**v) {
                            *v = true;
                            answered.set(answered.get() + 1);
                        }
                    }
                }
            },
            || answered.get() == pairs.len(),
        )?;
    }
    let icmp_sent = frames.len();
    let Wire { sock, bucket, .. } = wire;
    drop(sock);

    // 3. TCP connect probe, once per IP.
    let mut ips: Vec<Ipv4Addr> = pairs.iter().map(|(ip, _)| *ip).collect();
    ips.dedup();
    let jobs: Vec<(Ipv4Addr, u16)> = if complete {
        ips.iter().flat_map(|ip| opts.ports.iter().map(move |p| (*ip, *p))).collect()
    } else {
        vec![]
    };
    progress.inc_length(jobs.len() as u64);
    progress.set_message("TCP probe");
    let (open, tcp_complete) = probe::tcp(&jobs, bucket, opts.connect_timeout, deadline, progress);
    complete &= tcp_complete;

    let mut report = Report {
        iface: opts.iface.clone(),
        ip: me.ip,
        prefix: me.prefix,
        mac: report::mac_str(&me.mac),
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        complete,
        rate: opts.rate,
        ports: opts.ports.clone(),
        sent: report::Sent {
            arp: arp_sent,
            icmp: icmp_sent,
            tcp: jobs.len(),
        },
        hosts: seen
            .iter()
            .map(|((ip, mac), icmp)| Host {
                ip: *ip,
                mac: report::mac_str(mac),
                icmp: *icmp,
                open_ports: open.get(ip).cloned().unwrap_or_default(),
                server: None,
                unknown: true,
                conflict: false,
            })
            .collect(),
        conflicts: vec![],
        inventory: known.info.clone(),
    };
    report.join(known);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: [u8; 4], prefix: u8) -> Local {
        Local {
            mac: [2, 0, 0, 0, 0, 1],
            ip: ip.into(),
            prefix,
        }
    }

    #[test]
    fn targets_skip_own_network_and_broadcast() {
        let t = targets("x", &at([192, 168, 5, 77], 24)).unwrap();
        assert_eq!(t.len(), 253);
        assert_eq!(t.first(), Some(&Ipv4Addr::new(192, 168, 5, 1)));
        assert_eq!(t.last(), Some(&Ipv4Addr::new(192, 168, 5, 254)));
        assert!(!t.contains(&Ipv4Addr::new(192, 168, 5, 77)));
        assert_eq!(targets("x", &at([10, 0, 0, 0], 31)).unwrap(), vec![Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(targets("x", &at([10, 0, 0, 1], 32)).unwrap().is_empty());
        assert_eq!(targets("x", &at([10, 1, 2, 3], 16)).unwrap().len(), 65533);
        assert!(matches!(
            targets("x", &at([10, 1, 2, 3], 8)),
            Err(ScanError::TooLarge { prefix: 8, .. })
        ));
    }
}
