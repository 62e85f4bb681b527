//! The QMP side of dirty tracking on a running source's QEMU: which
//! bitmaps a disk has, the atomic rotation (`transaction`), merging a
//! bitmap back, and the extents a bitmap marks, read over an NBD export of
//! the disk that carries the bitmap as a metadata context
//! (`block-export-add … bitmaps: [NAME]`, QEMU docs "qemu-nbd / NBD
//! exports"; `qemu-img map` with `x-dirty-bitmap=qemu:dirty-bitmap:NAME`
//! reports the dirty extents as `"data": false`, see QEMU's
//! docs/interop/bitmaps.rst "pull backups").

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::moves::dirty::{BitmapSeen, DirtyError};

/// A disk of a running guest as QEMU's `query-block` shows it.
#[derive(Clone, Debug)]
pub struct DiskSeen {
    /// The block node the guest's device reads (exports name it).
    pub node_name: String,
    /// Its dirty bitmaps.
    pub bitmaps: Vec<BitmapSeen>,
}

fn qmp(guest: &hv::Guest, what: &str, cmd: &str, args: Value) -> Result<Value, DirtyError> {
    guest.execute(cmd, Some(args)).map_err(|e| DirtyError::Qmp {
        guest: guest.name().to_string(),
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The disk `disk` (`disk<N>`: the `-drive` id or `blockdev` node name hv gives
/// disk N) of `guest`.
pub fn seen(guest: &hv::Guest, disk: &str) -> Result<DiskSeen, DirtyError> {
    #[derive(Deserialize)]
    struct Bitmap {
        name: String,
        recording: bool,
    }
    #[derive(Deserialize)]
    struct Inserted {
        #[serde(rename = "node-name")]
        node_name: String,
        #[serde(rename = "dirty-bitmaps", default)]
        dirty_bitmaps: Vec<Bitmap>,
    }
    #[derive(Deserialize)]
    struct Block {
        #[serde(default)]
        device: String,
        inserted: Option<Inserted>,
    }
    let v = qmp(guest, "query-block", "query-block", json!({}))?;
    let blocks: Vec<Block> = serde_json::from_value(v).map_err(|e| DirtyError::Qmp {
        guest: guest.name().to_string(),
        what: "query-block".into(),
        detail: format!("unexpected answer: {e}"),
    })?;
    let b = blocks
        .into_iter()
        .filter_map(|b| Some((b.device, b.inserted?)))
        .find(|(dev, i)| dev == disk || i.node_name == disk)
        .ok_or_else(|| DirtyError::Qmp {
            guest: guest.name().to_string(),
            what: format!("find {disk}"),
            detail: "no such drive in query-block".into(),
        })?
        .1;
    Ok(DiskSeen {
        node_name: b.node_name,
        bitmaps: b
            .dirty_bitmaps
            .into_iter()
            .map(|m| BitmapSeen {
                name: m.name,
                recording: m.recording,
            })
            .collect(),
    })
}

/// Runs `actions` as one QMP `transaction`: all happen at one instant
/// between two guest writes, or none does.
pub fn transaction(guest: &hv::Guest, actions: Vec<Value>) -> Result<(), DirtyError> {
    qmp(guest, "bitmap rotation (transaction)", "transaction", json!({ "actions": actions })).map(drop)
}

/// Merges bitmap `from` into `into` (on `disk`) and removes `from`.
pub fn merge_back(guest: &hv::Guest, disk: &str, from: &str, into: &str) -> Result<(), DirtyError> {
    qmp(
        guest,
        "block-dirty-bitmap-merge",
        "block-dirty-bitmap-merge",
        json!({ "node": disk, "target": into, "bitmaps": [from] }),
    )?;
    remove(guest, disk, from)
}

/// Removes bitmap `name` from `disk`.
pub fn remove(guest: &hv::Guest, disk: &str, name: &str) -> Result<(), DirtyError> {
    qmp(
        guest,
        "block-dirty-bitmap-remove",
        "block-dirty-bitmap-remove",
        json!({ "node": disk, "name": name }),
    )
    .map(drop)
}

/// Numbers the exports of this process.
static EXPORTS: AtomicU64 = AtomicU64::new(0);

/// The guest-visible extents (start, length) that `bitmap` of block node
/// `node_name` marks dirty: QEMU's NBD server is started on a private unix
/// socket under `dir`, the node exported read-only with the bitmap, read
/// with `qemu-img map`, and everything stopped again (also on failure).
pub fn dirty_extents(guest: &hv::Guest, node_name: &str, bitmap: &str, dir: &Path) -> Result<Vec<(u64, u64)>, DirtyError> {
    let n = EXPORTS.fetch_add(1, Ordering::Relaxed);
    let private = dir.join(format!(".dirty-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&private).map_err(|e| DirtyError::Io(private.clone(), e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).map_err(|e| DirtyError::Io(private.clone(), e))?;
    }
    let sock = private.join("nbd.sock");
    let export = format!("isthmus-dirty-{n}");
    let _cleanup = Cleanup {
        guest,
        export: export.clone(),
        dir: private.clone(),
    };
    qmp(
        guest,
        "nbd-server-start",
        "nbd-server-start",
        json!({ "addr": { "type": "unix", "data": { "path": sock } } }),
    )?;
    qmp(
        guest,
        "block-export-add",
        "block-export-add",
        json!({ "type": "nbd", "id": export, "node-name": node_name, "name": export, "writable": false, "bitmaps": [bitmap] }),
    )?;
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},export={export},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}",
        sock.display()
    );
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "--image-opts", &opts])
        .output()
        .map_err(|e| DirtyError::Map(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(DirtyError::Map(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    parse_map(&out.stdout)
}

/// The extents a `qemu-img map --output=json` of a bitmap context marks
/// dirty: NBD's `NBD_STATE_DIRTY` is bit 0, which QEMU's NBD client reads
/// as `NBD_STATE_HOLE`, so a dirty extent is one without data.
pub fn parse_map(json: &[u8]) -> Result<Vec<(u64, u64)>, DirtyError> {
    #[derive(Deserialize)]
    struct Entry {
        start: u64,
        length: u64,
        data: bool,
    }
    let entries: Vec<Entry> = serde_json::from_slice(json).map_err(|e| DirtyError::Map(format!("unreadable qemu-img map output: {e}")))?;
    Ok(entries
        .into_iter()
        .filter(|e| !e.data && e.length > 0)
        .map(|e| (e.start, e.length))
        .collect())
}

/// Removes the export, stops the NBD server and deletes the socket's
/// directory, whatever happened.
struct Cleanup<'g> {
    guest: &'g hv::Guest,
    export: String,
    dir: PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // Each may fail because the step that made it did not happen.
        let _ = self
            .guest
            .execute("block-export-del", Some(json!({ "id": self.export, "mode": "hard" })));
        let _ = self.guest.execute("nbd-server-stop", None);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_extents_are_those_without_data() {
        // What qemu-img map printed for a 64 MiB disk with 64 KiB at 3 MiB
        // and 2 MiB at 20 MiB written after the bitmap was added (QEMU 10.0).
        let out = br#"[{ "start": 0, "length": 3145728, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 0},
{ "start": 3145728, "length": 65536, "depth": 0, "present": false, "zero": false, "data": false, "compressed": false},
{ "start": 3211264, "length": 17760256, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 3211264},
{ "start": 20971520, "length": 2097152, "depth": 0, "present": false, "zero": false, "data": false, "compressed": false},
{ "start": 23068672, "length": 44040192, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 23068672}]"#;
        assert_eq!(parse_map(out).unwrap(), vec![(3 << 20, 65536), (20 << 20, 2 << 20)]);
        assert!(parse_map(b"not json").is_err());
    }
}
