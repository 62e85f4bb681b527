//! HA: two LCG *processes* on one LAN, one cloud node arbitrating a lease.
//! Host A pings host B (behind the cloud node) every 20 ms; the active LCG
//! is killed with SIGKILL; the standby takes the lease over, announces B's
//! MAC (gratuitous ARP) so the LAN switch relearns, and the pings resume.
//! Asserted: traffic crosses before and after; no ping reply is ever
//! duplicated (both LCGs forwarding would duplicate B's replies: both cloud
//! bridges read them from B's port); the standby put nothing on the LAN
//! and was never active while the active lived; the cloud node refused the
//! dead member's tunnel afterwards. The failover time (kill to first reply)
//! is printed, and written as JSON to `$NETBRIDGE_HA_REPORT` for
//! `make bench-netbridge`; the test only bounds it loosely (10 s).
//!
//! ```text
//!  ns a        ns s (LAN switch)     ns l1 (LCG 1, process)        ns c (cloud node)            ns b
//!  eth0 ------ pa  br0  p1 --------- lan0   192.0.2.1 == und1 192.0.2.2 bridge #1 \
//!  10.99.0.1           p2 --------- ns l2 (LCG 2, process)                          gst0 ---- eth0 10.99.0.2
//!                                    lan0   192.0.2.5 == und2 192.0.2.6 bridge #2 /
//! ```
//!
//! The LCG processes are this test binary run again (`ha_lcg_child`) under
//! `ip netns exec`, keys passed on stdin. Needs root and `ip`, `ping`.
//!
//! The second test does the same with **two clouds**: each LCG has a tunnel
//! to each of two cloud nodes, each node runs ONE bridge with both LCGs as
//! peers and its own arbiter (one lease per cloud). Host A pings a host
//! behind each cloud; after the SIGKILL both resume through the standby
//! within 3 s, and captures at both cloud hosts and at A count every ICMP
//! echo (id, seq) twice-seen as a duplicate (there must be none).
//!
//! ```text
//!  ns a ---- ns s (br0) ---- l1 (LCG 1): und0 == ns ca (cloud A bridge: peer 0 LCG 1, peer 1 LCG 2) gst0 -- ns ba 10.99.0.2
//!                   \                  und1 == ns cb (cloud B bridge: peer 0 LCG 1, peer 1 LCG 2) gst0 -- ns bb 10.99.0.3
//!                    `------ l2 (LCG 2): und0 == ca,  und1 == cb
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use anyhow::{bail, Context, Result};
use common::{capture_output, init_tracing, must, root_or_skip, spawn_in_ns_with, start_capture, veth, wait_for, Lab};
use netbridge::filter::PeerVlans;
use netbridge::ha::Arbiter;
use netbridge::keys::{self, StaticKeypair};
use netbridge::{Bridge, BridgeConfig, Ha, PeerSpec, PortSpec, Role};
use proto::MacAddr;

const MAC_A: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x02, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x02, 0x0b]);
const CHILD_ENV: &str = "NETBRIDGE_HA_CHILD";

/// One stats sample of an LCG process.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    active: bool,
    established: bool,
    lan_tx: u64,
    takeovers: u64,
    /// Bit `n`: the lease of tunnel `n` is held.
    held: u64,
}

struct Lcg {
    child: Child,
    latest: Arc<Mutex<Sample>>,
    /// Was it ever seen active?
    ever_active: Arc<Mutex<bool>>,
}

impl Lcg {
    fn sample(&self) -> Sample {
        *self.latest.lock().unwrap()
    }
}

/// One tunnel of an LCG process: to a cloud node, carrying one MAC.
struct CloudLink<'a> {
    /// The cloud node's static public key.
    public: [u8; 32],
    /// The LCG's UDP address for this tunnel.
    listen: &'a str,
    /// The cloud node's.
    peer: &'a str,
    /// The host behind that cloud, and its address (announced on takeover).
    mac: MacAddr,
    ip: &'a str,
}

