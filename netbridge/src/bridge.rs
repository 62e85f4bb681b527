//! The I/O shell: worker threads that poll the UDP sockets and the local
//! ports, feed the protocol core ([`Tunnel`]) and the switch ([`Switch`]),
//! and send what they return. Control requests arrive at worker 0 over a
//! channel with a socketpair to wake its poll.
//!
//! With several workers ([`crate::worker`]) each has its own sockets and
//! polls, receives and sends on them without a lock; the protocol core
//! ([`Core`]: tunnels, switch, LAN guard, HA) is one value behind one mutex,
//! which a worker holds while it switches and seals or opens what it read.
//! While it holds it, the worker's sockets are swapped into the core
//! ([`enter`], [`leave`]), so the core's code sends on the sockets of the
//! worker that runs it.
//!
//! Buffers are allocated once per bridge; the per-packet path does not
//! allocate (one copy of each frame into the sealing buffer).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
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
use crate::worker::{self, Io, WorkerCounters, WorkerUdp};
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
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Set when worker 0 stops: the other workers stop too.
    stop: AtomicBool,
    /// One per worker.
    counters: Vec<WorkerCounters>,
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
        Self::spawn_workers(cfg, ha, worker::from_env())
    }

    /// Like [`Bridge::spawn_ha`] with `workers` worker threads (at least 1;
    /// see [`crate::worker`]). [`Bridge::spawn`] and [`Bridge::spawn_ha`]
    /// take the count from `NETBRIDGE_WORKERS` or [`worker::default_count`].
    pub fn spawn_workers(cfg: BridgeConfig, ha: Ha, workers: usize) -> Result<BridgeHandle, Error> {
        let now = Instant::now();
        let workers = workers.clamp(1, worker::MAX_WORKERS);
        let first = PeerSpec {
            peer_public: cfg.peer_public,
            psk: cfg.psk,
            listen: cfg.listen,
            role: cfg.role.clone(),
            vlans: PeerVlans::default(),
        };
        let mut local = Local::new(now, ha, workers > 1);
        let (link, udp) = Link::open(0, &cfg.local, &first, local.multi, now)?;
        let listen = link.listen;
        local.udps.push(udp);
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
            workers: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            counters: (0..workers).map(|_| WorkerCounters::default()).collect(),
        });
        // Worker 0 keeps the sockets opened above; the others open their
        // own here, in the caller's network namespace.
        let io0 = Io {
            udps: std::mem::take(&mut local.udps),
            ports: std::mem::take(&mut local.ports),
            layout: local.layout,
            ..Io::default()
        };
        let core = Core {
            key: cfg.local.clone(),
            links: vec![link],
            local,
        };
        let mut ios = vec![io0];
        for _ in 1..workers {
            let mut io = Io {
                layout: u64::MAX,
                ..Io::default()
            };
            realign(&core, &mut io, now);
            if io.udps.iter().any(|u| u.sock.is_none()) {
                return Err(Error::Udp(crate::udp::Error::Bind {
                    addr: listen,
                    source: io::Error::other("a second worker could not bind the tunnel's port (SO_REUSEPORT)"),
                }));
            }
            ios.push(io);
        }
        core.publish(&shared, now);
        let core = Arc::new(Mutex::new(core));
        let mut control = Some((rx, wake_rx));
        let mut handles = Vec::with_capacity(workers);
        for (index, io) in ios.into_iter().enumerate() {
            let w = Worker {
                index,
                core: Arc::clone(&core),
                io,
                control: control.take(),
                shared: Arc::clone(&shared),
                bufs: Bufs::new(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("netbridge {listen} w{index}"))
                .spawn(move || w.run());
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    let _ = shared.wake.send(&[1]);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(Error::Thread(e));
                }
            }
        }
        if let Ok(mut w) = shared.workers.lock() {
            *w = handles;
        }
        tracing::info!(%listen, role = ?cfg.role, workers, "bridge started");
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
                (s.worker_datagrams, s.worker_frames) = self.shared.counters.iter().map(WorkerCounters::get).unzip();
                (s.worker_locks, s.worker_lock_waits) = self.shared.counters.iter().map(WorkerCounters::locks).unzip();
                s
            }
            Err(_) => Stats::default(),
        }
    }

    /// Stops the worker and closes the socket and ports; waits for it.
    /// Idempotent; other handles then get [`Error::Stopped`].
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        let workers = self.shared.workers.lock().map(|mut w| std::mem::take(&mut *w)).unwrap_or_default();
        for w in workers {
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
    /// Adds what a worker counted outside the core's lock (its flushes),
    /// and zeroes `o`.
    fn absorb(&mut self, o: &mut ShellCounters) {
        self.port_tx_errors += o.port_tx_errors;
        self.lan_tx_frames += o.lan_tx_frames;
        self.udp_tx_errors += o.udp_tx_errors;
        self.too_large += o.too_large;
        *o = ShellCounters::default();
    }

    /// Anything for [`ShellCounters::absorb`] to add?
    fn any_flush_counts(&self) -> bool {
        self.port_tx_errors + self.lan_tx_frames + self.udp_tx_errors + self.too_large > 0
    }

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
    /// The ports' sockets of the worker holding the core (swapped in by
    /// [`enter`]; empty while no worker holds it).
    ports: Vec<Port>,
    /// The tunnels' UDP sockets of the worker holding the core, one per
    /// link (swapped in like `ports`).
    udps: Vec<WorkerUdp>,
    /// Several workers: sockets are opened for sharing (`SO_REUSEPORT`,
    /// `PACKET_FANOUT`).
    multi: bool,
    /// Bumped whenever a tunnel or port is added or removed: workers then
    /// [`realign`] their sockets.
    layout: u64,
    /// Every port: its id, spec and fanout group.
    port_layout: Vec<(PortId, PortSpec, Option<u16>)>,
    next_id: PortId,
    decision: Decision,
    counters: ShellCounters,
}

