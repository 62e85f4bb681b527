//! Every direction on one code path (issue 7): web1 moves data center →
//! cloud1 → cloud2 → data center on real parts (three namespaces with a
//! cloud node each side, the appliance, real QEMU guests under TCG). At each
//! hop the copy is verified block by block and by whole-disk digest, the
//! server boots at its target and answers the client at the same IP with the
//! same MAC, and its root disk keeps its kernel name.
//!
//! The first hop is also the incremental-sync test: the disk is copied while
//! the source runs (pre-copy), the test then writes a file in the running
//! source through its console, and the cutover (stop, last delta, start)
//! must carry it: the target prints it, and so does the data center copy
//! after the round trip.

use std::time::{Duration, Instant};

use appliance::moves::effects::HOLD_BEFORE_STOP_ENV;
use isthmus_lab::guest_shell;
use isthmus_lab::scenario::{fact, Lab, SERVER_IP, SERVER_MAC};
use isthmus_lab::second_cloud::{CloudB, CLOUD_B};

/// The last facts line the guest printed on a serial console.
fn last_facts(serial: &str) -> String {
    serial
        .lines()
        .rfind(|l| l.contains("ISTHMUS-FACTS"))
        .unwrap_or_default()
        .to_string()
}

/// Moves web1 to `to` and returns the move (with its timeline) as JSON.
fn hop(lab: &Lab, to: &str) -> serde_json::Value {
    let out = lab
        .isthmus(&["move", "web1", "--to", to, "--json"])
        .unwrap_or_else(|e| panic!("move to {to}: {e:#}"));
    serde_json::from_str(out.lines().last().unwrap_or("null")).unwrap_or_else(|e| panic!("move to {to} printed no JSON ({e}): {out}"))
}

/// The move `id` from `isthmus status --json`, once `until` holds for it.
fn wait_move(lab: &Lab, id: &str, what: &str, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let s = lab.isthmus(&["status", "--json"]).expect("status");
        let v: serde_json::Value = serde_json::from_str(&s).expect("status JSON");
        let m = v["moves"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["move"]["id"] == id).cloned());
        if let Some(m) = m.filter(|m| until(m)) {
            return m;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "move {id}: {what} did not happen: {v:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn has_event(m: &serde_json::Value, needle: &str) -> bool {
    m["events"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["message"].as_str().unwrap_or("").contains(needle)))
}

/// "disk 0 (…) → …: … 1234 data blocks: 7 sent …" of the copy after the stop: (sent, blocks).
fn copy_counts(m: &serde_json::Value) -> (u64, u64) {
    let events = m["events"].as_array().cloned().unwrap_or_default();
    let msg = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|s| s.starts_with("disk 0") && s.contains(" data blocks: "))
        .unwrap_or_default()
        .to_string();
    let (before, after) = msg.split_once(" data blocks: ").unwrap_or_default();
    let blocks = before.rsplit(' ').next().unwrap_or_default().parse().unwrap_or(0);
    let sent = after.split(' ').next().unwrap_or_default().parse().unwrap_or(u64::MAX);
    (sent, blocks)
}

