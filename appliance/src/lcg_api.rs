//! The LCG's operator surface: `isthmus lcg status|carry|release|ha` and
//! the local-API routes behind them. Moves carry their servers' MACs by
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

/// `POST /v1/lcg/ha` body.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaRequest {
    /// Run the LCG as an HA member.
    pub on: bool,
}

/// A tunnel's HA lease in [`TunnelStatus`] (LCG in HA mode only).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TunnelLease {
    /// This LCG holds the cloud's lease: frames cross this tunnel.
    pub held: bool,
    /// The lease's epoch (fencing token), as last granted or seen.
    pub epoch: u64,
    /// Not held: another LCG carries this cloud (or none is granted yet).
    pub standby: bool,
    /// Times this LCG took the cloud's lease over.
    pub takeovers: u64,
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
    /// Its HA lease; `None` when the LCG does not run HA.
    pub lease: Option<TunnelLease>,
}

/// `GET /v1/lcg`: the LCG's bridge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LcgStatus {
    /// LAN interface.
    pub lan: String,
    /// False before the first cloud is enrolled.
    pub running: bool,
    /// Configured as an HA member (`isthmus lcg ha on`).
    pub ha: bool,
    /// HA on and no cloud's lease held: this LCG forwards nothing.
    pub standby: bool,
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
    /// Its place in an HA pair of appliances (`isthmus lcg standby`);
    /// `None` when unpaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<crate::lcg_standby::PairStatus>,
}

impl LcgStatus {
    /// A status with these tunnels and every LAN counter at zero (an LCG
    /// that has not started, or has seen nothing yet).
    pub fn quiet(lan: &str, running: bool, ha: bool, standby: bool, tunnels: Vec<TunnelStatus>) -> Self {
        Self {
            lan: lan.into(),
            running,
            ha,
            standby,
            tunnels,
            duplicate_macs: vec![],
            loops_detected: 0,
            loop_blocked: false,
            storm_drops: 0,
            lan_filtered: 0,
            lan_tx_frames: 0,
            gratuitous_sent: 0,
            pair: None,
        }
    }
}

