//! `make bench-move`: how fast and how much Isthmus moves a disk, beside the
//! tools an admin would otherwise use, on the lab's "internet" link (a veth
//! pair between two network namespaces) shaped to 1 Gbit/s with `tc tbf` on
//! both ends.
//!
//! 1. `link_mbps`: iperf3 TCP from the data center to the cloud namespace.
//! 2. `copy_mbps`: `isthmus stage` (the block transfer every move uses: SHA-256,
//!    zstd, mutual-TLS streams) of a synthetic 2 GiB qcow2 with ~0.5 GiB of
//!    data to the real `isthmus-node`.
//!    data to the real `isthmus-node`, with transfer protocol 3 (the manifest
//!    in chunks, sent while the disk is still hashed).
//!    `copy_v2_mbps`: the same with protocol 2 (the whole disk hashed before
//!    the first block leaves: `ISTHMUS_TRANSFER_PROTOCOL=2`), and
//!    `copy_v1_mbps` with the sender as before protocol 2 (no prepare, zstd
//!    frames only: `ISTHMUS_TRANSFER_PROTOCOL=1`), each of an image of the
//!    same layout with other random bytes (the node would dedup the first),
//!    right after it: an A/B/C from one run.
//! 3. `rsync_mbps`: `rsync --sparse` of the same qcow2 file to an rsync daemon
//!    in the cloud namespace.
//! 4. `nbd_mbps`: `qemu-img convert` of the same image to a `qemu-nbd` export.
//! 5. `dedup_sent_ratio`: a second image from the same base with ~3% changed,
//!    staged after the base; bytes the node received ÷ allocated bytes.
//! 6. `guest_boot_s`, `outage_s`: the lab's source server boots, a client
//!    pings it every 100 ms, and it is moved (`isthmus move`) over the same
//!    shaped link.
//!
//! All rates divide the image's allocated bytes by the wall time of the copy.
//! Prints a table, then one JSON line. Root only; never part of `make test`.
//!
//! `bench_move --copy-only` runs steps 1–3 only (a quick look at the copy
//! rate beside rsync's from the same run while working on the transfer) and
//! prints one JSON line with their keys.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use isthmus_lab::netns::run;
use isthmus_lab::process::Proc;
use isthmus_lab::scenario::{self, Lab, Options, CLOUD_INET, SERVER_IP};

const MIB: u64 = 1 << 20;
/// Link rate the veth is shaped to.
const RATE: &str = "1gbit";
/// Virtual size of the synthetic image.
const VIRTUAL: u64 = 2048 * MIB;
/// Incompressible extents: (offset MiB, length MiB); 480 MiB in all.
const NOISE: [(u64, u64); 8] = [
    (1, 40),
    (64, 96),
    (300, 24),
    (512, 120),
    (900, 8),
    (1100, 64),
    (1500, 100),
    (1900, 28),
];
/// A compressible region (text-like), MiB offset and length.
const TEXT: (u64, u64) = (700, 32);

