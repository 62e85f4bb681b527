//! Switching with many peers: one LCG, two cloud nodes. B1 moved to cloud
//! node 1, B2 to cloud node 2 (static entries). Through real namespaces,
//! veths, `ping` and `tcpdump`: each moved MAC is reached, unicast to one
//! never reaches the other cloud node, and 802.1Q-tagged broadcasts reach
//! both carrying peers, kept as they are for peer 1 and re-tagged for peer 2
//! (its VLAN map says LAN VLAN 42 is VLAN 142 there; it does not get VLAN 7).
//!
//! ```text
//!  ns a          ns l (LCG)                          ns c1 (cloud 1)          ns b1
//!  eth0 -------- lan0  und1 192.0.2.1 ===== und0 192.0.2.2  gst0 ----------- eth0 10.99.0.2
//!  10.99.0.1           und2 192.0.2.5 ===== ns c2: und0 192.0.2.6  gst0 ---- ns b2: eth0 10.99.0.3
//! ```
//!
//! Needs root and `ip`, `ping`, `tcpdump`, `python3`.

use std::time::Duration;

mod common;

use anyhow::Result;
use common::{capture_output, in_ns, init_tracing, must, root_or_skip, spawn_in_ns, start_capture, veth, wait_for, Lab};
use netbridge::filter::{PeerVlans, UNTAGGED};
use netbridge::keys::StaticKeypair;
use netbridge::{BridgeConfig, PeerSpec, PortSpec, Role};
use proto::MacAddr;

const MAC_A: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x03, 0x0a]);
const MAC_B1: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x03, 0xb1]);
const MAC_B2: MacAddr = MacAddr([0x02, 0x15, 0x7a, 0x00, 0x03, 0xb2]);

fn hex(m: MacAddr) -> String {
    m.to_string().replace(':', "")
}

/// Pings `dst` from `a` while capturing ICMP behind both cloud nodes;
/// returns (ping ok, lines seen in b1, lines seen in b2).
fn ping_and_capture(lab: &Lab, dst: &str) -> Result<(bool, usize, usize)> {
    let c1 = start_capture(&lab.ns("b1"), "eth0", "icmp", 3)?;
    let c2 = start_capture(&lab.ns("b2"), "eth0", "icmp", 3)?;
    let (ok, out) = in_ns(&lab.ns("a"), &["ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", dst])?;
    if !ok {
        eprintln!("ping {dst}:\n{out}");
    }
    let count = |s: String| s.lines().filter(|l| l.contains("ICMP echo")).count();
    Ok((ok, count(capture_output(c1)?), count(capture_output(c2)?)))
}

