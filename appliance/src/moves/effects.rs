//! The real effects of each move step. Each is idempotent: running it again
//! after a crash finds the work done and says so.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::model::{Location, MoveRecord, ServerRecord, Step};
use crate::moves::executor::{Effects, StepResult};
use crate::moves::{dirty, pull, rehearse, route, transfer};
use crate::store::SERVERS;

/// How long the source may take to shut down on the ACPI button.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to answer after it starts (TCG boots are slow).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

/// Effects against the real source host, cloud node and LCG.
pub struct RealEffects {
    app: Arc<App>,
    rt: tokio::runtime::Handle,
}

impl RealEffects {
    /// Effects of `app`, running async calls on `rt`.
    pub fn new(app: Arc<App>, rt: tokio::runtime::Handle) -> Self {
        RealEffects { app, rt }
    }
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

impl Effects for RealEffects {
    fn run(&mut self, step: Step, mv: &mut MoveRecord, log: &mut dyn FnMut(String)) -> StepResult {
        let app = self.app.clone();
        let server = app.server(&mv.server).map_err(e)?;
        let (from, to) = (mv.from.clone(), route::target(mv));
        match step {
            Step::Plan => {
                server.profile.validate().map_err(e)?;
                if from == to {
                    return Err(format!("{} runs in {to} already", server.name));
                }
                let mut said = Vec::new();
                for at in [&from, &to] {
                    if let Location::Cloud { name } = at {
                        let client = app.cloud_client(name).map_err(e)?;
                        let node = self.rt.block_on(client.node()).map_err(e)?;
                        said.push(format!(
                            "{name} reachable over mutual TLS; its guests run under {} ({})",
                            node.accel, node.accel_reason
                        ));
                    }
                }
                Ok(format!("{from} → {to}: {}", said.join("; ")))
            }
            Step::PreCopy => self.pre_copy(&server, mv, log),
            Step::StopSource => route::stop(&app, &self.rt, &server, &from, STOP_TIMEOUT),
            Step::CopyDisks => self.copy_disks(&server, mv, log),
            Step::Rehearse => crate::moves::rehearse::boot_isolated(&app, &self.rt, &server, mv, log),
            Step::StartTarget => route::start(&app, &self.rt, &server, &to, &mv.target_disk_ids),
            Step::SwitchL2 => route::switch_l2(&app, &server, &from, &to),
            Step::Verify => verify_answers(&server, log),
            Step::Commit => {
                let mut s = match to {
                    Location::Dc => route::with_dc_disks(&server, &mv.target_disk_ids),
                    Location::Cloud { .. } => server.clone(),
                };
                s.location = to.clone();
                app.store.put(&SERVERS, &s.name, &s).map_err(e)?;
                if let Location::Cloud { name } = &from {
                    // The stopped copy must not hold the name on that node;
                    // its disks stay (and feed the node's block index).
                    let client = app.cloud_client(name).map_err(e)?;
                    self.rt.block_on(client.delete_guest(&s.name)).map_err(e)?;
                }
                Ok(format!("{} now runs in {to}", s.name))
            }
            Step::RollbackL2 => {
                let said = route::switch_l2(&app, &server, &to, &from)?;
                Ok(format!("MAC back where the source runs: {said}"))
            }
            Step::RollbackTarget => {
                let said = route::stop(&app, &self.rt, &server, &to, STOP_TIMEOUT)?;
                Ok(format!("{said}; the target copy is kept for inspection"))
            }
            Step::RollbackSource => {
                let mut s = server.clone();
                if s.location != from {
                    s.location = from.clone();
                    app.store.put(&SERVERS, &s.name, &s).map_err(e)?;
                }
                let disks = route::disks_at(&app, &s, &from)?;
                let said = route::start(&app, &self.rt, &s, &from, &disks)?;
                log(format!("source {said}; waiting for it to answer"));
                verify_answers(&s, log)
            }
            Step::Done | Step::RolledBack | Step::Rehearsed => Ok(String::new()),
        }
    }
}

impl RealEffects {
    /// Copies every disk from where the server ran to where it goes: a
    /// data-center image is sent block by block; a cloud disk is pulled
    /// (to the data-center image it becomes, or to a relay file the
    /// appliance sends on to the other cloud).
    fn copy_disks(&self, server: &ServerRecord, mv: &mut MoveRecord, log: &mut dyn FnMut(String)) -> StepResult {
        let work = self.app.data_dir.join("transfer");
        if mv.rehearse {
            let sources = route::disks_at(&self.app, server, &mv.from)?;
            // The source keeps running: send a still copy of each disk.
            let copies = rehearse::still_copies(&work, mv, &sources, log)?;
            let paths: Vec<String> = copies.iter().map(|c| c.path().display().to_string()).collect();
            // The still copies are removed when `copies` drops.
            return self.copy_disks_from(&route::with_dc_disks(server, &paths), mv, &work, log);
        }
        self.copy_disks_from(server, mv, &work, log)
    }