fn main() -> Result<()> {
    let copy_only = std::env::args().any(|a| a == "--copy-only");
    scenario::preflight()?;
    for tool in ["tc", "iperf3", "rsync", "qemu-nbd", "qemu-io", "ping"] {
        if run(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            bail!("{tool} is missing: run `bash tests/bench/move-deps.sh` (make bench-move does)");
        }
    }
    eprintln!("bench-move: lab namespaces, shaping the internet link to {RATE} with tbf…");
    let mut lab = Lab::up(Options {
        tag: "bm",
        ..Default::default()
    })?;
    // Both ends of the lab's own veth pair (inside its namespaces; removed with them).
    for (ns, dev) in [(lab.dc.clone(), "inet0"), (lab.cloud.clone(), "inet1")] {
        lab.ns.exec(
            &ns,
            &[
                "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", RATE, "burst", "512kb", "latency", "20ms",
            ],
        )?;
    }
    let (fp, token) = lab.start_node()?;
    lab.start_appliance()?;
    lab.enroll(&fp, &token)?;

    eprintln!("bench-move: iperf3 …");
    let link_mbps = iperf(&lab)?;

    eprintln!("bench-move: making the synthetic image …");
    let base = synthetic(&lab.work, "bench-base", 0x2545F4914F6CDD1D)?;
    let other_v2 = synthetic(&lab.work, "bench-v2", 0x9E3779B97F4A7C15)?;
    let other = synthetic(&lab.work, "bench-v1", 0xD1B54A32D192ED03)?;
    let base_len = std::fs::metadata(&base)?.len();

    eprintln!("bench-move: isthmus stage …");
    let t = Instant::now();
    let sent = stage(&lab, &base, 3)?;
    let copy_s = t.elapsed().as_secs_f64();
    eprintln!("bench-move: isthmus stage as protocol 2 …");
    let t = Instant::now();
    let sent_v2 = stage(&lab, &other_v2, 2)?;
    let copy_v2_s = t.elapsed().as_secs_f64();
    let copy_v2_mbps = mbps(sent_v2["allocated"].as_u64().unwrap_or(0), copy_v2_s);
    eprintln!("bench-move: isthmus stage as protocol 1 …");
    let t = Instant::now();
    let sent_v1 = stage(&lab, &other, 1)?;
    let copy_v1_s = t.elapsed().as_secs_f64();
    let copy_v1_mbps = mbps(sent_v1["allocated"].as_u64().unwrap_or(0), copy_v1_s);
    let allocated = sent["allocated"].as_u64().unwrap_or(0);
    let wire = sent["done"]["wire_bytes"].as_u64().unwrap_or(0);
    let copy_mbps = mbps(allocated, copy_s);
    // Where the stage's time went (read + hash, send, node verification).
    let phase = |k: &str| sent[k].as_f64().unwrap_or(-1.0);
    let (scan_s, send_s, finish_s) = (phase("scan_s"), phase("send_s"), phase("finish_s"));
    let phase_v2 = |k: &str| sent_v2[k].as_f64().unwrap_or(-1.0);
    let (scan_v2_s, send_v2_s, finish_v2_s) = (phase_v2("scan_s"), phase_v2("send_s"), phase_v2("finish_s"));

    eprintln!("bench-move: rsync --sparse …");
    let rsync_s = rsync(&lab, &base)?;
    let rsync_mbps = mbps(allocated, rsync_s);
    if copy_only {
        let json = serde_json::json!({
            "copy_mbps": r1(copy_mbps),
            "copy_v2_mbps": r1(copy_v2_mbps),
            "copy_v1_mbps": r1(copy_v1_mbps),
            "link_mbps": r1(link_mbps),
            "rsync_mbps": r1(rsync_mbps),
            "copy_link_frac": r3(pct(copy_mbps, link_mbps) / 100.0),
            "copy_rsync_frac": r3(pct(copy_mbps, rsync_mbps) / 100.0),
            "copy_s": r3(copy_s),
            "copy_scan_s": scan_s,
            "copy_send_s": send_s,
            "copy_finish_s": finish_s,
            "copy_v2_s": r3(copy_v2_s),
            "copy_v2_scan_s": scan_v2_s,
            "copy_v2_send_s": send_v2_s,
            "copy_v2_finish_s": finish_v2_s,
            "allocated_bytes": allocated,
            "wire_bytes": wire,
        });
        println!("{json}");
        return Ok(());
    }

    eprintln!("bench-move: qemu-img convert to qemu-nbd …");
    let nbd_s = nbd(&lab, &base)?;
    let nbd_mbps = mbps(allocated, nbd_s);

    eprintln!("bench-move: dedup (same base, ~3% changed) …");
    let second = changed_copy(&lab.work, &base)?;
    let sent2 = stage(&lab, &second, 3)?;
    let allocated2 = sent2["allocated"].as_u64().unwrap_or(0);
    let wire2 = sent2["done"]["wire_bytes"].as_u64().unwrap_or(0);
    let dedup_sent_ratio = if allocated2 > 0 { wire2 as f64 / allocated2 as f64 } else { -1.0 };

    eprintln!("bench-move: booting the source server and moving it over the shaped link …");
    let (guest_boot_s, outage_s, move_copy_s) = move_with_pings(&mut lab)?;

    let link_frac = if link_mbps > 0.0 { copy_mbps / link_mbps } else { 0.0 };
    println!();
    println!("link: veth between {} and {}, tbf {RATE} on both ends", lab.dc, lab.cloud);
    println!(
        "image: {} MiB virtual, {:.0} MiB allocated ({:.0} MiB qcow2 file)",
        VIRTUAL / MIB,
        allocated as f64 / MIB as f64,
        base_len as f64 / MIB as f64
    );
    println!("{:<38} {:>10} {:>10} {:>12}", "what", "seconds", "Mbit/s", "of link");
    println!("{:<38} {:>10} {:>10.0} {:>11.0}%", "iperf3 TCP (link_mbps)", "", link_mbps, 100.0);
    for (what, s, r) in [
        ("isthmus stage (copy_mbps)", copy_s, copy_mbps),
        ("isthmus stage, protocol 2 (copy_v2_mbps)", copy_v2_s, copy_v2_mbps),
        ("isthmus stage, protocol 1 (copy_v1_mbps)", copy_v1_s, copy_v1_mbps),
        ("rsync --sparse, daemon (rsync_mbps)", rsync_s, rsync_mbps),
        ("qemu-img convert → qemu-nbd (nbd_mbps)", nbd_s, nbd_mbps),
    ] {
        println!("{what:<38} {s:>10.2} {r:>10.0} {:>11.0}%", pct(r, link_mbps));
    }
    println!(
        "isthmus stage phases: scan (read + SHA-256) {scan_s:.2} s, send {send_s:.2} s ({:.0} Mbit/s; protocol 3: during the scan), node verification {finish_s:.2} s",
        mbps(allocated, send_s)
    );
    println!("protocol 2 phases: scan {scan_v2_s:.2} s, then send {send_v2_s:.2} s, node verification {finish_v2_s:.2} s");
    println!(
        "isthmus wire bytes (zstd): {:.0} MiB for {:.0} MiB allocated ({:.0}%)",
        wire as f64 / MIB as f64,
        allocated as f64 / MIB as f64,
        pct(wire as f64, allocated as f64)
    );
    println!(
        "dedup: second image {:.0} MiB allocated, node received {:.1} MiB: dedup_sent_ratio {:.3} ({} of {} blocks deduped)",
        allocated2 as f64 / MIB as f64,
        wire2 as f64 / MIB as f64,
        dedup_sent_ratio,
        sent2["done"]["blocks_deduped"],
        sent2["done"]["blocks"]
    );
    println!(
        "move of the lab server over the shaped link: source boot {guest_boot_s:.2} s, copy {move_copy_s:.2} s, outage (100 ms pings) {outage_s:.2} s"
    );
    println!(
        "targets: copy ≥ 90% of link: {}; dedup < 20%: {}; outage ≤ boot + 5 s: {}",
        yes(link_frac >= 0.9),
        yes((0.0..0.2).contains(&dedup_sent_ratio)),
        yes((0.0..=guest_boot_s + 5.0).contains(&outage_s))
    );
    let json = serde_json::json!({
        "copy_mbps": r1(copy_mbps),
        "copy_v2_mbps": r1(copy_v2_mbps),
        "copy_v1_mbps": r1(copy_v1_mbps),
        "link_mbps": r1(link_mbps),
        "rsync_mbps": r1(rsync_mbps),
        "nbd_mbps": r1(nbd_mbps),
        "copy_link_frac": r3(link_frac),
        "copy_scan_s": scan_s,
        "copy_send_s": send_s,
        "copy_finish_s": finish_s,
        "copy_v2_scan_s": scan_v2_s,
        "copy_v2_send_s": send_v2_s,
        "copy_v2_finish_s": finish_v2_s,
        "dedup_sent_ratio": r3(dedup_sent_ratio),
        "outage_s": outage_s,
        "guest_boot_s": guest_boot_s,
        "move_copy_s": move_copy_s,
        "allocated_bytes": allocated,
        "wire_bytes": wire,
        "dedup_allocated_bytes": allocated2,
        "dedup_wire_bytes": wire2,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    println!("{json}");
    Ok(())
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    }
}

fn pct(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        100.0 * a / b
    } else {
        0.0
    }
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn yes(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "NOT met"
    }
}

