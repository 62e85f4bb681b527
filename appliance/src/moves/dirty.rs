//! Dirty tracking of a running data-center source between copy rounds
//! (pre-copy rounds of a move, DR protection rounds), so that a round reads
//! only the blocks the guest wrote since the round before instead of the
//! whole allocated disk (issue 7 §4).
//!
//! The source runs as a QEMU guest the appliance starts ([`crate::source`]),
//! so its monitor is at hand. Each disk gets a QEMU dirty bitmap
//! (`block-dirty-bitmap-add`); a round:
//!
//! 1. rotates the bitmaps of all disks in one QMP `transaction` (add a new
//!    one, disable the old one) *before* it takes its point (the still copy
//!    of a DR round, the live read of a pre-copy round): every write after
//!    the rotation is in the new bitmap; the old one holds exactly the
//!    writes between the last point and this one;
//! 2. reads the old bitmap's extents ([`bitmap::dirty_extents`]) and hashes
//!    only those blocks of the point, on top of the manifest the last round
//!    kept ([`Track`], in the store): that is the point's manifest;
//! 3. keeps the new manifest with the new bitmap's name, removes the old
//!    bitmap, and sends the disk from that manifest ([`send::send_manifest`]:
//!    the node still answers which blocks it lacks and verifies the
//!    whole-disk digest, so a wrong manifest fails the round loudly).
//!
//! A round that fails between 1 and 3 merges the old bitmap back into the
//! new one (nothing the guest wrote is lost) and keeps the old manifest.
//! Without proof of continuity (no earlier track, the source's QEMU is not
//! the one that made the bitmap, the bitmap is gone or stopped recording,
//! the disk size changed) a round reads the whole disk, says why in its log,
//! and starts a new bitmap for the next one. Each round reports the bytes it
//! read ([`Scanned::scanned_bytes`]) beside what it sent.

pub mod bitmap;
pub mod manifest;
#[cfg(test)]
mod qemu_tests;
pub mod send;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use proto::transfer::TransferBegin;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::App;
use crate::model::ServerRecord;
use crate::moves::extents::GuestView;
use crate::moves::transfer::TransferError;
use crate::store::{Store, StoreError, Table};

use manifest::{blocks_in, Manifest};

/// Per tracked disk (key: the node disk id it is sent to): the bitmap that
/// records writes since the manifest's point.
pub const TRACKS: Table<Track> = Table::new("dirty-tracks");

/// Environment variable of the appliance: `off` makes every round read
/// whole disks (for A/B measurements: `make bench-dr`).
pub const SWITCH_ENV: &str = "ISTHMUS_DIRTY_BITMAPS";

/// Prefix of the bitmaps this module makes (`isthmus-<key>-<generation>`).
const PREFIX: &str = "isthmus-";

/// Errors of dirty tracking (each ends in a full scan or a failed round,
/// never in a wrong copy).
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// A QMP command failed.
    #[error("QEMU monitor of {guest}: {what} failed: {detail}")]
    Qmp {
        /// Guest.
        guest: String,
        /// What was asked.
        what: String,
        /// QEMU's answer.
        detail: String,
    },
    /// Reading the bitmap's extents failed.
    #[error("reading the dirty bitmap's extents over NBD failed: {0}")]
    Map(String),
    /// Local file system.
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// Reading the source failed.
    #[error(transparent)]
    Read(#[from] TransferError),
    /// The store failed.
    #[error("cannot keep the dirty-bitmap state: {0}")]
    Store(#[from] StoreError),
}

/// Identity of a QEMU process: its PID and its start time (clock ticks
/// after boot, `/proc/PID/stat` field 22). A restarted QEMU, or another
/// process that got the PID, has another identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuId {
    /// PID.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub started: u64,
}

impl QemuId {
    /// The identity of process `pid`, if it lives.
    pub fn of(pid: u32) -> Option<QemuId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces: count after its ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let started = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(QemuId { pid, started })
    }
}

/// A bitmap QEMU reports on a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapSeen {
    /// Its name.
    pub name: String,
    /// Whether it records writes (an enabled bitmap).
    pub recording: bool,
}

