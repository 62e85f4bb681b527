//! The I/O shell: one worker thread that polls the UDP socket and the local
//! ports, feeds the protocol core ([`Tunnel`]) and the switch ([`Switch`]),
//! and sends what they return. Control requests arrive over a channel with a
//! socketpair to wake the poll.
//!
//! Buffers are allocated once per bridge; the per-packet path does not
//! allocate (one copy of each frame into the sealing buffer).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use proto::MacAddr;

use crate::filter::{self, Decision, Filtered, PeerId, PeerVlans, Place, PortId, PortKind, Switch};
use crate::guard::{LanGuard, Verdict};
use crate::ha::{self, Change, Control, Members};
use crate::noise::Identity;
use crate::port::packet::{RecvBatch, RecvInfo, BATCH as RX_BATCH, HEADROOM};
use crate::port::ring::RxRing;
use crate::port::{csum, gso, Flushed, Port, State, PORT_FRAME_MAX};
use crate::tunnel::{Outgoing, Received, Tunnel, TunnelStats};
use crate::udp::Udp;
use crate::wire::MAX_DATAGRAM;
use crate::{announce, BridgeConfig, Error, Ha, PeerSpec, PeerStatus, PortSpec, Role, Stats};

/// Datagrams or frames handled per socket before looking at the others.
const BATCH: usize = 64;
/// Longest sleep in poll: timers have one-second granularity.
const POLL_INTERVAL_MS: u16 = 100;
/// How often port interfaces are checked and gone ports retried.
const PORT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Receive-ring blocks (TPACKET_V3) walked per wake-up of a port (then the
/// tunnel and the other sockets get their turn).
const RING_BLOCKS_PER_WAKE: usize = 4;
/// Receive-ring frames (TPACKET_V2) read per wake-up of a port.
const RING_FRAMES_PER_WAKE: usize = 256;
/// How often counters are published while frames flow.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(20);
/// How long a control request waits for the worker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts bridges.
#[derive(Debug)]
pub struct Bridge;

enum Command {
    Carry(MacAddr, PeerId, Vec<IpAddr>, mpsc::Sender<Result<(), Error>>),
    AddPeer(PeerId, PeerSpec, mpsc::Sender<Result<(), Error>>),
    RemovePeer(PeerId, mpsc::Sender<Result<(), Error>>),
    ClearDuplicate(MacAddr, mpsc::Sender<Result<(), Error>>),
    Uncarry(MacAddr, mpsc::Sender<Result<(), Error>>),
    AddPort(PortSpec, mpsc::Sender<Result<(), Error>>),
    RemovePort(String, mpsc::Sender<Result<(), Error>>),
    Shutdown,
}

#[derive(Default)]
struct Published {
    stats: Stats,
    /// Last handshake of each peer, in the order of `stats.peers`.
    last_handshake: Vec<Option<Instant>>,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    wake: UnixDatagram,
    published: Mutex<Published>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// Control handle of a running bridge; cheap to clone, usable from any
/// thread. Dropping it does not stop the bridge: call [`BridgeHandle::shutdown`].
#[derive(Clone)]
pub struct BridgeHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BridgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeHandle").finish_non_exhaustive()
    }
}

impl Bridge {
    /// Opens the UDP socket and the ports in the calling thread's network
    /// namespace, and starts the worker thread (which inherits it).
    pub fn spawn(cfg: BridgeConfig) -> Result<BridgeHandle, Error> {
        Self::spawn_ha(cfg, Ha::Off)
    }

    /// Like [`Bridge::spawn`], as one side of an HA pair (see [`crate::ha`]):
    /// [`Ha::Member`] on each LCG, [`Ha::Arbiter`] on the cloud node's
    /// bridge for each LCG.
    pub fn spawn_ha(cfg: BridgeConfig, ha: Ha) -> Result<BridgeHandle, Error> {
        let now = Instant::now();
        let first = PeerSpec {
            peer_public: cfg.peer_public,
            psk: cfg.psk,
            listen: cfg.listen,
            role: cfg.role.clone(),
            vlans: PeerVlans::default(),
        };
        let link = Link::open(0, &cfg.local, &first, now)?;
        let mut local = Local::new(now, ha);
        local.switch.add_peer(0, PeerVlans::default());
        local.ha.add_peer(0, first.peer_public);
        for spec in cfg.ports {
            local.add_port(spec)?;
        }
        let (tx, rx) = mpsc::channel();
        let (wake_tx, wake_rx) = UnixDatagram::pair().map_err(Error::Thread)?;
        wake_tx.set_nonblocking(true).map_err(Error::Thread)?;
        wake_rx.set_nonblocking(true).map_err(Error::Thread)?;
        let shared = Arc::new(Shared {
            commands: tx,
            wake: wake_tx,
            published: Mutex::new(Published::default()),
            worker: Mutex::new(None),
        });
        let listen = link.udp.local_addr().unwrap_or(cfg.listen);
        let worker = Worker {
            key: cfg.local.clone(),
            links: vec![link],
            local,
            commands: rx,
            wake: wake_rx,
            shared: Arc::clone(&shared),
            udp_buf: vec![0u8; crate::udp::RECV_BUFFER].into_boxed_slice(),
            rx: RecvBatch::new(HEADROOM + PORT_FRAME_MAX),
            seg_buf: vec![0u8; PORT_FRAME_MAX].into_boxed_slice(),
            scratch: vec![0u8; PORT_FRAME_MAX].into_boxed_slice(),
        };
        worker.publish(now);
        let handle = std::thread::Builder::new()
            .name(format!("netbridge {listen}"))
            .spawn(move || worker.run())
            .map_err(Error::Thread)?;
        if let Ok(mut w) = shared.worker.lock() {
            *w = Some(handle);
        }
        tracing::info!(%listen, role = ?cfg.role, "bridge started");
        Ok(BridgeHandle { shared })
    }
}

