//! Control-API messages between the appliance (LMA/LCG) and the cloud node
//! (CSC/CSL). Transport: HTTPS. Enrolment runs over TLS where the appliance
//! pins the cloud node's bootstrap certificate by its SHA-256 fingerprint and
//! the cloud node checks a one-time token; everything after enrolment runs
//! over mutual TLS with certificates issued by the appliance's CA.
//!
//! Routes (all JSON unless noted):
//! - `POST /v1/enroll/csr`    [`EnrollBegin`] → [`EnrollCsr`]        (bootstrap TLS)
//! - `POST /v1/enroll/finish` [`EnrollFinish`] → [`EnrollDone`]      (bootstrap TLS)
//! - `GET  /v1/node`          → [`NodeInfo`]                         (mTLS)
//! - `POST /v1/guests`        [`StartGuest`] → [`GuestInfo`]         (mTLS)
//! - `GET  /v1/guests/{name}` → [`GuestInfo`]                        (mTLS)
//! - `GET  /v1/guests/{name}/stats` → [`GuestStats`]                 (mTLS)
//! - `POST /v1/guests/{name}/stop` → [`GuestInfo`]                   (mTLS)
//! - `DELETE /v1/guests/{name}` → 204                                (mTLS)
//!
//! Errors come back as [`ApiError`] with a non-2xx status.

use serde::{Deserialize, Serialize};

use crate::HardwareProfile;

/// Error body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
    /// What the caller can do about it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// First enrolment step: the appliance proves it holds the one-time token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollBegin {
    /// One-time enrolment token the cloud node was started with.
    pub token: String,
    /// Name the appliance gives this cloud node (becomes its certificate's CN).
    pub name: String,
}

/// The cloud node's answer: a certificate signing request for its mTLS key and
/// its static X25519 key for the data-plane handshake.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollCsr {
    /// PKCS#10 CSR (PEM) for the cloud node's server+client key.
    pub csr_pem: String,
    /// The cloud node's static Noise public key, base64 (32 bytes).
    pub noise_public: String,
    /// UDP port the cloud node's bridge listens on.
    pub bridge_port: u16,
}

/// Second enrolment step: the appliance hands over the issued certificate,
/// its CA and its own data-plane identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollFinish {
    /// Same token as in [`EnrollBegin`].
    pub token: String,
    /// Certificate issued for the CSR (PEM).
    pub cert_pem: String,
    /// The appliance's CA certificate (PEM): the only issuer the cloud node trusts.
    pub ca_pem: String,
    /// The appliance's (LCG's) static Noise public key, base64 (32 bytes).
    pub appliance_noise_public: String,
    /// Pre-shared key mixed into the Noise IKpsk2 handshake, base64 (32 bytes).
    pub bridge_psk: String,
}

/// Enrolment finished; the node now only speaks mutual TLS.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollDone {
    /// The node's name as enrolled.
    pub name: String,
}

/// Virtualisation the node's guests run under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelKind {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::fmt::Display for AccelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        })
    }
}

/// What a cloud node is and can do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Enrolled name.
    pub name: String,
    /// Software version.
    pub version: String,
    /// Accelerator guests use here.
    pub accel: AccelKind,
    /// Why (e.g. "KVM probe guest did not reach the kernel: …").
    pub accel_reason: String,
}

/// Start a moved server under the CSL.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartGuest {
    /// Server name (unique per node).
    pub name: String,
    /// The hardware the server had at its source.
    pub profile: HardwareProfile,
    /// Uploaded disk ids, one per `profile.disks` entry, same order.
    pub disk_ids: Vec<String>,
    /// A rehearsal copy: its TAPs are created but joined to nothing (no
    /// bridge, no uplink), so its frames and its MAC never leave the node.
    #[serde(default)]
    pub isolated: bool,
}

/// Life-cycle state of a guest on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    /// QEMU runs the guest.
    Running,
    /// The guest is paused or stopped in QEMU.
    Paused,
    /// No QEMU process.
    Stopped,
}

/// The XTS code that encrypts a guest's LUKS disks inside its QEMU process
/// (hv's `xts` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XtsImpl {
    /// hv's batched XTS (`libisthmus-xts.so` preloaded): one cipher call per
    /// sector.
    BatchedPreload,
    /// nettle's own XTS: one cipher call per 16-byte block.
    Nettle,
}

impl std::fmt::Display for XtsImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XtsImpl::BatchedPreload => "batched-preload",
            XtsImpl::Nettle => "nettle",
        })
    }
}

/// A guest on a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestInfo {
    /// Server name.
    pub name: String,
    /// State.
    pub state: GuestState,
    /// Accelerator it runs under.
    pub accel: AccelKind,
    /// TAP devices carrying its NICs, in profile order.
    pub taps: Vec<String>,
    /// QEMU's PID while running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Started with [`StartGuest::isolated`]: its TAPs are on no bridge.
    #[serde(default)]
    pub isolated: bool,
    /// What the serial console showed so far (isolated guests only: the
    /// appliance watches a rehearsal copy boot through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleSeen>,
    /// While running: which XTS its QEMU encrypts LUKS disks with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xts: Option<XtsImpl>,
}

/// What a guest's serial console showed so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSeen {
    /// The kernel started user space (its init) according to the console.
    pub user_space: bool,
    /// Bytes the console wrote.
    pub bytes: u64,
    /// Its last non-empty line (control characters removed).
    pub last_line: String,
}

/// A running guest's counters as its node sees them from below the guest
/// (`GET /v1/guests/{name}/stats`, mTLS). Counters only grow while the same
/// QEMU runs; a restarted guest starts again from zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// Server name.
    pub name: String,
    /// Accelerator it runs under.
    pub accel: AccelKind,
    /// VM-wide statistics from QMP `query-stats` (target `vm`), keyed
    /// `provider.name` (`kvm.remote_tlb_flush`); booleans as 0/1,
    /// histograms as the sum of their buckets. QEMU's only provider of VM
    /// and vCPU statistics is KVM: empty under TCG.
    #[serde(default)]
    pub vm: std::collections::BTreeMap<String, u64>,
    /// The same per vCPU (`query-stats` target `vcpu`), in QEMU's vCPU order
    /// (`kvm.exits`, `kvm.halt_exits`, …). Empty under TCG.
    #[serde(default)]
    pub vcpus: Vec<std::collections::BTreeMap<String, u64>>,
    /// Host CPU time of each vCPU thread (`CPU n/KVM` or `CPU n/TCG`), clock
    /// ticks (`/proc/<pid>/task/*/stat`): available under both accelerators.
    #[serde(default)]
    pub vcpu_cpu_ticks: Vec<u64>,
    /// Disk I/O counters (`query-blockstats`), one per device QEMU lists.
    #[serde(default)]
    pub disks: Vec<DiskCounters>,
    /// QEMU's resident memory, KiB.
    pub rss_kib: u64,
    /// QEMU's CPU time (all threads, user + system), clock ticks.
    pub cpu_ticks: u64,
    /// Which XTS its QEMU encrypts LUKS disks with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xts: Option<XtsImpl>,
}

/// I/O counters of one guest disk (QMP `query-blockstats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCounters {
    /// Device (`disk0`) or node name.
    pub device: String,
    /// Bytes read.
    pub rd_bytes: u64,
    /// Bytes written.
    pub wr_bytes: u64,
    /// Read operations.
    pub rd_operations: u64,
    /// Write operations.
    pub wr_operations: u64,
    /// Flushes.
    pub flush_operations: u64,
}
