//! A second appliance as the standby LCG of an HA pair (issue 4 §6), like a
//! VRRP/keepalived pair: one LCG carries the moved servers' MACs, the other
//! stands by and takes every cloud over when the first one's leases lapse.
//!
//! **Pairing** (like a node's enrolment, [`crate::cloud::enroll`]): the
//! standby runs `isthmus serve --peer-listen ADDR --standby-token-file FILE`
//! and prints its `peer fingerprint:`; on the primary the admin runs
//! `isthmus lcg standby add NAME --address IP[:PORT] --fingerprint …` with
//! the token on stdin (or `--token-file`). The primary connects pinning the
//! standby's fingerprint and proves the token; the standby records the
//! primary's peer fingerprint and address, deletes the token file, turns
//! its LCG's HA on and answers its LCG's Noise key. Both sides pin each
//! other's peer certificate from then on ([`peer`]).
//!
//! **What each side holds.** The primary makes, per standby and per cloud
//! node, a fresh PSK for the standby's own tunnel, and tells each node
//! (`POST /v1/bridge/lcgs`, mutual TLS) to accept the standby's LCG as a
//! further member: the node opens a responder tunnel for it on its own UDP
//! port, and its lease arbiter knows both LCGs by their Noise keys. The
//! standby pulls ([`sync`], every [`SYNC_INTERVAL`] over the pinned TLS)
//! what it needs to carry: per cloud the node's endpoint for it, the node's
//! Noise key, its own PSK, the carried MACs and the addresses to announce.
//! It never gets the primary's CA key, the nodes' control-API access, the
//! primary's PSKs or any disk key; what it holds lives in its store (0600 in
//! its 0700 data directory, like the primary's PSKs, README "Secrets at rest").
//!
//! **Fencing.** Both LCGs run as HA members: the primary turns its HA on at
//! pairing, the standby at pairing. Each node's arbiter grants its lease to
//! one of them at a time; the standby holds none while the primary lives and
//! takes each cloud over (announcing the carried MACs on the LAN) when the
//! primary's lease of it lapses.

pub mod cli;
pub mod peer;
pub mod peer_api;
pub mod sync;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use proto::lcg_members::{LcgMember, SetLcgMembers};
use proto::MacAddr;
use serde::{Deserialize, Serialize};

use crate::app::{App, AppError};
use crate::cloud::{CloudClient, CloudError};
use crate::lcg::{LcgError, Tunnel};
use crate::model::now_rfc3339;
use crate::pki::{Fingerprint, PkiError};
use crate::store::{StoreError, Table, CLOUDS};

/// The peer API's port when `--address` names none.
pub const DEFAULT_PEER_PORT: u16 = 9444;
/// How often a standby pulls from its primary.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Primary side: paired standbys by name.
pub const STANDBYS: Table<StandbyRecord> = Table::new("lcg_standbys");
/// Standby side: the primary (key [`PRIMARY_KEY`]).
pub const PRIMARY: Table<PrimaryRecord> = Table::new("lcg_primary");
/// Standby side: what it carries, per cloud, as last pulled.
pub const SYNCED: Table<SyncedCloud> = Table::new("lcg_synced");
/// The one key of [`PRIMARY`].
pub const PRIMARY_KEY: &str = "primary";

