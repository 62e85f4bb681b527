//! `isthmus dr …` and the local-API routes behind it (`/v1/dr…`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::app::{App, AppError};
use crate::dr::ops;
use crate::dr::record::{self, unix_now, DrEvent, DrRecord, DrState, DrStep, OpKind, Round, DR};
use crate::dr::rpo::{self, Rpo};
use crate::local_api::{Client, ClientError};

/// `POST /v1/dr` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectRequest {
    /// Server to protect.
    pub server: String,
    /// Cloud to keep its replica on.
    pub cloud: String,
    /// Recovery point objective (`15m`, `1h`, …).
    pub rpo: String,
}

/// A protected server as `isthmus dr status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrView {
    /// The record.
    #[serde(flatten)]
    pub record: DrRecord,
    /// Seconds since the last recovery point.
    pub point_age_s: Option<f64>,
    /// The last point is at most the RPO old.
    pub rpo_met: bool,
    /// A round or operation runs now.
    pub busy: bool,
}

/// A protected server with its timeline and copy progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrDetail {
    /// Status.
    #[serde(flatten)]
    pub view: DrView,
    /// Timeline, oldest first.
    pub events: Vec<DrEvent>,
    /// Copy progress (bytes done, total) while a round sends or a failback pulls.
    pub copy: Option<(u64, u64)>,
}

fn view(app: &App, record: DrRecord) -> DrView {
    let age = record.point_age_s(unix_now()).map(|a| (a * 10.0).round() / 10.0);
    DrView {
        rpo_met: rpo::met(record.rpo, age),
        point_age_s: age,
        busy: ops::is_busy(app, &record.server),
        record,
    }
}

fn detail(app: &App, server: &str) -> Result<DrDetail, AppError> {
    let rec = ops::record(app, server)?;
    let copy = app
        .copy_progress
        .lock()
        .expect("progress lock")
        .get(&ops::busy_key(server))
        .copied();
    Ok(DrDetail {
        events: record::events(&app.store, server)?,
        view: view(app, rec),
        copy,
    })
}

type Shared = State<(Arc<App>, tokio::runtime::Handle)>;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, AppError> + Send + 'static) -> Result<Json<T>, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Invalid(format!("DR worker failed: {e}")))?
        .map(Json)
}

async fn operation(app: Arc<App>, rt: tokio::runtime::Handle, server: String, kind: OpKind) -> Result<Json<DrView>, AppError> {
    blocking(move || {
        let (busy, rec) = ops::request(&app, &server, kind)?;
        ops::drive_in_background(app.clone(), rt, busy, server);
        Ok(view(&app, rec))
    })
    .await
}

/// The routes under `/v1/dr`, merged into the local API.
pub fn routes() -> Router<(Arc<App>, tokio::runtime::Handle)> {
    Router::new()
        .route(
            "/v1/dr",
            get(|State((app, _)): Shared| async move {
                blocking(move || {
                    record::ensure_tables(&app.store)?;
                    Ok(app.store.list(&DR)?.into_iter().map(|(_, r)| view(&app, r)).collect::<Vec<_>>())
                })
                .await
            })
            .post(|State((app, rt)): Shared, Json(r): Json<ProtectRequest>| async move {
                blocking(move || {
                    let rpo: Rpo = r.rpo.parse().map_err(|e: rpo::RpoError| AppError::Invalid(e.to_string()))?;
                    let busy = ops::lock(&app, &r.server, Duration::from_secs(5))?;
                    let rec = ops::protect(&app, &r.server, &r.cloud, rpo)?;
                    if rec.last_point.is_none() && rec.state == DrState::Protecting {
                        ops::first_round_in_background(app.clone(), rt, busy, r.server.clone());
                    }
                    Ok(view(&app, ops::record(&app, &r.server)?))
                })
                .await
            }),
        )
        .route(
            "/v1/dr/{server}",
            get(|State((app, _)): Shared, UrlPath(server): UrlPath<String>| async move { blocking(move || detail(&app, &server)).await })
                .delete(|State((app, _)): Shared, UrlPath(server): UrlPath<String>| async move {
                    blocking(move || {
                        let _busy = ops::lock(&app, &server, Duration::from_secs(60))?;
                        ops::unprotect(&app, &server)
                    })
                    .await
                }),
        )
        .route(
            "/v1/dr/{server}/sync",
            post(|State((app, rt)): Shared, UrlPath(server): UrlPath<String>| async move {
                blocking(move || {
                    ops::record(&app, &server)?;
                    let _busy = ops::lock(&app, &server, Duration::from_secs(900))?;
                    ops::sync_round(&app, &rt, &server)
                })
                .await
            }),
        )
        .route(
            "/v1/dr/{server}/failover",
            post(|State((app, rt)): Shared, UrlPath(server): UrlPath<String>| operation(app, rt, server, OpKind::Failover)),
        )
        .route(
            "/v1/dr/{server}/failback",
            post(|State((app, rt)): Shared, UrlPath(server): UrlPath<String>| operation(app, rt, server, OpKind::Failback)),
        )
}