impl BridgeHandle {
    fn send(&self, c: Command) -> Result<(), Error> {
        self.shared.commands.send(c).map_err(|_| Error::Stopped)?;
        // A full wake socket already has a wake-up queued.
        let _ = self.shared.wake.send(&[1]);
        Ok(())
    }

    fn request(&self, make: impl FnOnce(mpsc::Sender<Result<(), Error>>) -> Command) -> Result<(), Error> {
        let (tx, rx) = mpsc::channel();
        self.send(make(tx))?;
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Unresponsive(REQUEST_TIMEOUT)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Stopped),
        }
    }

    /// Start carrying frames of this MAC (appliance side: a moved server).
    /// In effect for every frame the bridge reads after this returns.
    pub fn carry_mac(&self, mac: MacAddr) {
        self.carry_mac_with_ips(mac, &[]);
    }

    /// Like [`BridgeHandle::carry_mac`], and announces the MAC on the LAN
    /// ports at once: a gratuitous ARP for each IPv4 address and an
    /// unsolicited neighbour advertisement for each IPv6 address, so the
    /// LAN's switches and neighbours relearn where the server is.
    pub fn carry_mac_with_ips(&self, mac: MacAddr, ips: &[IpAddr]) {
        if let Err(e) = self.carry_mac_via(mac, 0, ips) {
            tracing::warn!(%mac, error = %e, "carry_mac failed");
        }
    }

    /// Carries `mac` via peer `peer` (a static entry: the moved server runs
    /// behind that cloud node; moves it if it was carried via another), and
    /// announces `ips` on the LAN as [`BridgeHandle::carry_mac_with_ips`] does.
    pub fn carry_mac_via(&self, mac: MacAddr, peer: PeerId, ips: &[IpAddr]) -> Result<(), Error> {
        let ips = ips.to_vec();
        self.request(|tx| Command::Carry(mac, peer, ips, tx))
    }

    /// Adds a tunnel to another peer (another cloud node) under number
    /// `id` (the first peer, from [`BridgeConfig`], is 0). It shares this
    /// bridge's static key and ports; its own UDP socket binds `spec.listen`.
    pub fn add_peer(&self, id: PeerId, spec: PeerSpec) -> Result<(), Error> {
        self.request(|tx| Command::AddPeer(id, spec, tx))
    }

    /// Removes peer `id` with the MACs carried via it (its cloud node was
    /// removed), and with it that tunnel's HA lease. Peer 0 may go too.
    pub fn remove_peer(&self, id: PeerId) -> Result<(), Error> {
        self.request(|tx| Command::RemovePeer(id, tx))
    }

    /// Clears the duplicate-MAC alarm of `mac` (see [`Stats::duplicate_macs`])
    /// once the operator made sure only one copy of the server runs; its
    /// frames cross again. `drop_mac` clears the alarm too.
    pub fn clear_duplicate_mac(&self, mac: MacAddr) -> Result<(), Error> {
        self.request(|tx| Command::ClearDuplicate(mac, tx))
    }

    /// Stop carrying frames of this MAC (rollback). In effect for every
    /// frame the bridge reads after this returns.
    pub fn drop_mac(&self, mac: MacAddr) {
        if let Err(e) = self.request(|tx| Command::Uncarry(mac, tx)) {
            tracing::warn!(%mac, error = %e, "drop_mac failed");
        }
    }

    /// Adds a port at run time (cloud side: a new guest's TAP). The socket is
    /// opened by the worker, in the bridge's network namespace.
    pub fn add_port(&self, spec: PortSpec) -> Result<(), Error> {
        self.request(|tx| Command::AddPort(spec, tx))
    }

    /// Removes a port by interface name.
    pub fn remove_port(&self, ifname: &str) -> Result<(), Error> {
        let name = ifname.to_string();
        self.request(|tx| Command::RemovePort(name, tx))
    }

    /// Current counters (updated by the worker at least every 20 ms while
    /// it runs, and before it answers any request).
    pub fn stats(&self) -> Stats {
        match self.shared.published.lock() {
            Ok(p) => {
                let mut s = p.stats.clone();
                let now = Instant::now();
                let age = |t: &Option<Instant>| t.map(|t| now.saturating_duration_since(t));
                s.last_handshake_age = p.last_handshake.first().and_then(age);
                for (st, t) in s.peers.iter_mut().zip(&p.last_handshake) {
                    st.last_handshake_age = age(t);
                }
                s
            }
            Err(_) => Stats::default(),
        }
    }

    /// Stops the worker and closes the socket and ports; waits for it.
    /// Idempotent; other handles then get [`Error::Stopped`].
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        let worker = self.shared.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            if w.thread().id() != std::thread::current().id() && w.join().is_err() {
                tracing::error!("bridge worker panicked");
            }
        }
    }
}

/// Counters kept by the shell (the core keeps its own).
#[derive(Clone, Copy, Debug, Default)]
struct ShellCounters {
    too_large: u64,
    lan_filtered: u64,
    lan_carried_source: u64,
    egress_filtered: u64,
    unswitchable: u64,
    port_tx_errors: u64,
    checksums_completed: u64,
    segmented: u64,
    udp_tx_errors: u64,
    lan_tx_frames: u64,
    ha_standby_drops: u64,
}

impl ShellCounters {
    fn filtered(&mut self, f: Filtered) {
        match f {
            Filtered::Runt | Filtered::NotCarried => self.lan_filtered += 1,
            Filtered::CarriedSourceOnLan => self.lan_carried_source += 1,
            Filtered::SourceNotCarried => self.egress_filtered += 1,
            Filtered::Hairpin | Filtered::NoDestination | Filtered::VlanNotAllowed => self.unswitchable += 1,
        }
    }
}

