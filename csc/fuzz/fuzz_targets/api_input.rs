//! Everything the cloud node parses from a request: JSON bodies, the disk id
//! in the URL, PEM blobs sent at enrolment. Any bytes give
//! a value or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<proto::api::EnrollBegin>(data);
    let _ = serde_json::from_slice::<proto::api::EnrollFinish>(data);
    if let Ok(g) = serde_json::from_slice::<proto::api::StartGuest>(data) {
        let _ = g.profile.validate();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<csc::disks::DiskId>();
        let _ = s.parse::<csc::pki::SubjectName>();
        let _ = csc::pki::parse_cert_chain_pem("fuzz", s);
        let _ = csc::pki::parse_key(s);
    }
});
