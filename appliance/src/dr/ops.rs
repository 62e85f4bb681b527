//! The real work of disaster recovery: protection rounds, the failover and
//! failback effects, the per-server lock and the daemon's refresh loop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::{App, AppError};
use crate::dr::executor::{self, DrEffects, StepResult};
use crate::dr::record::{append_event, ensure_tables, unix_now, DrRecord, DrState, DrStep, OpKind, PulledDisk, RecoveryPoint, Round, DR};
use crate::dr::rpo::Rpo;
use crate::model::{now_rfc3339, Location, MoveRecord, ServerRecord};
use crate::moves::dirty::{self, ScanKind};
use crate::moves::effects::verify_answers;
use crate::moves::{pull, rehearse, route, transfer};
use crate::store::SERVERS;

/// How long the data-center copy may take to stop at a failover (it is
/// presumed lost: a short ACPI wait, then hard).
const SOURCE_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the cloud copy may take to shut down at a failback.
const REPLICA_STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the daemon looks at the protected servers.
const LOOP_EVERY: Duration = Duration::from_secs(5);
/// Longest a request waits for a round of the same server to end.
const LOCK_WAIT: Duration = Duration::from_secs(900);

/// Holds a protected server for one round or operation (released on drop).
pub struct Busy {
    app: Arc<App>,
    key: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.app.active.lock().expect("active lock").remove(&self.key);
        self.app.copy_progress.lock().expect("progress lock").remove(&self.key);
    }
}

/// The key of `server` in the appliance's active set and copy progress
/// (shared with moves, whose keys are `m-<n>`).
pub fn busy_key(server: &str) -> String {
    format!("dr/{server}")
}

/// Takes `server` unless a round or operation holds it.
pub fn try_lock(app: &Arc<App>, server: &str) -> Option<Busy> {
    let key = busy_key(server);
    app.active
        .lock()
        .expect("active lock")
        .insert(key.clone())
        .then(|| Busy { app: app.clone(), key })
}

