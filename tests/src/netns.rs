//! Network namespaces and links that clean themselves up.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr when it fails.
pub fn run(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// A set of namespaces with a common, unique prefix; all deleted on drop.
pub struct Namespaces {
    /// Prefix, e.g. `ist4711`.
    pub prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// A fresh prefix (unique per process and call).
    pub fn new(tag: &str) -> Namespaces {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Namespaces {
            prefix: format!("ist{tag}{}x{n}", std::process::id()),
            names: vec![],
        }
    }

    /// Creates namespace `<prefix>-<name>` with loopback up; returns its full name.
    pub fn add(&mut self, name: &str) -> Result<String> {
        let full = format!("{}-{name}", self.prefix);
        run(&["ip", "netns", "add", &full])?;
        self.names.push(full.clone());
        run(&["ip", "-n", &full, "link", "set", "lo", "up"])?;
        Ok(full)
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip -n ns …`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        let mut v = vec!["ip", "-n", ns];
        v.extend_from_slice(args);
        run(&v).map(|_| ())
    }

    /// A veth pair between two namespaces (or inside one).
    pub fn veth(&self, a_ns: &str, a: &str, b_ns: &str, b: &str) -> Result<()> {
        run(&["ip", "-n", a_ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns])?;
        self.ip(a_ns, &["link", "set", a, "up"])?;
        self.ip(b_ns, &["link", "set", b, "up"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            // Deleting a namespace removes its interfaces; persistent TAPs go with it.
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}
