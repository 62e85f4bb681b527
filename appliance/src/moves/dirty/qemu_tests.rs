//! Dirty tracking against a real QEMU: a guest without CPU work (`-S`,
//! `-machine none`) whose drive is written through the monitor's
//! `qemu-io`, so each round's expected manifest is known exactly and no
//! guest has to boot. Each round's manifest is compared with a full scan of
//! the disk as it is then.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use proto::transfer::BLOCK_SIZE;
use serde_json::json;

use super::*;

const MIB: u64 = BLOCK_SIZE;

/// A QEMU holding drive `disk0` on a raw file; killed on drop.
struct Qemu {
    run: PathBuf,
}

impl Qemu {
    fn launch(run: &Path, disk: &Path) -> Qemu {
        std::fs::create_dir_all(run).unwrap();
        let status = Command::new("qemu-system-x86_64")
            .args(["-S", "-display", "none", "-machine", "none", "-nodefaults", "-name", "dirty-test"])
            .arg("-drive")
            .arg(format!("if=none,id=disk0,file={},format=raw", disk.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", run.join("qmp.sock").display()))
            .arg("-pidfile")
            .arg(run.join("qemu.pid"))
            .arg("-daemonize")
            .status()
            .expect("qemu-system-x86_64 runs");
        assert!(status.success(), "QEMU started");
        Qemu { run: run.to_path_buf() }
    }

    fn guest(&self) -> hv::Guest {
        hv::Guest::attach(&self.run).expect("attach").expect("QEMU runs")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(Some(g)) = hv::Guest::attach(&self.run) {
            let _ = g.kill();
        }
    }
}

/// Writes `len` bytes of `byte` at `offset` of drive disk0, as the guest would.
fn guest_write(g: &hv::Guest, byte: u8, offset: u64, len: u64) {
    let cmd = format!("qemu-io disk0 \"write -P {byte} {offset} {len}\"");
    let out = g
        .execute("human-monitor-command", Some(json!({ "command-line": cmd })))
        .expect("qemu-io");
    assert!(!out.as_str().unwrap_or_default().contains("error"), "{out}");
}

/// The manifest a full scan of `disk` gives now.
fn full_scan(disk: &Path, work: &Path) -> Manifest {
    let view = GuestView::open(disk, work).unwrap();
    let mut m = Manifest::zeros(view.size);
    m.rescan(&view, disk, &view.candidate_blocks()).unwrap();
    m
}

struct Round {
    scanned: Scanned,
    log: Vec<String>,
}

/// Starts a round on `q`'s QEMU; `during` runs after the rotation (writes
/// the guest makes while the round reads); then scans disk 0.
fn round(q: &Qemu, store: &Arc<Store>, work: &Path, disk: &Path, during: impl FnOnce(&hv::Guest)) -> Round {
    let mut log = Vec::new();
    let mut t = Tracked::start_on(q.guest(), store.clone(), work.to_path_buf(), &["dr-t-d0".into()], &mut |m| {
        log.push(m)
    })
    .unwrap_or_else(|| panic!("tracked: {log:?}"));
    during(&t.guest);
    let (_, scanned) = t.scan_path(0, disk, work, &mut |m| log.push(m)).expect("scan");
    Round { scanned, log }
}

fn bitmaps(q: &Qemu) -> Vec<String> {
    bitmap::seen(&q.guest(), "disk0")
        .unwrap()
        .bitmaps
        .into_iter()
        .map(|b| b.name)
        .collect()
}

#[test]
fn rounds_read_only_what_the_bitmap_marked_and_fall_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, work) = (dir.path().join("d.raw"), dir.path().join("work"));
    std::fs::create_dir_all(&work).unwrap();
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(32 * MIB).unwrap();
    f.write_all_at(&vec![0x11; 4 * MIB as usize], 0).unwrap();
    drop(f);
    let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
    let run = dir.path().join("run");
    let q = Qemu::launch(&run, &disk);

