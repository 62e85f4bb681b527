//! Importer of outside descriptors (ovf): any bytes give servers or a clear
//! error, never a panic, and every result converts to a profile or says why.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use appliance::inventory::{import_bytes, Format};
    if let Ok(imp) = import_bytes(Format::Ovf, data, std::path::Path::new("fuzz.ovf")) {
        for s in &imp.servers {
            let _ = s.to_profile();
            let _ = serde_json::to_string(s);
        }
        let _ = imp.to_table();
    }
});
