//! Several workers per bridge: how many, and each worker's own sockets.
//!
//! With `n > 1` workers every worker has its own UDP socket per tunnel, all
//! bound to the tunnel's address with `SO_REUSEPORT` (the kernel keeps one
//! sender's 4-tuple on one socket, so one peer's datagrams arrive at one
//! worker), and its own AF_PACKET socket per port, the ports' sockets joined
//! in one `PACKET_FANOUT` hash group ([`crate::port::fanout`]: one flow's
//! frames reach one worker, in order). Each worker polls, receives and sends
//! on its own sockets without any lock; what frames do in between — the
//! switch, the LAN guard, HA, the tunnels' handshake state machines, replay
//! windows and sealing — is the bridge's protocol core, which one mutex
//! guards (`bridge.rs`). Why one mutex and not per-session snapshots:
//! `PERFORMANCE.md`, "Several workers".
//!
//! With one worker (the default on machines with two CPUs or fewer, see
//! [`default_count`]) nothing of this is set up: plain sockets as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::filter::PeerId;
use crate::port::Port;
use crate::udp::Udp;

/// Most workers a bridge starts, whatever is asked.
pub const MAX_WORKERS: usize = 64;

/// The number of workers `NETBRIDGE_WORKERS` asks for (`auto`, unset or
/// unparsable: [`default_count`]); at least 1, at most [`MAX_WORKERS`].
pub fn from_env() -> usize {
    match std::env::var("NETBRIDGE_WORKERS") {
        Ok(v) => parse(&v).unwrap_or_else(|| {
            if v != "auto" {
                tracing::warn!(value = %v, "NETBRIDGE_WORKERS is not a number or `auto`; using the default");
            }
            default_count()
        }),
        Err(_) => default_count(),
    }
}

/// Parses a worker count: a positive number, clamped to [`MAX_WORKERS`].
pub fn parse(v: &str) -> Option<usize> {
    v.trim().parse::<usize>().ok().filter(|&n| n > 0).map(|n| n.min(MAX_WORKERS))
}

/// The default: one worker per CPU this process may run on
/// (`sched_getaffinity`, via `available_parallelism`), but one worker on a
/// machine with two CPUs or fewer: there the second worker competes with the
/// traffic's own processes and was measured slower (`PERFORMANCE.md`).
pub fn default_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    rule(cpus)
}

/// [`default_count`] for `cpus` CPUs.
pub fn rule(cpus: usize) -> usize {
    if cpus <= 2 {
        1
    } else {
        cpus.min(MAX_WORKERS)
    }
}

/// One worker's UDP socket of one tunnel.
#[derive(Debug)]
pub(crate) struct WorkerUdp {
    /// The tunnel.
    pub peer: PeerId,
    /// `None` if this worker could not bind (it then neither receives nor
    /// sends for the tunnel; the other workers do).
    pub sock: Option<Udp>,
    /// A send error was logged (not again until a send succeeds).
    pub logged: bool,
}

/// One worker's sockets, aligned with the bridge's tunnels and ports: the
/// worker swaps them into the core while it holds the core's lock.
#[derive(Debug, Default)]
pub(crate) struct Io {
    /// One per tunnel, in the order of the core's tunnels.
    pub udps: Vec<WorkerUdp>,
    /// One per port, in the order of the core's ports.
    pub ports: Vec<Port>,
    /// The core's layout generation these are aligned with.
    pub layout: u64,
    /// When this worker last looked for vanished interfaces.
    pub last_port_check: Option<Instant>,
}

/// What one worker carried, kept outside the core's lock and summed for
/// status and Prometheus.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Datagrams received from the underlay (each datagram of a GRO run).
    pub datagrams: AtomicU64,
    /// Frames read from local ports (before segmentation).
    pub frames: AtomicU64,
    /// Times this worker took the core's lock.
    pub locks: AtomicU64,
    /// Of those, times it had to wait for another worker.
    pub lock_waits: AtomicU64,
}

impl WorkerCounters {
    /// Counts `n` datagrams.
    pub fn add_datagrams(&self, n: u64) {
        self.datagrams.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` frames.
    pub fn add_frames(&self, n: u64) {
        self.frames.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one taking of the core's lock.
    pub fn add_lock(&self) {
        self.locks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one wait for the core's lock.
    pub fn add_lock_wait(&self) {
        self.lock_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// (locks taken, lock waits) so far.
    pub fn locks(&self) -> (u64, u64) {
        (self.locks.load(Ordering::Relaxed), self.lock_waits.load(Ordering::Relaxed))
    }

    /// (datagrams, frames) so far.
    pub fn get(&self) -> (u64, u64) {
        (self.datagrams.load(Ordering::Relaxed), self.frames.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_rule_and_parse() {
        assert_eq!(rule(1), 1);
        assert_eq!(rule(2), 1);
        assert_eq!(rule(4), 4);
        assert_eq!(rule(1000), MAX_WORKERS);
        assert_eq!(parse("2"), Some(2));
        assert_eq!(parse(" 3 "), Some(3));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("auto"), None);
        assert_eq!(parse("999"), Some(MAX_WORKERS));
    }
}
