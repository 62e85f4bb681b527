//! Rehearsal of a move (`isthmus move --rehearse`): the disks are copied
//! while the source keeps running (the same verified transfer as a move),
//! then the copy boots on the cloud node on an isolated segment: its TAPs
//! join no bridge and have no uplink, so neither its frames nor its MAC
//! (the server's own) leave the node. The appliance watches the copy's
//! serial console until its kernel starts user space, records what it saw,
//! and deletes the rehearsal guest. Nothing is stopped, no MAC is carried.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::api::{ConsoleSeen, GuestState, StartGuest};

use crate::app::App;
use crate::model::{Location, MoveRecord, Rehearsal, ServerRecord};
use crate::moves::executor::StepResult;
use crate::moves::route;

/// How long the copy may take to reach user space (TCG boots are slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// After user space: how long the console must stay quiet before the
/// rehearsal takes its last line (at most [`SETTLE_MAX`]).
const SETTLE_QUIET: Duration = Duration::from_secs(3);
/// Longest wait for the console to settle after user space.
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// Console poll interval.
const POLL: Duration = Duration::from_secs(1);

/// A still copy of a running source disk, removed on drop.
pub struct StillCopy(PathBuf);

impl StillCopy {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StillCopy {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the rehearsal's still copy of a disk");
        }
    }
}

/// Copies each disk file of a running source (as it is on disk, same
/// format, still encrypted if it is) under `work`, so that the transfer
/// reads files that do not change under it: a running guest rewrites some
/// blocks (journal, superblock) faster than a send can catch them, and the
/// node refuses a block whose content changed after the scan. The copy is
/// what a crash at that moment would leave (blocks the guest writes during
/// the copy may be older or newer): enough to rehearse a boot; a real move
/// copies after a clean stop. `cp --reflink=auto` makes it instant and free
/// on filesystems that share extents; `--sparse=always` keeps holes.
pub fn still_copies(work: &Path, mv: &MoveRecord, sources: &[String], log: &mut dyn FnMut(String)) -> Result<Vec<StillCopy>, String> {
    let dir = work.join("rehearse");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut copies = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let t = Instant::now();
        let ext = Path::new(src).extension().and_then(|e| e.to_str()).unwrap_or("img");
        let dest = dir.join(format!("{}-d{i}.{ext}", mv.id));
        let out = Command::new("cp")
            .args(["--reflink=auto", "--sparse=always", "--"])
            .arg(src)
            .arg(&dest)
            .output()
            .map_err(|e| format!("cannot run cp for {src}: {e}"))?;
        // Removed on every path from here on.
        let copy = StillCopy(dest);
        if !out.status.success() {
            return Err(format!(
                "cannot copy {src} to {}: {}; check the free space under {}",
                copy.path().display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                dir.display()
            ));
        }
        log(format!(
            "disk {i}: still copy of the running {src} taken in {:.1} s (what a crash now would leave); it is sent, then removed",
            t.elapsed().as_secs_f64()
        ));
        copies.push(copy);
    }
    Ok(copies)
}

/// Name of the rehearsal guest of `server` on the node (never the server's
/// own name, so a rehearsal cannot touch a running copy of it).
pub fn guest_name(server: &str) -> String {
    format!("rh-{server}")
}

