//! One LCG, two clouds: a real appliance (`isthmus serve`) and two real
//! cloud nodes (`isthmus-node serve`), each in its own namespace, all joined
//! by an "internet" bridge. Each node joins a cloud-side host to the
//! segment (`--bridge-port`); the appliance's ONE bridge on its LAN port has
//! one tunnel per enrolled node and carries host A's MAC via cloud A and
//! host B's via cloud B (`isthmus lcg carry`).
//!
//! Checked as a person would: a LAN host pings both cloud hosts through the
//! one LCG (every reply, none twice); a capture on cloud B's segment port
//! sees no unicast frame of host A's MAC (only broadcasts reach every cloud)
//! while cloud A's sees them; `isthmus lcg status --json` lists both
//! tunnels established with what they carry; host B, known to the
//! inventory, is announced on the LAN (gratuitous ARP) the moment its MAC is
//! carried; after `isthmus lcg ha on` the LCG runs as an HA member, each
//! node's arbiter grants it that cloud's lease (status: held, epoch, not
//! standby) and both hosts still answer; after `isthmus lcg release` host A
//! is no longer reachable, and after `isthmus cloud remove` of cloud A only
//! B's tunnel is left, working.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use isthmus_lab::netns::{run, Namespaces};
use isthmus_lab::process::Proc;
use serde_json::Value;

const APPLIANCE_INET: &str = "198.51.100.1";
const LAN_HOST: &str = "10.77.0.100";

/// A cloud of the test: namespace tag, internet address, its host's IP and MAC.
struct Cloud {
    name: &'static str,
    inet: &'static str,
    host_ip: &'static str,
    host_mac: &'static str,
}

const CLOUDS: [Cloud; 2] = [
    Cloud {
        name: "clouda",
        inet: "198.51.100.2",
        host_ip: "10.77.0.21",
        host_mac: "02:00:5e:77:01:21",
    },
    Cloud {
        name: "cloudb",
        inet: "198.51.100.3",
        host_ip: "10.77.0.22",
        host_mac: "02:00:5e:77:01:22",
    },
];

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn token() -> Result<String> {
    let b = std::fs::read("/proc/sys/kernel/random/uuid")?;
    Ok(String::from_utf8_lossy(&b).trim().replace('-', ""))
}

