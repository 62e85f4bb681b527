//! Guest configuration parsers (fstab, hostname, GRUB, ifupdown, netplan
//! YAML, NetworkManager, systemd-networkd .network/.link, udev rules,
//! net.conf): the first byte picks one, the rest is the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use appliance::inspect::{fstab, netcfg, risks, yaml};
    let Some((&k, rest)) = data.split_first() else { return };
    let t = String::from_utf8_lossy(rest);
    let mut net = vec![];
    let mut tab = vec![];
    let mut roots = vec![];
    match k % 11 {
        0 => tab = fstab::parse_fstab(&t),
        1 => {
            let _ = fstab::parse_hostname(&t);
            let _ = fstab::os_pretty_name(&t);
        }
        2 => roots = fstab::grub_roots(&t),
        3 => net = netcfg::ifupdown("f", &t),
        4 => net = netcfg::netplan("f", &t),
        5 => net = netcfg::networkmanager("f", &t),
        6 => net = netcfg::networkd("f", &t),
        7 => net = netcfg::networkd_link("f", &t),
        8 => net = netcfg::udev_net("f", &t),
        9 => net = netcfg::isthmus_netconf("f", &t),
        _ => {
            let _ = yaml::parse(&t);
        }
    }
    let _ = risks::assess(&tab, &roots, &net);
});
