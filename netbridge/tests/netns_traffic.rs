//! What crosses the bridge, through real namespaces, veths and real tools
//! (`ping`, `arping`, `tcpdump`): ARP, IPv4, IPv6, 802.1Q-tagged frames,
//! broadcast and multicast; TCP over a lossy, reordering, duplicating
//! underlay (duplicates are counted as replays); a duplicate MAC on the LAN
//! raises the alarm and its traffic is refused; a second path joining the
//! LAN back to the cloud side is detected and flooding blocked while unicast
//! goes on. The lossy-underlay test and a test with many flows also run
//! with two workers per bridge (`SO_REUSEPORT`, `PACKET_FANOUT`): TCP still
//! completes, replays are still caught, nothing is falsely rejected, and
//! both workers carry frames.
//!
//! ```text
//!  ns a            ns l (LCG)                         ns c (cloud node)            ns b
//!  host A  veth    lan0 [Lan port]                    gst0 [Guest port]   veth    host B
//!  eth0 ---------- lan0   bridge 192.0.2.1 == und0 == 192.0.2.2 bridge   gst0 ---------- eth0
//!  10.99.0.1                 (underlay veth, MTU 1500)                             10.99.0.2
//! ```
//!
//! Each test makes its own namespaces (prefix `nx<pid><tag>`), so they run in
//! parallel. Needs root plus `ip`, `ping`, `arping`, `tcpdump` and `python3`; when not root
//! each test says so on stderr and returns.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use anyhow::{bail, Context, Result};
use common::{enter, in_ns, must, spawn_in_ns_workers, stream_byte, wait_for, wire_line};
use netbridge::keys::StaticKeypair;
use netbridge::{BridgeConfig, BridgeHandle, Ha, PortSpec, Role};
use proto::MacAddr;

const MAC_A: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x01, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x01, 0x0b]);

/// Everything a test made; torn down in reverse even when an assert fails.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    bridges: Vec<BridgeHandle>,
    /// Set to stop the underlay impairment thread, if any.
    stop: Arc<AtomicBool>,
}

