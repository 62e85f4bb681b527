//! What the HA peer API of an appliance parses from the other appliance:
//! the pairing request (on a standby), the pulled state (on a standby, from
//! its primary), a standby address and a fingerprint typed by the admin.
//! Any bytes give a value or an error, never a panic.
#![no_main]
use appliance::lcg_standby::{AddRequest, PairRequest, PeerState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<PairRequest>(data);
    let _ = serde_json::from_slice::<AddRequest>(data);
    if let Ok(s) = serde_json::from_slice::<PeerState>(data) {
        for c in &s.clouds {
            let _ = c.tunnel();
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = appliance::lcg_standby::parse_address(s);
        let _ = s.parse::<appliance::pki::Fingerprint>();
    }
});
