//! `isthmus serve`: wires the store, the CA, the LCG, the web console and the
//! local API together, and resumes moves a crash interrupted.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use netbridge::keys::StaticKeypair;
use proto::api::AccelKind;

use crate::app::App;
use crate::lcg::Lcg;
use crate::moves::effects::RealEffects;
use crate::moves::executor;
use crate::pki::{write_secret, Ca};
use crate::source::LocalQemu;
use crate::store::{Store, CLOUDS, MOVES};

/// How to run the appliance.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Data directory (store, keys, sockets).
    pub data_dir: PathBuf,
    /// LAN interface the LCG bridges (AF_PACKET).
    pub lan: String,
    /// Web console address.
    pub console_listen: SocketAddr,
    /// First UDP address of the LCG's tunnels.
    pub bridge_listen: SocketAddr,
    /// Kernel for the KVM probe of local guests.
    pub probe_kernel: Option<PathBuf>,
    /// Its initrd.
    pub probe_initrd: Option<PathBuf>,
    /// HTTPS address of the peer API of an HA pair of appliances
    /// (`crate::lcg_standby`); none without it.
    pub peer_listen: Option<SocketAddr>,
    /// One-time token file: wait to be paired as a standby LCG.
    pub standby_token_file: Option<PathBuf>,
}

/// Errors starting the appliance.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Filesystem.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// PKI.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Web console.
    #[error("web console: {0}")]
    Console(String),
    /// HA pair (peer API, standby).
    #[error(transparent)]
    Standby(#[from] crate::lcg_standby::StandbyError),
}

fn io<'a>(op: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Loads (or creates) the LCG's static Noise key.
fn noise_key(path: &std::path::Path) -> Result<StaticKeypair, DaemonError> {
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(StaticKeypair::from_private(arr));
        }
        tracing::warn!(
            "{} is damaged; generating a new bridge key (enrolled clouds must be enrolled again)",
            path.display()
        );
    }
    let k = StaticKeypair::generate();
    write_secret(path, &k.private)?;
    Ok(k)
}

/// Drives a move on a background thread unless this process drives it already.
pub fn drive_in_background(app: Arc<App>, rt: tokio::runtime::Handle, id: String) {
    if !app.active.lock().expect("active lock").insert(id.clone()) {
        return;
    }
    std::thread::Builder::new()
        .name(format!("move-{id}"))
        .spawn(move || {
            let mut fx = RealEffects::new(app.clone(), rt);
            match executor::drive(&app.store, &id, &mut fx) {
                Ok(mv) => tracing::info!(id = %id, step = ?mv.step, "move finished"),
                Err(e) => tracing::error!(id = %id, "move stopped: {e}"),
            }
            app.copy_progress.lock().expect("progress lock").remove(&id);
            app.active.lock().expect("active lock").remove(&id);
        })
        .expect("spawn move thread");
}

/// The addresses the console certificate names and the `console:` line shows.
///
/// A specific `listen` address is used as is. For `0.0.0.0` (or `::`) these are the host's
/// interface addresses `ifaces` of a family the socket accepts (IPv4 only for `0.0.0.0`),
/// without loopback unless nothing else is left, and without IPv6 link-local addresses,
/// which a URL can only name with a zone. `listen` itself if `ifaces` gives nothing.
fn console_addresses(listen: IpAddr, ifaces: &[IpAddr]) -> Vec<IpAddr> {
    if !listen.is_unspecified() {
        return vec![listen];
    }
    let usable: Vec<IpAddr> = ifaces
        .iter()
        .copied()
        .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .fold(Vec::new(), |mut v, ip| {
            if !v.contains(&ip) {
                v.push(ip);
            }
            v
        });
    let outside: Vec<IpAddr> = usable.iter().copied().filter(|ip| !ip.is_loopback()).collect();
    match (outside.is_empty(), usable.is_empty()) {
        (false, _) => outside,
        (true, false) => usable,
        (true, true) => vec![listen],
    }
}

