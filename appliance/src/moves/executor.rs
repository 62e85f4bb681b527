//! Runs a move: records each step before acting, runs its effect, records
//! the transition. A crash between the two records re-runs the step on
//! restart, so every effect must be idempotent.

use std::time::{Duration, Instant};

use crate::model::{now_rfc3339, MoveEvent, MoveRecord, Step};
use crate::moves::machine::{next, next_rehearsal, Outcome};
use crate::store::{Store, StoreError, MOVES};

/// What a step did, for the timeline.
pub type StepResult = Result<String, String>;

/// The side effects of each step. The real implementation talks to the
/// source host, the cloud node and the LCG; tests substitute a recorder.
pub trait Effects {
    /// Runs `step` for `mv` (which it may update, e.g. disk digests).
    /// `log` adds lines to the move's timeline while the step runs.
    fn run(&mut self, step: Step, mv: &mut MoveRecord, log: &mut dyn FnMut(String)) -> StepResult;
}

/// Errors of the executor itself (the store); step failures are outcomes.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The move is not in the store.
    #[error("no move {0}: `isthmus status` lists moves")]
    NoSuchMove(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often a failing `RollbackSource` is retried in one run before the
/// executor gives up and leaves the move for the next start to retry.
const MAX_ROLLBACK_SOURCE_ATTEMPTS: u32 = 3;

/// Drives the move to a terminal step (or until rollback of the source keeps
/// failing). Returns the final record.
pub fn drive(store: &Store, move_id: &str, effects: &mut dyn Effects) -> Result<MoveRecord, ExecError> {
    let mut mv: MoveRecord = store.get(&MOVES, move_id)?.ok_or_else(|| ExecError::NoSuchMove(move_id.into()))?;
    let t0 = Instant::now();
    // A resumed move continues the timeline where the last run left it.
    let offset = store.events(move_id)?.last().map_or(0.0, |e| e.t_s);
    let mut rollback_attempts = 0;
    while !mv.step.is_terminal() {
        let step = mv.step;
        let mut event = |message: String| {
            let t_s = offset + t0.elapsed().as_secs_f64();
            let e = MoveEvent {
                at: now_rfc3339(),
                t_s: (t_s * 1000.0).round() / 1000.0,
                step,
                message,
            };
            if let Err(err) = store.append_event(move_id, &e) {
                tracing::warn!("cannot record event of move {move_id}: {err}");
            }
        };
        event(format!("{}: started", step.label()));
        let started = Instant::now();
        let result = effects.run(step, &mut mv, &mut event);
        kill_hook_at(KILL_HOOK_ENV, step);
        let took = started.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(msg) => {
                event(format!("{}: ok in {took:.1} s — {msg}", step.label()));
                Outcome::Ok
            }
            Err(why) => {
                event(format!("{}: FAILED after {took:.1} s — {why}", step.label()));
                if mv.failure.is_none() {
                    mv.failure = Some(format!("{}: {why}", step.label()));
                }
                Outcome::Failed(why)
            }
        };
        mv.step = if mv.rehearse {
            next_rehearsal(step, &outcome)
        } else {
            next(step, &outcome)
        };
        if mv.step.is_terminal() {
            mv.finished_at = Some(now_rfc3339());
        }
        // Record the next step before it acts.
        store.put(&MOVES, move_id, &mv)?;
        if step == Step::RollbackSource && mv.step == Step::RollbackSource {
            rollback_attempts += 1;
            if rollback_attempts >= MAX_ROLLBACK_SOURCE_ATTEMPTS {
                event("rollback: source did not start; the move stays here and is retried at the next start of the appliance".into());
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    Ok(mv)
}

/// Environment variable of the crash test hook (lab tests only): the step
/// (kebab-case, as in the store) after whose effect the process kills itself
/// with SIGKILL, before the step's outcome is recorded. So the next start
/// finds that step's intent recorded and must run it again.
pub const KILL_HOOK_ENV: &str = "ISTHMUS_TEST_KILL_AFTER";

/// The crash test hook of a step machine: when environment variable `env`
/// names `step` (its kebab-case store name), the process kills itself with
/// SIGKILL, before the step's outcome is recorded (moves: [`KILL_HOOK_ENV`];
/// DR operations: `crate::dr::executor::KILL_HOOK_ENV`).
pub(crate) fn kill_hook_at(env: &str, step: impl serde::Serialize) {
    let Ok(want) = std::env::var(env) else { return };
    let name = serde_json::to_value(step).ok();
    if name.as_ref().and_then(|v| v.as_str()) == Some(want.as_str()) {
        eprintln!("test hook {env}: SIGKILL after the effect of {want}, before its outcome is recorded");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Location;

    /// Records every step it runs; fails or "crashes" where told.
    struct Recorder {
        ran: Vec<Step>,
        fail_at: Option<Step>,
        crash_at: Option<Step>,
    }

    #[derive(Debug)]
    struct Crash;

    impl Effects for Recorder {
        fn run(&mut self, step: Step, mv: &mut MoveRecord, log: &mut dyn FnMut(String)) -> StepResult {
            self.ran.push(step);
            if self.crash_at == Some(step) {
                // Simulates the process dying in the middle of the effect:
                // nothing after this line runs, nothing more is recorded.
                std::panic::panic_any(Crash);
            }
            log(format!("did {step:?}"));
            if step == Step::CopyDisks {
                mv.disk_digests = vec!["abc".into()];
            }
            if self.fail_at == Some(step) {
                return Err("injected".into());
            }
            Ok("fine".into())
        }
    }

    fn new_move(store: &Store) {
        let mv = MoveRecord::new("m-1", "web1", Location::Dc, "cloud1", false);
        store.put(&MOVES, "m-1", &mv).unwrap();
    }

    #[test]
    fn runs_to_done_and_records_a_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        new_move(&store);
        let mut r = Recorder {
            ran: vec![],
            fail_at: None,
            crash_at: None,
        };
        let mv = drive(&store, "m-1", &mut r).unwrap();
        assert_eq!(mv.step, Step::Done);
        assert!(mv.finished_at.is_some());
        assert_eq!(mv.disk_digests, vec!["abc"]);
        assert_eq!(store.get(&MOVES, "m-1").unwrap().unwrap().step, Step::Done);
        let ev = store.events("m-1").unwrap();
        assert!(ev.iter().any(|e| e.message.contains("did Verify")));
        assert!(ev.windows(2).all(|w| w[0].t_s <= w[1].t_s));
    }

    #[test]
    fn a_failure_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        new_move(&store);
        let mut r = Recorder {
            ran: vec![],
            fail_at: Some(Step::StartTarget),
            crash_at: None,
        };
        let mv = drive(&store, "m-1", &mut r).unwrap();
        assert_eq!(mv.step, Step::RolledBack);
        assert!(mv.failure.unwrap().contains("injected"));
        assert_eq!(r.ran.last(), Some(&Step::RollbackSource));
    }

    /// Crash inside every step, then restart: the move resumes at the step
    /// that was running (re-running it), finishes, and no step before the
    /// crash point runs again.
    #[test]
    fn restart_after_a_crash_at_each_step_resumes_there() {
        let forward = [
            Step::Plan,
            Step::PreCopy,
            Step::StopSource,
            Step::CopyDisks,
            Step::StartTarget,
            Step::SwitchL2,
            Step::Verify,
            Step::Commit,
        ];
        for (i, &crash) in forward.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            {
                let store = Store::open(&path).unwrap();
                new_move(&store);
                let mut r = Recorder {
                    ran: vec![],
                    fail_at: None,
                    crash_at: Some(crash),
                };
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&store, "m-1", &mut r)));
                assert!(res.is_err(), "crash at {crash:?} must interrupt");
                assert_eq!(r.ran, forward[..=i].to_vec());
            }
            // "Restart": reopen the store, drive again.
            let store = Store::open(&path).unwrap();
            assert_eq!(
                store.get(&MOVES, "m-1").unwrap().unwrap().step,
                crash,
                "recorded step before the crash"
            );
            let mut r = Recorder {
                ran: vec![],
                fail_at: None,
                crash_at: None,
            };
            let mv = drive(&store, "m-1", &mut r).unwrap();
            assert_eq!(mv.step, Step::Done, "crash at {crash:?}");
            assert_eq!(r.ran, forward[i..].to_vec(), "resume must start at the crashed step");
        }
    }
}
