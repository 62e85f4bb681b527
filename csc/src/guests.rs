//! The guests this node runs: each a moved server under QEMU (via `hv`), its
//! NICs on TAP devices joined to the data-plane bridge, its disks the
//! stored images: LUKS qcow2 opened with the keys the appliance sent
//! ([`crate::blocks::BlockStore::key`], memory only), so a node without a
//! disk's key cannot start its guest. The guest list is persisted (`guests.json`) so that after
//! a restart of the node the running QEMU processes are re-attached and their
//! TAPs rejoin the bridge.
//!
//! Every call into `hv` goes through the small private functions at the
//! bottom, so a change of its API stays local to them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::api::{AccelKind, GuestInfo, GuestState, GuestStats, StartGuest};
use proto::HardwareProfile;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::bridge::NodeBridge;
use crate::disks::{DiskId, DiskStore};
use crate::state_dir::{self, PUBLIC_MODE};

/// How long a guest gets to power off after the ACPI button before QEMU is stopped.
pub const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest Linux interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Errors managing guests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Name unusable.
    #[error("guest name {0:?} is not usable: use 1 to 64 characters of A-Z a-z 0-9 _ . -, not starting with . or -")]
    BadName(String),
    /// Profile invalid.
    #[error("invalid hardware profile: {0}")]
    Profile(#[from] proto::profile::ProfileError),
    /// Wrong number of disks.
    #[error("the profile has {profile} disk(s) but {ids} disk id(s) were given; give one uploaded disk id per profile disk, same order")]
    DiskCount {
        /// Disks in the profile.
        profile: usize,
        /// Ids given.
        ids: usize,
    },
    /// A disk id is malformed.
    #[error(transparent)]
    DiskId(#[from] crate::disks::Error),
    /// A disk has not arrived (no finished transfer).
    #[error("disk {0} is not on this node; send it with a block transfer first (POST /v1/transfers/{0}; `isthmus move` does this)")]
    MissingDisk(String),
    /// The node holds no key for a disk (keys live only in memory).
    #[error("no key for disk {0} on this node (keys are kept in memory only, so a restarted node has none): its encrypted image cannot be opened")]
    NoDiskKey(String),
    /// A disk belongs to another guest.
    #[error("disk {disk} is already used by guest {guest}; a disk image can back only one guest")]
    DiskInUse {
        /// The disk.
        disk: String,
        /// The guest using it.
        guest: String,
    },
    /// A guest of that name exists.
    #[error("guest {0} already exists on this node; DELETE /v1/guests/{0} first to start it anew")]
    Exists(String),
    /// TAP names of two guests collide.
    #[error("TAP device {tap} of guest {guest} is already used by guest {other}; give one of them another name")]
    TapCollision {
        /// The TAP.
        tap: String,
        /// The new guest.
        guest: String,
        /// The guest owning it.
        other: String,
    },
    /// No such guest.
    #[error("no guest named {0} on this node")]
    NotFound(String),
    /// The guest is listed but its QEMU does not run (no counters to read).
    #[error("guest {0} is not running; start it again (DELETE then POST /v1/guests) to read its counters")]
    NotRunning(String),
    /// The data-plane bridge cannot take the guest's NICs.
    #[error("cannot connect the guest's NICs: {0}")]
    Bridge(#[from] crate::bridge::Error),
    /// `hv` failed (TAP, QEMU launch, QMP).
    #[error("{what}: {message}")]
    Hv {
        /// The operation.
        what: String,
        /// What hv said (QEMU's own message for a failed launch).
        message: String,
    },
    /// The guest list could not be read or written.
    #[error(transparent)]
    State(#[from] state_dir::Error),
    /// The guest list is damaged.
    #[error("{0} is damaged ({1}); move it aside and restart the node (running guests keep running)")]
    Corrupt(PathBuf, String),
    /// A blocking task panicked.
    #[error("internal error: {0}")]
    Task(String),
}

/// What is persisted about a guest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestRecord {
    /// Server name.
    pub name: String,
    /// Its hardware.
    pub profile: HardwareProfile,
    /// Disk ids, in profile order.
    pub disk_ids: Vec<String>,
    /// TAP devices, in profile NIC order.
    pub taps: Vec<String>,
    /// Accelerator it was started with.
    pub accel: AccelKind,
    /// A rehearsal copy: its TAPs are on no bridge (see [`StartGuest::isolated`]).
    #[serde(default)]
    pub isolated: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestsFile {
    guests: Vec<GuestRecord>,
}

/// The QEMU process of a guest, when there is one. Held under the guest's
/// own lock, so that a long stop does not block the others.
type Slot = Arc<Mutex<Option<hv::Guest>>>;

struct Entry {
    record: GuestRecord,
    slot: Slot,
}

/// All guests of this node.
pub struct Guests {
    file: PathBuf,
    run_root: PathBuf,
    map: Mutex<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for Guests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guests").field("file", &self.file).finish_non_exhaustive()
    }
}

/// TAP device name for NIC `idx` of guest `name`: `tp<idx>-<short>`, at most
/// 15 bytes. `<short>` is the name itself when it is short, lowercase and
/// plain; otherwise a prefix of it plus 4 hex digits of its SHA-256, so that
/// names differing only in case or at the end still get different TAPs.
pub fn tap_name(guest: &str, idx: usize) -> String {
    let prefix = format!("tp{idx}-");
    let room = IFNAME_MAX.saturating_sub(prefix.len());
    let plain = guest
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if plain && guest.len() <= room {
        return format!("{prefix}{guest}");
    }
    let clean: String = guest
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .map(|c| c.to_ascii_lowercase())
        .take(room.saturating_sub(4))
        .collect();
    let h = hex::encode(Sha256::digest(guest.as_bytes()));
    format!("{prefix}{clean}{}", &h[..4])
}

impl Guests {
    /// An empty guest table persisted in `file`, run directories under `run_root`.
    pub fn new(file: PathBuf, run_root: PathBuf) -> Self {
        Guests {
            file,
            run_root,
            map: Mutex::new(BTreeMap::new()),
        }
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.run_root.join(name)
    }

    /// Loads `guests.json`, re-attaches to running QEMU processes and puts
    /// their TAPs back on the bridge. Guests whose QEMU is gone stay listed
    /// as stopped.
    pub async fn restore(&self, bridge: &NodeBridge) -> Result<(), Error> {
        let file = self.file.clone();
        let loaded = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice::<GuestsFile>(&b).map_err(|e| Error::Corrupt(file.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GuestsFile::default(),
            Err(e) => return Err(state_dir::Error::Read(file, e).into()),
        };
        let mut map = self.map.lock().await;
        for record in loaded.guests {
            let run_dir = self.run_dir(&record.name);
            let guest = blocking(move || hv_attach(&run_dir)).await?;
            let guest = match guest {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(guest = %record.name, error = %e, "cannot re-attach to the guest; listing it as stopped");
                    None
                }
            };
            if guest.as_ref().is_some_and(hv_is_running) && !record.isolated {
                for tap in &record.taps {
                    if let Err(e) = bridge.add_guest_port(tap) {
                        tracing::warn!(guest = %record.name, tap, error = %e, "cannot put the guest's TAP back on the bridge");
                    }
                }
                tracing::info!(guest = %record.name, "re-attached to running guest");
            }
            map.insert(
                record.name.clone(),
                Entry {
                    record,
                    slot: Arc::new(Mutex::new(guest)),
                },
            );
        }
        Ok(())
    }

    /// True when some guest uses this disk.
    pub async fn disk_user(&self, id: &DiskId) -> Option<String> {
        let map = self.map.lock().await;
        map.values()
            .find(|e| e.record.disk_ids.iter().any(|d| d == id.as_str()))
            .map(|e| e.record.name.clone())
    }

    /// Starts a guest: checks everything, creates its TAPs, joins them to the
    /// bridge and launches QEMU. On failure nothing stays behind.
    pub async fn start(&self, req: StartGuest, accel: AccelKind, disks: &DiskStore, bridge: &NodeBridge) -> Result<GuestInfo, Error> {
        if !hv_name_is_safe(&req.name) {
            return Err(Error::BadName(req.name));
        }
        req.profile.validate()?;
        if req.disk_ids.len() != req.profile.disks.len() {
            return Err(Error::DiskCount {
                profile: req.profile.disks.len(),
                ids: req.disk_ids.len(),
            });
        }
        let mut disk_paths = Vec::with_capacity(req.disk_ids.len());
        let mut keys = Vec::with_capacity(req.disk_ids.len());
        for raw in &req.disk_ids {
            let id: DiskId = raw.parse()?;
            if !disks.exists(&id) {
                return Err(Error::MissingDisk(raw.clone()));
            }
            // Every stored disk is a LUKS qcow2: without its key QEMU cannot open it.
            let key = disks.blocks().key(id.as_str()).ok_or_else(|| Error::NoDiskKey(raw.clone()))?;
            disk_paths.push(disks.image_path(&id));
            keys.push(Some(key));
        }
        if !req.profile.nics.is_empty() && !req.isolated {
            // Fail before creating anything; the error says why it is down.
            bridge.ensure_running()?;
        }
        let taps: Vec<String> = (0..req.profile.nics.len()).map(|i| tap_name(&req.name, i)).collect();
        let record = GuestRecord {
            name: req.name.clone(),
            profile: req.profile,
            disk_ids: req.disk_ids,
            taps: taps.clone(),
            accel,
            isolated: req.isolated,
        };

        // Reserve the name (and hold the guest's lock until it runs), then
        // persist before launching: a crash in between leaves a stopped
        // entry the operator can delete, never an untracked QEMU.
        let slot: Slot = Arc::new(Mutex::new(None));
        let mut guard = slot.clone().lock_owned().await;
        {
            let mut map = self.map.lock().await;
            if map.contains_key(&record.name) {
                return Err(Error::Exists(record.name));
            }
            for e in map.values() {
                if let Some(d) = record.disk_ids.iter().find(|d| e.record.disk_ids.contains(d)) {
                    return Err(Error::DiskInUse {
                        disk: d.clone(),
                        guest: e.record.name.clone(),
                    });
                }
                if let Some(t) = taps.iter().find(|t| e.record.taps.contains(t)) {
                    return Err(Error::TapCollision {
                        tap: t.clone(),
                        guest: record.name.clone(),
                        other: e.record.name.clone(),
                    });
                }
            }
            map.insert(
                record.name.clone(),
                Entry {
                    record: record.clone(),
                    slot,
                },
            );
            self.persist(&map)?;
        }

        match self.bring_up(&record, disk_paths, keys, bridge).await {
            Ok(guest) => {
                let info = info_of(&record, Some(&guest), GuestState::Running);
                *guard = Some(guest);
                tracing::info!(guest = %record.name, pid = ?info.pid, "guest started");
                Ok(info)
            }
            Err(e) => {
                drop(guard);
                let mut map = self.map.lock().await;
                map.remove(&record.name);
                if let Err(pe) = self.persist(&map) {
                    tracing::error!(error = %pe, "cannot persist the guest list after a failed start");
                }
                Err(e)
            }
        }
    }

    async fn bring_up(
        &self,
        record: &GuestRecord,
        disks: Vec<PathBuf>,
        keys: Vec<Option<hv::DiskKey>>,
        bridge: &NodeBridge,
    ) -> Result<hv::Guest, Error> {
        let mut created: Vec<String> = Vec::new();
        let result = async {
            for tap in &record.taps {
                let t = tap.clone();
                blocking(move || hv_create_tap(&t)).await??;
                created.push(tap.clone());
                if !record.isolated {
                    bridge.add_guest_port(tap)?;
                }
            }
            let spec = hv::GuestSpec {
                name: record.name.clone(),
                profile: record.profile.clone(),
                disks,
                taps: record.taps.clone(),
                run_dir: self.run_dir(&record.name),
                accel: record.accel,
            };
            blocking(move || hv_launch(&spec, &keys)).await?
        }
        .await;
        if result.is_err() {
            remove_taps(&created, (!record.isolated).then_some(bridge)).await;
        }
        result
    }

    async fn slot(&self, name: &str) -> Result<(GuestRecord, Slot), Error> {
        let map = self.map.lock().await;
        let e = map.get(name).ok_or_else(|| Error::NotFound(name.to_string()))?;
        Ok((e.record.clone(), e.slot.clone()))
    }

    /// The guest's current state.
    pub async fn get(&self, name: &str) -> Result<GuestInfo, Error> {
        let (record, slot) = self.slot(name).await?;
        let serial = hv::run_dir::RunDir::new(self.run_dir(name)).serial_log();
        let isolated = record.isolated;
        let mut info = with_guest(slot, move |g| {
            let state = match g.as_ref() {
                Some(g) => hv_state(g),
                None => GuestState::Stopped,
            };
            info_of(&record, g.as_ref(), state)
        })
        .await?;
        if isolated {
            info.console = Some(crate::console_seen::read(&serial));
        }
        Ok(info)
    }

    /// The running guest's counters from below it (`GET /v1/guests/{name}/stats`):
    /// `query-stats` VM/vCPU statistics, vCPU thread CPU time, disk I/O, RSS.
    pub async fn stats(&self, name: &str) -> Result<GuestStats, Error> {
        let (record, slot) = self.slot(name).await?;
        with_guest(slot, move |g| match g.as_ref().filter(|g| hv_is_running(g)) {
            Some(g) => hv_stats(g, record.accel),
            None => Err(Error::NotRunning(record.name.clone())),
        })
        .await?
    }

    /// ACPI power button; after [`POWERDOWN_TIMEOUT`] QEMU is stopped hard.
    /// The guest stays listed (stopped), its TAPs and disks stay.
    pub async fn stop(&self, name: &str) -> Result<GuestInfo, Error> {
        let (record, slot) = self.slot(name).await?;
        with_guest(slot, move |g| {
            if let Some(guest) = g.as_ref() {
                match hv_powerdown(guest, POWERDOWN_TIMEOUT) {
                    Ok(true) => tracing::info!(guest = %record.name, "guest powered off"),
                    Ok(false) => tracing::warn!(guest = %record.name, "guest did not power off in time; QEMU was stopped"),
                    Err(e) => return Err(e),
                }
            }
            let state = g.as_ref().map(hv_state).unwrap_or(GuestState::Stopped);
            Ok(info_of(&record, g.as_ref(), state))
        })
        .await?
    }

    /// Stops QEMU at once, removes the TAPs and the run directory and forgets
    /// the guest. Its disks stay.
    pub async fn delete(&self, name: &str, bridge: &NodeBridge) -> Result<(), Error> {
        let (record, slot) = self.slot(name).await?;
        with_guest(slot, move |g| {
            if let Some(guest) = g.as_ref().filter(|g| hv_is_running(g)) {
                // On failure the handle stays, so the guest is still seen running.
                hv_kill(guest)?;
            }
            *g = None;
            Ok::<_, Error>(())
        })
        .await??;
        remove_taps(&record.taps, (!record.isolated).then_some(bridge)).await;
        let run_dir = self.run_dir(&record.name);
        match std::fs::remove_dir_all(&run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %run_dir.display(), error = %e, "cannot remove the guest's run directory"),
        }
        let mut map = self.map.lock().await;
        map.remove(name);
        self.persist(&map)?;
        tracing::info!(guest = name, "guest deleted");
        Ok(())
    }

    fn persist(&self, map: &BTreeMap<String, Entry>) -> Result<(), Error> {
        let file = GuestsFile {
            guests: map.values().map(|e| e.record.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Corrupt(self.file.clone(), e.to_string()))?;
        state_dir::write_atomic(&self.file, &json, PUBLIC_MODE)?;
        Ok(())
    }
}

fn info_of(record: &GuestRecord, guest: Option<&hv::Guest>, state: GuestState) -> GuestInfo {
    let pid = guest.filter(|g| hv_is_running(g)).map(hv_pid);
    GuestInfo {
        name: record.name.clone(),
        state,
        accel: record.accel,
        taps: record.taps.clone(),
        pid,
        isolated: record.isolated,
        console: None,
        xts: guest.filter(|g| hv_is_running(g)).and_then(|g| g.xts()),
    }
}

/// Deletes `taps`, detaching them from `bridge` first (`None`: an isolated
/// guest's TAPs were never on it).
async fn remove_taps(taps: &[String], bridge: Option<&NodeBridge>) {
    for tap in taps {
        if let Some(Err(e)) = bridge.map(|b| b.remove_guest_port(tap)) {
            tracing::warn!(tap, error = %e, "cannot detach TAP from the bridge");
        }
        let t = tap.clone();
        match blocking(move || hv_delete_tap(&t)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(tap, error = %e, "cannot delete TAP"),
            Err(e) => tracing::warn!(tap, error = %e, "cannot delete TAP"),
        }
    }
}

/// Runs blocking `hv` work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Task(e.to_string()))
}

/// Runs `f` on the guest's QEMU handle under the guest's lock, off the async threads.
async fn with_guest<T: Send + 'static>(slot: Slot, f: impl FnOnce(&mut Option<hv::Guest>) -> T + Send + 'static) -> Result<T, Error> {
    let mut guard: OwnedMutexGuard<Option<hv::Guest>> = slot.lock_owned().await;
    blocking(move || f(&mut guard)).await
}