impl Local {
    fn new(now: Instant, ha: Ha, multi: bool) -> Self {
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
            udps: Vec::new(),
            multi,
            layout: 0,
            port_layout: Vec::new(),
            next_id: 0,
            decision: Decision::default(),
            counters: ShellCounters::default(),
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
        let port = if self.multi {
            Port::open_in_group(id, spec, None)?
        } else {
            Port::open(id, spec)?
        };
        self.next_id += 1;
        self.port_layout.push((id, port.spec.clone(), port.fanout));
        self.layout += 1;
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
        self.port_layout.retain(|(id, _, _)| *id != port.id);
        self.layout += 1;
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

    fn count_flushed(&mut self, k: usize, done: Flushed, len: usize) {
        count_flushed(&mut self.ports[k], done, len, &mut self.counters);
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
                    send_to_links(
                        others,
                        &mut self.udps,
                        &self.decision.peers,
                        frame,
                        scratch,
                        &mut self.counters,
                        now,
                    );
                }
            }
            Err(f) => self.counters.filtered(f),
        }
    }

    fn ports_down(&self) -> u32 {
        self.ports.iter().filter(|p| matches!(p.state, State::Gone { .. })).count() as u32
    }
}

/// Counts what a port's flush did (in `counters`), and logs the first of
/// a run of send errors.
fn count_flushed(port: &mut Port, done: Flushed, len: usize, counters: &mut ShellCounters) {
    if done.sent == 0 && done.failed == 0 {
        return;
    }
    if port.kind() == PortKind::Lan {
        counters.lan_tx_frames += done.sent as u64;
    }
    counters.port_tx_errors += done.failed as u64;
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

/// The tunnel to one peer (its UDP sockets are the workers', [`WorkerUdp`]).
struct Link {
    id: PeerId,
    tunnel: Tunnel,
    /// The address its sockets are bound to (the actual port if 0 was asked).
    listen: SocketAddr,
}

impl Link {
    /// The link and worker 0's socket for it (bound for sharing if `multi`).
    fn open(id: PeerId, key: &crate::keys::StaticKeypair, spec: &PeerSpec, multi: bool, now: Instant) -> Result<(Self, WorkerUdp), Error> {
        let identity = Identity::new(key.clone(), spec.peer_public, spec.psk)?;
        let udp = if multi {
            Udp::bind_shared_first(spec.listen)?
        } else {
            Udp::bind(spec.listen)?
        };
        let listen = udp.local_addr().unwrap_or(spec.listen);
        let initiate_to = match spec.role {
            Role::Initiator { peer } => Some(peer),
            Role::Responder => None,
        };
        let tunnel = Tunnel::new(identity, initiate_to, now, SystemTime::now());
        let udp = WorkerUdp {
            peer: id,
            sock: Some(udp),
            logged: false,
        };
        Ok((Link { id, tunnel, listen }, udp))
    }

    /// Seals `frame` and queues its datagrams on this link's socket among
    /// `udps` (dropped and counted by the tunnel when there is no session).
    fn send(&mut self, udps: &mut [WorkerUdp], frame: &[u8], counters: &mut ShellCounters, now: Instant) {
        if let Ok(out) = self.tunnel.send_frame(frame, now) {
            transmit(udp_of(udps, self.id), &out, counters);
        }
    }
}

/// Link `peer`'s socket among `udps` (every link has one, [`realign`]).
fn udp_of(udps: &mut [WorkerUdp], peer: PeerId) -> Option<&mut WorkerUdp> {
    udps.iter_mut().find(|u| u.peer == peer)
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
#[allow(clippy::too_many_arguments)]
fn send_to_links<'l>(
    links: impl Iterator<Item = &'l mut Link>,
    udps: &mut [WorkerUdp],
    targets: &[(PeerId, u16)],
    frame: &[u8],
    scratch: &mut [u8],
    counters: &mut ShellCounters,
    now: Instant,
) {
    for link in links {
        if let Some(&(_, vid)) = targets.iter().find(|(p, _)| *p == link.id) {
            let f = retag(frame, vid, scratch);
            link.send(udps, f, counters, now);
        }
    }
}

/// Queues the datagrams of `out` (sent by [`flush`] or when the batch
/// fills); without a socket they are lost and counted.
fn transmit(udp: Option<&mut WorkerUdp>, out: &Outgoing<'_>, counters: &mut ShellCounters) {
    let Some(WorkerUdp {
        sock: Some(sock), logged, ..
    }) = udp
    else {
        counters.udp_tx_errors += out.datagrams().count() as u64;
        return;
    };
    for d in out.datagrams() {
        debug_assert!(d.len() <= MAX_DATAGRAM);
        let r = sock.queue(d, out.to);
        udp_result(r, counters, logged);
    }
}

/// Sends the queued datagrams.
fn flush(udp: &mut WorkerUdp, counters: &mut ShellCounters) {
    if let Some(sock) = &mut udp.sock {
        let r = sock.flush();
        udp_result(r, counters, &mut udp.logged);
    }
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
        send_to_links(
            links.iter_mut(),
            &mut local.udps,
            &local.decision.peers,
            frame,
            scratch,
            &mut local.counters,
            now,
        );
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
                link.send(&mut local.udps, &answer.encode(), &mut local.counters, now);
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

/// The protocol core of a bridge: every tunnel and the local side. One per
/// bridge, behind one mutex shared by the workers.
struct Core {
    /// Our static key (for tunnels added later).
    key: crate::keys::StaticKeypair,
    /// One per peer; peer 0 first.
    links: Vec<Link>,
    local: Local,
}

/// A worker's buffers, allocated once.
struct Bufs {
    udp_buf: Box<[u8]>,
    /// Frames read from ports, a batch at a time.
    rx: RecvBatch,
    /// Where super-frames are cut into segments.
    seg_buf: Box<[u8]>,
    /// Where frames are re-tagged (VLAN maps).
    scratch: Box<[u8]>,
}

impl Bufs {
    fn new() -> Self {
        Bufs {
            udp_buf: vec![0u8; crate::udp::RECV_BUFFER].into_boxed_slice(),
            rx: RecvBatch::new(HEADROOM + PORT_FRAME_MAX),
            seg_buf: vec![0u8; PORT_FRAME_MAX].into_boxed_slice(),
            scratch: vec![0u8; PORT_FRAME_MAX].into_boxed_slice(),
        }
    }
}

/// One worker thread: its sockets, and the shared core.
struct Worker {
    index: usize,
    core: Arc<Mutex<Core>>,
    io: Io,
    /// Worker 0 takes the control requests and runs the timers.
    control: Option<(mpsc::Receiver<Command>, UnixDatagram)>,
    shared: Arc<Shared>,
    bufs: Bufs,
}

/// Locks the core (a worker that panicked while holding it left it
/// consistent enough to go on: every step is a whole frame or datagram).
fn lock<'c>(core: &'c Mutex<Core>, counters: &WorkerCounters) -> MutexGuard<'c, Core> {
    let guard = match core.try_lock() {
        Ok(g) => Ok(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Err(e),
        Err(std::sync::TryLockError::WouldBlock) => {
            counters.add_lock_wait();
            core.lock()
        }
    };
    counters.add_lock();
    guard.unwrap_or_else(|e| e.into_inner())
}

/// Swaps the worker's sockets into the core (after aligning them with the
/// core's tunnels and ports if those changed) and adds what it counted
/// outside the lock.
fn enter(core: &mut Core, io: &mut Io, pending: &mut ShellCounters, now: Instant) {
    if io.layout != core.local.layout {
        realign(core, io, now);
    }
    std::mem::swap(&mut core.local.udps, &mut io.udps);
    std::mem::swap(&mut core.local.ports, &mut io.ports);
    core.local.counters.absorb(pending);
}

/// Takes the worker's sockets back out of the core.
fn leave(core: &mut Core, io: &mut Io) {
    std::mem::swap(&mut core.local.udps, &mut io.udps);
    std::mem::swap(&mut core.local.ports, &mut io.ports);
}

/// Gives `io` one socket per tunnel and per port of `core`, in the core's
/// order: keeps the ones it has, opens the missing ones (bound with
/// `SO_REUSEPORT`, joined to the port's fanout group), closes the ones of
/// tunnels and ports that went away.
fn realign(core: &Core, io: &mut Io, now: Instant) {
    let mut udps = std::mem::take(&mut io.udps);
    for l in &core.links {
        match udps.iter().position(|u| u.peer == l.id) {
            Some(k) => io.udps.push(udps.swap_remove(k)),
            None => {
                let sock = Udp::bind_shared(l.listen)
                    .map_err(
                        |e| tracing::warn!(peer = l.id, error = %e, "worker cannot bind the tunnel's port; the other workers carry it"),
                    )
                    .ok();
                io.udps.push(WorkerUdp {
                    peer: l.id,
                    sock,
                    logged: false,
                });
            }
        }
    }
    let mut ports = std::mem::take(&mut io.ports);
    for (id, spec, group) in &core.local.port_layout {
        if let Some(k) = ports.iter().position(|p| p.id == *id) {
            io.ports.push(ports.swap_remove(k));
            continue;
        }
        let port = match group {
            Some(g) => Port::open_in_group(*id, spec.clone(), Some(*g)).unwrap_or_else(|e| {
                tracing::warn!(ifname = spec.ifname(), error = %e, "worker cannot open its socket of the port; retrying");
                Port::closed_in_group(*id, spec.clone(), *g, now)
            }),
            // One worker: worker 0 opened every port itself.
            None => continue,
        };
        io.ports.push(port);
    }
    io.layout = core.local.layout;
}

/// Looks for vanished interfaces among `ports` and reopens returned ones
/// (at most every [`PORT_CHECK_INTERVAL`]).
fn check_ports(ports: &mut [Port], last: &mut Option<Instant>, now: Instant) {
    if last.is_some_and(|t| now.saturating_duration_since(t) < PORT_CHECK_INTERVAL) {
        return;
    }
    *last = Some(now);
    for p in ports {
        if p.interface_vanished() {
            p.mark_gone(now);
        }
        p.retry(now);
    }
}

impl Worker {
    fn run(mut self) {
        let mut ready_ports: Vec<PortId> = Vec::new();
        let mut polled_ports: Vec<PortId> = Vec::new();
        let mut ready_udps: Vec<PeerId> = Vec::new();
        let mut last_publish: Option<Instant> = None;
        let mut pending = ShellCounters::default();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let nu = self.io.udps.len();
            let wake_ready = {
                let mut fds = Vec::with_capacity(1 + nu + self.io.ports.len());
                if let Some((_, wake)) = &self.control {
                    fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
                }
                let first = fds.len();
                for u in &self.io.udps {
                    if let Some(sock) = &u.sock {
                        fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
                    }
                }
                let udp_peers = self.io.udps.iter().filter(|u| u.sock.is_some()).map(|u| u.peer);
                let first_port = fds.len();
                polled_ports.clear();
                for p in &self.io.ports {
                    if let Some(s) = p.socket() {
                        fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                        polled_ports.push(p.id);
                    }
                }
                match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; bridge worker stops");
                        self.shared.stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                let is_ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                ready_udps.clear();
                for (f, peer) in fds[first..first_port].iter().zip(udp_peers) {
                    if is_ready(f) {
                        ready_udps.push(peer);
                    }
                }
                ready_ports.clear();
                for (f, &id) in fds[first_port..].iter().zip(&polled_ports) {
                    if is_ready(f) {
                        ready_ports.push(id);
                    }
                }
                first > 0 && is_ready(&fds[0])
            };
            if let Some((commands, wake)) = &self.control {
                if wake_ready {
                    let mut b = [0u8; 64];
                    while wake.recv(&mut b).is_ok() {}
                }
                let mut core = lock(&self.core, &self.shared.counters[self.index]);
                enter(&mut core, &mut self.io, &mut pending, Instant::now());
                let go_on = core.handle_commands(commands, &self.shared);
                leave(&mut core, &mut self.io);
                if !go_on {
                    self.shared.stop.store(true, Ordering::Relaxed);
                    tracing::info!("bridge stopped");
                    return;
                }
            }
            for &peer in &ready_udps {
                self.handle_udp(peer, &mut pending);
            }
            for &id in &ready_ports {
                self.read_port(id, &mut pending);
            }
            let now = Instant::now();
            if self.control.is_some() {
                let mut core = lock(&self.core, &self.shared.counters[self.index]);
                enter(&mut core, &mut self.io, &mut pending, now);
                core.ha_tick(now);
                core.send_probe(now);
                core.tick_tunnels(now);
                // Counters are copied out at most every PUBLISH_INTERVAL
                // (and always after a command): under a packet flood every
                // loop iteration would otherwise build the whole Stats.
                if last_publish.is_none_or(|t| now.saturating_duration_since(t) >= PUBLISH_INTERVAL) {
                    core.publish(&self.shared, now);
                    last_publish = Some(now);
                }
                leave(&mut core, &mut self.io);
            }
            // Sending happens outside the lock, on this worker's sockets.
            for u in &mut self.io.udps {
                flush(u, &mut pending);
            }
            for p in &mut self.io.ports {
                let done = p.flush();
                count_flushed(p, done, 0, &mut pending);
            }
            let check_due = self
                .io
                .last_port_check
                .is_none_or(|t| now.saturating_duration_since(t) >= PORT_CHECK_INTERVAL);
            check_ports(&mut self.io.ports, &mut self.io.last_port_check, now);
            if check_due && self.control.is_none() {
                // An idle worker opens its sockets of tunnels and ports
                // added meanwhile (a busy one does so at its next frame).
                let c = lock(&self.core, &self.shared.counters[self.index]);
                if self.io.layout != c.local.layout {
                    realign(&c, &mut self.io, now);
                }
            }
            if pending.any_flush_counts() {
                // Into the core now, so stats() shows them without waiting
                // for this worker's next frame.
                lock(&self.core, &self.shared.counters[self.index])
                    .local
                    .counters
                    .absorb(&mut pending);
            }
        }
    }

    /// Reads up to [`BATCH`] receives (datagrams or GRO runs) from this
    /// worker's socket of tunnel `peer`, each opened and switched under the
    /// core's lock.
    fn handle_udp(&mut self, peer: PeerId, pending: &mut ShellCounters) {
        let Worker {
            core,
            io,
            bufs,
            shared,
            index,
            ..
        } = self;
        for _ in 0..BATCH {
            let Some(sock) = io.udps.iter_mut().find(|u| u.peer == peer).and_then(|u| u.sock.as_mut()) else {
                return;
            };
            let (n, src, seg): (usize, SocketAddr, Option<usize>) = match sock.recv(&mut bufs.udp_buf) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive failed");
                    return;
                }
            };
            let seg = seg.unwrap_or(n).max(1);
            shared.counters[*index].add_datagrams(n.div_ceil(seg) as u64);
            let now = Instant::now();
            let mut c = lock(core, &shared.counters[*index]);
            enter(&mut c, io, pending, now);
            c.receive(peer, &mut bufs.udp_buf[..n], src, seg, &mut bufs.scratch, now);
            leave(&mut c, io);
        }
    }

    /// Reads frames from this worker's socket of port `id` (its receive
    /// ring, or up to [`BATCH`] with `recvmmsg`) and switches them under the
    /// core's lock.
    fn read_port(&mut self, id: PortId, pending: &mut ShellCounters) {
        let Worker {
            core,
            io,
            bufs,
            shared,
            index,
            ..
        } = self;
        let counters = &shared.counters[*index];
        let Some(k) = io.ports.iter().position(|p| p.id == id) else {
            return;
        };
        if let Some(mut ring) = io.ports[k].take_ring() {
            let now = Instant::now();
            let mut c = lock(core, counters);
            enter(&mut c, io, pending, now);
            let n = c.walk_ring(id, &mut ring, bufs, now);
            leave(&mut c, io);
            drop(c);
            counters.add_frames(n);
            // Nothing under the lock reopens a port; a realign may have
            // closed it (the ring is then unmapped here).
            if let Some(p) = io.ports.iter_mut().find(|p| p.id == id) {
                p.put_ring(ring);
            }
            return;
        }
        for _ in 0..BATCH / RX_BATCH {
            let Some(port) = io.ports.iter().find(|p| p.id == id) else { return };
            let Some(sock) = port.socket() else { return };
            let lan = port.kind() == PortKind::Lan;
            let n = match sock.recv_batch(&mut bufs.rx) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The kernel dropped a frame whose offload it cannot describe.
                    pending.too_large += 1;
                    continue;
                }
                Err(e) => {
                    port_error(&mut io.ports, id, &e);
                    return;
                }
            };
            counters.add_frames(n as u64);
            let now = Instant::now();
            let mut c = lock(core, counters);
            enter(&mut c, io, pending, now);
            let Core { local, links, .. } = &mut *c;
            for k in 0..n {
                let (buf, info) = bufs.rx.frame(k);
                port_frame(local, links, &mut bufs.seg_buf, &mut bufs.scratch, id, lan, buf, info, now);
            }
            leave(&mut c, io);
            drop(c);
            if n < RX_BATCH {
                return;
            }
        }
    }
}

