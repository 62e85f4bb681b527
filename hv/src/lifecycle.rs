//! Lifecycle and monitoring of a running guest over QMP: pause/resume,
//! reset, internal snapshots (QMP `snapshot-save`/`-load`/`-delete` jobs),
//! block and process counters, TAP counters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::qemu::qmp::QmpError;
use crate::{Error, Guest};

/// How long a snapshot job may run (vmstate of a few GiB under TCG).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A lifecycle operation failed in a way QMP itself did not report.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A snapshot tag we refuse (QEMU would accept odd ones, but tags end up
    /// in UIs and logs).
    #[error("snapshot tag {0:?}: use 1 to 64 characters of A-Z a-z 0-9 _ . -")]
    Tag(String),
    /// The guest has no writable disk that can hold a snapshot.
    #[error("guest {0}: no writable disk to hold a snapshot")]
    NoDisk(String),
    /// Every writable disk is LUKS-encrypted: no place for machine state.
    #[error("guest {0}: all writable disks are LUKS-encrypted and QEMU 10.0.2 aborts writing machine state into an encrypted qcow2; give the guest a plain qcow2 disk for snapshots, or use suspend_to_disk")]
    VmstateOnLuks(String),
    /// A snapshot job failed.
    #[error("guest {name}: {job} failed: {detail}")]
    Job {
        /// Guest name.
        name: String,
        /// Job kind and tag.
        job: String,
        /// QEMU's error.
        detail: String,
    },
    /// A snapshot job did not finish in time.
    #[error("guest {name}: {job} did not finish within {secs} s")]
    JobTimeout {
        /// Guest name.
        name: String,
        /// Job kind and tag.
        job: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The suspend state file could not be prepared.
    #[error("cannot prepare the suspend state file {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A counter file could not be read.
    #[error("cannot read {path}: {source}")]
    Counter {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// One internal snapshot, as QEMU lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SnapshotInfo {
    /// Tag (`name` in QAPI `SnapshotInfo`).
    pub name: String,
    /// Size of the saved machine state in bytes (0: disk-only).
    #[serde(rename = "vm-state-size")]
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    #[serde(rename = "date-sec")]
    pub date_sec: u64,
}

/// I/O counters of one disk (`query-blockstats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Device (`disk0`) or node name.
    pub device: String,
    /// Bytes read.
    pub rd_bytes: u64,
    /// Bytes written.
    pub wr_bytes: u64,
    /// Read operations.
    pub rd_operations: u64,
    /// Write operations.
    pub wr_operations: u64,
    /// Flushes.
    pub flush_operations: u64,
}

/// Host-side counters of the QEMU process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Resident memory (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// CPU time used (user + system), clock ticks (`/proc/<pid>/stat`).
    pub cpu_ticks: u64,
    /// Threads.
    pub threads: u64,
}

/// Counters of a TAP device (kernel view: `rx` is what the guest sent, `tx`
/// what it was sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Bytes from the guest.
    pub rx_bytes: u64,
    /// Frames from the guest.
    pub rx_packets: u64,
    /// Bytes to the guest.
    pub tx_bytes: u64,
    /// Frames to the guest.
    pub tx_packets: u64,
    /// Frames to the guest dropped (guest not reading, queue full).
    pub tx_dropped: u64,
}

/// Reads a TAP's counters from `/proc/thread-self/net/dev`: that file shows
/// the calling thread's network namespace, where `/sys/class/net` shows the
/// namespace `/sys` was mounted in.
pub fn tap_stats(tap: &str) -> Result<TapStats, LifecycleError> {
    let path = PathBuf::from("/proc/thread-self/net/dev");
    let text = std::fs::read_to_string(&path).map_err(|source| LifecycleError::Counter {
        path: path.clone(),
        source,
    })?;
    parse_net_dev(&text, tap).ok_or_else(|| LifecycleError::Counter {
        path,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no interface {tap} in this network namespace"),
        ),
    })
}

/// One interface's line of `/proc/net/dev`: `name: rx_bytes rx_packets errs
/// drop fifo frame compressed multicast tx_bytes tx_packets errs drop ...`.
fn parse_net_dev(text: &str, iface: &str) -> Option<TapStats> {
    let line = text.lines().find_map(|l| l.trim_start().strip_prefix(iface)?.strip_prefix(':'))?;
    let f: Vec<u64> = line.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    Some(TapStats {
        rx_bytes: *f.first()?,
        rx_packets: *f.get(1)?,
        tx_bytes: *f.get(8)?,
        tx_packets: *f.get(9)?,
        tx_dropped: *f.get(11)?,
    })
}