/// `isthmus dr …`: disaster recovery with a stopped replica in a cloud.
#[derive(clap::Subcommand, Debug)]
pub enum DrCmd {
    /// Keep a replica of a data-center server on a cloud node (stopped,
    /// encrypted), refreshed by incremental rounds at least every RPO.
    #[command(after_help = "Example:\n  isthmus dr protect web1 --to cloud1 --rpo 15m")]
    Protect {
        /// Server name.
        server: String,
        /// Cloud to keep the replica on.
        #[arg(long)]
        to: String,
        /// Recovery point objective: how old the last point may be (30s, 15m, 1h, 1d).
        #[arg(long, default_value = "15m")]
        rpo: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Return at once instead of waiting for the first recovery point.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run one protection round now (only changed blocks cross).
    Sync {
        /// Server name.
        server: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Protected servers: state, last recovery point, RPO met or missed.
    Status {
        /// One server: its record and its timeline.
        server: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop protecting a server (it must run in the data center). The
    /// replica's encrypted disks stay on the node.
    Unprotect {
        /// Server name.
        server: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The data center is lost: start the replica in the cloud from the last
    /// recovery point, with the server's hardware and MAC; the LCG carries
    /// the MAC, so the server answers at its IP.
    Failover {
        /// Server name.
        server: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Return at once instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Bring a failed-over server home: stop the cloud copy, pull back only
    /// the blocks that changed, start it in the data center, release the MAC.
    Failback {
        /// Server name.
        server: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Return at once instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Runs `isthmus dr …`; with `--json` an error is also printed as a JSON
/// object `{"error": "…"}` on stdout.
pub async fn run(client: &Client, cmd: DrCmd) -> Result<(), ClientError> {
    let json = match &cmd {
        DrCmd::Protect { json, .. }
        | DrCmd::Sync { json, .. }
        | DrCmd::Status { json, .. }
        | DrCmd::Unprotect { json, .. }
        | DrCmd::Failover { json, .. }
        | DrCmd::Failback { json, .. } => *json,
    };
    let r = run_inner(client, cmd).await;
    if let (Err(e), true) = (&r, json) {
        println!("{}", serde_json::json!({ "error": e.to_string() }));
    }
    r
}

fn refused(msg: String) -> ClientError {
    ClientError::Refused(msg)
}

async fn run_inner(client: &Client, cmd: DrCmd) -> Result<(), ClientError> {
    match cmd {
        DrCmd::Protect {
            server,
            to,
            rpo,
            json,
            no_wait,
        } => {
            // Refused here first, so that a typo never reaches the appliance.
            rpo.parse::<Rpo>().map_err(|e| refused(e.to_string()))?;
            let body = serde_json::to_value(ProtectRequest {
                server: server.clone(),
                cloud: to.clone(),
                rpo,
            })
            .expect("json");
            let v: DrView = client.call("POST", "/v1/dr", Some(body)).await?;
            let v = if no_wait || v.record.last_point.is_some() {
                v
            } else {
                follow_copy(client, &server, !json, |d| !d.view.busy).await?.view
            };
            if json {
                println!("{}", serde_json::to_string(&v).expect("json"));
            } else {
                println!("{server} protected on {to} with RPO {}; {}", v.record.rpo, point_text(&v));
            }
            if !no_wait && v.record.last_point.is_none() {
                let why = v.record.rounds.last().and_then(|r| r.error.clone()).unwrap_or_default();
                return Err(refused(format!("the first protection round of {server} failed: {why}")));
            }
        }
        DrCmd::Sync { server, json } => {
            let path = format!("/v1/dr/{server}/sync");
            let call = async { client.call::<Round>("POST", &path, None).await };
            let bar = copy_bar(!json);
            tokio::pin!(call);
            let round = loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if let Ok(d) = client.call::<DrDetail>("GET", &format!("/v1/dr/{server}"), None).await {
                            show_copy(&bar, d.copy);
                        }
                    }
                }
            };
            bar.finish_and_clear();
            let round = round?;
            if json {
                println!("{}", serde_json::to_string(&round).expect("json"));
            } else {
                println!(
                    "{server}: recovery point {}: {} of {} data blocks sent ({:.1} MiB) in {:.1} s; {:.1} of {:.1} MiB read to find them ({})",
                    round.at,
                    round.blocks_sent,
                    round.blocks,
                    round.bytes_sent as f64 / 1048576.0,
                    round.took_s,
                    round.scanned_bytes as f64 / 1048576.0,
                    round.allocated_bytes as f64 / 1048576.0,
                    round.scans.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
            }
        }
        DrCmd::Status {
            server: Some(server),
            json,
        } => {
            let d: DrDetail = client.call("GET", &format!("/v1/dr/{server}"), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d).expect("json"));
            } else {
                print!("{}", table(std::slice::from_ref(&d.view)));
                for e in &d.events {
                    println!("{} {:<8} {}", e.at, e.what, e.message);
                }
            }
        }
        DrCmd::Status { server: None, json } => {
            let all: Vec<DrView> = client.call("GET", "/v1/dr", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all).expect("json"));
            } else {
                print!("{}", table(&all));
            }
        }
        DrCmd::Unprotect { server, json } => {
            let r: DrRecord = client.call("DELETE", &format!("/v1/dr/{server}"), None).await?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("json"));
            } else {
                println!("{server} is no longer protected; its replica's encrypted disks stay on {}", r.cloud);
            }
        }
        DrCmd::Failover { server, json, no_wait } => follow_operation(client, &server, "failover", json, no_wait).await?,
        DrCmd::Failback { server, json, no_wait } => follow_operation(client, &server, "failback", json, no_wait).await?,
    }
    Ok(())
}

