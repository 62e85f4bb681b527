//! The node's side of the data plane: its static Noise key, the appliance's
//! identity learnt at enrolment, and the running `netbridge` tunnel (the node
//! is the responder; the appliance's LCG initiates). Guest TAP devices are
//! added to and removed from the tunnel as guests come and go.
//!
//! The bridge always runs the segment's HA lease arbiter
//! (`netbridge::ha::Arbiter`): an LCG that runs as an HA member
//! (`isthmus lcg ha on`) asks it for this cloud's lease and forwards only
//! while it holds it; an LCG without HA never asks, and the arbiter, never
//! engaged, lets its tunnel forward as before.
//!
//! Every call into `netbridge` goes through the small private functions at the
//! bottom, so a change of its API stays local to them.

use std::net::SocketAddr;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use netbridge::keys::StaticKeypair;

use crate::bridge_members::MemberTunnel;
use crate::state_dir::{self, StateDir, PUBLIC_MODE, SECRET_MODE};

/// Errors of the data-plane side of the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key file could not be read or written.
    #[error(transparent)]
    State(#[from] state_dir::Error),
    /// A stored public key does not belong to the stored private key.
    #[error(
        "{0} does not match the private key in noise-key; \
         one of them was replaced — restore both from the same backup or re-enrol the node"
    )]
    KeyMismatch(std::path::PathBuf),
    /// A base64 key is malformed.
    #[error("{what} is not a base64 32-byte key")]
    BadKey {
        /// Which key.
        what: &'static str,
    },
    /// The tunnel is not running.
    #[error("the data-plane bridge is not running: {0}")]
    NotRunning(String),
    /// netbridge refused.
    #[error("data-plane bridge: {0}")]
    Bridge(#[from] netbridge::Error),
}

/// Loads the node's static Noise key, creating it (0600) on first start.
pub fn load_or_create_noise_key(state: &StateDir) -> Result<StaticKeypair, Error> {
    let key_path = state.noise_key();
    let pub_path = state.noise_public();
    if key_path.exists() {
        let kp = keypair_from_private(state.read_key32(&key_path)?);
        // The .pub file is for people; the private key is the truth. A
        // mismatch means someone copied one file without the other.
        if let Some(stored) = state.read_optional(&pub_path)? {
            if String::from_utf8_lossy(&stored).trim() != B64.encode(kp.public) {
                return Err(Error::KeyMismatch(pub_path));
            }
        } else {
            state.write_atomic(&pub_path, format!("{}\n", B64.encode(kp.public)).as_bytes(), PUBLIC_MODE)?;
        }
        return Ok(kp);
    }
    let kp = StaticKeypair::generate();
    state.write_atomic(&key_path, &kp.private, SECRET_MODE)?;
    state.write_atomic(&pub_path, format!("{}\n", B64.encode(kp.public)).as_bytes(), PUBLIC_MODE)?;
    Ok(kp)
}

/// Decodes a base64 32-byte key (Noise public key or PSK).
pub fn decode_key(what: &'static str, b64: &str) -> Result<[u8; 32], Error> {
    let bytes = B64.decode(b64.trim()).map_err(|_| Error::BadKey { what })?;
    bytes.as_slice().try_into().map_err(|_| Error::BadKey { what })
}

/// The appliance's data-plane identity, as stored at enrolment.
#[derive(Clone)]
pub struct PeerIdentity {
    /// The appliance's static Noise public key.
    pub public: [u8; 32],
    /// The pre-shared key for Noise `psk2`.
    pub psk: [u8; 32],
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("public", &B64.encode(self.public))
            .finish_non_exhaustive()
    }
}

impl PeerIdentity {
    /// Stores the appliance's public key and the PSK (0600).
    pub fn store(&self, state: &StateDir) -> Result<(), Error> {
        state.write_atomic(
            &state.appliance_noise(),
            format!("{}\n", B64.encode(self.public)).as_bytes(),
            PUBLIC_MODE,
        )?;
        state.write_atomic(&state.bridge_psk(), &self.psk, SECRET_MODE)?;
        Ok(())
    }

    /// Loads what [`PeerIdentity::store`] wrote.
    pub fn load(state: &StateDir) -> Result<Self, Error> {
        let public = decode_key("appliance-noise.pub", &state.read_string(&state.appliance_noise())?)?;
        let psk = state.read_key32(&state.bridge_psk())?;
        Ok(PeerIdentity { public, psk })
    }
}

/// The node's tunnel to the appliance, or why there is none.
pub struct NodeBridge {
    inner: Mutex<BridgeState>,
    /// Cloud-side interfaces joined to the segment besides guests' TAPs
    /// (`isthmus-node serve --bridge-port`), added whenever the tunnel starts.
    segment_ports: Mutex<Vec<String>>,
    /// Further LCG members (a standby appliance), one responder tunnel each,
    /// opened whenever the bridge starts (`crate::bridge_members`).
    members: Mutex<Vec<MemberTunnel>>,
}

enum BridgeState {
    Down(String),
    Up(netbridge::BridgeHandle),
}

impl std::fmt::Debug for NodeBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBridge").field("running", &self.is_running()).finish()
    }
}

