//! End to end through real network namespaces, real veths, a real TAP, and
//! real `ping`/`tcpdump`: host A on the "data-center LAN" reaches host B,
//! which sits behind the cloud side of the tunnel, at its own IP and MAC.
//!
//! ```text
//!  ns a            ns l (LCG)                         ns c (cloud node)            ns b
//!  host A  veth    lan0 [Lan port]                    gst0 [Guest port]   veth    host B
//!  eth0 ---------- lan0   bridge 192.0.2.1 == und0 == 192.0.2.2 bridge   gst0 ---------- eth0
//!  10.99.0.1                 (underlay veth, MTU 1500)                             10.99.0.2
//! ```
//!
//! Needs root (namespaces, AF_PACKET) plus `ip`, `ping` and `tcpdump`; when
//! not root it says so on stderr and returns.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use anyhow::{bail, Context, Result};
use common::{in_ns, must, spawn_in_ns, stream_byte, wait_for, wire_line, Lab};
use netbridge::keys::StaticKeypair;
use netbridge::{BridgeConfig, PortSpec, Role};
use proto::MacAddr;

const MAC_A: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x00, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x00, 0x0b]);
/// `ping -p` pattern: "ISTHMUS-" repeated through every echo payload.
const PATTERN_HEX: &str = "495354484d55532d";
const PATTERN: &[u8] = b"ISTHMUS-ISTHMUS-";

struct Capture {
    pid: nix::unistd::Pid,
    data: mpsc::Receiver<Vec<u8>>,
}

fn start_capture(lab: &mut Lab, ns: &str, ifname: &str, filter: &[&str]) -> Result<Capture> {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-i",
            ifname,
            "-n",
            "-U",
            "--immediate-mode",
            "-w",
            "-",
        ])
        .args(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start tcpdump")?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdout = child.stdout.take().context("tcpdump stdout")?;
    let stderr = child.stderr.take().context("tcpdump stderr")?;
    lab.children.push(child);
    let (data_tx, data) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        let _ = data_tx.send(buf);
    });
    let (ready_tx, ready) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .context("tcpdump did not start listening")?;
    Ok(Capture { pid, data })
}

fn stop_capture(c: Capture) -> Result<Vec<u8>> {
    // Let the last packets reach the capture before stopping it.
    thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGINT).context("stop tcpdump")?;
    c.data.recv_timeout(Duration::from_secs(10)).context("tcpdump output")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn ping(ns: &str, extra: &[&str]) -> Result<(bool, String)> {
    let mut args = vec!["ping", "-n", "-c", "3", "-i", "0.3", "-W", "2"];
    args.extend_from_slice(extra);
    args.push("10.99.0.2");
    in_ns(ns, &args)
}