/// The appliance's CLI against its data directory.
fn isthmus(data: &Path, args: &[&str]) -> Result<String> {
    let bin = isthmus_lab::bin("isthmus")?;
    let out = std::process::Command::new(bin).arg("--data-dir").arg(data).args(args).output()?;
    ensure!(
        out.status.success(),
        "isthmus {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ping -c n` from `ns`; (replies, duplicates).
fn ping(from: &str, ip: &str, n: u32) -> (u32, u32) {
    let count = n.to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", from, "ping", "-n", "-c", &count, "-i", "0.2", "-W", "2", ip])
        .output();
    let Ok(out) = out else { return (0, 0) };
    let text = String::from_utf8_lossy(&out.stdout);
    let replies = text.lines().filter(|l| l.contains("bytes from") && !l.contains("DUP!")).count() as u32;
    let dups = text.lines().filter(|l| l.contains("DUP!")).count() as u32;
    (replies, dups)
}

/// Frames in a capture file matching a tcpdump filter.
fn count_frames(pcap: &Path, filter: &str) -> Result<usize> {
    let p = pcap.to_str().context("utf-8 path")?;
    let out = run(&["sh", "-c", &format!("tcpdump -n -e -r {p} '{filter}' 2>/dev/null")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().count())
}

#[test]
fn one_lcg_carries_each_mac_only_to_its_cloud() -> Result<()> {
    isthmus_lab::scenario::preflight()?;
    let t0 = Instant::now();
    let work_dir = tempfile::tempdir()?;
    let work = work_dir.path();
    let mut ns = Namespaces::new("lcg");

    // Data center: LAN bridge, a LAN host, the appliance's LAN port (lanB,
    // AF_PACKET) whose peer is on the bridge; an internet bridge to the clouds.
    let dc = ns.add("dc")?;
    let cl = ns.add("cl")?;
    ns.ip(&dc, &["link", "add", "br0", "type", "bridge"])?;
    ns.ip(&dc, &["link", "set", "br0", "up"])?;
    ns.veth(&dc, "vcb", &cl, "vc")?;
    ns.ip(&dc, &["link", "set", "vcb", "master", "br0"])?;
    ns.ip(&cl, &["addr", "add", &format!("{LAN_HOST}/24"), "dev", "vc"])?;
    ns.veth(&dc, "lanA", &dc, "lanB")?;
    ns.ip(&dc, &["link", "set", "lanA", "master", "br0"])?;
    ns.ip(&dc, &["link", "add", "inet", "type", "bridge"])?;
    ns.ip(&dc, &["addr", "add", &format!("{APPLIANCE_INET}/24"), "dev", "inet"])?;
    ns.ip(&dc, &["link", "set", "inet", "up"])?;

    let mut nodes = Vec::new();
    let mut segs: Vec<(String, PathBuf)> = Vec::new();
    let mut captures = Vec::new();
    for (i, c) in CLOUDS.iter().enumerate() {
        let cns = ns.add(c.name)?;
        let host = ns.add(&format!("h{i}"))?;
        let up = format!("i{i}");
        ns.veth(&dc, &up, &cns, "inet1")?;
        ns.ip(&dc, &["link", "set", &up, "master", "inet"])?;
        ns.ip(&cns, &["addr", "add", &format!("{}/24", c.inet), "dev", "inet1"])?;
        // The cloud-side host, joined to the segment by the node.
        ns.veth(&cns, "seg", &host, "e0")?;
        ns.ip(&host, &["link", "set", "e0", "address", c.host_mac])?;
        ns.ip(&host, &["addr", "add", &format!("{}/24", c.host_ip), "dev", "e0"])?;
        // What crosses into this cloud's segment, from the first frame on.
        let pcap = work.join(format!("{}.pcap", c.name));
        let p = pcap.display().to_string();
        captures.push(Proc::spawn(
            "tcpdump",
            &cns,
            &["tcpdump", "-i", "seg", "-s", "128", "-U", "-w", &p],
            &[],
            &work.join(format!("tcpdump-{}.log", c.name)),
        )?);
        segs.push((cns.clone(), pcap));

        let tok = token()?;
        let node_token = work.join(format!("{}.node.token", c.name));
        write_private(&node_token, &tok)?;
        let app_token = work.join(format!("{}.token", c.name));
        write_private(&app_token, &tok)?;
        let bin = isthmus_lab::bin("isthmus-node")?;
        let state = work.join(format!("{}-state", c.name));
        let args = [
            bin.display().to_string(),
            "serve".into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--listen".into(),
            format!("{}:9443", c.inet),
            "--bridge-listen".into(),
            format!("{}:51821", c.inet),
            "--token-file".into(),
            node_token.display().to_string(),
            "--bridge-port".into(),
            "seg".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Proc::spawn(c.name, &cns, &argv, &[], &work.join(format!("{}.log", c.name)))?;
        let line = p.wait_log("bootstrap fingerprint:", Duration::from_secs(120))?;
        let fp = line.split("bootstrap fingerprint:").nth(1).unwrap_or_default().trim().to_string();
        nodes.push((p, fp, app_token));
    }

    let data = work.join("appliance");
    let bin = isthmus_lab::bin("isthmus")?;
    let args = isthmus_lab::scenario::appliance_serve_args(&bin, &data);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut appliance = Proc::spawn("appliance", &dc, &argv, &[], &work.join("appliance.log"))?;
    appliance.wait_log("ready: local API", Duration::from_secs(120))?;

    // Host B is an inventory server (never started here): carrying its MAC
    // announces its IP on the LAN. The LAN host's capture sees it.
    let desc = isthmus_lab::scenario::write_carried_host(work, "hostb", CLOUDS[1].host_ip, CLOUDS[1].host_mac)?;
    isthmus(&data, &["inventory", "add", &desc.display().to_string()])?;
    let lan_pcap = work.join("lan.pcap");
    captures.push(Proc::spawn(
        "tcpdump",
        &cl,
        &[
            "tcpdump",
            "-i",
            "vc",
            "-s",
            "128",
            "-U",
            "-w",
            &lan_pcap.display().to_string(),
            "arp",
        ],
        &[],
        &work.join("tcpdump-lan.log"),
    )?);
    std::thread::sleep(Duration::from_millis(500));

    for (c, (_, fp, tok)) in CLOUDS.iter().zip(&nodes) {
        let url = format!("https://{}:9443", c.inet);
        isthmus(
            &data,
            &[
                "cloud",
                "enroll",
                c.name,
                "--url",
                &url,
                "--fingerprint",
                fp,
                "--token-file",
                &tok.display().to_string(),
            ],
        )?;
        isthmus(&data, &["lcg", "carry", c.name, c.host_mac])?;
    }

    // Both cloud hosts answer the LAN host through the one LCG.
    for c in &CLOUDS {
        let until = Instant::now() + Duration::from_secs(60);
        while ping(&cl, c.host_ip, 1).0 == 0 {
            if Instant::now() > until {
                bail!(
                    "{} ({}) never answered the LAN host; appliance log:\n{}",
                    c.host_ip,
                    c.name,
                    isthmus_lab::process::tail(&appliance.log_text())
                );
            }
        }
        let (replies, dups) = ping(&cl, c.host_ip, 10);
        ensure!(replies == 10 && dups == 0, "{}: {replies}/10 replies, {dups} duplicates", c.host_ip);
    }

    let status: Value = serde_json::from_str(&isthmus(&data, &["lcg", "status", "--json"])?)?;
    eprintln!("{}", serde_json::to_string_pretty(&status)?);
    let tunnels = status["tunnels"].as_array().context("tunnels")?;
    ensure!(tunnels.len() == 2, "one bridge, one tunnel per cloud: {status}");
    for c in &CLOUDS {
        let t = tunnels.iter().find(|t| t["cloud"] == c.name).context("tunnel of each cloud")?;
        ensure!(t["established"] == true, "{}: {t}", c.name);
        ensure!(t["carried"] == serde_json::json!([c.host_mac]), "{}: {t}", c.name);
        ensure!(t["rx_frames"].as_u64().unwrap_or(0) >= 10, "{}: {t}", c.name);
        ensure!(t["lease"].is_null(), "no HA yet: {t}");
    }

    // HA in the product: the LCG becomes an HA member (its bridge restarts);
    // each node's arbiter grants it that cloud's lease.
    isthmus(&data, &["lcg", "ha", "on"])?;
    let until = Instant::now() + Duration::from_secs(60);
    let ha = loop {
        let s: Value = serde_json::from_str(&isthmus(&data, &["lcg", "status", "--json"])?)?;
        let held = |t: &Value| t["lease"]["held"] == true;
        if s["tunnels"].as_array().is_some_and(|t| t.len() == 2 && t.iter().all(held)) {
            break s;
        }
        ensure!(Instant::now() < until, "the HA LCG never held both clouds' leases: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{}", serde_json::to_string_pretty(&ha)?);
    ensure!(ha["ha"] == true && ha["standby"] == false, "{ha}");
    for t in ha["tunnels"].as_array().context("tunnels")? {
        ensure!(
            t["lease"]["epoch"].as_u64().unwrap_or(0) >= 1 && t["lease"]["standby"] == false,
            "{t}"
        );
    }
    for c in &CLOUDS {
        let until = Instant::now() + Duration::from_secs(30);
        while ping(&cl, c.host_ip, 1).0 == 0 {
            ensure!(Instant::now() < until, "{} stopped answering with HA on", c.host_ip);
        }
        let (replies, dups) = ping(&cl, c.host_ip, 5);
        ensure!(
            replies == 5 && dups == 0,
            "HA on, {}: {replies}/5 replies, {dups} duplicates",
            c.host_ip
        );
    }

    // Rollback of a carried MAC: host A is no longer reachable.
    isthmus(&data, &["lcg", "release", CLOUDS[0].name, CLOUDS[0].host_mac])?;
    let (replies, _) = ping(&cl, CLOUDS[0].host_ip, 3);
    ensure!(replies == 0, "host A still answers after release ({replies} replies)");
    ensure!(ping(&cl, CLOUDS[1].host_ip, 2).0 == 2, "host B stopped answering");

    // Cloud A (the bridge's first peer) is removed: its tunnel closes, B's stays.
    isthmus(&data, &["cloud", "remove", CLOUDS[0].name])?;
    let after: Value = serde_json::from_str(&isthmus(&data, &["lcg", "status", "--json"])?)?;
    let names: Vec<&str> = after["tunnels"]
        .as_array()
        .context("tunnels")?
        .iter()
        .filter_map(|t| t["cloud"].as_str())
        .collect();
    ensure!(names == [CLOUDS[1].name], "tunnels after removing {}: {after}", CLOUDS[0].name);
    ensure!(
        ping(&cl, CLOUDS[1].host_ip, 2).0 == 2,
        "host B stopped answering after cloud A left"
    );

    drop(captures);
    let unicast_a = format!("ether host {} and not ether multicast", CLOUDS[0].host_mac);
    let unicast_b = format!("ether host {} and not ether multicast", CLOUDS[1].host_mac);
    let a_on_a = count_frames(&segs[0].1, &unicast_a)?;
    let a_on_b = count_frames(&segs[1].1, &unicast_a)?;
    let b_on_b = count_frames(&segs[1].1, &unicast_b)?;
    let b_on_a = count_frames(&segs[0].1, &unicast_b)?;
    eprintln!("unicast frames of host A: {a_on_a} in cloud A, {a_on_b} in cloud B; of host B: {b_on_b} in B, {b_on_a} in A");
    ensure!(a_on_a >= 22, "cloud A saw only {a_on_a} unicast frames of host A");
    ensure!(b_on_b >= 22, "cloud B saw only {b_on_b} unicast frames of host B");
    ensure!(a_on_b == 0, "{a_on_b} unicast frames of host A leaked into cloud B");
    ensure!(b_on_a == 0, "{b_on_a} unicast frames of host B leaked into cloud A");
    // ARP with sender IP = target IP: the announcement of host B at carry.
    let garp = format!("arp and ether src {} and arp[14:4] = arp[24:4]", CLOUDS[1].host_mac);
    let announced = count_frames(&lan_pcap, &garp)?;
    ensure!(announced >= 1, "no gratuitous ARP for host B reached the LAN host");
    ensure!(status["gratuitous_sent"].as_u64().unwrap_or(0) >= 1, "{status}");
    // Broadcast (the LAN host's ARP) reaches both.
    ensure!(
        count_frames(&segs[1].1, "arp and ether broadcast")? > 0,
        "no broadcast reached cloud B"
    );

    appliance.stop();
    for (mut p, _, _) in nodes {
        p.stop();
    }
    eprintln!("lcg_many_clouds took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
