//! A TPACKET_V2 receive ring (`PACKET_RX_RING`, packet(7)) on an AF_PACKET
//! socket: fixed 2 KiB frame slots that the kernel hands over one by one, as
//! soon as each frame is written. Unlike the TPACKET_V3 block ring
//! ([`super::ring::BlockRing`]) no frame waits for a block to fill or for a
//! retire timer, so the ring costs no latency.
//!
//! A frame larger than its slot (a GRO/TSO super-frame, a jumbo frame) is
//! cut short in the slot; with `PACKET_COPY_THRESH` set the kernel then also
//! queues the whole frame on the socket's ordinary receive queue and marks
//! the slot `TP_STATUS_COPY`. The walk stops at such a slot
//! ([`Walked::copy_pending`]); the owner reads the whole frame with
//! [`FrameRing::recv_copy`], which also returns the slot. So frame order is
//! kept and super-frames still cross whole.
//!
//! The ring's contents are treated as untrusted input: every offset and
//! length the kernel writes is checked against the slot before use.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use super::packet::{set_option, PacketSocket, RecvInfo};
use super::ring::{
    describe_frame, u16_at, u32_at, RingMap, TpFrame, Walked, PACKET_RX_RING, PACKET_VERSION, TP_STATUS_KERNEL, TP_STATUS_USER,
};

/// `TPACKET_V2` in `enum tpacket_versions` (linux/if_packet.h).
pub(super) const TPACKET_V2: libc::c_int = 1;
const PACKET_COPY_THRESH: libc::c_int = 7;
/// The frame did not fit its slot; the whole frame is on the receive queue.
const TP_STATUS_COPY: u32 = 1 << 1;

/// Bytes per frame slot: a 1518-byte frame (VLAN tag included) with the
/// header, the `sockaddr_ll` and the virtio header fits (the kernel puts the
/// frame at offset 76 with PACKET_VNET_HDR).
pub const FRAME_SIZE: usize = 2048;
/// Bytes per block (the kernel's unit of allocation; a page multiple).
const BLOCK_SIZE: usize = 1 << 16;
/// Blocks in the ring: 2048 slots, 4 MiB in all, like the V3 ring.
const BLOCK_COUNT: usize = 64;
/// Slots in the ring.
pub const FRAME_COUNT: usize = BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT;

/// Offsets in `struct tpacket2_hdr`.
const TP_STATUS: usize = 0;
const TP_LEN: usize = 4;
const TP_SNAPLEN: usize = 8;
const TP_MAC: usize = 12;
const TP_VLAN_TCI: usize = 24;
const TP_VLAN_TPID: usize = 26;
/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where the `sockaddr_ll` is.
const TP_HDR_LEN: usize = 32;
/// `sll_pkttype` in the `sockaddr_ll` after the header; its end.
const SLL_PKTTYPE: usize = TP_HDR_LEN + 10;
const SLL_END: usize = TP_HDR_LEN + 20;

/// `struct tpacket_req` (TPACKET_V1/V2 rings, receive or transmit).
#[repr(C)]
pub(super) struct TpacketReq {
    pub block_size: u32,
    pub block_nr: u32,
    pub frame_size: u32,
    pub frame_nr: u32,
}

/// The mapped frame ring of one socket, and a buffer for frames too large
/// for a slot. The mapping holds a reference on the socket's file, so it
/// stays valid even if the fd is closed first; it is unmapped on drop.
pub struct FrameRing {
    map: RingMap,
    /// The slot we expect the kernel to fill next.
    next: usize,
    /// The socket has PACKET_VNET_HDR: a virtio header precedes each frame.
    vnet: bool,
    /// Whole frames read from the receive queue for `TP_STATUS_COPY` slots.
    copy_buf: Box<[u8]>,
}

impl std::fmt::Debug for FrameRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRing").field("next", &self.next).finish_non_exhaustive()
    }
}