/// The [`crate::model::Step::Rehearse`] effect: boots the copy of `server`
/// (disks `mv.target_disk_ids`) isolated, watches its console, deletes it.
/// Idempotent: a rehearsal guest left by a crash is deleted first.
pub fn boot_isolated(
    app: &App,
    rt: &tokio::runtime::Handle,
    server: &ServerRecord,
    mv: &mut MoveRecord,
    log: &mut dyn FnMut(String),
) -> StepResult {
    let Location::Cloud { name: cloud } = route::target(mv) else {
        return Err("a rehearsal boots the copy in a cloud: rehearse a move to a cloud".into());
    };
    let client = app.cloud_client(&cloud).map_err(|e| e.to_string())?;
    let guest = guest_name(&server.name);
    rt.block_on(client.delete_guest(&guest)).map_err(|e| e.to_string())?;
    let req = StartGuest {
        name: guest.clone(),
        profile: server.profile.clone(),
        disk_ids: mv.target_disk_ids.clone(),
        isolated: true,
    };
    let started = rt.block_on(client.start_guest(&req)).map_err(|e| e.to_string())?;
    log(format!(
        "copy started on {cloud} as {guest} (QEMU pid {:?}) on an isolated segment: TAPs {:?} on no bridge, no uplink; watching its serial console",
        started.pid, started.taps
    ));
    // The source's console as it runs now: a kernel started `quiet` prints
    // no user-space line, so its steady last line (a login or shell
    // prompt) tells when the copy got as far.
    let source_serial = hv::run_dir::RunDir::new(app.source.run_root.join(&server.name)).serial_log();
    let ready_line = std::fs::read(&source_serial)
        .ok()
        .and_then(|b| hv::accel::last_console_line(&String::from_utf8_lossy(&b)));
    if let Some(line) = &ready_line {
        log(format!(
            "the source's console ends with {line:?}: the copy is booted when it shows the same line (or its kernel starts user space)"
        ));
    }
    let t = Instant::now();
    let watched = watch_boot(rt, &client, &guest, ready_line.as_deref(), t);
    // Always delete the rehearsal guest, whatever the watch saw.
    let deleted = rt
        .block_on(client.delete_guest(&guest))
        .and_then(|()| rt.block_on(client.guest(&guest)))
        .map(|g| g.is_none());
    let guest_deleted = matches!(deleted, Ok(true));
    let (seen, boot_ms, why) = match watched {
        Ok((seen, boot_ms)) => (seen, Some(boot_ms), None),
        Err((seen, why)) => (seen, None, Some(why)),
    };
    mv.rehearsal = Some(Rehearsal {
        cloud: cloud.clone(),
        guest: guest.clone(),
        booted: boot_ms.is_some(),
        boot_ms,
        console_bytes: seen.bytes,
        console_last_line: seen.last_line.clone(),
        ports_probed: vec![],
        guest_deleted,
    });
    let deleted_said = match deleted {
        Ok(true) => format!("{guest} deleted from {cloud}"),
        Ok(false) => format!("{guest} still listed on {cloud} after its deletion: delete it with DELETE /v1/guests/{guest}"),
        Err(e) => format!("cannot delete {guest} on {cloud} ({e}): delete it with DELETE /v1/guests/{guest}"),
    };
    if let Some(why) = why {
        return Err(format!("{why}; last console line {:?}; {deleted_said}", seen.last_line));
    }
    let ports = if server.check_ports.is_empty() {
        String::new()
    } else {
        format!(
            "; check ports {:?} not probed: the isolated segment has no address of ours (the real move checks them at {})",
            server.check_ports,
            server.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "its IP".into())
        )
    };
    if !guest_deleted {
        return Err(format!("the copy booted, but {deleted_said}"));
    }
    Ok(format!(
        "the copy booted in {:.1} s (its console reached user space or the source's last line; {} console bytes, last line {:?}){ports}; {deleted_said}; the source kept running and its MAC was never carried",
        boot_ms.unwrap_or_default() as f64 / 1000.0,
        seen.bytes,
        seen.last_line
    ))
}

/// Polls the guest's console until its kernel reaches user space or it
/// shows the source's `ready_line` (then until it settles): `(console, ms
/// to ready)`, or what was seen and why it did not boot.
fn watch_boot(
    rt: &tokio::runtime::Handle,
    client: &crate::cloud::CloudClient,
    guest: &str,
    ready_line: Option<&str>,
    t: Instant,
) -> Result<(ConsoleSeen, u64), (ConsoleSeen, String)> {
    let mut seen = ConsoleSeen::default();
    let mut booted_ms = None;
    let mut last_change = Instant::now();
    loop {
        let info = match rt.block_on(client.guest(guest)) {
            Ok(Some(info)) => info,
            Ok(None) => return Err((seen, format!("{guest} vanished from the node while it booted"))),
            Err(e) => return Err((seen, format!("cannot read {guest}'s console: {e}"))),
        };
        let now = info.console.unwrap_or_default();
        if now.bytes != seen.bytes {
            last_change = Instant::now();
        }
        seen = now;
        if booted_ms.is_none() && (seen.user_space || ready_line == Some(seen.last_line.as_str())) {
            booted_ms = Some(t.elapsed().as_millis() as u64);
        }
        if let Some(ms) = booted_ms {
            if last_change.elapsed() >= SETTLE_QUIET || t.elapsed() >= Duration::from_millis(ms) + SETTLE_MAX {
                return Ok((seen, ms));
            }
        } else if info.state != GuestState::Running {
            return Err((
                seen,
                format!("the copy stopped before its kernel reached user space (state {:?})", info.state),
            ));
        } else if t.elapsed() > BOOT_TIMEOUT {
            return Err((
                seen,
                format!(
                    "the copy's console showed neither user space nor the source's last line {ready_line:?} within {} s: check the server's boot (a console=ttyS0 kernel argument makes it visible)",
                    BOOT_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}