/// This bridge's part in HA.
enum HaState {
    Off,
    /// An LCG: one lease per tunnel (each cloud node arbitrates its own).
    Member(Members),
    /// A cloud node: the segment's arbiter, and each tunnel's member key.
    Arbiter(ha::SharedArbiter, HashMap<PeerId, ha::MemberId>),
}

impl HaState {
    /// A tunnel was added; `public` is its peer's static key.
    fn add_peer(&mut self, peer: PeerId, public: [u8; 32]) {
        match self {
            HaState::Off => {}
            HaState::Member(m) => m.add(peer),
            HaState::Arbiter(_, keys) => {
                keys.insert(peer, public);
            }
        }
    }

    /// A tunnel went away (a member gives up its lease with it).
    fn remove_peer(&mut self, peer: PeerId) {
        match self {
            HaState::Off => {}
            HaState::Member(m) => m.remove(peer),
            HaState::Arbiter(_, keys) => {
                keys.remove(&peer);
            }
        }
    }

    /// May frames cross tunnel `peer` now? Always without HA; with HA only
    /// while we hold its lease (member) or its member does (arbiter).
    fn may_cross(&self, peer: PeerId, now: Instant) -> bool {
        match self {
            HaState::Off => true,
            HaState::Member(m) => m.holds(peer, now),
            HaState::Arbiter(a, keys) => keys
                .get(&peer)
                .is_some_and(|k| a.lock().map(|a| a.may_forward(k, now)).unwrap_or(false)),
        }
    }

    /// May frames cross any tunnel (may this side touch its ports at all)?
    fn may_cross_any(&self, now: Instant) -> bool {
        match self {
            HaState::Off => true,
            HaState::Member(m) => m.holds_any(now),
            HaState::Arbiter(a, keys) => a.lock().map(|a| keys.values().any(|k| a.may_forward(k, now))).unwrap_or(false),
        }
    }

    /// Tunnel `peer`'s lease as this side sees it; `None` without HA.
    fn lease(&self, peer: PeerId, now: Instant) -> Option<ha::LeaseView> {
        match self {
            HaState::Off => None,
            HaState::Member(m) => m.leases(now).into_iter().find(|l| l.peer == peer),
            HaState::Arbiter(a, _) => Some(ha::LeaseView {
                peer,
                held: self.may_cross(peer, now),
                epoch: a.lock().map(|a| a.epoch()).unwrap_or(0),
                takeovers: 0,
            }),
        }
    }

    /// May frames from local ports be switched at all (to other ports, and
    /// into the tunnels [`HaState::retain_crossable`] keeps)? A member (an
    /// LCG) holding no lease touches nothing; a cloud node always switches
    /// between its own guests, whoever holds the lease.
    fn may_use_ports(&self, now: Instant) -> bool {
        match self {
            HaState::Arbiter(..) => true,
            _ => self.may_cross_any(now),
        }
    }

    /// Drops from `peers` the tunnels that may not be crossed now; true if
    /// any was dropped.
    fn retain_crossable(&self, peers: &mut Vec<(PeerId, u16)>, now: Instant) -> bool {
        if matches!(self, HaState::Off) {
            return false;
        }
        let before = peers.len();
        peers.retain(|(p, _)| self.may_cross(*p, now));
        peers.len() != before
    }
}

/// The local side: ports and the switch between them and the tunnel.
struct Local {
    ha: HaState,
    /// Addresses to announce for each carried MAC on an HA takeover.
    announce: HashMap<MacAddr, Vec<IpAddr>>,
    switch: Switch,
    guard: LanGuard,
    gratuitous_sent: u64,
    ports: Vec<Port>,
    next_id: PortId,
    decision: Decision,
    counters: ShellCounters,
    last_port_check: Option<Instant>,
}