fn status(app: &App) -> Result<LcgStatus, AppError> {
    let lcg = &app.lcg;
    let pair = crate::lcg_standby::pair_status(app)?;
    let Some((stats, names)) = lcg.bridge_stats() else {
        let mut s = LcgStatus::quiet(lcg.lan(), false, lcg.ha()?, false, vec![]);
        s.pair = pair;
        return Ok(s);
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
            lease: p.ha.map(|l| TunnelLease {
                held: l.held,
                epoch: l.epoch,
                standby: !l.held,
                takeovers: l.takeovers,
            }),
        });
    }
    let ha = lcg.ha()?;
    Ok(LcgStatus {
        lan: lcg.lan().into(),
        running: true,
        ha,
        standby: ha && !stats.ha_active,
        tunnels,
        duplicate_macs: stats.duplicate_macs,
        loops_detected: stats.loops_detected,
        loop_blocked: stats.loop_blocked,
        storm_drops: stats.storm_drops,
        lan_filtered: stats.lan_filtered,
        lan_tx_frames: stats.lan_tx_frames,
        gratuitous_sent: stats.gratuitous_sent,
        pair,
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
            "/v1/lcg/ha",
            post(|State((app, _)): Shared, Json(r): Json<HaRequest>| async move {
                let on = r.on;
                tokio::task::spawn_blocking(move || app.lcg.set_ha(on))
                    .await
                    .map_err(|e| AppError::Invalid(e.to_string()))??;
                Ok::<_, AppError>(Json(serde_json::json!({ "ha": on })))
            }),
        )
        .route(
            "/v1/lcg/release",
            post(|State((app, _)): Shared, Json(r): Json<CarryRequest>| change(app, r, |app, r| app.lcg.release(&r.cloud, &r.macs))),
        )
        .merge(crate::lcg_standby::cli::routes())
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
    /// Run this LCG as an HA member (`on`): it forwards through each
    /// cloud's tunnel only while it holds that cloud's lease, so a second
    /// LCG on the same LAN can stand by. Restarts the bridge.
    #[command(after_help = "Example:\n  isthmus lcg ha on\n  isthmus lcg status   # lease column: held/standby per cloud")]
    Ha {
        /// `on` or `off`.
        state: OnOff,
    },
    /// A second appliance as this LCG's standby (HA pair): pair, list, remove.
    Standby {
        /// What to do.
        #[command(subcommand)]
        cmd: crate::lcg_standby::cli::StandbyCmd,
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

/// A switch position on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    /// Switched on.
    On,
    /// Switched off.
    Off,
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
        LcgCmd::Ha { state } => {
            let body = serde_json::to_value(HaRequest { on: state == OnOff::On }).expect("json");
            let _: serde_json::Value = client.call("POST", "/v1/lcg/ha", Some(body)).await?;
            match state {
                OnOff::On => println!(
                    "LCG runs as an HA member: it forwards through each cloud only while it holds that cloud's lease (`isthmus lcg status`)"
                ),
                OnOff::Off => println!("LCG HA off: it forwards whenever a tunnel is up"),
            }
        }
        LcgCmd::Standby { cmd } => crate::lcg_standby::cli::run(client, cmd).await?,
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
    if let Some(p) = &s.pair {
        let synced = p.last_sync_s.map_or("not yet".to_string(), |t| format!("{t:.0} s ago"));
        let _ = writeln!(out, "HA pair: {} (peer: {}; last sync {synced})", p.role, p.peers.join(", "));
    }
    if !s.running {
        let _ = writeln!(out, "LCG on {}: not running (no cloud enrolled yet)", s.lan);
        return out;
    }
    let ha = match (s.ha, s.standby) {
        (false, _) => "",
        (true, false) => ", HA member (active)",
        (true, true) => ", HA member: STANDBY (holds no cloud's lease, forwards nothing)",
    };
    let _ = writeln!(out, "LCG on {}: {} tunnel(s){ha}", s.lan, s.tunnels.len());
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:<5} {:<22} {:>10} {:>10} {:>8} {:<12}  carried",
        "cloud", "peer", "up", "endpoint", "tx", "rx", "dropped", "lease"
    );
    for t in &s.tunnels {
        let carried: Vec<String> = t.carried.iter().map(|m| m.to_string()).collect();
        let lease = match t.lease {
            None => "-".to_string(),
            Some(l) if l.held => format!("held e{}", l.epoch),
            Some(l) => format!("standby e{}", l.epoch),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:<5} {:<22} {:>10} {:>10} {:>8} {:<12}  {}",
            t.cloud,
            t.peer,
            if t.established { "yes" } else { "no" },
            t.endpoint.as_deref().unwrap_or("-"),
            t.tx_frames,
            t.rx_frames,
            t.rx_dropped,
            lease,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(cloud: &str, lease: Option<TunnelLease>) -> TunnelStatus {
        TunnelStatus {
            cloud: cloud.into(),
            peer: 0,
            established: true,
            endpoint: None,
            tx_frames: 0,
            rx_frames: 0,
            rx_dropped: 0,
            handshake_age_s: None,
            carried: vec![],
            lease,
        }
    }

    fn status(ha: bool, standby: bool, tunnels: Vec<TunnelStatus>) -> LcgStatus {
        LcgStatus::quiet("lan0", true, ha, standby, tunnels)
    }

    #[test]
    fn the_table_shows_each_clouds_lease_and_a_standby_lcg() {
        let lease = |held| TunnelLease {
            held,
            epoch: 3,
            standby: !held,
            takeovers: 1,
        };
        let t = table(&status(
            true,
            false,
            vec![tunnel("a", Some(lease(true))), tunnel("b", Some(lease(false)))],
        ));
        assert!(t.contains("HA member (active)"), "{t}");
        assert!(t.lines().any(|l| l.starts_with("a ") && l.contains("held e3")), "{t}");
        assert!(t.lines().any(|l| l.starts_with("b ") && l.contains("standby e3")), "{t}");
        let t = table(&status(true, true, vec![tunnel("a", Some(lease(false)))]));
        assert!(t.contains("STANDBY"), "{t}");
        let t = table(&status(false, false, vec![tunnel("a", None)]));
        assert!(
            !t.contains("HA") && t.lines().any(|l| l.starts_with("a ") && l.contains(" - ")),
            "{t}"
        );
    }
}