impl NodeBridge {
    /// A bridge that does not run (yet), with the reason.
    pub fn down(reason: impl Into<String>) -> Self {
        NodeBridge {
            inner: Mutex::new(BridgeState::Down(reason.into())),
            segment_ports: Mutex::new(Vec::new()),
            members: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the further LCG members' tunnels: a member whose tunnel is
    /// unchanged keeps it (and its session), removed ones close, new ones
    /// open. Takes effect now if the bridge runs, else when it starts.
    pub fn set_members(&self, members: Vec<MemberTunnel>) -> Result<(), Error> {
        let st = self.lock();
        let mut old = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let BridgeState::Up(h) = &*st {
            for m in old.iter().filter(|m| !members.contains(m)) {
                h.remove_peer(m.slot)?;
            }
            for m in members.iter().filter(|m| !old.contains(m)) {
                add_member(h, m)?;
            }
        }
        *old = members;
        Ok(())
    }

    /// Joins existing cloud-side interfaces (e.g. a NIC on a subnet of hosts
    /// that never lived in the data center but share the segment) to the
    /// bridge like guests' TAPs: unfiltered, both ways. Takes effect now if
    /// the tunnel runs, else when it starts (at enrolment).
    pub fn set_segment_ports(&self, ifnames: Vec<String>) -> Result<(), Error> {
        let st = self.lock();
        if let BridgeState::Up(h) = &*st {
            for name in &ifnames {
                add_port(h, name)?;
            }
        }
        *self.segment_ports.lock().unwrap_or_else(|p| p.into_inner()) = ifnames;
        Ok(())
    }

    /// Starts the tunnel as responder on `listen` with no ports; guests add
    /// theirs. On failure the bridge stays down and remembers why.
    pub fn start(&self, local: StaticKeypair, peer: &PeerIdentity, listen: SocketAddr) -> Result<(), Error> {
        let mut st = self.lock();
        if let BridgeState::Up(_) = &*st {
            return Ok(());
        }
        match spawn(local, peer, listen) {
            Ok(h) => {
                for name in self.segment_ports.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    if let Err(e) = add_port(&h, name) {
                        tracing::error!(ifname = %name, error = %e, "cannot join the interface to the bridge; check --bridge-port");
                    }
                }
                for m in self.members.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    if let Err(e) = add_member(&h, m) {
                        tracing::error!(listen = %m.listen, error = %e, "cannot open the tunnel of a further LCG member");
                    }
                }
                *st = BridgeState::Up(h);
                Ok(())
            }
            Err(e) => {
                *st = BridgeState::Down(e.to_string());
                Err(e)
            }
        }
    }

    /// True while the tunnel runs.
    pub fn is_running(&self) -> bool {
        matches!(&*self.lock(), BridgeState::Up(_))
    }

    /// `Ok` while the tunnel runs, else the reason it does not.
    pub fn ensure_running(&self) -> Result<(), Error> {
        match &*self.lock() {
            BridgeState::Up(_) => Ok(()),
            BridgeState::Down(why) => Err(Error::NotRunning(why.clone())),
        }
    }

    /// Joins a guest's TAP device to the tunnel.
    pub fn add_guest_port(&self, ifname: &str) -> Result<(), Error> {
        match &*self.lock() {
            BridgeState::Up(h) => add_port(h, ifname),
            BridgeState::Down(why) => Err(Error::NotRunning(why.clone())),
        }
    }

    /// Detaches a guest's TAP device; a port that is not there is fine.
    pub fn remove_guest_port(&self, ifname: &str) -> Result<(), Error> {
        match &*self.lock() {
            BridgeState::Up(h) => remove_port(h, ifname),
            BridgeState::Down(_) => Ok(()),
        }
    }

    /// Stops the tunnel.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        if let BridgeState::Up(h) = &*st {
            h.shutdown();
        }
        *st = BridgeState::Down("shut down".into());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BridgeState> {
        // A panic while holding this lock leaves a valid state: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// ---- netbridge calls -------------------------------------------------------

fn keypair_from_private(private: [u8; 32]) -> StaticKeypair {
    StaticKeypair::from_private(private)
}

fn spawn(local: StaticKeypair, peer: &PeerIdentity, listen: SocketAddr) -> Result<netbridge::BridgeHandle, Error> {
    let cfg = netbridge::BridgeConfig {
        local,
        peer_public: peer.public,
        psk: peer.psk,
        listen,
        role: netbridge::Role::Responder,
        ports: vec![],
    };
    let ha = netbridge::Ha::Arbiter {
        arbiter: netbridge::ha::Arbiter::shared(std::time::Instant::now()),
    };
    Ok(netbridge::Bridge::spawn_ha(cfg, ha)?)
}

fn add_member(h: &netbridge::BridgeHandle, m: &MemberTunnel) -> Result<(), Error> {
    let spec = netbridge::PeerSpec {
        peer_public: m.public,
        psk: m.psk,
        listen: m.listen,
        role: netbridge::Role::Responder,
        vlans: netbridge::filter::PeerVlans::default(),
    };
    Ok(h.add_peer(m.slot, spec)?)
}

fn add_port(h: &netbridge::BridgeHandle, ifname: &str) -> Result<(), Error> {
    Ok(h.add_port(netbridge::PortSpec::Guest {
        ifname: ifname.to_string(),
    })?)
}

fn remove_port(h: &netbridge::BridgeHandle, ifname: &str) -> Result<(), Error> {
    Ok(h.remove_port(ifname)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_key_persists_and_detects_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let a = load_or_create_noise_key(&s).unwrap();
        let b = load_or_create_noise_key(&s).unwrap();
        assert_eq!(a.public, b.public);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.noise_key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        s.write_atomic(&s.noise_public(), B64.encode([9u8; 32]).as_bytes(), PUBLIC_MODE)
            .unwrap();
        assert!(matches!(load_or_create_noise_key(&s), Err(Error::KeyMismatch(_))));
    }

    #[test]
    fn decode_key_checks_length() {
        assert!(decode_key("k", &B64.encode([1u8; 32])).is_ok());
        assert!(decode_key("k", &B64.encode([1u8; 31])).is_err());
        assert!(decode_key("k", "not base64!").is_err());
    }
}
