//! The LAN port's receive rings ([`RxRing`]), and the TPACKET_V3 one
//! ([`BlockRing`]). A TPACKET_V3 receive ring (`PACKET_RX_RING`, packet(7)) on an AF_PACKET
//! socket: the kernel writes frames into mmap'd blocks and hands each full
//! (or timed-out) block to us at once; we walk its frames in place, without a
//! syscall or a copy per frame, and give the block back.
//!
//! The ring's contents are treated as untrusted input: every offset and
//! length the kernel writes is checked against the block before use, and a
//! bad one ends the walk of that block (counted), never a panic.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::frame_ring::FrameRing;
use super::packet::{set_option, vlan_reinsert, vnet_describe, RecvInfo, HEADROOM, VNET_HDR_LEN};

/// `TPACKET_V3` in `enum tpacket_versions` (linux/if_packet.h).
const TPACKET_V3: libc::c_int = 2;
pub(super) const PACKET_VERSION: libc::c_int = 10;
pub(super) const PACKET_RX_RING: libc::c_int = 5;
/// Block owned by the kernel / handed to user space (`block_status`).
pub(super) const TP_STATUS_KERNEL: u32 = 0;
pub(super) const TP_STATUS_USER: u32 = 1;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
pub(super) const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// Bytes per block: a multiple of the page size, large enough for a 64 KiB
/// GRO/TSO super-frame with its headers.
pub const BLOCK_SIZE: usize = 1 << 18;
/// Blocks in the ring (4 MiB in all, like the socket buffer it replaces).
pub const BLOCK_COUNT: usize = 16;
/// A block that is not full is handed over after this many milliseconds:
/// the extra latency a lone frame can see.
pub const RETIRE_TIMEOUT_MS: u32 = 1;

/// Offsets in `struct tpacket_block_desc` (version, offset_to_priv, then
/// `struct tpacket_hdr_v1`).
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST_PKT: usize = 16;
/// `sizeof(struct tpacket_block_desc)` rounded to 8.
const BLK_HDR_LEN: usize = 48;
/// Offsets in `struct tpacket3_hdr`.
const TP_NEXT_OFFSET: usize = 0;
const TP_SNAPLEN: usize = 12;
const TP_LEN: usize = 16;
const TP_STATUS: usize = 20;
const TP_MAC: usize = 24;
const TP_VLAN_TCI: usize = 32;
const TP_VLAN_TPID: usize = 36;
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where the `sockaddr_ll` is.
const TP_HDR_LEN: usize = 48;
/// `sll_pkttype` in the `sockaddr_ll` after the header; its end.
const SLL_PKTTYPE: usize = TP_HDR_LEN + 10;
const SLL_END: usize = TP_HDR_LEN + 20;

/// `struct tpacket_req3`.
#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// What one [`RxRing::walk`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Blocks (TPACKET_V3) or frame slots (TPACKET_V2) returned to the kernel.
    pub blocks: usize,
    /// Frames handed to the callback.
    pub frames: usize,
    /// Frame headers that did not fit their block (the rest of such a block
    /// is skipped).
    pub malformed: usize,
    /// A TPACKET_V2 walk stopped at a frame too large for its slot; it waits
    /// on the receive queue ([`FrameRing::recv_copy`]).
    pub copy_pending: bool,
}

/// The receive ring of a LAN port: TPACKET_V2 frame slots (handed over
/// frame by frame: no added latency) or TPACKET_V3 blocks (handed over when
/// full or after the retire timer: fewer wake-ups, up to milliseconds of
/// added latency).
#[derive(Debug)]
pub enum RxRing {
    /// TPACKET_V2 ([`FrameRing`]).
    Frames(FrameRing),
    /// TPACKET_V3 ([`BlockRing`]).
    Blocks(BlockRing),
}

impl RxRing {
    /// Hands the frames the kernel has written to `f` (see
    /// [`FrameRing::walk`] and [`BlockRing::walk`]); `budget` is in frames
    /// for the frame ring and in blocks for the block ring.
    pub fn walk(&mut self, budget: usize, f: impl FnMut(&mut [u8], RecvInfo)) -> Walked {
        match self {
            RxRing::Frames(r) => r.walk(budget, f),
            RxRing::Blocks(r) => r.walk(budget, f),
        }
    }
}