/// What the appliance keeps of one tracked disk between rounds: bitmap
/// `bitmap` on drive `node` of QEMU `qemu` records every write since the
/// point `manifest` describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// The QEMU that holds the bitmap (bitmaps live in its memory only).
    pub qemu: QemuId,
    /// The drive (`disk<N>`).
    pub node: String,
    /// The bitmap's name.
    pub bitmap: String,
    /// Rounds so far (names the next bitmap).
    pub generation: u64,
    /// The disk at the point the bitmap started.
    pub manifest: TransferBegin,
}

/// How a round learns what changed on a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Only the extents of this (now disabled) bitmap are read.
    Bitmap {
        /// The bitmap that recorded the writes since the last point.
        since: String,
    },
    /// Every allocated block is read and hashed.
    Full {
        /// Why the bitmap cannot be used (for the log).
        why: String,
    },
}

/// One disk's part of a round, planned before the rotation.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskRound {
    /// The track's key.
    pub key: String,
    /// The drive (`disk<N>`).
    pub node: String,
    /// Where the bitmap's extents come from.
    pub basis: Basis,
    /// The manifest the basis bitmap started at (with [`Basis::Bitmap`]).
    pub base: Option<Manifest>,
    /// The bitmap the rotation adds (records from this round's point on).
    pub new: String,
    /// Its generation.
    pub generation: u64,
    /// Our bitmaps on the drive that no track uses (left by a crash): removed.
    pub stale: Vec<String>,
}

/// The bitmap of generation `generation` of track `key`.
pub fn bitmap_name(key: &str, generation: u64) -> String {
    format!("{PREFIX}{key}-{generation}")
}

/// Plans disk `node`'s part of a round: continue from `saved` if QEMU
/// `qemu` still holds its bitmap, recording, else read the whole disk.
pub fn plan(key: &str, node: &str, saved: Option<&Track>, qemu: QemuId, seen: &[BitmapSeen]) -> DiskRound {
    let mut base = None;
    let basis = match saved {
        None => Basis::Full {
            why: "no earlier round tracked this disk".into(),
        },
        Some(t) if t.qemu != qemu => Basis::Full {
            why: format!(
                "the source's QEMU is not the one that held bitmap {} (pid {} then, {} now): it restarted, the bitmap is gone",
                t.bitmap, t.qemu.pid, qemu.pid
            ),
        },
        Some(t) if t.node != node => Basis::Full {
            why: format!("bitmap {} was on drive {}, not {node}", t.bitmap, t.node),
        },
        Some(t) => match (seen.iter().find(|b| b.name == t.bitmap), Manifest::from_begin(&t.manifest)) {
            (None, _) => Basis::Full {
                why: format!("bitmap {} is missing in QEMU", t.bitmap),
            },
            (Some(b), _) if !b.recording => Basis::Full {
                why: format!("bitmap {} stopped recording (a round was interrupted after its rotation)", b.name),
            },
            (Some(_), None) => Basis::Full {
                why: "the kept manifest is unreadable".into(),
            },
            (Some(_), Some(m)) => {
                base = Some(m);
                Basis::Bitmap { since: t.bitmap.clone() }
            }
        },
    };
    let generation = saved.map_or(0, |t| t.generation) + 1;
    let mine = format!("{PREFIX}{key}-");
    let keep = match &basis {
        Basis::Bitmap { since } => Some(since.as_str()),
        Basis::Full { .. } => None,
    };
    let stale = seen
        .iter()
        .filter(|b| b.name.starts_with(&mine) && Some(b.name.as_str()) != keep)
        .map(|b| b.name.clone())
        .collect();
    DiskRound {
        key: key.to_string(),
        node: node.to_string(),
        basis,
        base,
        new: bitmap_name(key, generation),
        generation,
        stale,
    }
}

impl DiskRound {
    /// This disk's actions in the rotation `transaction`.
    pub fn rotation(&self) -> Vec<Value> {
        let mut a = vec![json!({
            "type": "block-dirty-bitmap-add",
            "data": { "node": self.node, "name": self.new, "persistent": false },
        })];
        if let Basis::Bitmap { since } = &self.basis {
            a.push(json!({ "type": "block-dirty-bitmap-disable", "data": { "node": self.node, "name": since } }));
        }
        a
    }

    /// The track after this round's point is hashed into `manifest`.
    pub fn committed(&self, qemu: QemuId, manifest: &Manifest) -> Track {
        Track {
            qemu,
            node: self.node.clone(),
            bitmap: self.new.clone(),
            generation: self.generation,
            manifest: manifest.to_begin(),
        }
    }

