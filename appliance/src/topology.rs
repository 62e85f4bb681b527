//! The topology store: what the appliance knows about servers, their disks
//! and NICs, the segments they sit on and the clouds, with a history of
//! observations (what changed when, seen by which import or inspection).
//!
//! Typed tables over the [`crate::store::Store`] handle. The CLI keeps them in
//! `<data dir>/topology.redb`, a file of its own, so that `isthmus import
//! --record` and `isthmus inspect --record` work while `isthmus serve` holds
//! the main store.

use std::collections::{BTreeMap, BTreeSet};

use proto::facts::GuestFacts;
use serde::{Deserialize, Serialize};

use crate::inventory::ImportedServer;
use crate::store::{Store, StoreError, Table};

/// A server and its current facts (flat `key → value`, e.g. `nic.0.mac`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopoServer {
    /// Name.
    pub name: String,
    /// Current facts.
    pub facts: BTreeMap<String, String>,
    /// Where they came from (`import:<file>`, `inspect:<image>`).
    pub sources: BTreeSet<String>,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// A disk of a server, in device order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopoDisk {
    /// Server.
    pub server: String,
    /// Controller id and model (`scsi0`, `pvscsi`).
    pub controller: String,
    /// Controller model.
    pub controller_model: String,
    /// Slot on the controller.
    pub slot: u32,
    /// `disk` or `cdrom`.
    pub kind: String,
    /// Capacity, when known.
    pub capacity_bytes: Option<u64>,
    /// Backing file.
    pub file: Option<String>,
}

/// A NIC of a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopoNic {
    /// Server.
    pub server: String,
    /// Ordinal.
    pub slot: u32,
    /// Model.
    pub model: String,
    /// MAC, when fixed.
    pub mac: Option<String>,
    /// Segment (network / port group).
    pub segment: Option<String>,
}

/// An L2 segment (a network or port group; VLAN when known).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopoSegment {
    /// Name.
    pub name: String,
    /// VLAN id, when known.
    pub vlan: Option<u16>,
    /// Servers with a NIC on it.
    pub servers: BTreeSet<String>,
}

/// A cloud the appliance moves servers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopoCloud {
    /// Name.
    pub name: String,
    /// Control API URL.
    pub url: String,
    /// Servers running there.
    pub servers: BTreeSet<String>,
}

/// One fact that changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Fact key.
    pub field: String,
    /// Value before (null: new fact).
    pub old: Option<String>,
    /// Value after (null: fact gone).
    pub new: Option<String>,
}

/// What one import or inspection saw change on a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// When (RFC 3339).
    pub at: String,
    /// Server.
    pub server: String,
    /// `import` or `inspect`.
    pub source: String,
    /// File or image.
    pub origin: String,
    /// Changes (empty: seen again, nothing changed).
    pub changes: Vec<Change>,
}

/// Servers by name.
pub const SERVERS: Table<TopoServer> = Table::new("topo_servers");
/// Disks by `<server>/<nnn>`.
pub const DISKS: Table<TopoDisk> = Table::new("topo_disks");
/// NICs by `<server>/<nnn>`.
pub const NICS: Table<TopoNic> = Table::new("topo_nics");
/// Segments by name.
pub const SEGMENTS: Table<TopoSegment> = Table::new("topo_segments");
/// Clouds by name.
pub const CLOUDS: Table<TopoCloud> = Table::new("topo_clouds");
/// Observations by `<server>/<seq, 10 digits>`.
pub const OBSERVATIONS: Table<Observation> = Table::new("topo_observations");