/// Sends `len` bytes over TCP from a thread in `from_ns` to a listener on
/// 10.99.0.2 in `to_ns`; checks every byte. Returns (MiB, seconds from
/// connection accepted to the last byte received).
fn tcp_transfer(from_ns: &str, to_ns: &str, len: usize) -> Result<(usize, f64)> {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    let enter = |ns: &str| -> Result<()> {
        let f = File::open(format!("/run/netns/{ns}"))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(())
    };
    let (to_ns, from_ns) = (to_ns.to_string(), from_ns.to_string());
    let (ready_tx, ready) = mpsc::channel();
    let server = thread::spawn(move || -> Result<(usize, f64)> {
        enter(&to_ns)?;
        let l = TcpListener::bind("10.99.0.2:5001")?;
        let _ = ready_tx.send(());
        let (mut s, _) = l.accept()?;
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok((got, start.elapsed().as_secs_f64()));
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
        let mut s = TcpStream::connect_timeout(&"10.99.0.2:5001".parse()?, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        let data: Vec<u8> = (0..len).map(stream_byte).collect();
        s.write_all(&data)?;
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    });
    client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    let (got, secs) = server.join().map_err(|_| anyhow::anyhow!("server panicked"))??;
    if got != len {
        bail!("received {got} of {len} bytes");
    }
    Ok((len >> 20, secs))
}

fn build_lab(lab: &mut Lab) -> Result<()> {
    let (a, l, c, b) = (lab.ns("a"), lab.ns("l"), lab.ns("c"), lab.ns("b"));
    for ns in [&a, &l, &c, &b] {
        must(&["ip", "netns", "add", ns])?;
        lab.namespaces.push(ns.clone());
        must(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    wire_line(&a, &l, &c, &b, &MAC_A.to_string(), &MAC_B.to_string())?;
    let und = must(&["ip", "-n", &l, "link", "show", "und0"])?;
    if !und.contains("mtu 1500") {
        bail!("underlay is not MTU 1500: {und}");
    }
    Ok(())
}

#[test]
fn bridge_carries_a_moved_server_through_namespaces() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED netns_bridge: needs root for network namespaces and AF_PACKET sockets");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("netbridge=debug")
        .with_test_writer()
        .try_init();
    let mut lab = Lab::new(format!("nbt{}", std::process::id()));
    build_lab(&mut lab)?;
    let (a, l, c) = (lab.ns("a"), lab.ns("l"), lab.ns("c"));

    let lcg_key = StaticKeypair::generate();
    let cloud_key = StaticKeypair::generate();
    let psk = {
        let k = StaticKeypair::generate();
        k.private
    };
    let lcg = spawn_in_ns(
        &l,
        BridgeConfig {
            local: lcg_key.clone(),
            peer_public: cloud_key.public,
            psk,
            listen: "192.0.2.1:51820".parse()?,
            role: Role::Initiator {
                peer: "192.0.2.2:51820".parse()?,
            },
            ports: vec![PortSpec::Lan { ifname: "lan0".into() }],
        },
    )?;
    lab.bridges.push(lcg.clone());
    // The responder starts later: the initiator must keep retrying.
    thread::sleep(Duration::from_millis(1500));
    let cloud = spawn_in_ns(
        &c,
        BridgeConfig {
            local: cloud_key,
            peer_public: lcg_key.public,
            psk,
            listen: "192.0.2.2:51820".parse()?,
            role: Role::Responder,
            ports: vec![PortSpec::Guest { ifname: "gst0".into() }],
        },
    )?;
    lab.bridges.push(cloud.clone());
    wait_for("handshake", Duration::from_secs(10), || {
        lcg.stats().established && cloud.stats().established
    })?;
    let s = lcg.stats();
    assert!(s.handshake_inits_sent >= 2, "initiation was not retransmitted: {s:?}");
    assert!(s.last_handshake_age.is_some());
    assert_eq!(cloud.stats().peer_endpoint, Some("192.0.2.1:51820".parse()?));

    // Nothing carried: nothing crosses.
    let (ok, out) = ping(&a, &[])?;
    assert!(!ok, "ping crossed with no carried MAC:\n{out}");
    assert!(lcg.stats().lan_filtered > 0);

    // Carry B: A reaches B at B's own IP and MAC.
    lcg.carry_mac(MAC_B);
    must(&["ip", "-n", &a, "neigh", "flush", "dev", "eth0"])?;
    let underlay = start_capture(&mut lab, &l, "und0", &["udp"])?;
    let lan = start_capture(&mut lab, &l, "lan0", &[])?;
    let (ok, out) = ping(&a, &["-p", PATTERN_HEX])?;
    assert!(ok, "ping with B carried failed:\n{out}");
    let neigh = must(&["ip", "-n", &a, "neigh", "show", "10.99.0.2"])?;
    assert!(
        neigh.contains(&MAC_B.to_string()),
        "A's neighbour table does not show B's MAC: {neigh}"
    );
    // Full-size frames: 1472 bytes of ICMP payload = 1500-byte IP packet =
    // 1514-byte frame, through a 1500-MTU underlay (two fragments each).
    let (ok, out) = ping(&a, &["-s", "1472", "-M", "do", "-p", PATTERN_HEX])?;
    assert!(ok, "full-size ping failed:\n{out}");
    let underlay = stop_capture(underlay)?;
    let lan = stop_capture(lan)?;

    // The detector works: on the LAN side the pattern and MACs are in clear...
    assert!(
        contains(&lan, PATTERN) && contains(&lan, &MAC_B.0),
        "LAN capture lacks the plaintext ({} bytes)",
        lan.len()
    );
    // ...and the underlay carried the traffic, but none of it in clear.
    assert!(underlay.len() > 6 * 700, "underlay capture too small: {} bytes", underlay.len());
    assert!(!contains(&underlay, PATTERN), "ping payload visible on the underlay");
    assert!(!contains(&underlay, &MAC_B.0), "B's MAC visible on the underlay");
    assert!(!contains(&underlay, &MAC_A.0), "A's MAC visible on the underlay");

    let (ls, cs) = (lcg.stats(), cloud.stats());
    eprintln!("LCG stats: {ls:#?}\ncloud stats: {cs:#?}");
    assert!(ls.tx_frames >= 6 && ls.rx_frames >= 6, "{ls:?}");
    assert!(cs.tx_frames >= 6 && cs.rx_frames >= 6, "{cs:?}");
    assert_eq!(ls.rx_auth_failed + cs.rx_auth_failed + ls.replay_rejects + cs.replay_rejects, 0);
    assert_eq!(ls.tx_dropped_too_large + cs.tx_dropped_too_large, 0);

    // TCP: veths hand the bridge TSO super-frames and checksum-offloaded
    // frames; they must arrive intact (segmented, checksummed, fragmented).
    let (build, size) = if cfg!(debug_assertions) {
        ("debug", 16 << 20)
    } else {
        ("release", 64 << 20)
    };
    let (mib, secs) = tcp_transfer(&a, &lab.ns("b"), size)?;
    let (ls, cs) = (lcg.stats(), cloud.stats());
    let mbit = mib as f64 * 8.388608 / secs;
    eprintln!("TCP A -> B: {mib} MiB in {secs:.2} s = {mbit:.0} Mbit/s ({build} build)");
    eprintln!(
        "super-frames segmented / checksums completed: LCG {} / {}, cloud {} / {}",
        ls.superframes_segmented, ls.checksums_completed, cs.superframes_segmented, cs.checksums_completed
    );
    assert_eq!(lcg.stats().tx_dropped_too_large + cs.tx_dropped_too_large, 0);

    // Rollback: with B's MAC dropped, A cannot reach B any more.
    lcg.drop_mac(MAC_B);
    let (ok, out) = ping(&a, &[])?;
    assert!(!ok, "ping crossed after drop_mac:\n{out}");

    // Cloud side, run time: a guest TAP whose QEMU is not attached yet.
    lcg.carry_mac(MAC_B);
    must(&["ip", "-n", &c, "tuntap", "add", "dev", "tap0", "mode", "tap"])?;
    must(&["ip", "-n", &c, "link", "set", "tap0", "up"])?;
    let tap = PortSpec::Guest { ifname: "tap0".into() };
    cloud.add_port(tap.clone())?;
    assert!(matches!(cloud.add_port(tap), Err(netbridge::Error::PortExists(_))));
    assert!(matches!(
        cloud.add_port(PortSpec::Guest { ifname: "nosuch0".into() }),
        Err(netbridge::Error::Port(_))
    ));
    must(&["ip", "-n", &a, "neigh", "flush", "dev", "eth0"])?;
    let (ok, out) = ping(&a, &[])?;
    assert!(ok, "ping failed with an unattached TAP port on the cloud side:\n{out}");
    eprintln!("cloud port_tx_errors with unattached TAP: {}", cloud.stats().port_tx_errors);

    // The TAP vanishes (guest stopped): the bridge lives on.
    must(&["ip", "-n", &c, "link", "del", "tap0"])?;
    wait_for("port marked down", Duration::from_secs(5), || cloud.stats().ports_down == 1)?;
    must(&["ip", "-n", &a, "neigh", "flush", "dev", "eth0"])?;
    let (ok, out) = ping(&a, &[])?;
    assert!(ok, "ping failed after the TAP vanished:\n{out}");
    cloud.remove_port("tap0")?;
    assert!(matches!(cloud.remove_port("tap0"), Err(netbridge::Error::NoSuchPort(_))));
    assert_eq!(cloud.stats().ports_down, 0);

    // Shutdown is clean and final.
    cloud.shutdown();
    assert!(matches!(
        cloud.add_port(PortSpec::Guest { ifname: "gst0".into() }),
        Err(netbridge::Error::Stopped)
    ));
    Ok(())
}
