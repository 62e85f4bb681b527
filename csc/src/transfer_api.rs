//! Routes of block transfers ([`proto::transfer`]) on the mutual-TLS router.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use proto::transfer::{
    BlocksReceived, DiskKeyGrant, TransferBegin, TransferDone, TransferFinish, TransferPlan, TransferPrepare, TransferStats,
};
use proto::transfer_chunk::{ChunkPlan, TransferChunk};

use crate::api::{ApiJson, Failure};
use crate::blocks;
use crate::disks::DiskId;
use crate::node::Node;

/// Environment variable: `2` makes the node answer manifest chunks as a
/// node before transfer protocol 3 does (404), for A/B runs and tests of
/// the sender's fallback; read at each request.
pub const PROTOCOL_ENV: &str = "ISTHMUS_NODE_TRANSFER_PROTOCOL";

/// A manifest lists up to 64 Ki blocks of ~90 bytes of JSON each.
const MANIFEST_LIMIT: usize = 16 << 20;

impl From<blocks::Error> for Failure {
    fn from(e: blocks::Error) -> Self {
        use blocks::Error as E;
        let status = if e.is_no_space() {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            match &e {
                E::BadManifest(_) | E::Frame(_) | E::Body { .. } | E::NotInManifest { .. } | E::BadKey(_) => StatusCode::BAD_REQUEST,
                E::NoKey(_) => StatusCode::PRECONDITION_REQUIRED,
                E::NotStarted(_) => StatusCode::NOT_FOUND,
                E::Incomplete { .. } | E::ChunkOrder { .. } | E::ManifestIncomplete { .. } => StatusCode::CONFLICT,
                E::DigestMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                E::Io(..) | E::Task(_) | E::Disk(..) => StatusCode::INTERNAL_SERVER_ERROR,
            }
        };
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            msg.push_str(&format!(": {c}"));
            src = c.source();
        }
        let f = Failure::new(status, msg);
        match e {
            E::Incomplete { .. } | E::Frame(_) | E::Body { .. } => {
                f.hint("begin the transfer again; the node asks only for the blocks it lacks")
            }
            E::ChunkOrder { .. } | E::ManifestIncomplete { .. } => f.hint(
                "send the manifest's chunks again in order from block 0 (POST /v1/transfers/{id}/chunks); the node asks only for the blocks it lacks",
            ),
            _ => f,
        }
    }
}

/// The transfer routes (state: the node).
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/transfers", get(stats))
        .route("/v1/transfers/{id}", post(begin).layer(DefaultBodyLimit::max(MANIFEST_LIMIT)))
        .route("/v1/transfers/{id}/prepare", post(prepare))
        .route(
            "/v1/transfers/{id}/chunks",
            post(chunk).layer(DefaultBodyLimit::max(MANIFEST_LIMIT)),
        )
        .route("/v1/transfers/{id}/blocks", put(blocks))
        .route("/v1/transfers/{id}/finish", post(finish))
        .route("/v1/disks/{id}/key", put(grant_key).delete(forget_key))
}

/// `PUT /v1/disks/{id}/key`: keeps the disk's key in memory (never logged).
async fn grant_key(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DiskKeyGrant>,
) -> Result<StatusCode, Failure> {
    let id: DiskId = id.parse()?;
    let bytes = req.key.to_bytes().ok_or_else(|| blocks::Error::BadKey(id.to_string()))?;
    node.disks().blocks().grant_key(&id, bytes)?;
    tracing::info!(disk = %id, "disk key received (kept in memory only)");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/disks/{id}/key`: forgets the disk's key; a running guest keeps running.
async fn forget_key(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<StatusCode, Failure> {
    let id: DiskId = id.parse()?;
    let held = node.disks().blocks().forget_key(&id);
    tracing::info!(disk = %id, held, "disk key forgotten");
    Ok(StatusCode::NO_CONTENT)
}

async fn not_in_use(node: &Node, id: &DiskId) -> Result<(), Failure> {
    if let Some(guest) = node.guests().disk_user(id).await {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            format!("disk {id} backs guest {guest}; it cannot be replaced"),
        )
        .hint(format!("delete the guest first (DELETE /v1/guests/{guest})")));
    }
    Ok(())
}

async fn stats(State(node): State<Arc<Node>>) -> Json<TransferStats> {
    Json(node.disks().blocks().stats())
}

/// `POST /v1/transfers/{id}/prepare`: makes the disk's encrypted image
/// while the sender still hashes; answers once it is ready (204).
async fn prepare(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TransferPrepare>,
) -> Result<StatusCode, Failure> {
    let id: DiskId = id.parse()?;
    not_in_use(&node, &id).await?;
    let store = node.disks().blocks().clone();
    let t0 = std::time::Instant::now();
    let made = tokio::task::spawn_blocking({
        let id = id.clone();
        move || store.prepare(id, req.size)
    })
    .await
    .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(disk = %id, made, secs = t0.elapsed().as_secs_f64(), "transfer prepared");
    Ok(StatusCode::NO_CONTENT)
}

async fn begin(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TransferBegin>,
) -> Result<Json<TransferPlan>, Failure> {
    let id: DiskId = id.parse()?;
    not_in_use(&node, &id).await?;
    let store = node.disks().blocks().clone();
    let plan = tokio::task::spawn_blocking(move || store.begin(id, req))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(disk = %plan.id, need = plan.need.len(), resumed = plan.resumed, deduped = plan.deduped, "transfer begun");
    Ok(Json(plan))
}

/// `POST /v1/transfers/{id}/chunks` (protocol 3): one chunk of the
/// manifest; answers the blocks of its range the node still needs.
async fn chunk(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TransferChunk>,
) -> Result<Json<ChunkPlan>, Failure> {
    if std::env::var(PROTOCOL_ENV).is_ok_and(|v| v.trim() == "2") {
        // As a node before protocol 3 answers: the sender sends the whole manifest.
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("this node takes whole manifests only ({PROTOCOL_ENV}=2)"),
        ));
    }
    let id: DiskId = id.parse()?;
    if req.start == 0 {
        not_in_use(&node, &id).await?;
    }
    let store = node.disks().blocks().clone();
    let (start, end) = (req.start, req.end);
    let plan = tokio::task::spawn_blocking(move || store.chunk(id, req))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::debug!(disk = %plan.id, start, end, need = plan.need.len(), resumed = plan.resumed, deduped = plan.deduped, "manifest chunk");
    Ok(Json(plan))
}

async fn blocks(State(node): State<Arc<Node>>, Path(id): Path<String>, body: Body) -> Result<Json<BlocksReceived>, Failure> {
    let id: DiskId = id.parse()?;
    let store = node.disks().blocks().clone();
    Ok(Json(store.receive(&id, body.into_data_stream()).await?))
}

async fn finish(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TransferFinish>,
) -> Result<Json<TransferDone>, Failure> {
    let id: DiskId = id.parse()?;
    not_in_use(&node, &id).await?;
    let store = node.disks().blocks().clone();
    let done = tokio::task::spawn_blocking(move || store.finish(&id, &req.digest))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(disk = %done.id, blocks = done.blocks, sent = done.blocks_sent, deduped = done.blocks_deduped,
        resumed = done.blocks_resumed, wire_bytes = done.wire_bytes, "transfer finished and verified");
    Ok(Json(done))
}
