//! Guest network configuration readers, one function per format, each from
//! text to [`NetConfig`] entries that say what they are bound to: ifupdown,
//! netplan, NetworkManager keyfiles, systemd-networkd `.network` and `.link`,
//! udev persistent-net rules, and the Isthmus test server's `net.conf`.

use proto::facts::{Binding, NetConfig};
use proto::MacAddr;

use super::yaml;

fn mac(s: &str) -> Option<MacAddr> {
    s.trim().trim_matches(['"', '\'']).parse().ok()
}

fn entry(source: &str, file: &str) -> NetConfig {
    NetConfig {
        source: source.into(),
        file: file.into(),
        interface: None,
        mac: None,
        binding: Binding::Other,
        addresses: vec![],
        dhcp: false,
    }
}

/// Prefix length of a dotted netmask (`255.255.255.0` → 24).
pub fn mask_prefix(mask: &str) -> Option<u32> {
    let ip: std::net::Ipv4Addr = mask.trim().parse().ok()?;
    let v = u32::from(ip);
    (v.leading_ones() + v.trailing_zeros() == 32).then(|| v.leading_ones())
}

fn is_loopback(name: &str) -> bool {
    name == "lo"
}

/// ifupdown `/etc/network/interfaces` (and its `interfaces.d/` files).
pub fn ifupdown(file: &str, text: &str) -> Vec<NetConfig> {
    let mut out: Vec<NetConfig> = vec![];
    let mut netmask: Option<String> = None;
    let finish = |out: &mut Vec<NetConfig>, netmask: &mut Option<String>| {
        if let (Some(last), Some(m)) = (out.last_mut(), netmask.take()) {
            if let (Some(a), Some(p)) = (last.addresses.last_mut(), mask_prefix(&m)) {
                if !a.contains('/') {
                    *a = format!("{a}/{p}");
                }
            }
        }
    };
    let mut in_iface = false;
    for l in text.lines() {
        let t = l.split('#').next().unwrap_or("").trim();
        let w: Vec<&str> = t.split_whitespace().collect();
        let Some(&k) = w.first() else { continue };
        match k {
            "iface" => {
                finish(&mut out, &mut netmask);
                let name = w.get(1).copied().unwrap_or("");
                if is_loopback(name) || w.get(2) == Some(&"inet6") && out.last().is_some_and(|o| o.interface.as_deref() == Some(name)) {
                    // inet6 stanza of an interface already listed: fold into it.
                    in_iface = !is_loopback(name);
                    continue;
                }
                let mut e = entry("ifupdown", file);
                e.interface = Some(name.to_string());
                e.binding = Binding::InterfaceName;
                e.dhcp = matches!(w.get(3).copied(), Some("dhcp" | "auto"));
                out.push(e);
                in_iface = true;
            }
            "mapping" | "auto" | "allow-hotplug" | "source" | "source-directory" | "allow-auto" => {
                finish(&mut out, &mut netmask);
                in_iface = false;
            }
            "address" if in_iface => {
                if let (Some(e), Some(a)) = (out.last_mut(), w.get(1)) {
                    e.addresses.push(a.to_string());
                }
            }
            "netmask" if in_iface => netmask = w.get(1).map(|s| s.to_string()),
            "hwaddress" if in_iface => {
                let v = if w.get(1) == Some(&"ether") { w.get(2) } else { w.get(1) };
                if let (Some(e), Some(m)) = (out.last_mut(), v.and_then(|v| mac(v))) {
                    e.mac = Some(m);
                }
            }
            _ => {}
        }
    }
    finish(&mut out, &mut netmask);
    out
}

