//! VMDK readers: the text descriptor parser, and the sparse extent header,
//! footer, grain directory and grain tables over any bytes, with plain and
//! deflate-compressed (streamOptimized) grains; reads stay in bounds or fail
//! with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use appliance::inspect::image::MemImage;
    use appliance::inspect::vmdk::{parse_descriptor, SparseExtent};
    let _ = parse_descriptor(&String::from_utf8_lossy(data));
    if let Ok(s) = SparseExtent::open(Box::new(MemImage(data.to_vec()))) {
        let _ = s.embedded_descriptor();
        let size = s.size();
        let mut buf = vec![0u8; 70_000];
        for off in [0, size / 3, size.saturating_sub(buf.len() as u64)] {
            let n = (size - off.min(size)).min(buf.len() as u64) as usize;
            let _ = s.read_at(&mut buf[..n], off);
        }
    }
});