impl Local {
    fn new(now: Instant, ha: Ha) -> Self {
        let mut r = [0u8; 14];
        // Best effort: a fixed nonce still works with one LCG per LAN.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        let mut probe_src = [0u8; 6];
        probe_src.copy_from_slice(&r[8..14]);
        // Locally administered, unicast.
        probe_src[0] = (probe_src[0] | 0x02) & 0xfe;
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&r[..8]);
        let ha = match ha {
            Ha::Off => HaState::Off,
            Ha::Member => HaState::Member(Members::new()),
            Ha::Arbiter { arbiter } => HaState::Arbiter(arbiter, HashMap::new()),
        };
        Local {
            ha,
            announce: HashMap::new(),
            switch: Switch::default(),
            guard: LanGuard::new(nonce, MacAddr(probe_src), now),
            gratuitous_sent: 0,
            ports: Vec::new(),
            next_id: 0,
            decision: Decision::default(),
            counters: ShellCounters::default(),
            last_port_check: None,
        }
    }

    /// May frames cross between the ports and any tunnel now? Always
    /// without HA; with HA while at least one tunnel's lease is held.
    fn may_forward(&self, now: Instant) -> bool {
        self.ha.may_cross_any(now)
    }

    /// Logs the tunnels whose lease lapsed by time (a member whose renewals
    /// went unanswered).
    fn ha_check(&mut self, now: Instant) {
        if let HaState::Member(m) = &mut self.ha {
            for peer in m.lapsed(now) {
                tracing::warn!(
                    peer,
                    "HA lease of this tunnel lapsed: no frame crosses it until it is granted again"
                );
            }
        }
    }

    /// Announces every carried MAC's addresses on the LAN (gratuitous ARP,
    /// unsolicited NA).
    fn announce_macs(&mut self, macs: &[(MacAddr, Vec<IpAddr>)], now: Instant) {
        for (m, ips) in macs {
            for ip in ips {
                let sent = match ip {
                    IpAddr::V4(v4) => self.send_on_lan(&announce::gratuitous_arp(*m, *v4), now),
                    IpAddr::V6(v6) => self.send_on_lan(&announce::unsolicited_na(*m, *v6), now),
                };
                self.gratuitous_sent += sent;
            }
        }
    }

    /// Announces the MACs carried via `peer` (after taking its HA lease over).
    fn announce_via(&mut self, peer: PeerId, now: Instant) {
        let macs: Vec<(MacAddr, Vec<IpAddr>)> = self
            .announce
            .iter()
            .filter(|(m, _)| self.switch.carried_via(m) == Some(peer))
            .map(|(m, ips)| (*m, ips.clone()))
            .collect();
        self.announce_macs(&macs, now);
    }

    fn has_lan_port(&self) -> bool {
        self.ports.iter().any(|p| p.kind() == PortKind::Lan)
    }

    /// Sends a frame we made (probe, announcement) on every open LAN port.
    fn send_on_lan(&mut self, frame: &[u8], now: Instant) -> u64 {
        let mut sent = 0;
        for p in &self.ports {
            if p.kind() != PortKind::Lan {
                continue;
            }
            if let Some(sock) = p.socket() {
                if sock.send(frame).is_ok() {
                    sent += 1;
                }
            }
        }
        self.guard.put_on_lan(frame, now);
        sent
    }

    fn add_port(&mut self, spec: PortSpec) -> Result<(), Error> {
        if self.ports.iter().any(|p| p.ifname() == spec.ifname()) {
            return Err(Error::PortExists(spec.ifname().to_string()));
        }
        let id = self.next_id;
        let port = Port::open(id, spec)?;
        self.next_id += 1;
        self.switch.add_port(id, port.kind());
        tracing::info!(ifname = port.ifname(), kind = ?port.kind(), "port added");
        self.ports.push(port);
        Ok(())
    }

    fn remove_port(&mut self, ifname: &str) -> Result<(), Error> {
        let i = self
            .ports
            .iter()
            .position(|p| p.ifname() == ifname)
            .ok_or_else(|| Error::NoSuchPort(ifname.to_string()))?;
        let port = self.ports.remove(i);
        self.switch.remove_port(port.id);
        tracing::info!(ifname, "port removed");
        Ok(())
    }

    /// Sends `frame` out of the ports in `self.decision`, re-tagged with the
    /// decision's LAN VID if it came tagged otherwise (VLAN map).
    fn send_to_ports(&mut self, frame: &[u8], scratch: &mut [u8], now: Instant) {
        let frame = retag(frame, self.decision.vid, scratch);
        for n in 0..self.decision.ports.len() {
            let id = self.decision.ports[n];
            let Some(k) = self.ports.iter().position(|p| p.id == id) else {
                continue;
            };
            let port = &mut self.ports[k];
            if port.kind() == PortKind::Lan {
                self.guard.put_on_lan(frame, now);
            }
            let done = port.queue(frame);
            self.count_flushed(k, done, frame.len());
        }
    }

    /// Sends what the ports have queued.
    fn flush_ports(&mut self) {
        for k in 0..self.ports.len() {
            let done = self.ports[k].flush();
            self.count_flushed(k, done, 0);
        }
    }

    fn count_flushed(&mut self, k: usize, done: Flushed, len: usize) {
        if done.sent == 0 && done.failed == 0 {
            return;
        }
        let port = &mut self.ports[k];
        if port.kind() == PortKind::Lan {
            self.counters.lan_tx_frames += done.sent as u64;
        }
        self.counters.port_tx_errors += done.failed as u64;
        if done.failed == 0 {
            port.tx_error_logged = false;
        } else if !port.tx_error_logged {
            // A TAP whose QEMU has not attached yet fails every send
            // (ENOBUFS/EIO/ENETDOWN): log once, count all.
            let error = done.error.map(|e| e.to_string()).unwrap_or_else(|| "port closed".into());
            tracing::warn!(ifname = port.ifname(), %error, len, "cannot send frames on port; dropping (not logged again until a send succeeds)");
            port.tx_error_logged = true;
        }
    }

    /// Delivers a frame that came out of the tunnel to peer `from`: to local
    /// ports, and to other peers (between moved servers on two cloud nodes).
    fn deliver_from_tunnel<'l>(
        &mut self,
        from: PeerId,
        others: impl Iterator<Item = &'l mut Link>,
        frame: &[u8],
        scratch: &mut [u8],
        now: Instant,
    ) {
        if ha::is_control(frame) {
            // Not for us (no HA here, or the wrong direction); never switched.
            return;
        }
        if !self.ha.may_cross(from, now) {
            self.counters.ha_standby_drops += 1;
            return;
        }
        let to_lan = self.has_lan_port();
        if self.guard.from_tunnel(frame, to_lan, now) != Verdict::Pass {
            return;
        }
        match self.switch.forward(Place::Peer(from), frame, now, &mut self.decision) {
            Ok(()) => {
                self.send_to_ports(frame, scratch, now);
                // To another cloud only through a tunnel whose lease we hold.
                if self.ha.retain_crossable(&mut self.decision.peers, now) {
                    self.counters.ha_standby_drops += 1;
                }
                if !self.decision.peers.is_empty() {
                    send_to_links(others, &self.decision.peers, frame, scratch, &mut self.counters, now);
                }
            }
            Err(f) => self.counters.filtered(f),
        }
    }

    /// Looks for vanished interfaces and reopens returned ones.
    fn check_ports(&mut self, now: Instant) {
        if self
            .last_port_check
            .is_some_and(|t| now.saturating_duration_since(t) < PORT_CHECK_INTERVAL)
        {
            return;
        }
        self.last_port_check = Some(now);
        for p in &mut self.ports {
            if p.interface_vanished() {
                p.mark_gone(now);
            }
            p.retry(now);
        }
    }

    fn ports_down(&self) -> u32 {
        self.ports.iter().filter(|p| matches!(p.state, State::Gone { .. })).count() as u32
    }
}

/// The tunnel to one peer and its UDP socket.
struct Link {
    id: PeerId,
    tunnel: Tunnel,
    udp: Udp,
    /// A send error was logged (not again until a send succeeds).
    logged: bool,
}

