//! Processes the lab starts: logged to files, ended by PID on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A background process inside a namespace.
pub struct Proc {
    /// Name for messages.
    pub name: String,
    /// Its stdout+stderr log.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `args` in namespace `ns` with extra environment, logging to `log`.
    pub fn spawn(name: &str, ns: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Result<Proc> {
        let f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            log: log.into(),
            child: Some(child),
        })
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; fails if the process exits or time runs out.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("{} exited ({st}) before printing {needle:?}; log:\n{}", self.name, tail(&text));
                }
            }
            if t.elapsed() > timeout {
                bail!("{} did not print {needle:?} within {timeout:?}; log:\n{}", self.name, tail(&text));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM, waits a little, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Graceful first: SIGTERM to the PID we started.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).output();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit on its own; true if it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            match self.child.as_mut().map(|c| c.try_wait()) {
                None | Some(Ok(Some(_))) | Some(Err(_)) => {
                    self.child = None;
                    return true;
                }
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        false
    }

    /// Kills at once (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Last 40 lines of a log.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills a process we started (by PID file), e.g. a daemonized QEMU.
pub fn kill_pidfile(path: &Path) {
    if let Ok(pid) = std::fs::read_to_string(path) {
        let pid = pid.trim();
        if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
}