async fn follow_operation(client: &Client, server: &str, what: &str, json: bool, no_wait: bool) -> Result<(), ClientError> {
    let before: DrDetail = client.call("GET", &format!("/v1/dr/{server}"), None).await?;
    let v: DrView = client.call("POST", &format!("/v1/dr/{server}/{what}"), None).await?;
    if no_wait {
        if json {
            println!("{}", serde_json::to_string(&v).expect("json"));
        } else {
            println!("{what} of {server} started; `isthmus dr status` follows it");
        }
        return Ok(());
    }
    // Follow: print the operation's events as they come, until it ends.
    let mut shown = before.events.len();
    let bar = copy_bar(!json);
    let d = loop {
        let d: DrDetail = client.call("GET", &format!("/v1/dr/{server}"), None).await?;
        if !json {
            for e in d.events.iter().skip(shown) {
                bar.println(format!("{} {:<8} {}", &e.at.get(11..19).unwrap_or(""), e.what, e.message));
            }
        }
        shown = d.events.len();
        show_copy(&bar, d.copy);
        let ended = d.view.record.op.as_ref().is_some_and(|o| o.step.is_terminal());
        if ended && !d.view.busy {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&d).expect("json"));
    }
    let op = d.view.record.op.clone().expect("an operation ran");
    if op.step != DrStep::Done {
        return Err(refused(format!(
            "{what} of {server} ended {}: {}; `isthmus dr status` shows where it stands",
            op.step.label(),
            op.failure.unwrap_or_default()
        )));
    }
    if !json {
        println!("{what} of {server} done: {}", state_label(d.view.record.state));
    }
    Ok(())
}

