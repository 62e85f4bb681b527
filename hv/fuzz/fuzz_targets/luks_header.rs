//! A LUKS region and qcow2 header read from a file (the cached template, or
//! a disk on the node) must give a value or an error, never a panic; a header
//! that parses must write back to the same bytes and pass its own checks.
#![no_main]

use hv::qemu::luks_header::{Header, HEADER_LEN, MAGIC};
use hv::qemu::luks_template::crypt_header_extension;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crypt_header_extension(data);
    let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow.extend_from_slice(data);
    let _ = crypt_header_extension(&qcow);
    // Half the inputs get a valid magic and version, so the fields are reached.
    let input = if data.first().is_some_and(|b| b % 2 == 0) {
        [&MAGIC[..], &[0, 1], &data[1..]].concat()
    } else {
        data.to_vec()
    };
    for len in [input.len(), 2 << 20, usize::MAX] {
        if let Ok(h) = Header::parse(&input, len) {
            let bytes = h.to_bytes();
            let again = Header::parse(&bytes, len).expect("a header that parsed must parse again");
            // The UUID is free text (lossy UTF-8, cut to 39 bytes): compare the rest.
            let uuid = h.uuid.clone();
            assert_eq!(Header { uuid, ..again }, h);
            assert_eq!(bytes.len(), HEADER_LEN);
        }
    }
});