/// A receive error on port `id` among `ports`: closes the port if its
/// interface vanished.
fn port_error(ports: &mut [Port], id: PortId, e: &io::Error) {
    let now = Instant::now();
    let Some(port) = ports.iter_mut().find(|p| p.id == id) else {
        return;
    };
    if port.interface_vanished() {
        port.mark_gone(now);
    } else {
        // ENETDOWN when the link goes down: the socket stays bound and
        // resumes when the interface comes back up.
        tracing::warn!(ifname = port.ifname(), error = %e, "port receive error; keeping the port");
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

impl Core {
    /// Opens and switches the datagrams of one receive on tunnel `peer`
    /// (with GRO a run of `seg`-byte datagrams, the last maybe shorter).
    fn receive(&mut self, peer: PeerId, buf: &mut [u8], src: SocketAddr, seg: usize, scratch: &mut [u8], now: Instant) {
        let Core { links, local, .. } = self;
        let Some(i) = links.iter().position(|l| l.id == peer) else { return };
        let Some((link, others)) = split_one(links, i) else { return };
        for d in buf.chunks_mut(seg) {
            match link.tunnel.receive(src, d, now) {
                Received::Frame(frame) if ha::is_control(frame) => {
                    if let Some(msg) = Control::parse(frame) {
                        ha_message(local, link, msg, now);
                    }
                }
                Received::Frame(frame) => {
                    let others = others.0.iter_mut().chain(others.1.iter_mut());
                    local.deliver_from_tunnel(peer, others, frame, scratch, now)
                }
                Received::Reply(out) => transmit(udp_of(&mut local.udps, peer), &out, &mut local.counters),
                Received::Nothing | Received::Dropped(_) => {}
            }
        }
    }

    /// Walks port `id`'s receive ring (taken out of this worker's socket)
    /// and switches its frames; returns how many it read.
    fn walk_ring(&mut self, id: PortId, ring: &mut RxRing, bufs: &mut Bufs, now: Instant) -> u64 {
        let Core { links, local, .. } = self;
        let Some(i) = local.ports.iter().position(|p| p.id == id) else {
            return 0;
        };
        let lan = local.ports[i].kind() == PortKind::Lan;
        let Bufs { seg_buf, scratch, .. } = bufs;
        let mut count = 0u64;
        let mut budget = match ring {
            RxRing::Frames(_) => RING_FRAMES_PER_WAKE,
            RxRing::Blocks(_) => RING_BLOCKS_PER_WAKE,
        };
        while budget > 0 {
            let walked = ring.walk(budget, |buf, info| {
                count += 1;
                port_frame(local, links, seg_buf, scratch, id, lan, buf, info, now);
            });
            if walked.malformed > 0 {
                // Never seen from a real kernel; counted with the LAN frames
                // that could not be switched, rather than trusted.
                local.counters.lan_filtered += walked.malformed as u64;
                tracing::debug!(port = id, n = walked.malformed, "malformed receive-ring headers skipped");
            }
            let (RxRing::Frames(frames), true) = (&mut *ring, walked.copy_pending) else {
                break;
            };
            // A frame larger than its slot: read it whole from the queue.
            budget = budget.saturating_sub(walked.blocks + 1);
            let Some(sock) = local.ports[i].socket() else { break };
            match frames.recv_copy(sock) {
                Ok(Some((buf, info))) => {
                    count += 1;
                    port_frame(local, links, seg_buf, scratch, id, lan, buf, info, now)
                }
                // The kernel could not queue the copy: the frame is lost.
                Ok(None) => local.counters.too_large += 1,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => local.counters.too_large += 1,
                Err(e) => {
                    port_error(&mut local.ports, id, &e);
                    break;
                }
            }
        }
        count
    }

    /// Runs the tunnels' timers (initiations, keepalives) and sends what
    /// is due.
    fn tick_tunnels(&mut self, now: Instant) {
        for l in &mut self.links {
            for _ in 0..4 {
                let Some(out) = l.tunnel.tick(now) else { break };
                transmit(udp_of(&mut self.local.udps, l.id), &out, &mut self.local.counters);
            }
        }
    }

    /// Applies queued control requests; false on shutdown.
    fn handle_commands(&mut self, commands: &mpsc::Receiver<Command>, shared: &Shared) -> bool {
        loop {
            match commands.try_recv() {
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
                    self.publish(shared, now);
                    let _ = reply.send(Ok(()));
                }
                Ok(Command::Uncarry(m, reply)) => {
                    tracing::info!(mac = %m, "no longer carrying MAC");
                    self.local.switch.uncarry(m);
                    self.local.announce.remove(&m);
                    self.local.guard.clear_duplicate(m);
                    self.publish(shared, Instant::now());
                    let _ = reply.send(Ok(()));
                }
                Ok(Command::ClearDuplicate(m, reply)) => {
                    if self.local.guard.clear_duplicate(m) {
                        tracing::warn!(mac = %m, "duplicate-MAC alarm cleared by the operator");
                    }
                    self.publish(shared, Instant::now());
                    let _ = reply.send(Ok(()));
                }
                // Counters are published before the reply, so a caller that
                // reads stats() after the call sees its effect.
                Ok(Command::AddPort(spec, reply)) => {
                    let r = self.local.add_port(spec);
                    self.publish(shared, Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::RemovePort(name, reply)) => {
                    let r = self.local.remove_port(&name);
                    self.publish(shared, Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::AddPeer(id, spec, reply)) => {
                    let r = if self.links.iter().any(|l| l.id == id) {
                        Err(Error::PeerExists(id))
                    } else {
                        Link::open(id, &self.key, &spec, self.local.multi, Instant::now()).map(|(l, udp)| {
                            tracing::info!(peer = id, listen = %spec.listen, "peer added");
                            self.local.switch.add_peer(id, spec.vlans.clone());
                            self.local.ha.add_peer(id, spec.peer_public);
                            self.links.push(l);
                            self.local.udps.push(udp);
                            self.local.layout += 1;
                        })
                    };
                    self.publish(shared, Instant::now());
                    let _ = reply.send(r);
                }
                Ok(Command::RemovePeer(id, reply)) => {
                    let r = match self.links.iter().position(|l| l.id == id) {
                        Some(i) => {
                            self.links.remove(i);
                            self.local.udps.retain(|u| u.peer != id);
                            self.local.layout += 1;
                            self.local.switch.remove_peer(id);
                            self.local.ha.remove_peer(id);
                            self.local.announce.retain(|m, _| self.local.switch.is_carried(m));
                            tracing::info!(peer = id, "peer removed");
                            Ok(())
                        }
                        _ => Err(Error::NoSuchPeer(id)),
                    };
                    self.publish(shared, Instant::now());
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
                l.send(&mut self.local.udps, &probe, &mut self.local.counters, now);
            }
        }
    }

    /// HA member: asks each tunnel's cloud for (or renews) its lease when
    /// due; notices lapses.
    fn ha_tick(&mut self, now: Instant) {
        self.local.ha_check(now);
        let Local { ha, counters, udps, .. } = &mut self.local;
        let HaState::Member(m) = ha else { return };
        for link in &mut self.links {
            if !link.tunnel.is_established(now) {
                continue;
            }
            if let Some(req) = m.request_due(link.id, now) {
                link.send(udps, &req.encode(), counters, now);
            }
        }
    }

    /// Copies the counters out for [`BridgeHandle::stats`].
    fn publish(&self, shared: &Shared, now: Instant) {
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
            // Filled in by BridgeHandle::stats from the workers' atomics.
            worker_datagrams: Vec::new(),
            worker_frames: Vec::new(),
            worker_locks: Vec::new(),
            worker_lock_waits: Vec::new(),
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
        if let Ok(mut p) = shared.published.lock() {
            p.stats = stats;
            p.last_handshake = self.links.iter().map(|l| l.tunnel.last_handshake()).collect();
        }
    }
}
