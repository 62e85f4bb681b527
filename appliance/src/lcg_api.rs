//! The LCG's operator surface: `isthmus lcg status|carry|release` and the
//! local-API routes behind them. Moves carry their servers' MACs by
//! themselves; `carry` is for cloud-side hosts that never lived in the data
//! center but must answer on the LAN (a node's `--bridge-port`), and
//! `release` for taking such an entry back.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::MacAddr;
use serde::{Deserialize, Serialize};

use crate::app::{App, AppError};
use crate::lcg::LcgError;
use crate::local_api::{Client, ClientError};

/// `POST /v1/lcg/carry` and `/v1/lcg/release` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarryRequest {
    /// Cloud whose tunnel carries the MACs.
    pub cloud: String,
    /// MACs.
    pub macs: Vec<MacAddr>,
}

/// One cloud's tunnel in [`LcgStatus`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Cloud name.
    pub cloud: String,
    /// Peer number on the bridge.
    pub peer: u32,
    /// True while the session can carry frames.
    pub established: bool,
    /// Where datagrams go.
    pub endpoint: Option<String>,
    /// Frames sent into this tunnel.
    pub tx_frames: u64,
    /// Frames received from it.
    pub rx_frames: u64,
    /// Datagrams of it dropped.
    pub rx_dropped: u64,
    /// Seconds since its last handshake.
    pub handshake_age_s: Option<f64>,
    /// MACs carried via it (persisted).
    pub carried: Vec<MacAddr>,
}

/// `GET /v1/lcg`: the LCG's bridge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LcgStatus {
    /// LAN interface.
    pub lan: String,
    /// False before the first cloud is enrolled.
    pub running: bool,
    /// One per cloud.
    pub tunnels: Vec<TunnelStatus>,
    /// ALARM: carried MACs also seen on the LAN.
    pub duplicate_macs: Vec<MacAddr>,
    /// Loops detected on the LAN.
    pub loops_detected: u64,
    /// True while the LAN port is blocked because of a loop.
    pub loop_blocked: bool,
    /// Broadcasts over the storm-control rate.
    pub storm_drops: u64,
    /// LAN frames that were not for a carried MAC.
    pub lan_filtered: u64,
    /// Frames put on the LAN.
    pub lan_tx_frames: u64,
    /// Gratuitous ARPs / unsolicited NAs sent on the LAN (cutovers).
    pub gratuitous_sent: u64,
}

fn status(app: &App) -> Result<LcgStatus, AppError> {
    let lcg = &app.lcg;
    let Some((stats, names)) = lcg.bridge_stats() else {
        return Ok(LcgStatus {
            lan: lcg.lan().into(),
            running: false,
            tunnels: vec![],
            duplicate_macs: vec![],
            loops_detected: 0,
            loop_blocked: false,
            storm_drops: 0,
            lan_filtered: 0,
            lan_tx_frames: 0,
            gratuitous_sent: 0,
        });
    };
    let mut tunnels = Vec::new();
    for p in &stats.peers {
        let cloud = names.get(&p.id).cloned().unwrap_or_default();
        tunnels.push(TunnelStatus {
            carried: lcg.carried(&cloud)?.into_iter().collect(),
            cloud,
            peer: p.id,
            established: p.established,
            endpoint: p.endpoint.map(|e| e.to_string()),
            tx_frames: p.tx_frames,
            rx_frames: p.rx_frames,
            rx_dropped: p.rx_dropped,
            handshake_age_s: p.last_handshake_age.map(|d| d.as_secs_f64()),
        });
    }
    Ok(LcgStatus {
        lan: lcg.lan().into(),
        running: true,
        tunnels,
        duplicate_macs: stats.duplicate_macs,
        loops_detected: stats.loops_detected,
        loop_blocked: stats.loop_blocked,
        storm_drops: stats.storm_drops,
        lan_filtered: stats.lan_filtered,
        lan_tx_frames: stats.lan_tx_frames,
        gratuitous_sent: stats.gratuitous_sent,
    })
}

fn not_found(e: LcgError) -> AppError {
    match e {
        LcgError::NoTunnel(c) => AppError::NotFound(format!("no tunnel to cloud {c}: `isthmus status` lists the enrolled clouds")),
        e => e.into(),
    }
}

type Shared = State<(Arc<App>, tokio::runtime::Handle)>;