    // First round: nothing tracked yet, the whole disk is read.
    let r = round(&q, &store, &work, &disk, |_| {});
    assert_eq!(r.scanned.kind, ScanKind::Full, "{:?}", r.log);
    assert!(r.log.iter().any(|l| l.contains("no earlier round")), "{:?}", r.log);
    assert_eq!(r.scanned.scanned_bytes, 4 * MIB);
    assert_eq!(r.scanned.manifest, full_scan(&disk, &work));

    // The guest writes 64 KiB in block 5 (a hole before) and 4 KiB in block
    // 1: the next round reads those two blocks only, and its manifest is the
    // disk's.
    let g = q.guest();
    guest_write(&g, 0x5a, 5 * MIB + 4096, 65536);
    guest_write(&g, 0x22, MIB, 4096);
    drop(g);
    let r = round(&q, &store, &work, &disk, |_| {});
    assert_eq!(r.scanned.kind, ScanKind::DirtyBitmap, "{:?}", r.log);
    assert_eq!(r.scanned.scanned_bytes, 2 * MIB, "{:?}", r.log);
    assert_eq!(r.scanned.manifest, full_scan(&disk, &work));
    assert_eq!(bitmaps(&q), vec!["isthmus-dr-t-d0-2".to_string()], "the old bitmap is gone");

    // A write during the round (after the rotation) is the next round's.
    let r = round(&q, &store, &work, &disk, |g| guest_write(g, 0x33, 9 * MIB, 512));
    assert_eq!((r.scanned.kind, r.scanned.scanned_bytes), (ScanKind::DirtyBitmap, 0), "{:?}", r.log);
    let r = round(&q, &store, &work, &disk, |_| {});
    assert_eq!(r.scanned.scanned_bytes, MIB, "{:?}", r.log);
    assert_eq!(r.scanned.manifest, full_scan(&disk, &work));

    // A round that fails after its rotation (dropped unscanned) merges the
    // old bitmap back: the next round still reads what both recorded.
    let g = q.guest();
    guest_write(&g, 0x44, 12 * MIB, 512);
    drop(g);
    {
        let mut log = Vec::new();
        let t = Tracked::start_on(q.guest(), store.clone(), work.clone(), &["dr-t-d0".into()], &mut |m| log.push(m)).unwrap();
        guest_write(&t.guest, 0x55, 14 * MIB, 512);
        drop(t);
    }
    assert_eq!(bitmaps(&q), vec!["isthmus-dr-t-d0-5".to_string()], "merged into the new one");
    let r = round(&q, &store, &work, &disk, |_| {});
    assert_eq!(
        (r.scanned.kind, r.scanned.scanned_bytes),
        (ScanKind::DirtyBitmap, 2 * MIB),
        "{:?}",
        r.log
    );
    assert_eq!(r.scanned.manifest, full_scan(&disk, &work));

    // QEMU restarts: its bitmaps are gone; the round says so and reads all.
    drop(q);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0x66; 100], 20 * MIB).unwrap();
    drop(f);
    let q = Qemu::launch(&run, &disk);
    let r = round(&q, &store, &work, &disk, |_| {});
    assert_eq!(r.scanned.kind, ScanKind::Full, "{:?}", r.log);
    assert!(r.log.iter().any(|l| l.contains("restarted")), "{:?}", r.log);
    assert_eq!(r.scanned.manifest, full_scan(&disk, &work));
    let r = round(&q, &store, &work, &disk, |_| {});
    assert_eq!((r.scanned.kind, r.scanned.scanned_bytes), (ScanKind::DirtyBitmap, 0), "{:?}", r.log);

    // Forgetting removes the bitmap and the track.
    let t = Tracked::start_on(q.guest(), store.clone(), work.clone(), &["dr-t-d0".into()], &mut |_| {}).unwrap();
    t.forget();
    assert!(bitmaps(&q).is_empty());
    assert!(store.get(&TRACKS, "dr-t-d0").unwrap().is_none());
}