impl Lab {
    fn ns(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for b in &self.bridges {
            b.shutdown();
        }
        // Deleting a namespace removes its veths, bridges, VLANs and qdiscs.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
fn ping(ns: &str, extra: &[&str], dst: &str) -> Result<(bool, String)> {
    let mut args = vec!["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2"];
    args.extend_from_slice(extra);
    args.push(dst);
    in_ns(ns, &args)
}

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED netns_traffic::{test}: needs root for network namespaces and AF_PACKET sockets");
    false
}

/// The four namespaces of the picture, and an established tunnel carrying B.
/// `tag` keeps the namespace names of parallel tests apart.
fn lab(tag: &str) -> Result<(Lab, BridgeHandle, BridgeHandle)> {
    lab_with(tag, None, netbridge::worker::from_env())
}

/// Like [`lab`], with `workers` workers per bridge; with `impair`, the
/// LCG's datagrams go through an [`impair_underlay`] relay in the cloud
/// namespace, both ways.
fn lab_with(tag: &str, impair: Option<&Arc<Impaired>>, workers: usize) -> Result<(Lab, BridgeHandle, BridgeHandle)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("netbridge=info")
        .with_test_writer()
        .try_init();
    let mut lab = Lab {
        prefix: format!("nx{}{tag}", std::process::id()),
        namespaces: vec![],
        bridges: vec![],
        stop: Arc::new(AtomicBool::new(false)),
    };
    let (a, l, c, b) = (lab.ns("a"), lab.ns("l"), lab.ns("c"), lab.ns("b"));
    for ns in [&a, &l, &c, &b] {
        must(&["ip", "netns", "add", ns])?;
        lab.namespaces.push(ns.clone());
        must(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    wire_line(&a, &l, &c, &b, &MAC_A.to_string(), &MAC_B.to_string())?;

    let mut peer: std::net::SocketAddr = "192.0.2.2:51820".parse()?;
    if let Some(counts) = impair {
        peer = impair_underlay(&c, peer, lab.stop.clone(), counts.clone())?;
    }
    let lcg_key = StaticKeypair::generate();
    let cloud_key = StaticKeypair::generate();
    let psk = StaticKeypair::generate().private;
    let lcg = spawn_in_ns_workers(
        &l,
        BridgeConfig {
            local: lcg_key.clone(),
            peer_public: cloud_key.public,
            psk,
            listen: "192.0.2.1:51820".parse()?,
            role: Role::Initiator { peer },
            ports: vec![PortSpec::Lan { ifname: "lan0".into() }],
        },
        Ha::Off,
        workers,
    )?;
    lab.bridges.push(lcg.clone());
    let cloud = spawn_in_ns_workers(
        &c,
        BridgeConfig {
            local: cloud_key,
            peer_public: lcg_key.public,
            psk,
            listen: "192.0.2.2:51820".parse()?,
            role: Role::Responder,
            ports: vec![PortSpec::Guest { ifname: "gst0".into() }],
        },
        Ha::Off,
        workers,
    )?;
    lab.bridges.push(cloud.clone());
    wait_for("handshake", Duration::from_secs(10), || {
        lcg.stats().established && cloud.stats().established
    })?;
    lcg.carry_mac(MAC_B);
    Ok((lab, lcg, cloud))
}

/// IPv6 addresses leave "tentative" once DAD is done.
fn wait_dad(ns: &str) -> Result<()> {
    wait_for(&format!("IPv6 DAD in {ns}"), Duration::from_secs(10), || {
        must(&["ip", "-n", ns, "-6", "addr", "show", "dev", "eth0"])
            .map(|s| s.contains("inet6") && !s.contains("tentative"))
            .unwrap_or(false)
    })
}

#[test]
fn arp_ipv4_ipv6_vlan_broadcast_and_multicast_cross() -> Result<()> {
    if !root_or_skip("arp_ipv4_ipv6_vlan_broadcast_and_multicast_cross") {
        return Ok(());
    }
    let (lab, lcg, cloud) = lab("p")?;
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    // IPv6 ULAs without DAD; link-local addresses go through DAD meanwhile.
    must(&["ip", "-n", &a, "addr", "add", "fd00:99::1/64", "dev", "eth0", "nodad"])?;
    must(&["ip", "-n", &b, "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"])?;

    // ARP + IPv4: A resolves B's IP to B's own MAC across the tunnel.
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(ok, "IPv4 ping failed:\n{out}");
    let neigh = must(&["ip", "-n", &a, "neigh", "show", "10.99.0.2"])?;
    assert!(neigh.contains(&MAC_B.to_string()), "ARP did not resolve B's MAC: {neigh}");
    let (ok, out) = in_ns(&a, &["arping", "-c", "2", "-w", "3", "-I", "eth0", "10.99.0.2"])?;
    assert!(ok && out.to_lowercase().contains(&MAC_B.to_string()), "arping failed:\n{out}");

    // IPv6 (neighbour discovery is multicast too).
    let (ok, out) = ping(&a, &["-6"], "fd00:99::2")?;
    assert!(ok, "IPv6 ping failed:\n{out}");
    let neigh = must(&["ip", "-n", &a, "-6", "neigh", "show", "fd00:99::2"])?;
    assert!(neigh.contains(&MAC_B.to_string()), "NDP did not resolve B's MAC: {neigh}");

    // 802.1Q: this kernel has no VLAN devices (no 8021q module), so A puts
    // a tagged frame (VID 42, PCP 5) on its link with a raw socket, and B's
    // capture must show it arriving with the tag.
    let mut tcpdump = Command::new("ip")
        .args([
            "netns", "exec", &b, "timeout", "10", "tcpdump", "-i", "eth0", "-n", "-e", "-c", "1", "-l",
        ])
        .args(["--immediate-mode", "vlan 42 and ether src", &MAC_A.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start tcpdump")?;
    let stderr = tcpdump.stderr.take().context("tcpdump stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    if !lines.any(|l| l.is_ok_and(|l| l.contains("listening on"))) {
        let _ = tcpdump.kill();
        bail!("tcpdump did not start");
    }
    let frame = format!(
        "{}{}8100a02a88b6{}",
        MAC_B.to_string().replace(':', ""),
        MAC_A.to_string().replace(':', ""),
        "49535448".repeat(12)
    );
    let send = format!(
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
         s.bind(('eth0', 0)); [s.send(bytes.fromhex('{frame}')) for _ in range(3)]"
    );
    let (ok, out) = in_ns(&a, &["python3", "-c", &send])?;
    assert!(ok, "sending the tagged frame failed:\n{out}");
    let out = tcpdump.wait_with_output().context("tcpdump")?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("vlan 42, p 5") && text.contains("0x88b6"),
        "B did not receive the VLAN-tagged frame intact: {text:?}"
    );

    // Broadcast and multicast echo requests: B answers them.
    in_ns(&b, &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])?;
    let (_, out) = ping(&a, &["-b", "-I", "eth0"], "10.99.0.255")?;
    assert!(out.contains("from 10.99.0.2"), "B did not answer a broadcast ping:\n{out}");
    let (_, out) = ping(&a, &["-I", "eth0"], "224.0.0.1")?;
    assert!(out.contains("from 10.99.0.2"), "B did not answer a multicast ping:\n{out}");
    wait_dad(&a)?;
    wait_dad(&b)?;
    let b_ll = must(&["ip", "-n", &b, "-6", "addr", "show", "dev", "eth0", "scope", "link"])?;
    let b_ll = b_ll
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .context("B's link-local address")?
        .to_string();
    let (_, out) = ping(&a, &["-6"], "ff02::1%eth0")?;
    assert!(out.contains(&b_ll), "B ({b_ll}) did not answer a ping to ff02::1:\n{out}");

    let (ls, cs) = (lcg.stats(), cloud.stats());
    eprintln!("LCG stats: {ls:#?}\ncloud stats: {cs:#?}");
    assert!(ls.duplicate_macs.is_empty() && ls.loops_detected == 0, "{ls:?}");
    assert_eq!(ls.rx_auth_failed + cs.rx_auth_failed + ls.replay_rejects + cs.replay_rejects, 0);
    Ok(())
}

/// Sends `len` bytes over TCP from a thread in `from_ns` to a listener on
/// 10.99.0.2 in `to_ns`; checks every byte; returns the seconds it took.
fn tcp_transfer(from_ns: &str, to_ns: &str, len: usize) -> Result<f64> {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    let (to_ns, from_ns) = (to_ns.to_string(), from_ns.to_string());
    let (ready_tx, ready) = mpsc::channel();
    let start = Instant::now();
    let server = thread::spawn(move || -> Result<usize> {
        enter(&to_ns)?;
        let l = TcpListener::bind("10.99.0.2:5001")?;
        let _ = ready_tx.send(());
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                if b != stream_byte(got + k) {
                    bail!("byte {} corrupted", got + k);
                }
            }
            got += n;
        }
    });
    ready.recv_timeout(Duration::from_secs(5)).context("TCP listener")?;
    let client = thread::spawn(move || -> Result<()> {
        enter(&from_ns)?;
        let mut s = TcpStream::connect_timeout(&"10.99.0.2:5001".parse()?, Duration::from_secs(10))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let data: Vec<u8> = (0..len).map(stream_byte).collect();
        s.write_all(&data)?;
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    });
    client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    let got = server.join().map_err(|_| anyhow::anyhow!("server panicked"))??;
    if got != len {
        bail!("received {got} of {len} bytes");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// What [`impair_underlay`] did to the datagrams.
#[derive(Default)]
struct Impaired {
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

/// A UDP relay in `ns` in front of the cloud bridge at `cloud`, standing in
/// for `tc netem loss 5% duplicate 5% reorder 25%` (this kernel has no
/// sch_netem): of the datagrams each way, 5% are lost, 5% sent twice and
/// 25% held back behind the next one. Returns the address the LCG should
/// use as its peer; runs until `stop` is set.
fn impair_underlay(ns: &str, cloud: std::net::SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Impaired>) -> Result<std::net::SocketAddr> {
    use std::net::UdpSocket;
    let ns = ns.to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || -> Result<()> {
        enter(&ns)?;
        let sock = UdpSocket::bind((cloud.ip(), 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let _ = tx.send(sock.local_addr());
        let mut lcg = None;
        let mut held: Option<(Vec<u8>, std::net::SocketAddr)> = None;
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, src)) = sock.recv_from(&mut buf) else {
                if let Some((p, to)) = held.take() {
                    let _ = sock.send_to(&p, to);
                }
                continue;
            };
            let to = if src == cloud {
                match lcg {
                    Some(to) => to,
                    None => continue,
                }
            } else {
                lcg = Some(src);
                cloud
            };
            // xorshift64: reproducible from run to run.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng % 100 {
                0..=4 => {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                5..=9 => {
                    counts.duplicated.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&buf[..n], to);
                    let _ = sock.send_to(&buf[..n], to);
                }
                10..=34 if held.is_none() => {
                    counts.reordered.fetch_add(1, Ordering::Relaxed);
                    held = Some((buf[..n].to_vec(), to));
                    continue;
                }
                _ => {
                    let _ = sock.send_to(&buf[..n], to);
                }
            }
            if let Some((p, to)) = held.take() {
                let _ = sock.send_to(&p, to);
            }
        }
        Ok(())
    });
    Ok(rx.recv_timeout(Duration::from_secs(5)).context("underlay relay")??)
}

