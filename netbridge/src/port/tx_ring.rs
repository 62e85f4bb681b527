//! A TPACKET_V2 transmit ring (`PACKET_TX_RING`, packet(7)) for a guest
//! port: frames are written into mmap'd slots and the kernel sends every
//! filled slot on one `send()` ("kick") per batch, in one pass without
//! returning to user space between frames.
//!
//! What this saves over `sendmmsg` is less the syscall (already one per
//! batch) than what happens per message inside it: the message header and
//! iovec copies, and above all `__cond_resched` between messages, where the
//! receiver we just woke (the guest's stack, or on a veth the far host's
//! stack) preempted us mid-batch on a busy machine (PERFORMANCE.md).
//!
//! The ring has its own socket, bound to the interface with protocol 0 so
//! that it receives nothing (the port's receive socket stays as it was).
//! Every frame is copied whole into the kernel's buffer (`hdr_len` of the
//! virtio header set to the frame length): without it the kernel would
//! attach ring pages to the packet and mark the slot free as soon as the
//! receiver orphans the packet, while the data may still be queued (at a
//! TAP, until QEMU reads it) — and we would overwrite it. So a slot can be
//! reused as soon as its status says so. The ring therefore needs
//! `PACKET_VNET_HDR`; without it (very old kernels) there is no ring.
//!
//! A frame the ring cannot take (larger than a slot, a runt, or the ring
//! full of frames still in flight) is sent by the caller through the
//! ordinary socket after a kick, so order is kept.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::frame_ring::{TpacketReq, TPACKET_V2};
use super::packet::{set_option, VNET_HDR_LEN};
use super::ring::{RingMap, PACKET_VERSION};

const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
/// Slot states (`tp_status` in transmit rings).
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;

/// Bytes per slot: one page; every frame the tunnel can deliver
/// ([`crate::wire::MAX_FRAME`]) fits.
pub const TX_SLOT_SIZE: usize = 4096;
/// Bytes per block (a page multiple; slots never straddle blocks).
const BLOCK_SIZE: usize = 1 << 16;
/// Blocks: 256 slots, 1 MiB.
const BLOCK_COUNT: usize = 16;
/// Slots in the ring.
pub const TX_SLOTS: usize = BLOCK_SIZE / TX_SLOT_SIZE * BLOCK_COUNT;
/// Offset of `tp_len` in `struct tpacket2_hdr`.
const TP_LEN: usize = 4;
/// Where the kernel reads a slot's data: `TPACKET2_HDRLEN - sizeof(struct
/// sockaddr_ll)` = `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`.
const TX_DATA: usize = 32;
/// Offset of `hdr_len` in the (legacy) virtio header.
const VNET_HDR_LEN_FIELD: usize = 2;
/// Largest frame a slot takes (the virtio header is in the slot too).
pub const TX_FRAME_MAX: usize = TX_SLOT_SIZE - TX_DATA - VNET_HDR_LEN;
/// Smallest frame given to the ring: an Ethernet header (the kernel refuses
/// shorter ones; the caller's plain send reports why).
const TX_FRAME_MIN: usize = 14;

/// Why [`TxRing::push`] did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not between 14 and [`TX_FRAME_MAX`] bytes.
    Unfit,
    /// The next slot is still waiting to be sent or in flight.
    Full,
}

/// What one [`TxRing::kick`] did.
#[derive(Debug, Default)]
pub struct Kicked {
    /// Frames the kernel took.
    pub sent: usize,
    /// Frames it left in their slots (it stopped at the first of them); the
    /// ring must then be dropped, which discards them.
    pub left: usize,
    /// Why the kernel stopped, if it said.
    pub error: Option<io::Error>,
}

/// The transmit ring of one guest port (its own send-only socket and
/// mapping, unmapped and closed on drop: unsent slots are discarded).
pub struct TxRing {
    map: RingMap,
    fd: OwnedFd,
    /// The slot the next frame goes into; the kernel sends slots in ring
    /// order, so this is also where its head will be after the next kick.
    next: usize,
    /// Slots filled since the last kick.
    queued: usize,
}