impl FrameRing {
    /// Switches `fd` (a bound AF_PACKET socket with nothing mapped yet) to
    /// TPACKET_V2 with `PACKET_COPY_THRESH` and maps its receive ring;
    /// frames larger than a slot are read whole into a buffer of
    /// `max_frame` bytes. On error the socket may be left half set up: the
    /// caller must open a fresh one.
    pub fn setup(fd: BorrowedFd<'_>, vnet: bool, max_frame: usize) -> io::Result<FrameRing> {
        set_option(fd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V2)?;
        set_option(fd, libc::SOL_PACKET, PACKET_COPY_THRESH, &1 as &libc::c_int)?;
        let req = TpacketReq {
            block_size: BLOCK_SIZE as u32,
            block_nr: BLOCK_COUNT as u32,
            frame_size: FRAME_SIZE as u32,
            frame_nr: FRAME_COUNT as u32,
        };
        set_option(fd, libc::SOL_PACKET, PACKET_RX_RING, &req)?;
        let map = RingMap::new(fd, BLOCK_SIZE * BLOCK_COUNT)?;
        Ok(FrameRing {
            map,
            next: 0,
            vnet,
            copy_buf: vec![0u8; max_frame.max(FRAME_SIZE)].into_boxed_slice(),
        })
    }

    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: slot < FRAME_COUNT and slots never straddle blocks
        // (BLOCK_SIZE is a multiple of FRAME_SIZE), so the offset is inside
        // the mapping; slots are 2048-aligned, so the pointer is aligned for
        // AtomicU32. The kernel accesses the word concurrently, which is why
        // it is only touched atomically.
        unsafe { AtomicU32::from_ptr(self.map.ptr().add(slot * FRAME_SIZE + TP_STATUS).cast::<u32>()) }
    }

    fn release(&mut self) {
        // Release: our reads of the slot happen before the kernel may reuse it.
        self.status(self.next).store(TP_STATUS_KERNEL, Ordering::Release);
        self.next = (self.next + 1) % FRAME_COUNT;
    }

    /// Hands up to `max_frames` frames the kernel has written to `f` (frame
    /// at `buf[info.start..info.start + info.len]`, a VLAN tag the kernel
    /// took out put back, as [`RecvInfo`] describes), returning each slot at
    /// once. Stops early at a slot whose frame is on the receive queue
    /// ([`Walked::copy_pending`]): call [`Self::recv_copy`] next.
    pub fn walk(&mut self, max_frames: usize, mut f: impl FnMut(&mut [u8], RecvInfo)) -> Walked {
        let mut w = Walked::default();
        for _ in 0..max_frames {
            // Acquire: the kernel's writes to the slot happen before it sets
            // TP_STATUS_USER, so they are visible once we see it.
            let status = self.status(self.next).load(Ordering::Acquire);
            if status & TP_STATUS_USER == 0 {
                break;
            }
            if status & TP_STATUS_COPY != 0 {
                w.copy_pending = true;
                break;
            }
            {
                // SAFETY: the slot lies inside the mapping; while its status
                // says TP_STATUS_USER the kernel does not write to it, and
                // this is the only reference to it until the status is reset
                // below (the slice is dropped first).
                let slot = unsafe { std::slice::from_raw_parts_mut(self.map.ptr().add(self.next * FRAME_SIZE), FRAME_SIZE) };
                match frame_in_slot(slot, self.vnet) {
                    Some((range, info)) => {
                        f(&mut slot[range], info);
                        w.frames += 1;
                    }
                    None => w.malformed += 1,
                }
            }
            self.release();
            w.blocks += 1;
        }
        w
    }

    /// For the `TP_STATUS_COPY` slot the last [`Self::walk`] stopped at:
    /// reads the whole frame from `sock`'s receive queue into this ring's
    /// buffer and returns the slot. `Ok(None)`: the kernel could not queue
    /// the copy (receive buffer full), so the frame is lost.
    pub fn recv_copy(&mut self, sock: &PacketSocket) -> io::Result<Option<(&mut [u8], RecvInfo)>> {
        let got = sock.recv(&mut self.copy_buf);
        self.release();
        Ok(got?.map(|info| (&mut self.copy_buf[..], info)))
    }
}