#[test]
fn tcp_completes_over_a_lossy_reordering_duplicating_underlay() -> Result<()> {
    if !root_or_skip("tcp_completes_over_a_lossy_reordering_duplicating_underlay") {
        return Ok(());
    }
    tcp_over_lossy_underlay("n", netbridge::worker::from_env())
}

#[test]
fn tcp_completes_over_a_lossy_underlay_with_two_workers_per_bridge() -> Result<()> {
    if !root_or_skip("tcp_completes_over_a_lossy_underlay_with_two_workers_per_bridge") {
        return Ok(());
    }
    tcp_over_lossy_underlay("w", 2)
}

/// 2 MiB of TCP from A to B over [`impair_underlay`]; every byte checked,
/// the duplicates counted as replays on both sides, no forgery.
fn tcp_over_lossy_underlay(tag: &str, workers: usize) -> Result<()> {
    let impaired = Arc::new(Impaired::default());
    let (lab, lcg, cloud) = lab_with(tag, Some(&impaired), workers)?;
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let len = 2 << 20;
    let secs = tcp_transfer(&a, &b, len)?;
    let (ls, cs) = (lcg.stats(), cloud.stats());
    eprintln!("TCP A -> B over netem: {} MiB in {secs:.2} s", len >> 20);
    eprintln!("LCG stats: {ls:#?}\ncloud stats: {cs:#?}");
    assert!(cs.replay_rejects > 0, "receiving bridge counted no replays: {cs:?}");
    assert!(ls.replay_rejects > 0, "LCG counted no replays: {ls:?}");
    assert_eq!(ls.rx_auth_failed + cs.rx_auth_failed, 0);
    let (lost, dup, reord) = (
        impaired.lost.load(Ordering::Relaxed),
        impaired.duplicated.load(Ordering::Relaxed),
        impaired.reordered.load(Ordering::Relaxed),
    );
    eprintln!("underlay: {lost} lost, {dup} duplicated, {reord} reordered");
    assert!(lost > 0 && dup > 0 && reord > 0, "the underlay was not impaired");
    assert_eq!(ls.worker_frames.len(), workers);
    Ok(())
}