/// Takes `server`, waiting up to `wait` for a running round to end.
pub fn lock(app: &Arc<App>, server: &str, wait: Duration) -> Result<Busy, AppError> {
    let t = Instant::now();
    loop {
        if let Some(b) = try_lock(app, server) {
            return Ok(b);
        }
        if t.elapsed() > wait {
            return Err(AppError::Conflict(format!(
                "{server} is busy with a protection round or a failover/failback for over {} s: `isthmus dr status` shows it; try again later",
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True while a round or operation holds `server`.
pub fn is_busy(app: &App, server: &str) -> bool {
    app.active.lock().expect("active lock").contains(&busy_key(server))
}

/// The node disk id of replica disk `i` of `server`.
pub fn replica_disk_id(server: &str, i: usize) -> String {
    format!("dr-{}-d{i}", server.to_ascii_lowercase().replace('_', "-"))
}

/// The data-center image a failback pulls disk `i` of `server` into (a
/// raw image, the server's data-center disk from then on).
pub fn failback_path(app: &App, server: &str, i: usize) -> PathBuf {
    app.data_dir.join("dc-disks").join(format!("{server}-dr-d{i}.img"))
}

/// `server`'s DR record.
pub fn record(app: &App, server: &str) -> Result<DrRecord, AppError> {
    app.server(server)?;
    app.store.get(&DR, server)?.ok_or_else(|| {
        AppError::NotFound(format!(
            "{server} is not protected: `isthmus dr protect {server} --to CLOUD --rpo 15m` keeps a replica in a cloud"
        ))
    })
}

fn event(app: &App, server: &str, what: &str, step: Option<DrStep>, m: String) {
    if let Err(e) = append_event(&app.store, server, what, step, m) {
        tracing::warn!("cannot record a DR event of {server}: {e}");
    }
}

/// Refuses a move of `server` while DR runs it from its replica or a
/// failover/failback is under way (the move would not know the replica's
/// disks, and two paths would drive one server).
pub fn check_move(app: &App, server: &str) -> Result<(), AppError> {
    ensure_tables(&app.store)?;
    match app.store.get(&DR, server)? {
        Some(rec) if rec.state != DrState::Protecting || rec.op_running() => Err(AppError::Conflict(format!(
            "{server} is {} through disaster recovery: `isthmus dr failback {server}` brings it home first",
            state_text(rec.state)
        ))),
        _ => Ok(()),
    }
}

/// Stops protecting `server`: forgets its record (its timeline stays). Only
/// while the server runs in the data center and no failover/failback is
/// under way; the caller holds the server's lock, so no round runs. The
/// replica's encrypted disks stay on the node (they feed its block index).
pub fn unprotect(app: &App, server: &str) -> Result<DrRecord, AppError> {
    let rec = record(app, server)?;
    if rec.state != DrState::Protecting || rec.op_running() {
        return Err(AppError::Conflict(format!(
            "{server} is {} through disaster recovery; `isthmus dr failback {server}` first, then unprotect it",
            state_text(rec.state)
        )));
    }
    app.store.delete(&DR, server)?;
    event(
        app,
        server,
        "unprotect",
        None,
        format!("protection on {} ended; the replica's encrypted disks stay on the node", rec.cloud),
    );
    Ok(rec)
}

/// The first protected server whose replica is on `cloud` (a cloud that
/// holds a replica must not be forgotten).
pub fn protected_on(app: &App, cloud: &str) -> Result<Option<String>, AppError> {
    ensure_tables(&app.store)?;
    Ok(app
        .store
        .list(&DR)?
        .into_iter()
        .find(|(_, r)| r.cloud == cloud)
        .map(|(name, _)| name))
}

/// Starts protecting `server` with a replica on `cloud` (or changes the RPO
/// of its protection). The caller runs the first round.
pub fn protect(app: &App, server: &str, cloud: &str, rpo: Rpo) -> Result<DrRecord, AppError> {
    ensure_tables(&app.store)?;
    let s = app.server(server)?;
    app.cloud(cloud)?;
    if let Some(mut old) = app.store.get(&DR, server)? {
        if old.cloud != cloud {
            return Err(AppError::Conflict(format!(
                "{server} is protected with a replica on {} already; one replica per server",
                old.cloud
            )));
        }
        if old.rpo != rpo {
            event(app, server, "protect", None, format!("RPO changed from {} to {rpo}", old.rpo));
            old.rpo = rpo;
            app.store.put(&DR, server, &old)?;
        }
        return Ok(old);
    }
    if s.location != Location::Dc {
        return Err(AppError::Conflict(format!(
            "{server} runs in {} now; protection replicates a server that runs in the data center",
            s.location
        )));
    }
    let rec = DrRecord::new(server, cloud, rpo);
    app.store.put(&DR, server, &rec)?;
    event(
        app,
        server,
        "protect",
        None,
        format!(
            "protection to {cloud} with RPO {rpo}: the replica is refreshed at least every {} s",
            rpo.refresh_every_s()
        ),
    );
    Ok(rec)
}

/// One protection round now (the caller holds [`Busy`]): a still copy of
/// each running disk (what a crash at this instant would leave, taken
/// locally in well under a second with reflinks) is sent to the replica;
/// only blocks whose hash differs from what the node holds cross the link;
/// the node verifies the whole-disk digest. Success makes a new recovery
/// point.
pub fn sync_round(app: &Arc<App>, rt: &tokio::runtime::Handle, server: &str) -> Result<Round, AppError> {
    let rec = record(app, server)?;
    if rec.state != DrState::Protecting {
        return Err(AppError::Conflict(format!(
            "{server} is {}: protection rounds run while it runs in the data center (after `isthmus dr failback {server}`)",
            state_text(rec.state)
        )));
    }
    let s = app.server(server)?;
    let (at, unix_s) = (now_rfc3339(), unix_now());
    let t = Instant::now();
    let mut log = |m: String| event(app, server, "sync", None, m);
    let sent = send_point(app, rt, &s, &rec.cloud, &mut log);
    let mut rec = record(app, server)?;
    let mut round = Round {
        at: at.clone(),
        unix_s,
        took_s: (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        blocks: 0,
        blocks_sent: 0,
        bytes_sent: 0,
        scanned_bytes: 0,
        allocated_bytes: 0,
        scans: vec![],
        error: None,
    };
    let result = match sent {
        Ok(p) => {
            round.blocks = p.blocks;
            round.blocks_sent = p.blocks_sent;
            round.bytes_sent = p.bytes_sent;
            round.scanned_bytes = p.scanned_bytes;
            round.allocated_bytes = p.allocated_bytes;
            round.scans = p.scans.clone();
            log(format!(
                "round: {:.1} MiB read of {:.1} MiB allocated ({}), {} of {} data blocks sent ({:.1} MiB compressed) in {:.1} s; recovery point {at} ({}), digest {}… verified by {}",
                p.scanned_bytes as f64 / 1048576.0,
                p.allocated_bytes as f64 / 1048576.0,
                scans_text(&p.scans),
                p.blocks_sent,
                p.blocks,
                p.bytes_sent as f64 / 1048576.0,
                round.took_s,
                p.capture,
                p.digests.first().map(|d| &d[..d.len().min(16)]).unwrap_or(""),
                rec.cloud
            ));
            rec.last_point = Some(RecoveryPoint {
                at,
                unix_s,
                disk_ids: p.disk_ids,
                digests: p.digests,
                profile: s.profile.clone(),
                capture: p.capture,
            });
            Ok(round.clone())
        }
        Err(why) => {
            let last = rec.last_point.as_ref().map_or("none yet".to_string(), |p| p.at.clone());
            let msg = format!("protection round of {server} failed: {why}; the last recovery point stays ({last}); the daemon tries again");
            log(msg.clone());
            round.error = Some(why);
            Err(AppError::Invalid(msg))
        }
    };
    rec.push_round(round);
    app.store.put(&DR, server, &rec)?;
    result
}

/// What one round sent.
struct Sent {
    disk_ids: Vec<String>,
    digests: Vec<String>,
    blocks: u64,
    blocks_sent: u64,
    bytes_sent: u64,
    scanned_bytes: u64,
    allocated_bytes: u64,
    scans: Vec<ScanKind>,
    capture: String,
}

/// "dirty bitmap", "full scan", or both with counts.
fn scans_text(scans: &[ScanKind]) -> String {
    let bitmap = scans.iter().filter(|k| **k == ScanKind::DirtyBitmap).count();
    match (bitmap, scans.len() - bitmap) {
        (_, 0) => "dirty bitmap".into(),
        (0, _) => "full scan".into(),
        (b, f) => format!("{b} disk(s) by dirty bitmap, {f} by full scan"),
    }
}

fn send_point(
    app: &Arc<App>,
    rt: &tokio::runtime::Handle,
    s: &ServerRecord,
    cloud: &str,
    log: &mut dyn FnMut(String),
) -> Result<Sent, String> {
    if s.location != Location::Dc {
        return Err(format!("{} runs in {}, not in the data center", s.name, s.location));
    }
    let client = app.cloud_client(cloud).map_err(|e| e.to_string())?;
    let sources = route::disks_at(app, s, &Location::Dc)?;
    let work = app.data_dir.join("transfer");
    let running = app.source.is_running(s);
    let ids: Vec<String> = (0..sources.len()).map(|i| replica_disk_id(&s.name, i)).collect();
    // Bitmaps rotate before the still copies are taken: every write after
    // this instant is in the new bitmaps (dirty.rs); a failure before a
    // disk's manifest is made merges its old bitmap back (on drop).
    let mut tracked = if running { dirty::Tracked::start(app, s, &ids, log) } else { None };
    // Only the still copies' file names come from this record.
    let naming = MoveRecord::new(&format!("dr-{}", s.name), &s.name, Location::Dc, cloud, false);
    let copies = if running {
        rehearse::still_copies(&work, &naming, &sources, log)?
    } else {
        vec![]
    };
    let paths: Vec<PathBuf> = if running {
        copies.iter().map(|c| c.path().to_path_buf()).collect()
    } else {
        sources.iter().map(PathBuf::from).collect()
    };
    let key = busy_key(&s.name);
    let progress: transfer::Progress = {
        let app = app.clone();
        Arc::new(move |done, total| {
            app.copy_progress.lock().expect("progress lock").insert(key.clone(), (done, total));
        })
    };
    let mut out = Sent {
        disk_ids: vec![],
        digests: vec![],
        blocks: 0,
        blocks_sent: 0,
        bytes_sent: 0,
        scanned_bytes: 0,
        allocated_bytes: 0,
        scans: vec![],
        capture: if running {
            "crash-consistent still copy of the running disks".into()
        } else {
            "disks of the stopped server".into()
        },
    };
    for (i, (path, id)) in paths.iter().zip(ids).enumerate() {
        let opts = transfer::Options::default();
        let (got, allocated, scanned, kind) = match tracked.as_mut() {
            Some(t) => {
                let (view, scanned) = t.scan_path(i, path, &work, log).map_err(|e| format!("disk {i}: {e}"))?;
                let got = rt
                    .block_on(dirty::send::send_manifest(
                        &client,
                        &id,
                        view,
                        path,
                        &scanned.manifest,
                        &opts,
                        progress.clone(),
                    ))
                    .map_err(|e| format!("disk {i} → {id}: {e}"))?;
                (got.done, got.allocated, scanned.scanned_bytes, scanned.kind)
            }
            None => {
                let got = rt
                    .block_on(transfer::send_disk(&client, &id, path, &work, &opts, progress.clone()))
                    .map_err(|e| format!("disk {i} → {id}: {e}"))?;
                // The transfer's scan reads every allocated extent.
                (got.done, got.allocated, got.allocated, ScanKind::Full)
            }
        };
        out.scanned_bytes += scanned;
        out.allocated_bytes += allocated;
        out.scans.push(kind);
        out.blocks += got.blocks;
        out.blocks_sent += got.blocks_sent;
        out.bytes_sent += got.wire_bytes;
        out.digests.push(got.digest.clone());
        out.disk_ids.push(id);
    }
    Ok(out)
}

fn state_text(s: DrState) -> &'static str {
    match s {
        DrState::Protecting => "protected (it runs in the data center)",
        DrState::FailingOver => "failing over",
        DrState::FailedOver => "failed over (it runs from its replica in the cloud)",
        DrState::FailingBack => "failing back",
    }
}

/// Records a failover or failback of `server` and returns it with the
/// server held; [`drive_in_background`] runs it. Refuses in the wrong state.
pub fn request(app: &Arc<App>, server: &str, kind: OpKind) -> Result<(Busy, DrRecord), AppError> {
    record(app, server)?;
    let busy = lock(app, server, LOCK_WAIT)?;
    let mut rec = record(app, server)?;
    let failed = rec.op.as_ref().is_some_and(|o| o.step == DrStep::Failed);
    let ok = match (kind, rec.state) {
        (OpKind::Failover, DrState::Protecting) => true,
        (OpKind::Failover, DrState::FailingOver) => failed,
        (OpKind::Failback, DrState::FailedOver) => true,
        // A failback after a failed failover gives the failover up.
        (OpKind::Failback, DrState::FailingOver | DrState::FailingBack) => failed,
        _ => false,
    };
    if !ok {
        let hint = match (kind, rec.state) {
            (OpKind::Failover, DrState::FailedOver) => format!(
                "it runs from its replica on {} already; `isthmus dr failback {server}` brings it home",
                rec.cloud
            ),
            (OpKind::Failback, DrState::Protecting) => format!(
                "it was not failed over; `isthmus dr failover {server}` starts its replica on {}",
                rec.cloud
            ),
            _ => "a failover or failback is under way: `isthmus dr status` shows it".into(),
        };
        return Err(AppError::Conflict(format!("{server} is {}: {hint}", state_text(rec.state))));
    }
    if kind == OpKind::Failover && rec.last_point.is_none() {
        return Err(AppError::Conflict(format!(
            "{server} has no recovery point on {} yet: wait for the first round or run `isthmus dr sync {server}`",
            rec.cloud
        )));
    }
    rec.begin(kind);
    app.store.put(&DR, server, &rec)?;
    Ok((busy, rec))
}

/// Drives `server`'s operation on a thread of its own; `busy` is released at its end.
pub fn drive_in_background(app: Arc<App>, rt: tokio::runtime::Handle, busy: Busy, server: String) {
    std::thread::Builder::new()
        .name(format!("dr-{server}"))
        .spawn(move || {
            let mut fx = RealDrEffects { app: app.clone(), rt };
            match executor::drive(&app.store, &server, &mut fx) {
                Ok(rec) => tracing::info!(server = %server, state = ?rec.state, "DR operation ended"),
                Err(e) => tracing::error!(server = %server, "DR operation stopped: {e}"),
            }
            drop(busy);
        })
        .expect("spawn DR thread");
}

/// Runs the first round of a new protection on a thread of its own.
pub fn first_round_in_background(app: Arc<App>, rt: tokio::runtime::Handle, busy: Busy, server: String) {
    std::thread::Builder::new()
        .name(format!("dr-sync-{server}"))
        .spawn(move || {
            if let Err(e) = sync_round(&app, &rt, &server) {
                tracing::warn!(server = %server, "first protection round: {e}");
            }
            drop(busy);
        })
        .expect("spawn DR thread");
}

/// The daemon's DR loop: resumes operations a restart interrupted and
/// refreshes every replica at least every RPO (a round every half RPO; a
/// failed round is tried again after a minute at most).
pub fn spawn_loop(app: Arc<App>, rt: tokio::runtime::Handle) {
    if let Err(e) = ensure_tables(&app.store) {
        tracing::error!("DR tables: {e}; disaster recovery is off");
        return;
    }
    std::thread::Builder::new()
        .name("dr-loop".into())
        .spawn(move || loop {
            if let Err(e) = tick(&app, &rt) {
                tracing::warn!("DR loop: {e}");
            }
            std::thread::sleep(LOOP_EVERY);
        })
        .expect("spawn DR loop");
}

fn tick(app: &Arc<App>, rt: &tokio::runtime::Handle) -> Result<(), AppError> {
    for (name, rec) in app.store.list(&DR)? {
        if rec.op_running() {
            if let Some(b) = try_lock(app, &name) {
                tracing::info!(server = %name, "resuming a DR operation interrupted by a restart");
                drive_in_background(app.clone(), rt.clone(), b, name);
            }
            continue;
        }
        if rec.state != DrState::Protecting || !round_due(&rec, unix_now()) {
            continue;
        }
        if let Some(b) = try_lock(app, &name) {
            if let Err(e) = sync_round(app, rt, &name) {
                tracing::warn!(server = %name, "{e}");
            }
            drop(b);
        }
    }
    Ok(())
}

/// Whether a protection round of `rec` is due at `now`.
pub fn round_due(rec: &DrRecord, now: f64) -> bool {
    let every = rec.rpo.refresh_every_s() as f64;
    let fresh = rec.point_age_s(now).is_some_and(|a| a < every);
    let last_failed_recently = rec
        .rounds
        .last()
        .is_some_and(|r| r.error.is_some() && now - r.unix_s < every.min(60.0));
    !fresh && !last_failed_recently
}

/// The real failover/failback effects.
pub struct RealDrEffects {
    app: Arc<App>,
    rt: tokio::runtime::Handle,
}

impl DrEffects for RealDrEffects {
    fn run(&mut self, step: DrStep, rec: &mut DrRecord, log: &mut dyn FnMut(String)) -> StepResult {
        let app = self.app.clone();
        let e = |err: AppError| err.to_string();
        let server = app.server(&rec.server).map_err(e)?;
        let cloud = Location::Cloud { name: rec.cloud.clone() };
        let point = rec.last_point.clone();
        // The server as the recovery point had it, for starts in the cloud.
        let at_point = |p: &Option<RecoveryPoint>| -> Result<(ServerRecord, RecoveryPoint), String> {
            let p = p.clone().ok_or_else(|| format!("{} has no recovery point", rec.server))?;
            let mut s = server.clone();
            s.profile = p.profile.clone();
            Ok((s, p))
        };
        // One data-center image per replica disk (the point's disks, else the profile's).
        let disks = point.as_ref().map_or(server.profile.disks.len(), |p| p.disk_ids.len());
        let dests: Vec<String> = (0..disks)
            .map(|i| failback_path(&app, &rec.server, i).display().to_string())
            .collect();
        match step {
            DrStep::StopSource => {
                if !app.source.is_running(&server) {
                    return Ok("the data-center copy is not running (presumed lost): nothing to stop".into());
                }
                Ok(match route::stop(&app, &self.rt, &server, &Location::Dc, SOURCE_STOP_TIMEOUT) {
                    Ok(m) => m,
                    Err(why) => format!(
                        "cannot stop the data-center copy ({why}); it is presumed lost; if it comes back, `isthmus lcg status` reports its MAC as a duplicate"
                    ),
                })
            }
            DrStep::StartReplica => {
                let (s, p) = at_point(&point)?;
                let said = route::start(&app, &self.rt, &s, &cloud, &p.disk_ids)?;
                Ok(format!(
                    "{said}; from the recovery point of {} ({:.0} s old), disks {:?}",
                    p.at,
                    unix_now() - p.unix_s,
                    p.disk_ids
                ))
            }
            DrStep::CarryMac => route::switch_l2(&app, &server, &Location::Dc, &cloud),
            DrStep::Verify | DrStep::VerifySource => verify_answers(&server, log),
            DrStep::Commit => {
                let mut s = server.clone();
                s.location = cloud.clone();
                app.store.put(&SERVERS, &s.name, &s).map_err(|e| e.to_string())?;
                Ok(format!("{} now runs from its replica in {cloud}", s.name))
            }
            DrStep::StopReplica => route::stop(&app, &self.rt, &server, &cloud, REPLICA_STOP_TIMEOUT),
            DrStep::PullBack => self.pull_back(rec, &server, log),
            DrStep::ReleaseMac => route::switch_l2(&app, &server, &cloud, &Location::Dc),
            DrStep::StartSource => route::start(&app, &self.rt, &server, &Location::Dc, &dests),
            DrStep::CommitFailback => {
                let mut s = route::with_dc_disks(&server, &dests);
                s.location = Location::Dc;
                app.store.put(&SERVERS, &s.name, &s).map_err(|e| e.to_string())?;
                // The replica holds exactly what was pulled (the cloud copy
                // is stopped): that is the new recovery point.
                if let Some(p) = rec.last_point.as_mut().filter(|p| p.disk_ids.len() == rec.failback.len()) {
                    p.at = now_rfc3339();
                    p.unix_s = unix_now();
                    p.digests = rec.failback.iter().map(|d| d.digest.clone()).collect();
                    p.capture = "the replica as the failback pulled it into the data-center disks".into();
                }
                // The stopped cloud copy must not hold the name on the node;
                // the replica disks stay for the next rounds.
                let client = app.cloud_client(&rec.cloud).map_err(e)?;
                let deleted = match self.rt.block_on(client.delete_guest(&s.name)) {
                    Ok(()) => format!("the stopped copy's entry on {} deleted (its disks stay as the replica)", rec.cloud),
                    Err(err) => format!(
                        "the stopped copy's entry on {} stays ({err}): DELETE /v1/guests/{} removes it",
                        rec.cloud, s.name
                    ),
                };
                Ok(format!(
                    "{} runs in the data center from {dests:?}; {deleted}; protection resumes",
                    s.name
                ))
            }
            DrStep::Rollback => {
                let s = route::with_dc_disks(&server, &dests);
                let stopped = route::stop(&app, &self.rt, &s, &Location::Dc, SOURCE_STOP_TIMEOUT)?;
                let (cs, p) = at_point(&point)?;
                let started = route::start(&app, &self.rt, &cs, &cloud, &p.disk_ids)?;
                let carried = route::switch_l2(&app, &server, &Location::Dc, &cloud)?;
                Ok(format!(
                    "{stopped}; {started}; {carried}; the server keeps running from its replica"
                ))
            }
            DrStep::Done | DrStep::RolledBack | DrStep::Failed => Ok(String::new()),
        }
    }
}

impl RealDrEffects {
    /// Pulls each replica disk into its data-center image; only blocks whose
    /// hash differs cross the link. A first failback seeds the raw image
    /// from the server's current data-center disk (locally) so that only
    /// what changed since comes back.
    fn pull_back(&self, rec: &mut DrRecord, server: &ServerRecord, log: &mut dyn FnMut(String)) -> StepResult {
        let app = &self.app;
        let p = rec
            .last_point
            .clone()
            .ok_or_else(|| format!("{} has no recovery point: nothing to pull back", rec.server))?;
        let client = app.cloud_client(&rec.cloud).map_err(|e| e.to_string())?;
        let current = route::disks_at(app, server, &Location::Dc)?;
        let key = busy_key(&rec.server);
        let progress: transfer::Progress = {
            let app = app.clone();
            Arc::new(move |done, total| {
                app.copy_progress.lock().expect("progress lock").insert(key.clone(), (done, total));
            })
        };
        let t = Instant::now();
        let mut pulled = Vec::new();
        for (i, id) in p.disk_ids.iter().enumerate() {
            let dest = failback_path(app, &rec.server, i);
            if !dest.exists() {
                seed(current.get(i).map(Path::new), &dest, log)?;
            }
            let got = self
                .rt
                .block_on(pull::pull_disk(&client, id, &dest, 4, progress.clone()))
                .map_err(|e| e.to_string())?;
            log(format!(
                "disk {i}: {id} on {} → {}: {} data blocks, {} fetched ({:.1} MiB compressed), {} already here; digest {}… verified",
                rec.cloud,
                dest.display(),
                got.blocks,
                got.fetched,
                got.wire_bytes as f64 / 1048576.0,
                got.kept,
                &got.digest[..got.digest.len().min(16)]
            ));
            pulled.push(PulledDisk {
                id: id.clone(),
                dest: dest.display().to_string(),
                blocks: got.blocks,
                fetched: got.fetched,
                kept: got.kept,
                wire_bytes: got.wire_bytes,
                digest: got.digest,
            });
        }
        let (blocks, fetched) = pulled.iter().fold((0, 0), |(b, f), d| (b + d.blocks, f + d.fetched));
        rec.failback = pulled;
        Ok(format!(
            "{fetched} of {blocks} data blocks fetched in {:.1} s (only blocks that differ); whole-disk digests verified",
            t.elapsed().as_secs_f64()
        ))
    }
}

/// Makes `dest` a raw copy of the data-center disk `src` (any format
/// qemu-img reads), written to a temporary name and renamed, so that an
/// interrupted seed is never mistaken for a finished one. Without `src`
/// (the data center lost it) the pull fetches the whole disk.
fn seed(src: Option<&Path>, dest: &Path, log: &mut dyn FnMut(String)) -> Result<(), String> {
    let Some(src) = src.filter(|s| s.exists() && *s != dest) else {
        log(format!(
            "no data-center disk to start {} from: the whole disk is pulled",
            dest.display()
        ));
        return Ok(());
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dest.with_extension("seed.tmp");
    let t = Instant::now();
    let out = Command::new(hv::qemu::luks::QEMU_IMG)
        .args(["convert", "-O", "raw", "--"])
        .arg(src)
        .arg(&tmp)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "cannot convert {} to {}: {}; check the free space under {}",
            src.display(),
            tmp.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            dir.display()
        ));
    }
    std::fs::rename(&tmp, dest).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
    log(format!(
        "{} seeded from the data-center disk {} in {:.1} s (locally: only blocks that differ from it cross the link)",
        dest.display(),
        src.display(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_valid_disk_key_names() {
        assert_eq!(replica_disk_id("Web_1", 0), "dr-web-1-d0");
        let keys = crate::moves::disk_keys::DiskKeys::new(Path::new("/nonexistent"));
        assert!(keys.get(&replica_disk_id("web1", 2)).is_ok());
    }

    #[test]
    fn rounds_are_due_every_half_rpo_and_retried_after_a_minute() {
        let mut rec = DrRecord::new("web1", "cloud1", "15m".parse().unwrap());
        assert!(round_due(&rec, 1000.0), "no point yet");
        rec.last_point = Some(RecoveryPoint {
            at: String::new(),
            unix_s: 1000.0,
            disk_ids: vec![],
            digests: vec![],
            profile: crate::dr::record::test_profile(),
            capture: String::new(),
        });
        assert!(!round_due(&rec, 1449.0));
        assert!(round_due(&rec, 1450.0));
        rec.push_round(Round {
            at: String::new(),
            unix_s: 1440.0,
            took_s: 1.0,
            blocks: 0,
            blocks_sent: 0,
            bytes_sent: 0,
            scanned_bytes: 0,
            allocated_bytes: 0,
            scans: vec![],
            error: Some("node down".into()),
        });
        assert!(!round_due(&rec, 1460.0), "a failed round waits a minute");
        assert!(round_due(&rec, 1501.0));
    }
}
