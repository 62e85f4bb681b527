//! Firmware-style A/B updates of the appliance image (`isthmus update`).
//!
//! The disk holds a boot partition (GRUB, `grub.cfg`, `grubenv`), two root
//! slots (partitions 2 = a, 3 = b) and the data partition. An update
//! ([`apply`]) verifies a signed image ([`image`]), writes its root filesystem
//! into the slot that is not running, reads it back, and only then sets
//! `trial=<slot>`, `trial_state=new` in the boot loader environment
//! ([`grubenv`]). GRUB boots the trial slot once (`trial_state=booted`); the
//! new system makes it the default ([`confirm`]) only after the appliance
//! service is up. If it never gets there (cannot load, cannot mount, panics,
//! hangs until the watchdog reboots), the next boot finds the trial
//! unconfirmed, falls back to the old slot with `isthmus.update_failed=<slot>`
//! on the kernel command line, and [`boot_check`] says so on the console and
//! in the log. A power cut while the slot is written leaves the environment
//! untouched (the old slot boots), and the state file on the data partition
//! tells [`boot_check`] to report the interrupted update.

pub mod cli;
pub mod grubenv;
pub mod image;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the update module.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The file does not start with the update magic.
    #[error("not an Isthmus update image (it must start with 'ISTHMUS-UPDATE-1'): use the appliance-update.img of an image build")]
    NotAnUpdate,
    /// The header line is malformed.
    #[error("bad update header: {0}; the file is damaged or not an Isthmus update: download it again")]
    BadHeader(String),
    /// The signature does not verify against the appliance's key.
    #[error("the update's signature does not verify against this appliance's update key: it was not signed by the Isthmus build key (or was altered); nothing was written")]
    BadSignature,
    /// The payload length differs from the header's.
    #[error("the update's root image is {got} bytes, its header says {want}: the file is truncated or damaged; download it again (nothing was written)")]
    Size {
        /// Bytes present.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// The payload digest differs from the signed one.
    #[error("the update's root image has SHA-256 {got}, the signed header says {want}: the file is damaged; download it again (nothing was written)")]
    Digest {
        /// Digest computed.
        got: String,
        /// Digest signed.
        want: String,
    },
    /// The payload is larger than the slot.
    #[error("the update's root image ({size} bytes) does not fit slot {slot} ({capacity} bytes): this update needs a newer disk layout")]
    TooBig {
        /// Payload size.
        size: u64,
        /// Slot written.
        slot: Slot,
        /// Slot size.
        capacity: u64,
    },
    /// What was written does not read back the same.
    #[error(
        "slot {slot} reads back with SHA-256 {got} after writing, want {want}: the disk may be failing; the old slot stays the default"
    )]
    ReadBack {
        /// Slot written.
        slot: Slot,
        /// Digest read back.
        got: String,
        /// Digest written.
        want: String,
    },
    /// This version already failed to boot here.
    #[error("version {0} already failed to come up on this appliance (it was rolled back); not applying it again: remove the update medium or use a newer update")]
    PreviouslyFailed(String),
    /// The GRUB environment block is malformed.
    #[error("boot loader environment: {0}")]
    Env(String),
    /// The running system's layout cannot be worked out.
    #[error("{0}")]
    Layout(String),
    /// An I/O error, with what was being done.
    #[error("cannot {what}: {source}")]
    Io {
        /// The operation and path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Partition 2.
    A,
    /// Partition 3.
    B,
}

impl Slot {
    /// The letter used in `grubenv` and on the kernel command line.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// Parses `a` or `b`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
    /// Partition number on the boot disk.
    pub fn partition(self) -> u32 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// What a slot holds, as recorded on the data partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotStatus {
    /// Being written (still there at boot = the write was interrupted).
    Writing,
    /// Written and read back; waiting for its trial boot.
    Written,
    /// Booted and confirmed by the appliance service.
    Good,
    /// Did not come up; rolled back.
    Failed,
    /// The write was interrupted; the slot holds garbage.
    Interrupted,
}

/// One slot's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Version written there.
    pub version: String,
    /// SHA-256 of the root image.
    pub sha256: String,
    /// State.
    pub status: SlotStatus,
}

/// The update state file (`/data/isthmus-update/state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Per slot.
    #[serde(default)]
    pub slots: BTreeMap<Slot, SlotInfo>,
    /// Versions that failed their trial boot (never applied again).
    #[serde(default)]
    pub failed_versions: Vec<String>,
}

/// The running system as the update code sees it; every path can be
/// redirected (tests, rescue systems).
#[derive(Debug, Clone)]
pub struct System {
    /// The boot loader environment block.
    pub env_path: PathBuf,
    /// The state file.
    pub state_path: PathBuf,
    /// Block devices (or files) of slots a and b.
    pub slot_devices: [PathBuf; 2],
    /// The slot running now.
    pub current: Slot,
    /// Booted as a trial (`isthmus.trial=1`).
    pub trial: bool,
    /// The boot loader fell back from this slot (`isthmus.update_failed=`).
    pub fell_back_from: Option<Slot>,
    /// Version of the running image.
    pub version: String,
    /// Ed25519 public key updates must be signed with.
    pub public_key: Vec<u8>,
}