/// netplan YAML (`/etc/netplan/*.yaml`): `ethernets` (and `vlans`, `bonds`, `bridges` addresses).
pub fn netplan(file: &str, text: &str) -> Vec<NetConfig> {
    let doc = yaml::parse(text);
    let Some(net) = doc.get("network") else {
        return vec![];
    };
    let mut out = vec![];
    for section in ["ethernets", "bonds", "bridges", "vlans", "wifis"] {
        let Some(devs) = net.get(section) else { continue };
        for (id, d) in devs.entries() {
            let mut e = entry("netplan", file);
            let m = d.get("match");
            let by_mac = m.and_then(|m| m.get("macaddress")).and_then(|v| v.as_str()).and_then(mac);
            let by_name = m.and_then(|m| m.get("name")).and_then(|v| v.as_str());
            let by_driver = m.and_then(|m| m.get("driver"));
            let set_name = d.get("set-name").and_then(|v| v.as_str());
            if let Some(mm) = by_mac {
                e.mac = Some(mm);
                e.binding = Binding::Mac;
                e.interface = Some(set_name.unwrap_or(id).to_string());
            } else if let Some(n) = by_name {
                e.binding = if n.contains(['*', '?', '[']) {
                    Binding::Other
                } else {
                    Binding::InterfaceName
                };
                e.interface = Some(set_name.unwrap_or(n).to_string());
            } else if by_driver.is_some() {
                e.interface = Some(set_name.unwrap_or(id).to_string());
            } else {
                // No match: the id is the kernel interface name (ethernets), or a virtual device.
                e.interface = Some(id.clone());
                e.binding = if section == "ethernets" {
                    Binding::InterfaceName
                } else {
                    Binding::Other
                };
            }
            if let Some(m) = d.get("macaddress").and_then(|v| v.as_str()).and_then(mac) {
                e.mac.get_or_insert(m);
            }
            let yes = |k: &str| {
                d.get(k)
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| matches!(v, "true" | "yes" | "on"))
            };
            e.dhcp = yes("dhcp4") || yes("dhcp6");
            if let Some(a) = d.get("addresses") {
                e.addresses = a.items().iter().filter_map(|n| n.as_str().map(str::to_string)).collect();
            }
            out.push(e);
        }
    }
    out
}

