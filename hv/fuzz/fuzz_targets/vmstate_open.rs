//! A suspend state file from the node's disk (damaged or altered) must be
//! refused with an error, never panic, and never yield unauthenticated bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = hv::DiskKey::from_bytes(vec![7u8; 32]).expect("32-byte key");
    // Half the inputs get a valid magic, so the chunk parser is reached.
    let input = if data.first().is_some_and(|b| b % 2 == 0) {
        [&hv::vmstate::MAGIC[..], &data[1..]].concat()
    } else {
        data.to_vec()
    };
    let mut out = Vec::new();
    let r = hv::vmstate::open(&input[..], &mut out, &key);
    // No valid tag can be forged: nothing may be written.
    assert!(r.is_err() || input.len() >= 48, "accepted a file shorter than its header");
    assert!(out.is_empty() || r.is_ok(), "unauthenticated bytes written");
    let _ = hv::vmstate::check_key(&input[..], &key);
});