    /// The track after a failed round merged the old bitmap into the new
    /// one: the new bitmap then holds every write since the old manifest's
    /// point. `None` for a full-scan round (it has no manifest to keep).
    pub fn merged(&self, qemu: QemuId) -> Option<Track> {
        Some(self.committed(qemu, self.base.as_ref()?))
    }
}

/// How a disk's manifest was made this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanKind {
    /// Only the blocks a dirty bitmap marked were read.
    DirtyBitmap,
    /// Every allocated block was read.
    Full,
}

impl std::fmt::Display for ScanKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScanKind::DirtyBitmap => "dirty-bitmap",
            ScanKind::Full => "full",
        })
    }
}

/// One pre-copy round of a move, as its record keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreCopyRound {
    /// Round number (1: the first, full copy).
    pub round: usize,
    /// Bytes read from the source disks to find what changed.
    pub scanned_bytes: u64,
    /// Bytes in their allocated extents.
    pub allocated_bytes: u64,
    /// Data blocks that crossed the link.
    pub blocks_sent: u64,
    /// Compressed bytes sent.
    pub bytes_sent: u64,
    /// How each disk's changes were found.
    pub scans: Vec<ScanKind>,
    /// Milliseconds the round took.
    pub took_ms: u64,
    /// Why a disk's copy failed this round, if one did (the next round or
    /// the copy after the stop catches up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A disk's manifest at this round's point and what making it cost.
#[derive(Debug)]
pub struct Scanned {
    /// The manifest.
    pub manifest: Manifest,
    /// Bytes read from the source to make it.
    pub scanned_bytes: u64,
    /// How it was made.
    pub kind: ScanKind,
    /// Seconds it took.
    pub took_s: f64,
}

/// The dirty tracking of one running source for one round: created by
/// [`Tracked::start`] (which rotates the bitmaps), then each disk is
/// [`Tracked::scan`]ned. Dropped with a disk not scanned (the round failed
/// before), it merges that disk's old bitmap back into the new one.
pub struct Tracked {
    guest: hv::Guest,
    qemu: QemuId,
    store: Arc<Store>,
    work: PathBuf,
    disks: Vec<(DiskRound, String)>,
    settled: Vec<bool>,
}

impl Tracked {
    /// Attaches to `server`'s running QEMU and rotates the bitmaps of its
    /// disks, tracked under `keys` (one per disk, in order) in one
    /// transaction. `None` (said in `log`) when there is no monitor to use or
    /// the rotation fails: the round then reads whole disks as before.
    pub fn start(app: &App, server: &ServerRecord, keys: &[String], log: &mut dyn FnMut(String)) -> Option<Tracked> {
        if std::env::var(SWITCH_ENV).is_ok_and(|v| v.trim() == "off") {
            return untracked(log, format!("turned off by {SWITCH_ENV}=off"));
        }
        match app.source.running(server) {
            Ok(Some(g)) => Tracked::start_on(g, app.store.clone(), app.data_dir.join("transfer"), keys, log),
            Ok(None) => untracked(log, "the source's QEMU does not run".into()),
            Err(e) => untracked(log, format!("cannot reach the source's QEMU monitor: {e}")),
        }
    }