/// The mapped ring of one socket. The mapping keeps the socket's ring alive
/// by itself (it holds a reference on the socket's file), so it stays valid
/// even if the fd is closed first; it is unmapped on drop.
#[derive(Debug)]
pub struct BlockRing {
    map: RingMap,
    /// The block we expect the kernel to hand over next.
    next: usize,
    /// The socket has PACKET_VNET_HDR: a virtio header precedes each frame.
    vnet: bool,
}

impl BlockRing {
    /// Switches `fd` (a bound AF_PACKET socket with nothing mapped yet) to
    /// TPACKET_V3 and maps its receive ring. On error the socket may be left
    /// half set up: the caller must not use it for `recvmsg` afterwards
    /// (open a fresh one).
    pub fn setup(fd: BorrowedFd<'_>, vnet: bool) -> io::Result<BlockRing> {
        set_option(fd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3)?;
        let frame_size = 2048u32;
        let req = TpacketReq3 {
            block_size: BLOCK_SIZE as u32,
            block_nr: BLOCK_COUNT as u32,
            frame_size,
            frame_nr: (BLOCK_SIZE / frame_size as usize * BLOCK_COUNT) as u32,
            retire_blk_tov: RETIRE_TIMEOUT_MS,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        set_option(fd, libc::SOL_PACKET, PACKET_RX_RING, &req)?;
        let map = RingMap::new(fd, BLOCK_SIZE * BLOCK_COUNT)?;
        Ok(BlockRing { map, next: 0, vnet })
    }

    fn status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: block < BLOCK_COUNT, so the offset is inside the mapping;
        // blocks start page-aligned and BLK_STATUS is a multiple of 4, so the
        // pointer is aligned for AtomicU32. The kernel accesses the word
        // concurrently, which is why it is only touched atomically.
        unsafe { AtomicU32::from_ptr(self.map.ptr().add(block * BLOCK_SIZE + BLK_STATUS).cast::<u32>()) }
    }