/// Starts an LCG process in `ns` (HA member, LAN port `lan0`), with tunnel
/// `n` to `clouds[n]`, carrying that cloud's host.
fn spawn_lcg(ns: &str, key: &StaticKeypair, psk: &[u8; 32], clouds: &[CloudLink<'_>]) -> Result<Lcg> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["--exact", "ha_lcg_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the LCG process")?;
    // Secrets on stdin, never on the command line or in the environment.
    let mut stdin = child.stdin.take().context("stdin")?;
    writeln!(stdin, "{}\n{}\n{}", keys::encode(&key.private), keys::encode(psk), clouds.len())?;
    for c in clouds {
        writeln!(stdin, "{}\n{}\n{}\n{}\n{}", keys::encode(&c.public), c.listen, c.peer, c.mac, c.ip)?;
    }
    // Keep stdin open: the child exits when it closes (the test ended).
    std::mem::forget(stdin);
    let stdout = child.stdout.take().context("stdout")?;
    let latest = Arc::new(Mutex::new(Sample::default()));
    let ever_active = Arc::new(Mutex::new(false));
    let (l, e) = (latest.clone(), ever_active.clone());
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Some(rest) = line.strip_prefix("HASTATS ") else { continue };
            let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            if v.len() != 5 {
                continue;
            }
            let s = Sample {
                active: v[0] == 1,
                established: v[1] == 1,
                lan_tx: v[2],
                takeovers: v[3],
                held: v[4],
            };
            *l.lock().unwrap() = s;
            if s.active {
                *e.lock().unwrap() = true;
            }
        }
    });
    Ok(Lcg {
        child,
        latest,
        ever_active,
    })
}

/// The LCG process (run by [`spawn_lcg`]; a no-op in a normal test run).
#[test]
fn ha_lcg_child() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let mut lines = std::io::stdin().lock().lines();
    let mut next = || -> Result<String> { Ok(lines.next().context("config line")??) };
    let local = StaticKeypair::from_private(keys::decode(&next()?)?);
    let psk = keys::decode(&next()?)?;
    let n: usize = next()?.parse()?;
    let mut clouds = Vec::new();
    for _ in 0..n {
        let public = keys::decode(&next()?)?;
        let listen: std::net::SocketAddr = next()?.parse()?;
        let peer: std::net::SocketAddr = next()?.parse()?;
        let mac: MacAddr = next()?.parse()?;
        let ip: std::net::IpAddr = next()?.parse()?;
        clouds.push((public, listen, peer, mac, ip));
    }
    let (public, listen, peer, _, _) = *clouds.first().context("no cloud")?;
    let cfg = BridgeConfig {
        local,
        peer_public: public,
        psk,
        listen,
        role: Role::Initiator { peer },
        ports: vec![PortSpec::Lan { ifname: "lan0".into() }],
    };
    let h = Bridge::spawn_ha(cfg, Ha::Member)?;
    for (id, &(public, listen, peer, mac, ip)) in clouds.iter().enumerate() {
        let id = id as u32;
        if id > 0 {
            let spec = PeerSpec {
                peer_public: public,
                psk,
                listen,
                role: Role::Initiator { peer },
                vlans: PeerVlans::default(),
            };
            h.add_peer(id, spec)?;
        }
        h.carry_mac_via(mac, id, &[ip])?;
    }
    // Exit when the parent closes stdin (or dies).
    thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        std::process::exit(0);
    });
    let mut out = std::io::stdout().lock();
    loop {
        let s = h.stats();
        let held = s
            .peers
            .iter()
            .filter(|p| p.ha.is_some_and(|l| l.held))
            .fold(0u64, |m, p| m | 1 << p.id);
        writeln!(
            out,
            "HASTATS {} {} {} {} {held}",
            u8::from(s.ha_active),
            u8::from(s.established),
            s.lan_tx_frames,
            s.ha_takeovers
        )?;
        out.flush()?;
        thread::sleep(Duration::from_millis(50));
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A ping reply: its `-D` timestamp and whether ping flagged it `DUP!`.
type Reply = (f64, bool);

fn start_ping(ns: &str, dst: &str) -> Result<(Child, Arc<Mutex<Vec<Reply>>>)> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-D", "-i", "0.02", "-W", "1", dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ping")?;
    let stdout = child.stdout.take().context("ping stdout")?;
    let replies = Arc::new(Mutex::new(Vec::new()));
    let r = replies.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.contains("bytes from") {
                continue;
            }
            let ts = line
                .strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .and_then(|t| t.parse::<f64>().ok());
            if let Some(ts) = ts {
                r.lock().unwrap().push((ts, line.contains("DUP!")));
            }
        }
    });
    Ok((child, replies))
}

/// True in the test process proper (not an LCG child) when running as root.
fn runs_here(test: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() || !root_or_skip(test) {
        return false;
    }
    init_tracing("netbridge=info");
    true
}

