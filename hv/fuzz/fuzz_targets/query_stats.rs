//! QMP replies to `query-stats` and `query-cpus-fast` (written by QEMU, which
//! runs guest-influenced code: treated as untrusted) parse without panicking,
//! and every counter comes out under a `provider.name` key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (maps, _threads) = hv::stats::parse_reply_bytes(data);
    for m in &maps {
        assert!(m.keys().all(|k| k.contains('.')));
    }
});