/// Errors of the HA pair.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// Bad request data.
    #[error("{0}")]
    Invalid(String),
    /// No such standby.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller is not the paired peer (or the token is wrong).
    #[error("{0}")]
    Unauthorized(String),
    /// Reaching the other appliance failed.
    #[error("cannot reach the peer appliance at {url}: {source}; check its address and that it runs `isthmus serve --peer-listen`")]
    Transport {
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The other appliance refused.
    #[error("the peer appliance refused {what} ({status}): {body}")]
    Refused {
        /// What we asked.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS identity.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A cloud node refused the member list.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The LCG refused.
    #[error(transparent)]
    Lcg(#[from] LcgError),
    /// The peer API could not start.
    #[error("peer API on {0}: {1}; is the address this host's and the port free?")]
    Listen(SocketAddr, #[source] std::io::Error),
    /// The pairing token file.
    #[error("standby pairing token file {0}: {1}")]
    TokenFile(std::path::PathBuf, String),
}

impl From<StandbyError> for AppError {
    fn from(e: StandbyError) -> AppError {
        match e {
            StandbyError::Invalid(m) => AppError::Invalid(m),
            StandbyError::NotFound(m) => AppError::NotFound(m),
            StandbyError::Conflict(m) => AppError::Conflict(m),
            StandbyError::Store(e) => AppError::Store(e),
            StandbyError::Cloud(e) => AppError::Cloud(e),
            StandbyError::Lcg(e) => AppError::Lcg(e),
            StandbyError::Pki(e) => AppError::Pki(e),
            e => AppError::Invalid(e.to_string()),
        }
    }
}

/// A standby's tunnel with one cloud node (primary side).
#[derive(Clone, Serialize, Deserialize)]
pub struct MemberOfCloud {
    /// The PSK of the standby's tunnel with this node.
    pub psk: [u8; 32],
    /// The node's UDP port for it; 0 until the node has accepted it.
    pub port: u16,
}

/// A paired standby (primary side).
#[derive(Clone, Serialize, Deserialize)]
pub struct StandbyRecord {
    /// Name given at pairing.
    pub name: String,
    /// Its peer API.
    pub address: SocketAddr,
    /// Its peer certificate, `sha256:…`.
    pub fingerprint: String,
    /// Its LCG's Noise public key.
    pub noise_public: [u8; 32],
    /// When paired (RFC 3339).
    pub paired_at: String,
    /// Its tunnel with each cloud node.
    pub clouds: BTreeMap<String, MemberOfCloud>,
}

/// The primary (standby side).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrimaryRecord {
    /// The name the primary gave this standby.
    pub name: String,
    /// The primary's peer API, `https://IP:PORT`.
    pub url: String,
    /// The primary's peer certificate, `sha256:…`.
    pub fingerprint: String,
    /// When paired (RFC 3339).
    pub paired_at: String,
}

/// A MAC the LCG carries, with the addresses to announce for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedMac {
    /// The MAC.
    pub mac: MacAddr,
    /// Announced (gratuitous ARP / unsolicited NA) when the LCG takes over.
    pub ips: Vec<IpAddr>,
}

/// One cloud as the standby carries it (`GET /v1/peer/state`, and the
/// standby's store).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedCloud {
    /// Cloud name.
    pub cloud: String,
    /// The node's UDP endpoint for the standby's tunnel.
    pub endpoint: SocketAddr,
    /// The node's Noise public key.
    pub noise_public: [u8; 32],
    /// The standby's PSK with this node.
    pub psk: [u8; 32],
    /// MACs carried via this cloud.
    pub carried: Vec<CarriedMac>,
}

impl std::fmt::Debug for SyncedCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedCloud")
            .field("cloud", &self.cloud)
            .field("endpoint", &self.endpoint)
            .field("carried", &self.carried)
            .finish_non_exhaustive()
    }
}

impl SyncedCloud {
    /// The tunnel the standby's LCG opens.
    pub fn tunnel(&self) -> Tunnel {
        Tunnel {
            cloud: self.cloud.clone(),
            endpoint: self.endpoint,
            noise_public: self.noise_public,
            psk: self.psk,
        }
    }
}

/// `GET /v1/peer/state` answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerState {
    /// Every cloud the standby can carry now.
    pub clouds: Vec<SyncedCloud>,
}

/// `POST /v1/peer/pair` body (primary → standby).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The standby's one-time token.
    pub token: String,
    /// The name the primary gives the standby.
    pub name: String,
    /// The port of the primary's peer API (its address is the connection's).
    pub primary_port: u16,
}

/// `POST /v1/peer/pair` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairResponse {
    /// The standby LCG's Noise public key, base64.
    pub noise_public: String,
}

/// `POST /v1/lcg/standbys` body (local API; the token travels in the body).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// Name for the standby.
    pub name: String,
    /// Its peer API, `IP[:PORT]`.
    pub address: String,
    /// Its peer fingerprint, `sha256:…`.
    pub fingerprint: String,
    /// Its one-time token.
    pub token: String,
}

/// A standby as `isthmus lcg standby list` shows it (no secrets).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StandbySummary {
    /// Name.
    pub name: String,
    /// Its peer API.
    pub address: SocketAddr,
    /// Its peer fingerprint.
    pub fingerprint: String,
    /// When paired.
    pub paired_at: String,
    /// Clouds whose node accepts it, with the node's port for it.
    pub clouds: BTreeMap<String, u16>,
    /// Seconds since it last pulled; `None` if not since this start.
    pub last_sync_s: Option<f64>,
    /// Problems the last change met (a node that could not be told).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// This appliance's place in an HA pair (`isthmus lcg status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairStatus {
    /// `primary` or `standby`.
    pub role: String,
    /// The other side(s): standby names, or the primary's URL.
    pub peers: Vec<String>,
    /// Seconds since the last pull (from the standby's side: its own; from
    /// the primary's: the most recent of its standbys').
    pub last_sync_s: Option<f64>,
}

