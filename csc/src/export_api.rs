//! Routes that read a stored disk back ([`proto::export`]): the source side
//! of moves out of this cloud (to the data center or to another cloud).
//!
//! The disk must not be in use by a running guest: its blocks would change
//! while they are read. It is read through its storage daemon with the key
//! the appliance handed over (`PUT /v1/disks/{id}/key`), like every other
//! access to a stored disk ([`crate::blocks`]). Every block travels as a
//! transfer frame (zstd, with its SHA-256), so the reader checks each one
//! and the whole-disk digest.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use hv::storage_daemon::EncryptedDisk;
use proto::api::GuestState;
use proto::export::{DiskManifest, ReadBlocks, MAX_READ_BLOCKS};
use proto::transfer::{block_count, block_len, encode_frame, hex, sha256, BlockEntry, DiskDigest, BLOCK_SIZE};

use crate::api::{ApiJson, Failure};
use crate::disks::DiskId;
use crate::node::Node;

/// Frames queued between the reading thread and the response body.
const QUEUE_FRAMES: usize = 4;

/// The export routes (state: the node).
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/disks/{id}/manifest", get(manifest))
        .route("/v1/disks/{id}/read", post(read))
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The disk, opened read-only, once we know no running guest writes to it.
async fn readable(node: &Arc<Node>, raw: &str) -> Result<(DiskId, EncryptedDisk), Failure> {
    let id: DiskId = raw.parse()?;
    if !node.disks().exists(&id) {
        return Err(Failure::new(StatusCode::NOT_FOUND, format!("no disk {id} on this node")));
    }
    if let Some(guest) = node.guests().disk_user(&id).await {
        let running = node
            .guests()
            .get(&guest)
            .await
            .map(|g| g.state != GuestState::Stopped)
            .unwrap_or(false);
        if running {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                format!("disk {id} backs guest {guest}, which runs; its blocks would change while they are read"),
            )
            .hint(format!("stop the guest first (POST /v1/guests/{guest}/stop)")));
        }
    }
    let store = node.disks().blocks().clone();
    let key_id = id.clone();
    let disk = tokio::task::spawn_blocking(move || store.open_stored(key_id.as_str()))
        .await
        .map_err(internal)??;
    let Some(disk) = disk else {
        return Err(Failure::new(
            StatusCode::PRECONDITION_REQUIRED,
            format!("no key for disk {id} on this node (keys live only in memory)"),
        )
        .hint(format!("send it first: PUT /v1/disks/{id}/key")));
    };
    Ok((id, disk))
}

/// Reads the whole disk: the hash of each non-zero block and the digest.
fn scan(id: &DiskId, disk: &mut EncryptedDisk) -> Result<DiskManifest, Failure> {
    let size = disk.size();
    let mut digest = DiskDigest::new(size);
    let mut blocks = Vec::new();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for index in 0..block_count(size) {
        let b = &mut buf[..block_len(size, index) as usize];
        disk.read_at(b, index * BLOCK_SIZE).map_err(internal)?;
        if b.iter().all(|&x| x == 0) {
            digest.add(index, None);
        } else {
            let h = sha256(b);
            digest.add(index, Some(&h));
            blocks.push(BlockEntry { index, sha256: hex(&h) });
        }
    }
    Ok(DiskManifest {
        id: id.to_string(),
        size,
        block_size: BLOCK_SIZE,
        blocks,
        digest: digest.finish(),
    })
}

async fn manifest(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<Json<DiskManifest>, Failure> {
    let (id, mut disk) = readable(&node, &id).await?;
    let m = tokio::task::spawn_blocking(move || {
        let m = scan(&id, &mut disk);
        if let Err(e) = disk.close() {
            tracing::warn!(disk = %id, error = %e, "closing the storage daemon after a manifest read");
        }
        m
    })
    .await
    .map_err(internal)??;
    tracing::info!(disk = %m.id, blocks = m.blocks.len(), "disk manifest read for a move out of this cloud");
    Ok(Json(m))
}

async fn read(State(node): State<Arc<Node>>, Path(id): Path<String>, ApiJson(req): ApiJson<ReadBlocks>) -> Result<Response, Failure> {
    if req.blocks.len() > MAX_READ_BLOCKS {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{} blocks asked; at most {MAX_READ_BLOCKS} per request", req.blocks.len()),
        ));
    }
    let (id, mut disk) = readable(&node, &id).await?;
    let size = disk.size();
    if let Some(bad) = req.blocks.iter().find(|&&i| i >= block_count(size)) {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!("block {bad} is beyond disk {id}'s {} blocks", block_count(size)),
        ));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE_FRAMES);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for index in req.blocks {
            let b = &mut buf[..block_len(size, index) as usize];
            let item = disk.read_at(b, index * BLOCK_SIZE).map_err(std::io::Error::other).map(|()| {
                let mut out = Vec::with_capacity(b.len() / 2);
                encode_frame(index, b, &sha256(b), &mut out);
                Bytes::from(out)
            });
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
        if let Err(e) = disk.close() {
            tracing::warn!(disk = %id, error = %e, "closing the storage daemon after a block read");
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
