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

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use anyhow::{bail, Context, Result};
use common::{init_tracing, must, root_or_skip, spawn_in_ns_with, veth, wait_for, Lab};
use netbridge::ha::Arbiter;
use netbridge::keys::{self, StaticKeypair};
use netbridge::{Bridge, BridgeConfig, Ha, PortSpec, Role};
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

/// Starts an LCG process in `ns` (HA member, LAN port `lan0`, carrying B).
fn spawn_lcg(ns: &str, key: &StaticKeypair, cloud_public: &[u8; 32], psk: &[u8; 32], listen: &str, peer: &str) -> Result<Lcg> {
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
    writeln!(
        stdin,
        "{}\n{}\n{}\n{listen}\n{peer}",
        keys::encode(&key.private),
        keys::encode(cloud_public),
        keys::encode(psk)
    )?;
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
            if v.len() != 4 {
                continue;
            }
            let s = Sample {
                active: v[0] == 1,
                established: v[1] == 1,
                lan_tx: v[2],
                takeovers: v[3],
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
    let cfg = BridgeConfig {
        local: StaticKeypair::from_private(keys::decode(&next()?)?),
        peer_public: keys::decode(&next()?)?,
        psk: keys::decode(&next()?)?,
        listen: next()?.parse()?,
        role: Role::Initiator { peer: next()?.parse()? },
        ports: vec![PortSpec::Lan { ifname: "lan0".into() }],
    };
    let h = Bridge::spawn_ha(cfg, Ha::Member)?;
    h.carry_mac_with_ips(MAC_B, &["10.99.0.2".parse()?]);
    // Exit when the parent closes stdin (or dies).
    thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        std::process::exit(0);
    });
    let mut out = std::io::stdout().lock();
    loop {
        let s = h.stats();
        writeln!(
            out,
            "HASTATS {} {} {} {}",
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

#[test]
fn killing_the_active_lcg_fails_over_to_the_standby_without_both_forwarding() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    if !root_or_skip("netns_ha") {
        return Ok(());
    }
    init_tracing("netbridge=info");
    let mut lab = Lab::new(format!("nh{}", std::process::id()));
    let [a, s, l1, l2, c, b] = lab.add_namespaces(["a", "s", "l1", "l2", "c", "b"])?;
    must(&["ip", "-n", &s, "link", "add", "br0", "type", "bridge"])?;
    must(&["ip", "-n", &s, "link", "set", "br0", "up"])?;
    veth(&a, "eth0", &s, "pa")?;
    veth(&l1, "lan0", &s, "p1")?;
    veth(&l2, "lan0", &s, "p2")?;
    for p in ["pa", "p1", "p2"] {
        must(&["ip", "-n", &s, "link", "set", p, "master", "br0"])?;
    }
    veth(&l1, "und0", &c, "und1")?;
    veth(&l2, "und0", &c, "und2")?;
    veth(&c, "gst0", &b, "eth0")?;
    must(&["ip", "-n", &a, "link", "set", "eth0", "address", &MAC_A.to_string()])?;
    must(&["ip", "-n", &b, "link", "set", "eth0", "address", &MAC_B.to_string()])?;
    must(&["ip", "-n", &a, "addr", "add", "10.99.0.1/24", "dev", "eth0"])?;
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
    for (member, key, listen) in [(1, &k1, "192.0.2.2:51820"), (2, &k2, "192.0.2.6:51820")] {
        let cfg = BridgeConfig {
            local: cloud_key.clone(),
            peer_public: key.public,
            psk,
            listen: listen.parse()?,
            role: Role::Responder,
            ports: vec![PortSpec::Guest { ifname: "gst0".into() }],
        };
        let h = spawn_in_ns_with(
            &c,
            cfg,
            Ha::Arbiter {
                arbiter: arbiter.clone(),
                member,
            },
        )?;
        lab.bridges.push(h.clone());
        cloud.push(h);
    }

    // LCG 1 first, so it is the one that gets the lease; then LCG 2.
    let lcg1 = spawn_lcg(&l1, &k1, &cloud_key.public, &psk, "192.0.2.1:51820", "192.0.2.2:51820")?;
    wait_for("LCG 1 active", Duration::from_secs(15), || lcg1.sample().active)?;
    let lcg2 = spawn_lcg(&l2, &k2, &cloud_key.public, &psk, "192.0.2.5:51820", "192.0.2.6:51820")?;
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