/// INI sections as (section, key, value), keys lower-cased as both formats are case-insensitive in practice.
fn ini(text: &str) -> Vec<(String, String, String)> {
    let mut sec = String::new();
    let mut out = vec![];
    for l in text.lines() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            sec = s.trim().to_ascii_lowercase();
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            out.push((sec.clone(), k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// NetworkManager keyfile (`/etc/NetworkManager/system-connections/*`).
pub fn networkmanager(file: &str, text: &str) -> Vec<NetConfig> {
    let kv = ini(text);
    let get = |s: &str, k: &str| kv.iter().rev().find(|(a, b, _)| a == s && b == k).map(|x| x.2.as_str());
    let ty = get("connection", "type").unwrap_or("");
    if !matches!(ty, "ethernet" | "802-3-ethernet" | "vlan" | "bond" | "bridge" | "") {
        return vec![];
    }
    let mut e = entry("networkmanager", file);
    e.interface = get("connection", "interface-name").map(str::to_string);
    e.mac = get("ethernet", "mac-address")
        .or_else(|| get("802-3-ethernet", "mac-address"))
        .and_then(mac);
    e.binding = if e.mac.is_some() {
        Binding::Mac
    } else if e.interface.is_some() {
        Binding::InterfaceName
    } else {
        Binding::Other
    };
    e.dhcp = matches!(get("ipv4", "method"), Some("auto") | None) && get("ipv4", "method") != Some("disabled");
    for (s, k, v) in &kv {
        if s == "ipv4" || s == "ipv6" {
            let numbered = k.strip_prefix("address").is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
            if numbered || k == "addresses" {
                for a in v.split(';').filter(|a| !a.trim().is_empty()) {
                    e.addresses.push(a.split(',').next().unwrap_or(a).trim().to_string());
                }
            }
        }
    }
    vec![e]
}

/// systemd-networkd `.network` file.
pub fn networkd(file: &str, text: &str) -> Vec<NetConfig> {
    let kv = ini(text);
    let mut e = entry("systemd-networkd", file);
    let m = |k: &str| kv.iter().find(|(s, kk, _)| s == "match" && kk == k).map(|x| x.2.clone());
    if let Some(v) = m("macaddress").or_else(|| m("permanentmacaddress")) {
        e.mac = v.split_whitespace().next().and_then(mac);
    }
    e.interface = m("name");
    e.binding = if e.mac.is_some() {
        Binding::Mac
    } else if e.interface.as_deref().is_some_and(|n| !n.contains(['*', '?', '[', ' '])) {
        Binding::InterfaceName
    } else {
        Binding::Other
    };
    for (s, k, v) in &kv {
        match (s.as_str(), k.as_str()) {
            ("network", "address") | ("address", "address") => e.addresses.push(v.clone()),
            ("network", "dhcp") => e.dhcp = matches!(v.as_str(), "yes" | "true" | "ipv4" | "ipv6" | "both" | "1"),
            _ => {}
        }
    }
    vec![e]
}

/// systemd `.link` file: renames matched by MAC give an interface its name.
pub fn networkd_link(file: &str, text: &str) -> Vec<NetConfig> {
    let kv = ini(text);
    let get = |s: &str, k: &str| kv.iter().find(|(a, b, _)| a == s && b == k).map(|x| x.2.clone());
    let Some(name) = get("link", "name") else {
        return vec![];
    };
    let mut e = entry("systemd-link", file);
    e.interface = Some(name);
    e.mac = get("match", "macaddress")
        .or_else(|| get("match", "permanentmacaddress"))
        .and_then(|v| v.split_whitespace().next().and_then(mac));
    e.binding = if e.mac.is_some() { Binding::Mac } else { Binding::Other };
    vec![e]
}

/// udev rules naming interfaces (`70-persistent-net.rules`).
pub fn udev_net(file: &str, text: &str) -> Vec<NetConfig> {
    let mut out = vec![];
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('#') || !t.contains("NAME") {
            continue;
        }
        let field = |key: &str| -> Option<String> {
            let i = t.find(key)?;
            let rest = &t[i + key.len()..];
            let rest = rest.trim_start_matches(['=', ':']).trim_start_matches('=');
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        };
        let Some(name) = field("NAME=").or_else(|| field("NAME:=")) else {
            continue;
        };
        let Some(m) = field("ATTR{address}==").and_then(|v| mac(&v)) else {
            continue;
        };
        let mut e = entry("udev", file);
        e.interface = Some(name);
        e.mac = Some(m);
        e.binding = Binding::Mac;
        out.push(e);
    }
    out
}

/// The Isthmus test server's `/etc/isthmus/net.conf` (`MAC=`, `ADDR=`, `GW=`).
pub fn isthmus_netconf(file: &str, text: &str) -> Vec<NetConfig> {
    let mut e = entry("isthmus-netconf", file);
    for l in text.lines() {
        match l.trim().split_once('=') {
            Some(("MAC", v)) => e.mac = mac(v),
            Some(("ADDR", v)) => e.addresses.push(v.trim().to_string()),
            _ => {}
        }
    }
    if e.mac.is_none() && e.addresses.is_empty() {
        return vec![];
    }
    e.binding = if e.mac.is_some() { Binding::Mac } else { Binding::Other };
    vec![e]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifupdown_stanzas() {
        let v = ifupdown(
            "i",
            "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n  address 10.0.0.5\n  netmask 255.255.255.0\n  hwaddress ether 52:54:00:AA:BB:CC\n\
             iface eth0 inet6 auto\nallow-hotplug ens4\niface ens4 inet dhcp\n",
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].interface.as_deref(), Some("eth0"));
        assert_eq!(v[0].addresses, vec!["10.0.0.5/24"]);
        assert_eq!(v[0].mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(v[0].binding, Binding::InterfaceName);
        assert!(v[1].dhcp);
    }

    #[test]
    fn netplan_nm_networkd_udev() {
        let v = netplan(
            "n",
            "network:\n  ethernets:\n    lan:\n      match:\n        macaddress: 52:54:00:00:00:01\n      set-name: lan0\n      addresses: [10.1.0.2/24]\n    ens3:\n      dhcp4: true\n",
        );
        assert_eq!(v[0].binding, Binding::Mac);
        assert_eq!(v[0].interface.as_deref(), Some("lan0"));
        assert_eq!(v[1].binding, Binding::InterfaceName);
        assert!(v[1].dhcp);
        let v = networkmanager(
            "k",
            "[connection]\nid=Wired\ntype=ethernet\ninterface-name=enp1s0\n[ethernet]\nmac-address=52:54:00:00:00:02\n[ipv4]\nmethod=manual\naddress1=10.2.0.2/24,10.2.0.1\n",
        );
        assert_eq!(v[0].binding, Binding::Mac);
        assert_eq!(v[0].addresses, vec!["10.2.0.2/24"]);
        assert!(!v[0].dhcp);
        let v = networkd("n", "[Match]\nName=eth0\n\n[Network]\nAddress=10.3.0.2/24\nDHCP=no\n");
        assert_eq!(v[0].binding, Binding::InterfaceName);
        assert_eq!(v[0].addresses, vec!["10.3.0.2/24"]);
        let v = udev_net(
            "u",
            "SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"52:54:00:00:00:03\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"eth0\"\n",
        );
        assert_eq!(v[0].interface.as_deref(), Some("eth0"));
        assert_eq!(v[0].mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:00:00:03"));
        assert_eq!(mask_prefix("255.255.0.0"), Some(16));
        assert_eq!(mask_prefix("255.0.255.0"), None);
    }
}