/// The routes under `/v1/lcg`, merged into the local API.
pub fn routes() -> Router<(Arc<App>, tokio::runtime::Handle)> {
    Router::new()
        .route("/v1/lcg", get(|State((app, _)): Shared| async move { status(&app).map(Json) }))
        .route(
            "/v1/lcg/carry",
            post(|State((app, _)): Shared, Json(r): Json<CarryRequest>| change(app, r, |app, r| app.lcg.carry(&r.cloud, &r.macs))),
        )
        .route(
            "/v1/lcg/release",
            post(|State((app, _)): Shared, Json(r): Json<CarryRequest>| change(app, r, |app, r| app.lcg.release(&r.cloud, &r.macs))),
        )
}

/// Applies a carry/release (store and bridge calls block) for a known cloud.
async fn change(
    app: Arc<App>,
    r: CarryRequest,
    f: fn(&App, &CarryRequest) -> Result<(), LcgError>,
) -> Result<Json<serde_json::Value>, AppError> {
    app.cloud(&r.cloud)?;
    tokio::task::spawn_blocking(move || f(&app, &r))
        .await
        .map_err(|e| AppError::Invalid(e.to_string()))?
        .map_err(not_found)?;
    Ok(Json(serde_json::json!({})))
}

/// `isthmus lcg …`.
#[derive(clap::Subcommand, Debug)]
pub enum LcgCmd {
    /// Show the bridge: one tunnel per cloud, carried MACs, LAN alarms.
    Status {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Carry MACs via a cloud's tunnel (a cloud-side host that must answer
    /// on the LAN). Moves do this for their servers by themselves.
    #[command(after_help = "Example:\n  isthmus lcg carry cloud1 52:54:00:aa:bb:01")]
    Carry {
        /// Cloud name.
        cloud: String,
        /// MAC addresses.
        #[arg(required = true)]
        macs: Vec<MacAddr>,
    },
    /// Stop carrying MACs via a cloud's tunnel.
    Release {
        /// Cloud name.
        cloud: String,
        /// MAC addresses.
        #[arg(required = true)]
        macs: Vec<MacAddr>,
    },
}

/// Runs `isthmus lcg …` against the running appliance.
pub async fn run(client: &Client, cmd: LcgCmd) -> Result<(), ClientError> {
    match cmd {
        LcgCmd::Status { json } => {
            let s: LcgStatus = client.call("GET", "/v1/lcg", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).expect("status serializes"));
            } else {
                print!("{}", table(&s));
            }
        }
        LcgCmd::Carry { cloud, macs } => {
            let body = serde_json::to_value(CarryRequest {
                cloud: cloud.clone(),
                macs,
            })
            .expect("json");
            let _: serde_json::Value = client.call("POST", "/v1/lcg/carry", Some(body)).await?;
            println!("carried via {cloud}");
        }
        LcgCmd::Release { cloud, macs } => {
            let body = serde_json::to_value(CarryRequest {
                cloud: cloud.clone(),
                macs,
            })
            .expect("json");
            let _: serde_json::Value = client.call("POST", "/v1/lcg/release", Some(body)).await?;
            println!("released from {cloud}");
        }
    }
    Ok(())
}

fn table(s: &LcgStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if !s.running {
        let _ = writeln!(out, "LCG on {}: not running (no cloud enrolled yet)", s.lan);
        return out;
    }
    let _ = writeln!(out, "LCG on {}: {} tunnel(s)", s.lan, s.tunnels.len());
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:<5} {:<22} {:>10} {:>10} {:>8}  carried",
        "cloud", "peer", "up", "endpoint", "tx", "rx", "dropped"
    );
    for t in &s.tunnels {
        let carried: Vec<String> = t.carried.iter().map(|m| m.to_string()).collect();
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:<5} {:<22} {:>10} {:>10} {:>8}  {}",
            t.cloud,
            t.peer,
            if t.established { "yes" } else { "no" },
            t.endpoint.as_deref().unwrap_or("-"),
            t.tx_frames,
            t.rx_frames,
            t.rx_dropped,
            carried.join(",")
        );
    }
    if !s.duplicate_macs.is_empty() {
        let dups: Vec<String> = s.duplicate_macs.iter().map(|m| m.to_string()).collect();
        let _ = writeln!(
            out,
            "ALARM: duplicate MAC(s) on the LAN, not forwarded: {} — stop the other copy",
            dups.join(",")
        );
    }
    if s.loop_blocked {
        let _ = writeln!(out, "ALARM: LAN port blocked because of a loop ({} detected)", s.loops_detected);
    }
    out
}
