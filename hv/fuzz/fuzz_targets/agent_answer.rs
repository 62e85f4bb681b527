//! A line from the guest agent's channel (written by the guest: untrusted)
//! is matched against our request id without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hv::agent::is_sync_answer(data, 42);
    let _ = hv::agent::is_sync_answer(data, u64::MAX);
});
