//! Replies the live scan reads off the wire (ARP, ICMP echo in IPv4): any
//! bytes give a parsed packet or `None`, never a panic; a parsed ARP packet
//! re-encodes to the same fields.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use appliance::scan::frame::{arp_request, parse_arp, parse_echo_reply};
    if let Some(a) = parse_arp(data) {
        let again = parse_arp(&arp_request(a.sha, a.spa, a.tpa)).expect("own request parses");
        assert_eq!((again.sha, again.spa, again.tpa), (a.sha, a.spa, a.tpa));
    }
    let _ = parse_echo_reply(data);
});