/// What each hop must show: done, one verified disk, and every step ok.
fn check_hop(moved: &serde_json::Value, to: &str) -> String {
    assert_eq!(
        moved["move"]["state"].as_str().or(moved["move"]["step"].as_str()),
        Some("done"),
        "move to {to}: {moved:#}"
    );
    let digests = moved["move"]["disk_digests"].as_array().cloned().unwrap_or_default();
    assert_eq!(digests.len(), 1, "move to {to}: one disk digest");
    let events = moved["events"].as_array().cloned().unwrap_or_default();
    for step in ["stop-source", "copy-disks", "start-target", "switch-l2", "verify", "commit"] {
        assert!(
            events
                .iter()
                .any(|e| e["step"] == step && e["message"].as_str().unwrap_or("").contains(": ok in")),
            "move to {to}: no ok event for {step}: {events:#?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["step"] == "copy-disks" && e["message"].as_str().unwrap_or("").contains("verified")),
        "move to {to}: the copy was not verified"
    );
    digests[0].as_str().unwrap_or_default().to_string()
}

#[test]
fn round_trip_dc_cloud1_cloud2_dc_keeps_ip_mac_and_disk_names() {
    let t = Instant::now();
    let mut lab = Lab::with_source("rt").expect("lab with the source running in the data center");
    let b = CloudB::up(&mut lab).expect("cloud B up and enrolled");
    let before = lab.wait_client(std::time::Duration::from_secs(120)).expect("source answers");
    let root = fact(&before, "root_disk");
    assert!(root.is_some(), "the source reports its root disk: {before}");
    let dump = |lab: &Lab, b: &CloudB| {
        format!(
            "--- appliance ---\n{}\n--- node A ---\n{}\n--- node B ---\n{}",
            isthmus_lab::process::tail(&lab.appliance_log()),
            isthmus_lab::process::tail(&lab.node_log()),
            isthmus_lab::process::tail(&b.log())
        )
    };

    // Hop 1: data center → cloud1 with pre-copy; the appliance holds the
    // cutover (test hook) until the test has written into the running source.
    let hold = lab.work.join("cutover.go");
    lab.appliance.as_mut().expect("appliance").stop();
    lab.spawn_appliance_env("appliance-rt.log", &[(HOLD_BEFORE_STOP_ENV, hold.to_str().unwrap())])
        .expect("appliance restarts with the hold hook");
    lab.isthmus(&["move", "web1", "--to", "cloud1", "--no-wait"]).expect("move starts");
    let held = wait_move(&lab, "m-1", "pre-copy", |m| has_event(m, "holding the cutover"));
    assert!(has_event(&held, "pre-copy round 1"), "{held:#}");
    let mark = format!("ISTHMUS-MARK-{}", std::process::id());
    let (head, tail) = mark.split_at(8);
    // Quoted in two halves: the echoed command line never holds the mark itself.
    guest_shell::run(
        &lab.work.join("appliance/sources/web1"),
        &format!("echo '{head}''{tail}' > /mark.txt && sync && echo WROTE-''MARK"),
        "WROTE-MARK",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&lab, &b)));
    std::fs::write(&hold, b"").unwrap();
    let m1 = wait_move(&lab, "m-1", "the end", |m| {
        m["move"]["step"] == "done" || m["move"]["step"] == "rolled-back"
    });
    let d1 = check_hop(&m1, "cloud1");
    // The copy after the stop sent only the delta since the pre-copy.
    let (sent, blocks) = copy_counts(&m1);
    for e in m1["events"].as_array().into_iter().flatten() {
        let msg = e["message"].as_str().unwrap_or_default();
        if msg.starts_with("pre-copy") || msg.contains(": ok in") {
            eprintln!("hop 1 t={} {msg}", e["t_s"]);
        }
    }
    assert!(
        blocks > 0 && sent * 2 < blocks,
        "after the stop {sent} of {blocks} blocks crossed: {m1:#}"
    );
    let body = lab
        .wait_client(std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&lab, &b)));
    assert_eq!(fact(&body, "ip").as_deref(), Some(SERVER_IP));
    assert_eq!(fact(&body, "mac").as_deref(), Some(SERVER_MAC));
    let f1 = last_facts(&lab.cloud_serial());
    assert_eq!(fact(&f1, "root_disk"), root, "cloud1: {f1}");
    let cat = |dir: &str| {
        guest_shell::run(&lab.work.join(dir), "cat /mark.txt", &mark, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&lab, &b)))
    };
    cat("node/guests/web1");

    // Hop 2: cloud1 → cloud2, pulled from one node and pushed to the other.
    let m2 = hop(&lab, CLOUD_B);
    let d2 = check_hop(&m2, CLOUD_B);
    let body = lab
        .wait_client(std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&lab, &b)));
    assert_eq!(fact(&body, "mac").as_deref(), Some(SERVER_MAC), "cloud2 answers: {body}");
    let f2 = last_facts(&b.serial());
    assert!(!f2.is_empty(), "web1 did not boot on cloud2\n{}", dump(&lab, &b));
    assert_eq!(fact(&f2, "mac").as_deref(), Some(SERVER_MAC), "cloud2: {f2}");
    assert_eq!(fact(&f2, "root_disk"), root, "cloud2: {f2}");
    assert_eq!(lab.client_arp_mac().as_deref(), Some(SERVER_MAC));

    // Hop 3: cloud2 → data center, pulled into a new image the source host boots.
    let m3 = hop(&lab, "dc");
    let d3 = check_hop(&m3, "dc");
    let body = lab
        .wait_client(std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&lab, &b)));
    assert_eq!(fact(&body, "mac").as_deref(), Some(SERVER_MAC), "dc answers: {body}");
    let f3 = last_facts(&lab.source_serial());
    assert_eq!(fact(&f3, "root_disk"), root, "dc after the round trip: {f3}");
    assert_eq!(lab.client_arp_mac().as_deref(), Some(SERVER_MAC));
    let image = m3["move"]["target_disk_ids"][0].as_str().unwrap_or_default().to_string();
    assert!(image.contains("dc-disks"), "the data center runs the pulled image: {image}");
    // The file written before the first cutover came all the way back.
    cat("appliance/sources/web1");

    // Each hop copied exactly what the guest left at its source when it
    // stopped; the digests differ from hop to hop only by the guest's own
    // writes while it ran (logs, its HTTP server's state).
    let status = lab.isthmus(&["status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let web1 = v["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "web1").cloned())
        .unwrap();
    assert_eq!(
        web1["location"]["kind"].as_str().or(web1["location"].as_str()),
        Some("dc"),
        "{web1}"
    );
    eprintln!(
        "round trip in {:.0} s; digests {d1:.12}… {d2:.12}… {d3:.12}…",
        t.elapsed().as_secs_f64()
    );
    drop(b);
}