#[test]
fn two_workers_per_bridge_both_carry_frames_of_many_flows() -> Result<()> {
    if !root_or_skip("two_workers_per_bridge_both_carry_frames_of_many_flows") {
        return Ok(());
    }
    let (lab, lcg, cloud) = lab_with("m", None, 2)?;
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(ok, "ping failed:\n{out}");
    // 16 flows each way: the LAN port's fanout (LCG) and the guest port's
    // (cloud) hash each flow to one worker; all 16 on one worker of two
    // has a chance of 2^-15.
    const FLOWS: u16 = 16;
    const PER_FLOW: usize = 100;
    let got_ab = udp_flows(&a, "10.99.0.1", &b, "10.99.0.2", FLOWS, PER_FLOW)?;
    let got_ba = udp_flows(&b, "10.99.0.2", &a, "10.99.0.1", FLOWS, PER_FLOW)?;
    let (ls, cs) = (lcg.stats(), cloud.stats());
    eprintln!("received A->B {got_ab}, B->A {got_ba} of {} each way", FLOWS as usize * PER_FLOW);
    eprintln!(
        "LCG workers: frames {:?} datagrams {:?} locks {:?} waits {:?}; cloud workers: frames {:?} datagrams {:?} locks {:?} waits {:?}",
        ls.worker_frames,
        ls.worker_datagrams,
        ls.worker_locks,
        ls.worker_lock_waits,
        cs.worker_frames,
        cs.worker_datagrams,
        cs.worker_locks,
        cs.worker_lock_waits
    );
    let total = FLOWS as usize * PER_FLOW;
    // A clean underlay: whatever reached a bridge crosses (a few may be lost
    // to full socket buffers on a loaded machine, none to the tunnel).
    assert!(
        got_ab * 10 >= total * 9 && got_ba * 10 >= total * 9,
        "flows lost datagrams: {got_ab} and {got_ba} of {total}"
    );
    for (side, s) in [("LCG", &ls), ("cloud", &cs)] {
        assert_eq!(s.worker_frames.len(), 2, "{side}: {s:?}");
        assert!(
            s.worker_frames.iter().all(|&f| f > 0),
            "{side}: a worker read no frame from its port socket: {:?}",
            s.worker_frames
        );
        // One peer's 4-tuple stays on one worker's socket (SO_REUSEPORT).
        assert_eq!(
            s.worker_datagrams.iter().filter(|&&d| d > 0).count(),
            1,
            "{side}: one peer's datagrams were spread over workers: {:?}",
            s.worker_datagrams
        );
        // Both workers sealed on one session: no counter was used twice or
        // arrived outside the replay window, nothing failed to open.
        assert_eq!(s.replay_rejects + s.rx_auth_failed + s.rx_malformed, 0, "{side}: {s:?}");
    }
    Ok(())
}

