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
    let ns = ns.to_string();
    thread::spawn(move || -> Result<BridgeHandle> {
        enter(&ns)?;
        Ok(Bridge::spawn_ha(cfg, ha)?)
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
