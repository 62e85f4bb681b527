//! The appliance's client of a cloud node's control API (HTTPS, mutual TLS).

use std::time::Duration;

use proto::api::{self, EnrollBegin, EnrollCsr, EnrollDone, EnrollFinish, GuestInfo, NodeInfo, StartGuest};

use crate::pki::{Ca, Fingerprint, PinnedServerCert, PkiError};

/// Errors talking to a cloud node.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// TLS or HTTP transport failed (unreachable, certificate refused, …).
    #[error("cannot reach cloud node at {url}: {source}")]
    Transport {
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("cloud node refused {what} ({status}): {}{}", .body.error, .body.hint.as_ref().map(|h| format!(" — {h}")).unwrap_or_default())]
    Refused {
        /// What we asked.
        what: String,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: api::ApiError,
    },
    /// TLS configuration.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The appliance's disk key store failed.
    #[error("{0}")]
    Key(String),
}

/// A client for one node.
#[derive(Clone)]
pub struct CloudClient {
    base: String,
    http: reqwest::Client,
    /// Keys of the disks this client sends and starts (see [`CloudClient::with_disk_keys`]).
    disk_keys: Option<crate::moves::disk_keys::DiskKeys>,
}

fn client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client with a rustls config builds")
}

impl CloudClient {
    /// An mTLS client for an enrolled node.
    pub fn new(base: &str, ca: &Ca) -> Result<CloudClient, CloudError> {
        Ok(CloudClient {
            base: base.trim_end_matches('/').to_string(),
            http: client(ca.mtls_client_config()?),
            disk_keys: None,
        })
    }

    /// Uses `keys` for the disks it sends and starts: a transfer begin first
    /// hands the node the disk's key (made on first use), a guest start the
    /// keys of its disks. Nodes store disks only encrypted and keep keys in
    /// memory only, so a client without keys cannot send or start disks.
    pub fn with_disk_keys(mut self, keys: crate::moves::disk_keys::DiskKeys) -> Self {
        self.disk_keys = Some(keys);
        self
    }

