//! The guest's typed event stream, from QMP's asynchronous events.

use std::time::Duration;

use crate::qemu::qmp::Event;
use crate::{Error, Guest};

/// Something that happened to a guest, as QEMU reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// The machine shut down (QEMU exits next unless told otherwise).
    /// `guest` is true when the guest itself asked (ACPI power-off, halt).
    Shutdown {
        /// Initiated by the guest.
        guest: bool,
        /// QEMU's reason (`guest-shutdown`, `host-qmp-quit`, ...).
        reason: String,
    },
    /// The machine reset. `guest` is true for a reboot from inside.
    Reset {
        /// Initiated by the guest.
        guest: bool,
    },
    /// The guest kernel panicked (pvpanic); the vCPUs are stopped.
    Panicked {
        /// What QEMU did (`pause`, `poweroff`, `run`).
        action: String,
    },
    /// The vCPUs stopped (pause, snapshot, panic).
    Stop,
    /// The vCPUs run again.
    Resume,
    /// The ACPI power button was pressed.
    Powerdown,
    /// Any other QMP event, by name.
    Other(String),
}

impl From<&Event> for GuestEvent {
    fn from(e: &Event) -> GuestEvent {
        let flag = |k: &str| e.data.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let text = |k: &str| e.data.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        match e.name.as_str() {
            "SHUTDOWN" => GuestEvent::Shutdown {
                guest: flag("guest"),
                reason: text("reason"),
            },
            "RESET" => GuestEvent::Reset { guest: flag("guest") },
            "GUEST_PANICKED" => GuestEvent::Panicked { action: text("action") },
            "STOP" => GuestEvent::Stop,
            "RESUME" => GuestEvent::Resume,
            "POWERDOWN" => GuestEvent::Powerdown,
            other => GuestEvent::Other(other.to_string()),
        }
    }
}

impl Guest {
    /// Events since the last call, oldest first, waiting up to `wait` for the
    /// first one. Events that arrived while other commands ran are included.
    pub fn events(&self, wait: Duration) -> Result<Vec<GuestEvent>, Error> {
        Ok(self.with_qmp(|q| q.poll_events(wait))?.iter().map(GuestEvent::from).collect())
    }
}

impl Guest {
    /// Events still buffered on the current QMP connection, without
    /// reconnecting: what a QEMU said before it exited (its `SHUTDOWN`).
    pub fn last_events(&self) -> Vec<GuestEvent> {
        let mut slot = self.lock_qmp();
        let Some(q) = slot.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        loop {
            match q.poll_events(Duration::from_millis(50)) {
                Ok(evs) if !evs.is_empty() => out.extend(evs.iter().map(GuestEvent::from)),
                _ => break,
            }
        }
        *slot = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn typed_from_qmp() {
        let ev = |name: &str, data| GuestEvent::from(&Event { name: name.into(), data });
        assert_eq!(
            ev("SHUTDOWN", json!({"guest": true, "reason": "guest-shutdown"})),
            GuestEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        assert_eq!(ev("RESET", json!({"guest": false})), GuestEvent::Reset { guest: false });
        assert_eq!(
            ev("GUEST_PANICKED", json!({"action": "pause", "info": {"type": "hyper-v"}})),
            GuestEvent::Panicked { action: "pause".into() }
        );
        assert_eq!(ev("STOP", serde_json::Value::Null), GuestEvent::Stop);
        assert_eq!(ev("BLOCK_JOB_READY", json!({})), GuestEvent::Other("BLOCK_JOB_READY".into()));
    }
}
