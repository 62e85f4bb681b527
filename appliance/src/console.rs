//! The web console's view of the appliance (implements `webui::ConsoleService`).

use std::sync::Arc;

use proto::identity::Fingerprint;
use webui::{ApplianceInfo, CloudRow, ConsoleService, EnrollCloud, MoveEvent, MoveRow, Overview, Refusal, ServerRow, StartMove};

use crate::app::{App, AppError, EnrollRequest, MoveDetail};
use crate::inventory::ServerDescription;
use crate::model::{ServerRecord, Step};

/// Adapter from the service layer to the console's rows.
pub struct Console {
    app: Arc<App>,
    /// The daemon's runtime: the console calls us on its blocking pool, where
    /// `Handle::block_on` may run the service layer's async calls.
    rt: tokio::runtime::Handle,
    /// The CA fingerprint, computed once.
    ca_fingerprint: Option<String>,
    /// Local accelerator and why, e.g. `kvm: /dev/kvm usable`.
    accel: String,
}

impl Console {
    /// The console's view of `app`; `accel` describes the local accelerator and its reason.
    pub fn new(app: Arc<App>, rt: tokio::runtime::Handle, accel: String) -> Self {
        let ca_fingerprint = ca_fingerprint(&app.ca.ca_pem);
        Self {
            app,
            rt,
            ca_fingerprint,
            accel,
        }
    }
}

/// The console's row of a move.
fn move_row(m: &MoveDetail) -> MoveRow {
    MoveRow {
        id: m.mv.id.clone(),
        server: m.mv.server.clone(),
        to: m.mv.to.clone(),
        step: m.mv.step.label().into(),
        state: match m.mv.step {
            Step::Done => "done",
            Step::RolledBack => "rolled-back",
            Step::Rehearsed if m.mv.failure.is_some() => "rehearsal-failed",
            Step::Rehearsed => "rehearsed",
            s if m.mv.failure.is_some() && !s.is_terminal() => "failed",
            _ => "running",
        }
        .into(),
        progress_pct: m.progress_pct,
        started_at: m.mv.started_at.clone(),
        events: m
            .events
            .iter()
            .map(|e| MoveEvent {
                at: e.at.clone(),
                step: e.step.label().into(),
                message: e.message.clone(),
            })
            .collect(),
    }
}

/// The refusal an application error becomes (its message says what to do next).
fn refusal(e: AppError) -> Refusal {
    match e {
        AppError::Invalid(m) => Refusal::Invalid(m),
        AppError::Inventory(e) => Refusal::Invalid(e.to_string()),
        AppError::NotFound(m) => Refusal::NotFound(m),
        AppError::Conflict(m) => Refusal::Conflict(m),
        e => Refusal::Failed(e.to_string()),
    }
}

/// `sha256:<hex>` of the first certificate in `ca_pem`, or `None` if it cannot be read.
fn ca_fingerprint(ca_pem: &str) -> Option<String> {
    match crate::pki::certs(ca_pem) {
        Ok(certs) => certs.first().map(|der| Fingerprint::of(der).to_string()),
        Err(e) => {
            tracing::error!("console: CA certificate: {e}");
            None
        }
    }
}

impl ConsoleService for Console {
    fn overview(&self) -> Overview {
        let status = match self.app.status() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("console overview: {e}");
                return Overview {
                    servers: vec![],
                    clouds: vec![],
                    moves: vec![],
                    appliance: self.info(),
                };
            }
        };
        let moving: Vec<&str> = status
            .moves
            .iter()
            .filter(|m| !m.mv.step.is_terminal())
            .map(|m| m.mv.server.as_str())
            .collect();
        let servers = status
            .servers
            .iter()
            .map(|s| self.server_row(s, moving.contains(&s.name.as_str())))
            .collect();
        let clouds = status
            .clouds
            .iter()
            .map(|c| CloudRow {
                name: c.name.clone(),
                endpoint: c.url.clone(),
                accel: c.accel.clone(),
                enrolled_at: c.enrolled_at.clone(),
            })
            .collect();
        let moves = status.moves.iter().map(move_row).collect();
        Overview {
            servers,
            clouds,
            moves,
            appliance: self.info(),
        }
    }

    fn verify_login(&self, user: &str, password: &str) -> bool {
        crate::auth::verify(&self.app.store, user, password)
    }

    fn add_server(&self, description: serde_json::Value) -> Result<ServerRow, Refusal> {
        let d: ServerDescription = serde_json::from_value(description).map_err(|e| Refusal::Invalid(format!("server description: {e}")))?;
        let rec = self.app.add_server(d).map_err(refusal)?;
        Ok(self.server_row(&rec, false))
    }

    fn start_move(&self, req: StartMove) -> Result<MoveRow, Refusal> {
        let mv = self.app.create_move(&req.server, &req.to, false).map_err(refusal)?;
        crate::daemon::drive_in_background(self.app.clone(), self.rt.clone(), mv.id.clone());
        let detail = self.app.move_detail(&mv.id).map_err(refusal)?;
        Ok(move_row(&detail))
    }

    fn enroll_cloud(&self, req: EnrollCloud) -> Result<CloudRow, String> {
        let req = EnrollRequest {
            name: req.name,
            url: req.url,
            fingerprint: req.fingerprint,
            token: req.token,
        };
        // Called on the console's blocking pool (not a runtime worker), so blocking on the
        // daemon's runtime here is allowed and keeps reqwest on that runtime.
        let c = self.rt.block_on(self.app.enroll(req)).map_err(|e| e.to_string())?;
        Ok(CloudRow {
            name: c.name,
            endpoint: c.url,
            accel: c.accel,
            enrolled_at: c.enrolled_at,
        })
    }
}

impl Console {
    fn server_row(&self, s: &ServerRecord, moving: bool) -> ServerRow {
        let running = match &s.location {
            crate::model::Location::Dc => self.app.source.is_running(s),
            crate::model::Location::Cloud { .. } => true,
        };
        ServerRow {
            name: s.name.clone(),
            ip: s.ip.map(|i| i.to_string()),
            mac: s.profile.nics.first().map(|n| n.mac.to_string()),
            location: s.location.to_string(),
            state: if moving {
                "moving"
            } else if running {
                "running"
            } else {
                "stopped"
            }
            .into(),
            nic_model: s
                .profile
                .nics
                .first()
                .map(|n| format!("{:?}", n.model).to_lowercase())
                .unwrap_or_default(),
            disk_bus: s
                .profile
                .disks
                .first()
                .map(|d| format!("{:?}", d.bus).to_lowercase())
                .unwrap_or_default(),
        }
    }

    fn info(&self) -> ApplianceInfo {
        ApplianceInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            lan_iface: Some(self.app.lcg.lan().to_string()),
            ca_fingerprint: self.ca_fingerprint.clone(),
            accel: Some(self.accel.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ca_fingerprint_is_sha256_of_der() {
        let cert = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let want = proto::identity::Fingerprint::of(cert.cert.der()).to_string();
        assert_eq!(super::ca_fingerprint(&cert.cert.pem()).as_deref(), Some(want.as_str()));
        assert!(want.starts_with("sha256:") && want.len() == 7 + 64);
        assert_eq!(super::ca_fingerprint("not a pem"), None);
    }
}
