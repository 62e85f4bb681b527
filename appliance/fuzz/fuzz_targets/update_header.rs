//! Update image header and GRUB environment block parsers (appliance/src/update/):
//! any bytes, no panic; what parses, round-trips.
#![no_main]
use appliance::update::grubenv::GrubEnv;
use appliance::update::image::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, off)) = parse_header(data) {
        assert!(off as usize <= data.len());
        let _ = appliance::update::image::check_signature(&h, &[0u8; 32]);
    }
    let mut block = data.to_vec();
    block.resize(appliance::update::grubenv::SIZE, b'#');
    if let Ok(env) = GrubEnv::parse(&block) {
        if let Ok(b) = env.to_block() {
            assert_eq!(GrubEnv::parse(&b).unwrap(), env);
        }
    }
});