impl Link {
    fn open(id: PeerId, key: &crate::keys::StaticKeypair, spec: &PeerSpec, now: Instant) -> Result<Self, Error> {
        let identity = Identity::new(key.clone(), spec.peer_public, spec.psk)?;
        let udp = Udp::bind(spec.listen)?;
        let initiate_to = match spec.role {
            Role::Initiator { peer } => Some(peer),
            Role::Responder => None,
        };
        let tunnel = Tunnel::new(identity, initiate_to, now, SystemTime::now());
        Ok(Link {
            id,
            tunnel,
            udp,
            logged: false,
        })
    }

    /// Seals `frame` and queues its datagrams (dropped and counted by the
    /// tunnel when there is no session).
    fn send(&mut self, frame: &[u8], counters: &mut ShellCounters, now: Instant) {
        if let Ok(out) = self.tunnel.send_frame(frame, now) {
            transmit(&mut self.udp, &out, counters, &mut self.logged);
        }
    }

    fn flush(&mut self, counters: &mut ShellCounters) {
        flush(&mut self.udp, counters, &mut self.logged);
    }
}

/// The links before and after one link.
type Others<'a> = (&'a mut [Link], &'a mut [Link]);

/// The link at `i`, and the links before and after it.
fn split_one(links: &mut [Link], i: usize) -> Option<(&mut Link, Others<'_>)> {
    if i >= links.len() {
        return None;
    }
    let (before, rest) = links.split_at_mut(i);
    let (me, after) = rest.split_first_mut()?;
    Some((me, (before, after)))
}

/// `frame` with its VLAN tag set to `vid` (copied into `scratch` when it
/// must change; untagged frames are never tagged).
fn retag<'f>(frame: &'f [u8], vid: u16, scratch: &'f mut [u8]) -> &'f [u8] {
    if filter::vid(frame) == vid || frame.len() > scratch.len() {
        return frame;
    }
    let copy = &mut scratch[..frame.len()];
    copy.copy_from_slice(frame);
    if filter::set_vid(copy, vid) {
        copy
    } else {
        frame
    }
}

/// Sends `frame` into the tunnels of `targets` (peer, VID there) among `links`.
fn send_to_links<'l>(
    links: impl Iterator<Item = &'l mut Link>,
    targets: &[(PeerId, u16)],
    frame: &[u8],
    scratch: &mut [u8],
    counters: &mut ShellCounters,
    now: Instant,
) {
    for link in links {
        if let Some(&(_, vid)) = targets.iter().find(|(p, _)| *p == link.id) {
            let f = retag(frame, vid, scratch);
            link.send(f, counters, now);
        }
    }
}

struct Worker {
    /// Our static key (for tunnels added later).
    key: crate::keys::StaticKeypair,
    /// One per peer; peer 0 first.
    links: Vec<Link>,
    local: Local,
    commands: mpsc::Receiver<Command>,
    wake: UnixDatagram,
    shared: Arc<Shared>,
    udp_buf: Box<[u8]>,
    /// Frames read from ports, a batch at a time.
    rx: RecvBatch,
    /// Where super-frames are cut into segments.
    seg_buf: Box<[u8]>,
    /// Where frames are re-tagged (VLAN maps).
    scratch: Box<[u8]>,
}

/// Sends the datagrams of `out`.
/// Queues the datagrams of `out` (sent by [`flush`] or when the batch fills).
fn transmit(udp: &mut Udp, out: &Outgoing<'_>, counters: &mut ShellCounters, logged: &mut bool) {
    for d in out.datagrams() {
        debug_assert!(d.len() <= MAX_DATAGRAM);
        let r = udp.queue(d, out.to);
        udp_result(r, counters, logged);
    }
}

/// Sends the queued datagrams.
fn flush(udp: &mut Udp, counters: &mut ShellCounters, logged: &mut bool) {
    let r = udp.flush();
    udp_result(r, counters, logged);
}

fn udp_result(r: Result<(), (usize, io::Error)>, counters: &mut ShellCounters, logged: &mut bool) {
    match r {
        Ok(()) => *logged = false,
        Err((n, e)) => {
            counters.udp_tx_errors += n as u64;
            if !*logged {
                tracing::warn!(error = %e, "cannot send datagrams on the underlay (not logged again until a send succeeds)");
                *logged = true;
            }
        }
    }
}

/// Switches a frame that came in on local port `from`: to other ports
/// and/or into tunnels.
#[allow(clippy::too_many_arguments)]
fn switch_frame(local: &mut Local, links: &mut [Link], scratch: &mut [u8], from: PortId, lan: bool, frame: &[u8], now: Instant) {
    if ha::is_control(frame) {
        // Only the bridges speak HA control; a local host cannot.
        local.counters.lan_filtered += 1;
        return;
    }
    if !local.ha.may_use_ports(now) {
        // HA standby: no forwarding, no alarms, no loop detection.
        local.counters.ha_standby_drops += 1;
        return;
    }
    let verdict = if lan {
        // Under HA a MAC carried via a tunnel whose lease another LCG holds
        // is that LCG's to put on the LAN: not ours, and no alarm here.
        let carried = |at: usize| {
            frame
                .get(at..at + 6)
                .and_then(|b| <[u8; 6]>::try_from(b).ok())
                .and_then(|m| local.switch.carried_via(&MacAddr(m)))
                .is_some_and(|p| local.ha.may_cross(p, now))
        };
        let (src_carried, dst_carried) = (carried(6), carried(0));
        local.guard.lan_ingress(frame, src_carried, dst_carried, now)
    } else {
        local.guard.into_tunnel(frame, now)
    };
    if verdict != Verdict::Pass {
        return;
    }
    if let Err(f) = local.switch.forward(Place::Port(from), frame, now, &mut local.decision) {
        local.counters.filtered(f);
        return;
    }
    local.send_to_ports(frame, scratch, now);
    if local.ha.retain_crossable(&mut local.decision.peers, now) {
        local.counters.ha_standby_drops += 1;
    }
    if !local.decision.peers.is_empty() {
        send_to_links(links.iter_mut(), &local.decision.peers, frame, scratch, &mut local.counters, now);
    }
}

