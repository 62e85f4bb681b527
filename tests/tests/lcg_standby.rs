//! Two appliances as an HA pair of LCGs (issue 4 §6 in the product): a
//! primary and a standby `isthmus serve` (separate data directories and
//! namespaces) with their LAN ports on ONE LAN segment, one cloud node
//! (`isthmus-node serve`) whose cloud-side host (`--bridge-port`) is carried
//! by the LCG, all joined by an "internet" bridge.
//!
//! Checked as an admin would: the standby prints its peer fingerprint; a
//! pairing with a wrong token is refused; the peer API and the node's new
//! route refuse clients without a certificate (TLS failure) and the primary's
//! state route refuses an unpaired certificate (401); after
//! `isthmus lcg standby add` (token on stdin) the standby pulls the cloud,
//! opens its own tunnel to the node and stands by (`lcg status`: role
//! standby, lease not held) while the primary holds the lease and a LAN
//! client pings the cloud host through it; `kill -9` of the primary → the
//! client's pings resume through the standby in < 3 s (from ping's own
//! timestamps) with no reply delivered twice, and the standby's status shows
//! the lease held; after a restart of the node (which reads its member list
//! back) the host answers through the standby again.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use isthmus_lab::netns::Namespaces;
use isthmus_lab::process::Proc;
use serde_json::Value;

const PRIMARY_INET: &str = "198.51.100.1";
const STANDBY_INET: &str = "198.51.100.5";
const CLOUD_INET: &str = "198.51.100.2";
const LAN_CLIENT: &str = "10.77.0.100";
const HOST_IP: &str = "10.77.0.21";
const HOST_MAC: &str = "02:00:5e:77:01:21";

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

