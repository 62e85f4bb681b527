//! Encrypted L2-over-UDP bridge: the data plane between the LCG (appliance)
//! and the cloud nodes.
//!
//! One [`Bridge`] runs one tunnel per peer (the peer of its
//! [`BridgeConfig`] is peer 0; [`BridgeHandle::add_peer`] adds more, e.g. one
//! per cloud node) and joins them to local ports through a VLAN-aware
//! learning switch ([`filter`]):
//! - [`PortSpec::Lan`]: the appliance's LAN interface (AF_PACKET, promiscuous),
//!   filtered so only frames to/from *carried* MACs (the moved servers, each
//!   carried via one peer), plus broadcast/multicast while any MAC is
//!   carried, cross;
//! - [`PortSpec::Guest`]: the kernel side of a guest's TAP device, unfiltered.
//!
//! Two LCGs can serve one segment as an HA pair ([`ha`], [`Bridge::spawn_ha`]).
//!
//! The wire protocol (see `PROTOCOL.md`): a Noise `IKpsk2` handshake
//! ([`noise`], via `snow`) authenticates both static X25519 keys
//! ([`keys::StaticKeypair`]) and a pre-shared key; frames then travel in
//! AES-256-GCM datagrams (`ring`, [`session`]) with a counter nonce, a
//! sliding replay window ([`replay`]), rekeying every two minutes, and
//! fragmentation of frames above 1420 bytes into two datagrams ([`frag`])
//! so full-size frames cross an underlay of MTU 1500.
//!
//! Ports undo the kernel's offloads before frames enter the tunnel: VLAN
//! tags are put back, pending checksums completed, and TCP super-frames
//! (GRO/TSO) cut into wire-sized segments ([`port::gso`]).
//!
//! The protocol core ([`tunnel::Tunnel`], [`filter::Switch`]) is a pure state
//! machine with time passed in; the threads and sockets around it are a thin
//! shell (worker threads polling the UDP sockets and the ports: one, or one
//! per CPU with `SO_REUSEPORT` and `PACKET_FANOUT`, see [`worker`]).
//!
//! ```no_run
//! use netbridge::{keys::StaticKeypair, Bridge, BridgeConfig, PortSpec, Role};
//! # fn main() -> Result<(), netbridge::Error> {
//! let me = StaticKeypair::generate();
//! let cloud_public = [0u8; 32]; // from the control plane
//! let handle = Bridge::spawn(BridgeConfig {
//!     local: me,
//!     peer_public: cloud_public,
//!     psk: [7; 32],
//!     listen: "0.0.0.0:51900".parse().unwrap(),
//!     role: Role::Initiator { peer: "198.51.100.10:51900".parse().unwrap() },
//!     ports: vec![PortSpec::Lan { ifname: "lan0".into() }],
//! })?;
//! handle.carry_mac("52:54:00:12:34:56".parse().unwrap());
//! println!("{:?}", handle.stats());
//! handle.shutdown();
//! # Ok(()) }
//! ```

pub mod announce;
pub mod filter;
pub mod frag;
pub mod guard;
pub mod ha;
pub mod keys;
pub mod metrics;
pub mod noise;
pub mod port;
pub mod ratelimit;
pub mod replay;
pub mod session;
pub mod tunnel;
pub mod udp;
pub mod wire;
pub mod worker;

mod bridge;

use std::net::SocketAddr;

use proto::MacAddr;
use std::time::Duration;

pub use bridge::{Bridge, BridgeHandle};

/// The Noise pattern and primitives of the handshake.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";