/// Where the image keeps things.
pub mod paths {
    /// Boot loader environment on the boot partition (mounted by rcS).
    pub const ENV: &str = "/bootpart/boot/grub/grubenv";
    /// Public half of the update signing key (64 hex digits).
    pub const PUBLIC_KEY: &str = "/etc/isthmus/update-key.pub";
    /// Version of the running image.
    pub const VERSION: &str = "/etc/isthmus/version";
    /// State file, relative to the data partition's mount point.
    pub const STATE: &str = "isthmus-update/state.json";
}

impl System {
    /// The running appliance: slot and disk from `/proc/mounts`, trial and
    /// fallback flags from `/proc/cmdline`, key and version from `/etc/isthmus`.
    pub fn detect(data_mount: &Path) -> Result<System, UpdateError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| UpdateError::Io {
                what: format!("read {p}"),
                source,
            })
        };
        let mounts = read("/proc/mounts")?;
        let root = mounts
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?, w.next()?))
            })
            .filter(|(dev, mnt)| *mnt == "/" && dev.starts_with("/dev/"))
            .map(|(dev, _)| dev.to_string())
            .next_back()
            .ok_or_else(|| UpdateError::Layout("the root filesystem is not on a block device: not an Isthmus appliance image".into()))?;
        let disk = root.trim_end_matches(|c: char| c.is_ascii_digit());
        let current = match &root[disk.len()..] {
            "2" => Slot::A,
            "3" => Slot::B,
            n => {
                return Err(UpdateError::Layout(format!(
                    "the root is partition {n:?} of {disk}, not slot a (2) or b (3): this disk has no A/B layout; reinstall from a current image"
                )))
            }
        };
        let cmdline = read("/proc/cmdline")?;
        let arg = |k: &str| cmdline.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
        let key_hex = read(paths::PUBLIC_KEY)?;
        let public_key = hex::decode(key_hex.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| UpdateError::Layout(format!("{} is not a 32-byte hex Ed25519 key", paths::PUBLIC_KEY)))?;
        Ok(System {
            env_path: PathBuf::from(paths::ENV),
            state_path: data_mount.join(paths::STATE),
            slot_devices: [format!("{disk}2").into(), format!("{disk}3").into()],
            current,
            trial: arg("isthmus.trial=").as_deref() == Some("1"),
            fell_back_from: arg("isthmus.update_failed=").and_then(|s| Slot::parse(&s)),
            version: read(paths::VERSION)?.trim().to_string(),
            public_key,
        })
    }

    fn device(&self, s: Slot) -> &Path {
        &self.slot_devices[match s {
            Slot::A => 0,
            Slot::B => 1,
        }]
    }

    fn load_state(&self) -> Result<State, UpdateError> {
        match std::fs::read(&self.state_path) {
            Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); starting a new one", self.state_path.display());
                State::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(UpdateError::Io {
                what: format!("read {}", self.state_path.display()),
                source,
            }),
        }
    }

    fn save_state(&self, s: &State) -> Result<(), UpdateError> {
        let io = |source| UpdateError::Io {
            what: format!("write {} (is the data partition full?)", self.state_path.display()),
            source,
        };
        if let Some(d) = self.state_path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let tmp = self.state_path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(s).unwrap_or_default()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.state_path).map_err(io)?;
        // The rename itself must reach the disk before the slot is touched:
        // after a power cut the next boot has to see "writing".
        if let Some(d) = self.state_path.parent() {
            File::open(d).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

/// Result of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Applied {
    /// The image is the running version: nothing to do.
    AlreadyRunning {
        /// Its version.
        version: String,
    },
    /// Written; the next boot tries it once.
    Staged {
        /// Slot written.
        slot: Slot,
        /// Version written.
        version: String,
    },
}

