//! Directions of a move on one code path: data center → cloud, cloud → data
//! center, cloud A → cloud B. A move's `to` is a cloud name or [`DC`]; its
//! `from` is where the server ran when the move was planned. This module
//! answers the questions the steps ask of either end: where are the disks,
//! how to stop or start the server there.

use std::path::PathBuf;
use std::time::Duration;

use proto::api::{GuestState, StartGuest};

use crate::app::App;
use crate::model::{Location, MoveRecord, ServerRecord, Source, Step};
use crate::store::{StoreError, MOVES};

/// The `to` of a move back to the data center (no cloud may be enrolled
/// under this name).
pub const DC: &str = "dc";

/// Where the move goes.
pub fn target(mv: &MoveRecord) -> Location {
    if mv.to == DC {
        Location::Dc
    } else {
        Location::Cloud { name: mv.to.clone() }
    }
}

/// The disks of `server` at `at`: image paths in the data center, disk ids
/// on a cloud node (those of the last move that brought it there).
pub fn disks_at(app: &App, server: &ServerRecord, at: &Location) -> Result<Vec<String>, String> {
    match at {
        Location::Dc => {
            let Source::LocalQemu { disks, .. } = &server.source;
            Ok(disks.iter().map(|p| p.display().to_string()).collect())
        }
        Location::Cloud { name } => last_move_into(app, &server.name, name)
            .map_err(|e| e.to_string())?
            .map(|m| m.target_disk_ids)
            .ok_or_else(|| format!("no finished move brought {} to {name}: its disks there are unknown", server.name)),
    }
}

fn last_move_into(app: &App, server: &str, cloud: &str) -> Result<Option<MoveRecord>, StoreError> {
    let mut moves: Vec<MoveRecord> = app
        .store
        .list(&MOVES)?
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| m.server == server && m.to == cloud && m.step == Step::Done)
        .collect();
    // Ids are m-<n>: the highest n is the latest.
    moves.sort_by_key(|m| m.id.trim_start_matches("m-").parse::<u64>().unwrap_or(0));
    Ok(moves.pop())
}

/// The node disk id of disk `i` of a move into a cloud (the pre-copy and
/// the copy after the stop send to the same id).
pub fn cloud_disk_id(mv: &MoveRecord, server: &ServerRecord, i: usize) -> String {
    format!("{}-{}-d{i}", mv.id, server.name.to_ascii_lowercase().replace('_', "-"))
}

/// Where a move back to the data center puts disk `i`: a new raw image per
/// move under the data directory (the server's old images stay untouched
/// until the move commits, and after: a rollback or an audit may want them).
pub fn dc_disk_path(app: &App, mv: &MoveRecord, i: usize) -> PathBuf {
    app.data_dir.join("dc-disks").join(format!("{}-{}-d{i}.img", mv.server, mv.id))
}

/// The server as it runs from `disks` (paths) in the data center.
pub fn with_dc_disks(server: &ServerRecord, disks: &[String]) -> ServerRecord {
    let mut s = server.clone();
    let Source::LocalQemu { taps, .. } = &server.source;
    s.source = Source::LocalQemu {
        disks: disks.iter().map(PathBuf::from).collect(),
        taps: taps.clone(),
    };
    s
}

/// Stops the server at `at` (ACPI, then hard after `timeout`); idempotent.
pub fn stop(app: &App, rt: &tokio::runtime::Handle, server: &ServerRecord, at: &Location, timeout: Duration) -> Result<String, String> {
    match at {
        Location::Dc => app.source.stop(server, timeout).map_err(|e| e.to_string()),
        Location::Cloud { name } => {
            let client = app.cloud_client(name).map_err(|e| e.to_string())?;
            match rt.block_on(client.guest(&server.name)).map_err(|e| e.to_string())? {
                None => Ok(format!("no copy of {} on {name}", server.name)),
                Some(g) if g.state == GuestState::Stopped => Ok(format!("the copy on {name} was already stopped")),
                Some(_) => {
                    let t = std::time::Instant::now();
                    rt.block_on(client.stop_guest(&server.name)).map_err(|e| e.to_string())?;
                    Ok(format!("the copy on {name} stopped in {:.1} s", t.elapsed().as_secs_f64()))
                }
            }
        }
    }
}

/// Starts the server at `at` from `disks` (paths or node disk ids) unless it
/// runs there already; a stopped entry on a node is replaced.
pub fn start(app: &App, rt: &tokio::runtime::Handle, server: &ServerRecord, at: &Location, disks: &[String]) -> Result<String, String> {
    match at {
        Location::Dc => {
            let pid = app.source.start(&with_dc_disks(server, disks)).map_err(|e| e.to_string())?;
            Ok(format!("started in the data center from {disks:?} (QEMU pid {pid})"))
        }
        Location::Cloud { name } => {
            let client = app.cloud_client(name).map_err(|e| e.to_string())?;
            match rt.block_on(client.guest(&server.name)).map_err(|e| e.to_string())? {
                Some(g) if g.state == GuestState::Running => return Ok(format!("already running on {name} (pid {:?})", g.pid)),
                // A stopped entry holds the name (and maybe other disks): replace it.
                Some(_) => rt.block_on(client.delete_guest(&server.name)).map_err(|e| e.to_string())?,
                None => {}
            }
            let req = StartGuest {
                name: server.name.clone(),
                profile: server.profile.clone(),
                disk_ids: disks.to_vec(),
                isolated: false,
            };
            let g = rt.block_on(client.start_guest(&req)).map_err(|e| e.to_string())?;
            let nic = server
                .profile
                .nics
                .first()
                .map(|n| format!("{:?} {}", n.model, n.mac))
                .unwrap_or_default();
            let disk = server.profile.disks.first().map(|d| format!("{:?}", d.bus)).unwrap_or_default();
            Ok(format!(
                "started on {name} under {} with NIC {nic}, disk bus {disk}, TAPs {:?}",
                g.accel, g.taps
            ))
        }
    }
}

/// Switches the server's MACs to `to` (from `from`): the LCG carries them
/// to the cloud it runs in, and no longer to the one it left. Idempotent.
pub fn switch_l2(app: &App, server: &ServerRecord, from: &Location, to: &Location) -> Result<String, String> {
    let macs = server.macs();
    if let Location::Cloud { name } = from {
        app.lcg.release(name, &macs).map_err(|e| e.to_string())?;
    }
    match to {
        Location::Cloud { name } => {
            app.lcg.carry(name, &macs).map_err(|e| e.to_string())?;
            Ok(format!("LCG carries {} over the encrypted bridge to {name}", fmt_macs(server)))
        }
        Location::Dc => Ok(format!(
            "LCG no longer carries {} to {from}: the data-center copy answers on the LAN itself",
            fmt_macs(server)
        )),
    }
}

/// The MACs of `server`, comma-separated.
pub fn fmt_macs(s: &ServerRecord) -> String {
    s.macs().iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_is_the_data_center_and_anything_else_a_cloud() {
        let mut mv = MoveRecord::new("m-1", "web1", Location::Dc, "cloud1", false);
        assert_eq!(target(&mv), Location::Cloud { name: "cloud1".into() });
        mv.to = DC.into();
        assert_eq!(target(&mv), Location::Dc);
    }
}