    /// Hands the node the key of disk `id` when this client has one (`create`:
    /// make it if there is none yet).
    async fn hand_key(&self, id: &str, create: bool) -> Result<(), CloudError> {
        let Some(keys) = &self.disk_keys else { return Ok(()) };
        let key = if create { keys.get_or_create(id).map(Some) } else { keys.get(id) };
        match key.map_err(|e| CloudError::Key(e.to_string()))? {
            Some(k) => self.grant_disk_key(id, &k).await,
            None => Ok(()),
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, what: &str, req: reqwest::RequestBuilder) -> Result<T, CloudError> {
        let url = self.base.clone();
        let resp = self.checked(what, req).await?;
        resp.json().await.map_err(|source| CloudError::Transport { url, source })
    }

    /// Sends `req`; a non-2xx answer becomes [`CloudError::Refused`].
    async fn checked(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CloudError> {
        let url = self.base.clone();
        let resp = req.send().await.map_err(|source| CloudError::Transport { url, source })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(api::ApiError { error: text, hint: None });
            return Err(CloudError::Refused {
                what: what.into(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(resp)
    }

    /// `GET /v1/node`.
    pub async fn node(&self) -> Result<NodeInfo, CloudError> {
        self.send("node info", self.http.get(format!("{}/v1/node", self.base))).await
    }

    /// `GET /v1/guests/{name}`; `None` if the node has no such guest.
    pub async fn guest(&self, name: &str) -> Result<Option<GuestInfo>, CloudError> {
        match self
            .send("guest info", self.http.get(format!("{}/v1/guests/{name}", self.base)))
            .await
        {
            Err(CloudError::Refused { status: 404, .. }) => Ok(None),
            r => r.map(Some),
        }
    }

    /// `POST /v1/guests`.
    pub async fn start_guest(&self, req: &StartGuest) -> Result<GuestInfo, CloudError> {
        for id in &req.disk_ids {
            self.hand_key(id, false).await?;
        }
        self.send("start guest", self.http.post(format!("{}/v1/guests", self.base)).json(req))
            .await
    }

    /// `POST /v1/guests/{name}/stop`.
    pub async fn stop_guest(&self, name: &str) -> Result<GuestInfo, CloudError> {
        self.send(
            "stop guest",
            self.http
                .post(format!("{}/v1/guests/{name}/stop", self.base))
                .timeout(Duration::from_secs(90)),
        )
        .await
    }

    /// `DELETE /v1/guests/{name}`: stops QEMU at once and forgets the guest
    /// (its disks stay on the node). A guest the node does not know is fine.
    pub async fn delete_guest(&self, name: &str) -> Result<(), CloudError> {
        let req = self
            .http
            .delete(format!("{}/v1/guests/{name}", self.base))
            .timeout(Duration::from_secs(90));
        match self.checked("delete guest", req).await {
            Ok(_) | Err(CloudError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/disks/{id}/manifest`: the blocks and digest of a stored disk
    /// (for moves out of this cloud).
    pub async fn disk_manifest(&self, id: &str) -> Result<proto::export::DiskManifest, CloudError> {
        // The node reads its encrypted disks only with the key in memory.
        self.hand_key(id, false).await?;
        self.send(
            "disk manifest",
            self.http
                .get(format!("{}/v1/disks/{id}/manifest", self.base))
                .timeout(Duration::from_secs(900)),
        )
        .await
    }

    /// `POST /v1/disks/{id}/read`: the asked blocks as a stream of transfer
    /// frames (decode with [`proto::transfer::FrameDecoder`]).
    pub async fn read_blocks(&self, id: &str, blocks: Vec<u64>) -> Result<reqwest::Response, CloudError> {
        self.hand_key(id, false).await?;
        let req = self
            .http
            .post(format!("{}/v1/disks/{id}/read", self.base))
            .json(&proto::export::ReadBlocks { blocks });
        self.checked("block read", req).await
    }

    /// `POST /v1/transfers/{id}`: opens or resumes a block transfer.
    pub async fn transfer_begin(
        &self,
        id: &str,
        req: &proto::transfer::TransferBegin,
    ) -> Result<proto::transfer::TransferPlan, CloudError> {
        // Every attempt: a node that restarted has forgotten the key.
        self.hand_key(id, true).await?;
        self.send(
            "transfer begin",
            self.http
                .post(format!("{}/v1/transfers/{id}", self.base))
                .timeout(Duration::from_secs(600))
                .json(req),
        )
        .await
    }

    /// `POST /v1/transfers/{id}/chunks` (transfer protocol 3): one chunk of
    /// the manifest; the node answers which of its blocks to send. The
    /// first chunk (block 0) of every attempt hands the node the disk's key
    /// first. A node before protocol 3 answers 404 ([`CloudError::Refused`]).
    pub async fn transfer_chunk(
        &self,
        id: &str,
        req: &proto::transfer_chunk::TransferChunk,
    ) -> Result<proto::transfer_chunk::ChunkPlan, CloudError> {
        if req.start == 0 {
            self.hand_key(id, true).await?;
        }
        self.send(
            "transfer chunk",
            self.http
                .post(format!("{}/v1/transfers/{id}/chunks", self.base))
                .timeout(Duration::from_secs(600))
                .json(req),
        )
        .await
    }

    /// `POST /v1/transfers/{id}/prepare`: the node makes the disk's
    /// encrypted image ahead of the begin (answers once it is ready). A node
    /// without the route answers 404 ([`CloudError::Refused`]).
    pub async fn transfer_prepare(&self, id: &str, size: u64) -> Result<(), CloudError> {
        self.hand_key(id, true).await?;
        let req = self
            .http
            .post(format!("{}/v1/transfers/{id}/prepare", self.base))
            .timeout(Duration::from_secs(600))
            .json(&proto::transfer::TransferPrepare { size });
        self.checked("transfer prepare", req).await.map(drop)
    }

    /// `PUT /v1/disks/{id}/key`: hands the node the key of disk `id` (it
    /// keeps it in memory only); before every transfer and guest start.
    pub async fn grant_disk_key(&self, id: &str, key: &proto::transfer::WireKey) -> Result<(), CloudError> {
        let body = proto::transfer::DiskKeyGrant { key: key.clone() };
        let req = self
            .http
            .put(format!("{}/v1/disks/{id}/key", self.base))
            .timeout(Duration::from_secs(30))
            .json(&body);
        self.checked("disk key", req).await.map(drop)
    }

    /// `DELETE /v1/disks/{id}/key`: the node forgets the key of disk `id`.
    pub async fn forget_disk_key(&self, id: &str) -> Result<(), CloudError> {
        let req = self
            .http
            .delete(format!("{}/v1/disks/{id}/key", self.base))
            .timeout(Duration::from_secs(30));
        self.checked("forget disk key", req).await.map(drop)
    }

    /// `PUT /v1/transfers/{id}/blocks` with a stream of block frames.
    pub async fn transfer_blocks(&self, id: &str, body: reqwest::Body) -> Result<proto::transfer::BlocksReceived, CloudError> {
        self.send(
            "block upload",
            self.http
                .put(format!("{}/v1/transfers/{id}/blocks", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
        )
        .await
    }

    /// `POST /v1/transfers/{id}/finish`: the node verifies the whole disk.
    pub async fn transfer_finish(&self, id: &str, digest: &str) -> Result<proto::transfer::TransferDone, CloudError> {
        let req = proto::transfer::TransferFinish { digest: digest.into() };
        self.send(
            "transfer finish",
            self.http
                .post(format!("{}/v1/transfers/{id}/finish", self.base))
                .timeout(Duration::from_secs(900))
                .json(&req),
        )
        .await
    }

    /// `POST /v1/bridge/lcgs`: the LCG members the node accepts besides
    /// us (standby appliances, `crate::lcg_standby`); the list replaces the
    /// node's. Answers each member's UDP port.
    pub async fn set_lcg_members(&self, req: &proto::lcg_members::SetLcgMembers) -> Result<proto::lcg_members::LcgMemberPorts, CloudError> {
        let req = self
            .http
            .post(format!("{}/v1/bridge/lcgs", self.base))
            .timeout(Duration::from_secs(30))
            .json(req);
        self.send("LCG members", req).await
    }

    /// `GET /v1/transfers`: the node's transfer counters.
    pub async fn transfer_stats(&self) -> Result<proto::transfer::TransferStats, CloudError> {
        self.send("transfer stats", self.http.get(format!("{}/v1/transfers", self.base)))
            .await
    }
}

/// What enrolment learned about a node.
pub struct Enrolled {
    /// Certificate we issued (PEM).
    pub cert_pem: String,
    /// Node's Noise public key.
    pub noise_public: [u8; 32],
    /// Node's bridge UDP port.
    pub bridge_port: u16,
}

/// Enrols a node: pins its bootstrap certificate, proves the token, signs its
/// CSR with our CA and hands over our CA, our Noise key and the bridge PSK.
pub async fn enroll(
    url: &str,
    pin: Fingerprint,
    token: &str,
    name: &str,
    ca: &Ca,
    appliance_noise_public: &[u8; 32],
    psk: &[u8; 32],
) -> Result<Enrolled, CloudError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let c = CloudClient {
        base: url.trim_end_matches('/').to_string(),
        http: client(PinnedServerCert::new(pin).client_config().map_err(PkiError::Tls)?),
        disk_keys: None,
    };
    let begin = EnrollBegin {
        token: token.into(),
        name: name.into(),
    };
    let csr: EnrollCsr = c
        .send("enrolment", c.http.post(format!("{}/v1/enroll/csr", c.base)).json(&begin))
        .await?;
    let noise_public: [u8; 32] = b64
        .decode(&csr.noise_public)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| CloudError::Refused {
            what: "enrolment".into(),
            status: 200,
            body: api::ApiError {
                error: "node sent a malformed Noise public key".into(),
                hint: None,
            },
        })?;
    let cert_pem = ca.sign_node_csr(&csr.csr_pem, name)?;
    let finish = EnrollFinish {
        token: token.into(),
        cert_pem: cert_pem.clone(),
        ca_pem: ca.ca_pem.clone(),
        appliance_noise_public: b64.encode(appliance_noise_public),
        bridge_psk: b64.encode(psk),
    };
    let _: EnrollDone = c
        .send("enrolment", c.http.post(format!("{}/v1/enroll/finish", c.base)).json(&finish))
        .await?;
    Ok(Enrolled {
        cert_pem,
        noise_public,
        bridge_port: csr.bridge_port,
    })
}
