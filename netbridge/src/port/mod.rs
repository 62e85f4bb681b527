//! Local ports: where frames enter and leave the bridge on this host.
//!
//! Both kinds of port are AF_PACKET sockets ([`packet`]): the appliance's LAN
//! interface, and the kernel side of a guest's TAP device (QEMU holds the TAP
//! fd as the guest's NIC; we attach to the interface like a sniffer would and
//! inject frames into it). A port whose interface disappears is kept and
//! reopened when an interface of that name shows up again.

pub mod csum;
pub mod fanout;
pub mod frame_ring;
pub mod gso;
pub mod packet;
pub mod ring;
pub mod tx_ring;

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

/// Frames waiting to go out of a port in one `sendmmsg` (copied in; the
/// buffers are allocated once).
#[derive(Debug, Default)]
pub(crate) struct TxQueue {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl TxQueue {
    /// Frames queued.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn push(&mut self, frame: &[u8]) {
        self.data.extend_from_slice(frame);
        self.ends.push(self.data.len());
    }

    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

/// What a [`Port::flush`] did.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    pub sent: usize,
    pub failed: usize,
    pub error: Option<std::io::Error>,
}

/// Largest frame read from a port: a 64 KiB GRO/TSO super-frame plus
/// headers. Larger ones (BIG TCP) are dropped and counted.
pub const PORT_FRAME_MAX: usize = 65536 + 256;

/// How the LAN port reads frames (`NETBRIDGE_RX_RING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanRead {
    /// TPACKET_V2 frame ring (the default; `v2`): no syscall per frame, and
    /// each frame is handed over as soon as it is written.
    FrameRing,
    /// TPACKET_V3 block ring (`v3`, or `1` as before): frames wait in a
    /// block until it fills or the kernel's retire timer fires (+1 to +4 ms
    /// of RTT measured, see PERFORMANCE.md).
    BlockRing,
    /// `recvmmsg` (`0`).
    Recvmmsg,
}

/// The LAN read mode chosen by `NETBRIDGE_RX_RING` (see [`LanRead`]).
pub fn lan_read() -> LanRead {
    match std::env::var("NETBRIDGE_RX_RING").as_deref() {
        Ok("1" | "v3") => LanRead::BlockRing,
        Ok("0" | "off") => LanRead::Recvmmsg,
        _ => LanRead::FrameRing,
    }
}

/// Guest ports send through a transmit ring ([`tx_ring`]) unless
/// `NETBRIDGE_GUEST_TX` is `mmsg` (or `0`): then with `sendmmsg`.
pub fn guest_tx_ring() -> bool {
    !matches!(std::env::var("NETBRIDGE_GUEST_TX").as_deref(), Ok("mmsg" | "0" | "off"))
}

/// The LAN port reads as [`lan_read`] says and sends with `sendmmsg`; guest
/// ports read with `recvmmsg` and send as [`guest_tx_ring`] says.
fn open_socket(spec: &PortSpec) -> Result<PacketSocket, Error> {
    match spec {
        PortSpec::Lan { .. } => match lan_read() {
            LanRead::FrameRing => PacketSocket::open_with_frame_ring(spec.ifname(), packet::HEADROOM + PORT_FRAME_MAX),
            LanRead::BlockRing => PacketSocket::open_with_rx_ring(spec.ifname()),
            LanRead::Recvmmsg => PacketSocket::open(spec.ifname()),
        },
        PortSpec::Guest { .. } if guest_tx_ring() => PacketSocket::open_with_tx_ring(spec.ifname()),
        PortSpec::Guest { .. } => PacketSocket::open(spec.ifname()),
    }
}

/// A local port of a running bridge.
#[derive(Debug)]
pub(crate) struct Port {
    pub id: PortId,
    pub spec: PortSpec,
    pub state: State,
    /// Frames to send at the next [`Port::flush`].
    pub tx: TxQueue,
    /// A transmit error was logged and nothing succeeded since: do not log
    /// every dropped frame (a TAP without its QEMU fails every send).
    pub tx_error_logged: bool,
    /// The `PACKET_FANOUT` group the socket is in (a bridge with several
    /// workers: one socket per worker, [`fanout`]); reopening rejoins it.
    pub fanout: Option<u16>,
}