/// Follows a protected server until `done` holds for its detail.
async fn follow_copy(client: &Client, server: &str, show: bool, done: impl Fn(&DrDetail) -> bool) -> Result<DrDetail, ClientError> {
    let bar = copy_bar(show);
    loop {
        let d: DrDetail = client.call("GET", &format!("/v1/dr/{server}"), None).await?;
        show_copy(&bar, d.copy);
        if done(&d) {
            bar.finish_and_clear();
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn copy_bar(show: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if show {
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style);
        }
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

fn show_copy(bar: &indicatif::ProgressBar, copy: Option<(u64, u64)>) {
    if let Some((done, total)) = copy {
        bar.set_length(total);
        bar.set_position(done);
    }
}

fn state_label(s: DrState) -> &'static str {
    match s {
        DrState::Protecting => "protecting",
        DrState::FailingOver => "failing-over",
        DrState::FailedOver => "failed-over",
        DrState::FailingBack => "failing-back",
    }
}

fn point_text(v: &DrView) -> String {
    match (&v.record.last_point, v.point_age_s) {
        (Some(p), Some(age)) => format!(
            "last recovery point {} ({age:.0} s old, RPO {})",
            p.at,
            if v.rpo_met { "met" } else { "MISSED" }
        ),
        _ => "no recovery point yet (RPO MISSED)".into(),
    }
}

fn table(all: &[DrView]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if all.is_empty() {
        out.push_str("no protected server: `isthmus dr protect SERVER --to CLOUD --rpo 15m`\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<16} {:<12} {:>5} {:<13} {:<26} {:>8} {:<6} LAST ROUND",
        "SERVER", "CLOUD", "RPO", "STATE", "LAST POINT", "AGE", "RPO"
    );
    for v in all {
        let r = &v.record;
        let round = r.rounds.last().map_or("-".to_string(), |x| match &x.error {
            Some(e) => format!("FAILED: {e}"),
            None => format!(
                "{}/{} blocks sent, {:.1} MiB",
                x.blocks_sent,
                x.blocks,
                x.bytes_sent as f64 / 1048576.0
            ),
        });
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:>5} {:<13} {:<26} {:>8} {:<6} {round}",
            r.server,
            r.cloud,
            r.rpo.to_string(),
            state_label(r.state),
            r.last_point.as_ref().map_or("-", |p| p.at.as_str()),
            v.point_age_s.map_or("-".to_string(), |a| format!("{a:.0} s")),
            if v.rpo_met { "met" } else { "MISSED" },
        );
        if let Some(op) = &r.op {
            let _ = writeln!(
                out,
                "{:<16} last {:?}: {}{}",
                "",
                op.kind,
                op.step.label(),
                op.failure.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dr::record::RecoveryPoint;

    #[test]
    fn the_view_flattens_the_record_and_round_trips() {
        let mut rec = DrRecord::new("web1", "cloud1", "1h".parse().unwrap());
        rec.last_point = Some(RecoveryPoint {
            at: "2026-11-26T08:00:00.000Z".into(),
            unix_s: 1.0,
            disk_ids: vec!["dr-web1-d0".into()],
            digests: vec!["ab".into()],
            profile: crate::dr::record::test_profile(),
            capture: "x".into(),
        });
        let v = DrView {
            record: rec,
            point_age_s: Some(10.0),
            rpo_met: true,
            busy: false,
        };
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["state"], "protecting");
        assert_eq!(j["rpo"], "1h");
        assert_eq!(j["rpo_met"], true);
        let back: DrView = serde_json::from_value(j).unwrap();
        assert_eq!(back.record, v.record);
        assert!(table(&[back]).contains("protecting"));
    }
}
