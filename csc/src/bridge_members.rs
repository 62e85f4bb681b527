//! The LCG members this node accepts besides the appliance that enrolled it
//! (issue 4 §6: a second appliance as the standby LCG of an HA pair).
//!
//! The primary appliance sends the whole list over mutual TLS
//! (`POST /v1/bridge/lcgs`, [`proto::lcg_members`]); the node keeps it in
//! `lcg-members.json` (0600: it holds each member's PSK) so a restart keeps
//! it, and runs one responder tunnel per member on its own UDP port (the
//! bridge port + the member's slot). Each tunnel has its own handshake and
//! session; the bridge's lease arbiter knows the members by their Noise keys,
//! so only the lease holder's tunnel carries frames.

use std::net::SocketAddr;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use proto::lcg_members::{LcgMemberPort, LcgMemberPorts, SetLcgMembers, MAX_MEMBERS};
use serde::{Deserialize, Serialize};

use crate::bridge::{decode_key, NodeBridge, PeerIdentity};
use crate::enroll::validate_name;
use crate::state_dir::{self, StateDir, SECRET_MODE};

/// Errors of the member list.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The list sent is not acceptable.
    #[error("LCG member list refused: {0}")]
    Invalid(String),
    /// The stored list could not be read or written.
    #[error(transparent)]
    State(#[from] state_dir::Error),
    /// The stored list is damaged.
    #[error("{0} is damaged ({1}); the primary appliance sends it again within a few seconds of its standby's next sync")]
    Damaged(PathBuf, String),
    /// The bridge refused a member's tunnel.
    #[error(transparent)]
    Bridge(#[from] crate::bridge::Error),
}

/// One member as the node keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    name: String,
    noise_public: String,
    psk: String,
    /// Its tunnel is bridge peer `slot` on UDP port bridge port + `slot`.
    slot: u16,
}

/// A member's tunnel, ready for the bridge.
#[derive(Clone, PartialEq, Eq)]
pub struct MemberTunnel {
    /// Bridge peer number (1.., the enrolling appliance is 0).
    pub slot: u32,
    /// The member's Noise public key.
    pub public: [u8; 32],
    /// The tunnel's PSK.
    pub psk: [u8; 32],
    /// UDP address its tunnel binds.
    pub listen: SocketAddr,
}

impl std::fmt::Debug for MemberTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTunnel")
            .field("slot", &self.slot)
            .field("public", &B64.encode(self.public))
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

fn path(state: &StateDir) -> PathBuf {
    state.root().join("lcg-members.json")
}

fn load_stored(state: &StateDir) -> Result<Vec<Stored>, Error> {
    let p = path(state);
    match state.read_optional(&p)? {
        None => Ok(vec![]),
        Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Damaged(p, e.to_string())),
    }
}

fn tunnels(stored: &[Stored], bridge_listen: SocketAddr) -> Result<Vec<MemberTunnel>, Error> {
    stored
        .iter()
        .map(|s| {
            let mut listen = bridge_listen;
            listen.set_port(bridge_listen.port().saturating_add(s.slot));
            Ok(MemberTunnel {
                slot: u32::from(s.slot),
                public: decode_key("member noise_public", &s.noise_public)?,
                psk: decode_key("member psk", &s.psk)?,
                listen,
            })
        })
        .collect()
}

fn ports(stored: &[Stored], bridge_listen: SocketAddr) -> LcgMemberPorts {
    LcgMemberPorts {
        members: stored
            .iter()
            .map(|s| LcgMemberPort {
                name: s.name.clone(),
                noise_public: s.noise_public.clone(),
                bridge_port: bridge_listen.port().saturating_add(s.slot),
            })
            .collect(),
    }
}

/// Checks a new list against the old one and gives each member its slot: a
/// member already known (same key) keeps its slot, so its tunnel (and
/// session) stays; a new one takes the lowest free slot.
fn assign(old: &[Stored], req: &SetLcgMembers, appliance: &PeerIdentity) -> Result<Vec<Stored>, Error> {
    if req.members.len() > MAX_MEMBERS {
        return Err(Error::Invalid(format!("{} members sent, at most {MAX_MEMBERS}", req.members.len())));
    }
    let mut out: Vec<Stored> = Vec::new();
    for m in &req.members {
        validate_name(&m.name).map_err(|e| Error::Invalid(e.to_string()))?;
        let key = decode_key("noise_public", &m.noise_public).map_err(|e| Error::Invalid(e.to_string()))?;
        decode_key("psk", &m.psk).map_err(|e| Error::Invalid(e.to_string()))?;
        if key == appliance.public {
            return Err(Error::Invalid(format!("member {} has the enrolling appliance's own key", m.name)));
        }
        if out.iter().any(|o| o.noise_public == m.noise_public || o.name == m.name) {
            return Err(Error::Invalid(format!("member {} is listed twice", m.name)));
        }
        let slot = old.iter().find(|o| o.noise_public == m.noise_public).map(|o| o.slot);
        out.push(Stored {
            name: m.name.clone(),
            noise_public: m.noise_public.clone(),
            psk: m.psk.clone(),
            slot: slot.unwrap_or(0),
        });
    }
    for i in 0..out.len() {
        if out[i].slot == 0 {
            let free = (1..=MAX_MEMBERS as u16)
                .find(|s| !out.iter().any(|o| o.slot == *s))
                .expect("at most MAX_MEMBERS members, as many slots");
            out[i].slot = free;
        }
    }
    Ok(out)
}

