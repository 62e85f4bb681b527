//! The LCG members a cloud node accepts besides the appliance that enrolled
//! it: a standby appliance's LCG (issue 4 §6). The primary appliance sends
//! the list over mutual TLS (`POST /v1/bridge/lcgs`); the node runs one
//! responder tunnel per member, each on its own UDP port, and its lease
//! arbiter knows every member by its Noise key.

use serde::{Deserialize, Serialize};

/// Most extra LCG members a node accepts (one standby is the usual pair).
pub const MAX_MEMBERS: usize = 4;

/// One extra LCG member, as the primary appliance hands it to a node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LcgMember {
    /// The member's name (the standby appliance's, as paired).
    pub name: String,
    /// Its LCG's static Noise public key, base64.
    pub noise_public: String,
    /// The Noise `psk2` of its tunnel with this node, base64 (made by the
    /// primary for this member and this node only).
    pub psk: String,
}

impl std::fmt::Debug for LcgMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No PSK.
        f.debug_struct("LcgMember")
            .field("name", &self.name)
            .field("noise_public", &self.noise_public)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/bridge/lcgs` body: the whole list (it replaces the node's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLcgMembers {
    /// Extra members; empty removes every one.
    pub members: Vec<LcgMember>,
}

/// One member's tunnel on the node (answer of `GET`/`POST /v1/bridge/lcgs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LcgMemberPort {
    /// The member's name.
    pub name: String,
    /// Its Noise public key, base64.
    pub noise_public: String,
    /// The node's UDP port this member's tunnel answers on (same address as
    /// the node's bridge endpoint).
    pub bridge_port: u16,
}

/// The node's extra members with their ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LcgMemberPorts {
    /// One per member.
    pub members: Vec<LcgMemberPort>,
}
