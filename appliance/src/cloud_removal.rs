//! Removing an enrolled cloud (`isthmus cloud remove NAME`): refused while
//! a server runs there, a move to or from it is under way or it holds a
//! disaster-recovery replica; then the LCG
//! closes its tunnel (the bridge's peer goes, with the MACs carried via it)
//! and the appliance forgets the cloud. The node keeps its own enrolment:
//! wipe its state directory to enrol it anew.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::delete;
use axum::Router;

use crate::app::{App, AppError};
use crate::model::Location;
use crate::store::{CLOUDS, MOVES, SERVERS};

/// Forgets cloud `name` after checking nothing still needs it.
pub fn remove_cloud(app: &App, name: &str) -> Result<(), AppError> {
    app.cloud(name)?;
    let here = Location::Cloud { name: name.into() };
    if let Some((_, s)) = app.store.list(&SERVERS)?.into_iter().find(|(_, s)| s.location == here) {
        return Err(AppError::Conflict(format!(
            "server {0} runs in {name}; move it elsewhere first (`isthmus move {0} --to …`)",
            s.name
        )));
    }
    let moves = app.store.list(&MOVES)?;
    if let Some((_, m)) = moves
        .iter()
        .find(|(_, m)| !m.step.is_terminal() && (m.to == name || m.from == here))
    {
        return Err(AppError::Conflict(format!(
            "move {} of {} involves {name} and is at step {}; wait until it finishes (`isthmus status`)",
            m.id,
            m.server,
            m.step.label()
        )));
    }
    if let Some(server) = crate::dr::ops::protected_on(app, name)? {
        return Err(AppError::Conflict(format!(
            "{name} holds the disaster-recovery replica of {server}; `isthmus dr unprotect {server}` first"
        )));
    }
    app.lcg.close(name)?;
    app.store.delete(&CLOUDS, name)?;
    tracing::info!(cloud = name, "cloud removed");
    Ok(())
}

type Shared = State<(Arc<App>, tokio::runtime::Handle)>;

/// `DELETE /v1/clouds/{name}`, merged into the local API.
pub fn routes() -> Router<(Arc<App>, tokio::runtime::Handle)> {
    Router::new().route(
        "/v1/clouds/{name}",
        delete(|State((app, _)): Shared, UrlPath(name): UrlPath<String>| async move {
            tokio::task::spawn_blocking(move || remove_cloud(&app, &name))
                .await
                .map_err(|e| AppError::Invalid(e.to_string()))??;
            Ok::<_, AppError>(StatusCode::NO_CONTENT)
        }),
    )
}