    /// [`Tracked::start`] on the QEMU of `guest`, keeping tracks in
    /// `store`; `work` holds the private sockets of the NBD exports.
    pub fn start_on(guest: hv::Guest, store: Arc<Store>, work: PathBuf, keys: &[String], log: &mut dyn FnMut(String)) -> Option<Tracked> {
        let Some(qemu) = QemuId::of(guest.pid()) else {
            return untracked(log, format!("QEMU pid {} vanished", guest.pid()));
        };
        if let Err(e) = store.ensure(&TRACKS) {
            return untracked(log, e.to_string());
        }
        let mut disks = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let node = format!("disk{i}");
            let seen = match bitmap::seen(&guest, &node) {
                Ok(s) => s,
                Err(e) => return untracked(log, e.to_string()),
            };
            let saved = match store.get(&TRACKS, key) {
                Ok(s) => s,
                Err(e) => return untracked(log, e.to_string()),
            };
            let r = plan(key, &node, saved.as_ref(), qemu, &seen.bitmaps);
            for s in &r.stale {
                if let Err(e) = bitmap::remove(&guest, &node, s) {
                    tracing::warn!(bitmap = %s, error = %e, "cannot remove a stale dirty bitmap");
                }
            }
            disks.push((r, seen.node_name));
        }
        let actions = disks.iter().flat_map(|(r, _)| r.rotation()).collect();
        if let Err(e) = bitmap::transaction(&guest, actions) {
            return untracked(log, e.to_string());
        }
        for (i, (r, _)) in disks.iter().enumerate() {
            log(match &r.basis {
                Basis::Bitmap { since } => format!(
                    "disk {i}: dirty bitmap {} started at this point; this round reads only the blocks bitmap {since} marked since the last one",
                    r.new
                ),
                Basis::Full { why } => format!(
                    "disk {i}: full scan ({why}); dirty bitmap {} started at this point for the next round",
                    r.new
                ),
            });
        }
        let settled = vec![false; disks.len()];
        Some(Tracked {
            guest,
            qemu,
            store,
            work,
            disks,
            settled,
        })
    }

    /// The manifest of disk `i` at this round's point, read from `view`
    /// (opened on `path`: the round's still copy, or the live disk):
    /// the last manifest updated with the blocks the old bitmap marked, or
    /// a full scan. Keeps the new track and removes the old bitmap.
    pub fn scan(&mut self, i: usize, view: &GuestView, path: &Path, log: &mut dyn FnMut(String)) -> Result<Scanned, DirtyError> {
        let t = Instant::now();
        let (r, node_name) = &self.disks[i];
        let from_bitmap = match (&r.basis, &r.base) {
            (Basis::Bitmap { since }, Some(base)) if base.size == view.size => {
                match bitmap::dirty_extents(&self.guest, node_name, since, &self.work) {
                    Ok(extents) => Some((since, base.clone(), extents)),
                    Err(e) => {
                        log(format!("disk {i}: {e}; full scan instead"));
                        None
                    }
                }
            }
            (Basis::Bitmap { since }, Some(base)) => {
                log(format!(
                    "disk {i}: its size changed ({} → {} bytes) since bitmap {since} started; full scan instead",
                    base.size, view.size
                ));
                None
            }
            _ => None,
        };
        let (manifest, scanned_bytes, kind) = match from_bitmap {
            Some((since, mut m, extents)) => {
                let blocks = blocks_in(&extents, view.size);
                let read = m.rescan(view, path, &blocks)?;
                log(format!(
                    "disk {i}: bitmap {since} marked {} extent(s) in {} block(s); {:.1} MiB read of {:.1} MiB allocated",
                    extents.len(),
                    blocks.len(),
                    read as f64 / 1048576.0,
                    view.allocated() as f64 / 1048576.0
                ));
                (m, read, ScanKind::DirtyBitmap)
            }
            None => {
                let mut m = Manifest::zeros(view.size);
                let read = m.rescan(view, path, &view.candidate_blocks())?;
                (m, read, ScanKind::Full)
            }
        };
        self.store.put(&TRACKS, &r.key, &r.committed(self.qemu, &manifest))?;
        self.settled[i] = true;
        if let Basis::Bitmap { since } = &r.basis {
            if let Err(e) = bitmap::remove(&self.guest, &r.node, since) {
                tracing::warn!(bitmap = %since, error = %e, "cannot remove the old dirty bitmap; the next round removes it");
            }
        }
        Ok(Scanned {
            manifest,
            scanned_bytes,
            kind,
            took_s: t.elapsed().as_secs_f64(),
        })
    }

    /// [`Tracked::scan`] of the image at `path` (`work` holds the storage
    /// daemon of a non-raw image), returning the view to send it from.
    pub fn scan_path(
        &mut self,
        i: usize,
        path: &Path,
        work: &Path,
        log: &mut dyn FnMut(String),
    ) -> Result<(Arc<GuestView>, Scanned), DirtyError> {
        let view = GuestView::open(path, work).map_err(TransferError::from)?;
        let scanned = self.scan(i, &view, path, log)?;
        Ok((Arc::new(view), scanned))
    }

    /// Ends the tracking of these disks (a move's pre-copy is over: the
    /// copy after the stop reads the stopped disks whole): removes their
    /// bitmaps and tracks.
    pub fn forget(mut self) {
        for (i, (r, _)) in self.disks.iter().enumerate() {
            self.settled[i] = true;
            let _ = bitmap::remove(&self.guest, &r.node, &r.new);
            if let Basis::Bitmap { since } = &r.basis {
                let _ = bitmap::remove(&self.guest, &r.node, since);
            }
            if let Err(e) = self.store.delete(&TRACKS, &r.key) {
                tracing::warn!(key = %r.key, error = %e, "cannot forget a dirty-bitmap track");
            }
        }
    }
}

