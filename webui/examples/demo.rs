//! Runs the console over HTTPS with made-up data, for trying the pages in a browser:
//!
//! ```text
//! cargo run -p webui --example demo -- 127.0.0.1:8443
//! ```
//!
//! Log in as `admin` / `isthmus-demo` (or use `Authorization: Bearer demo-token`). The
//! certificate is self-signed and made at start. One move advances by itself so the live
//! updates can be watched.

use std::sync::Arc;
use std::time::Instant;

use webui::{ApplianceInfo, CloudRow, ConsoleService, MoveEvent, MoveRow, Overview, ServerRow};

/// Made-up data; the running move's progress follows the clock.
struct Demo {
    started: Instant,
}

fn server(name: &str, ip: &str, mac: &str, location: &str, state: &str, nic: &str, bus: &str) -> ServerRow {
    ServerRow {
        name: name.into(),
        ip: Some(ip.into()),
        mac: Some(mac.into()),
        location: location.into(),
        state: state.into(),
        nic_model: nic.into(),
        disk_bus: bus.into(),
    }
}

impl ConsoleService for Demo {
    fn overview(&self) -> Overview {
        let secs = self.started.elapsed().as_secs();
        let pct = (secs * 3).min(100) as u8;
        let (step, state) = match pct {
            0..=29 => ("copy-disks", "running"),
            30..=79 => ("final-sync", "running"),
            80..=99 => ("switch-l2", "running"),
            _ => ("commit", "done"),
        };
        let mut events = vec![
            MoveEvent {
                at: "09:00:01".into(),
                step: "plan".into(),
                message: "fits aws-eu-central m5.large (nested virtualization)".into(),
            },
            MoveEvent {
                at: "09:00:40".into(),
                step: "provision".into(),
                message: "instance i-0abc started, CSL up".into(),
            },
            MoveEvent {
                at: "09:01:05".into(),
                step: "copy-disks".into(),
                message: "copying 38.2 GiB allocated of 120 GiB".into(),
            },
        ];
        if pct >= 30 {
            events.push(MoveEvent {
                at: "09:14:10".into(),
                step: "final-sync".into(),
                message: "source stopped; syncing last changes".into(),
            });
        }
        if pct >= 80 {
            events.push(MoveEvent {
                at: "09:15:02".into(),
                step: "switch-l2".into(),
                message: "LCG now carries 52:54:00:aa:01:02".into(),
            });
        }
        if pct >= 100 {
            events.push(MoveEvent {
                at: "09:15:09".into(),
                step: "commit".into(),
                message: "10.1.0.12 answers from aws-eu-central".into(),
            });
        }
        let db_location = if state == "done" { "aws-eu-central" } else { "dc" };
        let db_state = if state == "done" { "running" } else { "moving" };
        Overview {
            servers: vec![
                server("web-01", "10.1.0.11", "52:54:00:aa:01:01", "dc", "running", "e1000", "scsi-lsi"),
                server(
                    "db-01",
                    "10.1.0.12",
                    "52:54:00:aa:01:02",
                    db_location,
                    db_state,
                    "vmxnet3",
                    "pvscsi",
                ),
                server(
                    "mail",
                    "10.1.0.20",
                    "52:54:00:aa:01:20",
                    "aws-eu-central",
                    "running",
                    "e1000",
                    "ide",
                ),
                server("ldap-legacy", "10.1.0.30", "52:54:00:aa:01:30", "dc", "stopped", "rtl8139", "ide"),
                server(
                    "files-<archive>",
                    "10.1.0.40",
                    "52:54:00:aa:01:40",
                    "lab-kvm",
                    "running",
                    "e1000e",
                    "sata",
                ),
            ],
            clouds: vec![
                CloudRow {
                    name: "aws-eu-central".into(),
                    endpoint: "https://csc.aws-eu.example:8443".into(),
                    accel: Some("kvm (nested)".into()),
                    enrolled_at: "2025-05-01 10:00".into(),
                },
                CloudRow {
                    name: "lab-kvm".into(),
                    endpoint: "https://10.9.0.5:8443".into(),
                    accel: None,
                    enrolled_at: "2025-05-03 16:20".into(),
                },
            ],
            moves: vec![
                MoveRow {
                    id: "mv-0007".into(),
                    server: "db-01".into(),
                    to: "aws-eu-central".into(),
                    step: step.into(),
                    state: state.into(),
                    progress_pct: pct,
                    started_at: "2025-05-04 09:00".into(),
                    events,
                },
                MoveRow {
                    id: "mv-0006".into(),
                    server: "mail".into(),
                    to: "aws-eu-central".into(),
                    step: "commit".into(),
                    state: "done".into(),
                    progress_pct: 100,
                    started_at: "2025-05-03 18:00".into(),
                    events: vec![],
                },
                MoveRow {
                    id: "mv-0005".into(),
                    server: "ldap-legacy".into(),
                    to: "lab-kvm".into(),
                    step: "verify".into(),
                    state: "rolled-back".into(),
                    progress_pct: 90,
                    started_at: "2025-05-02 11:30".into(),
                    events: vec![],
                },
            ],
            appliance: ApplianceInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                lan_iface: Some("eth1".into()),
                ca_fingerprint: None,
                accel: None,
            },
        }
    }

    fn verify_login(&self, user: &str, password: &str) -> bool {
        webui::constant_time_eq(user.as_bytes(), b"admin") & webui::constant_time_eq(password.as_bytes(), b"isthmus-demo")
    }

    fn verify_api_token(&self, token: &str) -> bool {
        webui::constant_time_eq(token.as_bytes(), b"demo-token")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("Isthmus console demo: https://{addr}/  (admin / isthmus-demo)");
    let app = webui::router(Arc::new(Demo { started: Instant::now() }));
    webui::serve_https(app, listener, cert.cert.pem().as_bytes(), cert.key_pair.serialize_pem().as_bytes()).await?;
    Ok(())
}
