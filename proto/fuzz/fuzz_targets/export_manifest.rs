//! What the appliance parses when it pulls a disk out of a cloud node
//! (`proto::export`): the JSON manifest of `GET /v1/disks/{id}/manifest`
//! with its checks, and what a node parses in `POST /v1/disks/{id}/read`.
//! (The frames that follow are the transfer frames `block_frames` covers.)
//! Any bytes give a manifest or an error, never a panic; an accepted
//! manifest's blocks lie inside the disk, ascending.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::export::{DiskManifest, ReadBlocks};
use proto::transfer::block_count;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<DiskManifest>(data) {
        if let Ok(blocks) = m.checked_blocks() {
            assert_eq!(blocks.len(), m.blocks.len());
            assert!(blocks.keys().all(|&i| i < block_count(m.size)));
            assert!(m.blocks.windows(2).all(|w| w[0].index < w[1].index));
        }
    }
    let _ = serde_json::from_slice::<ReadBlocks>(data);
});
