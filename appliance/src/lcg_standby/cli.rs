//! `isthmus lcg standby add|list|remove` and the local-API routes behind them.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{delete, get};
use axum::{Json, Router};

use super::{AddRequest, StandbySummary};
use crate::app::{App, AppError};
use crate::local_api::{Client, ClientError};

type Shared = State<(Arc<App>, tokio::runtime::Handle)>;

/// The routes under `/v1/lcg/standbys`, merged into the local API.
pub fn routes() -> Router<(Arc<App>, tokio::runtime::Handle)> {
    Router::new()
        .route(
            "/v1/lcg/standbys",
            get(|State((app, _)): Shared| async move { super::list(&app).map(Json).map_err(AppError::from) }).post(
                |State((app, _)): Shared, Json(r): Json<AddRequest>| async move { super::add(app, r).await.map(Json).map_err(AppError::from) },
            ),
        )
        .route(
            "/v1/lcg/standbys/{name}",
            delete(|State((app, _)): Shared, UrlPath(name): UrlPath<String>| async move {
                let warnings = super::remove(app, &name).await.map_err(AppError::from)?;
                Ok::<_, AppError>(Json(serde_json::json!({ "warnings": warnings })))
            }),
        )
}

/// `isthmus lcg standby …`.
#[derive(clap::Subcommand, Debug)]
pub enum StandbyCmd {
    /// Pair a second appliance as this LCG's standby. Start it first with
    /// `isthmus serve … --peer-listen IP:PORT --standby-token-file FILE`
    /// (it prints its `peer fingerprint:`), and run this appliance with
    /// --peer-listen too (the standby pulls from it). The token is read from
    /// stdin unless --token-file is given. Turns this LCG's HA on.
    #[command(
        after_help = "Example:\n  isthmus lcg standby add lcg-b --address 10.0.0.3:9444 --fingerprint sha256:… < token\n  isthmus lcg status   # role primary, lease held per cloud"
    )]
    Add {
        /// Name for the standby.
        name: String,
        /// Its peer API, `IP[:PORT]` (port 9444 when not given).
        #[arg(long)]
        address: String,
        /// Its `peer fingerprint:` line, `sha256:…`.
        #[arg(long)]
        fingerprint: String,
        /// File holding the standby's one-time token (mode 0600); stdin if not given.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List the paired standbys.
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Unpair a standby: every cloud node drops its tunnel.
    Remove {
        /// Standby name.
        name: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn read_token(file: Option<PathBuf>) -> Result<String, ClientError> {
    let raw = match file {
        Some(p) => {
            std::fs::read_to_string(&p).map_err(|e| ClientError::Refused(format!("cannot read the token file {}: {e}", p.display())))?
        }
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| ClientError::Refused(format!("cannot read the token from stdin: {e}")))?;
            s
        }
    };
    let t = raw.trim().to_string();
    if t.is_empty() {
        return Err(ClientError::Refused(
            "no pairing token: give it on stdin or with --token-file (the standby's --standby-token-file)".into(),
        ));
    }
    Ok(t)
}

fn print_table(list: &[StandbySummary]) {
    if list.is_empty() {
        println!("no standby LCG paired (`isthmus lcg standby add`)");
        return;
    }
    println!(
        "{:<16} {:<22} {:<10} {:<24}  fingerprint",
        "standby", "address", "synced", "clouds (node port)"
    );
    for s in list {
        let clouds: Vec<String> = s.clouds.iter().map(|(c, p)| format!("{c}:{p}")).collect();
        let synced = s.last_sync_s.map_or("-".to_string(), |t| format!("{t:.0} s ago"));
        println!(
            "{:<16} {:<22} {:<10} {:<24}  {}",
            s.name,
            s.address,
            synced,
            clouds.join(","),
            s.fingerprint
        );
    }
}

/// Runs `isthmus lcg standby …` against the running appliance.
pub async fn run(client: &Client, cmd: StandbyCmd) -> Result<(), ClientError> {
    match cmd {
        StandbyCmd::Add {
            name,
            address,
            fingerprint,
            token_file,
            json,
        } => {
            let token = read_token(token_file)?;
            let body = serde_json::to_value(AddRequest {
                name,
                address,
                fingerprint,
                token,
            })
            .expect("json");
            let s: StandbySummary = client.call("POST", "/v1/lcg/standbys", Some(body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).expect("json"));
                return Ok(());
            }
            println!(
                "paired {} ({}) as the standby LCG; this LCG now runs as an HA member; {} cloud node(s) accept it",
                s.name,
                s.address,
                s.clouds.len()
            );
            for w in &s.warnings {
                println!("warning: {w} (retried when the standby next pulls)");
            }
        }
        StandbyCmd::List { json } => {
            let list: Vec<StandbySummary> = client.call("GET", "/v1/lcg/standbys", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("json"));
            } else {
                print_table(&list);
            }
        }
        StandbyCmd::Remove { name, json } => {
            let r: serde_json::Value = client.call("DELETE", &format!("/v1/lcg/standbys/{name}"), None).await?;
            if json {
                println!("{r}");
                return Ok(());
            }
            println!("standby {name} removed; the cloud nodes drop its tunnel");
            for w in r["warnings"].as_array().into_iter().flatten() {
                println!("warning: could not tell {w}");
            }
        }
    }
    Ok(())
}
