//! The LCG: carries moved servers' MACs between the LAN and cloud nodes
//! over ONE encrypted bridge on the LAN port, with one tunnel (peer) per
//! enrolled cloud node. Each carried MAC goes via exactly one peer, the
//! cloud node its server runs behind, so unicast for it never reaches the
//! other clouds; broadcast and multicast reach every peer.
//!
//! The first cloud opened is the bridge's peer 0; the others are added with
//! [`netbridge::BridgeHandle::add_peer`]. Tunnel `n` binds the configured
//! bridge port + `n`.
//!
//! **HA** (`isthmus lcg ha on`, persisted): the bridge runs as an HA member
//! (`netbridge::Ha::Member`): it asks each cloud node for that cloud's lease
//! and carries frames through a tunnel only while it holds its lease, so a
//! second LCG on the same LAN can stand by and take every cloud over within
//! about two seconds when this one dies. Switching HA restarts the bridge.
//!
//! A tunnel is opened from an enrolled cloud's record or, on a standby
//! appliance, from what it pulled from its primary ([`Tunnel`],
//! `crate::lcg_standby`): the node's port for this LCG and its own PSK.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use netbridge::filter::{PeerId, PeerVlans};
use netbridge::keys::StaticKeypair;
use netbridge::{Bridge, BridgeConfig, BridgeHandle, Ha, PeerSpec, PeerStatus, PortSpec, Role};
use proto::MacAddr;

use crate::model::CloudRecord;
use crate::store::{Store, StoreError, CLOUDS, META, SERVERS};

/// Errors of the LCG.
#[derive(Debug, thiserror::Error)]
pub enum LcgError {
    /// The bridge or the tunnel to a cloud could not start.
    #[error(
        "cannot open the tunnel to {cloud} (LAN port {lan}, UDP {listen}): {source}; check that the LAN interface exists and the UDP port is free"
    )]
    Bridge {
        /// Cloud.
        cloud: String,
        /// LAN interface.
        lan: String,
        /// UDP address the tunnel binds.
        listen: SocketAddr,
        /// Cause.
        #[source]
        source: Box<netbridge::Error>,
    },
    /// The bridge refused to carry (or remove) something.
    #[error("the LCG bridge refused to {what} for cloud {cloud}: {source}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// Cloud.
        cloud: String,
        /// Cause.
        #[source]
        source: Box<netbridge::Error>,
    },
    /// No tunnel to that cloud.
    #[error("no tunnel to cloud {0}: is it enrolled and is `isthmus serve` running with --lan?")]
    NoTunnel(String),
    /// Persisting the carried MACs failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running bridge and which peer is which cloud.
struct Running {
    handle: BridgeHandle,
    /// Started as an HA member.
    ha: bool,
    peers: HashMap<String, PeerId>,
    /// What each open tunnel was opened with (reopened on an HA switch).
    tunnels: HashMap<String, Tunnel>,
    next: PeerId,
}

/// What the LCG needs to open the tunnel to one cloud node: an enrolled
/// cloud's record, or what a standby LCG learnt from its primary
/// (`crate::lcg_standby`: the node's member port and this LCG's own PSK).
#[derive(Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// Cloud name.
    pub cloud: String,
    /// The node's bridge UDP endpoint for this LCG.
    pub endpoint: SocketAddr,
    /// The node's static Noise public key.
    pub noise_public: [u8; 32],
    /// The tunnel's PSK.
    pub psk: [u8; 32],
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No PSK.
        f.debug_struct("Tunnel")
            .field("cloud", &self.cloud)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl From<&CloudRecord> for Tunnel {
    fn from(c: &CloudRecord) -> Tunnel {
        Tunnel {
            cloud: c.name.clone(),
            endpoint: c.bridge_endpoint,
            noise_public: c.noise_public,
            psk: c.psk,
        }
    }
}

/// The gateway.
pub struct Lcg {
    lan: String,
    listen: SocketAddr,
    key: StaticKeypair,
    store: Arc<Store>,
    bridge: Mutex<Option<Running>>,
}

/// META key: run the LCG as an HA member (bool).
const HA_KEY: &str = "lcg.ha";

fn carried_key(cloud: &str) -> String {
    format!("lcg.carried.{cloud}")
}

/// META key: addresses to announce for a MAC that no inventory server of
/// this appliance has (a standby LCG learns them from its primary).
pub(crate) fn announce_key(mac: &MacAddr) -> String {
    format!("lcg.announce.{mac}")
}

impl Lcg {
    /// A gateway on LAN interface `lan`, binding tunnels from `listen`
    /// (port + n for the n-th cloud).
    pub fn new(lan: String, listen: SocketAddr, key: StaticKeypair, store: Arc<Store>) -> Lcg {
        Lcg {
            lan,
            listen,
            key,
            store,
            bridge: Mutex::new(None),
        }
    }

    /// The LAN interface.
    pub fn lan(&self) -> &str {
        &self.lan
    }

