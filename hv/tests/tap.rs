//! Persistent TAP devices, in a network namespace the test makes.

mod support;

use std::process::Command;

use support::{in_fresh_netns, unique_tap};

/// `ip -o link show <name>` in the calling thread's namespace, if it exists.
fn ip_link(name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()
        .expect("ip (iproute2) not found");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn create_is_persistent_up_and_idempotent_delete_removes() {
    in_fresh_netns(|| {
        let name = unique_tap();
        assert!(ip_link(&name).is_none());
        hv::create_tap(&name).unwrap();
        // No fd of ours holds it any more: it exists because it is persistent.
        let link = ip_link(&name).expect("TAP exists after create_tap returned");
        let flags = link.split('<').nth(1).and_then(|s| s.split('>').next()).unwrap_or("");
        assert!(flags.split(',').any(|f| f == "UP"), "not up: {link}");
        assert!(link.contains("link/ether"), "not a TAP (L2): {link}");
        hv::create_tap(&name).expect("create_tap on an existing TAP is fine");
        hv::delete_tap(&name).unwrap();
        assert!(ip_link(&name).is_none(), "TAP still there after delete_tap");
        hv::delete_tap(&name).expect("deleting a missing TAP is fine");
    });
}

#[test]
fn a_non_tap_device_is_refused() {
    in_fresh_netns(|| {
        let e = hv::create_tap("lo").unwrap_err();
        assert!(e.to_string().contains("cannot attach to TAP lo"), "{e}");
    });
}
