//! Feeds arbitrary bytes as a TPACKET_V3 receive-ring block (and as the
//! start of a block laid out like the kernel's) through the block walk, and
//! as a TPACKET_V2 frame slot through the slot check: nothing may panic, and
//! every frame handed out must lie inside its block or slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netbridge::port::frame_ring::{frame_in_slot, FRAME_SIZE};
use netbridge::port::packet::RecvInfo;
use netbridge::port::ring::{walk_block, Walked};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let vnet = sel & 2 != 0;
    if sel & 4 != 0 {
        // A TPACKET_V2 slot; half the time with a plausible tp_mac (76, as
        // the kernel writes with a virtio header) and snaplen.
        let mut slot = rest[..rest.len().min(FRAME_SIZE)].to_vec();
        if sel & 1 == 1 && slot.len() >= 14 {
            let snap = (slot.len().saturating_sub(76) as u32).min(u32::from(sel >> 3) * 64);
            slot[8..12].copy_from_slice(&snap.to_ne_bytes());
            slot[12..14].copy_from_slice(&76u16.to_ne_bytes());
        }
        let len = slot.len();
        if let Some((range, i)) = frame_in_slot(&mut slot, vnet) {
            assert!(range.end <= len);
            assert!(i.start + i.len <= range.len());
            slot[range][i.start..i.start + i.len].iter_mut().for_each(|b| *b ^= 0xff);
        }
        return;
    }
    let mut block = rest.to_vec();
    // Half the time, a plausible block header (one frame or a few at 48),
    // so the frame checks are reached more often than by chance.
    if sel & 1 == 1 && block.len() >= 20 {
        block[12..16].copy_from_slice(&u32::from(sel >> 4).to_ne_bytes());
        block[16..20].copy_from_slice(&48u32.to_ne_bytes());
    }
    let len = block.len();
    let mut w = Walked::default();
    walk_block(
        &mut block,
        vnet,
        &mut |buf: &mut [u8], i: RecvInfo| {
            assert!(buf.len() <= len);
            assert!(i.start + i.len <= buf.len());
            buf[i.start..i.start + i.len].iter_mut().for_each(|b| *b ^= 0xff);
        },
        &mut w,
    );
    assert!(w.frames <= len / 48 + 1);
});
