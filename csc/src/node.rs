//! One cloud node: its identity, its enrolment state, its TLS configuration
//! (switched from bootstrap to mutual TLS the moment enrolment finishes),
//! its data-plane bridge, disks and guests. [`crate::api`] maps HTTP onto it;
//! [`crate::server`] accepts TLS connections for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use netbridge::keys::StaticKeypair;
use proto::api::{AccelKind, EnrollBegin, EnrollCsr, EnrollDone, EnrollFinish, NodeInfo};
use rcgen::KeyPair;
use rustls::ServerConfig;
use tokio::sync::{watch, Mutex};

use crate::bridge::{self, NodeBridge, PeerIdentity};
use crate::disks::DiskStore;
use crate::enroll::{self, EnrolledRecord, Enrolment, Token};
use crate::guests::Guests;
use crate::pki::{self, SubjectName};
use crate::state_dir::{self, StateDir, PUBLIC_MODE, SECRET_MODE};

/// How the node was started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its keys, certificates, disks and guests.
    pub state_dir: PathBuf,
    /// HTTPS control API address.
    pub listen: SocketAddr,
    /// UDP address of the data-plane bridge.
    pub bridge_listen: SocketAddr,
    /// Extra names (IPs, DNS names) for the node's certificates.
    pub extra_names: Vec<SubjectName>,
    /// File holding the one-time enrolment token (deleted after enrolment).
    pub token_file: Option<PathBuf>,
    /// Kernel for the KVM probe guest; without it guests run under TCG.
    pub probe_kernel: Option<PathBuf>,
    /// Initrd for the KVM probe guest.
    pub probe_initrd: Option<PathBuf>,
}

