//! Pure transitions of failover and failback: (step, ok?) → next step.

use crate::dr::record::{DrState, DrStep, OpKind};

/// The first step of an operation (a rerun after a failure starts here
/// again: every step is idempotent).
pub fn first(kind: OpKind) -> DrStep {
    match kind {
        OpKind::Failover => DrStep::StopSource,
        OpKind::Failback => DrStep::StopReplica,
    }
}

/// The step after `step` given whether it worked.
///
/// Failover: the data-center copy is presumed lost, so stopping it is best
/// effort and never blocks; any later failure ends the failover `failed`
/// (run it again to resume; the replica and the last point stay).
/// Failback: any failure before its commit rolls back to the cloud copy,
/// which is what ran last; a failed rollback ends `failed`.
pub fn next(step: DrStep, ok: bool) -> DrStep {
    use DrStep::*;
    match (step, ok) {
        (StopSource, _) => StartReplica,
        (StartReplica, true) => CarryMac,
        (CarryMac, true) => Verify,
        (Verify, true) => Commit,
        (Commit, true) => Done,
        (StartReplica | CarryMac | Verify | Commit, false) => Failed,
        (StopReplica, true) => PullBack,
        (PullBack, true) => ReleaseMac,
        (ReleaseMac, true) => StartSource,
        (StartSource, true) => VerifySource,
        (VerifySource, true) => CommitFailback,
        (CommitFailback, true) => Done,
        (StopReplica | PullBack | ReleaseMac | StartSource | VerifySource | CommitFailback, false) => Rollback,
        (Rollback, true) => RolledBack,
        (Rollback, false) => Failed,
        (Done, _) => Done,
        (RolledBack, _) => RolledBack,
        (Failed, _) => Failed,
    }
}

/// The server's state once `kind` ends at `terminal` (`None`: unchanged).
pub fn state_after(kind: OpKind, terminal: DrStep) -> Option<DrState> {
    match (kind, terminal) {
        (OpKind::Failover, DrStep::Done) => Some(DrState::FailedOver),
        (OpKind::Failback, DrStep::Done) => Some(DrState::Protecting),
        (OpKind::Failback, DrStep::RolledBack) => Some(DrState::FailedOver),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DrStep::*;

    fn path(kind: OpKind, failing: Option<DrStep>) -> Vec<DrStep> {
        let mut s = first(kind);
        let mut seen = vec![s];
        while !s.is_terminal() {
            s = next(s, Some(s) != failing);
            seen.push(s);
            assert!(seen.len() < 20, "loop: {seen:?}");
        }
        seen
    }

    #[test]
    fn happy_paths() {
        assert_eq!(
            path(OpKind::Failover, None),
            [StopSource, StartReplica, CarryMac, Verify, Commit, Done]
        );
        assert_eq!(
            path(OpKind::Failback, None),
            [StopReplica, PullBack, ReleaseMac, StartSource, VerifySource, CommitFailback, Done]
        );
        assert_eq!(state_after(OpKind::Failover, Done), Some(DrState::FailedOver));
        assert_eq!(state_after(OpKind::Failback, Done), Some(DrState::Protecting));
    }

    #[test]
    fn a_lost_data_center_never_blocks_a_failover() {
        assert_eq!(path(OpKind::Failover, Some(StopSource)).last(), Some(&Done));
        for failing in [StartReplica, CarryMac, Verify, Commit] {
            let p = path(OpKind::Failover, Some(failing));
            assert_eq!(p.last(), Some(&Failed), "{failing:?}");
            assert_eq!(state_after(OpKind::Failover, Failed), None);
        }
    }

    #[test]
    fn every_failback_failure_rolls_back_to_the_cloud_copy() {
        for failing in [StopReplica, PullBack, ReleaseMac, StartSource, VerifySource, CommitFailback] {
            let p = path(OpKind::Failback, Some(failing));
            assert_eq!(&p[p.len() - 2..], [Rollback, RolledBack], "{failing:?}");
        }
        assert_eq!(next(Rollback, false), Failed);
        assert_eq!(state_after(OpKind::Failback, RolledBack), Some(DrState::FailedOver));
        assert_eq!(state_after(OpKind::Failback, Failed), None);
    }
}