/// Ends the tracking of `server`'s disks under `keys` (a move's pre-copy is
/// over: the copy after the stop reads the stopped disks whole): removes
/// the bitmaps from its QEMU, if it runs, and the tracks. Best effort.
pub fn forget(app: &App, server: &ServerRecord, keys: &[String]) {
    if let Ok(Some(guest)) = app.source.running(server) {
        for (i, key) in keys.iter().enumerate() {
            let node = format!("disk{i}");
            let mine = format!("{PREFIX}{key}-");
            let Ok(seen) = bitmap::seen(&guest, &node) else { continue };
            for b in seen.bitmaps.iter().filter(|b| b.name.starts_with(&mine)) {
                if let Err(e) = bitmap::remove(&guest, &node, &b.name) {
                    tracing::warn!(bitmap = %b.name, error = %e, "cannot remove a dirty bitmap");
                }
            }
        }
    }
    for key in keys {
        let _ = app.store.delete(&TRACKS, key);
    }
}

/// Says in `log` why a round runs without dirty bitmaps.
fn untracked(log: &mut dyn FnMut(String), why: String) -> Option<Tracked> {
    log(format!(
        "no dirty bitmaps this round ({why}): every allocated block is read and hashed"
    ));
    None
}

impl Drop for Tracked {
    /// A disk the round did not scan: merge its old bitmap into the new
    /// one so that the next round still sees every write since the kept
    /// manifest; a full-scan disk has no manifest: its track goes.
    fn drop(&mut self) {
        for (i, (r, _)) in self.disks.iter().enumerate() {
            if self.settled[i] {
                continue;
            }
            let kept = match (&r.basis, r.merged(self.qemu)) {
                (Basis::Bitmap { since }, Some(t)) => bitmap::merge_back(&self.guest, &r.node, since, &r.new)
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.store.put(&TRACKS, &r.key, &t).map_err(|e| e.to_string())),
                _ => Err("no manifest to continue from".into()),
            };
            match kept {
                Ok(()) => {
                    tracing::info!(disk = %r.node, bitmap = %r.new, "round failed: the old dirty bitmap was merged back into the new one")
                }
                Err(why) => {
                    tracing::warn!(disk = %r.node, "round failed and the dirty bitmap cannot continue ({why}): the next round reads the whole disk");
                    let _ = bitmap::remove(&self.guest, &r.node, &r.new);
                    let _ = self.store.delete(&TRACKS, &r.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::transfer::{sha256, BLOCK_SIZE};

    const Q: QemuId = QemuId { pid: 100, started: 5000 };

    fn seen(names: &[(&str, bool)]) -> Vec<BitmapSeen> {
        names
            .iter()
            .map(|(n, r)| BitmapSeen {
                name: n.to_string(),
                recording: *r,
            })
            .collect()
    }

    fn track(generation: u64) -> Track {
        let mut m = Manifest::zeros(4 * BLOCK_SIZE);
        m.set(2, Some(sha256(b"x")));
        Track {
            qemu: Q,
            node: "disk0".into(),
            bitmap: bitmap_name("dr-web1-d0", generation),
            generation,
            manifest: m.to_begin(),
        }
    }

    fn full(r: &DiskRound) -> bool {
        matches!(r.basis, Basis::Full { .. })
    }

    #[test]
    fn continues_only_from_a_recording_bitmap_of_the_same_qemu() {
        let t = track(3);
        let ok = plan("dr-web1-d0", "disk0", Some(&t), Q, &seen(&[("isthmus-dr-web1-d0-3", true)]));
        assert_eq!(
            ok.basis,
            Basis::Bitmap {
                since: "isthmus-dr-web1-d0-3".into()
            }
        );
        assert_eq!(ok.new, "isthmus-dr-web1-d0-4");
        assert_eq!(ok.base.as_ref().map(Manifest::to_begin), Some(t.manifest.clone()));
        assert!(ok.stale.is_empty());

        // No track yet, another QEMU (restart or reused pid), bitmap gone or
        // disabled (a crash after the rotation), another drive: full scans.
        let first = plan("dr-web1-d0", "disk0", None, Q, &[]);
        assert!(full(&first) && first.new == "isthmus-dr-web1-d0-1" && first.base.is_none());
        let restarted = QemuId { pid: 100, started: 9 };
        assert!(full(&plan(
            "dr-web1-d0",
            "disk0",
            Some(&t),
            restarted,
            &seen(&[("isthmus-dr-web1-d0-3", true)])
        )));
        assert!(full(&plan("dr-web1-d0", "disk0", Some(&t), Q, &[])));
        let r = plan("dr-web1-d0", "disk0", Some(&t), Q, &seen(&[("isthmus-dr-web1-d0-3", false)]));
        assert!(full(&r), "{r:?}");
        assert_eq!(
            r.stale,
            vec!["isthmus-dr-web1-d0-3".to_string()],
            "the disabled bitmap is cleared away"
        );
        assert!(full(&plan(
            "dr-web1-d0",
            "disk1",
            Some(&t),
            Q,
            &seen(&[("isthmus-dr-web1-d0-3", true)])
        )));
    }

    #[test]
    fn stale_bitmaps_are_ours_only() {
        let t = track(3);
        let r = plan(
            "dr-web1-d0",
            "disk0",
            Some(&t),
            Q,
            &seen(&[
                ("isthmus-dr-web1-d0-3", true),
                ("isthmus-dr-web1-d0-2", false),
                ("isthmus-dr-web1-d01-7", true),
                ("backup-tool", true),
            ]),
        );
        assert_eq!(r.stale, vec!["isthmus-dr-web1-d0-2".to_string()]);
    }

    #[test]
    fn rotation_adds_the_new_bitmap_and_disables_the_old_at_once() {
        let t = track(3);
        let r = plan("dr-web1-d0", "disk0", Some(&t), Q, &seen(&[("isthmus-dr-web1-d0-3", true)]));
        let a = r.rotation();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0]["type"], "block-dirty-bitmap-add");
        assert_eq!(a[0]["data"]["name"], "isthmus-dr-web1-d0-4");
        assert_eq!(a[1]["type"], "block-dirty-bitmap-disable");
        assert_eq!(a[1]["data"]["name"], "isthmus-dr-web1-d0-3");
        let first = plan("dr-web1-d0", "disk0", None, Q, &[]);
        assert_eq!(first.rotation().len(), 1, "nothing to disable on a first round");
    }

    #[test]
    fn commit_moves_to_the_new_bitmap_and_a_failure_keeps_the_old_manifest() {
        let t = track(3);
        let r = plan("dr-web1-d0", "disk0", Some(&t), Q, &seen(&[("isthmus-dr-web1-d0-3", true)]));
        let mut m = r.base.clone().unwrap();
        m.set(0, Some(sha256(b"new")));
        let c = r.committed(Q, &m);
        assert_eq!((c.bitmap.as_str(), c.generation), ("isthmus-dr-web1-d0-4", 4));
        assert_eq!(c.manifest, m.to_begin());
        // Merged back: the new bitmap now covers everything since the old point.
        let merged = r.merged(Q).unwrap();
        assert_eq!(merged.bitmap, "isthmus-dr-web1-d0-4");
        assert_eq!(merged.manifest, t.manifest);
        // The next round continues from it.
        let next = plan("dr-web1-d0", "disk0", Some(&merged), Q, &seen(&[("isthmus-dr-web1-d0-4", true)]));
        assert_eq!(
            next.basis,
            Basis::Bitmap {
                since: "isthmus-dr-web1-d0-4".into()
            }
        );
        assert!(plan("dr-web1-d0", "disk0", None, Q, &[]).merged(Q).is_none());
    }

    #[test]
    fn qemu_identity_of_this_process() {
        let me = QemuId::of(std::process::id()).expect("own stat");
        assert_eq!(me, QemuId::of(std::process::id()).unwrap());
        assert!(me.started > 0);
        assert!(QemuId::of(u32::MAX).is_none());
    }
}
