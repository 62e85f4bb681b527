//! Prometheus text exposition of a bridge's [`Stats`] (format 0.0.4:
//! `# HELP`, `# TYPE`, then `name{labels} value` lines).

use std::fmt::Write;

use crate::Stats;

/// Escapes a label value (Prometheus text format: backslash, quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

impl Stats {
    /// The counters as Prometheus text, every series labelled
    /// `peer="<peer>"`. Counters are named `netbridge_*_total`; gauges
    /// (established, handshake age, ports down, alarms) have no suffix.
    /// Drops carry a `reason` label on one family.
    pub fn prometheus(&self, peer: &str) -> String {
        let peer = escape(peer);
        let mut out = String::with_capacity(4096);
        let mut emit = |name: &str, kind: &str, help: &str, rows: &[(Option<&str>, f64)]| {
            let _ = writeln!(out, "# HELP netbridge_{name} {help}");
            let _ = writeln!(out, "# TYPE netbridge_{name} {kind}");
            for (reason, v) in rows {
                match reason {
                    Some(r) => {
                        let _ = writeln!(out, "netbridge_{name}{{peer=\"{peer}\",reason=\"{r}\"}} {v}");
                    }
                    None => {
                        let _ = writeln!(out, "netbridge_{name}{{peer=\"{peer}\"}} {v}");
                    }
                }
            }
        };
        let c = |v: u64| v as f64;
        emit(
            "tx_frames_total",
            "counter",
            "Frames sent into the tunnel.",
            &[(None, c(self.tx_frames))],
        );
        emit(
            "rx_frames_total",
            "counter",
            "Frames received from the tunnel.",
            &[(None, c(self.rx_frames))],
        );
        emit(
            "established",
            "gauge",
            "1 while a session can carry frames.",
            &[(None, if self.established { 1.0 } else { 0.0 })],
        );
        emit(
            "handshakes_total",
            "counter",
            "Handshakes completed.",
            &[(None, c(self.handshakes))],
        );
        emit(
            "handshake_inits_sent_total",
            "counter",
            "Handshake initiations sent.",
            &[(None, c(self.handshake_inits_sent))],
        );
        if let Some(age) = self.last_handshake_age {
            emit(
                "last_handshake_age_seconds",
                "gauge",
                "Seconds since the last completed handshake.",
                &[(None, age.as_secs_f64())],
            );
        }
        emit(
            "keepalives_sent_total",
            "counter",
            "Keepalives sent.",
            &[(None, c(self.keepalives_sent))],
        );
        emit(
            "keepalives_received_total",
            "counter",
            "Keepalives received.",
            &[(None, c(self.keepalives_received))],
        );
        emit(
            "rx_dropped_total",
            "counter",
            "Datagrams from the underlay dropped, by reason.",
            &[
                (Some("replay"), c(self.replay_rejects)),
                (Some("auth_failed"), c(self.rx_auth_failed)),
                (Some("malformed"), c(self.rx_malformed)),
                (Some("unknown_session"), c(self.rx_unknown_session)),
                (Some("handshake_wrong_peer"), c(self.handshake_wrong_peer)),
                (Some("handshake_rejected"), c(self.handshake_rejected)),
                (Some("handshake_rate_limited"), c(self.handshake_rate_limited)),
                (Some("fragment_lost"), c(self.fragments_lost)),
            ],
        );
        emit(
            "frames_dropped_total",
            "counter",
            "Frames not forwarded, by reason.",
            &[
                (Some("no_session"), c(self.tx_dropped_no_session)),
                (Some("too_large"), c(self.tx_dropped_too_large)),
                (Some("lan_filtered"), c(self.lan_filtered)),
                (Some("lan_carried_source"), c(self.lan_carried_source)),
                (Some("egress_filtered"), c(self.egress_filtered)),
                (Some("unswitchable"), c(self.unswitchable)),
                (Some("port_tx_error"), c(self.port_tx_errors)),
                (Some("udp_tx_error"), c(self.udp_tx_errors)),
                (Some("duplicate_mac"), c(self.duplicate_mac_drops)),
                (Some("loop"), c(self.loop_drops)),
                (Some("storm"), c(self.storm_drops)),
            ],
        );
        emit(
            "checksums_completed_total",
            "counter",
            "Frames whose pending TCP/UDP checksum was completed.",
            &[(None, c(self.checksums_completed))],
        );
        emit(
            "superframes_segmented_total",
            "counter",
            "GRO/TSO super-frames cut into segments.",
            &[(None, c(self.superframes_segmented))],
        );
        emit(
            "duplicate_mac_alarms",
            "gauge",
            "Carried MACs currently also seen on the LAN (alarm: not forwarded until cleared).",
            &[(None, self.duplicate_macs.len() as f64)],
        );
        emit(
            "loops_detected_total",
            "counter",
            "Loops detected on the LAN side (our probes or injected frames came back).",
            &[(None, c(self.loops_detected))],
        );
        emit(
            "loop_blocked",
            "gauge",
            "1 while the LAN port is blocked because of a detected loop.",
            &[(None, if self.loop_blocked { 1.0 } else { 0.0 })],
        );
        emit(
            "gratuitous_sent_total",
            "counter",
            "Gratuitous ARP / unsolicited NA frames sent on the LAN.",
            &[(None, c(self.gratuitous_sent))],
        );
        emit(
            "lan_tx_frames_total",
            "counter",
            "Frames put on LAN ports.",
            &[(None, c(self.lan_tx_frames))],
        );
        emit(
            "ha_active",
            "gauge",
            "1 while this side forwards under HA: an LCG holding at least one tunnel's lease, a node with a tunnel whose member may forward.",
            &[(None, if self.ha_active { 1.0 } else { 0.0 })],
        );
        emit(
            "ha_epoch",
            "gauge",
            "Epoch (fencing token) of the HA lease held or last seen.",
            &[(None, c(self.ha_epoch))],
        );
        emit(
            "ha_takeovers_total",
            "counter",
            "Times this LCG took the HA lease over.",
            &[(None, c(self.ha_takeovers))],
        );
        emit(
            "ha_standby_drops_total",
            "counter",
            "Frames not forwarded because this side does not hold the HA lease.",
            &[(None, c(self.ha_standby_drops))],
        );
        emit(
            "ports_down",
            "gauge",
            "Local ports whose interface is missing.",
            &[(None, f64::from(self.ports_down))],
        );
        // One series per peer's tunnel (label `tunnel`: the peer number).
        type PerTunnel = fn(&crate::PeerStatus) -> f64;
        let families: [(&str, &str, &str, PerTunnel); 4] = [
            (
                "tunnel_established",
                "gauge",
                "1 while this tunnel's session can carry frames.",
                |p| {
                    if p.established {
                        1.0
                    } else {
                        0.0
                    }
                },
            ),
            ("tunnel_tx_frames_total", "counter", "Frames sent into this tunnel.", |p| {
                p.tx_frames as f64
            }),
            ("tunnel_rx_frames_total", "counter", "Frames received from this tunnel.", |p| {
                p.rx_frames as f64
            }),
            ("tunnel_rx_dropped_total", "counter", "Datagrams of this tunnel dropped.", |p| {
                p.rx_dropped as f64
            }),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP netbridge_{name} {help}");
            let _ = writeln!(out, "# TYPE netbridge_{name} {kind}");
            for p in &self.peers {
                let _ = writeln!(out, "netbridge_{name}{{peer=\"{peer}\",tunnel=\"{}\"}} {}", p.id, value(p));
            }
        }
        // One series per worker (label `worker`: its number, 0 first).
        let per_worker: [(&str, &str, &[u64]); 4] = [
            (
                "worker_datagrams_total",
                "Datagrams this worker received from the underlay.",
                &self.worker_datagrams,
            ),
            (
                "worker_frames_total",
                "Frames this worker read from local ports.",
                &self.worker_frames,
            ),
            (
                "worker_locks_total",
                "Times this worker took the protocol core's lock.",
                &self.worker_locks,
            ),
            (
                "worker_lock_waits_total",
                "Times this worker waited for the protocol core's lock.",
                &self.worker_lock_waits,
            ),
        ];
        for (name, help, values) in per_worker {
            if values.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP netbridge_{name} {help}");
            let _ = writeln!(out, "# TYPE netbridge_{name} counter");
            for (w, v) in values.iter().enumerate() {
                let _ = writeln!(out, "netbridge_{name}{{peer=\"{peer}\",worker=\"{w}\"}} {v}");
            }
        }
        // Under HA only: each tunnel's lease (one per cloud on an LCG).
        let leases: Vec<(u32, crate::ha::LeaseView)> = self.peers.iter().filter_map(|p| p.ha.map(|l| (p.id, l))).collect();
        if !leases.is_empty() {
            type PerLease = fn(&crate::ha::LeaseView) -> f64;
            let families: [(&str, &str, PerLease); 2] = [
                (
                    "tunnel_ha_lease_held",
                    "1 while this tunnel's HA lease is held (frames cross it).",
                    |l| {
                        if l.held {
                            1.0
                        } else {
                            0.0
                        }
                    },
                ),
                ("tunnel_ha_epoch", "Epoch (fencing token) of this tunnel's HA lease.", |l| {
                    l.epoch as f64
                }),
            ];
            for (name, help, value) in families {
                let _ = writeln!(out, "# HELP netbridge_{name} {help}");
                let _ = writeln!(out, "# TYPE netbridge_{name} gauge");
                for (id, l) in &leases {
                    let _ = writeln!(out, "netbridge_{name}{{peer=\"{peer}\",tunnel=\"{id}\"}} {}", value(l));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_labelled_and_typed() {
        let s = Stats {
            tx_frames: 7,
            replay_rejects: 3,
            established: true,
            peers: vec![crate::PeerStatus {
                id: 2,
                established: true,
                tx_frames: 5,
                ..Default::default()
            }],
            worker_datagrams: vec![10, 32],
            worker_frames: vec![4, 0],
            ..Stats::default()
        };
        let text = s.prometheus("cloud\"1");
        assert!(
            text.contains("netbridge_worker_datagrams_total{peer=\"cloud\\\"1\",worker=\"1\"} 32\n"),
            "{text}"
        );
        assert!(text.contains("netbridge_tx_frames_total{peer=\"cloud\\\"1\"} 7\n"), "{text}");
        assert!(text.contains("netbridge_rx_dropped_total{peer=\"cloud\\\"1\",reason=\"replay\"} 3\n"));
        assert!(text.contains("netbridge_established{peer=\"cloud\\\"1\"} 1\n"));
        assert!(
            text.contains("netbridge_tunnel_tx_frames_total{peer=\"cloud\\\"1\",tunnel=\"2\"} 5\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("netbridge_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
        }
    }

    #[test]
    fn each_tunnels_ha_lease_is_a_series_only_under_ha() {
        let lease = |peer, held| crate::ha::LeaseView {
            peer,
            held,
            epoch: 4,
            takeovers: 1,
        };
        let peer = |id, ha| crate::PeerStatus {
            id,
            ha,
            ..Default::default()
        };
        let off = Stats {
            peers: vec![peer(0, None)],
            ..Stats::default()
        };
        assert!(!off.prometheus("lcg").contains("ha_lease"));
        let on = Stats {
            peers: vec![peer(0, Some(lease(0, true))), peer(1, Some(lease(1, false)))],
            ..Stats::default()
        };
        let text = on.prometheus("lcg");
        assert!(
            text.contains("netbridge_tunnel_ha_lease_held{peer=\"lcg\",tunnel=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("netbridge_tunnel_ha_lease_held{peer=\"lcg\",tunnel=\"1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("netbridge_tunnel_ha_epoch{peer=\"lcg\",tunnel=\"1\"} 4\n"), "{text}");
        assert!(text.contains("# TYPE netbridge_tunnel_ha_epoch gauge"));
    }
}