fn label<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Facts of an imported server, flat.
pub fn import_facts(s: &ImportedServer) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    f.insert("guest_os".into(), s.guest_os.clone().unwrap_or_default());
    f.insert("firmware".into(), label(&s.firmware));
    f.insert("cpus".into(), s.cpus.to_string());
    if let Some(m) = s.memory_mib {
        f.insert("memory_mib".into(), m.to_string());
    }
    for c in &s.disk_controllers {
        f.insert(format!("controller.{}.model", c.id), label(&c.model));
    }
    for d in &s.disks {
        let k = format!("disk.{}:{}", d.controller, d.slot);
        f.insert(format!("{k}.kind"), label(&d.kind));
        if let Some(c) = d.capacity_bytes {
            f.insert(format!("{k}.capacity_bytes"), c.to_string());
        }
        if let Some(file) = &d.file {
            f.insert(format!("{k}.file"), file.clone());
        }
    }
    for n in &s.nics {
        let k = format!("nic.{}", n.slot);
        f.insert(format!("{k}.model"), label(&n.model));
        f.insert(
            format!("{k}.mac"),
            n.mac.map(|m| m.to_string()).unwrap_or_else(|| "generated".into()),
        );
        if let Some(net) = &n.network {
            f.insert(format!("{k}.network"), net.clone());
        }
    }
    f
}

/// Facts of an inspected image, flat.
pub fn inspect_facts(g: &GuestFacts) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let mut put = |k: String, v: Option<String>| {
        if let Some(v) = v {
            f.insert(k, v);
        }
    };
    put("os".into(), g.os.clone());
    put("os_release".into(), g.os_release.clone());
    put("hostname".into(), g.hostname.clone());
    for p in &g.partitions {
        put(format!("partition.{}.filesystem", p.index), p.filesystem.clone());
        put(format!("partition.{}.uuid", p.index), p.uuid.clone());
    }
    for e in &g.fstab {
        put(
            format!("fstab.{}", e.mount_point),
            Some(format!("{} ({})", e.spec, label(&e.refers_by))),
        );
    }
    for (i, n) in g.network.iter().enumerate() {
        let k = format!("net.{i}");
        put(
            format!("{k}.binding"),
            Some(format!(
                "{} {} {}",
                n.source,
                label(&n.binding),
                n.interface.clone().unwrap_or_default()
            )),
        );
        put(format!("{k}.mac"), n.mac.map(|m| m.to_string()));
        put(format!("{k}.addresses"), Some(n.addresses.join(",")).filter(|a| !a.is_empty()));
    }
    for (i, r) in g.risks.iter().enumerate() {
        put(format!("risk.{i}"), Some(r.message.clone()));
    }
    f
}

/// The topology over a store.
pub struct Topology<'a> {
    store: &'a Store,
}

impl<'a> Topology<'a> {
    /// Uses `store`, creating the topology tables if missing.
    pub fn new(store: &'a Store) -> Result<Self, StoreError> {
        store.ensure(&SERVERS)?;
        store.ensure(&DISKS)?;
        store.ensure(&NICS)?;
        store.ensure(&SEGMENTS)?;
        store.ensure(&CLOUDS)?;
        store.ensure(&OBSERVATIONS)?;
        Ok(Topology { store })
    }

    /// Merges `facts` into a server (only the keys a source owns: those with
    /// `prefixes`, or all when empty), appends an observation, returns it.
    fn observe(
        &self,
        server: &str,
        source: &str,
        origin: &str,
        owned: &dyn Fn(&str) -> bool,
        facts: BTreeMap<String, String>,
    ) -> Result<Observation, StoreError> {
        let mut s = self.store.get(&SERVERS, server)?.unwrap_or_else(|| TopoServer {
            name: server.into(),
            ..Default::default()
        });
        let mut changes = vec![];
        for (k, v) in s.facts.iter().filter(|(k, _)| owned(k)) {
            if !facts.contains_key(k) {
                changes.push(Change {
                    field: k.clone(),
                    old: Some(v.clone()),
                    new: None,
                });
            }
        }
        for (k, v) in &facts {
            if s.facts.get(k) != Some(v) {
                changes.push(Change {
                    field: k.clone(),
                    old: s.facts.get(k).cloned(),
                    new: Some(v.clone()),
                });
            }
        }
        changes.sort_by(|a, b| a.field.cmp(&b.field));
        s.facts.retain(|k, _| !owned(k));
        s.facts.extend(facts);
        s.sources.insert(format!("{source}:{origin}"));
        let at = crate::model::now_rfc3339();
        if !changes.is_empty() {
            s.updated_at = at.clone();
        }
        self.store.put(&SERVERS, server, &s)?;
        let obs = Observation {
            at,
            server: server.into(),
            source: source.into(),
            origin: origin.into(),
            changes,
        };
        let seq = self.store.range(&OBSERVATIONS, &format!("{server}/"))?.len();
        self.store.put(&OBSERVATIONS, &format!("{server}/{seq:010}"), &obs)?;
        Ok(obs)
    }

