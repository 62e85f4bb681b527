//! Windows registry path: any bytes as a SYSTEM hive (our regf reader, then the
//! host name, adapter and boot-driver walk), and as an NTFS volume (the
//! `ntfs` crate walking to \Windows\System32\config\SYSTEM, bounded read),
//! never panicking; the risks of whatever was read render.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use appliance::inspect::windows::{parse_system, read_system_hive, risks, MAX_HIVE};
    if let Ok(w) = parse_system(data) {
        let _ = risks(&w);
    }
    let img = std::sync::Arc::new(appliance::inspect::image::MemImage(data.to_vec()));
    let mut r = appliance::inspect::windows::RangeReader::new(img, 0, data.len() as u64);
    if let Ok(Some(h)) = read_system_hive(&mut r, data.len() as u64) {
        assert!(h.len() as u64 <= MAX_HIVE);
        if let Ok(w) = parse_system(&h) {
            let _ = risks(&w);
        }
    }
});