/// Errors starting the node or enrolling it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] state_dir::Error),
    /// Key, certificate or TLS configuration trouble.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// Enrolment step refused.
    #[error(transparent)]
    Enroll(#[from] enroll::Error),
    /// Data-plane key trouble.
    #[error(transparent)]
    Bridge(#[from] bridge::Error),
    /// Guest list trouble at start.
    #[error(transparent)]
    Guests(#[from] crate::guests::Error),
    /// The certificate the appliance sent cannot serve this node.
    #[error("the certificate from the appliance cannot be used: {0}")]
    IssuedCert(#[source] pki::Error),
    /// A key in the finish request is malformed.
    #[error("{0}")]
    BadKey(#[source] bridge::Error),
}

/// Which TLS configuration a connection was accepted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Bootstrap certificate, no client authentication: enrolment only.
    Bootstrap,
    /// Issued certificate, client certificate from the appliance CA required.
    Enrolled,
}

/// The TLS configuration new connections get; swapped once at enrolment.
#[derive(Debug)]
pub struct TlsSwitch {
    current: RwLock<(Arc<ServerConfig>, TlsMode)>,
}

impl TlsSwitch {
    fn new(cfg: Arc<ServerConfig>, mode: TlsMode) -> Self {
        TlsSwitch {
            current: RwLock::new((cfg, mode)),
        }
    }

    /// The configuration for the next accepted connection.
    pub fn current(&self) -> (Arc<ServerConfig>, TlsMode) {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, cfg: Arc<ServerConfig>, mode: TlsMode) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (cfg, mode);
    }
}

/// Result of the accelerator probe, once it finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accel {
    /// What guests run under.
    pub kind: AccelKind,
    /// Why.
    pub reason: String,
}

/// A running cloud node.
pub struct Node {
    config: NodeConfig,
    state: StateDir,
    names: Vec<SubjectName>,
    key: KeyPair,
    noise: StaticKeypair,
    fingerprint: String,
    tls: TlsSwitch,
    enrolment: Mutex<Enrolment>,
    record: RwLock<Option<EnrolledRecord>>,
    bridge: NodeBridge,
    accel: watch::Receiver<Option<Accel>>,
    disks: DiskStore,
    guests: Guests,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("state_dir", &self.state.root())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Node {
    /// Opens (or on first start creates) the node's state: TLS key, Noise
    /// key, bootstrap certificate. When enrolled: loads the issued
    /// certificate and CA, starts the bridge and re-attaches guests; when
    /// not: reads the enrolment token. Starts the accelerator probe.
    /// Must run inside a Tokio runtime.
    pub async fn open(config: NodeConfig) -> Result<Arc<Node>, Error> {
        let root = std::path::absolute(&config.state_dir).map_err(|e| state_dir::Error::CreateDir(config.state_dir.clone(), e))?;
        let state = StateDir::open(&root)?;
        let names = pki::subject_names(config.listen.ip(), &config.extra_names)?;

        let key = match state.read_optional(&state.node_key())? {
            Some(pem) => pki::parse_key(&String::from_utf8_lossy(&pem))?,
            None => {
                let k = pki::generate_key()?;
                state.write_atomic(&state.node_key(), k.serialize_pem().as_bytes(), SECRET_MODE)?;
                tracing::info!(path = %state.node_key().display(), "generated the node's TLS key");
                k
            }
        };
        let noise = bridge::load_or_create_noise_key(&state)?;

        // The bootstrap certificate is kept so its fingerprint stays the same
        // across restarts before enrolment: the admin may have copied it.
        let boot_pem = match state.read_optional(&state.bootstrap_cert())? {
            Some(pem) => String::from_utf8_lossy(&pem).into_owned(),
            None => {
                let pem = pki::bootstrap_cert(&key, &names)?;
                state.write_atomic(&state.bootstrap_cert(), pem.as_bytes(), PUBLIC_MODE)?;
                pem
            }
        };
        let fingerprint = pki::fingerprint(&pki::parse_cert_pem("the bootstrap certificate", &boot_pem)?);
        state.write_atomic(&state.bootstrap_fingerprint(), format!("{fingerprint}\n").as_bytes(), PUBLIC_MODE)?;

        let record = EnrolledRecord::load(&state)?;
        let disks = DiskStore::new(state.disks_dir());
        if let Err(e) = disks.clean_partial() {
            tracing::warn!(error = %e, "cannot clean partial uploads");
        }
        let guests = Guests::new(state.guests_file(), state.guests_dir());

        let (tls, enrolment, bridge) = match &record {
            Some(r) => {
                if config.token_file.is_some() {
                    tracing::info!(name = %r.name, "node is already enrolled; ignoring --token-file");
                }
                let cert = state.read_string(&state.node_cert())?;
                let ca = state.read_string(&state.ca_cert())?;
                let cfg = pki::enrolled_server_config(&cert, &ca, &key)?;
                let bridge = NodeBridge::down("not started yet");
                if let Err(e) = crate::bridge_members::restore(&state, &bridge, config.bridge_listen) {
                    tracing::error!(error = %e, "further LCG members (standby appliance) not restored");
                }
                let peer = PeerIdentity::load(&state)?;
                if let Err(e) = bridge.start(noise.clone(), &peer, config.bridge_listen) {
                    tracing::error!(error = %e, listen = %config.bridge_listen, "data-plane bridge did not start");
                }
                (TlsSwitch::new(cfg, TlsMode::Enrolled), Enrolment::enrolled(), bridge)
            }
            None => {
                let token_file = config.token_file.clone().ok_or(enroll::Error::NoToken)?;
                let token = Token::read(&token_file)?;
                let cfg = pki::bootstrap_server_config(&boot_pem, &key)?;
                (
                    TlsSwitch::new(cfg, TlsMode::Bootstrap),
                    Enrolment::waiting(token, Some(token_file)),
                    NodeBridge::down("the node is not enrolled yet"),
                )
            }
        };
        if record.is_some() {
            guests.restore(&bridge).await?;
        }

        let accel = start_accel_probe(config.probe_kernel.clone(), config.probe_initrd.clone());
        // The LUKS template costs one `qemu-img create` (≈ 2.4 CPU-s) per
        // host; make it now, not at the first transfer.
        tokio::task::spawn_blocking(|| match hv::qemu::luks_template::warm_up() {
            Ok(path) => tracing::debug!(template = %path.display(), "LUKS template ready"),
            Err(e) => tracing::warn!(error = %e, "LUKS template not made at start; the first disk will make it"),
        });
        Ok(Arc::new(Node {
            config,
            state,
            names,
            key,
            noise,
            fingerprint,
            tls,
            enrolment: Mutex::new(enrolment),
            record: RwLock::new(record),
            bridge,
            accel,
            disks,
            guests,
        }))
    }

    /// Hex SHA-256 of the bootstrap certificate (what the appliance pins).
    pub fn bootstrap_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The node's static Noise public key.
    pub fn noise_public(&self) -> [u8; 32] {
        self.noise.public
    }

    /// True once enrolled.
    pub fn is_enrolled(&self) -> bool {
        self.record.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The enrolled name, if any.
    pub fn name(&self) -> Option<String> {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.name.clone())
    }

    /// The node's state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The TLS configuration switch the server reads per connection.
    pub fn tls(&self) -> &TlsSwitch {
        &self.tls
    }

    /// The data-plane bridge.
    pub fn bridge(&self) -> &NodeBridge {
        &self.bridge
    }

    /// Uploaded disks.
    pub fn disks(&self) -> &DiskStore {
        &self.disks
    }

    /// Guests.
    pub fn guests(&self) -> &Guests {
        &self.guests
    }

    /// The accelerator probe's result, `None` while it runs.
    pub fn accel(&self) -> Option<Accel> {
        self.accel.borrow().clone()
    }

    /// Waits for the accelerator probe.
    pub async fn accel_ready(&self) -> Accel {
        let mut rx = self.accel.clone();
        let accel = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(tcg_fallback),
            Err(_) => tcg_fallback(),
        };
        accel
    }

    /// What `GET /v1/node` answers.
    pub fn info(&self) -> NodeInfo {
        let (accel, accel_reason) = match self.accel() {
            Some(a) => (a.kind, a.reason),
            None => (AccelKind::Tcg, "accelerator probe still running".into()),
        };
        NodeInfo {
            name: self.name().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            accel,
            accel_reason,
        }
    }

    /// Enrolment step 1 (`POST /v1/enroll/csr`).
    pub async fn enroll_csr(&self, req: EnrollBegin) -> Result<EnrollCsr, Error> {
        let mut en = self.enrolment.lock().await;
        if let Err(e) = en.begin(&req) {
            refuse(&e).await;
            return Err(e.into());
        }
        tracing::info!(name = %req.name, "enrolment: CSR requested");
        Ok(EnrollCsr {
            csr_pem: pki::csr_pem(&self.key, &req.name, &self.names)?,
            noise_public: B64.encode(self.noise.public),
            bridge_port: self.config.bridge_listen.port(),
        })
    }

    /// Enrolment step 2 (`POST /v1/enroll/finish`): checks and stores what the
    /// appliance sent, deletes the token file, switches new connections to
    /// mutual TLS and starts the bridge.
    pub async fn enroll_finish(&self, req: EnrollFinish) -> Result<EnrollDone, Error> {
        let mut en = self.enrolment.lock().await;
        let name = match en.check_finish(&req) {
            Ok(n) => n,
            Err(e) => {
                refuse(&e).await;
                return Err(e.into());
            }
        };
        let peer = PeerIdentity {
            public: bridge::decode_key("appliance_noise_public", &req.appliance_noise_public).map_err(Error::BadKey)?,
            psk: bridge::decode_key("bridge_psk", &req.bridge_psk).map_err(Error::BadKey)?,
        };
        pki::verify_issued_cert(&req.cert_pem, &req.ca_pem, &self.names).map_err(Error::IssuedCert)?;
        let cfg = pki::enrolled_server_config(&req.cert_pem, &req.ca_pem, &self.key).map_err(Error::IssuedCert)?;

        let st = &self.state;
        st.write_atomic(&st.node_cert(), req.cert_pem.as_bytes(), PUBLIC_MODE)?;
        st.write_atomic(&st.ca_cert(), req.ca_pem.as_bytes(), PUBLIC_MODE)?;
        peer.store(st)?;
        let record = EnrolledRecord {
            name: name.clone(),
            enrolled_at: now_unix(),
        };
        record.store(st)?;

        if let Some((path, e)) = en.complete() {
            tracing::warn!(path = %path.display(), error = %e, "enrolled, but cannot delete the token file; delete it by hand");
        }
        self.tls.set(cfg, TlsMode::Enrolled);
        *self.record.write().unwrap_or_else(|p| p.into_inner()) = Some(record);
        tracing::info!(%name, "enrolment finished; the node now requires client certificates from the appliance CA");
        if let Err(e) = self.bridge.start(self.noise.clone(), &peer, self.config.bridge_listen) {
            tracing::error!(error = %e, listen = %self.config.bridge_listen, "data-plane bridge did not start");
        }
        Ok(EnrollDone { name })
    }
}

/// Slows down token guessing: a refused token costs the caller (and every
/// other enrolment attempt, which waits on the same lock) half a second.
async fn refuse(e: &enroll::Error) {
    if matches!(e, enroll::Error::BadToken) {
        tracing::warn!("enrolment attempt with a wrong token");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn tcg_fallback() -> Accel {
    Accel {
        kind: AccelKind::Tcg,
        reason: "accelerator probe did not finish".into(),
    }
}

fn start_accel_probe(kernel: Option<PathBuf>, initrd: Option<PathBuf>) -> watch::Receiver<Option<Accel>> {
    let Some(kernel) = kernel else {
        let (_tx, rx) = watch::channel(Some(Accel {
            kind: AccelKind::Tcg,
            reason: "no probe kernel configured".into(),
        }));
        return rx;
    };
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let res = tokio::task::spawn_blocking(move || crate::guests::hv_probe_accel(&kernel, initrd.as_deref())).await;
        let accel = match res {
            Ok((kind, reason)) => Accel { kind, reason },
            Err(e) => Accel {
                kind: AccelKind::Tcg,
                reason: format!("accelerator probe failed: {e}"),
            },
        };
        tracing::info!(accel = %accel.kind, reason = %accel.reason, "accelerator probe finished");
        let _ = tx.send(Some(accel));
    });
    rx
}
