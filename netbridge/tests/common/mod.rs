//! Helpers shared by the namespace tests: run commands (inside a namespace),
//! spawn a bridge whose sockets live in a namespace, wait for a condition.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netbridge::{Bridge, BridgeConfig, BridgeHandle, Ha};

/// Runs a command that must succeed; returns its stdout.
pub fn must(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` inside namespace `ns`; returns whether it succeeded and its output.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} in {ns}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Enters namespace `ns` on the calling thread (only ever a thread we spawned).
pub fn enter(ns: &str) -> Result<()> {
    let f = File::open(format!("/run/netns/{ns}")).with_context(|| format!("open netns {ns}"))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}

/// Spawns a bridge from a thread that entered `ns`: its sockets and worker
/// thread live in that namespace.
pub fn spawn_in_ns(ns: &str, cfg: BridgeConfig) -> Result<BridgeHandle> {
    spawn_in_ns_with(ns, cfg, Ha::Off)
}

/// Like [`spawn_in_ns`], in HA mode `ha`.
pub fn spawn_in_ns_with(ns: &str, cfg: BridgeConfig, ha: Ha) -> Result<BridgeHandle> {
    spawn_in_ns_workers(ns, cfg, ha, netbridge::worker::from_env())
}

/// Like [`spawn_in_ns_with`], with `workers` worker threads.
pub fn spawn_in_ns_workers(ns: &str, cfg: BridgeConfig, ha: Ha, workers: usize) -> Result<BridgeHandle> {
    let ns = ns.to_string();
    thread::spawn(move || -> Result<BridgeHandle> {
        enter(&ns)?;
        Ok(Bridge::spawn_workers(cfg, ha, workers)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("spawn thread panicked"))?
}

/// Polls `ok` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

/// Byte `i` of the TCP test stream.
pub fn stream_byte(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 12)) as u8
}

/// Everything a test made; torn down (children killed, bridges stopped,
/// namespaces deleted) even when an assert fails.
pub struct Lab {
    /// Prefix of the namespace names.
    pub prefix: String,
    /// Namespaces made, deleted in reverse.
    pub namespaces: Vec<String>,
    /// Bridges started.
    pub bridges: Vec<BridgeHandle>,
    /// Processes started (killed by PID).
    pub children: Vec<Child>,
}

impl Lab {
    /// A lab whose namespaces are named `prefix` + suffix.
    pub fn new(prefix: String) -> Self {
        Lab {
            prefix,
            namespaces: vec![],
            bridges: vec![],
            children: vec![],
        }
    }

    /// The name of namespace `suffix`.
    pub fn ns(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for b in &self.bridges {
            b.shutdown();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Starts `tcpdump` on `ifname` in `ns` for `secs` seconds with `filter`
/// (link-level headers, line-buffered); returns once it listens. Read its
/// output with [`capture_output`].
pub fn start_capture(ns: &str, ifname: &str, filter: &str, secs: u32) -> Result<Child> {
    use std::io::{BufRead, BufReader};
    let secs = secs.to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", &secs, "tcpdump", "-i", ifname, "-n", "-e", "-l"])
        .args(["--immediate-mode", filter])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("start tcpdump")?;
    let stderr = child.stderr.take().context("tcpdump stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    if !lines.any(|l| l.is_ok_and(|l| l.contains("listening on"))) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("tcpdump did not start in {ns}");
    }
    Ok(child)
}

/// Waits for a capture started by [`start_capture`]; returns its lines.
pub fn capture_output(child: Child) -> Result<String> {
    let out = child.wait_with_output().context("tcpdump")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True if running as root; otherwise says on stderr that `test` is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root for network namespaces and AF_PACKET sockets");
    false
}

/// Sends the bridges' logs (at `filter`, e.g. `netbridge=info`) to the test's output.
pub fn init_tracing(filter: &str) {
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

impl Lab {
    /// Makes namespaces `prefix` + each suffix (loopback up); returns their names.
    pub fn add_namespaces<const N: usize>(&mut self, suffixes: [&str; N]) -> Result<[String; N]> {
        let names = suffixes.map(|s| self.ns(s));
        for ns in &names {
            must(&["ip", "netns", "add", ns])?;
            self.namespaces.push(ns.clone());
            must(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(names)
    }
}

/// A veth pair `d1` in `ns1` – `d2` in `ns2`, both up.
pub fn veth(ns1: &str, d1: &str, ns2: &str, d2: &str) -> Result<()> {
    must(&["ip", "-n", ns1, "link", "add", d1, "type", "veth", "peer", "name", d2, "netns", ns2])?;
    must(&["ip", "-n", ns1, "link", "set", d1, "up"])?;
    must(&["ip", "-n", ns2, "link", "set", d2, "up"])?;
    Ok(())
}

/// The line both bridge tests stand on: host `a` (eth0, `mac_a`, 10.99.0.1)
/// – LCG `l` (lan0; und0 192.0.2.1) – underlay – cloud node `c` (und0
/// 192.0.2.2; gst0) – host `b` (eth0, `mac_b`, 10.99.0.2). The veth pairs
/// are created straight into their namespaces (no names in the root
/// namespace, so parallel runs cannot collide); every link is up.
pub fn wire_line(a: &str, l: &str, c: &str, b: &str, mac_a: &str, mac_b: &str) -> Result<()> {
    veth(a, "eth0", l, "lan0")?;
    veth(l, "und0", c, "und0")?;
    veth(c, "gst0", b, "eth0")?;
    must(&["ip", "-n", a, "link", "set", "eth0", "address", mac_a])?;
    must(&["ip", "-n", b, "link", "set", "eth0", "address", mac_b])?;
    must(&["ip", "-n", a, "addr", "add", "10.99.0.1/24", "dev", "eth0"])?;
    must(&["ip", "-n", b, "addr", "add", "10.99.0.2/24", "dev", "eth0"])?;
    must(&["ip", "-n", l, "addr", "add", "192.0.2.1/30", "dev", "und0"])?;
    must(&["ip", "-n", c, "addr", "add", "192.0.2.2/30", "dev", "und0"])?;
    Ok(())
}
