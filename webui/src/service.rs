//! What the console shows and who may see it: the seam between the web layer and the
//! appliance's service layer.
//!
//! The appliance implements [`ConsoleService`]; the console never reads the store or talks
//! to clouds itself. Every value here is already formatted for display (times as strings,
//! states as words), so the HTML page and its JSON twin show exactly the same thing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Data the console shows and the checks it needs; implemented by the appliance's service
/// layer.
///
/// Methods are called from a blocking-task pool (`tokio::task::spawn_blocking`), so an
/// implementation may read a database or run a slow password hash without stalling the
/// web server.
pub trait ConsoleService: Send + Sync + 'static {
    /// A snapshot of everything the overview page shows: servers, clouds and moves.
    fn overview(&self) -> Overview;

    /// Whether `user` / `password` are valid console credentials.
    ///
    /// Implementations should use a slow password hash and compare in constant time
    /// (see [`crate::constant_time_eq`]); the console adds a global failure rate limit on top.
    fn verify_login(&self, user: &str, password: &str) -> bool;

    /// Whether `token` (from `Authorization: Bearer <token>`) is a valid API token, for
    /// scripts that cannot hold a session cookie.
    ///
    /// The default accepts no token. Implementations should compare in constant time
    /// (see [`crate::constant_time_eq`]).
    fn verify_api_token(&self, token: &str) -> bool {
        let _ = token;
        false
    }

    /// One move by its id, or `None` if there is no such move.
    ///
    /// The default searches [`ConsoleService::overview`]; a service with many historical
    /// moves should look the move up directly.
    fn find_move(&self, id: &str) -> Option<MoveRow> {
        self.overview().moves.into_iter().find(|m| m.id == id)
    }

    /// Enrols a cloud node (`POST /api/clouds`) and returns its row.
    ///
    /// The request has passed the console's checks (fields present, `https` URL, fingerprint
    /// syntax); the error is shown to the caller as is, so it should say what to do next and
    /// must not contain the token. The default supports no enrolment.
    fn enroll_cloud(&self, req: EnrollCloud) -> Result<CloudRow, String> {
        let _ = req;
        Err("not supported".into())
    }

    /// Adds (or redefines) a data-center server from its description (`POST /api/servers`)
    /// and returns its row.
    ///
    /// `description` is the JSON the caller sent, unparsed: its schema is the appliance's
    /// server description (what `isthmus inventory add` reads). The default supports none.
    fn add_server(&self, description: serde_json::Value) -> Result<ServerRow, Refusal> {
        let _ = description;
        Err(Refusal::Unsupported("adding servers"))
    }

    /// Starts a move (`POST /api/moves`) and returns its row as it is right after the
    /// start; the move then runs in the background (poll `GET /moves/{id}`). The default
    /// supports none.
    fn start_move(&self, req: StartMove) -> Result<MoveRow, Refusal> {
        let _ = req;
        Err(Refusal::Unsupported("starting moves"))
    }
}

/// Why the service refused a request; each kind has its own HTTP status. The message is
/// shown to the caller as is, so it should say what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request is wrong (400).
    Invalid(String),
    /// It names a server, cloud or move the appliance does not know (404).
    NotFound(String),
    /// It conflicts with the current state, e.g. the server runs there already (409).
    Conflict(String),
    /// The appliance failed to do it (500).
    Failed(String),
    /// This service does not offer the operation (501).
    Unsupported(&'static str),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::NotFound(m) | Self::Conflict(m) | Self::Failed(m) => f.write_str(m),
            Self::Unsupported(what) => write!(f, "{what} is not supported by this console"),
        }
    }
}

/// A request to move a server: the body of `POST /api/moves`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartMove {
    /// The server to move (a [`ServerRow::name`]).
    pub server: String,
    /// Where to: `"dc"` or an enrolled cloud's name.
    pub to: String,
}

/// A request to enrol a cloud node: the body of `POST /api/clouds`.
///
/// `Debug` leaves the one-time token out so that logging a request cannot leak it.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct EnrollCloud {
    /// The name to give the node (as used in [`ServerRow::location`]).
    pub name: String,
    /// The node's control API, `https://IP:PORT`.
    pub url: String,
    /// The node's bootstrap certificate fingerprint, `sha256:<64 hex>`.
    pub fingerprint: String,
    /// The node's one-time enrolment token.
    pub token: String,
}

impl fmt::Debug for EnrollCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollCloud")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("fingerprint", &self.fingerprint)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Everything the overview page shows, in one snapshot.
#[derive(Serialize, Clone, Debug)]
pub struct Overview {
    /// Every known server, wherever it runs now.
    pub servers: Vec<ServerRow>,
    /// Every enrolled cloud.
    pub clouds: Vec<CloudRow>,
    /// Moves, running and past, newest first by convention.
    pub moves: Vec<MoveRow>,
    /// Facts about this appliance.
    pub appliance: ApplianceInfo,
}

/// One server as the console lists it.
#[derive(Serialize, Clone, Debug)]
pub struct ServerRow {
    /// The server's name (host name or inventory name).
    pub name: String,
    /// Its primary IP address, if known.
    pub ip: Option<String>,
    /// Its primary MAC address, if known.
    pub mac: Option<String>,
    /// Where it runs now: `"dc"` for the data center, otherwise a cloud's name.
    pub location: String,
    /// `running`, `stopped` or `moving`.
    pub state: String,
    /// The emulated NIC model it keeps (e.g. `e1000`, `vmxnet3`).
    pub nic_model: String,
    /// The disk bus it keeps (e.g. `scsi-lsi`, `ide`, `sata`).
    pub disk_bus: String,
}

/// One enrolled cloud.
#[derive(Serialize, Clone, Debug)]
pub struct CloudRow {
    /// The cloud's name, as used in [`ServerRow::location`] and [`MoveRow::to`].
    pub name: String,
    /// The cloud controller's endpoint.
    pub endpoint: String,
    /// Hardware acceleration available there (e.g. `kvm`), or `None` for emulation only.
    pub accel: Option<String>,
    /// When the cloud was enrolled.
    pub enrolled_at: String,
}

/// One move of a server between the data center and a cloud (or between clouds).
#[derive(Serialize, Clone, Debug)]
pub struct MoveRow {
    /// The move's id; also its page address, `/moves/{id}`.
    pub id: String,
    /// The server being moved.
    pub server: String,
    /// Where it is going: `"dc"` or a cloud's name.
    pub to: String,
    /// The current (or last) step of the move's state machine.
    pub step: String,
    /// `running`, `done`, `failed` or `rolled-back`.
    pub state: String,
    /// Overall progress, 0 to 100.
    pub progress_pct: u8,
    /// When the move started.
    pub started_at: String,
    /// What happened so far, oldest first.
    pub events: Vec<MoveEvent>,
}

/// One entry of a move's timeline.
#[derive(Serialize, Clone, Debug)]
pub struct MoveEvent {
    /// When it happened.
    pub at: String,
    /// The step it belongs to.
    pub step: String,
    /// What happened, for a person.
    pub message: String,
}

/// Facts about the appliance itself, shown in the page footer.
#[derive(Serialize, Clone, Debug)]
pub struct ApplianceInfo {
    /// The appliance's software version.
    pub version: String,
    /// The LAN interface the gateway bridges, if configured.
    pub lan_iface: Option<String>,
    /// The appliance CA certificate's fingerprint (`sha256:<hex>` over its DER), for an
    /// admin to compare with what a cloud node or browser shows.
    pub ca_fingerprint: Option<String>,
    /// The accelerator local guests use and why (e.g. `kvm: /dev/kvm usable`).
    pub accel: Option<String>,
}
