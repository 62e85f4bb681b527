//! What the appliance keeps per protected server: the replica, its recovery
//! points and rounds, the state, the failover/failback in progress, and a
//! timeline of events (own tables in the store, declared here).

use std::sync::atomic::{AtomicU64, Ordering};

use proto::HardwareProfile;
use serde::{Deserialize, Serialize};

use crate::dr::rpo::Rpo;
use crate::model::now_rfc3339;
use crate::moves::dirty::ScanKind;
use crate::store::{Store, StoreError, Table};

/// Protected servers by name.
pub const DR: Table<DrRecord> = Table::new("dr");
/// Their events by `<server>/<unix ms, 16 digits>-<seq>`.
pub const DR_EVENTS: Table<DrEvent> = Table::new("dr-events");

/// Rounds kept in a record (the oldest are dropped).
pub const ROUNDS_KEPT: usize = 50;

/// Where a protected server stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrState {
    /// It runs in the data center; its replica on the cloud is refreshed.
    Protecting,
    /// A failover runs (or failed: see the record's `op`).
    FailingOver,
    /// It runs from its replica in the cloud.
    FailedOver,
    /// A failback runs (or failed: see the record's `op`).
    FailingBack,
}

/// A consistent state of the server's disks held by the replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    /// When the disks were captured (RFC 3339, UTC).
    pub at: String,
    /// The same as Unix seconds.
    pub unix_s: f64,
    /// Replica disk ids on the cloud node, one per profile disk.
    pub disk_ids: Vec<String>,
    /// Whole-disk digest of each, verified by the node.
    pub digests: Vec<String>,
    /// The hardware the server had then (a failover starts with it).
    pub profile: HardwareProfile,
    /// How the disks were captured.
    pub capture: String,
}

/// One protection round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// When it started.
    pub at: String,
    /// The same as Unix seconds.
    pub unix_s: f64,
    /// Seconds it took.
    pub took_s: f64,
    /// Data blocks of the disks.
    pub blocks: u64,
    /// Of those, blocks that crossed the link (only changed ones do).
    pub blocks_sent: u64,
    /// Compressed bytes sent.
    pub bytes_sent: u64,
    /// Bytes the round read from the source disks to find what changed
    /// (only the extents a dirty bitmap marked, or every allocated block).
    #[serde(default)]
    pub scanned_bytes: u64,
    /// Bytes in the allocated extents of the disks at this point.
    #[serde(default)]
    pub allocated_bytes: u64,
    /// How each disk's changes were found ([`ScanKind`]; empty for rounds
    /// recorded before dirty tracking, or when the round failed first).
    #[serde(default)]
    pub scans: Vec<ScanKind>,
    /// Why it failed, if it did (the last point stays the one before).
    pub error: Option<String>,
}

/// Failover or failback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Start the replica in the cloud.
    Failover,
    /// Bring the server and its changed data back to the data center.
    Failback,
}

/// The steps of failover and failback, each recorded before it acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrStep {
    /// Failover: stop the data-center copy if it still answers (never required).
    StopSource,
    /// Failover: start the replica on the node with the point's hardware.
    StartReplica,
    /// Failover: the LCG carries the server's MACs to the cloud.
    CarryMac,
    /// Failover: the server answers at its IP.
    Verify,
    /// Failover: record that it runs in the cloud.
    Commit,
    /// Failback: stop the cloud copy.
    StopReplica,
    /// Failback: pull the blocks that differ into the data-center disks.
    PullBack,
    /// Failback: the LCG stops carrying the MACs.
    ReleaseMac,
    /// Failback: start the data-center copy.
    StartSource,
    /// Failback: the data-center copy answers at its IP.
    VerifySource,
    /// Failback: record that it runs in the data center; protection resumes.
    CommitFailback,
    /// Failback failed: stop the data-center copy, start the cloud copy again, carry the MACs.
    Rollback,
    /// Terminal: done.
    Done,
    /// Terminal: a failback rolled back; the server runs in the cloud.
    RolledBack,
    /// Terminal: failed; running the command again resumes from its first step.
    Failed,
}

impl DrStep {
    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            DrStep::StopSource => "stop data-center copy",
            DrStep::StartReplica => "start replica",
            DrStep::CarryMac => "carry MAC",
            DrStep::Verify => "verify",
            DrStep::Commit => "commit",
            DrStep::StopReplica => "stop cloud copy",
            DrStep::PullBack => "pull changed blocks",
            DrStep::ReleaseMac => "release MAC",
            DrStep::StartSource => "start data-center copy",
            DrStep::VerifySource => "verify",
            DrStep::CommitFailback => "commit",
            DrStep::Rollback => "rollback",
            DrStep::Done => "done",
            DrStep::RolledBack => "rolled back",
            DrStep::Failed => "failed",
        }
    }

    /// True for the terminal steps.
    pub fn is_terminal(self) -> bool {
        matches!(self, DrStep::Done | DrStep::RolledBack | DrStep::Failed)
    }
}

/// A failover or failback, current or last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrOp {
    /// Which.
    pub kind: OpKind,
    /// The step being executed (recorded before it acts), or terminal.
    pub step: DrStep,
    /// First failure, if any.
    pub failure: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When it reached a terminal step.
    pub finished_at: Option<String>,
}

/// What a failback pulled for one disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledDisk {
    /// Replica disk id on the node.
    pub id: String,
    /// Data-center image it was pulled into.
    pub dest: String,
    /// Non-zero blocks of the disk.
    pub blocks: u64,
    /// Blocks fetched over the link (those that differed).
    pub fetched: u64,
    /// Blocks the data-center image already held.
    pub kept: u64,
    /// Compressed bytes received.
    pub wire_bytes: u64,
    /// Whole-disk digest, equal to the node's.
    pub digest: String,
}

