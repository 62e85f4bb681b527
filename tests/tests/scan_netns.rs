//! `isthmus scan` against namespaces the test makes: a scanner namespace
//! with a Linux bridge, veths to four host namespaces with known IPs and
//! MACs, one listening TCP port, and one IP claimed by two MACs. The
//! inventory knows one of the hosts (a libvirt descriptor imported with
//! `--record`); the scan must name it, flag the others unknown, find the
//! open port and the conflict, and record what it saw in the topology store.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use isthmus_lab::netns::Namespaces;
use isthmus_lab::process::Proc;
use serde_json::Value;

const NET: &str = "10.77.0";
/// (namespace, last octet of the IP, MAC).
const HOSTS: [(&str, u8, &str); 4] = [
    ("h1", 11, "02:00:5e:77:00:11"),
    ("h2", 12, "02:00:5e:77:00:12"),
    ("h3", 13, "02:00:5e:77:00:13"),
    ("h4", 13, "02:00:5e:77:00:14"),
];

const DB1_XML: &str = "<domain type='kvm'><name>db1</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<interface type='network'><mac address='02:00:5e:77:00:12'/><source network='lan'/><model type='virtio'/></interface>
</devices></domain>";

fn isthmus(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new(isthmus_lab::bin("isthmus")?).args(args).output()?;
    ensure!(
        out.status.success(),
        "isthmus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

#[test]
fn scan_finds_hosts_port_and_conflict() -> Result<()> {
    let t0 = Instant::now();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().context("utf-8 path")?;
    let xml = dir.path().join("db1.xml");
    std::fs::write(&xml, DB1_XML)?;
    isthmus(&["--data-dir", data, "import", xml.to_str().context("utf-8")?, "--record"])?;

    let mut ns = Namespaces::new("scan");
    let s = ns.add("s")?;
    ns.ip(&s, &["link", "add", "br0", "type", "bridge"])?;
    ns.ip(&s, &["link", "set", "br0", "up"])?;
    ns.ip(&s, &["addr", "add", &format!("{NET}.1/24"), "dev", "br0"])?;
    for (i, (name, octet, mac)) in HOSTS.iter().enumerate() {
        let h = ns.add(name)?;
        let port = format!("v{i}");
        ns.veth(&s, &port, &h, "e0")?;
        ns.ip(&s, &["link", "set", &port, "master", "br0"])?;
        ns.ip(&h, &["link", "set", "e0", "address", mac])?;
        ns.ip(&h, &["addr", "add", &format!("{NET}.{octet}/24"), "dev", "e0"])?;
    }
    let h1 = format!("{}-h1", ns.prefix);
    let log = dir.path().join("socat.log");
    let _listener = Proc::spawn("socat", &h1, &["socat", "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:true"], &[], &log)?;
    let until = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&ns.exec(&h1, &["ss", "-ltn"])?.stdout).contains(":8080") {
        ensure!(Instant::now() < until, "socat did not listen on 8080");
        std::thread::sleep(Duration::from_millis(50));
    }

    let bin = isthmus_lab::bin("isthmus")?;
    let bin = bin.to_str().context("utf-8 path")?;
    let out = ns.exec(
        &s,
        &[
            bin,
            "--data-dir",
            data,
            "scan",
            "--iface",
            "br0",
            "--json",
            "--rate",
            "500",
            "--ports",
            "22,8080",
            "--record",
        ],
    )?;
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| String::from_utf8_lossy(&out.stdout).to_string())?;
    eprintln!("{}", serde_json::to_string_pretty(&r)?);
    assert_eq!(r["complete"], true);
    assert_eq!(r["sent"]["arp"], 253, "a /24 less network, broadcast and our own address");
    let hosts = r["hosts"].as_array().context("hosts")?;
    let found: Vec<(String, String)> = hosts
        .iter()
        .map(|h| {
            (
                h["ip"].as_str().unwrap_or("").to_string(),
                h["mac"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = HOSTS.iter().map(|(_, o, m)| (format!("{NET}.{o}"), m.to_string())).collect();
    assert_eq!(found, want, "every (IP, MAC) exactly once");
    for h in hosts {
        let ip = h["ip"].as_str().unwrap_or("");
        assert_eq!(h["icmp"], true, "{ip} answers ping");
        let ports: Vec<u64> = h["open_ports"]
            .as_array()
            .context("ports")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(ports, if ip == "10.77.0.11" { vec![8080] } else { vec![] }, "{ip}");
        let db1 = h["mac"] == "02:00:5e:77:00:12";
        assert_eq!(h["server"], if db1 { Value::from("db1") } else { Value::Null });
        assert_eq!(h["unknown"], !db1);
        assert_eq!(h["conflict"], ip == "10.77.0.13", "{ip}");
    }
    assert_eq!(
        r["conflicts"],
        serde_json::json!([{"kind": "ip_conflict", "ip": "10.77.0.13", "macs": ["02:00:5e:77:00:13", "02:00:5e:77:00:14"]}])
    );
    assert_eq!(r["inventory"]["sources"], serde_json::json!(["topology"]));

    // --record: db1 has a scan observation; unknown hosts are kept by MAC.
    let h: Value = serde_json::from_slice(&isthmus(&["--data-dir", data, "topology", "history", "db1", "--json"])?.stdout)?;
    let scan = h
        .as_array()
        .context("history")?
        .iter()
        .find(|o| o["source"] == "scan")
        .context("scan observation of db1")?;
    assert_eq!(scan["origin"], "br0");
    assert!(scan["changes"]
        .as_array()
        .context("changes")?
        .iter()
        .any(|c| c["field"] == "scan.0.ip" && c["new"] == "10.77.0.12"));
    let all: Value = serde_json::from_slice(&isthmus(&["--data-dir", data, "topology", "history", "--json"])?.stdout)?;
    assert!(all
        .as_array()
        .context("history")?
        .iter()
        .any(|o| o["server"] == "unknown-02-00-5e-77-00-14"));

    // The table names the conflict for people.
    let out = ns.exec(&s, &[bin, "--data-dir", data, "scan", "--iface", "br0", "--ports", "8080"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("10.77.0.13 answered by 2 MACs"), "{table}");
    assert!(table.contains("db1"), "{table}");
    eprintln!("scan_netns took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
