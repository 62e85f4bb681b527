//! The node's control API over real TLS on 127.0.0.1, with the test playing
//! the appliance: pin the bootstrap fingerprint, enrol with an rcgen CA, then
//! talk mutual TLS. Guests are not started here (that needs root, QEMU and
//! TAPs: the lab tests do it end to end).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use csc::pki::PinnedServerCert;
use csc::{Node, NodeConfig};
use proto::api::{ApiError, EnrollBegin, EnrollCsr, EnrollDone, EnrollFinish, NodeInfo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use reqwest::StatusCode;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const TOKEN: &str = "test-token-0123456789abcdef";

struct TestNode {
    _dir: tempfile::TempDir,
    state: PathBuf,
    token_file: PathBuf,
    addr: SocketAddr,
    fingerprint: String,
    server: tokio::task::JoinHandle<()>,
}

impl TestNode {
    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

fn config(state: &Path, token_file: Option<PathBuf>) -> NodeConfig {
    NodeConfig {
        state_dir: state.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bridge_listen: "127.0.0.1:0".parse().unwrap(),
        extra_names: vec![],
        token_file,
        probe_kernel: None,
        probe_initrd: None,
    }
}

async fn serve(node: Arc<Node>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = csc::server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        csc::server::serve(listener, node, std::future::pending()).await.unwrap();
    });
    (addr, server)
}

async fn start_node() -> TestNode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let node = Node::open(config(&state, Some(token_file.clone()))).await.unwrap();
    assert!(!node.is_enrolled());
    let fingerprint = node.bootstrap_fingerprint().to_string();
    let (addr, server) = serve(node).await;
    TestNode {
        _dir: dir,
        state,
        token_file,
        addr,
        fingerprint,
        server,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client(cfg: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The appliance before enrolment: pins the node's bootstrap fingerprint.
fn pinned_client(fingerprint: &str) -> reqwest::Client {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(
            format!("sha256:{fingerprint}").parse().expect("fingerprint"),
        )))
        .with_no_client_auth();
    client(cfg)
}

/// A client verifying the node against `ca`, presenting `identity` if given.
fn ca_client(ca: &Ca, identity: Option<(&str, &KeyPair)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        None => b.with_no_client_auth(),
        Some((pem, key)) => {
            let chain = vec![csc::pki::parse_cert_pem("client", pem).unwrap()];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    client(cfg)
}

/// The appliance's CA, made with rcgen as the appliance does.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn validity(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(365);
}

fn new_ca(cn: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A clientAuth certificate from `ca` (the appliance's own client identity).
fn client_cert(ca: &Ca, cn: &str) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p);
    (p.signed_by(&key, &ca.cert, &ca.key).unwrap().pem(), key)
}

fn sign_csr(ca: &Ca, csr_pem: &str) -> String {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut csr.params);
    csr.signed_by(&ca.cert, &ca.key).unwrap().pem()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn api_error(r: reqwest::Response) -> ApiError {
    r.json::<ApiError>().await.expect("ApiError body")
}