/// One protected server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrRecord {
    /// Server name.
    pub server: String,
    /// Cloud holding the replica.
    pub cloud: String,
    /// Recovery point objective.
    pub rpo: Rpo,
    /// Where it stands.
    pub state: DrState,
    /// When protection began.
    pub created_at: String,
    /// The last recovery point the replica holds.
    pub last_point: Option<RecoveryPoint>,
    /// Recent protection rounds, oldest first.
    pub rounds: Vec<Round>,
    /// The current or last failover/failback.
    pub op: Option<DrOp>,
    /// What the last failback pulled, per disk.
    pub failback: Vec<PulledDisk>,
}

impl DrRecord {
    /// A new protection record (no point yet).
    pub fn new(server: &str, cloud: &str, rpo: Rpo) -> DrRecord {
        DrRecord {
            server: server.into(),
            cloud: cloud.into(),
            rpo,
            state: DrState::Protecting,
            created_at: now_rfc3339(),
            last_point: None,
            rounds: vec![],
            op: None,
            failback: vec![],
        }
    }

    /// Starts a failover or failback at its first step (the caller stores it).
    pub fn begin(&mut self, kind: OpKind) {
        self.state = match kind {
            OpKind::Failover => DrState::FailingOver,
            OpKind::Failback => DrState::FailingBack,
        };
        self.op = Some(DrOp {
            kind,
            step: crate::dr::machine::first(kind),
            failure: None,
            started_at: now_rfc3339(),
            finished_at: None,
        });
    }

    /// Seconds since the last recovery point, at `now_unix_s`.
    pub fn point_age_s(&self, now_unix_s: f64) -> Option<f64> {
        self.last_point.as_ref().map(|p| (now_unix_s - p.unix_s).max(0.0))
    }

    /// True while a failover or failback is under way (not terminal).
    pub fn op_running(&self) -> bool {
        self.op.as_ref().is_some_and(|o| !o.step.is_terminal())
    }

    /// Appends a round, keeping the last [`ROUNDS_KEPT`].
    pub fn push_round(&mut self, r: Round) {
        self.rounds.push(r);
        let extra = self.rounds.len().saturating_sub(ROUNDS_KEPT);
        self.rounds.drain(..extra);
    }
}

/// One line of a protected server's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrEvent {
    /// When (RFC 3339, UTC, ms).
    pub at: String,
    /// What it belongs to: `protect`, `sync`, `failover`, `failback`.
    pub what: String,
    /// The step of a failover/failback.
    pub step: Option<DrStep>,
    /// What happened.
    pub message: String,
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Creates the DR tables if this store has none yet.
pub fn ensure_tables(store: &Store) -> Result<(), StoreError> {
    store.ensure(&DR)?;
    store.ensure(&DR_EVENTS)
}

/// Adds an event to `server`'s timeline (keys sort by time, then by a
/// per-process sequence number).
pub fn append_event(store: &Store, server: &str, what: &str, step: Option<DrStep>, message: String) -> Result<(), StoreError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ms = (unix_now() * 1000.0) as u64;
    let key = format!("{server}/{ms:016}-{:08}", SEQ.fetch_add(1, Ordering::Relaxed) % 100_000_000);
    let e = DrEvent {
        at: now_rfc3339(),
        what: what.into(),
        step,
        message,
    };
    store.put(&DR_EVENTS, &key, &e)
}

/// `server`'s timeline, oldest first.
pub fn events(store: &Store, server: &str) -> Result<Vec<DrEvent>, StoreError> {
    Ok(store
        .range(&DR_EVENTS, &format!("{server}/"))?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

/// A small valid profile for unit tests.
#[cfg(test)]
pub(crate) fn test_profile() -> HardwareProfile {
    serde_json::from_value(serde_json::json!({"cpus": 1, "memory_mib": 64, "disks": [], "nics": []})).expect("test profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_order_and_stay_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        ensure_tables(&store).unwrap();
        for i in 0..5 {
            append_event(&store, "web1", "sync", None, format!("e{i}")).unwrap();
            append_event(&store, "web10", "sync", None, format!("other{i}")).unwrap();
        }
        let ev: Vec<String> = events(&store, "web1").unwrap().into_iter().map(|e| e.message).collect();
        assert_eq!(ev, ["e0", "e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn rounds_are_capped_and_age_is_from_the_last_point() {
        let mut r = DrRecord::new("web1", "cloud1", "15m".parse().unwrap());
        assert_eq!(r.point_age_s(100.0), None);
        for i in 0..(ROUNDS_KEPT + 5) {
            r.push_round(Round {
                at: String::new(),
                unix_s: i as f64,
                took_s: 0.0,
                blocks: 0,
                blocks_sent: 0,
                bytes_sent: 0,
                scanned_bytes: 0,
                allocated_bytes: 0,
                scans: vec![],
                error: None,
            });
        }
        assert_eq!(r.rounds.len(), ROUNDS_KEPT);
        assert_eq!(r.rounds[0].unix_s, 5.0);
        r.last_point = Some(RecoveryPoint {
            at: String::new(),
            unix_s: 40.0,
            disk_ids: vec![],
            digests: vec![],
            profile: test_profile(),
            capture: String::new(),
        });
        assert_eq!(r.point_age_s(100.0), Some(60.0));
    }
}
