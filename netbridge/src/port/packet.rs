//! An AF_PACKET raw socket bound to one interface: the LAN port of the
//! appliance, or the kernel side of a guest's TAP (QEMU holds the other side).
//!
//! This module owns the fd and every raw socket call on it; each `unsafe`
//! block says why it is sound. packet(7) is the reference for the options.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::frame_ring::FrameRing;
use super::gso::GsoKind;
use super::ring::{BlockRing, RxRing};
use super::tx_ring::TxRing;

/// After a transmit ring had to be dropped (a frame refused), frames go
/// with `sendmmsg` for this long before a new ring is tried.
const TX_RING_RETRY: Duration = Duration::from_secs(1);

/// Bytes kept free in front of a received frame, so a VLAN tag the kernel
/// moved into metadata can be put back without copying the frame.
pub const HEADROOM: usize = 4;

/// Frames per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 32;

/// Receive buffers for [`PacketSocket::recv_batch`]: [`BATCH`] slots of
/// `slot` bytes (headroom included), allocated once and reused.
pub struct RecvBatch {
    buf: Box<[u8]>,
    slot: usize,
    vnet: Box<[[u8; VNET_HDR_LEN]; BATCH]>,
    control: Box<[[u64; 16]; BATCH]>,
    addrs: Box<[libc::sockaddr_ll; BATCH]>,
    infos: [RecvInfo; BATCH],
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("slot", &self.slot).finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Buffers for frames of up to `slot - HEADROOM` bytes.
    pub fn new(slot: usize) -> Self {
        let slot = slot.max(HEADROOM + 64);
        let empty = RecvInfo {
            start: HEADROOM,
            len: 0,
            outgoing: false,
            truncated: false,
            csum: None,
            gso: None,
            csum_not_ready: false,
        };
        RecvBatch {
            buf: vec![0u8; slot * BATCH].into_boxed_slice(),
            slot,
            vnet: Box::new([[0u8; VNET_HDR_LEN]; BATCH]),
            control: Box::new([[0u64; 16]; BATCH]),
            // SAFETY: sockaddr_ll is plain old data; all-zero bytes are valid.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            infos: [empty; BATCH],
        }
    }

    /// Frame `i` of the last [`PacketSocket::recv_batch`]: its slot (the
    /// frame is at `info.start..info.start + info.len`) and description.
    pub fn frame(&mut self, i: usize) -> (&mut [u8], RecvInfo) {
        let i = i.min(BATCH - 1);
        (&mut self.buf[i * self.slot..(i + 1) * self.slot], self.infos[i])
    }
}

/// Socket buffer size asked for (the kernel caps it at `net.core.*mem_max`).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Why a packet socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No interface of that name in this network namespace.
    #[error("network interface {ifname:?} not found (create it, or run in its network namespace)")]
    NoInterface {
        /// Interface name.
        ifname: String,
        /// From if_nametoindex(3).
        #[source]
        source: nix::Error,
    },
    /// socket(2), bind(2) or setsockopt(2) failed.
    #[error("cannot {op} AF_PACKET socket on {ifname} (needs CAP_NET_RAW)")]
    Socket {
        /// Interface name.
        ifname: String,
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Where a received frame lies in the buffer, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvInfo {
    /// Offset of the frame in the buffer (0 if a VLAN tag was put back,
    /// else [`HEADROOM`]).
    pub start: usize,
    /// Length of the frame in the buffer.
    pub len: usize,
    /// The frame was sent by this host (pkttype PACKET_OUTGOING): never
    /// forward it, or every frame we inject would come back to us.
    pub outgoing: bool,
    /// The frame was longer than the buffer; what is in the buffer is cut short.
    pub truncated: bool,
    /// The TCP/UDP checksum is not filled in yet (the frame came from a local
    /// stack with checksum offload, e.g. over a veth): `(start, offset)` of
    /// the checksummed range and of the field, relative to the frame, for
    /// [`csum::complete_partial`](super::csum::complete_partial).
    pub csum: Option<(usize, usize)>,
    /// A super-frame (GRO/TSO) to be cut into segments of this payload size
    /// with [`gso::segment`](super::gso::segment).
    pub gso: Option<(GsoKind, u16)>,
    /// Without a virtio header (old kernel): the checksum is not ready and
    /// its position is unknown; use [`csum::complete`](super::csum::complete).
    pub csum_not_ready: bool,
}

/// Length of `struct virtio_net_hdr` (virtio spec 5.1.6), which
/// PACKET_VNET_HDR puts in front of every frame (legacy layout, host byte
/// order): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
pub(crate) const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// setsockopt(2) of a plain-data `value` on `fd`.
pub(crate) fn set_option<T>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of `size_of::<T>()` bytes; the
    // kernel only reads it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads the virtio header's checksum and GSO fields into `info`.
pub(crate) fn vnet_describe(vnet_hdr: &[u8; VNET_HDR_LEN], info: &mut RecvInfo) {
    let u16_at = |i: usize| u16::from_ne_bytes([vnet_hdr[i], vnet_hdr[i + 1]]);
    if vnet_hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        info.csum = Some((u16_at(6) as usize, u16_at(8) as usize));
    }
    info.gso = GsoKind::from_virtio(vnet_hdr[1]).map(|k| (k, u16_at(4)));
}

