//! DR protection requests arrive as JSON bodies of the local API with an
//! RPO text in them: parse arbitrary bytes without panicking, and an RPO
//! that parses must print back to an equal one.
#![no_main]
use appliance::dr::api::ProtectRequest;
use appliance::dr::rpo::Rpo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut texts = Vec::new();
    if let Ok(r) = serde_json::from_slice::<ProtectRequest>(data) {
        texts.push(r.rpo);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        texts.push(s.to_string());
    }
    for t in texts {
        if let Ok(rpo) = t.parse::<Rpo>() {
            assert_eq!(rpo.to_string().parse::<Rpo>().ok(), Some(rpo), "{t:?}");
            assert!((1..=7 * 86_400).contains(&rpo.secs()));
        }
    }
});
