//! `kill -9` of the appliance at every step of one move (issue 7): the
//! appliance runs with the test hook `ISTHMUS_TEST_KILL_AFTER=<step>`, which
//! makes it SIGKILL itself right after that step's effect ran and before the
//! step's outcome is recorded, so the store still holds that step's intent.
//! It is restarted with the hook set to the next step, and so on: one move
//! crosses all eight forward steps, each cut once and run again after a
//! restart. Bounded to one move (one source boot, one cloud boot) instead of
//! one move per step, which would cost eight TCG boots of each side.

use std::time::Duration;

use isthmus_lab::scenario::Lab;

const HOOK: &str = "ISTHMUS_TEST_KILL_AFTER";

/// Steps as the store names them, and as the timeline labels them.
const STEPS: [(&str, &str); 8] = [
    ("plan", "plan"),
    ("pre-copy", "pre-copy"),
    ("stop-source", "stop source"),
    ("copy-disks", "copy disks"),
    ("start-target", "start target"),
    ("switch-l2", "switch L2"),
    ("verify", "verify"),
    ("commit", "commit"),
];

fn logs(lab: &Lab) -> String {
    format!(
        "--- appliance log ---\n{}\n--- node log ---\n{}",
        isthmus_lab::process::tail(&lab.appliance_log()),
        isthmus_lab::process::tail(&lab.node_log())
    )
}

/// The appliance must die by its hook after `step`.
fn expect_death(lab: &mut Lab, step: &str) {
    let p = lab.appliance.as_mut().expect("appliance spawned");
    assert!(
        p.wait_exit(Duration::from_secs(600)),
        "appliance did not kill itself after {step}\n{}",
        logs(lab)
    );
    let text = lab.appliance.as_ref().map(|p| p.log_text()).unwrap_or_default();
    assert!(
        text.contains(&format!("SIGKILL after the effect of {step}")),
        "appliance ended without its hook at {step}:\n{}",
        isthmus_lab::process::tail(&text)
    );
}

#[test]
fn sigkill_at_every_step_of_a_move_ends_with_one_copy_and_the_same_disk() {
    let mut lab = Lab::with_source("c").expect("lab with the source running");
    let source_disk = lab.work.join("web1.qcow2");

    // From here on the appliance always runs with the hook for the next step.
    lab.appliance.as_mut().expect("appliance").stop();
    lab.spawn_appliance_env("appliance-plan.log", &[(HOOK, "plan")])
        .expect("appliance restarts");
    lab.isthmus(&["move", "web1", "--to", "cloud1", "--no-wait"]).expect("move starts");
    expect_death(&mut lab, "plan");
    for (step, _) in &STEPS[1..] {
        // It may die before it prints "ready" (the resumed move runs at once).
        let _ = lab.spawn_appliance_env(&format!("appliance-{step}.log"), &[(HOOK, step)]);
        expect_death(&mut lab, step);
    }
    lab.spawn_appliance("appliance-last.log")
        .expect("appliance restarts without the hook");
    let t = std::time::Instant::now();
    let v = loop {
        let s = lab.isthmus(&["status", "--json"]).expect("status");
        let v: serde_json::Value = serde_json::from_str(&s).expect("status JSON");
        let step = v["moves"][0]["move"]["step"].as_str().unwrap_or_default().to_string();
        if step == "done" || step == "rolled-back" {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "move stuck at {step}\n{}", logs(&lab));
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(v["moves"][0]["move"]["step"], "done", "{v:#}\n{}", logs(&lab));

    // Every step was cut once after its effect and ran again after the restart.
    let events = v["moves"][0]["events"].as_array().cloned().unwrap_or_default();
    let count = |m: &str| events.iter().filter(|e| e["message"].as_str().unwrap_or("").starts_with(m)).count();
    for (_, label) in STEPS {
        assert_eq!(count(&format!("{label}: started")), 2, "{label}: {events:#?}");
        assert_eq!(count(&format!("{label}: ok in")), 1, "{label}: {events:#?}");
    }

    // Exactly one copy runs: the cloud one.
    lab.check_only_cloud_copy_runs().unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&lab)));
    assert_eq!(v["servers"][0]["location"]["name"], "cloud1");

    // No lost data: the digest the node verified is the source disk's.
    let ours = appliance::moves::transfer::disk_digest(&source_disk, &lab.work).expect("digest of the source disk");
    assert_eq!(v["moves"][0]["move"]["disk_digests"][0].as_str(), Some(ours.as_str()));
}