    /// Records an imported server: its facts, disks, NICs and segments.
    pub fn record_import(&self, s: &ImportedServer, origin: &str) -> Result<Observation, StoreError> {
        let hw = |k: &str| {
            ["guest_os", "firmware", "cpus", "memory_mib", "controller.", "disk.", "nic."]
                .iter()
                .any(|p| k.starts_with(p))
        };
        let obs = self.observe(&s.name, "import", origin, &hw, import_facts(s))?;
        for (k, _) in self.store.range(&DISKS, &format!("{}/", s.name))? {
            self.store.delete(&DISKS, &k)?;
        }
        for (i, d) in s.disks.iter().enumerate() {
            let model = s.disk_controllers.iter().find(|c| c.id == d.controller).map(|c| label(&c.model));
            let disk = TopoDisk {
                server: s.name.clone(),
                controller: d.controller.clone(),
                controller_model: model.unwrap_or_default(),
                slot: d.slot,
                kind: label(&d.kind),
                capacity_bytes: d.capacity_bytes,
                file: d.file.clone(),
            };
            self.store.put(&DISKS, &format!("{}/{i:03}", s.name), &disk)?;
        }
        for (k, _) in self.store.range(&NICS, &format!("{}/", s.name))? {
            self.store.delete(&NICS, &k)?;
        }
        for (_, mut seg) in self.store.list(&SEGMENTS)? {
            if seg.servers.remove(&s.name) {
                self.store.put(&SEGMENTS, &seg.name.clone(), &seg)?;
            }
        }
        for (i, n) in s.nics.iter().enumerate() {
            let nic = TopoNic {
                server: s.name.clone(),
                slot: n.slot,
                model: label(&n.model),
                mac: n.mac.map(|m| m.to_string()),
                segment: n.network.clone(),
            };
            self.store.put(&NICS, &format!("{}/{i:03}", s.name), &nic)?;
            if let Some(net) = &n.network {
                let mut seg = self.store.get(&SEGMENTS, net)?.unwrap_or_else(|| TopoSegment {
                    name: net.clone(),
                    ..Default::default()
                });
                seg.servers.insert(s.name.clone());
                self.store.put(&SEGMENTS, net, &seg)?;
            }
        }
        Ok(obs)
    }

    /// Records what an inspection of one of `server`'s disks found.
    pub fn record_inspect(&self, server: &str, g: &GuestFacts) -> Result<Observation, StoreError> {
        let guest = |k: &str| {
            ["os", "os_release", "hostname", "partition.", "fstab.", "net.", "risk."]
                .iter()
                .any(|p| k.starts_with(p))
        };
        self.observe(server, "inspect", &g.image, &guest, inspect_facts(g))
    }

    /// Records what a live scan (`isthmus scan --record`) saw of `server`:
    /// `scan.*` facts (IP, MAC, ICMP, open ports per answer), `origin` the
    /// interface.
    pub fn record_scan(&self, server: &str, origin: &str, facts: BTreeMap<String, String>) -> Result<Observation, StoreError> {
        self.observe(server, "scan", origin, &|k: &str| k.starts_with("scan."), facts)
    }

    /// Records a cloud and the servers running there.
    pub fn record_cloud(&self, c: &TopoCloud) -> Result<(), StoreError> {
        self.store.put(&CLOUDS, &c.name, c)
    }

    /// Observations of one server, or of all, oldest first per server.
    pub fn history(&self, server: Option<&str>) -> Result<Vec<Observation>, StoreError> {
        let prefix = server.map(|s| format!("{s}/")).unwrap_or_default();
        Ok(self.store.range(&OBSERVATIONS, &prefix)?.into_iter().map(|(_, o)| o).collect())
    }