/// Sends `per_flow` numbered UDP datagrams on each of `flows` flows (one
/// source port each) from `from_ip` in `from_ns` to `to_ip`:6000 in
/// `to_ns`; returns how many distinct ones arrived.
fn udp_flows(from_ns: &str, from_ip: &str, to_ns: &str, to_ip: &str, flows: u16, per_flow: usize) -> Result<usize> {
    use std::collections::HashSet;
    use std::net::UdpSocket;
    let (to_ns, from_ns) = (to_ns.to_string(), from_ns.to_string());
    let (to, from_ip) = (format!("{to_ip}:6000"), from_ip.to_string());
    let bind = to.clone();
    let (ready_tx, ready) = mpsc::channel();
    let server = thread::spawn(move || -> Result<usize> {
        enter(&to_ns)?;
        let s = UdpSocket::bind(&bind)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let _ = ready_tx.send(());
        let mut seen = HashSet::new();
        let mut buf = [0u8; 64];
        // Until 2 s pass without a datagram.
        while let Ok(n) = s.recv(&mut buf) {
            if n == 6 {
                seen.insert((
                    u16::from_be_bytes([buf[0], buf[1]]),
                    u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
                ));
            }
        }
        Ok(seen.len())
    });
    ready.recv_timeout(Duration::from_secs(5)).context("UDP receiver")?;
    thread::spawn(move || -> Result<()> {
        enter(&from_ns)?;
        let socks = (0..flows)
            .map(|_| UdpSocket::bind(format!("{from_ip}:0")))
            .collect::<std::io::Result<Vec<_>>>()?;
        for i in 0..per_flow as u32 {
            for (f, s) in socks.iter().enumerate() {
                let mut d = [0u8; 6];
                d[..2].copy_from_slice(&(f as u16).to_be_bytes());
                d[2..].copy_from_slice(&i.to_be_bytes());
                s.send_to(&d, &to)?;
            }
            // Paced: a burst of 16 every millisecond stays far below what
            // the bridges' socket buffers hold.
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    server.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?
}

#[test]
fn duplicate_mac_on_the_lan_raises_the_alarm_and_is_refused() -> Result<()> {
    if !root_or_skip("duplicate_mac_on_the_lan_raises_the_alarm_and_is_refused") {
        return Ok(());
    }
    let (mut lab, lcg, _cloud) = lab("d")?;
    let (a, d) = (lab.ns("a"), lab.ns("d"));
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(ok, "ping before the duplicate failed:\n{out}");
    assert!(lcg.stats().duplicate_macs.is_empty());

    // The source server comes back to life on the LAN: B's MAC and IP on a
    // macvlan of A's LAN link, in its own namespace.
    must(&["ip", "netns", "add", &d])?;
    lab.namespaces.push(d.clone());
    must(&[
        "ip", "-n", &a, "link", "add", "link", "eth0", "name", "dup0", "type", "macvlan", "mode", "bridge",
    ])?;
    must(&["ip", "-n", &a, "link", "set", "dup0", "netns", &d])?;
    must(&["ip", "-n", &d, "link", "set", "dup0", "address", &MAC_B.to_string()])?;
    must(&["ip", "-n", &d, "addr", "add", "10.99.0.2/24", "dev", "dup0"])?;
    must(&["ip", "-n", &d, "link", "set", "dup0", "up"])?;
    // Frames with B's MAC as source go out onto the LAN (lan0).
    in_ns(&d, &["arping", "-c", "3", "-w", "2", "-I", "dup0", "10.99.0.1"])?;
    wait_for("duplicate-MAC alarm", Duration::from_secs(5), || {
        lcg.stats().duplicate_macs.contains(&MAC_B)
    })?;

    // The copy behind the tunnel no longer answers: its traffic is refused.
    must(&["ip", "-n", &d, "link", "set", "dup0", "down"])?;
    // Keep A's neighbour entry (B's MAC): the ping below is unicast to the
    // MAC in alarm. A flushed entry would make it a broadcast ARP, which the
    // loop guard may drop instead (the macvlan can look like a second path),
    // and the drop would then prove nothing about the duplicate-MAC refusal.
    let before = lcg.stats().duplicate_mac_drops;
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(!ok, "B answered through the tunnel while its MAC is in alarm:\n{out}");
    let s = lcg.stats();
    eprintln!("LCG stats: {s:#?}");
    assert_eq!(s.duplicate_macs, vec![MAC_B]);
    assert!(s.duplicate_mac_drops > before, "no frames refused: {s:?}");

    // The operator clears the alarm once only one copy runs: traffic resumes.
    // (Unicast again, for the same reason: a loop block, if one was raised,
    // holds flooding for 10 s.)
    lcg.clear_duplicate_mac(MAC_B)?;
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(ok, "ping after clearing the alarm failed:\n{out}");
    assert!(lcg.stats().duplicate_macs.is_empty());
    Ok(())
}

#[test]
fn a_second_path_is_detected_and_flooding_blocked_while_unicast_flows() -> Result<()> {
    if !root_or_skip("a_second_path_is_detected_and_flooding_blocked_while_unicast_flows") {
        return Ok(());
    }
    let (lab, lcg, cloud) = lab("l")?;
    let (a, c) = (lab.ns("a"), lab.ns("c"));
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(ok, "ping before the loop failed:\n{out}");
    assert_eq!(lcg.stats().loops_detected, 0);

    // A second path outside the tunnel: A's LAN segment becomes a Linux
    // bridge that also reaches the cloud node's switch through a veth.
    must(&["ip", "-n", &a, "link", "add", "br0", "type", "bridge"])?;
    must(&["ip", "-n", &a, "link", "set", "br0", "address", &MAC_A.to_string()])?;
    must(&["ip", "-n", &a, "addr", "del", "10.99.0.1/24", "dev", "eth0"])?;
    must(&["ip", "-n", &a, "addr", "add", "10.99.0.1/24", "dev", "br0"])?;
    must(&["ip", "-n", &a, "link", "set", "eth0", "master", "br0"])?;
    must(&[
        "ip", "-n", &a, "link", "add", "lpa", "type", "veth", "peer", "name", "lpc", "netns", &c,
    ])?;
    must(&["ip", "-n", &a, "link", "set", "lpa", "master", "br0"])?;
    for (ns, dev) in [(&a, "lpa"), (&a, "br0"), (&c, "lpc")] {
        must(&["ip", "-n", ns, "link", "set", dev, "up"])?;
    }
    cloud.add_port(PortSpec::Guest { ifname: "lpc".into() })?;
    wait_for("loop detected", Duration::from_secs(10), || lcg.stats().loops_detected > 0)?;
    let s = lcg.stats();
    assert!(s.loop_blocked, "loop seen but flooding not blocked: {s:?}");

    // Unicast between A and B goes on; broadcast does not cross. (B's own
    // frames also reach the LAN over the second path, so the LCG may put B
    // in duplicate-MAC alarm too; A then reaches B over that path.)
    let (ok, out) = ping(&a, &[], "10.99.0.2")?;
    assert!(ok, "unicast ping failed while the loop is blocked:\n{out}");
    let before = lcg.stats().loop_drops;
    let _ = in_ns(&a, &["arping", "-b", "-c", "3", "-w", "2", "-I", "br0", "10.99.0.2"])?;
    let s = lcg.stats();
    eprintln!("LCG stats: {s:#?}\ncloud stats: {:#?}", cloud.stats());
    assert!(s.loop_blocked && s.loop_drops > before, "broadcasts not blocked: {s:?}");
    Ok(())
}
