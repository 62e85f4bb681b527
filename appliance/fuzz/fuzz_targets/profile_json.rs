//! Hardware profiles arrive in API bodies (appliance → cloud node): parse and
//! validate arbitrary JSON without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<proto::HardwareProfile>(data) {
        let _ = p.validate();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<proto::MacAddr>();
        let _ = s.parse::<proto::PciSlot>();
        let _ = s.parse::<proto::Wwn>();
        if let Ok(serial) = s.parse::<proto::DiskSerial>() {
            assert!(serial.len() <= proto::disk_serial::MAX_SERIAL_BYTES);
            assert!(serial.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }
});
