//! Local ports: where frames enter and leave the bridge on this host.
//!
//! Both kinds of port are AF_PACKET sockets ([`packet`]): the appliance's LAN
//! interface, and the kernel side of a guest's TAP device (QEMU holds the TAP
//! fd as the guest's NIC; we attach to the interface like a sniffer would and
//! inject frames into it). A port whose interface disappears is kept and
//! reopened when an interface of that name shows up again.

pub mod csum;
pub mod gso;
pub mod packet;

use std::time::{Duration, Instant};

pub use packet::{Error, PacketSocket};

use crate::filter::{PortId, PortKind};
use crate::PortSpec;

/// How often a vanished interface is looked for again.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// The socket of a port, or when to try opening it again.
#[derive(Debug)]
pub(crate) enum State {
    Open(PacketSocket),
    Gone { retry_at: Instant },
}

/// A local port of a running bridge.
#[derive(Debug)]
pub(crate) struct Port {
    pub id: PortId,
    pub spec: PortSpec,
    pub state: State,
    /// A transmit error was logged and nothing succeeded since: do not log
    /// every dropped frame (a TAP without its QEMU fails every send).
    pub tx_error_logged: bool,
}

impl Port {
    /// Opens the port's socket.
    pub fn open(id: PortId, spec: PortSpec) -> Result<Self, Error> {
        let sock = PacketSocket::open(spec.ifname())?;
        Ok(Port {
            id,
            spec,
            state: State::Open(sock),
            tx_error_logged: false,
        })
    }

    /// The port's filter kind.
    pub fn kind(&self) -> PortKind {
        match self.spec {
            PortSpec::Lan { .. } => PortKind::Lan,
            PortSpec::Guest { .. } => PortKind::Guest,
        }
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        self.spec.ifname()
    }

    /// The socket, if open.
    pub fn socket(&self) -> Option<&PacketSocket> {
        match &self.state {
            State::Open(s) => Some(s),
            State::Gone { .. } => None,
        }
    }

    /// Closes the socket after its interface vanished; retried later.
    pub fn mark_gone(&mut self, now: Instant) {
        if matches!(self.state, State::Open(_)) {
            tracing::warn!(ifname = self.ifname(), "interface gone; port closed, will reopen when it returns");
        }
        self.state = State::Gone {
            retry_at: now + REOPEN_INTERVAL,
        };
    }

    /// True if the socket is bound to an interface index that no longer
    /// carries this name (deleted, or deleted and recreated).
    pub fn interface_vanished(&self) -> bool {
        match &self.state {
            State::Open(s) => nix::net::if_::if_nametoindex(self.ifname()).map_or(true, |i| i != s.ifindex()),
            State::Gone { .. } => false,
        }
    }

    /// Reopens a gone port if it is time to try. Returns true if it opened.
    pub fn retry(&mut self, now: Instant) -> bool {
        let State::Gone { retry_at } = self.state else { return false };
        if now < retry_at {
            return false;
        }
        match PacketSocket::open(self.ifname()) {
            Ok(s) => {
                tracing::info!(ifname = self.ifname(), "interface back; port reopened");
                self.state = State::Open(s);
                self.tx_error_logged = false;
                true
            }
            Err(e) => {
                tracing::trace!(ifname = self.ifname(), error = %e, "port still gone");
                self.state = State::Gone {
                    retry_at: now + REOPEN_INTERVAL,
                };
                false
            }
        }
    }
}
