//! Disk inspection of hostile images: any bytes as a raw disk go through the
//! MBR/GPT readers, the filesystem probes and (where an ext superblock is
//! found) ext4-view and the guest config parsers, never panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use appliance::inspect::{image::MemImage, inspect_image, partition};
    let img = MemImage(data.to_vec());
    let t = partition::read(&img);
    for p in &t.partitions {
        assert!(p.start + p.size <= data.len() as u64);
    }
    let f = inspect_image(std::sync::Arc::new(img), "fuzz.img", &|_| {});
    let _ = serde_json::to_string(&f);
});