/// The LAN: switch `s` (br0) joining host `a` (MAC A, 10.99.0.1) and the
/// `lan0` ports of LCGs `l1` and `l2`.
fn wire_lan(a: &str, s: &str, l1: &str, l2: &str) -> Result<()> {
    must(&["ip", "-n", s, "link", "add", "br0", "type", "bridge"])?;
    must(&["ip", "-n", s, "link", "set", "br0", "up"])?;
    veth(a, "eth0", s, "pa")?;
    veth(l1, "lan0", s, "p1")?;
    veth(l2, "lan0", s, "p2")?;
    for p in ["pa", "p1", "p2"] {
        must(&["ip", "-n", s, "link", "set", p, "master", "br0"])?;
    }
    must(&["ip", "-n", a, "link", "set", "eth0", "address", &MAC_A.to_string()])?;
    must(&["ip", "-n", a, "addr", "add", "10.99.0.1/24", "dev", "eth0"])?;
    Ok(())
}

#[test]
fn killing_the_active_lcg_fails_over_to_the_standby_without_both_forwarding() -> Result<()> {
    if !runs_here("netns_ha") {
        return Ok(());
    }
    let mut lab = Lab::new(format!("nh{}", std::process::id()));
    let [a, s, l1, l2, c, b] = lab.add_namespaces(["a", "s", "l1", "l2", "c", "b"])?;
    wire_lan(&a, &s, &l1, &l2)?;
    veth(&l1, "und0", &c, "und1")?;
    veth(&l2, "und0", &c, "und2")?;
    veth(&c, "gst0", &b, "eth0")?;
    must(&["ip", "-n", &b, "link", "set", "eth0", "address", &MAC_B.to_string()])?;
    must(&["ip", "-n", &b, "addr", "add", "10.99.0.2/24", "dev", "eth0"])?;
    must(&["ip", "-n", &l1, "addr", "add", "192.0.2.1/30", "dev", "und0"])?;
    must(&["ip", "-n", &c, "addr", "add", "192.0.2.2/30", "dev", "und1"])?;
    must(&["ip", "-n", &l2, "addr", "add", "192.0.2.5/30", "dev", "und0"])?;
    must(&["ip", "-n", &c, "addr", "add", "192.0.2.6/30", "dev", "und2"])?;

    // The cloud node: one bridge per LCG, one arbiter for the segment.
    let cloud_key = StaticKeypair::generate();
    let psk = StaticKeypair::generate().private;
    let (k1, k2) = (StaticKeypair::generate(), StaticKeypair::generate());
    let arbiter = Arbiter::shared(Instant::now());
    let mut cloud = Vec::new();
    for (key, listen) in [(&k1, "192.0.2.2:51820"), (&k2, "192.0.2.6:51820")] {
        let cfg = BridgeConfig {
            local: cloud_key.clone(),
            peer_public: key.public,
            psk,
            listen: listen.parse()?,
            role: Role::Responder,
            ports: vec![PortSpec::Guest { ifname: "gst0".into() }],
        };
        let h = spawn_in_ns_with(&c, cfg, Ha::Arbiter { arbiter: arbiter.clone() })?;
        lab.bridges.push(h.clone());
        cloud.push(h);
    }

    // LCG 1 first, so it is the one that gets the lease; then LCG 2.
    let link = |listen, peer| CloudLink {
        public: cloud_key.public,
        listen,
        peer,
        mac: MAC_B,
        ip: "10.99.0.2",
    };
    let lcg1 = spawn_lcg(&l1, &k1, &psk, &[link("192.0.2.1:51820", "192.0.2.2:51820")])?;
    wait_for("LCG 1 active", Duration::from_secs(15), || lcg1.sample().active)?;
    let lcg2 = spawn_lcg(&l2, &k2, &psk, &[link("192.0.2.5:51820", "192.0.2.6:51820")])?;
    wait_for("LCG 2 established (standby)", Duration::from_secs(15), || lcg2.sample().established)?;
    let pid1 = lcg1.child.id();
    let (ever1, ever2) = (lcg1.ever_active.clone(), lcg2.ever_active.clone());
    let (latest2, latest1) = (lcg2.latest.clone(), lcg1.latest.clone());
    lab.children.push(lcg1.child);
    lab.children.push(lcg2.child);

    let (ping, replies) = start_ping(&a, "10.99.0.2")?;
    lab.children.push(ping);
    wait_for("pings through LCG 1", Duration::from_secs(15), || {
        replies.lock().unwrap().len() >= 25
    })?;
    // Let the standby's counters catch up, then: it never forwarded.
    thread::sleep(Duration::from_millis(200));
    let s2 = *latest2.lock().unwrap();
    assert!(!*ever2.lock().unwrap(), "the standby was active while the active lived");
    assert_eq!(s2.lan_tx, 0, "the standby put frames on the LAN: {s2:?}");
    assert!(latest1.lock().unwrap().lan_tx > 0);
    assert!(*ever1.lock().unwrap());

    // SIGKILL the active LCG.
    let killed_at = unix_now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1 as i32), nix::sys::signal::Signal::SIGKILL)?;
    let resumed = || replies.lock().unwrap().iter().filter(|r| r.0 > killed_at).count();
    wait_for("pings through LCG 2", Duration::from_secs(10), || resumed() >= 25)?;
    let s2 = *latest2.lock().unwrap();
    assert!(s2.active && s2.takeovers == 1, "LCG 2 did not take over: {s2:?}");

    let replies = replies.lock().unwrap().clone();
    let dups = replies.iter().filter(|r| r.1).count();
    let first_after = replies.iter().map(|r| r.0).find(|&t| t > killed_at);
    let last_before = replies.iter().map(|r| r.0).filter(|&t| t <= killed_at).fold(0.0, f64::max);
    let Some(first_after) = first_after else {
        bail!("no reply after the kill")
    };
    let failover = first_after - killed_at;
    let gap = first_after - last_before;
    eprintln!(
        "HA failover: {failover:.3} s from SIGKILL to the first reply through the standby (reply gap {gap:.3} s); {} replies, {dups} duplicated",
        replies.len()
    );
    let c1 = cloud[0].stats();
    let c2 = cloud[1].stats();
    eprintln!("cloud bridge 1: {c1:#?}\ncloud bridge 2: {c2:#?}");
    assert_eq!(dups, 0, "duplicated replies: both LCGs forwarded");
    assert!(failover < 10.0, "failover took {failover:.1} s");
    // The cloud node fences the dead member's tunnel, and its epoch moved on.
    assert!(!c1.ha_active && c2.ha_active);
    assert_eq!(c2.ha_epoch, 2);
    assert!(c1.ha_standby_drops > 0, "cloud bridge 1 never refused a frame: {c1:?}");
    if let Some(path) = std::env::var_os("NETBRIDGE_HA_REPORT") {
        std::fs::write(
            &path,
            format!("{{\"failover_s\": {failover:.3}, \"gap_s\": {gap:.3}, \"duplicates\": {dups}}}\n"),
        )?;
    }
    Ok(())
}

