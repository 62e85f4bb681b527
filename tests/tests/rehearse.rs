//! End-to-end: `isthmus move --rehearse` on real parts. The source server
//! boots in the data-center namespace; the rehearsal copies its disk to the
//! cloud node while it runs, boots the copy there on an isolated TAP (on no
//! bridge), watches it boot and deletes it. Throughout, the client on the
//! LAN reaches the source at its IP with its MAC, and no frame with the
//! server's MAC enters the LAN from the appliance's LCG port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_lab::process::Proc;
use isthmus_lab::scenario::{fact, Lab, SERVER_MAC};

/// Ends the CLI process we started (by its PID) if the test fails while it runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The rehearsal guest's TAP on the node (`tap_name("rh-web1", 0)`).
const REHEARSAL_TAP: &str = "tp0-rh-web1";

#[test]
fn a_rehearsal_boots_an_isolated_copy_while_the_source_keeps_answering() {
    let lab = Lab::with_source("h").expect("lab with a running source");
    let source_pid = std::fs::read_to_string(lab.work.join("appliance/sources/web1/qemu.pid")).expect("source pid file");

    // Frames the appliance's LCG port puts onto the LAN (received by lanA,
    // the bridge's side of the pair): none may carry the server's MAC.
    let pcap = lab.work.join("lan-from-lcg.pcap");
    let mut capture = Proc::spawn(
        "tcpdump",
        &lab.dc,
        &[
            "tcpdump",
            "-i",
            "lanA",
            "-Q",
            "in",
            "-s",
            "0",
            "-U",
            "-w",
            &pcap.display().to_string(),
            "ether",
            "src",
            SERVER_MAC,
        ],
        &[],
        &lab.work.join("tcpdump-lan.log"),
    )
    .expect("tcpdump starts");
    std::thread::sleep(Duration::from_millis(700));

    let bin = isthmus_lab::bin("isthmus").expect("isthmus binary");
    let (out_path, err_path) = (lab.work.join("rehearse.out"), lab.work.join("rehearse.err"));
    let mut rehearsal = Running(
        Command::new(bin)
            .arg("--data-dir")
            .arg(lab.work.join("appliance"))
            .args(["move", "web1", "--to", "cloud1", "--rehearse", "--json"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("isthmus move --rehearse starts"),
    );

    // While it runs: the source answers from the LAN with its MAC, and once
    // the copy runs, its TAP exists on the node in a state of its own.
    let t = Instant::now();
    let (mut checks, mut tap_seen, mut copy_frames) = (0, None::<String>, 0u64);
    let status = loop {
        if let Some(status) = rehearsal.0.try_wait().expect("wait") {
            break status;
        }
        let body = lab
            .wait_client(Duration::from_secs(30))
            .expect("the source answers during the rehearsal");
        assert_eq!(fact(&body, "mac").as_deref(), Some(SERVER_MAC), "{body}");
        assert_eq!(lab.client_arp_mac().as_deref(), Some(SERVER_MAC));
        checks += 1;
        // `ip link show` fails until the copy's TAP exists (and after it goes).
        if let Ok(out) = lab.ns.exec(&lab.cloud, &["ip", "-o", "link", "show", REHEARSAL_TAP]) {
            tap_seen = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
            // Frames the copy sent into its TAP (the kernel counts them as received).
            let stat = format!("/sys/class/net/{REHEARSAL_TAP}/statistics/rx_packets");
            if let Ok(out) = lab.ns.exec(&lab.cloud, &["cat", &stat]) {
                copy_frames = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(copy_frames);
            }
        }
        assert!(t.elapsed() < Duration::from_secs(420), "the rehearsal did not end within 7 min");
        std::thread::sleep(Duration::from_secs(2));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "rehearsal failed: {stdout}{}\n--- node log ---\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default(),
        isthmus_lab::process::tail(&lab.node_log())
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).expect("rehearsal JSON");
    eprintln!(
        "rehearsal in {:.1} s, {checks} LAN checks, {copy_frames} frames sent by the copy into its TAP; rehearsal: {}",
        t.elapsed().as_secs_f64(),
        v["move"]["rehearsal"]
    );

    // The record ends rehearsed, with what it saw and its timeline.
    assert_eq!(v["move"]["step"], "rehearsed", "{v:#}");
    assert!(v["move"]["failure"].is_null(), "{v:#}");
    let r = &v["move"]["rehearsal"];
    assert_eq!(r["booted"], true, "{v:#}");
    assert_eq!(r["guest_deleted"], true, "{v:#}");
    assert!(r["console_bytes"].as_u64().unwrap_or(0) > 0, "{v:#}");
    let events = v["events"].as_array().cloned().unwrap_or_default();
    for step in ["copy-disks", "rehearse"] {
        assert!(
            events
                .iter()
                .any(|e| e["step"] == step && e["message"].as_str().unwrap_or("").contains(": ok in")),
            "no ok event for {step}: {events:#?}"
        );
    }
    for step in ["stop-source", "switch-l2", "start-target"] {
        assert!(!events.iter().any(|e| e["step"] == step), "a rehearsal ran {step}: {events:#?}");
    }

    // The copy ran on its own TAP, seen on the node while it ran.
    let tap = tap_seen.expect("the rehearsal TAP was never seen on the node");
    assert!(!tap.contains("master"), "the rehearsal TAP is on a kernel bridge: {tap}");

    // The copy usually sends frames (from its NIC, with the server's MAC:
    // 2 and 8 in two runs), but a quiet static-IP guest may send none in
    // the short window before the rehearsal deletes it (0 in one CI run).
    // Isolation itself is asserted above from the TAP (no bridge master);
    // the capture below additionally proves no frame of the server's MAC
    // came onto the LAN from the LCG, meaningful when the copy sent some.
    if copy_frames == 0 {
        eprintln!("note: the copy sent no frame into its TAP this run; the LAN capture checks only the LCG side");
    }
    // No frame with the server's MAC came onto the LAN from the LCG.
    std::thread::sleep(Duration::from_millis(500));
    capture.stop();
    let frames = std::fs::read(&pcap).expect("capture file");
    assert!(frames.len() >= 24, "tcpdump wrote no pcap header: did it run?");
    assert_eq!(
        frames.len(),
        24,
        "frames with the server's MAC entered the LAN from the appliance's LCG port during the rehearsal"
    );

    // The source never stopped, still answers with its MAC; no guest is left on the node.
    let pid_after = std::fs::read_to_string(lab.work.join("appliance/sources/web1/qemu.pid")).expect("source pid file");
    assert_eq!(source_pid, pid_after, "the source QEMU was restarted");
    let body = lab
        .wait_client(Duration::from_secs(30))
        .expect("the source answers after the rehearsal");
    assert_eq!(fact(&body, "mac").as_deref(), Some(SERVER_MAC));
    let guests = std::fs::read_to_string(lab.work.join("node/guests.json")).unwrap_or_default();
    assert!(!guests.contains("rh-web1"), "the rehearsal guest is still listed: {guests}");
    assert!(
        !lab.work.join("node/guests/rh-web1").exists(),
        "the rehearsal guest's run directory remains"
    );
    assert!(
        lab.ns.exec(&lab.cloud, &["ip", "-o", "link", "show", REHEARSAL_TAP]).is_err(),
        "the rehearsal TAP remains on the node"
    );
    let status: serde_json::Value = serde_json::from_str(&lab.isthmus(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["servers"][0]["location"]["kind"], "dc");
}