impl Port {
    /// Opens the port's socket.
    pub fn open(id: PortId, spec: PortSpec) -> Result<Self, Error> {
        let sock = open_socket(&spec)?;
        Ok(Port {
            id,
            spec,
            state: State::Open(sock),
            tx: TxQueue::default(),
            tx_error_logged: false,
            fanout: None,
        })
    }

    /// Opens the port's socket as one member of hash fanout group `group`
    /// ([`fanout`]), or of a new group with `None`; [`Port::fanout`] then
    /// names the group for the other members.
    pub fn open_in_group(id: PortId, spec: PortSpec, group: Option<u16>) -> Result<Self, Error> {
        let sock = open_socket(&spec)?;
        let gid = join_group(&sock, group)?;
        Ok(Port {
            id,
            spec,
            state: State::Open(sock),
            tx: TxQueue::default(),
            tx_error_logged: false,
            fanout: Some(gid),
        })
    }

    /// A port of fanout group `group` whose socket could not be opened yet;
    /// [`Port::retry`] opens it later.
    pub fn closed_in_group(id: PortId, spec: PortSpec, group: u16, now: Instant) -> Self {
        Port {
            id,
            spec,
            state: State::Gone {
                retry_at: now + REOPEN_INTERVAL,
            },
            tx: TxQueue::default(),
            tx_error_logged: false,
            fanout: Some(group),
        }
    }

    /// Queues `frame` for sending; sends the queue when it holds a batch.
    pub fn queue(&mut self, frame: &[u8]) -> Flushed {
        self.tx.push(frame);
        if self.tx.len() >= packet::BATCH {
            self.flush()
        } else {
            Flushed::default()
        }
    }

    /// Sends the queued frames (one transmit-ring kick or `sendmmsg`); a
    /// closed port fails them all.
    pub fn flush(&mut self) -> Flushed {
        let n = self.tx.len();
        if n == 0 {
            return Flushed::default();
        }
        let r = match &mut self.state {
            State::Open(sock) => {
                let mut refs: [&[u8]; packet::BATCH] = [&[]; packet::BATCH];
                let mut start = 0;
                for (r, &end) in refs.iter_mut().zip(&self.tx.ends) {
                    *r = &self.tx.data[start..end];
                    start = end;
                }
                let (sent, error) = sock.send_batch(&refs[..n.min(packet::BATCH)]);
                Flushed {
                    sent,
                    failed: n - sent,
                    error,
                }
            }
            State::Gone { .. } => Flushed {
                sent: 0,
                failed: n,
                error: None,
            },
        };
        self.tx.clear();
        r
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

    /// Takes the socket's receive ring out, if it has one, so it can be
    /// walked while the bridge switches frames; give it back with
    /// [`Port::put_ring`] before anything can reopen the port.
    pub fn take_ring(&mut self) -> Option<ring::RxRing> {
        match &mut self.state {
            State::Open(s) => s.take_ring(),
            State::Gone { .. } => None,
        }
    }

    /// Gives back the ring from [`Port::take_ring`] (dropped, i.e. unmapped,
    /// if the socket went away meanwhile).
    pub fn put_ring(&mut self, ring: ring::RxRing) {
        if let State::Open(s) = &mut self.state {
            s.put_ring(ring);
        }
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
        let opened = open_socket(&self.spec).and_then(|s| match self.fanout {
            Some(g) => join_group(&s, Some(g)).map(|_| s),
            None => Ok(s),
        });
        match opened {
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

/// Joins `sock` to fanout group `group` (a new one with `None`).
fn join_group(sock: &PacketSocket, group: Option<u16>) -> Result<u16, Error> {
    use std::os::fd::AsFd;
    fanout::join(sock.as_fd(), group).map_err(|source| Error::Socket {
        ifname: sock.ifname().to_string(),
        op: "join the PACKET_FANOUT group of the other workers",
        source,
    })
}
