//! Server descriptions come from admins' files: any bytes must give a
//! description or a clear error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = appliance::inventory::ServerDescription::parse(text, std::path::Path::new("fuzz.toml"));
        let _ = appliance::inventory::ServerDescription::parse(text, std::path::Path::new("fuzz.json"));
    }
});
