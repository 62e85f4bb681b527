//! Is the guest alive? A signal from below the guest, polled by the CSL.
//!
//! Sources, in order of trust:
//! - [`AliveSource::Agent`]: the guest agent answered `guest-sync` over its
//!   virtio-serial channel (the guest was started with
//!   [`crate::LaunchOptions::guest_agent`]). When the guest has an agent
//!   channel it is the only source that counts: a stopped agent means hung.
//! - [`AliveSource::Serial`]: the guest wrote to its serial console since the
//!   last poll (a heartbeat service printing a line every few seconds, or any
//!   console output).
//! - [`AliveSource::Disk`]: the guest's disk counters (`query-blockstats`)
//!   moved since the last poll.
//!
//! Without an agent, an idle guest that prints nothing and touches no disk
//! looks hung after [`AliveConfig::hung_after`]: pick it larger than the
//! guest's heartbeat interval. vCPUs paused by the host (pause, snapshot,
//! migration) are not a hang: the clock stops while QEMU reports the guest
//! not running, and restarts from the resume.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::run_dir::RunDir;
use crate::{Error, Guest};

/// What proved the guest alive last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AliveSource {
    /// The guest agent answered.
    Agent,
    /// New bytes on the serial console.
    Serial,
    /// Disk counters moved.
    Disk,
}

/// The guest-alive status at one poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AliveStatus {
    /// False from the poll that found [`AliveConfig::hung_after`] of silence
    /// with the vCPUs running, until a fresh signal arrives.
    pub alive: bool,
    /// When the last signal arrived; `None` before the first.
    pub last_seen: Option<SystemTime>,
    /// Which source gave it.
    pub source: Option<AliveSource>,
    /// The host has the vCPUs stopped (not counted as a hang).
    pub paused: bool,
}

/// A change of the alive state, reported once per transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AliveChange {
    /// No signal for longer than [`AliveConfig::hung_after`] while the vCPUs
    /// ran: the guest (or its agent / heartbeat service) is hung.
    Hung {
        /// When the last signal arrived (`None`: never since the watch began).
        last_seen: Option<SystemTime>,
        /// Which source went silent.
        source: Option<AliveSource>,
    },
    /// Signals arrive again after a hang.
    Recovered {
        /// Which source showed life.
        source: AliveSource,
    },
}

/// How the watch decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AliveConfig {
    /// Silence longer than this (with vCPUs running) is a hang.
    pub hung_after: Duration,
    /// How long one agent `guest-sync` may take.
    pub agent_timeout: Duration,
}

impl Default for AliveConfig {
    fn default() -> AliveConfig {
        AliveConfig {
            hung_after: Duration::from_secs(30),
            agent_timeout: Duration::from_secs(3),
        }
    }
}

/// Polls one guest's alive signals; call [`AliveWatch::poll`] every few
/// seconds (more often than `hung_after`).
#[derive(Debug)]
pub struct AliveWatch {
    config: AliveConfig,
    agent: Option<PathBuf>,
    serial_log: PathBuf,
    serial_len: Option<u64>,
    disk_ops: Option<u64>,
    /// Last signal: when (monotonic, for the timeout), when (wall clock, for
    /// the status) and from where.
    last: Option<(Instant, SystemTime, AliveSource)>,
    /// Start of the current silence window (watch start, resume, signal).
    window_start: Instant,
    hung: bool,
}

impl AliveWatch {
    /// A watch for `guest`. The agent is used when the guest has an agent
    /// channel (its socket exists in the run directory).
    pub fn new(guest: &Guest, config: AliveConfig) -> AliveWatch {
        let run = RunDir::new(guest.run_dir());
        let agent = run.agent_socket();
        AliveWatch {
            config,
            agent: agent.exists().then_some(agent),
            serial_log: run.serial_log(),
            serial_len: None,
            disk_ops: None,
            last: None,
            window_start: Instant::now(),
            hung: false,
        }
    }

    /// Whether this watch asks the guest agent (else serial + disk).
    pub fn uses_agent(&self) -> bool {
        self.agent.is_some()
    }

    /// Looks for a signal now, and returns the status and, on a transition,
    /// what changed. Fails only when QEMU's monitor fails (QEMU gone).
    pub fn poll(&mut self, guest: &Guest) -> Result<(AliveStatus, Option<AliveChange>), Error> {
        let running = guest.execute("query-status", None)?["running"] == serde_json::json!(true);
        let now = Instant::now();
        if !running {
            // Host-side pause: no hang can be missed meanwhile.
            self.window_start = now;
            return Ok((self.status(true), None));
        }
        let fresh = self.signal(guest)?;
        if let Some(source) = fresh {
            self.last = Some((now, SystemTime::now(), source));
            self.window_start = now;
        }
        let silent_since = self.last.map_or(self.window_start, |(t, _, _)| t.max(self.window_start));
        let silent = now.duration_since(silent_since) > self.config.hung_after;
        let change = match (self.hung, silent, fresh) {
            (false, true, _) => {
                self.hung = true;
                Some(AliveChange::Hung {
                    last_seen: self.last.map(|(_, w, _)| w),
                    source: self.last.map(|(_, _, s)| s),
                })
            }
            // Only a fresh signal ends a hang (not a host pause/resume).
            (true, _, Some(source)) => {
                self.hung = false;
                Some(AliveChange::Recovered { source })
            }
            _ => None,
        };
        if let Some(c) = &change {
            tracing::warn!(guest = %guest.name(), change = ?c, "guest alive state changed");
        }
        Ok((self.status(false), change))
    }

    fn status(&self, paused: bool) -> AliveStatus {
        AliveStatus {
            alive: !self.hung,
            last_seen: self.last.map(|(_, w, _)| w),
            source: self.last.map(|(_, _, s)| s),
            paused,
        }
    }

    /// A fresh signal since the last poll, if any.
    fn signal(&mut self, guest: &Guest) -> Result<Option<AliveSource>, Error> {
        if let Some(sock) = &self.agent {
            return Ok(match crate::agent::ping(sock, self.config.agent_timeout) {
                Ok(()) => Some(AliveSource::Agent),
                Err(e) => {
                    tracing::debug!(guest = %guest.name(), error = %e, "guest agent did not answer");
                    None
                }
            });
        }
        let len = std::fs::metadata(&self.serial_log).map(|m| m.len()).ok();
        let serial = moved(&mut self.serial_len, len);
        let ops = guest
            .block_stats()?
            .iter()
            .map(|b| b.rd_operations + b.wr_operations + b.flush_operations)
            .sum();
        let disk = moved(&mut self.disk_ops, Some(ops));
        Ok(if serial {
            Some(AliveSource::Serial)
        } else if disk {
            Some(AliveSource::Disk)
        } else {
            None
        })
    }
}

/// Stores `now` in `prev`; true when both exist and differ (the first
/// reading is a baseline, not a signal).
fn moved(prev: &mut Option<u64>, now: Option<u64>) -> bool {
    let changed = matches!((*prev, now), (Some(a), Some(b)) if a != b);
    if now.is_some() {
        *prev = now;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reading_is_a_baseline() {
        let mut p = None;
        assert!(!moved(&mut p, Some(10)));
        assert!(!moved(&mut p, Some(10)));
        assert!(moved(&mut p, Some(11)));
        assert!(!moved(&mut p, None), "a failed reading is not a signal");
        assert_eq!(p, Some(11));
    }

    #[test]
    fn status_serializes_for_scripts() {
        let s = AliveStatus {
            alive: false,
            last_seen: None,
            source: Some(AliveSource::Serial),
            paused: false,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["source"], "serial");
        assert_eq!(v["alive"], false);
    }
}