/// Errors of the bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Noise handshake could not be set up (a build without the primitives).
    #[error("cannot set up the tunnel handshake")]
    Handshake(#[from] noise::Error),
    /// The underlay UDP socket could not be opened.
    #[error(transparent)]
    Udp(#[from] udp::Error),
    /// A local port could not be opened.
    #[error(transparent)]
    Port(#[from] port::Error),
    /// `add_port` for an interface the bridge already has.
    #[error("interface {0} is already a port of this bridge")]
    PortExists(String),
    /// `remove_port` for an interface the bridge does not have.
    #[error("interface {0} is not a port of this bridge")]
    NoSuchPort(String),
    /// `add_peer` with a number already in use.
    #[error("peer {0} already exists on this bridge")]
    PeerExists(u32),
    /// A peer number the bridge does not have.
    #[error("peer {0} is not a peer of this bridge; add it with add_peer first")]
    NoSuchPeer(u32),
    /// The worker thread could not be started.
    #[error("cannot start the bridge worker thread")]
    Thread(#[source] std::io::Error),
    /// The bridge was shut down (or its worker died).
    #[error("the bridge is not running")]
    Stopped,
    /// The worker did not answer a request in time.
    #[error("the bridge worker did not answer within {0:?}")]
    Unresponsive(Duration),
}

/// A local port the bridge moves frames to and from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// The appliance's LAN interface, opened with an AF_PACKET raw socket in
    /// promiscuous mode. FILTERED: only frames whose destination is a carried
    /// MAC, or broadcast/multicast (while any MAC is carried), go into the
    /// tunnel; only frames whose source is a carried MAC come out of it onto
    /// the LAN. With no carried MAC nothing crosses.
    ///
    /// GRO/TSO super-frames of TCP are cut back into segments; other frames
    /// larger than [`wire::MAX_FRAME`] (jumbo frames, UDP super-frames) are
    /// dropped and counted. LRO, which cannot be undone exactly, should be
    /// off on this interface (`ethtool -K lan0 lro off`; most NICs default so).
    Lan {
        /// Interface name, e.g. `lan0`.
        ifname: String,
    },
    /// An existing TAP device (created by the CSL; QEMU holds its fd as the
    /// guest's NIC); we attach to its kernel side with AF_PACKET.
    /// UNFILTERED: everything crosses both ways. Sending to a TAP whose QEMU
    /// is not attached yet fails; such frames are counted and dropped.
    Guest {
        /// TAP name, e.g. `tap-web1-0`.
        ifname: String,
    },
}

impl PortSpec {
    /// The interface name.
    pub fn ifname(&self) -> &str {
        match self {
            PortSpec::Lan { ifname } | PortSpec::Guest { ifname } => ifname,
        }
    }
}

/// High availability of a bridge (see [`ha`]).
#[derive(Clone, Debug, Default)]
pub enum Ha {
    /// One LCG per segment: forward whenever the tunnel is up.
    #[default]
    Off,
    /// An LCG of an HA pair: forward through each tunnel only while
    /// holding the lease its cloud node grants (one lease per tunnel);
    /// announce the MACs carried via a tunnel on taking its lease over.
    Member,
    /// The cloud node's side: every tunnel of this bridge is a member of
    /// `arbiter` (known by its peer's static key; one arbiter may be shared
    /// by several bridges of one segment). Once a member has asked for the
    /// lease, frames of a tunnel cross only while its member holds it.
    Arbiter {
        /// The segment's arbiter.
        arbiter: ha::SharedArbiter,
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
    /// Waits for initiations; learns the peer's endpoint from authenticated
    /// datagrams, and follows it when it changes (cloud node).
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

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No private key, no PSK.
        f.debug_struct("BridgeConfig")
            .field("local_public", &self.local.public)
            .field("peer_public", &self.peer_public)
            .field("listen", &self.listen)
            .field("role", &self.role)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// A further peer of a bridge (another cloud node), added with
/// [`BridgeHandle::add_peer`]; it shares the bridge's static key and ports.
#[derive(Clone)]
pub struct PeerSpec {
    /// The only public key this tunnel accepts.
    pub peer_public: [u8; 32],
    /// Pre-shared key of this tunnel.
    pub psk: [u8; 32],
    /// UDP address this tunnel's socket binds (its own port).
    pub listen: SocketAddr,
    /// Initiator (the LCG) or responder.
    pub role: Role,
    /// Which VLANs the peer gets, and how their tags are mapped.
    pub vlans: filter::PeerVlans,
}

impl std::fmt::Debug for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No PSK.
        f.debug_struct("PeerSpec")
            .field("peer_public", &self.peer_public)
            .field("listen", &self.listen)
            .field("role", &self.role)
            .field("vlans", &self.vlans)
            .finish_non_exhaustive()
    }
}

/// Counters of one peer's tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's number (0: the one of [`BridgeConfig`]).
    pub id: u32,
    /// True while a session can carry frames.
    pub established: bool,
    /// Where datagrams to the peer go now.
    pub endpoint: Option<SocketAddr>,
    /// Frames sent into this tunnel.
    pub tx_frames: u64,
    /// Frames received from this tunnel.
    pub rx_frames: u64,
    /// Datagrams of this tunnel dropped.
    pub rx_dropped: u64,
    /// Time since this tunnel's last completed handshake.
    pub last_handshake_age: Option<Duration>,
    /// HA: this tunnel's lease (held by us on an LCG, by this tunnel's
    /// member on a cloud node); `None` without HA.
    pub ha: Option<ha::LeaseView>,
}

/// Counters of a bridge: totals over its tunnels, and per peer in
/// [`Stats::peers`]. With one peer, the totals are that tunnel's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent into the tunnel.
    pub tx_frames: u64,
    /// Frames received from the tunnel (whole, after reassembly).
    pub rx_frames: u64,
    /// Datagrams dropped (bad auth, replay, malformed, unknown session,
    /// rejected or rate-limited handshakes).
    pub rx_dropped: u64,
    /// Replayed datagrams rejected.
    pub replay_rejects: u64,
    /// True while every peer's session can carry frames (false with no peer).
    pub established: bool,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshake initiations sent (initiator; includes retransmissions).
    pub handshake_inits_sent: u64,
    /// Handshakes from a static key other than the configured peer.
    pub handshake_wrong_peer: u64,
    /// Handshake messages rejected otherwise (failed Noise processing, e.g.
    /// wrong PSK; replayed initiation; out of place).
    pub handshake_rejected: u64,
    /// Handshake messages over the rate limit.
    pub handshake_rate_limited: u64,
    /// Time since peer 0's last completed handshake.
    pub last_handshake_age: Option<Duration>,
    /// Where datagrams to peer 0 go now.
    pub peer_endpoint: Option<SocketAddr>,
    /// Data datagrams that failed authentication.
    pub rx_auth_failed: u64,
    /// Datagrams that did not parse.
    pub rx_malformed: u64,
    /// Data datagrams for an unknown session index.
    pub rx_unknown_session: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// Keepalives received.
    pub keepalives_received: u64,
    /// Frames not sent: no session yet (handshake pending).
    pub tx_dropped_no_session: u64,
    /// Frames not sent: larger than [`wire::MAX_FRAME`] (incl. truncated
    /// GRO/GSO super-frames read from a port).
    pub tx_dropped_too_large: u64,
    /// LAN frames that did not pass the carried-MAC filter (normal LAN
    /// traffic not for moved servers; plus runts).
    pub lan_filtered: u64,
    /// LAN frames whose source is a carried MAC (loop or MAC conflict).
    pub lan_carried_source: u64,
    /// Frames from the tunnel not put on the LAN: source not carried.
    pub egress_filtered: u64,
    /// Frames with nowhere to go (destination learned behind the port the
    /// frame came from, or no ports).
    pub unswitchable: u64,
    /// Frames that failed to go out of a local port (TAP without QEMU,
    /// interface down or gone, MTU).
    pub port_tx_errors: u64,
    /// Frames whose TCP/UDP checksum we completed (checksum offload).
    pub checksums_completed: u64,
    /// Super-frames (GRO/TSO, up to 64 KiB) read from a port and cut into
    /// wire-sized TCP segments before switching.
    pub superframes_segmented: u64,
    /// Datagrams that failed to send on the underlay.
    pub udp_tx_errors: u64,
    /// Fragments whose partner never came (timeout or table full).
    pub fragments_lost: u64,
    /// Local ports whose interface is currently missing.
    pub ports_down: u32,
    /// ALARM: carried MACs that were also seen as a source on the LAN (the
    /// source server and its moved copy both alive, or a MAC conflict).
    /// Frames of these MACs are not forwarded either way until
    /// [`BridgeHandle::clear_duplicate_mac`] (or `drop_mac`).
    pub duplicate_macs: Vec<MacAddr>,
    /// Frames not forwarded because their MAC is in [`Stats::duplicate_macs`].
    pub duplicate_mac_drops: u64,
    /// Loops detected on the LAN side: our own probe, or a frame we put on
    /// the LAN, came back in on the LAN port.
    pub loops_detected: u64,
    /// True while the LAN port is blocked because of a loop (it unblocks by
    /// itself once no loop has been seen for a hold time).
    pub loop_blocked: bool,
    /// Frames dropped because the LAN port was blocked (loop).
    pub loop_drops: u64,
    /// Broadcast/multicast/unknown-unicast frames over the storm-control rate.
    pub storm_drops: u64,
    /// Gratuitous ARP and unsolicited neighbour advertisements sent on the LAN.
    pub gratuitous_sent: u64,
    /// Frames put on LAN ports (from the tunnel or guest ports; not our
    /// probes and announcements).
    pub lan_tx_frames: u64,
    /// HA ([`Ha::Member`]/[`Ha::Arbiter`]): true while this side may
    /// forward (the member holds the lease). Always false with [`Ha::Off`].
    pub ha_active: bool,
    /// HA: the epoch (fencing token) of the lease held or last seen.
    pub ha_epoch: u64,
    /// HA: times this member took the lease over (standby → active).
    pub ha_takeovers: u64,
    /// HA: frames not forwarded because this side does not hold the lease.
    pub ha_standby_drops: u64,
    /// Each peer's tunnel (peer 0 first).
    pub peers: Vec<PeerStatus>,
    /// Datagrams each worker received from the underlay (worker 0 first;
    /// one entry per worker, see [`worker`]).
    pub worker_datagrams: Vec<u64>,
    /// Frames each worker read from local ports (worker 0 first).
    pub worker_frames: Vec<u64>,
    /// Times each worker took the protocol core's lock.
    pub worker_locks: Vec<u64>,
    /// Times each worker had to wait for that lock (another worker held it).
    pub worker_lock_waits: Vec<u64>,
}