/// Checks a member list as `POST /v1/bridge/lcgs` would, for a node
/// enrolled by the appliance with Noise key `appliance_public`.
pub fn validate(req: &SetLcgMembers, appliance_public: [u8; 32]) -> Result<(), Error> {
    let appliance = PeerIdentity {
        public: appliance_public,
        psk: [0; 32],
    };
    assign(&[], req, &appliance).map(drop)
}

/// Restores the stored members into the bridge (node start): their tunnels
/// open when the bridge starts.
pub fn restore(state: &StateDir, bridge: &NodeBridge, bridge_listen: SocketAddr) -> Result<(), Error> {
    let stored = load_stored(state)?;
    bridge.set_members(tunnels(&stored, bridge_listen)?)?;
    Ok(())
}

/// `POST /v1/bridge/lcgs`: replaces the member list (persisted first), opens
/// the new members' tunnels and closes the removed ones' at once.
pub fn set(state: &StateDir, bridge: &NodeBridge, bridge_listen: SocketAddr, req: &SetLcgMembers) -> Result<LcgMemberPorts, Error> {
    let appliance = PeerIdentity::load(state).map_err(Error::Bridge)?;
    let stored = assign(&load_stored(state)?, req, &appliance)?;
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| Error::Damaged(path(state), e.to_string()))?;
    state.write_atomic(&path(state), &json, SECRET_MODE)?;
    bridge.set_members(tunnels(&stored, bridge_listen)?)?;
    let names: Vec<&str> = stored.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(members = ?names, "LCG members set");
    Ok(ports(&stored, bridge_listen))
}

/// `GET /v1/bridge/lcgs`: the members and their ports (no PSK).
pub fn get(state: &StateDir, bridge_listen: SocketAddr) -> Result<LcgMemberPorts, Error> {
    Ok(ports(&load_stored(state)?, bridge_listen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::lcg_members::LcgMember;

    fn member(name: &str, key: u8) -> LcgMember {
        LcgMember {
            name: name.into(),
            noise_public: B64.encode([key; 32]),
            psk: B64.encode([key ^ 0xff; 32]),
        }
    }

    fn appliance() -> PeerIdentity {
        PeerIdentity {
            public: [1; 32],
            psk: [2; 32],
        }
    }

    #[test]
    fn slots_stay_with_their_member_and_free_ones_are_reused() {
        let req = |m: Vec<LcgMember>| SetLcgMembers { members: m };
        let a = assign(&[], &req(vec![member("a", 10), member("b", 11)]), &appliance()).unwrap();
        assert_eq!(a.iter().map(|s| s.slot).collect::<Vec<_>>(), [1, 2]);
        // a leaves, c comes: b keeps 2, c takes 1.
        let b = assign(&a, &req(vec![member("b", 11), member("c", 12)]), &appliance()).unwrap();
        assert_eq!(
            b.iter().map(|s| (s.name.as_str(), s.slot)).collect::<Vec<_>>(),
            [("b", 2), ("c", 1)]
        );
        let listen: SocketAddr = "192.0.2.1:51821".parse().unwrap();
        let p = ports(&b, listen);
        assert_eq!(p.members[0].bridge_port, 51823);
        let t = tunnels(&b, listen).unwrap();
        assert_eq!((t[1].slot, t[1].listen.port(), t[1].public), (1, 51822, [12; 32]));
    }

    #[test]
    fn bad_lists_are_refused() {
        let req = |m: Vec<LcgMember>| SetLcgMembers { members: m };
        let bad = [
            req(vec![member("a", 1)]),                   // the appliance's own key
            req(vec![member("a", 10), member("a", 11)]), // name twice
            req(vec![member("a", 10), member("b", 10)]), // key twice
            req(vec![member("../x", 10)]),
            req((0..5).map(|i| member(&format!("m{i}"), 20 + i)).collect()),
            req(vec![LcgMember {
                psk: "short".into(),
                ..member("a", 10)
            }]),
        ];
        for r in bad {
            assert!(matches!(assign(&[], &r, &appliance()), Err(Error::Invalid(_))), "{r:?}");
        }
    }

    #[test]
    fn the_list_persists_private() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        appliance().store(&s).unwrap();
        let listen: SocketAddr = "127.0.0.1:51821".parse().unwrap();
        let bridge = NodeBridge::down("test");
        let r = set(
            &s,
            &bridge,
            listen,
            &SetLcgMembers {
                members: vec![member("b", 11)],
            },
        )
        .unwrap();
        assert_eq!(r.members[0].bridge_port, 51822);
        assert_eq!(get(&s, listen).unwrap(), r);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&s)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        restore(&s, &bridge, listen).unwrap();
    }
}