/// The peer API's address of this process (`--peer-listen`), once started.
static PEER_LISTEN: OnceLock<SocketAddr> = OnceLock::new();
/// When each standby (or, on a standby, this one) last pulled.
static LAST_SYNC: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());
/// Member lists are computed and pushed to nodes one change at a time.
static PROVISION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn note_sync(who: &str) {
    LAST_SYNC
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(who.to_string(), Instant::now());
}

fn last_sync(who: &str) -> Option<f64> {
    let m = LAST_SYNC.lock().unwrap_or_else(|p| p.into_inner());
    m.get(who).map(|t| t.elapsed().as_secs_f64())
}

/// Runs a blocking LCG/store call off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StandbyError> + Send + 'static) -> Result<T, StandbyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StandbyError::Invalid(format!("internal task failed: {e}")))?
}

/// Parses a standby address, `IP` or `IP:PORT` (port [`DEFAULT_PEER_PORT`] when not given).
pub fn parse_address(s: &str) -> Result<SocketAddr, StandbyError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PEER_PORT))
        .map_err(|_| StandbyError::Invalid(format!("standby address {s:?}: give IP or IP:PORT of its --peer-listen")))
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
    k
}

// ---- primary side ----------------------------------------------------------

/// `isthmus lcg standby add`: pairs a standby appliance, turns this LCG's HA
/// on and tells every enrolled node to accept the standby's LCG.
pub async fn add(app: Arc<App>, req: AddRequest) -> Result<StandbySummary, StandbyError> {
    if !crate::inventory::valid_name(&req.name) {
        return Err(StandbyError::Invalid(format!(
            "standby name {:?} is invalid: use 1 to 32 letters, digits, '-' or '_'",
            req.name
        )));
    }
    if app.store.get(&PRIMARY, PRIMARY_KEY)?.is_some() {
        return Err(StandbyError::Conflict(
            "this appliance is itself a standby; add standbys on the primary".into(),
        ));
    }
    if app.store.get(&STANDBYS, &req.name)?.is_some() {
        return Err(StandbyError::Conflict(format!(
            "standby {} is paired already; `isthmus lcg standby remove {}` first to pair it again",
            req.name, req.name
        )));
    }
    let Some(own) = PEER_LISTEN.get().copied() else {
        return Err(StandbyError::Conflict(
            "this appliance has no peer API for its standby to pull from: restart `isthmus serve` with --peer-listen IP:PORT".into(),
        ));
    };
    let address = parse_address(&req.address)?;
    let pin: Fingerprint = req.fingerprint.parse().map_err(PkiError::from)?;
    let identity = peer::PeerIdentity::load_or_create(&app.data_dir.join("pki"))?;
    let client = peer_api::PeerClient::new(&format!("https://{address}"), &identity, pin)?;
    // This LCG becomes an HA member and takes its leases BEFORE the standby
    // can ask for any: otherwise the standby's first request could win a
    // cloud, and it would stay there (no preemption) while this one lives.
    let a = app.clone();
    blocking(move || Ok(a.lcg.set_ha(true)?)).await?;
    hold_leases(&app, Duration::from_secs(10)).await;
    let pair = PairRequest {
        token: req.token.clone(),
        name: req.name.clone(),
        primary_port: own.port(),
    };
    let answer = client.pair(&pair).await?;
    let noise_public: [u8; 32] = B64
        .decode(&answer.noise_public)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| StandbyError::Invalid("the standby answered a malformed Noise key".into()))?;
    if noise_public == app.lcg.public_key() {
        return Err(StandbyError::Conflict(
            "the standby has this appliance's own LCG key: it is a copy of this appliance's data directory; give it its own".into(),
        ));
    }
    let rec = StandbyRecord {
        name: req.name.clone(),
        address,
        fingerprint: pin.to_string(),
        noise_public,
        paired_at: now_rfc3339(),
        clouds: BTreeMap::new(),
    };
    app.store.put(&STANDBYS, &rec.name, &rec)?;
    tracing::info!(standby = %rec.name, %address, "standby LCG paired");
    let warnings = provision(&app).await;
    let rec = app.store.get(&STANDBYS, &req.name)?.unwrap_or(rec);
    Ok(summary(&rec, warnings))
}