    /// Hands every frame of up to `max_blocks` blocks that the kernel has
    /// filled to `f` (frame at `buf[info.start..info.start + info.len]`, a
    /// VLAN tag the kernel took out put back, as [`RecvInfo`] describes),
    /// then returns each block to the kernel.
    pub fn walk(&mut self, max_blocks: usize, mut f: impl FnMut(&mut [u8], RecvInfo)) -> Walked {
        let mut w = Walked::default();
        for _ in 0..max_blocks {
            let b = self.next;
            // Acquire: the kernel's writes to the block happen before it sets
            // TP_STATUS_USER, so they are visible once we see it.
            if self.status(b).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            {
                // SAFETY: the block lies inside the mapping; while its status
                // says TP_STATUS_USER the kernel does not write to it, and
                // this is the only reference to it until the status is reset
                // below (the slice is dropped first).
                let block = unsafe { std::slice::from_raw_parts_mut(self.map.ptr().add(b * BLOCK_SIZE), BLOCK_SIZE) };
                walk_block(block, self.vnet, &mut f, &mut w);
            }
            // Release: our reads of the block happen before the kernel may
            // reuse it.
            self.status(b).store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (b + 1) % BLOCK_COUNT;
            w.blocks += 1;
        }
        w
    }
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Walks the frames of one block (its bytes as the kernel laid them out)
/// and hands each to `f`, as [`BlockRing::walk`] does; headers that do not fit
/// the block are counted in `w.malformed`. Public for the `ring_block` fuzz
/// target: the ring's contents are treated as untrusted input.
pub fn walk_block(block: &mut [u8], vnet: bool, f: &mut impl FnMut(&mut [u8], RecvInfo), w: &mut Walked) {
    let (Some(num), Some(first)) = (u32_at(block, BLK_NUM_PKTS), u32_at(block, BLK_FIRST_PKT)) else {
        w.malformed += 1;
        return;
    };
    let mut off = first as usize;
    if off < BLK_HDR_LEN {
        w.malformed += usize::from(num > 0);
        return;
    }
    for i in 0..num {
        match frame_at(block, off, vnet) {
            Some((range, info)) => {
                f(&mut block[range], info);
                w.frames += 1;
            }
            None => {
                w.malformed += 1;
                return;
            }
        }
        if i + 1 == num {
            break;
        }
        // The next header must lie further on: no loops, no going back.
        match u32_at(block, off + TP_NEXT_OFFSET) {
            Some(next) if next as usize >= TP_HDR_LEN => off += next as usize,
            _ => {
                w.malformed += 1;
                return;
            }
        }
    }
}

/// Checks and describes the frame whose header is at `off`: the range of
/// `block` to hand out (HEADROOM bytes before the frame included) and its
/// [`RecvInfo`]. Puts back a VLAN tag the kernel moved into the header.
fn frame_at(block: &mut [u8], off: usize, vnet: bool) -> Option<(std::ops::Range<usize>, RecvInfo)> {
    let hdr = block.get(off..off.checked_add(SLL_END)?)?;
    let snaplen = u32_at(hdr, TP_SNAPLEN)? as usize;
    let len = u32_at(hdr, TP_LEN)? as usize;
    let status = u32_at(hdr, TP_STATUS)?;
    let mac = usize::from(u16_at(hdr, TP_MAC)?);
    let tci = u32_at(hdr, TP_VLAN_TCI)?;
    let tpid = u16_at(hdr, TP_VLAN_TPID)?;
    let outgoing = hdr[SLL_PKTTYPE] == libc::PACKET_OUTGOING;
    let mac = off.checked_add(mac)?;
    describe_frame(
        block,
        TpFrame {
            header_end: off + SLL_END,
            mac,
            snaplen,
            len,
            status,
            vlan: (tpid, tci as u16),
            outgoing,
        },
        vnet,
    )
}

/// What a ring's frame header says (TPACKET_V2 and V3 alike), offsets
/// relative to the buffer that holds header and frame.
pub(super) struct TpFrame {
    /// End of the header and the `sockaddr_ll` after it.
    pub header_end: usize,
    /// Where the frame starts (`tp_mac`).
    pub mac: usize,
    /// Bytes of the frame in the ring (`tp_snaplen`).
    pub snaplen: usize,
    /// Bytes of the frame on the wire (`tp_len`).
    pub len: usize,
    /// `tp_status`.
    pub status: u32,
    /// `tp_vlan_tpid`, `tp_vlan_tci`.
    pub vlan: (u16, u16),
    /// `sll_pkttype` is PACKET_OUTGOING.
    pub outgoing: bool,
}

/// Checks `f` against `buf` and describes the frame: the range of `buf` to
/// hand out (HEADROOM bytes before the frame included) and its
/// [`RecvInfo`]; `None` if the frame, its virtio header or our headroom do
/// not lie after the header and inside `buf`. Puts back a VLAN tag the
/// kernel moved into the header.
pub(super) fn describe_frame(buf: &mut [u8], f: TpFrame, vnet: bool) -> Option<(std::ops::Range<usize>, RecvInfo)> {
    let before = if vnet { VNET_HDR_LEN } else { 0 }.max(HEADROOM);
    if f.mac < f.header_end.checked_add(before)? {
        return None;
    }
    let end = f.mac.checked_add(f.snaplen)?;
    if end > buf.len() {
        return None;
    }
    let mut info = RecvInfo {
        start: HEADROOM,
        len: f.snaplen,
        outgoing: f.outgoing,
        truncated: f.len > f.snaplen,
        csum: None,
        gso: None,
        csum_not_ready: !vnet && f.status & TP_STATUS_CSUMNOTREADY != 0,
    };
    if vnet {
        let v: [u8; VNET_HDR_LEN] = buf[f.mac - VNET_HDR_LEN..f.mac].try_into().ok()?;
        vnet_describe(&v, &mut info);
    }
    let range = f.mac - HEADROOM..end;
    if f.status & TP_STATUS_VLAN_VALID != 0 {
        let (tpid, tci) = f.vlan;
        let tpid = if f.status & TP_STATUS_VLAN_TPID_VALID != 0 { tpid } else { 0x8100 };
        // The virtio header was read above: its bytes may now be overwritten.
        vlan_reinsert(&mut buf[range.clone()], &mut info, tpid, tci);
    }
    Some((range, info))
}

/// A socket's ring (receive or transmit) mapped into this process: shared,
/// read-write, populated; unmapped on drop. The mapping holds a reference on
/// the socket's file, so it stays valid even if the fd is closed first.
#[derive(Debug)]
pub(super) struct RingMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a RingMap exclusively owns its mapping (no other handle to it
// exists in this process); moving it to another thread moves that ownership.
unsafe impl Send for RingMap {}

impl RingMap {
    /// Maps the ring of `fd` (`len` bytes, as just requested with
    /// `PACKET_RX_RING`/`PACKET_TX_RING`).
    pub(super) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<RingMap> {
        // SAFETY: a fresh shared mapping of the socket's ring (the kernel
        // checks `len` against the ring it just made); the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RingMap {
            ptr: ptr.cast::<u8>(),
            len,
        })
    }