/// The appliance's CLI against a data directory, with `stdin` fed in;
/// (success, stdout + stderr).
fn isthmus_in(data: &Path, args: &[&str], stdin: &str) -> Result<(bool, String)> {
    let bin = isthmus_lab::bin("isthmus")?;
    let mut child = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn isthmus(data: &Path, args: &[&str]) -> Result<String> {
    let (ok, text) = isthmus_in(data, args, "")?;
    ensure!(ok, "isthmus {args:?} failed: {text}");
    Ok(text)
}

fn lcg_status(data: &Path) -> Result<Value> {
    Ok(serde_json::from_str(&isthmus(data, &["lcg", "status", "--json"])?)?)
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

/// curl from `ns` with extra arguments; (exit code, HTTP status if any).
fn curl(ns: &str, extra: &[&str], url: &str) -> Result<(i32, String)> {
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-sk",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = std::process::Command::new(args[0]).args(&args[1..]).output()?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Waits until `f` holds on the LCG status of `data`.
fn wait_status(data: &Path, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Result<Value> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = lcg_status(data)?;
        if f(&s) {
            return Ok(s);
        }
        ensure!(Instant::now() < until, "{what} within {secs} s: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lease(s: &Value) -> &Value {
    &s["tunnels"][0]["lease"]
}

#[test]
fn killing_the_primary_lcg_fails_over_to_the_standby_appliance() -> Result<()> {
    isthmus_lab::scenario::preflight()?;
    let t0 = Instant::now();
    let work_dir = tempfile::tempdir()?;
    let work = work_dir.path();
    let mut ns = Namespaces::new("sby");

    // Data center: LAN bridge br0 with the LAN client and the primary's LAN
    // port (lanB here); the standby in its own namespace, its LAN port (lanB
    // there) on br0 too; an internet bridge to the cloud and between the two.
    let dc = ns.add("dc")?;
    let sb = ns.add("sb")?;
    let cl = ns.add("cl")?;
    let cns = ns.add("cloud")?;
    let host = ns.add("h")?;
    ns.ip(&dc, &["link", "add", "br0", "type", "bridge"])?;
    ns.ip(&dc, &["link", "set", "br0", "up"])?;
    ns.veth(&dc, "vcb", &cl, "vc")?;
    ns.ip(&dc, &["link", "set", "vcb", "master", "br0"])?;
    ns.ip(&cl, &["addr", "add", &format!("{LAN_CLIENT}/24"), "dev", "vc"])?;
    ns.veth(&dc, "lanA", &dc, "lanB")?;
    ns.ip(&dc, &["link", "set", "lanA", "master", "br0"])?;
    ns.veth(&dc, "lanS", &sb, "lanB")?;
    ns.ip(&dc, &["link", "set", "lanS", "master", "br0"])?;
    ns.ip(&dc, &["link", "add", "inet", "type", "bridge"])?;
    ns.ip(&dc, &["addr", "add", &format!("{PRIMARY_INET}/24"), "dev", "inet"])?;
    ns.ip(&dc, &["link", "set", "inet", "up"])?;
    ns.veth(&dc, "isb", &sb, "inet1")?;
    ns.ip(&dc, &["link", "set", "isb", "master", "inet"])?;
    ns.ip(&sb, &["addr", "add", &format!("{STANDBY_INET}/24"), "dev", "inet1"])?;
    ns.veth(&dc, "icl", &cns, "inet1")?;
    ns.ip(&dc, &["link", "set", "icl", "master", "inet"])?;
    ns.ip(&cns, &["addr", "add", &format!("{CLOUD_INET}/24"), "dev", "inet1"])?;
    ns.veth(&cns, "seg", &host, "e0")?;
    ns.ip(&host, &["link", "set", "e0", "address", HOST_MAC])?;
    ns.ip(&host, &["addr", "add", &format!("{HOST_IP}/24"), "dev", "e0"])?;

    // The cloud node.
    let tok = token()?;
    let node_token = work.join("node.token");
    write_private(&node_token, &tok)?;
    let app_token = work.join("app.token");
    write_private(&app_token, &tok)?;
    let node_bin = isthmus_lab::bin("isthmus-node")?.display().to_string();
    let node_state = work.join("node-state").display().to_string();
    let (listen, blisten) = (format!("{CLOUD_INET}:9443"), format!("{CLOUD_INET}:51821"));
    let nt = node_token.display().to_string();
    let argv = [
        node_bin.as_str(),
        "serve",
        "--state-dir",
        &node_state,
        "--listen",
        &listen,
        "--bridge-listen",
        &blisten,
        "--token-file",
        &nt,
        "--bridge-port",
        "seg",
    ];
    let mut node = Proc::spawn("node", &cns, &argv, &[], &work.join("node.log"))?;
    let line = node.wait_log("bootstrap fingerprint:", Duration::from_secs(120))?;
    let node_fp = line.split("bootstrap fingerprint:").nth(1).unwrap_or_default().trim().to_string();

    // The primary appliance, with its peer API.
    let primary = work.join("primary");
    let bin = isthmus_lab::bin("isthmus")?;
    let mut args = isthmus_lab::scenario::appliance_serve_args(&bin, &primary);
    args.extend(["--peer-listen".to_string(), format!("{PRIMARY_INET}:9444")]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut app_a = Proc::spawn("primary", &dc, &argv, &[], &work.join("primary.log"))?;

    // The standby appliance, waiting to be paired.
    let standby = work.join("standby");
    let sb_token = token()?;
    let sb_token_file = work.join("standby.token");
    write_private(&sb_token_file, &sb_token)?;
    let args = [
        bin.display().to_string(),
        "--data-dir".into(),
        standby.display().to_string(),
        "serve".into(),
        "--lan".into(),
        "lanB".into(),
        "--console-listen".into(),
        format!("{STANDBY_INET}:8443"),
        "--bridge-listen".into(),
        format!("{STANDBY_INET}:51820"),
        "--peer-listen".into(),
        format!("{STANDBY_INET}:9444"),
        "--standby-token-file".into(),
        sb_token_file.display().to_string(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut app_b = Proc::spawn("standby", &sb, &argv, &[], &work.join("standby.log"))?;
    app_a.wait_log("ready: local API", Duration::from_secs(120))?;
    let line = app_b.wait_log("peer fingerprint:", Duration::from_secs(120))?;
    let sb_fp = line.split("peer fingerprint:").nth(1).unwrap_or_default().trim().to_string();
    app_b.wait_log("ready: local API", Duration::from_secs(120))?;

    // The host is an inventory server of the primary: its IP is announced
    // on the LAN when an LCG starts to carry its MAC (and on a takeover).
    let desc = isthmus_lab::scenario::write_carried_host(work, "host", HOST_IP, HOST_MAC)?;
    isthmus(&primary, &["inventory", "add", &desc.display().to_string()])?;
    let url = format!("https://{CLOUD_INET}:9443");
    let at = app_token.display().to_string();
    isthmus(
        &primary,
        &[
            "cloud",
            "enroll",
            "cloud1",
            "--url",
            &url,
            "--fingerprint",
            &node_fp,
            "--token-file",
            &at,
        ],
    )?;
    isthmus(&primary, &["lcg", "carry", "cloud1", HOST_MAC])?;
    let until = Instant::now() + Duration::from_secs(60);
    while ping(&cl, HOST_IP, 1).0 == 0 {
        if Instant::now() > until {
            bail!(
                "the host never answered through the primary; log:\n{}",
                isthmus_lab::process::tail(&app_a.log_text())
            );
        }
    }

    // Without a client certificate: TLS refused (curl exits non-zero, no
    // HTTP status), on both peer APIs and on the node's new route.
    for (ns_, u) in [
        (&dc, format!("https://{STANDBY_INET}:9444/v1/peer/pair")),
        (&sb, format!("https://{PRIMARY_INET}:9444/v1/peer/state")),
        (&dc, format!("https://{CLOUD_INET}:9443/v1/bridge/lcgs")),
    ] {
        let (code, http) = curl(ns_, &[], &u)?;
        ensure!(
            code != 0 && http.trim_start_matches('0').is_empty(),
            "{u} without a certificate: curl {code}, HTTP {http}"
        );
    }
    // A certificate the primary has not paired: 401.
    let (cert, key) = (standby.join("pki/peer.pem"), standby.join("pki/peer.key"));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let (_, http) = curl(
        &sb,
        &["--cert", &c, "--key", &k],
        &format!("https://{PRIMARY_INET}:9444/v1/peer/state"),
    )?;
    ensure!(http == "401", "unpaired certificate on the primary's state route: HTTP {http}");

    // A wrong token is refused, and the standby still waits.
    let add = |tok: &str| {
        isthmus_in(
            &primary,
            &[
                "lcg",
                "standby",
                "add",
                "lcgb",
                "--address",
                &format!("{STANDBY_INET}:9444"),
                "--fingerprint",
                &sb_fp,
            ],
            tok,
        )
    };
    let (ok, text) = add("not-the-token-0123456789")?;
    ensure!(!ok && text.contains("does not match"), "pairing with a wrong token: {text}");
    ensure!(sb_token_file.exists(), "the token file went after a failed pairing");

    // Pairing, token on stdin.
    let (ok, text) = add(&sb_token)?;
    ensure!(
        ok,
        "pairing failed: {text}\nstandby log:\n{}",
        isthmus_lab::process::tail(&app_b.log_text())
    );
    eprintln!("{text}");
    ensure!(!sb_token_file.exists(), "the standby kept its used token file");
    let list: Value = serde_json::from_str(&isthmus(&primary, &["lcg", "standby", "list", "--json"])?)?;
    ensure!(list[0]["name"] == "lcgb" && list[0]["fingerprint"] == sb_fp.as_str(), "{list}");

    // The standby pulls the cloud, opens its tunnel and stands by; the
    // primary holds the lease.
    let until = Instant::now() + Duration::from_secs(60);
    let (s_a, s_b) = loop {
        let (a, b) = (lcg_status(&primary)?, lcg_status(&standby)?);
        let standing_by = b["pair"]["role"] == "standby" && b["tunnels"][0]["established"] == true && lease(&b)["held"] == false;
        if standing_by && a["pair"]["role"] == "primary" && lease(&a)["held"] == true {
            break (a, b);
        }
        ensure!(
            Instant::now() < until,
            "no primary holding the lease with the standby standing by:\nprimary {a}\nstandby {b}\nnode log:\n{}\nprimary log:\n{}\nstandby log:\n{}",
            isthmus_lab::process::tail(&node.log_text()),
            isthmus_lab::process::tail(&app_a.log_text()),
            isthmus_lab::process::tail(&app_b.log_text())
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("primary: {s_a}\nstandby: {s_b}");
    ensure!(s_b["tunnels"][0]["carried"] == serde_json::json!([HOST_MAC]), "{s_b}");
    ensure!(s_b["standby"] == true, "{s_b}");
    let (replies, dups) = ping(&cl, HOST_IP, 5);
    ensure!(replies == 5 && dups == 0, "paired: {replies}/5 replies, {dups} duplicates");

    // kill -9 the primary while the client pings every 100 ms.
    let log = work.join("ping.log");
    let ping_out = std::fs::File::create(&log)?;
    let mut pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &cl, "ping", "-D", "-n", "-i", "0.1", "-W", "1", "-c", "100", HOST_IP,
        ])
        .stdout(ping_out)
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    app_a.crash();
    pinger.wait()?;
    let text = std::fs::read_to_string(&log)?;
    let stamp = |l: &str| -> Option<f64> { l.strip_prefix('[')?.split(']').next()?.parse().ok() };
    let replies: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from") && !l.contains("DUP!"))
        .filter_map(stamp)
        .collect();
    let dups = text.lines().filter(|l| l.contains("DUP!")).count();
    let before = replies.iter().filter(|t| **t < killed_at).count();
    let first_after = replies.iter().copied().find(|t| *t > killed_at);
    let after = replies.iter().filter(|t| **t > killed_at).count();
    let Some(first_after) = first_after else {
        bail!(
            "no reply after the primary died; standby log:\n{}\nping:\n{text}",
            isthmus_lab::process::tail(&app_b.log_text())
        );
    };
    let outage = first_after - killed_at;
    eprintln!(
        "failover: pings resumed {outage:.2} s after kill -9 of the primary ({before} replies before, {after} after, {dups} duplicates)"
    );
    ensure!(before >= 10, "only {before} replies before the kill:\n{text}");
    ensure!(outage < 3.0, "pings resumed only {outage:.2} s after the kill:\n{text}");
    ensure!(dups == 0, "{dups} replies delivered twice:\n{text}");
    ensure!(after >= 40, "only {after} replies after the failover:\n{text}");

    let s_b = wait_status(&standby, "the standby holding the lease", 10, |s| lease(s)["held"] == true)?;
    eprintln!("standby after failover: {s_b}");
    ensure!(
        s_b["standby"] == false && lease(&s_b)["takeovers"].as_u64().unwrap_or(0) >= 1,
        "{s_b}"
    );

    // The node restarts: it reads its member list back from its state
    // directory, the standby's tunnel comes back and carries again.
    node.stop();
    let argv = [
        node_bin.as_str(),
        "serve",
        "--state-dir",
        &node_state,
        "--listen",
        &listen,
        "--bridge-listen",
        &blisten,
        "--bridge-port",
        "seg",
    ];
    let mut node = Proc::spawn("node", &cns, &argv, &[], &work.join("node-again.log"))?;
    let until = Instant::now() + Duration::from_secs(60);
    while ping(&cl, HOST_IP, 1).0 == 0 {
        ensure!(
            Instant::now() < until,
            "the host never answered through the standby after the node restarted; node log:\n{}",
            isthmus_lab::process::tail(&node.log_text())
        );
    }
    let (replies, dups) = ping(&cl, HOST_IP, 5);
    ensure!(
        replies == 5 && dups == 0,
        "after the node restart: {replies}/5 replies, {dups} duplicates"
    );

    app_b.stop();
    node.stop();
    eprintln!("lcg_standby took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