impl std::fmt::Debug for TxRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxRing")
            .field("next", &self.next)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl TxRing {
    /// Opens a send-only AF_PACKET socket on interface `ifindex` with a
    /// TPACKET_V2 transmit ring. Fails where the kernel lacks any piece
    /// (then the caller keeps `sendmmsg`).
    pub fn setup(ifindex: u32) -> io::Result<TxRing> {
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and, if valid, owned by an OwnedFd at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The copy-whole trick above needs the virtio header: no fallback.
        set_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1 as &libc::c_int)?;
        set_option(fd.as_fd(), libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V2)?;
        // A slot the kernel finds malformed is skipped, not left to block
        // the ring (we never write one; this is belt and braces).
        set_option(fd.as_fd(), libc::SOL_PACKET, PACKET_LOSS, &1 as &libc::c_int)?;
        let _ = set_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &(4 << 20) as &libc::c_int);
        // Protocol 0: bound to the interface for sending, receives nothing.
        // SAFETY: sockaddr_ll is plain old data; all-zero bytes are valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: the pointer and length describe `sll`, alive across the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let req = TpacketReq {
            block_size: BLOCK_SIZE as u32,
            block_nr: BLOCK_COUNT as u32,
            frame_size: TX_SLOT_SIZE as u32,
            frame_nr: TX_SLOTS as u32,
        };
        set_option(fd.as_fd(), libc::SOL_PACKET, PACKET_TX_RING, &req)?;
        let map = RingMap::new(fd.as_fd(), BLOCK_SIZE * BLOCK_COUNT)?;
        Ok(TxRing {
            map,
            fd,
            next: 0,
            queued: 0,
        })
    }

    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: slot < TX_SLOTS, so the slot lies inside the mapping
        // (BLOCK_SIZE is a multiple of TX_SLOT_SIZE); slots are page-aligned,
        // so the pointer is aligned for AtomicU32 (tp_status is at offset 0).
        // The kernel accesses the word concurrently: only touched atomically.
        unsafe { AtomicU32::from_ptr(self.map.ptr().add(slot * TX_SLOT_SIZE).cast::<u32>()) }
    }

    /// Frames filled since the last kick.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Copies `frame` into the next slot and marks it for sending (it
    /// leaves at the next [`Self::kick`]).
    pub fn push(&mut self, frame: &[u8]) -> Result<(), Refused> {
        if !(TX_FRAME_MIN..=TX_FRAME_MAX).contains(&frame.len()) {
            return Err(Refused::Unfit);
        }
        // Acquire: the kernel is done with the slot (frame copied into its
        // own buffer) before it marks it available.
        if self.status(self.next).load(Ordering::Acquire) != TP_STATUS_AVAILABLE {
            return Err(Refused::Full);
        }
        let mut vnet = [0u8; VNET_HDR_LEN];
        // hdr_len = the whole frame: the kernel copies it all (see the top).
        vnet[VNET_HDR_LEN_FIELD..VNET_HDR_LEN_FIELD + 2].copy_from_slice(&(frame.len() as u16).to_ne_bytes());
        {
            // SAFETY: the slot lies inside the mapping (as in `status`);
            // while its status is TP_STATUS_AVAILABLE the kernel neither
            // reads nor writes it, and this slice is the only reference to
            // it; it ends before the status store below.
            let slot = unsafe { std::slice::from_raw_parts_mut(self.map.ptr().add(self.next * TX_SLOT_SIZE), TX_SLOT_SIZE) };
            slot[TP_LEN..TP_LEN + 4].copy_from_slice(&((VNET_HDR_LEN + frame.len()) as u32).to_ne_bytes());
            slot[TX_DATA..TX_DATA + VNET_HDR_LEN].copy_from_slice(&vnet);
            slot[TX_DATA + VNET_HDR_LEN..TX_DATA + VNET_HDR_LEN + frame.len()].copy_from_slice(frame);
        }
        // Release: the slot's contents are visible before the kernel can
        // see the request.
        self.status(self.next).store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.next = (self.next + 1) % TX_SLOTS;
        self.queued += 1;
        Ok(())
    }

    /// Sends every filled slot with one `send()`. If the kernel leaves some
    /// ([`Kicked::left`] > 0: the interface refused a frame, e.g. a TAP
    /// nobody reads), the ring is out of step with what was asked and must
    /// be dropped.
    pub fn kick(&mut self) -> Kicked {
        if self.queued == 0 {
            return Kicked::default();
        }
        // SAFETY: send(2) with no buffer: for a socket with a transmit ring
        // the kernel takes the frames from the mapping, not from here.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        let error = (rc < 0).then(io::Error::last_os_error);
        let first = (self.next + TX_SLOTS - self.queued) % TX_SLOTS;
        let left = (0..self.queued)
            .filter(|k| self.status((first + k) % TX_SLOTS).load(Ordering::Acquire) == TP_STATUS_SEND_REQUEST)
            .count();
        let sent = self.queued - left;
        self.queued = left;
        let error = match (error, left) {
            (Some(e), _) => Some(e),
            (None, 0) => None,
            (None, _) => Some(io::Error::other("the kernel left frames in the transmit ring")),
        };
        Kicked { sent, left, error }
    }
}