    /// Our static public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public
    }

    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        // Every update of `Running` is one assignment: a panic elsewhere
        // while holding the lock leaves it consistent.
        self.bridge.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// MACs carried to `cloud`, as persisted.
    pub fn carried(&self, cloud: &str) -> Result<BTreeSet<MacAddr>, LcgError> {
        let v = self.store.get(&META, &carried_key(cloud))?;
        Ok(v.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default())
    }

    fn put_carried(&self, cloud: &str, set: &BTreeSet<MacAddr>) -> Result<(), LcgError> {
        let v = serde_json::to_value(set).expect("MACs serialize");
        Ok(self.store.put(&META, &carried_key(cloud), &v)?)
    }

    /// Is the LCG configured as an HA member (persisted; off by default)?
    pub fn ha(&self) -> Result<bool, LcgError> {
        Ok(self.store.get(&META, HA_KEY)?.and_then(|v| v.as_bool()).unwrap_or(false))
    }

    /// Turns HA membership on or off (persisted). A running bridge in the
    /// other mode is stopped and every enrolled cloud's tunnel reopened:
    /// traffic pauses for the restart (with HA on, until this LCG is
    /// granted each cloud's lease: about 1.5 s after the node's tunnel is
    /// up, or never while another LCG holds it).
    pub fn set_ha(&self, on: bool) -> Result<(), LcgError> {
        self.store.put(&META, HA_KEY, &serde_json::Value::Bool(on))?;
        let old = {
            let mut guard = self.lock();
            match guard.as_ref() {
                Some(r) if r.ha != on => guard.take(),
                _ => None,
            }
        };
        let Some(old) = old else { return Ok(()) };
        old.handle.shutdown();
        tracing::info!(ha = on, "LCG bridge restarted to switch HA");
        let mut first_error = None;
        let mut reopen: Vec<Tunnel> = old.tunnels.into_values().collect();
        for (_, cloud) in self.store.list(&CLOUDS)? {
            if !reopen.iter().any(|t| t.cloud == cloud.name) {
                reopen.push(Tunnel::from(&cloud));
            }
        }
        for t in reopen {
            if let Err(e) = self.open_tunnel(&t) {
                tracing::error!("{e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Opens the tunnel to a cloud (starting the bridge with the first one)
    /// and re-applies the MACs it carried before.
    pub fn open(&self, cloud: &CloudRecord) -> Result<(), LcgError> {
        self.open_tunnel(&Tunnel::from(cloud))
    }

    /// Is a tunnel open to `cloud`, and with what?
    pub fn tunnel(&self, cloud: &str) -> Option<Tunnel> {
        self.lock().as_ref().and_then(|r| r.tunnels.get(cloud).cloned())
    }

    /// Opens a tunnel (see [`Lcg::open`]); a tunnel to that cloud that is
    /// open already stays as it is.
    pub fn open_tunnel(&self, cloud: &Tunnel) -> Result<(), LcgError> {
        let ha = self.ha()?;
        let mut guard = self.lock();
        if guard.as_ref().is_some_and(|r| r.peers.contains_key(&cloud.cloud)) {
            return Ok(());
        }
        let id = guard.as_ref().map_or(0, |r| r.next);
        let mut listen = self.listen;
        listen.set_port(self.listen.port().saturating_add(id as u16));
        let failed = |source| LcgError::Bridge {
            cloud: cloud.cloud.clone(),
            lan: self.lan.clone(),
            listen,
            source: Box::new(source),
        };
        let role = Role::Initiator { peer: cloud.endpoint };
        match guard.as_mut() {
            Some(running) => {
                let spec = PeerSpec {
                    peer_public: cloud.noise_public,
                    psk: cloud.psk,
                    listen,
                    role,
                    vlans: PeerVlans::default(),
                };
                running.handle.add_peer(id, spec).map_err(failed)?;
                running.peers.insert(cloud.cloud.clone(), id);
                running.tunnels.insert(cloud.cloud.clone(), cloud.clone());
                running.next = id + 1;
            }
            None => {
                let cfg = BridgeConfig {
                    local: self.key.clone(),
                    peer_public: cloud.noise_public,
                    psk: cloud.psk,
                    listen,
                    role,
                    ports: vec![PortSpec::Lan { ifname: self.lan.clone() }],
                };
                let mode = if ha { Ha::Member } else { Ha::Off };
                let handle = Bridge::spawn_ha(cfg, mode).map_err(failed)?;
                *guard = Some(Running {
                    handle,
                    ha,
                    peers: HashMap::from([(cloud.cloud.clone(), id)]),
                    tunnels: HashMap::from([(cloud.cloud.clone(), cloud.clone())]),
                    next: id + 1,
                });
            }
        }
        let running = guard.as_ref().expect("bridge just started");
        for mac in self.carried(&cloud.cloud)? {
            running
                .handle
                .carry_mac_via(mac, id, &self.ips_of(&mac)?)
                .map_err(|source| refused("carry a MAC", &cloud.cloud, source))?;
        }
        tracing::info!(cloud = %cloud.cloud, peer = id, %listen, endpoint = %cloud.endpoint, "tunnel to cloud opened");
        Ok(())
    }

    /// Closes the tunnel to a cloud that is being removed: the bridge's peer
    /// goes, the MACs carried via it stop crossing and are forgotten.
    pub fn close(&self, cloud: &str) -> Result<(), LcgError> {
        self.store.delete(&META, &carried_key(cloud))?;
        let mut guard = self.lock();
        let Some(running) = guard.as_mut() else {
            return Ok(());
        };
        let Some(id) = running.peers.get(cloud).copied() else {
            return Ok(());
        };
        running
            .handle
            .remove_peer(id)
            .map_err(|source| refused("remove the tunnel", cloud, source))?;
        running.peers.remove(cloud);
        running.tunnels.remove(cloud);
        tracing::info!(cloud, peer = id, "tunnel to cloud closed");
        Ok(())
    }

    /// The addresses to announce (gratuitous ARP) when `mac` starts to be
    /// carried, so the LAN's switches and neighbours relearn at once: the
    /// client-facing IP of the inventory's server whose FIRST NIC has this
    /// MAC. (The inventory does not say which NIC holds that IP on servers
    /// with several; announcing it on the wrong one would misdirect it.)
    /// A MAC no inventory server has gets what `lcg.announce.MAC` holds
    /// (what a standby LCG learnt from its primary's inventory).
    pub(crate) fn ips_of(&self, mac: &MacAddr) -> Result<Vec<IpAddr>, LcgError> {
        let ips: Vec<IpAddr> = self
            .store
            .list(&SERVERS)?
            .into_iter()
            .filter(|(_, s)| s.profile.nics.first().is_some_and(|n| n.mac == *mac))
            .filter_map(|(_, s)| s.ip.map(IpAddr::V4))
            .collect();
        if !ips.is_empty() {
            return Ok(ips);
        }
        let stored = self.store.get(&META, &announce_key(mac))?;
        Ok(stored.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default())
    }

    fn peer(&self, cloud: &str) -> Result<(BridgeHandle, PeerId), LcgError> {
        let guard = self.lock();
        let running = guard.as_ref().ok_or_else(|| LcgError::NoTunnel(cloud.into()))?;
        let id = running.peers.get(cloud).ok_or_else(|| LcgError::NoTunnel(cloud.into()))?;
        Ok((running.handle.clone(), *id))
    }

    /// Carries `macs` via the tunnel to `cloud` from now on (persisted
    /// first); a MAC carried via another cloud before moves over (a move
    /// between clouds), so each MAC is carried via one cloud only. The
    /// server's address is announced on the LAN at once (see `ips_of`).
    pub fn carry(&self, cloud: &str, macs: &[MacAddr]) -> Result<(), LcgError> {
        let (handle, id) = self.peer(cloud)?;
        for (other, _) in self.store.list(&CLOUDS)? {
            if other == cloud {
                continue;
            }
            let mut set = self.carried(&other)?;
            let before = set.len();
            set.retain(|m| !macs.contains(m));
            if set.len() != before {
                self.put_carried(&other, &set)?;
            }
        }
        let mut set = self.carried(cloud)?;
        set.extend(macs.iter().copied());
        self.put_carried(cloud, &set)?;
        for m in macs {
            handle
                .carry_mac_via(*m, id, &self.ips_of(m)?)
                .map_err(|source| refused("carry a MAC", cloud, source))?;
        }
        Ok(())
    }

    /// Stops carrying `macs` via `cloud` (persisted first; rollback). A MAC
    /// carried via another cloud by now is left alone.
    pub fn release(&self, cloud: &str, macs: &[MacAddr]) -> Result<(), LcgError> {
        let mut set = self.carried(cloud)?;
        let ours: Vec<MacAddr> = macs.iter().copied().filter(|m| set.contains(m)).collect();
        for m in &ours {
            set.remove(m);
        }
        self.put_carried(cloud, &set)?;
        if let Ok((handle, _)) = self.peer(cloud) {
            for m in ours {
                handle.drop_mac(m);
            }
        }
        Ok(())
    }

    /// Counters of the tunnel to `cloud`.
    pub fn stats(&self, cloud: &str) -> Option<PeerStatus> {
        let (handle, id) = self.peer(cloud).ok()?;
        handle.stats().peers.into_iter().find(|p| p.id == id)
    }

    /// Counters of the whole bridge (LAN safety alarms, totals, each peer),
    /// with the cloud name of each peer; `None` before the first cloud.
    pub fn bridge_stats(&self) -> Option<(netbridge::Stats, HashMap<PeerId, String>)> {
        let guard = self.lock();
        let running = guard.as_ref()?;
        let names = running.peers.iter().map(|(n, id)| (*id, n.clone())).collect();
        Some((running.handle.stats(), names))
    }
}

fn refused(what: &'static str, cloud: &str, source: netbridge::Error) -> LcgError {
    LcgError::Refused {
        what,
        cloud: cloud.into(),
        source: Box::new(source),
    }
}