    /// The first byte of the mapping (`len` bytes follow).
    pub(super) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned in `new`; the
        // owners hand out references into the mapping only for the length
        // of a `&self`/`&mut self` borrow, all over by now.
        unsafe {
            libc::munmap(self.ptr.cast::<libc::c_void>(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `frames` laid out as the kernel does (vnet on).
    fn block_with(frames: &[(&[u8], Option<u16>)]) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[BLK_NUM_PKTS..BLK_NUM_PKTS + 4].copy_from_slice(&(frames.len() as u32).to_ne_bytes());
        b[BLK_FIRST_PKT..BLK_FIRST_PKT + 4].copy_from_slice(&(BLK_HDR_LEN as u32).to_ne_bytes());
        let mut off = BLK_HDR_LEN;
        for (frame, vlan) in frames {
            let mac = 92usize;
            let next = (mac + frame.len()).next_multiple_of(16);
            let h = &mut b[off..];
            h[TP_NEXT_OFFSET..4].copy_from_slice(&(next as u32).to_ne_bytes());
            h[TP_SNAPLEN..TP_SNAPLEN + 4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            h[TP_LEN..TP_LEN + 4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            let status = if vlan.is_some() { TP_STATUS_VLAN_VALID } else { 0 };
            h[TP_STATUS..TP_STATUS + 4].copy_from_slice(&status.to_ne_bytes());
            h[TP_MAC..TP_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            h[TP_VLAN_TCI..TP_VLAN_TCI + 4].copy_from_slice(&u32::from(vlan.unwrap_or(0)).to_ne_bytes());
            h[mac..mac + frame.len()].copy_from_slice(frame);
            off += next;
        }
        b
    }

    fn collect(block: &mut [u8]) -> (Vec<Vec<u8>>, Walked) {
        let mut out = Vec::new();
        let mut w = Walked::default();
        walk_block(
            block,
            true,
            &mut |buf: &mut [u8], i: RecvInfo| out.push(buf[i.start..i.start + i.len].to_vec()),
            &mut w,
        );
        (out, w)
    }

    #[test]
    fn frames_come_out_whole_and_vlan_tags_go_back_in() {
        let a: Vec<u8> = (0..60u8).collect();
        let b: Vec<u8> = (0..200u8).collect();
        let mut block = block_with(&[(&a, None), (&b, Some(0x2007))]);
        let (out, w) = collect(&mut block);
        assert_eq!(
            w,
            Walked {
                blocks: 0,
                frames: 2,
                malformed: 0,
                copy_pending: false
            }
        );
        assert_eq!(out[0], a);
        let mut tagged = b[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x07]);
        tagged.extend_from_slice(&b[12..]);
        assert_eq!(out[1], tagged);
    }

    #[test]
    fn lying_headers_are_counted_not_followed() {
        let a: Vec<u8> = (0..60u8).collect();
        // snaplen past the end of the block
        let mut block = block_with(&[(&a, None)]);
        let at = BLK_HDR_LEN + TP_SNAPLEN;
        block[at..at + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(collect(&mut block).1.malformed, 1);
        // tp_mac inside the header
        let mut block = block_with(&[(&a, None)]);
        let at = BLK_HDR_LEN + TP_MAC;
        block[at..at + 2].copy_from_slice(&10u16.to_ne_bytes());
        assert_eq!(
            collect(&mut block).1,
            Walked {
                blocks: 0,
                frames: 0,
                malformed: 1,
                copy_pending: false
            }
        );
        // more packets claimed than there are, next offset 0 (a loop)
        let mut block = block_with(&[(&a, None)]);
        block[BLK_NUM_PKTS..BLK_NUM_PKTS + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        block[BLK_HDR_LEN..BLK_HDR_LEN + 4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(
            collect(&mut block).1,
            Walked {
                blocks: 0,
                frames: 1,
                malformed: 1,
                copy_pending: false
            }
        );
    }

    #[test]
    fn arbitrary_blocks_never_panic() {
        use proptest::prelude::*;
        proptest!(|(mut bytes in proptest::collection::vec(any::<u8>(), 0..4096), vnet in any::<bool>())| {
            let mut w = Walked::default();
            walk_block(&mut bytes, vnet, &mut |buf: &mut [u8], i: RecvInfo| {
                assert!(i.start + i.len <= buf.len());
            }, &mut w);
        });
    }
}