    /// Everything as one JSON document.
    pub fn to_json(&self) -> Result<serde_json::Value, StoreError> {
        let mut servers = vec![];
        for (name, s) in self.store.list(&SERVERS)? {
            let disks: Vec<TopoDisk> = self.store.range(&DISKS, &format!("{name}/"))?.into_iter().map(|(_, d)| d).collect();
            let nics: Vec<TopoNic> = self.store.range(&NICS, &format!("{name}/"))?.into_iter().map(|(_, n)| n).collect();
            servers.push(serde_json::json!({
                "name": s.name, "facts": s.facts, "sources": s.sources, "updated_at": s.updated_at,
                "disks": disks, "nics": nics,
            }));
        }
        let segments: Vec<TopoSegment> = self.store.list(&SEGMENTS)?.into_iter().map(|(_, s)| s).collect();
        let clouds: Vec<TopoCloud> = self.store.list(&CLOUDS)?.into_iter().map(|(_, c)| c).collect();
        Ok(serde_json::json!({ "servers": servers, "segments": segments, "clouds": clouds }))
    }

    /// Graphviz DOT: servers (boxes), segments (ellipses, edges labelled with
    /// the NIC's model and MAC), clouds (with the servers running there).
    pub fn to_dot(&self) -> Result<String, StoreError> {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::from("graph topology {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
        for (name, s) in self.store.list(&SERVERS)? {
            let host = s.facts.get("hostname").map(|h| format!("\\nhost {h}")).unwrap_or_default();
            let cpu = s.facts.get("cpus").map(|c| format!("\\n{c} vCPU")).unwrap_or_default();
            out += &format!(
                "  {} [shape=box, label={}];\n",
                q(&format!("server:{name}")),
                q(&format!("{name}{host}{cpu}"))
            );
        }
        for (name, seg) in self.store.list(&SEGMENTS)? {
            let vlan = seg.vlan.map(|v| format!("\\nVLAN {v}")).unwrap_or_default();
            out += &format!(
                "  {} [shape=ellipse, label={}];\n",
                q(&format!("segment:{name}")),
                q(&format!("{name}{vlan}"))
            );
        }
        for (_, n) in self.store.list(&NICS)? {
            if let Some(seg) = &n.segment {
                let mac = n.mac.clone().unwrap_or_else(|| "generated".into());
                out += &format!(
                    "  {} -- {} [label={}];\n",
                    q(&format!("server:{}", n.server)),
                    q(&format!("segment:{seg}")),
                    q(&format!("{} {mac}", n.model))
                );
            }
        }
        for (name, c) in self.store.list(&CLOUDS)? {
            out += &format!("  {} [shape=doubleoctagon, label={}];\n", q(&format!("cloud:{name}")), q(&name));
            for s in &c.servers {
                out += &format!(
                    "  {} -- {} [style=dashed];\n",
                    q(&format!("server:{s}")),
                    q(&format!("cloud:{name}"))
                );
            }
        }
        out += "}\n";
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_inspect_history_and_export() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("topology.redb")).unwrap();
        let t = Topology::new(&store).unwrap();
        let vmx = "displayName = \"web1\"\nnumvcpus = \"2\"\nmemsize = \"1024\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
                   scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"web1.vmdk\"\nethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\n\
                   ethernet0.addressType = \"static\"\nethernet0.address = \"00:50:56:00:00:01\"\nethernet0.networkName = \"LAN\"\n";
        let imp = crate::inventory::import_bytes(crate::inventory::Format::Vmx, vmx.as_bytes(), std::path::Path::new("web1.vmx")).unwrap();
        let o1 = t.record_import(&imp.servers[0], "web1.vmx").unwrap();
        assert!(o1
            .changes
            .iter()
            .any(|c| c.field == "cpus" && c.new.as_deref() == Some("2") && c.old.is_none()));
        // Same file again: seen, nothing changed.
        assert!(t.record_import(&imp.servers[0], "web1.vmx").unwrap().changes.is_empty());
        // Four vCPUs now: one change, old and new.
        let imp4 = crate::inventory::import_bytes(
            crate::inventory::Format::Vmx,
            vmx.replace("numvcpus = \"2\"", "numvcpus = \"4\"").as_bytes(),
            std::path::Path::new("web1.vmx"),
        )
        .unwrap();
        let o3 = t.record_import(&imp4.servers[0], "web1.vmx").unwrap();
        assert_eq!(
            o3.changes,
            vec![Change {
                field: "cpus".into(),
                old: Some("2".into()),
                new: Some("4".into())
            }]
        );
        let g = GuestFacts {
            image: "web1.qcow2".into(),
            hostname: Some("web1".into()),
            ..Default::default()
        };
        let o4 = t.record_inspect("web1", &g).unwrap();
        assert_eq!(o4.changes.len(), 1);
        // Inspection facts do not erase import facts.
        let s = store.get(&SERVERS, "web1").unwrap().unwrap();
        assert_eq!(s.facts.get("cpus").map(String::as_str), Some("4"));
        assert_eq!(s.facts.get("hostname").map(String::as_str), Some("web1"));
        t.record_cloud(&TopoCloud {
            name: "cloud1".into(),
            url: "https://198.51.100.2:9443".into(),
            servers: ["web1".to_string()].into(),
        })
        .unwrap();
        drop(store);
        // History survives a reopen.
        let store = Store::open(&dir.path().join("topology.redb")).unwrap();
        let t = Topology::new(&store).unwrap();
        let h = t.history(Some("web1")).unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h[3].source, "inspect");
        let j = t.to_json().unwrap();
        assert_eq!(j["servers"][0]["nics"][0]["mac"], "00:50:56:00:00:01");
        assert_eq!(j["servers"][0]["disks"][0]["controller_model"], "pvscsi");
        assert_eq!(j["segments"][0]["name"], "LAN");
        let dot = t.to_dot().unwrap();
        assert!(
            dot.contains("\"server:web1\" -- \"segment:LAN\" [label=\"vmxnet3 00:50:56:00:00:01\"]"),
            "{dot}"
        );
        assert!(dot.contains("\"server:web1\" -- \"cloud:cloud1\""), "{dot}");
    }
}

