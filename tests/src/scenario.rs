//! The walking-skeleton scenario: a source server in the data center, an
//! appliance, a cloud node; move the server and check what a person would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::netns::{run, Namespaces};
use crate::process::{kill_pidfile, Proc};

/// The test server's baked-in identity (image-build/test-server defaults).
pub const SERVER_IP: &str = "10.77.0.10";
/// Its MAC.
pub const SERVER_MAC: &str = "52:54:00:12:34:56";
/// Its hostname.
pub const SERVER_HOSTNAME: &str = "web1";
/// Appliance side of the "internet" link.
pub const APPLIANCE_INET: &str = "198.51.100.1";
/// Cloud side of the "internet" link.
pub const CLOUD_INET: &str = "198.51.100.2";

/// The cached test-server image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Cache directory.
    pub dir: PathBuf,
}

impl Image {
    /// Builds (cold) or reuses (warm) the test-server image.
    pub fn get() -> Result<Image> {
        if let Ok(d) = std::env::var("ISTHMUS_TEST_SERVER_DIR") {
            return Ok(Image { dir: d.into() });
        }
        let script = crate::workspace_root().join("image-build/test-server/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running build.sh")?;
        if !out.status.success() {
            bail!("building the test server image failed ({}); see the messages above", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout
            .lines()
            .last()
            .context("build.sh printed no cache directory")?
            .trim()
            .to_string();
        Ok(Image { dir: dir.into() })
    }
    /// The disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
}

/// One line of the demo's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Seconds since the lab started.
    pub t_s: f64,
    /// Step.
    pub step: String,
    /// How long it took.
    pub took_s: f64,
    /// What was checked.
    pub checked: String,
}

/// Options of a lab.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Make QEMU fail on the cloud node (rollback test).
    pub break_cloud_qemu: bool,
    /// Short tag in namespace names.
    pub tag: &'static str,
}

/// The running lab.
pub struct Lab {
    /// Namespaces (deleted on drop).
    pub ns: Namespaces,
    /// Data-center namespace.
    pub dc: String,
    /// Client namespace.
    pub cl: String,
    /// Cloud namespace.
    pub cloud: String,
    /// Work directory (data dirs, logs, disks).
    pub work: PathBuf,
    /// Image.
    pub image: Image,
    /// The appliance process.
    pub appliance: Option<Proc>,
    /// The cloud node process.
    pub node: Option<Proc>,
    /// Timeline.
    pub timeline: Vec<Entry>,
    t0: Instant,
    opts: Options,
}

