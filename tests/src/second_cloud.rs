//! A second cloud for moves between clouds (issue 7): namespace
//! `<p>-cloudb` with its own "internet" link to the data center and its own
//! cloud node, enrolled as `cloud2`.
//!
//! ```text
//!  <p>-dc appliance ─ inet2 198.51.100.5/30 ═══ inet3 198.51.100.6/30 ─ <p>-cloudb node ─ TAPs ─ QEMU
//! ```
//! The appliance's tunnels all leave from 198.51.100.1 (its first internet
//! address); cloud B routes that address back over this link.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::process::{kill_pidfile, Proc};
use crate::scenario::{hex, rand16, write_private, Lab, APPLIANCE_INET};

/// Data-center side of cloud B's link.
pub const DC_INET_B: &str = "198.51.100.5";
/// Cloud B's address.
pub const CLOUD_INET_B: &str = "198.51.100.6";
/// The name cloud B is enrolled under.
pub const CLOUD_B: &str = "cloud2";

/// Starts `isthmus-node serve` in `ns` with its state in `state`, its API on
/// `addr:9443` and its bridge on `addr:51821`, with a fresh one-time token;
/// returns the process, its bootstrap fingerprint and the token file for
/// `isthmus cloud enroll`.
pub fn spawn_node(lab: &Lab, ns: &str, state: &Path, addr: &str, env: &[(&str, &str)], log: &Path) -> Result<(Proc, String, PathBuf)> {
    let name = state.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let token = lab.work.join(format!("{name}-enrol.token"));
    write_private(&token, hex(&rand16()?).as_bytes())?;
    let node_token = lab.work.join(format!("{name}.token"));
    std::fs::copy(&token, &node_token)?;
    let bin = crate::bin("isthmus-node")?;
    let mut args = vec![
        bin.display().to_string(),
        "serve".into(),
        "--state-dir".into(),
        state.display().to_string(),
        "--listen".into(),
        format!("{addr}:9443"),
        "--bridge-listen".into(),
        format!("{addr}:51821"),
        "--token-file".into(),
        node_token.display().to_string(),
    ];
    args.extend(lab.probe_args());
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut p = Proc::spawn("cloud node", ns, &argv, env, log)?;
    let line = p.wait_log("bootstrap fingerprint:", Duration::from_secs(120))?;
    let fp = line.split("bootstrap fingerprint:").nth(1).unwrap_or_default().trim().to_string();
    Ok((p, fp, token))
}

/// Cloud B: its node process (stopped, and its guests' QEMUs ended, on drop;
/// the namespace goes with the lab's).
pub struct CloudB {
    /// Namespace.
    pub ns: String,
    /// Node state directory.
    pub dir: PathBuf,
    /// The node process.
    pub node: Option<Proc>,
}

impl CloudB {
    /// Makes the namespace and link, starts the node and enrols it as [`CLOUD_B`].
    pub fn up(lab: &mut Lab) -> Result<CloudB> {
        let t = Instant::now();
        let ns = lab.ns.add("cloudb")?;
        lab.ns.veth(&lab.dc, "inet2", &ns, "inet3")?;
        lab.ns.ip(&lab.dc, &["addr", "add", &format!("{DC_INET_B}/30"), "dev", "inet2"])?;
        lab.ns.ip(&ns, &["addr", "add", &format!("{CLOUD_INET_B}/30"), "dev", "inet3"])?;
        lab.ns
            .ip(&ns, &["route", "add", &format!("{APPLIANCE_INET}/32"), "via", DC_INET_B])?;
        let dir = lab.work.join("node-b");
        let (p, fp, token) = spawn_node(lab, &ns, &dir, CLOUD_INET_B, &[], &lab.work.join("node-b.log"))?;
        let me = CloudB { ns, dir, node: Some(p) };
        let out = lab.isthmus(&[
            "cloud",
            "enroll",
            CLOUD_B,
            "--url",
            &format!("https://{CLOUD_INET_B}:9443"),
            "--fingerprint",
            &fp,
            "--token-file",
            &token.display().to_string(),
        ])?;
        lab.note(
            "cloud B up",
            t,
            format!("isthmus-node in {}, enrolled as {CLOUD_B}: {}", me.ns, out.trim()),
        );
        Ok(me)
    }

    /// Serial console log of web1 on cloud B.
    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("guests/web1/serial.log")).unwrap_or_default()
    }

    /// The node's log.
    pub fn log(&self) -> String {
        self.node.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

impl Drop for CloudB {
    fn drop(&mut self) {
        if let Some(mut p) = self.node.take() {
            p.stop();
        }
        if let Ok(rd) = std::fs::read_dir(self.dir.join("guests")) {
            for e in rd.flatten() {
                kill_pidfile(&e.path().join("qemu.pid"));
            }
        }
    }
}