// ---- hv calls ----------------------------------------------------------------

fn hv_err(what: impl Into<String>, e: hv::Error) -> Error {
    Error::Hv {
        what: what.into(),
        message: e.to_string(),
    }
}

fn hv_name_is_safe(name: &str) -> bool {
    hv::spec::name_is_safe(name)
}

fn hv_create_tap(name: &str) -> Result<(), Error> {
    hv::tap::create_tap(name)
        .map(|_| ())
        .map_err(|e| hv_err(format!("cannot create TAP {name}"), e))
}

fn hv_delete_tap(name: &str) -> Result<(), Error> {
    hv::tap::delete_tap(name)
        .map(|_| ())
        .map_err(|e| hv_err(format!("cannot delete TAP {name}"), e))
}

fn hv_launch(spec: &hv::GuestSpec, keys: &[Option<hv::DiskKey>]) -> Result<hv::Guest, Error> {
    hv::Guest::launch_with_keys(spec, keys).map_err(|e| hv_err(format!("QEMU did not start guest {}", spec.name), e))
}

fn hv_attach(run_dir: &Path) -> Result<Option<hv::Guest>, Error> {
    hv::Guest::attach(run_dir).map_err(|e| hv_err(format!("cannot re-attach to {}", run_dir.display()), e))
}

