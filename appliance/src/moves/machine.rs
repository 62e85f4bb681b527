//! Pure transitions of a move: (step, outcome) → next step.

use crate::model::Step;

/// Result of running one step's effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The step did what it should.
    Ok,
    /// It failed, with a reason for the timeline.
    Failed(String),
}

/// The step after `step` given its outcome.
///
/// Forward failures enter the rollback chain at the point that undoes what
/// was already done; rollback steps always continue down the chain (their
/// failures are recorded) except restarting the source, which is retried
/// until it works: the one thing a rollback must achieve is that the server
/// runs again where it was.
pub fn next(step: Step, outcome: &Outcome) -> Step {
    use Step::*;
    let ok = matches!(outcome, Outcome::Ok);
    match (step, ok) {
        (Plan, true) => PreCopy,
        // The source still runs; make sure it does.
        (PreCopy, true) => StopSource,
        (PreCopy, false) => RollbackSource,
        // Nothing was touched yet.
        (Plan, false) => RolledBack,
        (StopSource, true) => CopyDisks,
        (StopSource, false) => RollbackSource,
        (CopyDisks, true) => StartTarget,
        (CopyDisks, false) => RollbackSource,
        (StartTarget, true) => SwitchL2,
        (StartTarget, false) => RollbackTarget,
        (SwitchL2, true) => Verify,
        (SwitchL2, false) => RollbackL2,
        (Verify, true) => Commit,
        (Verify, false) => RollbackL2,
        (Commit, true) => Done,
        (Commit, false) => RollbackL2,
        (RollbackL2, _) => RollbackTarget,
        (RollbackTarget, _) => RollbackSource,
        (RollbackSource, true) => RolledBack,
        (RollbackSource, false) => RollbackSource,
        (Done, _) => Done,
        (RolledBack, _) => RolledBack,
        // Rehearsal steps (see [`next_rehearsal`]) never run in a move.
        (Rehearse | Rehearsed, _) => Rehearsed,
    }
}

/// The step after `step` of a rehearsal: copy while the source runs, boot
/// the copy isolated, end. Nothing is stopped or carried, so any failure
/// just ends it (with the failure recorded).
pub fn next_rehearsal(step: Step, outcome: &Outcome) -> Step {
    use Step::*;
    match (step, outcome) {
        (Plan, Outcome::Ok) => CopyDisks,
        (CopyDisks, Outcome::Ok) => Rehearse,
        _ => Rehearsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::*;

    #[test]
    fn happy_path_visits_every_forward_step_once() {
        let mut s = Plan;
        let mut seen = vec![s];
        while !s.is_terminal() {
            s = next(s, &Outcome::Ok);
            seen.push(s);
        }
        assert_eq!(
            seen,
            vec![Plan, PreCopy, StopSource, CopyDisks, StartTarget, SwitchL2, Verify, Commit, Done]
        );
    }

    #[test]
    fn every_forward_failure_ends_with_the_source_back() {
        let fail = Outcome::Failed("x".into());
        for failing in [Plan, PreCopy, StopSource, CopyDisks, StartTarget, SwitchL2, Verify, Commit] {
            let mut s = Plan;
            let mut path = vec![];
            while !s.is_terminal() {
                let o = if s == failing { fail.clone() } else { Outcome::Ok };
                s = next(s, &o);
                path.push(s);
                assert!(path.len() < 20, "loop from {failing:?}: {path:?}");
            }
            assert_eq!(s, RolledBack, "failure at {failing:?}");
            if failing != Plan {
                assert!(path.contains(&RollbackSource), "{failing:?} must restart the source: {path:?}");
            }
            if matches!(failing, SwitchL2 | Verify | Commit) {
                assert!(path.contains(&RollbackL2), "{failing:?} must take the MAC back: {path:?}");
            }
            assert!(!path.contains(&Done));
        }
    }

    #[test]
    fn a_rehearsal_never_stops_the_source_nor_switches_l2() {
        let fail = Outcome::Failed("x".into());
        let mut s = Plan;
        let mut seen = vec![s];
        while !s.is_terminal() {
            s = next_rehearsal(s, &Outcome::Ok);
            seen.push(s);
        }
        assert_eq!(seen, vec![Plan, CopyDisks, Rehearse, Rehearsed]);
        for failing in [Plan, CopyDisks, Rehearse] {
            assert_eq!(next_rehearsal(failing, &fail), Rehearsed);
        }
    }

    #[test]
    fn rollback_steps_continue_even_when_they_fail_but_source_restart_retries() {
        let fail = Outcome::Failed("x".into());
        assert_eq!(next(RollbackL2, &fail), RollbackTarget);
        assert_eq!(next(RollbackTarget, &fail), RollbackSource);
        assert_eq!(next(RollbackSource, &fail), RollbackSource);
        assert_eq!(next(Done, &fail), Done);
        assert_eq!(next(RolledBack, &Outcome::Ok), RolledBack);
    }
}
