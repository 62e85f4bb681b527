//! Encrypted L2-over-UDP bridge (the LCG's and the cloud node's data plane).
//!
//! CONTRACT (agreed between crates; implementation in progress):
//! - [`keys::StaticKeypair`]: X25519 static keys for Noise IKpsk2.
//! - [`Bridge::spawn`]: runs one tunnel to one peer, joining local ports
//!   (an AF_PACKET LAN port, or TAP devices) to an encrypted UDP socket.
//! - [`BridgeHandle`]: change which MACs are carried, read counters, stop.

pub mod keys;

/// The Noise pattern and primitives of the handshake.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";

use std::net::SocketAddr;

use proto::MacAddr;

/// Errors of the bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the implementation lands.
    #[error("{0}")]
    Other(String),
}

/// A local port the bridge moves frames to and from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// A LAN interface opened with an AF_PACKET raw socket (appliance side).
    /// Only frames for carried MACs (plus broadcast/multicast) go into the
    /// tunnel; only frames from carried MACs come out of it onto the LAN.
    Packet {
        /// Interface name, e.g. `lan0`.
        ifname: String,
    },
    /// A TAP device (cloud side); created if missing. Every frame crosses.
    Tap {
        /// TAP name, e.g. `tap-web1-0`.
        ifname: String,
    },
}

/// Who starts the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends handshake initiations to this endpoint (the LCG).
    Initiator {
        /// Peer's UDP endpoint.
        peer: SocketAddr,
    },
    /// Waits for initiations; learns the peer's endpoint from them (cloud node).
    Responder,
}

/// How to run one tunnel.
#[derive(Clone)]
pub struct BridgeConfig {
    /// Our static key.
    pub local: keys::StaticKeypair,
    /// The only peer public key we accept.
    pub peer_public: [u8; 32],
    /// Pre-shared key (Noise `psk2`).
    pub psk: [u8; 32],
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Initiator or responder.
    pub role: Role,
    /// Local ports.
    pub ports: Vec<PortSpec>,
}

/// Counters of one tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent into the tunnel.
    pub tx_frames: u64,
    /// Frames received from the tunnel and delivered.
    pub rx_frames: u64,
    /// Datagrams dropped (bad auth, replay, malformed).
    pub rx_dropped: u64,
    /// Replayed datagrams rejected.
    pub replay_rejects: u64,
    /// True once a handshake completed.
    pub established: bool,
}

/// A running bridge.
pub struct Bridge;

/// Control handle of a running bridge; dropping it does not stop the bridge.
#[derive(Clone)]
pub struct BridgeHandle;

impl Bridge {
    /// Opens the ports and socket and starts the worker threads.
    pub fn spawn(_cfg: BridgeConfig) -> Result<BridgeHandle, Error> {
        Err(Error::Other("not implemented yet".into()))
    }
}

impl BridgeHandle {
    /// Start carrying frames of this MAC (appliance side: a moved server).
    pub fn carry_mac(&self, _mac: MacAddr) {}
    /// Stop carrying frames of this MAC (rollback).
    pub fn drop_mac(&self, _mac: MacAddr) {}
    /// Add a TAP port at run time (cloud side: a new guest NIC).
    pub fn add_tap(&self, _ifname: &str) -> Result<(), Error> {
        Err(Error::Other("not implemented yet".into()))
    }
    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats::default()
    }
    /// Stops the workers and closes ports.
    pub fn shutdown(&self) {}
}
