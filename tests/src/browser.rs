//! Headless Chromium, driven over the W3C WebDriver protocol (chromedriver),
//! inside a lab namespace: the console tested the way an admin uses it.
//! Request bodies go to curl on stdin, so nothing typed (passwords) appears
//! on a command line.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::process::Proc;

/// WebDriver's element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session.
pub struct Browser {
    ns: String,
    port: u16,
    session: String,
    profile: std::path::PathBuf,
    _driver: Proc,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session in namespace `ns`.
    pub fn start(ns: &str, work: &std::path::Path) -> Result<Browser> {
        let port = 9515 + (std::process::id() % 400) as u16;
        let log = work.join("chromedriver.log");
        let mut driver = Proc::spawn("chromedriver", ns, &["chromedriver", &format!("--port={port}")], &[], &log)?;
        driver.wait_log("started successfully", Duration::from_secs(30))?;
        let profile = work.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let mut b = Browser {
            ns: ns.into(),
            port,
            session: String::new(),
            profile: profile.clone(),
            _driver: driver,
        };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // The console's certificate comes from the appliance's own CA.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--no-first-run", "--disable-quic", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["value"]["sessionId"]
            .as_str()
            .context("no sessionId from chromedriver")?
            .to_string();
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "curl", "-s", "--max-time", "60", "-X", method, &url]);
        if body.is_some() {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", "@-"]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        if let (Some(b), Some(mut stdin)) = (body, child.stdin.take()) {
            stdin.write_all(b.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("WebDriver {method} {path}: {}", String::from_utf8_lossy(&out.stdout)))?;
        if let Some(err) = v["value"]["error"].as_str() {
            bail!("WebDriver {method} {path}: {err}: {}", v["value"]["message"]);
        }
        Ok(v)
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens a URL.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url }))).map(|_| ())
    }

    /// The current URL.
    pub fn url(&self) -> Result<String> {
        Ok(self.call("GET", &self.s("/url"), None)?["value"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    fn find(&self, css: &str) -> Result<String> {
        let v = self.call("POST", &self.s("/element"), Some(json!({ "using": "css selector", "value": css })))?;
        Ok(v["value"][ELEMENT].as_str().context("no element id")?.to_string())
    }

    /// Types into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let el = self.find(css)?;
        self.call("POST", &self.s(&format!("/element/{el}/value")), Some(json!({ "text": text })))
            .map(|_| ())
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) -> Result<()> {
        let el = self.find(css)?;
        self.call("POST", &self.s(&format!("/element/{el}/click")), Some(json!({})))
            .map(|_| ())
    }

    /// The page's HTML as the browser holds it now (after scripts ran).
    pub fn source(&self) -> Result<String> {
        Ok(self.call("GET", &self.s("/source"), None)?["value"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Waits until the page holds `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            let src = self.source()?;
            if src.contains(needle) {
                return Ok(src);
            }
            if t.elapsed() > timeout {
                bail!("page never showed {needle:?}; it holds:\n{}", &src[..src.len().min(2000)]);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG screenshot.
    pub fn screenshot(&self, path: &std::path::Path) -> Result<()> {
        let v = self.call("GET", &self.s("/screenshot"), None)?;
        let data = base64_decode(v["value"].as_str().unwrap_or_default())?;
        std::fs::write(path, data)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.s(""), None);
        }
        // Whatever happened to the session, end the Chromium processes we
        // started: they are the ones using our own profile directory.
        let marker = format!("--user-data-dir={}", self.profile.display());
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&marker) {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
                }
            }
        }
    }
}

/// Minimal standard base64 decoder (screenshots only).
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("bad base64 byte {c}"),
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