/// Waits (up to `limit`: a node may be unreachable) until this LCG holds
/// the lease of every cloud.
async fn hold_leases(app: &App, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let all_held = app
            .lcg
            .bridge_stats()
            .is_none_or(|(stats, _)| stats.peers.iter().all(|p| p.ha.is_some_and(|l| l.held)));
        if all_held {
            return;
        }
        if Instant::now() > until {
            tracing::warn!("this LCG does not hold every cloud's lease yet; pairing the standby anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn summary(r: &StandbyRecord, warnings: Vec<String>) -> StandbySummary {
    StandbySummary {
        name: r.name.clone(),
        address: r.address,
        fingerprint: r.fingerprint.clone(),
        paired_at: r.paired_at.clone(),
        clouds: r
            .clouds
            .iter()
            .filter(|(_, m)| m.port != 0)
            .map(|(c, m)| (c.clone(), m.port))
            .collect(),
        last_sync_s: last_sync(&r.name),
        warnings,
    }
}

/// `isthmus lcg standby list`.
pub fn list(app: &App) -> Result<Vec<StandbySummary>, StandbyError> {
    Ok(app.store.list(&STANDBYS)?.into_iter().map(|(_, r)| summary(&r, vec![])).collect())
}

/// `isthmus lcg standby remove`: forgets the standby and tells every node to
/// drop its tunnel. Returns the nodes that could not be told (they drop it
/// at the next change that reaches them).
pub async fn remove(app: Arc<App>, name: &str) -> Result<Vec<String>, StandbyError> {
    if !app.store.delete(&STANDBYS, name)? {
        return Err(StandbyError::NotFound(format!(
            "no standby {name}: `isthmus lcg standby list` shows the paired ones"
        )));
    }
    tracing::info!(standby = %name, "standby LCG removed");
    let _guard = PROVISION.lock().await;
    let mut warnings = Vec::new();
    for (_, cloud) in app.store.list(&CLOUDS)? {
        if let Err(e) = push_members(&app, &cloud.name).await {
            warnings.push(format!("{}: {e}", cloud.name));
        }
    }
    Ok(warnings)
}

/// Makes sure every standby has a PSK for every enrolled cloud and every
/// node knows every standby; a node that is told nothing new is not called.
/// Returns what could not be done (retried at the standby's next pull).
pub async fn provision(app: &Arc<App>) -> Vec<String> {
    let _guard = PROVISION.lock().await;
    let mut warnings = Vec::new();
    let clouds = match app.store.list(&CLOUDS) {
        Ok(c) => c,
        Err(e) => return vec![e.to_string()],
    };
    for (_, cloud) in &clouds {
        let standbys = match app.store.list(&STANDBYS) {
            Ok(s) => s,
            Err(e) => return vec![e.to_string()],
        };
        let mut stale = false;
        for (_, mut s) in standbys {
            let m = s.clouds.entry(cloud.name.clone()).or_insert_with(|| MemberOfCloud {
                psk: random_key(),
                port: 0,
            });
            if m.port == 0 {
                stale = true;
                if let Err(e) = app.store.put(&STANDBYS, &s.name, &s) {
                    warnings.push(e.to_string());
                }
            }
        }
        if stale {
            if let Err(e) = push_members(app, &cloud.name).await {
                warnings.push(format!("{}: {e}", cloud.name));
            }
        }
    }
    warnings
}

/// Sends node `cloud` the full list of standbys (with their PSKs for it)
/// and records the ports it answers. Callers hold [`PROVISION`].
async fn push_members(app: &Arc<App>, cloud: &str) -> Result<(), StandbyError> {
    let standbys = app.store.list(&STANDBYS)?;
    let members = standbys
        .iter()
        .filter_map(|(_, s)| {
            s.clouds.get(cloud).map(|m| LcgMember {
                name: s.name.clone(),
                noise_public: B64.encode(s.noise_public),
                psk: B64.encode(m.psk),
            })
        })
        .collect();
    let c = app.cloud(cloud).map_err(|e| StandbyError::NotFound(e.to_string()))?;
    let ports = CloudClient::new(&c.url, &app.ca)?
        .set_lcg_members(&SetLcgMembers { members })
        .await?;
    for (_, mut s) in standbys {
        let key = B64.encode(s.noise_public);
        if let (Some(m), Some(p)) = (s.clouds.get_mut(cloud), ports.members.iter().find(|p| p.noise_public == key)) {
            m.port = p.bridge_port;
            app.store.put(&STANDBYS, &s.name, &s)?;
        }
    }
    tracing::info!(cloud, members = ports.members.len(), "node told its further LCG members");
    Ok(())
}

/// `GET /v1/peer/state` for the standby with peer certificate `client`:
/// every cloud it can carry now (provisioning new clouds first).
pub async fn state_for(app: &Arc<App>, client: Fingerprint) -> Result<PeerState, StandbyError> {
    let who = client.to_string();
    let find = |app: &App| -> Result<Option<StandbyRecord>, StandbyError> {
        Ok(app
            .store
            .list(&STANDBYS)?
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.fingerprint == who))
    };
    if find(app)?.is_none() {
        return Err(StandbyError::Unauthorized(
            "this peer certificate is not a paired standby of this appliance; pair it with `isthmus lcg standby add`".into(),
        ));
    }
    for w in provision(app).await {
        tracing::warn!("standby provisioning: {w}");
    }
    let s = find(app)?.ok_or_else(|| StandbyError::Unauthorized("standby removed".into()))?;
    note_sync(&s.name);
    let a = app.clone();
    blocking(move || {
        let mut clouds = Vec::new();
        for (_, c) in a.store.list(&CLOUDS)? {
            let Some(m) = s.clouds.get(&c.name).filter(|m| m.port != 0) else {
                continue;
            };
            let mut carried = Vec::new();
            for mac in a.lcg.carried(&c.name)? {
                carried.push(CarriedMac {
                    mac,
                    ips: a.lcg.ips_of(&mac)?,
                });
            }
            clouds.push(SyncedCloud {
                cloud: c.name.clone(),
                endpoint: SocketAddr::new(c.bridge_endpoint.ip(), m.port),
                noise_public: c.noise_public,
                psk: m.psk,
                carried,
            });
        }
        Ok(PeerState { clouds })
    })
    .await
}

/// This appliance's place in a pair, for `isthmus lcg status`.
pub fn pair_status(app: &App) -> Result<Option<PairStatus>, StandbyError> {
    if let Some(p) = app.store.get(&PRIMARY, PRIMARY_KEY)? {
        return Ok(Some(PairStatus {
            role: "standby".into(),
            peers: vec![p.url],
            last_sync_s: last_sync(PRIMARY_KEY),
        }));
    }
    let standbys = app.store.list(&STANDBYS)?;
    if standbys.is_empty() {
        return Ok(None);
    }
    let last = standbys.iter().filter_map(|(n, _)| last_sync(n)).reduce(f64::min);
    Ok(Some(PairStatus {
        role: "primary".into(),
        peers: standbys.into_iter().map(|(n, _)| n).collect(),
        last_sync_s: last,
    }))
}

/// Starts what `isthmus serve` runs of the pair: the standby's saved tunnels
/// and its pull loop (when paired), and the peer API (`--peer-listen`),
/// which answers pairing when `token_file` is given and this appliance is
/// not paired yet.
pub async fn start(app: Arc<App>, peer_listen: Option<SocketAddr>, token_file: Option<std::path::PathBuf>) -> Result<(), StandbyError> {
    app.store.ensure(&STANDBYS)?;
    app.store.ensure(&PRIMARY)?;
    app.store.ensure(&SYNCED)?;
    let paired = app.store.get(&PRIMARY, PRIMARY_KEY)?.is_some();
    if paired {
        let a = app.clone();
        blocking(move || sync::restore(&a)).await?;
        sync::spawn(app.clone());
    }
    let pairing = match (&token_file, paired) {
        (Some(_), _) if peer_listen.is_none() => {
            return Err(StandbyError::Invalid(
                "--standby-token-file needs --peer-listen IP:PORT (the primary pairs through it)".into(),
            ));
        }
        (Some(p), false) => Some(peer_api::PairingToken::read(p)?),
        (Some(_), true) => {
            tracing::info!("this appliance is paired already; ignoring --standby-token-file");
            None
        }
        (None, _) => None,
    };
    let Some(listen) = peer_listen else { return Ok(()) };
    let identity = peer::PeerIdentity::load_or_create(&app.data_dir.join("pki"))?;
    let waiting = pairing.is_some();
    let bound = peer_api::spawn(app, identity, listen, pairing).await?;
    let _ = PEER_LISTEN.set(bound.0);
    println!("peer fingerprint: {}", bound.1);
    if waiting {
        println!(
            "standby: waiting to be paired; on the primary run `isthmus lcg standby add NAME --address {} --fingerprint {}` with the token on stdin",
            bound.0, bound.1
        );
    }
    Ok(())
}
