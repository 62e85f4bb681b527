//! The appliance's service layer: what the CLI, the local API and the web
//! console all call (STYLE.md §7: one service, several front ends).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::cloud::{self, CloudClient, CloudError};
use crate::inventory::{self, InventoryError, ServerDescription};
use crate::lcg::{Lcg, LcgError};
use crate::model::{now_rfc3339, CloudRecord, Location, MoveEvent, MoveRecord, ServerRecord, Step};
use crate::pki::{Ca, Fingerprint};
use crate::source::{LocalQemu, SourceError};
use crate::store::{Store, StoreError, CLOUDS, MOVES, SERVERS};

/// Errors of the service layer; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad request data.
    #[error("{0}")]
    Invalid(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Conflict with current state.
    #[error("{0}")]
    Conflict(String),
    /// Inventory description refused.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cloud node failure.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// LCG failure.
    #[error(transparent)]
    Lcg(#[from] LcgError),
    /// Source host failure.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// Enrolment request (the token travels in the body, never on a command line).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Name to give the node.
    pub name: String,
    /// Its control API, `https://IP:PORT`.
    pub url: String,
    /// Its bootstrap certificate fingerprint, `sha256:…`.
    pub fingerprint: String,
    /// One-time token.
    pub token: String,
}

/// A move with its timeline and live progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveDetail {
    /// The record.
    #[serde(rename = "move")]
    pub mv: MoveRecord,
    /// Timeline.
    pub events: Vec<MoveEvent>,
    /// Overall progress, percent.
    pub progress_pct: u8,
    /// Disk copy progress (bytes done, total) while copying.
    pub copy: Option<(u64, u64)>,
}

/// Everything at a glance (what `isthmus status` prints).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Servers.
    pub servers: Vec<ServerRecord>,
    /// Enrolled clouds (without secrets).
    pub clouds: Vec<CloudSummary>,
    /// Moves, newest last.
    pub moves: Vec<MoveDetail>,
}

/// A cloud without its secrets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloudSummary {
    /// Name.
    pub name: String,
    /// Control API.
    pub url: String,
    /// Bridge endpoint.
    pub bridge_endpoint: SocketAddr,
    /// Accelerator its guests use.
    pub accel: Option<String>,
    /// Why.
    pub accel_reason: Option<String>,
    /// When enrolled.
    pub enrolled_at: String,
    /// Whether the bridge handshake completed.
    pub bridge_established: bool,
}

/// The appliance.
pub struct App {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Store.
    pub store: Arc<Store>,
    /// CA.
    pub ca: Ca,
    /// Gateway.
    pub lcg: Lcg,
    /// Data-center source host driver.
    pub source: LocalQemu,
    /// Disk copy progress per move.
    pub copy_progress: Mutex<HashMap<String, (u64, u64)>>,
    /// Moves being driven by this process.
    pub active: Mutex<std::collections::HashSet<String>>,
}

impl App {
    /// Adds (or replaces, while it is in the data center) a server.
    pub fn add_server(&self, d: ServerDescription) -> Result<ServerRecord, AppError> {
        d.validate()?;
        if let Some(old) = self.store.get(&SERVERS, &d.name)? {
            if old.location != Location::Dc {
                return Err(AppError::Conflict(format!(
                    "server {} runs in {} now; it cannot be redefined there",
                    d.name, old.location
                )));
            }
        }
        let rec = d.into_record();
        self.store.put(&SERVERS, &rec.name, &rec)?;
        Ok(rec)
    }

    /// A server by name.
    pub fn server(&self, name: &str) -> Result<ServerRecord, AppError> {
        self.store.get(&SERVERS, name)?.ok_or_else(|| {
            AppError::NotFound(format!(
                "no server {name}: `isthmus inventory add FILE` adds one; `isthmus status` lists them"
            ))
        })
    }

    /// A cloud by name.
    pub fn cloud(&self, name: &str) -> Result<CloudRecord, AppError> {
        self.store.get(&CLOUDS, name)?.ok_or_else(|| {
            AppError::NotFound(format!(
                "no cloud {name}: enrol it with `isthmus cloud enroll {name} --url … --fingerprint … --token-file …`"
            ))
        })
    }

    /// Client of an enrolled cloud.
    pub fn cloud_client(&self, name: &str) -> Result<CloudClient, AppError> {
        let c = self.cloud(name)?;
        Ok(CloudClient::new(&c.url, &self.ca)?.with_disk_keys(crate::moves::disk_keys::DiskKeys::new(&self.data_dir)))
    }

    /// Starts a data-center server on its source host.
    pub fn start_server(&self, name: &str) -> Result<u32, AppError> {
        let s = self.server(name)?;
        if s.location != Location::Dc {
            return Err(AppError::Conflict(format!(
                "server {name} runs in {}; starting its old copy would put its MAC on the LAN twice",
                s.location
            )));
        }
        Ok(self.source.start(&s)?)
    }