/// Checks and describes the frame in one slot (its bytes as the kernel laid
/// them out): the range of `slot` to hand out (HEADROOM bytes before the
/// frame included) and its [`RecvInfo`]; `None` if a header does not fit the
/// slot. Puts back a VLAN tag the kernel moved into the header. Public for
/// the `ring_block` fuzz target: the ring's contents are untrusted input.
pub fn frame_in_slot(slot: &mut [u8], vnet: bool) -> Option<(std::ops::Range<usize>, RecvInfo)> {
    let hdr = slot.get(..SLL_END)?;
    let status = u32_at(hdr, TP_STATUS)?;
    let len = u32_at(hdr, TP_LEN)? as usize;
    let snaplen = u32_at(hdr, TP_SNAPLEN)? as usize;
    let mac = usize::from(u16_at(hdr, TP_MAC)?);
    let tci = u16_at(hdr, TP_VLAN_TCI)?;
    let tpid = u16_at(hdr, TP_VLAN_TPID)?;
    let outgoing = hdr[SLL_PKTTYPE] == libc::PACKET_OUTGOING;
    let frame = TpFrame {
        header_end: SLL_END,
        mac,
        snaplen,
        len,
        status,
        vlan: (tpid, tci),
        outgoing,
    };
    describe_frame(slot, frame, vnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::ring::TP_STATUS_VLAN_VALID;

    /// A slot holding `frame` as the kernel lays it out (vnet on).
    fn slot_with(frame: &[u8], vlan: Option<u16>, len: usize) -> Vec<u8> {
        let mut s = vec![0u8; FRAME_SIZE];
        let mac = 76usize;
        let status = TP_STATUS_USER | if vlan.is_some() { TP_STATUS_VLAN_VALID } else { 0 };
        s[TP_STATUS..TP_STATUS + 4].copy_from_slice(&status.to_ne_bytes());
        s[TP_LEN..TP_LEN + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        s[TP_SNAPLEN..TP_SNAPLEN + 4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        s[TP_MAC..TP_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
        s[TP_VLAN_TCI..TP_VLAN_TCI + 2].copy_from_slice(&vlan.unwrap_or(0).to_ne_bytes());
        s[mac..mac + frame.len()].copy_from_slice(frame);
        s
    }

    fn frame_of(slot: &mut [u8]) -> Option<(Vec<u8>, RecvInfo)> {
        let (r, i) = frame_in_slot(slot, true)?;
        Some((slot[r][i.start..i.start + i.len].to_vec(), i))
    }

    #[test]
    fn frames_come_out_whole_and_vlan_tags_go_back_in() {
        let a: Vec<u8> = (0..60u8).collect();
        let (got, info) = frame_of(&mut slot_with(&a, None, 60)).unwrap();
        assert_eq!(got, a);
        assert!(!info.truncated);
        let b: Vec<u8> = (0..200u8).collect();
        let (got, _) = frame_of(&mut slot_with(&b, Some(0x2007), 200)).unwrap();
        let mut tagged = b[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x07]);
        tagged.extend_from_slice(&b[12..]);
        assert_eq!(got, tagged);
        // Longer on the wire than in the slot: said so.
        assert!(frame_of(&mut slot_with(&a, None, 9000)).unwrap().1.truncated);
    }

    #[test]
    fn lying_headers_are_refused() {
        let a: Vec<u8> = (0..60u8).collect();
        let mut s = slot_with(&a, None, 60);
        s[TP_SNAPLEN..TP_SNAPLEN + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(frame_in_slot(&mut s, true).is_none());
        let mut s = slot_with(&a, None, 60);
        s[TP_MAC..TP_MAC + 2].copy_from_slice(&10u16.to_ne_bytes());
        assert!(frame_in_slot(&mut s, true).is_none());
        let mut s = slot_with(&a, None, 60);
        s[TP_MAC..TP_MAC + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(frame_in_slot(&mut s, true).is_none());
        assert!(frame_in_slot(&mut [0u8; 20], true).is_none());
    }

    #[test]
    fn arbitrary_slots_never_panic() {
        use proptest::prelude::*;
        proptest!(|(mut bytes in proptest::collection::vec(any::<u8>(), 0..2200), vnet in any::<bool>())| {
            let len = bytes.len();
            if let Some((r, i)) = frame_in_slot(&mut bytes, vnet) {
                assert!(r.end <= len);
                assert!(i.start + i.len <= r.len());
            }
        });
    }
}
