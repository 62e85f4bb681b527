//! Records the appliance keeps in its store: servers, clouds, moves, events.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use proto::{HardwareProfile, MacAddr};
use serde::{Deserialize, Serialize};

/// Where a server runs now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Location {
    /// In the data center, on its source host.
    Dc,
    /// On an enrolled cloud node.
    Cloud {
        /// Cloud name.
        name: String,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dc => f.write_str("dc"),
            Location::Cloud { name } => f.write_str(name),
        }
    }
}

/// How the appliance reaches a data-center server's hypervisor.
///
/// `local-qemu` is the one driver of the walking skeleton: the server runs as
/// a QEMU guest on the appliance's host, its NIC on a TAP device that the
/// admin (or the lab) has already plugged into the LAN bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// A QEMU guest run by the appliance itself through `hv`.
    LocalQemu {
        /// Disk images, one per profile disk.
        disks: Vec<PathBuf>,
        /// TAP devices already on the LAN bridge, one per profile NIC.
        taps: Vec<String>,
    },
}

/// A server in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Unique name.
    pub name: String,
    /// The IPv4 address clients use (what a move must keep answering at).
    pub ip: Option<Ipv4Addr>,
    /// TCP ports that prove the server's service answers (checked after a move).
    pub check_ports: Vec<u16>,
    /// Its hardware.
    pub profile: HardwareProfile,
    /// How to reach it in the data center.
    pub source: Source,
    /// Where it runs now.
    pub location: Location,
}

impl ServerRecord {
    /// MACs of its NICs.
    pub fn macs(&self) -> Vec<MacAddr> {
        self.profile.nics.iter().map(|n| n.mac).collect()
    }
}

/// An enrolled cloud node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudRecord {
    /// Name given at enrolment.
    pub name: String,
    /// HTTPS base URL of its control API.
    pub url: String,
    /// Its bridge's UDP endpoint.
    pub bridge_endpoint: SocketAddr,
    /// Its static Noise public key.
    pub noise_public: [u8; 32],
    /// Its certificate (PEM), issued by our CA.
    pub cert_pem: String,
    /// The PSK of the bridge with it (the store file is 0600; see README
    /// "Secrets at rest").
    pub psk: [u8; 32],
    /// Accelerator it reported.
    pub accel: Option<String>,
    /// Why.
    pub accel_reason: Option<String>,
    /// When (RFC 3339, UTC).
    pub enrolled_at: String,
}

/// The steps of a move, in order. Rollback steps follow the `Rollback*` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Check the plan (server exists, cloud enrolled, profile fits).
    Plan,
    /// Copy the disks while the source still runs (full copy, then deltas),
    /// so that the copy after the stop sends only the last changes.
    PreCopy,
    /// Shut the source down cleanly (ACPI, then hard stop after a timeout).
    StopSource,
    /// Copy the disks to the target, verified end to end.
    CopyDisks,
    /// Start the server on the target with its original hardware.
    StartTarget,
    /// Make the LCG carry the server's MACs.
    SwitchL2,
    /// Check the server answers at its IP through the bridge.
    Verify,
    /// Record the new location.
    Commit,
    /// Stop carrying the MACs.
    RollbackL2,
    /// Stop the target copy (kept for inspection).
    RollbackTarget,
    /// Start the source again.
    RollbackSource,
    /// Rehearsal only: boot the copy on an isolated segment of the node
    /// (no bridge, no uplink), watch its console, then delete it.
    Rehearse,
    /// Terminal of a rehearsal (`failure` says whether it went wrong); the
    /// source was never stopped, the MAC never carried.
    Rehearsed,
    /// Terminal: moved.
    Done,
    /// Terminal: back at the source.
    RolledBack,
}