    /// Enrols a cloud node and opens the bridge to it.
    pub async fn enroll(&self, req: EnrollRequest) -> Result<CloudSummary, AppError> {
        if !inventory::valid_name(&req.name) {
            return Err(AppError::Invalid(format!(
                "cloud name {:?} is invalid: use 1 to 32 letters, digits, '-' or '_'",
                req.name
            )));
        }
        if req.name == crate::moves::route::DC {
            return Err(AppError::Invalid(format!(
                "cloud name {:?} is reserved for the data center (`isthmus move SERVER --to dc`); choose another",
                req.name
            )));
        }
        if self.store.get(&CLOUDS, &req.name)?.is_some() {
            return Err(AppError::Conflict(format!("cloud {} is already enrolled", req.name)));
        }
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| AppError::Invalid(format!("cloud URL {:?}: {e}; expected https://IP:PORT", req.url)))?;
        if url.scheme() != "https" {
            return Err(AppError::Invalid(format!("cloud URL {:?} must use https", req.url)));
        }
        let host: std::net::IpAddr = url
            .host_str()
            .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
            .ok_or_else(|| AppError::Invalid(format!("cloud URL {:?}: give the node's IP address", req.url)))?;
        let pin: Fingerprint = req.fingerprint.parse().map_err(crate::pki::PkiError::from)?;
        let mut psk = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut psk);
        let e = cloud::enroll(&req.url, pin, &req.token, &req.name, &self.ca, &self.lcg.public_key(), &psk).await?;
        let mut rec = CloudRecord {
            name: req.name.clone(),
            url: req.url.trim_end_matches('/').to_string(),
            bridge_endpoint: SocketAddr::new(host, e.bridge_port),
            noise_public: e.noise_public,
            cert_pem: e.cert_pem,
            psk,
            accel: None,
            accel_reason: None,
            enrolled_at: now_rfc3339(),
        };
        // First call over mutual TLS proves the new identity works.
        let info = CloudClient::new(&rec.url, &self.ca)?.node().await?;
        rec.accel = Some(info.accel.to_string());
        rec.accel_reason = Some(info.accel_reason);
        self.store.put(&CLOUDS, &rec.name, &rec)?;
        self.lcg.open(&rec)?;
        Ok(self.summary(&rec))
    }

    fn summary(&self, c: &CloudRecord) -> CloudSummary {
        CloudSummary {
            name: c.name.clone(),
            url: c.url.clone(),
            bridge_endpoint: c.bridge_endpoint,
            accel: c.accel.clone(),
            accel_reason: c.accel_reason.clone(),
            enrolled_at: c.enrolled_at.clone(),
            bridge_established: self.lcg.stats(&c.name).is_some_and(|s| s.established),
        }
    }

    /// Records a new move (step `plan`); the caller drives it. `to` is an
    /// enrolled cloud or `dc` (back to the data center); the server may run
    /// in the data center or in a cloud: every direction is the same move.
    /// With `rehearse`, a rehearsal instead: copy, boot the copy isolated,
    /// delete it (data-center sources to a cloud only: the source keeps
    /// running while its disks are read).
    pub fn create_move(&self, server: &str, to: &str, rehearse: bool) -> Result<MoveRecord, AppError> {
        let s = self.server(server)?;
        if to != crate::moves::route::DC {
            self.cloud(to)?;
        }
        if s.location.to_string() == to {
            return Err(AppError::Conflict(format!("server {server} runs in {to} already")));
        }
        if rehearse && (to == crate::moves::route::DC || s.location != Location::Dc) {
            return Err(AppError::Invalid(format!(
                "a rehearsal boots a copy of a server that runs in the data center in a cloud; {server} runs in {}, the target is {to}: rehearse a move from the data center to a cloud",
                s.location
            )));
        }
        crate::dr::ops::check_move(self, server)?;
        let moves = self.store.list(&MOVES)?;
        if let Some((_, m)) = moves.iter().find(|(_, m)| m.server == server && !m.step.is_terminal()) {
            return Err(AppError::Conflict(format!(
                "server {server} is being moved already ({}, step {})",
                m.id,
                m.step.label()
            )));
        }
        let id = format!("m-{}", moves.len() + 1);
        let mv = MoveRecord::new(&id, server, s.location.clone(), to, rehearse);
        self.store.put(&MOVES, &id, &mv)?;
        Ok(mv)
    }

    /// A move with its timeline.
    pub fn move_detail(&self, id: &str) -> Result<MoveDetail, AppError> {
        let mv = self
            .store
            .get(&MOVES, id)?
            .ok_or_else(|| AppError::NotFound(format!("no move {id}: `isthmus status` lists moves")))?;
        Ok(self.detail(mv)?)
    }

    fn detail(&self, mv: MoveRecord) -> Result<MoveDetail, StoreError> {
        let events = self.store.events(&mv.id)?;
        let copy = self.copy_progress.lock().expect("progress lock").get(&mv.id).copied();
        let mut pct = mv.step.progress_pct();
        if let (Step::CopyDisks, Some((done, total))) = (mv.step, copy) {
            let span = (Step::StartTarget.progress_pct() - Step::CopyDisks.progress_pct()) as u64;
            pct += (span * done / total.max(1)) as u8;
        }
        Ok(MoveDetail {
            mv,
            events,
            progress_pct: pct,
            copy,
        })
    }

    /// Everything, for `status` and the console.
    pub fn status(&self) -> Result<Status, AppError> {
        let servers = self.store.list(&SERVERS)?.into_iter().map(|(_, s)| s).collect();
        let clouds = self.store.list(&CLOUDS)?.into_iter().map(|(_, c)| self.summary(&c)).collect();
        let mut moves = Vec::new();
        for (_, m) in self.store.list(&MOVES)? {
            moves.push(self.detail(m)?);
        }
        moves.sort_by_key(|m| m.mv.id.trim_start_matches("m-").parse::<u64>().unwrap_or(0));
        Ok(Status { servers, clouds, moves })
    }
}
