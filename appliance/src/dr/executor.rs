//! Runs a failover or failback: records each step before it acts, runs its
//! effect, records the next step. A crash between the two records runs the
//! step again on restart, so every effect is idempotent (as moves').

use crate::dr::machine;
use crate::dr::record::{append_event, DrRecord, DrStep, OpKind, DR};
use crate::model::now_rfc3339;
use crate::moves::executor::kill_hook_at;
use crate::store::{Store, StoreError};

/// What a step did (for the timeline) or why it failed (as for moves).
pub use crate::moves::executor::StepResult;

/// The side effects of each step (the real ones in [`crate::dr::ops`];
/// tests substitute a recorder).
pub trait DrEffects {
    /// Runs `step` for `rec` (which it may update); `log` adds timeline lines.
    fn run(&mut self, step: DrStep, rec: &mut DrRecord, log: &mut dyn FnMut(String)) -> StepResult;
}

/// Errors of the executor itself; step failures are outcomes.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No such record, or no operation in it.
    #[error("{0} has no failover or failback under way: `isthmus dr status` shows it")]
    NoOp(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Drives `server`'s current operation to a terminal step; returns the record.
pub fn drive(store: &Store, server: &str, fx: &mut dyn DrEffects) -> Result<DrRecord, ExecError> {
    let mut rec: DrRecord = store.get(&DR, server)?.ok_or_else(|| ExecError::NoOp(server.into()))?;
    let kind = rec.op.as_ref().map(|o| o.kind).ok_or_else(|| ExecError::NoOp(server.into()))?;
    let what = match kind {
        OpKind::Failover => "failover",
        OpKind::Failback => "failback",
    };
    loop {
        let Some(step) = rec.op.as_ref().map(|o| o.step).filter(|s| !s.is_terminal()) else {
            return Ok(rec);
        };
        let mut log = |m: String| {
            if let Err(e) = append_event(store, server, what, Some(step), m) {
                tracing::warn!("cannot record a DR event of {server}: {e}");
            }
        };
        log(format!("{}: started", step.label()));
        let t = std::time::Instant::now();
        let result = fx.run(step, &mut rec, &mut log);
        kill_hook_at(KILL_HOOK_ENV, step);
        let took = t.elapsed().as_secs_f64();
        let ok = match result {
            Ok(m) => {
                log(format!("{}: ok in {took:.1} s — {m}", step.label()));
                true
            }
            Err(why) => {
                log(format!("{}: FAILED after {took:.1} s — {why}", step.label()));
                if let Some(op) = rec.op.as_mut().filter(|o| o.failure.is_none()) {
                    op.failure = Some(format!("{}: {why}", step.label()));
                }
                false
            }
        };
        let next = machine::next(step, ok);
        if let Some(op) = rec.op.as_mut() {
            op.step = next;
            if next.is_terminal() {
                op.finished_at = Some(now_rfc3339());
            }
        }
        if let Some(s) = machine::state_after(kind, next) {
            rec.state = s;
        }
        // Record the next step before it acts.
        store.put(&DR, server, &rec)?;
        if next.is_terminal() {
            log(format!("{what} ended: {}", next.label()));
        }
    }
}

/// Environment variable of a lab test hook: the DR step (kebab-case, as in
/// the store) after whose effect the appliance kills itself with SIGKILL,
/// before the step's outcome is recorded; the next start must run it again.
pub const KILL_HOOK_ENV: &str = "ISTHMUS_TEST_DR_KILL_AFTER";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dr::record::{ensure_tables, DrState};

    struct Recorder {
        ran: Vec<DrStep>,
        fail_at: Option<DrStep>,
        crash_at: Option<DrStep>,
    }

    impl DrEffects for Recorder {
        fn run(&mut self, step: DrStep, _rec: &mut DrRecord, log: &mut dyn FnMut(String)) -> StepResult {
            self.ran.push(step);
            if self.crash_at == Some(step) {
                // The process dies inside the effect: nothing more is recorded.
                std::panic::panic_any("crash");
            }
            log(format!("did {step:?}"));
            if self.fail_at == Some(step) {
                return Err("injected".into());
            }
            Ok("fine".into())
        }
    }

    fn setup(dir: &std::path::Path, kind: OpKind) -> Store {
        let store = Store::open(&dir.join("s.redb")).unwrap();
        ensure_tables(&store).unwrap();
        let mut rec = DrRecord::new("web1", "cloud1", "15m".parse().unwrap());
        rec.begin(kind);
        store.put(&DR, "web1", &rec).unwrap();
        store
    }

    #[test]
    fn failover_then_failback_set_the_state_and_a_failed_failback_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = setup(dir.path(), OpKind::Failover);
        let mut r = Recorder {
            ran: vec![],
            fail_at: None,
            crash_at: None,
        };
        let rec = drive(&store, "web1", &mut r).unwrap();
        assert_eq!(rec.state, DrState::FailedOver);
        assert_eq!(rec.op.unwrap().step, DrStep::Done);

        let store = {
            drop(store);
            setup(dir.path(), OpKind::Failback)
        };
        let mut r = Recorder {
            ran: vec![],
            fail_at: Some(DrStep::PullBack),
            crash_at: None,
        };
        let rec = drive(&store, "web1", &mut r).unwrap();
        assert_eq!(rec.state, DrState::FailedOver, "rolled back to the cloud copy");
        let op = rec.op.unwrap();
        assert_eq!(op.step, DrStep::RolledBack);
        assert!(op.failure.unwrap().contains("injected"));
        assert_eq!(r.ran, [DrStep::StopReplica, DrStep::PullBack, DrStep::Rollback]);
        let ev = crate::dr::record::events(&store, "web1").unwrap();
        assert!(ev.iter().any(|e| e.message.contains("FAILED") && e.step == Some(DrStep::PullBack)));
    }

    /// A crash inside each step, then a restart: the step runs again and
    /// nothing before it does.
    #[test]
    fn a_crash_at_each_step_resumes_there() {
        for kind in [OpKind::Failover, OpKind::Failback] {
            let mut steps = vec![machine::first(kind)];
            while !steps.last().unwrap().is_terminal() {
                steps.push(machine::next(*steps.last().unwrap(), true));
            }
            steps.pop();
            for (i, &crash) in steps.iter().enumerate() {
                let dir = tempfile::tempdir().unwrap();
                {
                    let store = setup(dir.path(), kind);
                    let mut r = Recorder {
                        ran: vec![],
                        fail_at: None,
                        crash_at: Some(crash),
                    };
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&store, "web1", &mut r)));
                    assert!(res.is_err());
                }
                let store = Store::open(&dir.path().join("s.redb")).unwrap();
                let mut r = Recorder {
                    ran: vec![],
                    fail_at: None,
                    crash_at: None,
                };
                let rec = drive(&store, "web1", &mut r).unwrap();
                assert_eq!(rec.op.unwrap().step, DrStep::Done, "{kind:?} crash at {crash:?}");
                assert_eq!(r.ran, steps[i..].to_vec(), "{kind:?} resumes at {crash:?}");
            }
        }
    }
}