const MAC_C: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x02, 0x0c]);

/// ICMP echoes of `kind` ("request"/"reply") in a tcpdump capture that were
/// seen more than once (same id and seq), and how many were seen.
fn duplicate_echoes(capture: &str, kind: &str) -> (usize, usize) {
    let mut seen = std::collections::HashMap::new();
    for line in capture.lines() {
        let Some(rest) = line.split(&format!("ICMP echo {kind}, ")).nth(1) else {
            continue;
        };
        // "id 1234, seq 5, length 64"
        let key: String = rest.split(", length").next().unwrap_or(rest).to_string();
        *seen.entry(key).or_insert(0u32) += 1;
    }
    (seen.values().filter(|&&n| n > 1).count(), seen.len())
}

#[test]
fn with_two_clouds_the_standby_takes_both_leases_when_the_active_lcg_is_killed() -> Result<()> {
    if !runs_here("netns_ha two clouds") {
        return Ok(());
    }
    let mut lab = Lab::new(format!("nk{}", std::process::id()));
    let [a, s, l1, l2, ca, cb, ba, bb, ba2] = lab.add_namespaces(["a", "s", "l1", "l2", "ca", "cb", "ba", "bb", "ba2"])?;
    wire_lan(&a, &s, &l1, &l2)?;
    // Underlay: one /30 per LCG and cloud.
    let underlay = [
        (&l1, "und0", &ca, "u1", "192.0.2.1", "192.0.2.2"),
        (&l1, "und1", &cb, "u1", "192.0.2.9", "192.0.2.10"),
        (&l2, "und0", &ca, "u2", "192.0.2.5", "192.0.2.6"),
        (&l2, "und1", &cb, "u2", "192.0.2.13", "192.0.2.14"),
    ];
    for (l, ld, c, cd, lip, cip) in underlay {
        veth(l, ld, c, cd)?;
        must(&["ip", "-n", l, "addr", "add", &format!("{lip}/30"), "dev", ld])?;
        must(&["ip", "-n", c, "addr", "add", &format!("{cip}/30"), "dev", cd])?;
    }
    for (c, b, mac, ip) in [(&ca, &ba, MAC_B, "10.99.0.2"), (&cb, &bb, MAC_C, "10.99.0.3")] {
        veth(c, "gst0", b, "eth0")?;
        must(&["ip", "-n", b, "link", "set", "eth0", "address", &mac.to_string()])?;
        must(&["ip", "-n", b, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    }
    // A second guest behind cloud A (never carried: it talks to its neighbour only).
    veth(&ca, "gst1", &ba2, "eth0")?;
    must(&["ip", "-n", &ba2, "addr", "add", "10.99.0.4/24", "dev", "eth0"])?;

    // Each cloud node: ONE bridge, both LCGs as its peers, its own arbiter.
    let psk = StaticKeypair::generate().private;
    let (k1, k2) = (StaticKeypair::generate(), StaticKeypair::generate());
    let (key_a, key_b) = (StaticKeypair::generate(), StaticKeypair::generate());
    let mut cloud = Vec::new();
    for (ns, key, l1_end, l2_end) in [
        (&ca, &key_a, "192.0.2.2:51820", "192.0.2.6:51820"),
        (&cb, &key_b, "192.0.2.10:51820", "192.0.2.14:51820"),
    ] {
        let cfg = BridgeConfig {
            local: key.clone(),
            peer_public: k1.public,
            psk,
            listen: l1_end.parse()?,
            role: Role::Responder,
            ports: vec![PortSpec::Guest { ifname: "gst0".into() }],
        };
        let h = spawn_in_ns_with(
            ns,
            cfg,
            Ha::Arbiter {
                arbiter: Arbiter::shared(Instant::now()),
            },
        )?;
        lab.bridges.push(h.clone());
        let spec = PeerSpec {
            peer_public: k2.public,
            psk,
            listen: l2_end.parse()?,
            role: Role::Responder,
            vlans: PeerVlans::default(),
        };
        // Opened by the bridge's worker, in the node's namespace.
        h.add_peer(1, spec)?;
        cloud.push(h);
    }
    cloud[0].add_port(PortSpec::Guest { ifname: "gst1".into() })?;

    let links = |l: [(&'static str, &'static str); 2]| {
        [
            CloudLink {
                public: key_a.public,
                listen: l[0].0,
                peer: l[0].1,
                mac: MAC_B,
                ip: "10.99.0.2",
            },
            CloudLink {
                public: key_b.public,
                listen: l[1].0,
                peer: l[1].1,
                mac: MAC_C,
                ip: "10.99.0.3",
            },
        ]
    };
    // LCG 1 first, so it gets both leases; then LCG 2.
    let lcg1 = spawn_lcg(
        &l1,
        &k1,
        &psk,
        &links([("192.0.2.1:51820", "192.0.2.2:51820"), ("192.0.2.9:51820", "192.0.2.10:51820")]),
    )?;
    wait_for("LCG 1 holding both clouds' leases", Duration::from_secs(20), || {
        lcg1.sample().held == 0b11
    })?;
    let lcg2 = spawn_lcg(
        &l2,
        &k2,
        &psk,
        &links([("192.0.2.5:51820", "192.0.2.6:51820"), ("192.0.2.13:51820", "192.0.2.14:51820")]),
    )?;
    wait_for("LCG 2 established with both clouds (standby)", Duration::from_secs(20), || {
        lcg2.sample().established
    })?;
    let (pid1, pid2) = (lcg1.child.id(), lcg2.child.id());
    let (ever2, latest2, latest1) = (lcg2.ever_active.clone(), lcg2.latest.clone(), lcg1.latest.clone());
    lab.children.push(lcg1.child);
    lab.children.push(lcg2.child);

    // Captures long enough for the whole exchange; read after the pings stop.
    let cap_secs = 40;
    let cap_ba = start_capture(&ba, "eth0", "icmp", cap_secs)?;
    let cap_bb = start_capture(&bb, "eth0", "icmp", cap_secs)?;
    let cap_a = start_capture(&a, "eth0", "icmp", cap_secs)?;
    let (ping_b, replies_b) = start_ping(&a, "10.99.0.2")?;
    let (ping_c, replies_c) = start_ping(&a, "10.99.0.3")?;
    let (ping_b_pid, ping_c_pid) = (ping_b.id(), ping_c.id());
    lab.children.push(ping_b);
    lab.children.push(ping_c);
    wait_for("pings to both clouds through LCG 1", Duration::from_secs(20), || {
        replies_b.lock().unwrap().len() >= 25 && replies_c.lock().unwrap().len() >= 25
    })?;
    thread::sleep(Duration::from_millis(200));
    let s2 = *latest2.lock().unwrap();
    assert!(!*ever2.lock().unwrap(), "the standby held a lease while the active lived");
    assert_eq!((s2.lan_tx, s2.held), (0, 0), "the standby forwarded: {s2:?}");
    assert_eq!(latest1.lock().unwrap().held, 0b11);

    let killed_at = unix_now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1 as i32), nix::sys::signal::Signal::SIGKILL)?;
    let after = |r: &Arc<Mutex<Vec<Reply>>>| r.lock().unwrap().iter().filter(|x| x.0 > killed_at).count();
    wait_for("pings to both clouds through LCG 2", Duration::from_secs(15), || {
        after(&replies_b) >= 25 && after(&replies_c) >= 25
    })?;
    let s2 = *latest2.lock().unwrap();
    assert_eq!(s2.held, 0b11, "LCG 2 does not hold both leases: {s2:?}");
    assert_eq!(s2.takeovers, 2, "one takeover per cloud: {s2:?}");
    // Stop the pings (by PID) and the captures, then count.
    for pid in [ping_b_pid, ping_c_pid] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT)?;
    }
    thread::sleep(Duration::from_millis(300));
    for cap in [&cap_ba, &cap_bb, &cap_a] {
        // `timeout` forwards the signal; tcpdump flushes and exits.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(cap.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
    }
    let (out_ba, out_bb, out_a) = (capture_output(cap_ba)?, capture_output(cap_bb)?, capture_output(cap_a)?);

    let mut failovers = Vec::new();
    for (name, replies) in [("cloud A", &replies_b), ("cloud B", &replies_c)] {
        let replies = replies.lock().unwrap().clone();
        let first_after = replies.iter().map(|r| r.0).find(|&t| t > killed_at);
        let Some(first_after) = first_after else {
            bail!("no reply from {name} after the kill")
        };
        let dups = replies.iter().filter(|r| r.1).count();
        eprintln!(
            "HA failover, {name}: {:.3} s from SIGKILL to the first reply through the standby; {} replies, {dups} flagged DUP! by ping",
            first_after - killed_at,
            replies.len()
        );
        assert_eq!(dups, 0, "{name}: duplicated replies");
        failovers.push(first_after - killed_at);
    }
    for (name, cap, kind) in [
        ("host behind cloud A", &out_ba, "request"),
        ("host behind cloud B", &out_bb, "request"),
        ("LAN host", &out_a, "reply"),
    ] {
        let (dups, seen) = duplicate_echoes(cap, kind);
        eprintln!("capture at the {name}: {seen} distinct echo {kind} frames, {dups} seen twice");
        assert!(seen >= 50, "capture at the {name} saw only {seen} echo {kind}s");
        assert_eq!(dups, 0, "capture at the {name}: {dups} echo {kind}s delivered twice");
    }
    for (name, f) in ["cloud A", "cloud B"].iter().zip(&failovers) {
        assert!(*f < 3.0, "{name}: failover took {f:.2} s (bound 3 s)");
    }
    // Each cloud node now believes LCG 2 (its peer 1) only, epoch 2.
    for (name, h) in ["cloud A", "cloud B"].iter().zip(&cloud) {
        let st = h.stats();
        let lease = |id: u32| st.peers.iter().find(|p| p.id == id).and_then(|p| p.ha);
        assert!(
            lease(0).is_some_and(|l| !l.held) && lease(1).is_some_and(|l| l.held),
            "{name}: {st:#?}"
        );
        assert_eq!(st.ha_epoch, 2, "{name}");
    }
    // With no LCG left, no lease is held anywhere; the cloud node still
    // switches between its own guests.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid2 as i32), nix::sys::signal::Signal::SIGKILL)?;
    wait_for("cloud A's lease to lapse", Duration::from_secs(10), || !cloud[0].stats().ha_active)?;
    let (ok, out) = common::in_ns(&ba, &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.4"])?;
    assert!(ok, "guests behind cloud A cannot reach each other without a lease holder:\n{out}");
    Ok(())
}
