//! `POST /v1/bridge/lcgs` bodies (the further LCG members a node accepts):
//! any bytes give a list or an error, never a panic, and a list that
//! validates has at most `MAX_MEMBERS` members, each with two 32-byte keys.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::lcg_members::{SetLcgMembers, MAX_MEMBERS};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<SetLcgMembers>(data) {
        if csc::bridge_members::validate(&req, [7; 32]).is_ok() {
            assert!(req.members.len() <= MAX_MEMBERS);
            for m in &req.members {
                assert!(csc::bridge::decode_key("k", &m.noise_public).is_ok());
                assert!(csc::bridge::decode_key("p", &m.psk).is_ok());
            }
        }
    }
});
