//! The LCG: carries moved servers' MACs between the LAN and cloud nodes
//! over the encrypted bridge (one tunnel per enrolled cloud node).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use netbridge::keys::StaticKeypair;
use netbridge::{Bridge, BridgeConfig, BridgeHandle, PortSpec, Role};
use proto::MacAddr;

use crate::model::CloudRecord;
use crate::store::{Store, StoreError, META};

/// Errors of the LCG.
#[derive(Debug, thiserror::Error)]
pub enum LcgError {
    /// The bridge could not start.
    #[error("cannot start the bridge to {cloud} (LAN port {lan}): {source}")]
    Bridge {
        /// Cloud.
        cloud: String,
        /// LAN interface.
        lan: String,
        /// Cause.
        #[source]
        source: netbridge::Error,
    },
    /// No tunnel to that cloud.
    #[error("no bridge to cloud {0}: is it enrolled and is `isthmus serve` running with --lan?")]
    NoTunnel(String),
    /// Persisting the carried MACs failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The gateway.
pub struct Lcg {
    lan: String,
    listen: SocketAddr,
    key: StaticKeypair,
    store: Arc<Store>,
    tunnels: Mutex<HashMap<String, BridgeHandle>>,
}

fn carried_key(cloud: &str) -> String {
    format!("lcg.carried.{cloud}")
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
            tunnels: Mutex::new(HashMap::new()),
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

    /// MACs carried to `cloud`, as persisted.
    pub fn carried(&self, cloud: &str) -> Result<BTreeSet<MacAddr>, LcgError> {
        let v = self.store.get(&META, &carried_key(cloud))?;
        Ok(v.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default())
    }

    /// Starts the tunnel to a cloud and re-applies the MACs it carried before.
    pub fn open(&self, cloud: &CloudRecord) -> Result<(), LcgError> {
        let mut tunnels = self.tunnels.lock().expect("lcg lock");
        if tunnels.contains_key(&cloud.name) {
            return Ok(());
        }
        let mut listen = self.listen;
        listen.set_port(self.listen.port().saturating_add(tunnels.len() as u16));
        let handle = Bridge::spawn(BridgeConfig {
            local: self.key.clone(),
            peer_public: cloud.noise_public,
            psk: cloud.psk,
            listen,
            role: Role::Initiator {
                peer: cloud.bridge_endpoint,
            },
            ports: vec![PortSpec::Lan { ifname: self.lan.clone() }],
        })
        .map_err(|source| LcgError::Bridge {
            cloud: cloud.name.clone(),
            lan: self.lan.clone(),
            source,
        })?;
        for mac in self.carried(&cloud.name)? {
            handle.carry_mac(mac);
        }
        tracing::info!(cloud = %cloud.name, %listen, peer = %cloud.bridge_endpoint, "bridge started");
        tunnels.insert(cloud.name.clone(), handle);
        Ok(())
    }

    fn handle(&self, cloud: &str) -> Result<BridgeHandle, LcgError> {
        self.tunnels
            .lock()
            .expect("lcg lock")
            .get(cloud)
            .cloned()
            .ok_or_else(|| LcgError::NoTunnel(cloud.into()))
    }

    /// Carries `macs` to `cloud` from now on (persisted first).
    pub fn carry(&self, cloud: &str, macs: &[MacAddr]) -> Result<(), LcgError> {
        let h = self.handle(cloud)?;
        let mut set = self.carried(cloud)?;
        set.extend(macs.iter().copied());
        self.store
            .put(&META, &carried_key(cloud), &serde_json::to_value(&set).expect("macs serialize"))?;
        for m in macs {
            h.carry_mac(*m);
        }
        Ok(())
    }

    /// Stops carrying `macs` to `cloud` (persisted first).
    pub fn release(&self, cloud: &str, macs: &[MacAddr]) -> Result<(), LcgError> {
        let mut set = self.carried(cloud)?;
        for m in macs {
            set.remove(m);
        }
        self.store
            .put(&META, &carried_key(cloud), &serde_json::to_value(&set).expect("macs serialize"))?;
        if let Ok(h) = self.handle(cloud) {
            for m in macs {
                h.drop_mac(*m);
            }
        }
        Ok(())
    }

    /// Counters of the tunnel to `cloud`.
    pub fn stats(&self, cloud: &str) -> Option<netbridge::Stats> {
        self.handle(cloud).ok().map(|h| h.stats())
    }
}