/// Runs both enrolment steps as the appliance; returns the CA and the
/// appliance's client identity.
async fn enrol(node: &TestNode, name: &str) -> (Ca, String, KeyPair) {
    let ca = new_ca("Isthmus test appliance CA");
    let boot = pinned_client(&node.fingerprint);
    let r = boot
        .post(node.url("/v1/enroll/csr"))
        .json(&EnrollBegin {
            token: TOKEN.into(),
            name: name.into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csr: EnrollCsr = r.json().await.unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(&csr.noise_public).unwrap().len(),
        32
    );
    let r = boot
        .post(node.url("/v1/enroll/finish"))
        .json(&EnrollFinish {
            token: TOKEN.into(),
            cert_pem: sign_csr(&ca, &csr.csr_pem),
            ca_pem: ca.cert.pem(),
            appliance_noise_public: b64(&[7u8; 32]),
            bridge_psk: b64(&[9u8; 32]),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let done: EnrollDone = r.json().await.unwrap();
    assert_eq!(done.name, name);
    let (pem, key) = client_cert(&ca, "isthmus-appliance");
    (ca, pem, key)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The server refused the handshake with `alert`. With TLS 1.3 the client
/// finishes its side first, so the alert may reach hyper's connection task
/// only after the request was queued; it then fails as "connection was not
/// ready" (and hyper logs the alert separately).
fn assert_tls_refused(e: &reqwest::Error, alert: &str) {
    let c = error_chain(e);
    assert!(
        c.contains(alert) || c.contains("connection was not ready"),
        "not a TLS refusal: {c}"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_mode_refuses_operational_routes() {
    let node = start_node().await;
    let c = pinned_client(&node.fingerprint);
    let r = c.get(node.url("/v1/node")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e = api_error(r).await;
    assert_eq!(e.error, "node is not enrolled");
    assert!(e.hint.is_some());
    let r = c.put(node.url("/v1/disks/d0")).body("x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The fingerprint file holds what the node pins, and a client pinning
    // another fingerprint does not get through.
    let on_disk = std::fs::read_to_string(node.state.join("bootstrap-fingerprint")).unwrap();
    assert_eq!(on_disk.trim(), node.fingerprint);
    assert!(pinned_client(&"0".repeat(64)).get(node.url("/v1/node")).send().await.is_err());
    node.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_and_nothing_is_stored() {
    let node = start_node().await;
    let c = pinned_client(&node.fingerprint);
    let r = c
        .post(node.url("/v1/enroll/csr"))
        .json(&EnrollBegin {
            token: "wrong-token-0123456789".into(),
            name: "n1".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(api_error(r).await.error, "enrolment token does not match");

    let ca = new_ca("attacker CA");
    let r = c
        .post(node.url("/v1/enroll/finish"))
        .json(&EnrollFinish {
            token: "wrong-token-0123456789".into(),
            cert_pem: ca.cert.pem(),
            ca_pem: ca.cert.pem(),
            appliance_noise_public: b64(&[1u8; 32]),
            bridge_psk: b64(&[2u8; 32]),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for f in ["enrolled.json", "node-cert.pem", "ca.pem", "appliance-noise.pub", "bridge-psk"] {
        assert!(!node.state.join(f).exists(), "{f} was stored");
    }
    assert!(node.token_file.exists(), "token file must stay until enrolment succeeds");

    // Right token, but finish without csr first: refused, nothing stored.
    let r = c
        .post(node.url("/v1/enroll/finish"))
        .json(&EnrollFinish {
            token: TOKEN.into(),
            cert_pem: ca.cert.pem(),
            ca_pem: ca.cert.pem(),
            appliance_noise_public: b64(&[1u8; 32]),
            bridge_psk: b64(&[2u8; 32]),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(!node.state.join("enrolled.json").exists());
    node.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_switches_to_mutual_tls() {
    let node = start_node().await;

    // A certificate that does not match the CSR's key is refused, nothing stored.
    {
        let ca = new_ca("CA");
        let c = pinned_client(&node.fingerprint);
        let r = c
            .post(node.url("/v1/enroll/csr"))
            .json(&EnrollBegin {
                token: TOKEN.into(),
                name: "node-a".into(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (foreign_pem, _) = client_cert(&ca, "someone-else");
        let r = c
            .post(node.url("/v1/enroll/finish"))
            .json(&EnrollFinish {
                token: TOKEN.into(),
                cert_pem: foreign_pem,
                ca_pem: ca.cert.pem(),
                appliance_noise_public: b64(&[7u8; 32]),
                bridge_psk: b64(&[9u8; 32]),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!node.state.join("enrolled.json").exists());
    }

    // A client that connected in bootstrap mode and keeps its connection.
    let early = pinned_client(&node.fingerprint);
    assert_eq!(
        early.get(node.url("/v1/node")).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let (ca, app_pem, app_key) = enrol(&node, "node-a").await;

    // Files and modes.
    assert!(!node.token_file.exists(), "token file must be deleted after enrolment");
    for f in ["node-key.pem", "noise-key", "bridge-psk"] {
        assert_eq!(mode(&node.state.join(f)), 0o600, "{f}");
    }
    for f in ["node-cert.pem", "ca.pem", "appliance-noise.pub", "enrolled.json", "noise-key.pub"] {
        assert!(node.state.join(f).exists(), "{f} missing");
    }
    assert_eq!(mode(&node.state), 0o700);

    // The early bootstrap client never reaches operational routes: its kept
    // connection still gets 403, a new one fails the pin (the certificate changed).
    if let Ok(r) = early.get(node.url("/v1/node")).send().await {
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    // No client certificate: refused during the TLS handshake.
    let anon = ca_client(&ca, None);
    let e = anon
        .get(node.url("/v1/node"))
        .send()
        .await
        .expect_err("request without client cert got through");
    assert_tls_refused(&e, "CertificateRequired");

    // A client certificate from another CA: refused.
    let other = new_ca("other CA");
    let (other_pem, other_key) = client_cert(&other, "isthmus-appliance");
    let impostor = ca_client(&ca, Some((&other_pem, &other_key)));
    let e = impostor
        .get(node.url("/v1/node"))
        .send()
        .await
        .expect_err("foreign client cert got through");
    assert_tls_refused(&e, "UnknownCA");

    // The appliance's client certificate: the server is verified against the
    // CA as 127.0.0.1, and the API answers.
    let app = ca_client(&ca, Some((&app_pem, &app_key)));
    let r = app.get(node.url("/v1/node")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let info: NodeInfo = r.json().await.unwrap();
    assert_eq!(info.name, "node-a");
    assert_eq!(info.accel, proto::api::AccelKind::Tcg);
    assert_eq!(info.accel_reason, "no probe kernel configured");

    // Enrolment routes now say "already enrolled".
    let r = app
        .post(node.url("/v1/enroll/csr"))
        .json(&EnrollBegin {
            token: TOKEN.into(),
            name: "again".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app.get(node.url("/v1/guests/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Restart without a token: still enrolled, same identity.
    drop((early, anon, impostor, app));
    node.server.abort();
    let _ = node.server.await;
    let restarted = open_when_unlocked(&node.state).await;
    assert!(restarted.is_enrolled());
    assert_eq!(restarted.name().as_deref(), Some("node-a"));
    let (addr, server) = serve(restarted).await;
    let app = ca_client(&ca, Some((&app_pem, &app_key)));
    let r = app.get(format!("https://{addr}/v1/node")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.abort();
}

/// The previous server's connection tasks may hold the node (and its state
/// directory lock) for a moment after the server stopped.
async fn open_when_unlocked(state: &Path) -> Arc<Node> {
    for _ in 0..100 {
        match Node::open(config(state, None)).await {
            Ok(n) => return n,
            Err(csc::node::Error::State(csc::state_dir::Error::Locked(_))) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("restart failed: {e}"),
        }
    }
    panic!("state directory stayed locked");
}

/// The plain upload of earlier versions (`PUT /v1/disks/{id}` with raw
/// bytes) would put an unencrypted disk on the provider's storage: it is
/// refused with 410 and writes nothing, whatever the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_disk_upload_is_gone() {
    let node = start_node().await;
    let (ca, app_pem, app_key) = enrol(&node, "node-d").await;
    let app = ca_client(&ca, Some((&app_pem, &app_key)));
    let disks = node.state.join("disks");
    let marker = b"PLAINTEXT-MARKER-".repeat(1024);
    let r = app
        .put(node.url("/v1/disks/web1-disk-0"))
        .header("x-isthmus-sha256", "0".repeat(64))
        .body(marker.clone())
        .send()
        .await
        .unwrap();
    refused(
        r,
        StatusCode::GONE,
        &["web1-disk-0", "unencrypted"],
        &["/v1/disks/web1-disk-0/key", "/v1/transfers/web1-disk-0"],
    )
    .await;
    // Nothing under disks/ but the transfer store's own (empty) directories.
    let mut files = Vec::new();
    let mut dirs = vec![disks.clone()];
    while let Some(d) = dirs.pop() {
        for ent in std::fs::read_dir(&d).unwrap() {
            let p = ent.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let plain: Vec<_> = files
        .iter()
        .filter(|p| std::fs::read(p).unwrap().windows(17).any(|w| w == b"PLAINTEXT-MARKER-"))
        .collect();
    assert!(plain.is_empty(), "plaintext on the node: {plain:?}");
    assert!(!disks.join("web1-disk-0.img").exists() && !disks.join("web1-disk-0.part").exists());
    node.server.abort();
}

/// Asserts `r` is a refusal with `status` whose error and hint contain the given words.
async fn refused(r: reqwest::Response, status: StatusCode, error_has: &[&str], hint_has: &[&str]) {
    assert_eq!(r.status(), status);
    let e = api_error(r).await;
    assert!(error_has.iter().all(|w| e.error.contains(w)), "{}", e.error);
    let hint = e.hint.expect("a hint says what to do");
    assert!(hint_has.iter().all(|w| hint.contains(w)), "{hint}");
}

/// A `POST /v1/guests` body: guest web1 with one IDE disk, no NIC.
fn one_ide_disk_guest(disk_id: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "web1",
        "profile": { "cpus": 1, "memory_mib": 128, "disks": [{ "bus": "ide" }], "nics": [] },
        "disk_ids": [disk_id]
    })
}

/// A stored disk without its key in the node's memory (a restarted node,
/// or an appliance that did not send it) cannot start: 428, naming the disk
/// and the route that sends the key. Checked before any TAP or QEMU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_start_without_disk_key_is_428() {
    let node = start_node().await;
    let (ca, app_pem, app_key) = enrol(&node, "node-k").await;
    let app = ca_client(&ca, Some((&app_pem, &app_key)));
    // Stands in for a finished transfer: the node opens no image before the key check.
    std::fs::write(node.state.join("disks/keyless-d0.img"), b"not opened").unwrap();
    let r = app
        .post(node.url("/v1/guests"))
        .json(&one_ide_disk_guest("keyless-d0"))
        .send()
        .await
        .unwrap();
    refused(
        r,
        StatusCode::PRECONDITION_REQUIRED,
        &["keyless-d0", "key"],
        &["PUT /v1/disks/keyless-d0/key", "appliance"],
    )
    .await;
    let r = app.get(node.url("/v1/guests/web1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a refused start leaves no guest");
    node.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_start_with_missing_disk_is_refused() {
    let node = start_node().await;
    let (ca, app_pem, app_key) = enrol(&node, "node-g").await;
    let app = ca_client(&ca, Some((&app_pem, &app_key)));
    let r = app
        .post(node.url("/v1/guests"))
        .json(&one_ide_disk_guest("never-uploaded"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(api_error(r).await.error.contains("never-uploaded"));
    // Malformed body: an ApiError too.
    let r = app
        .post(node.url("/v1/guests"))
        .json(&serde_json::json!({"name": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    api_error(r).await;
    node.server.abort();
}