impl Step {
    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            Step::Plan => "plan",
            Step::PreCopy => "pre-copy",
            Step::StopSource => "stop source",
            Step::CopyDisks => "copy disks",
            Step::StartTarget => "start target",
            Step::SwitchL2 => "switch L2",
            Step::Verify => "verify",
            Step::Commit => "commit",
            Step::RollbackL2 => "rollback: L2 back",
            Step::RollbackTarget => "rollback: stop target",
            Step::RollbackSource => "rollback: start source",
            Step::Done => "done",
            Step::RolledBack => "rolled back",
            Step::Rehearse => "rehearse: boot an isolated copy",
            Step::Rehearsed => "rehearsed",
        }
    }

    /// Rough share of the whole move done when this step starts (for progress bars).
    pub fn progress_pct(self) -> u8 {
        match self {
            Step::Plan => 0,
            Step::PreCopy => 2,
            Step::StopSource => 5,
            Step::CopyDisks => 15,
            Step::StartTarget | Step::Rehearse => 60,
            Step::SwitchL2 => 75,
            Step::Verify => 80,
            Step::Commit => 95,
            Step::RollbackL2 | Step::RollbackTarget | Step::RollbackSource => 50,
            Step::Done | Step::RolledBack | Step::Rehearsed => 100,
        }
    }

    /// True for the terminal steps.
    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Done | Step::RolledBack | Step::Rehearsed)
    }
}

/// A move of one server to one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// Id (`m-<n>`).
    pub id: String,
    /// Server moved.
    pub server: String,
    /// From.
    pub from: Location,
    /// To: a cloud name, or `dc` for the data center ([`crate::moves::route::DC`]).
    pub to: String,
    /// Current step: the step being executed, recorded before it acts.
    pub step: Step,
    /// Why the move is rolling back, if it is.
    pub failure: Option<String>,
    /// SHA-256 of each copied disk, once copied.
    pub disk_digests: Vec<String>,
    /// Disk ids on the target.
    pub target_disk_ids: Vec<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it reached a terminal step.
    pub finished_at: Option<String>,
    /// A rehearsal (`isthmus move --rehearse`): copy, boot the copy on an
    /// isolated segment, delete it; the source keeps running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rehearse: bool,
    /// What the rehearsal saw, once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<Rehearsal>,
    /// The pre-copy rounds while the source ran (what each read and sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_copy: Vec<crate::moves::dirty::PreCopyRound>,
}

impl MoveRecord {
    /// A move at its first step ([`Step::Plan`]), started now.
    pub fn new(id: &str, server: &str, from: Location, to: &str, rehearse: bool) -> Self {
        MoveRecord {
            id: id.into(),
            server: server.into(),
            from,
            to: to.into(),
            step: Step::Plan,
            failure: None,
            disk_digests: vec![],
            target_disk_ids: vec![],
            started_at: now_rfc3339(),
            finished_at: None,
            rehearse,
            rehearsal: None,
            pre_copy: vec![],
        }
    }
}

/// What a rehearsal saw of the copy it booted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rehearsal {
    /// Cloud it ran in.
    pub cloud: String,
    /// Name of the rehearsal guest on the node.
    pub guest: String,
    /// The copy's console showed its kernel start user space, or the
    /// last line the source's console shows (its login or shell prompt).
    pub booted: bool,
    /// Milliseconds from the start of QEMU to that line (when booted; to
    /// the poll that saw it, polls are 1 s apart).
    pub boot_ms: Option<u64>,
    /// Bytes the copy wrote to its console.
    pub console_bytes: u64,
    /// The last console line seen.
    pub console_last_line: String,
    /// Check ports probed inside the isolated segment: none, the segment has
    /// no address of ours (reachability is checked by the real move).
    pub ports_probed: Vec<u16>,
    /// The rehearsal guest was deleted from the node afterwards.
    pub guest_deleted: bool,
}

/// One line of a move's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoveEvent {
    /// When (RFC 3339, UTC, milliseconds).
    pub at: String,
    /// Seconds since the move started.
    pub t_s: f64,
    /// Step it belongs to.
    pub step: Step,
    /// What happened or was checked.
    pub message: String,
}

/// Current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, H. Hinnant).
fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_651_200, 0), "2026-11-26T00:00:00.000Z");
    }
}
