//! End-to-end: the walking skeleton on real parts (network namespaces, a real
//! disk image booted by QEMU, the appliance and the cloud node as processes).

use std::time::Duration;

use isthmus_lab::scenario::{self, contains, fact, Lab, Options, SERVER_HOSTNAME, SERVER_IP, SERVER_MAC};

/// HTTP status code of a console request made with curl (`-w %{http_code}`).
fn status(lab: &Lab, args: &[&str]) -> String {
    let mut v = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    v.extend_from_slice(args);
    let out = lab.console_curl(&v).expect("curl runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn move_keeps_ip_mac_disk_name_and_leaks_no_plaintext() {
    scenario::preflight().expect("preflight");
    let mut lab = Lab::up(Options {
        tag: "m",
        ..Default::default()
    })
    .expect("lab up");
    let r = match scenario::run_skeleton(&mut lab) {
        Ok(r) => r,
        Err(e) => panic!(
            "{e:#}\n--- appliance log ---\n{}\n--- node log ---\n{}",
            isthmus_lab::process::tail(&lab.appliance_log()),
            isthmus_lab::process::tail(&lab.node_log())
        ),
    };

    // Same IP answers, same hostname in the HTTP body.
    assert_eq!(fact(&r.after, "ip").as_deref(), Some(SERVER_IP), "after: {}", r.after);
    assert_eq!(fact(&r.after, "hostname").as_deref(), Some(SERVER_HOSTNAME), "after: {}", r.after);
    // The client's ARP entry shows the same MAC before and after.
    assert_eq!(r.arp.0.as_deref(), Some(SERVER_MAC));
    assert_eq!(r.arp.1.as_deref(), Some(SERVER_MAC));
    // Inside the moved guest (its serial console): same MAC on its NIC, same disk name,
    // same SMBIOS serial.
    assert!(!r.cloud_facts.is_empty(), "no facts line on the cloud guest's serial console");
    assert_eq!(fact(&r.cloud_facts, "mac").as_deref(), Some(SERVER_MAC), "{}", r.cloud_facts);
    assert_eq!(fact(&r.cloud_facts, "root_disk").as_deref(), Some("sda"), "{}", r.cloud_facts);
    assert_eq!(fact(&r.source_facts, "root_disk"), fact(&r.cloud_facts, "root_disk"));
    assert_eq!(fact(&r.cloud_facts, "serial").as_deref(), Some("WEB1-SN-0001"), "{}", r.cloud_facts);
    assert!(r.same_ip && r.same_mac && r.same_disk_name);
    assert!(r.accel == "tcg" || r.accel == "kvm", "accel {:?}", r.accel);

    // No plaintext of the guest's frames on the "internet" link.
    assert!(
        r.capture.len() > 1000,
        "capture too small ({} bytes): did tcpdump run?",
        r.capture.len()
    );
    assert!(
        !contains(&r.capture, b"hostname=web1"),
        "HTTP body seen in plaintext on the internet link"
    );
    let mac = [0x52u8, 0x54, 0x00, 0x12, 0x34, 0x56];
    assert!(
        !contains(&r.capture, &mac),
        "guest MAC bytes (Ethernet/ARP headers) seen in plaintext on the internet link"
    );
    assert!(
        !contains(&r.capture, &[10, 77, 0, 10]),
        "guest IP bytes seen in plaintext on the internet link"
    );

    // The move's timeline was persisted step by step.
    let events = r.moved["events"].as_array().cloned().unwrap_or_default();
    for step in ["stop-source", "copy-disks", "start-target", "switch-l2", "verify", "commit"] {
        assert!(
            events
                .iter()
                .any(|e| e["step"] == step && e["message"].as_str().unwrap_or("").contains(": ok in")),
            "no ok event for {step}"
        );
    }
    assert_eq!(r.moved["move"]["disk_digests"].as_array().map(|a| a.len()), Some(1));

    // The console refuses anonymous access, and shows the move after login.
    let base = format!("https://{}:8443", scenario::APPLIANCE_INET);
    assert_eq!(
        status(&lab, &[&format!("{base}/")]),
        "303",
        "anonymous GET / must redirect to the login"
    );
    assert_eq!(
        status(&lab, &[&format!("{base}/api/overview")]),
        "401",
        "anonymous API call must be refused"
    );
    let jar = lab.work.join("cookies");
    let jar_s = jar.display().to_string();
    let login = format!("{base}/login");
    let bad = status(&lab, &["-c", &jar_s, "-d", "user=admin", "-d", "password=wrong-password", &login]);
    assert_eq!(bad, "401");
    let pw = format!("password={}", r.password);
    let good = status(&lab, &["-c", &jar_s, "-d", "user=admin", "-d", &pw, &login]);
    assert_eq!(good, "303", "login must redirect to /");
    let page = lab
        .console_curl(&["-b", &jar_s, "-H", "Accept: application/json", &format!("{base}/")])
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&page.stdout).expect("console JSON");
    let web1 = v["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "web1").cloned())
        .expect("web1 listed");
    assert_eq!(web1["location"], "cloud1");
    assert_eq!(v["moves"][0]["state"], "done");
    let html = lab.console_curl(&["-b", &jar_s, &format!("{base}/")]).unwrap();
    assert!(String::from_utf8_lossy(&html.stdout).contains("web1"));

    // The same in a real browser: headless Chromium logs in through the form
    // and sees web1 in cloud1 with the move done.
    let browser = isthmus_lab::browser::Browser::start(&lab.dc, &lab.work).expect("chromium starts");
    browser.goto(&format!("{base}/")).unwrap();
    assert!(
        browser.url().unwrap().ends_with("/login"),
        "anonymous browser must land on the login page"
    );
    browser.type_into("#user", "admin").unwrap();
    browser.type_into("#password", &r.password).unwrap();
    browser.click("button[type=submit]").unwrap();
    let page = browser.wait_for("cloud1", Duration::from_secs(30)).expect("overview after login");
    assert!(
        page.contains("web1") && page.contains("<svg"),
        "overview lacks the server or the topology picture"
    );
    browser.screenshot(&lab.work.join("console.png")).unwrap();
    drop(browser);

    // The cloud node's API refuses a client without a certificate from the appliance CA.
    let out = lab.node_curl_anonymous("/v1/node").unwrap();
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("accel"),
        "node answered an anonymous client"
    );
}

