//! Restart on crash, as a policy: a pure decision ([`RestartPolicy::decide`])
//! and a [`Supervisor`] that watches one guest's events and process and
//! applies it. A restart is a fresh QEMU from the caller's launch closure
//! (which fetches the disk keys again: hv keeps none).

use std::time::Duration;

use crate::{Error, Guest, GuestEvent};

/// When to start a guest again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartMode {
    /// Never.
    Never,
    /// After a guest kernel panic or when QEMU died without being told to
    /// stop; not after the guest powered itself off.
    OnCrash,
    /// Also after the guest powered itself off.
    Always,
}

/// How a guest's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest kernel panicked (pvpanic).
    Panicked,
    /// QEMU exited without a shutdown we or the guest asked for.
    QemuDied,
    /// The guest powered itself off.
    GuestPoweroff,
    /// The host stopped it (QMP `quit`, our power-off).
    HostStop,
}

/// What to do after a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this pause.
    Restart {
        /// Back-off before the start.
        after: Duration,
    },
    /// Leave it stopped.
    Stay {
        /// Why.
        reason: String,
    },
}

/// Restart-on-crash policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// When.
    pub mode: RestartMode,
    /// At most this many restarts (then the guest stays down for a person to look).
    pub max_restarts: u32,
    /// Back-off before the first restart; doubles each time.
    pub backoff_initial: Duration,
    /// Back-off ceiling.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::OnCrash,
            max_restarts: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// What to do after `ending`, with `restarts_done` restarts behind us.
    pub fn decide(&self, ending: Ending, restarts_done: u32) -> Decision {
        let wanted = match (self.mode, ending) {
            (_, Ending::HostStop) | (RestartMode::Never, _) => false,
            (RestartMode::OnCrash, Ending::GuestPoweroff) => false,
            (RestartMode::OnCrash | RestartMode::Always, _) => true,
        };
        if !wanted {
            return Decision::Stay {
                reason: format!("{ending:?} with restart policy {:?}", self.mode),
            };
        }
        if restarts_done >= self.max_restarts {
            return Decision::Stay {
                reason: format!(
                    "{ending:?} after {restarts_done} restart(s), the policy's maximum; look at the serial log before starting it again"
                ),
            };
        }
        let factor = 1u32.checked_shl(restarts_done.min(20)).unwrap_or(u32::MAX);
        Decision::Restart {
            after: self.backoff_initial.saturating_mul(factor).min(self.backoff_max),
        }
    }
}

/// What the supervisor saw or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A guest event.
    Guest(GuestEvent),
    /// The run ended and the guest was started again.
    Restarted {
        /// How the run ended.
        ending: Ending,
        /// Restarts so far, this one included.
        count: u32,
    },
    /// The run ended and the guest stays down.
    Ended {
        /// How the run ended.
        ending: Ending,
        /// Why it was not restarted.
        reason: String,
    },
}

/// Watches one guest and restarts it per policy.
pub struct Supervisor<L: FnMut() -> Result<Guest, Error>> {
    guest: Guest,
    launch: L,
    policy: RestartPolicy,
    restarts: u32,
    shutdown_seen: Option<bool>,
    ended: bool,
}

impl<L: FnMut() -> Result<Guest, Error>> Supervisor<L> {
    /// Supervises `guest`; `launch` starts it again (same spec, fresh keys).
    pub fn new(guest: Guest, policy: RestartPolicy, launch: L) -> Supervisor<L> {
        Supervisor {
            guest,
            launch,
            policy,
            restarts: 0,
            shutdown_seen: None,
            ended: false,
        }
    }

    /// The current run of the guest.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// True once the guest stays down.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Powers the guest off on the host's behalf (ACPI, then hard after
    /// `timeout`) and ends supervision: a stop we asked for is never
    /// restarted.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), Error> {
        self.ended = true;
        self.guest.powerdown(timeout).map(drop)
    }

    /// Watches for up to `wait`; on a panic or an exit applies the policy
    /// (sleeping the back-off, then launching). Returns what happened.
    pub fn step(&mut self, wait: Duration) -> Result<Vec<SupervisorEvent>, Error> {
        if self.ended {
            return Ok(Vec::new());
        }
        let events = if self.guest.is_running() {
            // A QEMU that died mid-read shows up as an error here.
            self.guest.events(wait).unwrap_or_default()
        } else {
            // What it said before it exited (a guest power-off's SHUTDOWN).
            self.guest.last_events()
        };
        let mut out = Vec::new();
        let mut ending = None;
        for e in events {
            match &e {
                GuestEvent::Panicked { .. } => ending = Some(Ending::Panicked),
                GuestEvent::Shutdown { guest, .. } => self.shutdown_seen = Some(*guest),
                _ => {}
            }
            out.push(SupervisorEvent::Guest(e));
        }
        if ending.is_none() && !self.guest.is_running() {
            ending = Some(match self.shutdown_seen {
                Some(true) => Ending::GuestPoweroff,
                Some(false) => Ending::HostStop,
                None => Ending::QemuDied,
            });
        }
        let Some(ending) = ending else {
            return Ok(out);
        };
        // A panicked guest's QEMU still runs (vCPUs stopped): end it.
        self.guest.kill()?;
        match self.policy.decide(ending, self.restarts) {
            Decision::Restart { after } => {
                tracing::warn!(guest = %self.guest.name(), ?ending, backoff_ms = after.as_millis() as u64, "restarting guest");
                std::thread::sleep(after);
                self.guest = (self.launch)()?;
                self.restarts += 1;
                self.shutdown_seen = None;
                out.push(SupervisorEvent::Restarted {
                    ending,
                    count: self.restarts,
                });
            }
            Decision::Stay { reason } => {
                tracing::warn!(guest = %self.guest.name(), ?ending, %reason, "guest stays down");
                self.ended = true;
                out.push(SupervisorEvent::Ended { ending, reason });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let p = RestartPolicy {
            mode: RestartMode::OnCrash,
            max_restarts: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3),
        };
        let after = |d| match d {
            Decision::Restart { after } => after.as_secs(),
            Decision::Stay { reason } => panic!("stays: {reason}"),
        };
        assert_eq!(after(p.decide(Ending::Panicked, 0)), 1);
        assert_eq!(after(p.decide(Ending::QemuDied, 1)), 2);
        assert_eq!(after(p.decide(Ending::Panicked, 2)), 3, "capped");
        assert!(matches!(p.decide(Ending::Panicked, 3), Decision::Stay { reason } if reason.contains("maximum")));
        assert!(matches!(p.decide(Ending::GuestPoweroff, 0), Decision::Stay { .. }));
        assert!(matches!(p.decide(Ending::HostStop, 0), Decision::Stay { .. }));
        let always = RestartPolicy {
            mode: RestartMode::Always,
            ..p
        };
        assert_eq!(after(always.decide(Ending::GuestPoweroff, 0)), 1);
        assert!(matches!(always.decide(Ending::HostStop, 0), Decision::Stay { .. }));
        let never = RestartPolicy {
            mode: RestartMode::Never,
            ..p
        };
        assert!(matches!(never.decide(Ending::Panicked, 0), Decision::Stay { .. }));
        let huge = RestartPolicy {
            max_restarts: 100,
            backoff_max: Duration::from_secs(60),
            ..p
        };
        assert_eq!(after(huge.decide(Ending::Panicked, 99)), 60, "no overflow");
    }
}