#[test]
fn each_moved_mac_goes_only_to_its_cloud_node_and_vlan_tags_are_kept_or_mapped() -> Result<()> {
    if !root_or_skip("netns_switch") {
        return Ok(());
    }
    init_tracing("netbridge=info");
    let mut lab = Lab::new(format!("nw{}", std::process::id()));
    let [a, l, c1, c2, b1, b2] = lab.add_namespaces(["a", "l", "c1", "c2", "b1", "b2"])?;
    veth(&a, "eth0", &l, "lan0")?;
    veth(&l, "und1", &c1, "und0")?;
    veth(&l, "und2", &c2, "und0")?;
    veth(&c1, "gst0", &b1, "eth0")?;
    veth(&c2, "gst0", &b2, "eth0")?;
    for (ns, mac, ip) in [
        (&a, MAC_A, "10.99.0.1/24"),
        (&b1, MAC_B1, "10.99.0.2/24"),
        (&b2, MAC_B2, "10.99.0.3/24"),
    ] {
        must(&["ip", "-n", ns, "link", "set", "eth0", "address", &mac.to_string()])?;
        must(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"])?;
    }
    must(&["ip", "-n", &l, "addr", "add", "192.0.2.1/30", "dev", "und1"])?;
    must(&["ip", "-n", &c1, "addr", "add", "192.0.2.2/30", "dev", "und0"])?;
    must(&["ip", "-n", &l, "addr", "add", "192.0.2.5/30", "dev", "und2"])?;
    must(&["ip", "-n", &c2, "addr", "add", "192.0.2.6/30", "dev", "und0"])?;

    let lcg_key = StaticKeypair::generate();
    let psk = StaticKeypair::generate().private;
    let mut clouds = Vec::new();
    for (ns, listen) in [(&c1, "192.0.2.2:51820"), (&c2, "192.0.2.6:51820")] {
        let key = StaticKeypair::generate();
        let h = spawn_in_ns(
            ns,
            BridgeConfig {
                local: key.clone(),
                peer_public: lcg_key.public,
                psk,
                listen: listen.parse()?,
                role: Role::Responder,
                ports: vec![PortSpec::Guest { ifname: "gst0".into() }],
            },
        )?;
        lab.bridges.push(h.clone());
        clouds.push((h, key.public));
    }
    let lcg = spawn_in_ns(
        &l,
        BridgeConfig {
            local: lcg_key,
            peer_public: clouds[0].1,
            psk,
            listen: "192.0.2.1:51820".parse()?,
            role: Role::Initiator {
                peer: "192.0.2.2:51820".parse()?,
            },
            ports: vec![PortSpec::Lan { ifname: "lan0".into() }],
        },
    )?;
    lab.bridges.push(lcg.clone());
    lcg.add_peer(
        1,
        PeerSpec {
            peer_public: clouds[1].1,
            psk,
            listen: "192.0.2.5:51820".parse()?,
            role: Role::Initiator {
                peer: "192.0.2.6:51820".parse()?,
            },
            vlans: PeerVlans {
                allowed: Some(vec![UNTAGGED, 42]),
                map: vec![(42, 142)],
            },
        },
    )?;
    wait_for("both tunnels", Duration::from_secs(15), || {
        let s = lcg.stats();
        s.established && s.peers.len() == 2
    })?;
    lcg.carry_mac_via(MAC_B1, 0, &[])?;
    lcg.carry_mac_via(MAC_B2, 1, &[])?;

    // Each MAC is reached, through its own cloud node only.
    let (ok, in_b1, in_b2) = ping_and_capture(&lab, "10.99.0.2")?;
    assert!(ok, "A cannot reach B1");
    assert!(in_b1 >= 10, "B1 saw {in_b1} ICMP frames");
    assert_eq!(in_b2, 0, "pings to B1 reached cloud node 2");
    let (ok, in_b1, in_b2) = ping_and_capture(&lab, "10.99.0.3")?;
    assert!(ok, "A cannot reach B2");
    assert!(in_b2 >= 10, "B2 saw {in_b2} ICMP frames");
    assert_eq!(in_b1, 0, "pings to B2 reached cloud node 1");

    // Tagged broadcasts (VLAN 42 and 7, EtherType 0x88b6) from A.
    let filter = format!("ether src {MAC_A} and vlan");
    let cap1 = start_capture(&b1, "eth0", &filter, 3)?;
    let cap2 = start_capture(&b2, "eth0", &filter, 3)?;
    let frame = |vid: u16| format!("ffffffffffff{}8100{:04x}88b6{}", hex(MAC_A), 0xa000 | vid, "49535448".repeat(12));
    let send = format!(
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
         s.bind(('eth0', 0)); [s.send(bytes.fromhex(f)) for f in ('{}', '{}') for _ in range(3)]",
        frame(42),
        frame(7)
    );
    let (ok, out) = in_ns(&a, &["python3", "-c", &send])?;
    assert!(ok, "sending tagged frames failed:\n{out}");
    let (seen1, seen2) = (capture_output(cap1)?, capture_output(cap2)?);
    eprintln!("behind cloud 1:\n{seen1}\nbehind cloud 2:\n{seen2}");
    assert!(
        seen1.contains("vlan 42, p 5") && seen1.contains("vlan 7, p 5"),
        "tags not kept for peer 0"
    );
    assert!(seen2.contains("vlan 142, p 5"), "VLAN 42 not re-tagged 142 for peer 1");
    assert!(
        !seen2.contains("vlan 42,") && !seen2.contains("vlan 7,"),
        "peer 1 got VLANs it should not"
    );

    let s = lcg.stats();
    eprintln!("LCG stats: {s:#?}");
    assert!(s.peers.iter().all(|p| p.tx_frames > 0 && p.rx_frames > 0));

    // Cloud node 1 (peer 0, the first one) leaves: its MAC is no longer
    // carried, the other cloud node's still is.
    lcg.remove_peer(0)?;
    let s = lcg.stats();
    assert_eq!(s.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1]);
    let (ok, in_b1, _) = ping_and_capture(&lab, "10.99.0.2")?;
    assert!(!ok && in_b1 == 0, "B1 still reached after its peer was removed ({in_b1} frames)");
    let (ok, _, in_b2) = ping_and_capture(&lab, "10.99.0.3")?;
    assert!(ok && in_b2 >= 10, "B2 lost after removing the other peer ({in_b2} frames)");
    Ok(())
}