/// An HA control message out of tunnel `link`: the arbiter answers
/// requests; a member takes that tunnel's lease over (and announces the
/// MACs carried via it) or stops using that tunnel.
fn ha_message(local: &mut Local, link: &mut Link, msg: Control, now: Instant) {
    let peer = link.id;
    match &mut local.ha {
        HaState::Off => {}
        HaState::Arbiter(a, keys) => {
            let Some(key) = keys.get(&peer) else { return };
            let answer = a.lock().ok().and_then(|mut a| a.on_message(key, msg, now));
            if let Some(answer) = answer {
                link.send(&answer.encode(), &mut local.counters, now);
            }
        }
        HaState::Member(m) => match m.on_message(peer, msg, now) {
            Change::None => {}
            Change::BecameActive { epoch } => {
                tracing::warn!(
                    peer,
                    epoch,
                    "HA lease granted: this LCG now carries this tunnel; announcing its MACs"
                );
                local.announce_via(peer, now);
            }
            Change::Fenced => {
                tracing::warn!(peer, "HA lease of this tunnel held by another LCG: no frame crosses it here");
            }
        },
    }
}

impl Worker {
    fn run(mut self) {
        let mut ready_ports: Vec<usize> = Vec::new();
        let mut polled_ports: Vec<usize> = Vec::new();
        let mut last_publish: Option<Instant> = None;
        loop {
            let nl = self.links.len();
            let (wake_ready, udp_ready) = {
                let mut fds = Vec::with_capacity(1 + nl + self.local.ports.len());
                fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
                for l in &self.links {
                    fds.push(PollFd::new(l.udp.as_fd(), PollFlags::POLLIN));
                }
                polled_ports.clear();
                for (i, p) in self.local.ports.iter().enumerate() {
                    if let Some(s) = p.socket() {
                        fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                        polled_ports.push(i);
                    }
                }
                match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; bridge worker stops");
                        return;
                    }
                }
                let is_ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                ready_ports.clear();
                for (k, &i) in polled_ports.iter().enumerate() {
                    if is_ready(&fds[1 + nl + k]) {
                        ready_ports.push(i);
                    }
                }
                let udp_ready: Vec<bool> = fds[1..1 + nl].iter().map(is_ready).collect();
                (is_ready(&fds[0]), udp_ready)
            };
            if wake_ready {
                let mut b = [0u8; 64];
                while self.wake.recv(&mut b).is_ok() {}
            }
            if !self.handle_commands() {
                tracing::info!("bridge stopped");
                return;
            }
            for (i, ready) in udp_ready.into_iter().enumerate() {
                if ready {
                    self.handle_udp(i);
                }
            }
            for &i in &ready_ports {
                self.handle_port(i);
            }
            let now = Instant::now();
            self.ha_tick(now);
            self.send_probe(now);
            for l in &mut self.links {
                for _ in 0..4 {
                    let Some(out) = l.tunnel.tick(now) else { break };
                    transmit(&mut l.udp, &out, &mut self.local.counters, &mut l.logged);
                }
                l.flush(&mut self.local.counters);
            }
            self.local.check_ports(now);
            // Counters are copied out at most every PUBLISH_INTERVAL (and
            // always after a command): under a packet flood every loop
            // iteration would otherwise build the whole Stats.
            if last_publish.is_none_or(|t| now.saturating_duration_since(t) >= PUBLISH_INTERVAL) {
                self.publish(now);
                last_publish = Some(now);
            }
        }
    }

    /// Applies queued control requests; false on shutdown.
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Carry(m, peer, ips, reply)) => {
                    if !self.links.iter().any(|l| l.id == peer) {
                        let _ = reply.send(Err(Error::NoSuchPeer(peer)));
                        continue;
                    }
                    tracing::info!(mac = %m, peer, ?ips, "carrying MAC");
                    self.local.switch.carry_via(m, peer);
                    let now = Instant::now();
                    self.local.announce.insert(m, ips.clone());
                    // An HA standby announces when it takes over, not now.
                    if self.local.ha.may_cross(peer, now) {
                        self.local.announce_macs(&[(m, ips)], now);
                    }
                    self.publish(now);
                    let _ = reply.send(Ok(()));
                }
                Ok(Command::Uncarry(m, reply)) => {
                    tracing::info!(mac = %m, "no longer carrying MAC");
                    self.local.switch.uncarry(m);
                    self.local.announce.remove(&m);
                    self.local.guard.clear_duplicate(m);
                    self.publish(Instant::now());
                    let _ = reply.send(Ok(()));
                }
                Ok(Command::ClearDuplicate(m, reply)) => {
                    if self.local.guard.clear_duplicate(m) {
                        tracing::warn!(mac = %m, "duplicate-MAC alarm cleared by the operator");
                    }
                    self.publish(Instant::now());
                    let _ = reply.send(Ok(()));
                }
                // Counters are published before the reply, so a caller that
                // reads stats() after the call sees its effect.
                Ok(Command::AddPort(spec, reply)) => {
                    let r = self.local.add_port(spec);
                    self.publish(Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::RemovePort(name, reply)) => {
                    let r = self.local.remove_port(&name);
                    self.publish(Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::AddPeer(id, spec, reply)) => {
                    let r = if self.links.iter().any(|l| l.id == id) {
                        Err(Error::PeerExists(id))
                    } else {
                        Link::open(id, &self.key, &spec, Instant::now()).map(|l| {
                            tracing::info!(peer = id, listen = %spec.listen, "peer added");
                            self.local.switch.add_peer(id, spec.vlans.clone());
                            self.local.ha.add_peer(id, spec.peer_public);
                            self.links.push(l);
                        })
                    };
                    self.publish(Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::RemovePeer(id, reply)) => {
                    let r = match self.links.iter().position(|l| l.id == id) {
                        Some(i) => {
                            self.links.remove(i);
                            self.local.switch.remove_peer(id);
                            self.local.ha.remove_peer(id);
                            self.local.announce.retain(|m, _| self.local.switch.is_carried(m));
                            tracing::info!(peer = id, "peer removed");
                            Ok(())
                        }
                        _ => Err(Error::NoSuchPeer(id)),
                    };
                    self.publish(Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::Shutdown) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
                // Every handle is gone: nobody can stop us any more, which is
                // what "dropping the handle does not stop the bridge" means.
                Err(mpsc::TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn handle_udp(&mut self, i: usize) {
        let Worker {
            links,
            local,
            udp_buf,
            scratch,
            ..
        } = self;
        let Some((link, others)) = split_one(links, i) else { return };
        for _ in 0..BATCH {
            let (n, src, seg): (usize, SocketAddr, Option<usize>) = match link.udp.recv(udp_buf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive failed");
                    break;
                }
            };
            let now = Instant::now();
            // A GRO run: datagrams of `seg` bytes back to back (last may be shorter).
            for d in udp_buf[..n].chunks_mut(seg.unwrap_or(n).max(1)) {
                let id = link.id;
                match link.tunnel.receive(src, d, now) {
                    Received::Frame(frame) if ha::is_control(frame) => {
                        if let Some(msg) = Control::parse(frame) {
                            ha_message(local, link, msg, now);
                        }
                    }
                    Received::Frame(frame) => {
                        let others = others.0.iter_mut().chain(others.1.iter_mut());
                        local.deliver_from_tunnel(id, others, frame, scratch, now)
                    }
                    Received::Reply(out) => transmit(&mut link.udp, &out, &mut local.counters, &mut link.logged),
                    Received::Nothing | Received::Dropped(_) => {}
                }
            }
        }
        for l in links.iter_mut() {
            l.flush(&mut local.counters);
        }
        local.flush_ports();
    }

    fn handle_port(&mut self, i: usize) {
        self.read_port(i);
        for l in &mut self.links {
            l.flush(&mut self.local.counters);
        }
        self.local.flush_ports();
    }

    /// Reads up to [`BATCH`] frames from port `i` and switches them.
    fn read_port(&mut self, i: usize) {
        let Worker {
            links,
            local,
            rx,
            seg_buf,
            scratch,
            ..
        } = self;
        if let Some(mut ring) = local.ports.get_mut(i).and_then(Port::take_ring) {
            let id = local.ports[i].id;
            let lan = local.ports[i].kind() == PortKind::Lan;
            let now = Instant::now();
            let mut budget = match ring {
                RxRing::Frames(_) => RING_FRAMES_PER_WAKE,
                RxRing::Blocks(_) => RING_BLOCKS_PER_WAKE,
            };
            while budget > 0 {
                let walked = ring.walk(budget, |buf, info| {
                    Self::port_frame(local, links, seg_buf, scratch, id, lan, buf, info, now);
                });
                if walked.malformed > 0 {
                    // Never seen from a real kernel; counted with the LAN frames
                    // that could not be switched, rather than trusted.
                    local.counters.lan_filtered += walked.malformed as u64;
                    tracing::debug!(port = id, n = walked.malformed, "malformed receive-ring headers skipped");
                }
                let (RxRing::Frames(frames), true) = (&mut ring, walked.copy_pending) else {
                    break;
                };
                // A frame larger than its slot: read it whole from the queue.
                budget = budget.saturating_sub(walked.blocks + 1);
                let Some(sock) = local.ports[i].socket() else { break };
                match frames.recv_copy(sock) {
                    Ok(Some((buf, info))) => Self::port_frame(local, links, seg_buf, scratch, id, lan, buf, info, now),
                    // The kernel could not queue the copy: the frame is lost.
                    Ok(None) => local.counters.too_large += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => local.counters.too_large += 1,
                    Err(e) => {
                        Self::port_error(local, i, &e);
                        break;
                    }
                }
            }
            // Nothing in port_frame reopens or removes a port: same socket.
            local.ports[i].put_ring(ring);
            return;
        }
        for _ in 0..BATCH / RX_BATCH {
            let Some(port) = local.ports.get(i) else { return };
            let Some(sock) = port.socket() else { return };
            let id = port.id;
            let lan = port.kind() == PortKind::Lan;
            let n = match sock.recv_batch(rx) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The kernel dropped a frame whose offload it cannot describe.
                    local.counters.too_large += 1;
                    continue;
                }
                Err(e) => {
                    Self::port_error(local, i, &e);
                    return;
                }
            };
            let now = Instant::now();
            for k in 0..n {
                let (buf, info) = rx.frame(k);
                Self::port_frame(local, links, seg_buf, scratch, id, lan, buf, info, now);
            }
            if n < RX_BATCH {
                return;
            }
        }
    }

    /// Switches one frame read from port `id`.
    #[allow(clippy::too_many_arguments)]
    fn port_frame(
        local: &mut Local,
        links: &mut [Link],
        seg_buf: &mut [u8],
        scratch: &mut [u8],
        id: PortId,
        lan: bool,
        buf: &mut [u8],
        info: RecvInfo,
        now: Instant,
    ) {
        {
            if info.outgoing {
                return;
            }
            if info.truncated {
                local.counters.too_large += 1;
                tracing::debug!(port = id, "frame larger than the receive buffer; dropped");
                return;
            }
            let frame = &mut buf[info.start..info.start + info.len];
            if let Some((kind, mss)) = info.gso {
                // A GRO/TSO super-frame: cut it into wire-sized segments.
                let mut send = |seg: &mut [u8]| switch_frame(local, links, scratch, id, lan, seg, now);
                match gso::segment(frame, kind, mss, seg_buf, &mut send) {
                    Ok(_) => local.counters.segmented += 1,
                    Err(e) => {
                        local.counters.too_large += 1;
                        tracing::debug!(error = %e, len = frame.len(), "super-frame dropped");
                    }
                }
                return;
            }
            if let Some((start, offset)) = info.csum {
                if csum::complete_partial(frame, start, offset) {
                    local.counters.checksums_completed += 1;
                }
            } else if info.csum_not_ready && csum::complete(frame) {
                local.counters.checksums_completed += 1;
            }
            switch_frame(local, links, scratch, id, lan, frame, now);
        }
    }

    /// Sends the loop probe when due, on the LAN ports and into the tunnel
    /// (only a bridge with a LAN port probes: the LCG).
    fn send_probe(&mut self, now: Instant) {
        if !self.local.has_lan_port() || !self.local.may_forward(now) {
            return;
        }
        let Some(probe) = self.local.guard.probe_due(now) else { return };
        self.local.send_on_lan(&probe, now);
        for l in &mut self.links {
            if l.tunnel.is_established(now) && self.local.ha.may_cross(l.id, now) {
                l.send(&probe, &mut self.local.counters, now);
            }
        }
    }

    /// HA member: asks each tunnel's cloud for (or renews) its lease when
    /// due; notices lapses.
    fn ha_tick(&mut self, now: Instant) {
        self.local.ha_check(now);
        let Local { ha, counters, .. } = &mut self.local;
        let HaState::Member(m) = ha else { return };
        for link in &mut self.links {
            if !link.tunnel.is_established(now) {
                continue;
            }
            if let Some(req) = m.request_due(link.id, now) {
                link.send(&req.encode(), counters, now);
            }
        }
    }

    fn port_error(local: &mut Local, i: usize, e: &io::Error) {
        let now = Instant::now();
        let Some(port) = local.ports.get_mut(i) else { return };
        if port.interface_vanished() {
            port.mark_gone(now);
        } else {
            // ENETDOWN when the link goes down: the socket stays bound and
            // resumes when the interface comes back up.
            tracing::warn!(ifname = port.ifname(), error = %e, "port receive error; keeping the port");
        }
    }

    fn publish(&self, now: Instant) {
        let mut t = TunnelStats::default();
        for l in &self.links {
            t.add(&l.tunnel.stats());
        }
        let first = self.links.first().map(|l| &l.tunnel);
        let c = &self.local.counters;
        let g = self.local.guard.stats();
        let stats = Stats {
            tx_frames: t.tx_frames,
            rx_frames: t.rx_frames,
            rx_dropped: t.rx_dropped(),
            replay_rejects: t.rx_replay,
            established: !self.links.is_empty() && self.links.iter().all(|l| l.tunnel.is_established(now)),
            handshakes: t.handshakes_completed,
            handshake_inits_sent: t.handshake_inits_sent,
            handshake_wrong_peer: t.handshake_wrong_peer,
            handshake_rejected: t.handshake_rejected + t.handshake_stale + t.handshake_unexpected,
            handshake_rate_limited: t.handshake_rate_limited,
            last_handshake_age: None,
            peer_endpoint: first.and_then(Tunnel::endpoint),
            rx_auth_failed: t.rx_auth_failed,
            rx_malformed: t.rx_malformed,
            rx_unknown_session: t.rx_unknown_index,
            keepalives_sent: t.keepalives_sent,
            keepalives_received: t.keepalives_received,
            tx_dropped_no_session: t.tx_no_session + t.tx_no_endpoint + t.tx_exhausted,
            tx_dropped_too_large: t.tx_too_large + c.too_large,
            lan_filtered: c.lan_filtered,
            lan_carried_source: c.lan_carried_source,
            egress_filtered: c.egress_filtered,
            unswitchable: c.unswitchable,
            port_tx_errors: c.port_tx_errors,
            checksums_completed: c.checksums_completed,
            superframes_segmented: c.segmented,
            udp_tx_errors: c.udp_tx_errors,
            fragments_lost: t.frag.expired + t.frag.evicted,
            ports_down: self.local.ports_down(),
            duplicate_macs: self.local.guard.duplicates(),
            duplicate_mac_drops: g.duplicate_drops,
            loops_detected: g.loops_detected,
            loop_blocked: self.local.guard.loop_blocked(now),
            loop_drops: g.loop_drops,
            storm_drops: g.storm_drops,
            gratuitous_sent: self.local.gratuitous_sent,
            lan_tx_frames: c.lan_tx_frames,
            ha_active: !matches!(self.local.ha, HaState::Off) && self.local.may_forward(now),
            ha_epoch: match &self.local.ha {
                HaState::Off => 0,
                HaState::Member(m) => m.max_epoch(),
                HaState::Arbiter(a, _) => a.lock().map(|a| a.epoch()).unwrap_or(0),
            },
            ha_takeovers: match &self.local.ha {
                HaState::Member(m) => m.takeovers(),
                _ => 0,
            },
            ha_standby_drops: c.ha_standby_drops,
            peers: self
                .links
                .iter()
                .map(|l| {
                    let s = l.tunnel.stats();
                    PeerStatus {
                        id: l.id,
                        established: l.tunnel.is_established(now),
                        endpoint: l.tunnel.endpoint(),
                        tx_frames: s.tx_frames,
                        rx_frames: s.rx_frames,
                        rx_dropped: s.rx_dropped(),
                        last_handshake_age: None,
                        ha: self.local.ha.lease(l.id, now),
                    }
                })
                .collect(),
        };
        if let Ok(mut p) = self.shared.published.lock() {
            p.stats = stats;
            p.last_handshake = self.links.iter().map(|l| l.tunnel.last_handshake()).collect();
        }
    }
}
