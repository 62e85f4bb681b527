//! The real effects of each move step. Each is idempotent: running it again
//! after a crash finds the work done and says so.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::api::{GuestState, StartGuest};

use crate::app::App;
use crate::model::{Location, MoveRecord, ServerRecord, Step};
use crate::moves::executor::{Effects, StepResult};
use crate::moves::transfer;
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
        match step {
            Step::Plan => {
                server.profile.validate().map_err(e)?;
                let client = app.cloud_client(&mv.to).map_err(e)?;
                let node = self.rt.block_on(client.node()).map_err(e)?;
                Ok(format!(
                    "{} reachable over mutual TLS; its guests run under {} ({})",
                    mv.to, node.accel, node.accel_reason
                ))
            }
            Step::StopSource => app.source.stop(&server, STOP_TIMEOUT).map_err(e),
            Step::CopyDisks => self.copy_disks(&server, mv, log),
            Step::StartTarget => {
                let client = app.cloud_client(&mv.to).map_err(e)?;
                if let Some(g) = self.rt.block_on(client.guest(&server.name)).map_err(e)? {
                    if g.state == GuestState::Running {
                        return Ok(format!("already running on {} (pid {:?})", mv.to, g.pid));
                    }
                }
                let req = StartGuest {
                    name: server.name.clone(),
                    profile: server.profile.clone(),
                    disk_ids: mv.target_disk_ids.clone(),
                };
                let g = self.rt.block_on(client.start_guest(&req)).map_err(e)?;
                let nic = server
                    .profile
                    .nics
                    .first()
                    .map(|n| format!("{:?} {}", n.model, n.mac))
                    .unwrap_or_default();
                let disk = server.profile.disks.first().map(|d| format!("{:?}", d.bus)).unwrap_or_default();
                Ok(format!(
                    "started on {} under {} with NIC {nic}, disk bus {disk}, TAPs {:?}",
                    mv.to, g.accel, g.taps
                ))
            }
            Step::SwitchL2 => {
                app.lcg.carry(&mv.to, &server.macs()).map_err(e)?;
                Ok(format!("LCG carries {} over the encrypted bridge to {}", fmt_macs(&server), mv.to))
            }
            Step::Verify => verify_answers(&server, log),
            Step::Commit => {
                let mut s = server.clone();
                s.location = Location::Cloud { name: mv.to.clone() };
                app.store.put(&SERVERS, &s.name, &s).map_err(e)?;
                Ok(format!("{} now runs in {}", s.name, mv.to))
            }
            Step::RollbackL2 => {
                app.lcg.release(&mv.to, &server.macs()).map_err(e)?;
                Ok(format!("LCG no longer carries {}", fmt_macs(&server)))
            }
            Step::RollbackTarget => {
                let client = app.cloud_client(&mv.to).map_err(e)?;
                match self.rt.block_on(client.guest(&server.name)).map_err(e)? {
                    None => Ok("no copy runs on the target".into()),
                    Some(g) if g.state == GuestState::Stopped => Ok("target copy is stopped; kept for inspection".into()),
                    Some(_) => {
                        self.rt.block_on(client.stop_guest(&server.name)).map_err(e)?;
                        Ok("target copy stopped; kept for inspection".into())
                    }
                }
            }
            Step::RollbackSource => {
                let mut s = server.clone();
                if s.location != Location::Dc {
                    s.location = Location::Dc;
                    app.store.put(&SERVERS, &s.name, &s).map_err(e)?;
                }
                let pid = app.source.start(&s).map_err(e)?;
                log(format!("source started again (QEMU pid {pid}); waiting for it to answer"));
                verify_answers(&s, log)
            }
            Step::Done | Step::RolledBack => Ok(String::new()),
        }
    }
}

impl RealEffects {
    fn copy_disks(&self, server: &ServerRecord, mv: &mut MoveRecord, log: &mut dyn FnMut(String)) -> StepResult {
        let crate::model::Source::LocalQemu { disks, .. } = &server.source;
        let client = self.app.cloud_client(&mv.to).map_err(e)?;
        let work = self.app.data_dir.join("transfer");
        let opts = transfer::Options::default();
        let mut ids = Vec::new();
        let mut digests = Vec::new();
        let (mut data, mut wire) = (0u64, 0u64);
        let t = Instant::now();
        for (i, path) in disks.iter().enumerate() {
            let id = format!("{}-{}-d{i}", mv.id, server.name.to_ascii_lowercase().replace('_', "-"));
            let app = self.app.clone();
            let move_id = mv.id.clone();
            let progress: transfer::Progress = Arc::new(move |done: u64, total: u64| {
                app.copy_progress
                    .lock()
                    .expect("progress lock")
                    .insert(move_id.clone(), (done, total));
            });
            // The timeline gets the copy's progress every PROGRESS_EVERY.
            let sending = transfer::send_disk(&client, &id, path, &work, &opts, progress);
            let got = self
                .rt
                .block_on(async {
                    tokio::pin!(sending);
                    let started = Instant::now();
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
                    loop {
                        tokio::select! {
                            r = &mut sending => break r,
                            _ = tick.tick() => {
                                let p = self.app.copy_progress.lock().expect("progress lock").get(&mv.id).copied();
                                if let Some((done, total)) = p {
                                    log(progress_line(i, done, total, started.elapsed()));
                                }
                            }
                        }
                    }
                })
                .map_err(e)?;
            let d = &got.done;
            log(format!(
                "disk {i} ({}, {}) → {id}: {:.1} MiB allocated, {} data blocks: {} sent ({:.1} MiB compressed), {} already on the node, {} resumed; digest {}… verified by the target{}",
                path.display(),
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
            "{} disk(s), {:.1} MiB of data in {secs:.1} s ({:.1} MiB/s), {:.1} MiB on the wire (zstd, only blocks the node lacked), mutual TLS, SHA-256 per block and a whole-disk digest checked end to end",
            disks.len(),
            data as f64 / 1048576.0,
            data as f64 / 1048576.0 / secs.max(0.001),
            wire as f64 / 1048576.0
        ))
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

fn fmt_macs(s: &ServerRecord) -> String {
    s.macs().iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
}

/// Waits until the server answers at its IP on its check ports, from the
/// appliance's own LAN address (so through the LCG once the MAC is carried),
/// and checks the MAC the appliance's ARP table holds for that IP.
fn verify_answers(s: &ServerRecord, log: &mut dyn FnMut(String)) -> StepResult {
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