/// Errors of the topology CLI helpers.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory could not be made.
    #[error("cannot create the data directory {path}: {source}; pass --data-dir or set ISTHMUS_DATA_DIR")]
    DataDir {
        /// Directory.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Unknown export format.
    #[error("unknown format {0:?}; use json, dot or svg")]
    Format(String),
    /// Graphviz failed or is missing.
    #[error("rendering SVG needs Graphviz `dot` (tests/setup/deps.sh installs it): {0}")]
    Graphviz(String),
}

/// Opens `<data_dir>/topology.redb`, creating the directory.
pub fn open_store(data_dir: &std::path::Path) -> Result<Store, TopologyError> {
    std::fs::create_dir_all(data_dir).map_err(|source| TopologyError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    Ok(Store::open(&data_dir.join("topology.redb"))?)
}

/// Renders the topology as `json`, `dot` or `svg` (through Graphviz `dot -Tsvg`).
pub fn render(t: &Topology<'_>, format: &str) -> Result<String, TopologyError> {
    match format {
        "json" => Ok(serde_json::to_string_pretty(&t.to_json()?).unwrap_or_default()),
        "dot" => Ok(t.to_dot()?),
        "svg" => {
            use std::io::Write;
            let dot = t.to_dot()?;
            let mut child = std::process::Command::new("dot")
                .arg("-Tsvg")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| TopologyError::Graphviz(e.to_string()))?;
            if let Some(mut i) = child.stdin.take() {
                i.write_all(dot.as_bytes()).map_err(|e| TopologyError::Graphviz(e.to_string()))?;
            }
            let out = child.wait_with_output().map_err(|e| TopologyError::Graphviz(e.to_string()))?;
            if !out.status.success() {
                return Err(TopologyError::Graphviz(String::from_utf8_lossy(&out.stderr).into_owned()));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        f => Err(TopologyError::Format(f.to_string())),
    }
}

/// History as a table, one line per changed fact.
pub fn history_table(h: &[Observation]) -> String {
    let mut s = String::new();
    for o in h {
        s += &format!("{}  {:<16} {}:{}\n", o.at, o.server, o.source, o.origin);
        if o.changes.is_empty() {
            s += "    (seen again, no change)\n";
        }
        for c in &o.changes {
            s += &format!(
                "    {:<32} {} -> {}\n",
                c.field,
                c.old.as_deref().unwrap_or("(none)"),
                c.new.as_deref().unwrap_or("(gone)")
            );
        }
    }
    s
}