/// The kernel took the 802.1Q tag out of the frame at
/// `buf[HEADROOM..HEADROOM + info.len]` into metadata (VLAN offload); puts
/// it back between the source MAC and the EtherType, using the headroom, so
/// the far side sees the frame as sent. Truncated or runt frames are left.
pub(crate) fn vlan_reinsert(buf: &mut [u8], info: &mut RecvInfo, tpid: u16, tci: u16) {
    if info.truncated || info.len < 12 || info.start != HEADROOM || buf.len() < HEADROOM + info.len {
        return;
    }
    buf.copy_within(HEADROOM..HEADROOM + 12, 0);
    buf[12..14].copy_from_slice(&tpid.to_be_bytes());
    buf[14..16].copy_from_slice(&tci.to_be_bytes());
    info.start = 0;
    info.len += 4;
    // The checksum offsets were relative to the untagged frame.
    info.csum = info.csum.map(|(start, off)| (start + 4, off));
}

/// An AF_PACKET socket on one interface, in promiscuous mode.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    /// PACKET_VNET_HDR is on: frames come and go with a virtio header.
    vnet: bool,
    /// The receive ring, if set up ([`Self::open_with_rx_ring`],
    /// [`Self::open_with_frame_ring`]); then frames are read from it, not
    /// with `recvmsg`.
    ring: Option<RxRing>,
    /// The transmit ring, if set up ([`Self::open_with_tx_ring`]); then
    /// [`Self::send_batch`] sends through it.
    tx_ring: Option<TxRing>,
    /// When to set up a transmit ring again after one was dropped (`None`:
    /// this socket sends with `sendmmsg` only).
    tx_ring_retry: Option<Instant>,
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PacketSocket {
    /// Opens a non-blocking SOCK_RAW socket for all protocols on `ifname`,
    /// with PACKET_MR_PROMISC membership, VLAN metadata (PACKET_AUXDATA) and
    /// offload metadata (PACKET_VNET_HDR).
    pub fn open(ifname: &str) -> Result<Self, Error> {
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|source| Error::NoInterface {
            ifname: ifname.to_string(),
            source,
        })?;
        let fail = |op: &'static str| Error::Socket {
            ifname: ifname.to_string(),
            op,
            source: io::Error::last_os_error(),
        };
        // Protocol 0 at socket(2): no frames are queued until bind(2) below
        // names the interface, so none from other interfaces sneak in.
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and, if valid, owned by an OwnedFd at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail("create"));
        }
        // SAFETY: `raw` is a valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut sock = PacketSocket {
            fd,
            ifname: ifname.to_string(),
            ifindex,
            vnet: false,
            ring: None,
            tx_ring: None,
            tx_ring_retry: None,
        };

        // The virtio header tells us about super-frames (GRO/TSO) and pending
        // checksums, which we then segment and complete ourselves. Set before
        // bind, so every queued frame has it. Without it (very old kernels) we
        // fall back to TP_STATUS_CSUMNOTREADY and drop super-frames.
        sock.vnet = sock.set_option(libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1 as &libc::c_int).is_ok();

        // SAFETY: sockaddr_ll is plain old data; all-zero bytes are a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: the pointer and length describe `sll`, which lives across the call.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(fail("bind"));
        }

        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        sock.set_option(libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
            .map_err(|()| fail("set PACKET_MR_PROMISC on"))?;
        sock.set_option(libc::SOL_PACKET, libc::PACKET_AUXDATA, &1 as &libc::c_int)
            .map_err(|()| fail("set PACKET_AUXDATA on"))?;
        // Linux >= 4.20: do not even queue our own transmissions. Older
        // kernels still mark them PACKET_OUTGOING, which recv() reports.
        let _ = sock.set_option(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);
        let _ = sock.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, &SOCKET_BUFFER);
        let _ = sock.set_option(libc::SOL_SOCKET, libc::SO_SNDBUF, &SOCKET_BUFFER);
        Ok(sock)
    }

    /// Like [`Self::open`], with a TPACKET_V3 block receive ring
    /// ([`BlockRing`]). If the ring cannot be set up (old kernel, memory
    /// limits), says why once per process and returns a plain socket read
    /// with `recvmmsg`.
    pub fn open_with_rx_ring(ifname: &str) -> Result<Self, Error> {
        Self::open_with(ifname, "TPACKET_V3", |s| BlockRing::setup(s.fd.as_fd(), s.vnet).map(RxRing::Blocks))
    }

    /// Like [`Self::open`], with a TPACKET_V2 frame receive ring
    /// ([`FrameRing`]); frames larger than its slots are read whole (up to
    /// `max_frame` bytes, headroom included) from the receive queue. Falls
    /// back to a plain socket as [`Self::open_with_rx_ring`] does.
    pub fn open_with_frame_ring(ifname: &str, max_frame: usize) -> Result<Self, Error> {
        Self::open_with(ifname, "TPACKET_V2", |s| {
            FrameRing::setup(s.fd.as_fd(), s.vnet, max_frame).map(RxRing::Frames)
        })
    }

    /// Like [`Self::open`], with a TPACKET_V2 transmit ring ([`TxRing`],
    /// on a second, send-only socket): [`Self::send_batch`] then fills its
    /// slots and sends them with one `send()`. If the ring cannot be set up,
    /// says why once per process and sends with `sendmmsg`.
    pub fn open_with_tx_ring(ifname: &str) -> Result<Self, Error> {
        let mut sock = Self::open(ifname)?;
        sock.tx_ring_retry = Some(Instant::now());
        sock.retry_tx_ring();
        Ok(sock)
    }

    /// Sets up the transmit ring if one is wanted and due.
    fn retry_tx_ring(&mut self) {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        let Some(at) = self.tx_ring_retry else { return };
        let now = Instant::now();
        if self.tx_ring.is_some() || now < at {
            return;
        }
        let r = if self.vnet {
            TxRing::setup(self.ifindex)
        } else {
            Err(io::Error::other("PACKET_VNET_HDR not supported"))
        };
        match r {
            Ok(ring) => self.tx_ring = Some(ring),
            Err(e) => {
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(ifname = self.ifname, error = %e, "no TPACKET_V2 transmit ring; sending with sendmmsg instead");
                }
                self.tx_ring_retry = Some(now + TX_RING_RETRY);
            }
        }
    }

    /// True if frames leave through a transmit ring.
    pub fn has_tx_ring(&self) -> bool {
        self.tx_ring.is_some()
    }

    fn open_with(ifname: &str, what: &str, setup: impl FnOnce(&Self) -> io::Result<RxRing>) -> Result<Self, Error> {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        let mut sock = Self::open(ifname)?;
        match setup(&sock) {
            Ok(ring) => {
                sock.ring = Some(ring);
                Ok(sock)
            }
            Err(e) => {
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(ifname, error = %e, "no {what} receive ring; reading the LAN port with recvmmsg instead");
                }
                // The failed socket may have a ring but no mapping: start over.
                drop(sock);
                Self::open(ifname)
            }
        }
    }

    /// Takes the receive ring out (to walk it while the socket's owner is
    /// borrowed elsewhere); give it back with [`Self::put_ring`].
    pub fn take_ring(&mut self) -> Option<RxRing> {
        self.ring.take()
    }

    /// Gives back a ring taken with [`Self::take_ring`] from this socket.
    pub fn put_ring(&mut self, ring: RxRing) {
        self.ring = Some(ring);
    }

    /// True if frames arrive through a receive ring.
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> Result<(), ()> {
        set_option(self.fd.as_fd(), level, name, value).map_err(|_| ())
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receives one frame into `buf[HEADROOM..]`. `Ok(None)`: nothing queued.
    /// EINVAL means the kernel could not describe a frame's offloads (an
    /// unsupported GSO type) and dropped it: not a port failure.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<RecvInfo>> {
        if buf.len() <= HEADROOM + 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "receive buffer too small"));
        }
        let cap = buf.len() - HEADROOM;
        // SAFETY: plain old data; all-zero bytes are valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut vnet_hdr = [0u8; VNET_HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: vnet_hdr.as_mut_ptr().cast::<libc::c_void>(),
                iov_len: VNET_HDR_LEN,
            },
            libc::iovec {
                iov_base: buf[HEADROOM..].as_mut_ptr().cast::<libc::c_void>(),
                iov_len: cap,
            },
        ];
        let iov_used = if self.vnet { &mut iov[..] } else { &mut iov[1..] };
        // u64 elements: aligned for cmsghdr. Room for tpacket_auxdata and more.
        let mut control = [0u64; 16];
        // SAFETY: plain old data; all-zero bytes are valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast::<libc::c_void>();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iovlen = iov_used.len() as _;
        msg.msg_iov = iov_used.as_mut_ptr();
        msg.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
        msg.msg_controllen = size_of_val(&control) as _;
        // MSG_TRUNC: packet(7) returns the frame's real length even when it
        // did not fit, so oversize frames are detected rather than cut.
        // SAFETY: every pointer in `msg` refers to a live local buffer whose
        // length is given alongside; the kernel writes only within them.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(self.describe(n as usize, &addr, &vnet_hdr, &msg, buf)))
    }

    /// What `recvmsg` returned (`n` bytes, `addr`, the virtio header and the
    /// control messages of `msg`) as a [`RecvInfo`]; puts back a VLAN tag the
    /// kernel moved into metadata (using `buf`'s headroom).
    fn describe(&self, n: usize, addr: &libc::sockaddr_ll, vnet_hdr: &[u8; VNET_HDR_LEN], msg: &libc::msghdr, buf: &mut [u8]) -> RecvInfo {
        let cap = buf.len() - HEADROOM;
        // With the virtio header the result counts it too (packet_recvmsg).
        let n = n.saturating_sub(if self.vnet { VNET_HDR_LEN } else { 0 });
        let truncated = n > cap;
        let mut info = RecvInfo {
            start: HEADROOM,
            len: n.min(cap),
            outgoing: addr.sll_pkttype == libc::PACKET_OUTGOING,
            truncated,
            csum: None,
            gso: None,
            csum_not_ready: false,
        };
        if self.vnet {
            vnet_describe(vnet_hdr, &mut info);
        }
        let mut vlan = None;
        // SAFETY: `msg` was filled by a successful recvmsg; CMSG_FIRSTHDR and
        // CMSG_NXTHDR stay within msg_control/msg_controllen and return null
        // at the end.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
        while !c.is_null() {
            // SAFETY: `c` is non-null and points at a cmsghdr inside `control`.
            let hdr = unsafe { &*c };
            let want = size_of::<libc::tpacket_auxdata>();
            if hdr.cmsg_level == libc::SOL_PACKET && hdr.cmsg_type == libc::PACKET_AUXDATA && hdr.cmsg_len as usize >= want {
                // SAFETY: the kernel wrote a tpacket_auxdata after this header
                // (cmsg_len checked above); read_unaligned copes with alignment.
                let aux = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>()) };
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    vlan = Some((tpid, aux.tp_vlan_tci));
                }
                info.csum_not_ready = !self.vnet && aux.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
            }
            // SAFETY: as for CMSG_FIRSTHDR above.
            c = unsafe { libc::CMSG_NXTHDR(msg, c) };
        }
        if let Some((tpid, tci)) = vlan {
            vlan_reinsert(buf, &mut info, tpid, tci);
        }
        info
    }

    /// Receives up to [`BATCH`] frames with one `recvmmsg(2)` into `b`'s
    /// slots; returns how many (0: nothing queued). Errors as [`Self::recv`]'s.
    pub fn recv_batch(&self, b: &mut RecvBatch) -> io::Result<usize> {
        let slot = b.slot;
        let cap = slot - HEADROOM;
        // SAFETY: plain old data (pointers null, lengths zero); filled below.
        let mut iov: [[libc::iovec; 2]; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = b.buf.as_mut_ptr();
        for i in 0..BATCH {
            iov[i][0] = libc::iovec {
                iov_base: b.vnet[i].as_mut_ptr().cast::<libc::c_void>(),
                iov_len: VNET_HDR_LEN,
            };
            iov[i][1] = libc::iovec {
                // SAFETY: slot i starts at i * slot < buf.len() (BATCH slots).
                iov_base: unsafe { base.add(i * slot + HEADROOM) }.cast::<libc::c_void>(),
                iov_len: cap,
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_ll).cast::<libc::c_void>();
            h.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let used = if self.vnet { &mut iov[i][..] } else { &mut iov[i][1..] };
            h.msg_iovlen = used.len() as _;
            h.msg_iov = used.as_mut_ptr();
            h.msg_control = b.control[i].as_mut_ptr().cast::<libc::c_void>();
            h.msg_controllen = size_of_val(&b.control[i]) as _;
        }
        // SAFETY: every pointer in `msgs` refers to a live buffer of `b` or
        // to `iov` (all outliving the call) with its length alongside; the
        // kernel writes only within them. MSG_TRUNC as in recv().
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            let (addr, vnet) = (b.addrs[i], b.vnet[i]);
            let buf = &mut b.buf[i * slot..(i + 1) * slot];
            b.infos[i] = self.describe(m.msg_len as usize, &addr, &vnet, &m.msg_hdr, buf);
        }
        Ok(n)
    }

    /// Transmits `frames`, in order: through the transmit ring if the socket
    /// has one (one `send()` for all that fit its slots; a frame that does
    /// not fit goes alone after what was queued before it), else with
    /// `sendmmsg(2)` (at most [`BATCH`] a call). Returns how many were sent,
    /// and the error that stopped the rest.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> (usize, Option<io::Error>) {
        self.retry_tx_ring();
        let mut sent = 0;
        for (i, f) in frames.iter().enumerate() {
            let Some(ring) = self.tx_ring.as_mut() else {
                // No ring (or it was dropped in this batch): sendmmsg.
                let (n, e) = self.send_mmsg(&frames[i..]);
                return (sent + n, e);
            };
            if ring.push(f).is_ok() {
                continue;
            }
            // Too large, a runt, or the ring full of frames in flight: what
            // is queued leaves first, then this frame on the plain socket.
            let (n, e) = self.kick_tx_ring();
            sent += n;
            if e.is_some() {
                return (sent, e);
            }
            match self.send(f) {
                Ok(()) => sent += 1,
                Err(e) => return (sent, Some(e)),
            }
        }
        let (n, e) = self.kick_tx_ring();
        (sent + n, e)
    }

    /// Sends what the transmit ring holds. If the kernel refused a frame,
    /// the ring is dropped (its unsent frames with it: counted as failed by
    /// the caller) and `sendmmsg` is used for [`TX_RING_RETRY`].
    fn kick_tx_ring(&mut self) -> (usize, Option<io::Error>) {
        let Some(ring) = self.tx_ring.as_mut() else { return (0, None) };
        let k = ring.kick();
        if k.left == 0 {
            return (k.sent, None);
        }
        tracing::debug!(ifname = self.ifname, left = k.left, error = ?k.error, "transmit ring dropped after a refused frame");
        self.tx_ring = None;
        self.tx_ring_retry = Some(Instant::now() + TX_RING_RETRY);
        (k.sent, k.error)
    }

    /// Transmits `frames` with `sendmmsg(2)` (at most [`BATCH`] a call).
    fn send_mmsg(&self, frames: &[&[u8]]) -> (usize, Option<io::Error>) {
        let vnet_hdr = [0u8; VNET_HDR_LEN];
        let mut sent = 0;
        for chunk in frames.chunks(BATCH) {
            // SAFETY: plain old data; filled below.
            let mut iov: [[libc::iovec; 2]; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, f) in chunk.iter().enumerate() {
                iov[i][0] = libc::iovec {
                    iov_base: vnet_hdr.as_ptr() as *mut libc::c_void,
                    iov_len: VNET_HDR_LEN,
                };
                iov[i][1] = libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                };
                let used = if self.vnet { &mut iov[i][..] } else { &mut iov[i][1..] };
                msgs[i].msg_hdr.msg_iovlen = used.len() as _;
                msgs[i].msg_hdr.msg_iov = used.as_mut_ptr();
            }
            // SAFETY: the iovecs describe `vnet_hdr` and the frames, all
            // borrowed across the call; the kernel only reads them. The socket
            // is bound: no addresses.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    chunk.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return (sent, Some(io::Error::last_os_error()));
            }
            sent += n as usize;
            if (n as usize) < chunk.len() {
                // The next frame failed: find out why by sending it alone.
                let why = self.send(chunk[n as usize]).err();
                return (sent + usize::from(why.is_none()), why);
            }
        }
        (sent, None)
    }

    /// Transmits one frame on the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // An all-zero virtio header: no offload asked for, the frame is final.
        let vnet_hdr = [0u8; VNET_HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: vnet_hdr.as_ptr() as *mut libc::c_void,
                iov_len: VNET_HDR_LEN,
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        let iov_used = if self.vnet { &mut iov[..] } else { &mut iov[1..] };
        // SAFETY: plain old data; all-zero bytes are valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iovlen = iov_used.len() as _;
        msg.msg_iov = iov_used.as_mut_ptr();
        // SAFETY: the iovecs describe `vnet_hdr` and `frame`, both borrowed
        // across the call; the kernel only reads them (the `*mut` casts are
        // what iovec's type demands). The socket is bound: no address needed.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_a_clear_error() {
        let e = PacketSocket::open("nb-no-such-if0").unwrap_err();
        assert!(matches!(e, Error::NoInterface { .. }), "{e}");
        assert!(e.to_string().contains("nb-no-such-if0"));
    }
}