impl Lab {
    /// Builds the image (or takes it from the cache) and the networks.
    pub fn up(opts: Options) -> Result<Lab> {
        let t0 = Instant::now();
        let image = Image::get()?;
        let mut ns = Namespaces::new(opts.tag);
        let work = std::env::temp_dir().join(format!("isthmus-lab-{}", ns.prefix));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let dc = ns.add("dc")?;
        let cl = ns.add("cl")?;
        let cloud = ns.add("cloud")?;
        // The data-center LAN: a bridge with the appliance's own address.
        ns.ip(&dc, &["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&dc, &["addr", "add", "10.77.0.2/24", "dev", "br0"])?;
        ns.ip(&dc, &["link", "set", "br0", "up"])?;
        // Client host.
        ns.veth(&dc, "vcb", &cl, "vc")?;
        ns.ip(&dc, &["link", "set", "vcb", "master", "br0"])?;
        ns.ip(&cl, &["addr", "add", "10.77.0.100/24", "dev", "vc"])?;
        // Appliance LAN port: lanA on the bridge, lanB opened with AF_PACKET.
        ns.veth(&dc, "lanA", &dc, "lanB")?;
        ns.ip(&dc, &["link", "set", "lanA", "master", "br0"])?;
        // The source server's TAP on the bridge (QEMU opens it by name).
        ns.ip(&dc, &["tuntap", "add", "dev", "tap-web1", "mode", "tap"])?;
        ns.ip(&dc, &["link", "set", "tap-web1", "master", "br0"])?;
        ns.ip(&dc, &["link", "set", "tap-web1", "up"])?;
        // The "internet": one veth pair with its own addressing, MTU 1500.
        ns.veth(&dc, "inet0", &cloud, "inet1")?;
        ns.ip(&dc, &["addr", "add", &format!("{APPLIANCE_INET}/30"), "dev", "inet0"])?;
        ns.ip(&cloud, &["addr", "add", &format!("{CLOUD_INET}/30"), "dev", "inet1"])?;
        let mut lab = Lab {
            ns,
            dc,
            cl,
            cloud,
            work,
            image,
            appliance: None,
            node: None,
            timeline: vec![],
            t0,
            opts,
        };
        lab.note(
            "lab up",
            t0,
            format!(
                "namespaces {}-{{dc,cl,cloud}}, LAN bridge, internet link; image {}",
                lab.ns.prefix,
                lab.image.dir.display()
            ),
        );
        Ok(lab)
    }

    /// Adds a timeline entry for a step that started at `since`.
    pub fn note(&mut self, step: &str, since: Instant, checked: String) {
        let e = Entry {
            t_s: round(self.t0.elapsed().as_secs_f64()),
            step: step.into(),
            took_s: round(since.elapsed().as_secs_f64()),
            checked,
        };
        self.timeline.push(e);
    }

    fn appliance_dir(&self) -> PathBuf {
        self.work.join("appliance")
    }
    fn node_dir(&self) -> PathBuf {
        self.work.join("node")
    }

    /// `--probe-kernel/--probe-initrd` for the image's kernel (KVM probe).
    pub(crate) fn probe_args(&self) -> Vec<String> {
        let kernel = self.image.dir.join("vmlinuz");
        let initrd = self.image.dir.join("initrd.img");
        if !kernel.exists() {
            return vec![];
        }
        vec![
            "--probe-kernel".into(),
            kernel.display().to_string(),
            "--probe-initrd".into(),
            initrd.display().to_string(),
        ]
    }

    /// Starts the cloud node with a one-time token; returns (fingerprint, token file).
    pub fn start_node(&mut self) -> Result<(String, PathBuf)> {
        let t = Instant::now();
        let env: Vec<(&str, &str)> = if self.opts.break_cloud_qemu {
            vec![("ISTHMUS_QEMU", "/bin/false")]
        } else {
            vec![]
        };
        let (p, fp, token) =
            crate::second_cloud::spawn_node(self, &self.cloud, &self.node_dir(), CLOUD_INET, &env, &self.work.join("node.log"))?;
        self.node = Some(p);
        self.note(
            "cloud node up",
            t,
            format!("isthmus-node in {}; bootstrap fingerprint {}…", self.cloud, &fp[..fp.len().min(20)]),
        );
        Ok((fp, token))
    }

    /// A lab with the node and the appliance up, the node enrolled and the
    /// source server booted in the data center: where every move test starts.
    pub fn with_source(tag: &'static str) -> Result<Lab> {
        Lab::with_source_opts(Options { tag, ..Default::default() })
    }

    /// [`Lab::with_source`] with every lab option (e.g. a cloud QEMU that
    /// fails to start, to exercise rollback).
    pub fn with_source_opts(options: Options) -> Result<Lab> {
        preflight()?;
        let mut lab = Lab::up(options)?;
        let (fp, token) = lab.start_node()?;
        lab.start_appliance()?;
        lab.enroll(&fp, &token)?;
        lab.add_and_boot_source()?;
        Ok(lab)
    }

    /// Fails unless exactly one copy of the server runs, the cloud one: it
    /// answers with the server's MAC, its serial console shows the facts
    /// line, and the source QEMU is gone.
    pub fn check_only_cloud_copy_runs(&self) -> Result<()> {
        let body = self.wait_client(Duration::from_secs(120))?;
        if fact(&body, "mac").as_deref() != Some(SERVER_MAC) {
            bail!("the server answers with another MAC: {body}");
        }
        if !self.cloud_serial().contains("ISTHMUS-FACTS") {
            bail!("the cloud copy is not the one running");
        }
        let pid = std::fs::read_to_string(self.work.join("appliance/sources/web1/qemu.pid")).unwrap_or_default();
        if !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists() {
            bail!("the source QEMU (pid {}) still runs next to the moved copy", pid.trim());
        }
        Ok(())
    }

    /// Starts `isthmus serve` (logging to `log` in the work dir) and waits until it is ready.
    pub fn spawn_appliance(&mut self, log: &str) -> Result<()> {
        self.spawn_appliance_env(log, &[])
    }

    /// Starts `isthmus serve` with extra environment (test hooks); waits
    /// until its local API is up.
    pub fn spawn_appliance_env(&mut self, log: &str, env: &[(&str, &str)]) -> Result<()> {
        let bin = crate::bin("isthmus")?;
        let mut args = appliance_serve_args(&bin, &self.appliance_dir());
        args.extend(self.probe_args());
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let p = Proc::spawn("appliance", &self.dc, &argv, env, &self.work.join(log))?;
        // Kept even when it dies before it is ready (a crash hook may fire
        // while it resumes a move), so that the caller can see how it ended.
        let p = self.appliance.insert(p);
        p.wait_log("ready: local API", Duration::from_secs(120))?;
        Ok(())
    }

    /// Starts the appliance and sets the admin password; returns it.
    pub fn start_appliance(&mut self) -> Result<String> {
        let t = Instant::now();
        self.spawn_appliance("appliance.log")?;
        let bin = crate::bin("isthmus")?;
        let dir = self.appliance_dir();
        let password = format!("lab-{}", hex(&rand16()?));
        let out = Command::new(&bin)
            .args(["--data-dir", &dir.display().to_string(), "admin", "set-password"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(format!("{password}\n").as_bytes())?;
        if !out.status.success() {
            bail!("setting the admin password failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.note(
            "appliance up",
            t,
            format!("isthmus serve in {}; console https://{APPLIANCE_INET}:8443/", self.dc),
        );
        Ok(password)
    }

    /// Runs the `isthmus` CLI against the lab's appliance.
    pub fn isthmus(&self, args: &[&str]) -> Result<String> {
        let bin = crate::bin("isthmus")?;
        let out = Command::new(bin).arg("--data-dir").arg(self.appliance_dir()).args(args).output()?;
        if !out.status.success() {
            bail!(
                "isthmus {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Enrols the node.
    pub fn enroll(&mut self, fingerprint: &str, token: &Path) -> Result<()> {
        let t = Instant::now();
        let out = self.isthmus(&[
            "cloud",
            "enroll",
            "cloud1",
            "--url",
            &format!("https://{CLOUD_INET}:9443"),
            "--fingerprint",
            fingerprint,
            "--token-file",
            &token.display().to_string(),
        ])?;
        self.note(
            "enrol cloud1",
            t,
            format!("{} (CSR signed by the appliance CA; mutual TLS from now on)", out.trim()),
        );
        Ok(())
    }

    /// Writes the server description, adds it and starts the source; waits
    /// until the client reaches it. Returns the boot time in seconds.
    pub fn add_and_boot_source(&mut self) -> Result<f64> {
        let t = Instant::now();
        let disk = self.work.join("web1.qcow2");
        std::fs::copy(self.image.disk(), &disk).context("copying the image to the source disk")?;
        let desc = format!(
            r#"name = "web1"
ip = "{SERVER_IP}"
check_ports = [80]

[profile]
cpus = 1
memory_mib = 256
disks = [{{ bus = "ide", unit = 0, boot = true }}]
nics = [{{ model = "e1000", mac = "{SERVER_MAC}", pci_slot = "03.0" }}]
smbios = {{ serial = "WEB1-SN-0001", manufacturer = "Isthmus Lab" }}

[source]
kind = "local-qemu"
disks = ["{}"]
taps = ["tap-web1"]
"#,
            disk.display()
        );
        let path = self.work.join("web1.toml");
        std::fs::write(&path, desc)?;
        self.isthmus(&["inventory", "add", &path.display().to_string(), "--start"])?;
        let body = self.wait_client(Duration::from_secs(180))?;
        let boot = t.elapsed().as_secs_f64();
        self.note(
            "source boots in dc",
            t,
            format!("client GET http://{SERVER_IP}/ → {}", one_line(&body)),
        );
        Ok(boot)
    }

    /// The client's HTTP GET of the server (2 s timeout).
    pub fn client_get(&self) -> Result<String> {
        let out = self
            .ns
            .exec(&self.cl, &["curl", "-s", "--max-time", "2", &format!("http://{SERVER_IP}/")])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the client gets an answer.
    pub fn wait_client(&self, timeout: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            if let Ok(b) = self.client_get() {
                if b.contains("hostname=") {
                    return Ok(b);
                }
            }
            if t.elapsed() > timeout {
                bail!("the client got no answer from {SERVER_IP} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The MAC in the client's ARP (neighbour) table for the server's IP.
    pub fn client_arp_mac(&self) -> Option<String> {
        let out = self.ns.exec(&self.cl, &["ip", "neigh", "show", SERVER_IP]).ok()?;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = s.split_whitespace();
        while let Some(w) = it.next() {
            if w == "lladdr" {
                return it.next().map(str::to_string);
            }
        }
        None
    }

    /// Starts polling the server from the client every 200 ms.
    pub fn start_poller(&self) -> Result<Proc> {
        let log = self.work.join("poll.log");
        let script = format!(
            "while true; do if curl -s -o /dev/null --max-time 1 http://{SERVER_IP}/; then echo \"$(date +%s.%N) ok\"; else echo \"$(date +%s.%N) fail\"; fi; sleep 0.2; done"
        );
        Proc::spawn("client poller", &self.cl, &["sh", "-c", &script], &[], &log)
    }

    /// Starts a capture on the appliance's side of the internet link.
    pub fn start_capture(&self) -> Result<(Proc, PathBuf)> {
        let pcap = self.work.join("internet.pcap");
        let p = Proc::spawn(
            "tcpdump",
            &self.dc,
            &["tcpdump", "-i", "inet0", "-s", "0", "-U", "-w", &pcap.display().to_string()],
            &[],
            &self.work.join("tcpdump.log"),
        )?;
        std::thread::sleep(Duration::from_millis(700));
        Ok((p, pcap))
    }

    /// Moves web1 to cloud1; returns the move as JSON (with its timeline).
    pub fn move_server(&mut self) -> Result<serde_json::Value> {
        let bin = crate::bin("isthmus")?;
        let out = Command::new(bin)
            .arg("--data-dir")
            .arg(self.appliance_dir())
            .args(["move", "web1", "--to", "cloud1", "--json"])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("null"))
            .with_context(|| format!("move printed no JSON: {stdout} {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok(v)
    }

    /// The moved guest's serial console log on the cloud node.
    pub fn cloud_serial(&self) -> String {
        std::fs::read_to_string(self.node_dir().join("guests/web1/serial.log")).unwrap_or_default()
    }

    /// The source guest's serial console log in the data center.
    pub fn source_serial(&self) -> String {
        std::fs::read_to_string(self.appliance_dir().join("sources/web1/serial.log")).unwrap_or_default()
    }

    /// curl inside the data-center namespace against the console.
    pub fn console_curl(&self, args: &[&str]) -> Result<std::process::Output> {
        let ca = self.appliance_dir().join("pki/ca.pem");
        let mut v = vec!["ip", "netns", "exec", &self.dc, "curl", "-s", "--cacert"];
        let ca_s = ca.display().to_string();
        v.push(&ca_s);
        v.extend_from_slice(args);
        Command::new(v[0]).args(&v[1..]).output().context("curl")
    }

    /// curl inside the cloud namespace against the node's API, without a client certificate.
    pub fn node_curl_anonymous(&self, path: &str) -> Result<std::process::Output> {
        let url = format!("https://{CLOUD_INET}:9443{path}");
        Command::new("ip")
            .args(["netns", "exec", &self.cloud, "curl", "-sk", "--max-time", "5", &url])
            .output()
            .context("curl")
    }

    /// The appliance's log.
    pub fn appliance_log(&self) -> String {
        self.appliance.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// The node's log.
    pub fn node_log(&self) -> String {
        self.node.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut p) = self.appliance.take() {
            p.stop();
        }
        if let Some(mut p) = self.node.take() {
            p.stop();
        }
        // QEMUs daemonize; end them by their PID files.
        for dir in [self.appliance_dir().join("sources"), self.node_dir().join("guests")] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    kill_pidfile(&e.path().join("qemu.pid"));
                }
            }
        }
        if std::env::var_os("ISTHMUS_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        } else {
            eprintln!("lab kept at {}", self.work.display());
        }
        // Namespaces go when `self.ns` drops (after this).
    }
}

/// Writes `<work>/<name>.toml`, an inventory server `name` at `ip` with one
/// e1000 NIC `mac` at 03.0 and the disk `<work>/<name>.qcow2` on TAP
/// `tap-<name>`: a host the LCG tests carry on the LAN (its MAC carried, its
/// IP announced) without ever starting it. Returns the file's path.
pub fn write_carried_host(work: &Path, name: &str, ip: &str, mac: &str) -> Result<PathBuf> {
    let path = work.join(format!("{name}.toml"));
    let desc = format!(
        r#"name = "{name}"
ip = "{ip}"

[profile]
cpus = 1
memory_mib = 128
disks = [{{ bus = "ide", unit = 0, boot = true }}]
nics = [{{ model = "e1000", mac = "{mac}", pci_slot = "03.0" }}]

[source]
kind = "local-qemu"
disks = ["{}"]
taps = ["tap-{name}"]
"#,
        work.join(format!("{name}.qcow2")).display()
    );
    std::fs::write(&path, desc).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `isthmus serve` command line of the lab's appliance: data in
/// `data_dir`, LAN port `lanB`, console and bridge on [`APPLIANCE_INET`].
pub fn appliance_serve_args(bin: &Path, data_dir: &Path) -> Vec<String> {
    vec![
        bin.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "serve".into(),
        "--lan".into(),
        "lanB".into(),
        "--console-listen".into(),
        format!("{APPLIANCE_INET}:8443"),
        "--bridge-listen".into(),
        format!("{APPLIANCE_INET}:51820"),
    ]
}

/// Outage as the client saw it: the longest run of failed polls between two
/// successes, in seconds (from the poller's log).
pub fn outage_from_poll_log(text: &str) -> Option<f64> {
    let mut last_ok: Option<f64> = None;
    let mut worst: f64 = 0.0;
    let mut seen_fail = false;
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(t), Some(r)) = (it.next().and_then(|t| t.parse::<f64>().ok()), it.next()) else {
            continue;
        };
        if r == "ok" {
            if let (Some(lo), true) = (last_ok, seen_fail) {
                worst = worst.max(t - lo);
            }
            last_ok = Some(t);
            seen_fail = false;
        } else {
            seen_fail = true;
        }
    }
    last_ok.map(|_| round(worst))
}

/// Seconds the move's disk copy took, from its timeline (`copy-disks`
/// started → `…: ok in …`); 0 when the timeline holds no finished copy.
pub fn copy_seconds(moved: &serde_json::Value) -> f64 {
    let mut copy_s = 0.0;
    let mut started: Option<f64> = None;
    for e in moved["events"].as_array().cloned().unwrap_or_default() {
        let (ts, st, msg) = (
            e["t_s"].as_f64().unwrap_or(0.0),
            e["step"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
        );
        if st == "copy-disks" && msg.ends_with("started") {
            started = Some(ts);
        }
        if st == "copy-disks" && msg.contains(": ok in") {
            copy_s = round(ts - started.unwrap_or(ts));
        }
    }
    copy_s
}

/// Value of `key=` in the server's HTTP answer or facts line.
pub fn fact(text: &str, key: &str) -> Option<String> {
    text.split(['\n', ' '])
        .find_map(|kv| kv.trim().strip_prefix(&format!("{key}=")).map(|v| v.trim().to_string()))
}

fn one_line(body: &str) -> String {
    body.lines().filter(|l| !l.starts_with("client=")).collect::<Vec<_>>().join(" ")
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn rand16() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b)
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    Ok(())
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::io::Result<std::process::Output>;
}
impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::io::Result<std::process::Output> {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut s) = child.stdin.take() {
            s.write_all(input)?;
        }
        child.wait_with_output()
    }
}

/// Checks the lab's prerequisites and says what is missing.
pub fn preflight() -> Result<()> {
    if !nix_is_root() {
        bail!("the lab needs root (network namespaces, TAP devices); run as root");
    }
    for tool in ["ip", "qemu-system-x86_64", "qemu-img", "curl", "tcpdump"] {
        if run(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            bail!("{tool} is missing: run `make deps` (tests/setup/deps.sh)");
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    run(&["id", "-u"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// What the skeleton's move measured and checked.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The client reached the server at the same IP after the move.
    pub same_ip: bool,
    /// The client's ARP entry showed the same MAC before and after, and the
    /// guest itself reports that MAC.
    pub same_mac: bool,
    /// The guest's root disk has the same kernel name in the cloud.
    pub same_disk_name: bool,
    /// Accelerator the cloud node used.
    pub accel: String,
    /// Source boot to first answer, seconds.
    pub boot_s: f64,
    /// Disk copy, seconds.
    pub copy_s: f64,
    /// Longest outage the client saw, seconds.
    pub outage_s: f64,
    /// The client's HTTP answer before the move.
    #[serde(skip)]
    pub before: String,
    /// …and after.
    #[serde(skip)]
    pub after: String,
    /// ARP MAC before / after.
    #[serde(skip)]
    pub arp: (Option<String>, Option<String>),
    /// The moved guest's facts line from its serial console.
    #[serde(skip)]
    pub cloud_facts: String,
    /// The source guest's facts line.
    #[serde(skip)]
    pub source_facts: String,
    /// Final move record with its timeline.
    #[serde(skip)]
    pub moved: serde_json::Value,
    /// Bytes captured on the internet link during the move.
    #[serde(skip)]
    pub capture: Vec<u8>,
    /// Admin password of the console.
    #[serde(skip)]
    pub password: String,
}

/// Brings everything up and moves web1 to cloud1, recording the timeline.
pub fn run_skeleton(lab: &mut Lab) -> Result<Report> {
    let (fp, token) = lab.start_node()?;
    let password = lab.start_appliance()?;
    lab.enroll(&fp, &token)?;
    let boot_s = lab.add_and_boot_source()?;
    let source_facts = lab
        .source_serial()
        .lines()
        .find(|l| l.contains("ISTHMUS-FACTS"))
        .unwrap_or_default()
        .to_string();
    let before = lab.client_get()?;
    let arp_before = lab.client_arp_mac();

    let t = Instant::now();
    let (mut cap, pcap) = lab.start_capture()?;
    let mut poller = lab.start_poller()?;
    std::thread::sleep(Duration::from_millis(600));
    let moved = lab.move_server()?;
    let step = moved["move"]["step"].as_str().unwrap_or_default().to_string();
    let copy_s = copy_seconds(&moved);
    lab.note(
        &format!("move web1 → cloud1 ({step})"),
        t,
        moved["move"]["failure"]
            .as_str()
            .map(|f| format!("failure: {f}"))
            .unwrap_or_else(|| "see the move's own timeline above".into()),
    );
    if step != "done" {
        bail!("the move ended {step}: {}", moved["move"]["failure"]);
    }
    let t = Instant::now();
    // Forget what the client learnt before the move, so the ARP entry read
    // below comes from a fresh resolution through the bridge.
    lab.ns.exec(&lab.cl, &["ip", "neigh", "flush", "dev", "vc"])?;
    let after = lab.wait_client(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(1500));
    poller.stop();
    cap.stop();
    let outage_s = outage_from_poll_log(&poller.log_text()).unwrap_or(-1.0);
    let arp_after = lab.client_arp_mac();
    let capture = std::fs::read(&pcap).unwrap_or_default();
    let cloud_facts = lab
        .cloud_serial()
        .lines()
        .find(|l| l.contains("ISTHMUS-FACTS"))
        .unwrap_or_default()
        .to_string();
    let accel = lab
        .isthmus(&["status", "--json"])
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["clouds"][0]["accel"].as_str().map(str::to_string))
        .unwrap_or_default();

    let same_ip = fact(&after, "ip").as_deref() == Some(SERVER_IP) && fact(&after, "hostname").as_deref() == Some(SERVER_HOSTNAME);
    let same_mac = arp_before.as_deref() == Some(SERVER_MAC)
        && arp_after.as_deref() == Some(SERVER_MAC)
        && fact(&after, "mac").as_deref() == Some(SERVER_MAC)
        && fact(&cloud_facts, "mac").as_deref() == Some(SERVER_MAC);
    let disk_before = fact(&before, "root_disk");
    let same_disk_name =
        disk_before.is_some() && disk_before == fact(&after, "root_disk") && disk_before == fact(&cloud_facts, "root_disk");
    lab.note(
        "client checks",
        t,
        format!(
            "after: {}; ARP {SERVER_IP} → {} (before {}); outage {outage_s:.2} s",
            one_line(&after),
            arp_after.clone().unwrap_or_default(),
            arp_before.clone().unwrap_or_default()
        ),
    );
    Ok(Report {
        same_ip,
        same_mac,
        same_disk_name,
        accel,
        boot_s: round(boot_s),
        copy_s,
        outage_s,
        before,
        after,
        arp: (arp_before, arp_after),
        cloud_facts,
        source_facts,
        moved,
        capture,
        password,
    })
}

/// True if `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_the_longest_failed_gap() {
        let log = "10.0 ok\n10.2 ok\n10.4 fail\n11.0 fail\n11.4 ok\n11.6 fail\n11.8 ok\n";
        assert_eq!(outage_from_poll_log(log), Some(1.2));
        assert_eq!(outage_from_poll_log("1.0 ok\n1.2 ok\n"), Some(0.0));
        assert_eq!(outage_from_poll_log("1.0 fail\n"), None);
        assert_eq!(outage_from_poll_log("garbage\n"), None);
    }

    #[test]
    fn facts_are_read_from_body_and_serial_line() {
        let body = "hostname=web1\nmac=52:54:00:12:34:56\nroot_disk=sda\n";
        assert_eq!(fact(body, "mac").as_deref(), Some("52:54:00:12:34:56"));
        let line = "[ 3.1] ISTHMUS-FACTS hostname=web1 mac=aa:bb:cc:dd:ee:ff root_disk=sda serial=X";
        assert_eq!(fact(line, "mac").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(fact(line, "nothing"), None);
        assert!(contains(b"abcdef", b"cde") && !contains(b"abc", b"") && !contains(b"ab", b"abc"));
    }
}