/// The host's interface addresses (`getifaddrs(3)`), in the kernel's order; empty if
/// they cannot be read.
fn interface_addresses() -> Vec<IpAddr> {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("cannot list interface addresses for the console certificate: {e}");
            return vec![];
        }
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Runs the appliance until SIGINT/SIGTERM.
pub async fn serve(cfg: ServeConfig) -> Result<(), DaemonError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))?;
    let store_path = dir.join("store.redb");
    let store = Arc::new(Store::open(&store_path)?);
    let _ = std::fs::set_permissions(&store_path, std::fs::Permissions::from_mode(0o600));
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir).map_err(io("create", &pki_dir))?;
    let ca = Ca::load_or_create(&pki_dir)?;
    let key = noise_key(&dir.join("bridge.key"))?;

    let probe = match (&cfg.probe_kernel, &cfg.probe_initrd) {
        (Some(k), i) => {
            let (k, i) = (k.clone(), i.clone());
            tokio::task::spawn_blocking(move || hv::probe_accel(&k, i.as_deref())).await.ok()
        }
        _ => None,
    };
    let (accel, reason) = match probe {
        Some(p) => (p.accel, p.reason),
        None => (AccelKind::Tcg, "no probe kernel given (--probe-kernel); using TCG".to_string()),
    };
    tracing::info!(%accel, "local guests: {reason}");

    let app = Arc::new(App {
        data_dir: dir.clone(),
        store: store.clone(),
        ca,
        lcg: Lcg::new(cfg.lan.clone(), cfg.bridge_listen, key, store.clone()),
        source: LocalQemu {
            run_root: dir.join("sources"),
            accel,
        },
        copy_progress: Mutex::new(Default::default()),
        active: Mutex::new(Default::default()),
    });

    for (_, cloud) in store.list(&CLOUDS)? {
        if let Err(e) = app.lcg.open(&cloud) {
            tracing::error!("{e}");
        }
    }

    crate::lcg_standby::start(app.clone(), cfg.peer_listen, cfg.standby_token_file.clone()).await?;

    if !crate::auth::is_set(&store)? {
        let pw = crate::auth::generate_password();
        crate::auth::set_password(&store, &pw)?;
        // Shown once on the appliance's own console, never logged.
        println!("one-time admin password (user admin): {pw}");
        println!("change it with `isthmus admin set-password` (reads the new one from stdin)");
    }

    let rt = tokio::runtime::Handle::current();
    for (id, mv) in store.list(&MOVES)? {
        if !mv.step.is_terminal() {
            tracing::info!(%id, step = ?mv.step, "resuming move interrupted by a restart");
            drive_in_background(app.clone(), rt.clone(), id);
        }
    }
    // Disaster recovery: replica refresh rounds, interrupted failovers/failbacks.
    crate::dr::ops::spawn_loop(app.clone(), rt.clone());

    // Web console over HTTPS with a certificate from our CA, naming every address it
    // answers on (a wildcard listen answers on all of the host's interfaces).
    let listen_ip = cfg.console_listen.ip();
    let ifaces = if listen_ip.is_unspecified() {
        interface_addresses()
    } else {
        vec![]
    };
    let addrs = console_addresses(listen_ip, &ifaces);
    let mut sans: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    sans.push("localhost".to_string());
    let (cert, ckey) = app
        .ca
        .issue("isthmus console", &sans, &[rcgen::ExtendedKeyUsagePurpose::ServerAuth])?;
    let listener = tokio::net::TcpListener::bind(cfg.console_listen)
        .await
        .map_err(io("bind console", std::path::Path::new("tcp")))?;
    let accel_text = format!("{accel}: {reason}");
    let router = webui::router(Arc::new(crate::console::Console::new(app.clone(), rt.clone(), accel_text)));
    let console = tokio::spawn(async move { webui::serve_https(router, listener, cert.as_bytes(), ckey.as_bytes()).await });
    let urls: Vec<String> = addrs
        .iter()
        .map(|ip| format!("https://{}/", SocketAddr::new(*ip, cfg.console_listen.port())))
        .collect();
    println!("console: {}", urls.join(" "));

    // Local API for the CLI.
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let ul = tokio::net::UnixListener::bind(&sock).map_err(io("bind", &sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &sock))?;
    let api = crate::local_api::router(app.clone(), rt.clone());
    let local = tokio::spawn(async move { axum::serve(ul, api).await });
    println!("ready: local API at {}", sock.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io("signal", &sock))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = console => return Err(DaemonError::Console(format!("{r:?}"))),
        r = local => return Err(DaemonError::Console(format!("local API ended: {r:?}"))),
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::console_addresses;
    use std::net::IpAddr;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn console_addresses_table() {
        let host = ips(&["127.0.0.1", "10.0.0.5", "::1", "fe80::1", "fd00::5", "192.168.1.2", "10.0.0.5"]);
        let table: &[(&str, &[IpAddr], &[&str])] = &[
            // A specific address is kept as is, whatever the interfaces.
            ("10.0.0.5", &host, &["10.0.0.5"]),
            ("192.0.2.1", &[], &["192.0.2.1"]),
            // Wildcards: interface addresses without loopback, link-local or duplicates.
            ("0.0.0.0", &host, &["10.0.0.5", "192.168.1.2"]),
            ("::", &host, &["10.0.0.5", "fd00::5", "192.168.1.2"]),
            // Loopback only when nothing else is there.
            ("0.0.0.0", &ips(&["127.0.0.1", "::1"]), &["127.0.0.1"]),
            ("0.0.0.0", &[], &["0.0.0.0"]),
        ];
        for (listen, ifaces, want) in table {
            let got = console_addresses(listen.parse().unwrap(), ifaces);
            assert_eq!(got, ips(want), "listen {listen}");
        }
    }

    #[test]
    fn interface_addresses_reads_the_host() {
        // Every Linux host has at least loopback.
        assert!(!super::interface_addresses().is_empty());
    }
}