/// Waits until something listens on `CLOUD_INET:port` (seen from the data center).
fn wait_port(lab: &Lab, port: u16) -> Result<()> {
    let t = Instant::now();
    let probe = format!("exec 3<>/dev/tcp/{CLOUD_INET}/{port}");
    while lab.ns.exec(&lab.dc, &["bash", "-c", &probe]).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("nothing listens on {CLOUD_INET}:{port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// iperf3 TCP, data center → cloud, 5 s; megabits per second received.
fn iperf(lab: &Lab) -> Result<f64> {
    let mut server = Proc::spawn(
        "iperf3 server",
        &lab.cloud,
        &["iperf3", "-s", "--forceflush", "-B", CLOUD_INET, "-p", "5301"],
        &[],
        &lab.work.join("iperf3-server.log"),
    )?;
    // Not a bare TCP probe: iperf3 would take it for a test.
    server.wait_log("Server listening", Duration::from_secs(30))?;
    let out = lab.ns.exec(&lab.dc, &["iperf3", "-c", CLOUD_INET, "-p", "5301", "-t", "5", "-J"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .context("iperf3 JSON without end.sum_received")
}

/// A reproducible pseudo-random stream (xorshift64).
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
}

/// The synthetic base image: `VIRTUAL` bytes, incompressible extents, a
/// text-like region, holes elsewhere; converted to qcow2.
fn synthetic(work: &Path, name: &str, seed: u64) -> Result<PathBuf> {
    use std::os::unix::fs::FileExt;
    let raw = work.join(format!("{name}.raw"));
    let f = std::fs::File::create(&raw)?;
    f.set_len(VIRTUAL)?;
    let mut noise = Noise(seed);
    let mut buf = vec![0u8; MIB as usize];
    for (at, len) in NOISE {
        for m in 0..len {
            noise.fill(&mut buf);
            f.write_all_at(&buf, (at + m) * MIB)?;
        }
    }
    let mut text = Vec::with_capacity(MIB as usize);
    let mut n = 0u64;
    while text.len() < MIB as usize {
        writeln!(text, "{n:08} GET /index.html HTTP/1.1 200 1043 \"-\" \"curl/7.88\"")?;
        n += 1;
    }
    text.truncate(MIB as usize);
    for m in 0..TEXT.1 {
        f.write_all_at(&text, (TEXT.0 + m) * MIB)?;
    }
    drop(f);
    let q = work.join(format!("{name}.qcow2"));
    run(&["qemu-img", "convert", "-f", "raw", "-O", "qcow2", &s(&raw), &s(&q)])?;
    std::fs::remove_file(raw)?;
    Ok(q)
}

/// A copy of `base` with 4 × 4 MiB of new data written into it by qemu-io
/// (a server built from the same image, ~3% of its data changed).
fn changed_copy(work: &Path, base: &Path) -> Result<PathBuf> {
    let q = work.join("bench-web2.qcow2");
    std::fs::copy(base, &q)?;
    let change = work.join("bench-change.bin");
    let mut buf = vec![0u8; (4 * MIB) as usize];
    // A seed no other image of the run uses, and other bytes at each place:
    // the change must be new to the node (bench-v2's seed here made the
    // dedup figure a false 0%; one buffer written four times dedups to 4 MiB).
    let mut noise = Noise(0x5851F42D4C957F2D);
    for at in ["10M", "600M", "1000M", "1950M"] {
        noise.fill(&mut buf);
        std::fs::write(&change, &buf)?;
        let cmd = format!("write -s {} {at} 4M", change.display());
        run(&["qemu-io", "-f", "qcow2", "-c", &cmd, &s(&q)])?;
    }
    std::fs::remove_file(change)?;
    Ok(q)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `isthmus stage <image> --to cloud1 --json`, run in the data center
/// namespace (the CLI itself sends the blocks); the node's report.
/// `protocol`: the sender's transfer protocol (`ISTHMUS_TRANSFER_PROTOCOL`).
fn stage(lab: &Lab, image: &Path, protocol: u8) -> Result<serde_json::Value> {
    let bin = isthmus_lab::bin("isthmus")?;
    let dir = lab.work.join("appliance");
    let env = format!("{}={protocol}", appliance::moves::transfer::PROTOCOL_ENV);
    let mut argv = vec!["env", env.as_str()];
    let (bin, dir, image) = (s(&bin), s(&dir), s(image));
    argv.extend([bin.as_str(), "--data-dir", &dir, "stage", &image, "--to", "cloud1", "--json"]);
    let out = lab.ns.exec(&lab.dc, &argv)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("isthmus stage printed no JSON")?;
    if v["attempts"].as_u64() != Some(1) {
        eprintln!("bench-move: note: the stage took {} attempts", v["attempts"]);
    }
    Ok(v)
}

/// `rsync --sparse` of the qcow2 file to a daemon in the cloud namespace; seconds.
fn rsync(lab: &Lab, image: &Path) -> Result<f64> {
    let dst = lab.work.join("rsync-dst");
    std::fs::create_dir_all(&dst)?;
    let conf = lab.work.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\npid file = {}\n[bench]\npath = {}\nread only = no\nuid = root\ngid = root\n",
            lab.work.join("rsyncd.pid").display(),
            dst.display()
        ),
    )?;
    let _daemon = Proc::spawn(
        "rsync daemon",
        &lab.cloud,
        &[
            "rsync",
            "--daemon",
            "--no-detach",
            "--config",
            &s(&conf),
            "--address",
            CLOUD_INET,
            "--port",
            "8873",
        ],
        &[],
        &lab.work.join("rsyncd.log"),
    )?;
    wait_port(lab, 8873)?;
    let t = Instant::now();
    lab.ns.exec(
        &lab.dc,
        &["rsync", "--sparse", &s(image), &format!("rsync://{CLOUD_INET}:8873/bench/")],
    )?;
    let secs = t.elapsed().as_secs_f64();
    let got = std::fs::metadata(dst.join(image.file_name().unwrap_or_default()))?.len();
    if got != std::fs::metadata(image)?.len() {
        bail!("rsync copied {got} bytes, not the whole file");
    }
    std::fs::remove_dir_all(&dst)?;
    Ok(secs)
}

/// `qemu-img convert` of the image to a raw `qemu-nbd` export in the cloud
/// namespace; seconds. Checks the copy with `qemu-img compare`.
fn nbd(lab: &Lab, image: &Path) -> Result<f64> {
    let dst = lab.work.join("nbd-dst.raw");
    run(&["qemu-img", "create", "-q", "-f", "raw", &s(&dst), &VIRTUAL.to_string()])?;
    let mut server = Proc::spawn(
        "qemu-nbd",
        &lab.cloud,
        &[
            "qemu-nbd",
            "-f",
            "raw",
            "-b",
            CLOUD_INET,
            "-p",
            "10809",
            "-x",
            "bench",
            "-t",
            &s(&dst),
        ],
        &[],
        &lab.work.join("qemu-nbd.log"),
    )?;
    wait_port(lab, 10809)?;
    let t = Instant::now();
    lab.ns.exec(
        &lab.dc,
        &[
            "qemu-img",
            "convert",
            "-n",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &s(image),
            &format!("nbd://{CLOUD_INET}:10809/bench"),
        ],
    )?;
    let secs = t.elapsed().as_secs_f64();
    server.stop();
    run(&["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", &s(image), &s(&dst)]).context("the NBD copy differs from the image")?;
    std::fs::remove_file(dst)?;
    Ok(secs)
}

/// Boots the lab's source server, pings it every 100 ms from the client and
/// moves it to the cloud over the shaped link: (boot s, outage s, copy s).
fn move_with_pings(lab: &mut Lab) -> Result<(f64, f64, f64)> {
    let boot_s = lab.add_and_boot_source()?;
    let script = format!(
        "while true; do if ping -c 1 -W 1 -q {SERVER_IP} >/dev/null 2>&1; then echo \"$(date +%s.%N) ok\"; else echo \"$(date +%s.%N) fail\"; fi; sleep 0.1; done"
    );
    let log = lab.work.join("ping.log");
    let mut pinger = Proc::spawn("client pinger", &lab.cl, &["sh", "-c", &script], &[], &log)?;
    std::thread::sleep(Duration::from_millis(800));
    let moved = lab.move_server()?;
    let step = moved["move"]["step"].as_str().unwrap_or_default().to_string();
    if step != "done" {
        bail!("the move ended {step}: {}", moved["move"]["failure"]);
    }
    let copy_s = scenario::copy_seconds(&moved);
    lab.wait_client(Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(1500));
    pinger.stop();
    let outage = scenario::outage_from_poll_log(&pinger.log_text()).unwrap_or(-1.0);
    lab.check_only_cloud_copy_runs()?;
    Ok((r3(boot_s), outage, r3(copy_s)))
}