    /// [`Self::copy_disks`] reading the data-center disks `server` names.
    fn copy_disks_from(
        &self,
        server: &ServerRecord,
        mv: &mut MoveRecord,
        work: &std::path::Path,
        log: &mut dyn FnMut(String),
    ) -> StepResult {
        let (from, to) = (mv.from.clone(), route::target(mv));
        let sources = route::disks_at(&self.app, server, &from)?;
        let opts = transfer::Options::default();
        let mut ids = Vec::new();
        let mut digests = Vec::new();
        let (mut data, mut wire) = (0u64, 0u64);
        let t = Instant::now();
        for (i, src) in sources.iter().enumerate() {
            // What the disk is read from locally (a relay file is removed after).
            let (local, relay) = match &from {
                Location::Dc => (PathBuf::from(src), None),
                Location::Cloud { name } => {
                    let dest = match &to {
                        Location::Dc => route::dc_disk_path(&self.app, mv, i),
                        Location::Cloud { .. } => work.join("relay").join(format!("{src}.raw")),
                    };
                    let client = self.app.cloud_client(name).map_err(e)?;
                    let pulling = pull::pull_disk(&client, src, &dest, opts.streams, self.progress(mv));
                    let p = self.with_progress(i, mv, pulling, log).map_err(e)?;
                    log(format!(
                        "disk {i}: {src} on {name} → {}: {} data blocks, {} fetched ({:.1} MiB compressed), {} already here{}; digest {}… verified",
                        dest.display(),
                        p.blocks,
                        p.fetched,
                        p.wire_bytes as f64 / 1048576.0,
                        p.kept,
                        if p.attempts > 1 { format!(" after {} attempts", p.attempts) } else { String::new() },
                        &p.digest[..16]
                    ));
                    wire += p.wire_bytes;
                    if to == Location::Dc {
                        data += p.blocks * proto::transfer::BLOCK_SIZE;
                        ids.push(dest.display().to_string());
                        digests.push(p.digest);
                        continue;
                    }
                    (dest.clone(), Some(dest))
                }
            };
            let Location::Cloud { name } = &to else {
                return Err("a move from the data center to the data center copies nothing".into());
            };
            let id = route::cloud_disk_id(mv, server, i);
            let client = self.app.cloud_client(name).map_err(e)?;
            let sending = transfer::send_disk(&client, &id, &local, work, &opts, self.progress(mv));
            let got = self.with_progress(i, mv, sending, log).map_err(e)?;
            if let Some(r) = relay {
                let _ = std::fs::remove_file(r);
            }
            let d = &got.done;
            log(format!(
                "disk {i} ({}, {}) → {id} on {name}: {:.1} MiB allocated, {} data blocks: {} sent ({:.1} MiB compressed), {} already on the node, {} resumed; digest {}… verified by the target{}",
                local.display(),
                got.format,
                got.allocated as f64 / 1048576.0,
                d.blocks,
                d.blocks_sent,
                d.wire_bytes as f64 / 1048576.0,
                d.blocks_deduped,
                d.blocks_resumed,
                &d.digest[..16],
                if got.attempts > 1 { format!(" after {} attempts", got.attempts) } else { String::new() }
            ));
            data += got.data_bytes;
            wire += d.wire_bytes;
            ids.push(id);
            digests.push(d.digest.clone());
        }
        mv.target_disk_ids = ids;
        mv.disk_digests = digests;
        let secs = t.elapsed().as_secs_f64();
        Ok(format!(
            "{from} → {to}: {} disk(s), {:.1} MiB of data in {secs:.1} s ({:.1} MiB/s), {:.1} MiB on the wire (zstd, only blocks the receiver lacked), mutual TLS, SHA-256 per block and a whole-disk digest checked end to end",
            sources.len(),
            data as f64 / 1048576.0,
            data as f64 / 1048576.0 / secs.max(0.001),
            wire as f64 / 1048576.0
        ))
    }

