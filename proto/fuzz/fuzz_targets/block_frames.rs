//! What a cloud node parses in a block transfer (`proto::transfer`): the
//! frame stream of `PUT /v1/transfers/{id}/blocks`, cut into pieces of any
//! size as TCP delivers it, zstd (`IXB1`) and uncompressed (`IXR1`) frames;
//! each frame's payload and hash check (both decode paths must agree); and
//! the JSON bodies of `POST /v1/transfers/{id}` (manifest, with its checks)
//! and `POST /v1/transfers/{id}/prepare` (size). Any bytes give frames or an
//! error, never a panic; a decoded block is never longer than its frame says.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::transfer::{FrameDecoder, TransferBegin, TransferPrepare, BLOCK_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let mut d = FrameDecoder::new();
    'outer: for piece in rest.chunks(usize::from(cut) + 1) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(u64::from(f.raw_len) <= BLOCK_SIZE);
                    let decoded = f.decode();
                    if let Ok(raw) = &decoded {
                        assert_eq!(raw.len(), f.raw_len as usize);
                    }
                    if f.uncompressed {
                        assert_eq!(f.payload.len(), f.raw_len as usize);
                    }
                    assert_eq!(f.into_block(), decoded);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let _ = d.finish();
    if let Ok(m) = serde_json::from_slice::<TransferBegin>(data) {
        let _ = m.checked_blocks();
    }
    if let Ok(p) = serde_json::from_slice::<TransferPrepare>(data) {
        let _ = p.checked_size();
    }
});
