//! The servers the appliance knows, by MAC: from the main store (servers
//! added with `isthmus inventory add`, with their IPs), or through the local
//! API when `isthmus serve` holds that store, and from the topology store
//! (`import --record`). Read-only: nothing is created here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;

use crate::store::{Store, SERVERS};
use crate::topology::NICS;

/// A server NIC the inventory knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownNic {
    /// Server name.
    pub server: String,
    /// The IPv4 address it should answer at, when the inventory says.
    pub ip: Option<Ipv4Addr>,
}

/// What the inventory contributed to a scan.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InventoryInfo {
    /// Sources that were read: `store`, `api`, `topology`.
    pub sources: Vec<String>,
    /// Distinct servers known.
    pub servers: usize,
    /// Why some source could not be read, when one could not.
    pub notes: Vec<String>,
}

/// Known NICs by MAC (lower-case colon form).
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// MAC → NIC.
    pub by_mac: BTreeMap<String, KnownNic>,
    /// What was read.
    pub info: InventoryInfo,
}

impl Known {
    /// Reads what it can from `data_dir`; never fails, says what it could not read.
    pub fn load(data_dir: &Path) -> Known {
        let mut k = Known::default();
        k.load_main(data_dir);
        k.load_topology(data_dir);
        let mut names: Vec<&str> = k.by_mac.values().map(|n| n.server.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        k.info.servers = names.len();
        k
    }

    fn add_servers(&mut self, servers: impl IntoIterator<Item = crate::model::ServerRecord>) {
        for s in servers {
            for n in &s.profile.nics {
                self.by_mac.insert(
                    n.mac.to_string(),
                    KnownNic {
                        server: s.name.clone(),
                        ip: s.ip,
                    },
                );
            }
        }
    }

    fn load_main(&mut self, data_dir: &Path) {
        let path = data_dir.join("store.redb");
        if !path.exists() {
            return;
        }
        match Store::open(&path).and_then(|s| s.list(&SERVERS)) {
            Ok(list) => {
                self.add_servers(list.into_iter().map(|(_, s)| s));
                self.info.sources.push("store".into());
            }
            Err(store_err) => match status_from_api(data_dir) {
                Ok(servers) => {
                    self.add_servers(servers);
                    self.info.sources.push("api".into());
                }
                Err(api_err) => self.info.notes.push(format!(
                    "servers of the main store are not matched: the store is busy ({store_err}) and the local API did not answer ({api_err}); start `isthmus serve` or stop it and scan again"
                )),
            },
        }
    }

    fn load_topology(&mut self, data_dir: &Path) {
        let path = data_dir.join("topology.redb");
        if !path.exists() {
            return;
        }
        let nics = Store::open(&path).and_then(|s| {
            crate::topology::Topology::new(&s)?;
            s.list(&NICS)
        });
        match nics {
            Ok(nics) => {
                for (_, n) in nics {
                    if let Some(mac) = n.mac {
                        // The main store (with IPs) wins over imports.
                        self.by_mac.entry(mac.to_lowercase()).or_insert(KnownNic {
                            server: n.server,
                            ip: None,
                        });
                    }
                }
                self.info.sources.push("topology".into());
            }
            Err(e) => self.info.notes.push(format!("topology store not read: {e}")),
        }
    }
}

/// The servers `isthmus serve` knows, through its local API socket.
fn status_from_api(data_dir: &Path) -> Result<Vec<crate::model::ServerRecord>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = crate::local_api::Client::new(data_dir);
    rt.block_on(async {
        let call = client.call::<crate::app::Status>("GET", "/v1/status", None);
        match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
            Ok(Ok(s)) => Ok(s.servers),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    })
}