/// Progress of a long step: (step label, bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Verifies `image` and writes it into the inactive slot; see the module docs.
pub fn apply(sys: &System, image_path: &Path, progress: Progress) -> Result<Applied, UpdateError> {
    let v = image::verify(image_path, &sys.public_key, &mut |done, total| progress("verify", done, total))?;
    let total = v.header.root_size;
    let h = &v.header;
    if h.version == sys.version {
        return Ok(Applied::AlreadyRunning {
            version: h.version.clone(),
        });
    }
    let mut state = sys.load_state()?;
    if state.failed_versions.contains(&h.version) {
        return Err(UpdateError::PreviouslyFailed(h.version.clone()));
    }
    let slot = sys.current.other();
    let dev = sys.device(slot);
    let io = |what: String| move |source| UpdateError::Io { what, source };
    let mut out = OpenOptions::new()
        .write(true)
        .read(true)
        .open(dev)
        .map_err(io(format!("open slot {slot} ({})", dev.display())))?;
    let capacity = out.seek(SeekFrom::End(0)).map_err(io(format!("size slot {slot}")))?;
    if h.root_size > capacity {
        return Err(UpdateError::TooBig {
            size: h.root_size,
            slot,
            capacity,
        });
    }
    // From here on the slot is garbage until the read-back passes: say so first.
    state.slots.insert(
        slot,
        SlotInfo {
            version: h.version.clone(),
            sha256: h.root_sha256.clone(),
            status: SlotStatus::Writing,
        },
    );
    sys.save_state(&state)?;
    let mut env = grubenv::read(&sys.env_path)?;
    if env.get("trial") == Some(slot.letter()) {
        // An older staged update of this slot must not be booted half-overwritten.
        env.set("trial", "");
        env.set("trial_state", "");
        grubenv::write(&sys.env_path, &env)?;
    }
    let mut src = File::open(image_path).map_err(io(format!("open {}", image_path.display())))?;
    src.seek(SeekFrom::Start(v.payload_offset))
        .map_err(io(format!("seek {}", image_path.display())))?;
    let mut src = BufReader::with_capacity(1 << 20, src).take(h.root_size);
    out.seek(SeekFrom::Start(0)).map_err(io(format!("seek slot {slot}")))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(format!("read {}", image_path.display())))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(io(format!("write slot {slot} ({})", dev.display())))?;
        done += n as u64;
        progress("write", done, total);
    }
    out.sync_all().map_err(io(format!("flush slot {slot}")))?;
    drop(out);
    // Read back what the disk holds now (through the page cache, after the flush).
    let mut back = File::open(dev).map_err(io(format!("open slot {slot}")))?;
    let got =
        image::digest_of(&mut back, h.root_size, &mut |d| progress("read back", d, total)).map_err(io(format!("read back slot {slot}")))?;
    if got != h.root_sha256 {
        return Err(UpdateError::ReadBack {
            slot,
            got,
            want: h.root_sha256.clone(),
        });
    }
    env.set("trial", slot.letter());
    env.set("trial_state", "new");
    env.set("failed", "");
    grubenv::write(&sys.env_path, &env)?;
    if let Some(s) = state.slots.get_mut(&slot) {
        s.status = SlotStatus::Written;
    }
    sys.save_state(&state)?;
    Ok(Applied::Staged {
        slot,
        version: h.version.clone(),
    })
}

fn version_of(state: &State, s: Slot) -> String {
    state
        .slots
        .get(&s)
        .map(|i| i.version.clone())
        .unwrap_or_else(|| "of the original install".into())
}

/// At boot: reports a rolled-back trial and an interrupted write, and
/// records them. Returns the lines to show on the console and in the log.
pub fn boot_check(sys: &System) -> Result<Vec<String>, UpdateError> {
    let mut state = sys.load_state()?;
    let mut out = Vec::new();
    let mut changed = false;
    for (slot, info) in state.slots.iter_mut() {
        if info.status == SlotStatus::Writing && *slot != sys.current {
            out.push(format!(
                "UPDATE INTERRUPTED: writing version {} into slot {slot} did not finish (power cut or crash); slot {} still runs with its data. Apply the update again.",
                info.version, sys.current
            ));
            info.status = SlotStatus::Interrupted;
            changed = true;
        }
    }
    if let Some(bad) = sys.fell_back_from.filter(|s| *s != sys.current) {
        let mut env = grubenv::read(&sys.env_path)?;
        if env.get("failed").is_some() {
            let v = version_of(&state, bad);
            out.push(format!(
                "UPDATE FAILED: slot {bad} (version {v}) did not come up; rolled back to slot {} (version {}). The store and keys are unchanged. Check the update image, then apply a newer one.",
                sys.current, sys.version
            ));
            if let Some(i) = state.slots.get_mut(&bad) {
                i.status = SlotStatus::Failed;
                if !state.failed_versions.contains(&i.version) {
                    state.failed_versions.push(i.version.clone());
                }
            }
            changed = true;
            env.set("failed", "");
            grubenv::write(&sys.env_path, &env)?;
        }
    }
    if sys.trial {
        out.push(format!(
            "update: trying slot {} (version {}) once; it becomes the default when the appliance is up",
            sys.current, sys.version
        ));
    }
    if changed {
        sys.save_state(&state)?;
    }
    Ok(out)
}

/// Once the appliance service is up: makes a trial slot the default.
/// Returns the line to show, or `None` when there was nothing to confirm.
pub fn confirm(sys: &System) -> Result<Option<String>, UpdateError> {
    if !sys.trial {
        return Ok(None);
    }
    let mut env = grubenv::read(&sys.env_path)?;
    if env.get("trial") != Some(sys.current.letter()) {
        return Ok(None);
    }
    env.set("slot", sys.current.letter());
    env.set("trial", "");
    env.set("trial_state", "");
    grubenv::write(&sys.env_path, &env)?;
    let mut state = sys.load_state()?;
    state.slots.insert(
        sys.current,
        SlotInfo {
            version: sys.version.clone(),
            sha256: state.slots.get(&sys.current).map(|i| i.sha256.clone()).unwrap_or_default(),
            status: SlotStatus::Good,
        },
    );
    sys.save_state(&state)?;
    Ok(Some(format!(
        "UPDATE CONFIRMED: slot {} (version {}) is up and is now the default; slot {} keeps the previous version",
        sys.current,
        sys.version,
        sys.current.other()
    )))
}