fn hv_is_running(g: &hv::Guest) -> bool {
    g.is_running()
}

fn hv_pid(g: &hv::Guest) -> u32 {
    g.pid()
}

fn hv_state(g: &hv::Guest) -> GuestState {
    if !g.is_running() {
        return GuestState::Stopped;
    }
    // QMP may be busy or gone mid-shutdown; a live process is still "running".
    g.status().unwrap_or(GuestState::Running)
}

fn hv_stats(g: &hv::Guest, accel: AccelKind) -> Result<GuestStats, Error> {
    g.stats(accel)
        .map_err(|e| hv_err(format!("cannot read the counters of guest {}", g.name()), e))
}

fn hv_powerdown(g: &hv::Guest, timeout: Duration) -> Result<bool, Error> {
    g.powerdown(timeout).map_err(|e| hv_err("power-down failed", e))
}

fn hv_kill(g: &hv::Guest) -> Result<(), Error> {
    g.kill().map_err(|e| hv_err("cannot stop QEMU", e))
}

/// Probes the accelerator with the given probe kernel (blocking; minutes at worst).
pub(crate) fn hv_probe_accel(kernel: &Path, initrd: Option<&Path>) -> (AccelKind, String) {
    let p = hv::probe_accel(kernel, initrd);
    (p.accel, p.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        assert_eq!(tap_name("web01", 0), "tp0-web01");
        assert_eq!(tap_name("db", 3), "tp3-db");
        for (name, idx) in [
            ("a-very-long-server-name.example.com", 0),
            ("Web01", 1),
            ("web01.dc", 12),
            ("x".repeat(64).as_str(), 99),
        ] {
            let t = tap_name(name, idx);
            assert!(t.len() <= 15, "{t} too long");
            assert!(t.starts_with(&format!("tp{idx}-")), "{t}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
                "{t}"
            );
        }
        // Names that differ only in case or past the cut get different TAPs.
        assert_ne!(tap_name("Web01", 0), tap_name("web01", 0));
        assert_ne!(tap_name("server-number-0001", 0), tap_name("server-number-0002", 0));
        // Distinct NICs of one guest get distinct TAPs.
        assert_ne!(tap_name("a-very-long-server-name", 0), tap_name("a-very-long-server-name", 1));
    }

    /// A real QEMU started the way the node starts guests (`hv_launch`): the
    /// node's `GuestInfo.xts` says which XTS that QEMU runs (hv preloads
    /// libisthmus-xts into it: batched), its stats carry the vCPU thread
    /// times and disk counters, and once QEMU is gone both say so.
    #[test]
    fn guest_info_xts_and_stats_come_from_the_running_qemu() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("blank.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("1M")
            .status()
            .expect("qemu-img (tests/setup/deps.sh installs qemu-utils)");
        assert!(st.success());
        let profile: HardwareProfile =
            serde_json::from_value(serde_json::json!({ "cpus": 1, "memory_mib": 64, "disks": [{ "bus": "ide" }], "nics": [] })).unwrap();
        let record = GuestRecord {
            name: "xts-info".into(),
            profile: profile.clone(),
            disk_ids: vec!["d0".into()],
            taps: vec![],
            accel: AccelKind::Tcg,
            isolated: false,
        };
        let spec = hv::GuestSpec {
            name: record.name.clone(),
            profile,
            disks: vec![disk],
            taps: vec![],
            run_dir: tmp.path().join("run"),
            accel: AccelKind::Tcg,
        };
        let guest = hv_launch(&spec, &[None]).unwrap();
        struct Kill<'a>(&'a hv::Guest);
        impl Drop for Kill<'_> {
            fn drop(&mut self) {
                let _ = self.0.kill();
            }
        }
        let _kill = Kill(&guest);

        let info = info_of(&record, Some(&guest), hv_state(&guest));
        assert_eq!(info.pid, Some(guest.pid()));
        assert_eq!(info.xts, Some(proto::api::XtsImpl::BatchedPreload), "{info:?}");
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["xts"], "batched-preload");

        let stats = hv_stats(&guest, record.accel).unwrap();
        assert_eq!(stats.name, "xts-info");
        assert_eq!(stats.xts, Some(proto::api::XtsImpl::BatchedPreload));
        assert_eq!(stats.vcpu_cpu_ticks.len(), 1);
        assert!(stats.vm.is_empty() && stats.vcpus.is_empty(), "TCG: no query-stats provider");
        assert!(!stats.disks.is_empty() && stats.rss_kib > 0, "{stats:?}");

        hv_kill(&guest).unwrap();
        let info = info_of(&record, Some(&guest), hv_state(&guest));
        assert_eq!((info.state, info.pid, info.xts), (GuestState::Stopped, None, None));
        assert!(hv_stats(&guest, record.accel).is_err(), "no counters from a stopped QEMU");
    }
}