    /// While a data-center source still runs: copy its disks to the target
    /// cloud, then again (only changed blocks cross: the node keeps what the
    /// round before delivered) until a round changes little, so that
    /// [`Step::CopyDisks`] after the stop sends only the last delta. What a
    /// running disk yields may be torn; the copy after the stop is the one
    /// verified and used. A failed round is logged, never fatal. Sources in a
    /// cloud are not pre-copied (their node reads disks of stopped guests only).
    fn pre_copy(&self, server: &ServerRecord, mv: &mut MoveRecord, log: &mut dyn FnMut(String)) -> StepResult {
        let (Location::Dc, Location::Cloud { name }) = (&mv.from, route::target(mv)) else {
            return Ok("the source runs in a cloud: its disks are copied once it stops".into());
        };
        if !self.app.source.is_running(server) {
            return Ok("the source is not running: nothing changes under the copy after the stop".into());
        }
        let sources = route::disks_at(&self.app, server, &Location::Dc)?;
        let client = self.app.cloud_client(&name).map_err(e)?;
        let work = self.app.data_dir.join("transfer");
        // One attempt per round: a block the guest changed between the scan
        // and its send is refused by the node (its hash is not the
        // manifest's); the next round scans again, and the node keeps what
        // arrived.
        let opts = transfer::Options {
            attempts: 1,
            ..transfer::Options::default()
        };
        let keys: Vec<String> = (0..sources.len()).map(|i| route::cloud_disk_id(mv, server, i)).collect();
        let t = Instant::now();
        let mut rounds = Vec::new();
        for round in 1..=PRE_COPY_ROUNDS {
            let t_round = Instant::now();
            // QEMU dirty bitmaps (dirty.rs): the first round starts them
            // before it reads; later rounds read only what they marked.
            let mut tracked = dirty::Tracked::start(&self.app, server, &keys, log);
            let mut r = dirty::PreCopyRound {
                round,
                ..Default::default()
            };
            for (i, src) in sources.iter().enumerate() {
                let id = &keys[i];
                let path = std::path::Path::new(src);
                let sent = match tracked.as_mut() {
                    Some(tr) => match tr.scan_path(i, path, &work, log) {
                        Ok((view, scanned)) => {
                            let sending = dirty::send::send_manifest(&client, id, view, path, &scanned.manifest, &opts, self.progress(mv));
                            self.with_progress(i, mv, sending, log)
                                .map(|d| (d.done, d.allocated, scanned.scanned_bytes, scanned.kind))
                                .map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    None => {
                        let sending = transfer::send_disk(&client, id, path, &work, &opts, self.progress(mv));
                        self.with_progress(i, mv, sending, log)
                            .map(|got| (got.done, got.allocated, got.allocated, dirty::ScanKind::Full))
                            .map_err(|e| e.to_string())
                    }
                };
                match sent {
                    Ok((done, allocated, scanned, kind)) => {
                        log(format!(
                            "pre-copy round {round}, disk {i} → {id}: {:.1} MiB read ({kind}) of {:.1} MiB allocated; {} of {} data blocks sent ({:.1} MiB compressed), {} already on the node",
                            scanned as f64 / 1048576.0,
                            allocated as f64 / 1048576.0,
                            done.blocks_sent,
                            done.blocks,
                            done.wire_bytes as f64 / 1048576.0,
                            done.blocks_deduped
                        ));
                        r.scanned_bytes += scanned;
                        r.allocated_bytes += allocated;
                        r.blocks_sent += done.blocks_sent;
                        r.bytes_sent += done.wire_bytes;
                        r.scans.push(kind);
                    }
                    Err(err) => {
                        log(format!(
                            "pre-copy round {round}, disk {i}: {err}; the running guest changed blocks under the copy: the next round (or the copy after the stop) scans again, the node keeps what arrived"
                        ));
                        r.error = Some(format!("disk {i}: {err}"));
                    }
                }
            }
            drop(tracked);
            r.took_ms = t_round.elapsed().as_millis() as u64;
            let settled = r.error.is_none() && r.blocks_sent <= PRE_COPY_SETTLED_BLOCKS;
            rounds.push(r.blocks_sent);
            mv.pre_copy.push(r);
            if settled {
                break;
            }
        }
        // The copy after the stop reads the stopped disks whole: the
        // bitmaps have no use left (they would die with QEMU anyway).
        dirty::forget(&self.app, server, &keys);
        hold_before_stop(log);
        Ok(format!(
            "{} round(s) in {:.1} s while the source ran, blocks sent per round {rounds:?}; the copy after the stop sends only what changed since",
            rounds.len(),
            t.elapsed().as_secs_f64()
        ))
    }

    /// Progress of a copy for the console and the CLI's bar.
    fn progress(&self, mv: &MoveRecord) -> transfer::Progress {
        let app = self.app.clone();
        let move_id = mv.id.clone();
        Arc::new(move |done: u64, total: u64| {
            app.copy_progress
                .lock()
                .expect("progress lock")
                .insert(move_id.clone(), (done, total));
        })
    }

    /// Runs a copy of disk `i` to its end, adding its progress to the
    /// timeline every [`PROGRESS_EVERY`].
    fn with_progress<T>(&self, i: usize, mv: &MoveRecord, copy: impl std::future::Future<Output = T>, log: &mut dyn FnMut(String)) -> T {
        self.rt.block_on(async {
            tokio::pin!(copy);
            let started = Instant::now();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                tokio::select! {
                    r = &mut copy => break r,
                    _ = tick.tick() => {
                        let p = self.app.copy_progress.lock().expect("progress lock").get(&mv.id).copied();
                        if let Some((done, total)) = p {
                            log(progress_line(i, done, total, started.elapsed()));
                        }
                    }
                }
            }
        })
    }
}

/// Most pre-copy rounds (the first is the full copy).
const PRE_COPY_ROUNDS: usize = 3;
/// A pre-copy round that sent at most this many blocks ends the pre-copy.
const PRE_COPY_SETTLED_BLOCKS: u64 = 8;

/// Environment variable of a lab test hook: after the pre-copy, wait (up to
/// 5 min) until the file it names exists, so that a test can write into the
/// running source between the first copy and the cutover.
pub const HOLD_BEFORE_STOP_ENV: &str = "ISTHMUS_TEST_HOLD_BEFORE_STOP";

fn hold_before_stop(log: &mut dyn FnMut(String)) {
    let Some(path) = std::env::var_os(HOLD_BEFORE_STOP_ENV).map(PathBuf::from) else {
        return;
    };
    log(format!(
        "test hook {HOLD_BEFORE_STOP_ENV}: holding the cutover until {} exists",
        path.display()
    ));
    let t = Instant::now();
    while !path.exists() && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How often a running copy adds its progress to the timeline.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// "disk 0: 120.0/400.0 MiB (30%), 12.3 MiB/s, about 23 s left".
fn progress_line(disk: usize, done: u64, total: u64, took: Duration) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let rate = mib(done) / took.as_secs_f64().max(0.001);
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let left = if rate > 0.0 {
        format!(", about {:.0} s left", mib(total.saturating_sub(done)) / rate)
    } else {
        String::new()
    };
    format!(
        "disk {disk}: {:.1}/{:.1} MiB ({pct}%), {rate:.1} MiB/s{left}",
        mib(done),
        mib(total)
    )
}

/// Waits until the server answers at its IP on its check ports, from the
/// appliance's own LAN address (so through the LCG once the MAC is carried),
/// and checks the MAC the appliance's ARP table holds for that IP.
pub fn verify_answers(s: &ServerRecord, log: &mut dyn FnMut(String)) -> StepResult {
    let Some(ip) = s.ip else {
        return Ok("no IP in the inventory; reachability not checked".into());
    };
    let ports = if s.check_ports.is_empty() { vec![] } else { s.check_ports.clone() };
    let t = Instant::now();
    let mut said_waiting = false;
    for port in &ports {
        let addr = SocketAddr::from((ip, *port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                break;
            }
            if t.elapsed() > ANSWER_TIMEOUT {
                return Err(format!("{addr} did not answer within {} s", ANSWER_TIMEOUT.as_secs()));
            }
            if !said_waiting {
                log(format!("waiting for {addr} to answer (the server is booting)"));
                said_waiting = true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let arp = arp_mac(ip);
    let want = s.macs().first().map(|m| m.to_string());
    match (&arp, &want) {
        (Some(got), Some(want)) if got != want => {
            return Err(format!(
                "{ip} answers, but with MAC {got} instead of {want}: another host holds the address"
            ))
        }
        _ => {}
    }
    Ok(format!(
        "{ip} answers on TCP {:?} after {:.1} s; ARP {ip} → {}",
        ports,
        t.elapsed().as_secs_f64(),
        arp.unwrap_or_else(|| "(no entry)".into())
    ))
}

/// The MAC the kernel's ARP table holds for `ip` (in our namespace).
fn arp_mac(ip: Ipv4Addr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&ip.to_string().as_str()) && f.get(3).is_some_and(|m| *m != "00:00:00:00:00:00")).then(|| f[3].to_string())
    })
}
