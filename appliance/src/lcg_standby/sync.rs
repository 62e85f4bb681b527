//! The standby's side of the pair: it pulls from its primary every
//! [`super::SYNC_INTERVAL`] what it must be able to carry, keeps it in its
//! store (so a restart, even while the primary is down, reopens every
//! tunnel) and makes its LCG match: one tunnel per cloud to the node's port
//! for this standby, the carried MACs with the addresses to announce on a
//! takeover. Its LCG runs as an HA member, so it forwards nothing while the
//! primary holds the leases.

use std::collections::BTreeSet;
use std::sync::Arc;

use proto::MacAddr;

use super::peer::PeerIdentity;
use super::peer_api::PeerClient;
use super::{blocking, note_sync, PeerState, StandbyError, PRIMARY, PRIMARY_KEY, SYNCED, SYNC_INTERVAL};
use crate::app::App;
use crate::lcg::announce_key;
use crate::pki::{Fingerprint, PkiError};
use crate::store::META;

/// Opens the tunnels last pulled (`isthmus serve` of a paired standby).
pub fn restore(app: &App) -> Result<(), StandbyError> {
    if !app.lcg.ha()? {
        app.lcg.set_ha(true)?;
    }
    for (_, c) in app.store.list(&SYNCED)? {
        if let Err(e) = app.lcg.open_tunnel(&c.tunnel()) {
            tracing::error!("standby: {e}");
        }
    }
    Ok(())
}

/// Makes the LCG carry what the primary's state says (and store it).
pub fn apply(app: &App, state: &PeerState) -> Result<(), StandbyError> {
    let lcg = &app.lcg;
    if !lcg.ha()? {
        lcg.set_ha(true)?;
    }
    // Clouds gone from the primary: close their tunnels.
    for (name, _) in app.store.list(&SYNCED)? {
        if !state.clouds.iter().any(|c| c.cloud == name) {
            lcg.close(&name)?;
            app.store.delete(&SYNCED, &name)?;
            tracing::info!(cloud = %name, "standby: cloud no longer carried by the primary");
        }
    }
    // Releases first: a MAC that moved between clouds is dropped from its
    // old cloud before it is carried via the new one.
    for c in &state.clouds {
        let want: BTreeSet<MacAddr> = c.carried.iter().map(|m| m.mac).collect();
        let gone: Vec<MacAddr> = lcg.carried(&c.cloud)?.difference(&want).copied().collect();
        if !gone.is_empty() {
            lcg.release(&c.cloud, &gone)?;
        }
    }
    for c in &state.clouds {
        for m in &c.carried {
            let v = serde_json::to_value(&m.ips).expect("addresses serialize");
            if app.store.get(&META, &announce_key(&m.mac))?.as_ref() != Some(&v) {
                app.store.put(&META, &announce_key(&m.mac), &v)?;
            }
        }
        if app.store.get(&SYNCED, &c.cloud)?.as_ref() != Some(c) {
            app.store.put(&SYNCED, &c.cloud, c)?;
        }
        let tunnel = c.tunnel();
        match lcg.tunnel(&c.cloud) {
            Some(t) if t == tunnel => {}
            Some(_) => {
                lcg.close(&c.cloud)?;
                lcg.open_tunnel(&tunnel)?;
            }
            None => lcg.open_tunnel(&tunnel)?,
        }
        let have = lcg.carried(&c.cloud)?;
        let new: Vec<MacAddr> = c.carried.iter().map(|m| m.mac).filter(|m| !have.contains(m)).collect();
        if !new.is_empty() {
            lcg.carry(&c.cloud, &new)?;
            tracing::info!(cloud = %c.cloud, macs = ?new, "standby: stands by to carry");
        }
    }
    Ok(())
}

/// The pull loop's client for its primary, kept across rounds (its
/// connection is reused) and made again only when the primary's address or
/// pinned certificate in the store changes.
struct PrimaryClient {
    url: String,
    pin: Fingerprint,
    client: PeerClient,
}

/// One pull from the primary, applied.
async fn pull(app: &Arc<App>, primary: &mut Option<PrimaryClient>) -> Result<(), StandbyError> {
    let Some(p) = app.store.get(&PRIMARY, PRIMARY_KEY)? else {
        *primary = None;
        return Ok(());
    };
    let pin: Fingerprint = p.fingerprint.parse().map_err(PkiError::from)?;
    let client = match primary {
        Some(c) if c.url == p.url && c.pin == pin => &c.client,
        _ => {
            let identity = PeerIdentity::load_or_create(&app.data_dir.join("pki"))?;
            let client = PeerClient::new(&p.url, &identity, pin)?;
            &primary.insert(PrimaryClient { url: p.url, pin, client }).client
        }
    };
    let state = client.state().await?;
    note_sync(PRIMARY_KEY);
    let a = app.clone();
    blocking(move || apply(&a, &state)).await
}

/// The pull loop of a paired standby (one per process).
pub fn spawn(app: Arc<App>) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        tokio::spawn(async move {
            let mut failing = false;
            let mut primary = None;
            loop {
                match pull(&app, &mut primary).await {
                    Ok(()) if failing => {
                        tracing::info!("standby: pulling from the primary again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        // Once per outage: the primary being down is what a
                        // standby is for, not an error to repeat every round.
                        tracing::warn!("standby: cannot pull from the primary ({e}); carrying on with what was pulled last");
                        failing = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(SYNC_INTERVAL).await;
            }
        });
    });
}
