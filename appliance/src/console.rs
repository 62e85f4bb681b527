//! The web console's view of the appliance (implements `webui::ConsoleService`).

use std::sync::Arc;

use webui::{ApplianceInfo, CloudRow, ConsoleService, MoveEvent, MoveRow, Overview, ServerRow};

use crate::app::App;
use crate::model::Step;

/// Adapter from the service layer to the console's rows.
pub struct Console(pub Arc<App>);

impl ConsoleService for Console {
    fn overview(&self) -> Overview {
        let status = match self.0.status() {
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
            .map(|s| {
                let running = match &s.location {
                    crate::model::Location::Dc => self.0.source.is_running(s),
                    crate::model::Location::Cloud { .. } => true,
                };
                ServerRow {
                    name: s.name.clone(),
                    ip: s.ip.map(|i| i.to_string()),
                    mac: s.profile.nics.first().map(|n| n.mac.to_string()),
                    location: s.location.to_string(),
                    state: if moving.contains(&s.name.as_str()) {
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
            })
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
        let moves = status
            .moves
            .iter()
            .map(|m| MoveRow {
                id: m.mv.id.clone(),
                server: m.mv.server.clone(),
                to: m.mv.to.clone(),
                step: m.mv.step.label().into(),
                state: match m.mv.step {
                    Step::Done => "done",
                    Step::RolledBack => "rolled-back",
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
            })
            .collect();
        Overview {
            servers,
            clouds,
            moves,
            appliance: self.info(),
        }
    }

    fn verify_login(&self, user: &str, password: &str) -> bool {
        crate::auth::verify(&self.0.store, user, password)
    }
}

impl Console {
    fn info(&self) -> ApplianceInfo {
        ApplianceInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            lan_iface: Some(self.0.lcg.lan().to_string()),
        }
    }
}