#[test]
fn a_failing_cloud_start_rolls_back_to_the_source() {
    let mut lab = Lab::with_source_opts(Options {
        tag: "r",
        break_cloud_qemu: true,
    })
    .expect("lab with a running source");
    let moved = lab.move_server().expect("move ran");
    assert_eq!(moved["move"]["step"], "rolled-back", "{moved:#}");
    let failure = moved["move"]["failure"].as_str().unwrap_or_default().to_string();
    assert!(failure.contains("start target"), "failure names the step: {failure}");
    // The source runs again and answers at its IP, with its MAC.
    let body = lab
        .wait_client(Duration::from_secs(120))
        .expect("source answers again after rollback");
    assert_eq!(fact(&body, "mac").as_deref(), Some(SERVER_MAC));
    assert_eq!(lab.client_arp_mac().as_deref(), Some(SERVER_MAC));
    let status: serde_json::Value = serde_json::from_str(&lab.isthmus(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["servers"][0]["location"]["kind"], "dc");
}

/// Waits until the (only) move's recorded step is one of `steps`.
fn wait_step(lab: &Lab, steps: &[&str], timeout: Duration) -> serde_json::Value {
    let t = std::time::Instant::now();
    loop {
        if let Ok(s) = lab.isthmus(&["status", "--json"]) {
            let v: serde_json::Value = serde_json::from_str(&s).expect("status JSON");
            let step = v["moves"][0]["move"]["step"].as_str().unwrap_or_default().to_string();
            if steps.contains(&step.as_str()) {
                return v;
            }
            assert!(
                t.elapsed() < timeout,
                "move did not reach {steps:?} within {timeout:?}; it is at {step:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_appliance_killed_mid_move_resumes_after_restart() {
    let mut lab = Lab::with_source("k").expect("lab with a running source");
    lab.isthmus(&["move", "web1", "--to", "cloud1", "--no-wait"]).expect("move starts");
    // Verify waits for the cloud guest to boot: a wide window to crash in.
    wait_step(&lab, &["verify"], Duration::from_secs(180));
    lab.appliance.as_mut().expect("appliance runs").crash();
    lab.spawn_appliance("appliance-2.log")
        .expect("appliance restarts on the same data dir");
    let v = wait_step(&lab, &["done", "rolled-back"], Duration::from_secs(240));
    assert_eq!(v["moves"][0]["move"]["step"], "done", "{v:#}");
    // The step that was cut off ran again after the restart.
    let events = v["moves"][0]["events"].as_array().cloned().unwrap_or_default();
    let verify_starts = events.iter().filter(|e| e["message"] == "verify: started").count();
    assert_eq!(
        verify_starts, 2,
        "verify must have started once before the crash and once after: {events:#?}"
    );
    // Exactly one copy runs: the cloud one answers with the server's MAC, the source is down.
    lab.check_only_cloud_copy_runs().expect("only the cloud copy runs");
    assert_eq!(v["servers"][0]["location"]["name"], "cloud1");
}