fn tag_is_safe(tag: &str) -> bool {
    (1..=64).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Guest {
    /// Stops the vCPUs (QMP `stop`); memory and devices stay as they are.
    pub fn pause(&self) -> Result<(), Error> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the vCPUs (QMP `cont`).
    pub fn resume(&self) -> Result<(), Error> {
        self.execute("cont", None).map(drop)
    }

    /// Hard reset, like the reset button (QMP `system_reset`).
    pub fn reset(&self) -> Result<(), Error> {
        self.execute("system_reset", None).map(drop)
    }

    /// Real uid and gid of the QEMU process.
    pub(crate) fn process_ids(&self) -> Option<(u32, u32)> {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let first = |field: &str| -> Option<u32> {
            st.lines()
                .find_map(|l| l.strip_prefix(field))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some((first("Uid:")?, first("Gid:")?))
    }

    /// Polls `query-migrate` until the migration completed.
    pub(crate) fn wait_migration(&self, what: &str) -> Result<(), Error> {
        let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            let st = self.execute("query-migrate", None)?;
            match st["status"].as_str().unwrap_or("none") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(LifecycleError::Job {
                        name: self.name().into(),
                        job: what.into(),
                        detail: st["error-desc"].as_str().unwrap_or("migration failed").into(),
                    }
                    .into())
                }
                _ if Instant::now() >= deadline => {
                    return Err(LifecycleError::JobTimeout {
                        name: self.name().into(),
                        job: what.into(),
                        secs: SNAPSHOT_TIMEOUT.as_secs(),
                    }
                    .into())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Loads saved state into a QEMU started with `-incoming defer`
    /// (suspend) or `-S` (snapshot), then runs it.
    pub(crate) fn restore(&self, restore: &crate::Restore, state_key: Option<&crate::DiskKey>) -> Result<(), Error> {
        match restore {
            crate::Restore::Suspended => self.resume_state(state_key),
            crate::Restore::Snapshot(tag) => {
                self.snapshot_load(tag)?;
                self.resume()
            }
        }
    }

    /// Writable disks' node names (where snapshots go; the first one also
    /// holds the machine state).
    fn snapshot_nodes(&self) -> Result<Vec<String>, Error> {
        let blocks = self.execute("query-block", None)?;
        let inserted: Vec<&Value> = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("inserted"))
            .filter(|i| i["ro"] != json!(true))
            .collect();
        let name = |i: &Value| i["node-name"].as_str().map(str::to_string);
        // Machine state goes to the first plain disk: QEMU 10.0.2 aborts
        // writing it into a LUKS qcow2 (see `suspend_to_disk`).
        let Some(vmstate) = inserted.iter().find(|i| i["encrypted"] != json!(true)).and_then(|i| name(i)) else {
            return Err(if inserted.is_empty() {
                LifecycleError::NoDisk(self.name().to_string())
            } else {
                LifecycleError::VmstateOnLuks(self.name().to_string())
            }
            .into());
        };
        let mut nodes = vec![vmstate.clone()];
        nodes.extend(inserted.iter().filter_map(|i| name(i)).filter(|n| *n != vmstate));
        Ok(nodes)
    }

    /// Saves machine state and all writable disks as internal snapshot `tag`
    /// (qcow2 only; QEMU refuses raw disks). The guest pauses meanwhile.
    pub fn snapshot_save(&self, tag: &str) -> Result<(), Error> {
        let nodes = self.snapshot_nodes()?;
        self.snapshot_job("snapshot-save", tag, json!({ "tag": tag, "vmstate": nodes[0], "devices": nodes }))
    }

    /// Reverts machine state and disks to snapshot `tag`. On failure the
    /// guest stays paused, as QEMU leaves it (its state may be half
    /// loaded): inspect, then [`Guest::resume`] or revert to another snapshot.
    pub fn snapshot_load(&self, tag: &str) -> Result<(), Error> {
        let nodes = self.snapshot_nodes()?;
        self.snapshot_job("snapshot-load", tag, json!({ "tag": tag, "vmstate": nodes[0], "devices": nodes }))
    }

    /// Deletes snapshot `tag` from all writable disks.
    pub fn snapshot_delete(&self, tag: &str) -> Result<(), Error> {
        let nodes = self.snapshot_nodes()?;
        self.snapshot_job("snapshot-delete", tag, json!({ "tag": tag, "devices": nodes }))
    }

    /// Internal snapshots of the machine-state disk.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let node = self.snapshot_nodes()?.remove(0);
        let blocks = self.execute("query-block", None)?;
        let snaps = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("inserted"))
            .find(|i| i["node-name"] == json!(node))
            .map(|i| i["image"]["snapshots"].clone())
            .unwrap_or(Value::Null);
        if snaps.is_null() {
            return Ok(Vec::new());
        }
        serde_json::from_value(snaps.clone()).map_err(|source| {
            QmpError::Answer {
                command: "query-block".into(),
                value: snaps,
                source,
            }
            .into()
        })
    }

    /// Runs a snapshot job to its end and dismisses it.
    fn snapshot_job(&self, command: &str, tag: &str, mut args: Value) -> Result<(), Error> {
        if !tag_is_safe(tag) {
            return Err(LifecycleError::Tag(tag.to_string()).into());
        }
        let job_id = format!("isthmus-{command}-{}", std::process::id());
        args["job-id"] = json!(job_id);
        let job = format!("{command} {tag:?}");
        self.execute(command, Some(args))?;
        let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            let jobs = self.execute("query-jobs", None)?;
            let this = jobs.as_array().into_iter().flatten().find(|j| j["id"] == json!(job_id)).cloned();
            match this {
                Some(j) if j["status"] == "concluded" => {
                    let _ = self.execute("job-dismiss", Some(json!({ "id": job_id })));
                    if let Some(detail) = j["error"].as_str() {
                        return Err(LifecycleError::Job {
                            name: self.name().to_string(),
                            job,
                            detail: detail.to_string(),
                        }
                        .into());
                    }
                    return Ok(());
                }
                None => {
                    return Err(LifecycleError::Job {
                        name: self.name().to_string(),
                        job,
                        detail: "the job disappeared".into(),
                    }
                    .into())
                }
                Some(_) if Instant::now() >= deadline => {
                    return Err(LifecycleError::JobTimeout {
                        name: self.name().to_string(),
                        job,
                        secs: SNAPSHOT_TIMEOUT.as_secs(),
                    }
                    .into())
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Disk I/O counters (`query-blockstats`).
    pub fn block_stats(&self) -> Result<Vec<BlockStats>, Error> {
        let v = self.execute("query-blockstats", None)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                let s = &b["stats"];
                let n = |k: &str| s[k].as_u64().unwrap_or(0);
                let device = b["device"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .or_else(|| b["node-name"].as_str())
                    .unwrap_or_default()
                    .to_string();
                BlockStats {
                    device,
                    rd_bytes: n("rd_bytes"),
                    wr_bytes: n("wr_bytes"),
                    rd_operations: n("rd_operations"),
                    wr_operations: n("wr_operations"),
                    flush_operations: n("flush_operations"),
                }
            })
            .collect())
    }

    /// Resident memory, CPU time and threads of the QEMU process.
    pub fn process_stats(&self) -> Result<ProcessStats, Error> {
        let pid = self.pid();
        let status_path = PathBuf::from(format!("/proc/{pid}/status"));
        let status = std::fs::read_to_string(&status_path).map_err(|source| LifecycleError::Counter { path: status_path, source })?;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
        let stat = std::fs::read_to_string(&stat_path).map_err(|source| LifecycleError::Counter { path: stat_path, source })?;
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let at = |i: usize| rest.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(ProcessStats {
            rss_kib: field("VmRSS:"),
            cpu_ticks: at(14) + at(15),
            threads: field("Threads:"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(tag_is_safe("before-upgrade.1"));
        for bad in ["", "a b", "a,b", "../x", &"x".repeat(65)] {
            assert!(!tag_is_safe(bad), "{bad}");
        }
    }

    #[test]
    fn net_dev_lines() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\nhvt1x0: 1204 14 0 0 0 0 0 0 90 1 0 3 0 0 0 0\n";
        let s = parse_net_dev(text, "hvt1x0").unwrap();
        assert_eq!(
            s,
            TapStats {
                rx_bytes: 1204,
                rx_packets: 14,
                tx_bytes: 90,
                tx_packets: 1,
                tx_dropped: 3
            }
        );
        assert!(parse_net_dev(text, "hvt1").is_none());
        let e = tap_stats("hv-no-such-tap").unwrap_err();
        assert!(e.to_string().contains("hv-no-such-tap"), "{e}");
    }
}
