//! What a cloud node parses in transfer protocol 3 (`proto::transfer_chunk`):
//! the JSON body of `POST /v1/transfers/{id}/chunks` and its checks, and
//! what the appliance parses of the answer (`ChunkPlan`). Any bytes give a
//! chunk or an error, never a panic; a chunk that passes its checks lists
//! only blocks inside its range, ascending, inside the disk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::transfer::block_count;
use proto::transfer_chunk::{ChunkPlan, TransferChunk};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<TransferChunk>(data) {
        if let Ok(k) = c.checked() {
            assert!(k.start <= k.end && k.end <= block_count(k.size));
            assert_eq!(k.blocks.len(), c.blocks.len());
            let mut last = None;
            for (i, _) in &k.blocks {
                assert!(*i >= k.start && *i < k.end);
                assert!(last.is_none_or(|l| l < *i));
                last = Some(*i);
            }
        }
    }
    let _ = serde_json::from_slice::<ChunkPlan>(data);
});
